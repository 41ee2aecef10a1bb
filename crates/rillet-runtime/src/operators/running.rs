//! Keyed running aggregates: each row gets its key's aggregates over every row of that key
//! so far (Flink's `keyBy(...).sum(...)`), with the per-key state snapshotted at
//! checkpoints and restored exactly.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use rillet_common::{Result, RilletError};
use rillet_operator::keygroups::{TaskPlacement, key_groups};

use super::state;

/// What a running aggregate's state is called in it and in errors.
const STATE_NAME: &str = "running aggregate";
use rillet_operator::{OperatorTask, StreamOperator};

/// What a running aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum RunningFunction {
    /// Rows so far (of the input column: its non-null values; without one: every row).
    Count,
    /// Sum of the values so far.
    Sum,
    /// Smallest value so far.
    Min,
    /// Largest value so far.
    Max,
}

/// One running aggregate: a function of an input column, written to column `output`.
#[derive(Debug, Clone, PartialEq, Hash, PartialOrd)]
pub struct RunningSpec {
    /// The function.
    pub function: RunningFunction,
    /// The input column's index (`None` for `count(*)`).
    pub input: Option<usize>,
    /// Name of the output column.
    pub output: String,
}

/// Whether a spec accumulates integers (exactly) or floats.
pub(super) fn integer_input(schema: &Schema, spec: &RunningSpec) -> Result<bool> {
    let Some(input) = spec.input else {
        return Ok(true);
    };
    let field = schema.field(input);
    match field.data_type() {
        t if t.is_integer() => Ok(true),
        t if t.is_floating() => Ok(spec.function == RunningFunction::Count),
        _ if spec.function == RunningFunction::Count => Ok(true),
        other => Err(RilletError::invalid_argument(format!(
            "running {:?} of column {:?} needs numbers, not {other}",
            spec.function,
            field.name()
        ))),
    }
}

/// The output schema: the input's columns, then one per spec (Int64 for counts and integer
/// inputs, Float64 for float inputs).
pub fn running_schema(input: &Schema, specs: &[RunningSpec]) -> Result<SchemaRef> {
    let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
    for spec in specs {
        if input.column_with_name(&spec.output).is_some() {
            return Err(RilletError::invalid_argument(format!(
                "running aggregate output {:?} clashes with an input column",
                spec.output
            )));
        }
        let data_type = if integer_input(input, spec)? {
            DataType::Int64
        } else {
            DataType::Float64
        };
        fields.push(Arc::new(Field::new(&spec.output, data_type, true)));
    }
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        input.metadata().clone(),
    )))
}

/// The streaming operator (one task per key partition).
#[derive(Debug, Clone)]
pub struct RunningAggregate {
    input_schema: SchemaRef,
    keys: Vec<usize>,
    specs: Vec<RunningSpec>,
    schema: SchemaRef,
}

impl RunningAggregate {
    /// Aggregates `specs` per key `keys` (input column indices) of `input_schema`.
    pub fn try_new(
        input_schema: SchemaRef,
        keys: Vec<usize>,
        specs: Vec<RunningSpec>,
    ) -> Result<Self> {
        if keys.is_empty() {
            return Err(RilletError::invalid_argument(
                "a running aggregate needs at least one key column",
            ));
        }
        let schema = running_schema(&input_schema, &specs)?;
        Ok(Self {
            input_schema,
            keys,
            specs,
            schema,
        })
    }

