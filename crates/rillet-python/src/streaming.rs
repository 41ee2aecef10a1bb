//! Streaming jobs from Python: `DataFrame.start` returns a [`PyStreamingJob`] with status,
//! metrics, wait, cancel and stop (with a savepoint); `check_sequence` is the sequence
//! oracle for tests and kill sweeps.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::logical_expr::Expr;
use parking_lot::Mutex;
use pyo3::exceptions::{PyAssertionError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::PyTable;
use rillet_checkpoint::{Kind, SnapshotPath};
use rillet_common::RilletError;
use rillet_connectors::files::FileFormat;
use rillet_plan::Windows;
use rillet_plan::streaming::{RunningFunction, TimeSpan};
use rillet_runtime::{CheckpointStats, JobHandle, JobStats, global_runtime};

use crate::dataframe::{PyDataFrame, stats_to_dict};
use crate::errors::IntoPy;

/// What a running aggregate expression computes: its function, input column and name.
fn running_spec(expr: &Expr) -> PyResult<(RunningFunction, Option<String>, String)> {
    let (inner, name) = match expr {
        Expr::Alias(alias) => (alias.expr.as_ref(), alias.name.clone()),
        other => (other, other.schema_name().to_string()),
    };
    let wrong = || {
        PyValueError::new_err(format!(
            "a streaming aggregate is count, sum, min or max of a column, or count(); got {expr}"
        ))
    };
    let Expr::AggregateFunction(aggregate) = inner else {
        return Err(wrong());
    };
    let function = match aggregate.func.name().to_ascii_lowercase().as_str() {
        "count" => RunningFunction::Count,
        "sum" => RunningFunction::Sum,
        "min" => RunningFunction::Min,
        "max" => RunningFunction::Max,
        _ => return Err(wrong()),
    };
    let input = match aggregate.params.args.as_slice() {
        [] | [Expr::Literal(..)] if function == RunningFunction::Count => None,
        [Expr::Column(column)] => Some(column.name.clone()),
        _ => return Err(wrong()),
    };
    Ok((function, input, name))
}

/// A span of event time from Python: `(n, false)` is `n` in the column's units, `(n, true)`
/// is a duration of `n` microseconds (a `datetime.timedelta`).
fn time_span((value, is_duration): (i64, bool)) -> PyResult<TimeSpan> {
    if value < 0 {
        return Err(PyValueError::new_err(format!(
            "event-time spans must not be negative, got {value}"
        )));
    }
    Ok(if is_duration {
        TimeSpan::Duration(Duration::from_micros(value as u64))
    } else {
        TimeSpan::Units(value)
    })
}

impl PyDataFrame {
    pub(crate) fn with_watermark_impl(
        &self,
        column: &str,
        delay: (i64, bool),
        idle_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let idle = match idle_timeout {
            Some(s) if s.is_finite() && s > 0.0 => Some(std::time::Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "idle_timeout must be a positive number of seconds, not {s}"
                )));
            }
            None => None,
        };
        self.df
            .with_watermark(column, time_span(delay)?, idle)
            .py_err()
            .map(PyDataFrame::from)
    }

    pub(crate) fn window_aggregate_impl(
        &self,
        keys: Vec<String>,
        column: String,
        size: (i64, bool),
        slide: Option<(i64, bool)>,
        lateness: (i64, bool),
        aggs: Vec<Expr>,
    ) -> PyResult<Self> {
        let windows = Windows {
            column,
            size: time_span(size)?,
            slide: slide.map(time_span).transpose()?,
            lateness: time_span(lateness)?,
        };
        let specs = aggs
            .iter()
            .map(running_spec)
            .collect::<PyResult<Vec<_>>>()?;
        self.df
            .window_aggregate(&keys, &windows, specs)
            .py_err()
            .map(PyDataFrame::from)
    }

    /// Keyed running aggregates of `aggs`: each `count`, `sum`, `min` or `max` of a column
    /// (or `count()` of rows), named by its alias.
    pub(crate) fn running_aggregate_impl(
        &self,
        keys: Vec<String>,
        aggs: Vec<Expr>,
    ) -> PyResult<Self> {
        let specs = aggs
            .iter()
            .map(running_spec)
            .collect::<PyResult<Vec<_>>>()?;
        self.df
            .running_aggregate(&keys, specs)
            .py_err()
            .map(PyDataFrame::from)
    }
}

/// Where and how often a job checkpoints, and what it resumes from.
pub(crate) struct Checkpoints {
    pub(crate) job_id: String,
    location: Option<String>,
    interval: Duration,
    resume: Option<(Kind, u64)>,
}

