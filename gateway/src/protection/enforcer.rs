//! The one task that decides blocks and writes them into the XDP maps.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use gateway_ebpf::BlockReason;
use ipnet::IpNet;
use tokio::sync::mpsc;

use super::{Block, BlockSet, Command, Connections, Offense, Origin, block_set::host_address};
use crate::{
    audit::{self, AuditLog},
    config::BlockingPolicy,
    kernel::{
        XdpProgram,
        events::{RateEvents, forward_program_logs, next_rate_events, poll_rate_events},
        monotonic_now_ns,
    },
};

/// How often expired blocks are swept and idle offense counters dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most sources whose offenses are counted at once (bounds memory under a flood of addresses).
const MAX_TRACKED_SOURCES: usize = 100_000;

/// Owns the XDP maps (when attached) and decides blocks.
pub struct Enforcer {
    policy: BlockingPolicy,
    program: Option<XdpProgram>,
    allow: Vec<IpNet>,
    audit: AuditLog,
    pub(super) blocked: Arc<BlockSet>,
    pub(super) connections: Arc<Connections>,
    commands: mpsc::Receiver<Command>,
    /// Recent offenses per source and kind, oldest first.
    recent: HashMap<(IpAddr, Offense), VecDeque<Instant>>,
    /// Blocks so far per source and when the last ended, for escalation.
    history: HashMap<IpAddr, (u32, Instant)>,
}

impl Enforcer {
    pub(super) fn new(
        policy: BlockingPolicy,
        mut program: Option<XdpProgram>,
        allow: Vec<IpNet>,
        audit: AuditLog,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let blocked = Arc::new(BlockSet::default());
        if let Some(program) = program.as_mut() {
            match program.blocks() {
                Ok(entries) => {
                    for (ip, entry) in entries {
                        blocked.insert(IpNet::from(ip), entry.expires_at_ns);
                    }
                    if !blocked.is_empty() {
                        tracing::info!(
                            blocks = blocked.len(),
                            "kept the blocks from the pinned map"
                        );
                    }
                }
                Err(err) => tracing::error!(error = %err, "cannot read the pinned blocklist"),
            }
        }
        Self {
            policy,
            program,
            allow,
            audit,
            blocked,
            connections: Arc::new(Connections::default()),
            commands,
            recent: HashMap::new(),
            history: HashMap::new(),
        }
    }

