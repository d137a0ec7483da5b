//! The real XDP program, loaded into the kernel and run on crafted frames with BPF_PROG_TEST_RUN:
//! every verdict, every header shape it must parse. Needs root (or CAP_BPF + CAP_NET_ADMIN):
//! `cargo xtask test` runs these when root and reports them as ignored otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should stop it loudly

use std::net::IpAddr;

use ipnet::IpNet;

mod frames;

use aya::programs::{TestRun, TestRunOptions};
use frames::*;
use gateway::kernel::{XdpProgram, monotonic_now_ns};
use gateway_ebpf::{BlockReason, RateEvent, Verdict, XdpConfig};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const PORT: u16 = 8080;
const OTHER_PORT: u16 = 22;
const BLOCKED_V4: [u8; 4] = [198, 51, 100, 7];
const OTHER_V4: [u8; 4] = [198, 51, 100, 8];
const BLOCKED_V6: &str = "2001:db8::bad";
const OTHER_V6: &str = "2001:db8::900d";
const SECOND: u64 = 1_000_000_000;

// ---- running the program --------------------------------------------------------------------

struct Program {
    kernel: XdpProgram,
}

impl Program {
    /// The program protecting PORT, with BLOCKED_V4 and BLOCKED_V6 on the blocklist.
    fn new() -> Self {
        let kernel = XdpProgram::load(None, false).expect("load the XDP program (needs root)");
        let mut program = Self { kernel };
        program.configure(|_| {});
        program
            .kernel
            .block(IpAddr::from(BLOCKED_V4), 0, BlockReason::Manual)
            .expect("block");
        let in_an_hour = monotonic_now_ns() + 3_600 * SECOND;
        program
            .kernel
            .block(
                BLOCKED_V6.parse().expect("addr"),
                in_an_hour,
                BlockReason::AuthFailures,
            )
            .expect("block");
        program
    }

