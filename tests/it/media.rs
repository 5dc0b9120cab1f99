//! Media: WHIP publishing and WHEP playing with aiortc (an independent WebRTC stack) through
//! the media relay, with who may publish and play; and the built-in TURN server, which relays
//! over UDP and over TCP for a client that holds credentials from the API and refuses
//! credentials it did not sign.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use crate::identity::{create_org, login, operator_invite_and_accept};
use crate::support::{TestServer, config_for, expect_problem, get_json};

async fn turn_client(server: &str, username: &str, password: &str) -> Client {
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client_over(Arc::new(conn), server, username, password).await
}

/// A TURN client over TCP: the same framing the server uses, from the client's side.
async fn turn_client_tcp(server: &str, username: &str, password: &str) -> Client {
    let stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let conn = outpost::media::turn::TcpFramed::new(stream).unwrap();
    client_over(Arc::new(conn), server, username, password).await
}

async fn client_over(conn: Arc<dyn Conn + Send + Sync>, server: &str, username: &str, password: &str) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_owned(),
        turn_serv_addr: server.to_owned(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: outpost::media::turn::REALM.to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

#[tokio::test]
async fn a_client_relays_through_the_built_in_turn_server_with_api_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.media.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    // The peers in this test are on loopback, which relays refuse unless allowed.
    config.media.turn_allow_loopback_peers = true;
    let s = TestServer::start_with(config).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, &format!("caller-{sl}@example.org"), "guest").await;
    let caller = login(&s, &sl, &format!("caller-{sl}@example.org")).await;
    let r = s.http.post(s.url("/v1/media/turn-credentials")).bearer_auth(&caller.access).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    let url = c["urls"][0].as_str().unwrap();
    let server = url.strip_prefix("turn:").and_then(|u| u.strip_suffix("?transport=udp")).unwrap().to_owned();
    assert_eq!(c["urls"][1].as_str().unwrap(), format!("turn:{server}?transport=tcp"));
    let username = c["username"].as_str().unwrap();
    assert!(username.ends_with(&format!(":{}", caller.user_id)), "{username}");
    assert_eq!(c["ttl_s"], 3600);

    // Allocate, then relay both ways between the client and a peer that only sees the relay.
    let client = turn_client(&server, username, c["credential"].as_str().unwrap()).await;
    let relay = client.allocate().await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay.send_to(b"ping", peer.local_addr().unwrap()).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], from.port()), (&b"ping"[..], relay_addr.port()));
    peer.send_to(b"pong", from).await.unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], from), (&b"pong"[..], peer.local_addr().unwrap()));
    // The allocation shows in the metrics.
    let mut seen = false;
    for _ in 0..50 {
        let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if m.lines().any(|l| l == "outpost_turn_allocations 1") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the allocation never showed in /metrics");
    client.close().await.unwrap();

    // The same over TCP, for networks that let no UDP out.
    let client = turn_client_tcp(&server, username, c["credential"].as_str().unwrap()).await;
    let relay = client.allocate().await.unwrap();
    relay.send_to(b"over tcp", peer.local_addr().unwrap()).await.unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"over tcp");
    peer.send_to(b"back", from).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"back");
    client.close().await.unwrap();

    // A password the server did not sign, or a username it did not give out, gets nothing.
    for (user, pass) in [(username, "not the password"), ("9999999999:someone", "anything")] {
        let intruder = turn_client(&server, user, pass).await;
        assert!(intruder.allocate().await.is_err(), "{user} was allocated");
        intruder.close().await.unwrap();
    }
    s.stop().await;
}

#[tokio::test]
async fn without_a_turn_server_credentials_are_refused_clearly() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, &format!("m-{sl}@example.org"), "member").await;
    let m = login(&s, &sl, &format!("m-{sl}@example.org")).await;
    let r = s.http.post(s.url("/v1/media/turn-credentials")).bearer_auth(&m.access).send().await.unwrap();
    expect_problem(r, 409, "turn_disabled").await;
    s.stop().await;
}

#[tokio::test]
async fn relays_do_not_reach_this_hosts_loopback_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.media.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start_with(config).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, &format!("m-{sl}@example.org"), "member").await;
    let m = login(&s, &sl, &format!("m-{sl}@example.org")).await;
    let c: Value = s
        .http
        .post(s.url("/v1/media/turn-credentials"))
        .bearer_auth(&m.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server =
        c["urls"][0].as_str().unwrap().trim_start_matches("turn:").trim_end_matches("?transport=udp").to_owned();
    let client = turn_client(&server, c["username"].as_str().unwrap(), c["credential"].as_str().unwrap()).await;
    let relay = client.allocate().await.unwrap();
    // A service on this host's loopback: the relay must not become a way in.
    let service = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay.send_to(b"knock", service.local_addr().unwrap()).await.unwrap();
    let mut buf = [0u8; 64];
    let heard = tokio::time::timeout(Duration::from_millis(500), service.recv_from(&mut buf)).await;
    assert!(heard.is_err(), "a loopback service heard from the relay");
    client.close().await.unwrap();
    s.stop().await;
}

/// A peer client script (`tests/peers/*.py`) under the test venv, spoken to a line at a time:
/// commands on its stdin, one JSON object per line back.
struct PyPeer {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl PyPeer {
    fn start(script: &str, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let python = crate::support::peer_python();
        let mut child = tokio::process::Command::new(python)
            .arg(format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR")))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, stdin, lines }
    }

    /// Its next line (within 60 s).
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line()).await.unwrap().unwrap();
        serde_json::from_str(&line.expect("the client ended early")).unwrap()
    }

    async fn say(&mut self, command: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
    }

    /// Says `stop` and waits (bounded) for it to end.
    async fn stop(mut self) {
        self.say("stop").await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line()).await;
        let _ = self.child.wait().await;
    }
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

