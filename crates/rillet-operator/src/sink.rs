//! Sinks: where a job's rows end up. A [`Sink`] is opened once per sink task as a
//! [`BatchWriter`]; exactly-once sinks stage what each checkpoint covers and commit it when
//! the checkpoint completes.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rillet_common::Result;

use crate::BlockingPool;

/// Where a job's output goes. The worker opens one [`BatchWriter`] per sink task.
#[async_trait]
pub trait Sink: Send + Sync + Debug {
    /// One line for `explain`.
    fn describe(&self) -> String;
    /// Called once before any task opens a writer (e.g. to clear a directory).
    fn prepare(&self) -> Result<()> {
        Ok(())
    }
    /// A writer for sink task `partition`. Blocking work (encoding, compression, file
    /// writes) belongs on `blocking`, the sink's pool: a job ends only after the calls
    /// running there, even when it is cancelled.
    fn open(
        &self,
        partition: usize,
        schema: SchemaRef,
        blocking: &BlockingPool,
        context: &SinkContext,
    ) -> Result<Box<dyn BatchWriter>>;
    /// Called once every task has finished, when all succeeded (before [`finish`]): make
    /// the job's output visible, all of it at once where the sink can (a batch write's
    /// staged files). An error fails the job.
    ///
    /// [`finish`]: Sink::finish
    fn publish(&self) -> Result<()> {
        Ok(())
    }
    /// Called once after every task finished or was cancelled.
    fn finish(&self) {}
    /// Checkpoint `checkpoint` has completed: make visible what its tasks' `states` (what
    /// [`BatchWriter::checkpoint`] returned) hold. Runs on a blocking thread. Must be
    /// idempotent: recovery repeats it for the restored checkpoint, because a crash may
    /// have fallen between the checkpoint completing and this commit.
    fn commit(&self, context: &SinkContext, checkpoint: u64, states: &[Vec<u8>]) -> Result<()> {
        let _ = (context, checkpoint, states);
        Ok(())
    }
    /// Before a checkpointed job starts: commit what the restored checkpoint `checkpoint`
    /// covers (`states`, its tasks' states), undo what later checkpoints committed
    /// (`Some(0)`: none could be restored, undo everything), and discard what never
    /// completed checkpoints left behind. `None`: the job never checkpointed before. Only
    /// what carries `context.lineage` is this job's to undo or discard.
    fn recover(
        &self,
        context: &SinkContext,
        checkpoint: Option<u64>,
        states: &[Vec<u8>],
    ) -> Result<()> {
        let _ = (context, checkpoint, states);
        Ok(())
    }
}

/// What a sink task knows about the job's checkpoints.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// Whether the job checkpoints; if not, an exactly-once sink commits when its input
    /// ends.
    pub checkpointing: bool,
    /// The id the job's first checkpoint will have (names written before it carry it).
    pub first_checkpoint: u64,
    /// The newest checkpoint whose commit has run (0: none).
    pub committed: Arc<AtomicU64>,
    /// The most bytes of rows a sink task may carry past checkpoints that did not complete
    /// (aborted: their state failed to write) before it fails the job, which a restart then
    /// replays from its latest checkpoint: a checkpoint store that keeps failing must not
    /// grow a sink's memory without bound. The engine's memory budget; no limit by default.
    pub carry_limit_bytes: usize,
    /// The checkpoint store's lineage, or a run's own tag without checkpoints (12 hex
    /// digits; see `rillet_checkpoint::identity`): sinks put it in every name, header or
    /// marker they commit, and recovery undoes or discards only what carries it.
    pub lineage: String,
}

impl Default for SinkContext {
    fn default() -> Self {
        Self {
            checkpointing: false,
            first_checkpoint: 0,
            committed: Arc::default(),
            carry_limit_bytes: usize::MAX,
            lineage: rillet_common::random_tag(),
        }
    }
}

/// Writes the batches of one sink task.
#[async_trait]
pub trait BatchWriter: Send {
    /// Write one batch.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;
    /// At the barrier of checkpoint `checkpoint`: seal what was written since the last
    /// barrier as part of it and return the task's state for the snapshot (the
    /// transactions [`Sink::commit`] will commit); `None` for a sink that is not
    /// exactly-once, whose writes are visible as they happen.
    async fn checkpoint(&mut self, checkpoint: u64) -> Result<Option<Vec<u8>>> {
        let _ = checkpoint;
        Ok(None)
    }
    /// Finish; returns the files written (none for a sink that writes no files).
    async fn close(self: Box<Self>) -> Result<Vec<String>>;
}
