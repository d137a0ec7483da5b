//! Types shared by the XDP program (kernel) and the gateway (userspace).
//!
//! Everything here is `#[repr(C)]` and plain data, because both sides read the same bytes out of
//! the same BPF maps. The kernel program itself lives in `main.rs` and only builds for the BPF target.
#![no_std]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "mcp_gateway";
/// Map of blocked sources: [`SourceKey`] -> [`BlockEntry`].
pub const BLOCKLIST_MAP: &str = "BLOCKLIST";
/// Per-CPU array of `u64` counters indexed by [`Verdict`].
pub const STATS_MAP: &str = "STATS";

/// Capacity of the blocklist. The map is a preallocated HASH, not an LRU: an attacker must not be
/// able to evict blocks by churning source addresses.
pub const BLOCKLIST_CAPACITY: u32 = 65_536;

/// A source address as the XDP maps key it: 16 bytes, IPv4 as a v4-mapped IPv6 address
/// (`::ffff:a.b.c.d`), so one map serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

impl SourceKey {
    pub const fn from_ipv4(octets: [u8; 4]) -> Self {
        let [a, b, c, d] = octets;
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
        }
    }

    pub const fn from_ipv6(octets: [u8; 16]) -> Self {
        Self { addr: octets }
    }

    /// The address this key stands for; v4-mapped keys come back as IPv4.
    pub fn ip(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::from(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::from(v4),
                None => Self::from_ipv6(v6.octets()),
            },
        }
    }
}

impl From<Ipv4Addr> for SourceKey {
    fn from(ip: Ipv4Addr) -> Self {
        Self::from_ipv4(ip.octets())
    }
}

/// Why a source is on the blocklist (stored in [`BlockEntry::reason`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    /// Put there by an operator.
    Manual = 0,
    /// Too many failed authentications.
    AuthFailures = 1,
    /// Kept hitting the per-caller rate limit.
    RateLimited = 2,
    /// Too many malformed requests.
    Malformed = 3,
}

impl BlockReason {
    pub const fn from_u32(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Manual),
            1 => Some(Self::AuthFailures),
            2 => Some(Self::RateLimited),
            3 => Some(Self::Malformed),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::AuthFailures => "auth_failures",
            Self::RateLimited => "rate_limited",
            Self::Malformed => "malformed",
        }
    }
}

/// Value of the blocklist map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// CLOCK_MONOTONIC time in ns after which the block no longer applies; 0 = permanent.
    /// Expired entries are ignored by the program and swept by userspace.
    pub expires_at_ns: u64,
    /// A [`BlockReason`] as `u32`.
    pub reason: u32,
    pub _pad: u32,
}

impl BlockEntry {
    pub const fn new(expires_at_ns: u64, reason: BlockReason) -> Self {
        Self {
            expires_at_ns,
            reason: reason as u32,
            _pad: 0,
        }
    }

    /// Whether the block still applies at monotonic time `now_ns`.
    #[inline(always)]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        self.expires_at_ns == 0 || now_ns < self.expires_at_ns
    }
}

/// What the program decided for a packet; each verdict has a counter in [`STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed to the network stack (including non-IP traffic such as ARP).
    Pass = 0,
    /// Dropped: the source is on the blocklist.
    DropBlocked = 1,
    /// A frame too short for the headers it announces; passed, the stack drops it.
    ParseError = 2,
}

impl Verdict {
    pub const COUNT: u32 = 3;
    pub const ALL: [Verdict; Self::COUNT as usize] =
        [Self::Pass, Self::DropBlocked, Self::ParseError];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::DropBlocked => "drop_blocked",
            Self::ParseError => "parse_error",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data without padding holes or invalid bit patterns.
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::BlockEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_v4_mapped() {
        let key = SourceKey::from(IpAddr::from([192, 0, 2, 7]));
        assert_eq!(&key.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(key.ip(), IpAddr::from([192, 0, 2, 7]));
        // A v4-mapped IPv6 address is the same source as its IPv4 form.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(SourceKey::from(mapped), key);
    }

    #[test]
    fn ipv6_keys_keep_all_bytes() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(SourceKey::from(ip).ip(), ip);
    }

    #[test]
    fn block_expiry() {
        assert!(BlockEntry::new(0, BlockReason::Manual).is_active(u64::MAX));
        let entry = BlockEntry::new(1_000, BlockReason::AuthFailures);
        assert!(entry.is_active(999));
        assert!(!entry.is_active(1_000));
        assert_eq!(
            BlockReason::from_u32(entry.reason),
            Some(BlockReason::AuthFailures)
        );
    }
}
