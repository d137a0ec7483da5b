//! The request path, in one place. [`Gateway::chain`] reads top to bottom:
//!
//! `check URI and Origin -> authenticate -> read body -> parse -> check ownership -> authorize ->
//! limit -> in-flight slot -> audit -> forward (list answers filtered for the caller)`
//!
//! and every step refuses with the one error type, [`Refusal`]. Every step a client can make
//! expensive is bounded by `[limits]` (URI, body, batch, JSON depth, argument keys, requests in
//! flight). [`Gateway::finish`] then closes
//! every request, whatever its outcome: it writes the response line of a forwarded request, or
//! reports the offense and writes the audit lines of a refused one, and makes the answer. Metrics
//! attach there.
//!
//! A request reads one [`Snapshot`] of the policy and the serving settings from start to end, so a
//! reload never mixes two configurations in one request; limiter windows and sessions live
//! outside it and survive it.

mod answer;
mod call;
mod refusal;
mod worker;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{
    Method, Request, Response, StatusCode, Uri,
    body::Incoming,
    header::HeaderValue,
    http::{request, uri::PathAndQuery},
};
use serde_json::json;

pub use call::{Call, Route};
pub use refusal::{ProxyBody, Refusal};
pub use worker::Worker;

use crate::{
    audit::{self, AuditLog, Decision, Peer},
    authz::{self, ToolCatalog},
    config::{NodeSettings, PolicySettings, RateLimit, ServingSettings, Settings},
    fleet::{self, NodeLimiter},
    limit::{HoldingSlot, InFlight, InFlightSlot, Limiter, NotAdmitted},
    mcp::{
        headers::{MCP_SESSION_ID, check_mcp_headers},
        jsonrpc::{self, code},
        legacy_sse::{Announced, EndpointWatch, Endpoints, SEALED_ENDPOINT},
        sealed::SessionSeal,
        sessions::{SessionError, SessionOwners, Sessions},
    },
    metrics::{self, GaugeGuard, Metrics, RequestRecord},
    policy::{Caller, Policy, PolicyStore, Snapshot},
    protection::Protection,
    server::idle::{BodyStalled, StallTimeout},
    upstream::{PooledBody, REQUEST_ID},
};

/// Everything a request needs, shared by all connections. `L` counts the limits: this node's
/// own or the fleet's ([`NodeLimiter`]).
pub struct Gateway<L: Limiter = NodeLimiter> {
    settings: NodeSettings,
    /// The policy and the serving settings, swapped together by a reload.
    in_force: PolicyStore,
    /// Per caller.
    caller_limiter: L,
    /// Per caller and tool, for the tools with a limit of their own.
    tool_limiter: L,
    /// Requests of each caller being forwarded now.
    in_flight: InFlight,
    audit: AuditLog,
    sessions: SessionOwners,
    /// Message endpoints of open legacy SSE streams, by caller.
    legacy_endpoints: Arc<Endpoints>,
    /// Tool annotations the upstream listed, for rules that read them.
    catalog: Arc<ToolCatalog>,
    protection: Protection,
    metrics: Metrics,
    /// Whether the fleet's Redis answers, when this node is in a fleet.
    fleet: Option<Arc<fleet::Health>>,
}

impl Gateway {
    /// A gateway that counts limits in this process.
    pub fn new(settings: Settings, audit: AuditLog, protection: Protection) -> Self {
        Self::with_limiters(
            settings,
            NodeLimiter::default(),
            NodeLimiter::default(),
            audit,
            protection,
        )
    }
}

impl<L: Limiter> Gateway<L> {
    pub fn with_limiters(
        settings: Settings,
        caller_limiter: L,
        tool_limiter: L,
        audit: AuditLog,
        protection: Protection,
    ) -> Self {
        let seal = settings
            .node
            .fleet
            .as_ref()
            .and_then(|fleet| SessionSeal::new(&fleet.session_keys));
        let sessions = match seal {
            Some(seal) => SessionOwners::Sealed(Arc::new(seal)),
            None => SessionOwners::Table(Sessions::new(
                settings.node.limits.max_sessions,
                settings.node.limits.max_sessions_per_caller,
            )),
        };
        let caller_labels = settings
            .node
            .admin
            .as_ref()
            .is_none_or(|admin| admin.caller_labels);
        let metrics = Metrics::new(caller_labels, audit.stats(), protection.offense_counts());
        Self {
            settings: settings.node,
            in_force: PolicyStore::new(Snapshot {
                serving: settings.serving,
                policy: Policy::new(settings.policy),
            }),
            caller_limiter,
            tool_limiter,
            in_flight: InFlight::default(),
            audit,
            sessions,
            legacy_endpoints: Arc::default(),
            catalog: Arc::default(),
            protection,
            metrics,
            fleet: None,
        }
    }

