//! The feedback loop from the proxy to the kernel: sources that keep failing authentication,
//! hitting the rate limit, sending malformed requests or tripping the XDP packet limits are blocked
//! for a while, with longer blocks for repeat offenders.
//!
//! One task (the [`Enforcer`]) owns the XDP maps; the rest of the gateway talks to it through a
//! [`Protection`] handle. Blocks are enforced twice: in the kernel by the XDP program when it is
//! attached, and always in userspace at connection accept, so the gateway is never silently
//! unprotected. A block also closes the connections the source already has open.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use dashmap::DashMap;
use gateway_ebpf::{BlockReason, RateEvent};
use ipnet::IpNet;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    audit::{self, AuditLog},
    config::BlockingPolicy,
    xdp::{Kernel, monotonic_now_ns},
};

/// How often expired blocks are swept and idle offense counters dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most sources whose offenses are counted at once (bounds memory under a flood of addresses).
const MAX_TRACKED_SOURCES: usize = 100_000;
/// Offenses queued for the enforcer before new ones are dropped (never blocks a request).
const QUEUE_CAPACITY: usize = 65_536;

/// Something a source did that counts towards a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offense {
    /// Missing, malformed or unknown key.
    AuthFailure,
    /// Answered 429 by the per-caller limit.
    RateLimited,
    /// Body not JSON-RPC, too large, or headers contradicting it.
    Malformed,
    /// The XDP program started dropping the source for its packet or SYN rate.
    PacketRate,
}

impl Offense {
    fn reason(self) -> BlockReason {
        match self {
            Self::AuthFailure => BlockReason::AuthFailures,
            Self::RateLimited => BlockReason::RateLimited,
            Self::Malformed => BlockReason::Malformed,
            Self::PacketRate => BlockReason::PacketRate,
        }
    }
}

/// Sources blocked right now (userspace copy, checked at accept).
#[derive(Default)]
pub struct BlockSet {
    /// Source -> CLOCK_MONOTONIC expiry in ns (0 = until unblocked).
    entries: DashMap<IpAddr, u64>,
}

impl BlockSet {
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.entries
            .get(&ip.to_canonical())
            .is_some_and(|expires| *expires == 0 || monotonic_now_ns() < *expires)
    }
}

/// Open connections by source address, so a block can end them: dropping only the packets of a
/// live TCP connection would leave both ends retransmitting for minutes.
#[derive(Default)]
pub struct Connections {
    by_source: DashMap<IpAddr, Vec<(u64, CancellationToken)>>,
    next_id: AtomicU64,
}

/// A registered connection; unregisters itself when dropped.
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    source: IpAddr,
    id: u64,
    closed: CancellationToken,
}

impl ConnectionGuard {
    /// Cancelled when the connection's source gets blocked, or when its parent token is.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections
            .by_source
            .remove_if_mut(&self.source, |_, open| {
                open.retain(|(id, _)| *id != self.id);
                open.is_empty()
            });
    }
}

impl Connections {
    /// Registers a connection of `source`; its token is a child of `parent` (the server's
    /// shutdown), so the connection waits on one token for both.
    pub fn register(
        self: &Arc<Self>,
        source: IpAddr,
        parent: &CancellationToken,
    ) -> ConnectionGuard {
        let source = source.to_canonical();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = parent.child_token();
        self.by_source
            .entry(source)
            .or_default()
            .push((id, closed.clone()));
        ConnectionGuard {
            connections: Arc::clone(self),
            source,
            id,
            closed,
        }
    }

    /// Ends every open connection of `source`; returns how many.
    pub fn close_all(&self, source: IpAddr) -> usize {
        match self.by_source.remove(&source.to_canonical()) {
            Some((_, open)) => {
                open.iter().for_each(|(_, token)| token.cancel());
                open.len()
            }
            None => 0,
        }
    }

    pub fn open_count(&self, source: IpAddr) -> usize {
        self.by_source
            .get(&source.to_canonical())
            .map_or(0, |open| open.len())
    }
}

/// The rest of the gateway's handle on the feedback loop.
#[derive(Clone)]
pub struct Protection {
    blocked: Arc<BlockSet>,
    connections: Arc<Connections>,
    offenses: mpsc::Sender<(IpAddr, Offense)>,
}

impl Protection {
    pub fn is_blocked(&self, source: IpAddr) -> bool {
        self.blocked.is_blocked(source)
    }

    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Reports an offense. Never waits: under a flood the queue may be full, and then the offense
    /// is dropped (the source is already well on its way to a block).
    pub fn offense(&self, source: IpAddr, offense: Offense) {
        let _ = self.offenses.try_send((source.to_canonical(), offense));
    }
}

