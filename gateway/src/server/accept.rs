//! The accept loop of one worker: blocked sources, and sources over `max_connections_per_source`,
//! are dropped before any HTTP parsing; every other connection is registered (so a later block
//! can close it) and served in a task of its own, which first completes the TLS handshake on a
//! TLS listener. A handshake that fails or does not finish within `handshake_timeout_secs` closes
//! the connection and counts as a malformed request of its source: an edge node must not hold
//! sockets for clients that open them and never speak.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::connection::{self, Connection, DRAIN_TIMEOUT};
use crate::{
    protection::Offense,
    proxy::{Gateway, Worker},
    tls::Tls,
};

/// Serves until `shutdown` is cancelled, then lets open requests finish (up to [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Tls>,
    gateway: Arc<Gateway>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
) {
    let limits = gateway.settings().limits;
    // Shared by the handshake tasks of TLS connections, which serve after the accept loop moved on.
    let builder = Arc::new(connection::http_builder(&limits));
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
        let Some(registration) = gateway.protection().connections().register(
            peer.ip(),
            &shutdown,
            limits.max_connections_per_source,
        ) else {
            // Refused before any HTTP parsing; its source pays with an offense.
            drop(stream);
            gateway
                .protection()
                .offense(peer.ip(), Offense::TooManyConnections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (gateway, worker, shutdown) =
            (Arc::clone(&gateway), Arc::clone(&worker), shutdown.clone());
        let Some(tls) = &tls else {
            let connection = Connection {
                io: stream,
                peer,
                registration,
            };
            connections.spawn(connection::serve(
                &builder, connection, gateway, worker, shutdown,
            ));
            continue;
        };
        let (tls, builder) = (tls.clone(), Arc::clone(&builder));
        connections.spawn(async move {
            let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        gateway.protection().offense(peer.ip(), Offense::Malformed);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not done within {:?}", tls.handshake_timeout);
                        gateway.protection().offense(peer.ip(), Offense::Malformed);
                        return;
                    }
                },
                () = registration.closed().cancelled() => return,
            };
            let connection = Connection {
                io: stream,
                peer,
                registration,
            };
            connection::serve(&builder, connection, gateway, worker, shutdown).await;
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
