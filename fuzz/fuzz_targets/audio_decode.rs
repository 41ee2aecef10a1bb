#![no_main]
//! Fuzz "audio_decode", "audio_metadata": arbitrary bytes in, a value or a reason out, never a panic.

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(&["audio_decode", "audio_metadata"], data));