    fn task(&self) -> Result<RunningTask> {
        let fields = self
            .keys
            .iter()
            .map(|&k| SortField::new(self.input_schema.field(k).data_type().clone()))
            .collect();
        let integer = self
            .specs
            .iter()
            .map(|s| integer_input(&self.input_schema, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(RunningTask {
            converter: RowConverter::new(fields)?,
            keys: self.keys.clone(),
            specs: self.specs.clone(),
            integer,
            schema: self.schema.clone(),
            state: HashMap::new(),
        })
    }
}

impl StreamOperator for RunningAggregate {
    /// Names the state layout too (key columns and types, each input's column and type),
    /// so that a restore into a changed aggregate is refused instead of misread.
    fn name(&self) -> String {
        let (keys, specs) = describe_layout(&self.input_schema, &self.keys, &self.specs);
        format!("running aggregate by [{keys}]: {specs}")
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

/// Fuzzing entry point (not an API): restore the running aggregate of a sequence job
/// (by `source`: count, sum and max of `value`) from `bytes`, then run it on a row and
/// snapshot it; whether all of that worked. Any outcome but a panic is fine.
#[doc(hidden)]
pub fn fuzz_restore(bytes: &[u8]) -> bool {
    let schema = Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("value", DataType::Int64, false),
    ]));
    let spec = |function, input: Option<usize>, output: &str| RunningSpec {
        function,
        input,
        output: output.into(),
    };
    let specs = vec![
        spec(RunningFunction::Count, None, "n"),
        spec(RunningFunction::Sum, Some(3), "total"),
        spec(RunningFunction::Max, Some(3), "top"),
    ];
    let Ok(operator) = RunningAggregate::try_new(schema.clone(), vec![0], specs) else {
        return false;
    };
    let placement = TaskPlacement {
        task: 0,
        parallelism: 1,
    };
    let Ok(mut task) = operator.open(placement, &[bytes.to_vec()]) else {
        return false;
    };
    let row = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(arrow::array::StringArray::from(vec!["seq"])),
            Arc::new(arrow::array::UInt32Array::from(vec![0])),
            Arc::new(arrow::array::UInt64Array::from(vec![0])),
            Arc::new(arrow::array::Int64Array::from(vec![1])),
        ],
    );
    let processed = row.is_ok_and(|row| task.process(row).is_ok());
    processed && task.snapshot().is_ok()
}

/// Drop from `keyed` the keys whose key group `placement` does not own: what a task
/// restoring other tasks' state at another parallelism leaves to the other tasks.
/// `converter` reads the keys back into columns (`keyless`: every key is the empty one).
pub(super) fn keep_owned(
    keyed: &mut KeyedValues,
    converter: &RowConverter,
    keyless: bool,
    placement: TaskPlacement,
) -> Result<()> {
    if keyed.is_empty() {
        return Ok(());
    }
    let keys: Vec<Box<[u8]>> = keyed.keys().cloned().collect();
    let columns = if keyless {
        Vec::new()
    } else {
        let parser = converter.parser();
        converter.convert_rows(keys.iter().map(|k| parser.parse(k)))?
    };
    for (key, group) in keys.iter().zip(key_groups(&columns, keys.len())?) {
        if !placement.owns(group) {
            keyed.remove(key);
        }
    }
    Ok(())
}

/// One accumulator: an exact integer or a float (the same width either way, so a state
/// entry is fixed-size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Value {
    Empty,
    Int(i64),
    Float(f64),
}

struct RunningTask {
    converter: RowConverter,
    keys: Vec<usize>,
    specs: Vec<RunningSpec>,
    /// Per spec: accumulates integers.
    integer: Vec<bool>,
    schema: SchemaRef,
    /// Each key's accumulators, by the key's row encoding.
    state: KeyedValues,
}

