//! The realtime socket with real WebSocket clients over 127.0.0.1: who may follow what, events
//! in order, access lost mid-stream, and resume that replays exactly what was missed, also
//! while writes keep landing at the seam.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::identity::{Login, create_org, login, operator_invite_and_accept};
use crate::support::{TestServer, post_json};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected, authenticated client (token in the first frame) and its welcome.
pub async fn connect(s: &TestServer, who: &Login) -> (Ws, Value) {
    let url = s.base.replace("http://", "ws://") + "/v1/realtime";
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(json!({ "op": "auth", "token": who.access }).to_string())).await.unwrap();
    let welcome = next(&mut ws).await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    (ws, welcome)
}

/// A server (its config changed by `tune` first), an organization, and ana in it as `role`,
/// logged in: the server, the organization's slug, and ana.
async fn ana_on(role: &str, tune: impl FnOnce(&mut outpost::Config)) -> (TestServer, String, Login) {
    let s = TestServer::start_tuned(tune).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "ana@example.org", role).await;
    let ana = login(&s, &sl, "ana").await;
    (s, sl, ana)
}

/// The next JSON frame (within 10 s).
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame in time");
        match m.expect("socket open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => {
                // Answer the closing handshake at once.
                let _ = ws.flush().await;
                return json!({ "op": "socket_closed", "code": c.map(|c| u16::from(c.code)) });
            }
            _ => {}
        }
    }
}

/// Frames until one of `op` (those before it are returned too).
async fn until(ws: &mut Ws, op: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let f = next(ws).await;
        let done = f["op"] == op;
        seen.push(f);
        if done {
            return seen;
        }
    }
}

pub async fn subscribe(ws: &mut Ws, topic: &str, since: Option<u64>, epoch: Option<u64>) -> Vec<Value> {
    let mut f = json!({ "op": "subscribe", "topic": topic, "ref": "s" });
    if let Some(s) = since {
        f["since"] = json!(s);
    }
    if let Some(e) = epoch {
        f["epoch"] = json!(e);
    }
    ws.send(Message::text(f.to_string())).await.unwrap();
    let mut frames = Vec::new();
    loop {
        let f = next(ws).await;
        let done = f["op"] == "subscribed" || f["op"] == "error";
        frames.push(f);
        if done {
            return frames;
        }
    }
}

/// The next event frame of `kind`, skipping others.
async fn event_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let f = next(ws).await;
        if f["op"] == "event" && f["type"] == kind {
            return f;
        }
        assert_ne!(f["op"], "socket_closed", "closed while waiting for {kind}");
    }
}

