//! Reading just enough of a JSON-RPC body to authorize, limit and audit it, and writing the
//! gateway's own JSON-RPC errors.
//!
//! Inspection skips argument values without building them: only the method, the tool/prompt
//! name, the first top-level argument keys and the id are kept, within [`ParseLimits`].

use std::fmt;

use bytes::Bytes;
use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Value, json};

/// JSON-RPC error codes. The gateway's own codes lie outside -32768..-32000, which the
/// specification reserves.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    /// What the MCP SDKs' servers answer for an unknown `Mcp-Session-Id` (with 404), so clients
    /// that look at the code see the same through the gateway.
    pub const SESSION_NOT_FOUND: i64 = -32001;
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
    /// `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`.
    List,
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
            Some("tools/list" | "prompts/list" | "resources/list" | "resources/templates/list") => {
                Self::List
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

/// A batch: at most `max_batch_messages` messages, the parse stopping at the first one over.
struct BatchSeed<'l>(&'l ParseLimits);

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Vec<Message>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Message>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Vec<Message>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch of JSON-RPC messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Message>, A::Error> {
        let max = self.0.max_batch_messages;
        let mut messages = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max));
        while let Some(message) = seq.next_element_seed(MessageSeed(self.0))? {
            if messages.len() == max {
                return Err(de::Error::custom(format_args!(
                    "batch larger than max_batch_messages ({max})"
                )));
            }
            messages.push(message);
        }
        Ok(messages)
    }
}

/// One message: `id`, `method` and `params` read, every other member skipped; a member given
/// twice is an error (the gateway and the upstream must not read different values).
struct MessageSeed<'l>(&'l ParseLimits);

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = Message;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Message, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = Message;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let mut id: Option<Option<Value>> = None;
        let mut method: Option<Option<String>> = None;
        let mut params: Option<Option<Params>> = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Id => set_once(&mut id, "id", map.next_value_seed(IdSeed)?)?,
                Field::Method => set_once(&mut method, "method", map.next_value()?)?,
                Field::Params => set_once(
                    &mut params,
                    "params",
                    map.next_value_seed(ParamsSeed(self.0))?,
                )?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let (id, method) = (id.flatten(), method.flatten());
        let mut kind = Kind::of(method.as_deref(), id.is_some());
        let (target, arg_keys) = match params.flatten() {
            Some(params) if method.as_deref() == Some("completion/complete") => {
                let (completion, target) = completion_target(params.reference);
                kind = completion.unwrap_or(kind);
                (target, params.arg_keys)
            }
            Some(params) => (target(kind, params.name, params.uri), params.arg_keys),
            None => (None, Vec::new()),
        };
        Ok(Message {
            kind,
            id,
            method,
            target,
            arg_keys,
        })
    }
}

fn set_once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