impl RunningTask {
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let key_columns: Vec<ArrayRef> =
            self.keys.iter().map(|&k| batch.column(k).clone()).collect();
        let rows = self.converter.convert_columns(&key_columns)?;
        let n = batch.num_rows();
        let inputs = spec_inputs(&self.specs, &self.integer, batch)?;
        let mut outputs: Vec<Output> = self
            .integer
            .iter()
            .map(|&integer| Output::new(integer, n))
            .collect();
        let empty = vec![Value::Empty; self.specs.len()];
        for row in 0..n {
            let key = rows.row(row);
            let accumulators = match self.state.get_mut(key.as_ref()) {
                Some(accumulators) => accumulators,
                None => self
                    .state
                    .entry(key.as_ref().into())
                    .or_insert_with(|| empty.clone()),
            };
            for (s, spec) in self.specs.iter().enumerate() {
                let current = &mut accumulators[s];
                *current = update(spec.function, *current, inputs[s].as_deref(), row);
                outputs[s].push(*current);
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.extend(outputs.into_iter().map(Output::finish));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The key columns' fields, as the input has them.
    fn key_fields(&self) -> Vec<Field> {
        self.keys
            .iter()
            .map(|&k| self.schema.field(k).clone())
            .collect()
    }

    /// The state in the keyed-state codec ([`super::state`]), keys in order.
    fn encode(&self) -> Result<Vec<u8>> {
        let mut entries: Vec<state::Entry> = self
            .state
            .iter()
            .map(|(key, values)| (None, key.clone(), values.clone()))
            .collect();
        entries.sort_by(|a, b| a.1.cmp(&b.1));
        state::encode(
            STATE_NAME,
            &self.converter,
            &self.key_fields(),
            self.specs.len(),
            false,
            None,
            &entries,
        )
    }

    /// Add the keys of `placement`'s key groups from a snapshotted state (of the codec, or
    /// of the binary layout of the first versions).
    fn restore(&mut self, bytes: &[u8], placement: TaskPlacement) -> Result<()> {
        let mut state = if state::is_versioned(bytes) {
            let (entries, _) = state::decode(
                bytes,
                STATE_NAME,
                &self.converter,
                &self.key_fields(),
                self.specs.len(),
                false,
            )?;
            entries
                .into_iter()
                .map(|(_, key, values)| (key, values))
                .collect()
        } else {
            let mut reader = StateReader::new(bytes, STATE_NAME);
            let state = decode_keyed(&mut reader, self.specs.len())?;
            reader.finish()?;
            state
        };
        keep_owned(&mut state, &self.converter, self.keys.is_empty(), placement)?;
        self.state.extend(state);
        Ok(())
    }
}

/// `name: type` of input column `i`.
pub(super) fn describe_field(schema: &Schema, i: usize) -> String {
    let f = schema.field(i);
    format!("{}: {}", f.name(), f.data_type())
}

/// The keys and aggregates of a keyed aggregate's state, with their input types: the
/// part of its name that a restore checks.
pub(super) fn describe_layout(
    schema: &Schema,
    keys: &[usize],
    specs: &[RunningSpec],
) -> (String, String) {
    let keys: Vec<String> = keys.iter().map(|&k| describe_field(schema, k)).collect();
    let specs: Vec<String> = specs
        .iter()
        .map(|s| {
            let function = format!("{:?}", s.function).to_lowercase();
            let input = s
                .input
                .map_or("*".to_string(), |i| describe_field(schema, i));
            format!("{function}({input}) as {}", s.output)
        })
        .collect();
    (keys.join(", "), specs.join(", "))
}

/// Each spec's input column of `batch`, cast once to i64 or f64 (as is for counts).
pub(super) fn spec_inputs(
    specs: &[RunningSpec],
    integer: &[bool],
    batch: &RecordBatch,
) -> Result<Vec<Option<ArrayRef>>> {
    specs
        .iter()
        .zip(integer)
        .map(|(spec, &integer)| {
            spec.input
                .map(|i| {
                    let column = batch.column(i);
                    if spec.function == RunningFunction::Count {
                        return Ok(column.clone());
                    }
                    let to = if integer {
                        DataType::Int64
                    } else {
                        DataType::Float64
                    };
                    Ok(arrow::compute::cast(column, &to)?)
                })
                .transpose()
        })
        .collect()
}

/// Append `values` to a state encoding: a tag byte and 8 bytes each, so entries are
/// fixed-size.
#[cfg(test)]
fn encode_values(out: &mut Vec<u8>, values: &[Value]) {
    for value in values {
        let (tag, bits) = match value {
            Value::Empty => (0u8, 0u64),
            Value::Int(v) => (1, *v as u64),
            Value::Float(v) => (2, v.to_bits()),
        };
        out.push(tag);
        out.extend_from_slice(&bits.to_le_bytes());
    }
}

/// Reads a state encoding front to back: running out of bytes is a "cut short" error,
/// bytes left over a "trailing bytes" one, both naming the operator.
pub(super) struct StateReader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> StateReader<'a> {
    pub(super) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, at: 0, what }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let slice = self
            .bytes
            .get(self.at..self.at + len)
            .ok_or_else(|| RilletError::Checkpoint(format!("{} state is cut short", self.what)))?;
        self.at += len;
        Ok(slice)
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// The end: every byte read.
    pub(super) fn finish(self) -> Result<()> {
        if self.at != self.bytes.len() {
            return Err(RilletError::Checkpoint(format!(
                "{} state has trailing bytes",
                self.what
            )));
        }
        Ok(())
    }
}

/// Each key's accumulators, by the key's row encoding.
pub(super) type KeyedValues = HashMap<Box<[u8]>, Vec<Value>>;

/// Append `keyed` to a state encoding: the entry count, then per key (sorted, so that
/// equal states encode equally) its length, its bytes and its values.
#[cfg(test)]
pub(super) fn encode_keyed(out: &mut Vec<u8>, keyed: &KeyedValues) {
    out.extend_from_slice(&(keyed.len() as u64).to_le_bytes());
    let mut entries: Vec<_> = keyed.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (key, values) in entries {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        encode_values(out, values);
    }
}

