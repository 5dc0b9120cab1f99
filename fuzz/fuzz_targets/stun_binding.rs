//! libFuzzer's entry for `outpost::fuzzing::stun_binding`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::stun_binding(data));
