//! libFuzzer's entry for `outpost::fuzzing::backup_archive`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::backup_archive(data));
