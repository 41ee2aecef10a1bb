//! What exactly-once sinks to external systems share: a writer that holds a task's rows
//! until a checkpoint that covers them has been committed, handing them over at each
//! barrier as the task's checkpoint state, so that the sink writes them out (idempotently)
//! once the checkpoint has completed.
//!
//! Rows sealed at the barrier of a checkpoint that is then aborted (an artifact or
//! manifest that failed to write) are not lost: they stay with the writer, and the state
//! of every later checkpoint carries them, as a *segment* of their own, until one of those
//! checkpoints has been committed. A commit therefore writes out every segment its states
//! hold, oldest first, each under the id of the barrier that sealed it. In a running job a
//! checkpoint starts only after the previous one's commit has run, so the segments a live
//! commit carries were never written; a recovery, though, repeats the restored
//! checkpoint's commit, which a crash may have cut short, and each sink recognises by that
//! id a segment already written and writes it no second time.
//!
//! The state format: `RLSG`, a format version (1), the task's index (u32), the number of
//! segments (u32), then per segment its checkpoint id (u64), its length (u64) and its rows
//! as Arrow IPC; integers little-endian. A state that does not start with `RLSG` is the
//! format before segments: one Arrow IPC stream of the rows of the checkpoint it belongs to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rillet_common::{Result, RilletError};
use rillet_operator::{BatchWriter, SinkContext, decode_batches, encode_batches};

/// The first bytes of a segmented sink state.
const MAGIC: &[u8; 4] = b"RLSG";
/// The segmented state format this build writes and reads.
const FORMAT_VERSION: u8 = 1;

/// Writes rows out: the external side of a staged sink.
pub(crate) trait RowsOut: Send + Sync + 'static {
    /// Write `batches` out in one go, for a job without checkpoints at the end of its
    /// input (`context` names the run). Blocking.
    fn write_out(&self, context: &SinkContext, batches: &[RecordBatch]) -> Result<()>;
}

/// The rows a commit writes out, by the checkpoint whose barrier sealed them, oldest
/// first; within a checkpoint, task by task in task order (the same order every time the
/// same rows are committed, so a repeated commit can be planned the same).
pub(crate) type Segments = BTreeMap<u64, Vec<RecordBatch>>;

/// The rows one task sealed at one barrier, as Arrow IPC, with that barrier's checkpoint
/// id. Encoded once, when sealed: a segment carried through many checkpoints costs a copy
/// per checkpoint, not an encoding.
type Segment = (u64, Vec<u8>);

/// The segments of the tasks' `states` of checkpoint `checkpoint`.
pub(crate) fn decode_segments(checkpoint: u64, states: &[Vec<u8>]) -> Result<Segments> {
    // (checkpoint, task) -> rows; states of the format before segments get their place
    // among themselves by their bytes, as commits of that format ordered them.
    let damaged = |what: String| {
        RilletError::Checkpoint(format!(
            "the sink states of checkpoint {checkpoint} are damaged: {what}"
        ))
    };
    let mut by_task: BTreeMap<(u64, u64), Vec<RecordBatch>> = BTreeMap::new();
    let mut tasks = std::collections::BTreeSet::new();
    let mut unsegmented: Vec<&Vec<u8>> = Vec::new();
    for state in states {
        if !state.starts_with(MAGIC) {
            unsegmented.push(state);
            continue;
        }
        let (task, segments) = read_state(state)?;
        if !tasks.insert(task) {
            return Err(damaged(format!("two states of sink task {task}")));
        }
        let mut last = None;
        for (id, rows) in segments {
            if id > checkpoint {
                return Err(damaged(format!("rows of the later checkpoint {id}")));
            }
            if last.is_some_and(|last| last >= id) {
                return Err(damaged(format!(
                    "task {task}'s segments out of order at {id}"
                )));
            }
            last = Some(id);
            by_task.insert((id, u64::from(task)), decode_batches(&rows)?);
        }
    }
    if !unsegmented.is_empty() && !tasks.is_empty() {
        return Err(damaged("states of two formats".into()));
    }
    unsegmented.sort();
    for (k, state) in unsegmented.into_iter().enumerate() {
        let key = (checkpoint, u64::from(u32::MAX) + 1 + k as u64);
        by_task.insert(key, decode_batches(state)?);
    }
    let mut segments = Segments::new();
    for ((id, _task), batches) in by_task {
        segments.entry(id).or_default().extend(batches);
    }
    Ok(segments)
}

