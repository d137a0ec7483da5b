//! Scenario 4: XDP cost per packet for each verdict path, against a pass-all baseline.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::{Bench, Spread, report::Section};
use crate::shell::Cmd;

const PATHS: [(&str, &str); 10] = [
    ("pass", "not blocked, no rate limits"),
    ("pass_metered", "not blocked, through its token bucket"),
    ("allowlisted", "allowlist hit"),
    ("blocked_exact", "blocklist hit"),
    ("blocked_prefix", "prefix blocklist hit"),
    ("rate_limited", "over its packet rate"),
    (
        "pass_v6_many_prefixes",
        "IPv6, not blocked, 1,000 /64 blocks in the prefix blocklist",
    ),
    ("blocked_prefix_v6", "IPv6 /64 hit among 1,000 /64 blocks"),
    (
        "pass_many_blocks",
        "not blocked, 10,000 addresses and 1,000 IPv6 /64s blocked",
    ),
    (
        "blocked_among_many",
        "blocklist hit among 10,000 blocked addresses",
    ),
];

pub fn run(bench: &Bench) -> Result<Section> {
    eprintln!("== xdp: ns/packet per verdict path");
    let output = Cmd::cargo(
        &bench.root,
        &["bench", "--package", "gateway", "--bench", "xdp_cost"],
    )
    .output()
    .context("the XDP cost benchmark failed")?;
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in output.lines().filter(|l| l.starts_with('{')) {
        let value: serde_json::Value = serde_json::from_str(line)?;
        if let (Some(path), Some(ns)) = (value["path"].as_str(), value["ns_per_packet"].as_f64()) {
            samples.entry(path.to_owned()).or_default().push(ns);
        }
    }
    let baseline = Spread::of(
        samples
            .get("baseline_pass_all")
            .map_or(&[][..], Vec::as_slice),
    );
    let mut table = vec![vec![
        "path".to_owned(),
        "ns/packet".to_owned(),
        "over pass-all baseline".to_owned(),
    ]];
    table.push(vec![
        "baseline (pass-all program)".into(),
        baseline.show(1),
        "—".into(),
    ]);
    for (path, what) in PATHS {
        let spread = Spread::of(samples.get(path).map_or(&[][..], Vec::as_slice));
        table.push(vec![
            format!("{path}: {what}"),
            spread.show(1),
            format!("{:.1}", spread.median - baseline.median),
        ]);
    }
    Ok(Section {
        title: "XDP cost per packet (BPF_PROG_TEST_RUN, repeat 2,000,000)".into(),
        intro:
            "The real program on a crafted TCP frame to the protected port, one verdict path at a \
                time; the kernel reports the mean time per repetition."
                .into(),
        table,
        headline: Vec::new(),
        notes: vec![
            "BPF_PROG_TEST_RUN includes the test harness's own per-run overhead, which the \
             pass-all baseline measures."
                .into(),
        ],
    })
}
