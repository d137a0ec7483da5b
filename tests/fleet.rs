//! Fleet mode: several real gateway processes sharing one real Redis (Debian's `redis-server`,
//! started per test on a loopback port). Limits, offenses, blocks and sessions hold across the
//! nodes, whichever node each request reaches; when Redis goes away the nodes fall back (or
//! refuse) without waiting, and catch up when it is back.

use std::{net::IpAddr, sync::Arc, time::Duration};

use e2e_tests::{
    ALICE, CALL, EverythingServer, Gateway, Options, PythonServer, RecordingUpstream, TasksServer,
    closed_by_server, connect_from, eventually, exchange_keepalive, free_port, json_reply,
    last_event_id, message_of, ok_upstream, open_session, post, raw_post, raw_request,
    redis::Redis, sdk_client, send, start_task, stream_until, task_request,
};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

#[path = "edge/pki.rs"]
#[allow(dead_code)] // the edge tests use the rest
mod pki;

const SESSION_KEY: &str = "6d2b1f0c9a8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e";
const BOB: &str = "Bearer bob-test-key-0123456789abcdef";

/// `count` gateway nodes named node-0, node-1... in front of `upstream`, sharing `redis`.
/// `sections` is each node's extra configuration; `fleet` more keys of `[fleet]`.
fn start_nodes(
    upstream: &str,
    redis: &Redis,
    count: usize,
    sections: &str,
    fleet: &str,
) -> Vec<Gateway> {
    (0..count)
        .map(|index| start_node(upstream, redis, index, sections, fleet))
        .collect()
}

fn start_node(upstream: &str, redis: &Redis, index: usize, sections: &str, fleet: &str) -> Gateway {
    start_node_with(upstream, "", redis, index, sections, fleet)
}

/// [`start_node`], with `upstream_keys` in `[upstream]`.
fn start_node_with(
    upstream: &str,
    upstream_keys: &str,
    redis: &Redis,
    index: usize,
    sections: &str,
    fleet: &str,
) -> Gateway {
    let sections = format!(
        "{sections}\n[fleet]\nredis_url = \"{}\"\nnode_name = \"node-{index}\"\n\
         timeout_ms = 100\nsession_keys = [\"{SESSION_KEY}\"]\n{fleet}\n",
        redis.url()
    );
    let node = Gateway::start_with(
        upstream,
        Options {
            upstream: upstream_keys,
            sections: &sections,
            ..Options::default()
        },
    );
    eventually("the node joins the fleet", || {
        let logs = node.logs();
        logs.contains("fleet: connected to Redis") && logs.contains("following block events")
    });
    node
}

fn statuses(answers: &[e2e_tests::Answer]) -> (usize, usize) {
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let limited = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_limit_holds_across_three_nodes_whichever_node_each_request_reaches() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let redis = Redis::start();
    let nodes = start_nodes(
        &upstream.url(),
        &redis,
        3,
        "[rate_limit]\nrequests = 10\nwindow_secs = 60\n[blocking]\nrate_limited = 1000\n",
        "",
    );
    let mut answers = Vec::new();
    for request in 0..40 {
        let node = &nodes[request % nodes.len()];
        answers.push(post(node, &[("authorization", ALICE)], CALL).await);
    }
    assert_eq!(statuses(&answers), (10, 30));
    assert_eq!(upstream.count(), 10, "the upstream saw exactly the limit");
    let mut refusing_nodes = std::collections::HashSet::new();
    for (index, answer) in answers.iter().enumerate() {
        if answer.status != StatusCode::TOO_MANY_REQUESTS {
            continue;
        }
        refusing_nodes.insert(index % nodes.len());
        let retry_after: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let body = answer.json();
        assert_eq!(body["error"]["code"], -31029);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("10 requests per 60 s"),
            "{body}"
        );
    }
    assert_eq!(refusing_nodes.len(), 3, "every node refused some");
    // Bob's own limit is untouched by alice's.
    let bob = post(&nodes[1], &[("authorization", BOB)], CALL).await;
    assert_eq!(bob.status, StatusCode::OK);
    // Redis holds caller names and counters, never a key.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains("mcp-gateway:rl:{alice}"), "{keys}");
    let dump = redis.cli(&["ZRANGE", "mcp-gateway:rl:{alice}", "0", "-1"]);
    assert!(!dump.contains("alice-test-key") && !keys.contains("test-key"));
}

