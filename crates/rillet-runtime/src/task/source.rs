//! A source's task: its splits read, positions recorded and barriers injected on command.

use std::sync::Arc;

use rillet_common::{Result, RilletError};
use tokio::sync::mpsc;

use super::{OutputRouter, TaskGuard};
use crate::checkpointing::{SourceCommand, TaskLink};
use crate::message::CheckpointBarrier;
use crate::message::{StreamMessage, WATERMARK_END};
use crate::metrics::OperatorMetrics;
use crate::stream::{SourceReader, SourceState};

/// Runs a source task: reads its splits and, on the checkpoint loop's command, records
/// their positions, acknowledges, and injects the barrier in order with the batches. A
/// bounded source that has read everything waits for the final barrier before it ends,
/// so that the last rows are committed too.
pub(crate) async fn run_source(
    mut reader: Box<dyn SourceReader>,
    idle: bool,
    mut commands: Option<mpsc::Receiver<SourceCommand>>,
    mut output: OutputRouter,
    metrics: Arc<OperatorMetrics>,
    link: Option<TaskLink>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    let mut ended = false;
    let mut pending: Option<SourceCommand> = None;
    // A task without splits reads nothing, ever: its watermark must not hold back event
    // time downstream.
    if idle && !output.send(StreamMessage::Watermark(WATERMARK_END)).await? {
        return Ok(Vec::new());
    }
    loop {
        if pending.is_none()
            && let Some(rx) = commands.as_mut()
        {
            pending = if ended {
                Some(rx.recv().await.ok_or(RilletError::Cancelled)?)
            } else {
                rx.try_recv().ok()
            };
        }
        if let Some(command) = pending.take() {
            let (id, last) = match command {
                SourceCommand::Barrier(id) => (id, false),
                SourceCommand::FinalBarrier(id) => (id, true),
            };
            let state = SourceState {
                positions: reader.positions().into_iter().collect(),
            };
            if let Some(link) = &link {
                link.ack(id, Some(state.to_bytes())).await?;
            }
            let barrier = StreamMessage::Barrier(CheckpointBarrier {
                checkpoint_id: id,
                last,
            });
            if !output.send(barrier).await? {
                return Ok(Vec::new());
            }
            if last {
                output.end().await;
                return Ok(Vec::new());
            }
            continue;
        }
        if ended {
            // No checkpoints: nothing to wait for.
            output.end().await;
            return Ok(Vec::new());
        }
        let next = match commands.as_mut() {
            Some(rx) => tokio::select! {
                biased;
                command = rx.recv() => {
                    pending = Some(command.ok_or(RilletError::Cancelled)?);
                    continue;
                }
                next = reader.next_batch() => next?,
            },
            None => reader.next_batch().await?,
        };
        match next {
            Some(batch) => {
                if batch.num_rows() == 0 {
                    continue;
                }
                metrics.add_output(batch.num_rows(), batch.get_array_memory_size());
                if !output.send(StreamMessage::Batch(batch)).await? {
                    return Ok(Vec::new());
                }
                // Rows sent, positions not yet snapshotted: a crash here replays them.
                fail::fail_point!("source-after-emit", |_| Err(RilletError::Checkpoint(
                    "failpoint source-after-emit".into()
                )));
            }
            None => {
                ended = true;
                // Every window may fire now, before the final checkpoint commits them.
                if !idle && !output.send(StreamMessage::Watermark(WATERMARK_END)).await? {
                    return Ok(Vec::new());
                }
                if let Some(link) = &link {
                    link.source_ended().await?;
                }
            }
        }
    }
}
