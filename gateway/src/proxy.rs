//! The request path, in one place: authenticate -> rate-limit -> audit -> forward.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    http::uri::PathAndQuery,
};
use serde_json::{Value, json};

use crate::{
    audit::{self, AuditLog, Decision, Peer, RequestContext, WorkerAudit},
    auth::{AuthError, Authenticator},
    blocking::{Offense, Protection},
    config::Settings,
    forward::{ForwardError, REQUEST_ID, Upstream},
    idle::{BodyStalled, StallTimeout},
    jsonrpc::{self, Body, code},
    legacy_sse::{EndpointWatch, Endpoints},
    rate_limit::{Denied, RateLimiter},
    sessions::Sessions,
};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
const REALM: &str = "Bearer realm=\"mcp-gateway\"";

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    settings: Settings,
    auth: Authenticator,
    limiter: RateLimiter,
    /// Per caller and tool, for the tools with a limit of their own.
    tool_limiter: RateLimiter,
    audit: AuditLog,
    sessions: Sessions,
    /// Message endpoints of open legacy SSE streams, by caller.
    legacy_endpoints: Arc<Endpoints>,
    protection: Protection,
}

/// The MCP endpoints the gateway serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Streamable HTTP at `mcp_path`.
    Mcp,
    /// A legacy HTTP+SSE stream (`GET upstream.sse_path`).
    LegacyStream,
    /// A POST to the message endpoint a legacy stream announced.
    LegacyMessage,
}

/// What each worker thread has of its own: its upstream connections and its way into the audit
/// log.
pub struct Worker {
    pub upstream: Upstream,
    pub audit: Arc<WorkerAudit>,
}

impl Worker {
    /// The worker's state; [`WorkerAudit::run`] must then run on the worker's runtime.
    pub fn new(gateway: &Gateway) -> Self {
        Self {
            upstream: Upstream::new(&gateway.settings),
            audit: Arc::new(WorkerAudit::new(gateway.audit.clone())),
        }
    }
}

