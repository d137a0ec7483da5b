//! The legacy HTTP+SSE transport (MCP 2024-11-05), still common: `GET <sse_path>` opens a stream
//! whose first event, `endpoint`, names the URI the client posts its messages to; the answers come
//! back on the stream.
//!
//! The gateway serves the stream at the server's own path and passes it through as it comes, but
//! reads its first event: the endpoint it names is bound to the caller who opened the stream, so
//! no other caller can post into that session, and the binding ends with the stream. The endpoint
//! goes to the client as an absolute path, so the client posts through the gateway even when the
//! server named itself by full URL.
//!
//! In a fleet, the client may post through another node than the one holding its stream, so the
//! endpoint is not remembered but sealed for the caller ([`SessionSeal`]): the client is told
//! `/.mcp-gateway/legacy/<sealed>`, which any node opens back into the server's endpoint. It
//! stays usable after the stream ends (the server then answers for its own session).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use hyper::body::{Body, Frame, SizeHint};

use super::{sealed::SessionSeal, sse::event_end};

/// Where a client of a fleet posts legacy messages: this, then the sealed server endpoint.
pub const SEALED_ENDPOINT: &str = "/.mcp-gateway/legacy/";

/// What becomes of an announced endpoint: bound to its caller in this node while the stream is
/// open, or sealed for its caller (fleet).
pub enum Announced {
    Bound(Arc<Endpoints>),
    Sealed(Arc<SessionSeal>),
}

/// The first event is read before anything is passed on; past this size it is passed on unread.
const MAX_FIRST_EVENT: usize = 8 * 1024;

/// Announced message endpoints (path and query) of open legacy streams, and their callers.
#[derive(Default)]
pub struct Endpoints {
    owners: DashMap<Box<str>, Arc<str>>,
}

impl Endpoints {
    /// The caller whose open stream announced `endpoint` (path and query, as the client posts to).
    pub fn owner(&self, endpoint: &str) -> Option<Arc<str>> {
        self.owners
            .get(endpoint)
            .map(|owner| Arc::clone(owner.value()))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// A legacy SSE stream on its way to the client, read until its first event with data (the one
/// that announces the endpoint).
pub struct EndpointWatch<B> {
    body: B,
    /// What came and was not passed on yet while watching; `None` once the watch is over.
    first_event: Option<BytesMut>,
    /// Trailers that came while watching, to pass on after what is held.
    held: Option<Frame<Bytes>>,
    /// The stream ended while watching.
    ended: bool,
    endpoints: Announced,
    caller: Arc<str>,
    /// Where the stream was opened (the server's SSE path), for relative endpoints.
    sse_path: Arc<str>,
    bound: Option<Box<str>>,
}

impl<B> EndpointWatch<B> {
    pub fn new(body: B, endpoints: Announced, caller: Arc<str>, sse_path: Arc<str>) -> Self {
        Self {
            body,
            first_event: Some(BytesMut::new()),
            held: None,
            ended: false,
            endpoints,
            caller,
            sse_path,
            bound: None,
        }
    }

    /// Takes the complete events held so far: comment-only blocks pass as they are; the first event
    /// with data is the one that may announce the endpoint (rewritten and bound if it does), and
    /// with it the watch is over.
    fn scan(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        let Some(buffered) = self.first_event.as_mut() else {
            return out;
        };
        while let Some(end) = event_end(buffered) {
            let event = buffered.split_to(end);
            match parse_event(&event) {
                None => out.extend_from_slice(&event),
                Some(("endpoint", data)) => {
                    match absolute_path(data.trim(), &self.sse_path) {
                        Some(endpoint) => {
                            let announced = match &self.endpoints {
                                Announced::Bound(endpoints) => {
                                    endpoints
                                        .owners
                                        .insert(endpoint.as_str().into(), Arc::clone(&self.caller));
                                    tracing::debug!(caller = %self.caller, "legacy SSE endpoint bound to its caller");
                                    self.bound = Some(endpoint.as_str().into());
                                    endpoint
                                }
                                Announced::Sealed(seal) => {
                                    format!(
                                        "{SEALED_ENDPOINT}{}",
                                        seal.seal(&self.caller, &endpoint)
                                    )
                                }
                            };
                            out.extend_from_slice(b"event: endpoint\ndata: ");
                            out.extend_from_slice(announced.as_bytes());
                            out.extend_from_slice(b"\n\n");
                        }
                        None => out.extend_from_slice(&event),
                    }
                    self.stop_watching(&mut out);
                    return out;
                }
                Some(_) => {
                    out.extend_from_slice(&event);
                    self.stop_watching(&mut out);
                    return out;
                }
            }
        }
        out
    }

    /// Passes on whatever is held, unread.
    fn stop_watching(&mut self, out: &mut BytesMut) {
        if let Some(rest) = self.first_event.take() {
            out.extend_from_slice(&rest);
        }
    }
}

impl<B> Body for EndpointWatch<B>
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
            if this.first_event.is_none() {
                if let Some(frame) = this.held.take() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if this.ended {
                    return Poll::Ready(None);
                }
                return Pin::new(&mut this.body).poll_frame(cx);
            }
            let mut out = this.scan();
            let held = this.first_event.as_ref().map_or(0, BytesMut::len);
            // The stream ended, or sent trailers, or the event grew too long: pass on what is held.
            if this.ended || this.held.is_some() || held > MAX_FIRST_EVENT {
                this.stop_watching(&mut out);
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            if this.first_event.is_none() {
                continue;
            }
            match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(buffered) = this.first_event.as_mut() {
                            buffered.extend_from_slice(&data);
                        }
                    }
                    Err(trailers) => this.held = Some(trailers),
                },
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => this.ended = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none()
            && self.first_event.as_ref().is_none_or(BytesMut::is_empty)
            && (self.ended || self.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // The first event may change length.
        SizeHint::default()
    }
}

