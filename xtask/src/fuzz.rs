//! `cargo xtask fuzz [target] [--secs N]`: the cargo-fuzz targets in `fuzz/` (libFuzzer, on the
//! nightly toolchain the eBPF build needs anyway), each run for `--secs` from the seeds in
//! `fuzz/seeds/<target>/`. The seeds are also the regression inputs: every run starts by running
//! each of them, so an input that once crashed a target, added there, is checked for good. New
//! inputs a run finds go to `target/fuzz/corpus/`, crashes to `target/fuzz/artifacts/<target>/`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::shell::{Cmd, install_tool, is_root, path_with_tools};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// How the targets are built, for `build` and `run` alike. No AddressSanitizer: the code under
/// test is safe Rust (the `unsafe` of `kernel/` only hands buffers to the kernel, and the verifier
/// bounds the XDP program), so it would only slow the build and every execution. Panics,
/// overflows (debug assertions) and the targets' own checks are what the fuzzer looks for.
const BUILD_FLAGS: [&str; 5] = [
    "--fuzz-dir",
    "fuzz",
    "--sanitizer",
    "none",
    "--debug-assertions",
];

/// The targets, and whether each needs root (BPF_PROG_TEST_RUN).
pub const TARGETS: [(&str, bool); 4] = [
    ("jsonrpc", false),
    ("config", false),
    ("headers", false),
    ("xdp_packet", true),
];

/// How one target's run went (a crash is an error).
pub enum Outcome {
    Ran,
    /// Needs root, and this is not.
    Skipped,
}

/// Runs `only` (or every target) for `secs` each; stops at the first crash.
pub fn run(root: &Path, only: Option<&str>, secs: u64) -> Result<Vec<(&'static str, Outcome)>> {
    if let Some(only) = only
        && !TARGETS.iter().any(|(name, _)| *name == only)
    {
        let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
        bail!(
            "no fuzz target {only:?}; the targets are {}",
            names.join(", ")
        );
    }
    install_tool(root, "cargo-fuzz", CARGO_FUZZ_VERSION, "the fuzzing driver")?;
    fuzz_cmd(root, &["build"])
        .args(BUILD_FLAGS)
        .run()
        .context("building the fuzz targets failed")?;
    let mut outcomes = Vec::new();
    for (target, needs_root) in TARGETS {
        if only.is_some_and(|only| only != target) {
            continue;
        }
        if needs_root && !is_root() {
            eprintln!("fuzz {target}: skipped (needs root: BPF_PROG_TEST_RUN)");
            outcomes.push((target, Outcome::Skipped));
            continue;
        }
        let executions = run_target(root, target, secs)?;
        eprintln!("fuzz {target}: {executions} inputs in {secs} s, no crash");
        outcomes.push((target, Outcome::Ran));
    }
    Ok(outcomes)
}

fn run_target(root: &Path, target: &str, secs: u64) -> Result<u64> {
    let corpus = root.join("target/fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = root.join("fuzz/seeds").join(target);
    let mut args = vec!["run".to_owned()];
    args.extend(BUILD_FLAGS.map(str::to_owned));
    args.extend([
        target.into(),
        corpus.display().to_string(),
        seeds.display().to_string(),
        "--".into(),
        format!("-max_total_time={secs}"),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".into(),
        // Inputs larger than any body the gateway takes are not worth the time.
        "-max_len=65536".into(),
    ]);
    let dict = root.join("fuzz/dict").join(format!("{target}.dict"));
    if dict.is_file() {
        args.push(format!("-dict={}", dict.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = fuzz_cmd(root, &args).output_with_stderr();
    let (succeeded, stderr) = output?;
    if !succeeded {
        eprintln!("{stderr}");
        bail!(
            "fuzz target {target} failed; the reproducer is in {} (once fixed, add it to \
             fuzz/seeds/{target}/ as a regression input)",
            artifacts.display()
        );
    }
    Ok(stderr
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0))
}

/// `cargo fuzz` on the nightly toolchain, from the workspace root.
fn fuzz_cmd(root: &Path, args: &[&str]) -> Cmd {
    Cmd::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz"])
        .args(args)
        .current_dir(root)
        .env("PATH", path_with_tools(root))
}
