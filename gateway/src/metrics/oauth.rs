//! The OAuth issuers' signing keys as the node holds them, read at scrape time (nothing is
//! encoded without `[oauth]`). Token refusals are counted with every request
//! (`requests_total{decision="invalid_token"}` and `"idp_unavailable"`).

use std::sync::Mutex;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{family::Family, gauge::Gauge},
};

use crate::oauth::KeyStatus;

/// Per issuer: keys known, and whether the last refresh failed.
#[derive(Debug, Default)]
pub struct OAuthCollector {
    latest: Mutex<Vec<(String, KeyStatus)>>,
}

impl OAuthCollector {
    pub fn update(&self, issuers: Vec<(String, KeyStatus)>) {
        *crate::lock(&self.latest) = issuers;
    }
}

impl Collector for OAuthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let latest = crate::lock(&self.latest);
        if latest.is_empty() {
            return Ok(());
        }
        // Issuers come from the configuration: a bounded label set.
        let keys = Family::<[(&str, String); 1], Gauge>::default();
        let failing = Family::<[(&str, String); 1], Gauge>::default();
        for (issuer, status) in latest.iter() {
            let label = [("issuer", issuer.clone())];
            keys.get_or_create(&label)
                .set(i64::try_from(status.keys).unwrap_or(i64::MAX));
            failing
                .get_or_create(&label)
                .set(i64::from(status.error.is_some()));
        }
        keys.encode(encoder.encode_descriptor(
            "oauth_signing_keys",
            "Signing keys known for each issuer (they keep verifying while the IdP is away)",
            None,
            keys.metric_type(),
        )?)?;
        failing.encode(encoder.encode_descriptor(
            "oauth_keys_refresh_failing",
            "1 while the last refresh of an issuer's keys failed",
            None,
            failing.metric_type(),
        )?)?;
        Ok(())
    }
}
