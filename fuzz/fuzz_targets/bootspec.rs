//! Fuzz target: see `nixboot::fuzzing::bootspec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::bootspec(data));
