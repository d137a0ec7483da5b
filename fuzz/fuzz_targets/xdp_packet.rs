//! The XDP program, loaded into the kernel and run with BPF_PROG_TEST_RUN on fuzzer-made frames
//! (needs root). The verifier already guarantees the program never reads out of bounds; this
//! checks its logic against a reference parser written here for plain IPv4 and IPv6 frames:
//! every verdict is PASS or DROP, and a frame to the protected TCP port from a blocked source
//! (or from inside a blocked prefix) is never passed, whatever else the frame holds.
//!
//! Input: the first byte steers the frame towards the interesting cases (its low bits force an
//! IPv4 or IPv6 EtherType and a blocked source address); the rest is the frame.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Mutex,
};

use aya::programs::{TestRun, TestRunOptions};
use gateway::kernel::XdpProgram;
use gateway_ebpf::{BlockReason, XdpConfig};
use libfuzzer_sys::fuzz_target;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const PORT: u16 = 8080;
const BLOCKED_V4: [u8; 4] = [198, 51, 100, 7];
/// 2001:db8:bad::/48 is on the prefix blocklist.
const BLOCKED_V6_PREFIX: [u8; 6] = [0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad];
const ETH_LEN: usize = 14;

fn program() -> &'static Mutex<XdpProgram> {
    static PROGRAM: std::sync::OnceLock<Mutex<XdpProgram>> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| {
        let mut kernel = XdpProgram::load(None, false).expect("load the XDP program (needs root)");
        let mut config = XdpConfig {
            port_count: 1,
            ..XdpConfig::default()
        };
        config.ports[0] = PORT;
        kernel.set_config(&config).expect("config");
        kernel
            .block(IpAddr::from(BLOCKED_V4), 0, BlockReason::Manual)
            .expect("block");
        kernel
            .block_prefix(
                "2001:db8:bad::/48".parse().expect("prefix"),
                0,
                BlockReason::Manual,
            )
            .expect("block prefix");
        Mutex::new(kernel)
    })
}

/// What the reference parser says about a frame without VLAN tags or IPv6 extension headers:
/// whether it is TCP or a fragment to the protected port, and from a blocked source.
fn must_drop(frame: &[u8]) -> bool {
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    match ether_type {
        0x0800 => {
            let Some(ip) = frame.get(ETH_LEN..ETH_LEN + 20) else {
                return false;
            };
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            if header_len < 20 || ip[12..16] != BLOCKED_V4 {
                return false;
            }
            let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            if fragment_offset != 0 {
                return true; // its port is not visible: protected
            }
            let tcp = ETH_LEN + header_len;
            ip[9] == 6 && frame.len() >= tcp + 14 && port_at(frame, tcp) == PORT
        }
        0x86dd => {
            let Some(ip) = frame.get(ETH_LEN..ETH_LEN + 40) else {
                return false;
            };
            let tcp = ETH_LEN + 40;
            ip[8..14] == BLOCKED_V6_PREFIX
                && ip[6] == 6
                && frame.len() >= tcp + 14
                && port_at(frame, tcp) == PORT
        }
        _ => false,
    }
}

fn port_at(frame: &[u8], tcp: usize) -> u16 {
    u16::from_be_bytes([frame[tcp + 2], frame[tcp + 3]])
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, frame)) = data.split_first() else {
        return;
    };
    // BPF_PROG_TEST_RUN wants at least an Ethernet header, and at most about a page.
    if frame.len() < ETH_LEN || frame.len() > 1500 {
        return;
    }
    let mut frame = frame.to_vec();
    match steer & 0b11 {
        0b01 => frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes()),
        0b10 => frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes()),
        _ => {}
    }
    if steer & 0b100 != 0 {
        match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 if frame.len() >= ETH_LEN + 20 => frame[ETH_LEN + 12..ETH_LEN + 16]
                .copy_from_slice(&Ipv4Addr::from(BLOCKED_V4).octets()),
            0x86dd if frame.len() >= ETH_LEN + 40 => {
                frame[ETH_LEN + 8..ETH_LEN + 14].copy_from_slice(&BLOCKED_V6_PREFIX);
            }
            _ => {}
        }
    }
    if steer & 0b1000 != 0 && frame.len() >= ETH_LEN + 40 + 4 {
        // Aim at the protected port of a plain TCP header.
        let tcp = match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 => ETH_LEN + usize::from(frame[ETH_LEN] & 0x0f) * 4,
            _ => ETH_LEN + 40,
        };
        if frame.len() >= tcp + 4 {
            frame[tcp + 2..tcp + 4].copy_from_slice(&PORT.to_be_bytes());
        }
    }

    let mut kernel = program()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut options = TestRunOptions::new();
    options.data_in = Some(&frame);
    let verdict = kernel
        .program()
        .expect("program")
        .test_run(options)
        .expect("BPF_PROG_TEST_RUN")
        .return_value;
    assert!(
        verdict == XDP_PASS || verdict == XDP_DROP,
        "verdict {verdict}"
    );
    if must_drop(&frame) {
        assert_eq!(
            verdict, XDP_DROP,
            "a blocked source reached a protected port: {frame:02x?}"
        );
    }
});
