//! The service: its replicas, the client that batches and routes calls to them, and the
//! manager thread that keeps the pool healthy and sized.

use std::collections::BTreeMap;
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow_flight::flight_service_client::FlightServiceClient;
use rillet_common::{Result, RilletError};
use rillet_runtime::global_runtime;
use rillet_runtime::resources::{Reservation, ResourceManager, ResourceRequest};
use rillet_runtime::workers::{WorkerCommand, describe_exit, lock_child, stop_processes};
use rillet_runtime::{OperatorMetrics, WaitReason};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::transport::Channel;

use crate::replica::{self, ExchangeError, LaunchError};

/// How a service is sized, resourced and called.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Replicas kept while the service lives.
    pub min_replicas: usize,
    /// Most replicas at once; the service grows towards it while calls wait.
    pub max_replicas: usize,
    /// What each replica reserves from the machine.
    pub request: ResourceRequest,
    /// Dynamic batching: calls arriving together are merged into one request of at most
    /// this many rows (a single larger call is sent whole)...
    pub max_batch_rows: usize,
    /// ...waiting at most this long after the first call for others to join it.
    pub max_wait: Duration,
    /// Calls admitted at once; further callers wait (backpressure).
    pub max_in_flight: usize,
    /// Requests one replica serves at once (one computes while the next one's data
    /// arrives).
    pub per_replica: usize,
    /// Times a request is re-sent, to another replica when there is one, after its replica
    /// failed; waits between tries grow from 50 ms.
    pub max_retries: usize,
    /// A request not answered within this time counts as a replica failure.
    pub timeout: Duration,
    /// A replica idle this long is drained while the service has more than its minimum.
    pub idle_timeout: Duration,
    /// How often every replica is asked whether it is healthy.
    pub health_interval: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 1,
            request: ResourceRequest {
                cpus: 1.0,
                gpus: 0.0,
                memory_bytes: 0,
            },
            max_batch_rows: 256,
            max_wait: Duration::from_millis(5),
            max_in_flight: 16,
            per_replica: 2,
            max_retries: 3,
            timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            health_interval: Duration::from_secs(1),
        }
    }
}

impl ServiceOptions {
    fn validate(&self, who: &str) -> Result<()> {
        if self.max_replicas == 0 || self.min_replicas > self.max_replicas {
            return Err(RilletError::plan(format!(
                "{who}: replicas must be at least 1 and the minimum at most the maximum, got \
                 ({}, {})",
                self.min_replicas, self.max_replicas
            )));
        }
        if self.max_batch_rows == 0 || self.max_in_flight == 0 || self.per_replica == 0 {
            return Err(RilletError::plan(format!(
                "{who}: max_batch_size, max_in_flight and the requests per replica must be at \
                 least 1"
            )));
        }
        self.request.validate(who)
    }
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Its process runs its constructor (loads the model); it gets no requests yet.
    Loading,
    /// Registered: it serves requests.
    Ready,
    /// It failed a request or a health check; it gets no requests until a check passes.
    Unhealthy,
    /// Scaling in: it finishes the requests it has, gets no new ones, then stops.
    Draining,
}

impl ReplicaState {
    fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Loading => "loading",
            ReplicaState::Ready => "ready",
            ReplicaState::Unhealthy => "unhealthy",
            ReplicaState::Draining => "draining",
        }
    }
}

impl std::fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replica as [`Service::status`] shows it.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    /// The service's number for it (replacements get new numbers).
    pub id: u64,
    /// Its process id, once started.
    pub pid: Option<u32>,
    /// Its Flight server's loopback port, once ready.
    pub port: Option<u16>,
    /// Where it is in its life.
    pub state: ReplicaState,
    /// Requests it serves now.
    pub in_flight: usize,
    /// Requests it answered.
    pub served: u64,
}

