//! Key groups: which task of a keyed operator owns a key, the same in every run, build and
//! version, and at any parallelism.
//!
//! A key's **key group** is a hash of its values, taken modulo the job's
//! [`MAX_PARALLELISM`]. The hash is this project's own and fixed: XXH3-64 (seed 0) over a
//! canonical encoding of the key's values (each value's type family and its bytes, below),
//! not a library's hasher, whose output may change between versions. Keyed state is
//! snapshotted with each key, so its key group can be computed again on restore.
//!
//! A keyed operator running on `p` tasks gives task `i` the contiguous range of key groups
//! `g` with `g * p / MAX_PARALLELISM == i` ([`TaskPlacement::owns`]), as Flink does. A
//! snapshot taken at one parallelism therefore restores at any other: each new task reads
//! every old task's state and keeps the keys of its own range.
//!
//! The canonical encoding of a value (a null is the byte `0`):
//! - signed integers, dates, times, timestamps, durations: `i` and the value as i64 LE;
//! - unsigned integers: `u` and the value as u64 LE;
//! - floats: `f` and the f64's bits LE, `-0.0` as `0.0` and every NaN as one;
//! - booleans: `b` and one byte;
//! - strings and binaries: `s` and the length (u32 LE) then the bytes;
//! - 128-bit decimals: `d` and the i128 LE (the scale is the plan's);
//! - anything else (structs, lists, maps): `r`, the length (u32 LE) and the value in
//!   Arrow's row format, which is stable within an Arrow version only.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{ArrayRef, Int64Array, StringArray};
//! use rillet_operator::keygroups::{key_groups, TaskPlacement, MAX_PARALLELISM};
//!
//! let keys: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["ann", "bob"]))];
//! let groups = key_groups(&keys, 2).unwrap();
//! assert!(groups.iter().all(|&g| (g as usize) < MAX_PARALLELISM));
//! // Every group has exactly one owner, at any parallelism.
//! for parallelism in [1, 2, 3, 4] {
//!     let owners = (0..parallelism)
//!         .filter(|&task| TaskPlacement::new(task, parallelism).owns(groups[0]))
//!         .count();
//!     assert_eq!(owners, 1);
//! }
//! ```

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use arrow::row::{RowConverter, Rows, SortField};
use rillet_common::{Result, RilletError};
use twox_hash::XxHash3_64;

/// How many key groups a job's keys fall into, and so the most tasks a keyed operator can
/// run on. Fixed: a snapshot's keyed state is laid out by it.
pub const MAX_PARALLELISM: usize = 128;

/// Where a task sits among its operator's tasks, and so which key groups it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPlacement {
    /// The task's index.
    pub task: usize,
    /// How many tasks the operator runs on.
    pub parallelism: usize,
}

impl TaskPlacement {
    /// Task `task` of `parallelism`.
    pub fn new(task: usize, parallelism: usize) -> Self {
        Self { task, parallelism }
    }

    /// Whether key group `group` is this task's.
    pub fn owns(&self, group: u16) -> bool {
        task_of(group, self.parallelism) == self.task
    }
}

/// The task of `parallelism` tasks that owns key group `group`.
pub fn task_of(group: u16, parallelism: usize) -> usize {
    usize::from(group) * parallelism.max(1) / MAX_PARALLELISM
}

/// The key group of each of the `rows` rows of the key columns `keys` (each `rows` long;
/// without columns every row has the empty key, and one group).
pub fn key_groups(keys: &[ArrayRef], rows: usize) -> Result<Vec<u16>> {
    Ok(row_hashes(keys, rows, 0)?
        .into_iter()
        .map(|hash| (hash % MAX_PARALLELISM as u64) as u16)
        .collect())
}