/// A request the gateway answers itself, with the decision the audit log records.
struct Refusal {
    status: StatusCode,
    decision: Decision,
    code: i64,
    message: String,
    data: Option<Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    fn new(status: StatusCode, decision: Decision, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            decision,
            code,
            message: message.into(),
            data: None,
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl Gateway {
    pub fn new(mut settings: Settings, audit: AuditLog, protection: Protection) -> Self {
        // The users live on in the authenticator; a second copy would double their memory
        // (about 10 MiB with 100,000 users).
        let users = std::mem::take(&mut settings.users);
        Self {
            protection,
            auth: Authenticator::new(&users),
            limiter: RateLimiter::new(settings.default_limit),
            tool_limiter: RateLimiter::new(settings.default_limit),
            sessions: Sessions::default(),
            legacy_endpoints: Arc::default(),
            audit,
            settings,
        }
    }

    /// The settings, without `users` (they are in the authenticator).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Drops the limiter state of callers idle for `idle_after`.
    pub fn sweep_limiters(&self, idle_after: Duration) {
        self.limiter.sweep(idle_after);
        self.tool_limiter.sweep(idle_after);
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn protection(&self) -> &Protection {
        &self.protection
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
        let path = request.uri().path();
        let mut response = if let Some(route) = self.route(&request) {
            let mut ctx = RequestContext {
                request_id,
                peer,
                caller: None,
                user_agent: header_str(request.headers(), &header::USER_AGENT).map(str::to_owned),
                session: header_str(request.headers(), &MCP_SESSION_ID).map(str::to_owned),
                http_method: request.method().clone(),
            };
            match self
                .mcp(worker, route, request, &mut ctx, &request_id_header)
                .await
            {
                Ok(response) => response,
                Err((refusal, body)) => {
                    self.refuse(&worker.audit, &ctx, refusal, body.as_ref())
                        .await
                }
            }
        } else if path.starts_with("/.well-known/oauth-") {
            // Static keys only: advertising OAuth makes some clients ignore configured headers.
            json_response(
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "error_description": "this gateway uses static bearer keys, not OAuth"}),
            )
        } else {
            json_response(
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "error_description": self.served_paths()}),
            )
        };
        response.headers_mut().insert(REQUEST_ID, request_id_header);
        response
    }

    fn served_paths(&self) -> String {
        match &self.settings.legacy_sse_path {
            Some(sse_path) => format!(
                "only {} and {sse_path} (legacy SSE) are served here",
                self.settings.mcp_path
            ),
            None => format!("only {} is served here", self.settings.mcp_path),
        }
    }

    fn route(&self, request: &Request<Incoming>) -> Option<Route> {
        let path = request.uri().path();
        if path == self.settings.mcp_path {
            return Some(Route::Mcp);
        }
        let legacy_sse_path = self.settings.legacy_sse_path.as_deref()?;
        if path == legacy_sse_path {
            Some(Route::LegacyStream)
        } else if request.method() == Method::POST {
            // Which endpoints exist is told only to their callers, after authentication.
            Some(Route::LegacyMessage)
        } else {
            None
        }
    }

    /// The MCP endpoints: the gateway's chain of stages.
    async fn mcp<'a>(
        &'a self,
        worker: &Worker,
        route: Route,
        request: Request<Incoming>,
        ctx: &mut RequestContext<'a>,
        request_id: &HeaderValue,
    ) -> Result<Response<ProxyBody>, (Refusal, Option<Body>)> {
        // 1. Authenticate.
        let caller = self
            .auth
            .authenticate(request.headers())
            .map_err(|err| (unauthenticated(err), None))?;
        ctx.caller = Some(&caller.name);
        let (parts, body) = request.into_parts();
        let body_bytes = match (&parts.method, route) {
            (&Method::POST, Route::Mcp | Route::LegacyMessage) => self
                .read_body(body)
                .await
                .map_err(|refusal| (refusal, None))?,
            (&Method::GET, Route::Mcp | Route::LegacyStream) | (&Method::DELETE, Route::Mcp) => {
                Bytes::new()
            }
            _ => {
                let allowed = match route {
                    Route::Mcp => "POST, GET, DELETE",
                    Route::LegacyStream => "GET",
                    Route::LegacyMessage => "POST",
                };
                let refusal = Refusal::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    Decision::BadRequest,
                    code::INVALID_REQUEST,
                    format!("this MCP endpoint accepts {allowed}"),
                )
                .header(header::ALLOW, HeaderValue::from_static(allowed));
                return Err((refusal, None));
            }
        };
        let messages = if parts.method == Method::POST {
            let body = jsonrpc::inspect(&body_bytes).map_err(|err| {
                (
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        Decision::BadRequest,
                        err.code(),
                        err.to_string(),
                    ),
                    None,
                )
            })?;
            if let Err(refusal) = check_mcp_headers(&parts.headers, &body) {
                return Err((refusal, Some(body)));
            }
            Some(body)
        } else {
            None
        };
        if route == Route::LegacyMessage
            && let Err(refusal) = self.check_legacy_endpoint(&parts.uri, &caller.name)
        {
            return Err((refusal, messages));
        }
        if let Some(session) = &ctx.session
            && let Err(err) = self.sessions.claim(session, &caller.name)
        {
            let refusal = Refusal::new(
                StatusCode::FORBIDDEN,
                Decision::Forbidden,
                code::FORBIDDEN,
                err.to_string(),
            );
            return Err((refusal, messages));
        }
        let calls = messages.as_ref().map_or(&[][..], |body| &body.messages[..]);

        // 2. Rate-limit per caller and tool, then per caller: a batch costs one per message. Tool
        // limits go first, so a call they refuse takes no slot of the caller's own limit.
        if let Err((tool, denied)) = self.check_tool_limits(&caller.name, calls) {
            return Err((self.rate_limited(&denied, Some(&tool)), messages));
        }
        let cost = calls.len().max(1) as u32;
        if let Err(denied) = self.limiter.check(&caller.name, caller.limit, cost) {
            return Err((self.rate_limited(&denied, None), messages));
        }

        // 3. Audit, and wait for the write: nothing reaches the upstream unaudited.
        if let Err(err) = worker
            .audit
            .write(audit::request_lines(ctx, calls, Decision::Forwarded))
            .await
        {
            tracing::error!(request_id = %ctx.request_id, error = %err, "refusing a request that could not be audited");
            let refusal = Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Decision::AuditFailed,
                code::AUDIT_UNAVAILABLE,
                "the gateway cannot write its audit log; the call was not forwarded",
            );
            return Ok(refusal_response(&refusal, messages.as_ref()));
        }

        // 4. Forward, streaming the answer back as it arrives.
        let started = Instant::now();
        let is_delete = parts.method == Method::DELETE;
        // A legacy message goes to the endpoint its stream announced, which the client posted to.
        let client_path = (route == Route::LegacyMessage).then(|| parts.uri.path().to_owned());
        let upstream_path = match route {
            Route::Mcp => None,
            Route::LegacyStream => self.settings.legacy_sse_path.as_deref(),
            Route::LegacyMessage => client_path.as_deref(),
        };
        let result = worker
            .upstream
            .send(
                parts,
                body_bytes,
                upstream_path,
                &caller.name,
                &ctx.peer.ip_text,
                request_id,
            )
            .await;
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                let (status, code) = match err {
                    ForwardError::Unavailable(_) => {
                        (StatusCode::BAD_GATEWAY, code::UPSTREAM_UNAVAILABLE)
                    }
                    ForwardError::Timeout(_) => {
                        (StatusCode::GATEWAY_TIMEOUT, code::UPSTREAM_TIMEOUT)
                    }
                };
                tracing::warn!(request_id = %ctx.request_id, error = %err, "upstream request failed");
                worker.audit.write_in_background(audit::response_line(
                    ctx,
                    status.as_u16(),
                    started.elapsed(),
                ));
                let refusal = Refusal::new(status, Decision::Forwarded, code, err.to_string());
                return Ok(refusal_response(&refusal, messages.as_ref()));
            }
        };
        worker.audit.write_in_background(audit::response_line(
            ctx,
            response.status().as_u16(),
            started.elapsed(),
        ));
        // A new session (the request's own was claimed above) belongs to this caller.
        if let Some(session) = header_str(response.headers(), &MCP_SESSION_ID)
            && ctx.session.as_deref() != Some(session)
        {
            self.sessions.bind(session, &caller.name);
        }
        if is_delete
            && response.status().is_success()
            && let Some(session) = &ctx.session
        {
            self.sessions.forget(session);
        }
        if let (Route::LegacyStream, Some(sse_path)) = (route, &self.settings.legacy_sse_path)
            && response.status().is_success()
        {
            let endpoints = Arc::clone(&self.legacy_endpoints);
            let caller = Arc::clone(&caller.name);
            let sse_path = Arc::clone(sse_path);
            return Ok(
                response.map(|body| EndpointWatch::new(body, endpoints, caller, sse_path).boxed())
            );
        }
        Ok(response.map(BodyExt::boxed))
    }

    /// A legacy message may go only to an endpoint announced to its caller on a stream still open.
    fn check_legacy_endpoint(&self, uri: &Uri, caller: &str) -> Result<(), Refusal> {
        let endpoint = uri
            .path_and_query()
            .map_or(uri.path(), PathAndQuery::as_str);
        match self.legacy_endpoints.owner(endpoint) {
            Some(owner) if *owner == *caller => Ok(()),
            Some(_) => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                Decision::Forbidden,
                code::FORBIDDEN,
                "this legacy SSE session belongs to another caller",
            )),
            None => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                Decision::NotFound,
                code::INVALID_REQUEST,
                format!(
                    "not found: neither {} nor the endpoint of an open legacy SSE stream",
                    self.settings.mcp_path
                ),
            )),
        }
    }

    async fn read_body(&self, body: Incoming) -> Result<Bytes, Refusal> {
        let limit = self.settings.max_body_bytes;
        let body = StallTimeout::new(body, self.settings.idle_timeout);
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
            Err(err) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                Decision::BadRequest,
                code::INVALID_REQUEST,
                format!("could not read the request body: {err}"),
            )),
        }
    }

    /// `tools/call`s of tools with their own limit, counted per tool, against that limit.
    fn check_tool_limits(
        &self,
        caller: &str,
        calls: &[jsonrpc::Message],
    ) -> Result<(), (String, Denied)> {
        if self.settings.tool_limits.is_empty() {
            return Ok(());
        }
        let mut per_tool: Vec<(&str, u32)> = Vec::new();
        for tool in calls
            .iter()
            .filter(|m| m.method.as_deref() == Some("tools/call"))
            .filter_map(|m| m.target.as_deref())
        {
            match per_tool.iter_mut().find(|(name, _)| *name == tool) {
                Some((_, count)) => *count += 1,
                None => per_tool.push((tool, 1)),
            }
        }
        for (tool, count) in per_tool {
            if let Some(limit) = self.settings.tool_limits.get(tool) {
                let key: Arc<str> = format!("{caller}\u{1f}{tool}").into();
                self.tool_limiter
                    .check(&key, Some(*limit), count)
                    .map_err(|denied| (tool.to_owned(), denied))?;
            }
        }
        Ok(())
    }

    fn rate_limited(&self, denied: &Denied, tool: Option<&str>) -> Refusal {
        let retry_after = denied.retry_after_secs();
        let limit = format!(
            "{} {} per {} s",
            denied.limit.requests,
            if tool.is_some() {
                "calls of this tool"
            } else {
                "requests"
            },
            denied.limit.window.as_secs()
        );
        let limit = match tool {
            Some(tool) => format!("{limit} for tool {tool:?}"),
            None => limit,
        };
        let message = if denied.exceeds_limit {
            format!(
                "rate limit exceeded: this batch alone has more messages than the limit of {limit}; send smaller batches"
            )
        } else {
            format!("rate limit exceeded: {limit}; retry in {retry_after} s")
        };
        let mut refusal = Refusal::new(
            self.settings.rate_limit_status,
            Decision::RateLimited,
            code::RATE_LIMITED,
            message,
        )
        .header(header::RETRY_AFTER, HeaderValue::from(retry_after));
        refusal.data = Some(json!({"retryAfterSeconds": retry_after}));
        refusal
    }

    /// Audits a refused request, then answers it. A refusal is answered even if the audit fails.
    async fn refuse(
        &self,
        audit: &WorkerAudit,
        ctx: &RequestContext<'_>,
        refusal: Refusal,
        body: Option<&Body>,
    ) -> Response<ProxyBody> {
        let offense = match refusal.decision {
            Decision::Unauthenticated | Decision::InvalidKey => Some(Offense::AuthFailure),
            Decision::RateLimited => Some(Offense::RateLimited),
            Decision::BadRequest | Decision::TooLarge => Some(Offense::Malformed),
            Decision::Forwarded
            | Decision::Forbidden
            | Decision::NotFound
            | Decision::AuditFailed => None,
        };
        if let Some(offense) = offense {
            self.protection.offense(ctx.peer.ip, offense);
        }
        let messages = body.map_or(&[][..], |body| &body.messages[..]);
        if let Err(err) = audit
            .write(audit::request_lines(ctx, messages, refusal.decision))
            .await
        {
            tracing::error!(request_id = %ctx.request_id, error = %err, "could not audit a refused request");
        }
        refusal_response(&refusal, body)
    }
}

