//! ONNX Runtime, loaded at run time (`ort` with `load-dynamic`) from the library of the
//! `onnxruntime` wheel, and sessions shared by every call of a process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};
use parking_lot::{Condvar, Mutex, MutexGuard};
use rillet_common::{Result, RilletError};

use crate::model::{cores, models_dir};

/// The ONNX Runtime library: `$ORT_DYLIB_PATH`, else the one `python -m rillet.models
/// onnxruntime` extracted into the models directory.
pub fn library_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(path));
    }
    let path = models_dir().join("onnxruntime").join("libonnxruntime.so");
    if path.is_file() {
        Ok(path)
    } else {
        Err(RilletError::Model(format!(
            "ONNX Runtime is not installed: no {} and ORT_DYLIB_PATH is not set; fetch it \
             with `python -m rillet.models onnxruntime`",
            path.display()
        )))
    }
}

/// The process's ONNX Runtime environment (one per process), loading the library on first
/// use. A failed load is not remembered: fetching the library and trying again works.
pub fn environment() -> Result<&'static Environment> {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    static STARTING: Mutex<()> = Mutex::new(());
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let _one_at_a_time = STARTING.lock();
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let path = library_path()?;
    let environment = ort::init_from(&path)
        .map_err(|e| {
            RilletError::Model(format!(
                "cannot load ONNX Runtime from {}: {e}",
                path.display()
            ))
        })?
        .with_name("rillet")
        .build()
        .map_err(|e| RilletError::Model(format!("cannot start ONNX Runtime: {e}")))?;
    Ok(ENVIRONMENT.get_or_init(|| environment))
}

fn model_error(path: &Path, e: impl std::fmt::Display) -> RilletError {
    RilletError::Model(format!("{}: {e}", path.display()))
}

/// One input or output of a model: its name, element type and shape (`-1` where the
/// dimension is free).
#[derive(Debug, Clone)]
pub struct Port {
    /// Name in the graph.
    pub name: String,
    /// Element type; `None` for non-tensor values.
    pub element: Option<TensorElementType>,
    /// Dimensions, `-1` where free.
    pub shape: Vec<i64>,
}

fn port(name: &str, value_type: &ValueType) -> Port {
    match value_type {
        ValueType::Tensor { ty, shape, .. } => Port {
            name: name.to_string(),
            element: Some(*ty),
            shape: shape.iter().copied().collect(),
        },
        _ => Port {
            name: name.to_string(),
            element: None,
            shape: Vec::new(),
        },
    }
}

/// An input value for [`OnnxModel::run`].
#[derive(Debug)]
pub enum Input<'a> {
    /// f32 data of a shape.
    F32(Vec<i64>, Vec<f32>),
    /// i64 data of a shape.
    I64(Vec<i64>, Vec<i64>),
    /// Borrowed f32 data of a shape: a buffer the caller fills again for its next run, so
    /// that large inputs do not each come from fresh (kernel-zeroed) memory.
    F32View(Vec<i64>, &'a [f32]),
}

/// An f32 output of [`OnnxModel::run`]: shape and data.
#[derive(Debug, Clone)]
pub struct Output {
    /// Dimensions.
    pub shape: Vec<i64>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// How a model's runs use the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// One session whose every run spreads over all cores (ONNX Runtime's intra-op
    /// threads); calls on several threads take turns. What [`OnnxModel::load`] gives (the
    /// OCR models use it).
    Threads,
    /// One single-threaded session per core; calls on several threads run side by side, and
    /// callers split their work ([`OnnxModel::parallelism`] ways). Best for small runs,
    /// where handing each run's operators to other threads costs more than it gives: on
    /// two cores Silero VAD runs 2.2x and a 320 px detector 1.07x faster this way (see
    /// bench/RESULTS.md, "Model parallelism"), and a text encoder cut into 512-token
    /// passes 1.3x faster than on one session in 8,192-token passes ("Text encoder
    /// passes").
    Sessions,
}

/// A loaded ONNX model, shared by every call of a process: one session or one per core
/// (see [`Parallelism`]). A session runs one call at a time (`ort` runs take it mutably);
/// callers prepare their next inputs while another runs.
#[derive(Debug)]
pub struct OnnxModel {
    path: PathBuf,
    sessions: Vec<Mutex<Session>>,
    /// The sessions no run holds, by index; a run waits on `freed` while there are none,
    /// and takes whichever is given back first.
    idle: Mutex<Vec<usize>>,
    freed: Condvar,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
}

