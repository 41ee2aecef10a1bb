//! The `rillet._rillet` extension module: a thin PyO3 layer over `rillet-plan`. The
//! Pythonic API (operator overloading, keyword arguments, format conversions) lives in
//! `python/rillet/`; this module only moves plans and Arrow data (zero copy, through the
//! Arrow PyCapsule interface) across the boundary. No Rust panic crosses it: PyO3 turns one
//! into a Python exception, and job tasks catch their own.

mod dataframe;
mod errors;
mod expr;
mod functions;
mod logs;
mod providers;
mod resources;
mod service;
mod storage;
mod streaming;

use pyo3::prelude::*;

/// Batch buffers are allocated and freed at a high rate; mimalloc keeps freed pages for reuse
/// where glibc's malloc unmaps large blocks and page-faults them back in (11% of the CPU
/// time of the engine-overhead benchmark). Buffers handed to pyarrow are freed through their
/// release callback, i.e. by this allocator too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn _rillet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    rillet_runtime::allocator::tune();
    rillet_cli::register_builtin_functions();
    logs::register(m)?;
    errors::register(m)?;
    expr::register(m)?;
    dataframe::register(m)?;
    storage::register(m)?;
    resources::register(m)?;
    providers::register(m)?;
    service::register(m)?;
    streaming::register(m)?;
    Ok(())
}
