//! What exactly-once sinks to external systems share: a writer that holds a task's rows
//! until the checkpoint barrier and hands them over as the task's checkpoint state, so
//! that the sink writes them out (idempotently) once the checkpoint has completed.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rillet_common::{Result, RilletError};
use rillet_runtime::{BatchWriter, SinkContext, decode_batches, encode_batches};

/// Writes rows out: the external side of a staged sink.
pub(crate) trait RowsOut: Send + Sync + 'static {
    /// Write `batches` out in one go, for checkpoint `checkpoint` (`None` for a job without
    /// checkpoints, at the end of its input). Blocking.
    fn write_out(&self, checkpoint: Option<u64>, batches: &[RecordBatch]) -> Result<()>;
}

/// The rows of every task's state, in order.
pub(crate) fn decode_states(states: &[Vec<u8>]) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for state in states {
        batches.extend(decode_batches(state)?);
    }
    Ok(batches)
}

/// A sink task's writer: rows since the last barrier, staged in memory.
pub(crate) struct StagedWriter<S: RowsOut> {
    out: Arc<S>,
    schema: SchemaRef,
    pending: Vec<RecordBatch>,
    checkpointing: bool,
}

impl<S: RowsOut + Clone> StagedWriter<S> {
    /// A sink task's writer for `sink` (what its `Sink::open` returns).
    pub(crate) fn boxed(
        sink: &S,
        schema: SchemaRef,
        context: &SinkContext,
    ) -> Box<dyn BatchWriter> {
        Box::new(Self {
            out: Arc::new(sink.clone()),
            schema,
            pending: Vec::new(),
            checkpointing: context.checkpointing,
        })
    }
}

#[async_trait]
impl<S: RowsOut> BatchWriter for StagedWriter<S> {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.pending.push(batch);
        Ok(())
    }

    async fn checkpoint(&mut self, _checkpoint: u64) -> Result<Option<Vec<u8>>> {
        let state = encode_batches(&self.schema, &self.pending)?;
        self.pending.clear();
        Ok(Some(state))
    }

    async fn close(self: Box<Self>) -> Result<Option<String>> {
        // With checkpoints, rows after the last barrier belong to no checkpoint: a restart
        // replays them. Without, the end of the input is the commit.
        if !self.checkpointing {
            let (out, pending) = (self.out.clone(), self.pending);
            tokio::task::spawn_blocking(move || out.write_out(None, &pending))
                .await
                .map_err(|e| RilletError::internal(format!("sink write task: {e}")))??;
        }
        Ok(None)
    }
}
