//! libFuzzer's entry for `outpost::fuzzing::api_key`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::api_key(data));
