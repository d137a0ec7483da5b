//! MCP 2026-07-28 and the handshake era through one gateway endpoint, with the official SDKs on
//! both sides: the TypeScript v2 server (`tests/peers/modern_server.mjs`, dual-era), the Python
//! `mcp` 2.x client (auto and legacy), the TypeScript v2 client (legacy and auto) and the MCP
//! Inspector's CLI. Each intermediary rule of the specification has its test here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e_tests::{
    ALICE, ALICE_KEY, BOB, Gateway, ModernServer, PythonServer, TasksServer, eventually,
    inspector_cli, last_event_id, message_of, open_session, post, python_client,
    python_client_calling, raw_post, start_task, stream_until, task_request, v2_client,
};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODERN: &str = "2026-07-28";

/// A 2026-07-28 request body: `params` with the per-request `_meta` the era requires.
fn modern(id: u64, method: &str, mut params: Value) -> String {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// The headers a 2026-07-28 client sends with `method` (and `name`, for calls).
fn modern_headers<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        ("authorization", ALICE),
        ("mcp-protocol-version", MODERN),
        ("mcp-method", method),
    ];
    if let Some(name) = name {
        headers.push(("mcp-name", name));
    }
    headers
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn the_official_clients_of_both_eras_list_and_call_tools_through_one_endpoint() {
    let server = ModernServer::start();
    let gateway = Gateway::start(&server.url(), "");
    let tools = json!(["echo", "region", "slow", "confirm", "touch"]);
    for (client, mode, version) in [
        ("python", "auto", MODERN),
        ("python", "legacy", "2025-11-25"),
        ("typescript-v2", "legacy", "2025-11-25"),
        ("typescript-v2", "auto", MODERN),
    ] {
        let report = match client {
            "python" => python_client(&gateway.url(), ALICE_KEY, mode),
            _ => v2_client(&gateway.url(), ALICE_KEY, mode),
        };
        assert_eq!(report.get("error"), None, "{client} {mode}: {report}");
        assert_eq!(report["protocol_version"], version, "{client} {mode}");
        assert_eq!(report["tools"], tools, "{client} {mode}");
        assert_eq!(report["echo"], "hello", "{client} {mode}");
    }
    let listed = inspector_cli(&gateway.url(), ALICE_KEY, &["--method", "tools/list"]);
    assert_eq!(listed["tools"].as_array().map(Vec::len), Some(5));
    let called = inspector_cli(
        &gateway.url(),
        ALICE_KEY,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "echo",
            "--tool-arg",
            "text=inspected",
        ],
    );
    assert_eq!(called["content"][0]["text"], "inspected");
    // Every call was audited as alice's, whichever era carried it.
    let echoes = gateway
        .audit_lines()
        .into_iter()
        .filter(|line| line["event"] == "request" && line["tool"] == "echo")
        .filter(|line| line["caller"] == "alice" && line["decision"] == "forwarded")
        .count();
    assert_eq!(echoes, 5);
}

