//! The accept loop of one worker: blocked sources, and sources over `max_connections_per_source`,
//! are dropped before any HTTP parsing; every other connection is registered (so a later block
//! can close it) and served in a task of its own.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::connection::{self, Connection, DRAIN_TIMEOUT};
use crate::{
    protection::Offense,
    proxy::{Gateway, Worker},
};

/// Serves until `shutdown` is cancelled, then lets open requests finish (up to [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
) {
    let limits = gateway.settings().limits;
    let builder = connection::http_builder(&limits);
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
        let connection = Connection {
            io: stream,
            peer,
            registration,
        };
        connections.spawn(connection::serve(
            &builder,
            connection,
            Arc::clone(&gateway),
            Arc::clone(&worker),
            shutdown.clone(),
        ));
    }

    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within {DRAIN_TIMEOUT:?}; closing them");
    }
}
