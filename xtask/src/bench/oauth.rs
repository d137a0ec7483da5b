//! Scenario: OAuth access tokens against static keys. One gateway with one static key, one with
//! `[oauth]` (RS256 tokens checked against a JWKS file, the same demo upstream), measured in
//! alternating runs: the same token on every request (verified once, then found in the cache by
//! its digest), and a different token on every request, from more tokens than the cache holds, so
//! that every request pays a full signature check.

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{
    Bench, Service, Spread, bench_keys, demo_upstream, free_addr, gateway_config, load::LoadArgs,
    report::Section, start_gateway,
};

/// More distinct tokens than the cache of the "fresh" gateway holds: round robin over them misses
/// every time.
const FRESH_TOKENS: usize = 4_000;
const FRESH_CACHE: usize = 1_000;
const CONNECTIONS: usize = 64;

struct Measured {
    rps: f64,
    cpu_us: f64,
}

fn measure(bench: &Bench, service: &Service, args: &LoadArgs) -> Result<Measured> {
    let before = service.cpu_time();
    let result = bench.load(None, args)?;
    let cpu = service.cpu_time().since(before).total();
    let requests = result.ok as f64;
    if result.failed > 0 {
        bail!("{} requests failed: {}", result.failed, service.logs());
    }
    Ok(Measured {
        rps: result.rps,
        cpu_us: cpu.as_secs_f64() * 1e6 / requests.max(1.0),
    })
}

pub fn run(bench: &Bench) -> Result<Section> {
    eprintln!("== oauth: a cached token vs a static key; a fresh signature per request");
    let peers = bench.root.join("tests/peers");
    if !peers.join("node_modules/jose").is_dir() {
        bail!("the npm test peers are not installed: run `cargo xtask setup`");
    }
    let upstream_addr = free_addr()?;
    let _upstream = demo_upstream(bench, upstream_addr)?;
    let upstream_url = format!("http://{upstream_addr}/mcp");

    let key = bench_keys(1);
    let key_dir = bench.dir("oauth-key");
    let key_addr = free_addr()?;
    let with_key = start_gateway(
        &bench.gateway,
        &key_dir,
        &gateway_config(
            key_addr,
            &upstream_url,
            &key_dir.join("audit.jsonl"),
            &key,
            "",
        ),
        None,
    )?;

    let dir = bench.dir("oauth");
    let oauth_gateway = |name: &str, cache: usize| -> Result<(Service, String)> {
        let addr = free_addr()?;
        let resource = format!("http://{addr}/mcp");
        let gateway_dir = bench.dir(name);
        let extra = format!(
            "[oauth]\nresource = \"{resource}\"\ntoken_cache_entries = {cache}\n\
             [[oauth.issuers]]\nissuer = \"https://idp.bench\"\njwks_file = \"{}\"\n\
             audiences = [\"https://mcp.bench/mcp\"]\n",
            dir.join("jwks.json").display()
        );
        let config = gateway_config(
            addr,
            &upstream_url,
            &gateway_dir.join("audit.jsonl"),
            &[],
            &extra,
        );
        Ok((
            start_gateway(&bench.gateway, &gateway_dir, &config, None)?,
            resource,
        ))
    };
    let status = Command::new("node")
        .arg(peers.join("bench_tokens.mjs"))
        .args([
            &dir.display().to_string(),
            "https://idp.bench",
            "https://mcp.bench/mcp",
            &FRESH_TOKENS.to_string(),
        ])
        .current_dir(&peers)
        .status()
        .context("node bench_tokens.mjs")?;
    if !status.success() {
        bail!("bench_tokens.mjs failed");
    }
    let tokens_file = dir.join("tokens.txt");
    let first_token = std::fs::read_to_string(&tokens_file)?
        .lines()
        .next()
        .context("no token made")?
        .to_owned();
    let (cached, cached_url) = oauth_gateway("oauth-cached", 10_000)?;
    let (fresh, fresh_url) = oauth_gateway("oauth-fresh", FRESH_CACHE)?;

    let load = |url: &str, key: Option<String>, keys_file: Option<std::path::PathBuf>| LoadArgs {
        key,
        keys_file,
        duration_secs: bench.plan.secs,
        ..LoadArgs::new(url.to_owned(), CONNECTIONS)
    };
    let key_load = load(
        &format!("http://{key_addr}/mcp"),
        Some(key[0].clone()),
        None,
    );
    let cached_load = load(&cached_url, Some(first_token), None);
    let fresh_load = load(&fresh_url, None, Some(tokens_file));
    let (mut keys, mut tokens, mut fresh_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..bench.plan.runs {
        keys.push(measure(bench, &with_key, &key_load)?);
        tokens.push(measure(bench, &cached, &cached_load)?);
        fresh_runs.push(measure(bench, &fresh, &fresh_load)?);
    }
    let spread = |runs: &[Measured], of: fn(&Measured) -> f64| {
        Spread::of(&runs.iter().map(of).collect::<Vec<_>>())
    };
    let (key_cpu, token_cpu, fresh_cpu) = (
        spread(&keys, |m| m.cpu_us),
        spread(&tokens, |m| m.cpu_us),
        spread(&fresh_runs, |m| m.cpu_us),
    );
    let (key_rps, token_rps, fresh_rps) = (
        spread(&keys, |m| m.rps),
        spread(&tokens, |m| m.rps),
        spread(&fresh_runs, |m| m.rps),
    );
    let ratio = key_cpu.median / token_cpu.median;
    Ok(Section {
        title: "OAuth access tokens (issue 32)".into(),
        intro: format!(
            "`cargo xtask load`, {CONNECTIONS} connections, {} s per run, {} alternating runs; the \
             gateway's demo upstream. Tokens: RS256 JWTs (~600 bytes) made by `tests/peers/\
             bench_tokens.mjs` with `jose`, verified against a JWKS file. Fresh: {FRESH_TOKENS} \
             tokens round robin through a cache of {FRESH_CACHE}, so every request verifies a \
             signature. CPU: the gateway process's user + system time per request.",
            bench.plan.secs, bench.plan.runs
        ),
        table: vec![
            vec![
                "credential".into(),
                "req/s".into(),
                "gateway CPU µs/request".into(),
            ],
            vec!["static key".into(), key_rps.show(0), key_cpu.show(1)],
            vec![
                "cached access token".into(),
                token_rps.show(0),
                token_cpu.show(1),
            ],
            vec![
                "never-seen access token (signature each request)".into(),
                fresh_rps.show(0),
                fresh_cpu.show(1),
            ],
        ],
        headline: vec![(
            "CPU per request, static key / cached token".into(),
            ratio,
            0.95,
        )],
        notes: vec![
            "Target: a cached verified token costs at most 5% more CPU per request than a static \
             key (ratio ≥ 0.95). The fresh row is reported, not targeted: it is what a flood of \
             valid never-seen tokens costs (forged ones are refused before or at the signature \
             and count as failed authentications of their source)."
                .into(),
        ],
    })
}
