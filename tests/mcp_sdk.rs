//! The official MCP TypeScript SDK client calls tools through the real gateway binary to the
//! official `server-everything` over streamable HTTP; the audit log is checked line by line.

use e2e_tests::{ALICE_KEY, EverythingServer, Gateway, eventually, sdk_client};
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
