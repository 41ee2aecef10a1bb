//! Vector operators over embeddings (`Embedding` / fixed-size lists) and list columns:
//! cosine similarity, dot product, L2 distance between two vector columns (or a column and
//! a literal vector), and L2 normalisation.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef};
use rillet_common::types::{ElementType, EmbeddingType, display_type};
use rillet_common::{Result, RilletError};
use rillet_operator::ArrayFunction;

use crate::operator::{Call, Operator, OperatorFunction, Param, Params, RowErrors};

/// Every vector operator.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(Metric::Cosine)),
        Arc::new(OperatorFunction::new(Metric::Dot)),
        Arc::new(OperatorFunction::new(Metric::L2)),
        Arc::new(OperatorFunction::new(Normalize)),
    ]
}

fn is_vector(data_type: &DataType) -> bool {
    match data_type {
        DataType::FixedSizeList(item, _) | DataType::List(item) | DataType::LargeList(item) => {
            item.data_type().is_numeric()
        }
        _ => false,
    }
}

fn expect_vector(operator: &str, field: &Field) -> Result<()> {
    if is_vector(field.data_type()) {
        Ok(())
    } else {
        Err(RilletError::invalid_argument(format!(
            "{operator}: inputs must be vectors (an Embedding or a list of numbers); column {:?} is {}",
            field.name(),
            display_type(field)
        )))
    }
}

/// Row access to a vector column as f64 values.
struct Vectors {
    values: Float64Array,
    offsets: Vec<usize>,
    nulls: Option<arrow::buffer::NullBuffer>,
}

impl Vectors {
    fn new(array: &ArrayRef) -> Result<Self> {
        let (values, offsets): (ArrayRef, Vec<usize>) = match array.data_type() {
            DataType::FixedSizeList(_, n) => {
                let list = array.as_fixed_size_list();
                let n = *n as usize;
                // A sliced list still points into its whole child array.
                let start = list.offset() * n;
                (
                    list.values().clone(),
                    (0..=list.len()).map(|i| start + i * n).collect(),
                )
            }
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                (
                    list.values().clone(),
                    list.offsets().iter().map(|o| *o as usize).collect(),
                )
            }
            DataType::LargeList(_) => {
                let list = array.as_list::<i64>();
                (
                    list.values().clone(),
                    list.offsets().iter().map(|o| *o as usize).collect(),
                )
            }
            other => {
                return Err(RilletError::internal(format!(
                    "not a vector column: {other}"
                )));
            }
        };
        let values = arrow::compute::cast(&values, &DataType::Float64)?;
        Ok(Self {
            values: values.as_primitive().clone(),
            offsets,
            nulls: array.logical_nulls(),
        })
    }

    fn get(&self, row: usize) -> Option<&[f64]> {
        if self.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
            return None;
        }
        Some(&self.values.values()[self.offsets[row]..self.offsets[row + 1]])
    }
}

/// `vector_cosine_similarity(a, b)`, `vector_dot(a, b)`, `vector_l2_distance(a, b)`.
/// Vectors of different dimensions are an error (two columns of fixed dimensions that
/// differ fail the plan): comparing them is a mistake, not bad data. Vectors containing
/// nulls are bad data for that row.
#[derive(Debug)]
pub enum Metric {
    /// a·b / (|a| |b|); null when either vector is all zeros
    Cosine,
    /// a·b
    Dot,
    /// |a - b|
    L2,
}

