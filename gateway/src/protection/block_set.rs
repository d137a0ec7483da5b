//! The sources blocked right now, as userspace sees them: checked at every accept, so blocks hold
//! even without XDP.
//!
//! Addresses and prefixes live in one ordered map. A lookup masks the source once per prefix
//! length in use (an IPv4 address and an IPv6 /64 are two lengths, whatever the number of blocks),
//! and the order lets the enforcer find every block inside a wider network with one range scan,
//! which escalation and folding need.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        RwLock, RwLockReadGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use ipnet::IpNet;

use crate::{audit::BlockTarget, kernel::monotonic_now_ns};

/// Blocked addresses and prefixes, with their CLOCK_MONOTONIC expiry in ns (0 = until unblocked).
#[derive(Default)]
pub struct BlockSet {
    blocks: RwLock<Blocks>,
    /// Whether there is any block, so an accept on a node without blocks takes no lock.
    any: AtomicBool,
}

#[derive(Default)]
struct Blocks {
    by_target: BTreeMap<IpNet, u64>,
    /// Blocks per prefix length, IPv4 then IPv6 (index `33 + len`).
    lengths: Lengths,
}

/// How many blocks have each prefix length, so a lookup tries only the lengths in use.
struct Lengths([u32; 33 + 129]);

impl Default for Lengths {
    fn default() -> Self {
        Self([0; 33 + 129])
    }
}

impl Lengths {
    fn slot(target: &IpNet) -> usize {
        match target {
            IpNet::V4(net) => usize::from(net.prefix_len()),
            IpNet::V6(net) => 33 + usize::from(net.prefix_len()),
        }
    }

    fn add(&mut self, target: &IpNet) {
        self.0[Self::slot(target)] += 1;
    }

    fn subtract(&mut self, target: &IpNet) {
        let count = &mut self.0[Self::slot(target)];
        *count = count.saturating_sub(1);
    }

    /// The prefix lengths in use for `ip`'s family, longest first.
    fn in_use(&self, ip: IpAddr) -> impl Iterator<Item = u8> + '_ {
        let counts = match ip {
            IpAddr::V4(_) => &self.0[..33],
            IpAddr::V6(_) => &self.0[33..],
        };
        (0..counts.len())
            .rev()
            .filter(move |len| counts[*len] > 0)
            .map(|len| len as u8)
    }
}

fn is_active(expires_at_ns: u64, now_ns: u64) -> bool {
    expires_at_ns == 0 || now_ns < expires_at_ns
}

impl BlockSet {
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let ip = ip.to_canonical();
        let now_ns = monotonic_now_ns();
        let blocks = self.read();
        blocks.lengths.in_use(ip).any(|len| {
            IpNet::new(ip, len).is_ok_and(|net| {
                blocks
                    .by_target
                    .get(&net.trunc())
                    .is_some_and(|expires| is_active(*expires, now_ns))
            })
        })
    }

    pub fn len(&self) -> usize {
        self.read().by_target.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blocks `target` until `expires_at_ns` (a host prefix blocks its address); `false` if it
    /// was blocked already (the expiry is updated).
    pub(super) fn insert(&self, target: IpNet, expires_at_ns: u64) -> bool {
        let target = normalized(target);
        self.write(|blocks| {
            let new = blocks.by_target.insert(target, expires_at_ns).is_none();
            if new {
                blocks.lengths.add(&target);
            }
            new
        })
    }

    /// Ends a block; `false` if there was none.
    pub(super) fn remove(&self, target: IpNet) -> bool {
        let target = normalized(target);
        self.write(|blocks| {
            let removed = blocks.by_target.remove(&target).is_some();
            if removed {
                blocks.lengths.subtract(&target);
            }
            removed
        })
    }

    /// Removes the blocks that expired by `now_ns` and returns them.
    pub(super) fn take_expired(&self, now_ns: u64) -> Vec<IpNet> {
        self.write(|blocks| {
            let mut expired = Vec::new();
            blocks.by_target.retain(|target, expires| {
                let active = is_active(*expires, now_ns);
                if !active {
                    expired.push(*target);
                }
                active
            });
            for target in &expired {
                blocks.lengths.subtract(target);
            }
            expired
        })
    }

    /// The blocks strictly inside `network` (narrower than it), with their expiry.
    pub(super) fn within(&self, network: IpNet) -> Vec<(IpNet, u64)> {
        let network = network.trunc();
        let (first, last) = match network {
            IpNet::V4(net) => (
                IpNet::from(IpAddr::V4(net.network())),
                IpNet::from(IpAddr::V4(net.broadcast())),
            ),
            IpNet::V6(net) => (
                IpNet::from(IpAddr::V6(net.network())),
                IpNet::from(IpAddr::V6(net.broadcast())),
            ),
        };
        // Ordered by address, then length: every prefix whose first address lies in `network`.
        let start = IpNet::new(first.addr(), 0).unwrap_or(first);
        self.read()
            .by_target
            .range(start..=last)
            .filter(|(target, _)| {
                target.prefix_len() > network.prefix_len() && network.contains(*target)
            })
            .map(|(target, expires)| (*target, *expires))
            .collect()
    }

    fn read(&self) -> RwLockReadGuard<'_, Blocks> {
        self.blocks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write<R>(&self, with: impl FnOnce(&mut Blocks) -> R) -> R {
        let mut blocks = self
            .blocks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = with(&mut blocks);
        self.any
            .store(!blocks.by_target.is_empty(), Ordering::Relaxed);
        result
    }
}

