//! The one error type of the chain: every step that refuses a request says so with a [`Refusal`],
//! which knows its HTTP status, its JSON-RPC error, the decision the audit log records and the
//! offense it counts as. Answers are made here and nowhere else.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use serde_json::{Value, json};

use crate::{
    audit::Decision,
    authz::NotGranted,
    limit::Denied,
    mcp::{
        era::Era,
        headers::HeaderMismatch,
        jsonrpc::{self, Body, InspectError, code},
        origin::OriginRefused,
        sessions::SessionError,
        tasks::TaskError,
    },
    oauth::{OAuth, TokenError},
    policy::AuthError,
    protection::Offense,
    upstream::ForwardError,
};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

const REALM: &str = "Bearer realm=\"mcp-gateway\"";

/// A request the gateway answers itself, with the decision the audit log records.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub decision: Decision,
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What it counts as towards a block of its source.
    pub offense: Option<Offense>,
    /// Why, for the audit line only (the rule that denied a call).
    pub reason: Option<String>,
}

impl Refusal {
    pub fn new(
        status: StatusCode,
        decision: Decision,
        code: i64,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            decision,
            code,
            message: message.into(),
            data: None,
            headers: Vec::new(),
            offense: default_offense(decision),
            reason: None,
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn bad_request(code: i64, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Decision::BadRequest, code, message)
    }

