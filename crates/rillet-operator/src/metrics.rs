//! Per-operator counters: rows and bytes through, time spent waiting and why.
//!
//! Every task of a vertex updates the same [`OperatorMetrics`] with relaxed atomics; the
//! progress display and [`JobStats`] read snapshots of them.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Why a task is not doing work right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Its input channel is empty: upstream is slower.
    Input,
    /// Its output channel is full: downstream is slower (backpressure).
    OutputBackpressure,
    /// It has work but every worker of its pool is busy.
    FreeWorker,
    /// It has work but its pool's worker processes are still starting (loading models);
    /// not counted as work.
    ModelLoading,
    /// It has work but the calls already running hold the job's memory budget for data
    /// inside calls (decoded images, audio, frames); it runs when one of them finishes.
    Memory,
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaitReason::Input => "input",
            WaitReason::OutputBackpressure => "output backpressure",
            WaitReason::FreeWorker => "a free worker",
            WaitReason::ModelLoading => "model loading",
            WaitReason::Memory => "the memory budget",
        })
    }
}

/// Wait for `permits` of `semaphore`, recording the wait on `metrics` as `reason` (a wait
/// shows in progress while it lasts and in the totals after). `None` if the semaphore was
/// closed (the other side went away).
pub async fn acquire_recording_wait(
    semaphore: &std::sync::Arc<tokio::sync::Semaphore>,
    permits: u32,
    metrics: Option<&OperatorMetrics>,
    reason: WaitReason,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let started = Instant::now();
    let _waiting = metrics.map(|m| m.begin_wait(reason));
    let permit = semaphore.clone().acquire_many_owned(permits).await.ok()?;
    if let Some(m) = metrics {
        m.record_wait(reason, started.elapsed());
    }
    Some(permit)
}

/// Live counters for one vertex (operator chain), shared by all its tasks.
#[derive(Debug)]
pub struct OperatorMetrics {
    name: String,
    started: Instant,
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    bytes_out: AtomicU64,
    batches_out: AtomicU64,
    spilled_bytes: AtomicU64,
    decoded_bytes: AtomicU64,
    wait_input_ns: AtomicU64,
    wait_output_ns: AtomicU64,
    wait_worker_ns: AtomicU64,
    wait_memory_ns: AtomicU64,
    wait_loading_ns: AtomicU64,
    retries: AtomicU64,
    workers_started: AtomicU64,
    dropped_late: AtomicU64,
    rows_recalled: AtomicU64,
    waiting_input: AtomicUsize,
    waiting_output: AtomicUsize,
    waiting_worker: AtomicUsize,
    waiting_memory: AtomicUsize,
    waiting_loading: AtomicUsize,
    tasks_running: AtomicUsize,
    finished_ns: AtomicU64,
    nulls: std::sync::Mutex<Vec<NullCount>>,
}

/// Rows a function turned into nulls by its `on_error="null"` policy, and the first reasons
/// why: a column that is all null by mistake must be noticed at the end of a run.
///
/// ```
/// let count = rillet_operator::NullCount {
///     operator: "image_resize".into(),
///     rows: 1,
///     nulled: 1,
///     reasons: vec!["a: no such file".into()],
/// };
/// assert_eq!(count.summary(), "image_resize: 1 of 1 rows null — a: no such file");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NullCount {
    /// The function that nulled them (`image_resize`, not the stage it runs in).
    pub operator: String,
    /// Rows it computed.
    pub rows: u64,
    /// Rows it turned into nulls.
    pub nulled: u64,
    /// The first reasons, in the order seen (at most [`NullCount::REASONS`]).
    pub reasons: Vec<String>,
}

impl NullCount {
    /// How many reasons are kept.
    pub const REASONS: usize = 3;

    /// `"image_resize: 1 of 1 rows null — a: no such file"`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{}: {} of {} rows null",
            self.operator, self.nulled, self.rows
        );
        if !self.reasons.is_empty() {
            line.push_str(" — ");
            line.push_str(&self.reasons.join("; "));
        }
        line
    }
}

