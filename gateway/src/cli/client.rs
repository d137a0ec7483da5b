//! The CLI's side of the admin API: one HTTP/1.1 request per call, over TCP or a Unix socket.

use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, client::conn::http1, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
};

use crate::config::{AdminAddress, Config};

/// Where the admin listener is and the token to show it.
pub struct AdminClient {
    address: AdminAddress,
    token: Option<String>,
}

/// The default admin address, as in the configuration.
const DEFAULT_ADMIN: &str = "127.0.0.1:7390";

impl AdminClient {
    /// The admin listener given by `--admin`, else the one `--config` names, else the default;
    /// the token from `--token-file` or `GATEWAY_ADMIN_TOKEN`.
    pub fn new(
        admin: Option<&str>,
        config: Option<&Path>,
        token_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let address = match (admin, config) {
            (Some(admin), _) => admin.to_owned(),
            (None, Some(path)) => {
                let listen = Config::from_file(path)?.admin.listen;
                if listen.is_empty() {
                    bail!(
                        "{}: [admin] listen is \"\": this gateway has no admin listener",
                        path.display()
                    );
                }
                listen
            }
            (None, None) => DEFAULT_ADMIN.to_owned(),
        };
        let address = address
            .parse()
            .with_context(|| format!("--admin {address:?}: not host:port or a socket path"))?;
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| {
                        format!("cannot read the admin token from {}", path.display())
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("GATEWAY_ADMIN_TOKEN").ok(),
        };
        Ok(Self { address, token })
    }

    /// Sends a request; the answer's status and body (JSON when it is JSON, else a string).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, bytes) = self.call_raw(method, path, body).await?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// As [`call`](Self::call), but a status other than 2xx is an error with the API's message.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method, path, body).await?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_owned);
        bail!("{status}: {message}")
    }

    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let payload = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "gateway-admin")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(payload))?;
        let unreachable = || format!("cannot reach the admin listener at {}", self.address);
        match &self.address {
            AdminAddress::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await.with_context(unreachable)?;
                send(stream, request).await
            }
            AdminAddress::Unix(path) => {
                let stream = UnixStream::connect(path).await.with_context(unreachable)?;
                send(stream, request).await
            }
        }
    }
}

async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
