//! libFuzzer's entry for `outpost::fuzzing::rtcp_packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::rtcp_packet(data));
