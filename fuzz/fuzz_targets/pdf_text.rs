#![no_main]
//! Fuzz "pdf_pages", "pdf_page_count": arbitrary bytes in, a value or a reason out, never a panic.

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(&["pdf_pages", "pdf_page_count"], data));