async fn post_sdp(s: &TestServer, token: &str, path: &str, content_type: &str, body: &str) -> reqwest::Response {
    s.http
        .post(s.url(path))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// Polls `f` until it holds (or fails after 10 s).
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or_else(|| panic!("no {name} in the metrics"), |v| v as u64)
}

/// Who may publish and play, and what bad offers (and too many tracks) get.
#[tokio::test]
async fn whip_and_whep_check_the_caller_and_the_offer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.media.connection_tracks_max = 1;
    let s = TestServer::start_with(config).await;
    let f = crate::docs::setup(&s).await;
    let whip = format!("/v1/rooms/{}/whip", f.room);
    let whep = format!("/v1/rooms/{}/whep", f.room);
    // A viewer plays but does not publish; someone who never joined does neither.
    let r = post_sdp(&s, &f.viewer.access, &whip, "application/sdp", OFFER).await;
    expect_problem(r, 403, "forbidden").await;
    for path in [&whip, &whep] {
        let r = post_sdp(&s, &f.outsider.access, path, "application/sdp", OFFER).await;
        expect_problem(r, 403, "forbidden").await;
    }
    // Bad offers: the wrong type, not SDP, SDP with nothing to send.
    let r = post_sdp(&s, &f.editor.access, &whip, "application/json", "{}").await;
    expect_problem(r, 415, "unsupported_media_type").await;
    let r = post_sdp(&s, &f.editor.access, &whip, "application/sdp", "hello").await;
    expect_problem(r, 400, "invalid_sdp").await;
    let r = post_sdp(&s, &f.editor.access, &whip, "application/sdp", OFFER).await;
    expect_problem(r, 400, "invalid_sdp").await;
    let r = post_sdp(&s, &f.viewer.access, &whep, "application/sdp", OFFER).await;
    expect_problem(r, 400, "invalid_sdp").await;
    // More tracks than a connection may send.
    let two = format!(
        "{OFFER}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n"
    );
    let r = post_sdp(&s, &f.editor.access, &whip, "application/sdp", &two).await;
    expect_problem(r, 409, "too_many_tracks").await;
    // Nothing was opened by any of it.
    let list = get_json(&s, &f.viewer.access, &format!("/v1/rooms/{}/media/connections", f.room)).await;
    assert_eq!(list["items"], serde_json::json!([]));
    let r = s
        .http
        .delete(s.url(&format!("/v1/media/connections/{}", uuid::Uuid::now_v7())))
        .bearer_auth(&f.editor.access)
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "not_found").await;
    s.stop().await;
}

/// aiortc publishes a camera and a microphone through WHIP; another aiortc plays the room
/// through WHEP and decodes both. Muting the microphone stops the sound at the player;
/// someone else may not hang the publisher up; removing the player from the room ends its
/// connection; hanging up leaves no connection or track.
/// A streamer who publishes with WHIP and plays the room with WHEP under the same account (to
/// monitor their own stream) gets every track: a WHEP session is a connection of its own and
/// leaves out only its own session's tracks, never its user's.
#[tokio::test]
async fn the_publishing_user_plays_their_own_stream_through_whep() {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let mut peer = PyPeer::start("whip_whep.py", &[&s.base, &f.room, &f.editor.access, &f.editor.access]);
    let seen = peer.next().await;
    assert_eq!(seen["player_state"], "connected", "{seen}");
    assert!(seen["video_frames"].as_u64().unwrap() >= 20, "{seen}");
    assert!(seen["audio_frames"].as_u64().unwrap() >= 20, "{seen}");
    peer.say("stop").await;
    assert_eq!(peer.next().await["stopped"], true);
    let _ = peer.child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publishes_through_whip_and_another_plays_through_whep() {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let mut peer = PyPeer::start("whip_whep.py", &[&s.base, &f.room, &f.editor.access, &f.viewer.access]);

    let seen = peer.next().await;
    assert_eq!(seen["publisher_state"], "connected", "{seen}");
    assert_eq!(seen["player_state"], "connected", "{seen}");
    assert!(seen["video_frames"].as_u64().unwrap() >= 20, "{seen}");
    assert_eq!(seen["video_size"], serde_json::json!([320, 240]), "{seen}");
    assert!(seen["audio_frames"].as_u64().unwrap() >= 20, "{seen}");

    let list = get_json(&s, &f.viewer.access, &format!("/v1/rooms/{}/media/connections", f.room)).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    let publisher = items.iter().find(|c| c["direction"] == "publish").unwrap();
    assert_eq!(publisher["user_id"], f.editor.user_id.as_str());
    assert_eq!(seen["publisher"], format!("/v1/media/connections/{}", publisher["id"].as_str().unwrap()));
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, "outpost_media_tracks"), 2);
    assert!(metric(&metrics, "outpost_media_packets_out_total") > 40);
    assert!(metric(&metrics, "outpost_media_keyframe_requests_total") >= 1);

    // The viewer may not hang up the editor's connection.
    let r =
        s.http.delete(s.url(seen["publisher"].as_str().unwrap())).bearer_auth(&f.viewer.access).send().await.unwrap();
    expect_problem(r, 403, "forbidden").await;

    peer.say("mute").await;
    let muted = peer.next().await;
    assert_eq!(muted["audio_frames_while_muted"], 0, "{muted}");
    assert!(muted["video_frames"].as_u64().unwrap() > seen["video_frames"].as_u64().unwrap(), "{muted}");

    // The host removes the viewer from the room: their WHEP connection ends with it.
    let r = s
        .http
        .delete(s.url(&format!("/v1/rooms/{}/participants/{}", f.room, f.viewer.user_id)))
        .bearer_auth(&f.host.access)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let list_path = format!("/v1/rooms/{}/media/connections", f.room);
    until("the removed viewer's connection to end", || async {
        let items = get_json(&s, &f.host.access, &list_path).await["items"].clone();
        items.as_array().is_some_and(|v| v.len() == 1 && v[0]["direction"] == "publish")
    })
    .await;

    peer.say("stop").await;
    assert_eq!(peer.next().await["stopped"], true);
    until("the connections to end", || async {
        get_json(&s, &f.host.access, &list_path).await["items"] == serde_json::json!([])
    })
    .await;
    until("the tracks to go", || async {
        let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metric(&m, "outpost_media_tracks") == 0 && metric(&m, "outpost_media_sessions") == 0
    })
    .await;
    let _ = peer.child.wait().await;
    s.stop().await;
}

