//! Userspace's copy of the program's address and network slots (`gateway_ebpf::slots`): the
//! counts the program reads to skip the blocklist and trie lookups a packet cannot match.
//! [`XdpProgram`](super::XdpProgram) is the only writer; it changes a slot here, then writes it
//! into the map, in the order that can only make the program look up more, never less.

use std::collections::HashSet;

use gateway_ebpf::{
    ADDRESS_SLOTS, AddressSlot, NETWORK_SLOTS, NetworkSlot, SourceKey, address_slot, address_words,
    network_slot,
};
use ipnet::{IpNet, Ipv6Net};

/// The two prefix lists a network slot counts.
#[derive(Clone, Copy, Debug)]
pub enum PrefixList {
    Blocked,
    Allowed,
}

pub struct Slots {
    addresses: Vec<AddressSlot>,
    networks: Vec<NetworkSlot>,
    blocked: HashSet<IpNet>,
    allowed: HashSet<IpNet>,
}

impl Slots {
    /// Slots for empty maps: all zero, as a new array map is.
    pub fn new() -> Self {
        Self {
            addresses: vec![AddressSlot::default(); ADDRESS_SLOTS as usize],
            networks: vec![NetworkSlot::default(); NETWORK_SLOTS as usize],
            blocked: HashSet::new(),
            allowed: HashSet::new(),
        }
    }

    /// Every slot, for writing a whole map (after counting the entries of pinned maps).
    pub fn all(&self) -> (&[AddressSlot], &[NetworkSlot]) {
        (&self.addresses, &self.networks)
    }

    /// Counts `key`, newly blocked (`!existed`) or blocked again until `expires_at_ns`; returns
    /// the slot to write.
    pub fn add_address(
        &mut self,
        key: &SourceKey,
        expires_at_ns: u64,
        existed: bool,
    ) -> (u32, AddressSlot) {
        let index = address_slot(&key.addr);
        let words = address_words(&key.addr);
        let slot = &mut self.addresses[index as usize];
        if !existed {
            slot.occupants = slot.occupants.saturating_add(1);
        }
        if slot.cached == 0 || slot.addr == words {
            slot.cached = 1;
            slot.addr = words;
            slot.expires_at_ns = expires_at_ns;
        }
        (index, *slot)
    }

    /// Uncounts `key`, no longer blocked; returns the slot to write.
    pub fn remove_address(&mut self, key: &SourceKey) -> (u32, AddressSlot) {
        let index = address_slot(&key.addr);
        let slot = &mut self.addresses[index as usize];
        slot.occupants = slot.occupants.saturating_sub(1);
        if slot.cached != 0 && slot.addr == address_words(&key.addr) {
            // Another occupant, if any, is found through the blocklist from now on.
            slot.cached = 0;
            slot.addr = [0; 2];
            slot.expires_at_ns = 0;
        }
        (index, *slot)
    }

    /// Counts `prefix` in `list`; returns the slots to write (none if it was already listed).
    pub fn add_prefix(&mut self, list: PrefixList, prefix: IpNet) -> Vec<(u32, NetworkSlot)> {
        if !self.listed(list).insert(prefix.trunc()) {
            return Vec::new();
        }
        self.change_networks(list, prefix, |count| count.saturating_add(1))
    }

    /// Uncounts `prefix` from `list`; returns the slots to write (none if it was not listed).
    pub fn remove_prefix(&mut self, list: PrefixList, prefix: IpNet) -> Vec<(u32, NetworkSlot)> {
        if !self.listed(list).remove(&prefix.trunc()) {
            return Vec::new();
        }
        self.change_networks(list, prefix, |count| count.saturating_sub(1))
    }

    fn listed(&mut self, list: PrefixList) -> &mut HashSet<IpNet> {
        match list {
            PrefixList::Blocked => &mut self.blocked,
            PrefixList::Allowed => &mut self.allowed,
        }
    }

    fn change_networks(
        &mut self,
        list: PrefixList,
        prefix: IpNet,
        change: impl Fn(u32) -> u32,
    ) -> Vec<(u32, NetworkSlot)> {
        network_slots(prefix)
            .map(|index| {
                let slot = &mut self.networks[index as usize];
                let count = match list {
                    PrefixList::Blocked => &mut slot.blocked,
                    PrefixList::Allowed => &mut slot.allowed,
                };
                *count = change(*count);
                (index, *slot)
            })
            .collect()
    }
}

