//! The gateway binary attacked the way a client holding a key (or not) would: request smuggling
//! and header garbage, HTTP/2 abuse, session-id flooding, giant batches, hostile names in the
//! audit log, connection floods, slow calls hogging the upstream, a full audit disk. For each, the
//! gateway stays up, answers precisely, keeps its cost bounded, and lets nothing reach the
//! upstream unauthenticated or unaudited. Traffic goes to loopback addresses only.

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use e2e_tests::{
    ALICE, ALICE_KEY, BOB_KEY, CALL, Gateway, Options, RecordingUpstream, TestBody, connect_from,
    eventually, json_reply, ok_upstream, post, raw_post, raw_request, send,
};
use http_body_util::{
    BodyExt, Full,
    channel::{Channel, Sender},
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The status code of a raw HTTP/1.1 answer, or `None` when the connection closed without one.
fn status_of(answer: &std::io::Result<String>) -> Option<u16> {
    let answer = answer.as_ref().ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// The gateway still answers an ordinary call.
async fn assert_serving(gateway: &Gateway) {
    let answer = post(gateway, &[("authorization", ALICE)], CALL).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", gateway.logs());
}

// ---- HTTP/1.1 ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_and_header_garbage_get_400_and_never_reach_the_upstream() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(&upstream.url(), "");
    let host = gateway.addr;
    let head = |extra: &str| {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: {ALICE}\r\n\
             Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{extra}"
        )
    };
    let n = CALL.len();
    let cases = [
        (
            "two different Content-Lengths",
            format!(
                "{}Content-Length: {n}\r\nContent-Length: 5\r\n\r\n{CALL}",
                head("")
            ),
        ),
        (
            "a Transfer-Encoding that is not chunked last",
            format!(
                "{}Transfer-Encoding: chunked, identity\r\n\r\n{CALL}",
                head("")
            ),
        ),
        (
            "whitespace before the colon",
            format!(
                "{}Transfer-Encoding : chunked\r\nContent-Length: {n}\r\n\r\n{CALL}",
                head("")
            ),
        ),
        (
            "a folded header line",
            format!(
                "{}X-Folded: a\r\n b\r\nContent-Length: {n}\r\n\r\n{CALL}",
                head("")
            ),
        ),
        (
            "a bad chunk size",
            format!(
                "{}Transfer-Encoding: chunked\r\n\r\nzz\r\n{CALL}\r\n0\r\n\r\n",
                head("")
            ),
        ),
        (
            "a NUL in a header value",
            format!(
                "{}X-Nul: a\0b\r\nContent-Length: {n}\r\n\r\n{CALL}",
                head("")
            ),
        ),
        (
            "a request line with garbage",
            format!("POST /mcp HTTP/1.1 extra\r\nHost: {host}\r\n\r\n"),
        ),
        (
            "not HTTP at all",
            "\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}\r\n\r\n".to_owned(),
        ),
    ];
    // (A bare LF ending a header line is accepted, as HTTP/1.1 lets a recipient: the upstream gets
    // the head rebuilt by the gateway, so it cannot read it differently.)
    for (what, request) in &cases {
        let answer = raw_request(LOCALHOST, host, request).await;
        let status = status_of(&answer);
        assert!(matches!(status, Some(400) | None), "{what}: {answer:?}");
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");

    // Both lengths: HTTP/1.1 has Transfer-Encoding win and the connection close after the answer;
    // the upstream gets the one request, re-framed, with the whole body.
    let both = format!(
        "{}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{CALL}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        head(""),
        n
    );
    let answer = raw_request(LOCALHOST, host, &both).await;
    match status_of(&answer) {
        Some(400) | None => assert_eq!(upstream.count(), 0),
        Some(200) => {
            let answer = answer.as_ref().expect("answer");
            assert!(answer.contains("connection: close"), "{answer}");
            assert_eq!(
                answer.matches("HTTP/1.1").count(),
                1,
                "no second answer: {answer}"
            );
            assert_eq!(upstream.count(), 1);
            assert_eq!(upstream.last().body, CALL.as_bytes());
        }
        other => panic!("both lengths: {other:?} {answer:?}"),
    }
    let before = upstream.count();

    // A second request hidden in a body stays body: the upstream sees one request.
    let hidden = format!("{CALL}GET /admin HTTP/1.1\r\nHost: upstream\r\n\r\n");
    let answer = raw_request(LOCALHOST, host, &raw_post(host, ALICE, &hidden)).await;
    assert_eq!(status_of(&answer), Some(400), "{answer:?}");
    assert_eq!(upstream.count(), before);
    assert_serving(&gateway).await;
    assert_eq!(upstream.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431_and_count_against_the_source_and_a_long_uri_414() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[limits]\nmax_headers = 30\nmax_uri_bytes = 2048\n[blocking]\nmalformed = 2",
    );
    let host = gateway.addr;
    let sender: IpAddr = "127.0.0.12".parse().expect("addr");
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_request(
        sender,
        host,
        &format!("GET /mcp HTTP/1.1\r\nHost: {host}\r\n{many}\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), Some(431), "{answer:?}");
    let large = format!("X-Large: {}\r\n", "a".repeat(20_000));
    let answer = raw_request(
        sender,
        host,
        &format!("GET /mcp HTTP/1.1\r\nHost: {host}\r\n{large}\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), Some(431), "{answer:?}");
    // Heads hyper refused never became requests to audit, but they count: two block the sender.
    eventually("the sender of two bad heads is blocked", || {
        gateway.audit_lines().iter().any(|line| {
            line["event"] == "block" && line["ip"] == "127.0.0.12" && line["reason"] == "malformed"
        })
    });

    let long = format!("{}?q={}", gateway.url(), "a".repeat(3000));
    let answer = send(
        Method::POST,
        &long,
        &[
            ("authorization", ALICE),
            ("content-type", "application/json"),
        ],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::URI_TOO_LONG);
    assert_eq!(
        answer.json()["id"],
        Value::Null,
        "refused before the body was read"
    );
    assert_eq!(upstream.count(), 0);
    let lines: Vec<Value> = gateway
        .audit_lines()
        .into_iter()
        .filter(|line| line["event"] == "request")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "too_large");
    assert_serving(&gateway).await;
}

// ---- HTTP/2 -----------------------------------------------------------------------------------

/// Hand-made HTTP/2 frames, for what a well-behaved client library would never send.
mod h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len() as u32;
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&length.to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// A header block of literal fields without indexing or Huffman coding (names and values
    /// under 127 bytes).
    pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        block
    }

    pub fn request_headers(authority: &str, authorization: &str) -> Vec<u8> {
        header_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/mcp"),
            (":authority", authority),
            ("authorization", authorization),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ])
    }
}