/// A call over the realtime socket with aiortc on both ends: A publishes a camera and a
/// microphone, B a microphone; each receives and decodes the other's media. The call state
/// shows the tracks with their labels and spatial data; A's mute stops the sound at B; a
/// moderator's mute stops A's camera at B and tells A; A leaving tells B; B closing its socket
/// ends the call. The server's connection and track counts return to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aiortc_participants_call_over_the_realtime_socket() {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    // A: the editor (member); B: the host.
    let mut peer = PyPeer::start("call_client.py", &[&s.base, &f.room, &f.editor.access, &f.host.access]);

    let seen = peer.next().await;
    let (a, b) = (&seen["a"], &seen["b"]);
    assert_eq!(a["pc"], "connected", "{seen}");
    assert_eq!(b["pc"], "connected", "{seen}");
    assert!(b["video_frames"].as_u64().unwrap() >= 20, "{seen}");
    assert!(b["audio_frames"].as_u64().unwrap() >= 20, "{seen}");
    assert!(a["audio_frames"].as_u64().unwrap() >= 20, "{seen}");
    assert_eq!(a["errors"], serde_json::json!([]), "{seen}");
    // The call state, as B sees it on the room topic and as REST tells it.
    let state = &b["state"];
    let parts = state["participants"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{state}");
    let pa = parts.iter().find(|p| p["connection"] == a["connection"]).unwrap();
    assert_eq!(pa["user"], f.editor.user_id.as_str());
    assert_eq!(pa["direction"], "call");
    assert_eq!(pa["spatial"]["position"], serde_json::json!([1, 0, 2]));
    let mut sources: Vec<&str> =
        pa["tracks"].as_array().unwrap().iter().map(|t| t["source"].as_str().unwrap()).collect();
    sources.sort_unstable();
    assert_eq!(sources, ["camera", "mic"], "{state}");
    let rest = get_json(&s, &f.viewer.access, &format!("/v1/rooms/{}/call", f.room)).await;
    assert_eq!(rest["participants"].as_array().unwrap().len(), 2, "{rest}");
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, "outpost_media_tracks"), 3);

    // A mutes its microphone: no sound reaches B, and the state says so.
    peer.say("mute-mic").await;
    let seen = peer.next().await;
    assert_eq!(seen["b_audio_while_muted"], 0, "{seen}");
    let pa = seen["b"]["state"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["connection"] == seen["a"]["connection"])
        .unwrap()
        .clone();
    let mic = pa["tracks"].as_array().unwrap().iter().find(|t| t["source"] == "mic").unwrap();
    assert_eq!(mic["muted"], true, "{pa}");

    // The host mutes A's camera: A is told, B's video stops.
    let r = s
        .http
        .post(s.url(&format!("/v1/rooms/{}/call/mute", f.room)))
        .bearer_auth(&f.host.access)
        .json(&serde_json::json!({ "user_id": f.editor.user_id, "source": "camera" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["changed"], 1);
    peer.say("video-stalls").await;
    let seen = peer.next().await;
    assert_eq!(seen["b_video_while_stopped"], 0, "{seen}");
    let note = &seen["a"]["muted_notes"][0];
    assert_eq!(note["muted"], true, "{seen}");
    assert_eq!(note["track"], seen["a_tracks"]["camera"]);
    assert_eq!(note["by"], f.host.user_id.as_str());
    // A member may not mute the host.
    let r = s
        .http
        .post(s.url(&format!("/v1/rooms/{}/call/mute", f.room)))
        .bearer_auth(&f.editor.access)
        .json(&serde_json::json!({ "user_id": f.host.user_id }))
        .send()
        .await
        .unwrap();
    expect_problem(r, 403, "forbidden").await;

    // A leaves: A is told, B's state loses A and its tracks.
    peer.say("a-leave").await;
    let seen = peer.next().await;
    assert_eq!(seen["a"]["ended"]["reason"], "left", "{seen}");
    let parts = seen["b"]["state"]["participants"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{seen}");
    assert_eq!(parts[0]["user"], f.host.user_id.as_str());
    // B closes its socket: the call is over.
    peer.say("b-close").await;
    peer.next().await;
    until("the call to end", || async {
        let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metric(&m, "outpost_media_tracks") == 0 && metric(&m, "outpost_media_sessions") == 0
    })
    .await;
    // The moderation is in the audit trail.
    let audit: Value =
        s.get(&format!("/v1/orgs/{}/audit?limit=100", f.org)).send().await.unwrap().json().await.unwrap();
    assert!(audit.to_string().contains("call.mute"), "{audit}");
    peer.say("quit").await;
    let _ = peer.child.wait().await;
    s.stop().await;
}

/// Joining a call takes a joined participant, sending takes `member`, and another
/// organization's user cannot signal into the room at all.
#[tokio::test]
async fn call_join_checks_the_room_role() {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let send_offer =
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n";
    let join = |sdp: &str| serde_json::json!({ "op": "call_join", "room": f.room, "sdp": sdp, "ref": "j" }).to_string();
    let (other_org, other_slug) = create_org(&s).await;
    operator_invite_and_accept(&s, &other_org, "eve@example.org", "owner").await;
    let eve = login(&s, &other_slug, "eve").await;
    for (who, sdp, code) in
        [(&f.viewer, send_offer, "forbidden"), (&f.outsider, send_offer, "forbidden"), (&eve, send_offer, "not_found")]
    {
        let (mut ws, _) = crate::realtime::connect(&s, who).await;
        futures_util::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::text(join(sdp))).await.unwrap();
        let f = crate::realtime::next(&mut ws).await;
        assert_eq!(f["op"], "error", "{f}");
        assert_eq!(f["code"], code, "{f}");
        assert_eq!(f["ref"], "j");
    }
    let list = get_json(&s, &f.host.access, &format!("/v1/rooms/{}/media/connections", f.room)).await;
    assert_eq!(list["items"], serde_json::json!([]));
    s.stop().await;
}

/// A publisher that may use relay candidates only reaches the media relay through the built-in
/// TURN server, with credentials from the API; a player receives its media as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_publisher_connects_through_the_built_in_turn_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.media.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    config.media.turn_relay_port_min = 40_000;
    config.media.turn_relay_port_max = 40_999;
    // Everything lives on 127.0.0.1 here, the media relay too.
    config.media.turn_allow_loopback_peers = true;
    let s = TestServer::start_with(config).await;
    let f = crate::docs::setup(&s).await;
    let mut peer = PyPeer::start("whip_whep.py", &[&s.base, &f.room, &f.editor.access, &f.viewer.access, "relay"]);
    let seen = peer.next().await;
    assert_eq!(seen["publisher_candidates"], serde_json::json!(["relay"]), "{seen}");
    assert_eq!(seen["publisher_state"], "connected", "{seen}");
    assert!(seen["video_frames"].as_u64().unwrap() >= 20, "{seen}");
    assert!(seen["audio_frames"].as_u64().unwrap() >= 20, "{seen}");
    until("the TURN allocation to show", || async {
        let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metric(&m, "outpost_turn_allocations") >= 1
    })
    .await;
    // The WHIP answer named the TURN server too (RFC 9725 Link headers).
    assert!(seen["ice_links"].as_str().unwrap().contains("rel=\"ice-server\""), "{seen}");
    peer.stop().await;
    s.stop().await;
}

