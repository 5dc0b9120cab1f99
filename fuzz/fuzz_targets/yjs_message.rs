//! libFuzzer's entry for `outpost::fuzzing::yjs_message`. A panic the server contains (the Yjs engine's
//! on a malformed update) is no finding; any other aborts, as in the server.
#![no_main]

static HOOK: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HOOK.call_once(outpost::panics::install_hook);
    outpost::fuzzing::yjs_message(data);
});
