//! Fuzz target: see `nixboot::fuzzing::lvm`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::lvm(data));
