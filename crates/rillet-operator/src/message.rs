//! What travels on an edge: data and, in band with it, control messages.

use arrow::array::RecordBatch;

/// A checkpoint barrier. Sources inject it; operators forward it in order with the data so
/// that everything before it belongs to checkpoint `checkpoint_id` (issue #5 builds the
/// coordinator on this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointBarrier {
    /// Monotonic id of the checkpoint this barrier belongs to.
    pub checkpoint_id: u64,
    /// The run's final snapshot (a stop's savepoint, or the checkpoint taken after every
    /// source ended): no row may follow it, so a task with work in flight finishes that
    /// work before passing the barrier on, instead of snapshotting it.
    pub last: bool,
}

impl CheckpointBarrier {
    /// The barrier of checkpoint `checkpoint_id`, not the last.
    pub fn new(checkpoint_id: u64) -> Self {
        Self {
            checkpoint_id,
            last: false,
        }
    }
}

/// The watermark of an input that has ended: every window may fire.
pub const WATERMARK_END: i64 = i64::MAX;

/// One message on a dataflow edge.
#[derive(Debug, Clone)]
pub enum StreamMessage {
    /// A batch of rows.
    Batch(RecordBatch),
    /// A checkpoint barrier, kept in order with the batches around it.
    Barrier(CheckpointBarrier),
    /// Event time has reached this value on the sending task: rows with an earlier event
    /// time should no longer come (a window ending at or before it may fire). In the event
    /// time column's own unit; [`WATERMARK_END`] once the input is done.
    Watermark(i64),
    /// The sending task has seen no row for its idle timeout: until it sends a row or a
    /// watermark again, it does not hold back the event time of the tasks after it (a
    /// quiet Kafka partition, an empty stream).
    Idle,
    /// The sending task has no more data.
    End,
}

impl StreamMessage {
    /// Bytes this message holds in memory (Arrow buffer sizes for a batch, 0 for control
    /// messages); what the channel budget counts.
    pub fn memory_size(&self) -> usize {
        match self {
            StreamMessage::Batch(batch) => batch.get_array_memory_size(),
            _ => 0,
        }
    }
}
