//! A sink's task: batches to its writer, a snapshot of it at each barrier.

use std::sync::Arc;

use rillet_common::{Result, RilletError};

use super::TaskGuard;
use crate::channel::InputGate;
use crate::checkpointing::TaskLink;
use crate::message::StreamMessage;
use crate::metrics::OperatorMetrics;

pub(crate) async fn run_sink(
    mut writer: Box<dyn crate::sink::BatchWriter>,
    mut input: InputGate,
    metrics: Arc<OperatorMetrics>,
    link: Option<TaskLink>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    loop {
        match input.recv().await? {
            Some(StreamMessage::Batch(batch)) => {
                metrics.add_input(batch.num_rows());
                metrics.add_output(batch.num_rows(), batch.get_array_memory_size());
                match writer.write(batch).await {
                    Ok(()) => {}
                    // The caller stopped reading (closed iterator): nothing more to do.
                    Err(RilletError::Cancelled) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                }
            }
            Some(StreamMessage::Barrier(barrier)) => {
                let state = writer.checkpoint(barrier.checkpoint_id).await?;
                if let Some(link) = &link {
                    link.ack(barrier.checkpoint_id, state).await?;
                }
            }
            Some(StreamMessage::Watermark(_) | StreamMessage::Idle) => {}
            Some(StreamMessage::End) => break,
            None => return Err(RilletError::Cancelled),
        }
    }
    writer.close().await
}
