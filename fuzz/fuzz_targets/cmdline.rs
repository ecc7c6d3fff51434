//! Fuzz target: see `nixboot::fuzzing::cmdline`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::cmdline(data));
