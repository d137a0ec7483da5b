//! Scenario: fleet mode. The same total load on one node alone, then spread over two nodes that
//! share their limits through one Redis (all on this machine's two cores, with the load
//! generator), for one hot caller and for 10,000 callers; block propagation from the offense on
//! node A to the block in node B's maps; Redis commands per proxied request.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use super::{
    Bench, CpuTime, Service, Spread, bench_keys, demo_upstream, free_addr, gateway_config,
    load::LoadArgs, report::Section, start_gateway,
};
use crate::shell::is_root;

const MANY_KEYS: usize = 10_000;
/// Connections of the saturating load, and of the latency runs (below saturation).
const CONNECTIONS: usize = 32;
const LATENCY_CONNECTIONS: usize = 4;
/// Blocks whose propagation is timed.
const BLOCKS: usize = 100;
const SESSION_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// The two setups compared.
struct Setup {
    gateways: Vec<Service>,
    urls: Vec<String>,
}

impl Setup {
    fn cpu(&self) -> CpuTime {
        self.gateways
            .iter()
            .map(Service::cpu_time)
            .fold(CpuTime::default(), |sum, cpu| CpuTime {
                user: sum.user + cpu.user,
                system: sum.system + cpu.system,
            })
    }

    fn load(&self, connections: usize, secs: u64) -> LoadArgs {
        LoadArgs {
            also_url: self.urls[1..].to_vec(),
            duration_secs: secs,
            ..LoadArgs::new(self.urls[0].clone(), connections)
        }
    }
}

/// One measured run.
#[derive(Default, Clone, Copy)]
struct Measured {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Gateway CPU time per request, µs.
    gateway_cpu_us: f64,
    /// Redis's CPU time per request, µs.
    redis_cpu_us: f64,
    /// Round trips to Redis per request (`EVALSHA` calls).
    round_trips: f64,
    /// Redis commands per request, the scripts' own included.
    redis_commands: f64,
}

