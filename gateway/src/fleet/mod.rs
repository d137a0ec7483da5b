//! Fleet mode: several gateway nodes behind one load balancer share their state through Redis
//! (7.x, or Valkey), an engine operators already run and know how to make highly available,
//! rather than a protocol of our own between nodes.
//!
//! What is shared, and how:
//! - limits per caller and per tool: an exact sliding log per key ([`limiter`]), one round trip
//!   per limited request;
//! - offenses per source: a sliding log per source and kind; the node whose offense reaches the
//!   threshold decides the block ([`blocks`]);
//! - blocks: a hash of active blocks (wall-clock expiry) plus a stream of block and unblock
//!   events (`MAXLEN`-bounded); every node loads the hash when it (re)connects and then follows
//!   the stream, writing each block into its own XDP map and accept check ([`blocks`]);
//! - sessions: nothing at all in Redis. Session ids are sealed for their caller with a key the
//!   nodes share, so any node checks them alone (`mcp::sealed`);
//! - tasks: the caller each task is bound to, under the digest of its id ([`tasks`]).
//!
//! Redis holds caller names, addresses, counters and ids; never a key, header or argument.
//! The client is `redis` (redis-rs): the most used Rust client, maintained with Redis itself,
//! whose `ConnectionManager` multiplexes every request of a node over one connection and
//! reconnects on its own; `fred` does as much with a larger API and dependency tree than we need.

mod blocks;
pub mod demo;
mod limiter;
mod link;
mod tasks;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use gateway_ebpf::BlockReason;
use ipnet::IpNet;
use tokio::sync::mpsc;

pub use limiter::FleetLimiter;
pub use link::{Health, Link, Unavailable};
pub use tasks::FleetTasks;

use crate::{
    config::{FleetSettings, RateLimit},
    limit::{Limiter, NotAdmitted, SlidingWindow},
    protection::{Offense, Protection, SharedBlocks},
};

/// Events the enforcer hands the fleet before it drops new ones (it never waits for Redis).
const EVENT_QUEUE: usize = 4_096;

/// What this node tells the fleet, from its enforcer.
#[derive(Debug)]
enum Event {
    Offense {
        offender: IpNet,
        offense: Offense,
        threshold: u32,
        window: Duration,
    },
    Block {
        target: IpNet,
        duration: Option<Duration>,
        reason: BlockReason,
    },
    Unblock {
        target: IpNet,
    },
}

/// The enforcer's side of the fleet: it counts offenses there and publishes its blocks.
#[derive(Clone)]
pub struct FleetChannel {
    events: mpsc::Sender<Event>,
    link: Link,
    /// Events are being dropped (the queue was full).
    dropping: Arc<AtomicBool>,
}

impl SharedBlocks for FleetChannel {
    fn is_up(&self) -> bool {
        self.link.is_up()
    }

    fn count_offense(&self, offender: IpNet, offense: Offense, threshold: u32, window: Duration) {
        self.send(Event::Offense {
            offender,
            offense,
            threshold,
            window,
        });
    }

    fn publish_block(&self, target: IpNet, duration: Option<Duration>, reason: BlockReason) {
        self.send(Event::Block {
            target,
            duration,
            reason,
        });
    }

    fn publish_unblock(&self, target: IpNet) {
        self.send(Event::Unblock { target });
    }
}

impl FleetChannel {
    /// Never waits. Under a flood the queue may fill: events are dropped, said once per spell
    /// (offenses come again; blocks are published again after the next reconnection).
    fn send(&self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) => self.dropping.store(false, Ordering::Relaxed),
            Err(err) => {
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "fleet: event queue full; dropping events");
                }
            }
        }
    }
}

/// This node's membership of a fleet: its Redis link and the work that follows the fleet.
pub struct Fleet {
    settings: FleetSettings,
    link: Link,
    /// This process's sorted-set member prefix ([`member_prefix`]).
    members: String,
    events: mpsc::Receiver<Event>,
}

impl Fleet {
    /// The fleet and the enforcer's channel to it. Nothing connects yet.
    pub fn new(settings: &FleetSettings) -> anyhow::Result<(Self, FleetChannel)> {
        let link = Link::new(settings).map_err(|err| anyhow::anyhow!("fleet.redis_url: {err}"))?;
        let (sender, events) = mpsc::channel(EVENT_QUEUE);
        let channel = FleetChannel {
            events: sender,
            link: link.clone(),
            dropping: Arc::default(),
        };
        Ok((
            Self {
                settings: settings.clone(),
                link,
                members: member_prefix(&settings.node_name),
                events,
            },
            channel,
        ))
    }

    pub fn health(&self) -> &Arc<Health> {
        self.link.health()
    }

    pub fn limiter(&self) -> FleetLimiter {
        FleetLimiter::new(
            self.link.clone(),
            &self.settings.key_prefix,
            self.members.clone(),
            self.settings.on_unavailable,
        )
    }

    pub fn tasks(&self) -> FleetTasks {
        FleetTasks::new(self.link.clone(), &self.settings.key_prefix)
    }

    /// Checks Redis once (an absent Redis starts the node in its outage mode, logged), then
    /// follows the fleet until the process ends.
    pub async fn start(self, protection: Protection) {
        if self.link.connect().await.is_ok() {
            tracing::info!(
                redis = %self.settings.redis_shown,
                node = %self.settings.node_name,
                "fleet: connected to Redis"
            );
        }
        let keys = Arc::new(blocks::Keys::new(&self.settings, self.members));
        tokio::spawn(self.link.clone().probe());
        tokio::spawn(blocks::follow(
            self.link.clone(),
            Arc::clone(&keys),
            protection.clone(),
        ));
        tokio::spawn(blocks::publish(self.link, keys, self.events, protection));
    }
}

/// What makes this process's sorted-set members unique in the fleet: the node's name and a random
/// number drawn at start. A counter alone would repeat after a restart, and a member added again
/// only moves (`ZADD` of an existing member): a restarted node would be counted short inside the
/// window, and could admit past the limit.
fn member_prefix(node: &str) -> String {
    let mut random = [0u8; 4];
    // Without randomness (never on Linux), the time still tells two runs of a node apart.
    if getrandom::fill(&mut random).is_err() {
        random = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos()))
        .to_be_bytes();
    }
    format!("{node}.{}", hex::encode(random))
}

/// The limiter of this node: its own memory, or the fleet's Redis.
pub enum NodeLimiter {
    Local(SlidingWindow),
    Fleet(Box<FleetLimiter>),
}

impl Default for NodeLimiter {
    fn default() -> Self {
        Self::Local(SlidingWindow::default())
    }
}

impl Limiter for NodeLimiter {
    async fn admit(&self, key: &Arc<str>, limit: RateLimit, cost: u32) -> Result<(), NotAdmitted> {
        match self {
            Self::Local(local) => local.admit(key, limit, cost).await,
            Self::Fleet(fleet) => fleet.admit(key, limit, cost).await,
        }
    }

    fn used(&self, key: &str, window: Duration) -> u64 {
        match self {
            Self::Local(local) => local.used(key, window),
            Self::Fleet(fleet) => fleet.used(key, window),
        }
    }

    fn sweep(&self, idle_after: Duration) {
        match self {
            Self::Local(local) => local.sweep(idle_after),
            Self::Fleet(fleet) => fleet.sweep(idle_after),
        }
    }
}
