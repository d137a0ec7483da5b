//! Kernel half of the gateway: drops traffic from abusive sources before the network stack sees
//! it. Lookup order: allowlist, blocklist, prefix blocklist, per-source token buckets.

use core::mem;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use gateway_ebpf::{
    BLOCKLIST_CAPACITY, BlockEntry, EVENT_INTERVAL_NS, EVENTS_BYTES, InsertBudget, PREFIX_CAPACITY,
    RATE_CAPACITY, RateEvent, RateState, SourceKey, TokenBucket, Verdict, XdpConfig,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_TAG_LEN: usize = 4;
/// 802.1Q and QinQ: at most an outer and an inner tag.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked to find the TCP/UDP header.
const MAX_IPV6_EXTENSIONS: usize = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[map(name = "ALLOWLIST")]
static ALLOWLIST: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);

#[map(name = "BLOCKLIST")]
static BLOCKLIST: HashMap<SourceKey, BlockEntry> = HashMap::with_max_entries(BLOCKLIST_CAPACITY, 0);

#[map(name = "PREFIX_BLOCKLIST")]
static PREFIX_BLOCKLIST: LpmTrie<[u8; 16], BlockEntry> =
    LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);

#[map(name = "RATE")]
static RATE: LruHashMap<SourceKey, RateState> = LruHashMap::with_max_entries(RATE_CAPACITY, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

#[map(name = "INSERT_BUDGET")]
static INSERT_BUDGET: PerCpuArray<InsertBudget> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[xdp]
pub fn mcp_gateway(ctx: XdpContext) -> u32 {
    let verdict = match packet_of(&ctx) {
        Err(Truncated) => Verdict::ParseError,
        Ok(None) => Verdict::Pass,
        Ok(Some(packet)) => verdict_for(&ctx, &packet),
    };
    count(verdict);
    if verdict.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Passes every packet and does nothing else: the baseline the benchmarks compare against.
#[xdp]
pub fn pass_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The frame ends before a header it announces, or a header is invalid.
struct Truncated;

/// What the program needs from an IP packet.
struct Packet {
    source: SourceKey,
    transport: Transport,
}

enum Transport {
    /// TCP or UDP to `port`; `syn` for a TCP SYN without ACK (a new connection).
    Port { port: u16, syn: bool },
    /// Port not visible: a non-first fragment, or more extension headers than are walked.
    /// Treated as protected, so fragments cannot slip past a block.
    Unknown,
    /// ICMP and other protocols without ports.
    Portless,
}

fn verdict_for(ctx: &XdpContext, packet: &Packet) -> Verdict {
    // An array map always has its entry 0 (all zeroes until userspace writes it).
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    let protected = match packet.transport {
        Transport::Port { port, .. } => config.is_protected_port(port),
        Transport::Unknown => true,
        Transport::Portless => config.port_count == 0,
    };
    if !protected {
        return Verdict::Pass;
    }
    let source = &packet.source;
    if ALLOWLIST.get(Key::new(128, source.addr)).is_some() {
        return Verdict::Allowlisted;
    }
    let verdict = limit_verdict(ctx, packet, config);
    if verdict.is_drop() && config.flags & XdpConfig::FLAG_DRY_RUN != 0 {
        Verdict::DryRunWouldDrop
    } else {
        verdict
    }
}

fn limit_verdict(ctx: &XdpContext, packet: &Packet, config: &XdpConfig) -> Verdict {
    let source = &packet.source;
    // The clock is read only when an entry is found: most packets have none.
    // SAFETY: entries are copied out at once; a concurrent update can at worst give a stale verdict.
    if let Some(entry) = unsafe { BLOCKLIST.get(source) }
        && entry.is_active(now_ns(config, Clock::Precise))
    {
        return Verdict::DropBlocked;
    }
    if config.flags & XdpConfig::FLAG_PREFIX_BLOCKLIST != 0
        && let Some(entry) = PREFIX_BLOCKLIST.get(Key::new(128, source.addr))
        && entry.is_active(now_ns(config, Clock::Precise))
    {
        return Verdict::DropPrefix;
    }
    if config.packets_per_sec == 0 && config.syn_per_sec == 0 {
        return Verdict::Pass;
    }
    rate_verdict(ctx, packet, config)
}

/// Per-source token buckets: one for packets, one for new TCP connections.
fn rate_verdict(ctx: &XdpContext, packet: &Packet, config: &XdpConfig) -> Verdict {
    let now = now_ns(config, Clock::Coarse);
    let key = packet.source.rate_key(config.ipv6_prefix_len);
    let state = match RATE.get_ptr_mut(&key) {
        Some(state) => state,
        None => {
            if !insert_allowed(now, config.new_sources_per_sec) {
                return Verdict::Untracked;
            }
            let fresh = RateState {
                packets: TokenBucket::full(config.burst, now),
                syns: TokenBucket::full(config.syn_burst, now),
                last_event_ns: 0,
            };
            // Another CPU may have inserted it meanwhile; either entry will do.
            let _ = RATE.insert(&key, &fresh, BPF_NOEXIST as u64);
            match RATE.get_ptr_mut(&key) {
                Some(state) => state,
                None => return Verdict::Untracked,
            }
        }
    };
    // SAFETY: a pointer into the map value; races between CPUs only make the limit approximate.
    let state = unsafe { &mut *state };
    let is_syn = matches!(packet.transport, Transport::Port { syn: true, .. });
    let verdict = if is_syn && !state.syns.take(now, config.syn_per_sec, config.syn_burst) {
        Verdict::DropSynRate
    } else if !state
        .packets
        .take(now, config.packets_per_sec, config.burst)
    {
        Verdict::DropRate
    } else {
        return Verdict::Pass;
    };
    // Tell userspace about transitions only, not every dropped packet.
    if state.last_event_ns == 0 || now.saturating_sub(state.last_event_ns) >= EVENT_INTERVAL_NS {
        state.last_event_ns = now;
        let event = RateEvent {
            source: packet.source,
            verdict: verdict as u32,
            _pad: 0,
            at_ns: now,
        };
        let _ = EVENTS.output::<RateEvent>(&event, 0);
        // Pruned at load time unless the gateway runs with `xdp.log = true`.
        debug!(
            ctx,
            "rate drop ({}) from {:i}", verdict as u32, packet.source.addr
        );
    }
    verdict
}

/// Caps how many new sources get a bucket per second (per CPU), so a flood of fresh addresses
/// cannot churn the LRU map and evict the buckets of real offenders.
fn insert_allowed(now: u64, per_sec: u64) -> bool {
    if per_sec == 0 {
        return true;
    }
    let Some(budget) = INSERT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
    let budget = unsafe { &mut *budget };
    if now.saturating_sub(budget.window_start_ns) >= 1_000_000_000 {
        budget.window_start_ns = now;
        budget.inserted = 0;
    }
    if budget.inserted >= per_sec {
        return false;
    }
    budget.inserted += 1;
    true
}

enum Clock {
    /// For block expiry, which userspace computes from CLOCK_MONOTONIC.
    Precise,
    /// For token buckets: cheaper, and a jiffy of error does not matter.
    Coarse,
}

#[inline(always)]
fn now_ns(config: &XdpConfig, clock: Clock) -> u64 {
    if config.clock_override_ns != 0 {
        return config.clock_override_ns;
    }
    // SAFETY: helpers without arguments.
    match clock {
        Clock::Precise => unsafe { bpf_ktime_get_ns() },
        Clock::Coarse => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// The IPv4/IPv6 packet in the frame (behind up to two VLAN tags); `None` for anything else
/// (ARP, NDP's carrier aside, and other non-IP traffic always pass).
#[inline(always)]
fn packet_of(ctx: &XdpContext) -> Result<Option<Packet>, Truncated> {
    let eth: *const EthHdr = header_at(ctx, 0)?;
    // SAFETY (all header reads): `header_at` checked that the header lies inside the packet.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // A tag is 2 bytes of TCI followed by the encapsulated EtherType.
        let tag: *const [u8; VLAN_TAG_LEN] = header_at(ctx, offset)?;
        let tag = unsafe { *tag };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        offset += VLAN_TAG_LEN;
    }
    match ether_type {
        ETH_P_IPV4 => ipv4(ctx, offset).map(Some),
        ETH_P_IPV6 => ipv6(ctx, offset).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, offset: usize) -> Result<Packet, Truncated> {
    let ip: *const Ipv4Hdr = header_at(ctx, offset)?;
    let ip = unsafe { &*ip };
    // IHL counts 4-byte words: fewer than 5 cannot hold the fixed header.
    let header_len = ip.ihl() as usize;
    if header_len < Ipv4Hdr::LEN {
        return Err(Truncated);
    }
    let source = SourceKey::from_ipv4(ip.src_addr);
    let fragment_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
    let transport = if fragment_offset != 0 {
        Transport::Unknown
    } else {
        transport_at(ctx, offset + header_len, ip.proto)?
    };
    Ok(Packet { source, transport })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, offset: usize) -> Result<Packet, Truncated> {
    let ip: *const Ipv6Hdr = header_at(ctx, offset)?;
    let ip = unsafe { &*ip };
    let source = SourceKey::from_ipv6(ip.src_addr);
    let mut next = ip.next_hdr;
    let mut offset = offset + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let length = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let ext: *const [u8; 2] = header_at(ctx, offset)?;
                let ext = unsafe { *ext };
                next = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPV6_AUTH => {
                let ext: *const [u8; 2] = header_at(ctx, offset)?;
                let ext = unsafe { *ext };
                next = ext[0];
                (ext[1] as usize + 2) * 4
            }
            IPV6_FRAGMENT => {
                let ext: *const [u8; 4] = header_at(ctx, offset)?;
                let ext = unsafe { *ext };
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    return Ok(Packet {
                        source,
                        transport: Transport::Unknown,
                    });
                }
                next = ext[0];
                8
            }
            _ => {
                return Ok(Packet {
                    source,
                    transport: transport_at(ctx, offset, next)?,
                });
            }
        };
        offset += length;
    }
    Ok(Packet {
        source,
        transport: Transport::Unknown,
    })
}

#[inline(always)]
fn transport_at(ctx: &XdpContext, offset: usize, protocol: u8) -> Result<Transport, Truncated> {
    match protocol {
        IPPROTO_TCP => {
            // Ports, sequence and acknowledgement numbers, data offset, flags.
            let tcp: *const [u8; 14] = header_at(ctx, offset)?;
            let tcp = unsafe { *tcp };
            let flags = tcp[13];
            Ok(Transport::Port {
                port: u16::from_be_bytes([tcp[2], tcp[3]]),
                syn: flags & TCP_SYN != 0 && flags & TCP_ACK == 0,
            })
        }
        IPPROTO_UDP => {
            let udp: *const [u8; 4] = header_at(ctx, offset)?;
            let udp = unsafe { *udp };
            Ok(Transport::Port {
                port: u16::from_be_bytes([udp[2], udp[3]]),
                syn: false,
            })
        }
        _ => Ok(Transport::Portless),
    }
}

#[inline(always)]
fn count(verdict: Verdict) {
    if let Some(counter) = STATS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Headers lie within this many bytes of the frame start (bounds offsets for the verifier).
const MAX_HEADER_OFFSET: usize = 1024;

/// Pointer to a `T` at `offset` bytes into the packet, if the whole `T` lies inside it.
#[inline(always)]
fn header_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Truncated> {
    if offset > MAX_HEADER_OFFSET {
        return Err(Truncated);
    }
    let start = ctx.data() + offset;
    if start + mem::size_of::<T>() > ctx.data_end() {
        return Err(Truncated);
    }
    Ok(start as *const T)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
