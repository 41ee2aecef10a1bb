//! Streaming vertices: sources that read splits from a position they can report and be
//! restored to, and operators whose state is snapshotted at checkpoint barriers.
//!
//! A [`StreamSource`] is split-based. Its enumerator ([`StreamSource::splits`]) names every
//! split (a Kafka partition, a Redis stream, a sequence partition); the runtime assigns the
//! splits to the vertex's tasks and opens one [`SourceReader`] per task with the positions
//! to start from: none on a fresh start, the checkpointed ones on a restore. At a
//! checkpoint the reader reports each split's position ([`SourceReader::positions`]) as of
//! the last batch it returned, and the runtime stores them as the task's state. Positions
//! are kept per split, not per task, so a restore may assign the splits differently.
//!
//! A [`StreamOperator`] runs one [`OperatorTask`] per task: rows in, rows out, and at a
//! barrier a snapshot of its state, from which [`StreamOperator::open`] restores it.
//!
//! Event time travels as watermarks, in band like barriers: an operator that assigns
//! event time generates them ([`OperatorTask::take_watermark`]), every task merges its
//! inputs' watermarks (the least of them), and windowed operators fire on them
//! ([`OperatorTask::on_watermark`]). A source task sends the end watermark when its splits
//! end, or at once when it has none, so that an idle task holds nothing back.

use std::collections::BTreeMap;
use std::fmt::Debug;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rillet_common::{Result, RilletError};
use serde::{Deserialize, Serialize};

use crate::keygroups::TaskPlacement;

/// One split given to a reader, and where to start reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitAssignment {
    /// The split's id, as the enumerator named it.
    pub split: String,
    /// The position to resume from, as the reader reported it at the restored checkpoint;
    /// `None` to start from the split's beginning.
    pub position: Option<Vec<u8>>,
}

/// Reads the splits assigned to one source task.
#[async_trait]
pub trait SourceReader: Send {
    /// The next batch; `Ok(None)` once every assigned split has ended (a bounded source).
    /// An unbounded source waits here for data. Must be cancel-safe: dropped before it
    /// returns, it has consumed nothing (the task drops it to inject a barrier).
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>>;

    /// Each assigned split's position as of the last batch returned: what a restore
    /// passes back in [`SplitAssignment::position`].
    fn positions(&self) -> Vec<(String, Vec<u8>)>;
}

/// An unbounded (or bounded) source read by split (see the module docs).
pub trait StreamSource: Send + Sync + Debug {
    /// One line for `explain`.
    fn describe(&self) -> String;
    /// The schema of its batches.
    fn schema(&self) -> SchemaRef;
    /// The enumerator: every split of the source.
    fn splits(&self) -> Result<Vec<String>>;
    /// A reader for `assigned` splits.
    fn open(&self, assigned: Vec<SplitAssignment>) -> Result<Box<dyn SourceReader>>;
}

/// A streaming operator: per-batch processing with state snapshotted at barriers.
pub trait StreamOperator: Send + Sync + Debug {
    /// Display name.
    fn name(&self) -> String;
    /// The schema of its output.
    fn output_schema(&self) -> SchemaRef;
    /// Input columns the operator keys its state by: its input is then hash-partitioned
    /// on them, so every row of a key reaches the same task. `None` for an operator
    /// without keyed state.
    fn key_columns(&self) -> Option<Vec<usize>> {
        None
    }
    /// The instance of the task at `placement`, restored from `restored`: nothing on a
    /// fresh start, else the state every task of the operator snapshotted (at whatever
    /// parallelism), of which a keyed operator keeps the keys of the key groups
    /// `placement` owns ([`TaskPlacement::owns`]).
    fn open(&self, placement: TaskPlacement, restored: &[Vec<u8>])
    -> Result<Box<dyn OperatorTask>>;
}

