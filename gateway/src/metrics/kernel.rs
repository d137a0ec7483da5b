//! What the enforcer owns, read at scrape time: blocks in force by reason and origin, the
//! allowlist's size, and the XDP program's packet counters (summed over CPUs) and attach mode.
//! The admin listener asks the enforcer for a snapshot before each scrape and hands it here; the
//! request path never touches any of it.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::protection::Snapshot;

/// The latest snapshot, encoded at every scrape.
#[derive(Debug, Default)]
pub struct KernelCollector {
    latest: Mutex<KernelView>,
}

#[derive(Debug, Default)]
struct KernelView {
    /// `driver`, `skb`, or `off`.
    xdp_mode: &'static str,
    blocks: BTreeMap<(&'static str, &'static str), i64>,
    allowlisted: i64,
    /// Packets by verdict, when the program is loaded.
    packets: Vec<(&'static str, u64)>,
}

impl KernelCollector {
    pub fn update(&self, snapshot: &Snapshot, xdp_mode: &'static str) {
        let mut blocks = BTreeMap::new();
        for block in &snapshot.blocks {
            *blocks
                .entry((block.reason.as_str(), block.origin.as_str()))
                .or_insert(0) += 1;
        }
        let packets = snapshot
            .xdp
            .iter()
            .flatten()
            .map(|(verdict, count)| (verdict.as_str(), *count))
            .collect();
        *crate::lock(&self.latest) = KernelView {
            xdp_mode,
            blocks,
            allowlisted: i64::try_from(snapshot.allow.len()).unwrap_or(i64::MAX),
            packets,
        };
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = crate::lock(&self.latest);
        let mut family = encoder.encode_descriptor(
            "xdp_attached",
            "1 for the mode the XDP program is attached in (driver, skb), or for off",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(family.encode_family(&[("mode", view.xdp_mode)])?)?;
        let mut family = encoder.encode_descriptor(
            "blocks_active",
            "Sources and networks blocked now, by reason and by who decided",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((reason, origin), count) in &view.blocks {
            let labels = [("reason", *reason), ("origin", *origin)];
            ConstGauge::new(*count).encode(family.encode_family(&labels)?)?;
        }
        let allowlisted = ConstGauge::new(view.allowlisted);
        allowlisted.encode(encoder.encode_descriptor(
            "allowlist_entries",
            "Addresses and networks on the allowlist",
            None,
            allowlisted.metric_type(),
        )?)?;
        if !view.packets.is_empty() {
            let mut family = encoder.encode_descriptor(
                "xdp_packets",
                "Packets the XDP program saw, by verdict, summed over CPUs",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (verdict, count) in &view.packets {
                ConstCounter::new(*count)
                    .encode(family.encode_family(&[("verdict", *verdict)])?)?;
            }
        }
        Ok(())
    }
}
