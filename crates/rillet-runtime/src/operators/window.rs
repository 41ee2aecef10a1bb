//! Keyed event-time window aggregates: tumbling and sliding windows over an event-time
//! column, with count/sum/min/max per key and window, fired when the watermark passes the
//! window's end plus its allowed lateness.
//!
//! A window `[start, start + size)` starts at every multiple of `slide` (tumbling windows
//! have `slide == size`), so a row falls into `size / slide` windows (rounded up). A window
//! fires once, when the watermark reaches `end + lateness`: one output row per key, with
//! `window_start` and `window_end`. A row for a window that has fired is late: it is
//! dropped and counted (the operator's `dropped_late` metric), never silently lost. Each
//! task's open windows and watermark are its checkpointed state, so a restored job emits
//! exactly the windows the uninterrupted one would have.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use rillet_common::{Result, RilletError};
use rillet_operator::keygroups::TaskPlacement;

use super::state;

/// What a window aggregate's state is called in it and in errors.
const STATE_NAME: &str = "window aggregate";
use rillet_operator::{OperatorTask, StreamOperator, WATERMARK_END};

use super::running::{
    KeyedValues, Output, RunningSpec, StateReader, Value, decode_keyed, describe_field,
    describe_layout, integer_input, keep_owned, spec_inputs, update,
};
use super::watermark::{check_event_time_type, event_times};

/// Which windows: their event-time column, size, slide and allowed lateness (all in the
/// column's units: its time unit for timestamps, days for `Date32`, the number for
/// integers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct WindowSpec {
    /// The event-time column (input index).
    pub time: usize,
    /// Window length.
    pub size: i64,
    /// Distance between window starts; `size` for tumbling windows.
    pub slide: i64,
    /// How long after its end a window waits for late rows before it fires.
    pub lateness: i64,
}

impl WindowSpec {
    /// Tumbling windows of `size` over column `time`.
    pub fn tumbling(time: usize, size: i64) -> Self {
        Self {
            time,
            size,
            slide: size,
            lateness: 0,
        }
    }

    /// Sliding windows of `size`, one starting every `slide`, over column `time`.
    pub fn sliding(time: usize, size: i64, slide: i64) -> Self {
        Self {
            time,
            size,
            slide,
            lateness: 0,
        }
    }

    /// The same windows, waiting `lateness` after their end for late rows.
    pub fn with_lateness(mut self, lateness: i64) -> Self {
        self.lateness = lateness;
        self
    }

    fn check(&self) -> Result<()> {
        if self.size <= 0 || self.slide <= 0 || self.lateness < 0 {
            return Err(RilletError::invalid_argument(format!(
                "windows need a positive size and slide and a lateness of 0 or more; got size \
                 {}, slide {}, lateness {}",
                self.size, self.slide, self.lateness
            )));
        }
        if self.slide > self.size {
            return Err(RilletError::invalid_argument(format!(
                "a window slide ({}) longer than its size ({}) would skip rows",
                self.slide, self.size
            )));
        }
        Ok(())
    }

    /// The starts of the windows holding event time `ts`, latest first.
    fn starts(&self, ts: i64) -> impl Iterator<Item = i64> + '_ {
        let last = ts - ts.rem_euclid(self.slide);
        let first_after = ts.saturating_sub(self.size);
        std::iter::successors(Some(last), move |s| s.checked_sub(self.slide))
            .take_while(move |&s| s > first_after)
    }

    /// Whether the window starting at `start` fires at watermark `watermark`.
    fn fires(&self, start: i64, watermark: i64) -> bool {
        start
            .saturating_add(self.size)
            .saturating_add(self.lateness)
            <= watermark
    }
}

/// The window aggregate operator (one task per key partition).
#[derive(Debug, Clone)]
pub struct WindowAggregate {
    input_schema: SchemaRef,
    keys: Vec<usize>,
    window: WindowSpec,
    specs: Vec<RunningSpec>,
    integer: Vec<bool>,
    schema: SchemaRef,
}

