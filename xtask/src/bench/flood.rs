//! Scenario 5: legitimate callers under a flood. Two network namespaces made here, joined by a
//! veth pair; the gateway (and its upstream) in one, a legitimate client (198.18.0.2) and a
//! flooding source (198.18.0.3) in the other. The flooder sends HTTP requests with a wrong key
//! over many connections plus a SYN flood. Three modes: the gateway blocks the flooder in XDP;
//! the same block enforced only in userspace; no block. Traffic goes only to the namespaces' own
//! addresses, and everything is removed at the end.

use std::{net::SocketAddrV4, process::Command, time::Duration};

use anyhow::Result;
use e2e_tests::netns::VethPair;

use super::{
    Bench, Service, Spread, bench_keys, gateway_config, load::LoadArgs, report::Section,
    start_gateway, syn_flood::SynFloodArgs,
};

const SERVER: &str = "198.18.0.1";
const FLOODER: &str = "198.18.0.3";
const LEGIT: &str = "198.18.0.2";
const PORT: u16 = 8080;
/// SYNs per second from the flooder.
const SYN_RATE: u64 = 20_000;

/// The hosts: a veth pair between two namespaces (removed on drop).
struct Net {
    veth: VethPair,
}

impl std::ops::Deref for Net {
    type Target = VethPair;
    fn deref(&self) -> &VethPair {
        &self.veth
    }
}

impl Net {
    fn create(bench: &Bench) -> Result<Self> {
        // The flooder's address first: it is the default source in the client namespace.
        let veth = VethPair::create(
            "b",
            &[&format!("{SERVER}/24")],
            &[&format!("{FLOODER}/24"), &format!("{LEGIT}/24")],
            &bench.dir("bpffs"),
        )?;
        Ok(Net { veth })
    }

    /// Packets dropped by XDP so far (all drop verdicts), from the pinned counters.
    fn xdp_drops(&self, bench: &Bench) -> u64 {
        let output = Command::new(&bench.gateway)
            .args(["xdp", "status", "--pin-path"])
            .arg(self.bpffs.join("gateway"))
            .output();
        let Ok(output) = output else { return 0 };
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?;
                name.starts_with("drop_")
                    .then(|| words.next()?.parse::<u64>().ok())
                    .flatten()
            })
            .sum()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Xdp,
    Userspace,
    NoBlock,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Xdp => "XDP block",
            Self::Userspace => "userspace block only",
            Self::NoBlock => "no block",
        }
    }

    fn config(self, net: &Net) -> String {
        let xdp = format!(
            "[xdp]\nenabled = true\ninterface = \"{}\"\nmode = \"driver\"\npin_path = \"{}\"\n\
             [xdp.rate]\npackets_per_sec = 0\nsyn_per_sec = 0\n",
            net.server_if,
            net.bpffs.join("gateway").display()
        );
        match self {
            Self::Xdp => format!("{xdp}[blocking]\nauth_failures = 10\nblock_secs = 3600\n"),
            Self::Userspace => "[blocking]\nauth_failures = 10\nblock_secs = 3600\n".into(),
            Self::NoBlock => "[blocking]\nenabled = false\n".into(),
        }
    }
}

struct Measured {
    rps: Vec<f64>,
    p99_ms: Vec<f64>,
    drops_per_sec: Vec<f64>,
    cpu_secs: Vec<f64>,
    flooder_cpu_secs: Vec<f64>,
}

