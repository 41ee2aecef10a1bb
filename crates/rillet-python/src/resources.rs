//! The machine's resources as the engine's resource manager sees them, from Python.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rillet_runtime::ResourceManager;

use crate::errors::IntoPy;

/// Override what the machine offers to worker processes (`rl.init`); `None` keeps what was
/// detected. `num_gpus` declares virtual GPUs.
#[pyfunction]
#[pyo3(signature = (num_cpus=None, num_gpus=None, memory=None))]
fn init_resources(
    num_cpus: Option<f64>,
    num_gpus: Option<usize>,
    memory: Option<u64>,
) -> PyResult<()> {
    ResourceManager::global()
        .configure(num_cpus, num_gpus, memory)
        .py_err()
}

/// The machine: cores, memory and GPUs (`rl.resources()`).
#[pyfunction]
fn machine_resources(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let machine = ResourceManager::global().machine();
    let dict = PyDict::new(py);
    dict.set_item("num_cpus", machine.cpus)?;
    dict.set_item("memory", machine.memory_bytes)?;
    dict.set_item("virtual_gpus", machine.virtual_gpus)?;
    let gpus = machine
        .gpus
        .iter()
        .map(|g| {
            let d = PyDict::new(py);
            d.set_item("id", &g.id)?;
            d.set_item("name", &g.name)?;
            d.set_item("memory", g.memory_bytes)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    dict.set_item("num_gpus", gpus.len())?;
    dict.set_item("gpus", gpus)?;
    Ok(dict)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(init_resources, m)?)?;
    m.add_function(wrap_pyfunction!(machine_resources, m)?)
}
