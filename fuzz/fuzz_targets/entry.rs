//! Fuzz target: see `nixboot::fuzzing::entry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::entry(data));
