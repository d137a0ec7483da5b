//! MCP's own HTTP headers.

use base64::Engine;
use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};

use serde_json::Value;

use super::jsonrpc::{Body, Kind};
use crate::authz::Mirrored;

pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// An `Mcp-Method`, `Mcp-Name` or `Mcp-Param-*` header that says something other than the body.
/// (It names the header, never its value.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} header does not match the request body")]
pub struct HeaderMismatch(String);

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
            "Mcp-Method/Mcp-Name (a batch has no single method)".into(),
        ));
    };
    if let Some(value) = method_header
        && message.method.as_deref().map(str::as_bytes) != Some(value.as_bytes())
    {
        return Err(HeaderMismatch("Mcp-Method".into()));
    }
    if let Some(value) = name_header
        && decode_header_text(value).as_deref() != message.target.as_deref()
    {
        return Err(HeaderMismatch("Mcp-Name".into()));
    }
    Ok(())
}

/// Whether a request carries any `Mcp-Param-*` header (one pass over the names, no allocation).
pub fn has_param_headers(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name.as_str().starts_with("mcp-param-"))
}

/// MCP 2026-07-28 mirrors the arguments a tool's schema marks (`x-mcp-header`) into
/// `Mcp-Param-*` headers. A server that reads the body must check that they agree, so that
/// nothing routing or limiting by header can be fooled; the gateway decides on the body alone, and
/// checks the headers of the tools it has seen listed. Headers it does not know pass untouched.
pub fn check_param_headers(
    headers: &HeaderMap,
    body: &Body,
    raw: &[u8],
    mirrored: &[Mirrored],
) -> Result<(), HeaderMismatch> {
    let (false, [message]) = (body.is_batch, &body.messages[..]) else {
        return Ok(());
    };
    if message.kind != Kind::ToolCall {
        return Ok(());
    }
    let present: Vec<(&Mirrored, &HeaderValue)> = mirrored
        .iter()
        .filter_map(|m| Some((m, headers.get(&*m.header)?)))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    // Read once more, whole: only tool calls that carry mirrored headers pay for it.
    let arguments = serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|mut value| value.pointer_mut("/params/arguments").map(Value::take));
    for (mirrored, value) in present {
        let argument = arguments.as_ref().and_then(|a| a.get(&*mirrored.argument));
        let agrees = match (decode_header_text(value), argument) {
            (Some(text), Some(argument)) => same_value(&text, argument),
            _ => false,
        };
        if !agrees {
            return Err(HeaderMismatch(display_name(&mirrored.header)));
        }
    }
    Ok(())
}

/// A header's text against the argument it mirrors: strings as they are, numbers by value
/// (`"10"` and `1e1` agree), booleans as `true`/`false`.
fn same_value(text: &str, argument: &Value) -> bool {
    match argument {
        Value::String(s) => s == text,
        Value::Number(n) => match (n.as_i64(), text.parse::<i64>()) {
            (Some(a), Ok(b)) => a == b,
            _ => matches!((n.as_f64(), text.parse::<f64>()), (Some(a), Ok(b)) if a == b),
        },
        Value::Bool(b) => text == if *b { "true" } else { "false" },
        _ => false,
    }
}

/// `mcp-param-region` as `Mcp-Param-Region`, for messages.
fn display_name(header: &str) -> String {
    let suffix = header.strip_prefix("mcp-param-").unwrap_or(header);
    let mut chars = suffix.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase());
    format!(
        "Mcp-Param-{}{}",
        first.map(String::from).unwrap_or_default(),
        chars.as_str()
    )
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

    #[test]
    fn mirrored_argument_headers_must_match_the_body_and_unknown_ones_pass() {
        let mirrored = [
            Mirrored {
                header: "mcp-param-region".into(),
                argument: "region".into(),
            },
            Mirrored {
                header: "mcp-param-count".into(),
                argument: "count".into(),
            },
        ];
        let raw = r#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":{"region":"eu","count":10}}}"#;
        let call = body(raw);
        let check = |pairs: &[(&'static str, &'static str)]| {
            check_param_headers(&headers(pairs), &call, raw.as_bytes(), &mirrored)
        };
        assert!(check(&[]).is_ok());
        assert!(check(&[("mcp-param-region", "eu"), ("mcp-param-count", "10")]).is_ok());
        assert!(
            check(&[("mcp-param-count", "1e1")]).is_ok(),
            "numbers compare by value"
        );
        assert!(check(&[("mcp-param-region", "=?base64?ZXU=?=")]).is_ok());
        assert!(
            check(&[("mcp-param-other", "anything")]).is_ok(),
            "not mirrored: passes"
        );
        let mismatch = check(&[("mcp-param-region", "us")]).unwrap_err();
        assert_eq!(
            mismatch.to_string(),
            "Mcp-Param-Region header does not match the request body"
        );
        assert!(check(&[("mcp-param-count", "11")]).is_err());
        let without = r#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":{}}}"#;
        assert!(
            check_param_headers(
                &headers(&[("mcp-param-region", "eu")]),
                &body(without),
                without.as_bytes(),
                &mirrored
            )
            .is_err(),
            "a header for an argument the body does not carry"
        );
    }
}
