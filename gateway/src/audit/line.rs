//! The audit log's lines of requests: one `request` line per JSON-RPC message (or per request
//! without messages), one `response` line per forwarded request. (`operator.rs` has the lines of
//! what the feedback loop and operators did.)

use std::{
    cell::RefCell,
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use hyper::{Method, header::HeaderValue};
use serde::Serialize;

use super::Decision;
use crate::{mcp::jsonrpc::Message, policy::AuthMethod, tls::ClientCertificate};

/// Longest string field written; longer ones are cut and marked.
const MAX_FIELD_LEN: usize = 256;

/// A connection's peer, its address formatted once for the audit lines and X-Forwarded-For.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    pub ip_text: HeaderValue,
    /// The client certificate the connection presented (mTLS), verified by the handshake.
    pub certificate: Option<ClientCertificate>,
}

impl Peer {
    pub fn new(ip: IpAddr, certificate: Option<ClientCertificate>) -> Self {
        let ip = ip.to_canonical();
        // An address's text is always a valid header value.
        let ip_text = HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            ip,
            ip_text,
            certificate,
        }
    }

    fn ip_str(&self) -> &str {
        self.ip_text.to_str().unwrap_or("unknown")
    }
}

/// The request facts every line of a request repeats.
#[derive(Debug)]
pub struct RequestContext<'a> {
    pub request_id: &'a str,
    pub peer: &'a Peer,
    pub caller: Option<&'a str>,
    /// How the caller authenticated, once it has.
    pub auth: Option<AuthMethod>,
    /// The issuer of the caller's access token (`auth = "oauth"`).
    pub issuer: Option<&'a str>,
    pub user_agent: Option<String>,
    pub session: Option<String>,
    pub http_method: Method,
}

/// Calls `with` on `ts` as RFC 3339 with milliseconds. Under load many lines share a
/// millisecond, so each thread keeps the text of the last one it wrote.
fn with_rfc3339<R>(ts: SystemTime, with: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: RefCell<(Option<u128>, String)> = const { RefCell::new((None, String::new())) };
    }
    let millis = ts
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    LAST.with_borrow_mut(|(last, text)| {
        if *last != Some(millis) {
            text.clear();
            let _ = write!(text, "{}", humantime::format_rfc3339_millis(ts));
            *last = Some(millis);
        }
        with(text)
    })
}

pub(super) fn rfc3339<S: serde::Serializer>(
    ts: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    with_rfc3339(*ts, |text| serializer.serialize_str(text))
}

/// One line about a request, written field by field. Not `#[derive(Serialize)]`: serde escapes
/// every key and value byte by byte, which was about an eighth of the gateway's own instructions
/// per request (callgrind). Here the keys are literals and a value goes through serde_json's
/// escaping only when it has a character that needs it.
struct Line<'a> {
    out: &'a mut Vec<u8>,
}

/// A field's key as it is written after the previous field, `,"name":`, in one literal.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl<'a> Line<'a> {
    /// Starts a line with the fields every line of a request has.
    fn start(out: &'a mut Vec<u8>, event: &str, ctx: &RequestContext<'_>) -> Self {
        Self::of_request(out, event, ctx.request_id, ctx.caller)
    }

    fn of_request(
        out: &'a mut Vec<u8>,
        event: &str,
        request_id: &str,
        caller: Option<&str>,
    ) -> Self {
        out.extend_from_slice(b"{\"ts\":\"");
        with_rfc3339(SystemTime::now(), |ts| out.extend_from_slice(ts.as_bytes()));
        out.push(b'"');
        let mut line = Self { out };
        line.plain(key!("event"), event);
        line.plain(key!("request_id"), request_id);
        line.str(key!("caller"), caller);
        line
    }

    /// The facts of the HTTP request, which only request lines carry (a response line names its
    /// request by `request_id`).
    fn http_request(&mut self, ctx: &RequestContext<'_>) {
        self.plain(key!("ip"), ctx.peer.ip_str());
        match ctx.auth {
            Some(method) => self.plain(key!("auth"), method.as_str()),
            None => self.str(key!("auth"), None),
        }
        if let Some(issuer) = ctx.issuer {
            self.str(key!("issuer"), Some(issuer));
        }
        self.str(key!("user_agent"), ctx.user_agent.as_deref().map(cap));
        self.str(key!("session"), ctx.session.as_deref().map(cap));
        // An HTTP method is a token: no character of it needs escaping.
        self.plain(key!("http_method"), ctx.http_method.as_str());
    }

    /// A string field, `null` when absent. `key` is from [`key!`].
    fn str(&mut self, key: &str, value: Option<&str>) {
        self.out.extend_from_slice(key.as_bytes());
        match value {
            Some(value) => push_json_str(self.out, value),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// A string field the gateway made itself, with no character that needs escaping (a literal,
    /// a UUID, an address).
    fn plain(&mut self, key: &str, value: &str) {
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    fn strs<'s>(&mut self, key: &str, values: impl Iterator<Item = &'s str>) {
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'[');
        for (i, value) in values.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            push_json_str(self.out, value);
        }
        self.out.push(b']');
    }

    fn number(&mut self, key: &str, value: impl Serialize) {
        self.out.extend_from_slice(key.as_bytes());
        // Numbers into a Vec cannot fail to serialize.
        let _ = serde_json::to_writer(&mut *self.out, &value);
    }

    fn decision(&mut self, decision: Decision, reason: Option<&str>) {
        self.plain(key!("decision"), decision.as_str());
        if let Some(reason) = reason {
            self.str(key!("reason"), Some(cap(reason)));
        }
    }

    fn finish(self) {
        self.out.extend_from_slice(b"}\n");
    }
}

