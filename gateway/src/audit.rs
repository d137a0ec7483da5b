//! Stage 3: the audit log, JSON Lines, append-only.
//!
//! Every request's lines are written before it is forwarded, and the forward waits for the write.
//! Without fsync each worker thread writes the lines of the requests that became ready together
//! with one `write(2)` on the O_APPEND file ([`WorkerAudit`]). With `audit.fsync = true` one
//! writer thread takes everything queued at once and commits it with one `write` and one `fsync`
//! (group commit), so throughput holds under concurrency. SIGHUP reopens
//! the path (logrotate's `postrotate`); no line is lost across it.

use std::{
    cell::RefCell,
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use hyper::{Method, header::HeaderValue};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{jsonrpc::Message, lock};

/// Longest string field written; longer ones are cut and marked.
const MAX_FIELD_LEN: usize = 256;
/// Most argument keys written for one message.
const MAX_ARG_KEYS: usize = 64;
/// Held-back response lines are written at once past this many bytes.
const PENDING_LIMIT: usize = 64 * 1024;
/// Held-back response lines are written at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Lines waiting for the writer before requests wait for room (backpressure, bounded memory).
const QUEUE_CAPACITY: usize = 16_384;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot be written: {0}")]
    Write(Arc<io::Error>),
    #[error("the audit log writer has stopped")]
    Stopped,
}

/// What the gateway decided about a request (the `decision` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forwarded,
    Unauthenticated,
    InvalidKey,
    /// Authenticated, but not allowed (another caller's session).
    Forbidden,
    /// Authenticated, but posted to no endpoint the gateway serves.
    NotFound,
    RateLimited,
    BadRequest,
    TooLarge,
    /// The audit line could not be written, so the call was refused (only seen in the gateway's
    /// own log, since the audit log was failing).
    AuditFailed,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidKey => "invalid_key",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::AuditFailed => "audit_failed",
        }
    }
}

/// A connection's peer, its address formatted once for the audit lines and X-Forwarded-For.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    pub ip_text: HeaderValue,
}

