//! Per-tool authorization, end to end: the official SDK client lists and calls through the real
//! gateway binary to an MCP server of the official SDK (`tests/peers/grants_server.mjs`: twelve
//! annotated tools five per page, prompts, resources) that records every call it gets. Users with
//! different grants see different lists, over SSE and JSON answers; what is denied never reaches
//! the server; `gateway explain` agrees with the running gateway.

use std::{net::IpAddr, process::Command};

use e2e_tests::{
    ALICE, ALICE_KEY, BOB_KEY, EverythingServer, Gateway, GrantsServer, Recorded,
    RecordingUpstream, eventually, gateway_bin, json_reply, post, raw_post, raw_request,
    sdk_client,
};
use hyper::StatusCode;
use serde_json::{Value, json};

const BOB: &str = "Bearer bob-test-key-0123456789abcdef";

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn call(id: u32, tool: &str) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{}}})
        .to_string()
}

/// What the SDK client saw and got for `key`, with the calls, prompt gets and reads given.
fn grants_report(gateway: &Gateway, key: &str, calls: &str, prompts: &str, reads: &str) -> Value {
    let report = sdk_client(
        &gateway.url(),
        Some(key),
        "grants",
        0,
        &[("CALLS", calls), ("PROMPTS", prompts), ("READS", reads)],
    );
    assert_eq!(report["error"], Value::Null, "{report}\n{}", gateway.logs());
    report
}

const SUPPORT_AND_CI: &str = r#"
[groups.support]
members = ["alice"]
tools = ["tickets_*", "!tickets_delete", "kb_*"]
prompts = ["triage_*"]
resources = ["file:///shared/**"]

[groups.ci]
members = ["bob"]
tools = ["run_tests", "echo"]
"#;

fn two_users_see_and_use_only_what_they_are_granted(json_answers: bool) {
    let server = GrantsServer::start(json_answers);
    let gateway = Gateway::start(&server.url(), SUPPORT_AND_CI);

    let alice = grants_report(
        &gateway,
        ALICE_KEY,
        "tickets_search,tickets_delete,deploy",
        "triage_ticket,admin_prompt",
        "file:///shared/faq.md,file:///private/salaries.csv",
    );
    assert_eq!(
        strings(&alice["tools"]),
        [
            "tickets_search",
            "tickets_get",
            "tickets_create",
            "tickets_update",
            "kb_search",
            "kb_write"
        ]
    );
    assert_eq!(
        alice["toolPages"], 3,
        "the cursors of all three pages still work"
    );
    assert_eq!(strings(&alice["prompts"]), ["triage_ticket"]);
    assert_eq!(
        strings(&alice["resources"]),
        ["file:///shared/handbook.md", "file:///shared/faq.md"]
    );
    assert_eq!(strings(&alice["templates"]), ["file:///shared/{path}"]);
    assert_eq!(alice["calls"]["tickets_search"], "ok");
    for refused in [
        &alice["calls"]["tickets_delete"],
        &alice["calls"]["deploy"],
        &alice["gets"]["admin_prompt"],
        &alice["reads"]["file:///private/salaries.csv"],
    ] {
        let message = refused.as_str().unwrap_or_default();
        assert!(
            message.contains("-31003") && message.contains("not granted"),
            "{message}"
        );
    }
    assert_eq!(alice["gets"]["triage_ticket"], "ok");
    assert_eq!(alice["reads"]["file:///shared/faq.md"], "ok");

    let bob = grants_report(&gateway, BOB_KEY, "run_tests,tickets_search", "", "");
    assert_eq!(strings(&bob["tools"]), ["run_tests", "echo"]);
    assert_eq!(
        bob["prompts"].as_array().map(Vec::len),
        Some(3),
        "no prompt rule: all"
    );
    assert_eq!(bob["resources"].as_array().map(Vec::len), Some(3));
    assert_eq!(bob["calls"]["run_tests"], "ok");
    assert!(
        bob["calls"]["tickets_search"]
            .as_str()
            .unwrap()
            .contains("not granted")
    );

    // Only what was granted reached the server.
    assert_eq!(
        server.received(),
        [
            json!({"method":"tools/call","name":"tickets_search"}),
            json!({"method":"prompts/get","name":"triage_ticket"}),
            json!({"method":"resources/read","uri":"file:///shared/faq.md"}),
            json!({"method":"tools/call","name":"run_tests"}),
        ]
    );
    // Each refusal is audited as forbidden, with the tool and the rule that decided.
    let lines = gateway.audit_lines();
    let forbidden = |tool: &str| -> Value {
        lines
            .iter()
            .find(|l| l["decision"] == "forbidden" && l["tool"] == tool)
            .unwrap_or_else(|| panic!("no forbidden line for {tool}"))
            .clone()
    };
    let delete = forbidden("tickets_delete");
    assert_eq!(delete["caller"], "alice");
    assert_eq!(
        delete["reason"],
        "groups.support.tools \"!tickets_delete\" denies it (a deny wins over any grant)"
    );
    assert!(
        forbidden("deploy")["reason"]
            .as_str()
            .unwrap()
            .starts_with("not granted: groups.support.tools"),
    );
    assert_eq!(forbidden("tickets_search")["caller"], "bob");
}