#[tokio::test]
async fn room_members_see_each_other_and_nobody_else_does() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    for who in ["ana", "ben", "cy"] {
        operator_invite_and_accept(&s, &org_id, &format!("{who}@example.org"), "member").await;
    }
    let (ana, ben, cy) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await, login(&s, &sl, "cy").await);
    let (other_org, other_sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &other_org, "oz@example.org", "admin").await;
    let oz = login(&s, &other_sl, "oz").await;

    let room = post_json(&s, &ana.access, "/v1/rooms", json!({ "name": "War room", "visibility": "private" })).await;
    let rid = room["id"].as_str().unwrap().to_owned();
    let topic = format!("room:{rid}");
    post_json(&s, &ana.access, &format!("/v1/rooms/{rid}/participants"), json!({ "user_id": ben.user_id })).await;

    let (mut a, _) = connect(&s, &ana).await;
    let (mut b, _) = connect(&s, &ben).await;
    assert_eq!(subscribe(&mut a, &topic, None, None).await.last().unwrap()["op"], "subscribed");
    assert_eq!(subscribe(&mut b, &topic, None, None).await.last().unwrap()["op"], "subscribed");
    // Someone of the same org outside the room, and someone of another org, cannot follow it.
    let (mut c, _) = connect(&s, &cy).await;
    let refused = subscribe(&mut c, &topic, None, None).await;
    assert_eq!(refused.last().unwrap()["code"], "not_found", "{refused:?}");
    let (mut o, _) = connect(&s, &oz).await;
    assert_eq!(subscribe(&mut o, &topic, None, None).await.last().unwrap()["code"], "not_found");
    assert_eq!(
        subscribe(&mut c, &format!("user:{}", ana.user_id), None, None).await.last().unwrap()["code"],
        "forbidden"
    );

    // Ben joins: both see it, with the same seq.
    post_json(&s, &ben.access, &format!("/v1/rooms/{rid}/join"), json!({})).await;
    let ea = event_of(&mut a, "participant.joined").await;
    let eb = event_of(&mut b, "participant.joined").await;
    assert_eq!(ea, eb);
    assert_eq!(ea["data"]["user"], ben.user_id.as_str());
    assert_eq!(ea["topic"], topic.as_str());

    // Ana renames the room; then kicks Ben, who hears of it and loses the topic.
    let r = s
        .http
        .patch(s.url(&format!("/v1/rooms/{rid}")))
        .bearer_auth(&ana.access)
        .json(&json!({ "name": "Calm room" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ua = event_of(&mut a, "room.updated").await;
    let ub = event_of(&mut b, "room.updated").await;
    assert!(ua["seq"].as_u64().unwrap() > ea["seq"].as_u64().unwrap());
    assert_eq!(ua, ub);
    let r = s
        .http
        .delete(s.url(&format!("/v1/rooms/{rid}/participants/{}", ben.user_id)))
        .bearer_auth(&ana.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    event_of(&mut b, "participant.kicked").await;
    let lost = next(&mut b).await;
    assert_eq!(lost, json!({ "op": "unsubscribed", "topic": topic, "reason": "access_lost" }));
    // Cy and Oz heard nothing of the room all along.
    c.send(Message::text(json!({ "op": "ping", "ref": "p" }).to_string())).await.unwrap();
    assert_eq!(next(&mut c).await, json!({ "op": "pong", "ref": "p" }));
    o.send(Message::text(json!({ "op": "ping" }).to_string())).await.unwrap();
    assert_eq!(next(&mut o).await, json!({ "op": "pong" }));

    // Bad frames are answered, not fatal; a bad token is.
    a.send(Message::text("{\"op\":\"fly\"}")).await.unwrap();
    assert_eq!(until(&mut a, "error").await.last().unwrap()["code"], "invalid_frame");
    let url = s.base.replace("http://", "ws://") + "/v1/realtime";
    let (mut bad, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    bad.send(Message::text(json!({ "op": "auth", "token": "v4.public.nope" }).to_string())).await.unwrap();
    assert_eq!(next(&mut bad).await["code"], 4001);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_replays_exactly_what_was_missed_then_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config_for(dir.path());
    config.limits.user_requests_per_s = 1_000_000;
    let s = TestServer::start_with(config).await;
    let (org_id, sl) = create_org(&s).await;
    for who in ["ana", "ben"] {
        operator_invite_and_accept(&s, &org_id, &format!("{who}@example.org"), "member").await;
    }
    let (ana, ben) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await);
    let ch = post_json(&s, &ana.access, "/v1/channels", json!({ "kind": "public", "name": "firehose" })).await;
    let ch = ch["id"].as_str().unwrap().to_owned();
    let topic = format!("channel:{ch}");
    let r = s.http.post(s.url(&format!("/v1/channels/{ch}/join"))).bearer_auth(&ben.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (http, url, token) = (s.http.clone(), s.url(&format!("/v1/channels/{ch}/messages")), ana.access.clone());
    let post = move |text: String| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let r = http.post(url).bearer_auth(token).json(&json!({ "text": text })).send().await.unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        }
    };

    // Ben follows, sees one message, and drops off.
    let (mut b, welcome) = connect(&s, &ben).await;
    let epoch = welcome["epoch"].as_u64().unwrap();
    subscribe(&mut b, &topic, None, None).await;
    let first_id = post("before".into()).await;
    let first = event_of(&mut b, "message.posted").await;
    assert_eq!(first["data"]["id"], first_id.as_str());
    let since = first["seq"].as_u64().unwrap();
    drop(b);

    // 500 messages while he is away, from 8 writers at once.
    let mut missed = HashSet::new();
    let mut writers = Vec::new();
    for w in 0..8 {
        let post = post.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..(500 / 8 + usize::from(w < 500 % 8)) {
                ids.push(post(format!("away {w}/{i}")).await);
            }
            ids
        }));
    }
    for w in writers {
        missed.extend(w.await.unwrap());
    }
    assert_eq!(missed.len(), 500);

    // He comes back while writes keep landing: everything after `since`, each once, in seq
    // order, across the seam between replay and live.
    let seam = tokio::spawn({
        let post = post.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..100 {
                ids.push(post(format!("seam {i}")).await);
            }
            ids
        }
    });
    let (mut b, _) = connect(&s, &ben).await;
    let frames = subscribe(&mut b, &topic, Some(since), Some(epoch)).await;
    let seam_ids = seam.await.unwrap();
    let mut got: Vec<(u64, String)> = Vec::new();
    for f in &frames {
        if f["op"] == "event" {
            got.push((f["seq"].as_u64().unwrap(), f["data"]["id"].as_str().unwrap().to_owned()));
        }
    }
    let expected: HashSet<String> = missed.iter().chain(seam_ids.iter()).cloned().collect();
    while got.len() < expected.len() {
        let f = event_of(&mut b, "message.posted").await;
        got.push((f["seq"].as_u64().unwrap(), f["data"]["id"].as_str().unwrap().to_owned()));
    }
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "seq order with no duplicates");
    assert!(got[0].0 > since);
    let ids: HashSet<String> = got.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, expected, "exactly what was missed, then live");
    assert_eq!(got.len(), 600);
    // And live afterwards.
    let live = post("live".into()).await;
    let live_event = event_of(&mut b, "message.posted").await;
    assert_eq!(live_event["data"]["id"], live.as_str());

    // Another epoch (a restore) cannot be resumed: the client is told to refetch.
    let (mut c, _) = connect(&s, &ben).await;
    let frames = subscribe(&mut c, &topic, Some(since), Some(epoch + 1)).await;
    assert_eq!(frames[0], json!({ "op": "reset", "topic": topic, "reason": "epoch" }));
    assert_eq!(frames.last().unwrap()["op"], "subscribed");

    // Shutdown says going-away with the positions to resume from.
    let last_seq = live_event["seq"].as_u64().unwrap();
    let stopping = tokio::spawn(s.stop());
    let closing = until(&mut b, "closing").await;
    let closing = closing.last().unwrap();
    assert_eq!(closing["code"], 1001);
    assert_eq!(closing["resume"][&topic], last_seq);
    stopping.await.unwrap();
}

