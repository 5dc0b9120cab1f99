//! libFuzzer's entry for `outpost::fuzzing::file_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::file_headers(data));