impl Checkpoints {
    /// From `DataFrame.start`'s arguments; `resume_from` (a snapshot directory) names the
    /// location and job itself.
    pub(crate) fn parse(
        job_id: String,
        checkpoint_dir: Option<String>,
        interval: f64,
        resume_from: Option<String>,
    ) -> PyResult<Self> {
        if !(interval > 0.0 && interval.is_finite()) {
            return Err(PyValueError::new_err(
                "checkpoint_interval must be a positive number of seconds",
            ));
        }
        let interval = Duration::from_secs_f64(interval);
        Ok(match resume_from {
            Some(path) => {
                let snapshot =
                    SnapshotPath::parse(&path).map_err(|e| PyValueError::new_err(e.to_string()))?;
                Self {
                    job_id: snapshot.job,
                    location: Some(snapshot.location),
                    interval,
                    resume: Some((snapshot.kind, snapshot.id)),
                }
            }
            None => Self {
                job_id,
                location: checkpoint_dir,
                interval,
                resume: None,
            },
        })
    }
}

/// Where a streaming job's rows go.
pub(crate) enum Target {
    /// Files of `format` in a directory.
    Files(String, FileFormat),
    /// A sink built by `rillet_connectors::registry`.
    Sink(std::sync::Arc<dyn rillet_runtime::Sink>),
}

/// Start `df` as a streaming job into `target`.
pub(crate) fn start(
    py: Python<'_>,
    df: &rillet_plan::DataFrame,
    target: Target,
    checkpoints: Checkpoints,
) -> PyResult<PyStreamingJob> {
    let Checkpoints {
        job_id,
        location,
        interval,
        resume,
    } = checkpoints;
    let every = location.as_deref().map(|l| (l, interval));
    let job = py
        .detach(|| match target {
            Target::Files(directory, format) => {
                df.start_files(&directory, format, &job_id, every, resume)
            }
            Target::Sink(sink) => {
                let name = sink.describe();
                df.start_sink(sink, &name, &job_id, every, resume)
            }
        })
        .py_err()?;
    Ok(PyStreamingJob {
        job_id,
        location,
        state: Mutex::new(JobState {
            job: Some(job),
            outcome: None,
            stopped: false,
            checkpoints: None,
        }),
    })
}

struct JobState {
    /// Taken while a `wait` runs without the lock.
    job: Option<JobHandle>,
    /// The job's figures, or its error and whether it was a cancel.
    outcome: Option<Result<JobStats, (PyErr, bool)>>,
    stopped: bool,
    /// The checkpoint figures as the job ended.
    checkpoints: Option<CheckpointStats>,
}

/// A running streaming job.
#[pyclass(name = "StreamingJob", module = "rillet._rillet")]
pub struct PyStreamingJob {
    #[pyo3(get)]
    job_id: String,
    location: Option<String>,
    state: Mutex<JobState>,
}

