//! Reading just enough of a JSON-RPC body to authorize, limit and audit it, and writing the
//! gateway's own JSON-RPC errors.
//!
//! Inspection borrows from the body and skips argument values without building them: only the
//! method, the tool/prompt name, the top-level argument keys and the id are kept.

use std::{borrow::Cow, fmt};

use bytes::Bytes;
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};
use serde_json::{Value, json};

/// JSON-RPC error codes. The gateway's own codes lie outside -32768..-32000, which the
/// specification reserves.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    /// MCP 2026-07-28: `Mcp-Method`/`Mcp-Name` header does not match the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const UNAUTHENTICATED: i64 = -31001;
    pub const FORBIDDEN: i64 = -31003;
    pub const BODY_TOO_LARGE: i64 = -31013;
    pub const RATE_LIMITED: i64 = -31029;
    pub const REQUEST_TIMEOUT: i64 = -31408;
    pub const UPSTREAM_UNAVAILABLE: i64 = -31502;
    pub const AUDIT_UNAVAILABLE: i64 = -31503;
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
    /// `params.name` of `tools/call` and `prompts/get`, `params.uri` of `resources/read`.
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

/// Parses a request body.
pub fn inspect(body: &[u8]) -> Result<Body, InspectError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let classify = |err: serde_json::Error| {
        if err.is_data() {
            InspectError::Invalid(err.to_string())
        } else {
            InspectError::Parse(err.to_string())
        }
    };
    match first {
        Some(b'[') => {
            let raw: Vec<RawMessage<'_>> = serde_json::from_slice(body).map_err(classify)?;
            if raw.is_empty() {
                return Err(InspectError::Invalid("empty batch".into()));
            }
            Ok(Body {
                messages: raw.into_iter().map(Message::from).collect(),
                is_batch: true,
            })
        }
        Some(b'{') => {
            let raw: RawMessage<'_> = serde_json::from_slice(body).map_err(classify)?;
            Ok(Body {
                messages: vec![raw.into()],
                is_batch: false,
            })
        }
        _ => match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => Err(InspectError::Invalid(
                "a JSON-RPC message must be an object or an array of objects".into(),
            )),
            Err(err) => Err(InspectError::Parse(err.to_string())),
        },
    }
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<RawParams<'a>>,
}

#[derive(Deserialize)]
struct RawParams<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    uri: Option<Cow<'a, str>>,
    #[serde(default)]
    arguments: Option<ArgumentKeys>,
}

impl From<RawMessage<'_>> for Message {
    fn from(raw: RawMessage<'_>) -> Self {
        let (target, arg_keys) = match raw.params {
            Some(params) => (
                params.name.or(params.uri).map(Cow::into_owned),
                params.arguments.map(|a| a.0).unwrap_or_default(),
            ),
            None => (None, Vec::new()),
        };
        // JSON-RPC ids are strings, numbers or null; anything else is not echoed.
        let id = raw
            .id
            .filter(|id| id.is_string() || id.is_number() || id.is_null());
        Message {
            kind: Kind::of(raw.method.as_deref(), id.is_some()),
            id,
            method: raw.method.map(Cow::into_owned),
            target,
            arg_keys,
        }
    }
}

/// The keys of an `arguments` object; values are skipped unread. Non-object arguments have no keys.
struct ArgumentKeys(Vec<String>);

impl<'de> Deserialize<'de> for ArgumentKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = ArgumentKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("tool arguments")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ArgumentKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key.into_owned());
                }
                Ok(ArgumentKeys(keys))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ArgumentKeys, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ArgumentKeys(Vec::new()))
            }
            fn visit_unit<E>(self) -> Result<ArgumentKeys, E> {
                Ok(ArgumentKeys(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<ArgumentKeys, E> {
                Ok(ArgumentKeys(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<ArgumentKeys, E> {
                Ok(ArgumentKeys(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<ArgumentKeys, E> {
                Ok(ArgumentKeys(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<ArgumentKeys, E> {
                Ok(ArgumentKeys(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<ArgumentKeys, E> {
                Ok(ArgumentKeys(Vec::new()))
            }
        }
        deserializer.deserialize_any(KeysVisitor)
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
