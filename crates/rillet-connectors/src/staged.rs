//! What exactly-once sinks to external systems share: a writer that holds a task's rows
//! until the checkpoint barrier and hands them over as the task's checkpoint state, so
//! that the sink writes them out (idempotently) once the checkpoint has completed.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use async_trait::async_trait;
use rillet_common::{Result, RilletError};
use rillet_runtime::{BatchWriter, SinkContext};

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
        let reader = StreamReader::try_new(state.as_slice(), None)
            .map_err(|e| RilletError::Checkpoint(format!("staged rows: {e}")))?;
        for batch in reader {
            batches.push(batch.map_err(|e| RilletError::Checkpoint(format!("staged rows: {e}")))?);
        }
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
    pub(crate) fn boxed(sink: &S, schema: SchemaRef, context: &SinkContext) -> Box<dyn BatchWriter> {
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
        let mut writer = StreamWriter::try_new(Vec::new(), &self.schema)?;
        for batch in self.pending.drain(..) {
            writer.write(&batch)?;
        }
        writer.finish()?;
        Ok(Some(writer.into_inner()?))
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