pub fn run(bench: &Bench) -> Result<Section> {
    eprintln!("== fleet: one node vs two nodes on Redis; block propagation");
    let upstream_addr = free_addr()?;
    let _upstream = demo_upstream(bench, upstream_addr)?;
    let upstream = format!("http://{upstream_addr}/mcp");
    let redis_addr = free_addr()?;
    let redis = start_redis(bench, redis_addr)?;
    let keys = bench_keys(MANY_KEYS);
    let keys_file = bench.dir("fleet").join("keys.txt");
    std::fs::write(&keys_file, keys.join("\n"))?;

    // Limits that never bite, over a 1 s window: the shared log then holds at most a second of
    // a hot caller's admissions (what a realistic limit such as 600/min keeps anyway).
    let node = |name: &str, fleet: &str| -> Result<(Service, String)> {
        let dir = bench.dir(&format!("fleet-{name}"));
        let addr = free_addr()?;
        let config = gateway_config(
            addr,
            &upstream,
            &dir.join("audit.jsonl"),
            &keys,
            &format!("[blocking]\nenabled = false\n{fleet}"),
        )
        .replace(
            "requests = 4000000000\nwindow_secs = 60",
            "requests = 1000000000\nwindow_secs = 1",
        );
        let gateway = start_gateway(&bench.gateway, &dir, &config, None)?;
        Ok((gateway, format!("http://{addr}/mcp")))
    };
    let fleet_section = |name: &str| {
        format!(
            "[fleet]\nredis_url = \"redis://{redis_addr}/0\"\nnode_name = \"{name}\"\n\
             session_keys = [\"{SESSION_KEY}\"]\n"
        )
    };
    let (alone, alone_url) = node("alone", "")?;
    let single = Setup {
        gateways: vec![alone],
        urls: vec![alone_url],
    };
    let (a, a_url) = node("a", &fleet_section("bench-a"))?;
    let (b, b_url) = node("b", &fleet_section("bench-b"))?;
    let pair = Setup {
        gateways: vec![a, b],
        urls: vec![a_url, b_url],
    };

    let measure = |setup: &Setup, key: Option<&str>, connections: usize| -> Result<Measured> {
        let mut args = setup.load(connections, bench.plan.secs);
        match key {
            Some(key) => args.key = Some(key.to_owned()),
            None => args.keys_file = Some(keys_file.clone()),
        }
        let (gateway_before, redis_before) = (setup.cpu(), redis.cpu_time());
        let (trips_before, commands_before) = redis_commands(redis_addr)?;
        let result = bench.load(None, &args)?;
        let requests = result.ok.max(1) as f64;
        let per_request = |cpu: CpuTime| cpu.total().as_secs_f64() * 1e6 / requests;
        Ok(Measured {
            rps: result.rps,
            p50_us: result.p50_us,
            p99_us: result.p99_us,
            gateway_cpu_us: per_request(setup.cpu().since(gateway_before)),
            redis_cpu_us: per_request(redis.cpu_time().since(redis_before)),
            round_trips: (redis_commands(redis_addr)?.0 - trips_before) as f64 / requests,
            redis_commands: (redis_commands(redis_addr)?.1 - commands_before) as f64 / requests,
        })
    };
    let hot = keys[0].as_str();
    let mut runs: Vec<[Measured; 6]> = Vec::new();
    for _ in 0..bench.plan.runs {
        // Interleaved, so drift on this shared machine hits both setups alike.
        runs.push([
            measure(&single, Some(hot), CONNECTIONS)?,
            measure(&pair, Some(hot), CONNECTIONS)?,
            measure(&single, None, CONNECTIONS)?,
            measure(&pair, None, CONNECTIONS)?,
            measure(&single, Some(hot), LATENCY_CONNECTIONS)?,
            measure(&pair, Some(hot), LATENCY_CONNECTIONS)?,
        ]);
    }
    let spread = |index: usize, value: fn(&Measured) -> f64| {
        Spread::of(
            &runs
                .iter()
                .map(|run| value(&run[index]))
                .collect::<Vec<_>>(),
        )
    };
    // Requests per second of gateway CPU: what a node's CPU buys, alone or in the fleet.
    let per_cpu = |m: &Measured| 1e6 / m.gateway_cpu_us.max(f64::MIN_POSITIVE);
    let per_cpu_with_redis =
        |m: &Measured| 1e6 / (m.gateway_cpu_us + m.redis_cpu_us).max(f64::MIN_POSITIVE);
    let ratio = |fleet: usize, alone: usize, value: &dyn Fn(&Measured) -> f64| {
        Spread::of(
            &runs
                .iter()
                .map(|run| value(&run[fleet]) / value(&run[alone]))
                .collect::<Vec<_>>(),
        )
    };
    let hot_ratio = ratio(1, 0, &per_cpu);
    let many_ratio = ratio(3, 2, &per_cpu);
    let hot_ratio_redis = ratio(1, 0, &per_cpu_with_redis);
    let many_ratio_redis = ratio(3, 2, &per_cpu_with_redis);
    let added_p50 = Spread::of(
        &runs
            .iter()
            .map(|run| (run[5].p50_us - run[4].p50_us) / 1000.0)
            .collect::<Vec<_>>(),
    );
    let added_p99 = Spread::of(
        &runs
            .iter()
            .map(|run| (run[5].p99_us - run[4].p99_us) / 1000.0)
            .collect::<Vec<_>>(),
    );
    drop(pair);
    drop(single);

    let propagation = block_propagation(bench, &upstream, redis_addr, &fleet_section)?;
    let mut sorted = propagation.clone();
    sorted.sort_by(f64::total_cmp);
    let quantile =
        |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    let (p50, p99, max) = (quantile(0.5), quantile(0.99), quantile(1.0));

    let row = |name: &str, index: usize| -> Vec<String> {
        vec![
            name.into(),
            spread(index, |m| m.rps).show(0),
            spread(index, |m| m.gateway_cpu_us).show(1),
            spread(index, |m| m.redis_cpu_us).show(1),
            spread(index, |m| m.p50_us / 1000.0).show(2),
            spread(index, |m| m.p99_us / 1000.0).show(2),
            format!(
                "{} ({})",
                spread(index, |m| m.round_trips).show(2),
                spread(index, |m| m.redis_commands).show(1)
            ),
        ]
    };
    Ok(Section {
        title: "Fleet mode on Redis".into(),
        intro: format!(
            "Same total load from `cargo xtask load` ({CONNECTIONS} connections, {} s per run; \
             the fleet's connections alternate between its two nodes) on one node alone, then on \
             two nodes sharing one `redis-server` (Debian's {}). Everything shares this machine's \
             two cores: gateways, Redis and the load generator. Limits never bite (10^9 per 1 s \
             window). Latency at {LATENCY_CONNECTIONS} connections, below saturation. Block \
             propagation: {BLOCKS} sources each fail authentication once on node A \
             (`auth_failures = 1`); the time until node B's audit line for the block{}, which B \
             writes after its maps.",
            bench.plan.secs,
            super::version_of(Path::new("redis-server"), &["--version"]),
            if is_root() {
                " (B attached in XDP on `lo`, skb mode: the line says `enforced_in: xdp`)"
            } else {
                ""
            },
        ),
        table: vec![
            vec![
                "setup".into(),
                "req/s".into(),
                "gateway CPU µs/req".into(),
                "Redis CPU µs/req".into(),
                "p50 ms".into(),
                "p99 ms".into(),
                "Redis round trips/req (all commands)".into(),
            ],
            row("one node, one hot caller", 0),
            row("two nodes + Redis, one hot caller", 1),
            row("one node, 10,000 callers", 2),
            row("two nodes + Redis, 10,000 callers", 3),
            row(
                &format!("one node, hot caller, {LATENCY_CONNECTIONS} conns"),
                4,
            ),
            row(
                &format!("two nodes + Redis, hot caller, {LATENCY_CONNECTIONS} conns"),
                5,
            ),
            vec![
                "fleet / alone, req per gateway CPU-s (hot; 10,000)".into(),
                format!("{} ; {}", hot_ratio.show(2), many_ratio.show(2)),
            ],
            vec![
                "same, counting Redis's CPU too (hot; 10,000)".into(),
                format!("{} ; {}", hot_ratio_redis.show(2), many_ratio_redis.show(2)),
            ],
            vec![
                "p50 / p99 added by the fleet, ms".into(),
                format!("{} / {}", added_p50.show(3), added_p99.show(3)),
            ],
            vec![
                format!("block propagation A -> B over {BLOCKS} blocks, ms"),
                format!("p50 {p50:.1}, p99 {p99:.1}, max {max:.1}"),
            ],
        ],
        headline: vec![
            (
                "fleet/alone req per gateway CPU, hot".into(),
                hot_ratio.median,
                0.8,
            ),
            (
                "fleet/alone req per gateway CPU, 10k".into(),
                many_ratio.median,
                0.8,
            ),
            (
                "0.3 ms / p50 added by the fleet".into(),
                0.3 / added_p50.median.max(0.001),
                1.0,
            ),
            (
                "50 ms / block propagation p99".into(),
                50.0 / p99.max(0.1),
                1.0,
            ),
        ],
        notes: vec![
            "Every limited request costs one round trip, an `EVALSHA` of the sliding-log script; \
             in brackets, every command Redis ran per request (`INFO commandstats`): the \
             script's own five (`TIME`, `ZREMRANGEBYSCORE`, `ZCARD`, `ZADD`, `PEXPIRE`) and the \
             block-stream reads."
                .into(),
            "Targets: at least 0.8x the requests per gateway CPU of a node alone; p50 added at \
             most 0.3 ms; block propagation p99 at most 50 ms."
                .into(),
        ],
    })
}

