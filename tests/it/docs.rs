//! Shared documents: REST state and updates, the y-websocket sync socket with real clients
//! (Yjs made with yrs here; stock Yjs under node in `docs_interop`), read-only refusals,
//! undecodable input, compaction that changes nothing, versions, and a SIGKILL right after
//! an update was relayed.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

use crate::identity::{Login, create_org, login, operator_invite_and_accept};
use crate::support::{ChildServer, TestServer, config_for, expect_problem, get_json, post_json};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An org with a room hosted by `host`, `editor` joined as member, `viewer` joined as viewer,
/// and `outsider` (an org member who never joined); plus a document in the room.
pub struct Fixture {
    pub host: Login,
    pub editor: Login,
    pub viewer: Login,
    pub outsider: Login,
    pub room: String,
    pub doc: String,
    pub org: String,
}

pub async fn setup(s: &TestServer) -> Fixture {
    let (org_id, sl) = create_org(s).await;
    let mut logins = Vec::new();
    for name in ["host", "editor", "viewer", "outsider"] {
        operator_invite_and_accept(s, &org_id, &format!("{name}-{sl}@example.org"), "member").await;
        logins.push(login(s, &sl, &format!("{name}-{sl}@example.org")).await);
    }
    let [host, editor, viewer, outsider]: [Login; 4] = logins.try_into().ok().unwrap();
    let room: Value = post_json(s, &host.access, "/v1/rooms", json!({ "name": "studio", "visibility": "org" })).await;
    let room = room["id"].as_str().unwrap().to_owned();
    for (who, role) in [(&editor, "member"), (&viewer, "viewer")] {
        let r = s
            .http
            .post(s.url(&format!("/v1/rooms/{room}/participants")))
            .bearer_auth(&host.access)
            .json(&json!({ "user_id": who.user_id, "role": role }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = s.http.post(s.url(&format!("/v1/rooms/{room}/join"))).bearer_auth(&who.access).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let d: Value = post_json(s, &editor.access, &format!("/v1/rooms/{room}/docs"), json!({ "name": "notes" })).await;
    assert_eq!(d["access"], "write", "{d}");
    Fixture { host, editor, viewer, outsider, room, doc: d["id"].as_str().unwrap().to_owned(), org: org_id }
}

/// An update that inserts `text` at the start of text "text" and sets map "map"[key] = text,
/// made by a fresh client on top of `base` (a state the server sent).
fn edit(base: &[u8], key: &str, text: &str) -> Vec<u8> {
    let doc = Doc::new();
    if !base.is_empty() {
        doc.transact_mut().apply_update(Update::decode_v1(base).unwrap()).unwrap();
    }
    let (t, m) = (doc.get_or_insert_text("text"), doc.get_or_insert_map("map"));
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    m.insert(&mut txn, key, text);
    txn.encode_update_v1()
}

fn read(state: &[u8]) -> (String, Value, Vec<u8>) {
    let doc = Doc::new();
    doc.transact_mut().apply_update(Update::decode_v1(state).unwrap()).unwrap();
    let (t, m) = (doc.get_or_insert_text("text"), doc.get_or_insert_map("map"));
    let txn = doc.transact();
    let mut map = serde_json::Map::new();
    for (k, v) in m.iter(&txn) {
        map.insert(k.to_owned(), Value::String(v.to_string(&txn)));
    }
    (t.get_string(&txn), Value::Object(map), txn.state_vector().encode_v1())
}

async fn state(base: &str, http: &reqwest::Client, token: &str, doc: &str) -> Vec<u8> {
    let r = http.get(format!("{base}/v1/docs/{doc}/state")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

async fn apply(s: &TestServer, token: &str, doc: &str, update: Vec<u8>) -> reqwest::Response {
    s.http
        .post(s.url(&format!("/v1/docs/{doc}/updates")))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(update)
        .send()
        .await
        .unwrap()
}

async fn sync_connect(base: &str, token: &str, doc: &str) -> Ws {
    let url = format!("{}/v1/yjs/{doc}?access_token={token}", base.replace("http://", "ws://"));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

/// The next protocol message, or the close code.
async fn recv(ws: &mut Ws) -> Result<Message, Option<u16>> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a message in time");
        match m {
            Some(Ok(WsMessage::Binary(b))) => return Ok(Message::decode_v1(&b).unwrap()),
            Some(Ok(WsMessage::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            _ => return Err(None),
        }
    }
}

async fn send(ws: &mut Ws, m: &Message) {
    ws.send(WsMessage::binary(m.encode_v1())).await.unwrap();
}

/// Connects and completes the sync: answers the server's step 1, asks with its own.
async fn synced(base: &str, token: &str, doc: &str) -> (Ws, Vec<u8>) {
    let mut ws = sync_connect(base, token, doc).await;
    let Ok(Message::Sync(SyncMessage::SyncStep1(_))) = recv(&mut ws).await else { panic!("no step 1") };
    send(
        &mut ws,
        &Message::Sync(SyncMessage::SyncStep2(
            Doc::new().transact().encode_state_as_update_v1(&StateVector::default()),
        )),
    )
    .await;
    send(&mut ws, &Message::Sync(SyncMessage::SyncStep1(StateVector::default()))).await;
    loop {
        match recv(&mut ws).await {
            Ok(Message::Sync(SyncMessage::SyncStep2(u))) => return (ws, u),
            Ok(_) => {}
            Err(c) => panic!("closed while syncing: {c:?}"),
        }
    }
}

/// Reads until `pick` takes a message; the socket must stay open meanwhile.
async fn until<T>(ws: &mut Ws, pick: impl Fn(Message) -> Option<T>) -> T {
    loop {
        match recv(ws).await {
            Ok(m) => {
                if let Some(t) = pick(m) {
                    return t;
                }
            }
            Err(c) => panic!("closed: {c:?}"),
        }
    }
}

/// The next relayed update.
async fn next_update(ws: &mut Ws) -> Vec<u8> {
    until(ws, |m| if let Message::Sync(SyncMessage::Update(u)) = m { Some(u) } else { None }).await
}

/// The reason of the next permission-denied message.
async fn denied(ws: &mut Ws) -> String {
    until(ws, |m| if let Message::Auth(Some(reason)) = m { Some(reason) } else { None }).await
}

/// Client `client`'s state in the next awareness message that names it.
async fn awareness_of(ws: &mut Ws, client: u64) -> String {
    until(ws, |m| match m {
        Message::Awareness(u) => u.clients.get(&yrs::ClientID::new(client)).map(|e| e.json.to_string()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn rest_state_updates_and_refusals() {
    let s = TestServer::start().await;
    let f = setup(&s).await;
    let doc = f.doc.clone();
    // An update by REST is stored and readable at once, as state and as JSON.
    let r = apply(&s, &f.editor.access, &doc, edit(&[], "a", "hello")).await;
    assert_eq!(r.status(), 200);
    let applied: Value = r.json().await.unwrap();
    assert_eq!((applied["stored"].as_bool(), applied["update_seq"].as_u64()), (Some(true), Some(1)));
    let st = state(&s.base, &s.http, &f.viewer.access, &doc).await;
    assert_eq!(read(&st).0, "hello");
    let j: Value = get_json(&s, &f.viewer.access, &format!("/v1/docs/{doc}/json")).await;
    assert_eq!(j, json!({ "text": "hello", "map": { "a": "hello" } }));
    // Given a state vector, only what it lacks.
    let sv = read(&st).2;
    let sv64 = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &sv);
    let r = s
        .http
        .get(s.url(&format!("/v1/docs/{doc}/state?state_vector={sv64}")))
        .bearer_auth(&f.viewer.access)
        .send()
        .await
        .unwrap();
    let diff = r.bytes().await.unwrap();
    assert!(Update::decode_v1(&diff).unwrap().is_empty());
    // Garbage and a truncated update are refused, and nothing changes.
    for bad in [b"\xff\xfe garbage".to_vec(), {
        let u = edit(&st, "b", "world");
        u[..u.len() / 2].to_vec()
    }] {
        let r = apply(&s, &f.editor.access, &doc, bad).await;
        let p = expect_problem(r, 422, "validation_failed").await;
        assert_eq!(p["errors"][0]["code"], "invalid_update", "{p}");
    }
    assert_eq!(state(&s.base, &s.http, &f.editor.access, &doc).await, st);
    // Viewers and outsiders read but do not write; another's document is not there at all.
    for who in [&f.viewer, &f.outsider] {
        let r = apply(&s, &who.access, &doc, edit(&st, "c", "nope")).await;
        expect_problem(r, 403, "forbidden").await;
        let m: Value = get_json(&s, &who.access, &format!("/v1/docs/{doc}")).await;
        assert_eq!(m["access"], "read");
    }
    assert_eq!(read(&state(&s.base, &s.http, &f.host.access, &doc).await).0, "hello");
    let list: Value = get_json(&s, &f.viewer.access, &format!("/v1/rooms/{}/docs", f.room)).await;
    assert_eq!(list["items"][0]["id"], doc.as_str());
    assert_eq!(list["items"][0]["update_seq"], 1);
    // A wrong content type is refused.
    let r = s
        .http
        .post(s.url(&format!("/v1/docs/{doc}/updates")))
        .bearer_auth(&f.editor.access)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(r, 415, "unsupported_media_type").await;
    // Versions: save, change, restore by a new update, restore as a new document.
    let v: Value =
        post_json(&s, &f.editor.access, &format!("/v1/docs/{doc}/versions"), json!({ "label": "draft 1" })).await;
    let vid = v["id"].as_str().unwrap().to_owned();
    let r =
        apply(&s, &f.editor.access, &doc, edit(&state(&s.base, &s.http, &f.editor.access, &doc).await, "b", "later "))
            .await;
    assert_eq!(r.status(), 200);
    assert_eq!(read(&state(&s.base, &s.http, &f.editor.access, &doc).await).0, "later hello");
    let vs: Value = get_json(&s, &f.viewer.access, &format!("/v1/docs/{doc}/versions")).await;
    assert_eq!(vs["items"][0]["label"], "draft 1");
    let r = s
        .http
        .get(s.url(&format!("/v1/docs/{doc}/versions/{vid}/state")))
        .bearer_auth(&f.viewer.access)
        .send()
        .await
        .unwrap();
    assert_eq!(read(&r.bytes().await.unwrap()).0, "hello");
    let r = s
        .http
        .post(s.url(&format!("/v1/docs/{doc}/versions/{vid}/restore")))
        .bearer_auth(&f.editor.access)
        .json(&json!({ "mode": "update" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j: Value = get_json(&s, &f.viewer.access, &format!("/v1/docs/{doc}/json")).await;
    assert_eq!(j, json!({ "text": "hello", "map": { "a": "hello" } }));
    let r = s
        .http
        .post(s.url(&format!("/v1/docs/{doc}/versions/{vid}/restore")))
        .bearer_auth(&f.editor.access)
        .json(&json!({ "mode": "new_document", "name": "copy" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let copy: Value = r.json().await.unwrap();
    let j: Value = get_json(&s, &f.viewer.access, &format!("/v1/docs/{}/json", copy["id"].as_str().unwrap())).await;
    assert_eq!(j["text"], "hello");
    // Deleting: a viewer may not; the creator may; then it is gone for everyone.
    let r = s.http.delete(s.url(&format!("/v1/docs/{doc}"))).bearer_auth(&f.viewer.access).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = s.http.delete(s.url(&format!("/v1/docs/{doc}"))).bearer_auth(&f.editor.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.http.get(s.url(&format!("/v1/docs/{doc}"))).bearer_auth(&f.host.access).send().await.unwrap();
    expect_problem(r, 404, "not_found").await;
    s.stop().await;
}

#[tokio::test]
async fn sync_socket_relays_only_what_is_durable_and_refuses_viewers() {
    let s = TestServer::start().await;
    let f = setup(&s).await;
    let doc = f.doc.clone();
    let (mut a, st) = synced(&s.base, &f.editor.access, &doc).await;
    let (mut b, _) = synced(&s.base, &f.host.access, &doc).await;
    let (mut v, _) = synced(&s.base, &f.viewer.access, &doc).await;
    // A's edit reaches B and the viewer, and is already stored when it does.
    let u = edit(&st, "a", "one");
    send(&mut a, &Message::Sync(SyncMessage::Update(u.clone()))).await;
    assert_eq!(next_update(&mut b).await, u);
    assert_eq!(next_update(&mut v).await, u);
    assert_eq!(read(&state(&s.base, &s.http, &f.outsider.access, &doc).await).0, "one");
    // Awareness goes to the others, and goes away when its socket does.
    let aw = yrs::sync::AwarenessUpdate {
        clients: [(
            yrs::ClientID::new(77),
            yrs::sync::awareness::AwarenessUpdateEntry { clock: 1, json: r#"{"user":"a"}"#.into() },
        )]
        .into(),
    };
    send(&mut a, &Message::Awareness(aw)).await;
    assert_eq!(awareness_of(&mut b, 77).await, r#"{"user":"a"}"#);
    // The viewer's edit is refused with permission-denied, applied nowhere.
    let st1 = state(&s.base, &s.http, &f.host.access, &doc).await;
    send(&mut v, &Message::Sync(SyncMessage::Update(edit(&st1, "v", "VIEWER")))).await;
    let reason = denied(&mut v).await;
    assert!(reason.starts_with("read-only"), "{reason}");
    // A garbage update closes the socket with 4400 and changes nothing.
    send(&mut a, &Message::Sync(SyncMessage::Update(b"\x01\x02\x03 junk".to_vec()))).await;
    let code = loop {
        if let Err(c) = recv(&mut a).await {
            break c;
        }
    };
    assert_eq!(code, Some(4400));
    // A's awareness is gone for B now: a null state at a higher clock.
    assert_eq!(awareness_of(&mut b, 77).await, "null");
    assert_eq!(state(&s.base, &s.http, &f.host.access, &doc).await, st1);
    let (t, m, _) = read(&st1);
    assert_eq!((t.as_str(), m), ("one", json!({ "a": "one" })));
    // Without a token, or with one of another org, no socket at all.
    let url = format!("{}/v1/yjs/{doc}", s.base.replace("http://", "ws://"));
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    let (other_org, other_sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &other_org, "stranger@example.org", "owner").await;
    let stranger = login(&s, &other_sl, "stranger@example.org").await;
    let url = format!("{}/v1/yjs/{doc}?access_token={}", s.base.replace("http://", "ws://"), stranger.access);
    let err = tokio_tungstenite::connect_async(url).await.err().unwrap();
    assert!(err.to_string().contains("404"), "{err}");
    s.stop().await;
}

#[tokio::test]
async fn compaction_keeps_the_document_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.docs.compact_after_updates = 20;
    let s = TestServer::start_with(config).await;
    let f = setup(&s).await;
    let doc = f.doc.clone();
    // Edits on top of each other, from several clients, with deletions.
    let mut st = Vec::new();
    let mut before = Vec::new();
    for i in 0..45 {
        let u = if i % 7 == 6 {
            let d = Doc::new();
            d.transact_mut().apply_update(Update::decode_v1(&st).unwrap()).unwrap();
            let t = d.get_or_insert_text("text");
            let mut txn = d.transact_mut();
            t.remove_range(&mut txn, 0, 2);
            txn.encode_update_v1()
        } else {
            edit(&st, &format!("k{}", i % 5), &format!("<{i}>"))
        };
        assert_eq!(apply(&s, &f.editor.access, &doc, u).await.status(), 200);
        st = state(&s.base, &s.http, &f.editor.access, &doc).await;
        before = read(&st).2;
    }
    let expected = read(&st);
    // Compaction runs in the background once 20 updates are stored after the snapshot.
    let mut meta = Value::Null;
    for _ in 0..100 {
        meta = s
            .http
            .get(s.url(&format!("/v1/docs/{doc}")))
            .bearer_auth(&f.editor.access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if meta["compactions"].as_u64() >= Some(2) && meta["pending_updates"].as_u64() < Some(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(meta["compactions"].as_u64() >= Some(2), "{meta}");
    // Load it again from the store (a restart): the same state vector and the same content.
    s.stop().await;
    let mut config = config_for(dir.path());
    config.docs.compact_after_updates = 20;
    let s = TestServer::start_with(config).await;
    let again = state(&s.base, &s.http, &f.editor.access, &doc).await;
    assert_eq!(read(&again), expected);
    assert_eq!(read(&again).2, before);
    s.stop().await;
}

/// Compaction from the loaded document while editors write at once: updates whose commits
/// finish in one order and reach the document in another are never merged away before the
/// document holds them. After a restart (built from the store alone) the content is that of
/// the live document.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_under_concurrent_edits_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.docs.compact_after_updates = 4;
    config.limits.user_requests_per_s = 10_000;
    let s = TestServer::start_with(config).await;
    let f = setup(&s).await;
    let doc = f.doc.clone();
    let base = state(&s.base, &s.http, &f.editor.access, &doc).await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (http, url, token, base) =
            (s.http.clone(), s.url(&format!("/v1/docs/{doc}/updates")), f.editor.access.clone(), base.clone());
        writers.spawn(async move {
            for i in 0..25 {
                let u = edit(&base, &format!("w{w}-{i}"), &format!("<{w}.{i}>"));
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/octet-stream")
                    .body(u)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    let live = read(&state(&s.base, &s.http, &f.editor.access, &doc).await);
    let meta = get_json(&s, &f.editor.access, &format!("/v1/docs/{doc}")).await;
    assert!(meta["compactions"].as_u64() >= Some(5), "{meta}");
    s.stop().await;
    let s = TestServer::start_with(config_for(dir.path())).await;
    let again = read(&state(&s.base, &s.http, &f.editor.access, &doc).await);
    assert_eq!(again, live);
    for w in 0..8 {
        for i in 0..25 {
            assert!(again.1.get(format!("w{w}-{i}")).is_some(), "w{w}-{i} is gone: {again:?}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn an_update_others_saw_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let (code, key, _) = crate::support::cli(&["operator", "create-key", "--data", &data], &[], None);
    assert_eq!(code, 0);
    let key = key.trim().to_owned();
    let server = ChildServer::start(dir.path());
    let (base, http) = (server.base.clone(), reqwest::Client::new());
    let post = async |token: &str, path: &str, body: Value| -> Value {
        let r = http.post(format!("{base}{path}")).bearer_auth(token).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    };
    let org = post(&key, "/v1/orgs", json!({ "slug": "crashdocs", "name": "Crash docs" })).await;
    let org_id = org["id"].as_str().unwrap();
    let inv = post(
        &key,
        &format!("/v1/orgs/{org_id}/invitations"),
        json!({ "email": "writer@example.org", "role": "owner" }),
    )
    .await;
    let body = json!({ "token": inv["token"], "username": "writer", "password": crate::identity::PASSWORD });
    post("", "/v1/auth/invitations/accept", body).await;
    let t = post(
        "",
        "/v1/auth/login",
        json!({ "org": "crashdocs", "login": "writer", "password": crate::identity::PASSWORD }),
    )
    .await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let room = post(&token, "/v1/rooms", json!({ "name": "r" })).await;
    let doc = post(&token, &format!("/v1/rooms/{}/docs", room["id"].as_str().unwrap()), json!({ "name": "d" })).await;
    let doc = doc["id"].as_str().unwrap().to_owned();
    let (mut a, st) = synced(&base, &token, &doc).await;
    let (mut b, _) = synced(&base, &token, &doc).await;
    let u = edit(&st, "k", "kept");
    send(&mut a, &Message::Sync(SyncMessage::Update(u.clone()))).await;
    // B has seen it: the server is killed at once.
    assert_eq!(next_update(&mut b).await, u);
    server.kill9();
    let server = ChildServer::start(dir.path());
    let got = state(&server.base, &http, &token, &doc).await;
    assert_eq!(read(&got).0, "kept");
    server.kill9();
}

#[tokio::test]
async fn stock_yjs_clients_under_node_converge_through_the_server() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
    assert!(
        std::path::Path::new(dir).join("node_modules/y-websocket").exists(),
        "the Yjs peer clients are missing: `bash scripts/test-all.sh` installs them into tests/peers"
    );
    let s = TestServer::start().await;
    let f = setup(&s).await;
    let url = format!("{}/v1/yjs", s.base.replace("http://", "ws://"));
    let args = [
        "yjs_interop.mjs".to_owned(),
        "--url".into(),
        url,
        "--doc".into(),
        f.doc.clone(),
        "--editor".into(),
        f.editor.access.clone(),
        "--editor2".into(),
        f.host.access.clone(),
        "--viewer".into(),
        f.viewer.access.clone(),
    ];
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new("node").args(args).current_dir(dir).output())
            .await
            .unwrap()
            .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("no report: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["viewer_denied"], true, "{report}");
    // What the clients converged on is what the server stored, and the viewer's text is not.
    let j: Value = get_json(&s, &f.viewer.access, &format!("/v1/docs/{}/json", f.doc)).await;
    assert_eq!(j["text"], report["text"], "{j}");
    assert_eq!(j["map"], report["map"], "{j}");
    assert!(!j["text"].as_str().unwrap().contains("VIEWER"));
    s.stop().await;
}

#[tokio::test]
async fn caps_refuse_clearly_and_observers_get_coarse_change_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.docs.update_bytes_max = 1024;
    config.docs.document_bytes_max = 3000;
    config.docs.org_bytes_max = 3000;
    let s = TestServer::start_with(config).await;
    let f = setup(&s).await;
    let doc = f.doc.clone();
    // An observer follows the document's topic on the realtime socket.
    let (mut rt, _) = crate::realtime::connect(&s, &f.viewer).await;
    rt.send(WsMessage::text(json!({ "op": "subscribe", "topic": format!("doc:{doc}") }).to_string())).await.unwrap();
    loop {
        if crate::realtime::next(&mut rt).await["op"] == "subscribed" {
            break;
        }
    }
    let big = |n: usize| edit(&[], &format!("k{n}"), &"x".repeat(400));
    // Over the per-update cap.
    let r = apply(&s, &f.editor.access, &doc, edit(&[], "huge", &"y".repeat(2000))).await;
    expect_problem(r, 413, "update_too_large").await;
    let mut stored = 0;
    for n in 0..10 {
        let r = apply(&s, &f.editor.access, &doc, big(n)).await;
        if r.status() == 413 {
            expect_problem(r, 413, "document_too_large").await;
            break;
        }
        assert_eq!(r.status(), 200);
        stored += 1;
    }
    assert!((2..=4).contains(&stored), "{stored}");
    // On the socket, the refusal comes as permission-denied with the code; nothing is relayed.
    let (mut a, _) = synced(&s.base, &f.editor.access, &doc).await;
    send(&mut a, &Message::Sync(SyncMessage::Update(big(99)))).await;
    let reason = denied(&mut a).await;
    assert!(reason.starts_with("document_too_large"), "{reason}");
    // The observer saw coarse `doc.changed` events (counts and sizes, never the bytes) that
    // add up to what was stored.
    let mut updates = 0;
    while updates < stored {
        let e = crate::realtime::next(&mut rt).await;
        if e["op"] == "event" && e["type"] == "doc.changed" {
            assert!(e["data"]["bytes"].as_u64().unwrap() > 0, "{e}");
            updates += e["data"]["updates"].as_u64().unwrap();
        }
    }
    assert_eq!(updates, stored);
    s.stop().await;
}

#[tokio::test]
async fn lost_access_closes_sockets_and_idle_documents_unload() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.realtime.recheck_s = 1;
    config.docs.idle_unload_s = 1;
    let s = TestServer::start_with(config).await;
    let f = setup(&s).await;
    let metric = async |name: &str| -> i64 {
        let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let name = format!("outpost_{name}");
        let line = text.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("no {name} in /metrics"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (mut a, st) = synced(&s.base, &f.editor.access, &f.doc).await;
    let (mut v, _) = synced(&s.base, &f.viewer.access, &f.doc).await;
    send(&mut a, &Message::Sync(SyncMessage::Update(edit(&st, "a", "x")))).await;
    next_update(&mut v).await;
    assert!(metric("docs_loaded ").await >= 1);
    assert!(metric("docs_updates_total").await >= 1);
    assert!(metric("docs_relayed_total").await >= 1);
    assert_eq!(metric("docs_connections ").await, 2);
    // Deleting the room takes its documents from everyone: within a re-check both sockets close
    // with 4403, where a stock provider stops reconnecting.
    let r = s.http.delete(s.url(&format!("/v1/rooms/{}", f.room))).bearer_auth(&f.host.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    for ws in [&mut v, &mut a] {
        let code = loop {
            if let Err(c) = recv(ws).await {
                break c;
            }
        };
        assert_eq!(code, Some(4403));
    }
    // Nobody connected: the document is unloaded after `docs.idle_unload_s` (the janitor looks
    // every few seconds).
    let mut loaded = 1;
    for _ in 0..150 {
        loaded = metric("docs_loaded ").await;
        if loaded == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(loaded, 0);
    assert_eq!(metric("docs_connections ").await, 0);
    s.stop().await;
}

/// Updates that decode but never integrate (what they build on does not exist) are stored or
/// refused, and never break reading the document: found by fuzzing, this one made yrs panic
/// when the state was encoded with its pending structures (every sync and every compaction).
/// It names a client's structures out of order, so it is now refused before the engine sees it.
#[tokio::test]
async fn an_update_that_never_integrates_leaves_the_document_readable() {
    let s = TestServer::start().await;
    let f = setup(&s).await;
    let base = state(&s.base, &s.http, &f.editor.access, &f.doc).await;
    let r = apply(&s, &f.editor.access, &f.doc, edit(&base, "k", "kept")).await;
    assert_eq!(r.status(), 200);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let finding = std::fs::read(root.join("fuzz/corpus/yjs_update/finding-pending-merge-panic.bin")).unwrap();
    let r = apply(&s, &f.editor.access, &f.doc, finding).await;
    assert!(r.status() == 200 || r.status() == 422, "stored or refused: {}", r.status());
    let (text, map, _) = read(&state(&s.base, &s.http, &f.editor.access, &f.doc).await);
    assert_eq!((text.as_str(), &map["k"]), ("kept", &json!("kept")));
    let (_ws, synced_state) = synced(&s.base, &f.host.access, &f.doc).await;
    assert_eq!(read(&synced_state).0, "kept");
}

/// Updates the Yjs engine panics on (found by fuzzing; kept in the fuzz corpora): one it cannot
/// integrate at all, and one it integrates but cannot read back as JSON.
/// `levels` maps nested in `map` (under the key "k"), one transaction; answers the deepest.
fn nest(doc: &Doc, map: &yrs::MapRef, levels: usize) -> yrs::MapRef {
    let mut txn = doc.transact_mut();
    let mut m = map.clone();
    for _ in 0..levels {
        m = m.insert(&mut txn, "k", yrs::MapPrelim::default());
    }
    m
}

fn full(doc: &Doc) -> Vec<u8> {
    doc.transact().encode_state_as_update_v1(&StateVector::default())
}

fn poison() -> (Vec<u8>, Vec<u8>) {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus");
    let block_store = std::fs::read(format!("{corpus}/yjs_update/finding-block-store-index.bin")).unwrap();
    let message = std::fs::read(format!("{corpus}/yjs_message/finding-xml-tag-undefined.bin")).unwrap();
    let Ok(Message::Sync(SyncMessage::Update(xml) | SyncMessage::SyncStep2(xml))) = Message::decode_v1(&message) else {
        panic!("the XML finding is an update message")
    };
    (block_store, xml)
}

/// The real binary (whose panic hook aborts on any panic it does not contain): a malformed
/// update is refused with 422 and costs nothing else; ones the engine could not read back are
/// read as JSON all the same, and the server, the document's state and its other readers carry on.
#[tokio::test]
async fn a_malformed_update_costs_itself_not_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, key, err) = crate::support::cli(&["operator", "create-key", "--data", data], &[], None);
    assert_eq!(code, 0, "{err}");
    let mut server = ChildServer::start(dir.path());
    let s = TestServer::attached(server.base.clone(), key.trim().to_owned());
    let f = setup(&s).await;
    let (block_store, xml) = poison();
    assert_eq!(apply(&s, &f.editor.access, &f.doc, edit(&[], "a", "hello")).await.status(), 200);
    let p =
        expect_problem(apply(&s, &f.editor.access, &f.doc, block_store.clone()).await, 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["code"], "invalid_update", "{p}");
    // One that names a client's structures twice, overlapping (integrating it would free a
    // structure the document still points to), is refused before the engine sees it.
    let overlapping = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/yjs_update/finding-overlapping-client-use-after-free.bin"
    ))
    .unwrap();
    assert!(!outpost::docs::one_run_per_client(&Update::decode_v1(&overlapping).unwrap()));
    let p = expect_problem(apply(&s, &f.editor.access, &f.doc, overlapping).await, 422, "validation_failed").await;
    assert!(p["errors"][0]["detail"].as_str().unwrap().contains("overlap"), "{p}");
    assert_eq!(read(&state(&s.base, &s.http, &f.viewer.access, &f.doc).await).0, "hello");

    // Bytes that declare more than they hold (73 bytes declaring 245 million clients, which
    // the engine would reserve room for) and values nested deeper than the engine's recursion
    // can take are refused before it sees them.
    for (finding, why) in
        [("declared-count-allocation", "more elements"), ("deep-values-stack-overflow", "nest too deep")]
    {
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/yjs_update");
        let bytes = std::fs::read(format!("{corpus}/finding-{finding}.bin")).unwrap();
        let p = expect_problem(apply(&s, &f.editor.access, &f.doc, bytes).await, 422, "validation_failed").await;
        assert!(p["errors"][0]["detail"].as_str().unwrap().contains(why), "{p}");
    }

    // Shared types nest at most 256 levels deep, whether in one update or one more level per
    // update; at the limit the document is read and deleted as usual (deleting a nested type
    // and reading it as JSON recurse as deep as it nests).
    let deep: Value =
        post_json(&s, &f.editor.access, &format!("/v1/rooms/{}/docs", f.room), json!({ "name": "deep" })).await;
    let deep = deep["id"].as_str().unwrap();
    let too_deep = Doc::new();
    nest(&too_deep, &too_deep.get_or_insert_map("deep"), 300);
    let p = expect_problem(apply(&s, &f.editor.access, deep, full(&too_deep)).await, 422, "validation_failed").await;
    assert!(p["errors"][0]["detail"].as_str().unwrap().contains("nest 300 levels"), "{p}");
    let client = Doc::new();
    let root = client.get_or_insert_map("deep");
    let mut bottom = nest(&client, &root, 255);
    assert_eq!(apply(&s, &f.editor.access, deep, full(&client)).await.status(), 200);
    let before = client.transact().state_vector();
    bottom = nest(&client, &bottom, 1);
    assert_eq!(apply(&s, &f.editor.access, deep, client.transact().encode_diff_v1(&before)).await.status(), 200);
    let before = client.transact().state_vector();
    nest(&client, &bottom, 1);
    let p = expect_problem(
        apply(&s, &f.editor.access, deep, client.transact().encode_diff_v1(&before)).await,
        422,
        "validation_failed",
    )
    .await;
    assert!(p["errors"][0]["detail"].as_str().unwrap().contains("nest 257 levels"), "{p}");
    let r = s.http.get(s.url(&format!("/v1/docs/{deep}/json"))).bearer_auth(&f.viewer.access).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let before = client.transact().state_vector();
    root.remove(&mut client.transact_mut(), "k");
    assert_eq!(apply(&s, &f.editor.access, deep, client.transact().encode_diff_v1(&before)).await.status(), 200);
    let j: Value = get_json(&s, &f.viewer.access, &format!("/v1/docs/{deep}/json")).await;
    assert_eq!(j["deep"], json!({}), "{j}");

    // Stored in documents of their own: the XML update (whose JSON the engine's own reading
    // panicked on) and a list holding non-ASCII text after a value (whose reading by index
    // never ended) read as JSON like any other.
    for (name, update, want) in [
        ("xml", xml, None),
        (
            "list",
            vec![1, 3, 1, 0, 0x27, 1, 1, b'm', 1, b'k', 0, 0x08, 0, 1, 0, 1, 120, 0x84, 1, 1, 2, 0xc3, 0xa9, 0],
            Some(json!({ "m": { "k": "é" } })),
        ),
    ] {
        let other: Value =
            post_json(&s, &f.editor.access, &format!("/v1/rooms/{}/docs", f.room), json!({ "name": name })).await;
        let other = other["id"].as_str().unwrap();
        assert_eq!(apply(&s, &f.editor.access, other, update).await.status(), 200);
        let j: Value = get_json(&s, &f.viewer.access, &format!("/v1/docs/{other}/json")).await;
        if let Some(want) = want {
            assert_eq!(j, want);
        }
    }
    let j: Value = get_json(&s, &f.viewer.access, &format!("/v1/docs/{}/json", f.doc)).await;
    assert_eq!(j["text"], "hello");
    assert_eq!(s.http.get(s.url("/health/live")).send().await.unwrap().status(), 200);
    assert!(server.child.try_wait().unwrap().is_none(), "the server is still running");
    let _ = server.child.kill();
}

/// A stored update the engine panics on (stored before the check existed, or by a future
/// engine) is skipped when the document loads; the updates around it are kept.
#[test]
fn loading_skips_a_stored_update_the_engine_panics_on() {
    let (block_store, _) = poison();
    let first = edit(&[], "a", "world");
    let second = edit(&first, "b", "hello ");
    let now = outpost::ids::now_ms();
    let doc = outpost::domain::docs::Document {
        id: outpost::ids::Id::new(),
        room: outpost::ids::Id::new(),
        name: "notes".into(),
        created_by: outpost::ids::Id::new(),
        created_at_ms: now,
        updated_at_ms: now,
        deleted_at_ms: None,
        update_seq: 3,
        snapshot_through: 0,
        snapshot_bytes: 0,
        tail_updates: 3,
        tail_bytes: 0,
        compactions: 0,
        announced_at_ms: now,
        unannounced_updates: 0,
        unannounced_bytes: 0,
    };
    let state = outpost::domain::docs::StoredState {
        doc,
        snapshot: None,
        tail: vec![(1, block_store), (2, first), (3, second)],
    };
    let (built, _) = outpost::docs::build(&state);
    assert_eq!(built.get_or_insert_text("text").get_string(&built.transact()), "hello world");
}
