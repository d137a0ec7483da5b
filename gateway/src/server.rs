//! Accepting connections (HTTP/1.1 and h2c) and handing requests to the gateway's chain.
//!
//! The gateway runs one worker per CPU, like nginx's worker processes: each worker is a thread with
//! its own single-threaded runtime, its own listening socket on the same port (SO_REUSEPORT: the
//! kernel spreads connections), its own pool of upstream connections and its own audit batches,
//! so a request never waits for a wake-up on another thread. State that must be shared (keys,
//! limits, sessions, audit log, blocks) is shared through the [`Gateway`].

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    audit::Peer,
    idle::{Activity, InProgressBody, Stale, WatchedWrites},
    proxy::{Gateway, Worker},
};

/// Longest wait for open connections to finish after shutdown was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the response in flight when the gateway closes a connection of its own accord
/// (its source got blocked, or it was idle), before the connection is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
                        serve(listener, gateway, Arc::clone(&worker), shutdown).await;
                        // Response lines still held by this worker.
                        worker.audit.flush();
                    });
                })
        })
        .collect()
}

/// What every request on one client connection needs.
struct ConnectionContext {
    gateway: Arc<Gateway>,
    worker: Arc<Worker>,
    client: Peer,
    activity: Arc<Activity>,
}

/// Serves until `shutdown` is cancelled, then lets open requests finish (up to [`DRAIN_TIMEOUT`]).
async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Slow and idle clients are closed by `idle::Activity` instead, at less cost per request.
        .header_read_timeout(None)
        // As for upstream requests (pool.rs): answers and SSE events are small.
        .writev(false);
    builder.http2().timer(TokioTimer::new());
    let connections = TaskTracker::new();

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Blocked sources are refused here even without XDP, before any HTTP parsing.
        if gateway.protection().is_blocked(peer.ip()) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let registration = gateway
            .protection()
            .connections()
            .register(peer.ip(), &shutdown);
        let activity = Activity::new();
        // Reference counts per request only on this connection's own cache lines (the context
        // and its activity): counting on the gateway's, which every worker shares, would move
        // that line between CPUs.
        let context = Arc::new(ConnectionContext {
            gateway: Arc::clone(&gateway),
            worker: Arc::clone(&worker),
            client: Peer::new(peer.ip()),
            activity: Arc::clone(&activity),
        });
        let service = service_fn(move |request| {
            let context = Arc::clone(&context);
            async move {
                let ConnectionContext {
                    gateway,
                    worker,
                    client,
                    activity,
                } = &*context;
                let in_progress = activity.start();
                let http2 = request.version() == hyper::Version::HTTP_2;
                let response = gateway.handle(worker, request, client).await;
                Ok::<_, Infallible>(
                    response.map(|body| InProgressBody::new(body, in_progress, http2)),
                )
            }
        });
        let connection = builder
            .serve_connection(
                TokioIo::new(WatchedWrites::new(stream, Arc::clone(&activity))),
                service,
            )
            .into_owned();
        let stopping = shutdown.clone();
        let idle_timeout = gateway.settings().idle_timeout;
        connections.spawn(async move {
            tokio::pin!(connection);
            // One token for both reasons to stop (shutdown, blocked source): it is polled whenever
            // the connection is.
            tokio::select! {
                biased;
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = registration.closed().cancelled() => {}
                stale = activity.stale_for(idle_timeout) => match stale {
                    Stale::Idle => tracing::debug!(%peer, "closing a connection idle for {idle_timeout:?}"),
                    Stale::NotReading => tracing::debug!(%peer, "closing a connection whose client has not read for {idle_timeout:?}"),
                }
            }
            // Shutting down: let requests finish. The source got blocked: finish the response in
            // flight (the one that may have triggered the block deserves its answer), then close.
            // Idle: nothing is in flight, or only a request head that never completed. Not reading:
            // the response in flight cannot be delivered, and is cut after the grace period.
            let grace = if stopping.is_cancelled() {
                DRAIN_TIMEOUT
            } else {
                CLOSE_GRACE
            };
            connection.as_mut().graceful_shutdown();
            if tokio::time::timeout(grace, connection).await.is_err() {
                tracing::debug!(%peer, "connection cut after the grace period");
            }
        });
    }

    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within {DRAIN_TIMEOUT:?}; closing them");
    }
}
