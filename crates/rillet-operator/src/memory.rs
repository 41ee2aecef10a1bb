//! Memory held inside function calls: decoded images, audio and video frames.
//!
//! Channels bound the data queued *between* tasks. A call of a media operator also holds
//! data while it runs — sixteen decoded 12-megapixel photos are 576 MB before anything is
//! queued — so calls have a budget too. Operators report what they decode with
//! [`charge_call_memory`]; each function task learns from its calls how many bytes a row
//! costs, and before a call it reserves the estimate from the job's [`CallBudget`]. A call
//! that does not fit waits (shown as "waiting on the memory budget") until running calls
//! finish, so a pipeline over large images slows down instead of running out of memory.
//! Operators whose rows are independent also get fewer rows per call when rows are large
//! (see [`CallSizer`]).
//!
//! Nothing ever waits *inside* a call, and a call that alone exceeds the budget still runs
//! (alone), so the budget cannot deadlock.

use std::cell::Cell;
use std::sync::Arc;

use rillet_common::{Result, RilletError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{OperatorMetrics, WaitReason, acquire_recording_wait};

thread_local! {
    static CALL_BYTES: Cell<usize> = const { Cell::new(0) };
    static CALL_TRANSIENT_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// Record that the call running on this thread holds `bytes` of decoded data (pixels,
/// samples, frames). Outside a measured call this does nothing.
///
/// ```
/// rillet_operator::memory::charge_call_memory(1024);
/// ```
pub fn charge_call_memory(bytes: usize) {
    CALL_BYTES.with(|c| c.set(c.get().saturating_add(bytes)));
}

/// Record that the call running on this thread holds `bytes` only while it works on one
/// row (a photo decoded, resized into the result and dropped): a call is charged the
/// largest such value, not their sum. Outside a measured call this does nothing.
///
/// ```
/// rillet_operator::memory::charge_call_transient_memory(48 << 20);
/// ```
pub fn charge_call_transient_memory(bytes: usize) {
    CALL_TRANSIENT_BYTES.with(|c| c.set(c.get().max(bytes)));
}

/// Run `work` and return its result with the bytes it charged.
pub fn measure_call<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = CALL_BYTES.with(|c| c.replace(0));
    let transient_before = CALL_TRANSIENT_BYTES.with(|c| c.replace(0));
    let result = work();
    let charged = CALL_BYTES.with(|c| c.replace(before));
    let transient = CALL_TRANSIENT_BYTES.with(|c| c.replace(transient_before));
    (result, charged.saturating_add(transient))
}

/// Bytes counted in KiB so one reservation fits a semaphore's `u32` permits.
const UNIT: usize = 1024;

/// A job's budget for data held inside running calls.
#[derive(Debug, Clone)]
pub struct CallBudget {
    permits: Arc<Semaphore>,
    capacity_units: usize,
}

impl CallBudget {
    /// A budget of `bytes` (at least 1 MiB).
    pub fn new(bytes: usize) -> Self {
        let capacity_units = (bytes.max(1 << 20) / UNIT).min(u32::MAX as usize);
        Self {
            permits: Arc::new(Semaphore::new(capacity_units)),
            capacity_units,
        }
    }

    /// The budget in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity_units * UNIT
    }

    /// Reserve `bytes` for one call, waiting (recorded on `metrics`) while running calls
    /// hold too much. A reservation larger than the whole budget takes all of it: the
    /// call then runs alone.
    pub async fn reserve(
        &self,
        bytes: usize,
        metrics: Option<&OperatorMetrics>,
    ) -> Result<OwnedSemaphorePermit> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.capacity_units) as u32;
        match self.permits.clone().try_acquire_many_owned(units) {
            Ok(permit) => Ok(permit),
            Err(_) => acquire_recording_wait(&self.permits, units, metrics, WaitReason::Memory)
                .await
                .ok_or(RilletError::Cancelled),
        }
    }
}

