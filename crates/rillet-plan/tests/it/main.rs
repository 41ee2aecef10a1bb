//! Integration tests of the planning layer and the runtime together: one test binary with
//! modules (DESIGN.md §4).

mod execution;
mod operations;
mod streaming;
