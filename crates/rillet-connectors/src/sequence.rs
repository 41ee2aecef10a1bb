//! The deterministic sequence source, and the oracle that checks a job's output against it.
//!
//! Each split is one `(source, partition)` and emits rows `(source, partition, seq, value)`
//! with `seq` counting 0, 1, 2, ... and `value` a fixed function of `(partition, seq)`
//! ([`value_of`]), so that keyed and windowed aggregates have something to add up and a
//! checker can recompute it. A split's position is the next `seq`; restoring a position
//! replays from there.
//!
//! [`check`] reads a job's committed output and finds any gap (a lost row), any repeat (a
//! duplicated row), a wrong value, or a wrong total: the exactly-once oracle of the kill
//! sweeps (jobs killed at random instants and restarted, `python/tests/kill_sweep.py`).
//!
//! ```
//! use std::collections::BTreeMap;
//! use rillet_connectors::sequence::{SequenceSplit, check};
//!
//! let mut split = SequenceSplit::new("seq", 0, Some(5));
//! let first = split.next_batch(3).unwrap();      // seq 0, 1, 2
//! let position = split.position();                // 3: what a checkpoint records
//! let _lost = split.next_batch(3).unwrap();       // seq 3, 4 ... then a crash
//! let mut restored = SequenceSplit::new("seq", 0, Some(5));
//! restored.restore(position);
//! let replayed = restored.next_batch(3).unwrap(); // seq 3, 4 again
//! assert!(restored.next_batch(3).is_none());
//!
//! let expected = BTreeMap::from([(("seq".to_string(), 0), 5)]);
//! assert!(check(&[first.clone(), replayed], &expected).is_ok());
//! let err = check(&[first.clone(), first], &expected).unwrap_err();
//! assert!(err.contains("repeated") && err.contains("missing"), "{err}");
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use rillet_common::RilletError;
use rillet_operator::{SourceReader, SplitAssignment, StreamSource};

/// The schema every split emits: `source` (utf8), `partition` (uint32), `seq` (uint64),
/// `value` (int64).
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("partition", DataType::UInt32, false),
            Field::new("seq", DataType::UInt64, false),
            Field::new("value", DataType::Int64, false),
        ]))
    });
    SCHEMA.clone()
}

/// The `value` of row `seq` of `partition`: small, varied and recomputable.
pub fn value_of(partition: u32, seq: u64) -> i64 {
    ((seq.wrapping_mul(2_654_435_761) ^ u64::from(partition)) % 1000) as i64
}

/// One split of the sequence source: `(source, partition)`, from its position up to `end`
/// (exclusive; `None` for an unbounded split).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSplit {
    source: String,
    partition: u32,
    next: u64,
    end: Option<u64>,
}

impl SequenceSplit {
    /// Split `partition` of `source`, from seq 0 up to `end`.
    pub fn new(source: impl Into<String>, partition: u32, end: Option<u64>) -> Self {
        Self {
            source: source.into(),
            partition,
            next: 0,
            end,
        }
    }

    /// The next rows, at most `max_rows` (at least 1); `None` once a bounded split is done.
    pub fn next_batch(&mut self, max_rows: usize) -> Option<RecordBatch> {
        let left = self
            .end
            .map_or(u64::MAX, |end| end.saturating_sub(self.next));
        let rows = left.min(max_rows.max(1) as u64);
        if rows == 0 {
            return None;
        }
        let seqs: Vec<u64> = (self.next..self.next + rows).collect();
        self.next += rows;
        let values: Vec<i64> = seqs.iter().map(|&s| value_of(self.partition, s)).collect();
        let columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(StringArray::from(vec![self.source.as_str(); seqs.len()])),
            Arc::new(UInt32Array::from(vec![self.partition; seqs.len()])),
            Arc::new(UInt64Array::from(seqs)),
            Arc::new(Int64Array::from(values)),
        ];
        Some(RecordBatch::try_new(schema(), columns).expect("columns match the schema"))
    }

    /// Where the split stands: the next seq it will emit.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Continue from `position` (a value [`position`](Self::position) returned), replaying
    /// whatever was emitted after it.
    pub fn restore(&mut self, position: u64) {
        self.next = position;
    }

    /// The split's `(source, partition)`.
    pub fn id(&self) -> (&str, u32) {
        (&self.source, self.partition)
    }
}