/// One task of a [`StreamOperator`].
pub trait OperatorTask: Send {
    /// Process one input batch; returns the output batches (possibly none).
    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>>;
    /// The task's state at a barrier; `None` when it keeps none.
    fn snapshot(&mut self) -> Result<Option<Vec<u8>>>;
    /// The input has ended: output anything still held.
    fn finish(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }
    /// The input's watermark advanced to `watermark` (see
    /// [`StreamMessage::Watermark`](crate::StreamMessage::Watermark)): output what it
    /// completes (windows that end by then) and say which watermark to send on, if any.
    /// By default the task holds nothing back and passes the watermark on.
    fn on_watermark(&mut self, watermark: i64) -> Result<(Vec<RecordBatch>, Option<i64>)> {
        Ok((Vec::new(), Some(watermark)))
    }
    /// How long the task may see no row before it tells the tasks after it that it is idle
    /// ([`StreamMessage::Idle`](crate::StreamMessage::Idle)); `None`: never.
    fn idle_timeout(&self) -> Option<std::time::Duration> {
        None
    }
    /// The watermark of every row processed so far, even one not yet due: what the task
    /// sends before it goes idle.
    fn flush_watermark(&mut self) -> Option<i64> {
        None
    }
    /// A watermark the task generates from the rows it has processed, if one is due: what
    /// an event-time assigner returns after a batch. The runtime sends it after the
    /// batch's output when it passes the last watermark sent.
    fn take_watermark(&mut self) -> Option<i64> {
        None
    }
    /// Rows dropped as too late for their windows since the last call (counted in the
    /// operator's metrics, so that no row vanishes unseen).
    fn take_dropped_late(&mut self) -> u64 {
        0
    }
}

/// A source task's checkpointed state: each split's position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    pub positions: BTreeMap<String, Vec<u8>>,
}

impl SourceState {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("source positions always encode")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| RilletError::Checkpoint(format!("unreadable source positions: {e}")))
    }
}

/// Deal `splits` to `tasks` readers: split `k` goes to task `k % tasks`, starting at its
/// position in `restored` (the merged positions of every task of the source; empty to
/// start every split from its beginning).
pub fn assign_splits(
    splits: &[String],
    tasks: usize,
    restored: &BTreeMap<String, Vec<u8>>,
) -> Vec<Vec<SplitAssignment>> {
    let mut assigned: Vec<Vec<SplitAssignment>> = (0..tasks.max(1)).map(|_| Vec::new()).collect();
    for (k, split) in splits.iter().enumerate() {
        assigned[k % tasks.max(1)].push(SplitAssignment {
            split: split.clone(),
            position: restored.get(split).cloned(),
        });
    }
    assigned
}

/// Rows as checkpoint state: `batches` (of `schema`) as one Arrow IPC stream.
pub fn encode_batches(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The rows [`encode_batches`] wrote; a damaged state is a checkpoint error.
pub fn decode_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    guard_ipc(|| arrow::ipc::reader::StreamReader::try_new(bytes, None)?.collect())
        .map_err(|e| RilletError::Checkpoint(format!("rows in a checkpoint state: {e}")))
}

/// Run `read`, an Arrow IPC read of bytes that may be damaged, turning a panic of the
/// reader into an error: arrow-ipc 59 unwraps on some malformed inputs (found by the
/// `operator_state` fuzz corpus), and damaged bytes must be an error, never a crash.
pub fn guard_ipc<T>(
    read: impl FnOnce() -> std::result::Result<T, arrow::error::ArrowError>,
) -> std::result::Result<T, arrow::error::ArrowError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(arrow::error::ArrowError::IpcError(format!(
            "malformed Arrow IPC data (the reader failed: {why})"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_dealt_round_robin_with_their_positions() {
        let splits: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
        let restored = BTreeMap::from([("s3".to_string(), vec![7])]);
        let assigned = assign_splits(&splits, 2, &restored);
        let names: Vec<Vec<&str>> = assigned
            .iter()
            .map(|a| a.iter().map(|s| s.split.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["s0", "s2", "s4"], vec!["s1", "s3"]]);
        assert_eq!(assigned[1][1].position, Some(vec![7]));
        assert_eq!(assigned[0][0].position, None);
    }

    #[test]
    fn source_state_round_trips_and_rejects_garbage() {
        let state = SourceState {
            positions: BTreeMap::from([("a".to_string(), vec![1, 2])]),
        };
        assert_eq!(SourceState::from_bytes(&state.to_bytes()).unwrap(), state);
        let err = SourceState::from_bytes(b"{not json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unreadable source positions"), "{err}");
    }
}
