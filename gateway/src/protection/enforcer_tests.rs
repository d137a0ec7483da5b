//! The enforcer, command by command, without XDP: blocks land in the accept check and the audit log.

use super::*;
use crate::protection::{Protection, start};
use tokio_util::sync::CancellationToken;

fn policy() -> BlockingPolicy {
    BlockingPolicy {
        enabled: true,
        auth_failures: 3,
        rate_limited: 5,
        malformed: 2,
        packet_rate_events: 1,
        window: Duration::from_secs(60),
        block: Duration::from_secs(10),
        max_block: Duration::from_secs(25),
    }
}

fn enforcer(allow: Vec<IpNet>) -> (Protection, Enforcer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let audit = AuditLog::open(&dir.path().join("audit.jsonl"), false).unwrap();
    let (protection, enforcer) = start(policy(), None, allow, audit);
    (protection, enforcer, dir)
}

fn audit_lines(dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn threshold_offenses_block_and_close_connections() {
    let (protection, mut enforcer, dir) = enforcer(Vec::new());
    let source: IpAddr = "192.0.2.9".parse().unwrap();
    let connection = protection
        .connections()
        .register(source, &CancellationToken::new());
    for _ in 0..2 {
        enforcer.record(source, Offense::AuthFailure).await;
    }
    assert!(!protection.is_blocked(source));
    enforcer.record(source, Offense::AuthFailure).await;
    assert!(protection.is_blocked(source));
    assert!(
        connection.closed().is_cancelled(),
        "open connections are closed"
    );
    assert!(!protection.is_blocked("192.0.2.10".parse().unwrap()));
    let lines = audit_lines(&dir);
    assert_eq!(lines[0]["event"], "block");
    assert_eq!(lines[0]["ip"], "192.0.2.9");
    assert_eq!(lines[0]["reason"], "auth_failures");
    assert_eq!(lines[0]["duration_secs"], 10);
    assert_eq!(lines[0]["enforced_in"], "userspace");
}

#[tokio::test]
async fn kinds_are_counted_separately() {
    let (protection, mut enforcer, _dir) = enforcer(Vec::new());
    let source: IpAddr = "2001:db8::9".parse().unwrap();
    enforcer.record(source, Offense::AuthFailure).await;
    enforcer.record(source, Offense::Malformed).await;
    enforcer.record(source, Offense::AuthFailure).await;
    assert!(!protection.is_blocked(source));
    enforcer.record(source, Offense::Malformed).await;
    assert!(protection.is_blocked(source));
}

#[tokio::test]
async fn repeat_offenders_get_longer_blocks_up_to_the_maximum() {
    let (_protection, mut enforcer, dir) = enforcer(Vec::new());
    let source: IpAddr = "192.0.2.20".parse().unwrap();
    for _ in 0..3 {
        enforcer.record(source, Offense::PacketRate).await;
        // Let the block lapse so the next offense counts.
        enforcer.blocked.insert(IpNet::from(source), 1);
    }
    let durations: Vec<u64> = audit_lines(&dir)
        .iter()
        .filter(|l| l["event"] == "block")
        .map(|l| l["duration_secs"].as_u64().unwrap())
        .collect();
    assert_eq!(durations, [10, 20, 25]);
}

#[tokio::test]
async fn allowlisted_sources_are_never_blocked() {
    let (protection, mut enforcer, _dir) = enforcer(vec!["192.0.2.0/24".parse().unwrap()]);
    let source: IpAddr = "192.0.2.1".parse().unwrap();
    for _ in 0..10 {
        enforcer.record(source, Offense::AuthFailure).await;
    }
    assert!(!protection.is_blocked(source));
}

#[tokio::test]
async fn expired_blocks_are_swept_and_audited() {
    let (protection, mut enforcer, dir) = enforcer(Vec::new());
    let source: IpAddr = "192.0.2.30".parse().unwrap();
    enforcer.escalate(source, BlockReason::Manual, 0).await;
    assert!(protection.is_blocked(source));
    enforcer.blocked.insert(IpNet::from(source), 1);
    enforcer.sweep().await;
    assert!(!protection.is_blocked(source));
    let lines = audit_lines(&dir);
    assert_eq!(lines.last().unwrap()["event"], "unblock");
    assert_eq!(lines.last().unwrap()["reason"], "expired");
}

#[tokio::test]
async fn an_operator_block_of_a_prefix_covers_its_addresses_until_unblocked() {
    let (protection, mut enforcer, dir) = enforcer(Vec::new());
    let prefix: IpNet = "198.51.100.0/24".parse().unwrap();
    let inside: IpAddr = "198.51.100.7".parse().unwrap();
    let connection = protection
        .connections()
        .register(inside, &CancellationToken::new());
    let block = Block {
        target: prefix,
        duration: None,
        reason: BlockReason::Manual,
        origin: Origin::Operator,
    };
    enforcer.handle(Command::Block(block)).await;
    assert!(protection.is_blocked(inside));
    assert!(!protection.is_blocked("198.51.101.7".parse().unwrap()));
    assert!(
        connection.closed().is_cancelled(),
        "connections inside the prefix are closed"
    );
    enforcer.sweep().await;
    assert!(
        protection.is_blocked(inside),
        "a block without duration does not expire"
    );

    enforcer
        .handle(Command::Unblock {
            target: prefix,
            origin: Origin::Operator,
        })
        .await;
    assert!(!protection.is_blocked(inside));
    let lines = audit_lines(&dir);
    assert_eq!(lines[0]["event"], "block");
    assert_eq!(lines[0]["prefix"], "198.51.100.0/24");
    assert_eq!(lines[0]["reason"], "manual");
    assert_eq!(lines[0]["origin"], "operator");
    assert!(lines[0].get("duration_secs").is_none());
    assert_eq!(lines[1]["event"], "unblock");
    assert_eq!(lines[1]["prefix"], "198.51.100.0/24");
    assert_eq!(lines[1]["reason"], "manual");
}

#[tokio::test]
async fn a_block_from_elsewhere_never_covers_the_allowlist() {
    let (protection, mut enforcer, dir) = enforcer(vec!["192.0.2.0/28".parse().unwrap()]);
    for target in ["192.0.2.0/24", "192.0.2.5/32"] {
        let block = Block {
            target: target.parse().unwrap(),
            duration: Some(Duration::from_secs(60)),
            reason: BlockReason::Manual,
            origin: Origin::Fleet,
        };
        enforcer.handle(Command::Block(block)).await;
    }
    assert!(!protection.is_blocked("192.0.2.5".parse().unwrap()));
    assert!(audit_lines(&dir).is_empty());
}

#[tokio::test]
async fn offenses_arrive_as_commands_through_the_handle() {
    let (protection, enforcer, _dir) = enforcer(Vec::new());
    let source: IpAddr = "192.0.2.40".parse().unwrap();
    let task = tokio::spawn(enforcer.run());
    for _ in 0..3 {
        protection.offense(source, Offense::AuthFailure);
    }
    let blocked = async {
        while !protection.is_blocked(source) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("blocked after three failures");
    // An operator's unblock takes the same way in.
    protection
        .command(Command::Unblock {
            target: IpNet::from(source),
            origin: Origin::Operator,
        })
        .await
        .unwrap();
    let unblocked = async {
        while protection.is_blocked(source) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), unblocked)
        .await
        .expect("unblocked by the command");
    task.abort();
}
