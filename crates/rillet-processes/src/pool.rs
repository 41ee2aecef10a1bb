//! A pool of processes that serve calls one at a time each.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rillet_common::{Result, RilletError};

use crate::protocol::{self, CALL, ERROR, READY, RESULT, SETUP};
use rillet_operator::metrics::{OperatorMetrics, WaitReason};
use rillet_operator::resources::{Reservation, ResourceManager, ResourceRequest};

/// How to start one process.
#[derive(Debug, Clone)]
pub struct ProcessCommand {
    /// Program and arguments (for Python: the interpreter and Rillet's `_worker.py` script).
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The payload of the setup frame each process gets first.
    pub setup: Arc<Vec<u8>>,
}

/// Size and resources of a pool.
#[derive(Debug, Clone)]
pub struct ProcessPoolOptions {
    /// Processes started with the pool and kept while it lives.
    pub min_workers: usize,
    /// Most processes at once; the pool grows towards it while calls wait.
    pub max_workers: usize,
    /// What each process reserves.
    pub request: ResourceRequest,
    /// Times one call is re-sent to a fresh process after its process died.
    pub max_retries: usize,
    /// A process idle this long is stopped while the pool has more than `min_workers`.
    pub idle_timeout: Duration,
}

impl ProcessPoolOptions {
    /// Reject sizes and requests that can never work, on any machine; `who` names the pool.
    pub fn validate(&self, who: &str) -> Result<()> {
        if self.max_workers == 0 || self.min_workers > self.max_workers {
            return Err(RilletError::plan(format!(
                "{who}: concurrency must be at least 1 and its minimum at most its maximum, \
                 got ({}, {})",
                self.min_workers, self.max_workers
            )));
        }
        self.request.validate(who)
    }
}

