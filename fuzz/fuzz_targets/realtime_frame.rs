//! libFuzzer's entry for `outpost::fuzzing::realtime_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::realtime_frame(data));