/// A 64-bit XXH3 hash, with `seed`, of each of the `rows` rows of `columns`, over the
/// canonical encoding of their values that key groups use: equal values hash equally
/// whatever their width, on any machine and in any version. What seeded sampling and
/// shuffling draw from, so they depend on the rows, not on the order they arrive in.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{ArrayRef, Int32Array, Int64Array};
/// use rillet_operator::keygroups::row_hashes;
///
/// let narrow: ArrayRef = Arc::new(Int32Array::from(vec![7, 8]));
/// let wide: ArrayRef = Arc::new(Int64Array::from(vec![7, 8]));
/// assert_eq!(row_hashes(&[narrow.clone()], 2, 1).unwrap(), row_hashes(&[wide], 2, 1).unwrap());
/// assert_ne!(row_hashes(&[narrow.clone()], 2, 1).unwrap(), row_hashes(&[narrow], 2, 2).unwrap());
/// ```
pub fn row_hashes(columns: &[ArrayRef], rows: usize, seed: u64) -> Result<Vec<u64>> {
    if let Some(column) = columns.iter().find(|k| k.len() != rows) {
        return Err(RilletError::internal(format!(
            "a key column of {} rows for {rows} rows",
            column.len()
        )));
    }
    let columns: Vec<Canonical> = columns.iter().map(Canonical::of).collect::<Result<_>>()?;
    let mut bytes = Vec::with_capacity(32);
    Ok((0..rows)
        .map(|row| {
            bytes.clear();
            for column in &columns {
                column.encode(row, &mut bytes);
            }
            XxHash3_64::oneshot_with_seed(seed, &bytes)
        })
        .collect())
}

/// A key column cast to the type family of its canonical encoding.
enum Canonical {
    /// A column of a value family, cast to its one type (i64, u64, f64, bool, large
    /// binary, decimal128).
    Value(Family, ArrayRef),
    /// Any other type, in Arrow's row format.
    Rows(Rows),
}

/// The type families of the canonical encoding (see the module docs).
#[derive(Clone, Copy)]
enum Family {
    Signed,
    Unsigned,
    Float,
    Boolean,
    Bytes,
    Decimal,
}

impl Canonical {
    fn of(column: &ArrayRef) -> Result<Self> {
        use DataType as T;
        let cast = |to: &DataType| -> Result<ArrayRef> {
            arrow::compute::cast(column, to).map_err(|e| {
                RilletError::invalid_argument(format!(
                    "cannot key by a column of type {}: {e}",
                    column.data_type()
                ))
            })
        };
        Ok(match column.data_type() {
            T::Dictionary(_, values) => Self::of(&cast(values)?)?,
            T::Int8 | T::Int16 | T::Int32 | T::Int64 => {
                Self::Value(Family::Signed, cast(&T::Int64)?)
            }
            T::Date32 | T::Date64 | T::Time32(_) | T::Time64(_) | T::Timestamp(..) => {
                // Their integer representation, whatever the unit (fixed by the plan).
                let integers = match column.data_type() {
                    T::Date32 | T::Time32(_) => cast(&T::Int32)?,
                    _ => cast(&T::Int64)?,
                };
                Self::Value(Family::Signed, arrow::compute::cast(&integers, &T::Int64)?)
            }
            T::Duration(_) => Self::Value(Family::Signed, cast(&T::Int64)?),
            T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64 => {
                Self::Value(Family::Unsigned, cast(&T::UInt64)?)
            }
            T::Float16 | T::Float32 | T::Float64 => Self::Value(Family::Float, cast(&T::Float64)?),
            T::Boolean => Self::Value(Family::Boolean, column.clone()),
            T::Utf8 | T::LargeUtf8 | T::Utf8View | T::Binary | T::LargeBinary | T::BinaryView => {
                Self::Value(Family::Bytes, cast(&T::LargeBinary)?)
            }
            T::FixedSizeBinary(_) => Self::Value(Family::Bytes, cast(&T::LargeBinary)?),
            T::Decimal128(..) => Self::Value(Family::Decimal, column.clone()),
            T::Null => Self::Value(
                Family::Signed,
                arrow::array::new_null_array(&T::Int64, column.len()),
            ),
            // Nested and other types: Arrow's row format (stable within an Arrow version).
            other => {
                let converter =
                    RowConverter::new(vec![SortField::new(other.clone())]).map_err(|e| {
                        RilletError::invalid_argument(format!(
                            "cannot key by a column of type {other}: {e}"
                        ))
                    })?;
                Self::Rows(converter.convert_columns(std::slice::from_ref(column))?)
            }
        })
    }

