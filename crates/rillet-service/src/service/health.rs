//! The manager thread: dead replicas reaped (and replaced), drained ones stopped, live
//! ones probed for health.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use rillet_operator::global_runtime;
use rillet_processes::{describe_exit, lock_child};
use tonic::transport::Channel;

use super::{ReplicaState, Shared};
use crate::replica;

/// The manager thread: reaps dead replicas (which are then replaced), stops drained ones,
/// checks health, and grows or shrinks the pool within its bounds. Ends with the service.
pub(super) fn manage(shared: Weak<Shared>) {
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
}
