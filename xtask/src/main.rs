//! `cargo xtask <command>`: the single entry point to set up, build, run and test the gateway.

mod bench;
mod dist;
mod fuzz;
mod pgo;
mod setup;
mod shell;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::shell::{Cmd, is_root};

#[derive(Parser)]
#[command(about = "Set up, build, run and test the MCP edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: nightly rust-src, bpf-linker, llvm-tools, Debian packages, npm test
    /// peers.
    Setup,
    /// Build the eBPF object and the gateway binary that embeds it (dist profile: release + LTO,
    /// optimized with a profile recorded under load).
    Build,
    /// Build the Debian package (binary, systemd unit, default config, logrotate, Grafana
    /// dashboard) into target/package/.
    Dist,
    /// Build, then run the gateway. Without `--config`, runs a demo in front of a built-in MCP server.
    Run {
        /// Arguments passed to the gateway.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: formatting, clippy, unit, eBPF (BPF_PROG_TEST_RUN) and end-to-end tests.
    /// Tests that need root run when root and are reported as ignored otherwise.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// `cargo fmt --check` and `cargo clippy` on the host crates, warnings as errors.
    Lint,
    /// Fuzz the parsers with cargo-fuzz (nightly): the JSON-RPC inspection, the config, headers,
    /// and the XDP program's packet parsing (that one needs root).
    Fuzz {
        /// Only this target: jsonrpc, config, headers or xdp_packet.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// Benchmarks: the gateway against nginx and direct access, many callers, SSE, XDP per-packet
    /// cost, and a flood in network namespaces (xdp and flood need root). Writes bench/results/.
    Bench {
        #[arg(value_enum, default_value = "all")]
        scenario: bench::Scenario,
        /// Runs per figure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds per load run.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Another gateway binary (an older build, say) to measure side by side with this one in
        /// the proxy scenario, so the two compare within one run's noise.
        #[arg(long)]
        compare_with: Option<PathBuf>,
    },
    /// The benchmarks' own load generator (per-key and per-source load).
    #[command(hide = true)]
    Load(bench::load::LoadArgs),
    /// The benchmarks' SYN flooder (raw socket, needs root).
    #[command(hide = true)]
    SynFlood(bench::syn_flood::SynFloodArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli.command) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> Result<()> {
    let root = workspace_root();
    match command {
        Command::Setup => setup::all(&root),
        Command::Build => {
            setup::toolchain(&root)?;
            let binary = pgo::build(&root)?;
            println!("eBPF object:    {}", ebpf_object(&root)?.display());
            println!("gateway binary: {}", binary.display());
            Ok(())
        }
        Command::Run { args } => {
            setup::toolchain(&root)?;
            if args.first().is_some_and(|command| command == "fleet-demo") {
                // The fleet demo starts a Redis of its own.
                setup::debian_packages(&[("redis-server", "redis-server")])?;
            }
            let binary = pgo::build(&root)?;
            if !is_root() {
                eprintln!(
                    "note: not running as root: the gateway cannot attach XDP without CAP_BPF and \
                     CAP_NET_ADMIN and will say so; run as root (sudo -E cargo xtask run) for the \
                     kernel half"
                );
            }
            // Without arguments: the demo, in front of the built-in MCP server.
            let args = if args.is_empty() {
                vec!["demo".to_owned()]
            } else {
                args
            };
            let status = std::process::Command::new(&binary)
                .args(&args)
                .current_dir(&root)
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Command::Dist => {
            setup::toolchain(&root)?;
            let binary = pgo::build(&root)?;
            println!("package: {}", dist::build(&root, &binary)?.display());
            Ok(())
        }
        Command::Test { filter } => test(&root, filter.as_deref()),
        Command::Lint => lint(&root),
        Command::Fuzz { target, secs } => {
            setup::toolchain(&root)?;
            fuzz::run(&root, target.as_deref(), secs.max(1)).map(|_| ())
        }
        Command::Bench {
            scenario,
            runs,
            secs,
            compare_with,
        } => bench::run(
            &root,
            scenario,
            bench::Plan {
                runs: runs.max(1),
                secs: secs.max(1),
                compare_with,
            },
        ),
        Command::Load(args) => bench::load::run(args),
        Command::SynFlood(args) => bench::syn_flood::run(args),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The eBPF object embedded by the last build (gateway/build.rs copies it into its OUT_DIR).
fn ebpf_object(root: &Path) -> Result<PathBuf> {
    let build_dir = pgo::output_dir(root)?.join("build");
    let newest = std::fs::read_dir(&build_dir)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("gateway-"))
        .map(|entry| entry.path().join("out/gateway-ebpf"))
        .filter(|object| object.is_file())
        .max_by_key(|object| object.metadata().and_then(|m| m.modified()).ok());
    newest.ok_or_else(|| anyhow::anyhow!("no eBPF object under {}", build_dir.display()))
}

fn lint(root: &Path) -> Result<()> {
    setup::toolchain(root)?;
    Cmd::cargo(root, &["fmt", "--all", "--check"]).run()?;
    Cmd::cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )
    .run()
}

fn test(root: &Path, filter: Option<&str>) -> Result<()> {
    setup::all(root)?;
    lint(root)?;
    let gateway = pgo::build(root)?;
    let package = dist::build(root, &gateway)?;

    // Every test binary runs even after a failure, so one run reports every failing test.
    let mut args = vec!["test", "--workspace", "--release", "--no-fail-fast", "--"];
    if let Some(filter) = filter {
        args.push(filter);
    }
    if is_root() {
        // Root-only tests are `#[ignore = "needs root: ..."]`; as root they run.
        args.push("--include-ignored");
    } else {
        eprintln!(
            "note: not root: tests that need root (XDP, BPF_PROG_TEST_RUN, network namespaces) are \
             reported as ignored"
        );
    }
    let output = Cmd::cargo(root, &args)
        .env("GATEWAY_BIN", &gateway)
        .env("GATEWAY_DEB", &package)
        .env("RUST_BACKTRACE", "1")
        .run_echoing_stdout();
    let mut totals = TestTotals::from_output(&output.stdout);

    // A short run of every fuzz target, its seeds (the regression inputs) first.
    let fuzzed = if filter.is_none() {
        fuzz::run(root, None, FUZZ_SECS_IN_TEST)
    } else {
        Ok(Vec::new())
    };
    match &fuzzed {
        Ok(outcomes) => {
            for (_, outcome) in outcomes {
                match outcome {
                    fuzz::Outcome::Ran => totals.passed += 1,
                    fuzz::Outcome::Skipped => totals.ignored += 1,
                }
            }
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            totals.failed += 1;
        }
    }
    // One closing line for the whole run, whatever happened: the per-binary lines scroll away.
    println!(
        "xtask test: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    output.result.and(fuzzed.map(|_| ()))
}

/// Seconds each fuzz target runs within `cargo xtask test`: a smoke run that replays the seeds and
/// explores a little (over a million inputs for most targets); `cargo xtask fuzz` runs longer.
const FUZZ_SECS_IN_TEST: u64 = 20;

/// Sums of cargo test's `test result:` lines.
#[derive(Debug, Default, PartialEq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    fn from_output(output: &str) -> Self {
        let mut totals = Self::default();
        for line in output.lines().filter(|l| l.starts_with("test result:")) {
            for part in line.split([';', '.']) {
                let mut words = part.split_whitespace();
                let (Some(count), Some(kind)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(count) = count.parse::<u64>() else {
                    continue;
                };
                match kind {
                    "passed" => totals.passed += count,
                    "failed" => totals.failed += count,
                    "ignored" => totals.ignored += count,
                    _ => {}
                }
            }
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn test_result_lines_are_summed() {
        let output = "running 3 tests\n\
            test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test result: FAILED. 10 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.40s\n";
        assert_eq!(
            TestTotals::from_output(output),
            TestTotals {
                passed: 13,
                failed: 1,
                ignored: 2
            }
        );
    }
}