fn unauthenticated(err: AuthError) -> Refusal {
    let (decision, challenge) = match err {
        AuthError::Missing | AuthError::Malformed => {
            (Decision::Unauthenticated, HeaderValue::from_static(REALM))
        }
        AuthError::InvalidKey => (
            Decision::InvalidKey,
            HeaderValue::from_static("Bearer realm=\"mcp-gateway\", error=\"invalid_token\""),
        ),
    };
    Refusal::new(
        StatusCode::UNAUTHORIZED,
        decision,
        code::UNAUTHENTICATED,
        err.to_string(),
    )
    .header(header::WWW_AUTHENTICATE, challenge)
}

/// MCP 2026-07-28 mirrors the method and name in headers; when present they must match the body,
/// which is what the gateway audits and limits.
fn check_mcp_headers(headers: &HeaderMap, body: &Body) -> Result<(), Refusal> {
    let mismatch = |what: &str| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            Decision::BadRequest,
            code::HEADER_MISMATCH,
            format!("{what} header does not match the request body"),
        )
    };
    let method_header = headers.get(&MCP_METHOD);
    let name_header = headers.get(&MCP_NAME);
    if method_header.is_none() && name_header.is_none() {
        return Ok(());
    }
    let (false, [message]) = (body.is_batch, &body.messages[..]) else {
        return Err(mismatch(
            "Mcp-Method/Mcp-Name (a batch has no single method)",
        ));
    };
    if let Some(value) = method_header
        && message.method.as_deref().map(str::as_bytes) != Some(value.as_bytes())
    {
        return Err(mismatch("Mcp-Method"));
    }
    if let Some(value) = name_header
        && decode_header_text(value).as_deref() != message.target.as_deref()
    {
        return Err(mismatch("Mcp-Name"));
    }
    Ok(())
}