/// The members the gateway reads, recognized without allocating.
enum Field {
    Id,
    Method,
    Params,
    Name,
    Uri,
    Arguments,
    Ref,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, name: &str) -> Result<Field, E> {
                Ok(match name {
                    "id" => Field::Id,
                    "method" => Field::Method,
                    "params" => Field::Params,
                    "name" => Field::Name,
                    "uri" => Field::Uri,
                    "arguments" => Field::Arguments,
                    "ref" => Field::Ref,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// A JSON-RPC id worth echoing (string, number); anything else is skipped and not echoed.
struct IdSeed;

impl<'de> DeserializeSeed<'de> for IdSeed {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Value>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdSeed {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC id")
    }
    fn visit_str<E>(self, id: &str) -> Result<Option<Value>, E> {
        Ok(Some(Value::from(id)))
    }
    fn visit_u64<E>(self, id: u64) -> Result<Option<Value>, E> {
        Ok(Some(Value::from(id)))
    }
    fn visit_i64<E>(self, id: i64) -> Result<Option<Value>, E> {
        Ok(Some(Value::from(id)))
    }
    fn visit_f64<E>(self, id: f64) -> Result<Option<Value>, E> {
        Ok(serde_json::Number::from_f64(id).map(Value::Number))
    }
    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// What `params` tells the gateway.
struct Params {
    name: Option<String>,
    uri: Option<String>,
    arg_keys: Vec<String>,
    /// `ref` of `completion/complete`.
    reference: Option<Reference>,
}

/// What a completion is for: `{"type": "ref/prompt", "name": ...}` or
/// `{"type": "ref/resource", "uri": ...}` (a member given twice is an error, as everywhere).
#[derive(Deserialize)]
struct Reference {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    uri: Option<String>,
}

/// A completion's kind and target: it tells what a prompt or resource template takes, so it is
/// judged like using that prompt or resource.
fn completion_target(reference: Option<Reference>) -> (Option<Kind>, Option<String>) {
    match reference {
        Some(Reference {
            kind: Some(kind),
            name,
            uri,
        }) => match kind.as_str() {
            "ref/prompt" => (Some(Kind::PromptCompletion), name),
            "ref/resource" => (Some(Kind::ResourceCompletion), uri),
            _ => (None, None),
        },
        _ => (None, None),
    }
}

/// The member of `params` that names what a message of `kind` acts on. Chosen by the method, not
/// by which member is present: `resources/read` with a `name` beside its `uri` reads the `uri`,
/// and authorization must judge that.
fn target(kind: Kind, name: Option<String>, uri: Option<String>) -> Option<String> {
    match kind {
        Kind::ToolCall | Kind::PromptGet => name,
        Kind::ResourceRead | Kind::ResourceSubscription => uri,
        _ => name.or(uri),
    }
}

/// `params`: an object, or null (absent).
struct ParamsSeed<'l>(&'l ParseLimits);

impl<'de> DeserializeSeed<'de> for ParamsSeed<'_> {
    type Value = Option<Params>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Option<Params>, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed<'_> {
    type Value = Option<Params>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params as an object")
    }
    fn visit_none<E>(self) -> Result<Option<Params>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<Params>, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Params>, D::Error> {
        deserializer.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Params>, A::Error> {
        let mut name: Option<Option<String>> = None;
        let mut uri: Option<Option<String>> = None;
        let mut arg_keys: Option<Vec<String>> = None;
        let mut reference: Option<Option<Reference>> = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Name => set_once(&mut name, "name", map.next_value()?)?,
                Field::Uri => set_once(&mut uri, "uri", map.next_value()?)?,
                Field::Arguments => set_once(
                    &mut arg_keys,
                    "arguments",
                    map.next_value_seed(ArgumentKeysSeed(self.0.max_argument_keys))?,
                )?,
                Field::Ref => set_once(&mut reference, "ref", map.next_value()?)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(Params {
            name: name.flatten(),
            uri: uri.flatten(),
            arg_keys: arg_keys.unwrap_or_default(),
            reference: reference.flatten(),
        }))
    }
}

/// The first `max` keys of an `arguments` object; values, and keys past `max`, are skipped
/// unread. Arguments that are not an object have no keys.
struct ArgumentKeysSeed(usize);

impl<'de> DeserializeSeed<'de> for ArgumentKeysSeed {
    type Value = Vec<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<String>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ArgumentKeysSeed {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tool arguments")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
        let mut keys = Vec::new();
        loop {
            if keys.len() < self.0 {
                let Some(key) = map.next_key::<String>()? else {
                    break;
                };
                keys.push(key);
            } else if map.next_key::<IgnoredAny>()?.is_none() {
                break;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(keys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Vec::new())
    }
    fn visit_unit<E>(self) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_str<E>(self, _: &str) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
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
mod tests {
    use super::*;

    #[test]
    fn a_completion_is_classified_by_what_it_completes() {
        let body = inspect(
            br#"[{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"admin_prompt"},"argument":{"name":"a","value":"x"}}},
                {"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///private/{path}"}}},
                {"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{"ref":{"type":"ref/other"}}}]"#,
        )
        .unwrap();
        let seen: Vec<_> = body
            .messages
            .iter()
            .map(|m| (m.kind, m.target.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                (Kind::PromptCompletion, Some("admin_prompt")),
                (Kind::ResourceCompletion, Some("file:///private/{path}")),
                (Kind::OtherRequest, None),
            ]
        );
        assert!(inspect(br#"{"id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a","name":"b"}}}"#).is_err());
    }

    #[test]
    fn the_target_is_the_member_the_method_reads_whatever_else_params_holds() {
        let body = inspect(
            br#"[{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":"allowed","uri":"file:///secret"}},
                {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"uri":"file:///x","name":"echo"}},
                {"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"name":"n"}}]"#,
        )
        .unwrap();
        let targets: Vec<_> = body.messages.iter().map(|m| m.target.as_deref()).collect();
        assert_eq!(targets, [Some("file:///secret"), Some("echo"), None]);
    }

    #[test]
    fn tool_call_gives_method_tool_and_argument_keys_only() {
        let body = inspect(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"s3cret","nested":{"token":"x"}}}}"#,
        )
        .unwrap();
        assert!(!body.is_batch);
        let message = &body.messages[0];
        assert_eq!(message.id, Some(json!(7)));
        assert_eq!(message.method.as_deref(), Some("tools/call"));
        assert_eq!(message.tool(), Some("echo"));
        assert_eq!(message.arg_keys, ["message", "nested"]);
        assert!(!format!("{body:?}").contains("s3cret"));
    }

    #[test]
    fn batches_give_one_message_per_element() {
        let body = inspect(
            br#"[{"jsonrpc":"2.0","id":"a","method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"p","arguments":{"k":1}}}]"#,
        )
        .unwrap();
        assert!(body.is_batch);
        assert_eq!(body.messages.len(), 3);
        assert_eq!(body.messages[1].id, None);
        assert_eq!(body.messages[2].tool(), Some("p"));
        assert_eq!(body.ids().collect::<Vec<_>>(), [&json!("a"), &json!(2)]);
    }

    #[test]
    fn resources_read_target_is_not_a_tool() {
        let body = inspect(
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#,
        )
        .unwrap();
        assert_eq!(body.messages[0].target.as_deref(), Some("file:///x"));
        assert_eq!(body.messages[0].tool(), None);
        assert_eq!(body.messages[0].kind, Kind::ResourceRead);
    }

    #[test]
    fn each_message_is_classified_once_by_method_and_id() {
        let body = inspect(
            br#"[{"id":1,"method":"tools/call","params":{"name":"t"}},{"id":2,"method":"prompts/get"},{"id":3,"method":"resources/subscribe"},{"id":4,"method":"tools/list"},{"id":5,"method":"initialize"},{"method":"notifications/initialized"},{"id":6,"result":{}}]"#,
        )
        .unwrap();
        let kinds: Vec<Kind> = body.messages.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::ToolCall,
                Kind::PromptGet,
                Kind::ResourceSubscription,
                Kind::List,
                Kind::OtherRequest,
                Kind::Notification,
                Kind::Response
            ]
        );
        assert_eq!(body.messages[0].called_tool(), Some("t"));
        assert_eq!(
            body.messages[1].called_tool(),
            None,
            "a prompt is not a tool call"
        );
        assert_eq!(body.messages[3].argument_keys(), None);
    }

    #[test]
    fn malformed_and_invalid_bodies_are_told_apart() {
        for bad in [&b"{"[..], b"", b"{\"id\":1,}", b"nul", b"[{]"] {
            assert_eq!(
                inspect(bad).unwrap_err().code(),
                code::PARSE_ERROR,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for invalid in [&b"42"[..], b"\"x\"", b"[]", b"[1]", br#"{"method": 5}"#] {
            assert_eq!(
                inspect(invalid).unwrap_err().code(),
                code::INVALID_REQUEST,
                "{:?}",
                String::from_utf8_lossy(invalid)
            );
        }
    }

    fn batch_of(count: usize) -> Vec<u8> {
        let message = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        format!("[{}]", vec![message; count].join(",")).into_bytes()
    }

    #[test]
    fn a_batch_over_max_batch_messages_is_invalid_and_its_parse_stops_there() {
        assert_eq!(inspect(&batch_of(100)).unwrap().messages.len(), 100);
        let error = inspect(&batch_of(101)).unwrap_err();
        assert_eq!(error.code(), code::INVALID_REQUEST);
        assert!(
            error.to_string().contains("max_batch_messages (100)"),
            "{error}"
        );
        let limits = ParseLimits {
            max_batch_messages: 3,
            ..ParseLimits::default()
        };
        assert!(inspect_within(&batch_of(3), &limits).is_ok());
        assert!(inspect_within(&batch_of(20_000), &limits).is_err());
    }

    #[test]
    fn nesting_beyond_max_json_depth_is_invalid_and_brackets_in_strings_do_not_count() {
        let nested = |depth: usize| {
            format!(
                r#"{{"id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"a":{}1{}}}}}}}"#,
                "[".repeat(depth - 3),
                "]".repeat(depth - 3)
            )
        };
        assert!(inspect(nested(64).as_bytes()).is_ok());
        let error = inspect(nested(65).as_bytes()).unwrap_err();
        assert_eq!(error.code(), code::INVALID_REQUEST);
        assert!(error.to_string().contains("max_json_depth"), "{error}");
        let in_strings = format!(
            r#"{{"id":1,"method":"tools/call","params":{{"name":"{}","arguments":{{"k":"\"{}"}}}}}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(inspect(in_strings.as_bytes()).is_ok());
        assert!(inspect(&vec![b'['; 1_000_000]).is_err(), "a million levels");
    }

    #[test]
    fn only_the_first_max_argument_keys_are_kept() {
        let keys: Vec<String> = (0..10_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let body = format!(
            r#"{{"id":1,"method":"tools/call","params":{{"name":"t","arguments":{{{}}}}}}}"#,
            keys.join(",")
        );
        let message = &inspect(body.as_bytes()).unwrap().messages[0];
        assert_eq!(message.arg_keys.len(), 64);
        assert_eq!(message.arg_keys[63], "k63");
    }

    #[test]
    fn a_member_given_twice_is_invalid_so_the_upstream_cannot_read_another_value() {
        for body in [
            &br#"{"id":1,"id":2,"method":"ping"}"#[..],
            br#"{"id":1,"method":"ping","method":"tools/call"}"#,
            br#"{"id":1,"method":"tools/call","params":{"name":"safe","name":"danger"}}"#,
            br#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":{},"arguments":{"k":1}}}"#,
        ] {
            let error = inspect(body).unwrap_err();
            assert_eq!(error.code(), code::INVALID_REQUEST, "{error}");
            assert!(error.to_string().contains("duplicate"), "{error}");
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_a_parse_error_even_in_a_member_nobody_reads() {
        let body = b"{\"id\":1,\"method\":\"ping\",\"x\":{\"n\xab\xab\":1}}";
        let error = inspect(body).unwrap_err();
        assert_eq!(error.code(), code::PARSE_ERROR);
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }

    #[test]
    fn only_string_and_number_ids_are_kept() {
        let body = inspect(
            br#"[{"id":[1,[2]],"method":"a"},{"id":{"x":1},"method":"b"},{"id":true,"method":"c"},{"id":null,"method":"d"},{"id":1.5,"method":"e"},{"id":"s","method":"f"}]"#,
        )
        .unwrap();
        let ids: Vec<Option<Value>> = body.messages.iter().map(|m| m.id.clone()).collect();
        assert_eq!(
            ids,
            [None, None, None, None, Some(json!(1.5)), Some(json!("s"))]
        );
    }

    #[test]
    fn non_object_arguments_have_no_keys() {
        let body =
            inspect(br#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":[1,2]}}"#)
                .unwrap();
        assert!(body.messages[0].arg_keys.is_empty());
    }

    #[test]
    fn error_bodies_echo_ids() {
        let single = inspect(br#"{"jsonrpc":"2.0","id":"req-1","method":"ping"}"#).unwrap();
        let answer: Value = serde_json::from_slice(&error_body(
            Some(&single),
            -31029,
            "slow down",
            Some(json!({"retryAfterSeconds": 3})),
        ))
        .unwrap();
        assert_eq!(answer["id"], "req-1");
        assert_eq!(answer["error"]["code"], -31029);
        assert_eq!(answer["error"]["data"]["retryAfterSeconds"], 3);

        let batch =
            inspect(br#"[{"id":1,"method":"a"},{"method":"n"},{"id":2,"method":"b"}]"#).unwrap();
        let answer: Value =
            serde_json::from_slice(&error_body(Some(&batch), -31029, "x", None)).unwrap();
        assert_eq!(answer.as_array().unwrap().len(), 2);
        assert_eq!(answer[1]["id"], 2);

        let answer: Value =
            serde_json::from_slice(&error_body(None, -32700, "parse", None)).unwrap();
        assert_eq!(answer["id"], Value::Null);
    }
}
