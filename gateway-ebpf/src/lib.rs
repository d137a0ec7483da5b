//! Types shared by the XDP program (kernel) and the gateway (userspace).
//!
//! Everything here is `#[repr(C)]` and plain data, because both sides read the same bytes out of
//! the same BPF maps; their sizes are checked at compile time below, so a field added on one side
//! cannot silently shift the other's view. The kernel program itself lives in `program.rs` (with
//! its packet parsing in `parse.rs`) and only builds for the BPF target.
#![no_std]

mod slots;
mod token_bucket;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use slots::{
    ADDRESS_SLOTS, AddressSlot, NETWORK_SLOTS, NetworkSlot, RateSlot, address_slot, address_words,
    network_slot,
};
pub use token_bucket::{MAX_BURST, MAX_RATE, MAX_REFILL_NS, TOKEN, TokenBucket};

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "mcp_gateway";
/// A program that passes everything, for benchmarks to subtract.
pub const BASELINE_PROGRAM_NAME: &str = "pass_all";
/// LPM trie of prefixes never dropped: (prefix length, 16-byte address) -> `u32` (unused). IPv4
/// prefixes are v4-mapped, so an IPv4 /24 is a /120.
pub const ALLOWLIST_MAP: &str = "ALLOWLIST";
/// Map of blocked sources: [`SourceKey`] -> [`BlockEntry`].
pub const BLOCKLIST_MAP: &str = "BLOCKLIST";
/// LPM trie of blocked ranges, keyed like [`ALLOWLIST_MAP`] -> [`BlockEntry`].
pub const PREFIX_BLOCKLIST_MAP: &str = "PREFIX_BLOCKLIST";
/// Array of [`AddressSlot`]s in front of [`BLOCKLIST_MAP`], indexed by [`address_slot`].
pub const ADDRESS_SLOTS_MAP: &str = "ADDRESS_SLOTS";
/// Array of [`NetworkSlot`]s in front of the two tries, indexed by [`network_slot`].
pub const NETWORK_SLOTS_MAP: &str = "NETWORK_SLOTS";
/// Array of [`RateSlot`]s in front of [`RATE_MAP`], indexed by [`address_slot`] of the rate key.
pub const RATE_SLOTS_MAP: &str = "RATE_SLOTS";
/// LRU hash of per-source token buckets: [`SourceKey`] (rate key) -> [`RateState`].
pub const RATE_MAP: &str = "RATE";
/// One-entry array holding the [`XdpConfig`].
pub const CONFIG_MAP: &str = "CONFIG";
/// Per-CPU array of `u64` counters indexed by [`Verdict`].
pub const STATS_MAP: &str = "STATS";
/// Per-CPU one-entry array of [`InsertBudget`].
pub const INSERT_BUDGET_MAP: &str = "INSERT_BUDGET";
/// Ring buffer of [`RateEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Every map, for pinning.
pub const ALL_MAPS: [&str; 11] = [
    ALLOWLIST_MAP,
    BLOCKLIST_MAP,
    PREFIX_BLOCKLIST_MAP,
    ADDRESS_SLOTS_MAP,
    NETWORK_SLOTS_MAP,
    RATE_SLOTS_MAP,
    RATE_MAP,
    CONFIG_MAP,
    STATS_MAP,
    INSERT_BUDGET_MAP,
    EVENTS_MAP,
];

