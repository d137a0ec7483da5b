//! The gateway binary between a raw HTTP client and an in-process upstream that records what
//! reaches it: streaming, headers, error answers and the audit log's failure modes.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use e2e_tests::{
    ALICE, ALICE_KEY, BOB_KEY, CALL, Gateway, Options, RecordingUpstream, eventually, free_port,
    json_reply, ok_upstream, post, raw_post, read_audit, send, streaming_upstream,
};
use http_body_util::{BodyExt, Full, channel::Sender};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_goes_upstream_and_credentials_do_not() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(&upstream.url(), "");
    let answer = post(
        &gateway,
        &[
            ("authorization", ALICE),
            ("x-mcp-caller", "root"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("x-custom", "kept"),
        ],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let request_id = answer.headers["x-request-id"].to_str().unwrap().to_owned();

    let seen = upstream.last();
    assert_eq!(
        seen.headers["x-mcp-caller"], "alice",
        "forged identity replaced"
    );
    assert_eq!(seen.headers.get_all("x-mcp-caller").iter().count(), 1);
    assert!(
        seen.headers.get("authorization").is_none(),
        "the caller's key never goes upstream"
    );
    assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str());
    assert_eq!(seen.headers["x-request-id"], request_id.as_str());
    assert!(
        seen.headers.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(
        seen.headers["accept"],
        "application/json, text/event-stream"
    );
    assert_eq!(seen.uri, "/mcp", "origin form, the upstream's path");
    assert_eq!(
        &seen.body[..],
        CALL.as_bytes(),
        "the body is forwarded byte for byte"
    );

    let lines = gateway.audit_lines();
    assert_eq!(lines[0]["request_id"], request_id.as_str());

    // The client's query string goes along with the upstream's path.
    let with_query = send(
        Method::POST,
        &format!("{}?cursor=2", gateway.url()),
        &[
            ("authorization", ALICE),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        CALL.to_owned(),
    )
    .await;
    assert_eq!(with_query.status, StatusCode::OK);
    assert_eq!(upstream.last().uri, "/mcp?cursor=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_upstream_credential_replaces_the_callers() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let options = Options {
        upstream: "authorization = \"Bearer upstream-service-token\"",
        ..Options::default()
    };
    let gateway = Gateway::start_with(&upstream.url(), options);
    assert_eq!(
        post(&gateway, &[("authorization", ALICE)], CALL)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        upstream.last().headers["authorization"],
        "Bearer upstream-service-token"
    );
    assert!(
        !gateway.logs().contains("upstream-service-token"),
        "the credential is not logged"
    );
}

/// Alice's call to `gateway`, accepting a stream for an answer.
fn call_accepting_a_stream(gateway: &Gateway) -> Request<Full<Bytes>> {
    Request::post(gateway.url())
        .header("authorization", ALICE)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from_static(CALL.as_bytes())))
        .unwrap()
}

/// Alice's call through `gateway`, answered with the upstream's stream: its body.
async fn open_stream(gateway: &Gateway) -> hyper::body::Incoming {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(call_accepting_a_stream(gateway))
        .await
        .expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response.into_body()
}

/// Streams large events upstream, as fast as the gateway takes them, until the gateway lets go
/// of the stream (it must within 20 s); returns how many it took.
async fn stream_until_let_go(events: &mut Sender<Bytes, Infallible>) -> usize {
    let event = Bytes::from(format!("data: {}\n\n", "x".repeat(64 * 1024)));
    let pump = async {
        let mut sent = 0;
        while events.send_data(event.clone()).await.is_ok() {
            sent += 1;
        }
        sent
    };
    tokio::time::timeout(Duration::from_secs(20), pump)
        .await
        .expect("the gateway held on to the stream of a client that takes nothing")
}

