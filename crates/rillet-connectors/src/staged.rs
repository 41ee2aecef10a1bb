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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::Mutex;

    /// Remembers what it was asked to write out.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<i64>>>);

    impl RowsOut for Recorder {
        fn write_out(&self, _checkpoint: Option<u64>, batches: &[RecordBatch]) -> Result<()> {
            self.0.lock().unwrap().extend(values(batches));
            Ok(())
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
    }

    fn rows(values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    fn values(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    fn checkpointing() -> SinkContext {
        SinkContext {
            checkpointing: true,
            ..SinkContext::default()
        }
    }

    /// Checkpoint 1 is aborted (its state never reaches a manifest): its rows must still
    /// be in the state of checkpoint 2, the next one to complete.
    #[test]
    fn rows_of_an_aborted_checkpoint_go_into_the_next_one() {
        rillet_runtime::block_on(async {
            let mut writer = StagedWriter::boxed(&Recorder::default(), schema(), &checkpointing());
            writer.write(rows(&[1, 2])).await.unwrap();
            let _aborted = writer.checkpoint(1).await.unwrap();
            writer.write(rows(&[3])).await.unwrap();
            let state = writer.checkpoint(2).await.unwrap().unwrap();
            assert_eq!(values(&decode_states(&[state]).unwrap()), vec![1, 2, 3]);
        });
    }
}