/// A snapshot of a service.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Its current bounds.
    pub min_replicas: usize,
    /// Its current bounds.
    pub max_replicas: usize,
    /// Its replicas, in start order.
    pub replicas: Vec<ReplicaStatus>,
    /// Calls made (each a batch of rows from an operator).
    pub calls: u64,
    /// Requests sent to replicas (calls merged by dynamic batching; retries included).
    pub requests: u64,
    /// Requests re-sent after their replica failed.
    pub retries: u64,
    /// Replicas that died or were killed unhealthy (and were replaced).
    pub replicas_lost: u64,
    /// Replica processes started, replacements included.
    pub replicas_started: u64,
    /// Calls waiting for their reply now.
    pub waiting_calls: usize,
    /// Why no replica can start (a constructor that raises); every call fails with it.
    pub failure: Option<String>,
}

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
/// # fn demo(command: rillet_runtime::workers::WorkerCommand, batch: arrow::array::RecordBatch) -> rillet_common::Result<()> {
/// let service = Service::start(
///     "embedder",
///     command,
///     ServiceOptions { min_replicas: 1, max_replicas: 2, ..ServiceOptions::default() },
///     rillet_runtime::ResourceManager::global(),
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

#[derive(Debug)]
struct Shared {
    name: String,
    command: WorkerCommand,
    options: ServiceOptions,
    resources: Arc<ResourceManager>,
    state: Mutex<State>,
    /// Wakes callers (admission, first ready replica) and the manager.
    changed: Condvar,
    /// Wakes requests waiting for a replica with room.
    routable: Notify,
    queue: mpsc::UnboundedSender<Call>,
    calls: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    replicas_lost: AtomicU64,
    replicas_started: AtomicU64,
}

#[derive(Debug)]
struct State {
    replicas: BTreeMap<u64, Replica>,
    next_id: u64,
    min: usize,
    max: usize,
    closed: bool,
    failure: Option<String>,
    /// Calls admitted and not answered yet.
    admitted: usize,
    /// Requests waiting for a replica with room, and since when some have.
    waiting_requests: usize,
    waiting_since: Option<Instant>,
    /// Replica processes that died before they were ready, in a row.
    failed_starts: usize,
    last_health_check: Option<Instant>,
}

#[derive(Debug)]
struct Replica {
    state: ReplicaState,
    pid: Option<u32>,
    port: Option<u16>,
    client: Option<FlightServiceClient<Channel>>,
    child: Option<Arc<Mutex<Child>>>,
    lifeline: Option<ChildStdin>,
    in_flight: usize,
    served: u64,
    idle_since: Instant,
    failed_checks: u32,
    /// When its lifeline was closed (draining or shutting down).
    stopping_since: Option<Instant>,
    /// Given back to the machine when the entry and its start thread are done with it.
    reservation: Arc<Reservation>,
}

/// One caller's batch and where its reply goes.
#[derive(Debug)]
struct Call {
    batch: RecordBatch,
    reply: oneshot::Sender<Result<RecordBatch>>,
}

/// A replica picked for one request; gives its slot back when dropped.
struct Lease {
    shared: Arc<Shared>,
    id: u64,
    client: FlightServiceClient<Channel>,
    served: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            if let Some(replica) = state.replicas.get_mut(&self.id) {
                replica.in_flight -= 1;
                replica.idle_since = Instant::now();
                if self.served {
                    replica.served += 1;
                }
            }
        }
        self.shared.routable.notify_waiters();
        self.shared.changed.notify_all();
    }
}