impl<B> Drop for EndpointWatch<B> {
    fn drop(&mut self) {
        if let (Some(endpoint), Announced::Bound(endpoints)) = (self.bound.take(), &self.endpoints)
        {
            endpoints.owners.remove(&endpoint);
        }
    }
}

/// The name and data of an event; `None` for a block without data (comments, a bare `event:`).
fn parse_event(event: &[u8]) -> Option<(&str, &str)> {
    let event = std::str::from_utf8(event).ok()?;
    let mut name = "message";
    let mut data = None;
    for line in event.split(['\r', '\n']) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value,
            "data" => data = Some(value),
            _ => {}
        }
    }
    Some((name, data?))
}

/// `reference` (a full URL, an absolute path, or a path relative to the SSE path) as an absolute
/// path and query.
fn absolute_path(reference: &str, sse_path: &str) -> Option<String> {
    if reference.is_empty()
        || reference.contains(char::is_whitespace)
        || reference.starts_with("//")
    {
        return None;
    }
    if reference.starts_with('/') {
        return Some(reference.to_owned());
    }
    if let Ok(uri) = reference.parse::<hyper::Uri>()
        && uri.scheme().is_some()
    {
        return uri.path_and_query().map(|path| path.as_str().to_owned());
    }
    let directory = &sse_path[..sse_path.rfind('/').map_or(0, |slash| slash + 1)];
    Some(format!("{directory}{reference}"))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::mcp::sse::Parts;

    fn watch(parts: &[&'static str], endpoints: &Arc<Endpoints>) -> EndpointWatch<Parts> {
        EndpointWatch::new(
            Parts::of(parts.iter().copied()),
            Announced::Bound(Arc::clone(endpoints)),
            "alice".into(),
            "/legacy/sse".into(),
        )
    }

    async fn next_data(body: &mut EndpointWatch<Parts>) -> Option<Bytes> {
        body.frame()
            .await
            .map(|frame| frame.unwrap().into_data().unwrap())
    }

    #[tokio::test]
    async fn the_endpoint_is_bound_to_the_caller_while_the_stream_is_open() {
        let endpoints = Arc::new(Endpoints::default());
        // The first event arrives in pieces, with the next event behind it.
        let mut body = watch(
            &[
                "event: endpoint\nda",
                "ta: /message?sessionId=abc\n\nevent: message\n",
                "data: {}\n\n",
            ],
            &endpoints,
        );
        assert_eq!(
            next_data(&mut body).await.unwrap(),
            "event: endpoint\ndata: /message?sessionId=abc\n\nevent: message\n"
        );
        assert_eq!(
            endpoints.owner("/message?sessionId=abc").as_deref(),
            Some("alice")
        );
        assert_eq!(endpoints.owner("/message?sessionId=other"), None);
        assert_eq!(next_data(&mut body).await.unwrap(), "data: {}\n\n");
        assert_eq!(next_data(&mut body).await, None);
        drop(body);
        assert!(endpoints.is_empty(), "the binding ends with the stream");
    }

    #[tokio::test]
    async fn a_full_url_or_relative_endpoint_becomes_an_absolute_path() {
        let endpoints = Arc::new(Endpoints::default());
        // A comment before it passes as it is.
        let mut body = watch(
            &[
                ": hi\r\n\r\nevent: endpoint\r\ndata: http://10.0.0.5:3001/messages/?session_id=9\r\n\r\n",
            ],
            &endpoints,
        );
        assert_eq!(
            next_data(&mut body).await.unwrap(),
            ": hi\r\n\r\nevent: endpoint\ndata: /messages/?session_id=9\n\n"
        );
        assert!(endpoints.owner("/messages/?session_id=9").is_some());

        let mut relative = watch(&["event:endpoint\ndata:message?s=1\n\n"], &endpoints);
        next_data(&mut relative).await.unwrap();
        assert!(endpoints.owner("/legacy/message?s=1").is_some());
    }

    #[tokio::test]
    async fn a_stream_that_does_not_start_with_an_endpoint_passes_unchanged_and_binds_nothing() {
        let endpoints = Arc::new(Endpoints::default());
        let mut body = watch(&[": keepalive\n\nevent: message\ndata: {}\n\n"], &endpoints);
        assert_eq!(
            next_data(&mut body).await.unwrap(),
            ": keepalive\n\nevent: message\ndata: {}\n\n"
        );
        // Ended before its first event was complete: what came is passed on.
        let mut cut = watch(&["event: endpoint\ndata: /m"], &endpoints);
        assert_eq!(
            next_data(&mut cut).await.unwrap(),
            "event: endpoint\ndata: /m"
        );
        assert_eq!(next_data(&mut cut).await, None);
        assert!(endpoints.is_empty());
    }
}