/// A node restarted inside the window (same name, counters from zero) still counts with what it
/// admitted before: its new admissions never replace its old ones in the shared log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_inside_the_window_does_not_admit_past_the_limit() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let redis = Redis::start();
    let limit = "[rate_limit]\nrequests = 4\nwindow_secs = 60\n[blocking]\nrate_limited = 1000\n";
    let node = start_node(&upstream.url(), &redis, 0, limit, "");
    for _ in 0..2 {
        assert_eq!(
            post(&node, &[("authorization", ALICE)], CALL).await.status,
            StatusCode::OK
        );
    }
    drop(node);
    let node = start_node(&upstream.url(), &redis, 0, limit, "");
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(post(&node, &[("authorization", ALICE)], CALL).await);
    }
    assert_eq!(statuses(&answers), (2, 2));
    assert_eq!(upstream.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_three_nodes_never_pass_the_limit() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let redis = Redis::start();
    let nodes = Arc::new(start_nodes(
        &upstream.url(),
        &redis,
        3,
        "[rate_limit]\nrequests = 50\nwindow_secs = 60\n[blocking]\nrate_limited = 100000\n\
         [limits]\nmax_in_flight_per_caller = 1000\n",
        "",
    ));
    let tasks: Vec<_> = (0..20)
        .map(|task| {
            let nodes = Arc::clone(&nodes);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for request in 0..10 {
                    let node = &nodes[(task + request) % nodes.len()];
                    answers.push(post(node, &[("authorization", ALICE)], CALL).await);
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    assert_eq!(statuses(&answers), (50, 150));
    assert_eq!(upstream.count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_limit_holds_across_nodes() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let redis = Redis::start();
    let nodes = start_nodes(
        &upstream.url(),
        &redis,
        3,
        "[rate_limit]\nrequests = 1000\nwindow_secs = 60\n\
         [rate_limit.tools.echo]\nrequests = 4\nwindow_secs = 60\n[blocking]\nrate_limited = 1000\n",
        "",
    );
    let mut answers = Vec::new();
    for request in 0..12 {
        answers.push(post(&nodes[request % 3], &[("authorization", ALICE)], CALL).await);
    }
    assert_eq!(statuses(&answers), (4, 8));
    let refused = answers
        .iter()
        .find(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .unwrap()
        .json();
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("for tool \"echo\""),
        "{refused}"
    );
    // Other tools are still within the caller's own limit.
    let other =
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{}}}"#;
    assert_eq!(
        post(&nodes[2], &[("authorization", ALICE)], other)
            .await
            .status,
        StatusCode::OK
    );
}

/// Failed authentications from 127.0.0.2 spread over three nodes (2 each): the sixth, wherever
/// it lands, blocks the source on every node; an idle connection the source had open on another
/// node is closed; a node started later enforces the block too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_spread_over_nodes_block_the_source_on_every_node() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let redis = Redis::start();
    let blocking = "[blocking]\nauth_failures = 6\nwindow_secs = 60\nblock_secs = 120\n";
    let nodes = start_nodes(&upstream.url(), &redis, 3, blocking, "");
    let offender: IpAddr = "127.0.0.2".parse().unwrap();
    let good: IpAddr = "127.0.0.1".parse().unwrap();

    // An open keep-alive connection of the offender on node 2.
    let mut idle = connect_from(offender, nodes[2].addr).await.unwrap();
    let first = exchange_keepalive(&mut idle, &raw_post(nodes[2].addr, ALICE, CALL)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    fail_authentication(offender, &nodes, 5).await;
    assert!(
        nodes.iter().all(|n| !n.logs().contains("source blocked")),
        "no block before the threshold"
    );
    fail_authentication(offender, &nodes[2..], 1).await;
    for node in &nodes {
        eventually("every node blocks the source", || {
            node.audit_lines()
                .iter()
                .any(|l| l["event"] == "block" && l["ip"] == "127.0.0.2")
        });
        let refused = raw_request(offender, node.addr, &raw_post(node.addr, ALICE, CALL)).await;
        assert!(refused.is_err(), "node refuses the offender: {refused:?}");
        let served = raw_request(good, node.addr, &raw_post(node.addr, ALICE, CALL))
            .await
            .unwrap();
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    }
    // Exactly one node decided; the others name it.
    let deciders: Vec<Value> = nodes
        .iter()
        .flat_map(Gateway::audit_lines)
        .filter(|l| l["event"] == "block")
        .collect();
    assert_eq!(deciders.len(), 3, "{deciders:?}");
    let local: Vec<_> = deciders
        .iter()
        .filter(|l| l.get("node").is_none())
        .collect();
    assert_eq!(local.len(), 1, "one node decided: {deciders:?}");
    let decider = deciders
        .iter()
        .find_map(|l| l["node"].as_str())
        .expect("a remote block names its node")
        .to_owned();
    for remote in deciders.iter().filter(|l| l.get("node").is_some()) {
        assert_eq!(remote["node"], decider.as_str());
        assert_eq!(remote["origin"], "fleet");
        assert_eq!(remote["reason"], "auth_failures");
        let left = remote["duration_secs"].as_u64().unwrap();
        assert!((110..=120).contains(&left), "{left}");
    }
    assert!(
        closed_by_server(&mut idle).await,
        "the offender's open connection on node 2 is closed"
    );

    // A node started after the block loads it from Redis.
    let late = start_node(&upstream.url(), &redis, 3, blocking, "");
    eventually("the late node holds the block", || {
        late.audit_lines()
            .iter()
            .any(|l| l["event"] == "block" && l["ip"] == "127.0.0.2")
    });
    let refused = raw_request(offender, late.addr, &raw_post(late.addr, ALICE, CALL)).await;
    assert!(refused.is_err(), "the late node refuses: {refused:?}");
}

/// Redis killed while three nodes serve: with `on_unavailable = "local"` every request is still
/// answered, quickly, each node counting alone, and `/readyz` says so; blocks decided meanwhile
/// are published when Redis is back (empty: it had no persistence), and shared limits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_dies_nodes_count_locally_and_catch_up_when_it_returns() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let mut redis = Redis::start();
    let admin_port = free_port();
    let sections = format!(
        "[rate_limit]\nrequests = 4\nwindow_secs = 60\n[blocking]\nauth_failures = 3\n\
         rate_limited = 1000\nblock_secs = 300\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"
    );
    let node_a = start_node(&upstream.url(), &redis, 0, &sections, "");
    let node_b = start_node(
        &upstream.url(),
        &redis,
        1,
        "[rate_limit]\nrequests = 4\nwindow_secs = 60\n[blocking]\nauth_failures = 3\nrate_limited = 1000\n",
        "",
    );
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready = send(Method::GET, &readyz, &[], "").await.json();
    assert_eq!(ready["fleet"]["mode"], "shared", "{ready}");

    redis.stop();
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for request in 0..8 {
        let node = if request % 2 == 0 { &node_a } else { &node_b };
        let sent = std::time::Instant::now();
        answers.push(post(node, &[("authorization", ALICE)], CALL).await);
        assert!(
            sent.elapsed() < Duration::from_millis(600),
            "answered within timeout_ms plus normal latency: {:?}",
            sent.elapsed()
        );
    }
    // Each node admits up to the limit on its own while Redis is away.
    assert_eq!(statuses(&answers), (8, 0), "{:?}", started.elapsed());
    let ready = send(Method::GET, &readyz, &[], "").await;
    let ready_json = ready.json();
    assert_eq!(ready.status, StatusCode::OK, "local fallback still serves");
    assert_eq!(ready_json["fleet"]["mode"], "local", "{ready_json}");
    assert!(
        ready_json["fleet"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{ready_json}"
    );
    let metrics = send(
        Method::GET,
        &format!("http://127.0.0.1:{admin_port}/metrics"),
        &[],
        "",
    )
    .await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("mcp_gateway_fleet_redis_up 0"),
        "{metrics}"
    );
    assert_eq!(
        node_a.logs().matches("fleet: Redis is unavailable").count(),
        1,
        "the outage is logged once"
    );
    // A block decided during the outage, on node A alone.
    let offender: IpAddr = "127.0.0.3".parse().unwrap();
    fail_authentication(offender, std::slice::from_ref(&node_a), 3).await;
    eventually("node A blocks on its own", || {
        node_a.audit_lines().iter().any(|l| l["event"] == "block")
    });

    redis.restart();
    eventually("node B learns the block decided during the outage", || {
        node_b
            .audit_lines()
            .iter()
            .any(|l| l["event"] == "block" && l["ip"] == "127.0.0.3" && l["node"] == "node-0")
    });
    assert!(
        redis
            .cli(&["HGETALL", "mcp-gateway:{blocks}:active"])
            .contains("127.0.0.3"),
        "the block is in Redis again"
    );
    eventually("the nodes say Redis is back", || {
        node_a.logs().contains("Redis is back") && node_b.logs().contains("Redis is back")
    });
    // Shared limits again: 4 between both nodes.
    let mut answers = Vec::new();
    for request in 0..8 {
        let node = if request % 2 == 0 { &node_a } else { &node_b };
        answers.push(post(node, &[("authorization", BOB)], CALL).await);
    }
    assert_eq!(statuses(&answers), (4, 4));
    let ready = send(Method::GET, &readyz, &[], "").await.json();
    assert_eq!(ready["fleet"]["mode"], "shared", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_unavailable_refuse_calls_get_503_while_redis_is_away() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let mut redis = Redis::start();
    let node = start_node(
        &upstream.url(),
        &redis,
        0,
        "[rate_limit]\nrequests = 100\nwindow_secs = 60\n",
        "on_unavailable = \"refuse\"\n",
    );
    assert_eq!(
        post(&node, &[("authorization", ALICE)], CALL).await.status,
        StatusCode::OK
    );
    redis.stop();
    let sent = std::time::Instant::now();
    let refused = post(&node, &[("authorization", ALICE)], CALL).await;
    assert!(
        sent.elapsed() < Duration::from_millis(600),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = refused.json();
    assert_eq!(body["error"]["code"], -31505);
    assert_eq!(body["id"], 42);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Redis"),
        "{body}"
    );
    // Refused at once while the outage lasts.
    let sent = std::time::Instant::now();
    assert_eq!(
        post(&node, &[("authorization", ALICE)], CALL).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        sent.elapsed() < Duration::from_millis(100),
        "{:?}",
        sent.elapsed()
    );
    redis.restart();
    let back = async {
        loop {
            if post(&node, &[("authorization", ALICE)], CALL).await.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), back)
        .await
        .expect("calls pass again once Redis is back");
    assert!(
        node.audit_lines()
            .iter()
            .any(|l| l["decision"] == "fleet_unavailable")
    );
}

/// A session opened through node A is used through nodes B and C by its caller; another caller
/// gets 403 through every node, and an altered id is unknown (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_through_one_node_is_used_through_the_others_by_its_caller_only() {
    let upstream = RecordingUpstream::start(|request| {
        let mut reply = json_reply(StatusCode::OK, r#"{"jsonrpc":"2.0","id":42,"result":{}}"#);
        if !request.headers.contains_key("mcp-session-id") {
            reply
                .headers_mut()
                .insert("mcp-session-id", "upstream-session-7".parse().unwrap());
        }
        reply
    })
    .await;
    let redis = Redis::start();
    let nodes = start_nodes(&upstream.url(), &redis, 3, "", "");
    let opened = post(&nodes[0], &[("authorization", ALICE)], CALL).await;
    let session = opened.headers["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(session.starts_with("g1."), "{session}");
    assert!(!session.contains("upstream-session-7"));
    for node in &nodes[1..] {
        let used = post(
            node,
            &[("authorization", ALICE), ("mcp-session-id", &session)],
            CALL,
        )
        .await;
        assert_eq!(used.status, StatusCode::OK);
        assert_eq!(
            upstream.last().headers["mcp-session-id"],
            "upstream-session-7",
            "the upstream sees its own id"
        );
    }
    for node in &nodes {
        let foreign = post(
            node,
            &[("authorization", BOB), ("mcp-session-id", &session)],
            CALL,
        )
        .await;
        assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    }
    let mut altered = session.clone().into_bytes();
    let at = altered.len() - 5;
    altered[at] = if altered[at] == b'x' { b'y' } else { b'x' };
    let altered = String::from_utf8(altered).unwrap();
    let refused = post(
        &nodes[2],
        &[("authorization", ALICE), ("mcp-session-id", &altered)],
        CALL,
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let made_up = post(
        &nodes[1],
        &[
            ("authorization", ALICE),
            ("mcp-session-id", "upstream-session-7"),
        ],
        CALL,
    )
    .await;
    assert_eq!(
        made_up.status,
        StatusCode::NOT_FOUND,
        "raw upstream ids are not accepted"
    );
    assert_eq!(
        upstream.count(),
        3,
        "refused requests never reached the upstream"
    );
}

/// The official TypeScript SDK client, its requests alternating between two nodes, completes
/// initialize, tools/list and tools/call against the reference server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_client_completes_a_session_alternating_between_two_nodes() {
    let server = EverythingServer::start();
    let redis = Redis::start();
    let nodes = start_nodes(&server.url(), &redis, 2, "", "");
    let report = sdk_client(
        &nodes[0].url(),
        Some(e2e_tests::ALICE_KEY),
        "call",
        1,
        &[
            ("ALTERNATE_URL", &nodes[1].url()),
            ("SECRET_ARG", "across nodes"),
        ],
    );
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(report["echo"], "Echo: across nodes", "{report}");
    assert_eq!(report["sum"], "The sum of 2 and 3 is 5.", "{report}");
    let hosts: Vec<String> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    for node in &nodes {
        let host = node.addr.to_string();
        assert!(
            hosts
                .iter()
                .filter(|h| h.starts_with("POST") && h.ends_with(&host))
                .count()
                >= 2,
            "each node carried requests: {hosts:?}"
        );
    }
    assert!(
        report["sessionId"].as_str().unwrap().starts_with("g1."),
        "{report}"
    );
}

/// The legacy HTTP+SSE transport across nodes: the stream stays on one node, the SDK client posts
/// its messages alternately through the other, to the sealed endpoint the stream announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_sse_session_posts_through_another_node_than_its_stream() {
    let server = EverythingServer::start_legacy();
    let redis = Redis::start();
    let nodes: Vec<Gateway> = (0..2)
        .map(|index| start_node_with(&server.url(), "sse_path = \"/sse\"", &redis, index, "", ""))
        .collect();
    let sse_url = |node: &Gateway| format!("http://{}/sse", node.addr);
    let report = sdk_client(
        &sse_url(&nodes[0]),
        Some(e2e_tests::ALICE_KEY),
        "call",
        1,
        &[
            ("TRANSPORT", "sse"),
            ("ALTERNATE_URL", &sse_url(&nodes[1])),
            ("SECRET_ARG", "legacy across nodes"),
        ],
    );
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(report["echo"], "Echo: legacy across nodes", "{report}");
    let hosts = report["hosts"].to_string();
    assert!(
        hosts.contains(&format!("POST {}", nodes[1].addr)),
        "messages went through the other node: {hosts}"
    );
    // The endpoint a stream on node 0 announces is sealed for its caller: alice posts to it
    // through node 1, bob is refused through either node.
    let mut stream = tokio::net::TcpStream::connect(nodes[0].addr).await.unwrap();
    let endpoint = first_endpoint_event(&mut stream, nodes[0].addr).await;
    assert!(
        endpoint.starts_with("/.mcp-gateway/legacy/g1."),
        "{endpoint}"
    );
    assert!(
        !endpoint.contains("sessionId"),
        "the server's endpoint is sealed: {endpoint}"
    );
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let message = async |node: &Gateway, key: &str| {
        let url = format!("http://{}{endpoint}", node.addr);
        let headers = [("authorization", key), ("content-type", "application/json")];
        send(Method::POST, &url, &headers, initialize).await.status
    };
    assert_eq!(message(&nodes[1], ALICE).await, StatusCode::ACCEPTED);
    for node in &nodes {
        assert_eq!(message(node, BOB).await, StatusCode::FORBIDDEN);
    }
    drop(stream);
}

/// A task started through one node is its caller's on every node: the binding is in Redis, under
/// the digest of the task's id; a node that cannot ask Redis refuses with 503 rather than guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_started_through_one_node_is_followed_through_another_only_by_its_caller() {
    let server = TasksServer::start(true);
    let mut redis = Redis::start();
    let nodes = start_nodes(&server.url(), &redis, 3, "", "");
    let task = start_task(&nodes[0], ALICE, 100).await;
    let get = || json!({"taskId": task});
    let answer = task_request(&nodes[1], ALICE, "tasks/get", get()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(message_of(&answer)["result"]["taskId"], task);
    for node in &nodes[..2] {
        let refused = task_request(node, BOB, "tasks/cancel", get()).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    }
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains("mcp-gateway:task:"), "{keys}");
    assert!(!keys.contains(&task), "Redis holds no task id: {keys}");
    // `--no-raw` quotes each key: `1) "mcp-gateway:task:…"`.
    let key = keys
        .lines()
        .find_map(|line| line.split('"').nth(1).filter(|key| key.contains(":task:")))
        .expect("a task key");
    assert_eq!(redis.cli(&["GET", key]).trim(), "\"alice\"");

    redis.stop();
    let unavailable = task_request(&nodes[2], ALICE, "tasks/get", get()).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.json()["error"]["code"], -31505);
    // The nodes that met the task still know it.
    let known = task_request(&nodes[1], ALICE, "tasks/get", get()).await;
    assert_eq!(known.status, StatusCode::OK, "{}", known.text());
}

