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
        refused_connections: 4,
        forbidden_calls: 4,
        window: Duration::from_secs(60),
        block: Duration::from_secs(10),
        max_block: Duration::from_secs(25),
        ipv6_prefix_len: 64,
        ipv4_escalation: None,
        ipv6_escalation: None,
    }
}

fn enforcer(allow: Vec<IpNet>) -> (Protection, Enforcer, tempfile::TempDir) {
    enforcer_with(policy(), allow)
}

fn enforcer_with(
    policy: BlockingPolicy,
    allow: Vec<IpNet>,
) -> (Protection, Enforcer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let audit = AuditLog::open(&dir.path().join("audit.jsonl"), false).unwrap();
    let (protection, enforcer) = start(policy, None, allow, audit, None);
    (protection, enforcer, dir)
}

/// Blocks inside one network of `prefix_len` bits that escalate to it.
fn escalating(ipv4: Option<(u8, usize)>, ipv6: Option<(u8, usize)>) -> BlockingPolicy {
    let level = |(prefix_len, blocks)| crate::config::Escalation { prefix_len, blocks };
    BlockingPolicy {
        ipv4_escalation: ipv4.map(level),
        ipv6_escalation: ipv6.map(level),
        ..policy()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// Three failed authentications (the test policy's threshold) from `source`.
async fn fail_three_times(enforcer: &mut Enforcer, source: &str) {
    for _ in 0..3 {
        enforcer.record(ip(source), Offense::AuthFailure).await;
    }
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
        .register(source, &CancellationToken::new(), usize::MAX)
        .unwrap();
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
    let source: IpAddr = "192.0.2.9".parse().unwrap();
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
    enforcer
        .block_offender(IpNet::from(source), BlockReason::Manual, 0)
        .await;
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
        .register(inside, &CancellationToken::new(), usize::MAX)
        .unwrap();
    let block = Block {
        target: prefix,
        duration: None,
        reason: BlockReason::Manual,
        origin: Origin::Operator,
        node: None,
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
            node: None,
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
            node: None,
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
            node: None,
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

#[tokio::test]
async fn offenses_spread_over_one_ipv6_64_add_up_to_a_block_of_the_64() {
    let (protection, mut enforcer, dir) = enforcer(Vec::new());
    let neighbour = protection
        .connections()
        .register(ip("fd00:7::99"), &CancellationToken::new(), usize::MAX)
        .unwrap();
    for source in ["fd00:7::2", "fd00:7::3"] {
        enforcer.record(ip(source), Offense::AuthFailure).await;
    }
    assert!(!protection.is_blocked(ip("fd00:7::2")));
    enforcer.record(ip("fd00:7::4"), Offense::AuthFailure).await;
    for inside in ["fd00:7::2", "fd00:7::5", "fd00:7::ffff:ffff:ffff"] {
        assert!(protection.is_blocked(ip(inside)), "{inside}");
    }
    assert!(!protection.is_blocked(ip("fd00:7:0:1::2")), "another /64");
    assert!(
        neighbour.closed().is_cancelled(),
        "the whole /64's connections close"
    );
    let lines = audit_lines(&dir);
    assert_eq!(lines[0]["event"], "block");
    assert_eq!(lines[0]["prefix"], "fd00:7::/64");
    assert!(lines[0].get("ip").is_none());
}

#[tokio::test]
async fn blocks_piling_up_in_one_48_become_one_block_of_the_48() {
    let (protection, mut enforcer, dir) =
        enforcer_with(escalating(None, Some((48, 3))), Vec::new());
    fail_three_times(&mut enforcer, "fd00:7:0:1::2").await;
    fail_three_times(&mut enforcer, "fd00:7:0:2::2").await;
    assert_eq!(enforcer.blocked.len(), 2);
    assert!(!protection.is_blocked(ip("fd00:7:0:5::2")));
    fail_three_times(&mut enforcer, "fd00:7:0:3::2").await;
    assert!(protection.is_blocked(ip("fd00:7:0:5::2")), "the whole /48");
    assert!(!protection.is_blocked(ip("fd00:8::2")), "not the next /48");
    assert_eq!(enforcer.blocked.len(), 1, "the /64s are folded into it");

    let lines = audit_lines(&dir);
    let wide = lines
        .iter()
        .find(|l| l["prefix"] == "fd00:7::/48")
        .expect("a block of the /48");
    assert_eq!(wide["event"], "block");
    assert_eq!(wide["folded"], 3);
    assert_eq!(wide["duration_secs"], 10);
    let folded: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "unblock" && l["reason"] == "folded")
        .map(|l| l["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(
        folded,
        ["fd00:7:0:1::/64", "fd00:7:0:2::/64", "fd00:7:0:3::/64"]
    );

    // When the /48's block expires, nothing comes back: the /64s were folded.
    enforcer.blocked.insert(net("fd00:7::/48"), 1);
    enforcer.sweep().await;
    assert!(enforcer.blocked.is_empty());
    assert!(!protection.is_blocked(ip("fd00:7:0:1::2")));
}

#[tokio::test]
async fn an_escalated_block_is_cut_around_an_allowlisted_network_inside_it() {
    let allowed = net("fd00:7:0:9::/64");
    let (protection, mut enforcer, _dir) =
        enforcer_with(escalating(None, Some((48, 2))), vec![allowed]);
    fail_three_times(&mut enforcer, "fd00:7:0:1::2").await;
    fail_three_times(&mut enforcer, "fd00:7:0:2::2").await;
    assert!(protection.is_blocked(ip("fd00:7:0:8::1")));
    assert!(protection.is_blocked(ip("fd00:7:0:ff00::1")));
    assert!(
        !protection.is_blocked(ip("fd00:7:0:9::1")),
        "the allowlist wins"
    );
    assert_eq!(
        enforcer.blocked.len(),
        16,
        "the /48 less one /64, in 16 prefixes"
    );
}

#[tokio::test]
async fn a_64_around_an_allowlisted_address_is_narrowed_rather_than_cover_it() {
    let (protection, mut enforcer, _dir) = enforcer_with(policy(), vec![net("fd00:7::10/128")]);
    fail_three_times(&mut enforcer, "fd00:7::2").await;
    assert!(protection.is_blocked(ip("fd00:7::2")));
    assert!(protection.is_blocked(ip("fd00:7::11")));
    assert!(!protection.is_blocked(ip("fd00:7::10")));
}

#[tokio::test]
async fn ipv4_escalates_to_its_24_only_when_asked() {
    let (protection, mut enforcer, _dir) = enforcer(Vec::new());
    for source in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        fail_three_times(&mut enforcer, source).await;
    }
    assert_eq!(enforcer.blocked.len(), 3, "by default each address alone");
    assert!(!protection.is_blocked(ip("192.0.2.4")));

    let (protection, mut enforcer, _dir) =
        enforcer_with(escalating(Some((24, 3)), None), Vec::new());
    for source in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        fail_three_times(&mut enforcer, source).await;
    }
    assert_eq!(enforcer.blocked.len(), 1);
    assert!(protection.is_blocked(ip("192.0.2.4")));
    assert!(!protection.is_blocked(ip("192.0.3.4")));
}

#[tokio::test]
async fn a_block_until_unblocked_inside_the_network_is_not_folded() {
    let (_protection, mut enforcer, _dir) =
        enforcer_with(escalating(None, Some((48, 2))), Vec::new());
    let kept = Block {
        target: net("fd00:7:0:1::/64"),
        duration: None,
        reason: BlockReason::Manual,
        origin: Origin::Operator,
        node: None,
    };
    enforcer.handle(Command::Block(kept)).await;
    fail_three_times(&mut enforcer, "fd00:7:0:2::2").await;
    let mut left: Vec<IpNet> = enforcer
        .blocked
        .within(net("fd00::/16"))
        .into_iter()
        .map(|(target, _)| target)
        .collect();
    left.sort();
    assert_eq!(left, [net("fd00:7::/48"), net("fd00:7:0:1::/64")]);
}

#[tokio::test]
async fn a_full_block_table_refuses_new_blocks_rather_than_grow() {
    let (protection, mut enforcer, _dir) = enforcer(Vec::new());
    for i in 0..MAX_BLOCKS as u32 {
        enforcer.blocked.insert(
            IpNet::from(IpAddr::from((10u32 << 24 | i).to_be_bytes())),
            0,
        );
    }
    fail_three_times(&mut enforcer, "192.0.2.77").await;
    assert!(!protection.is_blocked(ip("192.0.2.77")));
    assert_eq!(enforcer.blocked.len(), MAX_BLOCKS);
}
