//! An SSE answer with its list results filtered, and everything else passed as it comes.
//!
//! Events are cut at their blank line; each complete event goes on at once. Only an event whose
//! data is a JSON-RPC result (it contains `"result"`) is parsed, and only one that carries a list
//! is rewritten; every other event leaves byte for byte as it came, in the same poll. What is held
//! is the unfinished tail of one event, at most [`MAX_EVENT_BYTES`]: an event larger than that
//! could not be checked, so the stream ends there (the caller sees it cut, never unfiltered). A
//! stream read only to learn from (tool hints, tasks) is not cut: from such an event on, it passes
//! unread.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use super::filter::ListFilter;
use crate::mcp::sse;

/// The longest event a filtered stream holds while it arrives.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

pub struct FilteredEvents<B> {
    body: B,
    filter: ListFilter,
    /// The start of an event not complete yet.
    pending: BytesMut,
    /// How much of `pending` is known to hold no blank line.
    scanned: usize,
    /// Trailers, passed on after what is pending.
    trailers: Option<Frame<Bytes>>,
    ended: bool,
    /// The rest of the stream passes unread (an event too large to learn from).
    unread: bool,
}

impl<B> FilteredEvents<B> {
    pub fn new(body: B, filter: ListFilter) -> Self {
        Self {
            body,
            filter,
            pending: BytesMut::new(),
            scanned: 0,
            trailers: None,
            ended: false,
            unread: false,
        }
    }

    /// The complete events held, each as it came or rewritten.
    fn complete_events(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        // A blank line is at most 4 bytes: look again from just before where the last scan ended.
        let mut from = self.scanned.saturating_sub(3);
        while let Some(end) = sse::event_end(&self.pending[from..]) {
            let event = self.pending.split_to(from + end);
            from = 0;
            match self.rewritten(&event) {
                Some(rewritten) => out.extend_from_slice(&rewritten),
                None => out.extend_from_slice(&event),
            }
        }
        self.scanned = self.pending.len();
        out
    }

    fn rewritten(&self, event: &[u8]) -> Option<BytesMut> {
        if !contains(event, b"\"result\"") {
            return None;
        }
        let data = sse::data(event)?;
        let mut message = serde_json::from_str(&data).ok()?;
        self.filter
            .apply(&mut message)
            .then(|| sse::with_data(event, &message.to_string()))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

impl<B> Body for FilteredEvents<B>
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
        loop {
            if this.unread && this.pending.is_empty() {
                return Pin::new(&mut this.body).poll_frame(cx);
            }
            if this.ended || this.trailers.is_some() || this.unread {
                // What is left is an unfinished event, passed on as it is.
                if !this.pending.is_empty() {
                    let rest = this.pending.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        let out = this.complete_events();
                        if this.pending.len() > MAX_EVENT_BYTES && !this.filter.restricts() {
                            tracing::warn!(
                                max = MAX_EVENT_BYTES,
                                "an SSE event of the upstream is too large to read; passing the rest of the stream unread"
                            );
                            this.unread = true;
                            let mut out = out;
                            out.extend_from_slice(&this.pending.split());
                            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                        }
                        if this.pending.len() > MAX_EVENT_BYTES {
                            tracing::warn!(
                                max = MAX_EVENT_BYTES,
                                "an SSE event of the upstream is too large to filter; ending the stream"
                            );
                            this.pending.clear();
                            this.ended = true;
                            return Poll::Ready(None);
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                        }
                    }
                    Err(trailers) => this.trailers = Some(trailers),
                },
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => this.ended = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty()
            && self.trailers.is_none()
            && (self.ended || self.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // Events may change length.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use serde_json::{Value, json};

    use super::*;
    use crate::authz::{
        filter::ListKind,
        grants::{Grants, Rule},
        patterns::{Patterns, Separator},
    };
    use crate::mcp::sse::Parts;

    fn only_search() -> ListFilter {
        let rule = Rule {
            origin: "users.alice".into(),
            tools: Patterns::new(&["search".to_owned()], Separator::Free).unwrap(),
            ..Rule::default()
        };
        let grants = Arc::new(Grants::new(vec![Arc::new(rule)], false));
        ListFilter::new(Some(grants), None, vec![(json!(1), ListKind::Tools)])
    }

    async fn frames(parts: &[&str]) -> Vec<String> {
        let body = Parts::of(parts.iter().copied());
        let mut filtered = FilteredEvents::new(body, only_search());
        let mut frames = Vec::new();
        while let Some(frame) = filtered.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            frames.push(String::from_utf8(data.to_vec()).unwrap());
        }
        frames
    }

    #[tokio::test]
    async fn the_list_result_event_is_rewritten_and_other_events_pass_untouched_at_once() {
        let progress = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
        let list = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search"},{"name":"deploy"}],"nextCursor":"c2"}});
        let list_event = format!("event: message\nid: 42\ndata: {list}\n\n");
        let (head, tail) = list_event.split_at(30);
        let frames = frames(&[": keepalive\n\n", progress, head, tail]).await;
        assert_eq!(frames[0], ": keepalive\n\n");
        assert_eq!(
            frames[1], progress,
            "passed on byte for byte, in its own poll"
        );
        let rewritten = &frames[2];
        assert!(
            rewritten.starts_with("event: message\nid: 42\ndata: "),
            "{rewritten}"
        );
        let data: Value = serde_json::from_str(
            rewritten
                .trim_end()
                .strip_prefix("event: message\nid: 42\ndata: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(data["result"]["tools"], json!([{"name":"search"}]));
        assert_eq!(data["result"]["nextCursor"], "c2");
        assert_eq!(frames.len(), 3);
    }

    #[tokio::test]
    async fn a_stream_read_only_to_learn_passes_an_event_too_large_to_read_whole() {
        let learning = ListFilter::new(None, None, vec![(json!(1), ListKind::Tools)]);
        let huge = format!("data: {}", "x".repeat(MAX_EVENT_BYTES));
        let parts = [huge.as_str(), "\n\n", "data: {\"id\":2}\n\n"];
        let mut body = FilteredEvents::new(Parts::of(parts.iter().copied()), learning);
        let mut passed = Vec::new();
        while let Some(frame) = body.frame().await {
            passed.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(passed, parts.concat().as_bytes());
        // A stream filtered for a caller is cut there instead.
        let mut cut = FilteredEvents::new(Parts::of(parts.iter().copied()), only_search());
        assert!(cut.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_event_arriving_byte_by_byte_is_found_without_rescanning() {
        let list = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"deploy"}]}});
        let event = format!("data: {list}\r\n\r\n");
        let bytes: Vec<String> = event.chars().map(String::from).collect();
        let parts: Vec<&str> = bytes.iter().map(String::as_str).collect();
        let frames = frames(&parts).await;
        assert_eq!(frames.len(), 1);
        assert!(frames[0].contains("\"tools\":[]"), "{}", frames[0]);
    }
}
