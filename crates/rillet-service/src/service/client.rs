//! The caller's handle: starting a service, calling it, scaling it, watching it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rillet_common::{Result, RilletError};
use rillet_operator::OperatorMetrics;
use rillet_operator::global_runtime;
use rillet_operator::resources::ResourceManager;
use rillet_processes::ProcessCommand;
use tokio::sync::{Notify, mpsc, oneshot};

use super::health::manage;
use super::routing::batch_calls;
use super::{Call, ReplicaState, ReplicaStatus, ServiceOptions, ServiceStatus, Shared, State};

/// A model served by its own pool of replica processes, independent of any job.
///
/// Replicas register only after their constructor (the model load) finished. Callers
/// ([`Service::call`], usually through [`crate::ServiceFunction`]) are batched dynamically,
/// bounded ([`ServiceOptions::max_in_flight`]), and routed to the least busy ready
/// replica over Arrow Flight `DoExchange`. A replica that dies or stops answering is a
/// routing event: its requests go to another replica and it is replaced. [`Service::scale`]
/// changes the replica count while jobs run; scale-in drains a replica before stopping it.
///
/// ```no_run
/// # use rillet_service::{Service, ServiceOptions};
/// # fn demo(command: rillet_processes::ProcessCommand, batch: arrow::array::RecordBatch) -> rillet_common::Result<()> {
/// let service = Service::start(
///     "embedder",
///     command,
///     ServiceOptions { min_replicas: 1, max_replicas: 2, ..ServiceOptions::default() },
///     rillet_operator::ResourceManager::global(),
/// )?;
/// let reply = service.call(batch, None)?;
/// service.scale(2, 2);
/// service.shutdown();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Service {
    shared: Arc<Shared>,
}

impl Service {
    /// Check that `options` can ever run on this machine (failing at once, with what was
    /// asked and what exists, when not), then start the service's `min_replicas`, whose
    /// constructors run in the background.
    pub fn start(
        name: impl Into<String>,
        command: ProcessCommand,
        options: ServiceOptions,
        resources: Arc<ResourceManager>,
    ) -> Result<Self> {
        let name = name.into();
        let who = format!("service({name})");
        if command.argv.is_empty() {
            return Err(RilletError::plan(format!("{who}: no replica command")));
        }
        options.validate(&who)?;
        resources.check(&options.request, options.min_replicas.max(1), &who)?;
        let (queue, calls) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                replicas: BTreeMap::new(),
                next_id: 0,
                min: options.min_replicas,
                max: options.max_replicas,
                closed: false,
                failure: None,
                admitted: 0,
                waiting_requests: 0,
                waiting_since: None,
                failed_starts: 0,
                last_health_check: None,
            }),
            name: who,
            command,
            options,
            resources,
            changed: Condvar::new(),
            routable: Notify::new(),
            queue,
            calls: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            replicas_lost: AtomicU64::new(0),
            replicas_started: AtomicU64::new(0),
        });
        {
            let mut state = shared.lock();
            shared.keep_sized(&mut state);
        }
        global_runtime().spawn(batch_calls(Arc::downgrade(&shared), calls));
        let manager = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("rillet-service-manager".to_string())
            .spawn(move || manage(manager))
            .map_err(|e| RilletError::internal(format!("cannot start a thread: {e}")))?;
        Ok(Self { shared })
    }

    /// The service's label: `service(name)`.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The options it was started with (the replica bounds may have changed since: see
    /// [`Service::status`]).
    pub fn options(&self) -> &ServiceOptions {
        &self.shared.options
    }

    /// Compute one call: `batch` holds the function's arguments as columns; the reply has
    /// the same rows. Blocks while [`ServiceOptions::max_in_flight`] calls are already
    /// admitted (recorded on `metrics` as waiting for a free worker) and while no replica
    /// has finished loading (recorded as model loading).
    pub fn call(
        &self,
        batch: RecordBatch,
        metrics: Option<&OperatorMetrics>,
    ) -> Result<RecordBatch> {
        let shared = &self.shared;
        let rows = batch.num_rows();
        if rows == 0 {
            return Err(RilletError::internal(format!(
                "{}: called with no rows",
                shared.name
            )));
        }
        shared.calls.fetch_add(1, Ordering::Relaxed);
        shared.admit(metrics)?;
        let (reply, answer) = oneshot::channel();
        let sent = shared.queue.send(Call { batch, reply });
        let result = match sent {
            Ok(()) => answer
                .blocking_recv()
                .unwrap_or(Err(RilletError::Cancelled)),
            Err(_) => Err(RilletError::Cancelled),
        };
        {
            let mut state = shared.lock();
            state.admitted -= 1;
        }
        shared.changed.notify_all();
        let reply = result?;
        if reply.num_rows() != rows {
            return Err(RilletError::UserFunction {
                operator: shared.name.clone(),
                message: format!("returned {} values for {rows} rows", reply.num_rows()),
            });
        }
        Ok(reply)
    }

    /// Keep between `min` and `max` replicas from now on (`scale(n, n)` pins the count).
    /// New replicas start in the background; surplus ones are drained: they finish the
    /// requests they hold, then stop. Running jobs go on throughout.
    pub fn scale(&self, min: usize, max: usize) -> Result<()> {
        let probe = ServiceOptions {
            min_replicas: min,
            max_replicas: max,
            ..self.shared.options.clone()
        };
        probe.validate(&self.shared.name)?;
        self.shared
            .resources
            .check(&self.shared.options.request, min.max(1), &self.shared.name)?;
        {
            let mut state = self.shared.lock();
            state.min = min;
            state.max = max;
            self.shared.keep_sized(&mut state);
        }
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Wait up to `timeout` until `replicas` replicas are ready (and no more are loading
    /// or draining beyond them); true if they are.
    pub fn wait_ready(&self, replicas: usize, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(failure) = &state.failure {
                return Err(self.shared.function_error(failure.clone()));
            }
            let ready = state.count(ReplicaState::Ready);
            if ready >= replicas && state.replicas.len() == ready {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline || state.closed {
                return Ok(false);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The replicas and counters now.
    pub fn status(&self) -> ServiceStatus {
        let shared = &self.shared;
        let state = shared.lock();
        ServiceStatus {
            name: shared.name.clone(),
            min_replicas: state.min,
            max_replicas: state.max,
            replicas: state
                .replicas
                .iter()
                .map(|(&id, r)| ReplicaStatus {
                    id,
                    pid: r.pid,
                    port: r.port,
                    state: r.state,
                    in_flight: r.in_flight,
                    served: r.served,
                })
                .collect(),
            calls: shared.calls.load(Ordering::Relaxed),
            requests: shared.requests.load(Ordering::Relaxed),
            retries: shared.retries.load(Ordering::Relaxed),
            replicas_lost: shared.replicas_lost.load(Ordering::Relaxed),
            replicas_started: shared.replicas_started.load(Ordering::Relaxed),
            waiting_calls: state.admitted,
            failure: state.failure.clone(),
        }
    }

    /// Stop every replica (requests still running fail as cancelled) and wait for their
    /// processes. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}
