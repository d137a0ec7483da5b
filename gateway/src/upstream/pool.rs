//! A worker's connections to the MCP server: keep-alive HTTP/1.1 connections, over TCP or TLS,
//! or one multiplexed HTTP/2 connection when a TLS upstream chooses `h2` by ALPN.
//!
//! Each worker has its own pool, used only from its own thread, for one server. That is all
//! hyper-util's general client would do here, and its per-request work (hashing the scheme and
//! authority into its pool map, a task spawned to watch each connection become idle again) was
//! about a tenth of the gateway's own instructions per request (callgrind). Here an HTTP/1.1
//! connection goes back to the pool when its response body has been read to the end, and is taken
//! again only once hyper says it is ready for the next request; the HTTP/2 connection is shared by
//! every request until the server closes it.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, Uri, Version,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
    header,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::UpstreamTls;
use crate::{lock, metrics::PoolStats};

type Sender = http1::SendRequest<Full<Bytes>>;
type Http2Sender = http2::SendRequest<Full<Bytes>>;

/// A new connection, by the protocol the server chose.
enum Connection {
    Http1(Sender),
    Http2(Http2Sender),
}

/// Idle connections kept per worker; more are closed when their response ends.
const MAX_IDLE: usize = 1024;
/// An idle connection unused this long is closed: when the next one comes back, or by the
/// worker's periodic [`ConnectionPool::close_idle_periodically`], whichever is first.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the periodic check runs: an idle connection closes at most this late.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to {address} within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { address: String },
    #[error("TLS with {address} failed: {source}")]
    Tls {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

pub struct ConnectionPool {
    /// `host:port` of the server.
    address: String,
    /// Set for an `https://` upstream.
    tls: Option<UpstreamTls>,
    /// HTTP/1.1 connections, the most recently returned at the back.
    idle: Mutex<VecDeque<Idle>>,
    /// The HTTP/2 connection, once the server chose HTTP/2.
    http2: Mutex<Option<Http2Sender>>,
    /// Held while a TLS connection is made and its protocol is not known yet.
    connecting: tokio::sync::Mutex<()>,
    /// The TLS server answered ALPN with HTTP/1.1 (or nothing).
    speaks_http1_only: AtomicBool,
    /// Shared with every worker's pool, for the metrics.
    stats: PoolStats,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl ConnectionPool {
    pub fn new(address: String, tls: Option<UpstreamTls>, stats: PoolStats) -> Arc<Self> {
        Arc::new(Self {
            address,
            tls,
            idle: Mutex::new(VecDeque::new()),
            http2: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            speaks_http1_only: AtomicBool::new(false),
            stats,
        })
    }

    /// Changes the idle connections under the lock, keeping the shared idle count in step.
    fn with_idle<R>(&self, change: impl FnOnce(&mut VecDeque<Idle>) -> R) -> R {
        let mut idle = lock(&self.idle);
        let before = idle.len();
        let result = change(&mut idle);
        self.stats.idle.inc_by(idle.len() as i64 - before as i64);
        result
    }

    /// Sends `request` (origin-form URI, Host set) on an idle connection, or a new one. The
    /// response body holds the connection until it has been read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, PoolError> {
        // The HTTP/2 and connection futures are boxed: held inline, their TLS and HTTP/2 state
        // made this future several KiB, copied on every request (callgrind: +17k instructions per
        // proxied call, most of it memcpy).
        loop {
            if let Some(sender) = self.shared_http2() {
                return Box::pin(self.send_http2(sender, request)).await;
            }
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => match Box::pin(self.new_connection()).await? {
                    Connection::Http1(sender) => (sender, false),
                    Connection::Http2(sender) => {
                        return Box::pin(self.send_http2(sender, request)).await;
                    }
                },
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let release = Some(Release {
                        pool: Arc::clone(self),
                        sender,
                    });
                    return Ok(response.map(|body| PooledBody {
                        body,
                        ended: false,
                        release,
                    }));
                }
                // The server closed an idle connection before the request went out: the request
                // comes back unsent and is safe to send on another connection.
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(err.into_error().into()),
                },
            }
        }
    }

    /// Sends on the HTTP/2 connection. Its streams need the target in absolute form, with the
    /// Host header's authority. A request the server refused unsent (the connection was closing)
    /// goes out once more, on a new connection.
    async fn send_http2(
        self: &Arc<Self>,
        mut sender: Http2Sender,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, PoolError> {
        to_absolute_form(&mut request);
        let mut retried = false;
        loop {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok(response.map(|body| PooledBody {
                        body,
                        ended: false,
                        release: None,
                    }));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !retried => {
                        request = unsent;
                        retried = true;
                        lock(&self.http2).take();
                        sender = match self.new_connection().await? {
                            Connection::Http2(sender) => sender,
                            // The server no longer offers HTTP/2: this request stays HTTP/2
                            // shaped, so it fails; the next ones use HTTP/1.1.
                            Connection::Http1(sender) => {
                                self.checkin(sender);
                                return Err(err.into_error().into());
                            }
                        };
                    }
                    _ => return Err(err.into_error().into()),
                },
            }
        }
    }

    /// The HTTP/2 connection, while it is open.
    fn shared_http2(&self) -> Option<Http2Sender> {
        let mut shared = lock(&self.http2);
        match shared.as_ref() {
            Some(sender) if sender.is_closed() => {
                *shared = None;
                None
            }
            sender => sender.cloned(),
        }
    }

    /// The most recently used connection that is ready for a request. One whose last response
    /// ended a moment ago may still be finishing it; it stays in the pool.
    fn checkout(&self) -> Option<Sender> {
        let sender = self.with_idle(|idle| {
            let mut index = idle.len();
            while index > 0 {
                index -= 1;
                if idle[index].sender.is_ready() {
                    return idle.remove(index).map(|idle| idle.sender);
                }
                if idle[index].sender.is_closed() {
                    idle.remove(index);
                }
            }
            None
        });
        if sender.is_some() {
            self.stats.reused.inc();
        }
        sender
    }

    fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        self.with_idle(|idle| {
            close_expired(idle, now);
            if idle.len() < MAX_IDLE {
                idle.push_back(Idle { sender, since: now });
            }
        });
    }

    /// Closes the connections idle past [`IDLE_TIMEOUT`] at `now`.
    fn close_idle(&self, now: Instant) {
        self.with_idle(|idle| close_expired(idle, now));
    }

    /// Closes expired idle connections every [`IDLE_CHECK_EVERY`], for the quiet times when no
    /// connection comes back to do it. Runs on the worker's runtime until it stops, or until the
    /// pool is dropped (a reload changed the upstream and its last request is done).
    pub async fn close_idle_periodically(pool: std::sync::Weak<Self>) {
        let mut check = tokio::time::interval(IDLE_CHECK_EVERY);
        loop {
            check.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            pool.close_idle(Instant::now());
        }
    }

    /// A connection for a request that found none idle. Until a TLS server has answered ALPN with
    /// HTTP/1.1, new connections are made one at a time, and a request that waited for one takes
    /// the HTTP/2 connection it made: a burst of first requests opens one connection, not one
    /// each.
    async fn new_connection(&self) -> Result<Connection, PoolError> {
        if self.tls.is_none() || self.speaks_http1_only.load(Ordering::Relaxed) {
            return self.connect().await;
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(sender) = self.shared_http2() {
            return Ok(Connection::Http2(sender));
        }
        let connection = self.connect().await?;
        match &connection {
            Connection::Http2(sender) => *lock(&self.http2) = Some(sender.clone()),
            Connection::Http1(_) => self.speaks_http1_only.store(true, Ordering::Relaxed),
        }
        Ok(connection)
    }

    /// A new connection: TCP, then TLS for an `https://` upstream, both within
    /// [`CONNECT_TIMEOUT`]; then HTTP/2 if the server chose it by ALPN, else HTTP/1.1.
    async fn connect(&self) -> Result<Connection, PoolError> {
        let timed_out = || PoolError::ConnectTimeout {
            address: self.address.clone(),
        };
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(&self.address))
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| PoolError::Connect {
                address: self.address.clone(),
                source,
            })?;
        self.stats.opened.inc();
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return http1_handshake(stream).await.map(Connection::Http1);
        };
        let stream = tokio::time::timeout_at(deadline, tls.connect(stream))
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| PoolError::Tls {
                address: self.address.clone(),
                source,
            })?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return http1_handshake(stream).await.map(Connection::Http1);
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(Connection::Http2(sender))
    }
}

