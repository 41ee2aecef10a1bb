//! The service: its replicas, the client that batches and routes calls to them, and the
//! manager thread that keeps the pool healthy and sized.
//!
//! - `client`: the caller's [`Service`] handle (start, call, scale, status, shutdown).
//! - `admission`: callers wait for room among the calls in flight.
//! - `routing`: dynamic batching, the least busy ready replica, retries elsewhere.
//! - `autoscaling`: replicas started and drained within the bounds.
//! - `health`: the manager thread that reaps, probes and resizes.
//!
//! All of them share one `Shared` behind the handle; its `State` is one mutex.

mod admission;
mod autoscaling;
mod client;
mod health;
mod options;
mod routing;
mod status;

use std::collections::BTreeMap;
use std::process::{Child, ChildStdin};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::flight_service_client::FlightServiceClient;
use rillet_common::{Result, RilletError};
use rillet_operator::resources::{Reservation, ResourceManager};
use rillet_processes::{ProcessCommand, stop_processes};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::transport::Channel;

pub use client::Service;
pub use options::ServiceOptions;
pub use status::{ReplicaState, ReplicaStatus, ServiceStatus};

/// What the caller's handle, the batching task, the replicas' start threads and the
/// manager thread share.
#[derive(Debug)]
struct Shared {
    name: String,
    command: ProcessCommand,
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
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn function_error(&self, message: String) -> RilletError {
        RilletError::UserFunction {
            operator: self.name.clone(),
            message,
        }
    }

    pub(super) fn shutdown(&self) {
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
