//! Talking to an identity provider: its metadata, its signing keys (JWKS), its introspection
//! endpoint. One request per connection over HTTP/1.1, bounded in time and size, because what an
//! IdP answers decides who may call: a slow or huge answer must not hold a worker or fill memory.
//!
//! HTTPS is verified against the issuer's `ca` bundle or the system's trust store. Plain HTTP is
//! refused unless the host is a loopback address (an IdP on the same machine, as in tests): keys
//! fetched in clear from another host could be replaced by anyone on the path.

use std::{net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest answer read from an identity provider.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Time for the whole exchange: connect, handshake, request, answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: only https:// (or http:// to a loopback address) is fetched")]
    Scheme(String),
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
    #[error("{url}: answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{0}: no answer within {TIMEOUT:?}")]
    Timeout(String),
}

/// An answer: its body, and how long the IdP says it may be kept (`Cache-Control: max-age`).
pub struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// How the gateway reaches one identity provider.
#[derive(Clone)]
pub struct IdpClient {
    tls: TlsConnector,
}

impl IdpClient {
    /// A client that trusts `roots` for HTTPS.
    pub fn new(roots: RootCertStore) -> Result<Self, rustls::Error> {
        let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// `GET url`, expecting 200.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        self.send(Method::GET, url, None, None).await
    }

    /// `POST url` with a form body (`application/x-www-form-urlencoded`) and an
    /// `Authorization` value, expecting 200.
    pub async fn post_form(
        &self,
        url: &str,
        form: String,
        authorization: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        self.send(Method::POST, url, Some(form), authorization)
            .await
    }

    /// One exchange, within [`TIMEOUT`] in all.
    async fn send(
        &self,
        method: Method,
        url: &str,
        form: Option<String>,
        authorization: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let exchange = self.exchange(method, url, form, authorization);
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| FetchError::Timeout(url.to_owned()))?
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        form: Option<String>,
        authorization: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let failed = |message: String| FetchError::Failed {
            url: url.to_owned(),
            message,
        };
        let uri: Uri = url.parse().map_err(|err| failed(format!("{err}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(FetchError::Scheme(url.to_owned()));
        };
        let host = authority.host().trim_matches(['[', ']']);
        let secure = match scheme {
            "https" => true,
            "http" if is_loopback(host) => false,
            _ => return Err(FetchError::Scheme(url.to_owned())),
        };
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|err| failed(format!("cannot connect: {err}")))?;
        let _ = tcp.set_nodelay(true);
        let path = uri.path_and_query().map_or("/", |path| path.as_str());
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "mcp-gateway");
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let body = match form {
            Some(form) => {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Full::new(Bytes::from(form))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|err| failed(format!("{err}")))?;
        let response = if secure {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|err| failed(format!("not a server name: {err}")))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|err| failed(format!("TLS: {err}")))?;
            send_on(TokioIo::new(stream), request).await
        } else {
            send_on(TokioIo::new(tcp), request).await
        }
        .map_err(|err| failed(format!("{err}")))?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        let max_age = max_age(response.headers());
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|err| failed(format!("reading the answer: {err}")))?
            .to_bytes();
        Ok(Fetched { body, max_age })
    }
}

async fn send_on<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        // Ends with the exchange; its error is the request's, reported there.
        let _ = connection.await;
    });
    sender.send_request(request).await
}

/// `localhost`, or a loopback address (brackets of an IPv6 authority allowed).
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `max-age` of `Cache-Control`, unless the answer may not be stored at all.
fn max_age(headers: &hyper::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::CACHE_CONTROL)?.to_str().ok()?;
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some((name, seconds)) = directive.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
        {
            max_age = seconds.trim().parse().ok().map(Duration::from_secs);
        }
    }
    max_age
}

/// `application/x-www-form-urlencoded` of one value.
pub fn form_urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_says_how_long_an_answer_may_be_kept() {
        let of = |value: &str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert(header::CACHE_CONTROL, value.parse().unwrap());
            max_age(&headers)
        };
        assert_eq!(of("public, max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(of("no-store"), Some(Duration::ZERO));
        assert_eq!(of("public"), None);
        assert_eq!(max_age(&hyper::HeaderMap::new()), None);
    }

    #[test]
    fn plain_http_is_only_for_loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("idp.example.com"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
