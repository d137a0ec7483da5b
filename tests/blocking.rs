//! The feedback loop without XDP: a source that keeps failing authentication is blocked at
//! connection accept, its open connections are closed, others are unaffected, and the block
//! expires. Runs on loopback (127.0.0.2 is the offender, 127.0.0.1 the good client).

use std::net::IpAddr;

use e2e_tests::{
    ALICE_KEY, Gateway, RecordingUpstream, closed_by_server, connect_from, eventually,
    exchange_keepalive, json_reply, raw_post, raw_request,
};
use hyper::StatusCode;

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_block_the_source_in_userspace() {
    let upstream = RecordingUpstream::start(|_| {
        json_reply(StatusCode::OK, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)
    })
    .await;
    let gateway = Gateway::start(
        &upstream.url(),
        "[blocking]\nauth_failures = 3\nwindow_secs = 60\nblock_secs = 2\n",
    );
    assert!(
        gateway.logs().contains("XDP is disabled"),
        "the gateway says loudly that XDP is off"
    );
    let offender: IpAddr = "127.0.0.2".parse().unwrap();
    let good: IpAddr = "127.0.0.1".parse().unwrap();
    let alice = format!("Bearer {ALICE_KEY}");

    // An idle keep-alive connection the offender opened before misbehaving.
    let mut idle = connect_from(offender, gateway.addr).await.expect("connect");
    let first = exchange_keepalive(&mut idle, &raw_post(gateway.addr, &alice, CALL)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    for _ in 0..3 {
        let answer = raw_request(
            offender,
            gateway.addr,
            &raw_post(gateway.addr, "Bearer wrong-key-000000", CALL),
        )
        .await
        .expect("answer");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    eventually("the block is audited", || {
        gateway.audit_lines().iter().any(|l| l["event"] == "block")
    });
    let block = gateway
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "block")
        .unwrap();
    assert_eq!(block["ip"], "127.0.0.2");
    assert_eq!(block["reason"], "auth_failures");
    assert_eq!(block["enforced_in"], "userspace");

    // The open connection was closed, and new ones get no answer, even with a good key.
    assert!(
        closed_by_server(&mut idle).await,
        "the offender's open connection is closed"
    );
    assert!(
        raw_request(
            offender,
            gateway.addr,
            &raw_post(gateway.addr, &alice, CALL)
        )
        .await
        .is_err()
    );
    // Everyone else is served.
    let answer = raw_request(good, gateway.addr, &raw_post(gateway.addr, &alice, CALL))
        .await
        .expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The block lapses after block_secs and is audited.
    eventually("the block expires", || {
        gateway
            .audit_lines()
            .iter()
            .any(|l| l["event"] == "unblock")
    });
    let answer = raw_request(
        offender,
        gateway.addr,
        &raw_post(gateway.addr, &alice, CALL),
    )
    .await
    .expect("answer after expiry");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