/// `value` as a JSON string. JSON escapes only quotes, backslashes and control characters.
fn push_json_str(out: &mut Vec<u8>, value: &str) {
    // No early exit, so the check vectorizes; fields are short (at most MAX_FIELD_LEN).
    let needs_escape = value.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // A string into a Vec cannot fail to serialize.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// `event: "request"` lines: one per JSON-RPC message, or one for a request without messages
/// (GET, DELETE, or refused before the body was read).
pub fn request_lines(
    ctx: &RequestContext<'_>,
    messages: &[Message],
    decision: Decision,
) -> Vec<u8> {
    lines_with_reason(ctx, messages, decision, None)
}

fn lines_with_reason(
    ctx: &RequestContext<'_>,
    messages: &[Message],
    decision: Decision,
    reason: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * messages.len().max(1));
    if messages.is_empty() {
        let mut line = Line::start(&mut out, "request", ctx);
        line.http_request(ctx);
        line.decision(decision, reason);
        line.finish();
    }
    for message in messages {
        let mut line = Line::start(&mut out, "request", ctx);
        line.http_request(ctx);
        if let Some(method) = message.method.as_deref() {
            line.str(key!("method"), Some(cap(method)));
        }
        if let Some(tool) = message.tool() {
            line.str(key!("tool"), Some(cap(tool)));
        }
        if let Some(keys) = message.argument_keys() {
            line.strs(key!("arg_keys"), keys.iter().map(|key| cap(key)));
        }
        line.decision(decision, reason);
        line.finish();
    }
    out
}

/// Most tool names a refused batch's line lists.
const MAX_REFUSED_TOOLS: usize = 16;

/// The audit of a refused request: its `request` line as [`request_lines`] writes it for one
/// message, but a single line for a refused batch, with the number of `messages` and the first
/// distinct tools it called. A client cannot make the gateway write more for a request it refuses
/// than for one it forwards. `reason` says why, where the decision alone does not (the rule that
/// denied a call).
pub fn refusal_lines(
    ctx: &RequestContext<'_>,
    messages: &[Message],
    decision: Decision,
    reason: Option<&str>,
) -> Vec<u8> {
    if messages.len() <= 1 {
        return lines_with_reason(ctx, messages, decision, reason);
    }
    let mut tools: Vec<&str> = Vec::new();
    for tool in messages.iter().filter_map(Message::tool) {
        if tools.len() == MAX_REFUSED_TOOLS {
            break;
        }
        if !tools.contains(&tool) {
            tools.push(tool);
        }
    }
    let mut out = Vec::with_capacity(320);
    let mut line = Line::start(&mut out, "request", ctx);
    line.http_request(ctx);
    line.number(key!("messages"), messages.len());
    line.strs(key!("tools"), tools.into_iter().map(cap));
    line.decision(decision, reason);
    line.finish();
    out
}

/// The `event: "response"` line of a forwarded request: upstream status and time to its headers.
/// The request line has the rest (address, user agent, session, HTTP method), once.
pub fn response_line(ctx: &RequestContext<'_>, status: u16, latency: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let mut line = Line::start(&mut out, "response", ctx);
    line.number(key!("status"), status);
    line.number(
        key!("latency_ms"),
        (latency.as_secs_f64() * 1e6).round() / 1e3,
    );
    line.finish();
    out
}

/// The `event: "stream_open"` line of a long-lived stream the upstream began to answer
/// (`subscriptions/listen`): the request line said who asked; this one says it now streams.
pub fn stream_opened_line(ctx: &RequestContext<'_>, method: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let mut line = Line::start(&mut out, "stream_open", ctx);
    line.str(key!("method"), Some(cap(method)));
    line.finish();
    out
}

/// The `event: "stream_close"` line of such a stream, however it ended, with how long it was open.
pub fn stream_closed_line(request_id: &str, caller: &str, open_for: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let mut line = Line::of_request(&mut out, "stream_close", request_id, Some(caller));
    line.number(key!("open_ms"), open_for.as_millis() as u64);
    line.finish();
    out
}

