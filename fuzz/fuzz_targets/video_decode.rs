#![no_main]
//! Fuzz "video_metadata", "video_frames": arbitrary bytes in, a value or a reason out, never a panic.

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(&["video_metadata", "video_frames"], data));