impl Default for ProcessPoolOptions {
    fn default() -> Self {
        Self {
            min_workers: 1,
            max_workers: 1,
            request: ResourceRequest {
                cpus: 1.0,
                gpus: 0.0,
                memory_bytes: 0,
            },
            max_retries: 3,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Processes serving one function. Each process computes one call at a time; a
/// call takes an idle process, or starts one (up to `max_workers`, when the resource
/// manager has room) and waits for the first process that becomes ready. A process that dies
/// mid-call (killed, crashed) is replaced and the call is sent again, up to `max_retries`
/// times; the job sees only the retry count. A process whose constructor fails makes every
/// call fail with that error, since the next process would fail the same way.
#[derive(Debug)]
pub struct ProcessPool {
    name: String,
    command: ProcessCommand,
    options: ProcessPoolOptions,
    resources: Arc<ResourceManager>,
    metrics: Option<Arc<OperatorMetrics>>,
    state: Mutex<PoolState>,
    changed: Condvar,
    started: AtomicU64,
    retries: AtomicU64,
    me: Weak<ProcessPool>,
}

#[derive(Debug, Default)]
struct PoolState {
    idle: Vec<Worker>,
    /// Processes starting, idle or busy.
    live: usize,
    starting: usize,
    /// Calls waiting for a process.
    waiting: usize,
    closed: bool,
    /// Why processes cannot start (a failing constructor); every call fails with it.
    failure: Option<String>,
    /// Every live process, so closing the pool can stop busy ones too.
    children: HashMap<u32, Arc<Mutex<Child>>>,
}

#[derive(Debug)]
struct Worker {
    pid: u32,
    child: Arc<Mutex<Child>>,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    idle_since: Instant,
    _reservation: Reservation,
}

/// What came back from a process.
enum Reply {
    Batch(RecordBatch),
    Failed(String),
}

impl ProcessPool {
    /// Check that `options` can ever run on this machine (failing at once, with what was
    /// asked and what exists, when not), then start the pool and its `min_workers`
    /// processes, whose constructors run in the background.
    pub fn start(
        name: impl Into<String>,
        command: ProcessCommand,
        options: ProcessPoolOptions,
        resources: Arc<ResourceManager>,
        metrics: Option<Arc<OperatorMetrics>>,
    ) -> Result<Arc<Self>> {
        let name = name.into();
        if command.argv.is_empty() {
            return Err(RilletError::plan(format!("{name}: no worker command")));
        }
        options.validate(&name)?;
        resources.check(&options.request, options.min_workers, &name)?;
        let pool = Arc::new_cyclic(|me| Self {
            name,
            command,
            options,
            resources,
            metrics,
            state: Mutex::new(PoolState::default()),
            changed: Condvar::new(),
            started: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            me: me.clone(),
        });
        {
            let mut state = pool.lock();
            for _ in 0..pool.options.min_workers {
                // Another job's pool may hold the resources now: calls start processes later.
                let Some(reservation) = pool.resources.try_reserve(&pool.options.request) else {
                    break;
                };
                pool.start_process(&mut state, reservation);
            }
        }
        let reaper = Arc::downgrade(&pool);
        std::thread::Builder::new()
            .name("rillet-pool-reaper".to_string())
            .spawn(move || reap_idle_processes(reaper))
            .map_err(|e| RilletError::internal(format!("cannot start a thread: {e}")))?;
        Ok(pool)
    }

    /// Compute one call: `request` is the argument batch as an Arrow IPC stream.
    pub fn call(&self, request: &[u8]) -> Result<RecordBatch> {
        let mut deaths = 0;
        loop {
            let mut worker = self.acquire()?;
            match worker.exchange(request) {
                Ok(Reply::Batch(batch)) => {
                    self.release(worker);
                    return Ok(batch);
                }
                Ok(Reply::Failed(message)) => {
                    self.release(worker);
                    return Err(RilletError::UserFunction {
                        operator: self.name.clone(),
                        message,
                    });
                }
                Err(broken) => {
                    let pid = worker.pid;
                    let status = self.discard(worker);
                    if self.lock().closed {
                        return Err(RilletError::Cancelled);
                    }
                    deaths += 1;
                    if deaths > self.options.max_retries {
                        return Err(RilletError::UserFunction {
                            operator: self.name.clone(),
                            message: format!(
                                "its worker processes died {deaths} times on the same batch \
                                 (last: pid {pid} {status}; {broken}); gave up after \
                                 max_retries={}",
                                self.options.max_retries
                            ),
                        });
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = &self.metrics {
                        m.add_retry();
                    }
                    tracing::warn!(
                        "{}: worker pid {pid} {status} during a call; replacing it and \
                         retrying the batch (retry {deaths} of at most {})",
                        self.name,
                        self.options.max_retries
                    );
                }
            }
        }
    }

    /// Processes started so far, replacements included.
    pub fn processes_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Calls re-sent after their process died.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Processes starting, idle or busy now.
    pub fn live_processes(&self) -> usize {
        self.lock().live
    }

    /// Stop every process, busy ones included (their calls fail as cancelled). Idempotent.
    pub fn close(&self) {
        let (idle, children) = {
            let mut state = self.lock();
            state.closed = true;
            (
                std::mem::take(&mut state.idle),
                std::mem::take(&mut state.children),
            )
        };
        self.changed.notify_all();
        let idle_pids: Vec<u32> = idle.iter().map(|w| w.pid).collect();
        // Idle processes exit on end of input; busy ones are killed.
        for (pid, child) in &children {
            if !idle_pids.contains(pid) {
                let _ = lock_child(child).kill();
            }
        }
        stop_gracefully(idle);
        for child in children.values() {
            let _ = lock_child(child).wait();
        }
        // Processes still loading were killed above; wait for their start threads to give
        // their resources back, so the job ends with nothing reserved.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut state = self.lock();
        while state.starting > 0 && Instant::now() < deadline {
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle process, starting one when calls wait and the pool and the machine have
    /// room. The wait shows as "model loading" while processes start and "a free process"
    /// otherwise.
    fn acquire(&self) -> Result<Worker> {
        let mut state = self.lock();
        state.waiting += 1;
        let waited_from = Instant::now();
        let mut reason = None;
        let result = loop {
            if state.closed {
                break Err(RilletError::Cancelled);
            }
            if let Some(failure) = &state.failure {
                break Err(RilletError::UserFunction {
                    operator: self.name.clone(),
                    message: failure.clone(),
                });
            }
            if let Some(worker) = state.idle.pop() {
                break Ok(worker);
            }
            if state.live < self.options.max_workers
                && state.starting < state.waiting
                && let Some(reservation) = self.resources.try_reserve(&self.options.request)
            {
                self.start_process(&mut state, reservation);
                continue;
            }
            let now = if state.starting > 0 {
                WaitReason::ModelLoading
            } else {
                WaitReason::FreeWorker
            };
            reason = Some(now);
            let _shows = self.metrics.as_ref().map(|m| m.begin_wait(now));
            // Wake now and then: another pool may have given resources back.
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        state.waiting -= 1;
        drop(state);
        if let (Some(reason), Some(m)) = (reason, &self.metrics) {
            m.record_wait(reason, waited_from.elapsed());
        }
        result
    }

    fn release(&self, mut worker: Worker) {
        worker.idle_since = Instant::now();
        let mut state = self.lock();
        if state.closed {
            drop(state);
            stop_gracefully(vec![worker]);
            return;
        }
        state.idle.push(worker);
        drop(state);
        self.changed.notify_all();
    }

    /// Forget a broken process, make sure its process is gone, and describe how it ended.
    fn discard(&self, worker: Worker) -> String {
        {
            let mut state = self.lock();
            state.live -= 1;
            state.children.remove(&worker.pid);
        }
        self.changed.notify_all();
        let Worker { child, input, .. } = worker;
        drop(input);
        let mut child = lock_child(&child);
        let status = match child.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                // Give a crashing process a moment to finish dying before killing it.
                std::thread::sleep(Duration::from_millis(50));
                match child.try_wait() {
                    Ok(Some(status)) => Some(status),
                    _ => {
                        let _ = child.kill();
                        child.wait().ok()
                    }
                }
            }
        };
        describe_exit(status)
    }

    /// Count a process as starting and launch it on a thread of its own, so that waiting
    /// calls take whichever process is ready first.
    fn start_process(&self, state: &mut PoolState, reservation: Reservation) {
        state.live += 1;
        state.starting += 1;
        let me = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("rillet-worker-start".to_string())
            .spawn(move || {
                let Some(pool) = me.upgrade() else { return };
                let mut launched = pool.launch(reservation);
                if pool.lock().closed
                    && let Ok(worker) = launched
                {
                    // Closed while it loaded: stop it (giving its resources back) before
                    // the pool counts it as no longer starting.
                    stop_gracefully(vec![worker]);
                    launched = Err("the pool closed while the worker started".to_string());
                }
                let mut state = pool.lock();
                state.starting -= 1;
                match launched {
                    Ok(worker) => state.idle.push(worker),
                    Err(_) if state.closed => state.live -= 1,
                    Err(message) => {
                        state.live -= 1;
                        state.failure.get_or_insert(message);
                    }
                }
                drop(state);
                pool.changed.notify_all();
            });
        if let Err(e) = spawned {
            state.live -= 1;
            state.starting -= 1;
            state.failure = Some(format!("cannot start a thread: {e}"));
        }
    }

    /// Start one process and wait until its constructor finished.
    fn launch(&self, reservation: Reservation) -> std::result::Result<Worker, String> {
        let mut child = spawn_process(
            &self.command,
            &self.name,
            &reservation,
            self.options.request.cpus,
        )?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("a worker process has no pipes".to_string());
        };
        // Known to the pool from now on, so closing the pool stops a process still loading.
        let child = Arc::new(Mutex::new(child));
        self.lock().children.insert(pid, child.clone());
        self.started.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.add_worker_started();
        }
        let mut input = BufWriter::new(stdin);
        let mut output = BufReader::with_capacity(1 << 16, stdout);
        let greeting = protocol::write_frame(&mut input, SETUP, &self.command.setup)
            .and_then(|()| protocol::read_frame(&mut output));
        if let Ok(Some((READY, _))) = greeting {
            return Ok(Worker {
                pid,
                child,
                input,
                output,
                idle_since: Instant::now(),
                _reservation: reservation,
            });
        }
        self.lock().children.remove(&pid);
        let mut child = lock_child(&child);
        let _ = child.kill();
        let status = child.wait().ok();
        Err(match greeting {
            Ok(Some((ERROR, text))) => {
                format!(
                    "a worker could not start: {}",
                    String::from_utf8_lossy(&text)
                )
            }
            other => {
                let what = match other {
                    Err(e) => e.to_string(),
                    _ => "it did not speak Rillet's worker protocol".to_string(),
                };
                format!(
                    "worker process {pid} {} before it was ready ({what}); its output above \
                     may say why",
                    describe_exit(status)
                )
            }
        })
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Worker {
    /// Send a call and wait for its reply; an error means the process is gone or broken.
    fn exchange(&mut self, request: &[u8]) -> std::result::Result<Reply, String> {
        protocol::write_frame(&mut self.input, CALL, request)
            .map_err(|e| format!("sending the batch failed: {e}"))?;
        match protocol::read_frame(&mut self.output) {
            Ok(Some((RESULT, payload))) => protocol::decode_batch(payload)
                .map(Reply::Batch)
                .map_err(|e| format!("its reply was not an Arrow batch: {e}")),
            Ok(Some((ERROR, text))) => Ok(Reply::Failed(String::from_utf8_lossy(&text).into())),
            Ok(Some((kind, _))) => Err(format!("it sent an unknown frame kind {kind}")),
            Ok(None) => Err("its output ended".to_string()),
            Err(e) => Err(format!("reading its reply failed: {e}")),
        }
    }
}

/// Start one process of `command` for `label` (its `RILLET_WORKER_OF`) with piped
/// stdin and stdout, in a process group of its own, seeing the GPUs of `reservation` and
/// told to use as many threads as the `cpus` it reserved.
pub fn spawn_process(
    command: &ProcessCommand,
    label: &str,
    reservation: &Reservation,
    cpus: f64,
) -> std::result::Result<Child, String> {
    let argv = &command.argv;
    let Some(program) = argv.first() else {
        return Err(format!("{label}: no worker command"));
    };
    let mut process = Command::new(program);
    process
        .args(&argv[1..])
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .env("RILLET_WORKER_OF", label)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group: Ctrl-C in the terminal goes to the engine, which
        // stops its processes, instead of killing processes under running calls.
        .process_group(0);
    if reservation.has_gpu() {
        process.env("CUDA_VISIBLE_DEVICES", reservation.cuda_visible_devices());
    }
    // Numeric libraries start a thread per core unless told otherwise; a process gets
    // as many as the CPUs it reserved, so processes do not oversubscribe the machine.
    let threads = cpus.ceil().max(1.0).to_string();
    for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"] {
        let set_by_user =
            std::env::var_os(var).is_some() || command.env.iter().any(|(k, _)| k == var);
        if !set_by_user {
            process.env(var, &threads);
        }
    }
    process
        .spawn()
        .map_err(|e| format!("cannot start a worker process ({}): {e}", argv.join(" ")))
}

/// Lock a process's process handle, surviving a poisoned lock.
pub fn lock_child(child: &Mutex<Child>) -> MutexGuard<'_, Child> {
    child.lock().unwrap_or_else(|e| e.into_inner())
}

/// Close the processes' input (they exit when it ends), give them a second, then kill.
fn stop_gracefully(workers: Vec<Worker>) {
    let children: Vec<Arc<Mutex<Child>>> = workers
        .into_iter()
        .map(|w| {
            drop(w.input);
            w.child
        })
        .collect();
    stop_processes(children, Duration::from_secs(1));
}

/// Wait up to `grace` for processes told to stop (their input closed) to exit, then kill
/// the rest, reaping them all.
pub fn stop_processes(children: Vec<Arc<Mutex<Child>>>, grace: Duration) {
    let deadline = Instant::now() + grace;
    for child in children {
        let mut child = lock_child(&child);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

/// How a process ended, in words: "was killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(s) if s.signal().is_some() => {
            let signal = s.signal().unwrap_or(0);
            let name = match signal {
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                6 => " (SIGABRT)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {signal}{name}")
        }
        Some(s) => format!("exited with code {}", s.code().unwrap_or(-1)),
        None => "ended".to_string(),
    }
}

/// Stop processes idle longer than the pool's idle timeout while it has more than its
/// minimum; ends with the pool.
fn reap_idle_processes(pool: Weak<ProcessPool>) {
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Some(pool) = pool.upgrade() else { return };
        let expired = {
            let mut state = pool.lock();
            if state.closed {
                return;
            }
            let mut expired = Vec::new();
            while state.live > pool.options.min_workers {
                // Stop the process idle longest first.
                let Some(oldest) = state
                    .idle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, w)| w.idle_since)
                    .map(|(i, _)| i)
                else {
                    break;
                };
                if state.idle[oldest].idle_since.elapsed() < pool.options.idle_timeout {
                    break;
                }
                let worker = state.idle.swap_remove(oldest);
                state.children.remove(&worker.pid);
                state.live -= 1;
                expired.push(worker);
            }
            expired
        };
        if !expired.is_empty() {
            stop_gracefully(expired);
            pool.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};