/// Handshake-era resumption across nodes: a stream the server closed on one node resumes through
/// another, whose GET with `Last-Event-ID` carries the sealed session to the upstream that owns
/// the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_closed_through_one_node_resumes_through_another_with_last_event_id() {
    let server = PythonServer::start();
    let redis = Redis::start();
    let nodes = start_nodes(&server.url(), &redis, 2, "", "");
    let session = open_session(&nodes[0], ALICE).await;
    let headers = [
        ("authorization", ALICE),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let poll = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"poll","arguments":{"ms":200}}}"#;
    let closed = post(&nodes[0], &headers, poll).await.text();
    assert!(closed.contains("retry: 100"), "{closed}");
    let last = last_event_id(&closed);
    let resume = [&headers[..], &[("last-event-id", last.as_str())]].concat();
    let resumed = stream_until(&nodes[1].url(), &resume, "polled after 200 ms").await;
    assert!(resumed.contains("\"id\":9"), "{resumed}");
}

/// Opens a legacy SSE stream as alice and reads its first event's data (the endpoint).
async fn first_endpoint_event(
    stream: &mut tokio::net::TcpStream,
    addr: std::net::SocketAddr,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET /sse HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {ALICE}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\n\n")
        || !String::from_utf8_lossy(&seen).contains("data: ")
    {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the endpoint event in time")
            .unwrap();
        assert!(
            read > 0,
            "stream closed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line: {text}"))
        .trim()
        .to_owned()
}

