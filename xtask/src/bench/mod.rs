//! `cargo xtask bench [scenario]`: the gateway measured side by side with nginx, direct access and
//! under flood, on this machine, in one run. Results go to `bench/results/<timestamp>.md` with an
//! SVG chart of the headline ratios; a run of every scenario also replaces the README's benchmark
//! section.

mod callers;
mod fleet;
mod flood;
pub mod load;
mod oauth;
mod proxy;
mod report;
mod sse;
pub mod syn_flood;
mod tls;
mod xdp_cost;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use e2e_tests::netns::VethPair;

use crate::{
    setup,
    shell::{Cmd, install_tool, is_root, tools_dir},
};
pub use report::Report;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    All,
    /// Proxy overhead: direct vs nginx vs gateway vs gateway with fsync.
    Proxy,
    /// 10,000 keys vs one; limiter memory with 100,000 callers.
    Callers,
    /// SSE event latency through the gateway vs direct.
    Sse,
    /// XDP ns/packet per verdict path (BPF_PROG_TEST_RUN).
    Xdp,
    /// Legitimate load under a flood, in network namespaces: XDP vs userspace block vs none.
    Flood,
    /// TLS ending in the proxy: nginx vs HAProxy vs gateway, keep-alive and handshakes.
    Tls,
    /// Fleet mode: two nodes on Redis vs one alone; block propagation between nodes.
    Fleet,
    /// OAuth access tokens: a cached token vs a static key; a signature check per request.
    Oauth,
}

/// How long and how often each measurement runs, and what else to measure.
#[derive(Clone)]
pub struct Plan {
    pub runs: usize,
    pub secs: u64,
    /// Another gateway binary for the proxy scenario to measure beside this one.
    pub compare_with: Option<PathBuf>,
}

const OHA_VERSION: &str = "1.16.0";

pub fn run(root: &Path, scenario: Scenario, plan: Plan) -> Result<()> {
    setup::toolchain(root)?;
    install_tools(root, scenario)?;
    let gateway = crate::pgo::build(root)?;
    // The load generator must be optimized; `cargo xtask` itself runs as a debug build.
    Cmd::cargo(root, &["build", "--release", "--package", "xtask"]).run()?;
    let bench = Bench {
        root: root.to_owned(),
        gateway,
        load_generator: root.join("target/release/xtask"),
        plan,
        scratch: tempfile::tempdir()?,
    };
    let mut report = Report::new(&bench)?;
    let wanted = |s: Scenario| scenario == Scenario::All || scenario == s;
    if wanted(Scenario::Xdp) {
        report.add(xdp_cost::run(&bench)?);
    }
    if wanted(Scenario::Proxy) {
        report.add(proxy::run(&bench)?);
    }
    if wanted(Scenario::Callers) {
        report.add(callers::run(&bench)?);
    }
    if wanted(Scenario::Sse) {
        report.add(sse::run(&bench)?);
    }
    if wanted(Scenario::Flood) {
        report.add(flood::run(&bench)?);
    }
    if wanted(Scenario::Tls) {
        report.add(tls::run(&bench)?);
    }
    if wanted(Scenario::Oauth) {
        report.add(oauth::run(&bench)?);
    }
    if wanted(Scenario::Fleet) {
        report.add(fleet::run(&bench)?);
    }
    let written = report.write(root, scenario == Scenario::All)?;
    println!("results: {}", written.display());
    Ok(())
}

/// nginx, HAProxy, wrk and openssl from Debian, oha from crates.io (into target/tools), when missing.
fn install_tools(root: &Path, scenario: Scenario) -> Result<()> {
    let needs_root = matches!(scenario, Scenario::All | Scenario::Xdp | Scenario::Flood);
    if needs_root && !is_root() {
        bail!(
            "the xdp and flood scenarios load XDP programs and make network namespaces: run as root"
        );
    }
    setup::debian_packages(&[
        ("nginx", "nginx"),
        ("ip", "iproute2"),
        ("haproxy", "haproxy"),
        ("openssl", "openssl"),
        ("wrk", "wrk"),
        ("redis-server", "redis-server"),
    ])?;
    install_tool(root, "oha", OHA_VERSION, "the load generator")?;
    Ok(())
}

/// Shared context of one benchmark run.
pub struct Bench {
    pub root: PathBuf,
    pub gateway: PathBuf,
    /// The release build of xtask, whose `load` subcommand generates load.
    pub load_generator: PathBuf,
    pub plan: Plan,
    pub scratch: tempfile::TempDir,
}