/// Headless Chromium (fake camera and microphone) and an aiortc client in the same call: each
/// receives and decodes the other's media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_and_aiortc_hear_and_see_each_other_in_a_call() {
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && std::path::Path::new(&format!("{peers}/node_modules/playwright-core")).exists(),
        "Chromium or playwright-core is missing: `bash scripts/test-all.sh` installs them"
    );
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    // aiortc joins first and stays until Chromium has been in the call for a while.
    let mut aiortc = PyPeer::start("call_client.py", &["solo", &s.base, &f.room, &f.editor.access]);
    assert!(aiortc.next().await["joined"].is_string());
    let b = chromium_report(&chromium_call(&s, &f.room, &f.host.access, &["8"]).await);
    aiortc.say("report").await;
    let a = aiortc.next().await;
    eprintln!("aiortc: {a}\nchromium: {b}");
    // Chromium decoded aiortc's 320x240 test pattern and received its tone.
    assert_eq!(b["pc"], "connected", "{b}");
    // It offered before gathering and trickled its candidates, all taken.
    assert_eq!(b["errors"], serde_json::json!([]), "{b}");
    assert!(b["trickled"].as_u64().unwrap() >= 1, "{b}");
    assert!(b["video_frames_decoded"].as_u64().unwrap() >= 20, "{b}");
    assert_eq!(b["video_width"], 320, "{b}");
    assert!(b["audio_samples"].as_u64().unwrap() > 48_000, "{b}");
    assert!(b["audio_energy"].as_f64().unwrap() > 0.0, "{b}");
    // Its bandwidth estimates reached the relay (what caps the simulcast layer it would get).
    let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric(&m, "outpost_media_bandwidth_estimates_total") >= 1, "{m}");
    // aiortc decoded Chromium's fake camera and its beeps.
    assert_eq!(a["errors"], serde_json::json!([]), "{a}");
    assert!(a["video_frames"].as_u64().unwrap() >= 20, "{a}");
    assert!(a["audio_frames_any"].as_u64().unwrap() >= 50, "{a}");
    assert!(a["audio_level_max"].as_u64().unwrap() > 1000, "{a}");
    // Both were in the call state, Chromium's tracks labelled.
    let parts = b["state"]["participants"].as_array().unwrap();
    assert!(parts.iter().any(|p| p["user"] == f.editor.user_id.as_str()), "{b}");
    let me = parts.iter().find(|p| p["connection"] == b["connection"]).unwrap();
    let mut sources: Vec<&str> =
        me["tracks"].as_array().unwrap().iter().map(|t| t["source"].as_str().unwrap()).collect();
    sources.sort_unstable();
    assert_eq!(sources, ["camera", "mic"], "{me}");
    s.stop().await;
}

/// Two browsers call each other through the relay: each decodes the other's camera, and their
/// bandwidth estimates (REMB, what caps the simulcast layer each gets) reach the relay, which
/// takes a receiver not being handed the publisher's transport-wide sequence numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_browsers_see_each_other_and_report_their_bandwidth() {
    let (outs, m) = two_chromium_calls(&["8"], &["8"]).await;
    for out in outs {
        let r = chromium_report(&out);
        assert_eq!(r["errors"], serde_json::json!([]), "{r}");
        assert!(r["video_frames_decoded"].as_u64().unwrap() >= 20, "{r}");
    }
    assert!(metric(&m, "outpost_media_bandwidth_estimates_total") >= 1, "{m}");
}

/// A browser receiving another's simulcast camera on a link with room to spare gets a high
/// layer and stays on it: its own bandwidth estimates (REMB) reach the relay, and an estimate
/// near a layer's bit rate does not flip it between two layers (it did, every second or so,
/// before the margins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_receiving_simulcast_keeps_a_steady_layer() {
    let ([a, b], m) = two_chromium_calls(&["16", "simulcast"], &["12", "plain"]).await;
    let (sender, r) = (chromium_report(&a), chromium_report(&b));
    // Not held at the low layer (a 1280x720 camera's quarter): it was given at least the
    // middle one. A sending browser short of CPU scales every layer down for a while, so the
    // middle layer's width is the narrowest the sender reports sending it at, not assumed to be
    // 640. (Where it ends depends on the estimates of a machine that may be starved of CPU by
    // then; the switch count below is what says the layer was steady.)
    let middle = sender["sent_widths_min"]["h"].as_u64().unwrap_or(0);
    assert!(middle > 0, "the sender stopped its middle layer: {sender}");
    assert!(r["video_width"].as_u64().unwrap() >= middle, "{r}\nsender: {sender}");
    assert!(metric(&m, "outpost_media_bandwidth_estimates_total") >= 1, "{m}");
    let switches = metric(&m, "outpost_media_layer_switches_total");
    assert!(switches <= 4, "{switches} layer switches in 12 s: {r}");
}