/// A session taken from a model's idle ones ([`OnnxModel::any_session`]), given back and
/// a waiting run woken when dropped.
struct Lease<'a> {
    model: &'a OnnxModel,
    index: usize,
    session: Option<MutexGuard<'a, Session>>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("held until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Unlock the session before listing it idle, so whoever takes it does not block.
        self.session = None;
        self.model.idle.lock().push(self.index);
        self.model.freed.notify_one();
    }
}

impl OnnxModel {
    /// Load `path` (an `.onnx` file) with full graph optimisation, one intra-op thread per
    /// core and no spinning between runs (spinning threads would take the cores the
    /// pipeline's other operators need): [`Parallelism::Threads`].
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, Parallelism::Threads)
    }

    /// Load `path` with the given use of the cores.
    pub fn load_with(path: &Path, parallelism: Parallelism) -> Result<Self> {
        let (count, threads) = match parallelism {
            Parallelism::Threads => (1, cores()),
            Parallelism::Sessions => (cores(), 1),
        };
        // Built side by side: each takes a core for a tenth of a second or more.
        let slots: Vec<usize> = (0..count).collect();
        let sessions = on_threads(count, &slots, |_| {
            Self::session(path, threads).map(Mutex::new)
        })?;
        let (inputs, outputs) = {
            let session = sessions[0].lock();
            let inputs = session
                .inputs()
                .iter()
                .map(|o| port(o.name(), o.dtype()))
                .collect();
            let outputs = session
                .outputs()
                .iter()
                .map(|o| port(o.name(), o.dtype()))
                .collect();
            (inputs, outputs)
        };
        Ok(Self {
            path: path.to_path_buf(),
            sessions,
            idle: Mutex::new((0..count).rev().collect()),
            freed: Condvar::new(),
            inputs,
            outputs,
        })
    }

    fn session(path: &Path, threads: usize) -> Result<Session> {
        let environment = environment()?;
        Session::builder(environment)
            .map_err(|e| model_error(path, e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| model_error(path, e))?
            .with_intra_threads(threads)
            .map_err(|e| model_error(path, e))?
            .with_intra_op_spinning(false)
            .map_err(|e| model_error(path, e))?
            .commit_from_file(path)
            .map_err(|e| model_error(path, e))
    }

    /// How many calls can run side by side: how many ways a caller should split its work.
    pub fn parallelism(&self) -> usize {
        self.sessions.len()
    }

    /// `run` on every item, on up to [`parallelism`](Self::parallelism) threads at once
    /// (the calling thread and scoped ones), each taking the next item no thread has taken:
    /// items of unequal work balance themselves, and when calls overlap, whichever session
    /// frees first takes the next item. The results come in the items' order; after an
    /// error no thread takes another item, and that error is returned.
    ///
    /// ```no_run
    /// # fn main() -> rillet_common::Result<()> {
    /// let model = rillet_ai::onnx::OnnxModel::load_with(
    ///     std::path::Path::new("model.onnx"),
    ///     rillet_ai::onnx::Parallelism::Sessions,
    /// )?;
    /// let doubled = model.run_each(&[1, 2, 3], |&n| Ok(n * 2))?;
    /// assert_eq!(doubled, vec![2, 4, 6]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_each<T: Sync, R: Send>(
        &self,
        items: &[T],
        run: impl Fn(&T) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        on_threads(self.parallelism(), items, run)
    }

    /// An idle session, waiting for the first one given back when every session is busy
    /// (waiting on one particular session would leave another idle that frees first).
    fn any_session(&self) -> Lease<'_> {
        let mut idle = self.idle.lock();
        let index = loop {
            match idle.pop() {
                Some(index) => break index,
                None => self.freed.wait(&mut idle),
            }
        };
        drop(idle);
        Lease {
            model: self,
            index,
            // Uncontended: the index was idle, so no other run holds this session.
            session: Some(self.sessions[index].lock()),
        }
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's inputs, in graph order.
    pub fn inputs(&self) -> &[Port] {
        &self.inputs
    }

    /// The model's outputs, in graph order.
    pub fn outputs(&self) -> &[Port] {
        &self.outputs
    }

    /// A custom metadata value of the model (class names of a detector, the character set
    /// of a text recogniser).
    pub fn metadata(&self, key: &str) -> Result<Option<String>> {
        let session = self.sessions[0].lock();
        let metadata = session.metadata().map_err(|e| model_error(&self.path, e))?;
        Ok(metadata.custom(key))
    }

    /// Run the model on named inputs and return the f32 outputs at `wanted` (indexes into
    /// [`outputs`](Self::outputs)).
    pub fn run(&self, inputs: Vec<(String, Input<'_>)>, wanted: &[usize]) -> Result<Vec<Output>> {
        self.run_read(inputs, wanted, |views| {
            Ok(views
                .iter()
                .map(|view| Output {
                    shape: view.shape.clone(),
                    data: view.data.to_vec(),
                })
                .collect())
        })
    }

    /// [`run`](Self::run), handing the f32 outputs at `wanted` to `read` in place, while
    /// the session still holds them: a caller that reduces a large output (a text
    /// encoder's hidden states, pooled to one vector per row) reads it without copying.
    pub fn run_read<R>(
        &self,
        inputs: Vec<(String, Input<'_>)>,
        wanted: &[usize],
        read: impl FnOnce(&[OutputView<'_>]) -> Result<R>,
    ) -> Result<R> {
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let value: ort::Result<SessionInputValue<'_>> = match input {
                Input::F32(shape, data) => Tensor::from_array((shape, data)).map(Into::into),
                Input::I64(shape, data) => Tensor::from_array((shape, data)).map(Into::into),
                Input::F32View(shape, data) => {
                    TensorRef::from_array_view((shape, data)).map(Into::into)
                }
            };
            let value = value.map_err(|e| model_error(&self.path, format!("input {name}: {e}")))?;
            values.push((name, value));
        }
        let mut session = self.any_session();
        let outputs = session
            .run(values)
            .map_err(|e| model_error(&self.path, e))?;
        let views = wanted
            .iter()
            .map(|&i| {
                if i >= outputs.len() {
                    return Err(model_error(
                        &self.path,
                        format!("the graph has no output {i}"),
                    ));
                }
                let (shape, data) = outputs[i]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| model_error(&self.path, format!("output {i}: {e}")))?;
                Ok(OutputView {
                    shape: shape.iter().copied().collect(),
                    data,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        read(&views)
    }
}

/// An f32 output of [`OnnxModel::run_read`], borrowed from the session's run.
#[derive(Debug)]
pub struct OutputView<'a> {
    /// Dimensions.
    pub shape: Vec<i64>,
    /// Row-major values.
    pub data: &'a [f32],
}

/// `run` on every item, on up to `threads` threads (the calling thread and scoped ones),
/// each taking the next item no thread has taken; the body of [`OnnxModel::run_each`].
fn on_threads<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    run: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.iter().map(run).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || -> Result<Vec<(usize, R)>> {
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            match run(item) {
                Ok(result) => done.push((i, result)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(done)
    };
    let finished: Vec<Result<Vec<(usize, R)>>> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut finished = vec![work()];
        finished.extend(
            others
                .into_iter()
                .map(|t| t.join().expect("a model thread panicked")),
        );
        finished
    });
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for done in finished {
        for (i, result) in done? {
            results[i] = Some(result);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every item run"))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use rillet_common::RilletError;

    use super::on_threads;

    #[test]
    fn items_of_unequal_work_run_once_each_and_come_back_in_order() {
        let calls = AtomicUsize::new(0);
        let threads_seen = parking_lot::Mutex::new(std::collections::HashSet::new());
        // The first item is slow: the other thread takes every item after it.
        let items: Vec<u64> = (0..20).collect();
        let out = on_threads(2, &items, |&n| {
            calls.fetch_add(1, Ordering::Relaxed);
            threads_seen.lock().insert(std::thread::current().id());
            if n == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(n * 10)
        })
        .unwrap();
        assert_eq!(out, items.iter().map(|n| n * 10).collect::<Vec<_>>());
        assert_eq!(calls.load(Ordering::Relaxed), items.len());
        assert_eq!(threads_seen.lock().len(), 2);
    }

    #[test]
    fn an_error_stops_the_threads_taking_more() {
        let calls = AtomicUsize::new(0);
        let items: Vec<u64> = (0..1000).collect();
        let err = on_threads(2, &items, |&n| {
            calls.fetch_add(1, Ordering::Relaxed);
            if n == 3 {
                return Err(RilletError::Model("item 3 failed".into()));
            }
            std::thread::sleep(Duration::from_millis(1));
            Ok(n)
        })
        .unwrap_err();
        assert!(err.to_string().contains("item 3 failed"), "{err}");
        assert!(calls.load(Ordering::Relaxed) < 100);
        assert!(on_threads(2, &[] as &[u64], |&n| Ok(n)).unwrap().is_empty());
    }
}
