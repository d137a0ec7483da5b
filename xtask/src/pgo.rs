//! The gateway binary is built with profile-guided optimization: first instrumented, run for a
//! few seconds under the benchmarks' proxy load in front of its own demo MCP server, then again
//! with the profile that run recorded. On the benchmarks' request that is about 20% fewer
//! instructions (callgrind) and 6% less CPU time per proxied request than the same build without
//! a profile. Code the load does not reach (SSE, errors) is compiled as cold, not left out.
//!
//! Both builds name the host target explicitly, so the profiling flags reach only the target's
//! crates, never build scripts, proc macros or the nested eBPF build.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, Result, bail};

use crate::{
    bench::{self, Service, load::LoadArgs},
    shell::Cmd,
};

/// The cargo profile (Cargo.toml) of the gateway binary that is run, tested and benchmarked.
const PROFILE: &str = "dist";
/// Long enough for the hot path's counts to dwarf start-up's.
const TRAINING_SECS: u64 = 8;
/// Callers in the training load, so that key lookup and limiter state see more than one.
const TRAINING_CALLERS: usize = 64;

/// Builds the gateway (its build script compiles and embeds the eBPF object) with a fresh
/// profile; returns the binary.
pub fn build(root: &Path) -> Result<PathBuf> {
    let host = host_triple()?;
    let work = root.join("target/pgo");
    let profile = work.join("gateway.profdata");
    let raw = work.join("raw");

    let instrumented = build_with(
        root,
        &host,
        &work,
        &format!("-Cprofile-generate={}", raw.display()),
    )?;
    // Record again only when the instrumented binary changed: rustc tracks the profile file, so
    // a new one rebuilds every crate of the final build.
    if modified(&instrumented)? > modified(&profile).unwrap_or(SystemTime::UNIX_EPOCH) {
        let _ = std::fs::remove_dir_all(&raw);
        train(&instrumented, &work)?;
        merge(&host, &raw, &profile)?;
    }
    build_with(
        root,
        &host,
        &root.join("target"),
        &format!("-Cprofile-use={}", profile.display()),
    )
}

/// Where the gateway build puts its output (binary, build script output).
pub fn output_dir(root: &Path) -> Result<PathBuf> {
    Ok(root.join("target").join(host_triple()?).join(PROFILE))
}

/// `llvm-profdata` of the toolchain that builds the gateway (rustup component `llvm-tools`); its
/// profile format must be that toolchain's LLVM's.
pub fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let sysroot = Cmd::new("rustc").args(["--print", "sysroot"]).output()?;
    Ok(Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata"))
}

pub fn host_triple() -> Result<String> {
    Cmd::new("rustc")
        .arg("-vV")
        .output()?
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(|host| host.trim().to_owned())
        .context("`rustc -vV` does not name the host target")
}

fn build_with(root: &Path, host: &str, target_dir: &Path, rustflags: &str) -> Result<PathBuf> {
    let flags_variable = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        host.to_uppercase().replace('-', "_")
    );
    Cmd::cargo(
        root,
        &[
            "build",
            &format!("--profile={PROFILE}"),
            "--package",
            "gateway",
            "--target",
            host,
        ],
    )
    .arg("--target-dir")
    .arg(target_dir)
    .env(flags_variable, rustflags)
    .run()?;
    Ok(target_dir.join(host).join(PROFILE).join("gateway"))
}

/// Runs the instrumented gateway under load and stops it, so that it writes its profile.
fn train(instrumented: &Path, work: &Path) -> Result<()> {
    eprintln!("recording the gateway's profile: {TRAINING_SECS} s of proxied tools/call requests");
    let upstream_addr = bench::free_addr()?;
    let mut upstream_command = Command::new(instrumented);
    upstream_command
        .args(["demo-upstream", "--listen", &upstream_addr.to_string()])
        // The responder is the same binary; its own profile would skew the gateway's.
        .env("LLVM_PROFILE_FILE", work.join("upstream.profraw"));
    let mut upstream = Service::spawn(upstream_command, work.join("upstream.log"))?;
    upstream.wait_for_port(upstream_addr)?;

    let listen = bench::free_addr()?;
    let keys = bench::bench_keys(TRAINING_CALLERS);
    // A new log each time: the gateway appends, and a training writes about 80 MB.
    let audit = work.join("audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let config = bench::gateway_config(
        listen,
        &format!("http://{upstream_addr}/mcp"),
        &audit,
        &keys,
        "[blocking]\nenabled = false",
    );
    let gateway = bench::start_gateway(instrumented, work, &config, None)?;
    let keys_path = work.join("keys.txt");
    std::fs::write(&keys_path, keys.join("\n"))?;

    let summary = bench::load::summary(LoadArgs {
        keys_file: Some(keys_path),
        duration_secs: TRAINING_SECS,
        ..LoadArgs::new(format!("http://{listen}/mcp"), 32)
    })?;
    let (ok, failed) = (summary["ok"].as_u64(), summary["failed"].as_u64());
    match (ok, failed) {
        (Some(ok), Some(0)) if ok > 0 => eprintln!("profile recorded over {ok} requests"),
        _ => bail!(
            "the training load failed ({summary}); gateway log: {}",
            gateway.logs()
        ),
    }
    // SIGTERM: the gateway drains and exits, which writes the profile.
    drop(gateway);
    Ok(())
}

fn merge(host: &str, raw: &Path, profile: &Path) -> Result<()> {
    let profraw: Vec<PathBuf> = std::fs::read_dir(raw)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "profraw"))
        .collect();
    if profraw.is_empty() {
        bail!(
            "the instrumented gateway wrote no profile into {}",
            raw.display()
        );
    }
    Cmd::new(llvm_profdata(host)?)
        .arg("merge")
        .arg("-o")
        .arg(profile)
        .args(&profraw)
        .run()
        .context("merging the gateway's profile failed")
}

fn modified(path: &Path) -> Result<SystemTime> {
    Ok(path.metadata()?.modified()?)
}
