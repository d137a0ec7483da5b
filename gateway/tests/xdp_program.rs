//! The real XDP program, loaded into the kernel and run on crafted frames with BPF_PROG_TEST_RUN.
//! Needs root (or CAP_BPF + CAP_NET_ADMIN): `cargo xtask test` runs these when root.

use std::net::IpAddr;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use gateway::xdp;
use gateway_ebpf::{BlockEntry, BlockReason, SourceKey, Verdict};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const BLOCKED_V4: [u8; 4] = [198, 51, 100, 7];
const OTHER_V4: [u8; 4] = [198, 51, 100, 8];
const BLOCKED_V6: &str = "2001:db8::bad";
const OTHER_V6: &str = "2001:db8::900d";

fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// IPv4 header (IHL 5) + 8 bytes of UDP-ish payload.
fn ipv4_packet(source: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&source);
    ip.extend_from_slice(&[10, 0, 0, 1]);
    ip.extend_from_slice(&[0x30, 0x39, 0x1f, 0x90, 0, 8, 0, 0]);
    ethernet(0x0800, &ip)
}

fn ipv6_packet(source: &str) -> Vec<u8> {
    let IpAddr::V6(source) = source.parse().expect("test address") else {
        unreachable!("test addresses are IPv6")
    };
    let mut ip = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    ip.extend_from_slice(&source.octets());
    ip.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("addr")
            .octets(),
    );
    ip.extend_from_slice(&[0x30, 0x39, 0x1f, 0x90, 0, 8, 0, 0]);
    ethernet(0x86DD, &ip)
}

fn arp_request() -> Vec<u8> {
    let arp = [
        0, 1, 0x08, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 2, 198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 10, 0,
        0, 1,
    ];
    ethernet(0x0806, &arp)
}

fn run(ebpf: &mut Ebpf, frame: &[u8]) -> u32 {
    let program = xdp::program(ebpf).expect("program");
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    program
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

fn counter(ebpf: &Ebpf, verdict: Verdict) -> u64 {
    xdp::read_stats(ebpf)
        .expect("stats")
        .into_iter()
        .find(|(v, _)| *v == verdict)
        .map(|(_, count)| count)
        .expect("every verdict has a counter")
}

fn block(ebpf: &mut Ebpf, source: IpAddr, expires_at_ns: u64) {
    xdp::blocklist(ebpf)
        .expect("blocklist")
        .insert(
            SourceKey::from(source),
            BlockEntry::new(expires_at_ns, BlockReason::Manual),
            0,
        )
        .expect("insert block");
}

fn loaded_with_blocks() -> Ebpf {
    let mut ebpf = xdp::load().expect("load the XDP program (needs root)");
    block(&mut ebpf, IpAddr::from(BLOCKED_V4), 0);
    block(
        &mut ebpf,
        BLOCKED_V6.parse().expect("addr"),
        xdp::monotonic_now_ns() + 3_600_000_000_000,
    );
    ebpf
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn blocked_ipv4_source_is_dropped_and_others_pass() {
    let mut ebpf = loaded_with_blocks();
    assert_eq!(run(&mut ebpf, &ipv4_packet(BLOCKED_V4)), XDP_DROP);
    assert_eq!(run(&mut ebpf, &ipv4_packet(BLOCKED_V4)), XDP_DROP);
    assert_eq!(run(&mut ebpf, &ipv4_packet(OTHER_V4)), XDP_PASS);
    assert_eq!(counter(&ebpf, Verdict::DropBlocked), 2);
    assert_eq!(counter(&ebpf, Verdict::Pass), 1);
    assert_eq!(counter(&ebpf, Verdict::ParseError), 0);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn blocked_ipv6_source_is_dropped_and_others_pass() {
    let mut ebpf = loaded_with_blocks();
    assert_eq!(run(&mut ebpf, &ipv6_packet(BLOCKED_V6)), XDP_DROP);
    assert_eq!(run(&mut ebpf, &ipv6_packet(OTHER_V6)), XDP_PASS);
    assert_eq!(counter(&ebpf, Verdict::DropBlocked), 1);
    assert_eq!(counter(&ebpf, Verdict::Pass), 1);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn expired_block_no_longer_drops() {
    let mut ebpf = xdp::load().expect("load the XDP program (needs root)");
    // 1 ns after boot is long past.
    block(&mut ebpf, IpAddr::from(BLOCKED_V4), 1);
    assert_eq!(run(&mut ebpf, &ipv4_packet(BLOCKED_V4)), XDP_PASS);
    assert_eq!(counter(&ebpf, Verdict::DropBlocked), 0);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn truncated_frames_pass_as_parse_errors() {
    let mut ebpf = loaded_with_blocks();
    // IPv4 header cut after 10 bytes, before the source address.
    let ipv4 = ipv4_packet(BLOCKED_V4);
    assert_eq!(run(&mut ebpf, &ipv4[..14 + 10]), XDP_PASS);
    // IPv6 header cut inside the source address.
    let ipv6 = ipv6_packet(BLOCKED_V6);
    assert_eq!(run(&mut ebpf, &ipv6[..14 + 20]), XDP_PASS);
    // IHL of 4 words cannot hold an IPv4 header.
    let mut bad_ihl = ipv4_packet(BLOCKED_V4);
    bad_ihl[14] = 0x44;
    assert_eq!(run(&mut ebpf, &bad_ihl), XDP_PASS);
    assert_eq!(counter(&ebpf, Verdict::ParseError), 3);
    assert_eq!(counter(&ebpf, Verdict::DropBlocked), 0);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn arp_always_passes() {
    let mut ebpf = loaded_with_blocks();
    // The ARP sender is the blocked address: non-IP traffic is never dropped.
    assert_eq!(run(&mut ebpf, &arp_request()), XDP_PASS);
    assert_eq!(counter(&ebpf, Verdict::Pass), 1);
    assert_eq!(counter(&ebpf, Verdict::DropBlocked), 0);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn vlan_tagged_blocked_source_is_dropped() {
    let mut ebpf = loaded_with_blocks();
    let untagged = ipv4_packet(BLOCKED_V4);
    // Outer 802.1ad tag, inner 802.1Q tag, then IPv4.
    let mut frame = untagged[..12].to_vec();
    frame.extend_from_slice(&[0x88, 0xA8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x0A]);
    frame.extend_from_slice(&untagged[12..]);
    assert_eq!(run(&mut ebpf, &frame), XDP_DROP);
    assert_eq!(counter(&ebpf, Verdict::DropBlocked), 1);
}
