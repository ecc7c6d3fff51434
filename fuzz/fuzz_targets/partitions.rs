//! Fuzz target: see `nixboot::fuzzing::partitions`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::partitions(data));
