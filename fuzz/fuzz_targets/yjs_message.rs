//! libFuzzer's entry for `outpost::fuzzing::yjs_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::yjs_message(data));
