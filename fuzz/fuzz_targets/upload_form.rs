//! libFuzzer's entry for `outpost::fuzzing::upload_form`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::upload_form(data));