/// `rediss://` with the test's own CA, as the README's least-privilege ACL user: keys under the
/// fleet's prefix only (so every key the gateway touches is under it), no dangerous commands, and
/// the default user disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_limits_over_tls_as_an_acl_user_confined_to_the_key_prefix() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let pki = pki::Pki::new();
    let (cert, key) = pki.leaf("redis", "redis", &["127.0.0.1"]);
    let redis = Redis::start_tls(
        &cert,
        &key,
        &[
            "--user",
            "default",
            "off",
            "--user",
            "edge",
            "on",
            ">edge-password",
            "~mcp-gateway:*",
            "+@all",
            "-@dangerous",
        ],
    );
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let start = |index: usize, password: &str| {
        Gateway::start(
            &upstream.url(),
            &format!(
                "[rate_limit]\nrequests = 3\nwindow_secs = 60\n[blocking]\nrate_limited = 1000\n\
                 [fleet]\nredis_url = \"{url}\"\nca_file = \"{}\"\nusername = \"edge\"\n\
                 password = \"{password}\"\nnode_name = \"tls-{index}\"\n\
                 session_keys = [\"{SESSION_KEY}\"]\n",
                pki.ca().display()
            ),
        )
    };
    let nodes = [start(0, "edge-password"), start(1, "edge-password")];
    for node in &nodes {
        eventually("the node joins the fleet over TLS", || {
            let logs = node.logs();
            logs.contains("fleet: connected to Redis") && logs.contains("following block events")
        });
    }
    let mut answers = Vec::new();
    for request in 0..6 {
        answers.push(post(&nodes[request % 2], &[("authorization", ALICE)], CALL).await);
    }
    assert_eq!(
        statuses(&answers),
        (3, 3),
        "shared through Redis over TLS: {}",
        nodes[0].logs()
    );
    for node in &nodes {
        assert!(
            !node.logs().contains("Redis is unavailable"),
            "{}",
            node.logs()
        );
        assert!(
            !node.logs().contains("edge-password"),
            "no password in the logs"
        );
    }
    // A wrong password is an outage, said once, not a crash; the node serves on its own.
    let wrong = start(2, "not-the-password");
    assert_eq!(
        post(&wrong, &[("authorization", BOB)], CALL).await.status,
        StatusCode::OK
    );
    eventually("the outage is reported", || {
        wrong.logs().contains("fleet: Redis is unavailable")
    });
    assert!(
        !wrong.logs().contains("not-the-password"),
        "{}",
        wrong.logs()
    );
}