pub fn run(bench: &Bench) -> Result<Section> {
    eprintln!("== flood: legitimate load under a flood, XDP vs userspace vs no block");
    let net = Net::create(bench)?;
    let key = bench_keys(1).remove(0);
    let mut upstream_cmd = VethPair::exec_in(&net.server, &bench.gateway);
    upstream_cmd.args(["demo-upstream", "--listen", "127.0.0.1:3000"]);
    let mut upstream = Service::spawn(upstream_cmd, bench.dir("flood").join("upstream.log"))?;
    upstream.wait_for_log("demo MCP server")?;

    let legit = LoadArgs {
        key: Some(key.clone()),
        from: Some(LEGIT.parse()?),
        duration_secs: bench.plan.secs,
        ..LoadArgs::new(format!("http://{SERVER}:{PORT}/mcp"), 32)
    };
    let start = |mode: Mode, name: &str| -> Result<Service> {
        let dir = bench.dir(name);
        let config = gateway_config(
            format!("{SERVER}:{PORT}").parse()?,
            "http://127.0.0.1:3000/mcp",
            &dir.join("audit.jsonl"),
            std::slice::from_ref(&key),
            &mode.config(&net),
        );
        start_gateway(&bench.gateway, &dir, &config, Some(&net.server))
    };

    // Baseline: no flood.
    let mut baseline = (Vec::new(), Vec::new());
    {
        let _gateway = start(Mode::NoBlock, "flood-baseline")?;
        for _ in 0..bench.plan.runs {
            let run = bench.load(Some(&net.client), &legit)?;
            baseline.0.push(run.rps);
            baseline.1.push(run.p99_us / 1000.0);
        }
    }
    let base_rps = Spread::of(&baseline.0);
    let base_p99 = Spread::of(&baseline.1);

    let mut results = Vec::new();
    for mode in [Mode::Xdp, Mode::Userspace, Mode::NoBlock] {
        let mut measured = Measured {
            rps: Vec::new(),
            p99_ms: Vec::new(),
            drops_per_sec: Vec::new(),
            cpu_secs: Vec::new(),
            flooder_cpu_secs: Vec::new(),
        };
        for run in 0..bench.plan.runs {
            let gateway = start(
                mode,
                &format!("flood-{}-{run}", mode.name().replace(' ', "-")),
            )?;
            let floods = start_flood(bench, &net, bench.plan.secs + 4)?;
            // Let the feedback loop see the wrong keys and block the flooder.
            std::thread::sleep(Duration::from_secs(2));
            let flooder_cpu = || floods.0.cpu_time().total() + floods.1.cpu_time().total();
            let (cpu_before, flooder_before, drops_before) = (
                gateway.cpu_time().total(),
                flooder_cpu(),
                net.xdp_drops(bench),
            );
            let legit = bench.load(Some(&net.client), &legit)?;
            let (cpu_after, flooder_after, drops_after) = (
                gateway.cpu_time().total(),
                flooder_cpu(),
                net.xdp_drops(bench),
            );
            drop(floods);
            measured.rps.push(legit.rps);
            measured.p99_ms.push(legit.p99_us / 1000.0);
            measured
                .drops_per_sec
                .push(drops_after.saturating_sub(drops_before) as f64 / bench.plan.secs as f64);
            measured
                .cpu_secs
                .push((cpu_after - cpu_before).as_secs_f64());
            measured
                .flooder_cpu_secs
                .push((flooder_after - flooder_before).as_secs_f64());
            drop(gateway);
            // Unpin between runs so each starts without the previous block.
            let _ = Command::new(&bench.gateway)
                .args(["xdp", "unload", "--pin-path"])
                .arg(net.bpffs.join("gateway"))
                .output();
        }
        results.push((mode, measured));
    }

    let mut table = vec![
        [
            "mode",
            "legit req/s",
            "vs no-flood baseline",
            "legit p99 ms",
            "p99 vs baseline",
            "XDP drops/s",
            "gateway CPU s",
            "flooders' CPU s",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    table.push(vec![
        "no flood (baseline)".into(),
        base_rps.show(0),
        "1.00".into(),
        base_p99.show(2),
        "1.00".into(),
        "—".into(),
        "—".into(),
        "—".into(),
    ]);
    let mut headline = Vec::new();
    for (mode, m) in &results {
        let rps = Spread::of(&m.rps);
        let p99 = Spread::of(&m.p99_ms);
        let ratio = rps.median / base_rps.median;
        table.push(vec![
            mode.name().into(),
            rps.show(0),
            format!("{ratio:.2}"),
            p99.show(2),
            format!("{:.2}", p99.median / base_p99.median),
            Spread::of(&m.drops_per_sec).show(0),
            Spread::of(&m.cpu_secs).show(2),
            Spread::of(&m.flooder_cpu_secs).show(2),
        ]);
        let target = if *mode == Mode::Xdp { 0.8 } else { 0.0 };
        headline.push((
            format!("under flood, {}: legit req/s vs baseline", mode.name()),
            ratio,
            target,
        ));
    }
    Ok(Section {
        title: "Legitimate load under flood (scenario 5)".into(),
        intro: format!(
            "veth pair between two namespaces; the gateway attached in driver mode. Legitimate \
             client: `cargo xtask load`, 32 connections from {LEGIT}, {} s per run. Flooder from \
             {FLOODER}: `cargo xtask load` with a wrong key over 64 connections, plus \
             {SYN_RATE} SYNs/s to the gateway's port from a raw socket (`cargo xtask syn-flood`, \
             sent in 1 ms bursts). The feedback loop blocks the flooder after 10 failed \
             authentications. Everything shares the machine's cores; the flooders' own CPU is in \
             the last column.",
            bench.plan.secs
        ),
        table,
        headline,
        notes: vec!["Target: with XDP blocking, legitimate throughput >= 0.8x its no-flood baseline, clearly above userspace-only.".into()],
    })
}

/// HTTP flood with a wrong key plus a SYN flood, from the flooder's address, for `secs`.
fn start_flood(bench: &Bench, net: &Net, secs: u64) -> Result<(Service, Service)> {
    let flood = LoadArgs {
        key: Some("wrong-key-for-the-flood-000000".into()),
        from: Some(FLOODER.parse()?),
        duration_secs: secs,
        ..LoadArgs::new(format!("http://{SERVER}:{PORT}/mcp"), 64)
    };
    let mut http = VethPair::exec_in(&net.client, &bench.load_generator);
    http.arg("load").args(flood.to_args());
    let http = Service::spawn(http, bench.dir("flood").join("http-flood.log"))?;
    let syn_flood = SynFloodArgs {
        from: FLOODER.parse()?,
        to: SocketAddrV4::new(SERVER.parse()?, PORT),
        rate: SYN_RATE,
        duration_secs: secs,
    };
    let mut syn = VethPair::exec_in(&net.client, &bench.load_generator);
    syn.arg("syn-flood").args(syn_flood.to_args());
    let syn = Service::spawn(syn, bench.dir("flood").join("syn-flood.log"))?;
    Ok((http, syn))
}
