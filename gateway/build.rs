//! Compiles the XDP program (gateway-ebpf) for the BPF target with the nightly toolchain, so the
//! gateway always embeds an object built from the current source.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use aya_build::{Package, Toolchain};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("gateway/ has no parent directory")?;
    put_project_tools_on_path(workspace)?;

    let ebpf_dir = workspace.join("gateway-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}

/// `cargo xtask setup` installs bpf-linker under target/tools; fail early with a clear message
/// when it or the nightly toolchain is missing, instead of deep inside the nested cargo build.
fn put_project_tools_on_path(workspace: &Path) -> Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let mut paths = vec![workspace.join("target/tools/bin")];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    let path = env::join_paths(&paths)?;
    // SAFETY: build scripts are single-threaded; the nested cargo inherits this PATH.
    unsafe { env::set_var("PATH", &path) };

    if env::var_os("AYA_BUILD_SKIP").is_some() {
        return Ok(());
    }
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !runs("rustc", &["+nightly", "--version"]) {
        bail!(
            "the nightly Rust toolchain is missing; it builds the eBPF program. Run `cargo xtask \
             setup` or `rustup toolchain install nightly --component rust-src`"
        );
    }
    if !runs("bpf-linker", &["--version"]) {
        bail!("bpf-linker is not installed; run `cargo xtask setup` (builds it into target/tools)");
    }
    Ok(())
}