/// A fresh server, and a room's host and an editor calling each other from two browsers at
/// once (`chromium_call` with `host_args` and `editor_args`): how both runs ended, and the
/// server's metrics after them.
async fn two_chromium_calls(host_args: &[&str], editor_args: &[&str]) -> ([std::process::Output; 2], String) {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let (a, b) = tokio::join!(
        chromium_call(&s, &f.room, &f.host.access, host_args),
        chromium_call(&s, &f.room, &f.editor.access, editor_args)
    );
    let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    s.stop().await;
    ([a, b], m)
}

/// Runs `tests/peers/chromium_call.mjs` for `token` in `room` (its arguments after those:
/// seconds, then optionally a mode) to the end, within two minutes.
async fn chromium_call(s: &TestServer, room: &str, token: &str, args: &[&str]) -> std::process::Output {
    let (mut command, tmp) = chromium_command(s, room, token, args);
    let out = tokio::time::timeout(Duration::from_secs(120), command.output()).await.expect("Chromium did not finish");
    tmp.remove().await;
    out.unwrap()
}

/// The command that runs `tests/peers/chromium_call.mjs`, and the temporary directory it puts
/// the browser's profile in (and whatever else Chromium writes there), owned by the test. The
/// script removes its profile when it ends, but a run the test ends early (killed) cannot, and
/// Chromium's helpers can outlive the script by a moment: the test removes the directory once
/// the run is over ([`BrowserTmp::remove`]).
fn chromium_command(s: &TestServer, room: &str, token: &str, args: &[&str]) -> (tokio::process::Command, BrowserTmp) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/chromium_call.mjs");
    let tmp = BrowserTmp(tempfile::Builder::new().prefix("outpost-chromium-").tempdir().unwrap());
    let mut command = tokio::process::Command::new("node");
    command.arg(script).args([&s.base, room, token]).args(args).env("TMPDIR", tmp.0.path()).kill_on_drop(true);
    (command, tmp)
}

/// A browser run's temporary directory (see [`chromium_command`]).
struct BrowserTmp(tempfile::TempDir);

impl BrowserTmp {
    /// Removes the directory, trying again for up to five seconds while the browser's last
    /// helpers finish writing into it.
    async fn remove(self) {
        let path = self.0.keep();
        for _ in 0..100 {
            match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => return,
            }
        }
        panic!("{} could not be removed", path.display());
    }
}

/// Ends a browser run the way a user's Ctrl-C would (SIGTERM: playwright closes the browser
/// and the script exits), within ten seconds.
async fn end_browser(mut browser: tokio::process::Child) {
    if let Some(pid) = browser.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    if tokio::time::timeout(Duration::from_secs(10), browser.wait()).await.is_err() {
        let _ = browser.kill().await;
    }
}

/// The report a `chromium_call` run ended with (its last line), once it succeeded.
fn chromium_report(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}

/// Decodes a media file with PyAV (ffmpeg): frames decoded and, for video, the frame size.
async fn decode_file(path: &std::path::Path) -> Value {
    let python = crate::support::peer_python();
    let script = "import av, json, sys\nc = av.open(sys.argv[1])\ns = c.streams[0]\nn = 0\nsize = None\nfor f in c.decode(s):\n    n += 1\n    size = [f.width, f.height] if s.type == 'video' else None\nprint(json.dumps({'type': s.type, 'codec': s.codec_context.name, 'frames': n, 'size': size}))\n";
    let out = tokio::process::Command::new(python).args(["-c", script]).arg(path).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A host records a call published with WHIP: the audio lands in an Ogg Opus file and the
/// video in an IVF file, both decodable, listed and downloadable by REST; the call state says
/// it is being recorded; only hosts start and stop it; it is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_records_the_call_to_decodable_files() {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let mut peer = PyPeer::start("whip_whep.py", &[&s.base, &f.room, &f.editor.access, &f.viewer.access]);
    let seen = peer.next().await;
    assert!(seen["video_frames"].as_u64().unwrap() >= 20, "{seen}");

    let recordings = format!("/v1/rooms/{}/recordings", f.room);
    // Only a host records.
    let r = s
        .http
        .post(s.url(&recordings))
        .bearer_auth(&f.editor.access)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(r, 403, "forbidden").await;
    let r = s
        .http
        .post(s.url(&recordings))
        .bearer_auth(&f.host.access)
        .json(&serde_json::json!({ "video": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let rec: Value = r.json().await.unwrap();
    assert_eq!(rec["status"], "recording");
    let id = rec["id"].as_str().unwrap().to_owned();
    // One at a time, and everyone can see it is on.
    let r =
        s.http.post(s.url(&recordings)).bearer_auth(&f.host.access).json(&serde_json::json!({})).send().await.unwrap();
    expect_problem(r, 409, "media_busy").await;
    let call = get_json(&s, &f.viewer.access, &format!("/v1/rooms/{}/call", f.room)).await;
    assert_eq!(call["recording"], id.as_str(), "{call}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = s.http.post(s.url(&format!("{recordings}/{id}/stop"))).bearer_auth(&f.host.access).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["status"], "done", "{done}");
    let files = done["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{done}");
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        assert_eq!(file["user_id"], f.editor.user_id.as_str());
        assert!(file["packets"].as_u64().unwrap() > 20, "{file}");
        let r = s.http.get(s.url(file["url"].as_str().unwrap())).bearer_auth(&f.viewer.access).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, file["bytes"].as_u64().unwrap(), "{file}");
        let path = dir.path().join(file["name"].as_str().unwrap());
        std::fs::write(&path, &bytes).unwrap();
        let decoded = decode_file(&path).await;
        if file["kind"] == "audio" {
            assert!(bytes.starts_with(b"OggS"), "{file}");
            assert_eq!(decoded["codec"], "opus", "{decoded}");
            assert!(decoded["frames"].as_u64().unwrap() >= 50, "{decoded}");
        } else {
            assert!(bytes.starts_with(b"DKIF"), "{file}");
            assert_eq!(file["codec"], "video/VP8", "{file}");
            assert_eq!(decoded["codec"], "vp8", "{decoded}");
            assert!(decoded["frames"].as_u64().unwrap() >= 20, "{decoded}");
            assert_eq!(decoded["size"], serde_json::json!([320, 240]), "{decoded}");
        }
    }
    // Each recorded file is one of the room's files too, the same bytes.
    let room_files = get_json(&s, &f.viewer.access, &format!("/v1/rooms/{}/assets", f.room)).await;
    for file in files {
        let name = format!("recordings/{id}/{}", file["name"].as_str().unwrap());
        let items = room_files["items"].as_array().unwrap();
        let item = items.iter().find(|i| i["name"] == name.as_str()).unwrap_or_else(|| panic!("{name}: {room_files}"));
        let v = &item["versions"][0];
        assert_eq!(v["size"], file["bytes"], "{item}");
        let r =
            s.http.get(s.url(v["content_url"].as_str().unwrap())).bearer_auth(&f.viewer.access).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().len() as u64, file["bytes"].as_u64().unwrap());
    }
    // Listed; nothing else in the directory is served.
    let list = get_json(&s, &f.viewer.access, &recordings).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let r = s
        .http
        .get(s.url(&format!("{recordings}/{id}/files/recording.json")))
        .bearer_auth(&f.viewer.access)
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "not_found").await;
    let call = get_json(&s, &f.viewer.access, &format!("/v1/rooms/{}/call", f.room)).await;
    assert_eq!(call["recording"], Value::Null, "{call}");
    let audit: Value =
        s.get(&format!("/v1/orgs/{}/audit?limit=100", f.org)).send().await.unwrap().json().await.unwrap();
    assert!(audit.to_string().contains("call.record_stop"), "{audit}");

    peer.stop().await;
    s.stop().await;
}

