//! Loading the embedded XDP program and attaching it to interfaces.

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
};
use gateway_ebpf::{BLOCKLIST_MAP, BlockEntry, PROGRAM_NAME, STATS_MAP, SourceKey, Verdict};

/// The XDP object compiled from gateway-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

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
    #[error("eBPF map access failed: {0}")]
    Map(#[source] MapError),
    #[error("the eBPF object has no program or map named {0:?}")]
    Missing(&'static str),
}

/// Loads the embedded object into the kernel and verifies the XDP program (not attached yet).
pub fn load() -> Result<Ebpf, XdpError> {
    let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|err| {
        if is_permission_error(&err) {
            XdpError::Permission(err)
        } else {
            XdpError::Load(err)
        }
    })?;
    program(&mut ebpf)?.load().map_err(XdpError::Program)?;
    Ok(ebpf)
}

/// The gateway's XDP program in a loaded object.
pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(XdpError::Missing(PROGRAM_NAME))?
        .try_into()
        .map_err(XdpError::Program)
}

/// Attaches the loaded program to `interface`; detached when `ebpf` is dropped.
pub fn attach(ebpf: &mut Ebpf, interface: &str, mode: XdpMode) -> Result<(), XdpError> {
    program(ebpf)?
        .attach(interface, mode)
        .map(drop)
        .map_err(|source| XdpError::Attach {
            interface: interface.to_owned(),
            source,
        })
}

/// Whether loading failed for lack of privileges (EPERM/EACCES anywhere in the error chain).
fn is_permission_error(err: &aya::EbpfError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Sum over CPUs of each verdict counter, in [`Verdict::ALL`] order.
pub fn read_stats(ebpf: &Ebpf) -> Result<[(Verdict, u64); Verdict::COUNT as usize], XdpError> {
    let map = ebpf.map(STATS_MAP).ok_or(XdpError::Missing(STATS_MAP))?;
    let stats = PerCpuArray::<_, u64>::try_from(map).map_err(XdpError::Map)?;
    let mut totals = Verdict::ALL.map(|verdict| (verdict, 0));
    for (verdict, total) in &mut totals {
        let per_cpu = stats.get(&(*verdict as u32), 0).map_err(XdpError::Map)?;
        *total = per_cpu.iter().sum();
    }
    Ok(totals)
}

/// The blocklist map of a loaded object, for reading and writing from userspace.
pub fn blocklist(
    ebpf: &mut Ebpf,
) -> Result<HashMap<&mut MapData, SourceKey, BlockEntry>, XdpError> {
    let map = ebpf
        .map_mut(BLOCKLIST_MAP)
        .ok_or(XdpError::Missing(BLOCKLIST_MAP))?;
    HashMap::try_from(map).map_err(XdpError::Map)
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads, so block expiry times agree.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
