//! Request limits per caller and per caller and tool, and the bound on a caller's requests in
//! flight ([`InFlight`]).
//!
//! The request path asks a [`Limiter`], which may await: today's [`SlidingWindow`] answers at
//! once from this process's memory; a limiter shared by a fleet of gateways (on Redis) answers
//! after a round trip, behind the same method. The limiter is a type parameter of the gateway,
//! not a trait object, so the local limiter's call stays a direct, inlinable one (no boxed future
//! per request).
//!
//! Limiters key their state by name, not by policy: the limit to apply comes with each call, so a
//! reloaded policy changes limits without resetting anyone's window.

mod in_flight;
mod sliding_window;

use std::{sync::Arc, time::Duration};

pub use in_flight::{HoldingSlot, InFlight, InFlightSlot};
pub use sliding_window::SlidingWindow;

use crate::config::RateLimit;

/// Counts admissions per key against the limit given with each request.
pub trait Limiter: Send + Sync + 'static {
    /// Admits `cost` requests (a JSON-RPC batch costs one per message) for `key` now, or says how
    /// long to wait. A refused request takes no slot.
    fn admit(
        &self,
        key: &Arc<str>,
        limit: RateLimit,
        cost: u32,
    ) -> impl Future<Output = Result<(), NotAdmitted>> + Send;

    /// How many admissions `key` has within the last `window` (for operators; never refuses).
    fn used(&self, key: &str, window: Duration) -> u64;

    /// Forgets keys with no admission within `idle_after`. Called periodically with the longest
    /// window of the current policy.
    fn sweep(&self, idle_after: Duration);
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// Over the limit.
    Over(Denied),
    /// The count is kept elsewhere (a fleet's Redis) and could not be had in time, and the
    /// configuration says to refuse rather than count locally.
    Unavailable,
}

/// Refused: the caller must wait `retry_after` for enough slots to free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub retry_after: Duration,
    pub limit: RateLimit,
    /// The request alone needs more slots than the limit has; it can never pass.
    pub exceeds_limit: bool,
}

impl Denied {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let secs = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        secs.max(1)
    }
}
