//! libFuzzer's entry for `outpost::fuzzing::access_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::access_token(data));
