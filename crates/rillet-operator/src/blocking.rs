//! A bounded pool for blocking work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use rillet_common::{Result, RilletError};
use tokio::sync::{Notify, Semaphore};

use crate::metrics::{OperatorMetrics, WaitReason, acquire_recording_wait};

/// Runs blocking closures on threads of its own, at most `size` at once. Callers that find
/// every slot taken wait, and the wait is recorded as "waiting on a free worker".
///
/// The pool's threads (started as calls need them, at most `size`) run every call, so each
/// thread's allocator keeps the memory of its last call warm for the next: a photo's
/// buffers are reused instead of being faulted in and zeroed afresh. On tokio's shared
/// blocking pool any of its many threads took a call, and page faults on fresh memory were a
/// tenth of an image pipeline's CPU time.
///
/// ```
/// let pool = rillet_operator::BlockingPool::new(2);
/// let rt = rillet_operator::global_runtime();
/// let answer = rt.block_on(pool.run(None, || Ok(6 * 7))).unwrap();
/// assert_eq!(answer, 42);
/// ```
#[derive(Debug, Clone)]
pub struct BlockingPool {
    slots: Arc<Semaphore>,
    size: usize,
    in_flight: Arc<InFlight>,
    threads: Arc<Threads>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The pool's threads and the queue feeding them. Dropping the last pool handle closes the
/// queue; each thread then exits after its current call.
#[derive(Debug)]
struct Threads {
    queue: Sender<Job>,
    jobs: Arc<Mutex<Receiver<Job>>>,
    started: AtomicUsize,
}

impl Threads {
    fn new() -> Self {
        let (queue, jobs) = std::sync::mpsc::channel();
        Self {
            queue,
            jobs: Arc::new(Mutex::new(jobs)),
            started: AtomicUsize::new(0),
        }
    }

    /// Queue `job`, starting another thread while fewer than `size` run.
    fn submit(&self, size: usize, job: Job) -> Result<()> {
        let another = self
            .started
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < size).then_some(n + 1)
            })
            .is_ok();
        if another {
            let jobs = self.jobs.clone();
            std::thread::Builder::new()
                .name("rillet-call".to_string())
                .spawn(move || {
                    // Calls see the engine's runtime, as on tokio's blocking threads.
                    let _runtime = crate::global_runtime().enter();
                    loop {
                        let next = jobs
                            .lock()
                            .map_err(drop)
                            .and_then(|j| j.recv().map_err(drop));
                        match next {
                            Ok(job) => job(),
                            Err(()) => return,
                        }
                    }
                })
                .map_err(|e| {
                    self.started.fetch_sub(1, Ordering::SeqCst);
                    RilletError::internal(format!("cannot start a pool thread: {e}"))
                })?;
        }
        self.queue
            .send(job)
            .map_err(|_| RilletError::internal("the pool's threads are gone"))
    }
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
    /// A pool of `size` threads (at least one).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            slots: Arc::new(Semaphore::new(size)),
            size,
            in_flight: Arc::new(InFlight::default()),
            threads: Arc::new(Threads::new()),
        }
    }

    /// Number of threads.
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

    /// Run `work` on a pool thread and wait for its result. A panic inside `work` becomes an
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
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            drop(permit);
            if in_flight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                in_flight.idle.notify_waiters();
            }
            // The caller may have stopped waiting (its job was cancelled): nobody to tell.
            let _ = done.send(result);
        });
        if let Err(e) = self.threads.submit(self.size, job) {
            // The job (and with it the permit and the in-flight count) never ran.
            if self.in_flight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.in_flight.idle.notify_waiters();
            }
            return Err(e);
        }
        match result.await {
            Ok(Ok(result)) => result,
            Ok(Err(payload)) => Err(RilletError::internal(format!(
                "a blocking task panicked: {}",
                panic_message(payload)
            ))),
            Err(_) => Err(RilletError::Cancelled),
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
