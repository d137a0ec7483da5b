//! What each worker thread has of its own.

use std::sync::{Arc, Mutex};

use super::Gateway;
use crate::{
    audit::WorkerAudit, config::UpstreamSettings, limit::Limiter, lock, metrics::PoolStats,
    policy::WorkerPolicy, upstream::Upstream,
};

/// A worker thread's upstream connections, its way into the audit log and its reference to the
/// current policy.
pub struct Worker {
    upstream: Mutex<Current>,
    stats: PoolStats,
    pub audit: Arc<WorkerAudit>,
    pub policy: WorkerPolicy,
}

/// The worker's connections, and the settings they were made for.
struct Current {
    settings: Arc<UpstreamSettings>,
    upstream: Arc<Upstream>,
}

impl Worker {
    /// The worker's state; [`WorkerAudit::run`] and [`Upstream::close_idle_periodically`] of
    /// [`Worker::upstream`] must then run on the worker's runtime.
    pub fn new<L: Limiter>(gateway: &Gateway<L>) -> Self {
        let settings = Arc::clone(&gateway.in_force().serving.upstream);
        let stats = gateway.metrics().upstream.clone();
        Self {
            upstream: Mutex::new(Current {
                upstream: Arc::new(Upstream::new(&settings, stats.clone())),
                settings,
            }),
            stats,
            audit: Arc::new(WorkerAudit::new(gateway.audit().clone())),
            policy: WorkerPolicy::default(),
        }
    }

    /// The worker's connections now.
    pub fn current_upstream(&self) -> Arc<Upstream> {
        Arc::clone(&lock(&self.upstream).upstream)
    }

    /// The connections to the upstream `settings` describe. A reload that leaves the upstream as
    /// it was keeps them (and their pooled connections); one that changes it gets new ones, made
    /// by the first request under the new settings, while requests under way finish on the old.
    /// `latest` tells the settings in force now: a request that started before a reload and
    /// names the old upstream gets connections of its own rather than replacing the new ones.
    pub fn upstream(
        &self,
        settings: &Arc<UpstreamSettings>,
        latest: impl FnOnce() -> Arc<UpstreamSettings>,
    ) -> Arc<Upstream> {
        let mut current = lock(&self.upstream);
        if Arc::ptr_eq(&current.settings, settings) {
            return Arc::clone(&current.upstream);
        }
        if *current.settings == **settings {
            // A reload that changed something else: the same upstream.
            current.settings = Arc::clone(settings);
            return Arc::clone(&current.upstream);
        }
        let upstream = Arc::new(Upstream::new(settings, self.stats.clone()));
        tokio::spawn(upstream.close_idle_periodically());
        if Arc::ptr_eq(settings, &latest()) {
            tracing::debug!(upstream = %settings.url, "the worker connects to a new upstream");
            *current = Current {
                settings: Arc::clone(settings),
                upstream: Arc::clone(&upstream),
            };
        }
        upstream
    }
}
