//! Fuzz target: see `nixboot::fuzzing::ext4`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::ext4(data));
