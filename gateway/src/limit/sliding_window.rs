//! The local limiter: exact sliding windows, in this process's memory.
//!
//! For each caller the limiter keeps the admission times of the requests inside the current window
//! and admits a request only if fewer than `requests` were admitted in the `window` before it. No
//! window of that length ever holds more than the limit, unlike fixed windows (twice the limit
//! across a boundary) or token buckets (burst + refill).
//!
//! Admissions less than 1 ms apart share one entry, which counts them and leaves the window with
//! the latest of them: a caller sending thousands of requests a second costs one entry per
//! millisecond rather than one per request (at most `min(requests, window in ms)` entries), and a
//! slot frees at most 1 ms late, never early. A lone request keeps its exact time. Callers with no
//! request inside their window are swept away.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;

use super::{Denied, Limiter, NotAdmitted};
use crate::config::RateLimit;

/// Admission times per key, in this process: exact, and as fast as a map lookup.
pub struct SlidingWindow {
    epoch: Instant,
    windows: DashMap<Arc<str>, Window>,
}

/// Admissions closer together than this share an entry.
const RUN_NS: u64 = 1_000_000;

/// Admissions inside the caller's window, oldest first.
#[derive(Default)]
struct Window {
    admitted: VecDeque<Run>,
    /// Sum of the counts in `admitted`.
    total: u64,
}

/// Admissions within [`RUN_NS`] of the first of them (ns since the limiter's epoch).
#[derive(Clone, Copy)]
struct Run {
    first: u64,
    /// The latest admission, after `first` (under [`RUN_NS`], so it fits).
    last_offset: u32,
    count: u32,
}

impl Window {
    /// Forgets admissions that left the window (now - window, now].
    fn forget_left(&mut self, now_ns: u64, window_ns: u64) {
        while let Some(&run) = self.admitted.front()
            && run.leaves_at(window_ns) <= now_ns
        {
            self.admitted.pop_front();
            self.total -= u64::from(run.count);
        }
    }

    /// When enough of the oldest admissions have left the window to free `needed` slots.
    fn frees_at(&self, needed: u64, window_ns: u64) -> Option<u64> {
        let mut freed = 0;
        self.admitted
            .iter()
            .find(|run| {
                freed += u64::from(run.count);
                freed >= needed
            })
            .map(|run| run.leaves_at(window_ns))
    }

    fn admit(&mut self, now_ns: u64, cost: u32) {
        match self.admitted.back_mut() {
            // (Workers read the clock before taking the caller's lock, so `now` may be a little
            // older than the newest entry.)
            Some(run) if now_ns.saturating_sub(run.first) < RUN_NS => {
                run.last_offset = run.last_offset.max(now_ns.saturating_sub(run.first) as u32);
                run.count += cost;
            }
            _ => self.admitted.push_back(Run {
                first: now_ns,
                last_offset: 0,
                count: cost,
            }),
        }
        self.total += u64::from(cost);
    }
}

impl Run {
    /// When the run leaves a window of `window_ns`: with its latest admission.
    fn leaves_at(self, window_ns: u64) -> u64 {
        self.first + u64::from(self.last_offset) + window_ns
    }
}

impl Default for SlidingWindow {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            windows: DashMap::new(),
        }
    }
}

impl Limiter for SlidingWindow {
    /// Decided at once: the future is only the answer.
    fn admit(
        &self,
        key: &Arc<str>,
        limit: RateLimit,
        cost: u32,
    ) -> impl Future<Output = Result<(), NotAdmitted>> + Send {
        std::future::ready(
            self.check_at(key, limit, cost, Instant::now())
                .map_err(NotAdmitted::Over),
        )
    }

    fn used(&self, key: &str, window: Duration) -> u64 {
        let now_ns = self.nanos_since_epoch(Instant::now());
        let window_ns = window.as_nanos() as u64;
        self.windows.get(key).map_or(0, |state| {
            state
                .admitted
                .iter()
                .filter(|run| run.leaves_at(window_ns) > now_ns)
                .map(|run| u64::from(run.count))
                .sum()
        })
    }