#[test]
fn two_users_see_and_use_only_what_they_are_granted_over_sse_answers() {
    two_users_see_and_use_only_what_they_are_granted(false);
}

#[test]
fn two_users_see_and_use_only_what_they_are_granted_over_json_answers() {
    two_users_see_and_use_only_what_they_are_granted(true);
}

#[tokio::test]
async fn rules_on_annotations_follow_what_the_server_lists_and_deny_tools_not_listed_yet() {
    let server = GrantsServer::start(false);
    let gateway = Gateway::start(
        &server.url(),
        "[groups.readers]\nmembers = [\"alice\"]\ntool_annotations = [\"readOnlyHint\"]\n\
         [groups.careful]\nmembers = [\"bob\"]\ntools = [\"*\"]\ntool_annotations = [\"!destructiveHint\"]\n",
    );
    // Before any tools/list, the gateway knows no annotations: rules on them fail closed.
    let answer = post(&gateway, &[("authorization", ALICE)], &call(1, "echo")).await;
    assert_eq!(answer.status, 403);
    let line = gateway.audit_lines().pop().expect("a line");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("has not listed this tool"),
        "{line}"
    );

    let alice = grants_report(&gateway, ALICE_KEY, "echo,tickets_create", "", "");
    assert_eq!(
        strings(&alice["tools"]),
        [
            "tickets_search",
            "tickets_get",
            "read_secrets",
            "echo",
            "kb_search"
        ],
        "read-only tools only"
    );
    assert_eq!(alice["calls"]["echo"], "ok", "listed as read-only now");
    assert!(
        alice["calls"]["tickets_create"]
            .as_str()
            .unwrap()
            .contains("not granted")
    );

    let bob = grants_report(&gateway, BOB_KEY, "run_tests,deploy,tickets_update", "", "");
    assert_eq!(
        strings(&bob["tools"]),
        [
            "tickets_search",
            "tickets_get",
            "tickets_create",
            "run_tests",
            "read_secrets",
            "echo",
            "kb_search",
            "kb_write"
        ],
        "destructive ones hidden, and tickets_update, which has no annotations (destructive by default)"
    );
    assert_eq!(bob["calls"]["run_tests"], "ok");
    for refused in ["deploy", "tickets_update"] {
        assert!(
            bob["calls"][refused]
                .as_str()
                .unwrap()
                .contains("not granted"),
            "{refused}"
        );
    }
    let names: Vec<Value> = server
        .received()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, [json!("echo"), json!("run_tests")]);
}

#[tokio::test]
async fn a_reload_changes_grants_for_the_next_request_and_a_bad_one_changes_nothing() {
    let server = GrantsServer::start(true);
    let gateway = Gateway::start(
        &server.url(),
        "[groups.agents]\nmembers = [\"alice\"]\ntools = [\"echo\"]\n",
    );
    let search = call(1, "tickets_search");
    let status = |answer: e2e_tests::Answer| answer.status.as_u16();
    assert_eq!(
        status(post(&gateway, &[("authorization", ALICE)], &search).await),
        403
    );

    let config = std::fs::read_to_string(gateway.config_path()).unwrap();
    let granting = config.replace("tools = [\"echo\"]", "tools = [\"echo\", \"tickets_*\"]");
    std::fs::write(gateway.config_path(), &granting).unwrap();
    gateway.signal(libc::SIGHUP);
    eventually("the reload to grant tickets_search", || {
        gateway.logs().contains("configuration reloaded")
    });
    assert_eq!(
        status(post(&gateway, &[("authorization", ALICE)], &search).await),
        200
    );

    let broken = config.replace("tools = [\"echo\"]", "tools = [\"bad[\"]");
    std::fs::write(gateway.config_path(), broken).unwrap();
    gateway.signal(libc::SIGHUP);
    eventually("the refused reload to be logged", || {
        gateway.logs().contains("reload refused")
    });
    assert!(
        gateway.logs().contains("groups.agents.tools[0]"),
        "{}",
        gateway.logs()
    );
    assert_eq!(
        status(post(&gateway, &[("authorization", ALICE)], &search).await),
        200,
        "the policy before the bad file stays"
    );
}

