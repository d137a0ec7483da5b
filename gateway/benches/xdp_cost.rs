//! XDP cost per packet: the real program run with BPF_PROG_TEST_RUN and `repeat` on crafted
//! frames, one verdict path at a time, against a pass-everything baseline program from the same
//! object. Needs root. Prints one JSON object per measurement (`cargo xtask bench xdp` reads them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should stop it loudly

#[path = "../tests/frames/mod.rs"]
mod frames;

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use frames::{V4, v4_tcp, v6_tcp};
use gateway::kernel::XdpProgram;
use gateway_ebpf::{BlockReason, XdpConfig};

const PORT: u16 = 8080;
const REPEAT: u32 = 2_000_000;
const RUNS: usize = 5;
/// IPv6 /64 blocks in the prefix blocklist for the IPv6 paths (2001:db8:0::/64 to :3e7::/64).
const IPV6_BLOCKS: u32 = 1_000;
/// Blocked IPv4 addresses for the "many blocks" paths (in 100.64.0.0/10, 7 apart).
const IPV4_BLOCKS: u32 = 10_000;

fn ns_per_packet(program: &mut Xdp, frame: &[u8]) -> f64 {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.repeat = REPEAT;
    let result = program
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN (needs root)");
    // The kernel reports the mean duration of one repetition.
    result.duration.as_nanos() as f64
}

fn main() {
    let mut kernel = XdpProgram::load(None, false).expect("load the XDP program (needs root)");
    let mut config = XdpConfig {
        port_count: 1,
        ..XdpConfig::default()
    };
    config.ports[0] = PORT;
    kernel.set_config(&config).expect("config");
    kernel
        .block(IpAddr::from([198, 51, 100, 7]), 0, BlockReason::Manual)
        .expect("block");
    kernel
        .allow("192.0.2.0/24".parse().expect("prefix"))
        .expect("allow");
    kernel
        .block_prefix(
            "203.0.113.0/24".parse().expect("prefix"),
            0,
            BlockReason::Manual,
        )
        .expect("block prefix");
    // After block_prefix, which sets a flag in the config.
    let base_config = kernel.config().expect("config");
    let limited_config = XdpConfig {
        packets_per_sec: 1,
        burst: 1,
        // A fixed clock: the bucket never refills, so every packet takes the drop path.
        clock_override_ns: 1_000_000_000,
        ..base_config
    };
    let metered_config = XdpConfig {
        packets_per_sec: 100_000_000,
        burst: 1_000_000_000,
        ..base_config
    };

    let paths: [(&str, Vec<u8>, XdpConfig); 6] = [
        ("pass", v4_tcp([198, 51, 100, 8], PORT), base_config),
        (
            "pass_metered",
            v4_tcp([198, 51, 100, 8], PORT),
            metered_config,
        ),
        ("allowlisted", v4_tcp([192, 0, 2, 1], PORT), base_config),
        (
            "blocked_exact",
            v4_tcp([198, 51, 100, 7], PORT),
            base_config,
        ),
        (
            "blocked_prefix",
            v4_tcp([203, 0, 113, 9], PORT),
            base_config,
        ),
        (
            "rate_limited",
            V4::new([198, 51, 100, 9]).frame(&frames::tcp(PORT, frames::ACK)),
            limited_config,
        ),
    ];
    // A second instance whose prefix blocklist holds what IPv6 offenders leave there: many /64s.
    let mut many_prefixes = XdpProgram::load(None, false).expect("load a second instance");
    many_prefixes.set_config(&config).expect("config");
    for i in 0..IPV6_BLOCKS {
        let prefix = format!("2001:db8:{i:x}::/64").parse().expect("prefix");
        many_prefixes
            .block_prefix(prefix, 0, BlockReason::AuthFailures)
            .expect("block prefix");
    }
    // And many blocked addresses, as a node under attack holds them.
    for i in 0..IPV4_BLOCKS {
        let address = std::net::Ipv4Addr::from(0x6440_0000 + i * 7);
        many_prefixes
            .block(IpAddr::from(address), 0, BlockReason::AuthFailures)
            .expect("block");
    }
    let many_config = many_prefixes.config().expect("config");
    let many_paths = [
        ("pass_v6_many_prefixes", v6_tcp("2001:db8:ffff::5", PORT)),
        ("blocked_prefix_v6", v6_tcp("2001:db8:3e7::5", PORT)),
        ("pass_many_blocks", v4_tcp([198, 51, 100, 8], PORT)),
        ("blocked_among_many", v4_tcp([100, 64, 0, 7], PORT)),
    ];

    for _ in 0..RUNS {
        let frame = v4_tcp([198, 51, 100, 8], PORT);
        let baseline = ns_per_packet(kernel.baseline_program().expect("baseline"), &frame);
        println!("{{\"path\":\"baseline_pass_all\",\"ns_per_packet\":{baseline:.2}}}");
        for (name, frame, config) in &paths {
            kernel.set_config(config).expect("config");
            let ns = ns_per_packet(kernel.program().expect("program"), frame);
            println!("{{\"path\":\"{name}\",\"ns_per_packet\":{ns:.2}}}");
        }
        many_prefixes.set_config(&many_config).expect("config");
        for (name, frame) in &many_paths {
            let ns = ns_per_packet(many_prefixes.program().expect("program"), frame);
            println!("{{\"path\":\"{name}\",\"ns_per_packet\":{ns:.2}}}");
        }
    }
}
