//! Bounded, byte-budgeted channels between tasks.
//!
//! A channel holds at most `capacity_bytes` of batches (a single batch larger than the
//! whole capacity still passes, alone). A sender that finds the budget used up waits, and
//! that wait is recorded on its operator as *output backpressure*; a receiver that finds the
//! channel empty records a wait on *input*. Dropping the receiver closes the channel, and a
//! blocked or later `send` returns [`SendError::Closed`] so upstream tasks stop early (this
//! is how `limit` and cancellation stop the work above them).
//!
//! ```
//! use rillet_runtime::channel::byte_channel;
//! use rillet_runtime::StreamMessage;
//! let rt = rillet_runtime::global_runtime();
//! let (tx, mut rx) = byte_channel(1 << 20, 1, None, None);
//! rt.block_on(async {
//!     tx.send(StreamMessage::End).await.unwrap();
//!     assert!(matches!(rx.recv().await, Some(StreamMessage::End)));
//! });
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use rillet_common::{Result, RilletError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::message::{CheckpointBarrier, StreamMessage};
use crate::metrics::{OperatorMetrics, WaitReason, acquire_recording_wait};
use crate::spill::{MIN_SPILL_BYTES, SpillStore, SpilledBatch};

/// The receiving side is gone: the consumer finished early or the job was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The receiver was dropped.
    Closed,
}

/// What an envelope carries: the message itself, or a batch spilled to the job's store.
enum Payload {
    Message(StreamMessage),
    Spilled(SpilledBatch),
}