impl Bench {
    pub fn oha(&self) -> PathBuf {
        tools_dir(&self.root).join("bin/oha")
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.scratch.path().join(name);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// Runs our own load generator (`xtask load`), optionally inside a network namespace.
    pub fn load(&self, netns: Option<&str>, args: &load::LoadArgs) -> Result<load::LoadResult> {
        let mut command = match netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", ns])
                    .arg(&self.load_generator);
                command
            }
            None => Command::new(&self.load_generator),
        };
        let output = command.arg("load").args(args.to_args()).output()?;
        if !output.status.success() {
            bail!(
                "load generator failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let value: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("load generator printed no JSON")?;
        Ok(load::LoadResult::from_json(&value))
    }
}

/// A background process, killed when dropped.
pub struct Service {
    child: Child,
    pub log: PathBuf,
}

impl Service {
    pub fn spawn(mut command: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_for_port(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited ({status}): {}", self.log.display(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nothing listens on {addr}: {}", self.logs())
    }

    pub fn wait_for_log(&mut self, text: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.logs().contains(text) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited ({status}): {}", self.log.display(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("no {text:?} in {}: {}", self.log.display(), self.logs())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory now and at its peak, in KiB (from /proc).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU time used so far by the process and its direct children (nginx's workers).
    pub fn cpu_time(&self) -> CpuTime {
        let pid = self.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        std::iter::once(pid)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .map(process_cpu_time)
            .fold(CpuTime::default(), |sum, cpu| CpuTime {
                user: sum.user + cpu.user,
                system: sum.system + cpu.system,
            })
    }
}

/// User and system CPU time of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// The time used since `earlier`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

fn process_cpu_time(pid: u32) -> CpuTime {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let time = |i: usize| {
        let ticks = fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / per_sec)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    CpuTime {
        user: time(11),
        system: time(12),
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM first so the gateway detaches XDP cleanly; then make sure.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A measured quantity over several runs.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return Self {
                min: 0.0,
                median: 0.0,
                max: 0.0,
            };
        }
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        Self {
            min: sorted[0],
            median,
            max: sorted[sorted.len() - 1],
        }
    }

    /// `median (min–max)` with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// The gateway's config for benchmarks: one user per key, limits that never bite.
pub fn gateway_config(
    listen: SocketAddr,
    upstream: &str,
    audit: &Path,
    keys: &[String],
    extra: &str,
) -> String {
    use sha2::Digest;
    let mut config = format!(
        "listen = \"{listen}\"\n\
         [upstream]\nurl = \"{upstream}\"\n\
         [rate_limit]\nrequests = 4000000000\nwindow_secs = 60\n\
         [audit]\npath = \"{}\"\n\
         {extra}\n",
        audit.display()
    );
    if !extra.contains("[admin]") {
        // Gateways run side by side (the noise control): none on the default admin port.
        config.push_str("[admin]\nlisten = \"\"\n");
    }
    for (i, key) in keys.iter().enumerate() {
        let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        config.push_str(&format!(
            "[[users]]\nname = \"user{i}\"\nkey_sha256 = \"{digest}\"\n"
        ));
    }
    config
}

/// Deterministic bench keys.
pub fn bench_keys(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("bench-key-{i:08}-0123456789abcdef"))
        .collect()
}

/// An MCP `tools/call` body, as agents send them.
pub const CALL_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello from the benchmark"}}}"#;

/// Starts `gateway demo-upstream` (the shared responder) on `addr`.
pub fn demo_upstream(bench: &Bench, addr: SocketAddr) -> Result<Service> {
    let mut command = Command::new(&bench.gateway);
    command.args(["demo-upstream", "--listen", &addr.to_string()]);
    let mut service = Service::spawn(
        command,
        bench
            .dir("upstream")
            .join(format!("upstream-{}.log", addr.port())),
    )?;
    service.wait_for_port(addr)?;
    Ok(service)
}

/// Starts the `gateway` binary with `config` written to `dir`.
pub fn start_gateway(
    gateway: &Path,
    dir: &Path,
    config: &str,
    netns: Option<&str>,
) -> Result<Service> {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config)?;
    let mut command = match netns {
        Some(ns) => VethPair::exec_in(ns, gateway),
        None => Command::new(gateway),
    };
    command
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn,gateway::app=info");
    let mut service = Service::spawn(command, dir.join("gateway.log"))?;
    service.wait_for_log("mcp gateway started")?;
    Ok(service)
}

/// A free loopback address.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// First line of a command's output (stdout or stderr), for version strings.
pub fn version_of(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| "not found".into())
}
