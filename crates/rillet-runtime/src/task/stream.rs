//! A streaming operator's task: batches and watermarks through it, its state at each barrier.

use std::sync::Arc;
use std::time::Instant;

use rillet_common::{Result, RilletError};

use super::{OutputRouter, TaskGuard};
use crate::channel::InputGate;
use crate::checkpointing::TaskLink;
use crate::message::StreamMessage;
use crate::metrics::OperatorMetrics;
use crate::stream::OperatorTask;

/// Runs a streaming operator's task: batches through the operator, watermarks to it (and
/// on, as it says), its own watermarks out after the rows they follow, and at each aligned
/// barrier a snapshot of its state.
pub(crate) async fn run_stream(
    mut operator: Box<dyn OperatorTask>,
    mut input: InputGate,
    mut output: OutputRouter,
    metrics: Arc<OperatorMetrics>,
    link: Option<TaskLink>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    // The last watermark sent: watermarks only ever advance.
    let mut sent: Option<i64> = None;
    // Whether the run's final barrier (a stop's savepoint, or the checkpoint after every
    // source ended) has passed: then the state it snapshotted lives on in it.
    let mut final_barrier_passed = false;
    // Whether the task told the tasks after it that it is idle (see `idle_timeout`), and
    // when it last had a row (barriers and watermarks do not count).
    let mut idle = false;
    let mut last_row = Instant::now();
    loop {
        let message = match operator.idle_timeout().filter(|_| !idle) {
            Some(timeout) => {
                match tokio::time::timeout(timeout.saturating_sub(last_row.elapsed()), input.recv())
                    .await
                {
                    Ok(message) => message?,
                    Err(_) => {
                        // No row for the idle timeout: the last watermark due, then idle.
                        idle = true;
                        let flushed = operator
                            .flush_watermark()
                            .filter(|&w| sent.is_none_or(|s| w > s));
                        if let Some(watermark) = flushed {
                            sent = Some(watermark);
                            if !output.send(StreamMessage::Watermark(watermark)).await? {
                                return Ok(Vec::new());
                            }
                        }
                        if !output.send(StreamMessage::Idle).await? {
                            return Ok(Vec::new());
                        }
                        continue;
                    }
                }
            }
            None => input.recv().await?,
        };
        let (produced, watermark) = match message {
            Some(StreamMessage::Batch(batch)) => {
                idle = false;
                last_row = Instant::now();
                metrics.add_input(batch.num_rows());
                let produced = operator.process(batch)?;
                (produced, operator.take_watermark())
            }
            // Every input idle: so is this task, for the tasks after it.
            Some(StreamMessage::Idle) => {
                if !output.send(StreamMessage::Idle).await? {
                    return Ok(Vec::new());
                }
                continue;
            }
            Some(StreamMessage::Watermark(watermark)) => operator.on_watermark(watermark)?,
            Some(StreamMessage::Barrier(barrier)) => {
                let state = operator.snapshot()?;
                if let Some(link) = &link {
                    link.ack(barrier.checkpoint_id, state).await?;
                }
                final_barrier_passed |= barrier.last;
                if !output.send(StreamMessage::Barrier(barrier)).await? {
                    return Ok(Vec::new());
                }
                continue;
            }
            Some(StreamMessage::End) if final_barrier_passed => {
                // What `finish` would emit (windows still open at a stop) is in the
                // snapshot: a resume emits it. A bounded input's real end fired every
                // window before the final barrier, with the end-of-input watermark.
                output.end().await;
                return Ok(Vec::new());
            }
            Some(StreamMessage::End) => {
                for batch in operator.finish()? {
                    if batch.num_rows() > 0 && !output.send(StreamMessage::Batch(batch)).await? {
                        return Ok(Vec::new());
                    }
                }
                output.end().await;
                return Ok(Vec::new());
            }
            None => return Err(RilletError::Cancelled),
        };
        let late = operator.take_dropped_late();
        if late > 0 {
            metrics.add_dropped_late(late);
        }
        for batch in produced {
            if batch.num_rows() == 0 {
                continue;
            }
            metrics.add_output(batch.num_rows(), batch.get_array_memory_size());
            if !output.send(StreamMessage::Batch(batch)).await? {
                return Ok(Vec::new());
            }
        }
        if let Some(watermark) = watermark.filter(|&w| sent.is_none_or(|s| w > s)) {
            sent = Some(watermark);
            if !output.send(StreamMessage::Watermark(watermark)).await? {
                return Ok(Vec::new());
            }
        }
    }
}
