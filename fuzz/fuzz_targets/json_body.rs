//! libFuzzer's entry for `outpost::fuzzing::json_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::json_body(data));
