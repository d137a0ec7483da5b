//! The accept loop of one worker: blocked sources, and sources over `max_connections_per_source`,
//! are dropped before any HTTP parsing; every other connection is registered (so a later block
//! can close it) and served in a task of its own, which first completes the TLS handshake on a
//! TLS listener. A handshake that fails or does not finish within `handshake_timeout_secs` closes
//! the connection and counts as a malformed request of its source: an edge node must not hold
//! sockets for clients that open them and never speak.
//!
//! Behind a load balancer (`proxy_protocol`), the source is the client the balancer names in its
//! PROXY protocol header: the checks above wait until the header is read, in the connection's
//! task.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::{rt::TokioExecutor, server::conn::auto};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    ProxyProtocol,
    connection::{self, Connection},
    proxy_protocol::HeaderError,
};
use crate::{
    protection::{ConnectionGuard, Offense},
    proxy::{Gateway, Worker},
    tls::{ClientCertificate, Tls},
};

/// How a listener's connections start: TLS or not, and behind a load balancer or not.
#[derive(Clone, Default)]
pub struct Listener {
    pub tls: Option<Tls>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// What the tasks of one listener's connections share.
struct Shared {
    listener: Listener,
    builder: auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
}

/// Serves until `shutdown` is cancelled, then lets open requests finish (up to
/// `shutdown_grace_secs`).
pub async fn serve(
    socket: TcpListener,
    listener: Listener,
    gateway: Arc<Gateway>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        builder: connection::http_builder(&gateway.settings().limits),
        listener,
        gateway,
        worker,
        shutdown,
    });
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        match &shared.listener.proxy_protocol {
            None => {
                if let Some(registration) = shared.admit(peer) {
                    connections.spawn(Arc::clone(&shared).serve(stream, peer, registration));
                }
            }
            Some(proxy_protocol) if !proxy_protocol.trusts(peer.ip()) => {
                // Not a balancer: it may not say who the client is, and has no other way in.
                tracing::debug!(%peer, "connection refused: not from a proxy_protocol_from address");
                shared
                    .gateway
                    .protection()
                    .offense(peer.ip(), Offense::Malformed);
            }
            Some(_) => {
                connections.spawn(Arc::clone(&shared).serve_balanced(stream, peer));
            }
        }
    }

    connections.close();
    let grace = shared.gateway.in_force().serving.shutdown_grace;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "open connections did not finish within shutdown_grace_secs ({grace:?}); closing them"
        );
    }
}

impl Shared {
    /// Registers a connection of `source`, or refuses it: blocked sources here even without XDP,
    /// and sources over their connection limit (an offense).
    fn admit(&self, source: SocketAddr) -> Option<ConnectionGuard> {
        let protection = self.gateway.protection();
        if protection.is_blocked(source.ip()) {
            return None;
        }
        let registration = protection.connections().register(
            source.ip(),
            &self.shutdown,
            self.gateway
                .in_force()
                .serving
                .limits
                .max_connections_per_source,
        );
        if registration.is_none() {
            protection.offense(source.ip(), Offense::TooManyConnections);
        }
        registration
    }

    /// A balancer's connection: its header names the client, who is then admitted as any other.
    async fn serve_balanced(self: Arc<Self>, mut stream: TcpStream, balancer: SocketAddr) {
        let Some(proxy_protocol) = &self.listener.proxy_protocol else {
            return;
        };
        let client = match proxy_protocol.read_header(&mut stream, balancer).await {
            Ok(client) => client,
            // Balancers' TCP health checks connect and close without a word.
            Err(HeaderError::Closed) => return,
            Err(err) => {
                // Not counted against the balancer: blocking it would block every client.
                tracing::warn!(%balancer, error = %err, "connection from a load balancer refused");
                return;
            }
        };
        if let Some(registration) = self.admit(client) {
            self.serve(stream, client, registration).await;
        }
    }

    /// Serves an admitted connection, after its TLS handshake on a TLS listener.
    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        registration: ConnectionGuard,
    ) {
        let _open = self.gateway.metrics().connection();
        let gateway = Arc::clone(&self.gateway);
        let worker = Arc::clone(&self.worker);
        let shutdown = self.shutdown.clone();
        let Some(tls) = &self.listener.tls else {
            let connection = Connection {
                io: stream,
                peer,
                certificate: None,
                registration,
            };
            return connection::serve(&self.builder, connection, gateway, worker, shutdown).await;
        };
        let tls = tls.handshakes();
        let handshake = tokio::time::timeout(tls.timeout, tls.acceptor.accept(stream));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    gateway.protection().offense(peer.ip(), Offense::Malformed);
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not done within {:?}", tls.timeout);
                    gateway.protection().offense(peer.ip(), Offense::Malformed);
                    return;
                }
            },
            () = registration.closed().cancelled() => return,
        };
        // Verified by the handshake; only its names are kept, for the connection's requests.
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| ClientCertificate::from_der(leaf));
        let connection = Connection {
            io: stream,
            peer,
            certificate,
            registration,
        };
        connection::serve(&self.builder, connection, gateway, worker, shutdown).await;
    }
}