impl Service {
    /// Check that `options` can ever run on this machine (failing at once, with what was
    /// asked and what exists, when not), then start the service's `min_replicas`, whose
    /// constructors run in the background.
    pub fn start(
        name: impl Into<String>,
        command: WorkerCommand,
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

impl State {
    fn count(&self, wanted: ReplicaState) -> usize {
        self.replicas.values().filter(|r| r.state == wanted).count()
    }

    /// Replicas that serve or will: all but the draining ones.
    fn active(&self) -> usize {
        self.replicas
            .values()
            .filter(|r| r.state != ReplicaState::Draining)
            .count()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn function_error(&self, message: String) -> RilletError {
        RilletError::UserFunction {
            operator: self.name.clone(),
            message,
        }
    }

    /// Wait for room among the admitted calls and for a first ready replica.
    fn admit(&self, metrics: Option<&OperatorMetrics>) -> Result<()> {
        let mut state = self.lock();
        let waited_from = Instant::now();
        let mut reason = None;
        let result = loop {
            if state.closed {
                break Err(RilletError::Cancelled);
            }
            if let Some(failure) = &state.failure {
                break Err(self.function_error(failure.clone()));
            }
            let loading = state.count(ReplicaState::Ready) == 0;
            if state.admitted < self.options.max_in_flight && !loading {
                state.admitted += 1;
                break Ok(());
            }
            let now = if loading {
                WaitReason::ModelLoading
            } else {
                WaitReason::FreeWorker
            };
            if reason != Some(now) {
                if let (Some(before), Some(m)) = (reason, metrics) {
                    m.record_wait(before, waited_from.elapsed());
                }
                reason = Some(now);
            }
            let _shows = metrics.map(|m| m.begin_wait(now));
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(state);
        if let (Some(reason), Some(m)) = (reason, metrics) {
            m.record_wait(reason, waited_from.elapsed());
        }
        result
    }

    /// Start or drain replicas so that the active ones are within the bounds.
    fn keep_sized(self: &Arc<Self>, state: &mut State) {
        if state.closed || state.failure.is_some() {
            return;
        }
        while state.active() < state.min {
            if !self.start_replica(state) {
                break;
            }
        }
        while state.active() > state.max {
            // Loading replicas go first (nothing to drain), then the least busy.
            let victim = state
                .replicas
                .iter()
                .filter(|(_, r)| r.state != ReplicaState::Draining)
                .min_by_key(|(_, r)| (r.state != ReplicaState::Loading, r.in_flight))
                .map(|(&id, _)| id);
            let Some(id) = victim else { break };
            self.drain(state, id);
        }
    }

    /// Reserve resources for one more replica and start it on a thread of its own; false
    /// if the machine has no room now.
    fn start_replica(self: &Arc<Self>, state: &mut State) -> bool {
        let Some(reservation) = self.resources.try_reserve(&self.options.request) else {
            return false;
        };
        let id = state.next_id;
        state.next_id += 1;
        state.replicas.insert(
            id,
            Replica {
                state: ReplicaState::Loading,
                pid: None,
                port: None,
                client: None,
                child: None,
                lifeline: None,
                in_flight: 0,
                served: 0,
                idle_since: Instant::now(),
                failed_checks: 0,
                stopping_since: None,
                reservation: Arc::new(reservation),
            },
        );
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("rillet-replica-start".to_string())
            .spawn(move || start_replica(me, id));
        if let Err(e) = spawned {
            state.replicas.remove(&id);
            state.failure = Some(format!("cannot start a thread: {e}"));
            return false;
        }
        true
    }

    /// Stop routing to replica `id`; the manager closes its lifeline once it is idle.
    fn drain(&self, state: &mut State, id: u64) {
        let Some(replica) = state.replicas.get_mut(&id) else {
            return;
        };
        replica.state = ReplicaState::Draining;
        if replica.child.is_none() {
            // Not spawned yet: its start thread sees the state and gives up.
            state.replicas.remove(&id);
        }
    }

    /// The least busy ready replica with room, waiting for one; an error once the service
    /// is closed (cancelled) or cannot start replicas (the constructor's failure).
    async fn lease(self: &Arc<Self>) -> Result<Lease> {
        let mut counted = false;
        let leased = loop {
            let notified = self.routable.notified();
            {
                let mut state = self.lock();
                if state.closed {
                    break Err(RilletError::Cancelled);
                }
                if let Some(failure) = &state.failure {
                    break Err(self.function_error(failure.clone()));
                }
                let best = state
                    .replicas
                    .iter_mut()
                    .filter(|(_, r)| {
                        r.state == ReplicaState::Ready && r.in_flight < self.options.per_replica
                    })
                    .min_by_key(|(_, r)| r.in_flight);
                if let Some((&id, replica)) = best
                    && let Some(client) = replica.client.clone()
                {
                    replica.in_flight += 1;
                    if counted {
                        state.waiting_requests -= 1;
                        if state.waiting_requests == 0 {
                            state.waiting_since = None;
                        }
                    }
                    break Ok(Lease {
                        shared: self.clone(),
                        id,
                        client,
                        served: false,
                    });
                }
                if !counted {
                    counted = true;
                    state.waiting_requests += 1;
                    state.waiting_since.get_or_insert_with(Instant::now);
                }
            }
            // Replicas come and go through the manager; wake now and then regardless.
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        };
        if leased.is_err() && counted {
            let mut state = self.lock();
            state.waiting_requests -= 1;
            if state.waiting_requests == 0 {
                state.waiting_since = None;
            }
        }
        leased
    }

    /// A replica failed a request: route around it until a health check says otherwise
    /// (or the manager finds its process gone and replaces it).
    fn mark_unhealthy(&self, id: u64) {
        let mut state = self.lock();
        if let Some(replica) = state.replicas.get_mut(&id)
            && replica.state == ReplicaState::Ready
        {
            replica.state = ReplicaState::Unhealthy;
        }
    }

    /// Send one merged request, retrying on other replicas when its replica fails.
    async fn serve(self: Arc<Self>, batch: RecordBatch) -> Result<RecordBatch> {
        let mut failures = 0;
        loop {
            let mut lease = self.lease().await?;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = tokio::time::timeout(
                self.options.timeout,
                replica::exchange(lease.client.clone(), batch.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ExchangeError::Replica(format!(
                    "no reply within {:?}",
                    self.options.timeout
                )))
            });
            let why = match outcome {
                Ok(reply) => {
                    lease.served = true;
                    return Ok(reply);
                }
                Err(ExchangeError::Function(message)) => {
                    return Err(self.function_error(message));
                }
                Err(ExchangeError::Replica(why)) => why,
            };
            let id = lease.id;
            drop(lease);
            self.mark_unhealthy(id);
            if self.lock().closed {
                return Err(RilletError::Cancelled);
            }
            failures += 1;
            if failures > self.options.max_retries {
                return Err(self.function_error(format!(
                    "its replicas failed the same request {failures} times (last: replica \
                     {id}: {why}); gave up after max_retries={}",
                    self.options.max_retries
                )));
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "{}: replica {id} failed a request ({why}); sending it again (retry \
                 {failures} of at most {})",
                self.name,
                self.options.max_retries
            );
            tokio::time::sleep(retry_backoff(failures)).await;
        }
    }

    fn shutdown(&self) {
        let children: Vec<Arc<Mutex<Child>>> = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            let replicas = std::mem::take(&mut state.replicas);
            replicas
                .into_values()
                .filter_map(|mut r| {
                    drop(r.lifeline.take());
                    r.child
                })
                .collect()
        };
        self.changed.notify_all();
        self.routable.notify_waiters();
        stop_processes(children, Duration::from_secs(1));
    }
}

/// The body of a replica's start thread: launch it and register it once it serves.
fn start_replica(shared: Weak<Shared>, id: u64) {
    let Some(me) = shared.upgrade() else { return };
    let (command, cpus) = (me.command.clone(), me.options.request.cpus);
    let reservation = match me.lock().replicas.get(&id) {
        Some(replica) => replica.reservation.clone(),
        None => return,
    };
    let label = me.name.clone();
    let launched = replica::launch(&command, &label, &reservation, cpus, |pid, child| {
        me.replicas_started.fetch_add(1, Ordering::Relaxed);
        let mut state = me.lock();
        match state.replicas.get_mut(&id) {
            Some(replica) => {
                replica.pid = Some(pid);
                replica.child = Some(child);
            }
            None => {
                let _ = lock_child(&child).kill();
            }
        }
    });
    let mut state = me.lock();
    match launched {
        Ok(ready) => {
            state.failed_starts = 0;
            let closed = state.closed;
            match state.replicas.get_mut(&id) {
                Some(replica) if replica.state == ReplicaState::Loading && !closed => {
                    replica.state = ReplicaState::Ready;
                    replica.port = Some(ready.port);
                    replica.client = Some(ready.client);
                    replica.lifeline = Some(ready.lifeline);
                    replica.idle_since = Instant::now();
                    tracing::info!("{}: replica {id} ready on port {}", me.name, ready.port);
                }
                // Drained or shut down while it loaded: closing the lifeline stops it.
                _ => drop(ready.lifeline),
            }
        }
        Err(LaunchError::Constructor(message)) => {
            state.replicas.remove(&id);
            if !state.closed {
                state.failure.get_or_insert(message);
            }
        }
        Err(LaunchError::Process(message)) => {
            state.replicas.remove(&id);
            if !state.closed {
                state.failed_starts += 1;
                tracing::warn!("{}: {message}", me.name);
                let failed = state.failed_starts;
                if failed > me.options.max_retries {
                    state.failure.get_or_insert(format!(
                        "{failed} replicas in a row died before they were ready (last: {message})"
                    ));
                }
            }
        }
    }
    drop(state);
    me.changed.notify_all();
    me.routable.notify_waiters();
}

/// Merge calls that arrive together into requests of up to `max_batch_rows` rows, each
/// served on a task of its own; ends when the service is dropped.
async fn batch_calls(shared: Weak<Shared>, mut calls: mpsc::UnboundedReceiver<Call>) {
    while let Some(first) = calls.recv().await {
        let Some(me) = shared.upgrade() else { return };
        let limit = me.options.max_batch_rows;
        let deadline = tokio::time::Instant::now() + me.options.max_wait;
        let mut rows = first.batch.num_rows();
        let mut group = vec![first];
        while rows < limit {
            match tokio::time::timeout_at(deadline, calls.recv()).await {
                Ok(Some(call)) => {
                    rows += call.batch.num_rows();
                    group.push(call);
                }
                _ => break,
            }
        }
        tokio::spawn(serve_group(me, group));
    }
}

/// Serve merged calls with one request and hand each caller its rows of the reply.
async fn serve_group(shared: Arc<Shared>, group: Vec<Call>) {
    let schema = group[0].batch.schema();
    let merged = if group.len() == 1 {
        Ok(group[0].batch.clone())
    } else {
        let batches: Vec<&RecordBatch> = group.iter().map(|c| &c.batch).collect();
        concat_batches(&schema, batches)
    };
    let merged = match merged {
        Ok(batch) => batch,
        Err(_) => {
            // Calls whose argument types differ (a plan with several call sites) go alone.
            for call in group {
                let reply = shared.clone().serve(call.batch).await;
                let _ = call.reply.send(reply);
            }
            return;
        }
    };
    let rows = merged.num_rows();
    match shared.clone().serve(merged).await {
        Ok(reply) if reply.num_rows() == rows => {
            let mut offset = 0;
            for call in group {
                let n = call.batch.num_rows();
                let _ = call.reply.send(Ok(reply.slice(offset, n)));
                offset += n;
            }
        }
        Ok(reply) => {
            let error = shared.function_error(format!(
                "returned {} values for {rows} rows",
                reply.num_rows()
            ));
            for call in group {
                let _ = call.reply.send(Err(clone_error(&error)));
            }
        }
        Err(error) => {
            for call in group {
                let _ = call.reply.send(Err(clone_error(&error)));
            }
        }
    }
}

/// The wait before re-sending a request its replica failed for the `failures`-th time
/// (from 1): 50 ms, doubling up to 1.6 s.
fn retry_backoff(failures: usize) -> Duration {
    rillet_common::retry::backoff(Duration::from_millis(50), failures, 5)
}

fn clone_error(error: &RilletError) -> RilletError {
    match error {
        RilletError::Cancelled => RilletError::Cancelled,
        RilletError::UserFunction { operator, message } => RilletError::UserFunction {
            operator: operator.clone(),
            message: message.clone(),
        },
        other => RilletError::internal(other.to_string()),
    }
}

/// The manager thread: reaps dead replicas (which are then replaced), stops drained ones,
/// checks health, and grows or shrinks the pool within its bounds. Ends with the service.
fn manage(shared: Weak<Shared>) {
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let Some(me) = shared.upgrade() else { return };
        if me.lock().closed {
            return;
        }
        me.reap();
        me.check_health();
        me.autoscale();
    }
}

impl Shared {
    /// Forget replicas whose process ended; close the lifeline of drained, idle ones.
    fn reap(self: &Arc<Self>) {
        let mut to_kill = Vec::new();
        {
            let mut state = self.lock();
            let mut gone = Vec::new();
            for (&id, replica) in state.replicas.iter_mut() {
                let Some(child) = &replica.child else {
                    continue;
                };
                if replica.state == ReplicaState::Draining
                    && replica.in_flight == 0
                    && replica.lifeline.is_some()
                {
                    drop(replica.lifeline.take());
                    replica.stopping_since = Some(Instant::now());
                }
                let exited = lock_child(child).try_wait().ok().flatten();
                if let Some(status) = exited {
                    gone.push((id, replica.state, describe_exit(Some(status))));
                } else if replica
                    .stopping_since
                    .is_some_and(|t| t.elapsed() > Duration::from_secs(5))
                {
                    to_kill.push(child.clone());
                }
            }
            for (id, was, how) in gone {
                state.replicas.remove(&id);
                match was {
                    ReplicaState::Draining => {
                        tracing::info!("{}: replica {id} drained and stopped", self.name)
                    }
                    // A loading replica's end is its start thread's to report.
                    ReplicaState::Loading => {}
                    _ => {
                        self.replicas_lost.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("{}: replica {id} {how}; replacing it", self.name);
                    }
                }
            }
            self.keep_sized(&mut state);
        }
        for child in to_kill {
            let _ = lock_child(&child).kill();
        }
        self.changed.notify_all();
        self.routable.notify_waiters();
    }

