//! Fuzz target: see `nixboot::fuzzing::grub`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixboot::fuzzing::grub(data));
