//! libFuzzer's entry for `outpost::fuzzing::rtp_packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::rtp_packet(data));
