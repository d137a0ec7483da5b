//! The official MCP TypeScript SDK client calls tools through the real gateway binary to the
//! official `server-everything`, over streamable HTTP and over the legacy HTTP+SSE transport; the
//! audit log is checked line by line.

use std::time::Duration;

use bytes::Bytes;
use e2e_tests::{
    ALICE_KEY, BOB_KEY, EverythingServer, Gateway, Options, eventually, sdk_client, send,
};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

const SECRET: &str = "s3cret-argument-value-7f1d";

fn lines_where<'a>(lines: &'a [Value], field: &str, value: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line[field] == value).collect()
}

#[test]
fn sdk_client_calls_tools_and_every_call_is_audited_without_values() {
    let server = EverythingServer::start();
    let gateway = Gateway::start(&server.url(), "");

    let report = sdk_client(
        &gateway.url(),
        Some(ALICE_KEY),
        "call",
        0,
        &[("SECRET_ARG", SECRET)],
    );
    assert_eq!(
        report["error"],
        Value::Null,
        "client failed: {report}\n{}",
        gateway.logs()
    );
    assert_eq!(report["echo"], format!("Echo: {SECRET}"));
    assert!(
        report["sum"].as_str().is_some_and(|sum| sum.contains('5')),
        "{report}"
    );
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tools.contains(&"echo") && tools.contains(&"get-sum"),
        "{tools:?}"
    );

    // initialize, notifications/initialized, tools/list, 2 x tools/call, DELETE: each audited.
    eventually("response lines for every forwarded request", || {
        let lines = gateway.audit_lines();
        let requests = lines_where(&lines, "event", "request").len();
        requests >= 6 && lines_where(&lines, "event", "response").len() == requests
    });
    let raw = std::fs::read_to_string(&gateway.audit_path).unwrap();
    assert!(
        !raw.contains(SECRET),
        "an argument value reached the audit log"
    );
    assert!(!raw.contains(ALICE_KEY), "a key reached the audit log");
    assert!(!gateway.logs().contains(SECRET) && !gateway.logs().contains(ALICE_KEY));

    let lines = gateway.audit_lines();
    for line in &lines {
        assert_eq!(line["caller"], "alice", "{line}");
        assert!(line["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));
        assert!(line["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    let requests = lines_where(&lines, "event", "request");
    assert!(requests.iter().all(|line| line["ip"] == "127.0.0.1"));
    assert!(requests.iter().all(|line| line["decision"] == "forwarded"));
    let methods: Vec<&str> = requests
        .iter()
        .filter_map(|l| l["method"].as_str())
        .collect();
    for method in [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
    ] {
        assert!(methods.contains(&method), "no {method} line in {methods:?}");
    }
    let calls = lines_where(&lines, "method", "tools/call");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["tool"], "echo");
    assert_eq!(calls[0]["arg_keys"], serde_json::json!(["message"]));
    assert_eq!(calls[1]["tool"], "get-sum");
    assert_eq!(calls[1]["arg_keys"], serde_json::json!(["a", "b"]));
    let session = report["sessionId"]
        .as_str()
        .expect("the server issued a session");
    assert_eq!(
        calls[0]["session"], session,
        "calls after initialize carry the session"
    );
    assert!(
        requests.iter().any(|line| line["http_method"] == "DELETE"),
        "session end audited"
    );
    // Each call's response line follows with the upstream status.
    let call_id = calls[0]["request_id"].as_str().unwrap();
    let response = lines
        .iter()
        .find(|l| l["event"] == "response" && l["request_id"] == call_id)
        .expect("response line");
    assert_eq!(response["status"], 200);
    assert!(response["latency_ms"].as_f64().is_some());
}

#[test]
fn wrong_and_missing_keys_are_refused_with_401_and_audited() {
    let server = EverythingServer::start();
    let gateway = Gateway::start(&server.url(), "");

    let wrong = sdk_client(
        &gateway.url(),
        Some("not-a-key-of-this-gateway"),
        "connect",
        0,
        &[],
    );
    assert_eq!(wrong["code"], 401, "{wrong}");
    assert!(
        wrong["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid key")),
        "{wrong}"
    );

    let missing = sdk_client(&gateway.url(), None, "connect", 0, &[]);
    assert_eq!(missing["code"], 401, "{missing}");
    assert!(
        missing["error"]
            .as_str()
            .is_some_and(|e| e.contains("authentication required")),
        "{missing}"
    );

    let lines = gateway.audit_lines();
    let decisions: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["decision"].as_str())
        .collect();
    assert!(decisions.contains(&"invalid_key"), "{decisions:?}");
    assert!(decisions.contains(&"unauthenticated"), "{decisions:?}");
    assert!(
        !decisions.contains(&"forwarded"),
        "nothing was forwarded: {decisions:?}"
    );
    assert!(lines.iter().all(|l| l["caller"].is_null()));
}

#[test]
fn a_client_whose_session_the_gateway_does_not_know_gets_404_and_starts_a_new_one() {
    let server = EverythingServer::start();
    let gateway = Gateway::start(&server.url(), "");
    // A session from before a restart, or made up: the gateway never saw the upstream issue it.
    let report = sdk_client(
        &gateway.url(),
        Some(ALICE_KEY),
        "resume",
        0,
        &[("SESSION_ID", "a-session-this-gateway-never-saw")],
    );
    assert_eq!(report["error"], Value::Null, "{report}\n{}", gateway.logs());
    assert_eq!(report["firstCode"], 404, "{report}");
    assert_eq!(report["echo"], "Echo: anew", "{report}");
    let session = report["sessionId"].as_str().expect("a new session");
    assert_ne!(session, "a-session-this-gateway-never-saw");

    let lines = gateway.audit_lines();
    let refused = lines_where(&lines, "decision", "not_found");
    assert_eq!(refused.len(), 1, "{lines:?}");
    assert_eq!(refused[0]["session"], "a-session-this-gateway-never-saw");
    let requests = lines_where(&lines, "event", "request");
    assert!(
        requests
            .iter()
            .filter(|line| line["decision"] == "forwarded")
            .all(|line| line["session"].is_null() || line["session"] == session),
        "nothing was forwarded with the unknown session: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|line| line["http_method"] == "DELETE" && line["decision"] == "forwarded"),
        "the new session was ended with DELETE"
    );
}

#[test]
fn calls_past_the_limit_get_429_with_the_wait_and_are_audited() {
    let server = EverythingServer::start();
    let gateway = Gateway::start(
        &server.url(),
        "[rate_limit]\nrequests = 5\nwindow_secs = 60\n",
    );

    // Connecting takes initialize, notifications/initialized and (usually) the GET stream; the
    // calls use what is left of the 5, and every request after that is refused.
    let report = sdk_client(&gateway.url(), Some(ALICE_KEY), "burst", 6, &[]);
    let ok = report["ok"].as_u64().expect("ok count");
    let errors = report["errors"].as_array().expect("errors");
    assert!(ok >= 1 && !errors.is_empty(), "{report}");
    assert_eq!(ok as usize + errors.len(), 6, "{report}");
    assert_eq!(
        report["code"], 429,
        "closing the session was refused too: {report}"
    );
    for error in errors {
        let error = error.as_str().unwrap();
        assert!(
            error.contains("rate limit exceeded") && error.contains("retry in"),
            "{error}"
        );
    }
    let lines = gateway.audit_lines();
    let forwarded = lines
        .iter()
        .filter(|l| l["decision"] == "forwarded")
        .count();
    assert_eq!(forwarded, 5, "exactly the limit was forwarded");
    let limited = lines
        .iter()
        .filter(|l| l["decision"] == "rate_limited")
        .count();
    assert_eq!(
        limited,
        errors.len() + 1,
        "refused calls and the refused DELETE are audited"
    );
    let limited_call = lines
        .iter()
        .find(|l| l["decision"] == "rate_limited" && l["method"] == "tools/call")
        .expect("a refused call");
    assert_eq!(limited_call["tool"], "echo");
}

/// `server-everything sse` behind a gateway that serves its legacy `/sse` stream.
fn legacy_server_behind_gateway() -> (EverythingServer, Gateway) {
    let server = EverythingServer::start_legacy();
    let gateway = Gateway::start_with(
        &server.url(),
        Options {
            upstream: "sse_path = \"/sse\"",
            ..Options::default()
        },
    );
    (server, gateway)
}

/// The legacy HTTP+SSE transport (2024-11-05): the SDK's `SSEClientTransport` through the gateway to
/// `server-everything sse`. Messages go to the endpoint the stream announced, and are audited
/// like any other.
#[test]
fn sdk_client_over_the_legacy_sse_transport_calls_tools_and_every_call_is_audited() {
    let (_server, gateway) = legacy_server_behind_gateway();
    let report = sdk_client(
        &format!("http://{}/sse", gateway.addr),
        Some(ALICE_KEY),
        "call",
        0,
        &[("SECRET_ARG", SECRET), ("TRANSPORT", "sse")],
    );
    assert_eq!(
        report["error"],
        Value::Null,
        "client failed: {report}\n{}",
        gateway.logs()
    );
    assert!(
        report["echo"].as_str().is_some_and(|e| e.contains(SECRET)),
        "{report}"
    );
    assert!(report["sum"].as_str().is_some_and(|s| s.contains('5')));

    eventually("the calls' audit lines", || {
        lines_where(&gateway.audit_lines(), "tool", "get-sum").len() == 1
    });
    let lines = gateway.audit_lines();
    assert!(
        !std::fs::read_to_string(&gateway.audit_path)
            .unwrap()
            .contains(SECRET)
    );
    let stream = lines_where(&lines, "http_method", "GET");
    assert_eq!(stream.len(), 1, "the stream is audited once: {lines:?}");
    let echo = lines_where(&lines, "tool", "echo");
    assert_eq!(echo.len(), 1);
    assert_eq!(echo[0]["caller"], "alice");
    assert_eq!(echo[0]["arg_keys"], serde_json::json!(["message"]));
    assert_eq!(echo[0]["decision"], "forwarded");
}

/// A legacy stream's endpoint belongs to the caller who opened the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_endpoint_takes_messages_only_from_its_own_caller() {
    let (_server, gateway) = legacy_server_behind_gateway();
    let base = format!("http://{}", gateway.addr);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let open = Request::get(format!("{base}/sse"))
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("accept", "text/event-stream")
        .body(Full::default())
        .unwrap();
    let stream = client.request(open).await.expect("open the stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut body = stream.into_body();
    let mut received = String::new();
    let endpoint = loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the endpoint event in time")
            .expect("the stream is open")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            received.push_str(&String::from_utf8_lossy(&data));
        }
        if let Some(endpoint) = received
            .split("\n\n")
            .find_map(|event| event.strip_prefix("event: endpoint\ndata: "))
        {
            break endpoint.trim().to_owned();
        }
    };
    assert!(endpoint.starts_with("/message?sessionId="), "{endpoint}");

    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let post = |key: &str, path: &str| {
        let url = format!("{base}{path}");
        let authorization = format!("Bearer {key}");
        async move {
            send(
                Method::POST,
                &url,
                &[
                    ("authorization", authorization.as_str()),
                    ("content-type", "application/json"),
                ],
                ping,
            )
            .await
        }
    };
    let bobs = post(BOB_KEY, &endpoint).await;
    assert_eq!(bobs.status, StatusCode::FORBIDDEN);
    assert_eq!(bobs.json()["id"], 1);
    let unknown = post(ALICE_KEY, "/message?sessionId=not-announced").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let alices = post(ALICE_KEY, &endpoint).await;
    assert_eq!(alices.status, StatusCode::ACCEPTED, "{:?}", alices.body);
    let no_key = send(Method::POST, &format!("{base}{endpoint}"), &[], ping).await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);

    let decisions: Vec<Value> = gateway
        .audit_lines()
        .iter()
        .filter(|line| line["event"] == "request" && line["method"] == "ping")
        .map(|line| line["decision"].clone())
        .collect();
    assert_eq!(decisions, ["forbidden", "not_found", "forwarded"]);
}