/// Asks the solo call client what it received every half second, for up to 15 s, until the
/// picture's width satisfies `ok`; that width, or a failure saying `what` with every size seen.
async fn until_width(peer: &mut PyPeer, seen: &mut Vec<Value>, what: &str, ok: impl Fn(u64) -> bool) -> u64 {
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peer.say("size").await;
        let size = peer.next().await["video_size"].clone();
        seen.push(size.clone());
        if let Some(w) = size[0].as_u64().filter(|w| *w > 0 && ok(*w)) {
            return w;
        }
    }
    panic!("{what}: sizes seen {seen:?}");
}

/// Simulcast: Chromium publishes its camera in several layers; an aiortc receiver that asks for
/// low quality gets a reduced picture, and moves up to a larger one when it asks for high.
/// Limited in bandwidth (its estimate, REMB, says 150 kbit/s), it gets the low layer again, and
/// moves up when the limit lifts. A receiver that does not show a track pauses it: nothing
/// arrives until it asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_the_simulcast_layer_its_request_and_bandwidth_allow() {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let mut aiortc = PyPeer::start("call_client.py", &["solo", &s.base, &f.room, &f.editor.access]);
    assert!(aiortc.next().await["joined"].is_string());
    aiortc.say("quality low").await;
    assert_eq!(aiortc.next().await["quality"], "low");
    let (mut command, tmp) = chromium_command(&s, &f.room, &f.host.access, &["60", "simulcast"]);
    let browser = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut seen = Vec::new();
    // Three layers of a 1280x720 camera (Chromium may hold the top one back until its
    // bandwidth estimate allows): low is the smallest picture.
    let low = until_width(&mut aiortc, &mut seen, "never got a low layer", |w| w <= 320).await;
    aiortc.say("quality high").await;
    assert_eq!(aiortc.next().await["quality"], "high");
    let high = until_width(&mut aiortc, &mut seen, "never moved up from the low layer", |w| w > low).await;
    // A slow link: the estimate caps what the relay sends, whatever the request.
    aiortc.say("bandwidth 150000").await;
    assert_eq!(aiortc.next().await["bandwidth"], 150_000);
    let capped = "a 150 kbit/s estimate never brought the low layer";
    until_width(&mut aiortc, &mut seen, capped, |w| w < high && w <= 320).await;
    aiortc.say("bandwidth 20000000").await;
    assert_eq!(aiortc.next().await["bandwidth"], 20_000_000);
    until_width(&mut aiortc, &mut seen, "never moved up when the limit lifted", |w| w > 320).await;
    // Not shown: paused, nothing more arrives; shown again: it comes back.
    aiortc.say("video off").await;
    assert_eq!(aiortc.next().await["tracks"].as_array().map(Vec::len), Some(1));
    tokio::time::sleep(Duration::from_millis(700)).await;
    aiortc.say("size").await;
    let before = aiortc.next().await["video_frames"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    aiortc.say("size").await;
    let paused = aiortc.next().await["video_frames"].as_u64().unwrap();
    assert_eq!(paused, before, "video kept coming while paused");
    aiortc.say("video high").await;
    aiortc.next().await;
    let mut reached = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        aiortc.say("size").await;
        if aiortc.next().await["video_frames"].as_u64().unwrap() > paused + 10 {
            reached = true;
            break;
        }
    }
    assert!(reached, "video did not come back after the pause");
    let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric(&m, "outpost_media_layer_switches_total") >= 1, "{m}");
    end_browser(browser).await;
    tmp.remove().await;
    s.stop().await;
}

