//! The serde seeds that read a JSON-RPC body without building its argument values: each keeps
//! what the gateway needs (method, id, name or URI, the first argument keys) and skips the rest,
//! within [`ParseLimits`].

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::Value;

use super::{Kind, Message, ParseLimits};

/// A batch: at most `max_batch_messages` messages, the parse stopping at the first one over.
pub(super) struct BatchSeed<'l>(pub(super) &'l ParseLimits);

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
pub(super) struct MessageSeed<'l>(pub(super) &'l ParseLimits);

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
        let (mut protocol_version, mut subscriptions, mut may_start_task) =
            (None, Vec::new(), false);
        let (target, arg_keys) = match params.flatten() {
            Some(params) if method.as_deref() == Some("completion/complete") => {
                protocol_version = params.protocol_version;
                let (completion, target) = completion_target(params.reference);
                kind = completion.unwrap_or(kind);
                (target, params.arg_keys)
            }
            Some(params) => {
                protocol_version = params.protocol_version;
                subscriptions = params.resource_subscriptions;
                may_start_task = kind == Kind::ToolCall && params.task_capable;
                (
                    target(kind, params.name, params.uri, params.task_id),
                    params.arg_keys,
                )
            }
            None => (None, Vec::new()),
        };
        Ok(Message {
            kind,
            id,
            method,
            target,
            arg_keys,
            protocol_version,
            subscriptions,
            may_start_task,
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
    Meta,
    Notifications,
    TaskId,
    Task,
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
                    "_meta" => Field::Meta,
                    "notifications" => Field::Notifications,
                    "taskId" => Field::TaskId,
                    "task" => Field::Task,
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
    /// `_meta["io.modelcontextprotocol/protocolVersion"]` (MCP 2026-07-28).
    protocol_version: Option<String>,
    /// `notifications.resourceSubscriptions` of `subscriptions/listen`.
    resource_subscriptions: Vec<String>,
    /// `taskId` of the tasks methods.
    task_id: Option<String>,
    /// `params.task` is there, or `_meta` declares the client's tasks extension.
    task_capable: bool,
}

/// What the gateway reads of `params._meta`: the protocol version a 2026-07-28 request carries
/// and whether its client declares the tasks extension. (Other members are skipped unread; a
/// member given twice is an error.)
#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<String>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities")]
    client_capabilities: Option<ClientCapabilities>,
}

/// The extensions a 2026-07-28 client declares, by name; their settings are skipped.
#[derive(Deserialize)]
struct ClientCapabilities {
    extensions: Option<std::collections::BTreeMap<String, IgnoredAny>>,
}

/// The tasks extension of MCP 2026-07-28: a server may answer a call of a client that declares it
/// with a task instead of a result.
const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

impl Meta {
    fn declares_tasks(&self) -> bool {
        self.client_capabilities
            .as_ref()
            .and_then(|capabilities| capabilities.extensions.as_ref())
            .is_some_and(|extensions| extensions.contains_key(TASKS_EXTENSION))
    }
}

/// What the gateway reads of a `subscriptions/listen` filter: the resources it subscribes to,
/// which need the same grant as reading them. (Their number is bounded by the body's size.)
#[derive(Deserialize)]
struct ListenFilter {
    #[serde(rename = "resourceSubscriptions")]
    resource_subscriptions: Option<Vec<String>>,
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
fn target(
    kind: Kind,
    name: Option<String>,
    uri: Option<String>,
    task_id: Option<String>,
) -> Option<String> {
    match kind {
        Kind::ToolCall | Kind::PromptGet => name,
        Kind::ResourceRead | Kind::ResourceSubscription => uri,
        Kind::TaskFollowUp => task_id,
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
        let mut meta: Option<Option<Meta>> = None;
        let mut listen: Option<Option<ListenFilter>> = None;
        let mut task_id: Option<Option<String>> = None;
        let mut task: Option<IgnoredAny> = None;
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
                Field::Meta => set_once(&mut meta, "_meta", map.next_value()?)?,
                Field::Notifications => {
                    set_once(&mut listen, "notifications", map.next_value()?)?;
                }
                Field::TaskId => set_once(&mut task_id, "taskId", map.next_value()?)?,
                Field::Task => set_once(&mut task, "task", map.next_value()?)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let meta = meta.flatten();
        Ok(Some(Params {
            name: name.flatten(),
            uri: uri.flatten(),
            arg_keys: arg_keys.unwrap_or_default(),
            reference: reference.flatten(),
            task_capable: task.is_some() || meta.as_ref().is_some_and(Meta::declares_tasks),
            protocol_version: meta.and_then(|meta| meta.protocol_version),
            resource_subscriptions: listen
                .flatten()
                .and_then(|listen| listen.resource_subscriptions)
                .unwrap_or_default(),
            task_id: task_id.flatten(),
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
