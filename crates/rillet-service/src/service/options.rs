//! How a service is sized, resourced and called.

use std::time::Duration;

use rillet_common::{Result, RilletError};
use rillet_operator::resources::ResourceRequest;

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
    /// Refuse options that can never run, naming `who` and what was asked.
    pub(super) fn validate(&self, who: &str) -> Result<()> {
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
}