impl WindowAggregate {
    /// `specs` per key `keys` and window of `window`, over `input_schema`.
    pub fn try_new(
        input_schema: SchemaRef,
        keys: Vec<usize>,
        window: WindowSpec,
        specs: Vec<RunningSpec>,
    ) -> Result<Self> {
        window.check()?;
        let time = input_schema.fields().get(window.time).ok_or_else(|| {
            RilletError::invalid_argument(format!("window: no column {}", window.time))
        })?;
        check_event_time_type(time.name(), time.data_type())?;
        let bound_type = match time.data_type() {
            t @ DataType::Timestamp(..) => t.clone(),
            _ => DataType::Int64,
        };
        let mut fields: Vec<Arc<Field>> = keys
            .iter()
            .map(|&k| input_schema.fields()[k].clone())
            .collect();
        fields.push(Arc::new(Field::new(
            "window_start",
            bound_type.clone(),
            false,
        )));
        fields.push(Arc::new(Field::new("window_end", bound_type, false)));
        let integer = specs
            .iter()
            .map(|s| integer_input(&input_schema, s))
            .collect::<Result<Vec<_>>>()?;
        for (spec, &integer) in specs.iter().zip(&integer) {
            if fields.iter().any(|f| f.name() == &spec.output) {
                return Err(RilletError::invalid_argument(format!(
                    "window aggregate output {:?} clashes with a key or window column",
                    spec.output
                )));
            }
            let data_type = if integer {
                DataType::Int64
            } else {
                DataType::Float64
            };
            fields.push(Arc::new(Field::new(&spec.output, data_type, true)));
        }
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
            input_schema,
            keys,
            window,
            specs,
            integer,
        })
    }

    fn task(&self) -> Result<WindowTask> {
        let fields = self
            .keys
            .iter()
            .map(|&k| SortField::new(self.input_schema.field(k).data_type().clone()))
            .collect();
        Ok(WindowTask {
            op: self.clone(),
            converter: RowConverter::new(fields)?,
            windows: BTreeMap::new(),
            watermark: None,
            dropped: 0,
        })
    }
}