/// Owns the XDP maps (when attached) and decides blocks.
pub struct Enforcer {
    policy: BlockingPolicy,
    kernel: Option<Kernel>,
    allow: Vec<IpNet>,
    audit: AuditLog,
    blocked: Arc<BlockSet>,
    connections: Arc<Connections>,
    offenses: mpsc::Receiver<(IpAddr, Offense)>,
    /// Recent offenses per source and kind, oldest first.
    recent: HashMap<(IpAddr, Offense), VecDeque<Instant>>,
    /// Blocks so far per source and when the last ended, for escalation.
    history: HashMap<IpAddr, (u32, Instant)>,
}

/// Creates the handle and the task state. Blocks already in the (pinned) kernel map are taken over.
pub fn start(
    policy: BlockingPolicy,
    mut kernel: Option<Kernel>,
    allow: Vec<IpNet>,
    audit: AuditLog,
) -> (Protection, Enforcer) {
    let blocked = Arc::new(BlockSet::default());
    if let Some(kernel) = kernel.as_mut() {
        match kernel.blocks() {
            Ok(entries) => {
                for (ip, entry) in entries {
                    blocked.entries.insert(ip, entry.expires_at_ns);
                }
                if !blocked.entries.is_empty() {
                    tracing::info!(
                        blocks = blocked.entries.len(),
                        "kept the blocks from the pinned map"
                    );
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot read the pinned blocklist"),
        }
    }
    let connections = Arc::new(Connections::default());
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let protection = Protection {
        blocked: Arc::clone(&blocked),
        connections: Arc::clone(&connections),
        offenses: sender,
    };
    let enforcer = Enforcer {
        policy,
        kernel,
        allow,
        audit,
        blocked,
        connections,
        offenses: receiver,
        recent: HashMap::new(),
        history: HashMap::new(),
    };
    (protection, enforcer)
}

impl Enforcer {
    /// Runs until the gateway stops; dropping the task detaches the XDP program (pins stay).
    pub async fn run(mut self) {
        if let Some(logger) = self.kernel.as_mut().and_then(Kernel::take_logger) {
            tokio::spawn(forward_kernel_logs(logger));
        }
        let mut events = self.kernel.as_mut().and_then(|kernel| match kernel.take_events() {
            // SAFETY: the RingBuf owns its map's fd, which stays open and unchanged for as long
            // as the AsyncFd owns the RingBuf.
            Ok(ring) => unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|err| tracing::error!(error = %err, "cannot poll the XDP events ring buffer"))
                .ok(),
            Err(err) => {
                tracing::error!(error = %err, "no XDP events ring buffer");
                None
            }
        });
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                offense = self.offenses.recv() => match offense {
                    Some((source, offense)) => self.record(source, offense).await,
                    None => return,
                },
                rate_events = next_rate_events(&mut events) => {
                    for event in rate_events {
                        self.record(event.source.ip(), Offense::PacketRate).await;
                    }
                },
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    async fn record(&mut self, source: IpAddr, offense: Offense) {
        if !self.policy.enabled || self.is_allowed(source) || self.blocked.is_blocked(source) {
            return;
        }
        if self.recent.len() >= MAX_TRACKED_SOURCES && !self.recent.contains_key(&(source, offense))
        {
            return;
        }
        let threshold = match offense {
            Offense::AuthFailure => self.policy.auth_failures,
            Offense::RateLimited => self.policy.rate_limited,
            Offense::Malformed => self.policy.malformed,
            Offense::PacketRate => self.policy.packet_rate_events,
        } as usize;
        let now = Instant::now();
        let window = self.policy.window;
        let times = self.recent.entry((source, offense)).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            times.pop_front();
        }
        times.push_back(now);
        if times.len() >= threshold {
            self.recent.remove(&(source, offense));
            self.block(source, offense.reason(), threshold).await;
        }
    }

    async fn block(&mut self, source: IpAddr, reason: BlockReason, offenses: usize) {
        let (previous, _) = self
            .history
            .get(&source)
            .copied()
            .unwrap_or((0, Instant::now()));
        // Each repeat doubles the block, up to the maximum.
        let duration = self
            .policy
            .block
            .checked_mul(1u32 << previous.min(20))
            .unwrap_or(self.policy.max_block)
            .min(self.policy.max_block);
        let expires_at_ns = monotonic_now_ns() + duration.as_nanos() as u64;
        let enforced_in = match self
            .kernel
            .as_mut()
            .map(|kernel| kernel.block(source, expires_at_ns, reason))
        {
            Some(Ok(())) => "xdp",
            Some(Err(err)) => {
                tracing::error!(%source, error = %err, "cannot write the block into the XDP map; enforcing it in userspace only");
                "userspace"
            }
            None => "userspace",
        };
        self.blocked.entries.insert(source, expires_at_ns);
        let closed = self.connections.close_all(source);
        self.history
            .insert(source, (previous + 1, Instant::now() + duration));
        tracing::warn!(
            %source,
            reason = reason.as_str(),
            offenses,
            duration_secs = duration.as_secs(),
            enforced_in,
            closed_connections = closed,
            "source blocked"
        );
        let line = audit::block_line(source, reason.as_str(), Some(duration), enforced_in);
        if let Err(err) = self.audit.write(line).await {
            tracing::error!(error = %err, "could not audit a block");
        }
    }

    /// Removes expired blocks (kernel and userspace), audits each, forgets idle offense counters.
    async fn sweep(&mut self) {
        let now_ns = monotonic_now_ns();
        let mut expired: Vec<IpAddr> = Vec::new();
        if let Some(kernel) = self.kernel.as_mut() {
            match kernel.sweep_expired(now_ns) {
                Ok(entries) => expired.extend(entries.into_iter().map(|(ip, _)| ip)),
                Err(err) => tracing::error!(error = %err, "cannot sweep the XDP blocklist"),
            }
        }
        self.blocked.entries.retain(|ip, expires| {
            let active = *expires == 0 || now_ns < *expires;
            if !active && !expired.contains(ip) {
                expired.push(*ip);
            }
            active
        });
        for source in expired {
            tracing::info!(%source, "block expired");
            if let Err(err) = self
                .audit
                .write(audit::unblock_line(source, "expired"))
                .await
            {
                tracing::error!(error = %err, "could not audit an unblock");
            }
        }
        let now = Instant::now();
        let window = self.policy.window;
        self.recent.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < window)
        });
        // A source that behaved for as long as its last block lasted starts afresh.
        let max_block = self.policy.max_block;
        self.history
            .retain(|_, (_, ended)| now < *ended + max_block);
    }

    fn is_allowed(&self, source: IpAddr) -> bool {
        self.allow.iter().any(|prefix| prefix.contains(&source))
    }
}

