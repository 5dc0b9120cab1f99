//! libFuzzer's entry for `outpost::fuzzing::stored_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::stored_record(data));