/// Sends event `n` upstream and asserts the client receives it whole.
async fn relay_event(
    events: &mut Sender<Bytes, Infallible>,
    body: &mut hyper::body::Incoming,
    n: usize,
) {
    let event = format!("event: message\nid: {n}\ndata: {{\"n\":{n}}}\n\n");
    events
        .send_data(Bytes::from(event.clone()))
        .await
        .expect("the stream is open through the gateway");
    let mut received = Vec::new();
    while received.len() < event.len() {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap_or_else(|_| panic!("event {n} was held back by the gateway"))
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert_eq!(String::from_utf8(received).unwrap(), event);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_reach_the_client_one_by_one() {
    // The upstream sends the next event only after the client has received the previous one:
    // a gateway that buffered the stream would deadlock here and the test would time out.
    let (mut events, upstream) = streaming_upstream().await;
    let gateway = Gateway::start(&upstream.url(), "");
    let mut body = open_stream(&gateway).await;
    for n in 0..3 {
        relay_event(&mut events, &mut body, n).await;
    }
    drop(events);
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "the stream ends when the upstream ends it");
}

/// Reads until the gateway closes the connection; panics if it is still open after `within`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "the gateway kept the connection open for {within:?}"
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// A gateway in front of `upstream` that gives slow and idle clients one second.
fn with_one_second_idle_timeout(upstream: &RecordingUpstream) -> Gateway {
    let options = Options {
        top: "idle_timeout_secs = 1",
        ..Options::default()
    };
    Gateway::start_with(&upstream.url(), options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_closed_and_long_streams_are_not() {
    use tokio::io::AsyncWriteExt;
    let (mut events, upstream) = streaming_upstream().await;
    let gateway = with_one_second_idle_timeout(&upstream);
    let within = Duration::from_secs(10);

    // A request head that never completes (slowloris).
    let mut slow = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(b"POST /mcp HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut slow, within).await, "");

    // A keep-alive connection after its answer.
    let mut idle = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    idle.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle, within).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // The same for HTTP/2 (h2c): the connection ends once idle.
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get(format!("http://{}/elsewhere", gateway.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = h2.send_request(request).await.expect("h2 answer");
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    drop(answer);
    let ended = tokio::time::timeout(within, connection).await;
    assert!(ended.is_ok(), "the gateway kept an idle h2 connection open");

    // A stream quiet for longer than the timeout is a request in progress, not an idle client.
    let mut body = open_stream(&gateway).await;
    relay_event(&mut events, &mut body, 0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    relay_event(&mut events, &mut body, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_its_upstream_stream_let_go() {
    use tokio::io::AsyncWriteExt;
    let (mut events, upstream) = streaming_upstream().await;
    let gateway = with_one_second_idle_timeout(&upstream);
    // A small receive window, so the way to the client fills quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(gateway.addr).await.unwrap();
    client
        .write_all(raw_post(gateway.addr, ALICE, CALL).as_bytes())
        .await
        .unwrap();

    // The client reads none of the stream.
    assert!(
        stream_until_let_go(&mut events).await > 0,
        "the stream never started"
    );
    read_until_closed(&mut client, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_keeps_a_stream_window_closed_is_closed_and_its_upstream_stream_let_go() {
    let (mut events, upstream) = streaming_upstream().await;
    let gateway = with_one_second_idle_timeout(&upstream);
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut h2, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let response = h2
        .send_request(call_accepting_a_stream(&gateway))
        .await
        .expect("h2 answer");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    // Read, the stream is like any other: quiet for longer than the timeout, it stays open.
    relay_event(&mut events, &mut body, 0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    relay_event(&mut events, &mut body, 1).await;
    // Then the client takes no more: the stream's window closes, its TCP connection does not
    // fill (the client still reads that).
    assert!(
        stream_until_let_go(&mut events).await > 0,
        "the stream stopped early"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "the gateway kept the h2 connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_and_is_not_forwarded() {
    use tokio::io::AsyncWriteExt;
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = with_one_second_idle_timeout(&upstream);
    let request = raw_post(gateway.addr, ALICE, CALL);
    // The whole head and ten bytes of the body, then nothing.
    let sent = request.len() - CALL.len() + 10;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(&request.as_bytes()[..sent]).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("-31408"), "{answer}");
    assert_eq!(upstream.count(), 0);
    let decisions: Vec<Value> = gateway
        .audit_lines()
        .iter()
        .map(|line| line["decision"].clone())
        .collect();
    assert_eq!(decisions, [json!("bad_request")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_streams_and_last_event_id_pass_through() {
    let upstream = RecordingUpstream::start(|request| {
        if request.method == Method::GET {
            let mut response =
                Response::new(Full::new(Bytes::from_static(b"id: 8\ndata: {}\n\n")).boxed());
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            response
        } else {
            let mut response = json_reply(StatusCode::OK, "{}");
            response
                .headers_mut()
                .insert("mcp-session-id", "sess-1".parse().unwrap());
            response
        }
    })
    .await;
    let gateway = Gateway::start(&upstream.url(), "");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let answer = post(&gateway, &[("authorization", ALICE)], init).await;
    assert_eq!(answer.headers["mcp-session-id"], "sess-1");
    let answer = send(
        Method::GET,
        &gateway.url(),
        &[
            ("authorization", ALICE),
            ("accept", "text/event-stream"),
            ("last-event-id", "7"),
            ("mcp-session-id", "sess-1"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], b"id: 8\ndata: {}\n\n");
    let seen = upstream.last();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.headers["last-event-id"], "7");
    assert_eq!(seen.headers["mcp-session-id"], "sess-1");

    let answer = send(
        Method::DELETE,
        &gateway.url(),
        &[("authorization", ALICE), ("mcp-session-id", "sess-1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.last().method, Method::DELETE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_refused_to_any_other_caller() {
    let upstream = RecordingUpstream::start(|_| {
        let mut response = json_reply(StatusCode::OK, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        response
            .headers_mut()
            .insert("mcp-session-id", "issued-to-alice".parse().unwrap());
        response
    })
    .await;
    let gateway = Gateway::start(&upstream.url(), "");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let answer = post(&gateway, &[("authorization", ALICE)], init).await;
    assert_eq!(answer.headers["mcp-session-id"], "issued-to-alice");
    let forwarded = upstream.count();

    let bob = format!("Bearer {BOB_KEY}");
    let answer = post(
        &gateway,
        &[
            ("authorization", &bob),
            ("mcp-session-id", "issued-to-alice"),
        ],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.json()["id"], 42);
    assert_eq!(
        upstream.count(),
        forwarded,
        "bob's request was not forwarded"
    );

    let answer = post(
        &gateway,
        &[
            ("authorization", ALICE),
            ("mcp-session-id", "issued-to-alice"),
        ],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let decisions: Vec<Value> = gateway
        .audit_lines()
        .iter()
        .map(|l| l["decision"].clone())
        .collect();
    assert!(decisions.contains(&json!("forbidden")), "{decisions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_the_upstream_never_issued_gets_404_and_is_not_forwarded() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(&upstream.url(), "");
    for id in ["made-up-1", "made-up-2"] {
        let answer = post(
            &gateway,
            &[("authorization", ALICE), ("mcp-session-id", id)],
            CALL,
        )
        .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.json()["error"]["code"], -32001);
        assert_eq!(answer.json()["id"], 42);
    }
    assert_eq!(upstream.count(), 0, "nothing forwarded");
    let decisions: Vec<Value> = gateway
        .audit_lines()
        .iter()
        .map(|line| line["decision"].clone())
        .collect();
    assert_eq!(decisions, [json!("not_found"), json!("not_found")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_errors_and_are_not_forwarded() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start_with(
        &upstream.url(),
        Options {
            top: "max_body_bytes = 1024",
            ..Options::default()
        },
    );

    let answer = post(&gateway, &[], CALL).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.headers["www-authenticate"],
        "Bearer realm=\"mcp-gateway\""
    );
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );

    let answer = post(&gateway, &[("authorization", "Bearer wrong-key")], CALL).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.headers["www-authenticate"],
        "Bearer realm=\"mcp-gateway\", error=\"invalid_token\""
    );

    // A key in the query string is never accepted.
    let answer = send(
        Method::POST,
        &format!("{}?api_key={ALICE_KEY}", gateway.url()),
        &[("content-type", "application/json")],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let answer = post(
        &gateway,
        &[("authorization", ALICE)],
        r#"{"jsonrpc":"2.0","id":1,"method":"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"]["code"], -32700);

    let answer = post(&gateway, &[("authorization", ALICE)], "[]").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"]["code"], -32600);

    let big = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"{}"}}}}}}"#,
        "x".repeat(2048)
    );
    let answer = post(&gateway, &[("authorization", ALICE)], &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    let answer = post(
        &gateway,
        &[("authorization", ALICE), ("mcp-method", "tools/list")],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"]["code"], -32020);
    assert_eq!(answer.json()["id"], 42);

    let answer = send(
        Method::PUT,
        &gateway.url(),
        &[("authorization", ALICE)],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);

    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-protected-resource/mcp",
        "/other",
    ] {
        let answer = send(
            Method::GET,
            &format!("http://{}{path}", gateway.addr),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(answer.json()["error"].is_string(), "{path}");
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");

    let decisions: Vec<String> = gateway
        .audit_lines()
        .iter()
        .map(|l| l["decision"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        decisions,
        [
            "unauthenticated",
            "invalid_key",
            "unauthenticated",
            "bad_request",
            "bad_request",
            "too_large",
            "bad_request",
            "bad_request"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_answers_can_use_http_200() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[rate_limit]\nrequests = 1\nwindow_secs = 30\nstatus = 200\n",
    );
    assert_eq!(
        post(&gateway, &[("authorization", ALICE)], CALL)
            .await
            .status,
        StatusCode::OK
    );
    let answer = post(&gateway, &[("authorization", ALICE)], CALL).await;
    assert_eq!(answer.status, StatusCode::OK);
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&retry_after), "{retry_after}");
    let body = answer.json();
    assert_eq!(body["id"], 42);
    assert_eq!(body["error"]["data"]["retryAfterSeconds"], retry_after);
    let code = body["error"]["code"].as_i64().unwrap();
    assert!(
        !(-32768..=-32000).contains(&code),
        "gateway codes stay outside the reserved range"
    );
    // Another caller has their own budget.
    let bob = format!("Bearer {BOB_KEY}");
    assert_eq!(
        post(&gateway, &[("authorization", &bob)], CALL)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    let closed_port = free_port();
    let gateway = Gateway::start(&format!("http://127.0.0.1:{closed_port}/mcp"), "");
    let answer = post(&gateway, &[("authorization", ALICE)], CALL).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.json()["id"], 42);

    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    // Accepts and never answers.
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = slow.accept().await {
            held.push(stream);
        }
    });
    let options = Options {
        upstream: "timeout_secs = 1",
        ..Options::default()
    };
    let gateway = Gateway::start_with(&format!("http://{slow_addr}/mcp"), options);
    let answer = post(&gateway, &[("authorization", ALICE)], CALL).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.json()["id"], 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_be_audited_is_refused_and_not_forwarded() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    // /dev/full opens fine and fails every write with ENOSPC, like a full disk.
    let options = Options {
        audit_path: Some(std::path::Path::new("/dev/full")),
        ..Options::default()
    };
    let gateway = Gateway::start_with(&upstream.url(), options);
    let answer = post(&gateway, &[("authorization", ALICE)], CALL).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["id"], 42);
    assert_eq!(
        upstream.count(),
        0,
        "an unaudited call reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_audit_log_without_losing_lines() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(&upstream.url(), "");
    assert_eq!(
        post(&gateway, &[("authorization", ALICE)], CALL)
            .await
            .status,
        StatusCode::OK
    );
    let rotated = gateway.audit_path.with_extension("jsonl.1");
    eventually("first request and response lines", || {
        gateway.audit_lines().len() == 2
    });
    std::fs::rename(&gateway.audit_path, &rotated).unwrap();
    // Written after the rename but before SIGHUP: lands in the rotated file.
    assert_eq!(
        post(&gateway, &[("authorization", ALICE)], CALL)
            .await
            .status,
        StatusCode::OK
    );
    eventually("second request lines in the rotated file", || {
        read_audit(&rotated).len() == 4
    });
    gateway.signal(libc::SIGHUP);
    eventually("the gateway reopened the log", || {
        gateway.logs().contains("audit log reopened")
    });
    assert_eq!(
        post(&gateway, &[("authorization", ALICE)], CALL)
            .await
            .status,
        StatusCode::OK
    );
    eventually("third request in the new file", || {
        gateway.audit_lines().len() == 2
    });
    assert_eq!(
        read_audit(&rotated).len(),
        4,
        "nothing lost, nothing duplicated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(&upstream.url(), "");
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = Request::post(gateway.url())
        .header("authorization", ALICE)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CALL.as_bytes())))
        .unwrap();
    let response = client.request(request).await.expect("h2c response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(upstream.last().headers["x-mcp-caller"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_can_have_its_own_limit_per_caller() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[rate_limit.tools]\necho = { requests = 2, window_secs = 30 }\n",
    );
    let other_tool = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}"#;
    for _ in 0..2 {
        assert_eq!(
            post(&gateway, &[("authorization", ALICE)], CALL)
                .await
                .status,
            StatusCode::OK
        );
    }
    let refused = post(&gateway, &[("authorization", ALICE)], CALL).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("\"echo\""), "{message}");
    // Other tools, and other callers' calls of the same tool, are not affected.
    assert_eq!(
        post(&gateway, &[("authorization", ALICE)], other_tool)
            .await
            .status,
        StatusCode::OK
    );
    let bob = format!("Bearer {BOB_KEY}");
    assert_eq!(
        post(&gateway, &[("authorization", &bob)], CALL)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(upstream.count(), 4);
}

/// The workers share their port with SO_REUSEPORT; a second gateway must not quietly join them
/// and take part of the traffic.
#[test]
fn a_second_gateway_on_the_same_port_refuses_to_start() {
    let first = Gateway::start("http://127.0.0.1:9/mcp", "");
    let mut second = e2e_tests::KillOnDrop(
        std::process::Command::new(e2e_tests::gateway_bin())
            .arg("--config")
            .arg(first.dir.path().join("gateway.toml"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the second gateway"),
    );
    let mut status = None;
    for _ in 0..100 {
        status = second.0.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.expect("the second gateway exits instead of serving");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!("listen: cannot bind {}", first.addr))
            && stderr.contains("in use"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_from_an_origin_not_allowed_get_403_and_those_without_origin_are_served() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = Gateway::start_with(
        &upstream.url(),
        Options {
            top: "allowed_origins = [\"https://app.example.com\"]",
            ..Options::default()
        },
    );
    let with_origin = |origin: &'static str| {
        let gateway = &gateway;
        async move {
            post(
                gateway,
                &[("authorization", ALICE), ("origin", origin)],
                CALL,
            )
            .await
        }
    };
    assert_eq!(
        with_origin("https://app.example.com").await.status,
        StatusCode::OK
    );
    let refused = with_origin("http://rebinding.attacker.example").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["error"]["code"], -31003);
    assert_eq!(
        refused.json()["id"],
        Value::Null,
        "refused before the body was read"
    );
    assert_eq!(upstream.count(), 1, "the refused request was not forwarded");
    let without = post(&gateway, &[("authorization", ALICE)], CALL).await;
    assert_eq!(without.status, StatusCode::OK, "no Origin: not a browser");
    let decisions: Vec<Value> = gateway
        .audit_lines()
        .iter()
        .filter(|line| line["event"] == "request")
        .map(|line| line["decision"].clone())
        .collect();
    assert_eq!(
        decisions,
        [json!("forwarded"), json!("forbidden"), json!("forwarded")]
    );

    // Without allowed_origins, no browser page is served at all.
    let closed = Gateway::start(&upstream.url(), "");
    let answer = post(
        &closed,
        &[
            ("authorization", ALICE),
            ("origin", "https://app.example.com"),
        ],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_probes_get_a_json_404_that_costs_no_authentication_failure() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    // With the legacy SSE transport on, any other POST could be a message endpoint, which needs
    // authentication: the probes must not become authentication failures (10 block a source).
    let gateway = Gateway::start_with(
        &upstream.url(),
        Options {
            upstream: "sse_path = \"/sse\"",
            ..Options::default()
        },
    );
    let paths = [
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/mcp",
        "/.well-known/openid-configuration",
        "/mcp/.well-known/openid-configuration",
        "/.well-known/oauth-protected-resource/mcp",
        "/register",
        "/mcp/register",
        "/authorize",
        "/token",
        "/mcp/token",
    ];
    for round in 0..2 {
        for path in paths {
            for method in [Method::GET, Method::POST] {
                let answer = send(
                    method.clone(),
                    &format!("http://{}{path}", gateway.addr),
                    &[("content-type", "application/x-www-form-urlencoded")],
                    "grant_type=authorization_code",
                )
                .await;
                assert_eq!(
                    answer.status,
                    StatusCode::NOT_FOUND,
                    "{method} {path} ({round})"
                );
                assert!(
                    answer.json()["error_description"]
                        .as_str()
                        .is_some_and(|text| text.contains("static bearer keys")),
                    "{method} {path}"
                );
            }
        }
    }
    // 40 probes from this source, and it is still served.
    let answer = post(&gateway, &[("authorization", ALICE)], CALL).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.count(), 1, "no probe reached the upstream");
    assert!(
        !gateway
            .audit_lines()
            .iter()
            .any(|line| line["decision"] == "unauthenticated"),
        "no probe was an authentication failure"
    );
}
