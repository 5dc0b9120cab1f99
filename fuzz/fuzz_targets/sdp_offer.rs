//! libFuzzer's entry for `outpost::fuzzing::sdp_offer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::sdp_offer(data));