/// Marks a task as waiting for a reason while it lives.
pub struct WaitGuard<'a> {
    counter: &'a AtomicUsize,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl OperatorMetrics {
    /// Fresh counters for an operator called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            started: Instant::now(),
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            decoded_bytes: AtomicU64::new(0),
            batches_out: AtomicU64::new(0),
            spilled_bytes: AtomicU64::new(0),
            wait_input_ns: AtomicU64::new(0),
            wait_output_ns: AtomicU64::new(0),
            wait_worker_ns: AtomicU64::new(0),
            wait_memory_ns: AtomicU64::new(0),
            wait_loading_ns: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            workers_started: AtomicU64::new(0),
            dropped_late: AtomicU64::new(0),
            rows_recalled: AtomicU64::new(0),
            waiting_input: AtomicUsize::new(0),
            waiting_output: AtomicUsize::new(0),
            waiting_worker: AtomicUsize::new(0),
            waiting_memory: AtomicUsize::new(0),
            waiting_loading: AtomicUsize::new(0),
            tasks_running: AtomicUsize::new(0),
            finished_ns: AtomicU64::new(0),
            nulls: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Count a call of function `operator` over `rows` rows, `nulled` of which it turned
    /// into nulls, the first for `reason`.
    pub fn add_nulls(&self, operator: &str, rows: u64, nulled: u64, reason: Option<&str>) {
        let mut nulls = self.nulls.lock().unwrap_or_else(|e| e.into_inner());
        let index = match nulls.iter().position(|n| n.operator == operator) {
            Some(index) => index,
            None => {
                nulls.push(NullCount {
                    operator: operator.to_string(),
                    ..NullCount::default()
                });
                nulls.len() - 1
            }
        };
        let count = &mut nulls[index];
        count.rows += rows;
        count.nulled += nulled;
        if let Some(reason) = reason
            && count.reasons.len() < NullCount::REASONS
            && !count.reasons.iter().any(|r| r == reason)
        {
            count.reasons.push(reason.to_string());
        }
    }

    /// The operator's display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Count rows taken in.
    pub fn add_input(&self, rows: usize) {
        self.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Count a batch produced.
    pub fn add_output(&self, rows: usize, bytes: usize) {
        self.rows_out.fetch_add(rows as u64, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.batches_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Count `bytes` of pixels or samples that a media decoder of this operator produced.
    pub fn add_decoded(&self, bytes: u64) {
        self.decoded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Count a batch of `bytes` spilled to the job's store instead of waiting.
    pub fn add_spilled(&self, bytes: usize) {
        self.spilled_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count a call sent again after its worker process died.
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a worker process started (replacements included).
    pub fn add_worker_started(&self) {
        self.workers_started.fetch_add(1, Ordering::Relaxed);
    }

    /// Count rows dropped because their event-time windows had already fired.
    pub fn add_dropped_late(&self, rows: u64) {
        self.dropped_late.fetch_add(rows, Ordering::Relaxed);
    }

    /// Count rows called after a restore from the function's own checkpoint state: their
    /// calls were in flight (or queued) at the restored checkpoint, so a model may see them
    /// twice; the output has them once.
    pub fn add_rows_recalled(&self, rows: u64) {
        self.rows_recalled.fetch_add(rows, Ordering::Relaxed);
    }

    fn waiting_counter(&self, reason: WaitReason) -> &AtomicUsize {
        match reason {
            WaitReason::Input => &self.waiting_input,
            WaitReason::OutputBackpressure => &self.waiting_output,
            WaitReason::FreeWorker => &self.waiting_worker,
            WaitReason::Memory => &self.waiting_memory,
            WaitReason::ModelLoading => &self.waiting_loading,
        }
    }

    /// Mark one task as waiting for `reason` until the guard is dropped.
    pub fn begin_wait(&self, reason: WaitReason) -> WaitGuard<'_> {
        let counter = self.waiting_counter(reason);
        counter.fetch_add(1, Ordering::Relaxed);
        WaitGuard { counter }
    }

    /// Add a finished wait to the totals.
    pub fn record_wait(&self, reason: WaitReason, waited: Duration) {
        let total = match reason {
            WaitReason::Input => &self.wait_input_ns,
            WaitReason::OutputBackpressure => &self.wait_output_ns,
            WaitReason::FreeWorker => &self.wait_worker_ns,
            WaitReason::Memory => &self.wait_memory_ns,
            WaitReason::ModelLoading => &self.wait_loading_ns,
        };
        total.fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A task of this operator started.
    pub fn task_started(&self) {
        self.tasks_running.fetch_add(1, Ordering::Relaxed);
    }

    /// A task of this operator finished; the last one stamps the operator's end time.
    pub fn task_finished(&self) {
        if self.tasks_running.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.finished_ns
                .store(self.started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// A consistent-enough copy of the counters for display and reporting.
    pub fn snapshot(&self) -> OperatorStats {
        let finished = self.finished_ns.load(Ordering::Relaxed);
        let elapsed = if finished > 0 {
            Duration::from_nanos(finished)
        } else {
            self.started.elapsed()
        };
        let ms = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e6;
        let rows_out = self.rows_out.load(Ordering::Relaxed);
        let waiting_on = [
            (WaitReason::OutputBackpressure, &self.waiting_output),
            (WaitReason::Memory, &self.waiting_memory),
            (WaitReason::ModelLoading, &self.waiting_loading),
            (WaitReason::FreeWorker, &self.waiting_worker),
            (WaitReason::Input, &self.waiting_input),
        ]
        .into_iter()
        .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
        .map(|(reason, _)| reason)
        .collect();
        OperatorStats {
            name: self.name.clone(),
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out,
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            batches_out: self.batches_out.load(Ordering::Relaxed),
            spilled_bytes: self.spilled_bytes.load(Ordering::Relaxed),
            decoded_bytes: self.decoded_bytes.load(Ordering::Relaxed),
            elapsed_s: elapsed.as_secs_f64(),
            rows_per_s: rows_out as f64 / elapsed.as_secs_f64().max(1e-9),
            wait_input_ms: ms(&self.wait_input_ns),
            wait_output_ms: ms(&self.wait_output_ns),
            wait_worker_ms: ms(&self.wait_worker_ns),
            wait_memory_ms: ms(&self.wait_memory_ns),
            wait_loading_ms: ms(&self.wait_loading_ns),
            retries: self.retries.load(Ordering::Relaxed),
            workers_started: self.workers_started.load(Ordering::Relaxed),
            dropped_late: self.dropped_late.load(Ordering::Relaxed),
            rows_recalled: self.rows_recalled.load(Ordering::Relaxed),
            tasks_running: self.tasks_running.load(Ordering::Relaxed),
            waiting_on,
            nulls: self
                .nulls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|n| n.nulled > 0)
                .cloned()
                .collect(),
        }
    }
}

/// A snapshot of one operator's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorStats {
    /// Operator (vertex) name.
    pub name: String,
    /// Rows received from upstream.
    pub rows_in: u64,
    /// Rows produced.
    pub rows_out: u64,
    /// Bytes produced (Arrow memory size of the output batches).
    pub bytes_out: u64,
    /// Batches produced.
    pub batches_out: u64,
    /// Bytes of output batches spilled to the job's store instead of waiting.
    pub spilled_bytes: u64,
    /// Bytes of pixels and samples its media decoders produced: what decoding only what
    /// the pipeline needs (a JPEG at 1/4 scale, audio facts from headers) saves shows here.
    pub decoded_bytes: u64,
    /// Seconds from the job's start to this operator's end (or now, while running).
    pub elapsed_s: f64,
    /// Output rows per second over `elapsed_s`.
    pub rows_per_s: f64,
    /// Total milliseconds tasks waited for input.
    pub wait_input_ms: f64,
    /// Total milliseconds tasks waited on a full output channel.
    pub wait_output_ms: f64,
    /// Total milliseconds tasks waited for a free pool worker.
    pub wait_worker_ms: f64,
    /// Total milliseconds tasks waited for the memory budget of calls.
    pub wait_memory_ms: f64,
    /// Total milliseconds calls waited for worker processes to start (load models).
    pub wait_loading_ms: f64,
    /// Calls sent again after their worker process died.
    pub retries: u64,
    /// Worker processes started (replacements included).
    pub workers_started: u64,
    /// Rows dropped because they came after their event-time windows had fired.
    pub dropped_late: u64,
    /// Rows called after a restore from the function's checkpoint state, their calls
    /// having been in flight or queued at the restored checkpoint: side effects a model
    /// may see twice.
    pub rows_recalled: u64,
    /// Tasks still running.
    pub tasks_running: usize,
    /// What running tasks are waiting on right now, most telling first.
    pub waiting_on: Vec<WaitReason>,
    /// The functions of this operator that turned rows into nulls, with why.
    pub nulls: Vec<NullCount>,
}

impl OperatorStats {
    /// One line for the progress display and logs.
    pub fn summary(&self) -> String {
        let waiting = match self.waiting_on.first() {
            Some(reason) if self.tasks_running > 0 => format!(" · waiting on {reason}"),
            _ if self.tasks_running == 0 => " · done".to_string(),
            _ => " · busy".to_string(),
        };
        let nulls: String = self
            .nulls
            .iter()
            .map(|n| format!(" · {}", n.summary()))
            .collect();
        format!(
            "{}: {} rows, {}, {:.0} rows/s{nulls}{}",
            self.name,
            self.rows_out,
            human_bytes(self.bytes_out),
            self.rows_per_s,
            waiting
        )
    }
}

/// Figures for a whole job, available after it ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStats {
    /// One entry per vertex, in graph order.
    pub operators: Vec<OperatorStats>,
    /// Wall-clock seconds of the job.
    pub elapsed_s: f64,
    /// Bytes read from storage by scans (from DataFusion's `bytes_scanned` metric).
    pub bytes_scanned: u64,
    /// Rows delivered to the sink.
    pub rows_written: u64,
    /// Files written by a file sink.
    pub files_written: Vec<String>,
}

impl JobStats {
    /// One line per function that turned rows into nulls, e.g. `"image_resize: 1 of 1 rows
    /// null — a: no such file"`; empty when none did.
    pub fn null_summaries(&self) -> Vec<String> {
        self.operators
            .iter()
            .flat_map(|op| op.nulls.iter().map(NullCount::summary))
            .collect()
    }
}

/// `1536` → `"1.5 KiB"`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_reason_is_visible_while_waiting() {
        let metrics = OperatorMetrics::new("op");
        metrics.task_started();
        {
            let _guard = metrics.begin_wait(WaitReason::FreeWorker);
            assert_eq!(metrics.snapshot().waiting_on, vec![WaitReason::FreeWorker]);
            assert!(
                metrics
                    .snapshot()
                    .summary()
                    .contains("waiting on a free worker")
            );
        }
        assert!(metrics.snapshot().waiting_on.is_empty());
        metrics.task_finished();
        assert!(metrics.snapshot().summary().ends_with("done"));
    }

    #[test]
    fn nulls_are_counted_per_function_with_their_first_reasons() {
        let metrics = OperatorMetrics::new("udf(image_decode+image_resize)");
        metrics.add_nulls("image_resize", 4, 0, None);
        assert!(metrics.snapshot().nulls.is_empty());
        for reason in ["a: no such file", "a: no such file", "b: bad", "c", "d"] {
            metrics.add_nulls("image_resize", 1, 1, Some(reason));
        }
        let snapshot = metrics.snapshot();
        assert_eq!(
            snapshot.nulls[0].summary(),
            "image_resize: 5 of 9 rows null — a: no such file; b: bad; c"
        );
        assert!(
            snapshot
                .summary()
                .contains("· image_resize: 5 of 9 rows null")
        );
        let job = JobStats {
            operators: vec![snapshot],
            ..JobStats::default()
        };
        assert_eq!(job.null_summaries().len(), 1);
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
