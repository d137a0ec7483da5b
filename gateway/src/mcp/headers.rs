//! MCP's own HTTP headers.

use base64::Engine;
use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};

use super::jsonrpc::Body;

pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// An `Mcp-Method` or `Mcp-Name` header that says something other than the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} header does not match the request body")]
pub struct HeaderMismatch(&'static str);

/// MCP 2026-07-28 mirrors the method and name in headers; when present they must match the body,
/// which is what the gateway audits and limits.
pub fn check_mcp_headers(headers: &HeaderMap, body: &Body) -> Result<(), HeaderMismatch> {
    let method_header = headers.get(&MCP_METHOD);
    let name_header = headers.get(&MCP_NAME);
    if method_header.is_none() && name_header.is_none() {
        return Ok(());
    }
    let (false, [message]) = (body.is_batch, &body.messages[..]) else {
        return Err(HeaderMismatch(
            "Mcp-Method/Mcp-Name (a batch has no single method)",
        ));
    };
    if let Some(value) = method_header
        && message.method.as_deref().map(str::as_bytes) != Some(value.as_bytes())
    {
        return Err(HeaderMismatch("Mcp-Method"));
    }
    if let Some(value) = name_header
        && decode_header_text(value).as_deref() != message.target.as_deref()
    {
        return Err(HeaderMismatch("Mcp-Name"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::jsonrpc;

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
        let mismatch =
            check_mcp_headers(&headers(&[("mcp-method", "tools/list")]), &call).unwrap_err();
        assert_eq!(
            mismatch.to_string(),
            "Mcp-Method header does not match the request body"
        );
        assert!(check_mcp_headers(&headers(&[("mcp-name", "add")]), &call).is_err());
        // "échø" in base64.
        let accented = body(r#"{"id":1,"method":"tools/call","params":{"name":"échø"}}"#);
        assert!(
            check_mcp_headers(&headers(&[("mcp-name", "=?base64?w6ljaMO4?=")]), &accented).is_ok()
        );
        let batch = body(r#"[{"id":1,"method":"ping"}]"#);
        assert!(check_mcp_headers(&headers(&[("mcp-method", "ping")]), &batch).is_err());
    }
}
