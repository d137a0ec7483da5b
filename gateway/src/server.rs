//! Accepting connections (HTTP/1.1 and h2c) and handing requests to the gateway's chain.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::proxy::Gateway;

/// Longest wait for open connections to finish after shutdown was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a blocked source's in-flight response before its connection is cut.
const BLOCKED_GRACE: Duration = Duration::from_secs(1);

/// Serves until `shutdown` completes, then lets open requests finish (up to [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    tokio::pin!(shutdown);

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
            () = &mut shutdown => break,
        };
        // Blocked sources are refused here even without XDP, before any HTTP parsing.
        if gateway.protection().is_blocked(peer.ip()) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let registration = gateway.protection().connections().register(peer.ip());
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let stopping = stopping.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let grace = tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                    return;
                }
                // The source got blocked: finish the response in flight (the one that may have
                // triggered the block deserves its answer), then close.
                () = registration.closed().cancelled() => BLOCKED_GRACE,
                () = stopping.cancelled() => DRAIN_TIMEOUT,
            };
            connection.as_mut().graceful_shutdown();
            if tokio::time::timeout(grace, connection).await.is_err() {
                tracing::debug!(%peer, "connection cut after the grace period");
            }
        });
    }

    tracing::info!("shutting down: finishing open requests");
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within {DRAIN_TIMEOUT:?}; closing them");
    }
}