impl Peer {
    pub fn new(ip: IpAddr) -> Self {
        let ip = ip.to_canonical();
        // An address's text is always a valid header value.
        let ip_text = HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { ip, ip_text }
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

fn rfc3339<S: serde::Serializer>(ts: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
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
        out.extend_from_slice(b"{\"ts\":\"");
        with_rfc3339(SystemTime::now(), |ts| out.extend_from_slice(ts.as_bytes()));
        out.push(b'"');
        let mut line = Self { out };
        line.plain(key!("event"), event);
        line.plain(key!("request_id"), ctx.request_id);
        line.str(key!("caller"), ctx.caller);
        line
    }

    /// The facts of the HTTP request, which only request lines carry (a response line names its
    /// request by `request_id`).
    fn http_request(&mut self, ctx: &RequestContext<'_>) {
        self.plain(key!("ip"), ctx.peer.ip_str());
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
    let mut out = Vec::with_capacity(256 * messages.len().max(1));
    if messages.is_empty() {
        let mut line = Line::start(&mut out, "request", ctx);
        line.http_request(ctx);
        line.plain(key!("decision"), decision.as_str());
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
        if matches!(
            message.method.as_deref(),
            Some("tools/call" | "prompts/get")
        ) {
            let keys = message.arg_keys.iter().take(MAX_ARG_KEYS);
            line.strs(key!("arg_keys"), keys.map(|key| cap(key)));
        }
        line.plain(key!("decision"), decision.as_str());
        line.finish();
    }
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

#[derive(Serialize)]
struct BlockLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    ts: SystemTime,
    event: &'static str,
    ip: IpAddr,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforced_in: Option<&'a str>,
}

/// `event: "block"`: a source was blocked for `duration`, in `enforced_in` ("xdp" or "userspace").
pub fn block_line(
    ip: IpAddr,
    reason: &str,
    duration: Option<Duration>,
    enforced_in: &str,
) -> Vec<u8> {
    block_event("block", ip, reason, duration, Some(enforced_in))
}

/// `event: "unblock"`: a block ended (`reason` is "expired" or "manual").
pub fn unblock_line(ip: IpAddr, reason: &str) -> Vec<u8> {
    block_event("unblock", ip, reason, None, None)
}

fn block_event(
    event: &'static str,
    ip: IpAddr,
    reason: &str,
    duration: Option<Duration>,
    enforced_in: Option<&str>,
) -> Vec<u8> {
    let line = BlockLine {
        ts: SystemTime::now(),
        event,
        ip,
        reason,
        duration_secs: duration.map(|d| d.as_secs()),
        enforced_in,
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
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

enum Command {
    Write {
        lines: Vec<u8>,
        done: Option<oneshot::Sender<Result<(), Arc<io::Error>>>>,
    },
    Reopen,
}

/// Handle to the audit log; cheap to clone. Request paths go through a [`WorkerAudit`].
#[derive(Clone)]
pub struct AuditLog {
    sink: Arc<Sink>,
}

enum Sink {
    /// Without fsync, lines are appended with `write(2)` on the O_APPEND file by whoever has them,
    /// without a lock (appends do not interleave).
    Direct(LogFile),
    /// With fsync, one writer thread commits everything queued with one write and one fsync.
    GroupCommit(mpsc::Sender<Command>),
}

impl AuditLog {
    /// Opens (creating it and its directory if needed) the log; in fsync mode, starts the writer
    /// thread.
    pub fn open(path: &Path, fsync: bool) -> io::Result<Self> {
        let file = LogFile::open(path, fsync)?;
        let sink = if fsync {
            let (commands, receiver) = mpsc::channel(QUEUE_CAPACITY);
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || group_commit(file, receiver))?;
            Sink::GroupCommit(commands)
        } else {
            Sink::Direct(file)
        };
        Ok(Self {
            sink: Arc::new(sink),
        })
    }

    /// Appends `lines` and returns once they are written (and synced, in fsync mode).
    pub async fn write(&self, lines: Vec<u8>) -> Result<(), AuditError> {
        let commands = match self.sink.as_ref() {
            Sink::Direct(file) => {
                return file
                    .append(&lines)
                    .map_err(|err| AuditError::Write(Arc::new(err)));
            }
            Sink::GroupCommit(commands) => commands,
        };
        let (done, written) = oneshot::channel();
        commands
            .send(Command::Write {
                lines,
                done: Some(done),
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(AuditError::Write(err)),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Reopens the file at the configured path (after logrotate moved it). Lines written before
    /// go to the old file, lines after to the new one; none is lost.
    pub async fn reopen(&self) {
        match self.sink.as_ref() {
            Sink::Direct(file) => file.reopen(),
            Sink::GroupCommit(commands) => {
                if commands.send(Command::Reopen).await.is_err() {
                    tracing::error!("audit log writer has stopped; cannot reopen");
                }
            }
        }
    }
}

/// One worker thread's way into the audit log.
///
/// Without fsync, the request lines of every request that becomes ready in the same turn of the
/// worker's event loop are written together with one `write(2)` by the worker's flush task
/// ([`WorkerAudit::run`], woken by the first of them and so run after the others); each request
/// still waits for the write of its own lines before it is forwarded. Response lines join the
/// next batch without waiting, or go out with the periodic flush. With fsync, everything goes to
/// the group-commit writer.
pub struct WorkerAudit {
    log: AuditLog,
    batch: Mutex<Batch>,
    wake: Notify,
}

#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    /// Whether the flush task was woken for this batch.
    woken: bool,
    written: Arc<Written>,
}

/// The outcome of one batch's write, for the requests waiting on it.
#[derive(Default)]
struct Written {
    result: OnceLock<Result<(), Arc<io::Error>>>,
    notify: Notify,
}

impl Written {
    async fn wait(&self) -> Result<(), Arc<io::Error>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a result set in between still wakes us.
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result.clone();
            }
            notified.await;
        }
    }
}

impl WorkerAudit {
    pub fn new(log: AuditLog) -> Self {
        Self {
            log,
            batch: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Appends `lines` and returns once they are written (and synced, in fsync mode).
    pub async fn write(&self, lines: Vec<u8>) -> Result<(), AuditError> {
        if matches!(self.log.sink.as_ref(), Sink::GroupCommit(_)) {
            return self.log.write(lines).await;
        }
        let written = {
            let mut batch = lock(&self.batch);
            batch.lines.extend_from_slice(&lines);
            if !batch.woken {
                batch.woken = true;
                self.wake.notify_one();
            }
            Arc::clone(&batch.written)
        };
        written.wait().await.map_err(AuditError::Write)
    }

    /// Appends `lines` without waiting (for lines written after the fact, such as responses): they
    /// ride along with the next batch or go out within [`FLUSH_EVERY`]. A failure is logged: the
    /// request they describe was already audited.
    pub fn write_in_background(&self, lines: Vec<u8>) {
        let commands = match self.log.sink.as_ref() {
            Sink::Direct(_) => {
                let mut batch = lock(&self.batch);
                batch.lines.extend_from_slice(&lines);
                if batch.lines.len() >= PENDING_LIMIT && !batch.woken {
                    batch.woken = true;
                    self.wake.notify_one();
                }
                return;
            }
            Sink::GroupCommit(commands) => commands,
        };
        if let Err(mpsc::error::TrySendError::Full(command)) =
            commands.try_send(Command::Write { lines, done: None })
        {
            let commands = commands.clone();
            tokio::spawn(async move {
                if commands.send(command).await.is_err() {
                    tracing::error!(
                        "audit log writer has stopped; a response line was not written"
                    );
                }
            });
        }
    }

    /// The worker's flush task: writes each batch when woken, and whatever is held at least every
    /// [`FLUSH_EVERY`]. Runs until the worker's runtime stops; call [`WorkerAudit::flush`] then.
    pub async fn run(self: Arc<Self>) {
        if matches!(self.log.sink.as_ref(), Sink::GroupCommit(_)) {
            // The group-commit writer has everything already.
            return;
        }
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            self.flush();
        }
    }

    /// Writes the current batch now and tells its waiting requests how it went.
    pub fn flush(&self) {
        let Sink::Direct(file) = self.log.sink.as_ref() else {
            return;
        };
        let batch = std::mem::take(&mut *lock(&self.batch));
        let result = if batch.lines.is_empty() {
            Ok(())
        } else {
            file.append(&batch.lines).map_err(Arc::new)
        };
        let _ = batch.written.result.set(result);
        batch.written.notify.notify_waiters();
    }
}

/// The open log file, shared by everything that appends to it.
struct LogFile {
    path: PathBuf,
    /// Swapped on reopen; writers take a reference and write without holding the lock.
    file: RwLock<Arc<File>>,
    fsync: bool,
    /// A failed write may have left a partial line; the next write starts on a fresh line.
    ends_mid_line: AtomicBool,
}

impl LogFile {
    fn open(path: &Path, fsync: bool) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: RwLock::new(Arc::new(open_append(path)?)),
            fsync,
            ends_mid_line: AtomicBool::new(false),
        })
    }