/// The network slots a source inside `prefix` may have: the /16s an IPv4 prefix covers, the
/// hashed /32 of an IPv6 prefix of /32 or longer, and every slot for wider IPv6 prefixes (and any
/// that overlaps the v4-mapped range, whose sources are slotted by their IPv4 /16).
fn network_slots(prefix: IpNet) -> std::ops::Range<u32> {
    match prefix.trunc() {
        IpNet::V4(net) => {
            let first = network_slot(&SourceKey::from(net.network()).addr);
            let count = 1u32 << 16u8.saturating_sub(net.prefix_len());
            first..first + count
        }
        IpNet::V6(net) => {
            let mapped = Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
                .unwrap_or_default();
            if net.prefix_len() < 32 || net.contains(&mapped) || mapped.contains(&net) {
                0..NETWORK_SLOTS
            } else {
                let slot = network_slot(&net.network().octets());
                slot..slot + 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn slot_of(addr: &str) -> u32 {
        network_slot(&SourceKey::from(addr.parse::<std::net::IpAddr>().unwrap()).addr)
    }

    #[test]
    fn every_source_inside_a_prefix_finds_the_prefix_counted_in_its_network_slot() {
        let mut slots = Slots::new();
        for prefix in [
            "203.0.113.0/24",
            "10.0.0.0/8",
            "2001:db8:bad::/48",
            "fd00:7::/64",
        ] {
            slots.add_prefix(PrefixList::Blocked, net(prefix));
        }
        for inside in [
            "203.0.113.9",
            "10.200.3.4",
            "2001:db8:bad:1::5",
            "fd00:7::ffff:3",
        ] {
            assert_eq!(
                slots.networks[slot_of(inside) as usize].blocked,
                1,
                "{inside}"
            );
        }
        assert_eq!(slots.networks[slot_of("203.1.113.9") as usize].blocked, 0);
        // A /8 covers 256 /16s.
        assert_eq!(network_slots(net("10.0.0.0/8")).len(), 256);
    }

    #[test]
    fn wide_ipv6_prefixes_and_the_v4_mapped_range_count_in_every_slot() {
        assert_eq!(
            network_slots(net("2001::/16")).len(),
            NETWORK_SLOTS as usize
        );
        assert_eq!(network_slots(net("::/0")).len(), NETWORK_SLOTS as usize);
        assert_eq!(
            network_slots(net("::ffff:0:0/100")).len(),
            NETWORK_SLOTS as usize
        );
    }

    #[test]
    fn a_prefix_counts_once_however_often_it_is_added_and_comes_off_when_removed() {
        let mut slots = Slots::new();
        let prefix = net("192.0.2.0/24");
        assert_eq!(slots.add_prefix(PrefixList::Allowed, prefix).len(), 1);
        assert!(slots.add_prefix(PrefixList::Allowed, prefix).is_empty());
        let slot = slot_of("192.0.2.1") as usize;
        assert_eq!(slots.networks[slot].allowed, 1);
        assert_eq!(slots.remove_prefix(PrefixList::Allowed, prefix).len(), 1);
        assert!(slots.remove_prefix(PrefixList::Allowed, prefix).is_empty());
        assert_eq!(slots.networks[slot], NetworkSlot::default());
    }

    #[test]
    fn an_address_slot_caches_one_blocked_address_and_counts_the_others() {
        let mut slots = Slots::new();
        let key = SourceKey::from_ipv4([198, 51, 100, 7]);
        let (index, slot) = slots.add_address(&key, 5, false);
        assert_eq!((slot.occupants, slot.cached, slot.expires_at_ns), (1, 1, 5));
        // Blocked again, for longer: still one occupant, the new expiry cached.
        let (_, slot) = slots.add_address(&key, 9, true);
        assert_eq!((slot.occupants, slot.expires_at_ns), (1, 9));
        // Another address in the same slot is counted, not cached.
        let other = (0u8..=255)
            .flat_map(|c| (0u8..=255).map(move |d| SourceKey::from_ipv4([10, 0, c, d])))
            .find(|other| address_slot(&other.addr) == index)
            .expect("a colliding address among 65,536");
        let (_, slot) = slots.add_address(&other, 0, false);
        assert_eq!((slot.occupants, slot.addr), (2, address_words(&key.addr)));
        // The cached one leaves: the other is found through the blocklist.
        let (_, slot) = slots.remove_address(&key);
        assert_eq!((slot.occupants, slot.cached), (1, 0));
        let (_, slot) = slots.remove_address(&other);
        assert_eq!(slot, AddressSlot::default());
    }
}
