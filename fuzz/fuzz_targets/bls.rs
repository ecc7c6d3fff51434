//! Fuzz target: see `nixboot::fuzzing::bls`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::bls(data));