#[tokio::test]
async fn the_token_can_come_as_a_subprotocol() {
    let (s, _, ana) = ana_on("member", |_| {}).await;
    let url = s.base.replace("http://", "ws://") + "/v1/realtime";
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", format!("outpost.v1, access_token.{}", ana.access).parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "outpost.v1");
    let w = next(&mut ws).await;
    assert_eq!(w["op"], "welcome");
    assert_eq!(w["user"], ana.user_id.as_str());
    s.stop().await;
}

/// The socket's own framing, end to end: a request that is not an upgrade is answered with a
/// problem; a message over the bound closes with 1009 from its header; text that is not UTF-8
/// closes with 1007. The close frame reaches an independent client, and the server goes on.
#[tokio::test]
async fn broken_framing_is_closed_with_its_code() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (s, _, ana) = ana_on("member", |_| {}).await;
    crate::support::expect_problem(s.get("/v1/realtime").send().await.unwrap(), 400, "not_a_websocket").await;
    let other_version = s
        .get("/v1/realtime")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(other_version.headers()["sec-websocket-version"], "13");
    crate::support::expect_problem(other_version, 426, "websocket_version").await;

    let (mut ws, _) = connect(&s, &ana).await;
    ws.send(Message::text("x".repeat(outpost::realtime::protocol::FRAME_BYTES_MAX + 1))).await.unwrap();
    let closing = next(&mut ws).await;
    assert_eq!((&closing["op"], &closing["code"]), (&json!("closing"), &json!(1009)), "{closing}");
    assert_eq!(next(&mut ws).await, json!({ "op": "socket_closed", "code": 1009 }));

    // A frame no client library would send, written on the socket itself: masked text that is
    // not UTF-8.
    let (mut ws, _) = connect(&s, &ana).await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else { panic!("plain TCP") };
    tcp.write_all(&[0x81, 0x82, 1, 2, 3, 4, 0xff ^ 1, 0xfe ^ 2]).await.unwrap();
    // The server's frames, unmasked: the `closing` text, then the close frame (a keep-alive
    // ping may come at any time, and is left out).
    let read_frames = async {
        let mut ops = Vec::new();
        loop {
            let mut head = [0u8; 2];
            tcp.read_exact(&mut head).await.unwrap();
            let len = match head[1] {
                126 => usize::from(tcp.read_u16().await.unwrap()),
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.unwrap();
            if head[0] & 0x0F != 0x9 {
                ops.push(head[0] & 0x0F);
            }
            if head[0] & 0x0F == 0x8 {
                return (ops, u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    };
    let (ops, code) = tokio::time::timeout(Duration::from_secs(10), read_frames).await.unwrap();
    assert_eq!((ops, code), (vec![0x1, 0x8], 1007), "the closing frame, then the close");

    // The server goes on.
    let (_ws, welcome) = connect(&s, &ana).await;
    assert_eq!(welcome["user"], ana.user_id.as_str());
    s.stop().await;
}

/// `openapi/realtime.md` shows every frame, each example parses as its side's frame type, and
/// every close code is in the table.
#[test]
fn the_protocol_document_matches_the_frames() {
    use outpost::realtime::protocol::{CLIENT_OPS, ClientFrame, SERVER_OPS, ServerFrame, close};
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/realtime.md")).unwrap();
    let (client_part, server_part) = doc.split_once("## Server frames").unwrap();
    let client_part = client_part.split_once("## Client frames").unwrap().1;
    let examples = |part: &str| -> Vec<Value> {
        part.split("```json").skip(1).map(|b| serde_json::from_str(b.split("```").next().unwrap()).unwrap()).collect()
    };
    let (client, server) = (examples(client_part), examples(server_part));
    for v in &client {
        let f: ClientFrame = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(serde_json::to_value(&f).unwrap(), *v, "round trip");
    }
    for v in &server {
        let f: ServerFrame = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(serde_json::to_value(&f).unwrap(), *v, "round trip");
    }
    let ops = |vs: &[Value]| vs.iter().map(|v| v["op"].as_str().unwrap().to_owned()).collect::<HashSet<_>>();
    assert_eq!(ops(&client), CLIENT_OPS.iter().map(|s| (*s).to_owned()).collect::<std::collections::HashSet<String>>());
    assert_eq!(ops(&server), SERVER_OPS.iter().map(|s| (*s).to_owned()).collect::<std::collections::HashSet<String>>());
    for code in [
        close::GOING_AWAY,
        close::UNAUTHORIZED,
        close::PROTOCOL,
        close::REVOKED,
        close::TOO_SLOW,
        close::IDLE,
        close::TOO_MANY,
        outpost::http::ws::code::PROTOCOL,
        outpost::http::ws::code::INVALID_DATA,
        outpost::http::ws::code::TOO_BIG,
    ] {
        assert!(doc.contains(&format!("| {code} |")), "close code {code} is not documented");
    }
}

/// A client that stops reading is cut off (4008, with where to resume) once its queue fills,
/// while a client that reads keeps getting every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_client_is_cut_off_and_the_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config_for(dir.path());
    config.limits.user_requests_per_s = 1_000_000;
    config.realtime.send_queue_len = 512;
    // No keep-alive pings: a stalled client's late pong would meet a closed socket.
    config.realtime.recheck_s = 3600;
    // Small socket buffers on the server side (accepted sockets inherit them), so a client
    // that stops reading backs the server up after a few frames rather than a few megabytes.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_send_buffer_size(4096).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let s = TestServer::start_on(config, "http", sock.listen(128).unwrap()).await;
    let (org_id, sl) = create_org(&s).await;
    for who in ["ana", "ben"] {
        operator_invite_and_accept(&s, &org_id, &format!("{who}@example.org"), "member").await;
    }
    let (ana, ben) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await);
    let ch = post_json(&s, &ana.access, "/v1/channels", json!({ "kind": "public", "name": "busy" })).await;
    let ch = ch["id"].as_str().unwrap().to_owned();
    let topic = format!("channel:{ch}");

    // The stalled client has a tiny receive window too.
    let addr = s.base.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let url = s.base.replace("http://", "ws://") + "/v1/realtime";
    let (stalled, _) =
        tokio_tungstenite::client_async(url.as_str(), tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    let mut stalled: Ws = stalled;
    stalled.send(Message::text(json!({ "op": "auth", "token": ben.access }).to_string())).await.unwrap();
    assert_eq!(next(&mut stalled).await["op"], "welcome");
    subscribe(&mut stalled, &topic, None, None).await;
    let (mut reader, _) = connect(&s, &ana).await;
    subscribe(&mut reader, &topic, None, None).await;

    // 1,500 messages; the reader reads them all as they come, the stalled client reads nothing.
    let total = 1500;
    let reading = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            let f = next(&mut reader).await;
            assert_ne!(f["op"], "socket_closed", "the reading client was cut off");
            if f["op"] == "event" {
                n += 1;
            }
        }
        reader
    });
    let (http, url, token) = (s.http.clone(), s.url(&format!("/v1/channels/{ch}/messages")), ana.access.clone());
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..total / 4 {
                let text = format!("writer {w} message {i} with some padding to make the frames bigger");
                let r = http.post(&url).bearer_auth(&token).json(&json!({ "text": text })).send().await.unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    reading.await.unwrap();

    // The stalled client finds, after what was already on its way, the closing frame and 4008.
    let mut events = 0;
    let closing = loop {
        let f = next(&mut stalled).await;
        match f["op"].as_str().unwrap() {
            "event" => events += 1,
            "closing" => break f,
            other => panic!("unexpected {other}: {f}"),
        }
    };
    assert!(events < total, "the stalled client was not cut off ({events} events)");
    assert_eq!(closing["code"], 4008);
    assert!(closing["resume"][&topic].as_u64().is_some());
    assert_eq!(next(&mut stalled).await, json!({ "op": "socket_closed", "code": 4008 }));
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("outpost_realtime_cut_off_slow_total 1")), "{metrics}");
    s.stop().await;
}

