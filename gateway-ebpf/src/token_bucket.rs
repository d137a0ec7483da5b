//! The token bucket both per-source limits of the XDP program use (packets and new connections).
//! Its state is part of the map value [`crate::RateState`], so it is `#[repr(C)]` like the other
//! shared types; the arithmetic is fixed point, since BPF has no floating point and no 128-bit
//! multiply.

/// One token, in the bucket's fixed-point unit: tokens are counted in billionths, so refill is
/// `elapsed_ns * rate_per_sec` without division.
pub const TOKEN: u64 = 1_000_000_000;
/// Longest refill credited at once (bounds the multiplication; any bucket is full by then).
pub const MAX_REFILL_NS: u64 = 60 * 1_000_000_000;
/// Highest rate (per second) and burst a bucket accepts: with [`MAX_REFILL_NS`] and [`TOKEN`] the
/// products stay below `u64::MAX` (BPF has no 128-bit multiply for a saturating one).
pub const MAX_RATE: u64 = 100_000_000;
pub const MAX_BURST: u64 = 1_000_000_000;

/// A token bucket in fixed point ([`TOKEN`] per token).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ns`.
    pub const fn full(burst: u64, now_ns: u64) -> Self {
        let burst = if burst > MAX_BURST { MAX_BURST } else { burst };
        Self {
            tokens: burst * TOKEN,
            last_ns: now_ns,
        }
    }

    /// Refills for the time since the last packet, then takes one token if there is one.
    /// `rate_per_sec == 0` means unlimited.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, rate_per_sec: u64, burst: u64) -> bool {
        if rate_per_sec == 0 {
            return true;
        }
        let (tokens, _) = self.refilled(now_ns, rate_per_sec, burst);
        self.tokens = tokens;
        self.last_ns = now_ns;
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now_ns`: then it is no different from a new one.
    #[inline(always)]
    pub fn is_full(&self, now_ns: u64, rate_per_sec: u64, burst: u64) -> bool {
        if rate_per_sec == 0 {
            return true;
        }
        let (tokens, capacity) = self.refilled(now_ns, rate_per_sec, burst);
        tokens >= capacity
    }

    /// The tokens at `now_ns` (at most the capacity), and the capacity.
    #[inline(always)]
    fn refilled(&self, now_ns: u64, rate_per_sec: u64, burst: u64) -> (u64, u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        let elapsed = if elapsed > MAX_REFILL_NS {
            MAX_REFILL_NS
        } else {
            elapsed
        };
        let rate = if rate_per_sec > MAX_RATE {
            MAX_RATE
        } else {
            rate_per_sec
        };
        let burst = if burst > MAX_BURST { MAX_BURST } else { burst };
        let capacity = burst * TOKEN;
        let refilled = self.tokens.saturating_add(elapsed * rate);
        let tokens = if refilled > capacity {
            capacity
        } else {
            refilled
        };
        (tokens, capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let mut bucket = TokenBucket::full(3, 0);
        // Burst of 3, then empty.
        assert!((0..3).all(|_| bucket.take(0, 10, 3)));
        assert!(!bucket.take(0, 10, 3));
        // 10 per second: one token per 100 ms.
        assert!(!bucket.take(99_999_999, 10, 3));
        assert!(bucket.take(100_000_000, 10, 3));
        assert!(!bucket.take(100_000_001, 10, 3));
        // A long pause refills to the burst, not beyond.
        let later = 3_600 * 1_000_000_000;
        assert!((0..3).all(|_| bucket.take(later, 10, 3)));
        assert!(!bucket.take(later, 10, 3));
        // Rate 0 means unlimited.
        assert!((0..100).all(|_| bucket.take(later, 0, 0)));
    }
}
