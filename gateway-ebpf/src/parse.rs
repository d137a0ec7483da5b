//! Packet parsing, apart from policy: from the frame to what the verdict needs (the source
//! address, and the destination port and SYN flag where visible). Everything here is bounds
//! checked for the verifier through [`header_at`].

use core::mem;

use aya_ebpf::programs::XdpContext;
use gateway_ebpf::SourceKey;
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

/// The frame ends before a header it announces, or a header is invalid.
pub struct Truncated;

/// What the program needs from an IP packet.
pub struct Packet {
    pub source: SourceKey,
    pub transport: Transport,
}

pub enum Transport {
    /// TCP or UDP to `port`; `syn` for a TCP SYN without ACK (a new connection).
    Port { port: u16, syn: bool },
    /// Port not visible: a non-first fragment, or more extension headers than are walked.
    /// Treated as protected, so fragments cannot slip past a block.
    Unknown,
    /// ICMP and other protocols without ports.
    Portless,
}

/// The IPv4/IPv6 packet in the frame (behind up to two VLAN tags); `None` for anything else
/// (ARP, NDP's carrier aside, and other non-IP traffic always pass).
#[inline(always)]
pub fn packet_of(ctx: &XdpContext) -> Result<Option<Packet>, Truncated> {
    let eth: *const EthHdr = header_at(ctx, 0)?;
    // SAFETY: `header_at` checked that it lies inside the packet.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // A tag is 2 bytes of TCI followed by the encapsulated EtherType.
        let tag: *const [u8; VLAN_TAG_LEN] = header_at(ctx, offset)?;
        // SAFETY: `header_at` checked that it lies inside the packet.
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
    // SAFETY: `header_at` checked that it lies inside the packet.
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
    // SAFETY: `header_at` checked that it lies inside the packet.
    let ip = unsafe { &*ip };
    let source = SourceKey::from_ipv6(ip.src_addr);
    let mut next = ip.next_hdr;
    let mut offset = offset + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let length = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let ext: *const [u8; 2] = header_at(ctx, offset)?;
                // SAFETY: `header_at` checked that it lies inside the packet.
                let ext = unsafe { *ext };
                next = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPV6_AUTH => {
                let ext: *const [u8; 2] = header_at(ctx, offset)?;
                // SAFETY: `header_at` checked that it lies inside the packet.
                let ext = unsafe { *ext };
                next = ext[0];
                (ext[1] as usize + 2) * 4
            }
            IPV6_FRAGMENT => {
                let ext: *const [u8; 4] = header_at(ctx, offset)?;
                // SAFETY: `header_at` checked that it lies inside the packet.
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
            // SAFETY: `header_at` checked that it lies inside the packet.
            let tcp = unsafe { *tcp };
            let flags = tcp[13];
            Ok(Transport::Port {
                port: u16::from_be_bytes([tcp[2], tcp[3]]),
                syn: flags & TCP_SYN != 0 && flags & TCP_ACK == 0,
            })
        }
        IPPROTO_UDP => {
            let udp: *const [u8; 4] = header_at(ctx, offset)?;
            // SAFETY: `header_at` checked that it lies inside the packet.
            let udp = unsafe { *udp };
            Ok(Transport::Port {
                port: u16::from_be_bytes([udp[2], udp[3]]),
                syn: false,
            })
        }
        _ => Ok(Transport::Portless),
    }
}

/// Headers lie within this many bytes of the frame start (bounds offsets for the verifier).
pub const MAX_HEADER_OFFSET: usize = 1024;

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
