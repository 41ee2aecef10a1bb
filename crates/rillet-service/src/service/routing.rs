//! Routing: calls merged by dynamic batching, each request sent to the least busy ready
//! replica and re-sent to another when its replica fails.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow_flight::flight_service_client::FlightServiceClient;
use rillet_common::{Result, RilletError};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::{Call, ReplicaState, Shared};
use crate::replica::{self, ExchangeError};

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

impl Shared {
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
}

/// Merge calls that arrive together into requests of up to `max_batch_rows` rows, each
/// served on a task of its own; ends when the service is dropped.
pub(super) async fn batch_calls(shared: Weak<Shared>, mut calls: mpsc::UnboundedReceiver<Call>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_50_ms_doubling_to_1_6_s() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| retry_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 1600, 1600]);
        assert_eq!(retry_backoff(0), Duration::from_millis(50));
    }
}
