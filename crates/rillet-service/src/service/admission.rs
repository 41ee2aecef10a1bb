//! Admission: callers wait for room among the calls in flight and for a first ready
//! replica (backpressure).

use std::time::{Duration, Instant};

use rillet_common::{Result, RilletError};
use rillet_operator::{OperatorMetrics, WaitReason};

use super::{ReplicaState, Shared};

impl Shared {
    /// Wait for room among the admitted calls and for a first ready replica.
    pub(super) fn admit(&self, metrics: Option<&OperatorMetrics>) -> Result<()> {
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
}
