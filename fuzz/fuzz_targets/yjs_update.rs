//! libFuzzer's entry for `outpost::fuzzing::yjs_update`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::yjs_update(data));