/// The sequence generator as a streaming source: `partitions` splits named
/// `<name>/<partition>`, each emitting `rows_per_partition` rows (or without end), in
/// batches of at most `batch_rows`, optionally throttled to `rows_per_second` per split (a
/// throttled batch holds at most 50 ms of rows, so the rate holds at any scale).
///
/// ```
/// use rillet_connectors::sequence::SequenceSource;
/// use rillet_operator::StreamSource;
/// let source = SequenceSource::new("seq", 2, Some(10));
/// assert_eq!(source.splits().unwrap(), vec!["seq/0", "seq/1"]);
/// ```
#[derive(Debug, Clone)]
pub struct SequenceSource {
    name: String,
    partitions: u32,
    rows_per_partition: Option<u64>,
    batch_rows: usize,
    rows_per_second: Option<f64>,
}

impl SequenceSource {
    /// `partitions` splits of `rows_per_partition` rows each (`None`: unbounded).
    pub fn new(name: impl Into<String>, partitions: u32, rows_per_partition: Option<u64>) -> Self {
        Self {
            name: name.into(),
            partitions: partitions.max(1),
            rows_per_partition,
            batch_rows: 8192,
            rows_per_second: None,
        }
    }

    /// Rows per batch (default 8,192).
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// Emit at most `rate` rows per second per split (default: as fast as possible).
    pub fn with_rate(mut self, rate: Option<f64>) -> Self {
        self.rows_per_second = rate.filter(|r| *r > 0.0);
        self
    }
}

impl StreamSource for SequenceSource {
    fn describe(&self) -> String {
        let rows = self
            .rows_per_partition
            .map_or("unbounded".to_string(), |n| format!("{n} rows each"));
        format!(
            "sequence '{}': {} partitions, {rows}",
            self.name, self.partitions
        )
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn splits(&self) -> rillet_common::Result<Vec<String>> {
        Ok((0..self.partitions)
            .map(|p| format!("{}/{p}", self.name))
            .collect())
    }

    fn open(&self, assigned: Vec<SplitAssignment>) -> rillet_common::Result<Box<dyn SourceReader>> {
        let mut splits = Vec::with_capacity(assigned.len());
        for assignment in assigned {
            let bad = |what: &str| {
                RilletError::Checkpoint(format!("sequence split {:?}: {what}", assignment.split))
            };
            let partition: u32 = assignment
                .split
                .rsplit_once('/')
                .and_then(|(_, p)| p.parse().ok())
                .ok_or_else(|| bad("not a split of this source"))?;
            let mut split = SequenceSplit::new(&self.name, partition, self.rows_per_partition);
            if let Some(position) = &assignment.position {
                let position: u64 = std::str::from_utf8(position)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("unreadable position"))?;
                split.restore(position);
            }
            splits.push((assignment.split, split));
        }
        Ok(Box::new(SequenceReader {
            splits,
            batch_rows: self.batch_rows,
            rate: self.rows_per_second,
            started: tokio::time::Instant::now(),
            emitted: 0,
        }))
    }
}

/// Reads the splits of one task, the one furthest behind first.
struct SequenceReader {
    splits: Vec<(String, SequenceSplit)>,
    batch_rows: usize,
    rate: Option<f64>,
    started: tokio::time::Instant,
    emitted: u64,
}

#[async_trait]
impl SourceReader for SequenceReader {
    async fn next_batch(&mut self) -> rillet_common::Result<Option<RecordBatch>> {
        let mut rows = self.batch_rows;
        if let Some(rate) = self.rate {
            // Throttled: the next batch is due once the rows so far have had their time,
            // and holds at most 50 ms of rows, so the rate holds at any scale (not in
            // bursts of a whole batch).
            let per_second = rate * self.splits.len().max(1) as f64;
            rows = rows.min(((per_second / 20.0).ceil() as usize).max(1));
            let due =
                self.started + std::time::Duration::from_secs_f64(self.emitted as f64 / per_second);
            tokio::time::sleep_until(due).await;
        }
        // The split furthest behind goes next: the splits of a task stay within a batch of
        // each other in event time, through any number of restores (a fixed round robin
        // restarted at the first split would let it gain a batch at every restore, and
        // rows of the others would fall behind the watermark).
        let behind = self
            .splits
            .iter()
            .enumerate()
            .filter(|(_, (_, split))| split.end.is_none_or(|end| split.next < end))
            .min_by_key(|(i, (_, split))| (split.position(), *i))
            .map(|(i, _)| i);
        let Some(i) = behind else {
            return Ok(None);
        };
        let batch = self.splits[i].1.next_batch(rows);
        if let Some(batch) = &batch {
            self.emitted += batch.num_rows() as u64;
        }
        Ok(batch)
    }

