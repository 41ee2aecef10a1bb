#![no_main]
//! Fuzz "image_decode", "image_metadata": arbitrary bytes in, a value or a reason out, never a panic.

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(&["image_decode", "image_metadata"], data));
