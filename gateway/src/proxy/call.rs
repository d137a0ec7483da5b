//! One request as the chain sees it: where it goes, who sent it, its JSON-RPC messages (each
//! classified once, in `mcp::jsonrpc`), and whether it reached the upstream.

use std::time::Instant;

use hyper::{HeaderMap, Request, body::Incoming, header};

use super::Endpoint;
use crate::{
    audit::{Peer, RequestContext},
    authz::ListFilter,
    mcp::{
        era::Era,
        headers::MCP_SESSION_ID,
        jsonrpc::{Body, Kind, Message},
    },
};

/// A request on its way through the chain.
pub struct Call<'a> {
    /// The facts every audit line of the request repeats.
    pub context: RequestContext<'a>,
    pub endpoint: Endpoint,
    /// The JSON-RPC messages, once the body was read (POST only).
    pub body: Option<Body>,
    /// The protocol era, from the headers and then from the body.
    pub era: Era,
    /// When the gateway began with the request.
    pub received_at: Instant,
    /// When the request was sent upstream; `None` while (or if) it was not.
    pub forwarded_at: Option<Instant>,
    /// How the answer's list results are filtered for the caller, if they are.
    pub list_filter: Option<ListFilter>,
    /// The upstream's id of the session the client named by a sealed id (fleet mode).
    pub upstream_session: Option<String>,
    /// The upstream's message endpoint a sealed legacy endpoint stands for (fleet mode).
    pub upstream_endpoint: Option<String>,
}

impl<'a> Call<'a> {
    pub fn new(
        request_id: &'a str,
        peer: &'a Peer,
        endpoint: Endpoint,
        request: &Request<Incoming>,
    ) -> Self {
        let headers = request.headers();
        Self {
            context: RequestContext {
                request_id,
                peer,
                caller: None,
                auth: None,
                issuer: None,
                user_agent: header_str(headers, &header::USER_AGENT).map(str::to_owned),
                session: header_str(headers, &MCP_SESSION_ID).map(str::to_owned),
                http_method: request.method().clone(),
            },
            endpoint,
            era: Era::of(headers, None),
            body: None,
            received_at: Instant::now(),
            forwarded_at: None,
            list_filter: None,
            upstream_session: None,
            upstream_endpoint: None,
        }
    }

    pub fn messages(&self) -> &[Message] {
        self.body.as_ref().map_or(&[], |body| &body.messages)
    }

    /// What the request costs against its caller's limit: one per message, at least one.
    pub fn cost(&self) -> u32 {
        self.messages().len().max(1) as u32
    }

    /// Whether the request only negotiates (`server/discover`, `initialize`): counted, but never
    /// refused by a rate limit, or clients fall back to an older era (a 429 there is taken for
    /// "not spoken here").
    pub fn only_negotiates(&self) -> bool {
        let messages = self.messages();
        !messages.is_empty() && messages.iter().all(|m| m.kind == Kind::Negotiation)
    }

    /// Whether the request opens a `subscriptions/listen` stream.
    pub fn listens(&self) -> bool {
        matches!(self.messages(), [message] if message.kind == Kind::Listen)
    }

    /// The tools the request calls, each with how many times.
    pub fn tool_calls(&self) -> Vec<(&str, u32)> {
        let mut per_tool: Vec<(&str, u32)> = Vec::new();
        for tool in self.messages().iter().filter_map(Message::called_tool) {
            match per_tool.iter_mut().find(|(name, _)| *name == tool) {
                Some((_, count)) => *count += 1,
                None => per_tool.push((tool, 1)),
            }
        }
        per_tool
    }
}

pub fn header_str<'h>(headers: &'h HeaderMap, name: &header::HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}
