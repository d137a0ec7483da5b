//! The chain's steps on their own, with the real limiter and policy store.

use super::*;
use crate::{
    config::BlockingPolicy,
    mcp::jsonrpc::inspect,
    policy::test_support::{bearer, settings},
    protection,
};

fn gateway(policy: PolicySettings, dir: &tempfile::TempDir) -> Gateway {
    let config = crate::config::Config::from_toml(
        "[upstream]\nurl = \"http://127.0.0.1:9/mcp\"\n[[users]]\nname = \"x\"\nkey_sha256 = \"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\"\n",
    )
    .unwrap();
    let Settings { node, serving, .. } = config.validate(None, None).unwrap();
    let audit = AuditLog::open(&dir.path().join("audit.jsonl"), false).unwrap();
    let blocking = BlockingPolicy {
        enabled: false,
        ..serving.blocking.clone()
    };
    let (protection, _enforcer) =
        protection::start(blocking, None, Vec::new(), audit.clone(), None);
    Gateway::new(
        Settings {
            node,
            serving,
            policy,
        },
        audit,
        protection,
    )
}

/// Runs the chain's limit step for one single-message call of `name`.
async fn limit_one_call(gateway: &Gateway, name: &str) -> Result<(), Refusal> {
    let in_force = gateway.in_force();
    let policy = &in_force.policy;
    let (caller, _) = policy
        .authenticate(&bearer(name), None)
        .expect("a known key");
    let peer = Peer::new("192.0.2.1".parse().unwrap(), None);
    let request = Request::new(());
    let mut call = Call {
        context: audit::RequestContext {
            request_id: "r",
            peer: &peer,
            caller: Some(&caller.name),
            auth: None,
            issuer: None,
            user_agent: None,
            session: None,
            http_method: request.method().clone(),
        },
        endpoint: Endpoint::Mcp,
        era: crate::mcp::era::Era::default(),
        body: None,
        received_at: std::time::Instant::now(),
        forwarded_at: None,
        list_filter: None,
        upstream_session: None,
        upstream_endpoint: None,
    };
    call.body = Some(inspect(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap());
    gateway.limit(policy, caller, &call).await
}

#[tokio::test]
async fn a_callers_limiter_window_survives_a_policy_swap() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(settings(&["alice"], 2), &dir);
    assert!(limit_one_call(&gateway, "alice").await.is_ok());
    assert!(limit_one_call(&gateway, "alice").await.is_ok());
    assert_eq!(
        limit_one_call(&gateway, "alice")
            .await
            .unwrap_err()
            .decision,
        Decision::RateLimited
    );

    // A reload adds Bob and keeps Alice's limit: her window is still full.
    gateway.replace_policy(settings(&["alice", "bob"], 2));
    let refusal = limit_one_call(&gateway, "alice").await.unwrap_err();
    assert_eq!(refusal.decision, Decision::RateLimited);
    assert!(limit_one_call(&gateway, "bob").await.is_ok());

    // A reload that raises her limit lets her on at once, counting what she already used.
    gateway.replace_policy(settings(&["alice", "bob"], 3));
    assert!(limit_one_call(&gateway, "alice").await.is_ok());
    assert!(limit_one_call(&gateway, "alice").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_can_be_swapped_while_requests_run() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Arc::new(gateway(settings(&["alice"], 1_000_000), &dir));
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let gateway = Arc::clone(&gateway);
            tokio::spawn(async move {
                for _ in 0..2_000 {
                    limit_one_call(&gateway, "alice").await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for generation in 0..200 {
        gateway.replace_policy(settings(
            &["alice", &format!("user{generation}")],
            1_000_000,
        ));
        tokio::task::yield_now().await;
    }
    for request in requests {
        request.await.unwrap();
    }
    assert!(
        gateway
            .in_force()
            .policy
            .authenticate(&bearer("user199"), None)
            .is_ok()
    );
}