    fn positions(&self) -> Vec<(String, Vec<u8>)> {
        self.splits
            .iter()
            .map(|(id, split)| (id.clone(), split.position().to_string().into_bytes()))
            .collect()
    }
}

/// Check rows a job committed against the sequence source: every split of `expected`
/// (`(source, partition)` to its row count) must hold each seq below its count exactly
/// once, with the right value, and nothing else. `batches` need the `source`, `partition`,
/// `seq` and `value` columns (any others are ignored). Returns the row count, or what is
/// wrong: the first gaps and repeats of each split, named by seq.
pub fn check(
    batches: &[RecordBatch],
    expected: &BTreeMap<(String, u32), u64>,
) -> Result<u64, String> {
    let mut seen: BTreeMap<(String, u32), Vec<u64>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut rows = 0u64;
    for batch in batches {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("the output has no column {name:?}"))
        };
        let source = column("source")?;
        let partition = column("partition")?;
        let seq = column("seq")?;
        let value = column("value")?;
        let (Some(source), Some(partition), Some(seq), Some(value)) = (
            source.as_any().downcast_ref::<StringArray>(),
            partition.as_any().downcast_ref::<UInt32Array>(),
            seq.as_any().downcast_ref::<UInt64Array>(),
            value.as_any().downcast_ref::<Int64Array>(),
        ) else {
            return Err(
                "columns must be source utf8, partition uint32, seq uint64, value int64".into(),
            );
        };
        for row in 0..batch.num_rows() {
            rows += 1;
            if source.is_null(row) || partition.is_null(row) || seq.is_null(row) {
                problems.push(format!("row {rows} has a null source, partition or seq"));
                continue;
            }
            let (p, s) = (partition.value(row), seq.value(row));
            if value.is_null(row) || value.value(row) != value_of(p, s) {
                problems.push(format!(
                    "{}/{p} seq {s}: value {:?}, expected {}",
                    source.value(row),
                    (!value.is_null(row)).then(|| value.value(row)),
                    value_of(p, s)
                ));
            }
            seen.entry((source.value(row).to_string(), p))
                .or_default()
                .push(s);
        }
    }
    for (split, count) in expected {
        let mut seqs = seen.remove(split).unwrap_or_default();
        seqs.sort_unstable();
        let (source, partition) = split;
        let mut repeated = Vec::new();
        let mut missing = Vec::new();
        let mut extra = Vec::new();
        let mut want = 0u64;
        let mut i = 0;
        while i < seqs.len() || want < *count {
            match seqs.get(i) {
                Some(&s) if s < want => {
                    repeated.push(s);
                    i += 1;
                }
                Some(&s) if s == want && s < *count => {
                    want += 1;
                    i += 1;
                }
                Some(&s) if s >= *count => {
                    if want < *count {
                        missing.push(want);
                        want += 1;
                    } else {
                        extra.push(s);
                        i += 1;
                    }
                }
                _ => {
                    missing.push(want);
                    want += 1;
                }
            }
        }
        for (what, list) in [
            ("missing", missing),
            ("repeated", repeated),
            ("beyond the end", extra),
        ] {
            if !list.is_empty() {
                problems.push(format!(
                    "{source}/{partition}: {} seq {what} (first: {:?})",
                    list.len(),
                    &list[..list.len().min(5)]
                ));
            }
        }
    }
    for ((source, partition), seqs) in seen {
        problems.push(format!(
            "{source}/{partition}: {} rows of a split that was not expected",
            seqs.len()
        ));
    }
    let total: u64 = expected.values().sum();
    if problems.is_empty() && rows != total {
        problems.push(format!("{rows} rows, expected {total}"));
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(problems.join("; "))
    }
}