/// `openapi/realtime.schema.json` is a valid JSON Schema with a definition for every frame the
/// document shows, and the document's examples validate against it.
#[test]
fn the_frame_schema_covers_the_document() {
    let python = crate::support::peer_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/check_realtime_schema.py");
    let out = std::process::Command::new(python).arg(script).arg(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A topic id spelled other than the server writes it (uppercase, no hyphens) is refused:
/// events are routed by the canonical spelling, so it would never deliver.
#[tokio::test]
async fn a_topic_in_another_spelling_is_refused_not_silent() {
    let (s, _, ana) = ana_on("member", |_| {}).await;
    let ch = post_json(&s, &ana.access, "/v1/channels", json!({ "kind": "public", "name": "spell" })).await;
    let id = ch["id"].as_str().unwrap().to_owned();
    let (mut ws, _) = connect(&s, &ana).await;
    for topic in [format!("channel:{}", id.to_uppercase()), format!("channel:{}", id.replace('-', ""))] {
        let f = subscribe(&mut ws, &topic, None, None).await.pop().unwrap();
        assert_eq!((f["op"].as_str(), f["code"].as_str()), (Some("error"), Some("not_found")), "{topic}: {f}");
    }
    let f = subscribe(&mut ws, &format!("channel:{id}"), None, None).await.pop().unwrap();
    assert_eq!(f["op"], "subscribed", "{f}");
    s.stop().await;
}

/// An independent client (Python `websockets`) written from the protocol document alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_python_client_follows_the_document() {
    let python = crate::support::peer_python();
    let (s, _, ana) = ana_on("member", |_| {}).await;
    let ch = post_json(&s, &ana.access, "/v1/channels", json!({ "kind": "public", "name": "py" })).await;
    let ch = ch["id"].as_str().unwrap().to_owned();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/realtime_client.py");
    let args = [script.to_owned(), s.base.clone(), ana.access.clone(), ch];
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen, json!({ "live": 3, "replayed": 2, "reset": true, "refused": 4001 }));
    s.stop().await;
}

