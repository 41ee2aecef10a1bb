#![no_main]
//! Fuzz the keyed operator state codec: a running aggregate restored from arbitrary bytes
//! (the Arrow codec and the first versions' binary layout), then run and snapshotted.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _decoded = rillet_plan::streaming::fuzz_restore(data);
});