#[pymethods]
impl PyStreamingJob {
    /// "running", "finished", "stopped", "cancelled" or "failed".
    fn status(&self) -> &'static str {
        let state = self.state.lock();
        match &state.outcome {
            None => "running",
            // Stopped from here, or by a stop request from elsewhere (`rillet stop`): both
            // end with a savepoint, and the job's record says "stopped" too.
            Some(Ok(_))
                if state.stopped
                    || state
                        .checkpoints
                        .as_ref()
                        .is_some_and(|c| c.savepoint.is_some()) =>
            {
                "stopped"
            }
            Some(Ok(_)) => "finished",
            Some(Err((_, true))) => "cancelled",
            Some(Err((_, false))) => "failed",
        }
    }

    /// Live figures: the operators' counters and the checkpoints'.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let state = self.state.lock();
        let (stats, checkpoints) = match (&state.job, &state.outcome) {
            (_, Some(Ok(stats))) => (stats.clone(), state.checkpoints.clone()),
            (Some(job), _) => (job.stats(), job.checkpoint_stats()),
            (None, _) => (JobStats::default(), state.checkpoints.clone()),
        };
        let dict = stats_to_dict(py, &stats)?;
        if let Some(c) = checkpoints {
            let d = PyDict::new(py);
            d.set_item("restored_from", c.restored_from)?;
            d.set_item("completed", c.completed)?;
            d.set_item("aborted", c.aborted)?;
            d.set_item("latest_completed", c.latest_completed)?;
            d.set_item("durations_ms", c.durations_ms)?;
            d.set_item("last_failure", c.last_failure)?;
            d.set_item("savepoint", c.savepoint)?;
            dict.set_item("checkpoints", d)?;
        }
        Ok(dict)
    }

    /// Wait for the job to end (at most `timeout` seconds); returns its figures, raises
    /// its error, or TimeoutError.
    #[pyo3(signature = (timeout=None))]
    fn wait<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyDict>> {
        let taken = self.state.lock().job.take();
        if let Some(mut job) = taken {
            let deadline = timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t));
            // Wait in short steps without the GIL, so that Ctrl-C reaches Python: it cancels
            // the job (a restart with the same id resumes from its last checkpoint).
            let finished = loop {
                let step = deadline.map_or(Duration::from_millis(100), |d| {
                    d.saturating_duration_since(std::time::Instant::now())
                        .min(Duration::from_millis(100))
                });
                let waited = py.detach(|| {
                    global_runtime()
                        .block_on(async { tokio::time::timeout(step, job.wait()).await.ok() })
                });
                if waited.is_some() {
                    break waited;
                }
                if let Err(interrupt) = py.check_signals() {
                    job.cancel();
                    self.state.lock().job = Some(job);
                    return Err(interrupt);
                }
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    break None;
                }
            };
            let mut state = self.state.lock();
            match finished {
                Some(outcome) => {
                    state.checkpoints = job.checkpoint_stats();
                    state.outcome = Some(outcome.map_err(|e| {
                        let cancelled = matches!(e, RilletError::Cancelled);
                        (crate::errors::to_py(e), cancelled)
                    }));
                }
                None => {
                    state.job = Some(job);
                    return Err(PyTimeoutError::new_err("the job is still running"));
                }
            }
        }
        let state = self.state.lock();
        match &state.outcome {
            Some(Ok(stats)) => stats_to_dict(py, stats),
            Some(Err((e, _))) => Err(e.clone_ref(py)),
            None => Err(PyValueError::new_err(
                "another thread is waiting for this job",
            )),
        }
    }

    /// Cancel: the tasks stop at once; nothing after the last completed checkpoint is
    /// committed (a restart with the same job id continues from it).
    fn cancel(&self) {
        if let Some(job) = &self.state.lock().job {
            job.cancel();
        }
    }

    /// Stop the job. With `savepoint=True` (the default) the sources stop, a savepoint is
    /// taken and committed, and its directory is returned (resume with
    /// `df.start(..., resume_from=path)`); otherwise the job is cancelled.
    #[pyo3(signature = (savepoint=true))]
    fn stop(&self, py: Python<'_>, savepoint: bool) -> PyResult<Option<String>> {
        if !savepoint {
            self.cancel();
            let _ = self.wait(py, None);
            return Ok(None);
        }
        let stopping = {
            let mut state = self.state.lock();
            state.stopped = true;
            let job = state
                .job
                .as_ref()
                .ok_or_else(|| PyValueError::new_err("the job has ended or is being waited for"))?;
            // The request goes out now; the answer comes once the savepoint is written.
            job.stop_request()
        };
        let id = py.detach(|| global_runtime().block_on(stopping)).py_err()?;
        let _ = self.wait(py, None)?;
        let savepoint = SnapshotPath {
            location: self.location.clone().unwrap_or_default(),
            job: self.job_id.clone(),
            kind: Kind::Savepoint,
            id,
        };
        Ok(Some(savepoint.to_string()))
    }
}

/// The sequence oracle: `table` (a pyarrow table or batches with source, partition, seq,
/// value) must hold each seq below `expected[(source, partition)]` exactly once with the
/// right value. Returns the row count; raises AssertionError naming what is wrong.
#[pyfunction]
fn check_sequence(
    py: Python<'_>,
    table: PyTable,
    expected: BTreeMap<(String, u32), u64>,
) -> PyResult<u64> {
    let (batches, _schema): (Vec<RecordBatch>, _) = table.into_inner();
    py.detach(|| rillet_connectors::sequence::check(&batches, &expected))
        .map_err(PyAssertionError::new_err)
}

/// Run the `rillet` command line with `argv` (its program name first) and return its exit
/// status: `rillet list`, `stop` and `resume` steer streaming jobs from any process.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| rillet_cli::run(argv))
}

/// The streaming jobs checkpointing into `location`, as JSON (see `rillet list --json`).
#[pyfunction]
fn list_jobs(py: Python<'_>, location: String) -> PyResult<String> {
    py.detach(|| rillet_cli::jobs_json(&location))
        .map_err(PyValueError::new_err)
}

/// Give failpoint `name` the `actions` (`fail` crate syntax: `return`, `10%return`,
/// `3*off->1*return->off`, `sleep(100)`), or turn it off with `None`: fault injection for
/// the tests (`rillet.testing.failpoint`).
#[pyfunction]
#[pyo3(signature = (name, actions=None))]
fn set_failpoint(name: &str, actions: Option<&str>) -> PyResult<()> {
    match actions {
        Some(actions) => rillet_common::failpoints::configure(name, actions).py_err(),
        None => {
            rillet_common::failpoints::remove(name);
            Ok(())
        }
    }
}

/// The configured failpoints: name to actions.
#[pyfunction]
fn failpoints() -> BTreeMap<String, String> {
    rillet_common::failpoints::list().into_iter().collect()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A test's child processes (the kill sweeps') inherit their failpoints this way.
    rillet_common::failpoints::configure_from_env().py_err()?;
    m.add_function(wrap_pyfunction!(set_failpoint, m)?)?;
    m.add_function(wrap_pyfunction!(failpoints, m)?)?;
    m.add_class::<PyStreamingJob>()?;
    m.add_function(wrap_pyfunction!(check_sequence, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(list_jobs, m)?)?;
    Ok(())
}