    /// `method` is not served at this endpoint.
    pub fn method_not_allowed(allowed: &'static str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Decision::BadRequest,
            code::INVALID_REQUEST,
            format!("this MCP endpoint accepts {allowed}"),
        )
        .header(header::ALLOW, HeaderValue::from_static(allowed))
    }

    /// Over a limit: the caller's own (`tool` = `None`) or that of one tool.
    pub fn rate_limited(denied: &Denied, tool: Option<&str>, status: StatusCode) -> Self {
        let retry_after = denied.retry_after_secs();
        let what = if tool.is_some() {
            "calls of this tool"
        } else {
            "requests"
        };
        let limit = format!(
            "{} {what} per {} s",
            denied.limit.requests,
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
        let mut refusal = Self::new(status, Decision::RateLimited, code::RATE_LIMITED, message)
            .header(header::RETRY_AFTER, HeaderValue::from(retry_after));
        refusal.data = Some(json!({"retryAfterSeconds": retry_after}));
        refusal
    }

    /// The caller has `max` requests being forwarded already.
    pub fn too_many_in_flight(max: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            Decision::RateLimited,
            code::RATE_LIMITED,
            format!(
                "too many requests in flight: this key has {max} being answered already \
                 (max_in_flight_per_caller); wait for one to finish"
            ),
        )
        .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    pub fn too_many_listen_streams(max: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            Decision::RateLimited,
            code::RATE_LIMITED,
            format!(
                "too many subscriptions/listen streams: this key has {max} open already \
                 (max_listen_streams_per_caller); close one first"
            ),
        )
        .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// The audit log could not be written, so the request was not forwarded.
    pub fn audit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Decision::AuditFailed,
            code::AUDIT_UNAVAILABLE,
            "the gateway cannot write its audit log; the call was not forwarded",
        )
    }

    /// The fleet's shared limits could not be checked (Redis away) and the node is configured to
    /// refuse rather than count alone.
    pub fn fleet_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Decision::FleetUnavailable,
            code::FLEET_UNAVAILABLE,
            "the fleet's shared rate limits are unavailable (Redis does not answer) and this \
             gateway refuses calls without them (fleet.on_unavailable = \"refuse\"); retry shortly",
        )
        .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// The answer: a JSON-RPC error echoing the ids of `body`'s requests.
    pub fn into_response(self, body: Option<&Body>) -> Response<ProxyBody> {
        let payload = jsonrpc::error_body(body, self.code, &self.message, self.data);
        let mut response = bytes_response(self.status, payload);
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// What a refusal with `decision` counts as, unless it says otherwise: a refusal of something
/// not granted is `forbidden` like one of a foreign session, but only it counts.
fn default_offense(decision: Decision) -> Option<Offense> {
    match decision {
        Decision::Unauthenticated | Decision::InvalidKey | Decision::InvalidToken => {
            Some(Offense::AuthFailure)
        }
        Decision::RateLimited => Some(Offense::RateLimited),
        Decision::BadRequest | Decision::TooLarge => Some(Offense::Malformed),
        Decision::Forwarded
        | Decision::Forbidden
        | Decision::NotFound
        | Decision::AuditFailed
        | Decision::FleetUnavailable
        | Decision::IdpUnavailable => None,
    }
}

/// A call of something the caller is not granted: 403, naming what was refused (the client sent
/// those names); the audit line also names the rule. A batch is refused whole.
impl From<NotGranted> for Refusal {
    fn from(err: NotGranted) -> Self {
        let mut refusal = Self::new(
            StatusCode::FORBIDDEN,
            Decision::Forbidden,
            code::FORBIDDEN,
            err.to_string(),
        );
        refusal.data = Some(json!({
            "refused": err.refused.iter().map(|message| json!({
                "index": message.index,
                "kind": message.category.noun(),
                "name": message.name,
            })).collect::<Vec<_>>()
        }));
        refusal.offense = Some(Offense::Forbidden);
        refusal.reason = err.refused.first().map(|first| match err.refused.len() {
            1 => first.reason.clone(),
            n => format!("{} (and {} more messages refused)", first.reason, n - 1),
        });
        refusal
    }
}

impl From<AuthError> for Refusal {
    fn from(err: AuthError) -> Self {
        let (decision, challenge) = match err {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::CertificateRequired
            | AuthError::IdentitiesDiffer => {
                (Decision::Unauthenticated, HeaderValue::from_static(REALM))
            }
            AuthError::InvalidKey | AuthError::Expired | AuthError::Disabled => (
                Decision::InvalidKey,
                HeaderValue::from_static("Bearer realm=\"mcp-gateway\", error=\"invalid_token\""),
            ),
        };
        Self::new(
            StatusCode::UNAUTHORIZED,
            decision,
            code::UNAUTHENTICATED,
            err.to_string(),
        )
        .header(header::WWW_AUTHENTICATE, challenge)
    }
}

impl Refusal {
    /// No access token: 401 with the challenge that leads clients to the metadata.
    pub fn token_missing(oauth: &OAuth) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            Decision::Unauthenticated,
            code::UNAUTHENTICATED,
            "authentication required: sign in with OAuth (the WWW-Authenticate header says where)",
        )
        .header(header::WWW_AUTHENTICATE, oauth.challenge(None))
    }

    /// An access token refused: 401 `invalid_token`, or 503 when the IdP cannot be asked.
    pub fn token(err: TokenError, oauth: &OAuth) -> Self {
        if err == TokenError::KeysUnavailable {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Decision::IdpUnavailable,
                code::IDP_UNAVAILABLE,
                err.to_string(),
            )
            .header(header::RETRY_AFTER, HeaderValue::from_static("10"));
        }
        Self::new(
            StatusCode::UNAUTHORIZED,
            Decision::InvalidToken,
            code::UNAUTHENTICATED,
            format!("invalid access token: {err}"),
        )
        .header(header::WWW_AUTHENTICATE, oauth.challenge(Some(err)))
    }

    /// A valid token without every scope the request needs: 403 `insufficient_scope` naming
    /// all of `needed`, so a client steps up once.
    pub fn insufficient_scope(oauth: &OAuth, needed: &[String], missing: &[&str]) -> Self {
        let mut refusal = Self::new(
            StatusCode::FORBIDDEN,
            Decision::Forbidden,
            code::FORBIDDEN,
            format!(
                "insufficient scope: this request needs {}; the token lacks {}",
                needed.join(" "),
                missing.join(" ")
            ),
        )
        .header(header::WWW_AUTHENTICATE, oauth.insufficient_scope(needed));
        refusal.data = Some(json!({"requiredScopes": needed}));
        refusal
    }
}

