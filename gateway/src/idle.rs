//! Slow and idle clients: closing connections that have had no request in progress for too long,
//! including those whose request head is still trickling in (slowloris), and failing request
//! bodies that stop arriving.
//!
//! hyper's own header-read timeout does this for HTTP/1.1 with a timer set and cleared around
//! every request head: 1.4k of the gateway's 57k instructions per request (callgrind). Here a
//! connection has one timer that fires at most once per timeout, and requests only count
//! themselves in and out, for about half that.

use std::{
    error::Error as StdError,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use hyper::body::{Body, Frame, SizeHint};

/// One client connection's requests in progress, and since when it has had none.
pub struct Activity {
    opened: Instant,
    in_progress: AtomicU32,
    /// When the last request ended (or the connection opened), in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_progress: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// Counts a request in: it is in progress until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Relaxed);
        InProgress(Arc::clone(self))
    }

    /// Since when no request has been in progress; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_progress.load(Relaxed) == 0)
            .then(|| self.opened + Duration::from_millis(self.idle_since_ms.load(Relaxed)))
    }

    /// Returns once the connection has had no request in progress for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = self.idle_since().unwrap_or_else(Instant::now) + timeout;
            tokio::time::sleep_until(deadline.into()).await;
            if self
                .idle_since()
                .is_some_and(|since| since.elapsed() >= timeout)
            {
                return;
            }
        }
    }
}

/// A request in progress on its connection; dropping it counts the request out.
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.store(now, Relaxed);
        activity.in_progress.fetch_sub(1, Relaxed);
    }
}

/// A response body whose request stays in progress until hyper is done with the body: a long
/// stream is not an idle connection.
pub struct InProgressBody<B> {
    body: B,
    _in_progress: InProgress,
}

impl<B> InProgressBody<B> {
    pub fn new(body: B, in_progress: InProgress) -> Self {
        Self {
            body,
            _in_progress: in_progress,
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
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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

    #[tokio::test(flavor = "current_thread")]
    async fn only_a_connection_without_requests_for_the_timeout_is_idle() {
        let timeout = Duration::from_millis(100);
        let activity = Activity::new();
        let request = activity.start();
        // In progress, for however long: never idle.
        let waited = tokio::time::timeout(timeout * 4, activity.idle_for(timeout)).await;
        assert!(waited.is_err(), "a request in progress made it idle");
        drop(request);
        let ended = Instant::now();
        activity.idle_for(timeout).await;
        assert!(ended.elapsed() >= timeout);
    }
}
