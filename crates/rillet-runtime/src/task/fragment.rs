//! A relational fragment's task: one partition of a DataFusion plan, sent on.

use std::sync::Arc;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use rillet_common::Result;

use super::{OutputRouter, TaskGuard};
use crate::message::StreamMessage;
use crate::metrics::OperatorMetrics;

pub(crate) async fn run_fragment(
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    task_ctx: Arc<TaskContext>,
    mut output: OutputRouter,
    metrics: Arc<OperatorMetrics>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    let mut stream = plan.execute(partition, task_ctx)?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        metrics.add_output(batch.num_rows(), batch.get_array_memory_size());
        if !output.send(StreamMessage::Batch(batch)).await? {
            // Downstream needs no more rows (a limit was reached): stop reading.
            return Ok(Vec::new());
        }
    }
    output.end().await;
    Ok(Vec::new())
}