/// The sequence source from its options (`name`, `partitions`, `rows` per partition, absent
/// for no end, `rows_per_second`, `batch_rows`).
pub(crate) fn source_options(
    options: &mut crate::registry::Options,
) -> rillet_common::Result<crate::registry::BuiltSource> {
    let name = options.string("name")?;
    let partitions = options.u64("partitions")?;
    let partitions = u32::try_from(partitions).map_err(|_| {
        RilletError::invalid_argument(format!(
            "the sequence source: {partitions} partitions is too many"
        ))
    })?;
    let rows = options.opt_u64("rows")?;
    let mut source =
        SequenceSource::new(name, partitions, rows).with_rate(options.opt_f64("rows_per_second")?);
    if let Some(batch_rows) = options.opt_usize("batch_rows")? {
        source = source.with_batch_rows(batch_rows);
    }
    Ok(crate::registry::BuiltSource {
        source: Arc::new(source),
        bounded: rows.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(split: &mut SequenceSplit, size: usize) -> Vec<RecordBatch> {
        std::iter::from_fn(|| split.next_batch(size)).collect()
    }

    fn expected(splits: &[(u32, u64)]) -> BTreeMap<(String, u32), u64> {
        splits
            .iter()
            .map(|&(p, n)| (("seq".to_string(), p), n))
            .collect()
    }

    #[test]
    fn splits_emit_contiguous_rows_and_an_unbounded_one_never_ends() {
        let mut bounded = SequenceSplit::new("seq", 2, Some(10));
        let batches = run(&mut bounded, 4);
        assert_eq!(
            batches
                .iter()
                .map(RecordBatch::num_rows)
                .collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(check(&batches, &expected(&[(2, 10)])), Ok(10));
        assert_eq!(bounded.position(), 10);
        let mut unbounded = SequenceSplit::new("seq", 0, None);
        for _ in 0..3 {
            assert_eq!(unbounded.next_batch(1000).unwrap().num_rows(), 1000);
        }
        assert_eq!(unbounded.position(), 3000);
        assert_eq!(unbounded.id(), ("seq", 0));
    }

    #[test]
    fn the_oracle_names_each_kind_of_wrong_output() {
        let mut split = SequenceSplit::new("seq", 0, Some(6));
        let all = run(&mut split, 2); // seq 0-1, 2-3, 4-5
        let want = expected(&[(0, 6)]);
        let lost = check(&[all[0].clone(), all[2].clone()], &want).unwrap_err();
        assert!(lost.contains("2 seq missing (first: [2, 3])"), "{lost}");
        let doubled = check(
            &[
                all[0].clone(),
                all[1].clone(),
                all[1].clone(),
                all[2].clone(),
            ],
            &want,
        )
        .unwrap_err();
        assert!(
            doubled.contains("2 seq repeated (first: [2, 3])"),
            "{doubled}"
        );
        let short = check(&all, &expected(&[(0, 4)])).unwrap_err();
        assert!(
            short.contains("2 seq beyond the end (first: [4, 5])"),
            "{short}"
        );
        let other = check(&all, &expected(&[(0, 6), (1, 1)])).unwrap_err();
        assert!(other.contains("seq/1: 1 seq missing"), "{other}");
        let unexpected = check(&all, &BTreeMap::new()).unwrap_err();
        assert!(unexpected.contains("not expected"), "{unexpected}");
        // A value that does not match its seq is corruption.
        let mut columns = all[0].columns().to_vec();
        columns[3] = Arc::new(Int64Array::from(vec![-1, value_of(0, 1)]));
        let corrupt = RecordBatch::try_new(schema(), columns).unwrap();
        let err = check(&[corrupt, all[1].clone(), all[2].clone()], &want).unwrap_err();
        assert!(err.contains("seq 0: value Some(-1)"), "{err}");
    }

    proptest! {
        /// Cutting a run at any position and restoring there replays exactly what came
        /// after: the oracle accepts the committed prefix plus the replay, and rejects the
        /// replay added to everything (the duplicates a non-exactly-once sink would keep).
        #[test]
        fn restoring_a_position_replays_exactly_the_rest(
            end in 1u64..200, size in 1usize..50, cut in 0u64..200,
        ) {
            let cut = cut % end;
            let mut split = SequenceSplit::new("seq", 3, Some(end));
            let before: Vec<RecordBatch> = std::iter::from_fn(|| {
                (split.position() < cut).then(|| split.next_batch(((cut - split.position()) as usize).min(size))).flatten()
            }).collect();
            prop_assert_eq!(split.position(), cut);
            let after_crash = run(&mut split.clone(), size);
            let mut restored = SequenceSplit::new("seq", 3, Some(end));
            restored.restore(cut);
            let replay = run(&mut restored, size);
            let mut committed = before.clone();
            committed.extend(replay.iter().cloned());
            prop_assert_eq!(check(&committed, &expected(&[(3, end)])), Ok(end));
            if !after_crash.is_empty() {
                let mut doubled = committed.clone();
                doubled.extend(after_crash);
                prop_assert!(check(&doubled, &expected(&[(3, end)])).is_err());
            }
        }
    }
}
