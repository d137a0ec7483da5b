//! The fleet's Redis link as the node sees it, read at scrape time (nothing is encoded for a
//! node on its own).

use std::sync::Mutex;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::fleet::Health;

/// Redis up or not, outages and failed operations, as of the last scrape.
#[derive(Debug, Default)]
pub struct FleetCollector {
    latest: Mutex<Option<(bool, u64, u64)>>,
}

impl FleetCollector {
    pub fn update(&self, health: &Health) {
        let (outages, errors) = health.counts();
        *crate::lock(&self.latest) = Some((health.is_up(), outages, errors));
    }
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((up, outages, errors)) = *crate::lock(&self.latest) else {
            return Ok(());
        };
        let up = ConstGauge::new(i64::from(up));
        up.encode(encoder.encode_descriptor(
            "fleet_redis_up",
            "1 while the fleet's Redis answers; 0 while this node counts alone or refuses",
            None,
            up.metric_type(),
        )?)?;
        let outages = ConstCounter::new(outages);
        outages.encode(encoder.encode_descriptor(
            "fleet_redis_outages",
            "Times Redis stopped answering in time",
            None,
            outages.metric_type(),
        )?)?;
        let errors = ConstCounter::new(errors);
        errors.encode(encoder.encode_descriptor(
            "fleet_redis_errors",
            "Redis operations that failed or took longer than fleet.timeout_ms",
            None,
            errors.metric_type(),
        )?)?;
        Ok(())
    }
}