#[tokio::test]
async fn default_deny_refuses_callers_without_rules_and_a_batch_with_one_refused_call_goes_nowhere()
{
    let server = GrantsServer::start(true);
    let gateway = Gateway::start(
        &server.url(),
        "[authorization]\ndefault = \"deny\"\n[groups.agents]\nmembers = [\"alice\"]\ntools = [\"echo\"]\n",
    );
    let answer = post(&gateway, &[("authorization", BOB)], &call(7, "echo")).await;
    assert_eq!(answer.status, 403);
    let error = answer.json();
    assert_eq!(error["id"], 7);
    assert_eq!(error["error"]["code"], -31003);
    assert_eq!(
        error["error"]["message"],
        "not granted to this caller: tool \"echo\""
    );
    let list = r#"{"jsonrpc":"2.0","id":8,"method":"tools/list","params":{}}"#;
    let answer = post(&gateway, &[("authorization", BOB)], list).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json()["result"]["tools"],
        json!([]),
        "{:?}",
        answer.body
    );

    let batch = format!("[{},{}]", call(1, "echo"), call(2, "tickets_delete"));
    let answer = post(&gateway, &[("authorization", ALICE)], &batch).await;
    assert_eq!(answer.status, 403);
    let errors = answer.json();
    assert_eq!(
        errors.as_array().map(Vec::len),
        Some(2),
        "one error per request: {errors}"
    );
    for error in errors.as_array().unwrap() {
        assert_eq!(
            error["error"]["data"]["refused"],
            json!([{"index":1,"kind":"tool","name":"tickets_delete"}])
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .ends_with("nothing of this batch was forwarded")
        );
    }
    // Completing a prompt's arguments is judged like getting the prompt.
    let completion = r#"{"jsonrpc":"2.0","id":10,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"summarize"},"argument":{"name":"topic","value":"a"}}}"#;
    let answer = post(&gateway, &[("authorization", ALICE)], completion).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.json()["error"]["message"],
        "not granted to this caller: prompt \"summarize\""
    );
    let ping = r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#;
    assert_eq!(
        post(&gateway, &[("authorization", ALICE)], ping)
            .await
            .status,
        200
    );
    assert!(server.received().is_empty(), "{:?}", server.received());
    let lines = gateway.audit_lines();
    let batch_line = lines
        .iter()
        .find(|l| l["caller"] == "alice" && l["messages"] == 2)
        .expect("one line for the refused batch");
    assert_eq!(batch_line["decision"], "forbidden");
    assert_eq!(batch_line["tools"], json!(["echo", "tickets_delete"]));
}

#[tokio::test]
async fn a_source_that_keeps_calling_what_it_is_not_granted_is_blocked() {
    let server = GrantsServer::start(true);
    let gateway = Gateway::start(
        &server.url(),
        "[groups.agents]\nmembers = [\"alice\"]\ntools = [\"echo\"]\n[blocking]\nforbidden_calls = 3\n",
    );
    let prober: IpAddr = "127.0.0.11".parse().unwrap();
    let probe = raw_post(gateway.addr, ALICE, &call(1, "admin_reset"));
    for _ in 0..2 {
        let answer = raw_request(prober, gateway.addr, &probe)
            .await
            .expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    }
    assert!(
        !gateway.audit_lines().iter().any(|l| l["event"] == "block"),
        "a refusal or two is a mistake, not an offense that blocks"
    );
    let answer = raw_request(prober, gateway.addr, &probe)
        .await
        .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    eventually("the prober is blocked", || {
        gateway.audit_lines().iter().any(|l| {
            l["event"] == "block" && l["ip"] == "127.0.0.11" && l["reason"] == "forbidden_calls"
        })
    });
    let echo = raw_post(gateway.addr, ALICE, &call(2, "echo"));
    assert!(
        raw_request(prober, gateway.addr, &echo).await.is_err(),
        "refused at accept"
    );
}

/// User, their key, the explain flag, the name, the annotations explain is told, allowed.
type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Option<&'a str>, bool);

/// `gateway explain` for one case, as JSON.
fn explain(
    gateway: &Gateway,
    user: &str,
    flag: &str,
    name: &str,
    annotations: Option<&str>,
) -> Value {
    let mut command = Command::new(gateway_bin());
    command
        .arg("explain")
        .arg("--config")
        .arg(gateway.config_path())
        .args(["--user", user, flag, name, "--json"]);
    if let Some(annotations) = annotations {
        command.args(["--annotations", annotations]);
    }
    let output = command.output().expect("run gateway explain");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "explain printed no JSON ({err}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let allowed = report["allowed"].as_bool().expect("allowed");
    assert_eq!(
        output.status.code(),
        Some(if allowed { 0 } else { 3 }),
        "exit status"
    );
    report
}

