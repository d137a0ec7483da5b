//! Helpers for the end-to-end tests: the real gateway binary as a child process, the official MCP
//! SDK peers (Node.js), and small in-process HTTP upstreams that record what reaches them.
//! Everything listens and connects on 127.0.0.1 only, or inside [`netns::VethPair`]s.

pub mod netns;
pub mod redis;

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{
    BodyExt, Full,
    channel::{Channel, Sender},
    combinators::BoxBody,
};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, body::Incoming, service::service_fn,
};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const ALICE_KEY: &str = "alice-test-key-0123456789abcdef";
pub const BOB_KEY: &str = "bob-test-key-0123456789abcdef";
/// Alice's `Authorization` header value.
pub const ALICE: &str = "Bearer alice-test-key-0123456789abcdef";
/// Bob's `Authorization` header value.
pub const BOB: &str = "Bearer bob-test-key-0123456789abcdef";
/// An MCP tool call, with an argument value that must never reach a log.
pub const CALL: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hidden"}}}"#;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The gateway binary that `cargo xtask test` built for this run (GATEWAY_BIN). Required, so the
/// tests never run against a stale build.
pub fn gateway_bin() -> PathBuf {
    let path = std::env::var_os("GATEWAY_BIN")
        .map(PathBuf::from)
        .expect("GATEWAY_BIN is not set: run the end-to-end tests with `cargo xtask test`");
    assert!(
        path.is_file(),
        "gateway binary {} not found",
        path.display()
    );
    path
}

pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A free loopback port for a child process to listen on (bound, then released for it to take).
///
/// Taken from the ports just below the kernel's ephemeral range: one from that range could be
/// handed to any socket bound to port 0 (the demo's own upstream, another test's listener) between
/// its release here and the child's bind, and the child would fail to start.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const SPAN: u32 = 8192;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if let Some(low) = ephemeral_start.checked_sub(SPAN).filter(|&low| low >= 1024) {
        // Test binaries running one after another start at different places.
        let start = std::process::id().wrapping_mul(2654435761);
        for _ in 0..SPAN {
            let offset = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
            let port = u16::try_from(low + offset).expect("below the ephemeral range");
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

/// Starts `command` with its output in `log` and waits until it listens on `addr`.
pub fn spawn_listening(
    mut command: Command,
    what: &str,
    log: &Path,
    addr: SocketAddr,
) -> KillOnDrop {
    let file = std::fs::File::create(log).expect("log file");
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {what}: {err}"));
    let mut process = KillOnDrop(child);
    wait_for_port(addr, &mut process.0, what, &|| {
        std::fs::read_to_string(log).unwrap_or_default()
    });
    process
}

/// Waits until `child` listens on `addr`; panics with `logs()` if it exits or takes over 20 s.
pub fn wait_for_port(addr: SocketAddr, child: &mut Child, what: &str, logs: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening on {addr}:\n{}",
                logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {addr} within 20 s:\n{}", logs());
}

/// A child process killed when the test ends, passed or failed.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills a process that is not our child (a gateway started by another gateway, in an upgrade)
/// when dropped.
pub struct KillPid(pub i32);

impl Drop for KillPid {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of a pid the test started (indirectly).
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Runs `program` to completion; panics with its stderr if it fails. Returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Extra configuration for a test gateway, as TOML lines.
#[derive(Default)]
pub struct Options<'a> {
    /// Top-level keys (`max_body_bytes = 1024`).
    pub top: &'a str,
    /// Keys of the `[upstream]` table.
    pub upstream: &'a str,
    /// Whole tables appended at the end (`[rate_limit]` ...).
    pub sections: &'a str,
    /// Audit log path instead of one in the test's temporary directory.
    pub audit_path: Option<&'a Path>,
    /// Listen here instead of on a free port of its own (a test that must name the gateway's
    /// URL before it starts, such as the OAuth resource).
    pub addr: Option<SocketAddr>,
    /// No `[[users]]` (alice and bob) in the config: callers come with access tokens only.
    pub without_users: bool,
}

/// The gateway, running as its real binary with a config written for the test.
pub struct Gateway {
    process: KillOnDrop,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub audit_path: PathBuf,
}

impl Gateway {
    /// Starts the gateway in front of `upstream_url` with users alice and bob; `sections` is TOML
    /// appended to the config (such as a `[rate_limit]` table).
    pub fn start(upstream_url: &str, sections: &str) -> Self {
        Self::start_with(
            upstream_url,
            Options {
                sections,
                ..Options::default()
            },
        )
    }

    pub fn start_with(upstream_url: &str, options: Options<'_>) -> Self {
        let Options {
            top,
            upstream,
            sections,
            audit_path,
            addr,
            without_users,
        } = options;
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let audit_path = audit_path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("audit.jsonl"));
        let users = if without_users {
            String::new()
        } else {
            format!(
                "[[users]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n\
                 [[users]]\nname = \"bob\"\nkey_sha256 = \"{}\"\n",
                sha256_hex(ALICE_KEY),
                sha256_hex(BOB_KEY),
            )
        };
        let config = format!(
            "listen = \"{addr}\"\n{top}\n\
             [upstream]\nurl = \"{upstream_url}\"\n{upstream}\n\
             [audit]\npath = \"{}\"\n\
             {users}\
             {sections}\n",
            audit_path.display(),
        );
        // Tests run side by side: no admin listener on the default port unless asked for.
        let config = if sections.contains("[admin]") {
            config
        } else {
            format!("{config}[admin]\nlisten = \"\"\n")
        };
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut command = Command::new(gateway_bin());
        command
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("MCP_API_KEY")
            .env_remove("MCP_USER_KEYS");
        let process = spawn_listening(command, "gateway", &dir.path().join("gateway.log"), addr);
        Gateway {
            process,
            addr,
            dir,
            audit_path,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The configuration file the gateway runs with (rewrite it, then SIGHUP, to reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// What the gateway printed so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Every line of the audit log, parsed (fails on a line that is not JSON).
    pub fn audit_lines(&self) -> Vec<Value> {
        read_audit(&self.audit_path)
    }

    /// The gateway process's resident memory (VmRSS), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.process.0.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }
}

pub fn read_audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("audit line is not JSON ({err}): {line}"))
        })
        .collect()
}