    /// Every `health_interval`, probe the ready and unhealthy replicas; one failing three
    /// checks in a row is killed (and then replaced), one passing is routed to again.
    fn check_health(self: &Arc<Self>) {
        let probes: Vec<(u64, FlightServiceClient<Channel>)> = {
            let mut state = self.lock();
            let due = state
                .last_health_check
                .is_none_or(|t| t.elapsed() >= self.options.health_interval);
            if !due {
                return;
            }
            state.last_health_check = Some(Instant::now());
            state
                .replicas
                .iter()
                .filter(|(_, r)| matches!(r.state, ReplicaState::Ready | ReplicaState::Unhealthy))
                .filter_map(|(&id, r)| r.client.clone().map(|c| (id, c)))
                .collect()
        };
        for (id, client) in probes {
            let me = Arc::downgrade(self);
            global_runtime().spawn(async move {
                let ok = replica::healthy(client, Duration::from_secs(2)).await;
                let Some(me) = me.upgrade() else { return };
                let mut state = me.lock();
                let Some(replica) = state.replicas.get_mut(&id) else {
                    return;
                };
                if ok {
                    replica.failed_checks = 0;
                    if replica.state == ReplicaState::Unhealthy {
                        replica.state = ReplicaState::Ready;
                        drop(state);
                        me.routable.notify_waiters();
                    }
                    return;
                }
                replica.failed_checks += 1;
                replica.state = ReplicaState::Unhealthy;
                if replica.failed_checks >= 3
                    && let Some(child) = &replica.child
                {
                    tracing::warn!(
                        "{}: replica {id} failed 3 health checks; killing it",
                        me.name
                    );
                    let _ = lock_child(child).kill();
                }
            });
        }
    }

