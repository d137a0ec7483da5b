//! Crafted Ethernet frames for running the XDP program with BPF_PROG_TEST_RUN (tests and benches).
#![allow(dead_code)]

use std::net::Ipv6Addr;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

pub fn ethernet(ether_type: u16, vlans: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    // Outer tag first: 802.1ad for the outer of two, 802.1Q for the inner (or only) one.
    for (i, vid) in vlans.iter().enumerate() {
        let tpid: u16 = if i + 1 < vlans.len() { 0x88A8 } else { 0x8100 };
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn tcp(port: u16, flags: u8) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp
}

pub fn udp(port: u16) -> Vec<u8> {
    let mut udp = vec![0u8; 8];
    udp[2..4].copy_from_slice(&port.to_be_bytes());
    udp
}

pub struct V4 {
    pub source: [u8; 4],
    pub protocol: u8,
    pub options: Vec<u8>,
    pub fragment_offset: u16,
    pub vlans: Vec<u16>,
}

impl V4 {
    pub fn new(source: [u8; 4]) -> Self {
        Self {
            source,
            protocol: 6,
            options: Vec::new(),
            fragment_offset: 0,
            vlans: Vec::new(),
        }
    }

    pub fn frame(&self, l4: &[u8]) -> Vec<u8> {
        let ihl = 5 + self.options.len() / 4;
        let mut ip = vec![0x40 | ihl as u8, 0];
        ip.extend_from_slice(&((ihl * 4 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.fragment_offset.to_be_bytes());
        ip.extend_from_slice(&[64, self.protocol, 0, 0]);
        ip.extend_from_slice(&self.source);
        ip.extend_from_slice(&[10, 0, 0, 1]);
        ip.extend_from_slice(&self.options);
        ip.extend_from_slice(l4);
        ethernet(0x0800, &self.vlans, &ip)
    }
}

pub fn v4_tcp(source: [u8; 4], port: u16) -> Vec<u8> {
    V4::new(source).frame(&tcp(port, ACK))
}

/// IPv6 with the given extension headers (type, total length in bytes) before `l4`.
pub fn v6_frame(source: &str, extensions: &[(u8, usize)], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let source: Ipv6Addr = source.parse().expect("test address");
    let mut chain: Vec<u8> = Vec::new();
    let mut types: Vec<u8> = extensions.iter().map(|(t, _)| *t).collect();
    types.push(protocol);
    for (i, (kind, len)) in extensions.iter().enumerate() {
        let mut ext = vec![0u8; *len];
        ext[0] = types[i + 1];
        ext[1] = if *kind == 44 { 0 } else { (len / 8 - 1) as u8 };
        chain.extend_from_slice(&ext);
    }
    chain.extend_from_slice(l4);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(chain.len() as u16).to_be_bytes());
    ip.push(types[0]);
    ip.push(64);
    ip.extend_from_slice(&source.octets());
    ip.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("addr").octets());
    ip.extend_from_slice(&chain);
    ethernet(0x86DD, &[], &ip)
}

pub fn v6_tcp(source: &str, port: u16) -> Vec<u8> {
    v6_frame(source, &[], 6, &tcp(port, ACK))
}

pub fn arp_request() -> Vec<u8> {
    let arp = [
        0, 1, 0x08, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 2, 198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 10, 0,
        0, 1,
    ];
    ethernet(0x0806, &[], &arp)
}
