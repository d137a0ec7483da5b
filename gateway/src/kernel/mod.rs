//! The XDP program from userspace: the only place in this crate that talks to the kernel's BPF
//! interfaces, and the only one with `unsafe` code besides two C calls in `main.rs` (the
//! allocator's release of unused memory, `geteuid`).
//!
//! [`xdp_program`] loads and attaches the program and owns its maps, [`slots`] mirrors the counts
//! that let it skip lookups, [`pins`] keeps the maps under bpffs across restarts, [`events`] reads what the program reports, [`clock`] is the clock it uses.

mod clock;
pub mod events;
mod pins;
mod slots;
mod xdp_program;

use std::path::PathBuf;

use aya::{maps::MapError, programs::ProgramError};

pub use clock::monotonic_now_ns;
pub use pins::unpin_all;
pub use xdp_program::{EBPF_OBJECT, ProgramLogger, Stats, XdpProgram, pinned_status, prefix_key};

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "loading the XDP program needs root or CAP_BPF + CAP_NET_ADMIN (and CAP_PERFMON on some \
         kernels): {0}"
    )]
    Permission(#[source] aya::EbpfError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP program failed to load into the kernel: {0}")]
    Program(#[source] ProgramError),
    #[error("attaching XDP to interface {interface:?} failed: {source}")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("{0} is allowlisted: it cannot be blocked")]
    Allowlisted(std::net::IpAddr),
    #[error("eBPF map access failed: {0}")]
    Map(#[from] MapError),
    #[error("cannot read the XDP program's logs: {0}")]
    Log(String),
    #[error("the eBPF object has no program or map named {0:?}")]
    Missing(&'static str),
    #[error("cannot prepare the bpffs pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