    fn current(&self) -> Arc<File> {
        Arc::clone(
            &self
                .file
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Writes whole lines (and syncs them in fsync mode).
    fn append(&self, lines: &[u8]) -> io::Result<()> {
        let file = self.current();
        let mut writer: &File = &file;
        if self.ends_mid_line.swap(false, Ordering::Relaxed) {
            writer
                .write_all(b"\n")
                .inspect_err(|_| self.ends_mid_line.store(true, Ordering::Relaxed))?;
        }
        if let Err(err) = writer.write_all(lines) {
            self.ends_mid_line.store(true, Ordering::Relaxed);
            tracing::error!(path = %self.path.display(), error = %err, "audit log write failed; refusing requests until it works again");
            return Err(err);
        }
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }

    fn reopen(&self) {
        match open_append(&self.path) {
            Ok(file) => {
                *self
                    .file
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(file);
                self.ends_mid_line.store(false, Ordering::Relaxed);
                tracing::info!(path = %self.path.display(), "audit log reopened");
            }
            // Keep writing to the old file: lines land in the rotated file rather than nowhere.
            Err(err) => {
                tracing::error!(path = %self.path.display(), error = %err, "cannot reopen the audit log; still writing to the previous file")
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // The log names callers and addresses: readable by the gateway's user only.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The fsync writer: takes everything queued at once and commits it with one write and one
/// fsync, so concurrent requests share the cost of a sync.
fn group_commit(file: LogFile, mut receiver: mpsc::Receiver<Command>) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut waiting = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        let mut next = Some(first);
        while let Some(command) = next.take().or_else(|| receiver.try_recv().ok()) {
            match command {
                Command::Write { lines, done } => {
                    buffer.extend_from_slice(&lines);
                    waiting.extend(done);
                }
                Command::Reopen => {
                    // Everything queued before the reopen goes to the old file.
                    commit(&file, &mut buffer, &mut waiting);
                    file.reopen();
                }
            }
            if buffer.len() >= 1024 * 1024 {
                break;
            }
        }
        commit(&file, &mut buffer, &mut waiting);
    }
}

fn commit(
    file: &LogFile,
    buffer: &mut Vec<u8>,
    waiting: &mut Vec<oneshot::Sender<Result<(), Arc<io::Error>>>>,
) {
    if buffer.is_empty() && waiting.is_empty() {
        return;
    }
    let result = file.append(buffer).map_err(Arc::new);
    for done in waiting.drain(..) {
        // The request may have gone away meanwhile; nothing to tell then.
        let _ = done.send(result.clone());
    }
    buffer.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ctx() -> RequestContext<'static> {
        RequestContext {
            request_id: "r-1",
            peer: Box::leak(Box::new(Peer::new("192.0.2.1".parse().unwrap()))),
            caller: Some("alice"),
            user_agent: Some("x".repeat(1000)),
            session: Some("s-1".into()),
            http_method: Method::POST,
        }
    }

    fn parse_lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn request_lines_have_the_documented_fields_and_no_values() {
        let body = crate::jsonrpc::inspect(
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
        let body = crate::jsonrpc::inspect(
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

    #[tokio::test]
    async fn writes_survive_reopen_after_rotation() {
        for fsync in [false, true] {
            writes_survive_reopen(fsync).await;
        }
    }

    async fn writes_survive_reopen(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/log.jsonl");
        let log = AuditLog::open(&path, fsync).unwrap();
        log.write(b"{\"n\":1}\n".to_vec()).await.unwrap();
        std::fs::rename(&path, dir.path().join("audit/log.jsonl.1")).unwrap();
        log.write(b"{\"n\":2}\n".to_vec()).await.unwrap();
        log.reopen().await;
        log.write(b"{\"n\":3}\n".to_vec()).await.unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("audit/log.jsonl.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!(rotated, "{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(current, "{\"n\":3}\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_land_whole() {
        for fsync in [false, true] {
            concurrent_writers(fsync).await;
        }
    }

    async fn concurrent_writers(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let log = AuditLog::open(&path, fsync).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(
                    async move { log.write(format!("{{\"n\":{i}}}\n").into_bytes()).await },
                )
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let mut seen: Vec<u64> = parse_lines(&std::fs::read(&path).unwrap())
            .iter()
            .map(|v| v["n"].as_u64().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_worker_writes_what_became_ready_together_and_holds_response_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let worker = Arc::new(WorkerAudit::new(AuditLog::open(&path, false).unwrap()));
        let flusher = tokio::spawn(Arc::clone(&worker).run());
        worker.write_in_background(b"{\"n\":0}\n".to_vec());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "held back");
        let writes: Vec<_> = (1..=50)
            .map(|i| {
                let worker = Arc::clone(&worker);
                tokio::spawn(
                    async move { worker.write(format!("{{\"n\":{i}}}\n").into_bytes()).await },
                )
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let mut seen: Vec<u64> = parse_lines(&std::fs::read(&path).unwrap())
            .iter()
            .map(|v| v["n"].as_u64().unwrap())
            .collect();
        assert_eq!(seen[0], 0, "the held line rode along with the first batch");
        seen.sort();
        assert_eq!(seen, (0..=50).collect::<Vec<_>>());
        // A held line goes out with the periodic flush even when no request follows.
        worker.write_in_background(b"{\"n\":51}\n".to_vec());
        tokio::time::sleep(FLUSH_EVERY * 3).await;
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("{\"n\":51}\n")
        );
        flusher.abort();
    }

    #[tokio::test]
    async fn a_failing_write_is_reported() {
        // /dev/full accepts the open and fails every write with ENOSPC: a full disk.
        for fsync in [false, true] {
            let log = AuditLog::open(Path::new("/dev/full"), fsync).unwrap();
            let err = log.write(b"{}\n".to_vec()).await.unwrap_err();
            assert!(matches!(err, AuditError::Write(_)), "{err}");
            let worker = Arc::new(WorkerAudit::new(log));
            let flusher = tokio::spawn(Arc::clone(&worker).run());
            let err = worker.write(b"{}\n".to_vec()).await.unwrap_err();
            assert!(matches!(err, AuditError::Write(_)), "{err}");
            flusher.abort();
        }
    }
}
