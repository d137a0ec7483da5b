//! The one task that decides blocks and writes them into the XDP maps.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use gateway_ebpf::{BLOCKLIST_CAPACITY, BlockReason, PREFIX_CAPACITY};
use ipnet::IpNet;
use tokio::sync::mpsc;

use super::{
    Block, BlockSet, BlockView, Command, Connections, Offense, Origin, ProtectionSettings,
    SharedBlocks, Snapshot,
    networks::{offender_of, offenders_among, outside_allowlist, wider_network},
};
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
/// Most offenders whose offenses are counted at once (bounds memory under a flood of addresses);
/// offenses of further ones are ignored until counters go idle.
const MAX_TRACKED_SOURCES: usize = 100_000;
/// Most blocks at once, as many as the kernel's two blocklists hold; further local blocks are
/// refused (logged) until some expire, and the sources are still refused by the proxy itself.
const MAX_BLOCKS: usize = (BLOCKLIST_CAPACITY + PREFIX_CAPACITY) as usize;

/// Owns the XDP maps (when attached) and decides blocks.
pub struct Enforcer {
    policy: BlockingPolicy,
    program: Option<XdpProgram>,
    /// The allowlist in force: the configuration's, then the operator's additions.
    allow: Vec<IpNet>,
    /// The configuration's part of `allow` (a reload replaces it; the operator's part stays).
    configured_allow: Vec<IpNet>,
    /// Every block in force, for listing: why, who decided, until when.
    listed: BTreeMap<IpNet, Listed>,
    audit: AuditLog,
    pub(super) blocked: Arc<BlockSet>,
    pub(super) connections: Arc<Connections>,
    commands: mpsc::Receiver<Command>,
    /// Recent offenses per offender (an address, or an IPv6 prefix) and kind, oldest first.
    recent: HashMap<(IpNet, Offense), VecDeque<Instant>>,
    /// Blocks so far per offender or escalated network, and when the last ends: repeats last
    /// longer.
    history: HashMap<IpNet, (u32, Instant)>,
    /// The fleet this node belongs to: offenses count there, blocks are published there.
    fleet: Option<Box<dyn SharedBlocks>>,
}

/// A block as listed: reason, who decided, CLOCK_MONOTONIC expiry in ns (0: until unblocked).
#[derive(Debug, Clone)]
struct Listed {
    reason: BlockReason,
    origin: Origin,
    /// The fleet node that decided it, if another one did.
    node: Option<Arc<str>>,
    expires_at_ns: u64,
}

