//! A running job's handle: waiting for it, cancelling it, stopping it with a savepoint.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rillet_common::{Result, RilletError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpointing::{CheckpointStats, StopRequest};
use crate::metrics::{JobStats, OperatorMetrics};

/// A running job. Dropping the handle cancels the job.
pub struct JobHandle {
    pub(super) cancel: Arc<watch::Sender<bool>>,
    pub(super) done: Option<oneshot::Receiver<Result<JobStats>>>,
    pub(super) metrics: Arc<Vec<Arc<OperatorMetrics>>>,
    pub(super) started: Instant,
    /// Set for a checkpointed job.
    pub(super) checkpoints: Option<Arc<Mutex<CheckpointStats>>>,
    pub(super) stop: Option<mpsc::Sender<StopRequest>>,
    /// A checkpointed job's run, as its claim names it.
    pub(super) run: Option<String>,
}

/// Cancels a job; see [`JobHandle::canceller`].
#[derive(Clone)]
pub struct JobCanceller(Arc<watch::Sender<bool>>, Option<String>);

impl JobCanceller {
    /// Ask every task of the job to stop.
    pub fn cancel(&self) {
        ending(self.1.as_deref());
        let _ = self.0.send(true);
    }
}

/// A checkpointed run of this process is ending: a new run of its job waits for it.
fn ending(run: Option<&str>) {
    if let Some(run) = run {
        rillet_checkpoint::identity::mark_ending(run);
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        // Dropping the handle cancels the job.
        ending(self.run.as_deref());
    }
}

impl JobHandle {
    /// Ask every task to stop. Returns at once; [`wait`](Self::wait) then reports
    /// [`RilletError::Cancelled`].
    pub fn cancel(&self) {
        ending(self.run.as_deref());
        let _ = self.cancel.send(true);
    }

    /// A handle that can cancel the job from elsewhere (another thread, a signal handler)
    /// while this one is busy waiting.
    pub fn canceller(&self) -> JobCanceller {
        JobCanceller(self.cancel.clone(), self.run.clone())
    }

    /// Wait for the job to end and return its figures, or its first error.
    pub async fn wait(&mut self) -> Result<JobStats> {
        let done = self
            .done
            .as_mut()
            .ok_or_else(|| RilletError::internal("job already waited for"))?;
        let result = done
            .await
            .unwrap_or_else(|_| Err(RilletError::internal("job driver vanished")));
        self.done = None;
        result
    }

    /// Figures about the job's checkpoints; `None` for a job without checkpoints.
    pub fn checkpoint_stats(&self) -> Option<CheckpointStats> {
        self.checkpoints.as_ref().map(|s| s.lock().clone())
    }

    /// Stop a checkpointed job with a savepoint: the sources stop reading, a final
    /// snapshot is taken as a savepoint and the sinks commit it, then the job ends (its
    /// [`wait`](Self::wait) returns normally). Returns the savepoint's id once written.
    pub async fn stop_with_savepoint(&self) -> Result<u64> {
        self.stop_request().await
    }

    /// [`stop_with_savepoint`](Self::stop_with_savepoint) as a future that does not borrow
    /// the handle (to await it while another thread waits for the job).
    pub fn stop_request(&self) -> impl std::future::Future<Output = Result<u64>> + Send + 'static {
        ending(self.run.as_deref());
        let stop = self.stop.clone();
        let stats = self.checkpoints.clone();
        // Another stop (`rillet stop`, say) may have taken the savepoint first: this one
        // then answers with it.
        let taken = move || stats.as_ref().and_then(|s| s.lock().savepoint);
        async move {
            let stop = stop.ok_or_else(|| {
                RilletError::invalid_argument(
                    "only a job with checkpoints can stop with a savepoint",
                )
            })?;
            let (tx, rx) = oneshot::channel();
            if stop.send(tx).await.is_err() {
                return taken()
                    .ok_or_else(|| RilletError::invalid_argument("the job has already ended"));
            }
            match rx.await {
                Ok(answer) => answer,
                Err(_) => taken().ok_or_else(|| {
                    RilletError::invalid_argument("the job ended before its savepoint")
                }),
            }
        }
    }

    /// Live figures of the running (or finished) job.
    pub fn stats(&self) -> JobStats {
        JobStats {
            operators: self.metrics.iter().map(|m| m.snapshot()).collect(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            ..Default::default()
        }
    }
}