/// Three Redis Cluster primaries (slots spread over them), started and joined by `redis-cli
/// --cluster create` on loopback ports; killed when the test ends.
struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    fn start() -> Self {
        // The cluster bus port too: the default (port + 10000) may be in the ephemeral range.
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let bus = free_port().to_string();
                Redis::start_with(&[
                    "--port",
                    "{port}",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                ])
            })
            .collect();
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(str::to_owned));
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        e2e_tests::run_ok("redis-cli", &create);
        eventually("the cluster is up", || {
            nodes
                .iter()
                .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        RedisCluster { nodes }
    }

    /// The keys each primary holds.
    fn keys_per_node(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node.cli(&["KEYS", "*"]))
            .collect()
    }
}

/// Redis Cluster: the nodes seed from one primary, the limiter's keys of many callers spread over
/// the primaries (one caller's keys on one), the limit and the block fan-out hold as with one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_cluster_limits_and_blocks_hold_and_callers_spread_over_the_shards() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let cluster = RedisCluster::start();
    let seed = &cluster.nodes[1];
    let users: String = (0..30)
        .map(|index| {
            format!(
                "[[users]]\nname = \"agent-{index}\"\nkey_sha256 = \"{}\"\n",
                e2e_tests::sha256_hex(&format!("agent-key-{index}-0123456789"))
            )
        })
        .collect();
    let sections = format!(
        "{users}[rate_limit]\nrequests = 10\nwindow_secs = 60\n\
         [rate_limit.tools.echo]\nrequests = 1000\nwindow_secs = 60\n\
         [blocking]\nauth_failures = 3\nrate_limited = 1000\nblock_secs = 120\n"
    );
    let nodes = start_nodes(&upstream.url(), seed, 3, &sections, "cluster = true\n");
    let mut answers = Vec::new();
    for request in 0..40 {
        answers.push(post(&nodes[request % 3], &[("authorization", ALICE)], CALL).await);
    }
    assert_eq!(statuses(&answers), (10, 30));
    for index in 0..30 {
        let key = format!("Bearer agent-key-{index}-0123456789");
        let answer = post(&nodes[index % 3], &[("authorization", &key)], CALL).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let per_node = cluster.keys_per_node();
    assert!(
        per_node
            .iter()
            .all(|keys| keys.contains("mcp-gateway:rl:{agent-")),
        "callers spread over every primary: {per_node:?}"
    );
    let alice_home: Vec<_> = per_node
        .iter()
        .filter(|keys| keys.contains("mcp-gateway:rl:{alice}"))
        .collect();
    assert_eq!(alice_home.len(), 1, "{per_node:?}");
    assert!(
        alice_home[0].contains("mcp-gateway:rl:{alice}:echo"),
        "a caller's tool keys share its slot: {per_node:?}"
    );
    let offender: IpAddr = "127.0.0.4".parse().unwrap();
    fail_authentication(offender, &nodes, 3).await;
    for node in &nodes {
        eventually("every node blocks the source", || {
            node.audit_lines()
                .iter()
                .any(|l| l["event"] == "block" && l["ip"] == "127.0.0.4")
        });
    }
}

/// `count` requests with a wrong key from `source`, round robin over `nodes`, each answered 401.
async fn fail_authentication(source: IpAddr, nodes: &[Gateway], count: usize) {
    for attempt in 0..count {
        let node = &nodes[attempt % nodes.len()];
        let answer = raw_request(
            source,
            node.addr,
            &raw_post(node.addr, "Bearer wrong-key-0000000000", CALL),
        )
        .await
        .expect("an answer before the block");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
}
