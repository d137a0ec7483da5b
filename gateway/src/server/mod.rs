//! Serving clients: accepting connections (HTTP/1.1 and h2c) and handing their requests to the
//! gateway's chain.
//!
//! The gateway runs one worker per CPU, like nginx's worker processes: each worker is a thread with
//! its own single-threaded runtime, its own listening socket on the same port (SO_REUSEPORT: the
//! kernel spreads connections), its own pool of upstream connections and its own audit batches,
//! so a request never waits for a wake-up on another thread. State that must be shared (keys,
//! limits, sessions, audit log, blocks) is shared through the [`Gateway`].

//!
//! [`accept`] takes connections and refuses blocked sources; [`connection`] serves one, whatever
//! stream carries it; [`idle`] notices clients that are idle, too slow, or no longer reading.

mod accept;
mod connection;
pub mod idle;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Gateway, Worker};

/// Binds one listening socket per worker on `addr`, all with SO_REUSEPORT.
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    // SO_REUSEPORT alone would let a second gateway of the same user share the port silently,
    // each taking part of the traffic. A bind without it first fails if anything listens on the
    // port. It does not listen itself: a client that connected to it in the moment before it is
    // closed would be refused, although the port is about to serve.
    if addr.port() != 0 {
        drop(tcp_socket(addr, false)?);
    }
    (0..workers)
        .map(|_| {
            let socket = tcp_socket(addr, true)?;
            socket.set_nonblocking(true)?;
            socket.listen(4096)?;
            Ok(socket.into())
        })
        .collect()
}

/// A TCP socket bound to `addr` (SO_REUSEADDR, as std's listeners; SO_REUSEPORT if asked).
fn tcp_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Runs one worker thread per listener until `shutdown` is cancelled; returns when all have
/// drained.
pub fn run_workers(
    listeners: Vec<std::net::TcpListener>,
    gateway: &Arc<Gateway>,
    shutdown: &CancellationToken,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let (gateway, shutdown) = (Arc::clone(gateway), shutdown.clone());
            std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            tracing::error!(error = %err, "cannot start a worker");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(listener) => listener,
                            Err(err) => {
                                tracing::error!(error = %err, "cannot use the listening socket");
                                return;
                            }
                        };
                        let worker = Arc::new(Worker::new(&gateway));
                        tokio::spawn(Arc::clone(&worker.audit).run());
                        tokio::spawn(worker.upstream.close_idle_periodically());
                        accept::serve(listener, gateway, Arc::clone(&worker), shutdown).await;
                        // Response lines still held by this worker.
                        worker.audit.flush();
                    });
                })
        })
        .collect()
}