/// Polls `condition` for up to 5 s (for lines written after the response, such as `response`).
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

fn peers_dir() -> PathBuf {
    let dir = workspace_root().join("tests/peers");
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "MCP SDK peers not installed in {}: run `cargo xtask setup`",
        dir.display()
    );
    dir
}

/// A peer server process on a loopback port, its output logged in a temporary directory of its
/// own (`server.log`), killed when dropped.
struct Peer {
    _process: KillOnDrop,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Peer {
    /// Starts the command `command(port, dir)` builds and waits until it listens on the port.
    fn start(what: &str, command: impl FnOnce(u16, &Path) -> Command) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let command = command(port, dir.path());
        let process = spawn_listening(command, what, &dir.path().join("server.log"), addr);
        Peer {
            _process: process,
            addr,
            dir,
        }
    }

    fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

/// `node <script>` in `tests/peers`, told its port in `PORT`.
fn node_peer(script: &str, port: u16) -> Command {
    let peers = peers_dir();
    let mut command = Command::new("node");
    command
        .arg(peers.join(script))
        .env("PORT", port.to_string())
        .current_dir(&peers);
    command
}

/// `@modelcontextprotocol/server-everything` over streamable HTTP on a loopback port.
pub struct EverythingServer {
    peer: Peer,
}

impl EverythingServer {
    /// Over streamable HTTP, at `/mcp`.
    pub fn start() -> Self {
        Self::start_transport("streamableHttp")
    }

    /// Over the legacy HTTP+SSE transport: `GET /sse`, messages to `/message?sessionId=..`.
    pub fn start_legacy() -> Self {
        Self::start_transport("sse")
    }

    fn start_transport(transport: &str) -> Self {
        let peer = Peer::start("server-everything (needs Node.js)", |port, _| {
            let script = "node_modules/@modelcontextprotocol/server-everything/dist/index.js";
            let mut command = node_peer(script, port);
            command.arg(transport);
            command
        });
        EverythingServer { peer }
    }

    pub fn url(&self) -> String {
        self.peer.mcp_url()
    }
}

/// `tests/peers/grants_server.mjs`: an MCP server of the official SDK with twelve annotated tools
/// listed five per page, prompts, resources and templates, which records every call it gets.
pub struct GrantsServer {
    peer: Peer,
    record: PathBuf,
}

impl GrantsServer {
    /// Answers with SSE streams, or with JSON when `json` is set.
    pub fn start(json: bool) -> Self {
        let peer = Peer::start("grants_server.mjs (needs Node.js)", |port, dir| {
            let mut command = node_peer("grants_server.mjs", port);
            command
                .env("RECORD", dir.join("record.jsonl"))
                .env("HEADERS", dir.join("headers.jsonl"))
                .env("JSON_RESPONSE", if json { "1" } else { "0" });
            command
        });
        GrantsServer {
            record: peer.dir.path().join("record.jsonl"),
            peer,
        }
    }