/// A line as JSON, newline-terminated.
pub(super) fn finish_line(line: &impl Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec(line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Cuts a field to [`MAX_FIELD_LEN`] bytes on a character boundary, marking the cut.
fn cap(field: &str) -> &str {
    if field.len() <= MAX_FIELD_LEN {
        return field;
    }
    let mut end = MAX_FIELD_LEN;
    while !field.is_char_boundary(end) {
        end -= 1;
    }
    &field[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::Value;

    use super::*;
    use crate::mcp::jsonrpc;

    fn ctx() -> RequestContext<'static> {
        RequestContext {
            request_id: "r-1",
            peer: Box::leak(Box::new(Peer::new("192.0.2.1".parse().unwrap(), None))),
            caller: Some("alice"),
            auth: Some(AuthMethod::Key),
            issuer: None,
            user_agent: Some("x".repeat(1000)),
            session: Some("s-1".into()),
            http_method: Method::POST,
        }
    }

    pub(crate) fn parse_lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn request_lines_have_the_documented_fields_and_no_values() {
        let body = jsonrpc::inspect(
            br#"[{"id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"top-secret"}}},{"method":"notifications/initialized"}]"#,
        )
        .unwrap();
        let bytes = request_lines(&ctx(), &body.messages, Decision::Forwarded);
        assert!(!String::from_utf8_lossy(&bytes).contains("top-secret"));
        let lines = parse_lines(&bytes);
        assert_eq!(lines.len(), 2);
        let call = &lines[0];
        for field in [
            "ts",
            "request_id",
            "caller",
            "ip",
            "auth",
            "user_agent",
            "session",
            "method",
            "tool",
            "arg_keys",
            "decision",
        ] {
            assert!(call.get(field).is_some(), "missing {field}: {call}");
        }
        assert_eq!(call["event"], "request");
        assert_eq!(call["tool"], "echo");
        assert_eq!(call["arg_keys"], serde_json::json!(["message"]));
        assert_eq!(call["decision"], "forwarded");
        assert_eq!(call["user_agent"].as_str().unwrap().len(), MAX_FIELD_LEN);
        let ts = call["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-01-01T00:00:00.000Z".len(),
            "{ts}"
        );
        assert_eq!(lines[1]["method"], "notifications/initialized");
        assert!(lines[1].get("tool").is_none());
    }

    #[test]
    fn denied_requests_without_body_get_one_line() {
        let mut ctx = ctx();
        ctx.caller = None;
        let lines = parse_lines(&request_lines(&ctx, &[], Decision::Unauthenticated));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["decision"], "unauthenticated");
        assert_eq!(lines[0]["caller"], Value::Null);
    }

    #[test]
    fn response_line_carries_status_and_latency() {
        let line = &parse_lines(&response_line(&ctx(), 200, Duration::from_micros(1500)))[0];
        assert_eq!(line["event"], "response");
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["caller"], "alice");
        assert_eq!(line["status"], 200);
        assert_eq!(line["latency_ms"], 1.5);
        let mut fields: Vec<_> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "caller",
                "event",
                "latency_ms",
                "request_id",
                "status",
                "ts"
            ]
        );
    }

    #[test]
    fn fields_that_need_escaping_survive_as_json() {
        let mut ctx = ctx();
        let odd = "quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é 🦀";
        ctx.user_agent = Some(odd.into());
        ctx.session = None;
        let body = jsonrpc::inspect(
            br#"{"id":1,"method":"tools/call","params":{"name":"a\"b","arguments":{"k\\1":1,"\u0001":2}}}"#,
        )
        .unwrap();
        let line = &parse_lines(&request_lines(&ctx, &body.messages, Decision::RateLimited))[0];
        assert_eq!(line["user_agent"], odd);
        assert_eq!(line["session"], Value::Null);
        assert_eq!(line["tool"], "a\"b");
        assert_eq!(line["arg_keys"], serde_json::json!(["k\\1", "\u{1}"]));
        assert_eq!(line["decision"], "rate_limited");
    }

    #[test]
    fn cap_respects_char_boundaries() {
        let long = "é".repeat(200);
        let capped = cap(&long);
        assert!(capped.len() <= MAX_FIELD_LEN);
        assert!(capped.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_refused_batch_writes_one_line_with_its_message_count() {
        let ctx = ctx();
        let calls: Vec<String> = (0..50)
            .map(|i| {
                format!(
                    r#"{{"id":{i},"method":"tools/call","params":{{"name":"t{}"}}}}"#,
                    i % 20
                )
            })
            .collect();
        let body = jsonrpc::inspect(format!("[{}]", calls.join(",")).as_bytes()).unwrap();
        let out = refusal_lines(&ctx, &body.messages, Decision::RateLimited, None);
        let lines = parse_lines(&out);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["messages"], 50);
        assert_eq!(lines[0]["decision"], "rate_limited");
        assert_eq!(
            lines[0]["tools"].as_array().unwrap().len(),
            MAX_REFUSED_TOOLS
        );
        let forwarded = request_lines(&ctx, &body.messages, Decision::Forwarded);
        assert_eq!(
            forwarded.iter().filter(|b| **b == b'\n').count(),
            50,
            "one per message"
        );
    }
}
