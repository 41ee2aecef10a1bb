//! Sizing the pool: replicas started up to the minimum and while requests wait, drained
//! when idle above the minimum or beyond a lowered maximum.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rillet_processes::lock_child;

use super::{Replica, ReplicaState, Shared, State};
use crate::replica::{self, LaunchError};

impl Shared {
    /// Start or drain replicas so that the active ones are within the bounds.
    pub(super) fn keep_sized(self: &Arc<Self>, state: &mut State) {
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

    /// Grow by one replica while requests have waited for a replica with room (and none is
    /// loading); drain one that has been idle for `idle_timeout` above the minimum.
    pub(super) fn autoscale(self: &Arc<Self>) {
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