impl Operator for Metric {
    fn name(&self) -> &'static str {
        match self {
            Self::Cosine => "vector_cosine_similarity",
            Self::Dot => "vector_dot",
            Self::L2 => "vector_l2_distance",
        }
    }

    fn inputs(&self) -> usize {
        2
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        for field in inputs {
            expect_vector(self.name(), field)?;
        }
        if let (DataType::FixedSizeList(_, n), DataType::FixedSizeList(_, m)) =
            (inputs[0].data_type(), inputs[1].data_type())
            && n != m
        {
            return Err(RilletError::invalid_argument(format!(
                "{}: the dimensions differ ({n} and {m}); compare vectors of one length",
                self.name()
            )));
        }
        Ok(Field::new(self.name(), DataType::Float64, true))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let (a, b) = (
            Vectors::new(&call.inputs[0])?,
            Vectors::new(&call.inputs[1])?,
        );
        if let Some(row) = (0..call.rows).find(
            |&row| matches!((a.get(row), b.get(row)), (Some(x), Some(y)) if x.len() != y.len()),
        ) {
            let (x, y) = (
                a.get(row).unwrap_or_default(),
                b.get(row).unwrap_or_default(),
            );
            let place =
                rillet_operator::call_first_row().map_or(row as u64, |first| first + row as u64);
            return Err(RilletError::invalid_data(format!(
                "{}: the dimensions differ on row {place} ({} and {}); compare vectors of one \
                 length",
                self.name(),
                x.len(),
                y.len()
            )));
        }
        let out: Float64Array = (0..call.rows)
            .map(|row| {
                let (x, y) = (a.get(row)?, b.get(row)?);
                let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
                match self {
                    Self::Dot => Some(dot),
                    Self::L2 => Some(
                        x.iter()
                            .zip(y)
                            .map(|(p, q)| (p - q) * (p - q))
                            .sum::<f64>()
                            .sqrt(),
                    ),
                    Self::Cosine => {
                        let norms = x.iter().map(|v| v * v).sum::<f64>().sqrt()
                            * y.iter().map(|v| v * v).sum::<f64>().sqrt();
                        (norms > 0.0).then(|| dot / norms)
                    }
                }
            })
            .collect();
        Ok(Arc::new(out))
    }
}

/// `vector_normalize(v)`: scale each vector to unit L2 length (all-zero vectors stay
/// zero). Returns an `Embedding[f32; n]` for fixed-length input, a list of f64 otherwise.
#[derive(Debug)]
pub struct Normalize;

impl Operator for Normalize {
    fn name(&self) -> &'static str {
        "vector_normalize"
    }

    fn params(&self) -> &'static [Param] {
        &[]
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_vector(self.name(), &inputs[0])?;
        Ok(match inputs[0].data_type() {
            DataType::FixedSizeList(_, n) => {
                EmbeddingType::new(ElementType::F32, *n as usize).field(self.name())
            }
            _ => Field::new(
                self.name(),
                DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
                true,
            ),
        })
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let input = Vectors::new(&call.inputs[0])?;
        let unit = |v: &[f64]| -> Vec<f64> {
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.0 {
                v.iter().map(|x| x / norm).collect()
            } else {
                v.to_vec()
            }
        };
        match call.inputs[0].data_type() {
            DataType::FixedSizeList(_, n) => {
                let n = *n as usize;
                let mut values = Vec::with_capacity(call.rows * n);
                for row in 0..call.rows {
                    match input.get(row) {
                        Some(v) => values.extend(unit(v).into_iter().map(|x| x as f32)),
                        None => values.extend(std::iter::repeat_n(0.0f32, n)),
                    }
                }
                let item = Arc::new(Field::new("item", DataType::Float32, true));
                let array = FixedSizeListArray::try_new(
                    item,
                    n as i32,
                    Arc::new(Float32Array::from(values)),
                    input.nulls.clone(),
                )?;
                Ok(Arc::new(array))
            }
            _ => {
                let rows: Vec<Option<Vec<Option<f64>>>> = (0..call.rows)
                    .map(|row| {
                        input
                            .get(row)
                            .map(|v| unit(v).into_iter().map(Some).collect())
                    })
                    .collect();
                Ok(Arc::new(arrow::array::ListArray::from_iter_primitive::<
                    arrow::datatypes::Float64Type,
                    _,
                    _,
                >(rows)))
            }
        }
    }
}
