//! Kernel half of the gateway: drops traffic from blocked sources before the network stack sees it.

use core::mem;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_ebpf::{BLOCKLIST_CAPACITY, BlockEntry, SourceKey, Verdict};
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

#[map(name = "BLOCKLIST")]
static BLOCKLIST: HashMap<SourceKey, BlockEntry> = HashMap::with_max_entries(BLOCKLIST_CAPACITY, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

#[xdp]
pub fn mcp_gateway(ctx: XdpContext) -> u32 {
    let (verdict, action) = match source_of(&ctx) {
        Err(Truncated) => (Verdict::ParseError, xdp_action::XDP_PASS),
        Ok(None) => (Verdict::Pass, xdp_action::XDP_PASS),
        Ok(Some(source)) if is_blocked(&source) => (Verdict::DropBlocked, xdp_action::XDP_DROP),
        Ok(Some(_)) => (Verdict::Pass, xdp_action::XDP_PASS),
    };
    count(verdict);
    action
}

/// The frame ends before a header it announces.
struct Truncated;

/// Source address of an IPv4/IPv6 packet (behind up to two VLAN tags); `None` for anything else
/// (ARP and other non-IP traffic always pass).
#[inline(always)]
fn source_of(ctx: &XdpContext) -> Result<Option<SourceKey>, Truncated> {
    let eth: *const EthHdr = header_at(ctx, 0)?;
    // SAFETY: `header_at` checked that the header lies inside the packet.
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
        ETH_P_IPV4 => {
            let ip: *const Ipv4Hdr = header_at(ctx, offset)?;
            // An IHL below 5 words cannot hold the fixed header: treat it as malformed.
            if unsafe { (*ip).ihl() } < Ipv4Hdr::LEN as u8 {
                return Err(Truncated);
            }
            Ok(Some(SourceKey::from_ipv4(unsafe { (*ip).src_addr })))
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = header_at(ctx, offset)?;
            Ok(Some(SourceKey::from_ipv6(unsafe { (*ip).src_addr })))
        }
        _ => Ok(None),
    }
}

#[inline(always)]
fn is_blocked(source: &SourceKey) -> bool {
    // SAFETY: the entry is copied out at once; a concurrent update can at worst give a stale verdict.
    match unsafe { BLOCKLIST.get(source) } {
        Some(entry) => entry.is_active(unsafe { bpf_ktime_get_ns() }),
        None => false,
    }
}

#[inline(always)]
fn count(verdict: Verdict) {
    if let Some(counter) = STATS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Pointer to a `T` at `offset` bytes into the packet, if the whole `T` lies inside it.
#[inline(always)]
fn header_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Truncated> {
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
