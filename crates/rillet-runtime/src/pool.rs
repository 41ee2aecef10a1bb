//! A bounded pool for blocking work.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rillet_common::{Result, RilletError};
use tokio::sync::{Notify, Semaphore};

use crate::metrics::{OperatorMetrics, WaitReason, acquire_recording_wait};

/// Runs blocking closures on tokio's blocking threads, at most `size` at once. Callers that
/// find every slot taken wait, and the wait is recorded as "waiting on a free worker".
///
/// ```
/// let pool = rillet_runtime::BlockingPool::new(2);
/// let rt = rillet_runtime::global_runtime();
/// let answer = rt.block_on(pool.run(None, || Ok(6 * 7))).unwrap();
/// assert_eq!(answer, 42);
/// ```
#[derive(Debug, Clone)]
pub struct BlockingPool {
    slots: Arc<Semaphore>,
    size: usize,
    in_flight: Arc<InFlight>,
}

/// Calls running on pool threads. A cancelled job is over only when this is zero: a
/// blocking call cannot be interrupted, and one left running (say, Python code) must not
/// outlive the job that started it.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl BlockingPool {
    /// A pool of `size` workers (at least one).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            slots: Arc::new(Semaphore::new(size)),
            size,
            in_flight: Arc::new(InFlight::default()),
        }
    }

    /// Number of workers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Wait until no call is running on the pool's threads.
    pub async fn idle(&self) {
        loop {
            let notified = self.in_flight.idle.notified();
            if self.in_flight.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Run `work` on a pool worker and wait for its result. A panic inside `work` becomes an
    /// error instead of unwinding into the caller.
    pub async fn run<T, F>(&self, metrics: Option<&OperatorMetrics>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => acquire_recording_wait(&self.slots, 1, metrics, WaitReason::FreeWorker)
                .await
                .ok_or(RilletError::Cancelled)?,
        };
        let in_flight = self.in_flight.clone();
        in_flight.count.fetch_add(1, Ordering::SeqCst);
        let joined = tokio::task::spawn_blocking(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            drop(permit);
            if in_flight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                in_flight.idle.notify_waiters();
            }
            match result {
                Ok(result) => result,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(RilletError::internal(format!(
                "a blocking task panicked: {}",
                panic_message(e.into_panic())
            ))),
            Err(_) => Err(RilletError::Cancelled),
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