async fn http1_handshake<S>(stream: S) -> Result<Sender, PoolError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Head and body copied into one buffer and written with write(2): requests are small, and
    // this measured fewer instructions than hyper's writev path (callgrind, about 0.5k/request).
    let (sender, connection) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// An HTTP/2 request carries its target as `:scheme` and `:authority`: the absolute form, from the
/// Host header, which HTTP/2 replaces.
fn to_absolute_form(request: &mut Request<Full<Bytes>>) {
    let Some(host) = request.headers_mut().remove(header::HOST) else {
        return;
    };
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(hyper::http::uri::Scheme::HTTPS);
    parts.authority = host.to_str().ok().and_then(|host| host.parse().ok());
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    *request.version_mut() = Version::HTTP_2;
}

/// The oldest are at the front: drops those closed or past their time.
fn close_expired(idle: &mut VecDeque<Idle>, now: Instant) {
    while idle.front().is_some_and(|oldest| {
        oldest.sender.is_closed() || now.saturating_duration_since(oldest.since) > IDLE_TIMEOUT
    }) {
        idle.pop_front();
    }
}

struct Release {
    pool: Arc<ConnectionPool>,
    sender: Sender,
}

/// A response body from the server. Once read to the end, it returns its connection to the pool
/// when dropped; dropped before that, the connection closes (HTTP/1.1 cannot abandon a response
/// half-read).
pub struct PooledBody {
    body: Incoming,
    /// Read to the end (a chunked body still says it is not, once it has ended).
    ended: bool,
    release: Option<Release>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.ended = true,
            Some(Ok(_)) => self.ended = self.body.is_end_stream(),
            Some(Err(_)) => self.release = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body may never be polled at all.
        if (self.ended || self.body.is_end_stream())
            && let Some(Release { pool, sender }) = self.release.take()
        {
            pool.checkin(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use http_body_util::BodyExt;
    use hyper::{header, service::service_fn};
    use tokio::net::TcpListener;

    use super::*;

    /// A real HTTP/1.1 server on loopback that counts the connections it accepted. `/stream`
    /// answers with a chunked body of three parts; anything else with "ok". With `keep_alive`
    /// false it closes each connection after one answer.
    async fn server(keep_alive: bool) -> (Arc<ConnectionPool>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(|request: Request<Incoming>| async move {
                    let parts = if request.uri().path() == "/stream" {
                        vec!["a", "b", "c"]
                    } else {
                        vec!["ok"]
                    };
                    Ok::<_, Infallible>(Response::new(Chunked(parts.into())))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (
            ConnectionPool::new(address, None, PoolStats::default()),
            accepted,
        )
    }

    /// A body of unknown length, so it goes out chunked, one part per frame.
    struct Chunked(VecDeque<&'static str>);

    impl Body for Chunked {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|part| Ok(Frame::data(Bytes::from(part)))),
            )
        }
    }

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .uri(path)
            .header(header::HOST, "test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn read(response: Response<PooledBody>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (pool, accepted) = server(true).await;
        for path in ["/", "/stream", "/", "/stream"] {
            let body = read(pool.send(get(path)).await.unwrap()).await;
            assert!(body == "ok" || body == "abc", "{body:?}");
            // Let the connection's task see the end of the response.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_response_dropped_half_read_does_not_give_its_connection_back() {
        let (pool, accepted) = server(true).await;
        let mut body = pool.send(get("/stream")).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        drop(body);
        assert_eq!(read(pool.send(get("/")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_server_closed_is_replaced() {
        let (pool, accepted) = server(false).await;
        for _ in 0..3 {
            assert_eq!(read(pool.send(get("/")).await.unwrap()).await, "ok");
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_idle_past_its_time_is_closed_without_waiting_for_traffic() {
        let (pool, accepted) = server(true).await;
        assert_eq!(read(pool.send(get("/")).await.unwrap()).await, "ok");
        tokio::task::yield_now().await;
        // Not yet past its time: kept and reused.
        pool.close_idle(Instant::now());
        assert_eq!(read(pool.send(get("/")).await.unwrap()).await, "ok");
        tokio::task::yield_now().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Past it: closed, so the next request needs a new connection.
        pool.close_idle(Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1));
        assert!(lock(&pool.idle).is_empty());
        assert_eq!(read(pool.send(get("/")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_server_that_is_not_there_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = ConnectionPool::new(address, None, PoolStats::default());
        match pool.send(get("/")).await {
            Err(PoolError::Connect { .. }) => {}
            Err(err) => panic!("expected a connect error, got {err}"),
            Ok(_) => panic!("a response from a closed port"),
        }
    }
}
