//! Serving one client connection, whatever carries it: a TCP stream today, a TLS stream over it
//! tomorrow. The connection is closed when the gateway shuts down, when its source gets blocked,
//! or when its client goes idle or stops reading.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::idle::{Activity, InProgressBody, Stale, WatchedWrites};
use crate::{
    audit::Peer,
    config::ConnectionLimits,
    protection::{ConnectionGuard, Offense},
    proxy::{Gateway, ProxyBody, Worker},
    tls::ClientCertificate,
};

/// Longest wait for the response in flight when the gateway closes a connection of its own accord
/// (its source got blocked, or it was idle), before the connection is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/1.1 and HTTP/2 server settings every connection of a worker shares, with the bounds
/// of `[limits]` on what a client's request head may hold (hyper answers 431 beyond them).
pub fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Slow and idle clients are closed by `idle::Activity` instead, at less cost per request.
        .header_read_timeout(None)
        // As for upstream requests (upstream/pool.rs): answers and SSE events are small.
        .writev(false)
        .max_headers(limits.max_headers)
        // (Validated to be at least hyper's minimum buffer.)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams a client opens and resets at once, and streams
        // the gateway had to reset, each end the connection past a few.
        .max_pending_accept_reset_streams(PENDING_RESET_STREAMS)
        .max_local_error_reset_streams(LOCAL_ERROR_RESET_STREAMS);
    builder
}

/// Reset streams not yet accepted that one HTTP/2 connection may have (h2's own default).
const PENDING_RESET_STREAMS: usize = 20;
/// Streams the gateway may reset on one HTTP/2 connection for its client's errors.
const LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// What every request on one client connection needs.
struct ConnectionContext {
    gateway: Arc<Gateway>,
    worker: Arc<Worker>,
    client: Peer,
    activity: Arc<Activity>,
}

/// How long a connection being closed may take to finish. Shutting down (or handing over to a new
/// process): let requests and streams finish, up to `shutdown_grace_secs`.
/// The source got blocked: finish the response in flight (the one that may have triggered the
/// block deserves its answer), then close. Idle: nothing is in flight, or only a request head that
/// never completed. Not reading: the response in flight cannot be delivered, and is cut after the
/// grace period.
fn grace_period(shutdown: &CancellationToken, shutdown_grace: Duration) -> Duration {
    if shutdown.is_cancelled() {
        shutdown_grace
    } else {
        CLOSE_GRACE
    }
}

/// One request of the connection, through the gateway's chain; the connection counts as busy
/// until the answer's body is done.
async fn respond(
    context: Arc<ConnectionContext>,
    request: Request<Incoming>,
) -> Result<Response<InProgressBody<ProxyBody>>, Infallible> {
    let ConnectionContext {
        gateway,
        worker,
        client,
        activity,
    } = &*context;
    let in_progress = activity.start();
    let http2 = request.version() == hyper::Version::HTTP_2;
    let response = gateway.handle(worker, request, client).await;
    Ok(response.map(|body| InProgressBody::new(body, in_progress, http2)))
}

/// One accepted connection, ready to be served.
pub struct Connection<IO> {
    pub io: IO,
    pub peer: SocketAddr,
    /// The client certificate presented in the TLS handshake, if any.
    pub certificate: Option<ClientCertificate>,
    /// Cancelled when the source gets blocked or the gateway shuts down.
    pub registration: ConnectionGuard,
}

/// Serving HTTP on `connection` until it ends or must be closed, as a future to spawn.
pub fn serve<IO>(
    builder: &auto::Builder<TokioExecutor>,
    connection: Connection<IO>,
    gateway: Arc<Gateway>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        io,
        peer,
        certificate,
        registration,
    } = connection;
    let activity = Activity::new();
    // As in force when the connection is accepted: a reload applies to the connections after it.
    let idle_timeout = gateway.in_force().serving.idle_timeout;
    let protection = gateway.protection().clone();
    let in_force_at_close = Arc::clone(&gateway);
    // Reference counts per request only on this connection's own cache lines (the context
    // and its activity): counting on the gateway's, which every worker shares, would move
    // that line between CPUs.
    let context = Arc::new(ConnectionContext {
        gateway,
        worker,
        client: Peer::new(peer.ip(), certificate),
        activity: Arc::clone(&activity),
    });
    let service = service_fn(move |request| respond(Arc::clone(&context), request));
    let connection = builder
        .serve_connection(
            TokioIo::new(WatchedWrites::new(io, Arc::clone(&activity))),
            service,
        )
        .into_owned();
    async move {
        tokio::pin!(connection);
        // One token for both reasons to stop (shutdown, blocked source): it is polled whenever
        // the connection is.
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                    // A request head hyper refused (400, 431) never became a request to audit;
                    // it still counts against its source.
                    if err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse) {
                        protection.offense(peer.ip(), Offense::Malformed);
                    }
                }
                return;
            }
            () = registration.closed().cancelled() => {}
            stale = activity.stale_for(idle_timeout) => match stale {
                Stale::Idle => tracing::debug!(%peer, "closing a connection idle for {idle_timeout:?}"),
                Stale::NotReading => tracing::debug!(%peer, "closing a connection whose client has not read for {idle_timeout:?}"),
            }
        }
        if shutdown.is_cancelled() && !activity.had_request() {
            // Accepted just as the drain began (or the sockets were handed to a new process):
            // its first request is most likely on its way. It gets a moment to arrive, and is
            // then answered (with `Connection: close`) rather than cut off unanswered.
            let first_request = async {
                while !activity.had_request() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = tokio::time::timeout(CLOSE_GRACE, first_request) => {}
            }
        }
        connection.as_mut().graceful_shutdown();
        let shutdown_grace = in_force_at_close.in_force().serving.shutdown_grace;
        let grace = grace_period(&shutdown, shutdown_grace);
        if tokio::time::timeout(grace, connection).await.is_err() {
            tracing::debug!(%peer, "connection cut after the grace period");
        }
    }
}