impl StreamOperator for WindowAggregate {
    /// Names the state layout too (keys, time column, windows, aggregates), so that a
    /// restore into a changed aggregate is refused instead of misread.
    fn name(&self) -> String {
        let (keys, specs) = describe_layout(&self.input_schema, &self.keys, &self.specs);
        let field = |i: usize| describe_field(&self.input_schema, i);
        let w = &self.window;
        let windows = if w.slide == w.size {
            format!("tumbling({}, {})", field(w.time), w.size)
        } else {
            format!("sliding({}, {}, {})", field(w.time), w.size, w.slide)
        };
        format!(
            "window aggregate by [{keys}] over {windows}, lateness {}: {specs}",
            w.lateness
        )
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn key_columns(&self) -> Option<Vec<usize>> {
        Some(self.keys.clone())
    }

    fn open(
        &self,
        placement: TaskPlacement,
        restored: &[Vec<u8>],
    ) -> Result<Box<dyn OperatorTask>> {
        let mut task = self.task()?;
        for bytes in restored {
            task.restore(bytes, placement)?;
        }
        Ok(Box::new(task))
    }
}

/// Per window start, each key's accumulators.
type Windows = BTreeMap<i64, KeyedValues>;

struct WindowTask {
    op: WindowAggregate,
    converter: RowConverter,
    windows: Windows,
    /// The input watermark so far: windows it has fired are closed to new rows.
    watermark: Option<i64>,
    /// Rows dropped as late since the runtime last asked.
    dropped: u64,
}

impl WindowTask {
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let op = &self.op;
        let times = event_times(batch.column(op.window.time))?;
        let key_columns: Vec<ArrayRef> = op.keys.iter().map(|&k| batch.column(k).clone()).collect();
        let keys = self.converter.convert_columns(&key_columns)?;
        let inputs = spec_inputs(&op.specs, &op.integer, batch)?;
        let empty = vec![Value::Empty; op.specs.len()];
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                // No event time, no window: counted with the late rows.
                self.dropped += 1;
                continue;
            }
            // Without key columns every row has the empty key.
            let key: &[u8] = if op.keys.is_empty() {
                &[]
            } else {
                keys.row(row).data()
            };
            let mut placed = false;
            for start in op.window.starts(times.value(row)) {
                if self.watermark.is_some_and(|w| op.window.fires(start, w)) {
                    continue;
                }
                placed = true;
                let window = self.windows.entry(start).or_default();
                let accumulators = match window.get_mut(key) {
                    Some(accumulators) => accumulators,
                    None => window.entry(key.into()).or_insert_with(|| empty.clone()),
                };
                for (s, spec) in op.specs.iter().enumerate() {
                    accumulators[s] =
                        update(spec.function, accumulators[s], inputs[s].as_deref(), row);
                }
            }
            if !placed {
                self.dropped += 1;
            }
        }
        Ok(())
    }

    /// Output the windows that fire at `watermark`, in window then key order.
    fn fire(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        let window = &self.op.window;
        let Some(&first) = self.windows.keys().next() else {
            return Ok(Vec::new());
        };
        if !window.fires(first, watermark) {
            return Ok(Vec::new());
        }
        // Starts up to `last` fire: `last + size + lateness <= watermark`.
        let last = watermark
            .saturating_sub(window.size)
            .saturating_sub(window.lateness);
        let open = match last.checked_add(1) {
            Some(after) => self.windows.split_off(&after),
            None => BTreeMap::new(),
        };
        let fired = std::mem::replace(&mut self.windows, open);
        let rows: usize = fired.values().map(HashMap::len).sum();
        let (mut starts, mut ends) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let mut outputs: Vec<Output> = self
            .op
            .integer
            .iter()
            .map(|&i| Output::new(i, rows))
            .collect();
        let parser = self.converter.parser();
        let mut key_rows = Vec::with_capacity(rows);
        for (start, keys) in &fired {
            let mut entries: Vec<_> = keys.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (key, values) in entries {
                if !self.op.keys.is_empty() {
                    key_rows.push(parser.parse(key));
                }
                starts.push(*start);
                ends.push(start.saturating_add(window.size));
                for (output, value) in outputs.iter_mut().zip(values) {
                    output.push(*value);
                }
            }
        }
        let mut columns = if self.op.keys.is_empty() {
            Vec::new()
        } else {
            self.converter.convert_rows(key_rows)?
        };
        let bound_type = self.op.schema.field(self.op.keys.len()).data_type();
        for bounds in [starts, ends] {
            let bounds: ArrayRef = Arc::new(Int64Array::from(bounds));
            columns.push(arrow::compute::cast(&bounds, bound_type)?);
        }
        columns.extend(outputs.into_iter().map(Output::finish));
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(vec![RecordBatch::try_new_with_options(
            self.op.schema.clone(),
            columns,
            &options,
        )?])
    }

    /// The key columns' fields, as the input has them.
    fn key_fields(&self) -> Vec<Field> {
        self.op
            .keys
            .iter()
            .map(|&k| self.op.input_schema.field(k).clone())
            .collect()
    }

    /// The state in the keyed-state codec ([`super::state`]): the watermark, and a row
    /// per open window and key, in window then key order.
    fn encode(&self) -> Result<Vec<u8>> {
        let mut entries = Vec::new();
        for (start, keys) in &self.windows {
            let mut window: Vec<state::Entry> = keys
                .iter()
                .map(|(key, values)| (Some(*start), key.clone(), values.clone()))
                .collect();
            window.sort_by(|a, b| a.1.cmp(&b.1));
            entries.extend(window);
        }
        state::encode(
            STATE_NAME,
            &self.converter,
            &self.key_fields(),
            self.op.specs.len(),
            true,
            self.watermark,
            &entries,
        )
    }

    /// The windows and watermark of a state of the first versions' binary layout: the
    /// watermark (a flag and 8 bytes), the window count, then per window its start and
    /// its keys ([`super::running::encode_keyed`]'s layout).
    fn decode_legacy(&self, bytes: &[u8]) -> Result<(Windows, Option<i64>)> {
        let mut reader = StateReader::new(bytes, STATE_NAME);
        let has_watermark = reader.u8()? == 1;
        let watermark = reader.u64()? as i64;
        let mut windows = Windows::new();
        for _ in 0..reader.u64()? {
            let start = reader.u64()? as i64;
            windows.insert(start, decode_keyed(&mut reader, self.op.specs.len())?);
        }
        reader.finish()?;
        Ok((windows, has_watermark.then_some(watermark)))
    }

    /// Add the open windows of `placement`'s key groups from a snapshotted state. Every
    /// task of a snapshot holds the same watermark (each takes the least of the same
    /// inputs, aligned at the barrier); the least is kept all the same.
    fn restore(&mut self, bytes: &[u8], placement: TaskPlacement) -> Result<()> {
        let (windows, watermark) = if state::is_versioned(bytes) {
            let (entries, watermark) = state::decode(
                bytes,
                STATE_NAME,
                &self.converter,
                &self.key_fields(),
                self.op.specs.len(),
                true,
            )?;
            let mut windows = Windows::new();
            for (start, key, values) in entries {
                windows
                    .entry(start.unwrap_or(0))
                    .or_default()
                    .insert(key, values);
            }
            (windows, watermark)
        } else {
            self.decode_legacy(bytes)?
        };
        let keyless = self.op.keys.is_empty();
        for (start, mut keyed) in windows {
            keep_owned(&mut keyed, &self.converter, keyless, placement)?;
            if !keyed.is_empty() {
                self.windows.entry(start).or_default().extend(keyed);
            }
        }
        if let Some(watermark) = watermark {
            self.watermark = Some(self.watermark.map_or(watermark, |w| w.min(watermark)));
        }
        Ok(())
    }
}

impl OperatorTask for WindowTask {
    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.add(&batch)?;
        Ok(Vec::new())
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        self.encode().map(Some)
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<(Vec<RecordBatch>, Option<i64>)> {
        if self.watermark.is_some_and(|w| w >= watermark) {
            return Ok((Vec::new(), None));
        }
        self.watermark = Some(watermark);
        Ok((self.fire(watermark)?, Some(watermark)))
    }