/// Opens an h2c connection with prior knowledge: the client's preface and SETTINGS, then the
/// acknowledgement of the server's SETTINGS (which puts its limits in force).
async fn h2_connection(gateway: &Gateway) -> tokio::net::TcpStream {
    let mut stream = connect_from(LOCALHOST, gateway.addr)
        .await
        .expect("connect");
    stream.write_all(h2::PREFACE).await.expect("preface");
    stream
        .write_all(&h2::frame(h2::SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
        .await
        .expect("the server's SETTINGS")
        .expect("read");
    assert_eq!(
        head[3],
        h2::SETTINGS,
        "the server speaks first with SETTINGS"
    );
    let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
    stream
        .read_exact(&mut payload)
        .await
        .expect("settings payload");
    stream
        .write_all(&h2::frame(h2::SETTINGS, h2::ACK, 0, &[]))
        .await
        .expect("settings ack");
    stream
}

/// Reads frames until the server sends GOAWAY or closes; returns the GOAWAY's error code, if any.
async fn until_goaway_or_close(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> Option<u32> {
    let deadline = Instant::now() + within;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while buffer.len() >= 9 {
            let length = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
            if buffer.len() < 9 + length {
                break;
            }
            if buffer[3] == h2::GOAWAY && length >= 8 {
                let code = &buffer[9 + 4..9 + 8];
                return Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
            }
            buffer.drain(..9 + length);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
            Err(_) => panic!("the server neither sent GOAWAY nor closed within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_continuation_and_settings_floods_end_the_connection_only() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(&upstream.url(), "");
    let authority = gateway.addr.to_string();

    let memory_before = gateway.resident_bytes();
    // Rapid reset: streams opened and cancelled at once, thousands of them.
    let mut stream = h2_connection(&gateway).await;
    let headers = h2::request_headers(&authority, ALICE);
    let mut burst = Vec::new();
    for i in 0..2_000u32 {
        let id = 2 * i + 1;
        burst.extend(h2::frame(h2::HEADERS, h2::END_HEADERS, id, &headers));
        burst.extend(h2::frame(h2::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = stream.write_all(&burst).await;
    let code = until_goaway_or_close(&mut stream, Duration::from_secs(10)).await;
    assert!(
        matches!(code, Some(0xb) | None),
        "ENHANCE_YOUR_CALM or a close, got {code:?}"
    );

    // CONTINUATION flood: a header block that never ends, far past max_header_bytes.
    let mut stream = h2_connection(&gateway).await;
    let _ = stream
        .write_all(&h2::frame(h2::HEADERS, 0, 1, &headers))
        .await;
    let filler = h2::header_block(&[("x-filler", &"f".repeat(100))]);
    let mut flood = Vec::new();
    for _ in 0..2_000 {
        flood.extend(h2::frame(h2::CONTINUATION, 0, 1, &filler));
    }
    let _ = stream.write_all(&flood).await;
    let _ = until_goaway_or_close(&mut stream, Duration::from_secs(10)).await;

    // SETTINGS flood: tens of thousands of frames that each want an acknowledgement.
    let mut stream = h2_connection(&gateway).await;
    let settings = h2::frame(h2::SETTINGS, 0, 0, &[0, 0x3, 0, 0, 0, 100]);
    let flood: Vec<u8> = settings
        .iter()
        .copied()
        .cycle()
        .take(settings.len() * 50_000)
        .collect();
    let writer = tokio::spawn(async move {
        let _ = stream.write_all(&flood).await;
        stream
    });
    let stream = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the gateway reads or drops the flood")
        .expect("writer");
    drop(stream);

    assert_eq!(upstream.count(), 0, "no flood reached the upstream");
    assert_serving(&gateway).await;
    let grown = gateway.resident_bytes().saturating_sub(memory_before);
    assert!(
        grown < 64 << 20,
        "the floods grew the gateway by {grown} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_max_streams_per_connection_are_refused() {
    let (_senders, upstream) = endless_upstream().await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[limits]\nmax_streams_per_connection = 4\nmax_in_flight_per_caller = 100",
    );
    let mut stream = h2_connection(&gateway).await;
    let headers = h2::request_headers(&gateway.addr.to_string(), ALICE);
    let mut frames = Vec::new();
    for i in 0..6u32 {
        let id = 2 * i + 1;
        frames.extend(h2::frame(h2::HEADERS, h2::END_HEADERS, id, &headers));
        frames.extend(h2::frame(h2::DATA, h2::END_STREAM, id, CALL.as_bytes()));
    }
    stream.write_all(&frames).await.expect("write");
    // Streams 9 and 11 are beyond the 4 the gateway advertised: each is reset REFUSED_STREAM.
    let mut refused = Vec::new();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.len() < 2 && Instant::now() < deadline {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("frames")
            .expect("read");
        assert!(read > 0, "closed");
        buffer.extend_from_slice(&chunk[..read]);
        while buffer.len() >= 9 {
            let length = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
            if buffer.len() < 9 + length {
                break;
            }
            let id = u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) & 0x7fff_ffff;
            if buffer[3] == h2::RST_STREAM && !refused.iter().any(|(seen, _)| *seen == id) {
                let code = u32::from_be_bytes([buffer[9], buffer[10], buffer[11], buffer[12]]);
                refused.push((id, code));
            }
            buffer.drain(..9 + length);
        }
    }
    assert_eq!(
        refused,
        [(9, 0x7), (11, 0x7)],
        "REFUSED_STREAM for the 5th and 6th"
    );
    eventually("the 4 accepted streams reached the upstream", || {
        upstream.count() == 4
    });
}

// ---- sessions, batches, names -----------------------------------------------------------------

/// Requests per second of `requests` (each a POST of CALL with `session` made by `session_of`),
/// 8 at a time, for `duration`.
async fn throughput(
    gateway: &Gateway,
    duration: Duration,
    session_of: impl Fn(usize) -> String + Send + Sync + 'static,
) -> f64 {
    let session_of = Arc::new(session_of);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = gateway.url();
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (client, url, session_of) = (client.clone(), url.clone(), Arc::clone(&session_of));
            tokio::spawn(async move {
                let mut done = 0usize;
                while started.elapsed() < duration {
                    let request = Request::post(&url)
                        .header("authorization", ALICE)
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .header("mcp-session-id", session_of(task * 1_000_000 + done))
                        .body(Full::new(Bytes::from_static(CALL.as_bytes())))
                        .expect("request");
                    let response = client.request(request).await.expect("answer");
                    let _ = response.into_body().collect().await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// An upstream that issues session `s-1` on every answer.
fn issuing_upstream() -> impl Fn(&e2e_tests::Recorded) -> Response<TestBody> + Send + Sync + 'static
{
    |_| {
        let mut response = json_reply(
            StatusCode::OK,
            r#"{"jsonrpc":"2.0","id":42,"result":{"content":[]}}"#,
        );
        response
            .headers_mut()
            .insert("mcp-session-id", "s-1".parse().expect("header"));
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_session_ids_on_every_request_cost_the_key_no_throughput() {
    let upstream = RecordingUpstream::start(issuing_upstream()).await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[rate_limit]\nrequests = 100000000\nwindow_secs = 1",
    );
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let answer = post(&gateway, &[("authorization", ALICE)], init).await;
    assert_eq!(answer.headers["mcp-session-id"], "s-1");

    // 3 s each by default; FLOOD_SECS=12 gives the figure the closing notes report.
    let period = Duration::from_secs(
        std::env::var("FLOOD_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(3),
    );
    let fixed = throughput(&gateway, period, |_| "s-1".to_owned()).await;
    let forwarded = upstream.count();
    let fresh = throughput(&gateway, period, |n| format!("made-up-{n}")).await;
    let ratio = fresh / fixed;
    eprintln!("fixed id: {fixed:.0} req/s; a fresh id each: {fresh:.0} req/s; ratio {ratio:.2}");
    assert!(
        ratio >= 0.5,
        "fresh ids cost the key throughput: {ratio:.2}"
    );
    assert_eq!(
        upstream.count(),
        forwarded,
        "no made-up session was forwarded"
    );
    // The real session still works.
    let answer = post(
        &gateway,
        &[("authorization", ALICE), ("mcp-session-id", "s-1")],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_opening_sessions_in_a_loop_only_ends_its_own_oldest() {
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&issued);
    // A new session for each initialize, as MCP servers do.
    let upstream = RecordingUpstream::start(move |request| {
        let mut response = json_reply(StatusCode::OK, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        if String::from_utf8_lossy(&request.body).contains("initialize") {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            response
                .headers_mut()
                .insert("mcp-session-id", format!("s-{n}").parse().expect("header"));
        }
        response
    })
    .await;
    let gateway = Gateway::start(&upstream.url(), "[limits]\nmax_sessions_per_caller = 4");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let bob = format!("Bearer {BOB_KEY}");
    let answer = post(&gateway, &[("authorization", &bob)], init).await;
    let bobs = answer.headers["mcp-session-id"]
        .to_str()
        .expect("id")
        .to_owned();
    let mut alices = Vec::new();
    for _ in 0..50 {
        let answer = post(&gateway, &[("authorization", ALICE)], init).await;
        alices.push(
            answer.headers["mcp-session-id"]
                .to_str()
                .expect("id")
                .to_owned(),
        );
    }
    let with = |key: &str, session: &str| {
        let (key, session) = (key.to_owned(), session.to_owned());
        let gateway = &gateway;
        async move {
            post(
                gateway,
                &[("authorization", &key), ("mcp-session-id", &session)],
                CALL,
            )
            .await
            .status
        }
    };
    assert_eq!(
        with(&bob, &bobs).await,
        StatusCode::OK,
        "bob's session survives"
    );
    assert_eq!(with(ALICE, &alices[49]).await, StatusCode::OK);
    assert_eq!(with(ALICE, &alices[46]).await, StatusCode::OK);
    assert_eq!(
        with(ALICE, &alices[45]).await,
        StatusCode::NOT_FOUND,
        "alice's fifth newest ended with her quota of 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_giant_batch_writes_one_audit_line() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[rate_limit]\nrequests = 5\nwindow_secs = 60",
    );
    let batch = |count: usize| {
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        format!("[{}]", vec![ping; count].join(","))
    };
    let answer = post(&gateway, &[("authorization", ALICE)], &batch(20_000)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"]["code"], -32600);
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_batch_messages (100)")),
        "{}",
        answer.json()
    );
    let answer = post(&gateway, &[("authorization", ALICE)], &batch(101)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        gateway.audit_lines().len(),
        2,
        "one line per refused request"
    );

    // Within max_batch_messages but over the caller's limit of 5: 429, one line counting 50.
    let answer = post(&gateway, &[("authorization", ALICE)], &batch(50)).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    let lines = gateway.audit_lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2]["messages"], 50);
    assert_eq!(lines[2]["decision"], "rate_limited");
    assert_eq!(upstream.count(), 0);

    // A forwarded batch still gets a line per message.
    let answer = post(&gateway, &[("authorization", ALICE)], &batch(5)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let forwarded = gateway
        .audit_lines()
        .iter()
        .filter(|line| line["decision"] == "forwarded")
        .count();
    assert_eq!(forwarded, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tool_names_and_argument_keys_stay_inside_their_audit_fields() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(&upstream.url(), "");
    let injected = "x\",\"decision\":\"forwarded\",\"caller\":\"root\"}\n{\"event\":\"request";
    let long = "t".repeat(100_000);
    let keys: Vec<String> = (0..5_000)
        .map(|i| {
            format!(
                "{}: {i}",
                serde_json::to_string(&format!("{injected}{i}")).expect("key")
            )
        })
        .collect();
    for name in [
        injected,
        "\u{0}\u{7}\u{1b}[31m\r\n",
        "名前\u{202e}evil",
        &long,
    ] {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": {}}
        })
        .to_string();
        let body = body.replace(
            "\"arguments\":{}",
            &format!("\"arguments\":{{{}}}", keys.join(",")),
        );
        let answer = post(&gateway, &[("authorization", ALICE)], &body).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let raw = std::fs::read_to_string(&gateway.audit_path).expect("audit");
    let lines: Vec<Value> = raw
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is one JSON object"))
        .collect();
    let requests: Vec<&Value> = lines.iter().filter(|l| l["event"] == "request").collect();
    assert_eq!(requests.len(), 4, "one line per call, none injected");
    for line in &requests {
        assert_eq!(line["caller"], "alice");
        assert!(line["tool"].as_str().is_some_and(|tool| tool.len() <= 260));
        assert_eq!(line["arg_keys"].as_array().map(Vec::len), Some(64));
    }
    assert_eq!(requests[0]["tool"], injected);
}

// ---- connections, slow calls, the audit disk --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_from_one_source_are_refused_and_the_source_is_blocked() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[limits]\nmax_connections_per_source = 8\n[blocking]\nrefused_connections = 5",
    );
    let flooder: IpAddr = "127.0.0.9".parse().expect("addr");
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = connect_from(flooder, gateway.addr).await.expect("connect");
        // An answer on it proves the gateway accepted it (two workers accept in parallel).
        stream
            .write_all(raw_post(gateway.addr, ALICE, CALL).as_bytes())
            .await
            .expect("write");
        let mut answer = [0u8; 1024];
        let read = stream.read(&mut answer).await.expect("answer");
        assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    // Each further connection is accepted by the kernel and closed by the gateway at once.
    for _ in 0..5 {
        let answer = raw_request(flooder, gateway.addr, &raw_post(gateway.addr, ALICE, CALL)).await;
        assert!(answer.is_err(), "refused: {answer:?}");
    }
    eventually("the source is blocked", || {
        gateway.audit_lines().iter().any(|l| {
            l["event"] == "block" && l["ip"] == "127.0.0.9" && l["reason"] == "connection_flood"
        })
    });
    let other: IpAddr = "127.0.0.10".parse().expect("addr");
    let answer = raw_request(other, gateway.addr, &raw_post(gateway.addr, ALICE, CALL)).await;
    assert_eq!(status_of(&answer), Some(200), "{answer:?}");
    drop(held);
}

/// An upstream whose answers never end: each request's body sender is kept.
async fn endless_upstream() -> (
    Arc<Mutex<Vec<Sender<Bytes, Infallible>>>>,
    RecordingUpstream,
) {
    let senders: Arc<Mutex<Vec<Sender<Bytes, Infallible>>>> = Arc::default();
    let kept = Arc::clone(&senders);
    let upstream = RecordingUpstream::start(move |_| {
        let (sender, body) = Channel::<Bytes, Infallible>::new(1);
        kept.lock().expect("lock").push(sender);
        let mut response = Response::new(body.boxed());
        response
            .headers_mut()
            .insert("content-type", "text/event-stream".parse().expect("header"));
        response
    })
    .await;
    (senders, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_slow_calls_past_its_in_flight_limit_gets_429_and_others_are_served() {
    let (senders, upstream) = endless_upstream().await;
    let gateway = Gateway::start(&upstream.url(), "[limits]\nmax_in_flight_per_caller = 4");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let call = |key: &str| {
        Request::post(gateway.url())
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(Bytes::from_static(CALL.as_bytes())))
            .expect("request")
    };
    let mut open = Vec::new();
    for _ in 0..4 {
        let response = client.request(call(ALICE_KEY)).await.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    let refused = client.request(call(ALICE_KEY)).await.expect("answer");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = refused
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("max_in_flight_per_caller"));
    assert_eq!(upstream.count(), 4, "the fifth was not forwarded");

    let bobs = client.request(call(BOB_KEY)).await.expect("answer");
    assert_eq!(bobs.status(), StatusCode::OK, "bob has slots of his own");

    // One of alice's answers ends: she may send again.
    drop(open.pop());
    let again = async {
        loop {
            let response = client.request(call(ALICE_KEY)).await.expect("answer");
            if response.status() == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), again)
        .await
        .expect("a slot freed when the answer ended");
    drop(senders);
}

/// Runs `command` as a root-only setup step.
fn run(command: &str, args: &[&str]) {
    let status = std::process::Command::new(command)
        .args(args)
        .status()
        .unwrap_or_else(|err| panic!("{command}: {err}"));
    assert!(status.success(), "{command} {args:?} failed");
}

/// A small tmpfs that the test fills up, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(bytes: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("utf-8");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", path],
        );
        Self(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a small tmpfs"]
async fn a_full_audit_disk_refuses_calls_with_503_and_recovers_without_a_restart() {
    let disk = SmallDisk::mount(256 * 1024);
    let audit = disk.0.path().join("audit.jsonl");
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start_with(
        &upstream.url(),
        Options {
            audit_path: Some(&audit),
            ..Options::default()
        },
    );
    assert_serving(&gateway).await;
    let forwarded = upstream.count();

    // Fill the disk to the last byte.
    let filler = disk.0.path().join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let block = vec![b'x'; 4096];
    while std::io::Write::write_all(&mut file, &block).is_ok() {}
    drop(file);

    // The file's last block may still take a few lines, and a write refused for want of space is
    // cut back off the file, so a shorter one after it may still fit; then every call is refused.
    let mut served = 0;
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 3 {
        let answer = post(&gateway, &[("authorization", ALICE)], CALL).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(answer.json()["error"]["code"], -31503);
            refused_in_a_row += 1;
            continue;
        }
        assert_eq!(answer.status, StatusCode::OK);
        refused_in_a_row = 0;
        served += 1;
        assert!(served < 100, "the full disk never refused a call");
    }
    let forwarded = forwarded + served;
    assert_eq!(upstream.count(), forwarded, "nothing forwarded unaudited");

    // Space is back: the very next call is audited and served, same process.
    std::fs::remove_file(&filler).expect("free the disk");
    assert_serving(&gateway).await;
    assert_eq!(upstream.count(), forwarded + 1);
    let lines = gateway.audit_lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["decision"] == "forwarded")
            .count(),
        forwarded + 1,
        "every forwarded call audited"
    );
}
