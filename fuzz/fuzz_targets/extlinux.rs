//! Fuzz target: see `nixboot::fuzzing::extlinux`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::extlinux(data));
