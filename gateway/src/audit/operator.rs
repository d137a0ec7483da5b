//! The audit log's lines of what the feedback loop and operators did: `block` and `unblock`
//! lines, `admin` actions and `reload`s.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::Serialize;

use super::line::{finish_line, rfc3339};

/// What a block covers: one address, or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockTarget {
    Address(IpAddr),
    Prefix(IpNet),
}

impl From<IpNet> for BlockTarget {
    fn from(target: IpNet) -> Self {
        if target.prefix_len() == target.max_prefix_len() {
            Self::Address(target.addr().to_canonical())
        } else {
            Self::Prefix(target.trunc())
        }
    }
}

impl std::fmt::Display for BlockTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Address(ip) => ip.fmt(f),
            Self::Prefix(prefix) => prefix.fmt(f),
        }
    }
}

/// A block as the audit log records it.
#[derive(Debug, Clone, Copy)]
pub struct BlockRecord<'a> {
    pub target: BlockTarget,
    pub reason: &'a str,
    /// `None`: until unblocked.
    pub duration: Option<Duration>,
    /// "xdp" or "userspace".
    pub enforced_in: &'a str,
    /// Who decided it ("local" is not written).
    pub origin: &'a str,
    /// Narrower blocks this one replaced when abuse spread over its network.
    pub folded: usize,
    /// The fleet node that decided it, when another node did.
    pub node: Option<&'a str>,
}

#[derive(Serialize)]
struct BlockLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    ts: SystemTime,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<IpNet>,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforced_in: Option<&'a str>,
    /// Who decided the block, when not this node's feedback loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    folded: Option<usize>,
    /// The fleet node that decided it, when another node did.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
}

/// `event: "block"`.
pub fn block_line(block: &BlockRecord<'_>) -> Vec<u8> {
    let (ip, prefix) = split(block.target);
    finish_line(&BlockLine {
        ts: SystemTime::now(),
        event: "block",
        ip,
        prefix,
        reason: block.reason,
        duration_secs: block.duration.map(|d| d.as_secs()),
        enforced_in: Some(block.enforced_in),
        origin: (block.origin != "local").then_some(block.origin),
        folded: (block.folded > 0).then_some(block.folded),
        node: block.node,
    })
}

/// `event: "unblock"`: a block ended (`reason`: "expired", "manual", or "folded" into a block
/// of its wider network), ended by another fleet `node` or by this one (`None`).
pub fn unblock_line(target: BlockTarget, reason: &str, node: Option<&str>) -> Vec<u8> {
    let (ip, prefix) = split(target);
    finish_line(&BlockLine {
        ts: SystemTime::now(),
        event: "unblock",
        ip,
        prefix,
        reason,
        duration_secs: None,
        enforced_in: None,
        origin: node.map(|_| "fleet"),
        folded: None,
        node,
    })
}

/// An operator's action (`event: "admin"`) or a reload (`event: "reload"`), as audited.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorRecord<'a> {
    #[serde(skip)]
    pub event: &'static str,
    /// `reload`, `block.add`, `allow.rm`, ...
    pub action: &'a str,
    /// Who asked: `signal`, or `admin` and the admin client's address.
    pub by: &'a str,
    /// `applied` or `rejected`.
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// SHA-256 of the configuration file a reload read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_sha256: Option<&'a str>,
    /// The operator's reason, or why the action was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize)]
struct OperatorLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    ts: SystemTime,
    event: &'static str,
    #[serde(flatten)]
    record: &'a OperatorRecord<'a>,
}

pub fn operator_line(record: &OperatorRecord<'_>) -> Vec<u8> {
    finish_line(&OperatorLine {
        ts: SystemTime::now(),
        event: record.event,
        record,
    })
}

fn split(target: BlockTarget) -> (Option<IpAddr>, Option<IpNet>) {
    match target {
        BlockTarget::Address(ip) => (Some(ip), None),
        BlockTarget::Prefix(prefix) => (None, Some(prefix)),
    }
}