/// Capacity of the blocklist. The map is a preallocated HASH, not an LRU: an attacker must not be
/// able to evict blocks by churning source addresses.
pub const BLOCKLIST_CAPACITY: u32 = 65_536;
/// Capacity of the allowlist and of the prefix blocklist.
pub const PREFIX_CAPACITY: u32 = 4_096;
/// Sources with a token bucket; the least recently seen are evicted first.
pub const RATE_CAPACITY: u32 = 262_144;
/// Size of the events ring buffer in bytes (a power of two times the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Most protected destination ports.
pub const MAX_PORTS: usize = 8;
/// A source that keeps being rate-dropped raises at most one event per this interval.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;

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

    /// The key rate limiting uses: IPv6 sources cut to their first `ipv6_prefix_len` bits, so one
    /// host cannot dodge its limit by rotating addresses inside its prefix. IPv4 stays whole.
    #[inline(always)]
    pub fn rate_key(&self, ipv6_prefix_len: u32) -> Self {
        if self.is_ipv4_mapped() || ipv6_prefix_len >= 128 {
            return *self;
        }
        let mut addr = self.addr;
        let mut i = 0;
        while i < 16 {
            let bit = (i as u32) * 8;
            if bit >= ipv6_prefix_len {
                addr[i] = 0;
            } else if bit + 8 > ipv6_prefix_len {
                addr[i] &= 0xffu8 << (8 - (ipv6_prefix_len - bit));
            }
            i += 1;
        }
        Self { addr }
    }

    #[inline(always)]
    pub fn is_ipv4_mapped(&self) -> bool {
        let a = &self.addr;
        a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0
            && a[10] == 0xff
            && a[11] == 0xff
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

/// Runtime settings of the program, in the one-entry [`CONFIG_MAP`]; userspace may update it while
/// the program runs. All zero means: no rate limiting, every port protected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// `FLAG_*` bits.
    pub flags: u32,
    /// IPv6 sources share a token bucket per prefix of this length (e.g. 64).
    pub ipv6_prefix_len: u32,
    /// Per-source packet rate and burst (0 = no packet limit).
    pub packets_per_sec: u64,
    pub burst: u64,
    /// Per-source rate and burst of new TCP connections (SYN without ACK; 0 = no limit).
    pub syn_per_sec: u64,
    pub syn_burst: u64,
    /// New sources given a bucket per second, per CPU (0 = no cap).
    pub new_sources_per_sec: u64,
    /// Protected TCP/UDP destination ports; `port_count == 0` protects every port.
    pub ports: [u16; MAX_PORTS],
    pub port_count: u32,
    pub _pad: u32,
    /// Test hook: when non-zero, the program's clock for token buckets and block expiry reads
    /// this instead of the kernel's (deterministic BPF_PROG_TEST_RUN). Always 0 in production.
    pub clock_override_ns: u64,
}

impl XdpConfig {
    /// Count what would be dropped, but pass it.
    pub const FLAG_DRY_RUN: u32 = 1;

    #[inline(always)]
    pub fn is_protected_port(&self, port: u16) -> bool {
        if self.port_count == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_PORTS {
            if (i as u32) < self.port_count && self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Per-source limiter state (value of [`RATE_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub packets: TokenBucket,
    pub syns: TokenBucket,
    /// When the last [`RateEvent`] for this source was sent (0 = never).
    pub last_event_ns: u64,
}

/// Per-CPU budget of new token-bucket entries (value of [`INSERT_BUDGET_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertBudget {
    pub window_start_ns: u64,
    pub inserted: u64,
}

/// Sent on the ring buffer when a source starts being rate-dropped (at most once per
/// [`EVENT_INTERVAL_NS`] per source), so userspace can escalate repeat offenders.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateEvent {
    /// The source address (not the rate key).
    pub source: SourceKey,
    /// The [`Verdict`] of the drop (`DropRate` or `DropSynRate`).
    pub verdict: u32,
    pub _pad: u32,
    pub at_ns: u64,
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
    /// Kept exceeding the XDP packet or SYN rate.
    PacketRate = 4,
    /// Kept opening more connections than the gateway allows one source.
    ConnectionFlood = 5,
    /// Kept calling what its caller is not granted.
    ForbiddenCalls = 6,
}

impl BlockReason {
    pub const fn from_u32(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Manual),
            1 => Some(Self::AuthFailures),
            2 => Some(Self::RateLimited),
            3 => Some(Self::Malformed),
            4 => Some(Self::PacketRate),
            5 => Some(Self::ConnectionFlood),
            6 => Some(Self::ForbiddenCalls),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::AuthFailures => "auth_failures",
            Self::RateLimited => "rate_limited",
            Self::Malformed => "malformed",
            Self::PacketRate => "packet_rate",
            Self::ConnectionFlood => "connection_flood",
            Self::ForbiddenCalls => "forbidden_calls",
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
    /// Passed to the network stack (non-IP traffic, other ports, sources within their limits).
    Pass = 0,
    /// Dropped: the source is on the blocklist.
    DropBlocked = 1,
    /// Dropped: the source lies in a blocked prefix.
    DropPrefix = 2,
    /// Dropped: over the per-source packet rate.
    DropRate = 3,
    /// Dropped: over the per-source new-connection (SYN) rate.
    DropSynRate = 4,
    /// Passed: a block or rate limit would have dropped it, but the source is on the allowlist.
    /// (Allowlisted sources within their limits count as `Pass`: the allowlist is consulted only
    /// before a drop.)
    Allowlisted = 5,
    /// A frame too short for the headers it announces, or a bad IPv4 header length; passed, the
    /// network stack drops it.
    ParseError = 6,
    /// Would have been dropped, but dry-run mode is on.
    DryRunWouldDrop = 7,
    /// Passed unmetered: the cap on new token buckets per second was reached.
    Untracked = 8,
}

impl Verdict {
    pub const COUNT: u32 = 9;
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Self::Pass,
        Self::DropBlocked,
        Self::DropPrefix,
        Self::DropRate,
        Self::DropSynRate,
        Self::Allowlisted,
        Self::ParseError,
        Self::DryRunWouldDrop,
        Self::Untracked,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::DropBlocked => "drop_blocked",
            Self::DropPrefix => "drop_prefix",
            Self::DropRate => "drop_rate",
            Self::DropSynRate => "drop_syn_rate",
            Self::Allowlisted => "allowlisted",
            Self::ParseError => "parse_error",
            Self::DryRunWouldDrop => "dry_run_would_drop",
            Self::Untracked => "untracked",
        }
    }

    pub const fn from_u32(raw: u32) -> Option<Self> {
        if raw < Self::COUNT {
            Some(Self::ALL[raw as usize])
        } else {
            None
        }
    }

    /// Whether this verdict drops the packet (outside dry-run).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Self::DropBlocked | Self::DropPrefix | Self::DropRate | Self::DropSynRate
        )
    }
}

