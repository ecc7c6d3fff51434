//! Fuzz target: see `nixboot::fuzzing::legacy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::legacy(data));
