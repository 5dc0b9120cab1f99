//! Fuzz targets: every parser that takes bytes from outside (the API, the sockets, the media
//! port, files an operator hands over), as a function that must return
//! (with an error or not) on any input, never panic, hang or grow without bound.
//!
//! Two harnesses drive them: `fuzz/` (cargo-fuzz, libFuzzer on a nightly toolchain) for long
//! coverage-guided runs, and `tests/it/fuzz.rs`, which replays the corpora in `fuzz/corpus/`
//! and a bounded number of mutations of them on every test run. A finding is kept as a file in
//! the target's corpus, so it is replayed from then on.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey};
use pasetors::paserk::{FormatAsPaserk, Id as Pid};
use pasetors::version4::V4;
use yrs::updates::decoder::Decode;

use crate::auth::keys::{KeyRing, Signer, SigningKeyRecord, Verifier};
use crate::auth::tokens::{self, AccessClaims};
use crate::ids::Id;

/// A fuzz target: takes any bytes.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder and its cargo-fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("realtime_frame", realtime_frame),
    ("websocket_frames", websocket_frames),
    ("yjs_message", yjs_message),
    ("yjs_update", yjs_update),
    ("access_token", access_token),
    ("api_key", api_key),
    ("json_body", json_body),
    ("config_file", config_file),
    ("backup_archive", backup_archive),
    ("sdp_offer", sdp_offer),
    ("rtp_packet", rtp_packet),
    ("rtcp_packet", rtcp_packet),
    ("stun_binding", stun_binding),
    ("file_headers", file_headers),
    ("upload_form", upload_form),
    ("stored_record", stored_record),
];

/// An audit record (first byte even) or an event (odd) as a store or a backup holds them —
/// compact (schema 5), in the first binary form (schemas 3 and 4), or JSON as stored before —
/// read as the store reads them, then stored again.
pub fn stored_record(data: &[u8]) {
    let key = crate::store::tables::org_seq_key(Id::NIL, 1);
    let Some((which, value)) = data.split_first() else { return };
    if which % 2 == 0 {
        if let Ok(record) = crate::store::audit::AuditRecord::from_stored(&key, value) {
            let _ = (record.compute_hash(), record.to_stored());
        }
    } else if let Ok(event) = crate::store::events::Event::from_stored(&key, value) {
        let _ = event.to_stored();
    }
}

/// The bytes a WebSocket client sends (frames, masked), read as the realtime and Yjs sockets
/// read them, with a 4 KiB bound on a message.
pub fn websocket_frames(data: &[u8]) {
    let _ = crate::http::ws::read_received(data, 4096);
}

/// A frame a realtime client sends (JSON text).
pub fn realtime_frame(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::realtime::protocol::ClientFrame>(data);
}

/// A y-websocket message (sync step 1 and 2, update, awareness, query), decoded as the sync
/// socket does, with any update in it decoded and applied as the engine applies it.
pub fn yjs_message(data: &[u8]) {
    use yrs::sync::{Message, SyncMessage};
    match crate::docs::v1::message(data) {
        Ok(Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u))) => yjs_update(&u),
        Ok(Message::Sync(SyncMessage::SyncStep1(sv))) => {
            let _ = crate::docs::state_update(&yrs::Doc::new(), &sv);
        }
        Ok(Message::Awareness(update)) => {
            let mut awareness = yrs::sync::Awareness::new(yrs::Doc::new());
            let _ = awareness.apply_update(update);
        }
        _ => {}
    }
}

/// A Yjs update (v1): checked as the server checks what it stores (its shape, how deep its
/// types nest, and integrating it into an empty document, containing a panic of the engine's), then applied to a document and read
/// back as JSON, as loading, compaction and `GET …/json` do, each contained as the server
/// contains it. The harness aborts on any panic outside [`crate::panics::contain`].
pub fn yjs_update(data: &[u8]) {
    let Ok(checked) = crate::docs::decode_updates(vec![data.to_vec()]) else { return };
    if checked.is_empty() {
        return;
    }
    // Into an empty document, as the engine bounds how deep its types nest.
    let mut items = Vec::new();
    if crate::docs::v1::items(data, &mut items).is_err() {
        return;
    }
    match crate::docs::nesting::deepest(&mut items, &|_, _| false, 0) {
        Ok(d) if d <= crate::docs::nesting::NESTING_MAX => {}
        _ => return,
    }
    let Ok(update) = yrs::Update::decode_v1(data) else { return };
    let doc = yrs::Doc::new();
    let applied = crate::docs::transact_contained(&doc, |txn| txn.apply_update(update).is_ok());
    if applied == Ok(true) {
        let _ = crate::panics::contain(|| crate::docs::state_update(&doc, &yrs::StateVector::default()));
        let _ = crate::panics::contain(|| crate::docs::content::to_json(&doc));
    }
}

