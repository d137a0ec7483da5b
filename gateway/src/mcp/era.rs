//! Which protocol era a request belongs to, decided per request: one endpoint serves both.
//!
//! MCP 2026-07-28 is stateless: every POST names its version in the `MCP-Protocol-Version`
//! header and in `params._meta["io.modelcontextprotocol/protocolVersion"]`. The handshake era
//! (2025-03-26 .. 2025-11-25) negotiates once with `initialize` and names the version in the
//! header only (or not at all: 2025-03-26). Versions are dates, so they compare as text.

use hyper::{HeaderMap, header::HeaderName};

use super::jsonrpc::Body;

pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

/// The first version of the stateless era.
pub const MODERN: &str = "2026-07-28";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Era {
    /// 2025-11-25 and earlier: `initialize`, sessions, GET streams; a disconnect is not a
    /// cancellation.
    #[default]
    Handshake,
    /// 2026-07-28 and later: per-request `_meta`, `server/discover`, no sessions; closing the
    /// response stream cancels the request.
    Modern,
}

impl Era {
    /// The era of a request: modern if its header or any of its messages names a modern version.
    /// (A mismatch between the two is refused separately; see `headers::check_mcp_headers`.)
    pub fn of(headers: &HeaderMap, body: Option<&Body>) -> Self {
        let header = headers
            .get(&MCP_PROTOCOL_VERSION)
            .and_then(|value| value.to_str().ok());
        let in_body = body
            .into_iter()
            .flat_map(|body| &body.messages)
            .filter_map(|message| message.protocol_version.as_deref());
        if header.into_iter().chain(in_body).any(is_modern) {
            Self::Modern
        } else {
            Self::Handshake
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Modern => "modern",
        }
    }
}

/// Whether a version string names 2026-07-28 or later (dates compare as text).
fn is_modern(version: &str) -> bool {
    version.len() == MODERN.len() && version >= MODERN
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;
    use crate::mcp::jsonrpc;

    fn headers(version: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(version) = version {
            headers.insert(MCP_PROTOCOL_VERSION, HeaderValue::from_static(version));
        }
        headers
    }

    #[test]
    fn a_request_is_modern_when_its_header_or_its_meta_names_2026_07_28_or_later() {
        let plain = jsonrpc::inspect(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
        let meta = jsonrpc::inspect(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","other":{"deep":[1]}}}}"#,
        )
        .unwrap();
        assert_eq!(Era::of(&headers(None), Some(&plain)), Era::Handshake);
        assert_eq!(
            Era::of(&headers(Some("2025-11-25")), Some(&plain)),
            Era::Handshake
        );
        assert_eq!(
            Era::of(&headers(Some("2026-07-28")), Some(&plain)),
            Era::Modern
        );
        assert_eq!(Era::of(&headers(Some("2027-01-01")), None), Era::Modern);
        assert_eq!(Era::of(&headers(None), Some(&meta)), Era::Modern);
        assert_eq!(
            Era::of(&headers(Some("garbage-later")), None),
            Era::Handshake
        );
    }
}
