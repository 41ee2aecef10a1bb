//! The one codec of keyed operator state: an Arrow IPC stream of one batch, a row per
//! (window, key), with a format version.
//!
//! Columns: the key columns as the operator's input has them (not Arrow's row format,
//! whose bytes may change between Arrow versions; keys are turned back into rows on
//! restore), `window_start` for a window aggregate, and per accumulator `acc<i>_int`
//! (Int64) and `acc<i>_float` (Float64): an integer, a float, or both null while the
//! accumulator has seen no value. The schema's metadata holds `rillet.state.format` (this
//! codec's version), `rillet.state.operator` (which operator wrote it) and, for a window
//! aggregate, `rillet.state.watermark`.
//!
//! A state of another format version is [`RilletError::IncompatibleState`]: the restore
//! refuses to start and says so, rather than misreading it. A state that is no IPC stream
//! at all is the hand-made binary layout of the first versions, read by the callers'
//! legacy decoders.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use arrow::row::RowConverter;
use rillet_common::{Result, RilletError};

use super::running::Value;

/// The format this codec writes and reads.
const FORMAT: &str = "1";
const FORMAT_KEY: &str = "rillet.state.format";
const OPERATOR_KEY: &str = "rillet.state.operator";
const WATERMARK_KEY: &str = "rillet.state.watermark";
const WINDOW_START: &str = "window_start";

/// One entry of keyed state: its window start (window aggregates only), its key in the
/// operator's row format, its accumulators.
pub(super) type Entry = (Option<i64>, Box<[u8]>, Vec<Value>);

/// Whether `bytes` is in this codec (an IPC stream) rather than the first versions'
/// binary layout: an IPC stream starts with the continuation marker.
pub(super) fn is_versioned(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xff, 0xff, 0xff])
}

/// Encode `entries` of `operator`, whose keys `converter` reads back into `key_fields`
/// (none: every key is the empty one), each with `accumulators` values.
pub(super) fn encode(
    operator: &str,
    converter: &RowConverter,
    key_fields: &[Field],
    accumulators: usize,
    windowed: bool,
    watermark: Option<i64>,
    entries: &[Entry],
) -> Result<Vec<u8>> {
    let mut fields: Vec<Field> = key_fields.to_vec();
    let mut columns: Vec<ArrayRef> = if key_fields.is_empty() {
        Vec::new()
    } else {
        let parser = converter.parser();
        let rows = converter.convert_rows(entries.iter().map(|(_, key, _)| parser.parse(key)))?;
        // The row format gives dictionaries back as their values: the key columns as the
        // input has them.
        rows.iter()
            .zip(key_fields)
            .map(|(column, field)| cast_to(column, field.data_type()))
            .collect::<Result<_>>()?
    };
    if windowed {
        fields.push(Field::new(WINDOW_START, DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|(start, ..)| start.unwrap_or(0)),
        )));
    }
    for i in 0..accumulators {
        let value = |e: &Entry| e.2.get(i).copied().unwrap_or(Value::Empty);
        fields.push(Field::new(format!("acc{i}_int"), DataType::Int64, true));
        columns.push(Arc::new(Int64Array::from_iter(entries.iter().map(
            |e| match value(e) {
                Value::Int(v) => Some(v),
                _ => None,
            },
        ))));
        fields.push(Field::new(format!("acc{i}_float"), DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from_iter(entries.iter().map(
            |e| match value(e) {
                Value::Float(v) => Some(v),
                _ => None,
            },
        ))));
    }
    let mut metadata = HashMap::from([
        (FORMAT_KEY.to_string(), FORMAT.to_string()),
        (OPERATOR_KEY.to_string(), operator.to_string()),
    ]);
    if let Some(watermark) = watermark {
        metadata.insert(WATERMARK_KEY.to_string(), watermark.to_string());
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(entries.len()));
    let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
    rillet_operator::encode_batches(&schema, &[batch])
}

/// Decode what [`encode`] wrote for `operator`: its entries and watermark.
pub(super) fn decode(
    bytes: &[u8],
    operator: &str,
    converter: &RowConverter,
    key_fields: &[Field],
    accumulators: usize,
    windowed: bool,
) -> Result<(Vec<Entry>, Option<i64>)> {
    let keys = key_fields.len();
    let damaged = |what: String| RilletError::Checkpoint(format!("{operator} state: {what}"));
    let batches = rillet_operator::decode_batches(bytes)?;
    let [batch] = batches.as_slice() else {
        return Err(damaged(format!("{} batches, not 1", batches.len())));
    };
    let metadata = batch.schema().metadata().clone();
    let format = metadata.get(FORMAT_KEY).map(String::as_str);
    if format != Some(FORMAT) {
        return Err(RilletError::IncompatibleState(format!(
            "{operator} state of format {}, and this build reads format {FORMAT}: written by \
             another Rillet version; restore it with that version",
            format.unwrap_or("none")
        )));
    }
    let expected = keys + usize::from(windowed) + 2 * accumulators;
    if batch.num_columns() != expected {
        return Err(damaged(format!(
            "{} columns, and this operator keeps {expected}",
            batch.num_columns()
        )));
    }
    let watermark = match metadata.get(WATERMARK_KEY) {
        Some(w) => Some(w.parse().map_err(|_| damaged(format!("watermark {w:?}")))?),
        None => None,
    };
    let rows = batch.num_rows();
    let key_rows = if keys == 0 {
        None
    } else {
        let columns: Vec<ArrayRef> = batch.columns()[..keys]
            .iter()
            .zip(key_fields)
            .map(|(column, field)| cast_to(column, field.data_type()))
            .collect::<Result<_>>()?;
        Some(converter.convert_columns(&columns)?)
    };
    let starts = windowed
        .then(|| downcast::<Int64Type>(batch.column(keys), &damaged))
        .transpose()?;
    let values: Vec<(&Int64Array, &Float64Array)> = (0..accumulators)
        .map(|i| {
            let at = keys + usize::from(windowed) + 2 * i;
            Ok((
                downcast::<Int64Type>(batch.column(at), &damaged)?,
                downcast::<Float64Type>(batch.column(at + 1), &damaged)?,
            ))
        })
        .collect::<Result<_>>()?;
    let entries = (0..rows)
        .map(|row| {
            let key: Box<[u8]> = key_rows
                .as_ref()
                .map_or_else(|| Box::from(&[][..]), |r| r.row(row).as_ref().into());
            let accumulators = values
                .iter()
                .map(
                    |(int, float)| match (int.is_valid(row), float.is_valid(row)) {
                        (true, _) => Value::Int(int.value(row)),
                        (false, true) => Value::Float(float.value(row)),
                        (false, false) => Value::Empty,
                    },
                )
                .collect();
            (starts.map(|s| s.value(row)), key, accumulators)
        })
        .collect();
    Ok((entries, watermark))
}

/// `column` as `to`, unchanged when it is already.
fn cast_to(column: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if column.data_type() == to {
        return Ok(column.clone());
    }
    Ok(arrow::compute::cast(column, to)?)
}

fn downcast<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    column: &'a ArrayRef,
    damaged: &dyn Fn(String) -> RilletError,
) -> Result<&'a arrow::array::PrimitiveArray<T>> {
    column
        .as_primitive_opt::<T>()
        .ok_or_else(|| damaged(format!("a column of type {}", column.data_type())))
}