/// Read what [`encode_keyed`] wrote, `specs` values per key.
pub(super) fn decode_keyed(reader: &mut StateReader<'_>, specs: usize) -> Result<KeyedValues> {
    let entries = reader.u64()?;
    // A damaged count must not reserve the machine's memory: grow past a bound instead.
    let mut keyed = HashMap::with_capacity(entries.min(1 << 20) as usize);
    for _ in 0..entries {
        let len = u32::from_le_bytes(reader.take(4)?.try_into().expect("4 bytes")) as usize;
        let key: Box<[u8]> = reader.take(len)?.into();
        keyed.insert(key, decode_values(reader, specs)?);
    }
    Ok(keyed)
}

/// Read `count` values written by [`encode_values`].
fn decode_values(reader: &mut StateReader<'_>, count: usize) -> Result<Vec<Value>> {
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = reader.u8()?;
        let bits = reader.u64()?;
        values.push(match tag {
            0 => Value::Empty,
            1 => Value::Int(bits as i64),
            2 => Value::Float(f64::from_bits(bits)),
            other => {
                return Err(RilletError::Checkpoint(format!(
                    "aggregate state has an unknown value tag {other}"
                )));
            }
        });
    }
    Ok(values)
}

pub(super) fn update(
    function: RunningFunction,
    current: Value,
    input: Option<&dyn Array>,
    row: usize,
) -> Value {
    let Some(input) = input else {
        // count(*)
        return match current {
            Value::Int(n) => Value::Int(n + 1),
            _ => Value::Int(1),
        };
    };
    if input.is_null(row) {
        return match (function, current) {
            (RunningFunction::Count, Value::Empty) => Value::Int(0),
            _ => current,
        };
    }
    if function == RunningFunction::Count {
        return match current {
            Value::Int(n) => Value::Int(n + 1),
            _ => Value::Int(1),
        };
    }
    let value = match input.data_type() {
        DataType::Int64 => Value::Int(input.as_primitive::<Int64Type>().value(row)),
        _ => Value::Float(input.as_primitive::<Float64Type>().value(row)),
    };
    match (function, current, value) {
        (_, Value::Empty, v) => v,
        (RunningFunction::Sum, Value::Int(a), Value::Int(b)) => Value::Int(a.wrapping_add(b)),
        (RunningFunction::Sum, Value::Float(a), Value::Float(b)) => Value::Float(a + b),
        (RunningFunction::Min, Value::Int(a), Value::Int(b)) => Value::Int(a.min(b)),
        (RunningFunction::Min, Value::Float(a), Value::Float(b)) => Value::Float(a.min(b)),
        (RunningFunction::Max, Value::Int(a), Value::Int(b)) => Value::Int(a.max(b)),
        (RunningFunction::Max, Value::Float(a), Value::Float(b)) => Value::Float(a.max(b)),
        (_, current, _) => current,
    }
}

pub(super) enum Output {
    Int(Int64Builder),
    Float(Float64Builder),
}

impl Output {
    /// A builder for one spec's outputs: integers or floats.
    pub(super) fn new(integer: bool, capacity: usize) -> Self {
        if integer {
            Output::Int(Int64Builder::with_capacity(capacity))
        } else {
            Output::Float(Float64Builder::with_capacity(capacity))
        }
    }

    pub(super) fn push(&mut self, value: Value) {
        match (self, value) {
            (Output::Int(b), Value::Int(v)) => b.append_value(v),
            (Output::Float(b), Value::Float(v)) => b.append_value(v),
            (Output::Int(b), _) => b.append_null(),
            (Output::Float(b), _) => b.append_null(),
        }
    }

    pub(super) fn finish(self) -> ArrayRef {
        match self {
            Output::Int(mut b) => Arc::new(b.finish()),
            Output::Float(mut b) => Arc::new(b.finish()),
        }
    }
}