    /// Drops the state of keys with no admission inside `idle_after`.
    fn sweep(&self, idle_after: Duration) {
        let now_ns = self.nanos_since_epoch(Instant::now());
        let idle_ns = idle_after.as_nanos() as u64;
        self.windows.retain(|_, window| {
            window
                .admitted
                .back()
                .is_some_and(|run| run.leaves_at(idle_ns) > now_ns)
        });
    }
}

impl SlidingWindow {
    fn check_at(
        &self,
        caller: &Arc<str>,
        limit: RateLimit,
        cost: u32,
        now: Instant,
    ) -> Result<(), Denied> {
        let now_ns = self.nanos_since_epoch(now);
        let window_ns = limit.window.as_nanos() as u64;
        let max = limit.requests.get() as usize;
        let cost = cost.max(1) as usize;
        if cost > max {
            return Err(Denied {
                retry_after: limit.window,
                limit,
                exceeds_limit: true,
            });
        }

        // Looked up before `entry`, which would clone (and drop) the shared key on every request.
        let mut window = match self.windows.get_mut(&**caller) {
            Some(window) => window,
            None => self.windows.entry(Arc::clone(caller)).or_default(),
        };
        window.forget_left(now_ns, window_ns);
        let needed_free = (window.total + cost as u64).saturating_sub(max as u64);
        if needed_free > 0 {
            let frees_at = window
                .frees_at(needed_free, window_ns)
                .unwrap_or(now_ns + window_ns);
            return Err(Denied {
                retry_after: Duration::from_nanos(frees_at.saturating_sub(now_ns)),
                limit,
                exceeds_limit: false,
            });
        }
        window.admit(now_ns, cost as u32);
        Ok(())
    }

