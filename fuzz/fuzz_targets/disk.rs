//! Fuzz target: see `nixboot::fuzzing::disk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::disk(data));
