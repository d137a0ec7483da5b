//! The sources blocked right now, as userspace sees them: checked at every accept, so blocks hold
//! even without XDP.

use std::{
    net::IpAddr,
    sync::{
        RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use dashmap::DashMap;
use ipnet::IpNet;

use crate::{audit::BlockTarget, kernel::monotonic_now_ns};

/// Blocked addresses and prefixes, with their CLOCK_MONOTONIC expiry in ns (0 = until unblocked).
#[derive(Default)]
pub struct BlockSet {
    addresses: DashMap<IpAddr, u64>,
    /// Prefix blocks are few (an operator's or a fleet's); a scan is cheaper than a trie.
    prefixes: RwLock<Vec<(IpNet, u64)>>,
    /// Whether `prefixes` has entries, so an accept without prefix blocks takes no lock.
    any_prefix: AtomicBool,
}

fn is_active(expires_at_ns: u64, now_ns: u64) -> bool {
    expires_at_ns == 0 || now_ns < expires_at_ns
}

impl BlockSet {
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let by_address = self
            .addresses
            .get(&ip)
            .is_some_and(|expires| is_active(*expires, monotonic_now_ns()));
        by_address || (self.any_prefix.load(Ordering::Relaxed) && self.blocked_by_prefix(ip))
    }

    fn blocked_by_prefix(&self, ip: IpAddr) -> bool {
        let now_ns = monotonic_now_ns();
        self.prefixes()
            .iter()
            .any(|(prefix, expires)| prefix.contains(&ip) && is_active(*expires, now_ns))
    }

    pub fn len(&self) -> usize {
        self.addresses.len() + self.prefixes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blocks `target` until `expires_at_ns`: a host prefix blocks its address.
    pub(super) fn insert(&self, target: IpNet, expires_at_ns: u64) {
        match host_address(target) {
            Some(ip) => {
                self.addresses.insert(ip, expires_at_ns);
            }
            None => self.prefixes_mut(|prefixes| {
                prefixes.retain(|(prefix, _)| *prefix != target);
                prefixes.push((target, expires_at_ns));
            }),
        }
    }

    /// Ends a block; `false` if there was none.
    pub(super) fn remove(&self, target: IpNet) -> bool {
        match host_address(target) {
            Some(ip) => self.addresses.remove(&ip).is_some(),
            None => self.prefixes_mut(|prefixes| {
                let before = prefixes.len();
                prefixes.retain(|(prefix, _)| *prefix != target);
                prefixes.len() != before
            }),
        }
    }

    /// Removes the blocks that expired by `now_ns` and returns them.
    pub(super) fn take_expired(&self, now_ns: u64) -> Vec<IpNet> {
        let mut expired = Vec::new();
        self.addresses.retain(|ip, expires| {
            let active = is_active(*expires, now_ns);
            if !active {
                expired.push(IpNet::from(*ip));
            }
            active
        });
        self.prefixes_mut(|prefixes| {
            prefixes.retain(|(prefix, expires)| {
                let active = is_active(*expires, now_ns);
                if !active {
                    expired.push(*prefix);
                }
                active
            });
        });
        expired
    }

    fn prefixes(&self) -> std::sync::RwLockReadGuard<'_, Vec<(IpNet, u64)>> {
        self.prefixes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn prefixes_mut<R>(&self, with: impl FnOnce(&mut Vec<(IpNet, u64)>) -> R) -> R {
        let mut prefixes = self
            .prefixes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = with(&mut prefixes);
        self.any_prefix
            .store(!prefixes.is_empty(), Ordering::Relaxed);
        result
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

    #[test]
    fn an_address_or_a_prefix_blocks_until_it_expires_or_is_removed() {
        let blocks = BlockSet::default();
        let inside: IpAddr = "198.51.100.77".parse().unwrap();
        blocks.insert("192.0.2.1/32".parse().unwrap(), 0);
        blocks.insert("198.51.100.0/24".parse().unwrap(), 0);
        assert!(blocks.is_blocked("192.0.2.1".parse().unwrap()));
        assert!(
            blocks.is_blocked("::ffff:192.0.2.1".parse().unwrap()),
            "v4-mapped is the same source"
        );
        assert!(blocks.is_blocked(inside));
        assert!(!blocks.is_blocked("198.51.101.1".parse().unwrap()));
        assert_eq!(blocks.len(), 2);

        assert!(blocks.remove("198.51.100.0/24".parse().unwrap()));
        assert!(!blocks.is_blocked(inside));
        blocks.insert("198.51.100.0/24".parse().unwrap(), 1);
        assert!(
            !blocks.is_blocked(inside),
            "an expired block blocks nothing"
        );
        let expired = blocks.take_expired(monotonic_now_ns());
        assert_eq!(expired, ["198.51.100.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(blocks.len(), 1);
    }
}
