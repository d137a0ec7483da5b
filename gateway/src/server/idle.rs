//! Slow and idle clients: closing connections that have had no request in progress for too long
//! (including those whose request head is still trickling in: slowloris) or whose client has
//! stopped taking its responses (its socket full, or on HTTP/2 a stream's window kept closed),
//! and failing request bodies that stop arriving.
//!
//! hyper's own header-read timeout does part of this for HTTP/1.1 with a timer set and cleared
//! around every request head: 1.4k of the gateway's 57k instructions per request (callgrind).
//! Here a connection has one timer that fires at most once per timeout, and requests and writes
//! only note themselves, for about half that.

use std::{
    error::Error as StdError,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::lock;

/// A "blocked since" time, in milliseconds since the connection opened, while nothing is blocked.
const NOT_BLOCKED: u64 = u64::MAX;

/// One client connection's requests in progress, since when it has had none, and since when its
/// client has not taken what the gateway writes.
pub struct Activity {
    opened: Instant,
    in_progress: AtomicU32,
    /// A request has started on the connection.
    any_request: AtomicBool,
    /// When the last request ended (or the connection opened), in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
    /// When a write to the client first found its socket full, in milliseconds since `opened`;
    /// [`NOT_BLOCKED`] once a write goes through.
    writes_blocked_since_ms: AtomicU64,
    /// The HTTP/2 response bodies in progress, each with since when hyper has held its last
    /// frame without asking for the next (the stream's window is closed), or [`NOT_BLOCKED`].
    streams: Mutex<Vec<Weak<AtomicU64>>>,
}

/// Why a connection is closed by [`Activity::stale_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// No request in progress (or only a request head that never completed).
    Idle,
    /// The client stopped reading: every write to it, or every frame of one of its HTTP/2
    /// streams, has been held back for the whole timeout.
    NotReading,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_progress: AtomicU32::new(0),
            any_request: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            writes_blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
            streams: Mutex::default(),
        })
    }

    /// Counts a request in: it is in progress until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InProgress {
        self.any_request.store(true, Relaxed);
        self.in_progress.fetch_add(1, Relaxed);
        InProgress(Arc::clone(self))
    }

    /// Whether a request has started on the connection.
    pub fn had_request(&self) -> bool {
        self.any_request.load(Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NOT_BLOCKED - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// Since when no request has been in progress; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_progress.load(Relaxed) == 0).then(|| self.at(self.idle_since_ms.load(Relaxed)))
    }

    /// Since when writes to the client have been blocked; `None` if the last one went through.
    fn writes_blocked_since(&self) -> Option<Instant> {
        let since = self.writes_blocked_since_ms.load(Relaxed);
        (since != NOT_BLOCKED).then(|| self.at(since))
    }

    /// Since when the longest-held HTTP/2 stream has had a frame held back; `None` if none has.
    fn streams_blocked_since(&self) -> Option<Instant> {
        lock(&self.streams)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|blocked_since| blocked_since.load(Relaxed))
            .min()
            .filter(|&since| since != NOT_BLOCKED)
            .map(|since| self.at(since))
    }

    /// Tracks one more HTTP/2 response body; it notes in the returned cell when its frames are
    /// held back.
    fn watch_stream(&self) -> Arc<AtomicU64> {
        let blocked_since = Arc::new(AtomicU64::new(NOT_BLOCKED));
        let mut streams = lock(&self.streams);
        streams.retain(|stream| stream.strong_count() > 0);
        streams.push(Arc::downgrade(&blocked_since));
        blocked_since
    }

    /// Notes whether a write to the client went through. Called on every write: the common case
    /// is one load.
    fn note_write(&self, blocked: bool) {
        let since = self.writes_blocked_since_ms.load(Relaxed);
        if blocked && since == NOT_BLOCKED {
            self.writes_blocked_since_ms.store(self.now_ms(), Relaxed);
        } else if !blocked && since != NOT_BLOCKED {
            self.writes_blocked_since_ms.store(NOT_BLOCKED, Relaxed);
        }
    }

    /// Returns once the connection has had no request in progress for `timeout`, or its writes
    /// or one of its HTTP/2 streams have been blocked for `timeout` (a long stream to a client
    /// that reads it is neither).
    ///
    /// Something that becomes blocked after a check is seen at the next one, at most `timeout`
    /// later, which is before its own deadline.
    pub async fn stale_for(&self, timeout: Duration) -> Stale {
        loop {
            let earliest = [
                self.idle_since().map(|since| (since, Stale::Idle)),
                self.writes_blocked_since()
                    .map(|since| (since, Stale::NotReading)),
                self.streams_blocked_since()
                    .map(|since| (since, Stale::NotReading)),
            ]
            .into_iter()
            .flatten()
            .min_by_key(|(since, _)| *since);
            let deadline = match earliest {
                Some((since, why)) if since.elapsed() >= timeout => return why,
                Some((since, _)) => since + timeout,
                None => Instant::now() + timeout,
            };
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A request in progress on its connection; dropping it counts the request out.
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since_ms.store(activity.now_ms(), Relaxed);
        activity.in_progress.fetch_sub(1, Relaxed);
    }
}

