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
