//! Serving clients: accepting connections (HTTP/1.1 and HTTP/2, in the clear or over TLS) and
//! handing their requests to the gateway's chain.
//!
//! The gateway runs one worker per CPU, like nginx's worker processes: each worker is a thread with
//! its own single-threaded runtime, its own listening socket on the same port (SO_REUSEPORT: the
//! kernel spreads connections), its own pool of upstream connections and its own audit batches,
//! so a request never waits for a wake-up on another thread. State that must be shared (keys,
//! limits, sessions, audit log, blocks) is shared through the [`Gateway`].

//!
//! [`accept`] takes connections and refuses blocked sources; [`proxy_protocol`] reads who the
//! client is behind a load balancer; [`connection`] serves one, whatever stream carries it;
//! [`idle`] notices clients that are idle, too slow, or no longer reading.

mod accept;
mod connection;
pub mod idle;
mod proxy_protocol;

pub use accept::Listener;
pub use proxy_protocol::ProxyProtocol;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Gateway, Worker};

/// The listening sockets of one worker: the MCP listener (TLS when configured) and, beside a TLS
/// one, the plain-HTTP listener of `plain_listen`.
pub struct WorkerListeners {
    pub main: std::net::TcpListener,
    pub plain: Option<std::net::TcpListener>,
}

/// One listening socket per worker on `listen`, and on `plain_listen` if given.
pub fn bind_listeners(
    listen: SocketAddr,
    plain_listen: Option<SocketAddr>,
    workers: usize,
) -> std::io::Result<Vec<WorkerListeners>> {
    let main = bind(listen, workers)?;
    let mut plain = match plain_listen {
        Some(addr) => bind(addr, workers)?,
        None => Vec::new(),
    }
    .into_iter();
    Ok(main
        .into_iter()
        .map(|main| WorkerListeners {
            main,
            plain: plain.next(),
        })
        .collect())
}

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
/// drained. `main` says how connections to the main listener start; those to the plain listener
/// are plain HTTP.
pub fn run_workers(
    listeners: Vec<WorkerListeners>,
    main: &Listener,
    gateway: &Arc<Gateway>,
    shutdown: &CancellationToken,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(index, listeners)| {
            let (gateway, shutdown, main_listener) =
                (Arc::clone(gateway), shutdown.clone(), main.clone());
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
                        let main = TcpListener::from_std(listeners.main);
                        let plain = listeners.plain.map(TcpListener::from_std).transpose();
                        let (main, plain) = match (main, plain) {
                            (Ok(main), Ok(plain)) => (main, plain),
                            (Err(err), _) | (_, Err(err)) => {
                                tracing::error!(error = %err, "cannot use the listening socket");
                                return;
                            }
                        };
                        let worker = Arc::new(Worker::new(&gateway));
                        tokio::spawn(Arc::clone(&worker.audit).run());
                        tokio::spawn(worker.current_upstream().close_idle_periodically());
                        let serve_main = accept::serve(
                            main,
                            main_listener,
                            Arc::clone(&gateway),
                            Arc::clone(&worker),
                            shutdown.clone(),
                        );
                        match plain {
                            Some(plain) => {
                                let serve_plain = accept::serve(
                                    plain,
                                    Listener::default(),
                                    gateway,
                                    Arc::clone(&worker),
                                    shutdown,
                                );
                                tokio::join!(serve_main, serve_plain);
                            }
                            None => serve_main.await,
                        }
                        // Response lines still held by this worker.
                        worker.audit.flush();
                    });
                })
        })
        .collect()
}