/// A header value as text; non-ASCII values travel as `=?base64?<base64>?=`.
fn decode_header_text(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    match text
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(text.to_owned()),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn refusal_response(refusal: &Refusal, body: Option<&Body>) -> Response<ProxyBody> {
    let payload = jsonrpc::error_body(body, refusal.code, &refusal.message, refusal.data.clone());
    let mut response = bytes_response(refusal.status, payload);
    for (name, value) in &refusal.headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}

fn json_response(status: StatusCode, value: Value) -> Response<ProxyBody> {
    bytes_response(status, Bytes::from(value.to_string()))
}

fn bytes_response(status: StatusCode, payload: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(payload).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// How often idle limiter state is swept: the longest window any caller has.
pub fn sweep_interval(settings: &Settings) -> Duration {
    settings
        .users
        .iter()
        .filter_map(|user| user.limit)
        .chain(settings.tool_limits.values().copied())
        .map(|limit| limit.window)
        .chain([settings.default_limit.window])
        .max()
        .unwrap_or(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Body {
        jsonrpc::inspect(json.as_bytes()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn mcp_headers_must_match_the_body() {
        let call =
            body(r#"{"id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#);
        assert!(check_mcp_headers(&HeaderMap::new(), &call).is_ok());
        assert!(
            check_mcp_headers(
                &headers(&[("mcp-method", "tools/call"), ("mcp-name", "echo")]),
                &call
            )
            .is_ok()
        );
        let refusal =
            check_mcp_headers(&headers(&[("mcp-method", "tools/list")]), &call).unwrap_err();
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert_eq!(refusal.code, code::HEADER_MISMATCH);
        assert!(check_mcp_headers(&headers(&[("mcp-name", "add")]), &call).is_err());
        // "échø" in base64.
        let accented = body(r#"{"id":1,"method":"tools/call","params":{"name":"échø"}}"#);
        assert!(
            check_mcp_headers(&headers(&[("mcp-name", "=?base64?w6ljaMO4?=")]), &accented).is_ok()
        );
        let batch = body(r#"[{"id":1,"method":"ping"}]"#);
        assert!(check_mcp_headers(&headers(&[("mcp-method", "ping")]), &batch).is_err());
    }

    #[test]
    fn invalid_keys_get_the_invalid_token_challenge() {
        let refusal = unauthenticated(AuthError::InvalidKey);
        assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refusal.decision, Decision::InvalidKey);
        assert!(
            refusal.headers[0]
                .1
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
        let refusal = unauthenticated(AuthError::Missing);
        assert_eq!(refusal.headers[0].1, REALM);
    }
}
