//! Which of the gateway's endpoints a request is for, and the answer to one that is for none:
//! decided before anything else, so that a stray path costs no authentication.

use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use serde_json::json;

use super::{ProxyBody, refusal};
use crate::config::ServingSettings;

/// The MCP endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Streamable HTTP at `mcp_path`.
    Mcp,
    /// A legacy HTTP+SSE stream (`GET upstream.sse_path`).
    LegacyStream,
    /// A POST to the message endpoint a legacy stream announced.
    LegacyMessage,
}

impl Endpoint {
    /// The HTTP methods the endpoint accepts, as the `Allow` header lists them.
    pub fn allowed_methods(self) -> &'static str {
        match self {
            Self::Mcp => "POST, GET, DELETE",
            Self::LegacyStream => "GET",
            Self::LegacyMessage => "POST",
        }
    }

    /// Whether a request with `method` has a body to read (`Some(true)`), has none
    /// (`Some(false)`), or is not accepted here (`None`).
    pub fn has_body(self, method: &Method) -> Option<bool> {
        match (method, self) {
            (&Method::POST, Self::Mcp | Self::LegacyMessage) => Some(true),
            (&Method::GET, Self::Mcp | Self::LegacyStream) | (&Method::DELETE, Self::Mcp) => {
                Some(false)
            }
            _ => None,
        }
    }
}

/// Which of the gateway's endpoints a request is for, if any.
pub(super) fn endpoint(serving: &ServingSettings, request: &Request<Incoming>) -> Option<Endpoint> {
    let path = request.uri().path();
    if path == serving.mcp_path {
        return Some(Endpoint::Mcp);
    }
    let legacy_sse_path = serving.upstream.legacy_sse_path.as_deref()?;
    if path == legacy_sse_path {
        Some(Endpoint::LegacyStream)
    } else if request.method() == Method::POST && !is_oauth_probe(path) {
        // Which endpoints exist is told only to their callers, after authentication.
        Some(Endpoint::LegacyMessage)
    } else {
        None
    }
}

/// The paths a client with OAuth configured tries before it uses a bearer header
/// (authorization server metadata, registration, authorize, token; at the root or under the MCP
/// path). They are answered 404 at once, never as a legacy message endpoint that would cost the
/// client an authentication failure, and with it a block of its source for probing.
fn is_oauth_probe(path: &str) -> bool {
    const ENDPOINTS: [&str; 4] = ["/register", "/authorize", "/token", "/revoke"];
    path.contains("/.well-known/oauth-")
        || path.contains("/.well-known/openid-configuration")
        || ENDPOINTS.iter().any(|endpoint| path.ends_with(endpoint))
}

pub(super) fn not_served(serving: &ServingSettings, path: &str) -> Response<ProxyBody> {
    let description = if is_oauth_probe(path) {
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
