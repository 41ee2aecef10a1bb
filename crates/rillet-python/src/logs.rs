//! The engine's `tracing` events as records of Python's `logging`, under the `rillet`
//! logger: `rillet_runtime::checkpointing` logs to `rillet.runtime.checkpointing`, at the
//! matching level, with the event's fields (`checkpoint=7`) in the record's `rillet`
//! attribute and after its message.
//!
//! An event is never delivered on the thread that emits it: that thread may hold an engine
//! lock that a thread holding the GIL waits for. Events go through a bounded queue to one
//! delivery thread, which alone takes the GIL; when the queue is full an event is dropped
//! and counted. [`flush_logs`] waits (without the GIL) until what was queued before it is
//! delivered: `collect()` and `Job.wait()` call it, so their records are in before they
//! return. At exit ([`stop_logs`], from `atexit`) delivery stops: a thread must not take
//! the GIL of an interpreter shutting down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Events waiting for the delivery thread at most.
const QUEUE: usize = 4096;

/// One event, ready for `logging`.
struct Record {
    logger: String,
    level: u8,
    message: String,
    fields: Vec<(&'static str, Value)>,
}

/// A field's value, as the event recorded it: numbers stay numbers in `record.rillet`.
enum Value {
    Int(i128),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Text(v) => f.write_str(v),
        }
    }
}

/// How far delivery has got.
#[derive(Default)]
struct Progress {
    queued: AtomicU64,
    dropped: AtomicU64,
    delivered: Mutex<u64>,
    changed: Condvar,
    /// Set at exit: records are dropped from then on.
    stopped: AtomicBool,
    /// Held while a record is handed to Python, so that [`stop_logs`] can wait it out.
    handing: Mutex<()>,
}

fn progress() -> &'static Progress {
    static PROGRESS: OnceLock<Progress> = OnceLock::new();
    PROGRESS.get_or_init(Progress::default)
}

/// The layer that queues every kept event for Python.
struct ToPython {
    queue: SyncSender<Record>,
}

impl<S: Subscriber> Layer<S> for ToPython {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let record = Record {
            logger: logger_name(metadata.target()),
            level: python_level(*metadata.level()),
            message: fields.message,
            fields: fields.others,
        };
        let progress = progress();
        match self.queue.try_send(record) {
            Ok(()) => {
                progress.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                progress.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An event's message and its other fields.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.keep(field, Value::Int(value.into()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.keep(field, Value::Int(value.into()));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.keep(field, Value::Float(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.keep(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, Value::Text(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.keep(field, Value::Text(format!("{value:?}")));
    }
}

impl Fields {
    fn keep(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others.push((field.name(), value));
        }
    }
}

/// `rillet_runtime::checkpointing` → `rillet.runtime.checkpointing`; another crate's
/// target `hyper::client` → `rillet.deps.hyper.client`.
fn logger_name(target: &str) -> String {
    let dotted = target.replace("::", ".");
    match dotted.strip_prefix("rillet_") {
        Some(rest) => format!("rillet.{rest}"),
        None => format!("rillet.deps.{dotted}"),
    }
}

/// `logging`'s number for `level`.
fn python_level(level: Level) -> u8 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// Hand each queued record to `logging`, in order, for the life of the process.
fn deliver(queue: Receiver<Record>) {
    for record in queue {
        let progress = progress();
        {
            let _handing = progress.handing.lock().unwrap_or_else(|e| e.into_inner());
            if !progress.stopped.load(Ordering::Acquire) {
                // Not at all once the interpreter is shutting down.
                Python::try_attach(|py| {
                    if let Err(error) = log(py, &record) {
                        // A broken handler must not stop delivery; Python prints why.
                        error.print(py);
                    }
                });
            }
        }
        *progress.delivered.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        progress.changed.notify_all();
    }
}

fn log(py: Python<'_>, record: &Record) -> PyResult<()> {
    let logger = py
        .import("logging")?
        .call_method1("getLogger", (record.logger.as_str(),))?;
    if !logger
        .call_method1("isEnabledFor", (record.level,))?
        .is_truthy()?
    {
        return Ok(());
    }
    let fields = PyDict::new(py);
    let mut message = record.message.clone();
    for (name, value) in &record.fields {
        match value {
            Value::Int(v) => fields.set_item(*name, *v)?,
            Value::Float(v) => fields.set_item(*name, *v)?,
            Value::Bool(v) => fields.set_item(*name, *v)?,
            Value::Text(v) => fields.set_item(*name, v)?,
        }
        message.push_str(&format!(" {name}={value}"));
    }
    let extra = PyDict::new(py);
    extra.set_item("rillet", fields)?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("extra", extra)?;
    logger.call_method("log", (record.level, message), Some(&kwargs))?;
    Ok(())
}

/// Send the engine's events to `logging` from now on (once per process; a later call, or
/// a subscriber installed before, leaves things as they are).
pub(crate) fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let (sender, receiver) = sync_channel(QUEUE);
        let subscriber = tracing_subscriber::registry()
            .with(rillet_cli::logs::filter())
            .with(ToPython { queue: sender });
        if tracing::subscriber::set_global_default(subscriber).is_ok() {
            let _ = std::thread::Builder::new()
                .name("rillet-logs".into())
                .spawn(move || deliver(receiver));
        }
    });
}

/// Wait up to `timeout_s` for the events emitted so far to reach `logging`; how many
/// were dropped because the queue was full, since the process started.
#[pyfunction]
#[pyo3(signature = (timeout_s = 5.0))]
pub(crate) fn flush_logs(py: Python<'_>, timeout_s: f64) -> u64 {
    let progress = progress();
    let target = progress.queued.load(Ordering::Relaxed);
    let timeout = Duration::try_from_secs_f64(timeout_s.max(0.0)).unwrap_or(Duration::MAX);
    py.detach(|| {
        let deadline = Instant::now().checked_add(timeout);
        let mut delivered = progress.delivered.lock().unwrap_or_else(|e| e.into_inner());
        while *delivered < target {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                break;
            }
            delivered = progress
                .changed
                .wait_timeout(delivered, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    });
    progress.dropped.load(Ordering::Relaxed)
}

/// Stop handing records to `logging` (at exit, before the interpreter shuts down), once the
/// one being handed over, if any, is in.
#[pyfunction]
pub(crate) fn stop_logs(py: Python<'_>) {
    let progress = progress();
    progress.stopped.store(true, Ordering::Release);
    py.detach(|| drop(progress.handing.lock()));
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    install();
    m.add_function(wrap_pyfunction!(flush_logs, m)?)?;
    m.add_function(wrap_pyfunction!(stop_logs, m)?)?;
    Ok(())
}