#[tokio::test]
async fn negotiation_is_never_refused_for_limits_or_grants_but_still_needs_authentication() {
    let server = ModernServer::start();
    let gateway = Gateway::start(
        &server.url(),
        "[rate_limit]\nrequests = 2\nwindow_secs = 600\n",
    );
    let discover = modern(1, "server/discover", json!({}));
    let list = modern(2, "tools/list", json!({}));
    for _ in 0..2 {
        let answer = post(&gateway, &modern_headers("tools/list", None), &list).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let over = post(&gateway, &modern_headers("tools/list", None), &list).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    // Over the limit, server/discover and initialize still answer: a 429 there would make clients
    // fall back to the older era and remember it.
    for _ in 0..5 {
        let answer = post(
            &gateway,
            &modern_headers("server/discover", None),
            &discover,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(
            answer.json()["result"]["supportedVersions"],
            json!([MODERN])
        );
    }
    let initialize = json!({"jsonrpc":"2.0","id":3,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
    .to_string();
    let answer = post(&gateway, &[("authorization", ALICE)], &initialize).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    // The Python client probes server/discover, then works within what is left: nothing.
    let report = python_client(&gateway.url(), ALICE_KEY, "auto");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("rate limit")),
        "{report}"
    );
    // Authentication is never skipped.
    let anonymous = post(&gateway, &[("mcp-protocol-version", MODERN)], &discover).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Nor are grants asked: a caller denied everything still negotiates, then is refused a call.
    let denied = Gateway::start(&server.url(), "[authorization]\ndefault = \"deny\"\n");
    let headers = modern_headers("server/discover", None);
    assert_eq!(
        post(&denied, &headers, &discover).await.status,
        StatusCode::OK
    );
    let handshake = post(&denied, &[("authorization", ALICE)], &initialize).await;
    assert_eq!(handshake.status, StatusCode::OK, "{}", handshake.text());
    let echo = modern(
        4,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "x"}}),
    );
    let call = post(&denied, &modern_headers("tools/call", Some("echo")), &echo).await;
    assert_eq!(call.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_header_that_disagrees_with_the_body_gets_400_with_json_rpc_error_32020() {
    let server = ModernServer::start();
    let gateway = Gateway::start(&server.url(), "");
    // The gateway learns from the tool list which arguments `region` mirrors into headers.
    let list = modern(1, "tools/list", json!({}));
    assert_eq!(
        post(&gateway, &modern_headers("tools/list", None), &list)
            .await
            .status,
        StatusCode::OK
    );
    let call = modern(
        2,
        "tools/call",
        json!({"name": "region", "arguments": {"region": "eu-secret-region"}}),
    );
    let mut headers = modern_headers("tools/call", Some("region"));
    headers.push(("mcp-param-region", "us-other-value"));
    let answer = post(&gateway, &headers, &call).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.headers["content-type"], "application/json");
    let error = answer.json();
    assert_eq!(error["id"], 2);
    assert_eq!(error["error"]["code"], -32020);
    assert_eq!(
        error["error"]["message"],
        "Mcp-Param-Region header does not match the request body"
    );
    // Agreeing headers pass, and so does one the gateway does not know, untouched.
    let mut headers = modern_headers("tools/call", Some("region"));
    headers.push(("mcp-param-region", "eu-secret-region"));
    headers.push(("mcp-param-unknown-to-all", "passes-along"));
    let answer = post(&gateway, &headers, &call).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json()["result"]["content"][0]["text"],
        "region eu-secret-region"
    );
    // The method header too, decided on the body.
    let mismatch = post(&gateway, &modern_headers("tools/list", None), &call).await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    assert_eq!(mismatch.json()["error"]["code"], -32020);
    // No header value is logged or audited.
    let audit = std::fs::read_to_string(&gateway.audit_path).unwrap();
    for secret in ["eu-secret-region", "us-other-value", "passes-along"] {
        assert!(!audit.contains(secret), "{secret} in the audit log");
        assert!(!gateway.logs().contains(secret), "{secret} in the log");
    }
    let refused = gateway
        .audit_lines()
        .into_iter()
        .filter(|line| line["tool"] == "region" && line["decision"] == "bad_request")
        .count();
    assert_eq!(refused, 2, "the argument header and the method header");
}

/// Sends a modern `slow` call over a raw connection and closes it after `after`; returns when.
async fn call_slow_then_hang_up(gateway: &Gateway, tag: &str, after: Duration) -> u128 {
    let body = modern(
        7,
        "tools/call",
        json!({"name": "slow", "arguments": {"tag": tag}}),
    );
    let request = raw_post(gateway.addr, ALICE, &body).replacen(
        "Content-Type",
        "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: slow\r\nContent-Type",
        1,
    );
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    let closed = now_ms();
    drop(stream);
    closed
}

#[tokio::test]
async fn closing_a_modern_request_cancels_it_upstream_at_once_and_frees_its_slot() {
    let server = ModernServer::start();
    let gateway = Gateway::start(&server.url(), "[limits]\nmax_in_flight_per_caller = 1\n");
    let closed = call_slow_then_hang_up(&gateway, "first", Duration::from_millis(500)).await;
    eventually("the server sees the call cancelled", || {
        server.cancelled_at("first").is_some()
    });
    let cancelled = server.cancelled_at("first").unwrap();
    assert!(
        cancelled.saturating_sub(closed) <= 100,
        "cancelled {} ms after the client closed",
        cancelled.saturating_sub(closed)
    );
    // The caller's only in-flight slot is free again.
    let echo = modern(
        8,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "next"}}),
    );
    let answer = post(&gateway, &modern_headers("tools/call", Some("echo")), &echo).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
}

