//! Compiles the XDP program (gateway-ebpf) for the BPF target with the nightly toolchain, so the
//! gateway always embeds an object built from the current source.
//!
//! The nested build has one target directory, `target/ebpf`, for every build of the gateway
//! (each profile, clippy, the PGO builds, the fuzz workspace): the object does not depend on how
//! the gateway itself is compiled. aya-build, which this replaces, gave each build script output
//! directory its own, so a cold `cargo xtask test` compiled `core` and the program five times
//! (about 70 CPU-seconds each, 41 s of wall time alone).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const PACKAGE: &str = "gateway-ebpf";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("gateway/ has no parent directory")?;
    let ebpf_dir = workspace.join(PACKAGE);
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join(PACKAGE);
    let path = path_with_project_tools(workspace)?;
    check_tools(&path)?;

    let target_dir = workspace.join("target/ebpf");
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .args([
            "--package",
            PACKAGE,
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        // Cargo reads a build script's stdout for directives; the nested build's output is logs.
        .stdout(std::io::stderr())
        .env("PATH", &path)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{arch}\""),
                "-Cdebuginfo=2".to_owned(),
                "-Clink-arg=--btf".to_owned(),
            ]
            .join("\x1f"),
        );
    // The outer build's compiler and flags (PGO, sanitizers) are not the BPF target's.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key == "RUSTC"
            || key == "RUSTC_WORKSPACE_WRAPPER"
            || key == "RUSTC_WRAPPER"
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
            || (key.starts_with("CARGO_TARGET_") && key.ends_with("_RUSTFLAGS"))
        {
            cargo.env_remove(&*key);
        }
    }
    let status = cargo
        .status()
        .with_context(|| format!("running {cargo:?}"))?;
    if !status.success() {
        bail!("building the XDP program failed ({status}): {cargo:?}");
    }
    let built = target_dir.join(TARGET).join("release").join(PACKAGE);
    // Copied, not linked: a later nested build must not change what this build embedded.
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}

/// `cargo xtask setup` installs bpf-linker under target/tools.
fn path_with_project_tools(workspace: &Path) -> Result<std::ffi::OsString> {
    let mut paths = vec![workspace.join("target/tools/bin")];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    Ok(env::join_paths(&paths)?)
}

/// Fails early with a clear message when bpf-linker or the nightly toolchain is missing, instead
/// of deep inside the nested cargo build.
fn check_tools(path: &std::ffi::OsStr) -> Result<()> {
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .env("PATH", path)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !runs("rustup", &["run", "nightly", "rustc", "--version"]) {
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
