//! Python exception classes and the mapping from Rillet errors to them.

use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyOSError};
use pyo3::prelude::*;
use rillet_common::RilletError;

pyo3::create_exception!(
    _rillet,
    RilletBaseError,
    PyException,
    "Base class of Rillet errors."
);
pyo3::create_exception!(
    _rillet,
    PlanError,
    RilletBaseError,
    "The plan is invalid: unknown column, wrong type, bad argument."
);
pyo3::create_exception!(
    _rillet,
    UserFunctionError,
    RilletBaseError,
    "A user function (UDF, map_batches) raised; the message holds its traceback."
);
pyo3::create_exception!(
    _rillet,
    DataError,
    RilletBaseError,
    "An operator could not process a row's data and was asked to fail (on_error=\"raise\")."
);
pyo3::create_exception!(
    _rillet,
    ExecutionError,
    RilletBaseError,
    "The job failed while running."
);
pyo3::create_exception!(
    _rillet,
    CheckpointError,
    ExecutionError,
    "A job's checkpoints cannot be used: a snapshot is missing, damaged, retired or of \
     another format, or another live run holds the job."
);
pyo3::create_exception!(
    _rillet,
    JobCancelled,
    RilletBaseError,
    "The job was cancelled."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RilletError", py.get_type::<RilletBaseError>())?;
    m.add("PlanError", py.get_type::<PlanError>())?;
    m.add("UserFunctionError", py.get_type::<UserFunctionError>())?;
    m.add("ExecutionError", py.get_type::<ExecutionError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add("JobCancelled", py.get_type::<JobCancelled>())?;
    Ok(())
}

/// Convert a Rillet error into the matching Python exception.
pub(crate) fn to_py(error: RilletError) -> PyErr {
    let message = error.to_string();
    match error {
        RilletError::Plan(_) | RilletError::InvalidArgument(_) => PlanError::new_err(message),
        RilletError::UserFunction { .. } => UserFunctionError::new_err(message),
        RilletError::Cancelled => JobCancelled::new_err(message),
        RilletError::InvalidData(_) => DataError::new_err(message),
        RilletError::Io(_) => PyOSError::new_err(message),
        RilletError::Checkpoint(_) | RilletError::IncompatibleState(_) => {
            CheckpointError::new_err(message)
        }
        RilletError::DataFusion(ref e) if is_plan_error(e) => PlanError::new_err(message),
        _ => ExecutionError::new_err(message),
    }
}

fn is_plan_error(error: &datafusion::error::DataFusionError) -> bool {
    use datafusion::error::DataFusionError as E;
    match error.find_root() {
        E::SchemaError(..) | E::Plan(..) | E::SQL(..) | E::NotImplemented(..) => true,
        E::Diagnostic(..) => true,
        other => {
            other.to_string().contains("Type Coercion") || other.to_string().contains("Cannot ")
        }
    }
}

/// `Result` alias for the binding layer.
pub(crate) trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, RilletError> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

impl<T> IntoPy<T> for Result<T, datafusion::error::DataFusionError> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(|e| to_py(RilletError::from(e)))
    }
}

/// A KeyboardInterrupt raised while a job ran.
pub(crate) fn interrupted() -> PyErr {
    PyKeyboardInterrupt::new_err("job cancelled by Ctrl-C")
}
