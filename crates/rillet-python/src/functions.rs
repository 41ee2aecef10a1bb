//! Python callables as Rillet batch and column functions. They run on the engine's blocking
//! pool threads and take the GIL only for the call itself.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3_arrow::{PyArray, PyRecordBatch};
use rillet_common::{Result, RilletError};
use rillet_plan::ArrayFunction;
use rillet_runtime::{BatchFunction, CallFields, ScalarValue};

/// Format a Python exception with its traceback, as Python would print it.
pub(crate) fn format_python_error(py: Python<'_>, error: &PyErr) -> String {
    let formatted = py
        .import("traceback")
        .and_then(|tb| {
            tb.call_method1(
                "format_exception",
                (error.get_type(py), error.value(py), error.traceback(py)),
            )
        })
        .and_then(|lines| lines.extract::<Vec<String>>());
    match formatted {
        Ok(lines) => lines.concat().trim_end().to_string(),
        Err(_) => error.to_string(),
    }
}

/// A Python callable `pyarrow.RecordBatch -> pyarrow.RecordBatch` (the Python layer wraps
/// the user's function to convert formats and cast to the declared schema).
#[derive(Debug)]
pub(crate) struct PyBatchFunction {
    pub(crate) name: String,
    pub(crate) callable: Py<PyAny>,
    pub(crate) schema: SchemaRef,
    pub(crate) batch_size: Option<usize>,
    pub(crate) concurrency: Option<usize>,
}

impl BatchFunction for PyBatchFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn call(&self, batch: RecordBatch) -> Result<RecordBatch> {
        Python::attach(|py| {
            let result = PyRecordBatch::new(batch)
                .into_pyarrow(py)
                .and_then(|arg| self.callable.call1(py, (arg,)))
                .and_then(|out| out.bind(py).extract::<PyRecordBatch>());
            match result {
                Ok(batch) => Ok(batch.into_inner()),
                Err(error) => Err(RilletError::UserFunction {
                    operator: self.name.clone(),
                    message: format_python_error(py, &error),
                }),
            }
        })
    }

    fn batch_size(&self) -> Option<usize> {
        self.batch_size
    }

    fn concurrency(&self) -> Option<usize> {
        self.concurrency
    }
}

/// A Python callable `(list[pyarrow.Array], num_rows) -> pyarrow.Array` (the Python layer
/// builds it for row-wise or batch-wise UDFs).
#[derive(Debug)]
pub(crate) struct PyArrayFunction {
    pub(crate) name: String,
    pub(crate) callable: Py<PyAny>,
    pub(crate) fields: CallFields,
    pub(crate) batch_size: Option<usize>,
    pub(crate) concurrency: Option<usize>,
}

impl ArrayFunction for PyArrayFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn return_type(&self) -> DataType {
        self.fields.return_type()
    }

    fn return_field(&self, args: &[FieldRef], _literals: &[Option<&ScalarValue>]) -> Result<Field> {
        Ok(self.fields.return_field(&self.name, args))
    }

    fn call(&self, args: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
        Python::attach(|py| {
            let result = (|| -> PyResult<ArrayRef> {
                let arrays = args
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        PyArray::new(a.clone(), self.fields.argument_field(i, a))
                            .to_pyarrow(py)
                            .map(|b| b.unbind())
                    })
                    .collect::<PyResult<Vec<_>>>()?;
                let list = PyList::new(py, arrays)?;
                let out = self.callable.call1(py, (list, rows))?;
                let out = out.bind(py);
                // `(array, rows nulled, first reason)` when the null policy nulled rows.
                if let Ok((array, nulled, reason)) = out.extract::<(PyArray, u64, Option<String>)>()
                {
                    rillet_runtime::record_nulls(
                        &format!("udf({})", self.name),
                        rows as u64,
                        nulled,
                        reason.as_deref(),
                    );
                    return Ok(array.into_inner().0);
                }
                rillet_runtime::record_nulls(&format!("udf({})", self.name), rows as u64, 0, None);
                let (array, _) = out.extract::<PyArray>()?.into_inner();
                Ok(array)
            })();
            result.map_err(|error| RilletError::UserFunction {
                operator: format!("udf({})", self.name),
                message: format_python_error(py, &error),
            })
        })
    }

    fn batch_size(&self) -> Option<usize> {
        self.batch_size
    }

    fn concurrency(&self) -> Option<usize> {
        self.concurrency
    }
}
