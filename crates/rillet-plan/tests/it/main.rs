//! Integration tests of the planning layer and the runtime together: one test binary with
//! modules, so the tests link once instead of once per file (faster builds, a smaller target
//! directory).

mod compat;
mod execution;
mod operations;
mod power;
mod sinks;
mod streaming;
