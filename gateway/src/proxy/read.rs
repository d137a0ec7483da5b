//! Reading a request within its bounds: the URI within `max_uri_bytes`, the body within
//! `max_body_bytes` and `idle_timeout_secs`, and its JSON-RPC messages within `[limits]`, agreeing
//! with MCP's headers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, StatusCode, body::Incoming, http::request};

use super::{Call, Endpoint, Refusal};
use crate::{
    audit::Decision,
    authz::ToolCatalog,
    mcp::{
        era::Era,
        headers::{check_mcp_headers, check_param_headers, has_param_headers},
        jsonrpc::{self, code},
    },
    server::idle::{BodyStalled, StallTimeout},
};

/// The request body of a POST, within `max_body_bytes` and `idle_timeout_secs`.
pub(super) async fn read_body(
    endpoint: Endpoint,
    method: &Method,
    body: Incoming,
    limit: usize,
    idle_timeout: Duration,
) -> Result<Bytes, Refusal> {
    match endpoint.has_body(method) {
        Some(true) => {}
        Some(false) => return Ok(Bytes::new()),
        None => return Err(Refusal::method_not_allowed(endpoint.allowed_methods())),
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

/// A request URI within `max_uri_bytes`. (Body framing is hyper's: it refuses conflicting
/// lengths, and with both `Content-Length` and `Transfer-Encoding` reads the body as chunked and
/// closes the connection after the answer, as HTTP/1.1 prescribes; the upstream gets the body
/// re-framed by the gateway either way, so no request can hide in another.)
pub(super) fn check_uri(request: &Request<Incoming>, max: usize) -> Result<(), Refusal> {
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

/// The JSON-RPC messages of a POST, which must agree with MCP's method, name and (for the tools
/// the upstream listed) argument headers.
pub(super) fn parse_messages(
    call: &mut Call<'_>,
    parts: &request::Parts,
    body: &Bytes,
    limits: &jsonrpc::ParseLimits,
    catalog: &ToolCatalog,
) -> Result<(), Refusal> {
    if parts.method != Method::POST {
        return Ok(());
    }
    let messages = call.body.insert(jsonrpc::inspect_within(body, limits)?);
    check_mcp_headers(&parts.headers, messages)?;
    if has_param_headers(&parts.headers)
        && let Some(mirrored) = messages
            .messages
            .first()
            .and_then(|message| catalog.mirrored(message.called_tool()?))
    {
        check_param_headers(&parts.headers, messages, body, &mirrored)?;
    }
    call.era = Era::of(&parts.headers, call.body.as_ref());
    Ok(())
}