    fn configure(&mut self, change: impl FnOnce(&mut XdpConfig)) {
        let mut config = self.kernel.config().expect("config");
        config.ports[0] = PORT;
        config.port_count = 1;
        change(&mut config);
        self.kernel.set_config(&config).expect("set config");
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        let program = self.kernel.program().expect("program");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        program
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    fn count(&self, verdict: Verdict) -> u64 {
        self.kernel
            .stats()
            .expect("stats")
            .into_iter()
            .find(|(v, _)| *v == verdict)
            .map(|(_, n)| n)
            .expect("counter")
    }

    /// Only these verdicts were counted, this many times each.
    fn assert_counts(&self, expected: &[(Verdict, u64)]) {
        for (verdict, count) in self.kernel.stats().expect("stats") {
            let want = expected
                .iter()
                .find(|(v, _)| *v == verdict)
                .map_or(0, |(_, n)| *n);
            assert_eq!(count, want, "counter {}", verdict.as_str());
        }
    }
}

// ---- verdicts -------------------------------------------------------------------------------

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn blocked_sources_are_dropped_on_protected_ports_only() {
    let mut program = Program::new();
    assert_eq!(program.run(&v4_tcp(BLOCKED_V4, PORT)), XDP_DROP);
    let udp_frame = V4 {
        protocol: 17,
        ..V4::new(BLOCKED_V4)
    }
    .frame(&udp(PORT));
    assert_eq!(program.run(&udp_frame), XDP_DROP);
    assert_eq!(program.run(&v6_tcp(BLOCKED_V6, PORT)), XDP_DROP);
    assert_eq!(program.run(&v4_tcp(OTHER_V4, PORT)), XDP_PASS);
    assert_eq!(program.run(&v6_tcp(OTHER_V6, PORT)), XDP_PASS);
    // Other ports and portless protocols pass even from blocked sources.
    assert_eq!(program.run(&v4_tcp(BLOCKED_V4, OTHER_PORT)), XDP_PASS);
    let icmp = V4 {
        protocol: 1,
        ..V4::new(BLOCKED_V4)
    }
    .frame(&[8, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(program.run(&icmp), XDP_PASS);
    program.assert_counts(&[(Verdict::DropBlocked, 3), (Verdict::Pass, 4)]);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn without_configured_ports_everything_is_protected() {
    let mut program = Program::new();
    program.configure(|config| config.port_count = 0);
    assert_eq!(program.run(&v4_tcp(BLOCKED_V4, OTHER_PORT)), XDP_DROP);
    let icmp = V4 {
        protocol: 1,
        ..V4::new(BLOCKED_V4)
    }
    .frame(&[8, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(program.run(&icmp), XDP_DROP);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn ipv4_options_are_skipped_by_the_header_length() {
    let mut program = Program::new();
    // IHL 7: 8 bytes of options (NOPs) before TCP. If the options were ignored, the port would be
    // read from the option bytes and the protected-port check would go wrong.
    let with_options = V4 {
        options: vec![1; 8],
        ..V4::new(BLOCKED_V4)
    };
    assert_eq!(program.run(&with_options.frame(&tcp(PORT, ACK))), XDP_DROP);
    assert_eq!(
        program.run(&with_options.frame(&tcp(OTHER_PORT, ACK))),
        XDP_PASS
    );
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn ipv6_extension_headers_are_walked_to_the_port() {
    let mut program = Program::new();
    let extensions = [(0, 8), (60, 16)];
    assert_eq!(
        program.run(&v6_frame(BLOCKED_V6, &extensions, 6, &tcp(PORT, ACK))),
        XDP_DROP
    );
    assert_eq!(
        program.run(&v6_frame(BLOCKED_V6, &extensions, 6, &tcp(OTHER_PORT, ACK))),
        XDP_PASS
    );
    // Five extension headers: more than the program walks, so the port is unknown: protected.
    let many = [(0, 8), (60, 8), (60, 8), (60, 8), (60, 8)];
    assert_eq!(
        program.run(&v6_frame(BLOCKED_V6, &many, 6, &tcp(OTHER_PORT, ACK))),
        XDP_DROP
    );
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn fragments_cannot_slip_past_a_block() {
    let mut program = Program::new();
    // Non-first IPv4 fragment: no TCP header, so no port: treated as protected.
    let later_fragment = V4 {
        fragment_offset: 185,
        ..V4::new(BLOCKED_V4)
    };
    assert_eq!(program.run(&later_fragment.frame(&[0u8; 16])), XDP_DROP);
    // First fragment (offset 0, more-fragments bit) carries the port.
    let first_fragment = V4 {
        fragment_offset: 0x2000,
        ..V4::new(BLOCKED_V4)
    };
    assert_eq!(
        program.run(&first_fragment.frame(&tcp(OTHER_PORT, ACK))),
        XDP_PASS
    );
    // IPv6 fragment header with a non-zero offset.
    let mut frame = v6_frame(BLOCKED_V6, &[(44, 8)], 6, &[0u8; 16]);
    let fragment_header = 14 + 40;
    frame[fragment_header + 2..fragment_header + 4].copy_from_slice(&(100u16 << 3).to_be_bytes());
    assert_eq!(program.run(&frame), XDP_DROP);
    assert_eq!(
        program.run(&v6_frame(BLOCKED_V6, &[(44, 8)], 6, &tcp(OTHER_PORT, ACK))),
        XDP_PASS
    );
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn one_and_two_vlan_tags_are_parsed() {
    let mut program = Program::new();
    let one = V4 {
        vlans: vec![100],
        ..V4::new(BLOCKED_V4)
    };
    let two = V4 {
        vlans: vec![100, 10],
        ..V4::new(BLOCKED_V4)
    };
    assert_eq!(program.run(&one.frame(&tcp(PORT, ACK))), XDP_DROP);
    assert_eq!(program.run(&two.frame(&tcp(PORT, ACK))), XDP_DROP);
    assert_eq!(program.run(&two.frame(&tcp(OTHER_PORT, ACK))), XDP_PASS);
    let other = V4 {
        vlans: vec![100, 10],
        ..V4::new(OTHER_V4)
    };
    assert_eq!(program.run(&other.frame(&tcp(PORT, ACK))), XDP_PASS);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn truncated_frames_and_bad_headers_pass_as_parse_errors() {
    let mut program = Program::new();
    let v4 = v4_tcp(BLOCKED_V4, PORT);
    assert_eq!(
        program.run(&v4[..14 + 10]),
        XDP_PASS,
        "cut inside the IPv4 header"
    );
    assert_eq!(
        program.run(&v4[..14 + 20 + 2]),
        XDP_PASS,
        "cut inside the TCP header"
    );
    let v6 = v6_tcp(BLOCKED_V6, PORT);
    assert_eq!(
        program.run(&v6[..14 + 20]),
        XDP_PASS,
        "cut inside the IPv6 source address"
    );
    let mut bad_ihl = v4.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(program.run(&bad_ihl), XDP_PASS, "IHL below 5");
    let vlan = V4 {
        vlans: vec![7],
        ..V4::new(BLOCKED_V4)
    }
    .frame(&tcp(PORT, ACK));
    assert_eq!(
        program.run(&vlan[..16]),
        XDP_PASS,
        "cut inside the VLAN tag"
    );
    assert_eq!(program.run(&arp_request()), XDP_PASS, "ARP always passes");
    program.assert_counts(&[(Verdict::ParseError, 5), (Verdict::Pass, 1)]);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn allowlisted_sources_are_never_dropped() {
    let mut program = Program::new();
    let mut events = program.kernel.take_events().expect("events");
    program
        .kernel
        .allow("198.51.100.0/28".parse().expect("prefix"))
        .expect("allow");
    program
        .kernel
        .allow("2001:db8::/64".parse().expect("prefix"))
        .expect("allow");
    // The program drops a blocklisted source without looking at the allowlist: allowing a prefix
    // lifts the blocks inside it, and blocking an allowlisted address is refused.
    assert!(program.kernel.blocks().expect("blocks").is_empty());
    let refused = program
        .kernel
        .block(IpAddr::from(BLOCKED_V4), 0, BlockReason::Manual)
        .unwrap_err();
    assert!(refused.to_string().contains("allowlisted"), "{refused}");
    program
        .kernel
        .block_prefix(
            "198.51.100.0/24".parse().expect("prefix"),
            0,
            BlockReason::Manual,
        )
        .expect("block prefix");
    program.configure(|config| {
        config.packets_per_sec = 1;
        config.burst = 1;
        config.clock_override_ns = 1_000 * SECOND;
    });
    // In a blocked prefix.
    assert_eq!(program.run(&v4_tcp(BLOCKED_V4, PORT)), XDP_PASS);
    // Within its rate, then over it.
    assert_eq!(program.run(&v6_tcp(BLOCKED_V6, PORT)), XDP_PASS);
    assert_eq!(program.run(&v6_tcp(BLOCKED_V6, PORT)), XDP_PASS);
    // Outside the allowed /28 but inside the blocked /24.
    assert_eq!(program.run(&v4_tcp([198, 51, 100, 77], PORT)), XDP_DROP);
    program.assert_counts(&[
        (Verdict::Allowlisted, 2),
        (Verdict::Pass, 1),
        (Verdict::DropPrefix, 1),
    ]);
    assert!(
        next_event(&mut events).is_none(),
        "an allowlisted source over its rate is not reported"
    );
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn expired_blocks_no_longer_drop_and_are_swept() {
    let mut program = Program::new();
    let source = IpAddr::from([192, 0, 2, 50]);
    // 1 ns after boot is long past.
    program
        .kernel
        .block(source, 1, BlockReason::RateLimited)
        .expect("block");
    assert_eq!(program.run(&v4_tcp([192, 0, 2, 50], PORT)), XDP_PASS);
    let swept = program
        .kernel
        .sweep_expired(monotonic_now_ns())
        .expect("sweep");
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].0, IpNet::from(source));
    // Active blocks stay.
    let left: Vec<IpNet> = program
        .kernel
        .blocks()
        .expect("blocks")
        .into_iter()
        .map(|(target, _)| target)
        .collect();
    assert!(
        left.contains(&IpNet::from(IpAddr::from(BLOCKED_V4))) && left.len() == 2,
        "{left:?}"
    );
    assert!(
        program
            .kernel
            .remove_block(IpNet::from(IpAddr::from(BLOCKED_V4)))
            .expect("unblock")
    );
    assert_eq!(program.run(&v4_tcp(BLOCKED_V4, PORT)), XDP_PASS);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn prefix_blocks_drop_whole_ranges() {
    let mut program = Program::new();
    assert_eq!(
        program.run(&v4_tcp([203, 0, 113, 9], PORT)),
        XDP_PASS,
        "prefix list empty"
    );
    for prefix in ["203.0.113.0/24", "2001:db8:bad::/48", "fd00:7::/64"] {
        program
            .kernel
            .block_prefix(prefix.parse().expect("prefix"), 0, BlockReason::Manual)
            .expect("block");
    }
    assert_eq!(program.run(&v4_tcp([203, 0, 113, 9], PORT)), XDP_DROP);
    assert_eq!(program.run(&v4_tcp([203, 0, 114, 9], PORT)), XDP_PASS);
    assert_eq!(program.run(&v6_tcp("2001:db8:bad:1::5", PORT)), XDP_DROP);
    assert_eq!(program.run(&v6_tcp("2001:db8:bae::5", PORT)), XDP_PASS);
    // An IPv6 offender's /64: every neighbour inside it, nobody in the next /64.
    assert_eq!(program.run(&v6_tcp("fd00:7::2", PORT)), XDP_DROP);
    assert_eq!(program.run(&v6_tcp("fd00:7::ffff:3", PORT)), XDP_DROP);
    assert_eq!(program.run(&v6_tcp("fd00:7:0:1::2", PORT)), XDP_PASS);
    assert_eq!(program.count(Verdict::DropPrefix), 4);
    let mut listed: Vec<String> = program
        .kernel
        .blocks()
        .expect("blocks")
        .into_iter()
        .map(|(target, _)| target.to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "198.51.100.7/32",
            "2001:db8::bad/128",
            "2001:db8:bad::/48",
            "203.0.113.0/24",
            "fd00:7::/64"
        ]
    );
    assert!(
        program
            .kernel
            .remove_block("fd00:7::/64".parse().expect("prefix"))
            .expect("unblock")
    );
    assert_eq!(program.run(&v6_tcp("fd00:7::2", PORT)), XDP_PASS);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn an_allowlisted_network_inside_a_blocked_prefix_is_served() {
    let mut program = Program::new();
    program
        .kernel
        .allow("fd00:7:0:9::/64".parse().expect("prefix"))
        .expect("allow");
    program
        .kernel
        .allow("192.0.2.128/25".parse().expect("prefix"))
        .expect("allow");
    for prefix in ["fd00:7::/48", "192.0.2.0/24"] {
        program
            .kernel
            .block_prefix(
                prefix.parse().expect("prefix"),
                0,
                BlockReason::AuthFailures,
            )
            .expect("block");
    }
    assert_eq!(program.run(&v6_tcp("fd00:7:0:9::5", PORT)), XDP_PASS);
    assert_eq!(program.run(&v6_tcp("fd00:7:0:8::5", PORT)), XDP_DROP);
    assert_eq!(program.run(&v4_tcp([192, 0, 2, 200], PORT)), XDP_PASS);
    assert_eq!(program.run(&v4_tcp([192, 0, 2, 100], PORT)), XDP_DROP);
    program.assert_counts(&[(Verdict::Allowlisted, 2), (Verdict::DropPrefix, 2)]);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn expired_prefix_blocks_no_longer_drop_and_are_swept() {
    let mut program = Program::new();
    let prefix: IpNet = "fd00:7::/64".parse().expect("prefix");
    program
        .kernel
        .block_prefix(prefix, 1, BlockReason::AuthFailures)
        .expect("block");
    assert_eq!(program.run(&v6_tcp("fd00:7::2", PORT)), XDP_PASS);
    let swept = program
        .kernel
        .sweep_expired(monotonic_now_ns())
        .expect("sweep");
    assert_eq!(
        swept.iter().map(|(target, _)| *target).collect::<Vec<_>>(),
        [prefix]
    );
    assert!(
        !program.kernel.remove_block(prefix).expect("remove"),
        "already gone"
    );
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn packets_over_the_rate_are_dropped_and_reported_once() {
    let mut program = Program::new();
    let mut events = program.kernel.take_events().expect("events");
    let t0 = 1_000 * SECOND;
    program.configure(|config| {
        config.packets_per_sec = 10;
        config.burst = 3;
        config.clock_override_ns = t0;
    });
    let frame = v4_tcp(OTHER_V4, PORT);
    let verdicts: Vec<u32> = (0..5).map(|_| program.run(&frame)).collect();
    assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
    // One event for the first drop, not one per packet.
    let event = next_event(&mut events).expect("an event for the first drop");
    assert_eq!(event.source.ip(), IpAddr::from(OTHER_V4));
    assert_eq!(event.verdict, Verdict::DropRate as u32);
    assert!(
        next_event(&mut events).is_none(),
        "a single event per interval"
    );

    // 10 per second: one token per 100 ms.
    program.configure(|config| {
        config.packets_per_sec = 10;
        config.burst = 3;
        config.clock_override_ns = t0 + SECOND / 10;
    });
    assert_eq!(program.run(&frame), XDP_PASS);
    assert_eq!(program.run(&frame), XDP_DROP);
    // Another source has its own bucket.
    assert_eq!(program.run(&v4_tcp([198, 51, 100, 9], PORT)), XDP_PASS);
    program.assert_counts(&[(Verdict::Pass, 5), (Verdict::DropRate, 3)]);

    // A second later, the still-dropping source is reported again.
    program.configure(|config| {
        config.packets_per_sec = 10;
        config.burst = 0;
        config.clock_override_ns = t0 + 2 * SECOND;
    });
    assert_eq!(program.run(&frame), XDP_DROP);
    assert!(next_event(&mut events).is_some());
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn new_connections_have_their_own_rate() {
    let mut program = Program::new();
    program.configure(|config| {
        config.syn_per_sec = 1;
        config.syn_burst = 2;
        config.clock_override_ns = 5 * SECOND;
    });
    let syn = V4::new(OTHER_V4).frame(&tcp(PORT, SYN));
    let syn_ack = V4::new(OTHER_V4).frame(&tcp(PORT, SYN | ACK));
    assert_eq!(program.run(&syn), XDP_PASS);
    assert_eq!(program.run(&syn), XDP_PASS);
    assert_eq!(program.run(&syn), XDP_DROP);
    // Packets of established connections are not SYNs.
    assert_eq!(program.run(&v4_tcp(OTHER_V4, PORT)), XDP_PASS);
    assert_eq!(program.run(&syn_ack), XDP_PASS);
    program.assert_counts(&[(Verdict::Pass, 4), (Verdict::DropSynRate, 1)]);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn ipv6_sources_share_a_bucket_per_prefix() {
    let mut program = Program::new();
    program.configure(|config| {
        config.packets_per_sec = 1;
        config.burst = 1;
        config.ipv6_prefix_len = 64;
        config.clock_override_ns = 7 * SECOND;
    });
    assert_eq!(program.run(&v6_tcp("2001:db8:0:1::1", PORT)), XDP_PASS);
    // Same /64, different address: same bucket, now empty.
    assert_eq!(program.run(&v6_tcp("2001:db8:0:1::2", PORT)), XDP_DROP);
    // Another /64.
    assert_eq!(program.run(&v6_tcp("2001:db8:0:2::1", PORT)), XDP_PASS);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn new_sources_beyond_the_insert_cap_are_not_tracked() {
    let mut program = Program::new();
    program.configure(|config| {
        config.packets_per_sec = 1;
        config.burst = 1;
        config.new_sources_per_sec = 2;
        config.clock_override_ns = 9 * SECOND;
    });
    for last in 1..=3 {
        assert_eq!(program.run(&v4_tcp([192, 0, 2, last], PORT)), XDP_PASS);
    }
    assert_eq!(program.count(Verdict::Untracked), 1);
    // The two tracked sources are limited.
    assert_eq!(program.run(&v4_tcp([192, 0, 2, 1], PORT)), XDP_DROP);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn sources_sharing_a_rate_slot_keep_their_own_buckets() {
    let mut program = Program::new();
    let t0 = 11 * SECOND;
    let at = |program: &mut Program, now: u64| {
        program.configure(|config| {
            config.packets_per_sec = 1;
            config.burst = 2;
            config.clock_override_ns = now;
        })
    };
    at(&mut program, t0);
    let first = [192, 0, 2, 10];
    let slot = gateway_ebpf::address_slot(&gateway_ebpf::SourceKey::from_ipv4(first).addr);
    let second = (0u32..1 << 24)
        .map(|i| {
            let [_, b, c, d] = i.to_be_bytes();
            [10, b, c, d]
        })
        .find(|other| {
            gateway_ebpf::address_slot(&gateway_ebpf::SourceKey::from_ipv4(*other).addr) == slot
        })
        .expect("an address in the same rate slot in 10.0.0.0/8");
    // The first takes the slot; the second keeps its buckets in the LRU map.
    assert_eq!(program.run(&v4_tcp(first, PORT)), XDP_PASS);
    let second_verdicts: Vec<u32> = (0..3).map(|_| program.run(&v4_tcp(second, PORT))).collect();
    assert_eq!(second_verdicts, [XDP_PASS, XDP_PASS, XDP_DROP]);
    // A second later the first's bucket is full again (idle), so the second takes the slot over,
    // with the one token its own bucket has refilled, not a fresh burst of two.
    at(&mut program, t0 + SECOND);
    assert_eq!(program.run(&v4_tcp(second, PORT)), XDP_PASS);
    assert_eq!(program.run(&v4_tcp(second, PORT)), XDP_DROP);
    // The first, whose bucket was full, starts a full one in the LRU map.
    assert_eq!(program.run(&v4_tcp(first, PORT)), XDP_PASS);
    assert_eq!(program.run(&v4_tcp(first, PORT)), XDP_PASS);
    assert_eq!(program.run(&v4_tcp(first, PORT)), XDP_DROP);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn dry_run_counts_but_does_not_drop() {
    let mut program = Program::new();
    program.configure(|config| config.flags |= XdpConfig::FLAG_DRY_RUN);
    assert_eq!(program.run(&v4_tcp(BLOCKED_V4, PORT)), XDP_PASS);
    assert_eq!(program.run(&v6_tcp(BLOCKED_V6, PORT)), XDP_PASS);
    program.assert_counts(&[(Verdict::DryRunWouldDrop, 2)]);
}

fn next_event(events: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Option<RateEvent> {
    let item = events.next()?;
    assert_eq!(item.len(), std::mem::size_of::<RateEvent>());
    // SAFETY: the program writes whole RateEvents; read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RateEvent>()) })
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN, bpffs"]
fn blocks_and_allowlists_in_pinned_maps_are_counted_into_the_next_programs_slots() {
    /// Removes the pins even when the test fails.
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = gateway::kernel::unpin_all(&self.0);
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let pins = Pins(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/gateway-test-{}",
        std::process::id()
    )));
    {
        let mut first = XdpProgram::load(Some(&pins.0), false).expect("load with pins");
        first
            .block(IpAddr::from(BLOCKED_V4), 0, BlockReason::Manual)
            .expect("block");
        first
            .block_prefix("203.0.113.0/24".parse().unwrap(), 0, BlockReason::Manual)
            .expect("block prefix");
        first
            .allow("203.0.113.128/25".parse().unwrap())
            .expect("allow");
    }
    // As after an upgrade from a build without slots: the lists are pinned, the slots are not.
    for slots in [
        gateway_ebpf::ADDRESS_SLOTS_MAP,
        gateway_ebpf::NETWORK_SLOTS_MAP,
    ] {
        std::fs::remove_file(pins.0.join(slots)).expect("unpin the slots");
    }
    // A new program on the same lists: it counts their entries into its slots before it runs.
    let mut program = Program {
        kernel: XdpProgram::load(Some(&pins.0), false).expect("load from pins"),
    };
    program.configure(|_| {});
    assert_eq!(program.run(&v4_tcp(BLOCKED_V4, PORT)), XDP_DROP);
    assert_eq!(program.run(&v4_tcp([203, 0, 113, 9], PORT)), XDP_DROP);
    assert_eq!(program.run(&v4_tcp([203, 0, 113, 200], PORT)), XDP_PASS);
    assert_eq!(program.run(&v4_tcp(OTHER_V4, PORT)), XDP_PASS);
    assert_eq!(program.count(Verdict::Allowlisted), 1);
    // And it keeps the counts right from there: an unblock is seen at once.
    assert!(
        program
            .kernel
            .remove_block(IpNet::from(IpAddr::from(BLOCKED_V4)))
            .expect("unblock")
    );
    assert_eq!(program.run(&v4_tcp(BLOCKED_V4, PORT)), XDP_PASS);
}

#[test]
#[ignore = "needs root: BPF_PROG_TEST_RUN"]
fn a_new_allowlist_replaces_the_old_one_in_the_kernel() {
    let mut program = Program::new();
    let kept: IpNet = "2001:db8::/64".parse().expect("prefix");
    let dropped: IpNet = "198.51.100.0/28".parse().expect("prefix");
    program.kernel.allow(dropped).expect("allow");
    program.kernel.allow(kept).expect("allow");
    program
        .kernel
        .block_prefix(
            "198.51.100.0/24".parse().expect("prefix"),
            0,
            BlockReason::Manual,
        )
        .expect("block prefix");
    assert_eq!(
        program.run(&v4_tcp(BLOCKED_V4, PORT)),
        XDP_PASS,
        "allowlisted"
    );

    // A reload (or a start on pinned maps) whose allowlist no longer has the /28.
    let added: IpNet = "203.0.113.0/24".parse().expect("prefix");
    program
        .kernel
        .set_allowlist(&[kept, added])
        .expect("set allowlist");
    let mut allowed = program.kernel.allowed().expect("allowed");
    allowed.sort();
    let mut expected = vec![kept, added];
    expected.sort();
    assert_eq!(allowed, expected);
    assert_eq!(
        program.run(&v4_tcp(BLOCKED_V4, PORT)),
        XDP_DROP,
        "no longer allowlisted: the prefix block applies"
    );
    assert!(program.kernel.disallow(added).expect("disallow"));
    assert!(
        !program.kernel.disallow(added).expect("disallow"),
        "already gone"
    );
}
