//! The driver of a deployed job: waits for its tasks, ends what runs beside them, publishes
//! the sinks' output when every task succeeded, and reports the job's figures or error.

use std::sync::Arc;
use std::time::Instant;

use datafusion::physical_plan::ExecutionPlan;
use parking_lot::Mutex;
use rillet_common::{Result, RilletError};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::blocking::{BlockingPool, panic_message};
use crate::checkpointing::{CheckpointStats, JobControl};
use crate::function::BatchFunction;
use crate::metrics::{JobStats, OperatorMetrics};
use crate::progress::ProgressDisplay;
use crate::sink::Sink;

/// The job's tasks: each returns the files it wrote.
pub(super) type Tasks = JoinSet<Result<Vec<String>>>;

/// A checkpointed job's record and the task polling its stop requests.
pub(super) struct Control {
    pub record: Arc<JobControl>,
    pub poller: JoinHandle<()>,
    /// Tells the poller to stop.
    pub shutdown: watch::Sender<bool>,
    pub stats: Arc<Mutex<CheckpointStats>>,
}

/// What the driver needs to end a job.
pub(super) struct Driver {
    pub tasks: Tasks,
    pub cancel: watch::Receiver<bool>,
    pub control: Option<Control>,
    /// Held by a checkpoint's commit under way.
    pub commit_gate: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The functions whose worker pools were opened.
    pub opened: Vec<Arc<dyn BatchFunction>>,
    pub pools: Vec<BlockingPool>,
    pub sinks: Vec<Arc<dyn Sink>>,
    pub fragments: Vec<Arc<dyn ExecutionPlan>>,
    pub sink_vertices: Vec<usize>,
    pub metrics: Arc<Vec<Arc<OperatorMetrics>>>,
    pub progress: Option<ProgressDisplay>,
    pub started: Instant,
    pub done: oneshot::Sender<Result<JobStats>>,
}

impl Driver {
    /// Run the job to its end and send its outcome on `done`.
    pub async fn run(self) {
        let (error, files) = drive(self.tasks, self.cancel).await;
        // Cancelled because a later run claimed the job: say so.
        let error = self
            .control
            .as_ref()
            .and_then(|c| c.record.lost_claim())
            .or(error);
        // A commit the cancel found under way finishes before the job ends.
        if let Some(gate) = &self.commit_gate {
            let _ = gate.lock().await;
        }
        if let Some(control) = self.control {
            // The poller stops, finishing a record write under way, before the last one.
            let _ = control.shutdown.send(true);
            let _ = control.poller.await;
            let stats = control.stats.lock().clone();
            control.record.finish(error.as_ref(), &stats).await;
        }
        // Stop worker processes; on failure this also ends calls still running in them.
        let opened = self.opened;
        let closing = tokio::task::spawn_blocking(move || opened.iter().for_each(|f| f.close()));
        let _ = closing.await;
        // Aborted tasks may have left a blocking call running: the job ends with it.
        for pool in &self.pools {
            pool.idle().await;
        }
        let error = match error {
            Some(error) => Some(error),
            None => publish(&self.sinks).await,
        };
        for sink in &self.sinks {
            sink.finish();
        }
        if let Some(progress) = self.progress {
            progress.finish();
        }
        let stats = JobStats {
            operators: self.metrics.iter().map(|m| m.snapshot()).collect(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            bytes_scanned: self.fragments.iter().map(bytes_scanned).sum(),
            rows_written: self
                .sink_vertices
                .iter()
                .map(|&v| self.metrics[v].snapshot().rows_in)
                .sum(),
            files_written: files,
        };
        let _ = self.done.send(match error {
            Some(error) => Err(error),
            None => Ok(stats),
        });
    }
}

/// Every task succeeded: the sinks make the output visible, all at once. Returns the first
/// sink's error, after which the rest publish nothing.
async fn publish(sinks: &[Arc<dyn Sink>]) -> Option<RilletError> {
    for sink in sinks {
        let sink = sink.clone();
        let error = match tokio::task::spawn_blocking(move || sink.publish()).await {
            Ok(published) => published.err(),
            Err(e) => Some(RilletError::internal(format!(
                "a sink's publish panicked: {e}"
            ))),
        };
        if error.is_some() {
            return error;
        }
    }
    None
}

/// Bytes read from storage by the scans of a plan (DataFusion's `bytes_scanned` metric).
fn bytes_scanned(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = plan
        .metrics()
        .and_then(|m| m.sum_by_name("bytes_scanned"))
        .map_or(0, |v| v.as_usize() as u64);
    own + plan.children().into_iter().map(bytes_scanned).sum::<u64>()
}

/// Wait for every task; on the first error or a cancel, abort the rest. Returns the job's
/// error (a real failure wins over the cancellations it caused) and the files written.
async fn drive(
    mut tasks: Tasks,
    mut cancel: watch::Receiver<bool>,
) -> (Option<RilletError>, Vec<String>) {
    let mut error: Option<RilletError> = None;
    let mut files = Vec::new();
    let mut cancelled = false;
    let record = |error: &mut Option<RilletError>, new: RilletError| {
        let replace = match error {
            None => true,
            Some(old) => old.is_cancelled() && !new.is_cancelled(),
        };
        if replace {
            *error = Some(new);
        }
    };
    loop {
        tokio::select! {
            changed = cancel.changed(), if !cancelled => {
                // A cancel request, or the handle was dropped.
                if changed.is_err() || *cancel.borrow() {
                    cancelled = true;
                    record(&mut error, RilletError::Cancelled);
                    tasks.abort_all();
                }
            }
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(file))) => files.extend(file),
                Some(Ok(Err(e))) => {
                    record(&mut error, e);
                    tasks.abort_all();
                }
                Some(Err(e)) if e.is_panic() => {
                    let message = panic_message(e.into_panic());
                    record(&mut error, RilletError::internal(format!("a task panicked: {message}")));
                    tasks.abort_all();
                }
                Some(Err(_)) => {} // aborted after an error or cancel
            }
        }
    }
    files.sort();
    (error, files)
}
