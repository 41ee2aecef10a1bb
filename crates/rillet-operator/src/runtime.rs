//! The process-wide tokio runtime that runs every job's tasks.

use std::sync::OnceLock;

/// The shared multi-threaded tokio runtime, one worker thread per core. Built on first use.
///
/// Blocking work never runs on it directly: see [`crate::BlockingPool`].
pub fn global_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("rillet-worker")
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime (out of threads?)")
    })
}

/// Run `future` to its end from synchronous code: plain code, a blocking thread (a sink's
/// commit), or a task on a multi-threaded runtime (whose worker it hands over meanwhile).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(future))
        }
        _ => global_runtime().block_on(future),
    }
}