/// One spelling per target: truncated, and an IPv4-mapped IPv6 address as IPv4 (as sources are
/// looked up).
fn normalized(target: IpNet) -> IpNet {
    match BlockTarget::from(target) {
        BlockTarget::Address(ip) => IpNet::from(ip),
        BlockTarget::Prefix(prefix) => prefix,
    }
}

/// The address of a prefix that covers exactly one (`/32`, `/128`), as the accept check sees
/// sources (IPv4-mapped IPv6 as IPv4). The audit log draws the same line ([`BlockTarget`]).
pub fn host_address(target: IpNet) -> Option<IpAddr> {
    match BlockTarget::from(target) {
        BlockTarget::Address(ip) => Some(ip),
        BlockTarget::Prefix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_or_a_prefix_blocks_until_it_expires_or_is_removed() {
        let blocks = BlockSet::default();
        let inside: IpAddr = "198.51.100.77".parse().unwrap();
        blocks.insert(net("192.0.2.1/32"), 0);
        blocks.insert(net("198.51.100.0/24"), 0);
        assert!(blocks.is_blocked("192.0.2.1".parse().unwrap()));
        assert!(
            blocks.is_blocked("::ffff:192.0.2.1".parse().unwrap()),
            "v4-mapped is the same source"
        );
        assert!(blocks.is_blocked(inside));
        assert!(!blocks.is_blocked("198.51.101.1".parse().unwrap()));
        assert_eq!(blocks.len(), 2);

        assert!(blocks.remove(net("198.51.100.0/24")));
        assert!(!blocks.is_blocked(inside));
        blocks.insert(net("198.51.100.0/24"), 1);
        assert!(
            !blocks.is_blocked(inside),
            "an expired block blocks nothing"
        );
        let expired = blocks.take_expired(monotonic_now_ns());
        assert_eq!(expired, [net("198.51.100.0/24")]);
        assert_eq!(blocks.len(), 1);
    }

    #[test]
    fn an_ipv6_prefix_block_covers_every_address_inside_it_and_no_other() {
        let blocks = BlockSet::default();
        blocks.insert(net("2001:db8:7::/64"), 0);
        blocks.insert(net("2001:db8:9::5/128"), 0);
        assert!(blocks.is_blocked("2001:db8:7::2".parse().unwrap()));
        assert!(blocks.is_blocked("2001:db8:7::ffff:1".parse().unwrap()));
        assert!(blocks.is_blocked("2001:db8:9::5".parse().unwrap()));
        assert!(!blocks.is_blocked("2001:db8:7:1::2".parse().unwrap()));
        assert!(!blocks.is_blocked("2001:db8:9::6".parse().unwrap()));
        assert!(
            !blocks.is_blocked("192.0.2.1".parse().unwrap()),
            "lengths are counted per family"
        );
        assert!(!blocks.insert(net("2001:db8:7::/64"), 5), "already there");
        assert!(blocks.remove(net("2001:db8:9::5/128")));
        assert!(!blocks.is_blocked("2001:db8:9::5".parse().unwrap()));
    }

    #[test]
    fn within_lists_exactly_the_narrower_blocks_inside_a_network() {
        let blocks = BlockSet::default();
        for target in [
            "2001:db8:7::/64",
            "2001:db8:7:ffff::/64",
            "2001:db8:7::/48",
            "2001:db8:8::/64",
            "2001:db8:6:ffff::/64",
            "10.0.0.1/32",
            "10.0.0.255/32",
            "10.0.1.0/32",
        ] {
            blocks.insert(net(target), 0);
        }
        let mut inside: Vec<IpNet> = blocks
            .within(net("2001:db8:7::/48"))
            .into_iter()
            .map(|(target, _)| target)
            .collect();
        inside.sort();
        assert_eq!(
            inside,
            [net("2001:db8:7::/64"), net("2001:db8:7:ffff::/64")]
        );
        let inside: Vec<IpNet> = blocks
            .within(net("10.0.0.0/24"))
            .into_iter()
            .map(|(target, _)| target)
            .collect();
        assert_eq!(inside, [net("10.0.0.1/32"), net("10.0.0.255/32")]);
    }
}
