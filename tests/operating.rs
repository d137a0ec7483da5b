//! Operating a running gateway: the admin listener (health, readiness, metrics, API), the
//! `gateway` CLI against it, hot reload, and users' expiry — the real binary, real sockets, real
//! `curl` and `tmux`.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use e2e_tests::{
    ALICE, ALICE_KEY, BOB_KEY, CALL, Gateway, KillOnDrop, Options, RecordingUpstream, eventually,
    free_port, gateway_bin, json_reply, ok_upstream, post, sha256_hex,
};
use http_body_util::{BodyExt, channel::Channel};
use hyper::{Method, Response, StatusCode};
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-test-token-0123456789abcdef";

/// A gateway with an admin listener on a free loopback port, guarded by [`ADMIN_TOKEN`].
fn start(upstream_url: &str, top: &str, sections: &str) -> (Gateway, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sections = format!(
        "[admin]\nlisten = \"{admin}\"\nkey_sha256 = \"{}\"\n{sections}",
        sha256_hex(ADMIN_TOKEN)
    );
    let gateway = Gateway::start_with(
        upstream_url,
        Options {
            top,
            sections: &sections,
            ..Options::default()
        },
    );
    (gateway, admin)
}

/// Runs `gateway ARGS --admin ADDR` with the admin token in the environment.
fn cli(admin: SocketAddr, args: &[&str]) -> Output {
    Command::new(gateway_bin())
        .args(args)
        .args(["--admin", &admin.to_string()])
        .env("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run the gateway CLI")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "CLI failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `curl` against the admin listener: status code and body.
fn curl(url: &str, token: Option<&str>, extra: &[&str]) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.output().expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

/// The value of one sample in the metrics text (`name{labels}` exactly as written).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// The first audit line of `event` (`reload`, `block`, ...).
fn first_line(gateway: &Gateway, event: &str) -> Value {
    gateway
        .audit_lines()
        .into_iter()
        .find(|line| line["event"] == event)
        .unwrap_or_else(|| panic!("no {event} line in the audit log"))
}

async fn call(gateway: &Gateway, key: &str) -> StatusCode {
    post(
        gateway,
        &[("authorization", &format!("Bearer {key}"))],
        CALL,
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_by_decision_caller_and_tool_without_any_secret() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let (gateway, admin) = start(
        &upstream.url(),
        "",
        "[rate_limit]\nrequests = 3\nwindow_secs = 60\n[blocking]\nauth_failures = 100",
    );
    for _ in 0..5 {
        call(&gateway, ALICE_KEY).await;
    }
    for _ in 0..2 {
        call(&gateway, BOB_KEY).await;
    }
    for _ in 0..4 {
        call(&gateway, "wrong-key-0123456789abcdef").await;
    }
    let (status, metrics) = curl(&format!("http://{admin}/metrics"), None, &[]);
    assert_eq!(status, 200, "metrics need no token");
    let requests =
        |labels: &str| sample(&metrics, &format!("mcp_gateway_requests_total{{{labels}}}"));
    assert_eq!(
        requests("decision=\"forwarded\",method=\"tools/call\",caller=\"alice\""),
        3.0
    );
    assert_eq!(
        requests("decision=\"rate_limited\",method=\"tools/call\",caller=\"alice\""),
        2.0
    );
    assert_eq!(
        requests("decision=\"forwarded\",method=\"tools/call\",caller=\"bob\""),
        2.0
    );
    assert_eq!(requests("decision=\"invalid_key\",method=\"unread\""), 4.0);
    assert_eq!(
        sample(&metrics, "mcp_gateway_tool_calls_total{tool=\"echo\"}"),
        7.0
    );
    assert_eq!(
        sample(&metrics, "mcp_gateway_rate_limited_total{scope=\"caller\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            "mcp_gateway_offenses_total{kind=\"auth_failure\"}"
        ),
        4.0
    );
    assert_eq!(
        sample(
            &metrics,
            "mcp_gateway_offenses_total{kind=\"rate_limited\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(&metrics, "mcp_gateway_upstream_headers_seconds_count"),
        5.0
    );
    assert_eq!(sample(&metrics, "mcp_gateway_added_seconds_count"), 11.0);
    assert!(sample(&metrics, "mcp_gateway_audit_write_seconds_count") >= 11.0);
    assert_eq!(
        sample(&metrics, "mcp_gateway_audit_write_failures_total"),
        0.0
    );
    assert!(sample(&metrics, "mcp_gateway_upstream_connections_opened_total") >= 1.0);
    assert_eq!(
        sample(&metrics, "mcp_gateway_xdp_attached{mode=\"off\"}"),
        1.0
    );
    assert_eq!(upstream.count(), 5);
    for secret in [ALICE_KEY, BOB_KEY, "wrong-key", "hidden", ADMIN_TOKEN] {
        assert!(!metrics.contains(secret), "{secret} in the metrics");
    }
    assert!(
        metrics.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_labels_can_be_switched_off() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let (gateway, admin) = start(&upstream.url(), "", "caller_labels = false");
    call(&gateway, ALICE_KEY).await;
    let (_, metrics) = curl(&format!("http://{admin}/metrics"), None, &[]);
    assert_eq!(
        sample(
            &metrics,
            "mcp_gateway_requests_total{decision=\"forwarded\",method=\"tools/call\"}"
        ),
        1.0
    );
    assert!(!metrics.contains("caller=\"alice\""));
}

#[test]
fn the_api_needs_the_admin_token_and_health_does_not() {
    let (gateway, admin) = start("http://127.0.0.1:9/mcp", "", "");
    let base = format!("http://{admin}");
    assert_eq!(curl(&format!("{base}/healthz"), None, &[]).0, 200);
    let (status, body) = curl(&format!("{base}/api/v1/blocks"), None, &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("admin token required"), "{body}");
    assert_eq!(
        curl(&format!("{base}/api/v1/blocks"), Some("not-the-token"), &[]).0,
        401
    );
    assert_eq!(
        curl(&format!("{base}/api/v1/blocks"), Some(ADMIN_TOKEN), &[]).0,
        200
    );
    assert_eq!(
        curl(&format!("{base}/api/v1/nothing"), Some(ADMIN_TOKEN), &[]).0,
        404
    );
    let (status, body) = curl(
        &format!("{base}/api/v1/blocks"),
        Some(ADMIN_TOKEN),
        &["-X", "POST", "-d", r#"{"target":"not an address"}"#],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an address or a CIDR prefix"), "{body}");
    // The users list never shows a key or its digest.
    let (_, users) = curl(&format!("{base}/api/v1/users"), Some(ADMIN_TOKEN), &[]);
    assert!(users.contains("\"alice\""), "{users}");
    assert!(!users.contains(&sha256_hex(ALICE_KEY)), "{users}");
    drop(gateway);
}

#[test]
fn without_an_admin_token_only_health_and_metrics_are_served_on_a_unix_socket_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    let gateway = Gateway::start_with(
        "http://127.0.0.1:9/mcp",
        Options {
            sections: &format!("[admin]\nlisten = \"{}\"", socket.display()),
            ..Options::default()
        },
    );
    eventually("the admin socket exists", || socket.exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the socket is the gateway user's only");
    let socket_arg = socket.to_str().unwrap();
    let (status, _) = curl("http://admin/healthz", None, &["--unix-socket", socket_arg]);
    assert_eq!(status, 200);
    let (status, body) = curl(
        "http://admin/api/v1/blocks",
        Some(ADMIN_TOKEN),
        &["--unix-socket", socket_arg],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("key_sha256"), "{body}");
    // The CLI finds the socket from the configuration file.
    let output = Command::new(gateway_bin())
        .args(["status", "--config"])
        .arg(gateway.config_path())
        .output()
        .unwrap();
    let text = stdout(&output);
    assert!(text.contains("ready:"), "{text}");
    assert!(text.contains("no admin token"), "{text}");
}

#[test]
fn a_non_loopback_admin_listener_without_a_token_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:9/mcp\"\n[[users]]\nname = \"a\"\nkey_sha256 = \"{}\"\n[admin]\nlisten = \"0.0.0.0:9090\"\n",
            sha256_hex(ALICE_KEY)
        ),
    )
    .unwrap();
    let output = Command::new(gateway_bin())
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin.key_sha256"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_when_the_upstream_goes_down_and_comes_back() {
    let port = free_port();
    let start_upstream = || {
        let mut command = Command::new(gateway_bin());
        command.args(["demo-upstream", "--listen", &format!("127.0.0.1:{port}")]);
        let log = tempfile::NamedTempFile::new().unwrap();
        e2e_tests::spawn_listening(
            command,
            "demo upstream",
            log.path(),
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    };
    let upstream = start_upstream();
    let (_gateway, admin) = start(&format!("http://127.0.0.1:{port}/mcp"), "", "");
    let ready = || curl(&format!("http://{admin}/readyz"), None, &[]);
    let (status, body) = ready();
    assert_eq!(status, 200, "{body}");
    drop(upstream);
    let (status, body) = ready();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot connect to 127.0.0.1"), "{body}");
    let _upstream = start_upstream();
    assert_eq!(ready().0, 200);
}

/// An upstream whose GET is an event stream the test writes into, and whose POSTs get a result.
async fn stream_and_calls_upstream() -> (
    http_body_util::channel::Sender<Bytes, Infallible>,
    RecordingUpstream,
) {
    let (events, stream) = Channel::<Bytes, Infallible>::new(4);
    let stream = Arc::new(Mutex::new(Some(stream)));
    let upstream = RecordingUpstream::start(move |request| {
        if request.method == Method::GET {
            let body = stream.lock().unwrap().take().expect("one stream");
            let mut response = Response::new(body.boxed());
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            response
        } else {
            json_reply(
                StatusCode::OK,
                r#"{"jsonrpc":"2.0","id":42,"result":{"content":[]}}"#,
            )
        }
    })
    .await;
    (events, upstream)
}

/// Opens the GET event stream with curl; returns the process and the file its output goes to.
fn open_stream(gateway: &Gateway, output: &Path) -> KillOnDrop {
    let file = std::fs::File::create(output).unwrap();
    KillOnDrop(
        Command::new("curl")
            .args(["-s", "-N", "-H", &format!("Authorization: {ALICE}")])
            .args(["-H", "Accept: text/event-stream"])
            .arg(gateway.url())
            .stdout(file)
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_makes_readyz_false_while_a_stream_finishes() {
    let (mut events, upstream) = stream_and_calls_upstream().await;
    let (gateway, admin) = start(&upstream.url(), "shutdown_grace_secs = 5", "");
    let streamed = gateway.dir.path().join("stream.txt");
    let _stream = open_stream(&gateway, &streamed);
    eventually("the stream is open", || {
        let (_, metrics) = curl(&format!("http://{admin}/metrics"), None, &[]);
        metrics.contains("mcp_gateway_open_streams 1")
    });
    gateway.signal(libc::SIGTERM);
    eventually("readyz says draining", || {
        let (status, body) = curl(&format!("http://{admin}/readyz"), None, &[]);
        status == 503 && body.contains("\"draining\":true")
    });
    events
        .send_data(Bytes::from("data: still here\n\n"))
        .await
        .unwrap();
    eventually("the stream still delivers while draining", || {
        std::fs::read_to_string(&streamed)
            .unwrap_or_default()
            .contains("still here")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_keys_while_a_stream_stays_open_and_keeps_limiter_windows() {
    let (mut events, upstream) = stream_and_calls_upstream().await;
    let (gateway, admin) = start(
        &upstream.url(),
        "",
        "[rate_limit]\nrequests = 3\nwindow_secs = 600",
    );
    let streamed = gateway.dir.path().join("stream.txt");
    let _stream = open_stream(&gateway, &streamed);
    events
        .send_data(Bytes::from("data: one\n\n"))
        .await
        .unwrap();
    eventually("the stream delivers", || {
        std::fs::read_to_string(&streamed)
            .unwrap_or_default()
            .contains("one")
    });
    assert_eq!(call(&gateway, ALICE_KEY).await, StatusCode::OK);

    // Alice gets a new key; bob is gone.
    const NEW_KEY: &str = "alice-new-key-0123456789abcdef";
    let config = std::fs::read_to_string(gateway.config_path()).unwrap();
    let config = config
        .replace("[upstream]", "max_body_bytes = 100000\n[upstream]")
        .replace(&sha256_hex(ALICE_KEY), &sha256_hex(NEW_KEY))
        .replace(
            &format!(
                "[[users]]\nname = \"bob\"\nkey_sha256 = \"{}\"\n",
                sha256_hex(BOB_KEY)
            ),
            "",
        );
    std::fs::write(gateway.config_path(), &config).unwrap();
    let text = stdout(&cli(admin, &["reload"]));
    assert!(text.contains("reloaded: 1 users"), "{text}");
    assert!(
        text.contains("changed but needs a restart: max_body_bytes"),
        "{text}"
    );

    assert_eq!(
        call(&gateway, ALICE_KEY).await,
        StatusCode::UNAUTHORIZED,
        "old key"
    );
    assert_eq!(
        call(&gateway, BOB_KEY).await,
        StatusCode::UNAUTHORIZED,
        "removed user"
    );
    assert_eq!(call(&gateway, NEW_KEY).await, StatusCode::OK, "new key");
    // The stream opened before (the GET counts too) and two calls: the window of 3 is full.
    assert_eq!(
        call(&gateway, NEW_KEY).await,
        StatusCode::TOO_MANY_REQUESTS,
        "alice's window survived the reload"
    );
    events
        .send_data(Bytes::from("data: two\n\n"))
        .await
        .unwrap();
    eventually("the stream still delivers after the reload", || {
        std::fs::read_to_string(&streamed)
            .unwrap_or_default()
            .contains("two")
    });
    let reload = first_line(&gateway, "reload");
    assert_eq!(reload["outcome"], "applied");
    assert_eq!(reload["by"], "admin 127.0.0.1");
    assert_eq!(reload["policy_sha256"], sha256_hex(&config));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_is_refused_naming_the_field_and_the_old_policy_stays() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let (gateway, admin) = start(&upstream.url(), "", "");
    let config = std::fs::read_to_string(gateway.config_path()).unwrap();
    std::fs::write(
        gateway.config_path(),
        config.replace(&sha256_hex(BOB_KEY), "not-a-digest"),
    )
    .unwrap();
    let output = cli(admin, &["reload"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("users[1].key_sha256"), "{stderr}");
    assert_eq!(
        call(&gateway, BOB_KEY).await,
        StatusCode::OK,
        "old policy in force"
    );
    let line = first_line(&gateway, "reload");
    assert_eq!(line["outcome"], "rejected");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("users[1].key_sha256")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_disabled_user_is_refused_and_a_reload_revokes_at_once() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let (gateway, admin) = start(
        &upstream.url(),
        "",
        &format!(
            "[[users]]\nname = \"carol\"\nkey_sha256 = \"{}\"\nexpires_at = \"2020-01-01T00:00:00Z\"\n\
             [[users]]\nname = \"dave\"\nkey_sha256 = \"{}\"\nexpires_at = \"2999-01-01T00:00:00+02:00\"\n",
            sha256_hex("carol-key-0123456789abcdef"),
            sha256_hex("dave-key-0123456789abcdef"),
        ),
    );
    let answer = post(
        &gateway,
        &[("authorization", "Bearer carol-key-0123456789abcdef")],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    assert_eq!(
        call(&gateway, "dave-key-0123456789abcdef").await,
        StatusCode::OK
    );
    let users = stdout(&cli(admin, &["users"]));
    assert!(
        users
            .lines()
            .any(|l| l.starts_with("carol") && l.contains("expired")),
        "{users}"
    );

    // Bob's key leaked: disabled by a reload, refused on his very next request.
    let config = std::fs::read_to_string(gateway.config_path()).unwrap();
    let config = config.replace(
        &format!("name = \"bob\"\nkey_sha256 = \"{}\"\n", sha256_hex(BOB_KEY)),
        &format!(
            "name = \"bob\"\nkey_sha256 = \"{}\"\ndisabled = true\n",
            sha256_hex(BOB_KEY)
        ),
    );
    std::fs::write(gateway.config_path(), config).unwrap();
    gateway.signal(libc::SIGHUP);
    eventually("the reload is audited", || {
        gateway
            .audit_lines()
            .iter()
            .any(|line| line["event"] == "reload")
    });
    let answer = post(
        &gateway,
        &[("authorization", &format!("Bearer {BOB_KEY}"))],
        CALL,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );
    let line = first_line(&gateway, "reload");
    assert_eq!(line["by"], "signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_the_allowlist_through_the_cli_take_effect_at_accept() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let (gateway, admin) = start(&upstream.url(), "", "[blocking]\nauth_failures = 2");
    let from = |source: [u8; 4]| {
        let addr = gateway.addr;
        async move {
            e2e_tests::raw_request(
                IpAddr::from(source),
                addr,
                &e2e_tests::raw_post(addr, ALICE, CALL),
            )
            .await
            .ok()
        }
    };
    let served =
        |answer: Option<String>| answer.is_some_and(|text| text.starts_with("HTTP/1.1 200"));
    assert!(served(from([127, 0, 0, 2]).await));

    let text = stdout(&cli(
        admin,
        &[
            "block",
            "add",
            "127.0.0.2",
            "--ttl",
            "10m",
            "--reason",
            "incident 42",
        ],
    ));
    assert!(text.contains("blocked: 127.0.0.2"), "{text}");
    assert!(!served(from([127, 0, 0, 2]).await), "blocked at accept");
    assert!(served(from([127, 0, 0, 3]).await), "others still served");
    let list = stdout(&cli(admin, &["block", "list"]));
    let row = list
        .lines()
        .find(|l| l.starts_with("127.0.0.2"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        row.contains("manual") && row.contains("operator") && row.contains(" s"),
        "{row}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&cli(admin, &["block", "list", "--json"]))).unwrap();
    assert!(json[0]["remaining_secs"].as_u64().unwrap() > 590);
    stdout(&cli(admin, &["block", "rm", "127.0.0.2"]));
    assert!(served(from([127, 0, 0, 2]).await), "unblocked");

    // Allowlisted: failing authentication no longer blocks, and blocking it is refused.
    stdout(&cli(admin, &["allow", "add", "127.0.0.4"]));
    for _ in 0..3 {
        let bad_key = e2e_tests::raw_post(gateway.addr, "Bearer nope-0123456789abcdef", CALL);
        let answer =
            e2e_tests::raw_request(IpAddr::from([127, 0, 0, 4]), gateway.addr, &bad_key).await;
        assert!(answer.unwrap().starts_with("HTTP/1.1 401"));
    }
    assert!(
        served(from([127, 0, 0, 4]).await),
        "the allowlist kept it from a block"
    );
    let refused = cli(admin, &["block", "add", "127.0.0.4"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("allowlist"));
    stdout(&cli(admin, &["allow", "rm", "127.0.0.4"]));
    assert!(!stdout(&cli(admin, &["allow", "list"])).contains("127.0.0.4"));

    let actions: Vec<String> = gateway
        .audit_lines()
        .into_iter()
        .filter(|line| line["event"] == "admin")
        .map(|line| format!("{} {} {}", line["action"], line["target"], line["outcome"]))
        .collect();
    assert_eq!(
        actions,
        [
            r#""block.add" "127.0.0.2" "applied""#,
            r#""block.rm" "127.0.0.2" "applied""#,
            r#""allow.add" "127.0.0.4" "applied""#,
            r#""block.add" "127.0.0.4" "rejected""#,
            r#""allow.rm" "127.0.0.4" "applied""#,
        ]
    );
    let block = first_line(&gateway, "block");
    assert_eq!(block["origin"], "operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_top_in_a_terminal_shows_the_traffic_that_was_sent() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let (gateway, admin) = start(
        &upstream.url(),
        "",
        "[rate_limit]\nrequests = 4\nwindow_secs = 60",
    );
    for _ in 0..6 {
        call(&gateway, ALICE_KEY).await;
    }
    call(&gateway, BOB_KEY).await;
    stdout(&cli(admin, &["block", "add", "192.0.2.77"]));
    let session = format!("gateway-top-{}", std::process::id());
    let command = format!(
        "GATEWAY_ADMIN_TOKEN={ADMIN_TOKEN} {} top --admin {admin}",
        gateway_bin().display()
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux (cargo xtask setup installs it)")
    };
    struct EndSession<'a>(&'a str);
    impl Drop for EndSession<'_> {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", self.0])
                .output();
        }
    }
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "40",
        &command,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _end = EndSession(&session);
    let mut screen = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
            .into_owned();
        if screen.contains("192.0.2.77") && screen.contains("rate_limited") {
            break;
        }
    }
    let row = |name: &str| {
        screen
            .lines()
            .flat_map(|line| line.split('│'))
            .find(|cell| cell.trim_start().starts_with(name))
            .map(|cell| cell.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no {name} row on screen:\n{screen}"))
    };
    assert_eq!(row("alice").last().copied(), Some("6"), "{screen}");
    assert_eq!(row("bob").last().copied(), Some("1"), "{screen}");
    assert_eq!(row("forwarded").last().copied(), Some("5"), "{screen}");
    assert_eq!(row("rate_limited").last().copied(), Some("2"), "{screen}");
    assert_eq!(row("echo").last().copied(), Some("7"), "{screen}");
    assert!(
        screen.contains("192.0.2.77") && screen.contains("manual (operator)"),
        "{screen}"
    );
    // q quits.
    tmux(&["send-keys", "-t", &session, "q"]);
    eventually("top quits on q", || {
        !tmux(&["has-session", "-t", &session]).status.success()
    });
}

fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.split_whitespace()
            .nth(2)
            .is_none_or(|state| state != "Z")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_is_replaced_under_load_without_a_refused_connection_or_a_failed_request() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    // The gateway runs from its own copy of the binary, as from an installed package.
    let installed = dir.path().join("gateway");
    std::fs::copy(gateway_bin(), &installed).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let audit = dir.path().join("audit.jsonl");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\nshutdown_grace_secs = 5\n[upstream]\nurl = \"{}\"\n[audit]\npath = \"{}\"\n\
             [rate_limit]\nrequests = 100000\n\
             [[users]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n\
             [admin]\nlisten = \"{admin}\"\nkey_sha256 = \"{}\"\n",
            upstream.url(),
            audit.display(),
            sha256_hex(ALICE_KEY),
            sha256_hex(ADMIN_TOKEN)
        ),
    )
    .unwrap();
    let mut command = Command::new(&installed);
    command.arg("--config").arg(&config);
    let old = e2e_tests::spawn_listening(command, "gateway", &dir.path().join("gateway.log"), addr);
    let old_pid = old.0.id() as i32;

    // Load: 4 clients, each request on a new connection, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let request = e2e_tests::raw_post(addr, ALICE, CALL);
                    match e2e_tests::raw_request(IpAddr::from([127, 0, 0, 1]), addr, &request).await
                    {
                        Ok(answer) if answer.starts_with("HTTP/1.1 200") => ok += 1,
                        Ok(answer) => failed.push(answer.lines().next().unwrap_or("").to_owned()),
                        Err(err) => failed.push(err.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new version is installed (a new file at the same path), then the upgrade is asked for.
    let staged = dir.path().join("gateway.new");
    std::fs::copy(gateway_bin(), &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    let upgrade = tokio::task::spawn_blocking(move || cli(admin, &["upgrade", "--json"]))
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&stdout(&upgrade)).unwrap();
    let new_pid = answer["new_pid"].as_i64().unwrap() as i32;
    let _new = e2e_tests::KillPid(new_pid);
    assert_eq!(answer["old_pid"].as_i64().unwrap() as i32, old_pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for client in clients {
        let (served, errors) = client.await.unwrap();
        ok += served;
        failed.extend(errors);
    }
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len() as u32,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests in 2 s");

    // The new process serves, from the new file; the old one drained and exited.
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    assert!(
        !exe(new_pid).to_string_lossy().ends_with("(deleted)"),
        "{:?}",
        exe(new_pid)
    );
    let status = stdout(&cli(admin, &["status", "--json"]));
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["status"]["pid"].as_i64().unwrap() as i32, new_pid);
    eventually("the old process exits", || !is_running(old_pid));
    assert!(is_running(new_pid));
    let after = e2e_tests::raw_request(
        IpAddr::from([127, 0, 0, 1]),
        addr,
        &e2e_tests::raw_post(addr, ALICE, CALL),
    )
    .await;
    assert!(after.unwrap().starts_with("HTTP/1.1 200"));
    drop(old);
}

/// `gateway reload --json` after writing `config`: the reload's answer.
fn reload_with(gateway: &Gateway, admin: SocketAddr, config: &str) -> Value {
    std::fs::write(gateway.config_path(), config).unwrap();
    serde_json::from_str(&stdout(&cli(admin, &["reload", "--json"]))).expect("JSON answer")
}

fn keys(answer: &Value, list: &str) -> Vec<String> {
    answer[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {answer}"))
        .iter()
        .map(|key| key.as_str().unwrap().to_owned())
        .collect()
}

/// `curl` POSTing a tool call to the gateway with `Origin: origin`: the status code.
fn curl_call_from(gateway: &Gateway, origin: &str) -> u16 {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {ALICE_KEY}")])
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", "Accept: application/json, text/event-stream"])
        .args(["-H", &format!("Origin: {origin}")])
        .args(["--data", CALL])
        .arg(gateway.url())
        .output()
        .expect("curl");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_origin_rules_and_idle_timeout_and_says_so() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let (gateway, admin) = start(
        &upstream.url(),
        "allowed_origins = [\"https://a.example\"]\nidle_timeout_secs = 30",
        "",
    );
    assert_eq!(curl_call_from(&gateway, "https://a.example"), 200);
    assert_eq!(curl_call_from(&gateway, "https://b.example"), 403);

    let config = std::fs::read_to_string(gateway.config_path())
        .unwrap()
        .replace("https://a.example", "https://b.example")
        .replace("idle_timeout_secs = 30", "idle_timeout_secs = 1");
    std::fs::write(gateway.config_path(), config).unwrap();
    let text = stdout(&cli(admin, &["reload"]));
    assert!(
        text.contains("applied: idle_timeout_secs, allowed_origins"),
        "{text}"
    );
    assert!(
        text.contains("changed but needs a restart: nothing"),
        "{text}"
    );
    assert_eq!(curl_call_from(&gateway, "https://b.example"), 200);
    assert_eq!(curl_call_from(&gateway, "https://a.example"), 403);
    // A connection accepted after the reload that stays quiet is closed after the new 1 s.
    let mut idle = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let started = std::time::Instant::now();
    assert!(
        e2e_tests::closed_by_server(&mut idle).await,
        "closed when idle"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );

    let line = gateway
        .audit_lines()
        .into_iter()
        .rfind(|line| line["event"] == "reload")
        .expect("a reload line");
    assert_eq!(
        line["detail"],
        "applied: idle_timeout_secs, allowed_origins; needs a restart: nothing"
    );
    assert!(
        gateway
            .logs()
            .contains(r#"applied=["idle_timeout_secs", "allowed_origins"]"#),
        "the log line names them"
    );
}

/// One row of the reload table: a change to the running file, where the reload's answer must
/// name the key, and what the next request must show.
struct Row {
    key: &'static str,
    edit: fn(&str) -> String,
    /// Applied (`true`) or needing a restart.
    applied: bool,
}

/// Inserts `line` as a top-level key (before the first table).
fn top_level(config: &str, line: &str) -> String {
    config.replacen("[upstream]\n", &format!("{line}\n[upstream]\n"), 1)
}

/// Adds `line` to `[upstream]`.
fn in_upstream(config: &str, line: &str) -> String {
    config.replacen("[audit]\n", &format!("{line}\n[audit]\n"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_setting_a_reload_changes_is_applied_on_the_next_request_or_named_as_needing_a_restart()
 {
    let first = RecordingUpstream::start(ok_upstream()).await;
    let second = RecordingUpstream::start(ok_upstream()).await;
    let second_url = second.url();
    let (gateway, admin) = start(&first.url(), "", "");
    let base = std::fs::read_to_string(gateway.config_path()).unwrap();
    let first_url = first.url();
    // (`fn` rows cannot capture: the second upstream's URL goes in through a placeholder.)
    let rows = [
        Row {
            key: "mcp_path",
            edit: |c| top_level(c, "mcp_path = \"/v2/mcp\""),
            applied: true,
        },
        Row {
            key: "upstream.url",
            edit: |c| c.replace("FIRST_URL", "SECOND_URL"),
            applied: true,
        },
        Row {
            key: "upstream.caller_header",
            edit: |c| in_upstream(c, "caller_header = \"X-Who\""),
            applied: true,
        },
        Row {
            key: "upstream.authorization",
            edit: |c| in_upstream(c, "authorization = \"Bearer for-the-server\""),
            applied: true,
        },
        Row {
            key: "rate_limit.requests",
            edit: |c| format!("{c}[rate_limit]\nrequests = 1\nwindow_secs = 600\n"),
            applied: true,
        },
        Row {
            key: "users",
            edit: |c| {
                c.replacen(
                    "[[users]]\nname = \"bob\"",
                    "[[users]]\nname = \"bob\"\ndisabled = true",
                    1,
                )
            },
            applied: true,
        },
        Row {
            key: "authorization",
            edit: |c| format!("{c}[authorization]\ndefault = \"deny\"\n"),
            applied: true,
        },
        Row {
            key: "limits.max_batch_messages",
            edit: |c| format!("{c}[limits]\nmax_batch_messages = 1\n"),
            applied: true,
        },
        Row {
            key: "limits.max_uri_bytes",
            edit: |c| format!("{c}[limits]\nmax_uri_bytes = 100\n"),
            applied: true,
        },
        Row {
            key: "listen",
            edit: |c| c.replacen("listen = \"127.0.0.1:", "listen = \"127.0.0.2:", 1),
            applied: false,
        },
        Row {
            key: "max_body_bytes",
            edit: |c| top_level(c, "max_body_bytes = 10"),
            applied: false,
        },
        Row {
            key: "audit.fsync",
            edit: |c| c.replacen("[audit]\n", "[audit]\nfsync = true\n", 1),
            applied: false,
        },
        Row {
            key: "limits.max_headers",
            edit: |c| format!("{c}[limits]\nmax_headers = 5\n"),
            applied: false,
        },
        Row {
            key: "xdp.mode",
            edit: |c| format!("{c}[xdp]\nmode = \"skb\"\n"),
            applied: false,
        },
        Row {
            key: "admin.caller_labels",
            edit: |c| c.replacen("[admin]\n", "[admin]\ncaller_labels = false\n", 1),
            applied: false,
        },
    ];
    let base = base.replace(&first_url, "FIRST_URL");
    let config_of = |text: String| {
        text.replace("FIRST_URL", &first_url)
            .replace("SECOND_URL", &second_url)
    };
    let alice = [("authorization", format!("Bearer {ALICE_KEY}"))];
    let alice: Vec<(&str, &str)> = alice.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for row in &rows {
        let answer = reload_with(&gateway, admin, &config_of((row.edit)(&base)));
        let (named, other) = if row.applied {
            ("applied", "restart_needed")
        } else {
            ("restart_needed", "applied")
        };
        assert!(
            keys(&answer, named).contains(&row.key.to_owned()),
            "{}: {answer}",
            row.key
        );
        assert!(
            !keys(&answer, other).contains(&row.key.to_owned()),
            "{}: {answer}",
            row.key
        );
        let url = gateway.url();
        let status = |answer: e2e_tests::Answer| answer.status;
        match row.key {
            "mcp_path" => {
                let v2 = url.replace("/mcp", "/v2/mcp");
                let headers = [
                    alice.clone(),
                    vec![
                        ("content-type", "application/json"),
                        ("accept", "application/json, text/event-stream"),
                    ],
                ]
                .concat();
                assert_eq!(
                    status(e2e_tests::send(Method::POST, &v2, &headers, CALL.to_owned()).await),
                    StatusCode::OK
                );
                assert_eq!(
                    status(post(&gateway, &alice, CALL).await),
                    StatusCode::NOT_FOUND
                );
            }
            "upstream.url" => {
                let before = second.count();
                assert_eq!(status(post(&gateway, &alice, CALL).await), StatusCode::OK);
                assert_eq!(
                    second.count(),
                    before + 1,
                    "the call reached the new upstream"
                );
            }
            "upstream.caller_header" => {
                assert_eq!(status(post(&gateway, &alice, CALL).await), StatusCode::OK);
                assert_eq!(first.last().headers["x-who"], "alice");
            }
            "upstream.authorization" => {
                assert_eq!(status(post(&gateway, &alice, CALL).await), StatusCode::OK);
                assert_eq!(
                    first.last().headers["authorization"],
                    "Bearer for-the-server"
                );
            }
            "rate_limit.requests" => {
                let codes = [
                    post(&gateway, &alice, CALL).await.status,
                    post(&gateway, &alice, CALL).await.status,
                ];
                assert_eq!(codes[1], StatusCode::TOO_MANY_REQUESTS, "{codes:?}");
            }
            "users" => assert_eq!(call(&gateway, BOB_KEY).await, StatusCode::UNAUTHORIZED),
            "authorization" => assert_eq!(
                status(post(&gateway, &alice, CALL).await),
                StatusCode::FORBIDDEN
            ),
            "limits.max_batch_messages" => {
                let batch = format!("[{CALL},{CALL}]");
                assert_eq!(
                    status(post(&gateway, &alice, &batch).await),
                    StatusCode::BAD_REQUEST
                );
            }
            "limits.max_uri_bytes" => {
                let long = format!("{url}?{}", "q".repeat(200));
                assert_eq!(
                    status(e2e_tests::send(Method::POST, &long, &alice, CALL.to_owned()).await),
                    StatusCode::URI_TOO_LONG
                );
            }
            // Restart rows: what is in force stays as it was.
            "listen" => assert_eq!(call(&gateway, ALICE_KEY).await, StatusCode::OK),
            "max_body_bytes" => assert_eq!(
                call(&gateway, ALICE_KEY).await,
                StatusCode::OK,
                "a body over 10 bytes still passes"
            ),
            _ => assert_eq!(call(&gateway, ALICE_KEY).await, StatusCode::OK),
        }
    }
    // Back to the file it started with: nothing left to restart for.
    let answer = reload_with(&gateway, admin, &config_of(base.clone()));
    assert!(keys(&answer, "restart_needed").is_empty(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_and_check_config_against_running_tell_what_a_reload_would_do_and_change_nothing()
{
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let (gateway, admin) = start(
        &upstream.url(),
        "allowed_origins = [\"https://a.example\"]",
        "",
    );
    let config = std::fs::read_to_string(gateway.config_path())
        .unwrap()
        .replace("https://a.example", "https://b.example")
        + "[xdp]\nmode = \"skb\"\n";
    std::fs::write(gateway.config_path(), config).unwrap();

    let text = stdout(&cli(admin, &["reload", "--dry-run"]));
    assert!(text.contains("would apply: allowed_origins"), "{text}");
    assert!(text.contains("would need a restart: xdp.mode"), "{text}");
    let path = gateway.config_path();
    let text = stdout(&cli(
        admin,
        &["check-config", path.to_str().unwrap(), "--against-running"],
    ));
    assert!(text.contains(": ok ("), "{text}");
    assert!(text.contains("would apply: allowed_origins"), "{text}");
    // Nothing was swapped, and no reload was audited.
    assert_eq!(curl_call_from(&gateway, "https://a.example"), 200);
    assert_eq!(curl_call_from(&gateway, "https://b.example"), 403);
    assert!(
        !gateway
            .audit_lines()
            .iter()
            .any(|line| line["event"] == "reload")
    );

    // Another file is not what a reload would read.
    let other = gateway.dir.path().join("other.toml");
    std::fs::copy(gateway.config_path(), &other).unwrap();
    let refused = cli(
        admin,
        &["check-config", other.to_str().unwrap(), "--against-running"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("a reload would not read this file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Runs a second gateway with `config` (its own MCP port): it must exit on its own; its stderr.
fn second_gateway_fails(dir: &Path, config: &str) -> String {
    let path = dir.join("second.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = KillOnDrop(
        Command::new(gateway_bin())
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second gateway kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

#[test]
fn a_second_gateway_on_one_host_fails_naming_the_admin_setting_to_change_and_the_first_serves_on() {
    // The default is no common tool's port (Prometheus has 9090, Envoy 9901).
    let output = Command::new(gateway_bin())
        .arg("status")
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("127.0.0.1:7390"));

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    for admin in [
        format!("127.0.0.1:{}", free_port()),
        socket.display().to_string(),
    ] {
        let first = Gateway::start_with(
            "http://127.0.0.1:9/mcp",
            Options {
                sections: &format!("[admin]\nlisten = \"{admin}\""),
                ..Options::default()
            },
        );
        let config = std::fs::read_to_string(first.config_path())
            .unwrap()
            .replace(
                &first.addr.to_string(),
                &format!("127.0.0.1:{}", free_port()),
            );
        let stderr = second_gateway_fails(dir.path(), &config);
        assert!(
            stderr.contains(&format!("admin.listen: {admin} is in use"))
                && stderr.contains("set [admin] listen to"),
            "{stderr}"
        );
        let (status, _) = if admin.contains('/') {
            curl("http://admin/healthz", None, &["--unix-socket", &admin])
        } else {
            curl(&format!("http://{admin}/healthz"), None, &[])
        };
        assert_eq!(status, 200, "the first gateway's admin listener serves on");
    }
}
