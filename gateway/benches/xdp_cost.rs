//! XDP cost per packet: the real program run with BPF_PROG_TEST_RUN and `repeat` on crafted
//! frames, one verdict path at a time, against a pass-everything baseline program from the same
//! object. Needs root. Prints one JSON object per measurement (`cargo xtask bench xdp` reads them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should stop it loudly

#[path = "../tests/frames/mod.rs"]
mod frames;

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use frames::{V4, v4_tcp};
use gateway::kernel::XdpProgram;
use gateway_ebpf::{BlockReason, XdpConfig};

const PORT: u16 = 8080;
const REPEAT: u32 = 2_000_000;
const RUNS: usize = 5;

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
    for _ in 0..RUNS {
        let frame = v4_tcp([198, 51, 100, 8], PORT);
        let baseline = ns_per_packet(kernel.baseline_program().expect("baseline"), &frame);
        println!("{{\"path\":\"baseline_pass_all\",\"ns_per_packet\":{baseline:.2}}}");
        for (name, frame, config) in &paths {
            kernel.set_config(config).expect("config");
            let ns = ns_per_packet(kernel.program().expect("program"), frame);
            println!("{{\"path\":\"{name}\",\"ns_per_packet\":{ns:.2}}}");
        }
    }
}
