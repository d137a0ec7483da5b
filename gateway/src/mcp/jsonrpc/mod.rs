//! Reading just enough of a JSON-RPC body to authorize, limit and audit it, and writing the
//! gateway's own JSON-RPC errors.
//!
//! Inspection skips argument values without building them: only the method, the tool/prompt
//! name, the first top-level argument keys and the id are kept, within [`ParseLimits`].

mod seeds;

use bytes::Bytes;
use serde::de::{DeserializeSeed, IgnoredAny};
use serde_json::{Value, json};

use seeds::{BatchSeed, MessageSeed};

/// JSON-RPC error codes. The gateway's own codes lie outside -32768..-32000, which the
/// specification reserves.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    /// What the tasks specification answers for a task id the receiver does not know.
    pub const INVALID_PARAMS: i64 = -32602;
    /// What the MCP SDKs' servers answer for an unknown `Mcp-Session-Id` (with 404), so clients
    /// that look at the code see the same through the gateway. Handshake era only: 2026-07-28
    /// leaves -32000..-32019 to that era.
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// An unknown `Mcp-Session-Id` on a 2026-07-28 request (that era has no sessions).
    pub const UNKNOWN_SESSION: i64 = -31404;
    /// MCP 2026-07-28: `Mcp-Method`/`Mcp-Name` header does not match the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const UNAUTHENTICATED: i64 = -31001;
    pub const FORBIDDEN: i64 = -31003;
    pub const BODY_TOO_LARGE: i64 = -31013;
    pub const RATE_LIMITED: i64 = -31029;
    pub const REQUEST_TIMEOUT: i64 = -31408;
    pub const UPSTREAM_UNAVAILABLE: i64 = -31502;
    pub const AUDIT_UNAVAILABLE: i64 = -31503;
    /// The fleet's shared limits (Redis) could not be had and the node refuses without them.
    pub const FLEET_UNAVAILABLE: i64 = -31505;
    pub const UPSTREAM_TIMEOUT: i64 = -31504;
    /// The identity provider could not be reached to check an access token.
    pub const IDP_UNAVAILABLE: i64 = -31506;
}

/// One JSON-RPC message of a request body, as far as the gateway cares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// Absent for notifications and responses.
    pub id: Option<Value>,
    pub method: Option<String>,
    /// What the message is, decided once here for everything that reads it.
    pub kind: Kind,
    /// `params.name` of `tools/call` and `prompts/get`, `params.uri` of the resource methods:
    /// the member the server itself reads for that method, whatever else `params` holds.
    pub target: Option<String>,
    /// Top-level keys of `params.arguments`, never the values.
    pub arg_keys: Vec<String>,
    /// The protocol version a 2026-07-28 message names in its `_meta`.
    pub protocol_version: Option<String>,
    /// The resources a `subscriptions/listen` subscribes to.
    pub subscriptions: Vec<String>,
    /// A `tools/call` whose answer may be a task: it asks for one (`params.task`, 2025-11-25) or
    /// its client declares the tasks extension (2026-07-28), so the answer is read to bind the
    /// task's id to its caller.
    pub may_start_task: bool,
}

/// What a message asks for. Audit lines, tool limits (and authorization) read this rather than
/// comparing method names themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// `tools/call`: `target` is the tool, `arg_keys` its argument names.
    ToolCall,
    /// `prompts/get`: `target` is the prompt, `arg_keys` its argument names.
    PromptGet,
    /// `resources/read`: `target` is the resource's URI.
    ResourceRead,
    /// `resources/subscribe` and `resources/unsubscribe`: `target` is the resource's URI.
    ResourceSubscription,
    /// `completion/complete` of a prompt's arguments: `target` is the prompt.
    PromptCompletion,
    /// `completion/complete` of a resource template's arguments: `target` is the template.
    ResourceCompletion,
    /// `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`, `tasks/list`.
    List,
    /// `server/discover` (2026-07-28) and `initialize` (the handshake era): how a client learns
    /// what the server speaks. Never refused for limits or grants, or clients fall back to an
    /// older era.
    Negotiation,
    /// `subscriptions/listen` (2026-07-28): a long-lived stream of notifications; `subscriptions`
    /// holds the resources it subscribes to.
    Listen,
    /// `tasks/get`, `tasks/update`, `tasks/cancel`, `tasks/result`: `target` is the task id.
    TaskFollowUp,
    /// Any other request (`initialize`, `ping`, ...).
    OtherRequest,
    /// A method without an id.
    Notification,
    /// No method: the client's answer to a request of the server's.
    #[default]
    Response,
}

impl Kind {
    fn of(method: Option<&str>, has_id: bool) -> Self {
        match method {
            Some("tools/call") => Self::ToolCall,
            Some("prompts/get") => Self::PromptGet,
            Some("resources/read") => Self::ResourceRead,
            Some("resources/subscribe" | "resources/unsubscribe") => Self::ResourceSubscription,
            Some(
                "tools/list"
                | "prompts/list"
                | "resources/list"
                | "resources/templates/list"
                | "tasks/list",
            ) => Self::List,
            Some("server/discover" | "initialize") if has_id => Self::Negotiation,
            Some("subscriptions/listen") if has_id => Self::Listen,
            Some("tasks/get" | "tasks/update" | "tasks/cancel" | "tasks/result") if has_id => {
                Self::TaskFollowUp
            }
            Some(_) if !has_id => Self::Notification,
            Some(_) => Self::OtherRequest,
            None => Self::Response,
        }
    }
}