    fn finish(&mut self) -> Result<Vec<RecordBatch>> {
        self.fire(WATERMARK_END)
    }

    fn take_dropped_late(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::Int64Type;

    use super::super::running::RunningFunction;
    use super::*;

    /// The one task of an operator on one.
    const ONE: TaskPlacement = TaskPlacement {
        task: 0,
        parallelism: 1,
    };

    fn batch(rows: &[(&str, i64, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn operator(window: WindowSpec) -> WindowAggregate {
        let specs = vec![
            RunningSpec {
                function: RunningFunction::Count,
                input: None,
                output: "n".into(),
            },
            RunningSpec {
                function: RunningFunction::Sum,
                input: Some(2),
                output: "total".into(),
            },
        ];
        WindowAggregate::try_new(batch(&[]).schema(), vec![0], window, specs).unwrap()
    }

    /// (key, start, end, n, total) of every output row.
    fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, i64, i64, i64)> {
        let mut out = Vec::new();
        for b in batches {
            let int = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
            let (start, end, n, total) = (int(1), int(2), int(3), int(4));
            for r in 0..b.num_rows() {
                out.push((
                    b.column(0).as_string::<i32>().value(r).to_string(),
                    start.value(r),
                    end.value(r),
                    n.value(r),
                    total.value(r),
                ));
            }
        }
        out
    }

    #[test]
    fn tumbling_windows_fire_at_the_watermark_and_late_rows_are_counted() {
        let op = operator(WindowSpec::tumbling(1, 10));
        let mut task = op.open(ONE, &[]).unwrap();
        task.process(batch(&[
            ("a", 1, 1),
            ("b", 5, 10),
            ("a", 9, 2),
            ("a", 12, 100),
        ]))
        .unwrap();
        let (out, forward) = task.on_watermark(9).unwrap();
        assert!(out.is_empty(), "[0, 10) is still open at 9");
        assert_eq!(forward, Some(9));
        let (out, _) = task.on_watermark(10).unwrap();
        assert_eq!(
            rows(&out),
            vec![("a".into(), 0, 10, 2, 3), ("b".into(), 0, 10, 1, 10)]
        );
        // A row for the fired window is late; one for the open window counts.
        task.process(batch(&[("a", 3, 1000), ("a", 15, 5)]))
            .unwrap();
        assert_eq!(task.take_dropped_late(), 1);
        assert_eq!(task.take_dropped_late(), 0);
        assert_eq!(
            rows(&task.finish().unwrap()),
            vec![("a".into(), 10, 20, 2, 105)]
        );
    }

    #[test]
    fn sliding_windows_hold_each_row_in_every_window_over_it() {
        let op = operator(WindowSpec::sliding(1, 10, 5));
        let mut task = op.open(ONE, &[]).unwrap();
        task.process(batch(&[("a", 7, 1), ("a", -1, 10)])).unwrap();
        let out = task.finish().unwrap();
        assert_eq!(
            rows(&out),
            vec![
                ("a".into(), -10, 0, 1, 10),
                ("a".into(), -5, 5, 1, 10),
                ("a".into(), 0, 10, 1, 1),
                ("a".into(), 5, 15, 1, 1),
            ]
        );
    }

    #[test]
    fn lateness_keeps_a_window_open_and_a_restore_continues_exactly() {
        let op = operator(WindowSpec::tumbling(1, 10).with_lateness(5));
        let mut task = op.open(ONE, &[]).unwrap();
        task.process(batch(&[("a", 1, 1)])).unwrap();
        assert!(
            task.on_watermark(12).unwrap().0.is_empty(),
            "waits 5 past its end"
        );
        let state = task.snapshot().unwrap().unwrap();
        task.process(batch(&[("a", 2, 50)])).unwrap(); // lost in a crash
        let mut restored = op.open(ONE, std::slice::from_ref(&state)).unwrap();
        restored.process(batch(&[("a", 4, 2)])).unwrap();
        let (out, _) = restored.on_watermark(15).unwrap();
        assert_eq!(rows(&out), vec![("a".into(), 0, 10, 2, 3)]);
        let Err(err) = op.open(ONE, &[state[..state.len() - 2].to_vec()]) else {
            panic!("a cut-short state restored");
        };
        assert!(matches!(err, RilletError::Checkpoint(_)), "{err}");
    }

    #[test]
    fn bad_windows_are_refused() {
        let schema = batch(&[]).schema();
        for (window, needle) in [
            (WindowSpec::tumbling(1, 0), "positive size"),
            (WindowSpec::sliding(1, 5, 10), "skip rows"),
            (WindowSpec::tumbling(0, 5), "must be a timestamp"),
        ] {
            let err = WindowAggregate::try_new(schema.clone(), vec![0], window, vec![])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
