//! Waits between retries.

use std::time::Duration;

/// The wait before retry number `retry` (from 1): `first`, doubling with each retry up to
/// `first × 2^max_doublings`, where it stays.
///
/// ```
/// use std::time::Duration;
/// use rillet_common::retry::backoff;
/// let first = Duration::from_millis(50);
/// assert_eq!(backoff(first, 1, 5), first);
/// assert_eq!(backoff(first, 3, 5), Duration::from_millis(200));
/// assert_eq!(backoff(first, 9, 5), Duration::from_millis(1600));
/// ```
pub fn backoff(first: Duration, retry: usize, max_doublings: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(max_doublings as usize) as u32;
    first.saturating_mul(1 << doublings)
}

/// A wait drawn uniformly from `low..=high` (`low` when `high` is not above it), so that
/// callers that failed together do not all retry at the same instant.
///
/// ```
/// use std::time::Duration;
/// use rillet_common::retry::jitter;
/// let (low, high) = (Duration::from_millis(50), Duration::from_millis(100));
/// let wait = jitter(low, high);
/// assert!(low <= wait && wait <= high);
/// assert_eq!(jitter(high, low), high);
/// ```
pub fn jitter(low: Duration, high: Duration) -> Duration {
    let Some(span) = high.checked_sub(low).filter(|s| !s.is_zero()) else {
        return low;
    };
    // A draw failing (no entropy source) only loses the spread.
    let draw = getrandom::u64().unwrap_or(0);
    let fraction = (draw >> 11) as f64 / (1u64 << 53) as f64;
    low + span.mul_f64(fraction)
}
