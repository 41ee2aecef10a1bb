//! What [`Service::status`](super::Service::status) shows: each replica's state and the service's counters.

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

#[cfg(test)]
mod tests {
    use super::*;

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
