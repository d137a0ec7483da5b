//! Kernel half of the gateway: drops traffic from abusive sources before the network stack sees
//! it. Lookup order: blocklist, prefix blocklist, per-source token buckets, and the allowlist
//! only before a drop. The packet is parsed in [`crate::parse`]; this file holds the maps and the
//! verdict.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use gateway_ebpf::{
    ADDRESS_SLOTS as ADDRESS_SLOT_COUNT, AddressSlot, BLOCKLIST_CAPACITY, BlockEntry,
    EVENT_INTERVAL_NS, EVENTS_BYTES, InsertBudget, NETWORK_SLOTS as NETWORK_SLOT_COUNT,
    NetworkSlot, PREFIX_CAPACITY, RATE_CAPACITY, RateEvent, RateSlot, RateState, SourceKey,
    TokenBucket, Verdict, XdpConfig, address_slot, address_words, network_slot,
};

use crate::parse::{Packet, Transport, Truncated, packet_of};

#[map(name = "ALLOWLIST")]
static ALLOWLIST: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);

#[map(name = "BLOCKLIST")]
static BLOCKLIST: HashMap<SourceKey, BlockEntry> = HashMap::with_max_entries(BLOCKLIST_CAPACITY, 0);

#[map(name = "PREFIX_BLOCKLIST")]
static PREFIX_BLOCKLIST: LpmTrie<[u8; 16], BlockEntry> =
    LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);

#[map(name = "ADDRESS_SLOTS")]
static ADDRESS_SLOTS: Array<AddressSlot> = Array::with_max_entries(ADDRESS_SLOT_COUNT, 0);

#[map(name = "NETWORK_SLOTS")]
static NETWORK_SLOTS: Array<NetworkSlot> = Array::with_max_entries(NETWORK_SLOT_COUNT, 0);

#[map(name = "RATE_SLOTS")]
static RATE_SLOTS: Array<RateSlot> = Array::with_max_entries(ADDRESS_SLOT_COUNT, 0);

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
    let verdict = limit_verdict(ctx, packet, config);
    if verdict.is_drop() && config.flags & XdpConfig::FLAG_DRY_RUN != 0 {
        Verdict::DryRunWouldDrop
    } else {
        verdict
    }
}

/// Each map is looked up only when the packet gets that far, and only where the slots say an
/// entry may match (see `gateway_ebpf::slots`). The allowlist is consulted only when a drop is
/// about to happen: the exact blocklist never holds an allowlisted address (userspace removes
/// them and refuses to add them, see `XdpProgram::allow`).
fn limit_verdict(ctx: &XdpContext, packet: &Packet, config: &XdpConfig) -> Verdict {
    let source = &packet.source;
    if is_blocked(source, config) {
        return Verdict::DropBlocked;
    }
    let network = NETWORK_SLOTS
        .get(network_slot(&source.addr))
        .copied()
        // Out of range cannot happen; if it did, walk both tries.
        .unwrap_or(NetworkSlot {
            blocked: 1,
            allowed: 1,
        });
    if network.blocked != 0
        && let Some(entry) = PREFIX_BLOCKLIST.get(Key::new(128, source.addr))
        && is_active(entry.expires_at_ns, config)
    {
        // Unlike the exact blocklist, a blocked prefix may have allowlisted holes.
        return unless_allowlisted(source, &network, Verdict::DropPrefix);
    }
    if config.packets_per_sec == 0 && config.syn_per_sec == 0 {
        return Verdict::Pass;
    }
    rate_verdict(ctx, packet, config, &network)
}

/// Whether `source` is on the blocklist: answered by its address slot alone unless another
/// blocked address shares the slot.
#[inline(always)]
fn is_blocked(source: &SourceKey, config: &XdpConfig) -> bool {
    if let Some(slot) = ADDRESS_SLOTS.get(address_slot(&source.addr)) {
        if slot.cached != 0 && slot.addr == address_words(&source.addr) {
            return is_active(slot.expires_at_ns, config);
        }
        if slot.occupants <= slot.cached {
            return false;
        }
    }
    // SAFETY: entries are copied out at once; a concurrent update can at worst give a stale verdict.
    unsafe { BLOCKLIST.get(source) }.is_some_and(|entry| is_active(entry.expires_at_ns, config))
}

/// Whether a block expiring at `expires_at_ns` applies now. Permanent blocks need no clock; timed
/// ones read the coarse clock (half the precise one's cost here): a block then ends at most one
/// tick (<= 4 ms) late.
#[inline(always)]
fn is_active(expires_at_ns: u64, config: &XdpConfig) -> bool {
    expires_at_ns == 0 || now_ns(config) < expires_at_ns
}