    /// Runs until the gateway stops; dropping the task detaches the XDP program (pins stay).
    pub async fn run(mut self) {
        if let Some(logger) = self.program.as_mut().and_then(XdpProgram::take_logger) {
            tokio::spawn(forward_program_logs(logger));
        }
        let mut events = self.rate_events();
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle(command).await,
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

    fn rate_events(&mut self) -> Option<RateEvents> {
        let ring = match self.program.as_mut()?.take_events() {
            Ok(ring) => ring,
            Err(err) => {
                tracing::error!(error = %err, "no XDP events ring buffer");
                return None;
            }
        };
        poll_rate_events(ring)
            .map_err(|err| tracing::error!(error = %err, "cannot poll the XDP events ring buffer"))
            .ok()
    }

    pub(super) async fn handle(&mut self, command: Command) {
        match command {
            Command::Offense { source, offense } => self.record(source, offense).await,
            Command::Block(block) => {
                if self.covers_allowed(block.target) {
                    tracing::warn!(target = %block.target, origin = block.origin.as_str(), "not blocking: the target overlaps the allowlist");
                    return;
                }
                self.enforce(&block, None).await;
            }
            Command::Unblock { target, origin } => self.unblock(target, origin).await,
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
            self.escalate(source, offense.reason(), threshold).await;
        }
    }

    /// Blocks a source of this node's offenses, each repeat twice as long, up to the maximum.
    async fn escalate(&mut self, source: IpAddr, reason: BlockReason, offenses: usize) {
        let (previous, _) = self
            .history
            .get(&source)
            .copied()
            .unwrap_or((0, Instant::now()));
        let duration = self
            .policy
            .block
            .checked_mul(1u32 << previous.min(20))
            .unwrap_or(self.policy.max_block)
            .min(self.policy.max_block);
        self.history
            .insert(source, (previous + 1, Instant::now() + duration));
        let block = Block {
            target: IpNet::from(source),
            duration: Some(duration),
            reason,
            origin: Origin::Local,
        };
        self.enforce(&block, Some(offenses)).await;
    }

    /// Writes a block into the kernel (when attached) and the accept check, closes the target's
    /// open connections, and audits it.
    async fn enforce(&mut self, block: &Block, offenses: Option<usize>) {
        let expires_at_ns = block.duration.map_or(0, |duration| {
            monotonic_now_ns() + duration.as_nanos() as u64
        });
        let written = self
            .program
            .as_mut()
            .map(|program| match host_address(block.target) {
                Some(source) => program.block(source, expires_at_ns, block.reason),
                None => program.block_prefix(block.target, expires_at_ns, block.reason),
            });
        let enforced_in = match written {
            Some(Ok(())) => "xdp",
            Some(Err(err)) => {
                tracing::error!(target = %block.target, error = %err, "cannot write the block into the XDP map; enforcing it in userspace only");
                "userspace"
            }
            None => "userspace",
        };
        self.blocked.insert(block.target, expires_at_ns);
        let closed = self.connections.close_within(block.target);
        let source = audit::BlockTarget::from(block.target);
        tracing::warn!(
            %source,
            reason = block.reason.as_str(),
            origin = block.origin.as_str(),
            offenses,
            duration_secs = block.duration.map(|duration| duration.as_secs()),
            enforced_in,
            closed_connections = closed,
            "source blocked"
        );
        let line = audit::block_line(
            source,
            block.reason.as_str(),
            block.duration,
            enforced_in,
            block.origin.as_str(),
        );
        if let Err(err) = self.audit.write(line).await {
            tracing::error!(error = %err, "could not audit a block");
        }
    }

    async fn unblock(&mut self, target: IpNet, origin: Origin) {
        let removed_here = self.blocked.remove(target);
        let removed_in_kernel = match self.program.as_mut().map(|program| {
            match host_address(target) {
                Some(source) => program.unblock(source),
                None => program.unblock_prefix(target),
            }
        }) {
            Some(Ok(removed)) => removed,
            Some(Err(err)) => {
                tracing::error!(%target, error = %err, "cannot remove the block from the XDP map");
                false
            }
            None => false,
        };
        if !(removed_here || removed_in_kernel) {
            return;
        }
        if let Some(source) = host_address(target) {
            self.history.remove(&source);
        }
        tracing::info!(%target, origin = origin.as_str(), "source unblocked");
        self.audit_unblock(audit::BlockTarget::from(target), "manual")
            .await;
    }

    /// Removes expired blocks (kernel and userspace), audits each, forgets idle offense counters.
    pub(super) async fn sweep(&mut self) {
        let now_ns = monotonic_now_ns();
        let mut expired: Vec<IpNet> = Vec::new();
        if let Some(program) = self.program.as_mut() {
            match program.sweep_expired(now_ns) {
                Ok(entries) => expired.extend(entries.into_iter().map(|(ip, _)| IpNet::from(ip))),
                Err(err) => tracing::error!(error = %err, "cannot sweep the XDP blocklist"),
            }
        }
        for target in self.blocked.take_expired(now_ns) {
            if host_address(target).is_none()
                && let Some(program) = self.program.as_mut()
                && let Err(err) = program.unblock_prefix(target)
            {
                tracing::error!(%target, error = %err, "cannot remove an expired prefix block from the XDP map");
            }
            if !expired.contains(&target) {
                expired.push(target);
            }
        }
        for target in expired {
            tracing::info!(%target, "block expired");
            self.audit_unblock(audit::BlockTarget::from(target), "expired")
                .await;
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

    async fn audit_unblock(&self, target: audit::BlockTarget, reason: &str) {
        if let Err(err) = self.audit.write(audit::unblock_line(target, reason)).await {
            tracing::error!(error = %err, "could not audit an unblock");
        }
    }

    fn is_allowed(&self, source: IpAddr) -> bool {
        self.allow.iter().any(|prefix| prefix.contains(&source))
    }

    /// Whether blocking `target` would block an allowlisted address.
    fn covers_allowed(&self, target: IpNet) -> bool {
        self.allow
            .iter()
            .any(|allowed| allowed.contains(&target) || target.contains(allowed))
    }
}

#[cfg(test)]
#[path = "enforcer_tests.rs"]
mod tests;