    /// Grow by one replica while requests have waited for a replica with room (and none is
    /// loading); drain one that has been idle for `idle_timeout` above the minimum.
    fn autoscale(self: &Arc<Self>) {
        let mut state = self.lock();
        if state.closed || state.failure.is_some() {
            return;
        }
        let loading = state.count(ReplicaState::Loading);
        let pressed = state
            .waiting_since
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(200));
        if pressed && loading == 0 && state.active() < state.max {
            self.start_replica(&mut state);
            return;
        }
        if state.active() > state.min && state.waiting_requests == 0 {
            let idle = state
                .replicas
                .iter()
                .filter(|(_, r)| {
                    r.state == ReplicaState::Ready
                        && r.in_flight == 0
                        && r.idle_since.elapsed() >= self.options.idle_timeout
                })
                .min_by_key(|(_, r)| r.idle_since)
                .map(|(&id, _)| id);
            if let Some(id) = idle {
                tracing::info!("{}: replica {id} idle; draining it", self.name);
                self.drain(&mut state, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_can_never_run_are_refused_with_what_was_asked() {
        assert!(ServiceOptions::default().validate("svc").is_ok());
        let backwards = ServiceOptions {
            min_replicas: 3,
            max_replicas: 2,
            ..ServiceOptions::default()
        };
        let error = backwards.validate("svc").unwrap_err().to_string();
        assert!(error.contains("svc") && error.contains("(3, 2)"), "{error}");
        for options in [
            ServiceOptions {
                max_replicas: 0,
                min_replicas: 0,
                ..ServiceOptions::default()
            },
            ServiceOptions {
                max_batch_rows: 0,
                ..ServiceOptions::default()
            },
            ServiceOptions {
                max_in_flight: 0,
                ..ServiceOptions::default()
            },
            ServiceOptions {
                per_replica: 0,
                ..ServiceOptions::default()
            },
        ] {
            assert!(options.validate("svc").is_err(), "{options:?}");
        }
    }

    #[test]
    fn retries_back_off_from_50_ms_doubling_to_1_6_s() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| retry_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 1600, 1600]);
        assert_eq!(retry_backoff(0), Duration::from_millis(50));
    }

    #[test]
    fn replica_states_read_as_words() {
        let words: Vec<String> = [
            ReplicaState::Loading,
            ReplicaState::Ready,
            ReplicaState::Unhealthy,
            ReplicaState::Draining,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(words, ["loading", "ready", "unhealthy", "draining"]);
    }
}