struct Envelope {
    payload: Payload,
    /// Index of the sending task, so a receiver with several senders can align barriers.
    sender_index: usize,
    /// Released when the receiver takes the message, returning its bytes to the budget.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Sending half of a byte-budgeted channel. Cloned once per upstream task.
#[derive(Clone)]
pub struct ChannelSender {
    tx: mpsc::UnboundedSender<Envelope>,
    budget: Arc<Semaphore>,
    capacity: u32,
    sender_index: usize,
    metrics: Option<Arc<OperatorMetrics>>,
    /// Where large batches go instead of waiting on a full channel, if spilling is on.
    spill: Option<Arc<SpillStore>>,
}

/// Receiving half of a byte-budgeted channel.
pub struct ChannelReceiver {
    rx: mpsc::UnboundedReceiver<Envelope>,
    budget: Arc<Semaphore>,
    ends_expected: usize,
    ends_seen: usize,
    metrics: Option<Arc<OperatorMetrics>>,
}

/// Create a channel holding at most `capacity_bytes` of queued data, fed by `senders`
/// upstream tasks (the receiver reports end of stream once each has sent
/// [`StreamMessage::End`]). Waits are recorded on the given operators' metrics.
pub fn byte_channel(
    capacity_bytes: usize,
    senders: usize,
    sender_metrics: Option<Arc<OperatorMetrics>>,
    receiver_metrics: Option<Arc<OperatorMetrics>>,
) -> (ChannelSender, ChannelReceiver) {
    let capacity = capacity_bytes.clamp(1, u32::MAX as usize >> 1) as u32;
    let budget = Arc::new(Semaphore::new(capacity as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        ChannelSender {
            tx,
            budget: budget.clone(),
            capacity,
            sender_index: 0,
            metrics: sender_metrics,
            spill: None,
        },
        ChannelReceiver {
            rx,
            budget,
            ends_expected: senders.max(1),
            ends_seen: 0,
            metrics: receiver_metrics,
        },
    )
}

impl ChannelSender {
    /// A clone of this sender that identifies itself as upstream task `index`.
    pub fn for_sender(&self, index: usize) -> Self {
        let mut sender = self.clone();
        sender.sender_index = index;
        sender
    }

    /// This sender, spilling large batches to `store` instead of waiting on a full channel.
    pub fn with_spill(mut self, store: Arc<SpillStore>) -> Self {
        self.spill = Some(store);
        self
    }

    /// Send a message, waiting while the channel's byte budget is used up (or, with a
    /// spill store, spilling a large batch there instead).
    pub async fn send(&self, message: StreamMessage) -> Result<(), SendError> {
        let bytes = (message.memory_size().min(self.capacity as usize) as u32).max(1);
        let permit = match self.budget.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(SendError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                if let Some(spilled) = self.try_spill(&message) {
                    if let Some(m) = &self.metrics {
                        m.add_spilled(spilled.bytes());
                    }
                    return self
                        .tx
                        .send(Envelope {
                            payload: Payload::Spilled(spilled),
                            sender_index: self.sender_index,
                            _permit: None,
                        })
                        .map_err(|_| SendError::Closed);
                }
                acquire_recording_wait(
                    &self.budget,
                    bytes,
                    self.metrics.as_deref(),
                    WaitReason::OutputBackpressure,
                )
                .await
                .ok_or(SendError::Closed)?
            }
        };
        self.tx
            .send(Envelope {
                payload: Payload::Message(message),
                sender_index: self.sender_index,
                _permit: Some(permit),
            })
            .map_err(|_| SendError::Closed)
    }

    /// Spill a large batch if there is a store with room; `None` means wait instead.
    fn try_spill(&self, message: &StreamMessage) -> Option<SpilledBatch> {
        let (store, StreamMessage::Batch(batch)) = (self.spill.as_ref()?, message) else {
            return None;
        };
        if message.memory_size() < MIN_SPILL_BYTES {
            return None;
        }
        // Writing the file blocks: keep it off the async workers' cooperative scheduling.
        match tokio::task::block_in_place(|| store.put(batch)) {
            Ok(spilled) => spilled,
            Err(e) => {
                // A full or failing disk is no reason to fail the job: wait instead.
                tracing::warn!("cannot spill a batch, waiting instead: {e}");
                None
            }
        }
    }

    /// True once the receiver has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl ChannelReceiver {
    /// Receive the next batch or barrier. Returns `Some(StreamMessage::End)` exactly once,
    /// after every upstream task has finished, and `None` if an upstream task vanished
    /// without finishing (it failed or was cancelled; the job reports its error).
    pub async fn recv(&mut self) -> Option<StreamMessage> {
        Some(self.recv_from().await?.0)
    }

    /// Like [`recv`](Self::recv), also returning the index of the upstream task that sent it.
    pub async fn recv_from(&mut self) -> Option<(StreamMessage, usize)> {
        let metrics = self.metrics.clone();
        poll_recording_input_wait(metrics, |cx| self.poll_recv_from(cx)).await
    }

    /// Poll for the next message (see [`recv_from`](Self::recv_from)); records no wait, so
    /// a caller polling several channels ([`InputGate`]) records its own.
    pub fn poll_recv_from(&mut self, cx: &mut Context<'_>) -> Poll<Option<(StreamMessage, usize)>> {
        loop {
            if self.ends_seen == self.ends_expected {
                return Poll::Ready(None);
            }
            let Some(envelope) = std::task::ready!(self.rx.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            let message = match envelope.payload {
                Payload::Message(message) => message,
                Payload::Spilled(spilled) => {
                    match tokio::task::block_in_place(|| spilled.load()) {
                        Ok(batch) => StreamMessage::Batch(batch),
                        Err(e) => {
                            // The job's own file is gone or unreadable: fail the consumer
                            // (and so the job) rather than lose the rows.
                            tracing::error!("cannot read back a spilled batch: {e}");
                            return Poll::Ready(None);
                        }
                    }
                }
            };
            match message {
                StreamMessage::End => {
                    self.ends_seen += 1;
                    if self.ends_seen == self.ends_expected {
                        return Poll::Ready(Some((StreamMessage::End, envelope.sender_index)));
                    }
                }
                message => return Poll::Ready(Some((message, envelope.sender_index))),
            }
        }
    }
}

/// Drive `poll` to its result. Most messages are already queued and are taken without a
/// wait; otherwise the wait is recorded on `metrics` as a wait for input.
async fn poll_recording_input_wait<T>(
    metrics: Option<Arc<OperatorMetrics>>,
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> T {
    let ready = poll(&mut Context::from_waker(futures::task::noop_waker_ref()));
    if let Poll::Ready(value) = ready {
        return value;
    }
    let started = Instant::now();
    let _waiting = metrics.as_ref().map(|m| m.begin_wait(WaitReason::Input));
    let value = std::future::poll_fn(poll).await;
    if let Some(m) = &metrics {
        m.record_wait(WaitReason::Input, started.elapsed());
    }
    value
}

/// The input of a task fed by several channels (one per upstream task): merges their
/// batches and aligns their checkpoint barriers.
///
/// Once a channel delivers the barrier of checkpoint `n`, the gate stops reading that
/// channel until every other channel still open has delivered it too, and only then hands
/// the barrier on, once. So everything the task reads before the barrier came before it on
/// every channel, and nothing after it on any: the task's state at that moment is exactly
/// checkpoint `n`'s. A blocked channel fills up to its byte budget and then holds its
/// sender back, so alignment never buffers without bound. A channel that has ended counts
/// as aligned.
///
/// ```
/// use rillet_runtime::channel::{byte_channel, InputGate};
/// use rillet_runtime::{CheckpointBarrier, StreamMessage};
/// let rt = rillet_runtime::global_runtime();
/// let (a, rx_a) = byte_channel(1 << 20, 1, None, None);
/// let (b, rx_b) = byte_channel(1 << 20, 1, None, None);
/// let mut gate = InputGate::new(vec![rx_a, rx_b], None);
/// rt.block_on(async {
///     let barrier = StreamMessage::Barrier(CheckpointBarrier::new(1));
///     a.send(barrier.clone()).await.unwrap();
///     a.send(StreamMessage::End).await.unwrap();
///     b.send(barrier).await.unwrap();
///     b.send(StreamMessage::End).await.unwrap();
///     assert!(matches!(gate.recv().await.unwrap(), Some(StreamMessage::Barrier(_))));
///     assert!(matches!(gate.recv().await.unwrap(), Some(StreamMessage::End)));
/// });
/// ```
pub struct InputGate {
    inputs: Vec<GateInput>,
    /// The channel polled first next time, so that one busy channel cannot starve others.
    next: usize,
    metrics: Option<Arc<OperatorMetrics>>,
    /// The last watermark handed out: the least of the open channels' watermarks.
    watermark: Option<i64>,
    /// An [`StreamMessage::Idle`] was handed out, and no channel has been active since.
    idle_handed_out: bool,
    /// A channel's watermark moved or a channel ended since the least was last worked
    /// out: only then can it have advanced (so most messages skip the scan).
    watermarks_changed: bool,
}

struct GateInput {
    receiver: ChannelReceiver,
    /// The barrier this channel delivered and waits at for the others.
    blocked_at: Option<CheckpointBarrier>,
    /// The highest watermark this channel delivered.
    watermark: Option<i64>,
    /// The channel's sender said it is idle, and has sent no row or watermark since: it
    /// holds no watermark back.
    idle: bool,
    ended: bool,
}

impl InputGate {
    /// A gate over `receivers`; waits for input are recorded on `metrics`.
    pub fn new(receivers: Vec<ChannelReceiver>, metrics: Option<Arc<OperatorMetrics>>) -> Self {
        Self {
            inputs: receivers
                .into_iter()
                .map(|receiver| GateInput {
                    receiver,
                    blocked_at: None,
                    watermark: None,
                    idle: false,
                    ended: false,
                })
                .collect(),
            next: 0,
            metrics,
            watermark: None,
            watermarks_changed: false,
            idle_handed_out: false,
        }
    }

    /// The next batch, an aligned barrier, a watermark (whenever the least watermark of the
    /// open channels advances), or `End` once every channel has ended. `Ok(None)`
    /// if an upstream task vanished (it failed or was cancelled and reports that itself);
    /// an error if two channels disagree on the barrier order, which the protocol rules out.
    pub async fn recv(&mut self) -> Result<Option<StreamMessage>> {
        let metrics = self.metrics.clone();
        poll_recording_input_wait(metrics, |cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<StreamMessage>>> {
        let count = self.inputs.len();
        if count == 0 {
            return Poll::Ready(Ok(Some(StreamMessage::End)));
        }
        if let Some(advanced) = self.take_watermark() {
            return Poll::Ready(Ok(Some(advanced)));
        }
        // A message taken without anything to hand out (a watermark that moves nothing, a
        // barrier to align) leaves its channel without a registered waker: go round again
        // until every channel has said Pending.
        let mut again = true;
        while again {
            again = false;
            let start = self.next;
            for step in 0..count {
                let i = (start + step) % count;
                let input = &mut self.inputs[i];
                if input.ended || input.blocked_at.is_some() {
                    continue;
                }
                let Poll::Ready(received) = input.receiver.poll_recv_from(cx) else {
                    continue;
                };
                self.next = (i + 1) % count;
                match received {
                    None => return Poll::Ready(Ok(None)),
                    Some((StreamMessage::Batch(batch), _)) => {
                        // Rows again: the channel holds its watermark back again.
                        self.watermarks_changed |= std::mem::take(&mut self.inputs[i].idle);
                        self.idle_handed_out = false;
                        return Poll::Ready(Ok(Some(StreamMessage::Batch(batch))));
                    }
                    Some((StreamMessage::Idle, _)) => {
                        self.inputs[i].idle = true;
                        self.watermarks_changed = true;
                        // Every open channel idle: so is this task, for the tasks after it.
                        let open = self.inputs.iter().filter(|i| !i.ended);
                        if open.clone().all(|i| i.idle) && !self.idle_handed_out {
                            self.idle_handed_out = true;
                            return Poll::Ready(Ok(Some(StreamMessage::Idle)));
                        }
                    }
                    Some((StreamMessage::Barrier(barrier), _)) => {
                        let other = self
                            .inputs
                            .iter()
                            .find_map(|i| i.blocked_at.map(|b| b.checkpoint_id));
                        if let Some(other) = other.filter(|&o| o != barrier.checkpoint_id) {
                            return Poll::Ready(Err(RilletError::Checkpoint(format!(
                                "barriers out of order: checkpoint {} arrived while aligning {other}",
                                barrier.checkpoint_id
                            ))));
                        }
                        self.inputs[i].blocked_at = Some(barrier);
                        // A barrier in, the others not yet: a crash while aligning.
                        fail::fail_point!("barrier-before-alignment", |_| Poll::Ready(Err(
                            RilletError::Checkpoint("failpoint barrier-before-alignment".into())
                        )));
                    }
                    Some((StreamMessage::Watermark(watermark), _)) => {
                        let input = &mut self.inputs[i];
                        input.watermark =
                            Some(input.watermark.map_or(watermark, |w| w.max(watermark)));
                        input.idle = false;
                        self.idle_handed_out = false;
                        self.watermarks_changed = true;
                    }
                    Some((StreamMessage::End, _)) => {
                        self.inputs[i].ended = true;
                        self.watermarks_changed = true;
                    }
                }
                if let Some(aligned) = self.take_aligned() {
                    return Poll::Ready(Ok(Some(aligned)));
                }
                if let Some(advanced) = self.take_watermark() {
                    return Poll::Ready(Ok(Some(advanced)));
                }
                again = true;
            }
        }
        Poll::Pending
    }

    /// A watermark when the least watermark of the open channels has passed the last one
    /// handed out. A channel that has sent none holds it back; an ended or idle one does
    /// not (with every open channel idle, event time stays where it is).
    fn take_watermark(&mut self) -> Option<StreamMessage> {
        if !std::mem::take(&mut self.watermarks_changed) {
            return None;
        }
        let mut least: Option<i64> = None;
        for input in self.inputs.iter().filter(|i| !i.ended && !i.idle) {
            let watermark = input.watermark?;
            least = Some(least.map_or(watermark, |l| l.min(watermark)));
        }
        let least = least?;
        if self.watermark.is_some_and(|w| w >= least) {
            return None;
        }
        self.watermark = Some(least);
        Some(StreamMessage::Watermark(least))
    }

    /// The barrier (or the end) every open channel has reached, releasing the channels.
    fn take_aligned(&mut self) -> Option<StreamMessage> {
        if self.inputs.iter().all(|i| i.ended) {
            return Some(StreamMessage::End);
        }
        let open = || self.inputs.iter().filter(|i| !i.ended);
        let barrier = open().next()?.blocked_at?;
        let id = barrier.checkpoint_id;
        if !open().all(|i| i.blocked_at.map(|b| b.checkpoint_id) == Some(id)) {
            return None;
        }
        self.inputs.iter_mut().for_each(|i| i.blocked_at = None);
        Some(StreamMessage::Barrier(barrier))
    }
}

impl Drop for ChannelReceiver {
    fn drop(&mut self) {
        // Wake senders blocked on the budget so they see the channel is closed.
        self.budget.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::time::Duration;

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))],
        )
        .unwrap()
    }

    #[test]
    fn sender_waits_when_budget_is_used_up_and_records_backpressure() {
        let rt = crate::global_runtime();
        let metrics = Arc::new(OperatorMetrics::new("producer"));
        let one = batch(1000);
        let capacity = one.get_array_memory_size() * 2;
        let (tx, mut rx) = byte_channel(capacity, 1, Some(metrics.clone()), None);
        rt.block_on(async {
            tx.send(StreamMessage::Batch(one.clone())).await.unwrap();
            tx.send(StreamMessage::Batch(one.clone())).await.unwrap();
            // The third batch does not fit: the send must wait until the receiver takes one.
            let third = tokio::time::timeout(
                Duration::from_millis(100),
                tx.send(StreamMessage::Batch(one.clone())),
            )
            .await;
            assert!(third.is_err(), "send should block on a full channel");
            let consumer = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut got = 0;
                while let Some(StreamMessage::Batch(_)) = rx.recv().await {
                    got += 1;
                    if got == 3 {
                        break;
                    }
                }
                got
            });
            tx.send(StreamMessage::Batch(one.clone())).await.unwrap();
            assert_eq!(consumer.await.unwrap(), 3);
        });
        assert!(metrics.snapshot().wait_output_ms > 0.0);
    }

    #[test]
    fn dropping_the_receiver_releases_a_blocked_sender() {
        let rt = crate::global_runtime();
        let one = batch(1000);
        let (tx, rx) = byte_channel(one.get_array_memory_size(), 1, None, None);
        rt.block_on(async {
            tx.send(StreamMessage::Batch(one.clone())).await.unwrap();
            let blocked = tokio::spawn({
                let tx = tx.clone();
                let one = one.clone();
                async move { tx.send(StreamMessage::Batch(one)).await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(rx);
            let result = tokio::time::timeout(Duration::from_secs(1), blocked)
                .await
                .expect("blocked sender must be released")
                .unwrap();
            assert_eq!(result, Err(SendError::Closed));
        });
    }

    #[test]
    fn end_is_reported_once_after_every_sender_finished() {
        let rt = crate::global_runtime();
        let (tx, mut rx) = byte_channel(1 << 20, 2, None, None);
        rt.block_on(async {
            let a = tx.for_sender(0);
            let b = tx.for_sender(1);
            a.send(StreamMessage::Batch(batch(3))).await.unwrap();
            a.send(StreamMessage::End).await.unwrap();
            b.send(StreamMessage::Batch(batch(2))).await.unwrap();
            b.send(StreamMessage::End).await.unwrap();
            let mut rows = 0;
            loop {
                match rx.recv().await {
                    Some(StreamMessage::Batch(b)) => rows += b.num_rows(),
                    Some(StreamMessage::End) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(rows, 5);
            assert!(rx.recv().await.is_none());
        });
    }

    #[test]
    fn a_full_channel_with_a_spill_store_passes_large_batches_by_reference() {
        let rt = crate::global_runtime();
        let parent = tempfile::tempdir().unwrap();
        let store = Arc::new(SpillStore::new(parent.path(), 64 << 20).unwrap());
        let metrics = Arc::new(OperatorMetrics::new("producer"));
        let large = batch(200_000); // 1.6 MB
        let (tx, mut rx) = byte_channel(
            large.get_array_memory_size(),
            1,
            Some(metrics.clone()),
            None,
        );
        let tx = tx.with_spill(store.clone());
        rt.block_on(async {
            tx.send(StreamMessage::Batch(large.clone())).await.unwrap();
            // The channel is full: these two go to disk instead of waiting.
            for _ in 0..2 {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    tx.send(StreamMessage::Batch(large.clone())),
                )
                .await
                .expect("a spilling send does not wait")
                .unwrap();
            }
            assert_eq!(store.held_bytes(), 2 * large.get_array_memory_size());
            assert_eq!(std::fs::read_dir(store.directory()).unwrap().count(), 2);
            // A small batch is not worth a file: it waits for room as usual.
            let small = tokio::time::timeout(
                Duration::from_millis(50),
                tx.send(StreamMessage::Batch(batch(10))),
            );
            assert!(small.await.is_err());
            for _ in 0..3 {
                match rx.recv().await {
                    Some(StreamMessage::Batch(b)) => assert_eq!(b, large),
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        assert_eq!(store.held_bytes(), 0);
        assert_eq!(std::fs::read_dir(store.directory()).unwrap().count(), 0);
        assert_eq!(
            metrics.snapshot().spilled_bytes,
            2 * large.get_array_memory_size() as u64
        );
        let directory = store.directory().to_path_buf();
        drop((tx, rx, store));
        assert!(
            !directory.exists(),
            "the job's spill directory is removed with the store"
        );
    }

    #[test]
    fn a_spill_store_at_capacity_makes_producers_wait() {
        let rt = crate::global_runtime();
        let parent = tempfile::tempdir().unwrap();
        let large = batch(200_000);
        let store =
            Arc::new(SpillStore::new(parent.path(), large.get_array_memory_size()).unwrap());
        let (tx, _rx) = byte_channel(large.get_array_memory_size(), 1, None, None);
        let tx = tx.with_spill(store.clone());
        rt.block_on(async {
            tx.send(StreamMessage::Batch(large.clone())).await.unwrap();
            tx.send(StreamMessage::Batch(large.clone())).await.unwrap(); // spilled
            let third = tokio::time::timeout(
                Duration::from_millis(50),
                tx.send(StreamMessage::Batch(large.clone())),
            );
            assert!(third.await.is_err(), "the store is full: the send waits");
        });
    }

    #[test]
    fn an_oversized_batch_still_passes_alone() {
        let rt = crate::global_runtime();
        let (tx, mut rx) = byte_channel(16, 1, None, None);
        rt.block_on(async {
            tx.send(StreamMessage::Batch(batch(10_000))).await.unwrap();
            assert!(matches!(rx.recv().await, Some(StreamMessage::Batch(_))));
        });
    }

    fn rows_of(message: &StreamMessage) -> Option<usize> {
        match message {
            StreamMessage::Batch(b) => Some(b.num_rows()),
            _ => None,
        }
    }

    #[test]
    fn the_gate_holds_a_channel_back_from_its_barrier_until_every_channel_has_it() {
        let rt = crate::global_runtime();
        let (a, rx_a) = byte_channel(1 << 20, 1, None, None);
        let (b, rx_b) = byte_channel(1 << 20, 1, None, None);
        let mut gate = InputGate::new(vec![rx_a, rx_b], None);
        let barrier = StreamMessage::Barrier(CheckpointBarrier::new(4));
        rt.block_on(async {
            // Channel a is a checkpoint ahead: its row 2 belongs after the barrier.
            a.send(barrier.clone()).await.unwrap();
            a.send(StreamMessage::Batch(batch(2))).await.unwrap();
            b.send(StreamMessage::Batch(batch(1))).await.unwrap();
            let first = gate.recv().await.unwrap().unwrap();
            assert_eq!(rows_of(&first), Some(1), "a's post-barrier rows came first");
            // b's barrier has not come: nothing may pass (the gate waits).
            let waiting = tokio::time::timeout(Duration::from_millis(50), gate.recv()).await;
            assert!(
                waiting.is_err(),
                "the gate let a message through before alignment"
            );
            b.send(barrier.clone()).await.unwrap();
            let aligned = gate.recv().await.unwrap().unwrap();
            assert!(matches!(
                aligned,
                StreamMessage::Barrier(CheckpointBarrier {
                    checkpoint_id: 4,
                    last: false
                })
            ));
            assert_eq!(rows_of(&gate.recv().await.unwrap().unwrap()), Some(2));
            a.send(StreamMessage::End).await.unwrap();
            // An ended channel counts as aligned: b's next barrier passes alone.
            b.send(StreamMessage::Barrier(CheckpointBarrier::new(5)))
                .await
                .unwrap();
            b.send(StreamMessage::End).await.unwrap();
            assert!(matches!(
                gate.recv().await.unwrap().unwrap(),
                StreamMessage::Barrier(CheckpointBarrier {
                    checkpoint_id: 5,
                    last: false
                })
            ));
            assert!(matches!(
                gate.recv().await.unwrap().unwrap(),
                StreamMessage::End
            ));
        });
    }

    /// A gate over two channels, and their senders.
    fn two_channel_gate() -> (ChannelSender, ChannelSender, InputGate) {
        let (a, rx_a) = byte_channel(1 << 20, 1, None, None);
        let (b, rx_b) = byte_channel(1 << 20, 1, None, None);
        (a, b, InputGate::new(vec![rx_a, rx_b], None))
    }

    /// The watermark `message` is (a panic if it is anything else).
    fn watermark(message: Option<StreamMessage>) -> i64 {
        match message {
            Some(StreamMessage::Watermark(w)) => w,
            other => panic!("expected a watermark, got {other:?}"),
        }
    }

    #[test]
    fn the_gate_passes_the_least_watermark_of_its_open_channels() {
        let rt = crate::global_runtime();
        let (a, b, mut gate) = two_channel_gate();
        rt.block_on(async {
            a.send(StreamMessage::Watermark(10)).await.unwrap();
            // b has sent none: event time cannot pass 10 on a's word alone.
            let waiting = tokio::time::timeout(Duration::from_millis(50), gate.recv()).await;
            assert!(
                waiting.is_err(),
                "a watermark passed before every channel had one"
            );
            b.send(StreamMessage::Watermark(7)).await.unwrap();
            assert_eq!(watermark(gate.recv().await.unwrap()), 7);
            b.send(StreamMessage::Watermark(30)).await.unwrap();
            assert_eq!(watermark(gate.recv().await.unwrap()), 10);
            // A watermark going back on a channel changes nothing.
            a.send(StreamMessage::Watermark(5)).await.unwrap();
            a.send(StreamMessage::Batch(batch(1))).await.unwrap();
            assert_eq!(rows_of(&gate.recv().await.unwrap().unwrap()), Some(1));
            // An ended channel no longer holds event time back.
            a.send(StreamMessage::End).await.unwrap();
            assert_eq!(watermark(gate.recv().await.unwrap()), 30);
            b.send(StreamMessage::End).await.unwrap();
            assert!(matches!(
                gate.recv().await.unwrap().unwrap(),
                StreamMessage::End
            ));
        });
    }

    #[test]
    fn an_idle_channel_holds_no_watermark_back_until_it_is_active_again() {
        let rt = crate::global_runtime();
        let (a, b, mut gate) = two_channel_gate();
        rt.block_on(async {
            a.send(StreamMessage::Watermark(10)).await.unwrap();
            // b never sent a row: once it says it is idle, a's watermark passes.
            b.send(StreamMessage::Idle).await.unwrap();
            assert_eq!(watermark(gate.recv().await.unwrap()), 10);
            // b is active again: it holds event time back from here (at 12).
            b.send(StreamMessage::Batch(batch(1))).await.unwrap();
            assert_eq!(rows_of(&gate.recv().await.unwrap().unwrap()), Some(1));
            b.send(StreamMessage::Watermark(12)).await.unwrap();
            a.send(StreamMessage::Watermark(40)).await.unwrap();
            assert_eq!(watermark(gate.recv().await.unwrap()), 12);
            // Both idle: so is the gate, once; event time stays.
            a.send(StreamMessage::Idle).await.unwrap();
            b.send(StreamMessage::Idle).await.unwrap();
            let idle = gate.recv().await.unwrap();
            let idle = match idle {
                Some(StreamMessage::Watermark(40)) => gate.recv().await.unwrap(),
                other => other,
            };
            assert!(matches!(idle, Some(StreamMessage::Idle)), "{idle:?}");
        });
    }

    #[test]
    fn a_watermark_that_moves_nothing_leaves_its_channel_read() {
        let rt = crate::global_runtime();
        let (a, rx_a) = byte_channel(1 << 20, 1, None, None);
        let (_b, rx_b) = byte_channel(1 << 20, 1, None, None);
        let mut gate = InputGate::new(vec![rx_a, rx_b], None);
        rt.block_on(async {
            // Sent from another task while the gate waits: only a's waker can wake it.
            let sender = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                a.send(StreamMessage::Watermark(10)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                a.send(StreamMessage::Batch(batch(3))).await.unwrap();
                a
            });
            let started = std::time::Instant::now();
            // (A timeout would poll the gate once more when it fires: measure instead.)
            let next = tokio::time::timeout(Duration::from_secs(2), gate.recv()).await;
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a's batch behind its watermark was not read when it came"
            );
            assert_eq!(rows_of(&next.unwrap().unwrap().unwrap()), Some(3));
            drop(sender.await.unwrap());
        });
    }

    #[test]
    fn barriers_out_of_order_are_an_error_not_a_hang() {
        let rt = crate::global_runtime();
        let (a, rx_a) = byte_channel(1 << 20, 1, None, None);
        let (b, rx_b) = byte_channel(1 << 20, 1, None, None);
        let mut gate = InputGate::new(vec![rx_a, rx_b], None);
        rt.block_on(async {
            a.send(StreamMessage::Barrier(CheckpointBarrier::new(1)))
                .await
                .unwrap();
            b.send(StreamMessage::Barrier(CheckpointBarrier::new(2)))
                .await
                .unwrap();
            let err = gate.recv().await.unwrap_err().to_string();
            assert!(err.contains("out of order"), "{err}");
        });
    }

    #[test]
    fn the_last_barrier_stays_the_last_through_alignment() {
        let rt = crate::global_runtime();
        let (a, rx_a) = byte_channel(1 << 20, 1, None, None);
        let (b, rx_b) = byte_channel(1 << 20, 1, None, None);
        let mut gate = InputGate::new(vec![rx_a, rx_b], None);
        let last = CheckpointBarrier {
            checkpoint_id: 9,
            last: true,
        };
        rt.block_on(async {
            a.send(StreamMessage::Barrier(last)).await.unwrap();
            b.send(StreamMessage::Barrier(last)).await.unwrap();
            match gate.recv().await.unwrap().unwrap() {
                StreamMessage::Barrier(barrier) => assert_eq!(barrier, last),
                other => panic!("expected the barrier, got {other:?}"),
            }
        });
    }
}