/// Every row of the tasks' `states` of checkpoint `checkpoint`, oldest segment first.
pub(crate) fn decode_states(checkpoint: u64, states: &[Vec<u8>]) -> Result<Vec<RecordBatch>> {
    Ok(decode_segments(checkpoint, states)?
        .into_values()
        .flatten()
        .collect())
}

fn write_state(task: u32, segments: &[Segment]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&task.to_le_bytes());
    let count = u32::try_from(segments.len())
        .map_err(|_| RilletError::internal("more than 2^32 segments in one sink state"))?;
    out.extend_from_slice(&count.to_le_bytes());
    for (id, rows) in segments {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
        out.extend_from_slice(rows);
    }
    Ok(out)
}

/// The task index and segments of a segmented state.
fn read_state(state: &[u8]) -> Result<(u32, Vec<Segment>)> {
    let damaged = |what: &str| RilletError::Checkpoint(format!("a sink state is damaged: {what}"));
    let mut reader = Reader(&state[MAGIC.len()..]);
    let version = reader.take(1).ok_or_else(|| damaged("no format version"))?[0];
    if version != FORMAT_VERSION {
        return Err(RilletError::IncompatibleState(format!(
            "a sink state has format version {version}, and this build reads version \
             {FORMAT_VERSION}: restore it with the Rillet version that wrote it"
        )));
    }
    let task = reader.u32().ok_or_else(|| damaged("no task index"))?;
    let count = reader.u32().ok_or_else(|| damaged("no segment count"))?;
    let mut segments = Vec::new();
    for _ in 0..count {
        let id = reader
            .u64()
            .ok_or_else(|| damaged("a segment without its checkpoint"))?;
        let len = reader
            .u64()
            .ok_or_else(|| damaged("a segment without its length"))?;
        let rows = usize::try_from(len)
            .ok()
            .and_then(|len| reader.take(len))
            .ok_or_else(|| damaged("a segment longer than the state"))?;
        segments.push((id, rows.to_vec()));
    }
    if !reader.0.is_empty() {
        return Err(damaged("bytes after the last segment"));
    }
    Ok((task, segments))
}

/// Reads a state front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// A sink task's writer: rows since the last barrier, and the segments sealed at barriers
/// whose checkpoints are not yet known committed, in memory.
pub(crate) struct StagedWriter<S: RowsOut> {
    out: Arc<S>,
    schema: SchemaRef,
    task: u32,
    pending: Vec<RecordBatch>,
    /// Rows sealed at each barrier (by its checkpoint id) not yet known committed.
    uncommitted: Vec<Segment>,
    context: SinkContext,
}

impl<S: RowsOut + Clone> StagedWriter<S> {
    /// Task `task`'s writer for `sink` (what its `Sink::open` returns).
    pub(crate) fn boxed(
        sink: &S,
        schema: SchemaRef,
        task: usize,
        context: &SinkContext,
    ) -> Box<dyn BatchWriter> {
        Box::new(Self {
            out: Arc::new(sink.clone()),
            schema,
            task: u32::try_from(task).unwrap_or(u32::MAX),
            pending: Vec::new(),
            uncommitted: Vec::new(),
            context: context.clone(),
        })
    }
}

impl<S: RowsOut> StagedWriter<S> {
    /// Fails when the rows carried past checkpoints that did not complete (those sealed
    /// before `checkpoint`'s barrier) are over the context's limit.
    fn check_carried(&self, checkpoint: u64) -> Result<()> {
        let carried: Vec<&Segment> = self
            .uncommitted
            .iter()
            .filter(|(id, _)| *id < checkpoint)
            .collect();
        let bytes: usize = carried.iter().map(|(_, rows)| rows.len()).sum();
        if bytes <= self.context.carry_limit_bytes {
            return Ok(());
        }
        Err(RilletError::Checkpoint(format!(
            "sink task {} holds {bytes} bytes of rows from {} checkpoints that did not \
             complete (their state failed to write; the job's checkpoint figures name the \
             last failure), over its limit of {} bytes (the engine's memory budget): the \
             job stops, and a restart replays those rows from its latest checkpoint",
            self.task,
            carried.len(),
            self.context.carry_limit_bytes
        )))
    }
}