// The layouts both sides rely on: each size is the sum of the fields', so no type has padding
// (explicit `_pad` fields fill the gaps), and any change to a shared type fails the build here.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<SourceKey>() == 16);
    assert!(size_of::<BlockEntry>() == 16);
    assert!(size_of::<TokenBucket>() == 16);
    assert!(size_of::<RateState>() == 40);
    assert!(size_of::<InsertBudget>() == 16);
    assert!(size_of::<RateEvent>() == 32);
    assert!(size_of::<XdpConfig>() == 80);
    assert!(size_of::<AddressSlot>() == 32);
    assert!(size_of::<NetworkSlot>() == 8);
    assert!(size_of::<RateSlot>() == 64);
    assert!(size_of::<Verdict>() == 4 && size_of::<BlockReason>() == 4);
};

#[cfg(feature = "user")]
mod pod {
    // For every impl here: `#[repr(C)]` integers and integer arrays only, no padding (sizes checked
    // above), so every bit pattern is a valid value.

    // SAFETY: see above.
    unsafe impl aya::Pod for super::SourceKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::BlockEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::XdpConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::InsertBudget {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RateEvent {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::AddressSlot {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::NetworkSlot {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RateSlot {}
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
    fn ipv6_rate_keys_cover_the_prefix_and_ipv4_stays_whole() {
        let a = SourceKey::from("2001:db8:1:2:aaaa::1".parse::<IpAddr>().unwrap());
        let b = SourceKey::from("2001:db8:1:2:bbbb::2".parse::<IpAddr>().unwrap());
        let other = SourceKey::from("2001:db8:1:3::1".parse::<IpAddr>().unwrap());
        assert_eq!(a.rate_key(64), b.rate_key(64));
        assert_ne!(a.rate_key(64), other.rate_key(64));
        assert_eq!(
            a.rate_key(64).ip(),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            a.rate_key(60).ip(),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(a.rate_key(128), a);
        let v4 = SourceKey::from(IpAddr::from([192, 0, 2, 7]));
        assert!(v4.is_ipv4_mapped() && !a.is_ipv4_mapped());
        assert_eq!(v4.rate_key(64), v4);
    }

    #[test]
    fn ports_filter_only_when_configured() {
        let mut config = XdpConfig::default();
        assert!(config.is_protected_port(22));
        config.ports[0] = 8080;
        config.ports[1] = 8443;
        config.port_count = 2;
        assert!(config.is_protected_port(8080) && config.is_protected_port(8443));
        assert!(!config.is_protected_port(22));
    }

    #[test]
    fn verdicts_roundtrip() {
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::from_u32(verdict as u32), Some(verdict));
        }
        assert_eq!(Verdict::from_u32(Verdict::COUNT), None);
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
