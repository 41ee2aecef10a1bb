//! Seeded draws that depend on the rows, not on the order they arrive in: what
//! `DataFrame.sample`, `random_shuffle` and `train_test_split` are built on.

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Field, FieldRef};
use rillet_common::Result;

use crate::ArrayFunction;
use crate::operator::{Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors};

/// The sampling functions.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![Arc::new(OperatorFunction::new(RowHash))]
}

/// `row_hash(row, seed)`: a 64-bit hash of each row's value (pass a struct of the columns
/// to hash several), mixed with `seed` — XXH3 over the canonical encoding of key groups, so
/// the same rows give the same draws on any machine, at any parallelism and in any order.
#[derive(Debug)]
pub struct RowHash;

impl Operator for RowHash {
    fn name(&self) -> &'static str {
        "row_hash"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::optional("seed", ParamKind::Int, "0")];
        P
    }

    fn result_field(&self, _inputs: &[FieldRef], params: &Params) -> Result<Field> {
        params.int("seed")?;
        Ok(Field::new(self.name(), DataType::UInt64, false))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let seed = call.params.int("seed")? as u64;
        let hashes = rillet_operator::keygroups::row_hashes(&call.inputs[..1], call.rows, seed)?;
        Ok(Arc::new(UInt64Array::from(hashes)))
    }
}
