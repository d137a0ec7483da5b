//! Which of the gateway's endpoints a request is for, and the answer to one that is for none:
//! decided before anything else, so that a stray path costs no authentication.

use bytes::Bytes;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};
use serde_json::json;

use super::{ProxyBody, refusal};
use crate::{config::ServingSettings, policy::Snapshot};

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

/// Where the public key of the identity assertions sent upstream is published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The answer to a request for none of the MCP endpoints: the protected resource metadata
/// where OAuth is configured, else a JSON 404 that says what is served.
pub(super) fn not_served(in_force: &Snapshot, request: &Request<Incoming>) -> Response<ProxyBody> {
    let serving = &in_force.serving;
    let path = request.uri().path();
    if path == JWKS_PATH
        && let Some(identity) = &serving.upstream.identity
    {
        return metadata_response(request.method(), identity.jwks());
    }
    let oauth = in_force.policy.oauth();
    if let Some(oauth) = oauth
        && let Some(document) = oauth.metadata_at(path, &serving.mcp_path)
    {
        return metadata_response(request.method(), document);
    }
    let description = match oauth {
        _ if !is_oauth_probe(path) => served_paths(serving),
        Some(oauth) => format!(
            "this gateway is a resource server only: its metadata is at {}, and it names the authorization servers",
            oauth.settings().metadata_url
        ),
        // Static keys only: advertising OAuth makes some clients ignore configured headers.
        None => "this gateway uses static bearer keys, not OAuth".to_owned(),
    };
    refusal::json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "not_found", "error_description": description}),
    )
}

/// Metadata and keys are public, and read by browser-based clients too (their fetch sends
/// `MCP-Protocol-Version`, so it is preflighted): any origin may read it.
fn metadata_response(method: &Method, document: Bytes) -> Response<ProxyBody> {
    let mut response = match *method {
        Method::GET | Method::HEAD => {
            let mut response = refusal::bytes_response(StatusCode::OK, document);
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            response
        }
        Method::OPTIONS => {
            let mut response = refusal::bytes_response(StatusCode::NO_CONTENT, Bytes::new());
            let headers = response.headers_mut();
            headers.remove(header::CONTENT_TYPE);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("mcp-protocol-version, content-type"),
            );
            response
        }
        _ => {
            let mut response = refusal::json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed", "error_description": "the metadata is read with GET"}),
            );
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            response
        }
    };
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
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
