#![no_main]
//! Fuzz the worker frame protocol: arbitrary bytes as a worker's output, read frame by frame,
//! result frames decoded as Arrow batches; errors are fine, panics and aborts are not.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _decoded = rillet_processes::protocol::fuzz_frames(data);
});
