//! What each worker thread has of its own.

use std::sync::Arc;

use super::Gateway;
use crate::{audit::WorkerAudit, limit::Limiter, policy::WorkerPolicy, upstream::Upstream};

/// A worker thread's upstream connections, its way into the audit log and its reference to the
/// current policy.
pub struct Worker {
    pub upstream: Upstream,
    pub audit: Arc<WorkerAudit>,
    pub policy: WorkerPolicy,
}

impl Worker {
    /// The worker's state; [`WorkerAudit::run`] must then run on the worker's runtime.
    pub fn new<L: Limiter>(gateway: &Gateway<L>) -> Self {
        Self {
            upstream: Upstream::new(
                &gateway.settings().upstream,
                gateway.metrics().upstream.clone(),
            ),
            audit: Arc::new(WorkerAudit::new(gateway.audit().clone())),
            policy: WorkerPolicy::default(),
        }
    }
}