/// Passes the XDP program's log records on as they arrive.
async fn forward_kernel_logs(logger: crate::xdp::KernelLogger) {
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd owns the logger.
    let logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(logger) => logger,
        Err(err) => {
            tracing::error!(error = %err, "cannot poll the XDP program's log");
            return;
        }
    };
    let mut logger = logger;
    loop {
        match logger.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(err) => {
                tracing::error!(error = %err, "the XDP program's log failed");
                return;
            }
        }
    }
}

/// Waits for the XDP program's next rate events (never completes without a ring buffer).
async fn next_rate_events(events: &mut Option<AsyncFd<RingBuf<MapData>>>) -> Vec<RateEvent> {
    let Some(events) = events.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = match events.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::error!(error = %err, "XDP events ring buffer failed");
                return std::future::pending().await;
            }
        };
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() == std::mem::size_of::<RateEvent>() {
                // SAFETY: the program writes whole RateEvents; read_unaligned copes with alignment.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RateEvent>()) });
            }
        }
        guard.clear_ready();
        if !batch.is_empty() {
            return batch;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            enforcer.blocked.entries.insert(source, 1);
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
        enforcer.block(source, BlockReason::Manual, 0).await;
        assert!(protection.is_blocked(source));
        enforcer.blocked.entries.insert(source, 1);
        enforcer.sweep().await;
        assert!(!protection.is_blocked(source));
        let lines = audit_lines(&dir);
        assert_eq!(lines.last().unwrap()["event"], "unblock");
        assert_eq!(lines.last().unwrap()["reason"], "expired");
    }

    #[test]
    fn connection_guards_unregister() {
        let connections = Arc::new(Connections::default());
        let source: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let parent = CancellationToken::new();
        let first = connections.register(source, &parent);
        let second = connections.register("192.0.2.1".parse().unwrap(), &parent);
        assert_eq!(
            connections.open_count(source),
            2,
            "v4-mapped and plain IPv4 are one source"
        );
        drop(first);
        assert_eq!(connections.open_count(source), 1);
        assert_eq!(connections.close_all(source), 1);
        assert!(second.closed().is_cancelled());
    }
}