/// The inbox is acknowledged per device: a device that was away gets exactly what it has not
/// acknowledged, with the count, and nothing twice.
#[tokio::test]
async fn an_offline_device_gets_its_unacknowledged_inbox() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    for who in ["ana", "ben"] {
        operator_invite_and_accept(&s, &org_id, &format!("{who}@example.org"), "member").await;
    }
    let (ana, ben) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await);
    let inbox = format!("user:{}", ben.user_id);
    let sub = |device: &'static str| json!({ "op": "subscribe", "topic": inbox, "device": device });

    // Ben's phone follows the inbox once and acknowledges where it is.
    let (mut phone, _) = connect(&s, &ben).await;
    phone.send(Message::text(sub("phone").to_string())).await.unwrap();
    let first = next(&mut phone).await;
    assert_eq!(first["op"], "subscribed");
    assert_eq!(first["unread"], 0);
    let at = first["seq"].as_u64().unwrap();
    phone
        .send(Message::text(json!({ "op": "ack", "topic": inbox, "seq": at, "device": "phone" }).to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut phone).await, json!({ "op": "acked", "topic": inbox, "seq": at, "unread": 0 }));
    drop(phone);

    // While it is away: two mentions, a private channel he is added to, a direct message.
    let ch = post_json(&s, &ana.access, "/v1/channels", json!({ "kind": "public", "name": "general" })).await;
    let ch = ch["id"].as_str().unwrap().to_owned();
    for text in ["ping @ben", "again @ben"] {
        post_json(
            &s,
            &ana.access,
            &format!("/v1/channels/{ch}/messages"),
            json!({ "text": text, "mention_ids": [ben.user_id] }),
        )
        .await;
    }
    post_json(
        &s,
        &ana.access,
        "/v1/channels",
        json!({ "kind": "private", "name": "plans", "member_ids": [ben.user_id] }),
    )
    .await;
    // And a direct message.
    let dm = post_json(&s, &ana.access, "/v1/channels", json!({ "kind": "direct", "member_ids": [ben.user_id] })).await;
    let dm = dm["id"].as_str().unwrap().to_owned();
    let sent = post_json(&s, &ana.access, &format!("/v1/channels/{dm}/messages"), json!({ "text": "psst" })).await;
    assert!(sent["id"].is_string(), "{sent}");

    // Back: exactly those, then the count; acknowledging clears it.
    let (mut phone, _) = connect(&s, &ben).await;
    phone.send(Message::text(sub("phone").to_string())).await.unwrap();
    let frames = until(&mut phone, "subscribed").await;
    let kinds: Vec<&str> = frames.iter().filter(|f| f["op"] == "event").map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["mention", "mention", "channel.added", "channel.added", "direct_message"]);
    let subscribed = frames.last().unwrap();
    assert_eq!(subscribed["unread"], 5);
    let last = subscribed["seq"].as_u64().unwrap();
    phone
        .send(Message::text(json!({ "op": "ack", "topic": inbox, "seq": last, "device": "phone" }).to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut phone).await["unread"], 0);
    // Acknowledging backwards keeps the furthest position; another user's inbox is not ackable.
    phone
        .send(Message::text(json!({ "op": "ack", "topic": inbox, "seq": 1, "device": "phone" }).to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut phone).await["seq"], last);
    let other = format!("user:{}", ana.user_id);
    phone.send(Message::text(json!({ "op": "ack", "topic": other, "seq": 1 }).to_string())).await.unwrap();
    assert_eq!(next(&mut phone).await["code"], "not_ackable");
    drop(phone);

    // Nothing new: nothing replayed. The laptop, which never acknowledged, starts from now.
    let (mut phone, _) = connect(&s, &ben).await;
    phone.send(Message::text(sub("phone").to_string())).await.unwrap();
    let again = next(&mut phone).await;
    assert_eq!((again["op"].as_str(), again["unread"].as_u64()), (Some("subscribed"), Some(0)));
    let (mut laptop, _) = connect(&s, &ben).await;
    laptop.send(Message::text(sub("laptop").to_string())).await.unwrap();
    assert_eq!(next(&mut laptop).await["op"], "subscribed");
    s.stop().await;
}

