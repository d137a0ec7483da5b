//! Direct-mapped slots in front of the hash and trie lookups, so that a packet pays for a map
//! lookup only when its source may be listed. On the test machine every hash or trie lookup, and
//! every helper call, costs 30-40 ns per packet (BPF_PROG_TEST_RUN); an array element, which the
//! verifier turns into plain pointer arithmetic, costs a few.
//!
//! - [`AddressSlot`] (one per hash of a source address): how many blocked addresses hash there,
//!   and one of them with its expiry, so the usual blocked source needs no blocklist lookup and a
//!   source nobody near it blocked needs none either.
//! - [`NetworkSlot`] (one per IPv4 /16, or per hash of an IPv6 /32): how many blocked and how many
//!   allowlisted prefixes overlap it, so the tries are walked only where an entry may match.
//! - [`RateSlot`] (one per hash of a rate key): the token buckets of one source, so a metered
//!   packet usually needs no LRU lookup. The program owns these: a source takes a free slot, or
//!   one whose occupant has been idle long enough for its buckets to be full again (so nothing is
//!   lost by forgetting them); the others keep their buckets in the LRU map as before.
//!
//! Userspace, the only writer of address and network slots, keeps their counts; it may count too
//! many (a slot then only costs the lookup it saves), never too few.

/// Number of [`AddressSlot`]s (as many as the blocklist holds entries).
pub const ADDRESS_SLOTS: u32 = 1 << ADDRESS_SLOT_BITS;
const ADDRESS_SLOT_BITS: u32 = 16;
/// Number of [`NetworkSlot`]s: one per IPv4 /16.
pub const NETWORK_SLOTS: u32 = 1 << 16;

/// Value of [`crate::ADDRESS_SLOTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressSlot {
    /// Blocked addresses whose [`address_slot`] this is.
    pub occupants: u32,
    /// 1 when `addr` and `expires_at_ns` hold one of them (so it needs no blocklist lookup).
    pub cached: u32,
    /// The cached address, as [`address_words`] gives it.
    pub addr: [u64; 2],
    /// Its block's expiry, as in [`crate::BlockEntry`].
    pub expires_at_ns: u64,
}

/// Value of [`crate::RATE_SLOTS_MAP`], indexed by [`address_slot`] of the rate key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSlot {
    /// 1 once a source holds the slot.
    pub occupied: u64,
    /// Its rate key, as [`address_words`] gives it.
    pub key: [u64; 2],
    pub state: crate::RateState,
}

/// Value of [`crate::NETWORK_SLOTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkSlot {
    /// Blocked prefixes that overlap this slot's network.
    pub blocked: u32,
    /// Allowlisted prefixes that overlap it.
    pub allowed: u32,
}

/// The 16 address bytes as two words (compared without a byte loop in the program).
#[inline(always)]
pub const fn address_words(addr: &[u8; 16]) -> [u64; 2] {
    let a = addr;
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

/// The address slot of a source: a multiplicative hash of its 16 bytes.
#[inline(always)]
pub const fn address_slot(addr: &[u8; 16]) -> u32 {
    let [high, low] = address_words(addr);
    ((high ^ low.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - ADDRESS_SLOT_BITS))
        as u32
}

/// The network slot of a source: an IPv4 address's /16 itself, an IPv6 address's /32 hashed.
#[inline(always)]
pub const fn network_slot(addr: &[u8; 16]) -> u32 {
    let a = addr;
    let mapped = a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff;
    if mapped {
        ((a[12] as u32) << 8) | a[13] as u32
    } else {
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]).wrapping_mul(0x9E37_79B1) >> 16
    }
}
