//! Offenses counted across the fleet, and blocks fanned out to every node's kernel.
//!
//! Redis keeps two things for blocks, under one hash tag so Redis Cluster places them together:
//! - `<prefix>:{blocks}:active`, a hash of the blocks in force: target -> "<until, ms since the
//!   Unix epoch (0: until unblocked)> <reason> <deciding node>";
//! - `<prefix>:{blocks}:events`, a stream of block and unblock events, trimmed to about
//!   [`STREAM_MAXLEN`] entries.
//!
//! Pub/Sub alone would lose what a disconnected node missed. Here a node that starts, restarts or
//! reconnects notes the stream's last id, loads the hash (dropping expired entries), and then
//! reads the stream from that id: an event that lands in between is applied twice (harmless),
//! never missed. Each (re)connection also writes back the blocks this node holds that the hash
//! lacks (`HSETNX`, with an event for the others): blocks decided while Redis was away, and every
//! block after Redis lost its data, as long as one node still holds it.
//!
//! Expiry travels as wall-clock time (nodes keep NTP time; each converts to its own
//! CLOCK_MONOTONIC when writing its XDP map), so a late node gets only what is left of a block.
//!
//! Offenses: `<prefix>:off:<source>:<kind>` is a sliding log like the limiter's; the offense that
//! reaches the threshold empties it and makes its node decide the block (escalation included),
//! which then reaches the others as an event.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use gateway_ebpf::BlockReason;
use ipnet::IpNet;
use redis::{
    Script,
    streams::{StreamId, StreamRangeReply, StreamReadReply},
};
use tokio::sync::mpsc;

use super::{Event, Link};
use crate::{
    config::FleetSettings,
    protection::{Block, Command, EnforcerStopped, Offense, Origin, Protection},
};

/// Block events kept in the stream: far more than a node can miss between two reconnections
/// (which load the active hash anyway).
const STREAM_MAXLEN: u32 = 10_000;
/// How long one `XREAD` waits for events before asking again.
const READ_BLOCK_MS: u64 = 2_000;

/// Adds an offense to the source's log; when it reaches the threshold, empties it and says how
/// many there were (else 0).
const OFFENSE_LOG: &str = r"
local now_time = redis.call('TIME')
local now = tonumber(now_time[1]) * 1000000 + tonumber(now_time[2])
local threshold = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[3])
local count = redis.call('ZCARD', KEYS[1])
if count >= threshold then
  redis.call('DEL', KEYS[1])
  return count
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
return 0
";

/// Records a block (`block`), an unblock (`unblock`), or a block only if the hash lacks it
/// (`restore`), and tells the stream when something changed.
const PUBLISH: &str = r"
local op = ARGV[1]
if op == 'unblock' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  local value = ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5]
  if op == 'restore' then
    if redis.call('HSETNX', KEYS[1], ARGV[2], value) == 0 then
      return 0
    end
    op = 'block'
  else
    redis.call('HSET', KEYS[1], ARGV[2], value)
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'op', op, 'target', ARGV[2],
  'until_ms', ARGV[3], 'reason', ARGV[4], 'node', ARGV[5])
return 1
";

/// The fleet's key names.
pub struct Keys {
    prefix: String,
    active: String,
    events: String,
    node: Arc<str>,
    /// Makes each offense's member unique (see `member_prefix`).
    members: String,
}

impl Keys {
    pub fn new(settings: &FleetSettings, members: String) -> Self {
        let prefix = &settings.key_prefix;
        Self {
            prefix: prefix.clone(),
            active: format!("{prefix}:{{blocks}}:active"),
            events: format!("{prefix}:{{blocks}}:events"),
            node: Arc::clone(&settings.node_name),
            members,
        }
    }

    fn offense(&self, offender: IpNet, offense: Offense) -> String {
        format!("{}:off:{offender}:{}", self.prefix, offense.as_str())
    }
}

/// Takes the enforcer's events to Redis, one at a time.
pub async fn publish(
    link: Link,
    keys: Arc<Keys>,
    mut events: mpsc::Receiver<Event>,
    protection: Protection,
) {
    let offense_log = Script::new(OFFENSE_LOG);
    let publish = Script::new(PUBLISH);
    let mut counted: u64 = 0;
    while let Some(event) = events.recv().await {
        match event {
            Event::Offense {
                offender,
                offense,
                threshold,
                window,
            } => {
                counted += 1;
                let key = keys.offense(offender, offense);
                let member = format!("{}:{counted}", keys.members);
                let window_us = window.as_micros() as u64;
                let reached: Result<u32, _> = link
                    .run(async |mut connection| {
                        offense_log
                            .key(&key)
                            .arg(threshold)
                            .arg(window_us)
                            .arg(&member)
                            .invoke_async(&mut connection)
                            .await
                    })
                    .await;
                let command = match reached {
                    Ok(0) => continue,
                    Ok(count) => Command::SharedThreshold {
                        offender,
                        offense,
                        count,
                    },
                    Err(_) => Command::CountLocally { offender, offense },
                };
                if protection.command(command).await.is_err() {
                    return;
                }
            }
            Event::Block {
                target,
                duration,
                reason,
            } => {
                let until_ms = duration.map_or(0, wall_ms_after);
                let _ = write(
                    &link,
                    &publish,
                    &keys,
                    "block",
                    target,
                    until_ms,
                    reason.as_str(),
                    &keys.node,
                )
                .await;
            }
            Event::Unblock { target } => {
                let _ = write(
                    &link, &publish, &keys, "unblock", target, 0, "manual", &keys.node,
                )
                .await;
            }
        }
    }
}

