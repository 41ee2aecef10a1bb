#![no_main]
//! Fuzz the checkpoint manifest parser, past its checksum line too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _decoded = rillet_checkpoint::fuzz_manifest(data);
});
