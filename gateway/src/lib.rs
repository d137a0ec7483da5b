//! The MCP edge gateway: a reverse proxy that authenticates, rate-limits and audits every MCP call,
//! and an XDP program that drops abusive sources in the kernel.
//!
//! The request path is in [`proxy`]: [`auth`] -> [`rate_limit`] -> [`audit`] -> [`forward`].

pub mod app;
pub mod audit;
pub mod auth;
pub mod blocking;
pub mod config;
pub mod demo_upstream;
pub mod forward;
pub mod idle;
pub mod jsonrpc;
pub mod keys;
pub mod legacy_sse;
pub mod pool;
pub mod proxy;
pub mod rate_limit;
pub mod server;
pub mod sessions;
pub mod xdp;

/// Locks `mutex`. A poisoned lock only means a thread panicked while holding it; the data is
/// intact, so it is used anyway.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
