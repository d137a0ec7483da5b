//! The XDP program. It only builds for the BPF target; on the host this file is an empty binary
//! (the host only needs the shared types in `lib.rs`).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "gateway-ebpf is the XDP program of the gateway: `cargo xtask build` compiles it for \
         bpfel-unknown-none and embeds it in the gateway binary"
    );
    std::process::exit(2);
}