impl Message {
    /// The tool (or prompt) a message calls, for audit and per-tool decisions.
    pub fn tool(&self) -> Option<&str> {
        match self.kind {
            Kind::ToolCall | Kind::PromptGet => self.target.as_deref(),
            _ => None,
        }
    }

    /// The tool of a `tools/call`.
    pub fn called_tool(&self) -> Option<&str> {
        match self.kind {
            Kind::ToolCall => self.target.as_deref(),
            _ => None,
        }
    }

    /// Argument names, for the messages that have arguments (tool calls and prompts).
    pub fn argument_keys(&self) -> Option<&[String]> {
        match self.kind {
            Kind::ToolCall | Kind::PromptGet => Some(&self.arg_keys),
            _ => None,
        }
    }
}

/// The messages of a body: one, or the elements of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub messages: Vec<Message>,
    pub is_batch: bool,
}

impl Body {
    /// Ids to echo in an error answer (requests only; notifications get none).
    pub fn ids(&self) -> impl Iterator<Item = &Value> {
        self.messages.iter().filter_map(|m| m.id.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InspectError {
    #[error("parse error: the body is not valid JSON ({0})")]
    Parse(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl InspectError {
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse(_) => code::PARSE_ERROR,
            Self::Invalid(_) => code::INVALID_REQUEST,
        }
    }
}

/// How much of a body the gateway reads before refusing it: everything here is bounded so that
/// parsing costs at most linear time in the body (itself bounded by `max_body_bytes`) and memory
/// in proportion to what is kept, never to what a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    pub max_batch_messages: usize,
    pub max_json_depth: usize,
    /// Keys of `arguments` kept for the audit log; the rest are skipped unread.
    pub max_argument_keys: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_batch_messages: 100,
            max_json_depth: 64,
            max_argument_keys: 64,
        }
    }
}

/// Parses a request body with the default limits.
pub fn inspect(body: &[u8]) -> Result<Body, InspectError> {
    inspect_within(body, &ParseLimits::default())
}

/// Parses a request body.
pub fn inspect_within(body: &[u8], limits: &ParseLimits) -> Result<Body, InspectError> {
    // JSON is UTF-8. The parser below skips members it ignores without checking them, and the
    // upstream must not get bytes the gateway did not read as the same text (found by fuzzing).
    if let Err(err) = std::str::from_utf8(body) {
        return Err(InspectError::Parse(format!(
            "the body is not UTF-8 (at byte {})",
            err.valid_up_to()
        )));
    }
    if let Some(depth) = depth_over(body, limits.max_json_depth) {
        return Err(InspectError::Invalid(format!(
            "JSON nested {depth} levels deep; max_json_depth is {}",
            limits.max_json_depth
        )));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let classify = |err: serde_json::Error| {
        if err.is_data() {
            InspectError::Invalid(err.to_string())
        } else {
            InspectError::Parse(err.to_string())
        }
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let body = match first {
        Some(b'[') => {
            let messages = BatchSeed(limits)
                .deserialize(&mut deserializer)
                .map_err(classify)?;
            if messages.is_empty() {
                return Err(InspectError::Invalid("empty batch".into()));
            }
            Body {
                messages,
                is_batch: true,
            }
        }
        Some(b'{') => Body {
            messages: vec![
                MessageSeed(limits)
                    .deserialize(&mut deserializer)
                    .map_err(classify)?,
            ],
            is_batch: false,
        },
        _ => {
            return match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => Err(InspectError::Invalid(
                    "a JSON-RPC message must be an object or an array of objects".into(),
                )),
                Err(err) => Err(InspectError::Parse(err.to_string())),
            };
        }
    };
    deserializer.end().map_err(classify)?;
    Ok(body)
}

/// The nesting depth of `body` once it exceeds `max` (strings skipped), or `None`. One pass, no
/// allocation: the parser below skips argument values without a depth limit of its own, and the
/// upstream should not get what a recursive parser would choke on.
fn depth_over(body: &[u8], max: usize) -> Option<usize> {
    // Nesting needs an opening bracket per level: a body with few (an MCP message has about
    // five) cannot be too deep. This count vectorizes; the exact scan below does not.
    let openings = body.iter().filter(|b| matches!(b, b'[' | b'{')).count();
    if openings <= max {
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// A JSON-RPC error answer: a single error object echoing `id`, or for a batch one error per
/// request id (notifications get no answer in JSON-RPC, so a batch of only those gets `id: null`).
pub fn error_body(body: Option<&Body>, code: i64, message: &str, data: Option<Value>) -> Bytes {
    let error = |id: &Value| {
        let mut error = json!({"code": code, "message": message});
        if let Some(data) = &data {
            error["data"] = data.clone();
        }
        json!({"jsonrpc": "2.0", "id": id, "error": error})
    };
    let value = match body {
        Some(body) if body.is_batch && body.ids().next().is_some() => {
            Value::Array(body.ids().map(error).collect())
        }
        Some(body) => error(body.ids().next().unwrap_or(&Value::Null)),
        None => error(&Value::Null),
    };
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests;