    use super::*;
    use rillet_operator::resources::MachineResources;

    /// A process in plain Python (no third-party module): ready at once, replies to each
    /// call with its arguments, so the function is the identity on `a0`. Row 13 makes it
    /// kill itself with SIGKILL once per marker file.
    const ECHO_WORKER: &str = r#"
import os, signal, struct, sys, time
inp, out = sys.stdin.buffer, sys.stdout.buffer
def frame():
    h = inp.read(9)
    if len(h) < 9: return None
    return h[:1], inp.read(struct.unpack("<Q", h[1:])[0])
def send(kind, payload):
    out.write(kind + struct.pack("<Q", len(payload)) + payload); out.flush()
marker = sys.argv[1]
while True:
    f = frame()
    if f is None: break
    if f[0] == b"S": send(b"R", b""); continue
    time.sleep(0.05)
    if b"kill" in f[1] and not os.path.exists(marker):
        open(marker, "w").close(); os.kill(os.getpid(), signal.SIGKILL)
    send(b"O", f[1])
"#;

    fn pool(options: ProcessPoolOptions, marker: &std::path::Path) -> Arc<ProcessPool> {
        let machine = MachineResources {
            cpus: 8.0,
            memory_bytes: 1 << 30,
            gpus: vec![],
            virtual_gpus: false,
        };
        let command = ProcessCommand {
            argv: vec![
                "python3".into(),
                "-c".into(),
                ECHO_WORKER.into(),
                marker.display().to_string(),
            ],
            env: vec![],
            setup: Arc::new(Vec::new()),
        };
        ProcessPool::start(
            "udf(echo)",
            command,
            options,
            Arc::new(ResourceManager::new(machine)),
            None,
        )
        .unwrap()
    }