/// A real offer (aiortc's: Opus and VP8, sendonly); the server answers it whether or not the
/// client ever connects, which is all the room-change checks below need.
const AIORTC_OFFER: &str = include_str!("fixtures/whip_offer.sdp");

/// Calls follow the room: leaving it ends one's connections, archiving it ends the call and
/// its recording.
#[tokio::test]
async fn leaving_or_archiving_the_room_ends_connections() {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let whip = format!("/v1/rooms/{}/whip", f.room);
    for who in [&f.editor, &f.host] {
        let r = post_sdp(&s, &who.access, &whip, "application/sdp", AIORTC_OFFER).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let list = format!("/v1/rooms/{}/media/connections", f.room);
    let count = async || get_json(&s, &f.host.access, &list).await["items"].as_array().map_or(0, Vec::len);
    assert_eq!(count().await, 2);
    let r =
        s.http.post(s.url(&format!("/v1/rooms/{}/leave", f.room))).bearer_auth(&f.editor.access).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    until("the leaver's connection to end", || async { count().await == 1 }).await;
    let recordings = format!("/v1/rooms/{}/recordings", f.room);
    let r =
        s.http.post(s.url(&recordings)).bearer_auth(&f.host.access).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r =
        s.http.post(s.url(&format!("/v1/rooms/{}/archive", f.room))).bearer_auth(&f.host.access).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    until("the call to end", || async { count().await == 0 }).await;
    // Its recording ended with it.
    until("the recording to end", || async {
        get_json(&s, &f.host.access, &recordings).await["items"][0]["status"] == "done"
    })
    .await;
    // An archived room has no call to join.
    let r = post_sdp(&s, &f.host.access, &whip, "application/sdp", AIORTC_OFFER).await;
    expect_problem(r, 409, "room_archived").await;
    s.stop().await;
}

/// ICE over TCP: a client whose only candidate is TCP (an `rtc` client: aiortc does no
/// ICE-TCP) reaches the relay on the media port over TCP, publishes, and its track shows in
/// the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_udp_publishes_over_ice_tcp() {
    use bytes::BytesMut;
    use rtc::interceptor::Registry;
    use rtc::media_stream::MediaStreamTrack;
    use rtc::peer_connection::RTCPeerConnectionBuilder;
    use rtc::peer_connection::configuration::RTCConfigurationBuilder;
    use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
    use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
    use rtc::peer_connection::event::RTCPeerConnectionEvent;
    use rtc::peer_connection::sdp::RTCSessionDescription;
    use rtc::peer_connection::state::RTCPeerConnectionState;
    use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };
    use rtc::sansio::Protocol;
    use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let opus = RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    };
    let mut media = MediaEngine::default();
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: opus.clone(), payload_type: 111 }, RtpCodecKind::Audio)
        .unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .unwrap();
    let track = MediaStreamTrack::new(
        "s".into(),
        "mic".into(),
        "mic".into(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(0x5151), ..Default::default() },
            codec: opus,
            active: true,
            ..Default::default()
        }],
    );
    let sender = pc.add_track(track).unwrap();
    // Only an active TCP candidate: no UDP at all.
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "tcp".into(),
            address: "127.0.0.1".into(),
            port: 9,
            component: 1,
            ..Default::default()
        },
        tcp_type: rtc::ice::tcp_type::TcpType::Active,
    }
    .new_candidate_host()
    .unwrap();
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json().unwrap()).unwrap();
    let offer = pc.create_offer(None).unwrap();
    pc.set_local_description(Instant::now(), offer).unwrap();
    let sdp = pc.local_description().unwrap().sdp;
    let r = post_sdp(&s, &f.editor.access, &format!("/v1/rooms/{}/whip", f.room), "application/sdp", &sdp).await;
    assert_eq!(r.status(), 201);
    let answer = r.text().await.unwrap();
    // The relay's passive TCP candidate: `a=candidate:… 1 tcp <prio> <ip> <port> typ host tcptype passive`.
    let line = answer.lines().find(|l| l.contains(" tcp ") && l.contains("tcptype passive")).expect("a TCP candidate");
    let parts: Vec<&str> = line.split_whitespace().collect();
    let server: std::net::SocketAddr = format!("{}:{}", parts[4], parts[5]).parse().unwrap();
    pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(answer).unwrap()).unwrap();

    let stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
    tokio::spawn(async move {
        let mut len = [0u8; 2];
        while rd.read_exact(&mut len).await.is_ok() {
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if rd.read_exact(&mut buf).await.is_err() || frames_tx.send(buf).await.is_err() {
                return;
            }
        }
    });
    let ctx = |peer| TransportContext {
        local_addr: std::net::SocketAddr::new(local.ip(), 9),
        peer_addr: peer,
        ecn: None,
        transport_protocol: TransportProtocol::TCP,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut connected, mut sent, mut seq) = (false, 0, 0u16);
    let call = format!("/v1/rooms/{}/call", f.room);
    loop {
        while let Some(out) = pc.poll_write() {
            let n = u16::try_from(out.message.len()).unwrap();
            wr.write_all(&n.to_be_bytes()).await.unwrap();
            wr.write_all(&out.message).await.unwrap();
        }
        while let Some(e) = pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(st) = e {
                connected |= st == RTCPeerConnectionState::Connected;
            }
        }
        while pc.poll_read().is_some() {}
        if connected {
            // 20 ms of audio, until the relay shows the track.
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: seq,
                    timestamp: u32::from(seq) * 960,
                    ssrc: 0x5151,
                    ..Default::default()
                },
                payload: bytes::Bytes::from_static(&[0xfc, 0xff, 0xfe]),
            };
            seq = seq.wrapping_add(1);
            if pc.rtp_sender(sender).is_some_and(|mut x| x.write_rtp(Instant::now(), packet).is_ok()) {
                sent += 1;
            }
            if sent % 10 == 5 {
                let state = get_json(&s, &f.editor.access, &call).await;
                let tracks = state["participants"][0]["tracks"].as_array().map_or(0, Vec::len);
                if tracks == 1 {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "no media over ICE-TCP (connected: {connected}, sent: {sent})");
        let wake = pc.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_millis(20));
        let wait = wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(20));
        tokio::select! {
            frame = frames.recv() => {
                let frame = frame.expect("the relay closed the TCP connection");
                let _ = pc.handle_read(TaggedBytesMut { now: Instant::now(), transport: ctx(server), message: BytesMut::from(&frame[..]) });
            }
            () = tokio::time::sleep(wait) => {
                let _ = pc.handle_timeout(Instant::now());
            }
        }
    }
    s.stop().await;
}

