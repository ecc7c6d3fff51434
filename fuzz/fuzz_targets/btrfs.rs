//! Fuzz target: see `nixboot::fuzzing::btrfs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::btrfs(data));