// Multi-threaded: the client's connection task must run while the test waits on the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_stream_outlives_the_header_timeout_is_kept_alive_bounded_and_audited() {
    let server = ModernServer::start();
    let gateway = Gateway::start_with(
        &server.url(),
        e2e_tests::Options {
            upstream: "timeout_secs = 1",
            sections: "[limits]\nmax_listen_streams_per_caller = 1\nsse_keepalive_secs = 1\n\
                       max_in_flight_per_caller = 1\n",
            ..e2e_tests::Options::default()
        },
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let listen_body = modern(
        5,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
    );
    let mut request = Request::post(gateway.url())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (name, value) in modern_headers("subscriptions/listen", None) {
        request = request.header(name, value);
    }
    let response = client
        .request(request.body(Full::from(listen_body.clone())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.into_body();
    let mut seen = String::new();
    let mut next = async |seen: &mut String, what: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !seen.contains(what) {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .unwrap_or_else(|_| panic!("no {what} on the stream; got {seen}"))
                .expect("stream ended")
                .expect("stream failed");
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    };
    next(&mut seen, "notifications/subscriptions/acknowledged").await;
    // Quiet for longer than timeout_secs: the stream stays, with the gateway's keep-alives.
    next(&mut seen, ": keep-alive").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A second stream of the same caller is over max_listen_streams_per_caller; the open stream
    // holds no in-flight slot, so calls still go.
    let second = post(
        &gateway,
        &modern_headers("subscriptions/listen", None),
        &listen_body,
    )
    .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        second.text().contains("max_listen_streams_per_caller"),
        "{}",
        second.text()
    );
    let touch = modern(6, "tools/call", json!({"name": "touch", "arguments": {}}));
    let answer = post(
        &gateway,
        &modern_headers("tools/call", Some("touch")),
        &touch,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    next(&mut seen, "notifications/tools/list_changed").await;
    drop(body);
    eventually("the stream's close is audited", || {
        gateway
            .audit_lines()
            .iter()
            .any(|line| line["event"] == "stream_close" && line["request_id"] == request_id)
    });
    let lines = gateway.audit_lines();
    assert!(lines.iter().any(|line| line["event"] == "stream_open"
        && line["request_id"] == request_id
        && line["method"] == "subscriptions/listen"));
    // Closed, its slot is free again.
    let mut request = Request::post(gateway.url())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (name, value) in modern_headers("subscriptions/listen", None) {
        request = request.header(name, value);
    }
    let again = client
        .request(request.body(Full::from(listen_body)).unwrap())
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

const READERS: &str = r#"
[groups.readers]
members = ["bob"]
tools = ["echo", "touch"]
prompts = ["summarize"]
resources = ["file:///shared/**"]
"#;

#[tokio::test]
async fn a_list_filtered_for_a_caller_keeps_its_order_is_private_and_subscriptions_need_read_grants()
 {
    let server = ModernServer::start();
    let gateway = Gateway::start(&server.url(), READERS);
    let bob = [
        ("authorization", e2e_tests::BOB),
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/list"),
    ];
    let answer = post(&gateway, &bob, &modern(1, "tools/list", json!({}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let result = &answer.json()["result"];
    let names: Vec<&str> = result["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    assert_eq!(names, ["echo", "touch"]);
    assert_eq!(result["cacheScope"], "private");
    // A subscription to a resource bob may not read is refused like reading it.
    let listen = modern(
        2,
        "subscriptions/listen",
        json!({"notifications": {"resourceSubscriptions": ["file:///shared/a.md", "file:///private/pay.csv"]}}),
    );
    let bob_listens = [
        ("authorization", e2e_tests::BOB),
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "subscriptions/listen"),
    ];
    let refused = post(&gateway, &bob_listens, &listen).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.text().contains("file:///private/pay.csv"),
        "{}",
        refused.text()
    );
    assert!(
        !refused.text().contains("file:///shared/a.md"),
        "{}",
        refused.text()
    );
    // The rest of the 2026-07-28 surface is judged on the body as in the handshake era: a
    // resource bob may not read, a prompt he is not granted, and completing that prompt.
    for (method, name, params) in [
        (
            "resources/read",
            "file:///private/pay.csv",
            json!({"uri": "file:///private/pay.csv"}),
        ),
        ("prompts/get", "triage", json!({"name": "triage"})),
        (
            "completion/complete",
            "triage",
            json!({"ref": {"type": "ref/prompt", "name": "triage"},
                   "argument": {"name": "ticket", "value": "1"}}),
        ),
    ] {
        let headers = [
            ("authorization", e2e_tests::BOB),
            ("mcp-protocol-version", MODERN),
            ("mcp-method", method),
            ("mcp-name", name),
        ];
        let headers = if method == "completion/complete" {
            &headers[..3]
        } else {
            &headers[..]
        };
        let answer = post(&gateway, headers, &modern(3, method, params)).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{method}: {}",
            answer.text()
        );
        assert_eq!(answer.json()["error"]["code"], -31003, "{method}");
    }
}

#[tokio::test]
async fn a_retry_with_input_responses_is_a_new_request_limited_and_audited_again() {
    let server = ModernServer::start();
    let gateway = Gateway::start(&server.url(), "");
    // The Python client answers the server's input request and retries under a new id.
    let report = python_client(&gateway.url(), ALICE_KEY, "auto");
    assert_eq!(report["confirm"], "confirmed deploy", "{report}");
    let confirms: Vec<Value> = gateway
        .audit_lines()
        .into_iter()
        .filter(|line| line["event"] == "request" && line["tool"] == "confirm")
        .collect();
    assert_eq!(confirms.len(), 2, "{confirms:?}");
    assert_ne!(confirms[0]["request_id"], confirms[1]["request_id"]);
    // With room for everything but the retry (discover, which counts while there is room, list,
    // echo, confirm), the retry is refused.
    let limited = Gateway::start(
        &server.url(),
        "[rate_limit]\nrequests = 4\nwindow_secs = 600\n",
    );
    let report = python_client(&limited.url(), ALICE_KEY, "auto");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("rate limit")),
        "{report}"
    );
    let decisions: Vec<Value> = limited
        .audit_lines()
        .into_iter()
        .filter(|line| line["event"] == "request" && line["tool"] == "confirm")
        .map(|line| line["decision"].clone())
        .collect();
    assert_eq!(decisions, [json!("forwarded"), json!("rate_limited")]);
}

async fn listed_tasks(gateway: &Gateway, caller: &str) -> Vec<String> {
    let answer = task_request(gateway, caller, "tasks/list", json!({})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let message = message_of(&answer);
    let tasks = message["result"]["tasks"].as_array().expect("tasks");
    let ids = tasks.iter().filter_map(|task| task["taskId"].as_str());
    ids.map(str::to_owned).collect()
}

#[tokio::test]
async fn a_task_is_read_cancelled_and_listed_only_by_the_caller_that_started_it() {
    for json_answers in [true, false] {
        // The server binds tasks to nobody: without the gateway, anyone could follow any task.
        let server = TasksServer::start(json_answers);
        let gateway = Gateway::start(&server.url(), "");
        let alices = start_task(&gateway, ALICE, 200).await;
        let bobs = start_task(&gateway, BOB, 60_000).await;
        for method in ["tasks/get", "tasks/result", "tasks/cancel"] {
            let refused = task_request(&gateway, BOB, method, json!({"taskId": alices})).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{method}");
            assert_eq!(refused.json()["error"]["code"], -31003);
            assert_eq!(refused.json()["id"], 7, "the id is echoed");
        }
        assert_eq!(listed_tasks(&gateway, ALICE).await, [alices.as_str()]);
        assert_eq!(listed_tasks(&gateway, BOB).await, [bobs.as_str()]);
        // A task this gateway never saw start is not found, whoever asks.
        let unknown =
            task_request(&gateway, ALICE, "tasks/get", json!({"taskId": "made-up"})).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.json()["error"]["code"], -32602);

        // Its own caller follows it to its result, and cancels its own.
        let mut status = Value::Null;
        for _ in 0..100 {
            let get = json!({"taskId": alices});
            let answer = task_request(&gateway, ALICE, "tasks/get", get).await;
            status = message_of(&answer)["result"]["status"].clone();
            if status == "completed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, "completed");
        let result = task_request(&gateway, ALICE, "tasks/result", json!({"taskId": alices})).await;
        assert_eq!(
            message_of(&result)["result"]["content"][0]["text"],
            "waited 200"
        );
        let cancelled = task_request(&gateway, BOB, "tasks/cancel", json!({"taskId": bobs})).await;
        assert_eq!(message_of(&cancelled)["result"]["status"], "cancelled");

        let refusals: Vec<Value> = gateway
            .audit_lines()
            .into_iter()
            .filter(|line| line["caller"] == "bob" && line["decision"] == "forbidden")
            .collect();
        assert_eq!(refusals.len(), 3, "every refused follow-up is audited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_server_serves_both_eras_and_a_closed_handshake_stream_resumes_with_last_event_id()
 {
    let server = PythonServer::start();
    let gateway = Gateway::start(&server.url(), "");
    let url = gateway.url();
    for (mode, version) in [("auto", MODERN), ("legacy", "2025-11-25")] {
        let report =
            tokio::task::block_in_place(|| python_client_calling(&url, ALICE_KEY, mode, "poll"));
        assert_eq!(report["protocol_version"], version, "{report}");
        assert_eq!(report["tools"], json!(["echo", "wait", "poll"]), "{report}");
        assert_eq!(report["echo"], "hello", "{report}");
        // In the handshake era the server closed the call's stream and the client came back
        // with a GET and Last-Event-ID, through the gateway.
        assert_eq!(report["poll"], "polled after 300 ms", "{report}");
    }
    for mode in ["legacy", "auto"] {
        let report = tokio::task::block_in_place(|| v2_client(&url, ALICE_KEY, mode));
        assert_eq!(report["echo"], "hello", "{report}");
    }
    let resumed = gateway.audit_lines().into_iter().any(|line| {
        line["http_method"] == "GET" && line["decision"] == "forwarded" && line["caller"] == "alice"
    });
    assert!(
        resumed,
        "the Python client's resumption went through the gateway"
    );

    // The same by hand: `id:` and `retry:` reach the client untouched, and the stream resumes
    // where the client left it.
    let session = open_session(&gateway, ALICE).await;
    let headers = [
        ("authorization", ALICE),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let poll = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"poll","arguments":{"ms":200}}}"#;
    let closed = post(&gateway, &headers, poll).await;
    let closed = closed.text();
    assert!(closed.contains("retry: 100"), "{closed}");
    assert!(
        !closed.contains("polled"),
        "the server closed the stream first: {closed}"
    );
    let last = last_event_id(&closed);
    let resume = [&headers[..], &[("last-event-id", last.as_str())]].concat();
    let resumed = stream_until(&url, &resume, "polled after 200 ms").await;
    assert!(resumed.contains("\"id\":9"), "{resumed}");

    // In this era a client that goes away cancels nothing: the server finishes the call and the
    // client finds the result when it resumes.
    let wait = r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"wait","arguments":{"ms":500}}}"#;
    let request = raw_post(gateway.addr, ALICE, wait).replacen(
        "Content-Type",
        &format!("Mcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2025-11-25\r\nContent-Type"),
        1,
    );
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("retry: 100") {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the priming event")
            .unwrap();
        assert!(read > 0, "closed before the priming event");
        seen.extend_from_slice(&chunk[..read]);
    }
    drop(stream);
    let primed = last_event_id(&String::from_utf8_lossy(&seen));
    let resume = [&headers[..], &[("last-event-id", primed.as_str())]].concat();
    let finished = stream_until(&url, &resume, "waited 500 ms").await;
    assert!(finished.contains("\"id\":10"), "{finished}");
}

#[tokio::test]
async fn the_gateways_own_error_codes_on_modern_requests_lie_outside_the_reserved_range() {
    let server = ModernServer::start();
    // Room for the task follow-up (limited before its task is looked up) and one call.
    let gateway = Gateway::start(
        &server.url(),
        "[rate_limit]\nrequests = 2\nwindow_secs = 600\n",
    );
    let echo = modern(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "x"}}),
    );
    let headers = modern_headers("tools/call", Some("echo"));
    let with = |extra: (&'static str, &'static str)| [&headers[..], &[extra]].concat();
    let mut codes = Vec::new();
    let mut refused = async |headers: &[(&str, &str)], body: &str, status: StatusCode| {
        let answer = post(&gateway, headers, body).await;
        assert_eq!(answer.status, status, "{}", answer.text());
        codes.push(answer.json()["error"]["code"].as_i64().expect("a code"));
    };
    let session = with(("mcp-session-id", "never-issued"));
    refused(&session, &echo, StatusCode::NOT_FOUND).await;
    let wrong_key = [
        ("authorization", "Bearer wrong"),
        ("mcp-protocol-version", MODERN),
    ];
    refused(&wrong_key, &echo, StatusCode::UNAUTHORIZED).await;
    let task = modern(2, "tasks/get", json!({"taskId": "made-up"}));
    let task_headers = modern_headers("tasks/get", None);
    refused(&task_headers, &task, StatusCode::NOT_FOUND).await;
    assert_eq!(post(&gateway, &headers, &echo).await.status, StatusCode::OK);
    refused(&headers, &echo, StatusCode::TOO_MANY_REQUESTS).await;
    // The specification's own codes, which a gateway may send as any receiver would.
    let specified = [
        -32700, -32600, -32601, -32602, -32603, -32020, -32021, -32022,
    ];
    for code in &codes {
        assert!(
            specified.contains(code) || !(-32768..=-32000).contains(code),
            "{code} lies in the reserved range: {codes:?}"
        );
    }
    assert_eq!(codes, [-31404, -31001, -32602, -31029]);
}
