//! The bodies of a job's tasks, one module per vertex kind, and what they share: each
//! task reads its input gate (a source reads its splits), runs its operator and sends on
//! through its [`OutputRouter`].

mod fragment;
mod function;
mod output;
mod sink;
mod source;
mod stream;

pub(crate) use fragment::run_fragment;
pub(crate) use function::run_function;
pub(crate) use output::OutputRouter;
pub(crate) use sink::run_sink;
pub(crate) use source::run_source;
pub(crate) use stream::run_stream;

use std::sync::Arc;

use rillet_common::{Result, RilletError};

use crate::channel::{ChannelReceiver, InputGate};
use crate::graph::VertexId;
use crate::metrics::OperatorMetrics;

/// Marks a task finished on its operator when it ends, however it ends.
struct TaskGuard(Arc<OperatorMetrics>);

impl TaskGuard {
    fn start(metrics: &Arc<OperatorMetrics>) -> Self {
        metrics.task_started();
        Self(metrics.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.task_finished();
    }
}

/// The input gate over a task's channels, with the vertex feeding them.
pub(crate) fn gate(
    inputs: Vec<(VertexId, ChannelReceiver)>,
    metrics: &Arc<OperatorMetrics>,
    name: &str,
) -> Result<(VertexId, InputGate)> {
    let upstream = inputs
        .first()
        .map(|(v, _)| *v)
        .ok_or_else(|| missing_input(name))?;
    let receivers = inputs.into_iter().map(|(_, rx)| rx).collect();
    Ok((upstream, InputGate::new(receivers, Some(metrics.clone()))))
}

fn missing_input(name: &str) -> RilletError {
    RilletError::internal(format!("vertex '{name}' has no input channel"))
}

pub(crate) fn missing_output(name: &str) -> RilletError {
    RilletError::internal(format!("vertex '{name}' has no output channel"))
}
