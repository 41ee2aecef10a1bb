//! Object-store settings from Python, and the image benchmark's native baseline.

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

/// The image benchmark's physical limit: decode + resize every file with Rillet's codec and
/// resize code on all cores, no engine (see `rillet_functions::image::decode_resize_limit`).
#[pyfunction]
fn _image_decode_resize_limit(
    py: Python<'_>,
    paths: Vec<String>,
    width: u32,
    height: u32,
) -> usize {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    py.detach(|| rillet_functions::image::decode_resize_limit(&paths, width, height, threads))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(configure_storage, m)?)?;
    m.add_function(wrap_pyfunction!(_image_decode_resize_limit, m)?)
}