#[tokio::test]
async fn gateway_explain_agrees_with_the_running_gateway_for_a_table_of_cases() {
    let server = GrantsServer::start(true);
    let gateway = Gateway::start(
        &server.url(),
        &format!(
            "{SUPPORT_AND_CI}\n[groups.readers]\nmembers = [\"bob\"]\ntool_annotations = [\"readOnlyHint\"]\n"
        ),
    );
    // The gateway learns the annotations from one listing; explain is told them.
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"page-1"}}"#;
    assert_eq!(
        post(&gateway, &[("authorization", BOB)], list).await.status,
        200
    );
    let read_only = r#"{"readOnlyHint":true}"#;
    let cases: &[Case] = &[
        ("alice", ALICE, "--tool", "tickets_search", None, true),
        ("alice", ALICE, "--tool", "tickets_delete", None, false),
        ("alice", ALICE, "--tool", "deploy", None, false),
        ("alice", ALICE, "--prompt", "triage_ticket", None, true),
        ("alice", ALICE, "--prompt", "admin_prompt", None, false),
        (
            "alice",
            ALICE,
            "--resource",
            "file:///shared/faq.md",
            None,
            true,
        ),
        (
            "alice",
            ALICE,
            "--resource",
            "file:///private/salaries.csv",
            None,
            false,
        ),
        ("bob", BOB, "--tool", "run_tests", None, true),
        // Granted by readers, as read-only per the listing (page 2 has read_secrets).
        ("bob", BOB, "--tool", "read_secrets", Some(read_only), true),
        ("bob", BOB, "--tool", "tickets_search", None, false),
        ("bob", BOB, "--prompt", "admin_prompt", None, true),
    ];
    for &(user, key, flag, name, annotations, expected) in cases {
        let explained = explain(&gateway, user, flag, name, annotations);
        assert_eq!(
            explained["allowed"], expected,
            "explain {user} {flag} {name}: {explained}"
        );
        let body = match flag {
            "--tool" => call(2, name),
            "--prompt" => {
                json!({"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":name}})
                    .to_string()
            }
            _ => json!({"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":name}})
                .to_string(),
        };
        let answer = post(&gateway, &[("authorization", key)], &body).await;
        let served = answer.status == 200;
        assert_eq!(
            served, expected,
            "the gateway for {user} {flag} {name}: {}",
            answer.status
        );
        if !served {
            let line = gateway.audit_lines().pop().expect("a line");
            assert_eq!(line["reason"], explained["reason"], "the same rule decides");
        }
    }
}

#[test]
fn a_legacy_sse_stream_shows_only_the_granted_tools() {
    let server = EverythingServer::start_legacy();
    let gateway = Gateway::start_with(
        &server.url(),
        e2e_tests::Options {
            upstream: "sse_path = \"/sse\"",
            sections: "[groups.agents]\nmembers = [\"alice\"]\ntools = [\"echo\"]\nprompts = [\"!*\"]\n",
            ..Default::default()
        },
    );
    let url = format!("http://{}/sse", gateway.addr);
    let report = sdk_client(
        &url,
        Some(ALICE_KEY),
        "grants",
        0,
        &[("TRANSPORT", "sse"), ("CALLS", "echo,get-sum")],
    );
    assert_eq!(report["error"], Value::Null, "{report}\n{}", gateway.logs());
    assert_eq!(strings(&report["tools"]), ["echo"]);
    assert_eq!(report["prompts"], json!([]));
    assert_eq!(report["calls"]["echo"], "ok");
    assert!(
        report["calls"]["get-sum"]
            .as_str()
            .unwrap()
            .contains("not granted")
    );
}

#[tokio::test]
async fn a_list_answer_that_cannot_be_filtered_is_refused_and_never_passed_on() {
    let upstream = RecordingUpstream::start(|recorded: &Recorded| {
        let list = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"deploy"}]}}"#;
        if String::from_utf8_lossy(&recorded.body).contains("\"cursor\"") {
            // Not JSON, though it says so.
            return json_reply(StatusCode::OK, "{\"tools\": [");
        }
        let mut answer = json_reply(StatusCode::OK, list);
        // What an upstream compressing a list answer would say.
        answer
            .headers_mut()
            .insert("content-encoding", "gzip".parse().unwrap());
        answer
    })
    .await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[groups.agents]\nmembers = [\"alice\"]\ntools = [\"echo\"]\n",
    );
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    let gzip = ("accept-encoding", "gzip");
    let answer = post(&gateway, &[("authorization", ALICE), gzip], list).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["error"]["code"], -31502);
    assert!(
        !upstream.last().headers.contains_key("accept-encoding"),
        "a list request to filter goes upstream without Accept-Encoding"
    );
    let paged = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"2"}}"#;
    let answer = post(&gateway, &[("authorization", ALICE)], paged).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert!(!String::from_utf8_lossy(&answer.body).contains("tools"));

    // A caller without rules gets the upstream's answer as it came.
    let answer = post(&gateway, &[("authorization", BOB), gzip], list).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-encoding"], "gzip");
    assert_eq!(upstream.last().headers["accept-encoding"], "gzip");
}
