//! `gateway demo` (what `cargo xtask run` starts): a fresh key printed once, the built-in MCP
//! server behind the gateway, tools callable with that key and only with it.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use e2e_tests::{KillOnDrop, free_port, gateway_bin, send, spawn_listening, wait_for_port};
use hyper::{Method, StatusCode};

fn demo_command(dir: &Path, addr: SocketAddr) -> Command {
    let mut command = Command::new(gateway_bin());
    command
        .args([
            "demo",
            "--no-xdp",
            "--listen",
            &addr.to_string(),
            "--audit-path",
        ])
        .arg(dir.join("audit.jsonl"));
    command
}

fn call(name: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{arguments}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_tools_with_the_printed_key() {
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.path().join("demo.log");
    let _demo = spawn_listening(demo_command(dir.path(), addr), "demo", &log, addr);
    let printed = std::fs::read_to_string(&log).unwrap();
    let key = printed
        .lines()
        .find_map(|line| line.split_once("(shown once): "))
        .map(|(_, key)| key.trim().to_owned())
        .unwrap_or_else(|| panic!("the demo prints its key:\n{printed}"));
    let url = format!("http://{addr}/mcp");
    let bearer = format!("Bearer {key}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let answer = send(
        Method::POST,
        &url,
        &headers,
        call("add", r#"{"a":2,"b":40}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["result"]["content"][0]["text"], "42");
    let echo = send(
        Method::POST,
        &url,
        &headers,
        call("echo", r#"{"message":"hi"}"#),
    )
    .await;
    assert_eq!(echo.json()["result"]["content"][0]["text"], "hi");
    let wrong = send(
        Method::POST,
        &url,
        &[("authorization", "Bearer not-the-demo-key")],
        call("echo", "{}"),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}

/// A reader that goes away (`gateway demo | head -2`) must not take the gateway down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_keeps_serving_when_its_stdout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.path().join("demo.log");
    // A pipe whose reader is gone before the demo starts: its first write gets EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut command = demo_command(dir.path(), addr);
    command
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(std::fs::File::create(&log).unwrap());
    let mut demo = KillOnDrop(command.spawn().expect("start the demo"));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for_port(addr, &mut demo.0, "demo", &logs);
    let wrong = send(
        Method::POST,
        &format!("http://{addr}/mcp"),
        &[("authorization", "Bearer not-the-demo-key")],
        call("echo", "{}"),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        logs().contains("cannot print the demo banner"),
        "the demo says why no key was shown:\n{}",
        logs()
    );
}

/// `cargo xtask run -- demo --tls`: HTTPS with a certificate the demo makes and names; the curl
/// line it prints works as printed.
#[test]
fn the_demo_with_tls_serves_https_and_its_printed_curl_line_works() {
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.path().join("demo.log");
    let mut command = demo_command(dir.path(), addr);
    command.arg("--tls");
    let _demo = spawn_listening(command, "demo --tls", &log, addr);
    let printed = std::fs::read_to_string(&log).unwrap();
    let curl_line = printed
        .lines()
        .find(|line| line.trim_start().starts_with("curl -s --cacert "))
        .unwrap_or_else(|| panic!("the demo prints a curl line with its certificate:\n{printed}"));
    assert!(
        curl_line.contains(&format!("https://localhost:{}/mcp", addr.port())),
        "{curl_line}"
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("{curl_line} -w '\\n%{{http_code}}'"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.ends_with("\n200"),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("hello"), "{out}");
}

/// `cargo xtask run -- fleet-demo`: a local Redis and two nodes; the loop the banner prints,
/// run as printed, shows one limit across the fleet (five 200s, then 429s); Ctrl-C ends Redis and
/// both nodes.
#[test]
fn the_fleet_demo_shows_one_limit_across_two_nodes_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let first = free_port();
    let second = SocketAddr::from(([127, 0, 0, 1], first + 1));
    let log = dir.path().join("fleet-demo.log");
    let mut command = Command::new(gateway_bin());
    command
        .args([
            "fleet-demo",
            "--listen",
            &format!("127.0.0.1:{first}"),
            "--dir",
        ])
        .arg(dir.path().join("fleet"));
    let mut demo = spawn_listening(command, "fleet-demo (needs redis-server)", &log, second);
    let printed = || std::fs::read_to_string(&log).unwrap_or_default();
    e2e_tests::eventually("the banner", || printed().contains("Ctrl-C to stop"));
    let text = printed();
    let loop_line = text
        .lines()
        .find(|line| line.trim_start().starts_with("for node in"))
        .unwrap_or_else(|| panic!("the banner shows the loop:\n{text}"));
    let output = Command::new("bash")
        .args(["-c", loop_line])
        .output()
        .expect("bash");
    let codes = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        codes.split_whitespace().collect::<Vec<_>>(),
        ["200", "200", "200", "200", "200", "429", "429", "429"],
        "{text}"
    );
    let redis_port: u16 = text
        .split("Redis on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|port| port.parse().ok())
        .expect("the banner names Redis's port");
    // SAFETY: kill(2) of the demo, our child.
    unsafe { libc::kill(demo.0.id() as i32, libc::SIGINT) };
    let status = demo.0.wait().expect("the demo exits");
    assert!(status.success(), "{status}");
    for port in [first, first + 1, redis_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "nothing listens on {port} after the demo"
        );
    }
}