#[async_trait]
impl<S: RowsOut> BatchWriter for StagedWriter<S> {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() > 0 {
            self.pending.push(batch);
        }
        Ok(())
    }

    async fn checkpoint(&mut self, checkpoint: u64) -> Result<Option<Vec<u8>>> {
        let sealed = std::mem::take(&mut self.pending);
        if !sealed.is_empty() {
            let rows = encode_batches(&self.schema, &sealed)?;
            self.uncommitted.push((checkpoint, rows));
        }
        // Only a commit that has run lets rows go: until then a checkpoint that held them
        // may still be aborted (or completed and not yet committed, when a crash would
        // leave them to the next checkpoint's recovery).
        let committed = self.context.committed.load(Ordering::SeqCst);
        self.uncommitted.retain(|(id, _)| *id > committed);
        self.check_carried(checkpoint)?;
        write_state(self.task, &self.uncommitted).map(Some)
    }

    async fn close(self: Box<Self>) -> Result<Vec<String>> {
        // With checkpoints, rows after the last barrier belong to no checkpoint: a restart
        // replays them. Without, the end of the input is the commit.
        if !self.context.checkpointing {
            let (out, pending, context) = (self.out.clone(), self.pending, self.context.clone());
            tokio::task::spawn_blocking(move || out.write_out(&context, &pending))
                .await
                .map_err(|e| RilletError::internal(format!("sink write task: {e}")))??;
        }
        Ok(Vec::new())
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
        fn write_out(&self, _context: &SinkContext, batches: &[RecordBatch]) -> Result<()> {
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
        rillet_operator::block_on(async {
            let mut writer =
                StagedWriter::boxed(&Recorder::default(), schema(), 0, &checkpointing());
            writer.write(rows(&[1, 2])).await.unwrap();
            let _aborted = writer.checkpoint(1).await.unwrap();
            writer.write(rows(&[3])).await.unwrap();
            let state = writer.checkpoint(2).await.unwrap().unwrap();
            assert_eq!(values(&decode_states(2, &[state]).unwrap()), vec![1, 2, 3]);
        });
    }

    /// Rows whose checkpoint has been committed leave the state; later ones stay, each
    /// segment under the id of the barrier that sealed it.
    #[test]
    fn a_committed_checkpoint_lets_its_rows_go_and_segments_keep_their_ids() {
        rillet_operator::block_on(async {
            let context = checkpointing();
            let mut writer = StagedWriter::boxed(&Recorder::default(), schema(), 0, &context);
            writer.write(rows(&[1])).await.unwrap();
            writer.checkpoint(4).await.unwrap();
            writer.write(rows(&[2])).await.unwrap();
            writer.checkpoint(5).await.unwrap();
            writer.write(rows(&[])).await.unwrap();
            writer.write(rows(&[3])).await.unwrap();
            let state = writer.checkpoint(6).await.unwrap().unwrap();
            let segments = decode_segments(6, &[state]).unwrap();
            let ids: Vec<(u64, Vec<i64>)> =
                segments.iter().map(|(id, b)| (*id, values(b))).collect();
            assert_eq!(ids, vec![(4, vec![1]), (5, vec![2]), (6, vec![3])]);
            context.committed.store(5, Ordering::SeqCst);
            let state = writer.checkpoint(7).await.unwrap().unwrap();
            let segments = decode_segments(7, &[state]).unwrap();
            let ids: Vec<(u64, Vec<i64>)> =
                segments.iter().map(|(id, b)| (*id, values(b))).collect();
            assert_eq!(
                ids,
                vec![(6, vec![3])],
                "nothing after 6, and 4, 5 committed"
            );
        });
    }

    /// Within a checkpoint, rows come task by task in task order, whatever order the
    /// states arrive in (a repeated commit must plan the same records).
    #[test]
    fn segments_merge_in_task_order() {
        rillet_operator::block_on(async {
            let mut states = Vec::new();
            for (task, value) in [(2, 30), (0, 10), (1, 20)] {
                let mut writer =
                    StagedWriter::boxed(&Recorder::default(), schema(), task, &checkpointing());
                writer.write(rows(&[value])).await.unwrap();
                states.push(writer.checkpoint(3).await.unwrap().unwrap());
            }
            assert_eq!(
                values(&decode_states(3, &states).unwrap()),
                vec![10, 20, 30]
            );
            states.reverse();
            assert_eq!(
                values(&decode_states(3, &states).unwrap()),
                vec![10, 20, 30]
            );
        });
    }

    /// A state of the format before segments (bare Arrow IPC) is the rows of its own
    /// checkpoint: savepoints written by earlier versions still restore.
    #[test]
    fn a_state_from_before_segments_is_its_checkpoints_rows() {
        let legacy = encode_batches(&schema(), &[rows(&[7, 8])]).unwrap();
        let segments = decode_segments(9, &[legacy]).unwrap();
        assert_eq!(segments.keys().copied().collect::<Vec<_>>(), vec![9]);
        assert_eq!(values(&segments[&9]), vec![7, 8]);
    }

    /// Damage and unknown versions are checkpoint errors that say so, never a panic or
    /// rows made up.
    #[test]
    fn damaged_and_future_states_are_refused_with_a_reason() {
        let segment = encode_batches(&schema(), &[rows(&[1, 2])]).unwrap();
        let state = write_state(0, &[(2, segment.clone())]).unwrap();
        let error = |state: Vec<u8>, checkpoint: u64| {
            decode_segments(checkpoint, &[state])
                .unwrap_err()
                .to_string()
        };
        let mut future = state.clone();
        future[MAGIC.len()] = FORMAT_VERSION + 1;
        assert!(error(future, 2).contains("format version 2"));
        for cut in [
            MAGIC.len(),
            MAGIC.len() + 3,
            MAGIC.len() + 12,
            state.len() - 1,
        ] {
            let message = error(state[..cut].to_vec(), 2);
            assert!(message.contains("damaged"), "cut at {cut}: {message}");
        }
        let mut longer = state.clone();
        longer.push(0);
        assert!(error(longer, 2).contains("bytes after"));
        assert!(error(state.clone(), 1).contains("later checkpoint 2"));
        let twice = decode_segments(2, &[state.clone(), state.clone()]).unwrap_err();
        assert!(
            twice.to_string().contains("two states of sink task 0"),
            "{twice}"
        );
        let backwards = write_state(1, &[(2, segment.clone()), (2, segment.clone())]).unwrap();
        assert!(error(backwards, 2).contains("out of order"));
        let legacy = encode_batches(&schema(), &[rows(&[3])]).unwrap();
        let mixed = decode_segments(2, &[state, legacy]).unwrap_err();
        assert!(mixed.to_string().contains("two formats"), "{mixed}");
    }

    /// Rows carried past aborted checkpoints are bounded: over the limit, the barrier
    /// fails the job (a restart replays them) instead of growing memory without end. The
    /// rows of the barrier's own checkpoint never count.
    #[test]
    fn rows_carried_past_aborted_checkpoints_are_bounded() {
        rillet_operator::block_on(async {
            let one_segment = encode_batches(&schema(), &[rows(&[1, 2, 3])])
                .unwrap()
                .len();
            let context = SinkContext {
                checkpointing: true,
                carry_limit_bytes: one_segment,
                ..SinkContext::default()
            };
            let mut writer = StagedWriter::boxed(&Recorder::default(), schema(), 3, &context);
            writer.write(rows(&[1, 2, 3])).await.unwrap();
            writer.checkpoint(1).await.unwrap(); // aborted
            writer.write(rows(&[4, 5, 6])).await.unwrap();
            writer.checkpoint(2).await.unwrap(); // aborted: one segment carried, at the limit
            writer.write(rows(&[7])).await.unwrap();
            let err = writer.checkpoint(3).await.unwrap_err().to_string();
            assert!(
                err.contains("sink task 3") && err.contains("from 2 checkpoints"),
                "{err}"
            );
            // Once a commit has run, nothing is carried and the barrier passes.
            context.committed.store(3, Ordering::SeqCst);
            writer.write(rows(&[8])).await.unwrap();
            assert!(writer.checkpoint(4).await.is_ok());
        });
    }
}