    fn request(values: Vec<i64>) -> (RecordBatch, Vec<u8>) {
        let batch =
            RecordBatch::try_from_iter([("a0", Arc::new(Int64Array::from(values)) as _)]).unwrap();
        let bytes = protocol::encode_batch(&batch).unwrap();
        (batch, bytes)
    }

    #[test]
    fn grows_while_calls_wait_then_shrinks_to_its_minimum_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let options = ProcessPoolOptions {
            min_workers: 1,
            max_workers: 3,
            idle_timeout: Duration::from_millis(300),
            ..ProcessPoolOptions::default()
        };
        let pool = pool(options, &dir.path().join("unused"));
        std::thread::scope(|scope| {
            for i in 0..9 {
                let pool = pool.clone();
                scope.spawn(move || {
                    let (batch, bytes) = request(vec![i]);
                    assert_eq!(pool.call(&bytes).unwrap(), batch);
                });
            }
        });
        assert_eq!(pool.processes_started(), 3);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.live_processes() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pool.live_processes(), 1);
        pool.close();
    }

    #[test]
    fn a_killed_worker_is_replaced_and_the_call_retried() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("killed");
        let pool = pool(ProcessPoolOptions::default(), &marker);
        let batch = RecordBatch::try_from_iter([(
            "a0",
            Arc::new(arrow::array::StringArray::from(vec!["please kill me"])) as _,
        )])
        .unwrap();
        let reply = pool.call(&protocol::encode_batch(&batch).unwrap()).unwrap();
        assert_eq!(reply, batch);
        assert!(marker.exists());
        assert_eq!(pool.retries(), 1);
        assert_eq!(pool.processes_started(), 2);
        pool.close();
        assert!(matches!(
            pool.call(&protocol::encode_batch(&batch).unwrap()),
            Err(RilletError::Cancelled)
        ));
    }
}
