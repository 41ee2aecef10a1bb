//! Where a task's output goes: one channel, the next of several, or each row's key-group
//! owner.

use arrow::array::{ArrayRef, RecordBatch};
use rillet_common::Result;

use crate::channel::ChannelSender;
use crate::graph::EdgeKind;
use crate::message::StreamMessage;

/// Where a task's output goes.
pub(crate) struct OutputRouter {
    pub(crate) kind: EdgeKind,
    pub(crate) senders: Vec<ChannelSender>,
    pub(crate) next: usize,
}

impl OutputRouter {
    /// Send to the next receiver; `false` when downstream has gone away (it needs no more).
    pub(crate) async fn send(&mut self, message: StreamMessage) -> Result<bool> {
        let target = match (&self.kind, &message) {
            (EdgeKind::Forward, _) => 0,
            // Barriers and watermarks go to every downstream task: each must see the
            // checkpoint, and each merges the watermarks of all its inputs.
            (_, StreamMessage::Barrier(_) | StreamMessage::Watermark(_) | StreamMessage::Idle) => {
                for sender in &self.senders {
                    if sender.send(message.clone()).await.is_err() {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            (EdgeKind::Rebalance, _) => {
                self.next = (self.next + 1) % self.senders.len();
                self.next
            }
            (EdgeKind::Hash(keys), StreamMessage::Batch(batch)) => {
                let parts = hash_partition(batch, keys, self.senders.len())?;
                for (target, part) in parts.into_iter().enumerate() {
                    if let Some(part) = part
                        && self.senders[target]
                            .send(StreamMessage::Batch(part))
                            .await
                            .is_err()
                    {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            (EdgeKind::Hash(_), StreamMessage::End) => 0,
        };
        Ok(self.senders[target].send(message).await.is_ok())
    }

    pub(crate) async fn end(&mut self) {
        for sender in &self.senders {
            let _ = sender.send(StreamMessage::End).await;
        }
    }
}

/// Split `batch` by the key groups of its `keys` columns over `targets` tasks; `None` where
/// a task gets no rows. A key's group is fixed (see [`crate::keygroups`]), so a key goes to
/// the task owning its group in every run and build, where its restored state is.
fn hash_partition(
    batch: &RecordBatch,
    keys: &[usize],
    targets: usize,
) -> Result<Vec<Option<RecordBatch>>> {
    let columns: Vec<ArrayRef> = keys.iter().map(|&k| batch.column(k).clone()).collect();
    let groups = crate::keygroups::key_groups(&columns, batch.num_rows())?;
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); targets];
    for (row, &group) in groups.iter().enumerate() {
        indices[crate::keygroups::task_of(group, targets)].push(row as u32);
    }
    indices
        .into_iter()
        .map(|rows| {
            if rows.is_empty() {
                return Ok(None);
            }
            if rows.len() == batch.num_rows() {
                return Ok(Some(batch.clone()));
            }
            let rows = arrow::array::UInt32Array::from(rows);
            Ok(Some(arrow::compute::take_record_batch(batch, &rows)?))
        })
        .collect()
}
