//! The operator's listener (`[admin] listen`), apart from the MCP listener: health for load
//! balancers, metrics for Prometheus, and an API for blocks, the allowlist, users, callers and
//! reloads, which the `gateway` CLI ([`crate::cli`]) talks to.
//!
//! `/healthz`, `/readyz` and `/metrics` are open (they tell nothing secret and load balancers and
//! scrapers rarely carry tokens); everything under `/api/` needs the admin token
//! (`Authorization: Bearer`, checked against `[admin] key_sha256` in constant time), and without a
//! configured token it is not served at all. The configuration refuses a non-loopback TCP
//! address without a token; a Unix socket is guarded by its file permissions (0600 by default).
//!
//! Blocks and allowlist changes go to the enforcer as commands, exactly like the feedback loop's
//! own, so they reach the XDP maps, the accept-time check and open connections the same way.
//! Every change through the API is an audit line naming the admin client.

mod api;
mod health;

use std::{
    os::fd::{AsRawFd, RawFd},
    path::Path,
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;

use crate::{
    app::Reloader,
    config::{AdminAddress, AdminSettings},
    policy::Sha256Digest,
    proxy::Gateway,
};

/// What the admin API works on.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub reloader: Arc<Reloader>,
    /// `driver`, `skb`, `off` (not configured) or `failed` (configured, not attached).
    pub xdp_mode: &'static str,
    /// Cancelled when the gateway starts draining (shutdown or a takeover): not ready.
    pub draining: CancellationToken,
    pub started: Instant,
    /// Where `POST /api/v1/upgrade` goes.
    pub upgrades: mpsc::Sender<UpgradeRequest>,
    token: Option<Sha256Digest>,
}

impl Admin {
    pub fn new(
        gateway: Arc<Gateway>,
        reloader: Arc<Reloader>,
        xdp_mode: &'static str,
        draining: CancellationToken,
        upgrades: mpsc::Sender<UpgradeRequest>,
        token: Option<Sha256Digest>,
    ) -> Self {
        Self {
            gateway,
            reloader,
            xdp_mode,
            draining,
            started: Instant::now(),
            upgrades,
            token,
        }
    }
}

/// A bound admin listener.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl AsRawFd for AdminListener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Tcp(listener) => listener.as_raw_fd(),
            Self::Unix(listener) => listener.as_raw_fd(),
        }
    }
}

/// Asks the process to replace itself with the binary it was started from; answered with the
/// new process's pid, or why not.
pub type UpgradeRequest = oneshot::Sender<Result<u32, String>>;

/// Binds the admin listener. A Unix socket left by an earlier run is replaced; the new one is
/// made readable and writable by the gateway's user only.
pub async fn bind(settings: &AdminSettings) -> anyhow::Result<AdminListener> {
    let listen = &settings.listen;
    let bound = match listen {
        AdminAddress::Tcp(addr) => TcpListener::bind(addr).await.map(AdminListener::Tcp),
        AdminAddress::Unix(path) => bind_unix(path).map(AdminListener::Unix),
    };
    bound.map_err(|err| match err.kind() {
        // A second gateway on the host (or a program such as Prometheus on its port): say
        // which setting tells them apart.
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "admin.listen: {listen} is in use by another process (another gateway?): set \
             [admin] listen to a free host:port, another Unix socket path, or \"\" for no \
             admin listener"
        ),
        _ => anyhow::anyhow!("admin.listen: cannot bind {listen}: {err}"),
    })
}

/// Binds a Unix socket at `path`, replacing a stale socket file left by a process that ended;
/// a socket that a live process still serves is left alone (`AddrInUse`).
fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::ErrorKind::AddrInUse.into());
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the admin API until the process ends.
pub async fn serve(listener: AdminListener, admin: Arc<Admin>) {
    loop {
        let accepted = match &listener {
            AdminListener::Tcp(listener) => listener.accept().await.map(|(stream, peer)| {
                spawn_connection(stream, peer.ip().to_string(), Arc::clone(&admin));
            }),
            AdminListener::Unix(listener) => listener.accept().await.map(|(stream, _)| {
                spawn_connection(stream, "unix".to_owned(), Arc::clone(&admin));
            }),
        };
        if let Err(err) = accepted {
            tracing::warn!(error = %err, "admin listener: accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

fn spawn_connection<S>(stream: S, peer: String, admin: Arc<Admin>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer: Arc<str> = peer.into();
    tokio::spawn(async move {
        let service = service_fn(move |request: Request<Incoming>| {
            let (admin, peer) = (Arc::clone(&admin), Arc::clone(&peer));
            async move { Ok::<_, std::convert::Infallible>(handle(&admin, &peer, request).await) }
        });
        if let Err(err) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %err, "admin connection ended with an error");
        }
    });
}

async fn handle(admin: &Admin, peer: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/healthz" => return health::alive(),
        "/readyz" => return health::ready(admin).await,
        "/metrics" => return health::metrics(admin).await,
        _ => {}
    }
    if let Err(refused) = api::check_token(admin.token.as_ref(), request.headers()) {
        return refused.into_response();
    }
    api::handle(admin, peer, request).await
}