/// One `PUBLISH` script call; `true` when it changed something.
#[allow(clippy::too_many_arguments)] // the script's arguments, named
async fn write(
    link: &Link,
    publish: &Script,
    keys: &Keys,
    op: &str,
    target: IpNet,
    until_ms: u64,
    reason: &str,
    node: &str,
) -> Result<bool, super::Unavailable> {
    let target = target.to_string();
    link.try_run(async |mut connection| {
        publish
            .key(&keys.active)
            .key(&keys.events)
            .arg(op)
            .arg(&target)
            .arg(until_ms)
            .arg(reason)
            .arg(node)
            .arg(STREAM_MAXLEN)
            .invoke_async(&mut connection)
            .await
    })
    .await
}

/// Follows the fleet's blocks for as long as the process runs, reconnecting with a growing pause.
pub async fn follow(link: Link, keys: Arc<Keys>, protection: Protection) {
    let mut pause = Duration::from_millis(100);
    loop {
        match follow_once(&link, &keys, &protection).await {
            Ok(()) => return,
            Err(err) => {
                tracing::debug!(error = %err, "fleet: block stream interrupted; reconnecting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Catches up (the active hash), republishes what only this node holds, then reads the stream
/// until the connection fails (`Err`) or the enforcer stops (`Ok`).
async fn follow_once(link: &Link, keys: &Keys, protection: &Protection) -> redis::RedisResult<()> {
    let mut connection = link.dedicated().await?;
    let last: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&keys.events)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut connection)
        .await?;
    let mut last_id = last
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone());
    let active: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&keys.active)
        .query_async(&mut connection)
        .await?;
    let now_ms = wall_ms_after(Duration::ZERO);
    let mut loaded = 0;
    for (target, value) in &active {
        let mut fields = value.split(' ');
        let (Some(until_ms), Some(reason), Some(node)) = (
            fields.next().and_then(|v| v.parse::<u64>().ok()),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if until_ms != 0 && until_ms <= now_ms {
            let _: redis::RedisResult<u32> = redis::cmd("HDEL")
                .arg(&keys.active)
                .arg(target)
                .query_async(&mut connection)
                .await;
            continue;
        }
        match apply(keys, protection, "block", target, until_ms, reason, node).await {
            Ok(true) => loaded += 1,
            Ok(false) => {}
            Err(EnforcerStopped) => return Ok(()),
        }
    }
    restore(link, keys, protection).await;
    tracing::info!(
        active = active.len(),
        loaded,
        "fleet: loaded the active blocks; following block events"
    );
    loop {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(&keys.events)
            .arg(&last_id)
            .query_async(&mut connection)
            .await?;
        for entry in reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
        {
            last_id.clone_from(&entry.id);
            if apply_event(keys, protection, &entry).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Applies one stream entry.
async fn apply_event(
    keys: &Keys,
    protection: &Protection,
    entry: &StreamId,
) -> Result<bool, EnforcerStopped> {
    let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
    let until_ms = field("until_ms").parse().unwrap_or(0);
    let (op, target, reason, node) = (field("op"), field("target"), field("reason"), field("node"));
    apply(keys, protection, &op, &target, until_ms, &reason, &node).await
}

/// Gives the enforcer a block or unblock another node decided; `Ok(false)` for this node's own
/// events, expired blocks and unreadable entries.
async fn apply(
    keys: &Keys,
    protection: &Protection,
    op: &str,
    target: &str,
    until_ms: u64,
    reason: &str,
    node: &str,
) -> Result<bool, EnforcerStopped> {
    if node == &*keys.node {
        return Ok(false);
    }
    let Ok(target) = target.parse::<IpNet>() else {
        tracing::warn!(
            target,
            "fleet: ignoring a block event with an unreadable target"
        );
        return Ok(false);
    };
    let node: Option<Arc<str>> = Some(node.into());
    let command = match op {
        "block" => {
            let duration = match until_ms {
                0 => None,
                until_ms => match until_ms.checked_sub(wall_ms_after(Duration::ZERO)) {
                    Some(left) if left > 0 => Some(Duration::from_millis(left)),
                    _ => return Ok(false),
                },
            };
            Command::Block(Block {
                target,
                duration,
                reason: reason_named(reason),
                origin: Origin::Fleet,
                node,
            })
        }
        "unblock" => Command::Unblock {
            target,
            origin: Origin::Fleet,
            node,
        },
        _ => return Ok(false),
    };
    protection.command(command).await.map(|()| true)
}

/// Writes back the blocks this node holds that Redis lacks.
async fn restore(link: &Link, keys: &Keys, protection: &Protection) {
    let Ok(snapshot) = protection.snapshot().await else {
        return;
    };
    let publish = Script::new(PUBLISH);
    let mut restored = 0;
    for block in snapshot.blocks {
        let node = match block.origin {
            Origin::Local | Origin::Operator => Arc::clone(&keys.node),
            Origin::Fleet => block.node.unwrap_or_else(|| Arc::clone(&keys.node)),
            Origin::PreviousRun => continue,
        };
        let until_ms = block.remaining.map_or(0, wall_ms_after);
        match write(
            link,
            &publish,
            keys,
            "restore",
            block.target,
            until_ms,
            block.reason.as_str(),
            &node,
        )
        .await
        {
            Ok(true) => restored += 1,
            Ok(false) => {}
            Err(_) => return,
        }
    }
    if restored > 0 {
        tracing::warn!(
            restored,
            "fleet: published blocks Redis did not have (decided during an outage, or Redis lost its data)"
        );
    }
}

/// Milliseconds since the Unix epoch, `after` from now.
fn wall_ms_after(after: Duration) -> u64 {
    (SystemTime::now() + after)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn reason_named(name: &str) -> BlockReason {
    (0..16)
        .filter_map(BlockReason::from_u32)
        .find(|reason| reason.as_str() == name)
        .unwrap_or(BlockReason::Manual)
}