    pub fn url(&self) -> String {
        self.peer.mcp_url()
    }

    /// Every call, prompt get and resource read that reached the server, in order.
    pub fn received(&self) -> Vec<Value> {
        read_audit(&self.record)
    }

    /// The headers of every request that reached the server, in order.
    pub fn headers(&self) -> Vec<Value> {
        read_audit(&self.peer.dir.path().join("headers.jsonl"))
    }
}

/// `tests/peers/tasks_server.mjs`: a stateless MCP server of the official SDK (v1) whose `delay`
/// tool runs as a 2025-11-25 task, with one task store for every request.
pub struct TasksServer {
    peer: Peer,
}

impl TasksServer {
    /// Answers with SSE streams, or with JSON when `json` is set.
    pub fn start(json: bool) -> Self {
        let peer = Peer::start("tasks_server.mjs (needs Node.js)", |port, _| {
            let mut command = node_peer("tasks_server.mjs", port);
            command.env("JSON_RESPONSE", if json { "1" } else { "0" });
            command
        });
        TasksServer { peer }
    }

    pub fn url(&self) -> String {
        self.peer.mcp_url()
    }
}

/// The one JSON-RPC message of an answer, sent as JSON or as an SSE stream.
pub fn message_of(answer: &Answer) -> Value {
    let text = answer.text();
    let json = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .next_back()
        .unwrap_or(&text);
    serde_json::from_str(json.trim()).unwrap_or_else(|err| panic!("{err}: {text}"))
}

/// A 2025-11-25 request of `caller` (stateless: the tasks server keeps no sessions).
pub async fn task_request(gateway: &Gateway, caller: &str, method: &str, params: Value) -> Answer {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let headers = [
        ("authorization", caller),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    post(gateway, &headers, &body.to_string()).await
}

/// Starts a task of the `delay` tool of a [`TasksServer`]; its id.
pub async fn start_task(gateway: &Gateway, caller: &str, ms: u64) -> String {
    let params = json!({"name": "delay", "arguments": {"ms": ms}, "task": {"ttl": 60000}});
    let answer = task_request(gateway, caller, "tools/call", params).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let message = message_of(&answer);
    message["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("no task started: {message}"))
        .to_owned()
}

/// Runs the SDK client script (`tests/peers/client.mjs`) and returns what it reported.
pub fn sdk_client(
    url: &str,
    key: Option<&str>,
    scenario: &str,
    count: u32,
    env: &[(&str, &str)],
) -> Value {
    let mut command = Command::new("node");
    command
        .arg(peers_dir().join("client.mjs"))
        .args([url, key.unwrap_or(""), scenario, &count.to_string()])
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(report).unwrap_or_else(|err| {
        panic!(
            "SDK client printed no report ({err}):\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A request as it reached an in-process upstream.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type TestBody = BoxBody<Bytes, Infallible>;
type Handler = dyn Fn(&Recorded) -> Response<TestBody> + Send + Sync;

/// An HTTP upstream inside the test process: records every request and answers with `handler`.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl RecordingUpstream {
    pub async fn start(
        handler: impl Fn(&Recorded) -> Response<TestBody> + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let recorded = Arc::clone(&recorded);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let request = Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            };
                            let response = handler(&request);
                            recorded.lock().expect("lock").push(request);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingUpstream { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }

    pub fn last(&self) -> Recorded {
        self.requests
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

/// An upstream whose one answer is an event stream that the test writes into.
pub async fn streaming_upstream() -> (Sender<Bytes, Infallible>, RecordingUpstream) {
    let (events, stream) = Channel::<Bytes, Infallible>::new(1);
    let stream = Arc::new(Mutex::new(Some(stream)));
    let upstream = RecordingUpstream::start(move |_| {
        let stream = stream.lock().unwrap().take().expect("one stream");
        let mut response = Response::new(stream.boxed());
        response
            .headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        response
    })
    .await;
    (events, upstream)
}

/// An upstream handler answering every request with an empty tool result.
pub fn ok_upstream() -> impl Fn(&Recorded) -> Response<TestBody> + Send + Sync + 'static {
    |_| {
        json_reply(
            StatusCode::OK,
            r#"{"jsonrpc":"2.0","id":42,"result":{"content":[]}}"#,
        )
    }
}

/// POSTs `body` to the gateway's MCP endpoint as an MCP client would, with `headers` added.
pub async fn post(gateway: &Gateway, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut all = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    all.extend_from_slice(headers);
    send(Method::POST, &gateway.url(), &all, body.to_owned()).await
}

/// A JSON answer for a [`RecordingUpstream`] handler.
pub fn json_reply(status: StatusCode, body: &str) -> Response<TestBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

/// A whole response as a client saw it.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "answer is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one request with an HTTP/1.1 client and reads the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    let response = client.request(request).await.expect("send request");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends a raw HTTP/1.1 request from the local address `from` over a new connection and returns
/// the raw answer; an error if the connection is refused, reset or closed without an answer.
pub async fn raw_request(
    from: std::net::IpAddr,
    to: SocketAddr,
    request: &str,
) -> std::io::Result<String> {
    let stream = connect_from(from, to).await?;
    exchange(stream, request).await
}

/// A TCP connection from the local address `from` (any address of 127.0.0.0/8 works on loopback).
pub async fn connect_from(
    from: std::net::IpAddr,
    to: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(Duration::from_secs(3), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Writes `request` on a connection that stays open and reads what comes within 3 s.
pub async fn exchange_keepalive(stream: &mut tokio::net::TcpStream, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buffer = vec![0u8; 8192];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

/// Whether the server closed `stream` (or reset it) within 3 s.
pub async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(stream, &mut byte),
    )
    .await;
    matches!(read, Ok(Ok(0)) | Ok(Err(_)))
}

/// Writes `request` and reads until the server closes or a whole response arrived.
pub async fn exchange(mut stream: tokio::net::TcpStream, request: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
        if complete_response(&answer) {
            break;
        }
    }
    if answer.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn complete_response(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok());
    length.is_some_and(|length| body.len() >= length)
}

/// A keep-alive MCP POST as raw HTTP/1.1.
pub fn raw_post(host: SocketAddr, authorization: &str, body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `tests/peers/modern_server.mjs`: an MCP server of the official TypeScript SDK v2 serving both
/// eras on one endpoint; its `slow` tool prints `CANCELLED <tag> <unix ms>` when its request is
/// cancelled.
pub struct ModernServer {
    peer: Peer,
}

impl ModernServer {
    pub fn start() -> Self {
        let peer = Peer::start("modern_server.mjs (needs Node.js)", |port, _| {
            node_peer("modern_server.mjs", port)
        });
        ModernServer { peer }
    }

    pub fn url(&self) -> String {
        self.peer.mcp_url()
    }

    /// When the server saw the `slow` call tagged `tag` cancelled (unix milliseconds).
    pub fn cancelled_at(&self, tag: &str) -> Option<u128> {
        let log = std::fs::read_to_string(self.peer.dir.path().join("server.log"));
        log.unwrap_or_default().lines().find_map(|line| {
            let rest = line.strip_prefix("CANCELLED ")?;
            let (seen, at) = rest.split_once(' ')?;
            (seen == tag).then(|| at.trim().parse().ok()).flatten()
        })
    }
}

/// Runs a peer script that prints one JSON report line last; panics with its output otherwise.
fn report_of(mut command: Command, what: &str) -> Value {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(report).unwrap_or_else(|err| {
        panic!(
            "{what} printed no report ({err}):\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The official Python SDK's client (`mcp` 2.x, `tests/peers/py_client.py`) in `mode` ("auto" or
/// "legacy") against `url`.
pub fn python_client(url: &str, key: &str, mode: &str) -> Value {
    python_client_calling(url, key, mode, "confirm")
}

/// [`python_client`], calling `last` after `echo` (`confirm` or `poll`).
pub fn python_client_calling(url: &str, key: &str, mode: &str, last: &str) -> Value {
    let mut command = Command::new(python_peers());
    command
        .arg(peers_dir().join("py_client.py"))
        .args([url, key, mode, last]);
    report_of(command, "the Python SDK client")
}

/// The Python of the venv that holds the Python SDK (`cargo xtask setup` makes it).
fn python_peers() -> PathBuf {
    let python = workspace_root().join("target/tools/python-peers/bin/python");
    assert!(
        python.is_file(),
        "the Python MCP SDK is not installed in {}: run `cargo xtask setup`",
        python.display()
    );
    python
}

/// `tests/peers/py_server.py`: the official Python SDK's server (`mcp` 2.x), both eras, with an
/// event store; its `poll` tool closes its stream for the client to resume.
pub struct PythonServer {
    peer: Peer,
}

impl PythonServer {
    pub fn start() -> Self {
        let peer = Peer::start("py_server.py", |port, _| {
            let mut command = Command::new(python_peers());
            command
                .arg(peers_dir().join("py_server.py"))
                .arg(port.to_string());
            command
        });
        PythonServer { peer }
    }

    pub fn url(&self) -> String {
        self.peer.mcp_url()
    }
}

/// Opens a handshake-era session as `caller` (initialize, then the initialized notification);
/// its `Mcp-Session-Id`.
pub async fn open_session(gateway: &Gateway, caller: &str) -> String {
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "e2e", "version": "1"}}});
    let answer = post(
        gateway,
        &[("authorization", caller)],
        &initialize.to_string(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let session = answer.headers["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_owned();
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let headers = [
        ("authorization", caller),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    assert_eq!(
        post(gateway, &headers, initialized).await.status,
        StatusCode::ACCEPTED
    );
    session
}

/// The id of the last event of an SSE stream.
pub fn last_event_id(stream: &str) -> String {
    let mut ids = stream.lines().filter_map(|line| line.strip_prefix("id:"));
    ids.next_back()
        .unwrap_or_else(|| panic!("no event id in {stream}"))
        .trim()
        .to_owned()
}

/// GETs `url` and reads the stream until it holds `what` (at most 10 s): what it read.
pub async fn stream_until(url: &str, headers: &[(&str, &str)], what: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::get(url).header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::default()).expect("request"))
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    let mut body = response.into_body();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(what) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {what} on the stream; got {seen}"))
            .unwrap_or_else(|| panic!("the stream ended before {what}; got {seen}"))
            .expect("stream failed");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    seen
}

/// The official TypeScript SDK v2 client (`tests/peers/client_v2.mjs`) in `mode` ("legacy" or
/// "auto") against `url`.
pub fn v2_client(url: &str, key: &str, mode: &str) -> Value {
    let mut command = Command::new("node");
    command
        .arg(peers_dir().join("client_v2.mjs"))
        .args([url, key, mode]);
    report_of(command, "the TypeScript SDK v2 client")
}

/// The MCP Inspector's CLI mode: `args` after the URL; returns its JSON output.
pub fn inspector_cli(url: &str, key: &str, args: &[&str]) -> Value {
    let output = Command::new(peers_dir().join("node_modules/.bin/mcp-inspector"))
        .args(["--cli", url, "--transport", "http"])
        .args(args)
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .stdin(Stdio::null())
        .output()
        .expect("run the MCP Inspector");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "the Inspector printed no JSON ({err}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `tests/peers/auth_server.mjs`: a real authorization server (`oidc-provider`) on a loopback
/// port, issuing ES256 JWT access tokens (or opaque ones) for `resource`.
pub struct AuthServer {
    _process: KillOnDrop,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    /// Starts it on `port` with a new signing key named `kid`; `env` adds `OPAQUE`, `TTL`,
    /// `TOKEN_GROUPS` (see the script).
    pub fn start(port: u16, resource: &str, kid: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = node_peer("auth_server.mjs", port);
        command.env("RESOURCE", resource).env("KID", kid);
        for (name, value) in env {
            command.env(name, value);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let process = spawn_listening(
            command,
            "auth_server.mjs (needs Node.js and oidc-provider)",
            &dir.path().join("server.log"),
            addr,
        );
        AuthServer {
            _process: process,
            port,
            _dir: dir,
        }
    }

    /// The issuer identifier, as its tokens' `iss` has it.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An access token for the service client `client` (secret "test-secret") by the client
    /// credentials grant, for `resource` with `scope`.
    pub async fn client_token(&self, client: &str, resource: &str, scope: &str) -> String {
        let form = format!(
            "grant_type=client_credentials&resource={}&scope={}",
            form_encode(resource),
            form_encode(scope)
        );
        let basic = basic_auth(client, "test-secret");
        let answer = send(
            Method::POST,
            &format!("{}/token", self.issuer()),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic),
            ],
            form,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        answer.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }
}

/// `application/x-www-form-urlencoded` of one value.
pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