/// Learns a function's bytes per row from its calls: the estimate to reserve for the next
/// call and, for functions whose rows are independent, how many rows to give it so one
/// call stays near `target_bytes`.
#[derive(Debug, Clone)]
pub struct CallSizer {
    /// Bytes per row seen lately (a decaying maximum); `None` before the first call.
    per_row: Option<f64>,
    max_rows: usize,
    splittable: bool,
    target_bytes: usize,
}

impl CallSizer {
    /// A sizer for calls of at most `max_rows` rows (`None`: as they come) aiming at
    /// `target_bytes` per call; only `splittable` functions get fewer rows.
    ///
    /// ```
    /// use rillet_operator::memory::CallSizer;
    /// let mut sizer = CallSizer::new(Some(16), true, 100 << 20);
    /// assert_eq!(sizer.rows_for(16), 1); // unknown cost: one row first
    /// sizer.observe(1, 40 << 20); // a 40 MB decoded photo
    /// assert_eq!(sizer.rows_for(16), 2);
    /// assert_eq!(sizer.estimate(2), 80 << 20);
    /// ```
    pub fn new(max_rows: Option<usize>, splittable: bool, target_bytes: usize) -> Self {
        Self {
            per_row: None,
            max_rows: max_rows.unwrap_or(usize::MAX).max(1),
            splittable,
            target_bytes: target_bytes.max(1),
        }
    }

    /// Rows the next call should take out of `available`.
    pub fn rows_for(&self, available: usize) -> usize {
        if !self.splittable {
            return available;
        }
        let fitting = match self.per_row {
            None => 1,
            Some(per_row) if per_row < 1.0 => usize::MAX,
            Some(per_row) => ((self.target_bytes as f64 / per_row) as usize).max(1),
        };
        available.min(self.max_rows).min(fitting).max(1)
    }

    /// Bytes to reserve for a call of `rows` rows.
    pub fn estimate(&self, rows: usize) -> usize {
        self.per_row
            .map_or(0, |per_row| (per_row * rows as f64) as usize)
    }

    /// A call of `rows` rows charged `bytes`.
    pub fn observe(&mut self, rows: usize, bytes: usize) {
        if rows == 0 {
            return;
        }
        let seen = bytes as f64 / rows as f64;
        // Decay slowly so one small row does not let the next call take too many.
        self.per_row = Some(self.per_row.map_or(seen, |old| seen.max(old * 0.9)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_counted_per_call_and_nested_calls_restore_the_outer_count() {
        let ((), outer) = measure_call(|| {
            charge_call_memory(10);
            let ((), inner) = measure_call(|| charge_call_memory(5));
            assert_eq!(inner, 5);
            charge_call_memory(1);
        });
        assert_eq!(outer, 11);
    }

    #[test]
    fn a_call_is_charged_its_largest_transient_row_not_their_sum() {
        let ((), charged) = measure_call(|| {
            charge_call_memory(100);
            for bytes in [40, 70, 10] {
                charge_call_transient_memory(bytes);
            }
        });
        assert_eq!(charged, 170);
    }

    #[test]
    fn an_unsplittable_function_gets_its_whole_batch() {
        let mut sizer = CallSizer::new(Some(64), false, 1);
        sizer.observe(1, 1 << 30);
        assert_eq!(sizer.rows_for(64), 64);
    }

    #[test]
    fn a_reservation_over_the_budget_waits_for_running_calls_then_runs_alone() {
        let budget = CallBudget::new(4 << 20);
        let metrics = OperatorMetrics::new("decode");
        metrics.task_started();
        crate::global_runtime().block_on(async {
            let first = budget.reserve(3 << 20, Some(&metrics)).await.unwrap();
            let second = budget.reserve(100 << 20, Some(&metrics));
            tokio::pin!(second);
            // It cannot start while the first call holds 3 of the 4 MiB.
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), &mut second)
                    .await
                    .is_err()
            );
            assert_eq!(metrics.snapshot().waiting_on, vec![WaitReason::Memory]);
            drop(first);
            let alone = second.await.unwrap();
            assert_eq!(alone.num_permits() * UNIT, budget.capacity());
        });
        assert!(metrics.snapshot().wait_memory_ms > 0.0);
    }
}
