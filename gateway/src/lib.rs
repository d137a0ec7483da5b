//! The MCP edge gateway: a reverse proxy that authenticates, rate-limits and audits every MCP call,
//! and an XDP program that drops abusive sources in the kernel.
//!
//! The request path is in [`proxy`]: authenticate ([`policy`]) -> limit ([`limit`]) -> audit
//! ([`audit`]) -> forward ([`upstream`]), around which [`server`] accepts and serves connections
//! (over TLS with [`tls`]); [`authz`] decides what each caller may use and see.
//! [`protection`] turns misbehaviour into blocks, which [`kernel`] writes into the XDP program's
//! maps. [`config`] reads the file; [`mcp`] is what the gateway understands of the protocol;
//! [`digest`] is the one form in which keys are kept.

pub mod admin;
pub mod app;
pub mod audit;
pub mod authz;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod demo_upstream;
pub mod digest;
pub mod fleet;
pub mod kernel;
pub mod limit;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod protection;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod upstream;

/// Locks `mutex`. A poisoned lock only means a thread panicked while holding it; the data is
/// intact, so it is used anyway.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
