//! SSE answers on their way back: kept alive through idle load balancers, marked unbuffered, and,
//! for `subscriptions/listen`, audited when they open and close.
//!
//! A load balancer or NAT between client and gateway drops a connection that carries nothing for
//! a minute or so; a listen stream may stay quiet for hours. When the upstream has sent nothing
//! for `sse_keepalive_secs`, the gateway sends an SSE comment line (`:`), which every client
//! ignores, but only between events, never inside one.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::audit::{self, WorkerAudit};

/// What the gateway sends on a quiet stream.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// An SSE body with a comment line sent after each `interval` of upstream silence, at an event
/// boundary.
pub struct KeepAlive<B> {
    body: B,
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    /// The last two bytes passed on: an event ends with a blank line.
    tail: [u8; 2],
}

impl<B> KeepAlive<B> {
    pub fn new(body: B, interval: Duration) -> Self {
        Self {
            body,
            interval,
            timer: Box::pin(tokio::time::sleep(interval)),
            // Nothing sent yet is a boundary.
            tail: *b"\n\n",
        }
    }

    fn at_event_boundary(&self) -> bool {
        self.tail == *b"\n\n" || self.tail == *b"\r\r" || self.tail == *b"\n\r"
    }

    fn remember(&mut self, data: &[u8]) {
        match data {
            [] => {}
            [last] => self.tail = [self.tail[1], *last],
            [.., second, last] => self.tail = [*second, *last],
        }
    }
}

impl<B> Body for KeepAlive<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
                    && let Some(data) = data
                {
                    this.remember(data);
                }
                let deadline = tokio::time::Instant::now() + this.interval;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let deadline = tokio::time::Instant::now() + this.interval;
                this.timer.as_mut().reset(deadline);
                if !this.at_event_boundary() {
                    // Inside an event the comment would corrupt it; wait for the next interval.
                    let _ = this.timer.as_mut().poll(cx);
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEPALIVE)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Keep-alives make the length unknown.
        SizeHint::default()
    }
}

/// A `subscriptions/listen` stream being relayed: its closing is audited when it drops, however
/// it ends (the client closed it, the upstream ended it, the gateway shut down).
pub struct ListenRecord {
    audit: Arc<WorkerAudit>,
    request_id: String,
    caller: Arc<str>,
    opened: Instant,
}

impl ListenRecord {
    pub fn open(audit: Arc<WorkerAudit>, request_id: &str, caller: &Arc<str>) -> Self {
        Self {
            audit,
            request_id: request_id.to_owned(),
            caller: Arc::clone(caller),
            opened: Instant::now(),
        }
    }
}

impl Drop for ListenRecord {
    fn drop(&mut self) {
        let line = audit::stream_closed_line(&self.request_id, &self.caller, self.opened.elapsed());
        self.audit.write_in_background(line);
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, channel::Channel};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_gets_a_comment_between_events_and_never_inside_one() {
        let (mut tx, body) = Channel::<Bytes, std::convert::Infallible>::new(4);
        let mut body = KeepAlive::new(body, Duration::from_secs(15));
        tx.send_data(Bytes::from_static(b"event: message\ndata: {}\n\n"))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"event: message\ndata: {}\n\n");
        // Quiet for 15 s after a whole event: a comment.
        let kept = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&kept[..], KEEPALIVE);
        // Half an event, then quiet: nothing is inserted until the event is whole.
        tx.send_data(Bytes::from_static(b"data: {\"half\""))
            .await
            .unwrap();
        let half = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&half[..], b"data: {\"half\"");
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(40)).await;
            tx.send_data(Bytes::from_static(b":true}\n\n"))
                .await
                .unwrap();
            tx
        });
        let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&rest[..], b":true}\n\n");
        let _tx = sender.await.unwrap();
        let kept = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&kept[..], KEEPALIVE);
    }
}