/// Presence, cursors and locks in a room reach everyone following it, and only them.
#[tokio::test]
async fn presence_cursors_and_locks_in_a_room() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    for who in ["ana", "ben", "cy"] {
        operator_invite_and_accept(&s, &org_id, &format!("{who}@example.org"), "member").await;
    }
    let (ana, ben, cy) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await, login(&s, &sl, "cy").await);
    let room = post_json(&s, &ana.access, "/v1/rooms", json!({ "name": "Studio", "visibility": "private" })).await;
    let rid = room["id"].as_str().unwrap().to_owned();
    let topic = format!("room:{rid}");
    post_json(&s, &ana.access, &format!("/v1/rooms/{rid}/participants"), json!({ "user_id": ben.user_id })).await;
    let r = s.http.post(s.url(&format!("/v1/rooms/{rid}/join"))).bearer_auth(&ben.access).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let send = |v: Value| Message::text(v.to_string());

    let (mut a, _) = connect(&s, &ana).await;
    subscribe(&mut a, &topic, None, None).await;
    // Presence needs the topic followed first; then it is seen by all, with its state.
    let (mut c, _) = connect(&s, &cy).await;
    c.send(send(json!({ "op": "presence", "topic": topic }))).await.unwrap();
    assert_eq!(next(&mut c).await["code"], "not_subscribed");
    a.send(send(json!({ "op": "presence", "topic": topic, "state": { "position": [1, 2, 3] }, "device": "vr" })))
        .await
        .unwrap();
    let joined = next(&mut a).await;
    assert_eq!((joined["op"].as_str(), joined["change"].as_str()), (Some("presence"), Some("join")));
    assert_eq!(joined["state"]["position"], json!([1, 2, 3]));
    // Ben arrives and learns who is here; his own presence reaches Ana.
    let (mut b, _) = connect(&s, &ben).await;
    let frames = subscribe(&mut b, &topic, None, None).await;
    assert_eq!(frames.last().unwrap()["op"], "subscribed");
    let here = next(&mut b).await;
    assert_eq!((here["change"].as_str(), here["user"].as_str()), (Some("here"), Some(ana.user_id.as_str())));
    b.send(send(json!({ "op": "presence", "topic": topic, "status": "busy" }))).await.unwrap();
    let seen = next(&mut a).await;
    assert_eq!((seen["change"].as_str(), seen["status"].as_str()), (Some("join"), Some("busy")));
    let rest: Value = s
        .http
        .get(s.url(&format!("/v1/rooms/{rid}/presence")))
        .bearer_auth(&ben.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 2, "{rest}");
    let r = s.http.get(s.url(&format!("/v1/rooms/{rid}/presence"))).bearer_auth(&cy.access).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // A flood of cursor moves: Ben gets them (the latest at least), Ana does not get her own.
    next(&mut b).await; // his own join
    for x in 0..50 {
        a.send(send(json!({ "op": "signal", "topic": topic, "kind": "cursor", "data": { "x": x } }))).await.unwrap();
    }
    loop {
        let f = next(&mut b).await;
        assert_eq!((f["op"].as_str(), f["from"].as_str()), (Some("signal"), Some(ana.user_id.as_str())));
        if f["data"]["x"] == 49 {
            break;
        }
    }
    a.send(send(json!({ "op": "signal", "topic": topic, "kind": "shout", "data": {} }))).await.unwrap();
    assert_eq!(next(&mut a).await["code"], "invalid_signal");

    // Locks: Ana takes one; Ben is refused while it is held; both see its state.
    a.send(send(json!({ "op": "lock", "topic": topic, "name": "slide-3", "lease_ms": 60000, "ref": "l" })))
        .await
        .unwrap();
    let mut locked = None;
    let mut states = 0;
    while locked.is_none() || states == 0 {
        let f = next(&mut a).await;
        match f["op"].as_str().unwrap() {
            "locked" => locked = Some(f),
            "lock_state" => states += 1,
            other => panic!("unexpected {other}: {f}"),
        }
    }
    let token = locked.unwrap()["token"].as_u64().unwrap();
    let state = next(&mut b).await;
    assert_eq!((state["op"].as_str(), state["token"].as_u64()), (Some("lock_state"), Some(token)));
    b.send(send(json!({ "op": "lock", "topic": topic, "name": "slide-3", "lease_ms": 1000 }))).await.unwrap();
    assert_eq!(next(&mut b).await["code"], "lock_held");
    b.send(send(json!({ "op": "unlock", "topic": topic, "name": "slide-3", "token": token }))).await.unwrap();
    assert_eq!(next(&mut b).await["code"], "not_lock_holder");
    // Ana disconnects: Ben sees the lock freed and her presence leave; a new lock has a larger token.
    drop(a);
    let mut freed = false;
    let mut left = false;
    while !(freed && left) {
        let f = next(&mut b).await;
        match f["op"].as_str().unwrap() {
            "lock_state" if f["holder"].is_null() => freed = true,
            "presence" if f["change"] == "leave" => left = true,
            other => panic!("unexpected {other}: {f}"),
        }
    }
    b.send(send(json!({ "op": "lock", "topic": topic, "name": "slide-3", "lease_ms": 1000 }))).await.unwrap();
    let mine = until(&mut b, "locked").await;
    assert!(mine.last().unwrap()["token"].as_u64().unwrap() > token);
    // The lease runs out by itself.
    let expired = loop {
        let f = next(&mut b).await;
        if f["op"] == "lock_state" && f["holder"].is_null() {
            break f;
        }
    };
    assert_eq!(expired["name"], "slide-3");
    // Cy, outside the room, heard none of it.
    c.send(send(json!({ "op": "ping" }))).await.unwrap();
    assert_eq!(next(&mut c).await, json!({ "op": "pong" }));
    s.stop().await;
}