/// A response body whose request stays in progress until hyper is done with the body: a long
/// stream is not an idle connection.
pub struct InProgressBody<B> {
    body: B,
    in_progress: InProgress,
    /// On HTTP/2: since when hyper has held this body's last frame without asking for the next.
    stream_blocked_since: Option<Arc<AtomicU64>>,
}

impl<B> InProgressBody<B> {
    /// On HTTP/2 the client paces each stream with its flow-control window, and hyper asks for
    /// no more of a body while the window is closed: such a stream is watched too. (On HTTP/1.1 a
    /// client that stops reading fills its socket, which [`WatchedWrites`] sees.)
    pub fn new(body: B, in_progress: InProgress, http2: bool) -> Self {
        let stream_blocked_since = http2.then(|| in_progress.0.watch_stream());
        Self {
            body,
            in_progress,
            stream_blocked_since,
        }
    }
}

impl<B: Body + Unpin> Body for InProgressBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(blocked_since) = &this.stream_blocked_since {
            // A frame handed over is held until hyper asks for the next one.
            let since = match polled {
                Poll::Ready(Some(Ok(_))) => this.in_progress.0.now_ms(),
                _ => NOT_BLOCKED,
            };
            blocked_since.store(since, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's socket, noting in its connection's [`Activity`] whether each write went through.
pub struct WatchedWrites<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> WatchedWrites<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WatchedWrites<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WatchedWrites<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.note_write(written.is_pending());
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.note_write(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving for {0:?}")]
pub struct BodyStalled(pub Duration);

/// A request body that fails with [`BodyStalled`] once nothing has arrived for `timeout`. The
/// timer is set only while the body waits for the client, which a small body that came with its
/// head never does.
pub struct StallTimeout<B> {
    body: B,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> StallTimeout<B> {
    pub fn new(body: B, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            stalled: None,
        }
    }
}

impl<B> Body for StallTimeout<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.stalled = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let stalled = this
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyStalled(timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times are kept in whole milliseconds: a deadline may come up to one early.
    const ROUNDING: Duration = Duration::from_millis(1);

    #[tokio::test(flavor = "current_thread")]
    async fn only_a_connection_without_requests_for_the_timeout_is_idle() {
        let timeout = Duration::from_millis(100);
        let activity = Activity::new();
        let request = activity.start();
        // In progress, for however long: never idle.
        let waited = tokio::time::timeout(timeout * 4, activity.stale_for(timeout)).await;
        assert!(waited.is_err(), "a request in progress made it idle");
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.stale_for(timeout).await, Stale::Idle);
        assert!(ended.elapsed() + ROUNDING >= timeout);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_whose_writes_stay_blocked_for_the_timeout_is_not_reading() {
        let timeout = Duration::from_millis(100);
        let activity = Activity::new();
        let _stream = activity.start();
        // Blocked for a while, then a write goes through: the client reads, slowly.
        activity.note_write(true);
        tokio::time::sleep(timeout / 2).await;
        activity.note_write(false);
        let waited = tokio::time::timeout(timeout * 2, activity.stale_for(timeout)).await;
        assert!(waited.is_err(), "a client that reads was closed");
        activity.note_write(true);
        let blocked = Instant::now();
        activity.note_write(true);
        assert_eq!(activity.stale_for(timeout).await, Stale::NotReading);
        assert!(blocked.elapsed() + ROUNDING >= timeout);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_http2_body_whose_frame_is_held_for_the_timeout_is_not_read() {
        use http_body_util::{BodyExt, Full};
        let timeout = Duration::from_millis(100);
        let activity = Activity::new();
        let event = Full::new(bytes::Bytes::from_static(b"data: 1\n\n"));
        let mut body = InProgressBody::new(event, activity.start(), true);
        body.frame().await.expect("a frame").expect("data");
        let held = Instant::now();
        assert_eq!(activity.stale_for(timeout).await, Stale::NotReading);
        assert!(held.elapsed() + ROUNDING >= timeout);
        // Asked for the next (the end): nothing is held any more.
        assert!(body.frame().await.is_none());
        let waited = tokio::time::timeout(timeout * 2, activity.stale_for(timeout)).await;
        assert!(
            waited.is_err(),
            "a body taken to its end still counted as held"
        );
    }
}
