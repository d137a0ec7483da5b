//! Limits shared by every node: an exact sliding log per key in a Redis sorted set, checked and
//! updated by one Lua script, so no window of `window_secs` ever admits more than the limit,
//! whichever nodes the requests reach.
//!
//! Why a sliding log: it is the only one of the three usual shared designs that keeps the
//! single-node limiter's guarantee exactly. GCRA keeps constant state but admits a burst after
//! idle that a sliding window of the same length would refuse (it limits a rate, not a window's
//! count); leases (each node reserving part of a hot caller's budget) cut round trips but leave
//! slots unused on one node while another refuses. The log costs one round trip per limited
//! request (one `EVALSHA`) and one sorted-set member per admission inside the window (about
//! 100 bytes: 1 MB for a caller allowed 10,000 a window). The script reads Redis's own clock
//! (`TIME`), so the nodes' clocks do not matter.
//!
//! Keys: `<prefix>:rl:{<caller>}` and `<prefix>:rl:{<caller>}:<tool>`: the braces are a Redis
//! Cluster hash tag, so one caller's keys live in one slot. Only caller names (from the
//! configuration) and configured tool names go into keys.
//!
//! When Redis is away, `on_unavailable = "local"` counts in this node's own [`SlidingWindow`]
//! (so each node admits up to the limit: the fleet may admit up to N times it during an
//! outage), `"refuse"` refuses.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::Script;

use super::link::Link;
use crate::{
    config::{OnUnavailable, RateLimit},
    limit::{Denied, Limiter, NotAdmitted, SlidingWindow},
};

/// Removes what left the window, admits `cost` if they fit and says how long until enough
/// slots free if not. Times in microseconds of Redis's clock.
const SLIDING_LOG: &str = r"
local now_time = redis.call('TIME')
local now = tonumber(now_time[1]) * 1000000 + tonumber(now_time[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used + cost <= limit then
  for i = 1, cost do
    redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. i)
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], used + cost - limit - 1, used + cost - limit - 1, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
";

/// A limiter shared through Redis, counting locally while Redis is away.
pub struct FleetLimiter {
    link: Link,
    script: Script,
    prefix: String,
    /// Makes each admission's member unique: `<node>.<random>:<n>`.
    members: String,
    admissions: AtomicU64,
    local: SlidingWindow,
    on_unavailable: OnUnavailable,
}

impl FleetLimiter {
    pub fn new(link: Link, prefix: &str, members: String, on_unavailable: OnUnavailable) -> Self {
        Self {
            link,
            script: Script::new(SLIDING_LOG),
            prefix: prefix.to_owned(),
            members,
            admissions: AtomicU64::new(0),
            local: SlidingWindow::default(),
            on_unavailable,
        }
    }

    /// The Redis key of a limiter key: the caller (before `\u{1f}`) is the hash tag.
    fn redis_key(&self, key: &str) -> String {
        match key.split_once('\u{1f}') {
            Some((caller, tool)) => format!("{}:rl:{{{caller}}}:{tool}", self.prefix),
            None => format!("{}:rl:{{{key}}}", self.prefix),
        }
    }

    async fn admit_shared(
        &self,
        key: &str,
        limit: RateLimit,
        cost: u32,
    ) -> Result<u64, NotAdmitted> {
        let redis_key = self.redis_key(key);
        let member = format!(
            "{}:{}",
            self.members,
            self.admissions.fetch_add(1, Ordering::Relaxed)
        );
        let window_us = limit.window.as_micros() as u64;
        let script = &self.script;
        self.link
            .run(async |mut connection| {
                script
                    .key(&redis_key)
                    .arg(limit.requests.get())
                    .arg(window_us)
                    .arg(cost)
                    .arg(&member)
                    .invoke_async(&mut connection)
                    .await
            })
            .await
            .map_err(|_| NotAdmitted::Unavailable)
    }
}

impl Limiter for FleetLimiter {
    async fn admit(&self, key: &Arc<str>, limit: RateLimit, cost: u32) -> Result<(), NotAdmitted> {
        let cost = cost.max(1);
        if cost > limit.requests.get() {
            return Err(NotAdmitted::Over(Denied {
                retry_after: limit.window,
                limit,
                exceeds_limit: true,
            }));
        }
        match self.admit_shared(key, limit, cost).await {
            Ok(0) => Ok(()),
            Ok(wait_us) => Err(NotAdmitted::Over(Denied {
                retry_after: Duration::from_micros(wait_us),
                limit,
                exceeds_limit: false,
            })),
            Err(_) if self.on_unavailable == OnUnavailable::Local => {
                self.local.admit(key, limit, cost).await
            }
            Err(unavailable) => Err(unavailable),
        }
    }

    /// This node's own count (what it admitted while counting locally); the shared count is in
    /// Redis (`ZCARD`).
    fn used(&self, key: &str, window: Duration) -> u64 {
        self.local.used(key, window)
    }

    fn sweep(&self, idle_after: Duration) {
        self.local.sweep(idle_after);
    }
}
