//! Scenario 2: many callers. Throughput with requests spread over 10,000 keys against one key,
//! and the gateway's memory with 100,000 distinct callers' limiter state.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;

use super::{
    Bench, Service, Spread, bench_keys, demo_upstream, free_addr, gateway_config, load::LoadArgs,
    report::Section, start_gateway,
};

const MANY_KEYS: usize = 10_000;
const MEMORY_CALLERS: usize = 100_000;
/// The target for those callers' limiter state.
const MEMORY_BUDGET_MIB: f64 = 64.0;

pub fn run(bench: &Bench) -> Result<Section> {
    eprintln!("== callers: 10,000 keys vs one; memory with 100,000 callers");
    let upstream_addr = free_addr()?;
    let _upstream = demo_upstream(bench, upstream_addr)?;
    let upstream_url = format!("http://{upstream_addr}/mcp");

    // Throughput: the same gateway, one key vs requests spread over 10,000 keys.
    let keys = bench_keys(MANY_KEYS);
    let (_gateway, addr, keys_file) =
        gateway_with_keys(bench, "callers", &upstream_url, &keys, 60)?;
    let spread_over = |key: Option<String>, keys_file: Option<PathBuf>| LoadArgs {
        key,
        keys_file,
        duration_secs: bench.plan.secs,
        ..LoadArgs::new(format!("http://{addr}/mcp"), 64)
    };
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for _ in 0..bench.plan.runs {
        one.push(
            bench
                .load(None, &spread_over(Some(keys[0].clone()), None))?
                .rps,
        );
        many.push(
            bench
                .load(None, &spread_over(None, Some(keys_file.clone())))?
                .rps,
        );
    }
    let (one, many) = (Spread::of(&one), Spread::of(&many));

    // Memory: 100,000 users; every one calls once, twice; the limiter keeps a window per caller.
    let (gateway, mem_addr, mem_keys_file) = gateway_with_keys(
        bench,
        "callers-memory",
        &upstream_url,
        &bench_keys(MEMORY_CALLERS),
        3600,
    )?;
    let (idle_kib, _) = gateway.memory_kib();
    let each_caller_once = LoadArgs {
        keys_file: Some(mem_keys_file),
        each_key_once: true,
        ..LoadArgs::new(format!("http://{mem_addr}/mcp"), 64)
    };
    let pass = || bench.load(None, &each_caller_once);
    let first = pass()?;
    let (after_first_kib, _) = gateway.memory_kib();
    let second = pass()?;
    let (after_second_kib, peak_kib) = gateway.memory_kib();
    let mib = |kib: u64| kib as f64 / 1024.0;

    Ok(Section {
        title: "Many callers (scenario 2)".into(),
        intro: format!(
            "`cargo xtask load`, 64 connections, {} s per run, each request with the next key round \
             robin. Memory: a gateway with {MEMORY_CALLERS} users, each of whom calls once (twice in \
             the second pass); the limiter keeps every caller's window (window 1 h).",
            bench.plan.secs
        ),
        table: vec![
            vec!["measure".into(), "value".into()],
            vec!["req/s, one key".into(), one.show(0)],
            vec![format!("req/s, {MANY_KEYS} keys"), many.show(0)],
            vec!["10,000 keys / one key".into(), format!("{:.3}", many.median / one.median)],
            vec![format!("RSS once started ({MEMORY_CALLERS} users loaded, no call yet)"), format!("{:.1} MiB", mib(idle_kib))],
            vec![format!("RSS after {} callers (1st pass, {} failed)", first.ok, first.failed), format!("{:.1} MiB", mib(after_first_kib))],
            vec![format!("RSS after the 2nd pass ({} calls)", second.ok), format!("{:.1} MiB", mib(after_second_kib))],
            vec!["peak RSS (includes parsing the 100,000-user config at start)".into(), format!("{:.1} MiB", mib(peak_kib))],
        ],
        headline: vec![
            ("10k keys / 1 key, req/s".into(), many.median / one.median, 0.95),
            (
                format!("{MEMORY_BUDGET_MIB} MiB / RSS after {MEMORY_CALLERS} callers"),
                MEMORY_BUDGET_MIB / mib(after_first_kib.max(after_second_kib)),
                1.0,
            ),
        ],
        notes: vec![
            "The whole process's RSS after 100,000 callers is an upper bound of their limiter state \
             (the keys of 100,000 users and the allocator's own reserve included)."
                .into(),
            "Targets: 10,000 keys within 5% of one key; 100,000 callers' limiter state under 64 MiB, \
             and memory flat between the two passes (plateau)."
                .into(),
        ],
    })
}

/// A gateway with one user per key (limit window `window_secs`) and the keys in `<name>/keys.txt`
/// for the load generator; returns it, its address and the keys file.
fn gateway_with_keys(
    bench: &Bench,
    name: &str,
    upstream_url: &str,
    keys: &[String],
    window_secs: u64,
) -> Result<(Service, SocketAddr, PathBuf)> {
    let dir = bench.dir(name);
    let keys_file = dir.join("keys.txt");
    std::fs::write(&keys_file, keys.join("\n"))?;
    let addr = free_addr()?;
    let config = gateway_config(
        addr,
        upstream_url,
        &dir.join("audit.jsonl"),
        keys,
        "[blocking]\nenabled = false\n",
    )
    .replace(
        "window_secs = 60\n",
        &format!("window_secs = {window_secs}\n"),
    );
    let gateway = start_gateway(&bench.gateway, &dir, &config, None)?;
    Ok((gateway, addr, keys_file))
}