    /// This node shares its state with a fleet whose Redis link reports `health`.
    pub fn in_fleet(mut self, health: Arc<fleet::Health>) -> Self {
        self.fleet = Some(health);
        self
    }

    /// The fleet's Redis link, when this node is in a fleet.
    pub fn fleet(&self) -> Option<&Arc<fleet::Health>> {
        self.fleet.as_ref()
    }

    /// The settings only a restart changes.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The current policy and serving settings.
    pub fn in_force(&self) -> Arc<Snapshot> {
        self.in_force.current()
    }

    /// Swaps in new serving settings and a new policy (users, keys, limits), in one step.
    /// Requests under way finish with the old ones; limiter windows carry over.
    pub fn replace(&self, serving: ServingSettings, policy: PolicySettings) {
        self.in_force.replace(Snapshot {
            serving,
            policy: Policy::new(policy),
        });
    }

    /// Swaps in a new policy, keeping the serving settings.
    pub fn replace_policy(&self, policy: PolicySettings) {
        self.replace(self.in_force().serving.clone(), policy);
    }

    /// Drops the limiter state of callers idle for the longest window of the current policy.
    pub fn sweep_limiters(&self) {
        let idle_after = self.in_force.current().policy.longest_window();
        self.caller_limiter.sweep(idle_after);
        self.tool_limiter.sweep(idle_after);
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How much of its limit each caller used within its current window: `(caller, used,
    /// limit)`, busiest first.
    pub fn caller_usage(&self) -> Vec<(Arc<str>, u64, RateLimit)> {
        let in_force = self.in_force.current();
        let policy = &in_force.policy;
        let mut usage: Vec<_> = policy
            .callers()
            .map(|caller| {
                let limit = policy.limit_of(caller);
                let used = self.caller_limiter.used(&caller.name, limit.window);
                (Arc::clone(&caller.name), used, limit)
            })
            .filter(|(_, used, _)| *used > 0)
            .collect();
        usage.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        usage
    }

    /// Answers one HTTP request. Never fails: every problem becomes a precise HTTP answer.
    pub async fn handle(
        &self,
        worker: &Worker,
        request: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ProxyBody> {
        let mut id_buffer = uuid::Uuid::encode_buffer();
        let request_id: &str = uuid::Uuid::now_v7()
            .hyphenated()
            .encode_lower(&mut id_buffer);
        let request_id_header = HeaderValue::from_str(request_id)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let in_force = worker.policy.snapshot(&self.in_force);
        let mut response = match route(&in_force.serving, &request) {
            Some(route) => {
                let mut call = Call::new(request_id, peer, route, &request);
                let outcome = self
                    .chain(worker, &in_force, request, &mut call, &request_id_header)
                    .await;
                self.finish(worker, &call, outcome).await
            }
            None => not_served(&in_force.serving, request.uri().path()),
        };
        response.headers_mut().insert(REQUEST_ID, request_id_header);
        response
    }

    /// The MCP endpoints: the gateway's chain of steps.
    async fn chain<'a>(
        &self,
        worker: &Worker,
        in_force: &'a Snapshot,
        request: Request<Incoming>,
        call: &mut Call<'a>,
        request_id: &HeaderValue,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let Snapshot { serving, policy } = in_force;
        let limits = &serving.limits;
        check_uri(&request, limits.max_uri_bytes)?;
        serving.allowed_origins.check(request.headers())?;
        let (caller, method) =
            policy.authenticate(request.headers(), call.context.peer.certificate.as_ref())?;
        call.context.caller = Some(&caller.name);
        call.context.auth = Some(method);
        let (parts, body) = request.into_parts();
        let body = read_body(
            call.route,
            &parts.method,
            body,
            self.settings.max_body_bytes,
            serving.idle_timeout,
        )
        .await?;
        parse_messages(call, &parts, &body, &limits.parse())?;
        self.check_ownership(serving, call, &parts.uri, &caller.name)?;
        self.authorize(caller, call)?;
        call.list_filter = answer::list_filter(policy, caller, call, &self.catalog);
        self.limit(policy, caller, call).await?;
        let slot = self
            .in_flight
            .acquire(&caller.name, limits.max_in_flight_per_caller)
            .ok_or_else(|| Refusal::too_many_in_flight(limits.max_in_flight_per_caller))?;
        self.audit_before_forwarding(worker, call).await?;
        let upstream = Upstreamed {
            serving,
            caller: &caller.name,
            request_id,
            slot,
        };
        self.forward(worker, parts, body, call, upstream).await
    }

    /// The closing step, for every outcome: the response line of a forwarded request, or the
    /// offense and audit lines of a refused one; then the answer.
    async fn finish(
        &self,
        worker: &Worker,
        call: &Call<'_>,
        outcome: Result<Response<ProxyBody>, Refusal>,
    ) -> Response<ProxyBody> {
        self.metrics.request(&RequestRecord {
            decision: match &outcome {
                Ok(_) => Decision::Forwarded,
                Err(refusal) => refusal.decision,
            },
            method: metrics::method_class(&call.context.http_method, call.messages()),
            caller: call.context.caller,
            messages: call.messages(),
            added: call
                .forwarded_at
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(call.received_at),
            upstream_headers: call.forwarded_at.map(|at| at.elapsed()),
        });
        if let Some(started) = call.forwarded_at {
            let status = match &outcome {
                Ok(response) => response.status(),
                Err(refusal) => refusal.status,
            };
            let line = audit::response_line(&call.context, status.as_u16(), started.elapsed());
            worker.audit.write_in_background(line);
        }
        let refusal = match outcome {
            Ok(response) => return response,
            Err(refusal) => refusal,
        };
        // Refused before forwarding: its lines were not written yet (unless the audit log itself
        // failed, which only the gateway's own log can tell). A refusal is answered even if its
        // audit fails.
        if call.forwarded_at.is_none() && refusal.decision != Decision::AuditFailed {
            if let Some(offense) = refusal.offense {
                self.protection.offense(call.context.peer.ip, offense);
            }
            let lines = audit::refusal_lines(
                &call.context,
                call.messages(),
                refusal.decision,
                refusal.reason.as_deref(),
            );
            if let Err(err) = worker.audit.write(lines).await {
                tracing::error!(request_id = %call.context.request_id, error = %err, "could not audit a refused request");
            }
        }
        refusal.into_response(call.body.as_ref())
    }

    /// A legacy message may go only to an endpoint announced to its caller (on a stream still
    /// open, or sealed for them in a fleet), and a session only to the caller it belongs to.
    /// Notes in `call` what the upstream knows them by when the client sees sealed ids.
    fn check_ownership(
        &self,
        serving: &ServingSettings,
        call: &mut Call<'_>,
        uri: &Uri,
        caller: &Arc<str>,
    ) -> Result<(), Refusal> {
        if call.route == Route::LegacyMessage {
            let endpoint = uri
                .path_and_query()
                .map_or(uri.path(), PathAndQuery::as_str);
            let owner = match (self.sessions.seal(), endpoint.strip_prefix(SEALED_ENDPOINT)) {
                (Some(seal), Some(sealed)) => seal.open(sealed, caller).map(|upstream| {
                    call.upstream_endpoint = Some(upstream);
                }),
                _ => match self.legacy_endpoints.owner(endpoint) {
                    Some(owner) if *owner == **caller => Ok(()),
                    Some(_) => Err(SessionError::NotOwner),
                    None => Err(SessionError::Unknown),
                },
            };
            owner.map_err(|err| match err {
                SessionError::NotOwner => Refusal::new(
                    StatusCode::FORBIDDEN,
                    Decision::Forbidden,
                    code::FORBIDDEN,
                    "this legacy SSE session belongs to another caller",
                ),
                SessionError::Unknown => Refusal::new(
                    StatusCode::NOT_FOUND,
                    Decision::NotFound,
                    code::INVALID_REQUEST,
                    format!(
                        "not found: neither {} nor the endpoint of an open legacy SSE stream",
                        serving.mcp_path
                    ),
                ),
            })?;
        }
        if let Some(session) = &call.context.session {
            call.upstream_session = self.sessions.claim(session, caller)?;
        }
        Ok(())
    }

    /// Refuses calls of what the caller is not granted, before they cost any limit: a batch with
    /// one such message is refused whole, so a batch is never half done.
    fn authorize(&self, caller: &Caller, call: &Call<'_>) -> Result<(), Refusal> {
        let Some(grants) = &caller.grants else {
            return Ok(());
        };
        authz::check(grants, call.messages(), &self.catalog).map_err(|err| {
            let mut refusal = Refusal::from(err);
            if call.body.as_ref().is_some_and(|body| body.is_batch) {
                refusal
                    .message
                    .push_str("; nothing of this batch was forwarded");
            }
            refusal
        })
    }

    /// Per caller and tool, then per caller: a batch costs one per message. Tool limits go first,
    /// so a call they refuse takes no slot of the caller's own limit.
    async fn limit(
        &self,
        policy: &Policy,
        caller: &Caller,
        call: &Call<'_>,
    ) -> Result<(), Refusal> {
        let status = policy.rate_limit_status();
        if policy.has_tool_limits() {
            for (tool, count) in call.tool_calls() {
                let Some(limit) = policy.tool_limit(tool) else {
                    continue;
                };
                let key: Arc<str> = format!("{}\u{1f}{tool}", caller.name).into();
                self.tool_limiter
                    .admit(&key, limit, count)
                    .await
                    .map_err(|refused| self.not_admitted(refused, Some(tool), status))?;
            }
        }
        self.caller_limiter
            .admit(&caller.name, policy.limit_of(caller), call.cost())
            .await
            .map_err(|refused| self.not_admitted(refused, None, status))
    }

    fn not_admitted(
        &self,
        refused: NotAdmitted,
        tool: Option<&str>,
        status: StatusCode,
    ) -> Refusal {
        match refused {
            NotAdmitted::Over(denied) => {
                self.metrics.rate_limited(tool.is_some());
                Refusal::rate_limited(&denied, tool, status)
            }
            NotAdmitted::Unavailable => Refusal::fleet_unavailable(),
        }
    }

    /// Writes the request's lines and waits for the write: nothing reaches the upstream unaudited.
    async fn audit_before_forwarding(
        &self,
        worker: &Worker,
        call: &Call<'_>,
    ) -> Result<(), Refusal> {
        let lines = audit::request_lines(&call.context, call.messages(), Decision::Forwarded);
        worker.audit.write(lines).await.map_err(|err| {
            tracing::error!(request_id = %call.context.request_id, error = %err, "refusing a request that could not be audited");
            Refusal::audit_unavailable()
        })
    }

    /// Sends the request upstream and streams the answer back as it arrives, holding the
    /// caller's in-flight slot until the answer is done.
    async fn forward(
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
        if call.list_filter.is_some() {
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
        let client_path = (call.route == Route::LegacyMessage).then(|| {
            call.upstream_endpoint
                .clone()
                .unwrap_or_else(|| parts.uri.path().to_owned())
        });
        let upstream_path = match call.route {
            Route::Mcp => None,
            Route::LegacyStream => serving.upstream.legacy_sse_path.as_deref(),
            Route::LegacyMessage => client_path.as_deref(),
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
        let stream = is_event_stream(&response).then(|| self.metrics.stream());
        let response = response.map(|body| HoldingSlot::new(body, (slot, stream)));
        let response = self.track_sessions(serving, call, caller, is_delete, response);
        match call.list_filter.take() {
            Some(filter) => answer::filter_lists(response, filter).await,
            None => Ok(response),
        }
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
        if let (Route::LegacyStream, Some(sse_path)) =
            (call.route, &serving.upstream.legacy_sse_path)
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

/// Which of the gateway's endpoints a request is for, if any.
fn route(serving: &ServingSettings, request: &Request<Incoming>) -> Option<Route> {
    let path = request.uri().path();
    if path == serving.mcp_path {
        return Some(Route::Mcp);
    }
    let legacy_sse_path = serving.upstream.legacy_sse_path.as_deref()?;
    if path == legacy_sse_path {
        Some(Route::LegacyStream)
    } else if request.method() == Method::POST {
        // Which endpoints exist is told only to their callers, after authentication.
        Some(Route::LegacyMessage)
    } else {
        None
    }
}

fn not_served(serving: &ServingSettings, path: &str) -> Response<ProxyBody> {
    let description = if path.starts_with("/.well-known/oauth-") {
        // Static keys only: advertising OAuth makes some clients ignore configured headers.
        "this gateway uses static bearer keys, not OAuth".to_owned()
    } else {
        served_paths(serving)
    };
    refusal::json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "not_found", "error_description": description}),
    )
}

fn served_paths(serving: &ServingSettings) -> String {
    let mcp_path = &serving.mcp_path;
    match &serving.upstream.legacy_sse_path {
        Some(sse_path) => {
            format!("only {mcp_path} and {sse_path} (legacy SSE) are served here")
        }
        None => format!("only {mcp_path} is served here"),
    }
}

/// The request body of a POST, within `max_body_bytes` and `idle_timeout_secs`.
async fn read_body(
    route: Route,
    method: &Method,
    body: Incoming,
    limit: usize,
    idle_timeout: Duration,
) -> Result<Bytes, Refusal> {
    match route.has_body(method) {
        Some(true) => {}
        Some(false) => return Ok(Bytes::new()),
        None => return Err(Refusal::method_not_allowed(route.allowed_methods())),
    }
    let body = StallTimeout::new(body, idle_timeout);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Decision::TooLarge,
            code::BODY_TOO_LARGE,
            format!("request body larger than max_body_bytes ({limit} bytes)"),
        )),
        Err(err) if err.is::<BodyStalled>() => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            Decision::BadRequest,
            code::REQUEST_TIMEOUT,
            format!("{err} (idle_timeout_secs)"),
        )),
        Err(err) => Err(Refusal::bad_request(
            code::INVALID_REQUEST,
            format!("could not read the request body: {err}"),
        )),
    }
}

