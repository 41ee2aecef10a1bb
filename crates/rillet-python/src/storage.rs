//! Object-store settings from Python.

use pyo3::prelude::*;

use crate::errors::IntoPy;

/// Settings for the store of `root` (see `rillet_io::configure`).
#[pyfunction]
fn configure_storage(root: &str, options: Vec<(String, String)>) -> PyResult<()> {
    let options: Vec<(&str, &str)> = options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    rillet_io::configure(root, &options).py_err()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(configure_storage, m)?)
}