    fn encode(&self, row: usize, out: &mut Vec<u8>) {
        let (family, a) = match self {
            Self::Rows(rows) => {
                let bytes = rows.row(row);
                out.push(b'r');
                out.extend_from_slice(&(bytes.as_ref().len() as u32).to_le_bytes());
                out.extend_from_slice(bytes.as_ref());
                return;
            }
            Self::Value(family, array) => (*family, array),
        };
        if a.is_null(row) {
            out.push(0);
            return;
        }
        match family {
            Family::Signed => {
                out.push(b'i');
                out.extend_from_slice(&a.as_primitive::<Int64Type>().value(row).to_le_bytes());
            }
            Family::Unsigned => {
                out.push(b'u');
                out.extend_from_slice(&a.as_primitive::<UInt64Type>().value(row).to_le_bytes());
            }
            Family::Float => {
                let v = a.as_primitive::<Float64Type>().value(row);
                let v = if v == 0.0 {
                    0.0
                } else if v.is_nan() {
                    f64::NAN
                } else {
                    v
                };
                out.push(b'f');
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            Family::Boolean => {
                out.push(b'b');
                out.push(u8::from(a.as_boolean().value(row)));
            }
            Family::Bytes => {
                let v = a.as_binary::<i64>().value(row);
                out.push(b's');
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            Family::Decimal => {
                let v = a
                    .as_primitive::<arrow::datatypes::Decimal128Type>()
                    .value(row);
                out.push(b'd');
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, Int64Array, StringArray, UInt32Array};
    use std::sync::Arc;

    /// Fixed values: a change to the hash or the encoding moves keys between tasks and
    /// strands every keyed snapshot, so it must show up here first.
    #[test]
    fn key_groups_are_the_same_in_every_build() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec![Some("ann"), Some("bob"), None]));
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        assert_eq!(
            key_groups(std::slice::from_ref(&strings), 3).unwrap(),
            vec![GROUPS[0], GROUPS[1], GROUPS[2]]
        );
        assert_eq!(
            key_groups(&[numbers], 3).unwrap(),
            vec![GROUPS[3], GROUPS[4], GROUPS[5]]
        );
        // The same integers in a narrower type, or a string as a dictionary: the same keys.
        let narrow: ArrayRef = Arc::new(Int32Array::from(vec![1, 2, 3]));
        assert_eq!(
            key_groups(&[narrow], 3).unwrap(),
            vec![GROUPS[3], GROUPS[4], GROUPS[5]]
        );
        let dictionary: ArrayRef = Arc::new(
            vec![Some("ann"), Some("bob"), None]
                .into_iter()
                .collect::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>(),
        );
        assert_eq!(
            key_groups(&[dictionary], 3).unwrap(),
            key_groups(&[strings], 3).unwrap()
        );
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![0.0, -0.0, f64::NAN, -f64::NAN]));
        let g = key_groups(&[floats], 4).unwrap();
        assert_eq!((g[0], g[2]), (g[1], g[3]));
        let unsigned: ArrayRef = Arc::new(UInt32Array::from(vec![7]));
        assert_eq!(key_groups(&[unsigned], 1).unwrap(), vec![GROUPS[6]]);
        // A struct key (nested types go through Arrow's row format): equal values, one group.
        let fields = vec![Arc::new(arrow::datatypes::Field::new(
            "a",
            DataType::Int64,
            false,
        ))];
        let structs: ArrayRef = Arc::new(arrow::array::StructArray::new(
            fields.into(),
            vec![Arc::new(Int64Array::from(vec![5, 6, 5])) as ArrayRef],
            None,
        ));
        let g = key_groups(&[structs], 3).unwrap();
        assert_eq!(g[0], g[2]);
        // No key columns: every row has the empty key, in one group.
        let empty = key_groups(&[], 3).unwrap();
        assert!(empty.len() == 3 && empty.iter().all(|&g| g == empty[0]));
    }

    const GROUPS: [u16; 7] = [99, 7, 91, 54, 18, 0, 27];

    #[test]
    fn each_group_has_one_owner_and_ranges_are_contiguous() {
        for parallelism in 1..=MAX_PARALLELISM {
            let owners: Vec<usize> = (0..MAX_PARALLELISM as u16)
                .map(|g| task_of(g, parallelism))
                .collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(owners.last(), Some(&(parallelism - 1)));
            assert!(owners.iter().all(|&t| t < parallelism));
        }
    }
}