    /// Number of callers with limiter state (for tests and metrics).
    pub fn tracked_callers(&self) -> usize {
        self.windows.len()
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn limit(requests: u32, window_secs: u64) -> RateLimit {
        RateLimit {
            requests: NonZeroU32::new(requests).unwrap(),
            window: Duration::from_secs(window_secs),
        }
    }

    #[test]
    fn admits_exactly_n_per_window_and_frees_slots_at_the_edge() {
        let limiter = SlidingWindow::default();
        let alice: Arc<str> = "alice".into();
        let t0 = limiter.epoch + Duration::from_secs(1);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let lim = limit(3, 10);

        assert!(limiter.check_at(&alice, lim, 1, at(0)).is_ok());
        assert!(limiter.check_at(&alice, lim, 1, at(4_000)).is_ok());
        assert!(limiter.check_at(&alice, lim, 1, at(5_000)).is_ok());
        let denied = limiter.check_at(&alice, lim, 1, at(9_999)).unwrap_err();
        // The oldest admission (t=0) leaves the window at t=10s: 1 ms from now.
        assert_eq!(denied.retry_after, Duration::from_millis(1));
        assert_eq!(denied.retry_after_secs(), 1);
        // Exactly at the edge the first slot is free again, and only one.
        assert!(limiter.check_at(&alice, lim, 1, at(10_000)).is_ok());
        let denied = limiter.check_at(&alice, lim, 1, at(10_000)).unwrap_err();
        assert_eq!(denied.retry_after, Duration::from_millis(4_000));
        assert_eq!(denied.retry_after_secs(), 4);
    }

    #[test]
    fn denied_requests_do_not_use_up_slots() {
        let limiter = SlidingWindow::default();
        let alice: Arc<str> = "alice".into();
        let t0 = limiter.epoch;
        assert!(limiter.check_at(&alice, limit(1, 1), 1, t0).is_ok());
        for ms in [1, 500, 999] {
            assert!(
                limiter
                    .check_at(&alice, limit(1, 1), 1, t0 + Duration::from_millis(ms))
                    .is_err()
            );
        }
        assert!(
            limiter
                .check_at(&alice, limit(1, 1), 1, t0 + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn no_window_ever_holds_more_than_n() {
        // Requests every 7 ms for 3 s against 10 per second: check every 1 s window afterwards.
        let lim = limit(10, 1);
        let limiter = SlidingWindow::default();
        let bob: Arc<str> = "bob".into();
        let admitted: Vec<u64> = (0..430u64)
            .map(|i| i * 7)
            .filter(|&ms| {
                limiter
                    .check_at(&bob, lim, 1, limiter.epoch + Duration::from_millis(ms))
                    .is_ok()
            })
            .collect();
        for (i, &start) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|&&t| t < start + 1_000)
                .count();
            assert!(
                in_window <= 10,
                "{in_window} admitted in the window from {start} ms"
            );
        }
        // And the limiter is not stingier than the limit: 10 per second over 3 s.
        assert!(admitted.len() >= 30, "only {} admitted", admitted.len());
    }

    #[tokio::test]
    async fn callers_are_limited_separately_and_overrides_apply() {
        let limiter = SlidingWindow::default();
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        assert!(limiter.admit(&alice, limit(1, 60), 1).await.is_ok());
        assert!(limiter.admit(&alice, limit(1, 60), 1).await.is_err());
        assert!(limiter.admit(&bob, limit(2, 60), 1).await.is_ok());
        assert!(limiter.admit(&bob, limit(2, 60), 1).await.is_ok());
        assert!(limiter.admit(&bob, limit(2, 60), 1).await.is_err());
    }

    #[test]
    fn batches_cost_one_per_message_all_or_nothing() {
        let lim = limit(5, 60);
        let limiter = SlidingWindow::default();
        let alice: Arc<str> = "alice".into();
        let now = limiter.epoch;
        assert!(limiter.check_at(&alice, lim, 3, now).is_ok());
        // Three more do not fit into the two left; nothing is taken.
        assert!(limiter.check_at(&alice, lim, 3, now).is_err());
        assert!(limiter.check_at(&alice, lim, 2, now).is_ok());
        let too_big = limiter.check_at(&"bob".into(), lim, 6, now).unwrap_err();
        assert!(too_big.exceeds_limit);
    }

    #[test]
    fn admissions_within_a_millisecond_share_one_entry_and_free_no_earlier() {
        // (Runs of 1 ms: 1,000 admissions over 0.5 ms make one entry.)
        let lim = limit(1_000, 1);
        let limiter = SlidingWindow::default();
        let alice: Arc<str> = "alice".into();
        let t0 = limiter.epoch + Duration::from_millis(5);
        // 1,000 admissions spread over 0.5 ms: one entry.
        for i in 0..1_000u64 {
            let at = t0 + Duration::from_nanos(i * 500);
            assert!(limiter.check_at(&alice, lim, 1, at).is_ok());
        }
        let entries = limiter.windows.get(&alice).unwrap().admitted.len();
        assert!(entries <= 2, "{entries} entries");
        // The window is full until the run's latest admission leaves it, never before the
        // exact time of the oldest does.
        let exact_edge = t0 + Duration::from_secs(1);
        assert!(
            limiter
                .check_at(&alice, lim, 1, exact_edge - Duration::from_nanos(1))
                .is_err()
        );
        let denied = limiter
            .check_at(&alice, lim, 1, t0 + Duration::from_millis(500))
            .unwrap_err();
        assert!(denied.retry_after >= Duration::from_millis(500));
        assert!(denied.retry_after <= Duration::from_millis(501));
        assert!(
            limiter
                .check_at(&alice, lim, 1, exact_edge + Duration::from_millis(1))
                .is_ok()
        );
    }

    #[tokio::test]
    async fn idle_callers_are_swept() {
        let limiter = SlidingWindow::default();
        for i in 0..100 {
            let caller: Arc<str> = format!("user{i}").into();
            limiter.admit(&caller, limit(10, 60), 1).await.unwrap();
        }
        assert_eq!(limiter.tracked_callers(), 100);
        limiter.sweep(Duration::from_secs(60));
        assert_eq!(limiter.tracked_callers(), 100, "active callers are kept");
        limiter.sweep(Duration::ZERO);
        assert_eq!(limiter.tracked_callers(), 0);
    }
}