impl Enforcer {
    pub(super) fn new(
        policy: BlockingPolicy,
        mut program: Option<XdpProgram>,
        allow: Vec<IpNet>,
        audit: AuditLog,
        commands: mpsc::Receiver<Command>,
        fleet: Option<Box<dyn SharedBlocks>>,
    ) -> Self {
        let blocked = Arc::new(BlockSet::default());
        let mut listed = BTreeMap::new();
        if let Some(program) = program.as_mut() {
            match program.blocks() {
                Ok(entries) => {
                    for (target, entry) in entries {
                        blocked.insert(target, entry.expires_at_ns);
                        let reason =
                            BlockReason::from_u32(entry.reason).unwrap_or(BlockReason::Manual);
                        listed.insert(
                            target,
                            Listed {
                                reason,
                                origin: Origin::PreviousRun,
                                node: None,
                                expires_at_ns: entry.expires_at_ns,
                            },
                        );
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
            configured_allow: allow.clone(),
            allow,
            listed,
            audit,
            blocked,
            connections: Arc::new(Connections::default()),
            commands,
            recent: HashMap::new(),
            history: HashMap::new(),
            fleet,
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
                // The fleet repeats what this node holds already when it catches up.
                if block.origin == Origin::Fleet && self.listed.contains_key(&block.target) {
                    return;
                }
                self.enforce(&block, None, 0).await;
            }
            Command::Unblock {
                target,
                origin,
                node,
            } => self.unblock(target, origin, node).await,
            Command::SharedThreshold {
                offender,
                offense,
                count,
            } => {
                if self.listed.contains_key(&offender) {
                    return;
                }
                self.block_offender(offender, offense.reason(), count as usize)
                    .await;
            }
            Command::CountLocally { offender, offense } => {
                self.count_here(offender, offense).await;
            }
            Command::Allow { target, origin } => {
                if !self.allow.contains(&target) {
                    self.allow.push(target);
                }
                self.apply_allowlist(origin).await;
            }
            Command::Disallow { target, origin } => {
                self.allow.retain(|allowed| *allowed != target);
                self.configured_allow.retain(|allowed| *allowed != target);
                self.apply_allowlist(origin).await;
            }
            Command::Reconfigure(settings) => self.reconfigure(*settings).await,
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
        }
    }

    /// A reloaded configuration: the new blocking policy, allowlist (the operator's additions
    /// stay) and XDP settings.
    async fn reconfigure(&mut self, settings: ProtectionSettings) {
        self.policy = settings.blocking;
        let added: Vec<IpNet> = self
            .allow
            .iter()
            .filter(|prefix| !self.configured_allow.contains(prefix))
            .copied()
            .collect();
        self.allow = settings.allow.clone();
        self.allow.extend(
            added
                .into_iter()
                .filter(|prefix| !settings.allow.contains(prefix)),
        );
        self.configured_allow = settings.allow;
        if let Some(Err(err)) = self.program.as_mut().map(|p| p.set_config(&settings.xdp)) {
            tracing::error!(error = %err, "cannot write the reloaded XDP settings; the old ones stay in the kernel");
        }
        self.apply_allowlist(Origin::Operator).await;
    }

    /// Writes the allowlist into the kernel and ends every block that overlaps it (in the kernel
    /// the allowlist wins over a wider block; at accept, only no block does).
    async fn apply_allowlist(&mut self, origin: Origin) {
        if let Some(Err(err)) = self.program.as_mut().map(|p| p.set_allowlist(&self.allow)) {
            tracing::error!(error = %err, "cannot write the allowlist into the XDP map");
        }
        let overlapping: Vec<IpNet> = self
            .listed
            .keys()
            .filter(|target| self.covers_allowed(**target))
            .copied()
            .collect();
        for target in overlapping {
            if self.remove_block(target) {
                tracing::info!(%target, origin = origin.as_str(), "block ended: the target is allowlisted now");
                self.audit_unblock(audit::BlockTarget::from(target), "allowlisted", None)
                    .await;
            }
        }
    }

    fn snapshot(&mut self) -> Snapshot {
        let now_ns = monotonic_now_ns();
        let blocks = self
            .listed
            .iter()
            .filter(|(_, listed)| listed.expires_at_ns == 0 || listed.expires_at_ns > now_ns)
            .map(|(target, listed)| BlockView {
                target: *target,
                reason: listed.reason,
                origin: listed.origin,
                node: listed.node.clone(),
                remaining: (listed.expires_at_ns != 0)
                    .then(|| Duration::from_nanos(listed.expires_at_ns - now_ns)),
            })
            .collect();
        let xdp = self.program.as_ref().and_then(|program| {
            program
                .stats()
                .map_err(|err| tracing::error!(error = %err, "cannot read the XDP counters"))
                .ok()
        });
        Snapshot {
            blocks,
            allow: self.allow.clone(),
            xdp,
        }
    }

    async fn record(&mut self, source: IpAddr, offense: Offense) {
        if !self.policy.enabled || self.is_allowed(source) || self.blocked.is_blocked(source) {
            return;
        }
        let offender = offender_of(source, &self.policy);
        if let Some(fleet) = self.fleet.as_ref().filter(|fleet| fleet.is_up()) {
            fleet.count_offense(
                offender,
                offense,
                self.threshold(offense),
                self.policy.window,
            );
            return;
        }
        self.count_here(offender, offense).await;
    }

    /// How many offenses of a kind within the window lead to a block.
    fn threshold(&self, offense: Offense) -> u32 {
        match offense {
            Offense::AuthFailure => self.policy.auth_failures,
            Offense::RateLimited => self.policy.rate_limited,
            Offense::Malformed => self.policy.malformed,
            Offense::PacketRate => self.policy.packet_rate_events,
            Offense::TooManyConnections => self.policy.refused_connections,
            Offense::Forbidden => self.policy.forbidden_calls,
        }
    }

    /// Counts an offense in this node's memory (alone, or while the fleet's Redis is away).
    async fn count_here(&mut self, offender: IpNet, offense: Offense) {
        let key = (offender, offense);
        if self.recent.len() >= MAX_TRACKED_SOURCES && !self.recent.contains_key(&key) {
            return;
        }
        let threshold = self.threshold(offense) as usize;
        let now = Instant::now();
        let window = self.policy.window;
        let times = self.recent.entry(key).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            times.pop_front();
        }
        times.push_back(now);
        if times.len() >= threshold {
            self.recent.remove(&key);
            self.block_offender(offender, offense.reason(), threshold)
                .await;
        }
    }

    /// Blocks an offender of this node's feedback loop, each repeat twice as long up to the
    /// maximum; then its wider network, if blocks now pile up there.
    async fn block_offender(&mut self, offender: IpNet, reason: BlockReason, offenses: usize) {
        let duration = self.next_duration(offender);
        self.block_outside_allowlist(offender, duration, reason, Some(offenses), 0)
            .await;
        let Some((network, escalation)) = wider_network(offender, &self.policy) else {
            return;
        };
        let inside = self.blocked.within(network);
        if offenders_among(&inside, &self.policy) >= escalation.blocks {
            self.block_network(network, reason, inside).await;
        }
    }

    /// Blocks a whole network for its own escalating time (at least as long as any block it
    /// replaces), then folds the narrower blocks inside it into it: the maps keep one entry, and
    /// the wide block's expiry ends them all. Blocks until unblocked are left alone.
    async fn block_network(
        &mut self,
        network: IpNet,
        reason: BlockReason,
        inside: Vec<(IpNet, u64)>,
    ) {
        let now_ns = monotonic_now_ns();
        let own = self.next_duration(network);
        let longest_inside = inside
            .iter()
            .map(|(_, expires)| Duration::from_nanos(expires.saturating_sub(now_ns)))
            .max()
            .unwrap_or_default();
        let duration = own.max(longest_inside);
        let folded: Vec<IpNet> = inside
            .into_iter()
            .filter(|(_, expires)| *expires != 0)
            .map(|(target, _)| target)
            .collect();
        let placed = self
            .block_outside_allowlist(network, duration, reason, None, folded.len())
            .await;
        if !placed {
            return;
        }
        for target in folded {
            self.remove_block(target);
            self.audit_unblock(audit::BlockTarget::from(target), "folded", None)
                .await;
        }
    }

    /// How long the next block of `target` lasts, recording it: twice the last one, up to the
    /// maximum.
    fn next_duration(&mut self, target: IpNet) -> Duration {
        let (previous, _) = self
            .history
            .get(&target)
            .copied()
            .unwrap_or((0, Instant::now()));
        let duration = self
            .policy
            .block
            .checked_mul(1u32 << previous.min(20))
            .unwrap_or(self.policy.max_block)
            .min(self.policy.max_block);
        self.history
            .insert(target, (previous + 1, Instant::now() + duration));
        duration
    }

    /// Blocks the parts of `target` outside the allowlist (all of it, unless an allowlisted
    /// network lies inside); `false` if nothing could be blocked.
    async fn block_outside_allowlist(
        &mut self,
        target: IpNet,
        duration: Duration,
        reason: BlockReason,
        offenses: Option<usize>,
        folded: usize,
    ) -> bool {
        let Some(pieces) = outside_allowlist(target, &self.allow) else {
            tracing::warn!(%target, "not blocking: too many allowlisted networks inside it");
            return false;
        };
        if self.blocked.len() + pieces.len() > MAX_BLOCKS {
            tracing::warn!(%target, blocks = self.blocked.len(), "not blocking: the block table is full");
            return false;
        }
        for piece in &pieces {
            let block = Block {
                target: *piece,
                duration: Some(duration),
                reason,
                origin: Origin::Local,
                node: None,
            };
            self.enforce(&block, offenses, folded).await;
        }
        !pieces.is_empty()
    }

    /// Writes a block into the kernel (when attached) and the accept check, closes the target's
    /// open connections, and audits it.
    async fn enforce(&mut self, block: &Block, offenses: Option<usize>, folded: usize) {
        let expires_at_ns = block.duration.map_or(0, |duration| {
            monotonic_now_ns() + duration.as_nanos() as u64
        });
        let written = self
            .program
            .as_mut()
            .map(|program| program.add_block(block.target, expires_at_ns, block.reason));
        let enforced_in = match written {
            Some(Ok(())) => "xdp",
            Some(Err(err)) => {
                tracing::error!(target = %block.target, error = %err, "cannot write the block into the XDP map; enforcing it in userspace only");
                "userspace"
            }
            None => "userspace",
        };
        self.blocked.insert(block.target, expires_at_ns);
        self.listed.insert(
            block.target,
            Listed {
                reason: block.reason,
                origin: block.origin,
                node: block.node.clone(),
                expires_at_ns,
            },
        );
        if let Some(fleet) = &self.fleet
            && matches!(block.origin, Origin::Local | Origin::Operator)
        {
            fleet.publish_block(block.target, block.duration, block.reason);
        }
        let closed = self.connections.close_within(block.target);
        let source = audit::BlockTarget::from(block.target);
        tracing::warn!(
            %source,
            reason = block.reason.as_str(),
            origin = block.origin.as_str(),
            node = block.node.as_deref(),
            offenses,
            duration_secs = block.duration.map(|duration| duration.as_secs()),
            enforced_in,
            closed_connections = closed,
            folded,
            "source blocked"
        );
        let line = audit::block_line(&audit::BlockRecord {
            target: source,
            reason: block.reason.as_str(),
            duration: block.duration,
            enforced_in,
            origin: block.origin.as_str(),
            folded,
            node: block.node.as_deref(),
        });
        if let Err(err) = self.audit.write(line).await {
            tracing::error!(error = %err, "could not audit a block");
        }
    }

    async fn unblock(&mut self, target: IpNet, origin: Origin, node: Option<Arc<str>>) {
        if let Some(fleet) = &self.fleet
            && origin == Origin::Operator
        {
            fleet.publish_unblock(target);
        }
        if !self.remove_block(target) {
            return;
        }
        self.history.remove(&target);
        tracing::info!(%target, origin = origin.as_str(), node = node.as_deref(), "source unblocked");
        self.audit_unblock(audit::BlockTarget::from(target), "manual", node.as_deref())
            .await;
    }

    /// Removes a block from the kernel and the accept check; `false` if neither had it.
    fn remove_block(&mut self, target: IpNet) -> bool {
        self.listed.remove(&target);
        let removed_here = self.blocked.remove(target);
        let removed_in_kernel = match self.program.as_mut().map(|p| p.remove_block(target)) {
            Some(Ok(removed)) => removed,
            Some(Err(err)) => {
                tracing::error!(%target, error = %err, "cannot remove the block from the XDP map");
                false
            }
            None => false,
        };
        removed_here || removed_in_kernel
    }

    /// Removes expired blocks (kernel and userspace), audits each, forgets idle offense counters.
    pub(super) async fn sweep(&mut self) {
        let now_ns = monotonic_now_ns();
        let mut expired = BTreeSet::new();
        if let Some(program) = self.program.as_mut() {
            match program.sweep_expired(now_ns) {
                Ok(entries) => expired.extend(entries.into_iter().map(|(target, _)| target)),
                Err(err) => tracing::error!(error = %err, "cannot sweep the XDP blocklist"),
            }
        }
        expired.extend(self.blocked.take_expired(now_ns));
        for target in &expired {
            self.listed.remove(target);
        }
        for target in expired {
            tracing::info!(%target, "block expired");
            self.audit_unblock(audit::BlockTarget::from(target), "expired", None)
                .await;
        }
        let now = Instant::now();
        let window = self.policy.window;
        self.recent.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < window)
        });
        // An offender that behaved for as long as its last block lasted starts afresh.
        let max_block = self.policy.max_block;
        self.history
            .retain(|_, (_, ended)| now < *ended + max_block);
    }

    /// Audits the end of a block; `node` is the fleet node that ended it, if another one did.
    async fn audit_unblock(&self, target: audit::BlockTarget, reason: &str, node: Option<&str>) {
        if let Err(err) = self
            .audit
            .write(audit::unblock_line(target, reason, node))
            .await
        {
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
