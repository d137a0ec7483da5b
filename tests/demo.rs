//! `gateway demo` (what `cargo xtask run` starts): a fresh key printed once, the built-in MCP
//! server behind the gateway, tools callable with that key and only with it.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use e2e_tests::{KillOnDrop, free_port, gateway_bin, send};
use hyper::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_tools_with_the_printed_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut demo = KillOnDrop(
        Command::new(gateway_bin())
            .args([
                "demo",
                "--no-xdp",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--audit-path",
            ])
            .arg(dir.path().join("audit.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo"),
    );
    let stdout = demo.0.stdout.take().expect("stdout");
    let key = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once("(shown once): ")
                .map(|(_, key)| key.trim().to_owned())
        })
        .expect("the demo prints its key");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let bearer = format!("Bearer {key}");
    let call = |name: &str, arguments: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{arguments}}}}}"#
        )
    };
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let mut answer = None;
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            answer = Some(
                send(
                    Method::POST,
                    &url,
                    &headers,
                    call("add", r#"{"a":2,"b":40}"#),
                )
                .await,
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answer.expect("the demo listens");
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