/// Sockets per user are capped (4029), and a session revoked elsewhere is disconnected (4003)
/// within the re-check interval.
#[tokio::test]
async fn caps_and_revocation_close_sockets() {
    let (s, _, ana) = ana_on("member", |config| {
        config.realtime.connections_per_user_max = 2;
        config.realtime.recheck_s = 1;
    })
    .await;
    let (mut one, _) = connect(&s, &ana).await;
    let (_two, _) = connect(&s, &ana).await;
    let url = s.base.replace("http://", "ws://") + "/v1/realtime";
    let (mut three, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    three.send(Message::text(json!({ "op": "auth", "token": ana.access }).to_string())).await.unwrap();
    assert_eq!(next(&mut three).await["code"], 4029);
    subscribe(&mut one, "org", None, None).await;

    // Logging out revokes the session: its sockets close, saying why and where to resume.
    let r = s.http.post(s.url("/v1/auth/logout")).bearer_auth(&ana.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let frames = until(&mut one, "closing").await;
    let closing = frames.last().unwrap();
    assert_eq!(closing["code"], 4003);
    assert!(closing["resume"]["org"].as_u64().is_some(), "{closing}");
    assert_eq!(next(&mut one).await, json!({ "op": "socket_closed", "code": 4003 }));
    s.stop().await;
}

/// A socket keeps what its credential proved, not the credential, and its re-checks start from
/// that: a revoked API key closes its socket (4003); an access token's expiry closes its socket
/// (4001) unless a fresh token came by `auth` before it, which keeps the socket open.
#[tokio::test]
async fn a_revoked_key_and_an_expired_token_close_their_sockets_at_the_recheck() {
    let (s, sl, ana) = ana_on("admin", |config| {
        config.auth.access_ttl_s = 10;
        config.realtime.recheck_s = 1;
    })
    .await;

    let body = json!({ "name": "bot", "scopes": ["self.manage"] });
    let r = s.http.post(s.url("/v1/api-keys")).bearer_auth(&ana.access).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let key: Value = r.json().await.unwrap();
    let by_key = Login {
        access: key["token"].as_str().unwrap().to_owned(),
        refresh: String::new(),
        user_id: ana.user_id.clone(),
        session_id: String::new(),
    };
    let (mut keyed, welcome) = connect(&s, &by_key).await;
    assert_eq!(welcome["expires_at"], "", "an API key has no expiry of its own");
    let id = key["key"]["id"].as_str().unwrap();
    let r = s.http.delete(s.url(&format!("/v1/api-keys/{id}"))).bearer_auth(&ana.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let closing = until(&mut keyed, "closing").await.pop().unwrap();
    assert_eq!(closing["code"], 4003, "{closing}");

    let first = login(&s, &sl, "ana").await;
    let (mut lapsing, _) = connect(&s, &first).await;
    let (mut renewed, welcome) = connect(&s, &first).await;
    let first_expiry = welcome["expires_at"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fresh = login(&s, &sl, "ana").await;
    renewed.send(Message::text(json!({ "op": "auth", "token": fresh.access }).to_string())).await.unwrap();
    let welcome = until(&mut renewed, "welcome").await.pop().unwrap();
    assert!(welcome["expires_at"].as_str().unwrap() > first_expiry.as_str(), "{welcome}");
    let closing = until(&mut lapsing, "closing").await.pop().unwrap();
    assert_eq!(closing["code"], 4001, "{closing}");
    assert!(closing["reason"].as_str().unwrap().contains("expired"), "{closing}");
    // Past the first token's expiry and a re-check later, the renewed socket still answers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    renewed.send(Message::text(json!({ "op": "ping", "ref": "still" }).to_string())).await.unwrap();
    let pong = until(&mut renewed, "pong").await.pop().unwrap();
    assert_eq!(pong["ref"], "still");
    s.stop().await;
}

/// Opening a socket counts against the user's request budget: a flood of connects (each closed
/// at once, so no cap on open sockets is reached) is shed with 4029.
#[tokio::test]
async fn a_flood_of_connects_is_shed() {
    let (s, _, ana) = ana_on("member", |config| {
        config.limits.user_requests_per_s = 2;
    })
    .await;
    let url = s.base.replace("http://", "ws://") + "/v1/realtime";
    let mut welcomed = 0;
    let mut shed = false;
    for _ in 0..20 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        ws.send(Message::text(json!({ "op": "auth", "token": ana.access }).to_string())).await.unwrap();
        let f = next(&mut ws).await;
        if f["op"] == "welcome" {
            welcomed += 1;
            let _ = ws.close(None).await;
        } else {
            assert_eq!(f, json!({ "op": "socket_closed", "code": 4029 }));
            shed = true;
            break;
        }
    }
    assert!(shed && welcomed <= 4, "{welcomed} sockets welcomed before the budget (2/s, bursts of 4) ran out");
    s.stop().await;
}

/// A restore from backup is a new epoch: positions from before cannot be resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_store_says_reset() {
    let (s, sl, ana) = ana_on("member", |_| {}).await;
    let ch = post_json(&s, &ana.access, "/v1/channels", json!({ "kind": "public", "name": "kept" })).await;
    let ch = ch["id"].as_str().unwrap().to_owned();
    let topic = format!("channel:{ch}");
    let (mut ws, welcome) = connect(&s, &ana).await;
    let old_epoch = welcome["epoch"].as_u64().unwrap();
    subscribe(&mut ws, &topic, None, None).await;
    post_json(&s, &ana.access, &format!("/v1/channels/{ch}/messages"), json!({ "text": "before the backup" })).await;
    let seen = event_of(&mut ws, "message.posted").await["seq"].as_u64().unwrap();
    drop(ws);
    let backup = tempfile::tempdir().unwrap();
    let file = backup.path().join("outpost.backup");
    let (config, f) = (s.config.clone(), file.clone());
    tokio::task::spawn_blocking(move || outpost::commands::backup(&config, &f)).await.unwrap().unwrap();
    let key_file = s.config.master_key_file();
    let old_dir = s.stop_keep_dir().await;

    // Restored elsewhere, with the master key kept apart from the backup.
    let restored = tempfile::tempdir().unwrap();
    let (f, d) = (file.clone(), restored.path().to_path_buf());
    tokio::task::spawn_blocking(move || outpost::commands::restore(&f, &d, false)).await.unwrap().unwrap();
    let restored_config = crate::support::config_for(restored.path());
    std::fs::copy(&key_file, restored_config.master_key_file()).unwrap();
    drop(old_dir);
    let s = TestServer::start_with(restored_config).await;
    let ana = login(&s, &sl, "ana").await;
    let (mut ws, welcome) = connect(&s, &ana).await;
    assert_ne!(welcome["epoch"].as_u64().unwrap(), old_epoch);
    let frames = subscribe(&mut ws, &topic, Some(seen), Some(old_epoch)).await;
    assert_eq!(frames[0], json!({ "op": "reset", "topic": topic, "reason": "epoch" }));
    assert_eq!(frames.last().unwrap()["op"], "subscribed");
    s.stop().await;
}
