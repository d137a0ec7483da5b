//! The feedback loop from the proxy to the kernel: sources that keep failing authentication,
//! hitting the rate limit, sending malformed requests or tripping the XDP packet limits are blocked
//! for a while, with longer blocks for repeat offenders.
//!
//! One task (the [`Enforcer`]) owns the XDP maps and decides every block; the rest of the gateway
//! sends it [`Command`]s through a [`Protection`] handle: offenses seen by this node, and blocks or
//! unblocks decided elsewhere (an operator, another node of a fleet). Blocks are enforced twice: in
//! the kernel by the XDP program when it is attached, and always in userspace at connection accept
//! ([`BlockSet`]), so the gateway is never silently unprotected. A block also closes the
//! connections the source already has open ([`Connections`]).

mod block_set;
mod connections;
mod enforcer;
mod networks;

use std::{net::IpAddr, sync::Arc, time::Duration};

use gateway_ebpf::{BlockReason, XdpConfig};
use ipnet::IpNet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::sync::{mpsc, oneshot};

pub use block_set::BlockSet;
pub use connections::{ConnectionGuard, Connections};
pub use enforcer::Enforcer;

use crate::{
    audit::AuditLog,
    config::BlockingPolicy,
    kernel::{Stats, XdpProgram},
};

/// Commands queued for the enforcer before new offenses are dropped (never blocks a request).
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
    /// A connection refused for `max_connections_per_source`.
    TooManyConnections,
    /// A call of a tool, prompt or resource its caller is not granted.
    Forbidden,
}

impl Offense {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailure => "auth_failure",
            Self::RateLimited => "rate_limited",
            Self::Malformed => "malformed",
            Self::PacketRate => "packet_rate",
            Self::TooManyConnections => "too_many_connections",
            Self::Forbidden => "forbidden",
        }
    }

    fn reason(self) -> BlockReason {
        match self {
            Self::AuthFailure => BlockReason::AuthFailures,
            Self::RateLimited => BlockReason::RateLimited,
            Self::Malformed => BlockReason::Malformed,
            Self::PacketRate => BlockReason::PacketRate,
            Self::TooManyConnections => BlockReason::ConnectionFlood,
            Self::Forbidden => BlockReason::ForbiddenCalls,
        }
    }
}

/// What the enforcer is asked to do.
#[derive(Debug)]
pub enum Command {
    /// A source misbehaved, as this node saw it; enough of these lead to a block.
    Offense { source: IpAddr, offense: Offense },
    /// Block an address or a prefix, decided elsewhere.
    Block(Block),
    /// End the block of an address or a prefix (`node`: the fleet node that ended it, if
    /// another one did).
    Unblock {
        target: IpNet,
        origin: Origin,
        node: Option<Arc<str>>,
    },
    /// The fleet counted `count` offenses of `offender` (across its nodes): block it.
    SharedThreshold {
        offender: IpNet,
        offense: Offense,
        count: u32,
    },
    /// Count this offense on this node: the fleet's shared count could not be had.
    CountLocally { offender: IpNet, offense: Offense },
    /// Never block this address or prefix (until the next reload or restart); its blocks end.
    Allow { target: IpNet, origin: Origin },
    /// Take an address or prefix off the allowlist.
    Disallow { target: IpNet, origin: Origin },
    /// Blocking policy, allowlist and XDP settings from a reloaded configuration.
    Reconfigure(Box<ProtectionSettings>),
    /// Report blocks, allowlist and kernel counters.
    Snapshot(oneshot::Sender<Snapshot>),
}

/// What a reload may change in the feedback loop and the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionSettings {
    pub blocking: BlockingPolicy,
    pub allow: Vec<IpNet>,
    /// The XDP program's settings (ports, packet and SYN rates, flags).
    pub xdp: XdpConfig,
}

/// Blocks and allowlist as the enforcer holds them, and the kernel's counters.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub blocks: Vec<BlockView>,
    pub allow: Vec<IpNet>,
    /// Packets by verdict, summed over CPUs, when the program is loaded.
    pub xdp: Option<Stats>,
}