/// H.264, what OBS, GStreamer and ffmpeg publish over WHIP: aiortc publishes its camera as
/// H.264 and the player decodes it; the call state names the codec; a recording keeps it as
/// an H.264 stream that decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_publisher_is_played_through_whep() {
    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let mut peer = PyPeer::start("whip_whep.py", &[&s.base, &f.room, &f.editor.access, &f.viewer.access, "h264"]);
    let seen = peer.next().await;
    assert!(seen["video_frames"].as_u64().unwrap() >= 20, "{seen}");
    assert_eq!(seen["video_size"], serde_json::json!([320, 240]), "{seen}");
    let call = get_json(&s, &f.viewer.access, &format!("/v1/rooms/{}/call", f.room)).await;
    let publisher =
        call["participants"].as_array().unwrap().iter().find(|p| p["direction"] == "publish").unwrap().clone();
    let mut codecs: Vec<&str> =
        publisher["tracks"].as_array().unwrap().iter().map(|t| t["codec"].as_str().unwrap()).collect();
    codecs.sort_unstable();
    assert_eq!(codecs, ["audio/opus", "video/H264"], "{call}");

    let recordings = format!("/v1/rooms/{}/recordings", f.room);
    let body = serde_json::json!({ "video": true });
    let r = s.http.post(s.url(&recordings)).bearer_auth(&f.host.access).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = s.http.post(s.url(&format!("{recordings}/{id}/stop"))).bearer_auth(&f.host.access).send().await.unwrap();
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["status"], "done", "{done}");
    let video = done["files"].as_array().unwrap().iter().find(|f| f["kind"] == "video").expect("a video file").clone();
    assert_eq!(video["codec"], "video/H264", "{done}");
    assert!(video["name"].as_str().unwrap().rsplit_once('.').is_some_and(|(_, ext)| ext == "h264"), "{done}");
    let r = s.http.get(s.url(video["url"].as_str().unwrap())).bearer_auth(&f.viewer.access).send().await.unwrap();
    let bytes = r.bytes().await.unwrap();
    assert!(bytes.starts_with(&[0, 0, 0, 1]), "an Annex B stream starts with a start code");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(video["name"].as_str().unwrap());
    std::fs::write(&path, &bytes).unwrap();
    let decoded = decode_file(&path).await;
    assert_eq!(decoded["codec"], "h264", "{decoded}");
    assert!(decoded["frames"].as_u64().unwrap() >= 20, "{decoded}");
    assert_eq!(decoded["size"], serde_json::json!([320, 240]), "{decoded}");
    peer.stop().await;
    s.stop().await;
}

/// What a connection may say about its tracks is bounded: labels for at most 32 of them.
/// Trickled candidates are checked, and only the connection's owner may send them.
#[tokio::test]
async fn call_updates_label_a_bounded_number_of_tracks() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let s = TestServer::start().await;
    let f = crate::docs::setup(&s).await;
    let (mut ws, _) = crate::realtime::connect(&s, &f.editor).await;
    let join = serde_json::json!({ "op": "call_join", "room": f.room, "sdp": AIORTC_OFFER, "ref": "j" });
    ws.send(Message::text(join.to_string())).await.unwrap();
    let joined = crate::realtime::next(&mut ws).await;
    assert_eq!(joined["op"], "call_joined", "{joined}");
    let connection = joined["connection"].as_str().unwrap().to_owned();
    let mut refused = None;
    for batch in 0..3 {
        let tracks: Vec<Value> =
            (0..16).map(|i| serde_json::json!({ "track": format!("t{batch}-{i}"), "source": "camera" })).collect();
        let update = serde_json::json!({ "op": "call_update", "connection": connection, "tracks": tracks });
        ws.send(Message::text(update.to_string())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_millis(500), crate::realtime::next(&mut ws)).await;
        if let Ok(frame) = reply
            && frame["op"] == "error"
        {
            refused = Some((batch, frame));
            break;
        }
    }
    let (batch, frame) = refused.expect("the 33rd label was taken");
    assert_eq!(batch, 2, "{frame}");
    assert_eq!(frame["code"], "too_many_tracks", "{frame}");

    // Trickled candidates: a real one and the end of gathering are taken silently, anything
    // else is refused; someone else's connection is not found.
    let candidate = |connection: &str, line: &str| {
        let c =
            serde_json::json!({ "op": "call_candidate", "connection": connection, "candidate": line, "sdpMid": "0" });
        Message::text(c.to_string())
    };
    ws.send(candidate(&connection, "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host")).await.unwrap();
    ws.send(candidate(&connection, "")).await.unwrap();
    ws.send(Message::text(serde_json::json!({ "op": "ping", "ref": "p" }).to_string())).await.unwrap();
    let pong = crate::realtime::next(&mut ws).await;
    assert_eq!(pong["op"], "pong", "{pong}");
    ws.send(candidate(&connection, "candidate:not a candidate")).await.unwrap();
    let refused = crate::realtime::next(&mut ws).await;
    assert_eq!(refused["code"], "invalid_sdp", "{refused}");
    let (mut other, _) = crate::realtime::connect(&s, &f.host).await;
    other.send(candidate(&connection, "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host")).await.unwrap();
    let refused = crate::realtime::next(&mut other).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    s.stop().await;
}