/// What the chain hands its last step, besides the request: the settings it runs under, the
/// authenticated caller, and the caller's in-flight slot.
struct Upstreamed<'a> {
    serving: &'a ServingSettings,
    caller: &'a Arc<str>,
    request_id: &'a HeaderValue,
    slot: InFlightSlot,
}

/// An upstream answer on its way to the client: it holds the caller's in-flight slot, and
/// counts as an open stream when it is one.
type Relayed = HoldingSlot<PooledBody, (InFlightSlot, Option<GaugeGuard>)>;

fn is_event_stream<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"))
}

/// A request URI within `max_uri_bytes`. (Body framing is hyper's: it refuses conflicting
/// lengths, and with both `Content-Length` and `Transfer-Encoding` reads the body as chunked and
/// closes the connection after the answer, as HTTP/1.1 prescribes; the upstream gets the body
/// re-framed by the gateway either way, so no request can hide in another.)
fn check_uri(request: &Request<Incoming>, max: usize) -> Result<(), Refusal> {
    let uri = request.uri();
    let length = uri.path_and_query().map_or(0, |path| path.as_str().len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len());
    if length > max {
        return Err(Refusal::new(
            StatusCode::URI_TOO_LONG,
            Decision::TooLarge,
            code::INVALID_REQUEST,
            format!("request URI of {length} bytes is longer than max_uri_bytes ({max})"),
        ));
    }
    Ok(())
}

/// The JSON-RPC messages of a POST, which must agree with MCP's method and name headers.
fn parse_messages(
    call: &mut Call<'_>,
    parts: &request::Parts,
    body: &Bytes,
    limits: &jsonrpc::ParseLimits,
) -> Result<(), Refusal> {
    if parts.method != Method::POST {
        return Ok(());
    }
    let messages = call.body.insert(jsonrpc::inspect_within(body, limits)?);
    check_mcp_headers(&parts.headers, messages)?;
    Ok(())
}

#[cfg(test)]
mod tests;