/// One block, as an operator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    pub target: IpNet,
    pub reason: BlockReason,
    pub origin: Origin,
    /// The fleet node that decided it, if another one did.
    pub node: Option<Arc<str>>,
    /// `None`: until unblocked.
    pub remaining: Option<Duration>,
}

/// A block decided outside this node's feedback loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// An address (a `/32` or `/128`) or a prefix.
    pub target: IpNet,
    /// `None`: until unblocked.
    pub duration: Option<Duration>,
    pub reason: BlockReason,
    pub origin: Origin,
    /// The fleet node that decided it, if another one did.
    pub node: Option<Arc<str>>,
}

/// Who decided a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This node's feedback loop.
    Local,
    /// An operator, by hand.
    Operator,
    /// Another node of the fleet.
    Fleet,
    /// Found in the pinned map at start: decided by an earlier run of the gateway.
    PreviousRun,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Operator => "operator",
            Self::Fleet => "fleet",
            Self::PreviousRun => "previous_run",
        }
    }
}

/// The enforcer has stopped (the gateway is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the enforcer has stopped")]
pub struct EnforcerStopped;

/// The rest of the gateway's handle on the feedback loop.
#[derive(Clone)]
pub struct Protection {
    blocked: Arc<BlockSet>,
    connections: Arc<Connections>,
    commands: mpsc::Sender<Command>,
    offenses: OffenseCounts,
}

/// Offenses reported, by kind (exported as `mcp_gateway_offenses_total`).
pub type OffenseCounts = Family<[(&'static str, &'static str); 1], Counter>;

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
        self.offenses
            .get_or_create(&[("kind", offense.as_str())])
            .inc();
        let source = source.to_canonical();
        let _ = self.commands.try_send(Command::Offense { source, offense });
    }

    /// Sends a command that must not be lost (a block or an unblock): waits for room in the queue.
    pub async fn command(&self, command: Command) -> Result<(), EnforcerStopped> {
        self.commands
            .send(command)
            .await
            .map_err(|_| EnforcerStopped)
    }

    /// Blocks, allowlist and kernel counters, as the enforcer has them now.
    pub async fn snapshot(&self) -> Result<Snapshot, EnforcerStopped> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Snapshot(reply)).await?;
        answer.await.map_err(|_| EnforcerStopped)
    }

    pub fn offense_counts(&self) -> &OffenseCounts {
        &self.offenses
    }
}

/// Where the enforcer shares offenses and blocks with other nodes: the fleet's Redis
/// (`fleet/`). Defined here, and implemented there, so that protecting this node does not depend
/// on how a fleet shares its state.
pub trait SharedBlocks: Send + Sync {
    /// Whether offenses can count there now (else the enforcer counts them itself).
    fn is_up(&self) -> bool;
    /// Counts an offense of `offender` among the nodes; `threshold` within `window` blocks it.
    fn count_offense(&self, offender: IpNet, offense: Offense, threshold: u32, window: Duration);
    /// Tells the other nodes of a block this node decided.
    fn publish_block(&self, target: IpNet, duration: Option<Duration>, reason: BlockReason);
    /// Tells the other nodes of an unblock.
    fn publish_unblock(&self, target: IpNet);
}

/// Creates the handle and the task state. Blocks already in the (pinned) kernel map are taken over.
pub fn start(
    policy: BlockingPolicy,
    program: Option<XdpProgram>,
    allow: Vec<IpNet>,
    audit: AuditLog,
    fleet: Option<Box<dyn SharedBlocks>>,
) -> (Protection, Enforcer) {
    let (commands, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let enforcer = Enforcer::new(policy, program, allow, audit, receiver, fleet);
    let protection = Protection {
        blocked: Arc::clone(&enforcer.blocked),
        connections: Arc::clone(&enforcer.connections),
        commands,
        offenses: OffenseCounts::default(),
    };
    (protection, enforcer)
}
