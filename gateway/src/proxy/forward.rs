//! The chain's last step: the request sent upstream and the answer streamed back as it arrives
//! (its lists filtered for the caller), and what the answer tells about sessions and legacy
//! streams.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    Method, Response, StatusCode,
    header::{HeaderName, HeaderValue},
    http::request,
};

use super::{
    Call, Endpoint, Gateway, ProxyBody, Refusal, Worker, answer, call,
    stream::{KeepAlive, ListenRecord},
};
use crate::{
    audit,
    authz::ListFilter,
    config::ServingSettings,
    limit::{HoldingSlot, InFlightSlot, Limiter},
    mcp::{
        headers::MCP_SESSION_ID,
        legacy_sse::{Announced, EndpointWatch},
    },
    metrics::GaugeGuard,
    upstream::PooledBody,
};

/// What the chain hands its last step, besides the request: the settings it runs under, the
/// authenticated caller, and the caller's in-flight slot.
pub(super) struct Upstreamed<'a> {
    pub serving: &'a ServingSettings,
    pub caller: &'a Arc<str>,
    pub request_id: &'a HeaderValue,
    pub slot: InFlightSlot,
}

/// An upstream answer on its way to the client: it holds the caller's in-flight slot, and
/// counts as an open stream when it is one.
type Relayed = HoldingSlot<PooledBody, (InFlightSlot, Option<GaugeGuard>, Option<ListenRecord>)>;

/// Proxies in front of the gateway (nginx) must not buffer an event stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

fn is_event_stream<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"))
}

impl<L: Limiter> Gateway<L> {
    /// Sends the request upstream and streams the answer back as it arrives, holding the
    /// caller's in-flight slot until the answer is done.
    pub(super) async fn forward(
        &self,
        worker: &Worker,
        mut parts: request::Parts,
        body: Bytes,
        call: &mut Call<'_>,
        upstreamed: Upstreamed<'_>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let Upstreamed {
            serving,
            caller,
            request_id,
            slot,
        } = upstreamed;
        if call.list_filter.as_ref().is_some_and(ListFilter::must_read) {
            // An answer to filter must come uncompressed.
            parts.headers.remove(hyper::header::ACCEPT_ENCODING);
        }
        let is_delete = parts.method == Method::DELETE;
        if let Some(upstream_session) = &call.upstream_session
            && let Ok(value) = HeaderValue::from_str(upstream_session)
        {
            parts.headers.insert(MCP_SESSION_ID, value);
        }
        // A legacy message goes to the endpoint its stream announced, which the client posted to
        // (or which the sealed endpoint it posted to holds).
        let client_path = (call.endpoint == Endpoint::LegacyMessage).then(|| {
            call.upstream_endpoint
                .clone()
                .unwrap_or_else(|| parts.uri.path().to_owned())
        });
        let upstream_path = match call.endpoint {
            Endpoint::Mcp => None,
            Endpoint::LegacyStream => serving.upstream.legacy_sse_path.as_deref(),
            Endpoint::LegacyMessage => client_path.as_deref(),
        };
        call.forwarded_at = Some(Instant::now());
        let response = worker
            .upstream(&serving.upstream, || {
                Arc::clone(&self.in_force.current().serving.upstream)
            })
            .send(parts, body, upstream_path, caller, &call.context.peer.ip_text, request_id)
            .await
            .map_err(|err| {
                tracing::warn!(request_id = %call.context.request_id, error = %err, "upstream request failed");
                Refusal::from(err)
            })?;
        let sse = is_event_stream(&response);
        let stream = sse.then(|| self.metrics.stream());
        let listen = (sse && call.listens() && response.status().is_success()).then(|| {
            let opened = audit::stream_opened_line(&call.context, "subscriptions/listen");
            worker.audit.write_in_background(opened);
            ListenRecord::open(Arc::clone(&worker.audit), call.context.request_id, caller)
        });
        let response = response.map(|body| HoldingSlot::new(body, (slot, stream, listen)));
        let response = self.track_sessions(serving, call, caller, is_delete, response);
        let mut response = match call.list_filter.take() {
            Some(filter) => answer::filter_lists(response, filter).await?,
            None => response,
        };
        if sse {
            let headers = response.headers_mut();
            headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
            // Filtered events and keep-alives change its length: a stream the upstream sent with
            // a length (a short answer) goes chunked.
            headers.remove(hyper::header::CONTENT_LENGTH);
            if let Some(interval) = serving.limits.sse_keepalive {
                response = response.map(|body| KeepAlive::new(body, interval).boxed());
            }
        }
        Ok(response)
    }

    /// What the upstream's answer tells about sessions: a new session belongs to its caller, a
    /// deleted one is forgotten, a legacy stream's endpoint is bound to its caller.
    fn track_sessions(
        &self,
        serving: &ServingSettings,
        call: &Call<'_>,
        caller: &Arc<str>,
        is_delete: bool,
        mut response: Response<Relayed>,
    ) -> Response<ProxyBody> {
        // (The request's own session was claimed before forwarding.)
        if let Some(session) = call::header_str(response.headers(), &MCP_SESSION_ID) {
            let shown = if call.upstream_session.as_deref() == Some(session) {
                // The upstream echoes the session the client named by a sealed id: it keeps it.
                call.context.session.clone()
            } else if call.context.session.as_deref() == Some(session) {
                None
            } else {
                self.sessions.issued(session, caller)
            };
            if let Some(value) = shown.and_then(|shown| HeaderValue::from_str(&shown).ok()) {
                response.headers_mut().insert(MCP_SESSION_ID, value);
            }
        }
        // Ended by the client, or unknown to the upstream (which answers 404 for a session it
        // ended or lost): either way the id is not usable any more.
        if let Some(session) = &call.context.session
            && ((is_delete && response.status().is_success())
                || response.status() == StatusCode::NOT_FOUND)
        {
            self.sessions.forget(session);
        }
        if let (Endpoint::LegacyStream, Some(sse_path)) =
            (call.endpoint, &serving.upstream.legacy_sse_path)
            && response.status().is_success()
        {
            let endpoints = match self.sessions.seal() {
                Some(seal) => Announced::Sealed(Arc::clone(seal)),
                None => Announced::Bound(Arc::clone(&self.legacy_endpoints)),
            };
            let (caller, sse_path) = (Arc::clone(caller), Arc::clone(sse_path));
            return response
                .map(|body| EndpointWatch::new(body, endpoints, caller, sse_path).boxed());
        }
        response.map(BodyExt::boxed)
    }
}