fn start_redis(bench: &Bench, addr: SocketAddr) -> Result<Service> {
    let dir = bench.dir("redis");
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir);
    let mut redis = Service::spawn(command, dir.join("redis.log"))?;
    redis.wait_for_port(addr)?;
    Ok(redis)
}

/// `EVALSHA` calls, and all commands (the scripts' own included), Redis has run since it started
/// (`INFO commandstats`).
fn redis_commands(addr: SocketAddr) -> Result<(u64, u64)> {
    let output = Command::new("redis-cli")
        .args(["-p", &addr.port().to_string(), "INFO", "commandstats"])
        .output()
        .context("redis-cli")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let calls = |wanted: &dyn Fn(&str) -> bool| -> u64 {
        text.lines()
            .filter(|line| wanted(line))
            .filter_map(|line| {
                line.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>()
    };
    Ok((
        calls(&|line| line.starts_with("cmdstat_evalsha:")),
        calls(&|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info")),
    ))
}

/// Milliseconds from each offense on node A to node B's audit line of the block.
fn block_propagation(
    bench: &Bench,
    upstream: &str,
    redis_addr: SocketAddr,
    fleet_section: &dyn Fn(&str) -> String,
) -> Result<Vec<f64>> {
    let blocking = "[blocking]\nauth_failures = 1\nwindow_secs = 60\nblock_secs = 600\n";
    let start = |name: &str, xdp: &str| -> Result<(Service, SocketAddr, std::path::PathBuf)> {
        let dir = bench.dir(&format!("propagation-{name}"));
        let addr = free_addr()?;
        let audit = dir.join("audit.jsonl");
        let config = format!(
            "listen = \"{addr}\"\n[upstream]\nurl = \"{upstream}\"\n[audit]\npath = \"{}\"\n\
             [[users]]\nname = \"u\"\nkey_sha256 = \"{}\"\n[admin]\nlisten = \"\"\n{blocking}{xdp}{}",
            audit.display(),
            "0".repeat(64),
            fleet_section(name),
        );
        let gateway = start_gateway(&bench.gateway, &dir, &config, None)?;
        Ok((gateway, addr, audit))
    };
    let _ = redis_addr;
    let xdp = if is_root() {
        "[xdp]\nenabled = true\ninterface = \"lo\"\nmode = \"skb\"\npin_path = \"\"\n"
    } else {
        ""
    };
    let (_a, a_addr, _) = start("propagation-a", "")?;
    let (_b, _, b_audit) = start("propagation-b", xdp)?;
    std::thread::sleep(Duration::from_millis(500));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut latencies = Vec::new();
    for index in 0..BLOCKS {
        let source = IpAddr::from([127, 0, 1, index as u8 + 1]);
        let offended = SystemTime::now();
        let request = e2e_tests::raw_post(a_addr, "Bearer not-a-key-0000000000", super::CALL_BODY);
        let answer = runtime.block_on(e2e_tests::raw_request(source, a_addr, &request))?;
        if !answer.starts_with("HTTP/1.1 401") {
            bail!("node A answered the offense with {answer}");
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let applied = loop {
            if let Some(at) = block_time(&b_audit, &source.to_string()) {
                break at;
            }
            if Instant::now() > deadline {
                bail!("node B never applied the block of {source}");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let offended_ms = offended.duration_since(UNIX_EPOCH)?.as_millis() as f64;
        latencies.push((applied - offended_ms).max(0.0));
    }
    Ok(latencies)
}

/// When node B's audit log says it blocked `ip` (ms since the epoch), if it has.
fn block_time(audit: &Path, ip: &str) -> Option<f64> {
    let text = std::fs::read_to_string(audit).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["event"] == "block" && line["ip"] == ip)
        .and_then(|line| epoch_ms(line["ts"].as_str()?))
}

/// `2026-11-29T13:49:06.499Z` as ms since the epoch.
fn epoch_ms(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut date = date.split('-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.split(':');
    let (hour, minute) = (
        time.next()?.parse::<i64>().ok()?,
        time.next()?.parse::<i64>().ok()?,
    );
    let seconds: f64 = time.next()?.parse().ok()?;
    // Days since the epoch (civil calendar, Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3_600 + minute * 60) as f64 + seconds) * 1000.0)
}