impl OperatorTask for RunningTask {
    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        Ok(vec![self.process_batch(&batch)?])
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        self.encode().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};

    use super::*;

    /// The one task of an operator on one.
    const ONE: TaskPlacement = TaskPlacement {
        task: 0,
        parallelism: 1,
    };

    fn batch(keys: &[&str], values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    fn operator() -> RunningAggregate {
        let specs = vec![
            RunningSpec {
                function: RunningFunction::Count,
                input: None,
                output: "n".into(),
            },
            RunningSpec {
                function: RunningFunction::Sum,
                input: Some(1),
                output: "total".into(),
            },
            RunningSpec {
                function: RunningFunction::Max,
                input: Some(1),
                output: "top".into(),
            },
        ];
        RunningAggregate::try_new(batch(&[], &[]).schema(), vec![0], specs).unwrap()
    }

    fn column(batch: &RecordBatch, name: &str) -> Vec<i64> {
        batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn running_values_per_key_and_a_restore_continues_exactly() {
        let op = operator();
        let mut task = op.open(ONE, &[]).unwrap();
        let out = task
            .process(batch(&["a", "b", "a"], &[1, 10, 2]))
            .unwrap()
            .remove(0);
        assert_eq!(column(&out, "n"), vec![1, 1, 2]);
        assert_eq!(column(&out, "total"), vec![1, 10, 3]);
        let state = task.snapshot().unwrap().unwrap();
        // Rows after the snapshot, then a crash: the restored task continues from it.
        let _lost = task.process(batch(&["a"], &[100])).unwrap();
        let mut restored = op.open(ONE, std::slice::from_ref(&state)).unwrap();
        let out = restored
            .process(batch(&["a", "b"], &[5, 1]))
            .unwrap()
            .remove(0);
        assert_eq!(column(&out, "n"), vec![3, 2]);
        assert_eq!(column(&out, "total"), vec![8, 11]);
        assert_eq!(column(&out, "top"), vec![5, 10]);
    }

    #[test]
    fn the_operator_state_corpus_replays_without_a_panic() {
        rillet_common::fuzzing::replay("operator_state", fuzz_restore);
    }

    #[test]
    fn damaged_state_is_an_error() {
        let op = operator();
        let mut task = op.open(ONE, &[]).unwrap();
        task.process(batch(&["a"], &[1])).unwrap();
        let state = task.snapshot().unwrap().unwrap();
        let Err(err) = op.open(ONE, &[state[..state.len() - 3].to_vec()]) else {
            panic!("a cut-short state restored");
        };
        assert!(matches!(err, RilletError::Checkpoint(_)), "{err}");
    }

    /// A key column of a dictionary type (a categorical) snapshots and restores: the
    /// codec keeps the input's key types.
    #[test]
    fn dictionary_keys_snapshot_and_restore() {
        let keys: arrow::array::DictionaryArray<arrow::datatypes::Int32Type> =
            vec!["a", "b", "a"].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", keys.data_type().clone(), false),
            Field::new("v", DataType::Int64, true),
        ]));
        let input = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(keys), Arc::new(Int64Array::from(vec![1, 10, 2]))],
        )
        .unwrap();
        let spec = RunningSpec {
            function: RunningFunction::Sum,
            input: Some(1),
            output: "total".into(),
        };
        let op = RunningAggregate::try_new(schema, vec![0], vec![spec]).unwrap();
        let mut task = op.open(ONE, &[]).unwrap();
        task.process(input.clone()).unwrap();
        let state = task.snapshot().unwrap().unwrap();
        let mut restored = op.open(ONE, &[state]).unwrap();
        let out = restored.process(input.slice(0, 1)).unwrap().remove(0);
        assert_eq!(column(&out, "total"), vec![4]);
    }

    /// The states the first versions wrote (their own binary layout, keys in Arrow's row
    /// format) still restore; a state of a format this build does not know refuses to.
    #[test]
    fn states_of_the_first_layout_restore_and_an_unknown_format_refuses() {
        let op = operator();
        let mut task = op.task().unwrap();
        task.process_batch(&batch(&["a", "b", "a"], &[1, 10, 2]))
            .unwrap();
        let mut legacy = Vec::new();
        encode_keyed(&mut legacy, &task.state);
        let mut restored = op.open(ONE, &[legacy]).unwrap();
        let out = restored.process(batch(&["a"], &[5])).unwrap().remove(0);
        assert_eq!(column(&out, "total"), vec![8]);
        let mut current = op.task().unwrap();
        current.state = task.state.clone();
        let encoded = current.encode().unwrap();
        let batches = rillet_operator::decode_batches(&encoded).unwrap();
        let schema = batches[0].schema();
        let mut metadata = schema.metadata().clone();
        metadata.insert("rillet.state.format".into(), "99".into());
        let future = Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
        let batch = RecordBatch::try_new(future.clone(), batches[0].columns().to_vec()).unwrap();
        let bytes = rillet_operator::encode_batches(&future, &[batch]).unwrap();
        let Err(err) = op.open(ONE, &[bytes]) else {
            panic!("a state of an unknown format restored");
        };
        assert!(matches!(err, RilletError::IncompatibleState(_)), "{err}");
    }
}