impl From<InspectError> for Refusal {
    fn from(err: InspectError) -> Self {
        Self::bad_request(err.code(), err.to_string())
    }
}

impl From<HeaderMismatch> for Refusal {
    fn from(err: HeaderMismatch) -> Self {
        Self::bad_request(code::HEADER_MISMATCH, err.to_string())
    }
}

impl Refusal {
    /// A request's session refused. The unknown-session code of the SDKs' servers lies in the
    /// range 2026-07-28 leaves to the handshake era, so only that era's requests get it.
    pub fn session(err: SessionError, era: Era) -> Self {
        let mut refusal = Self::from(err);
        if err == SessionError::Unknown && era == Era::Modern {
            refusal.code = code::UNKNOWN_SESSION;
        }
        refusal
    }
}

impl From<SessionError> for Refusal {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::NotOwner => Self::new(
                StatusCode::FORBIDDEN,
                Decision::Forbidden,
                code::FORBIDDEN,
                err.to_string(),
            ),
            // What the MCP transport prescribes for a session the server does not know: the
            // client starts a new one.
            SessionError::Unknown => Self::new(
                StatusCode::NOT_FOUND,
                Decision::NotFound,
                code::SESSION_NOT_FOUND,
                err.to_string(),
            ),
        }
    }
}

impl From<TaskError> for Refusal {
    fn from(err: TaskError) -> Self {
        match err {
            TaskError::NotOwner => Self::new(
                StatusCode::FORBIDDEN,
                Decision::Forbidden,
                code::FORBIDDEN,
                err.to_string(),
            ),
            // What a receiver answers for a task id it does not know.
            TaskError::Unknown => Self::new(
                StatusCode::NOT_FOUND,
                Decision::NotFound,
                code::INVALID_PARAMS,
                err.to_string(),
            ),
            TaskError::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Decision::FleetUnavailable,
                code::FLEET_UNAVAILABLE,
                err.to_string(),
            )
            .header(header::RETRY_AFTER, HeaderValue::from_static("1")),
        }
    }
}

/// What the MCP transport prescribes for a request from an Origin the server does not accept.
impl From<OriginRefused> for Refusal {
    fn from(err: OriginRefused) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            Decision::Forbidden,
            code::FORBIDDEN,
            err.to_string(),
        )
    }
}

/// The upstream failed: the request was forwarded (and audited as such), the answer is the
/// gateway's.
impl From<ForwardError> for Refusal {
    fn from(err: ForwardError) -> Self {
        let (status, code) = match err {
            ForwardError::Unavailable(_) => (StatusCode::BAD_GATEWAY, code::UPSTREAM_UNAVAILABLE),
            ForwardError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, code::UPSTREAM_TIMEOUT),
        };
        Self::new(status, Decision::Forwarded, code, err.to_string())
    }
}

/// A JSON answer that is not JSON-RPC (paths the gateway does not serve).
pub fn json_response(status: StatusCode, value: Value) -> Response<ProxyBody> {
    bytes_response(status, Bytes::from(value.to_string()))
}

pub fn bytes_response(status: StatusCode, payload: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(payload).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_keys_get_the_invalid_token_challenge() {
        let refusal = Refusal::from(AuthError::InvalidKey);
        assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refusal.decision, Decision::InvalidKey);
        assert!(
            refusal.headers[0]
                .1
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
        let refusal = Refusal::from(AuthError::Missing);
        assert_eq!(refusal.headers[0].1, REALM);
    }

    #[test]
    fn mcp_headers_that_contradict_the_body_are_a_bad_request() {
        let body = jsonrpc::inspect(br#"{"id":1,"method":"tools/call","params":{"name":"echo"}}"#)
            .unwrap();
        let mut headers = hyper::HeaderMap::new();
        headers.insert("mcp-method", HeaderValue::from_static("tools/list"));
        let refusal =
            Refusal::from(crate::mcp::headers::check_mcp_headers(&headers, &body).unwrap_err());
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert_eq!(refusal.code, code::HEADER_MISMATCH);
        assert_eq!(refusal.offense, Some(Offense::Malformed));
    }
}
