//! libFuzzer's entry for `outpost::fuzzing::websocket_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::websocket_frames(data));