/// A bearer token presented as an access token, verified against a ring holding one real key
/// (so well-formed tokens reach the signature and claim checks).
pub fn access_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = tokens::verify(ring(), token, Duration::from_secs(900));
}

/// A bearer token presented as an API key.
pub fn api_key(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = crate::domain::api_keys::parse(token);
}

/// A request body: parsed into a free-form value and into two typed bodies (one with nested
/// enums and lists, one with text), each failure located with a JSON pointer.
pub fn json_body(data: &[u8]) {
    let _ = crate::http::body::parse::<serde_json::Value>(data);
    let _ = crate::http::body::parse::<crate::http::tasks::TaskBody>(data);
    let _ = crate::http::body::parse::<crate::http::chat::PostBody>(data);
}

/// A configuration file.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = crate::config::Config::from_toml(text);
}

/// A backup archive given to `restore`: checked, then restored into an empty data dir.
pub fn backup_archive(data: &[u8]) {
    let Ok(dir) = tempfile_dir() else { return };
    let archive = dir.join("backup.opb");
    if std::fs::write(&archive, data).is_err() {
        return;
    }
    if crate::store::backup::check_file(&archive).is_ok() {
        let _ = crate::store::backup::restore(&archive, &dir.join("data"), &mut |_, _| {});
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An SDP offer given to WHIP, WHEP or `call_join`: answered as the relay answers it, for each
/// direction.
pub fn sdp_offer(data: &[u8]) {
    use crate::media::sfu::Direction;
    let Ok(offer) = std::str::from_utf8(data) else { return };
    let host = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    for direction in [Direction::Publish, Direction::Play, Direction::Call] {
        let _ = crate::media::sfu::sdp::answer(offer, direction, host, true, true, 16);
    }
}

/// An RTP packet from a publisher: parsed, and its payload checked for a keyframe start as
/// VP8 and as H.264.
pub fn rtp_packet(data: &[u8]) {
    use rtc::shared::marshal::Unmarshal;
    let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut &data[..]) else { return };
    for mime in ["video/VP8", "video/H264"] {
        let _ = crate::media::sfu::keyframe::keyframe_start(mime, &packet.payload);
    }
}

/// An RTCP compound packet from a receiver or publisher (reports, PLI, FIR, NACK, REMB).
pub fn rtcp_packet(data: &[u8]) {
    let _ = rtc::rtcp::packet::unmarshal(&mut &data[..]);
}

/// A datagram on the media port, read for the ICE username of a STUN binding request (how the
/// relay routes a new client's first packets).
pub fn stun_binding(data: &[u8]) {
    let _ = crate::media::sfu::net::binding_request_ufrag(data);
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("outpost-fuzz-{}", Id::new()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One signing key, the same in every process (a fixed seed), so the tokens kept in the corpus
/// pass the signature check and the fuzzer reaches the claims behind it.
fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        use ring::signature::KeyPair;
        let seed = [7u8; 32];
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).expect("a valid seed");
        let public_bytes = pair.public_key().as_ref().to_vec();
        let secret = AsymmetricSecretKey::<V4>::from(&[&seed[..], &public_bytes].concat()).expect("a 64-byte key");
        let public = AsymmetricPublicKey::<V4>::from(&public_bytes).expect("a 32-byte key");
        let pair = AsymmetricKeyPair { public, secret };
        let pid = Pid::from(&pair.public);
        let (mut kid, mut public) = (String::new(), String::new());
        let _ = pid.fmt(&mut kid);
        let _ = pair.public.fmt(&mut public);
        let record = SigningKeyRecord {
            id: Id::new(),
            kid: kid.clone(),
            public,
            sealed_secret: String::new(),
            created_at_ms: crate::ids::now_ms(),
            retired_at_ms: None,
        };
        let mut verifiers = HashMap::new();
        verifiers.insert(kid.clone(), Verifier { key: pair.public.clone(), record });
        KeyRing { signing: Some(Signer { kid, pid, secret: pair.secret }), verifiers }
    })
}

/// An access token of the fuzzing key ring that expires in `ttl`, to seed the `access_token`
/// corpus (`fuzz/seed.sh`).
pub fn sample_access_token(ttl: Duration) -> Option<String> {
    let claims = AccessClaims { org: Id::new(), user: Id::new(), role: "member".into(), session: Id::new(), exp_s: 0 };
    tokens::issue(ring(), &claims, ttl).ok()
}

/// Upload and download headers (`Upload-Metadata`, `Upload-Checksum`, `Range`,
/// `If-None-Match`), media types and file names, one per line.
pub fn file_headers(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::http::files::fuzz_headers(text);
    }
}

/// A form upload's body (`multipart/form-data`).
pub fn upload_form(data: &[u8]) {
    crate::http::files::fuzz_form(data);
}