/// `drop`, or [`Verdict::Allowlisted`] for a source on the allowlist.
#[inline(always)]
fn unless_allowlisted(source: &SourceKey, network: &NetworkSlot, drop: Verdict) -> Verdict {
    if network.allowed != 0 && ALLOWLIST.get(Key::new(128, source.addr)).is_some() {
        Verdict::Allowlisted
    } else {
        drop
    }
}

/// Per-source token buckets: one for packets, one for new TCP connections.
fn rate_verdict(
    ctx: &XdpContext,
    packet: &Packet,
    config: &XdpConfig,
    network: &NetworkSlot,
) -> Verdict {
    let now = now_ns(config);
    let key = packet.source.rate_key(config.ipv6_prefix_len);
    let Some(state) = rate_state(&key, now, config) else {
        return Verdict::Untracked;
    };
    // SAFETY: a pointer into a map value; races between CPUs only make the limit approximate.
    let state = unsafe { &mut *state };
    let is_syn = matches!(packet.transport, Transport::Port { syn: true, .. });
    let drop = if is_syn && !state.syns.take(now, config.syn_per_sec, config.syn_burst) {
        Verdict::DropSynRate
    } else if !state
        .packets
        .take(now, config.packets_per_sec, config.burst)
    {
        Verdict::DropRate
    } else {
        return Verdict::Pass;
    };
    let verdict = unless_allowlisted(&packet.source, network, drop);
    if verdict == Verdict::Allowlisted {
        return verdict;
    }
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

/// The token buckets of `key`: in its rate slot when it holds it or can take it over, else in the
/// LRU map; `None` when it has none and the cap on new ones is reached.
#[inline(always)]
fn rate_state(key: &SourceKey, now: u64, config: &XdpConfig) -> Option<*mut RateState> {
    let words = address_words(&key.addr);
    if let Some(slot) = RATE_SLOTS.get_ptr_mut(address_slot(&key.addr)) {
        // SAFETY: a pointer into the array value; races between CPUs only make the limit
        // approximate.
        let slot = unsafe { &mut *slot };
        if slot.occupied != 0 && slot.key == words {
            return Some(&mut slot.state);
        }
        let idle = slot.occupied == 0
            || (slot
                .state
                .packets
                .is_full(now, config.packets_per_sec, config.burst)
                && slot
                    .state
                    .syns
                    .is_full(now, config.syn_per_sec, config.syn_burst));
        if idle {
            // Buckets the source kept in the LRU map while another held the slot come along.
            // SAFETY: copied out at once; a concurrent update can at worst give a stale state.
            let state = match unsafe { RATE.get(key) } {
                Some(state) => *state,
                None if insert_allowed(now, config.new_sources_per_sec) => fresh_state(config, now),
                None => return None,
            };
            slot.occupied = 1;
            slot.key = words;
            slot.state = state;
            return Some(&mut slot.state);
        }
    }
    if let Some(state) = RATE.get_ptr_mut(key) {
        return Some(state);
    }
    if !insert_allowed(now, config.new_sources_per_sec) {
        return None;
    }
    // Another CPU may have inserted it meanwhile; either entry will do.
    let _ = RATE.insert(key, &fresh_state(config, now), BPF_NOEXIST as u64);
    RATE.get_ptr_mut(key)
}

#[inline(always)]
fn fresh_state(config: &XdpConfig, now: u64) -> RateState {
    RateState {
        packets: TokenBucket::full(config.burst, now),
        syns: TokenBucket::full(config.syn_burst, now),
        last_event_ns: 0,
    }
}

/// Caps how many new sources get a bucket per second (per CPU), so a flood of fresh addresses
/// cannot churn the LRU map and evict the buckets of real offenders (nor take every free slot).
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

/// CLOCK_MONOTONIC at tick resolution: token buckets and block expiry (which userspace computes
/// from CLOCK_MONOTONIC) tolerate a tick of error, and the precise clock costs more per packet.
#[inline(always)]
fn now_ns(config: &XdpConfig) -> u64 {
    if config.clock_override_ns != 0 {
        return config.clock_override_ns;
    }
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn count(verdict: Verdict) {
    if let Some(counter) = STATS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

/// The license the kernel checks for GPL-only helpers. Declared here rather than left for the
/// loader to assume; "Dual MIT/GPL" is on the kernel's list of GPL-compatible licenses, and MIT is
/// one of this project's two.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
