//! Forwarding load on the media relay, driven by `benches/sfu.sh`, in one of two shapes:
//!
//! * `video`: one publisher (WHIP) sends video at a set bit rate plus Opus-sized audio, and N
//!   players (WHEP) receive it;
//! * `audio10`: ten publishers (WHIP) each send Opus-sized audio, and N call participants
//!   (the realtime socket: `call_join`, then answering the relay's offers) receive all ten.
//!
//! Each client is its own WebRTC connection on its own UDP socket (the `rtc` core, no
//! decoding). Reports, per N:
//! packets forwarded per second, per busy server core and per player's share of a core, the
//! added delay (publisher's send to a player's receive, p50/p99), join time (WHEP request to
//! the first packet, p50/p99), loss, and the server's RSS.
//!
//! It makes its own organization, two users and a room through the API with the operator key.
//!
//! With `--janus URL` it drives Janus VideoRoom over Janus's HTTP API instead, with the same
//! clients and packets: one publisher per WHIP publisher of the Outpost run, one subscriber
//! per player (in `audio10`, one subscriber of all ten publishers per call participant).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

struct Args {
    base: String,
    key: String,
    shape: String,
    subs: Vec<usize>,
    seconds: f64,
    video_kbps: u64,
    pid: u32,
    /// The address the clients' sockets bind to.
    local_ip: String,
    /// Janus's HTTP API (`http://host:8088/janus`): drive Janus VideoRoom instead of Outpost.
    janus: Option<String>,
    /// How often a call participant renews its socket's token (tokens last 15 minutes).
    renew: Duration,
}

fn args() -> Args {
    let mut a = Args {
        base: String::new(),
        key: String::new(),
        shape: "video".into(),
        subs: vec![10],
        seconds: 8.0,
        video_kbps: 1500,
        pid: 0,
        local_ip: "127.0.0.1".into(),
        janus: None,
        renew: Duration::from_secs(600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--base" => a.base = v(),
            "--key" => a.key = v(),
            "--shape" => a.shape = v(),
            "--subs" => a.subs = v().split(',').map(|n| n.trim().parse().expect("--subs")).collect(),
            "--seconds" => a.seconds = v().parse().expect("--seconds"),
            "--video-kbps" => a.video_kbps = v().parse().expect("--video-kbps"),
            "--pid" => a.pid = v().parse().expect("--pid"),
            "--local-ip" => a.local_ip = v(),
            "--janus" => a.janus = Some(v()),
            "--renew-s" => a.renew = Duration::from_secs(v().parse().expect("--renew-s")),
            _ => {}
        }
    }
    a
}

fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>()) / 100.0
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

// ------------------------------------------------------------------ API ----

struct Setup {
    http: reqwest::Client,
    base: String,
    room: String,
    publisher: String,
    player: String,
    /// The player's login (each call participant signs in on its own, with its own session).
    player_login: Value,
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let r = http.post(url).bearer_auth(token).json(&body).send().await.expect("request");
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {v}");
    v
}

async fn setup(base: &str, key: &str) -> Setup {
    let http = reqwest::Client::new();
    let slug = format!("sfu{}", now_us() % 1_000_000_000);
    let org = post(&http, format!("{base}/v1/orgs"), key, json!({ "slug": slug, "name": slug })).await;
    let org = org["id"].as_str().expect("org id").to_owned();
    let mut tokens = Vec::new();
    let mut player_login = Value::Null;
    for who in ["pub", "play"] {
        let inv = post(
            &http,
            format!("{base}/v1/orgs/{org}/invitations"),
            key,
            json!({ "email": format!("{who}@{slug}.example.org"), "role": "member" }),
        )
        .await;
        let body =
            json!({ "token": inv["token"], "username": format!("{who}-{slug}"), "password": "bench password 123" });
        http.post(format!("{base}/v1/auth/invitations/accept")).json(&body).send().await.expect("accept");
        let login = json!({ "org": slug, "login": format!("{who}-{slug}"), "password": "bench password 123" });
        let t: Value = http
            .post(format!("{base}/v1/auth/login"))
            .json(&login)
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        tokens.push(t["access_token"].as_str().expect("token").to_owned());
        player_login = login;
    }
    let room =
        post(&http, format!("{base}/v1/rooms"), &tokens[0], json!({ "name": "bench", "visibility": "org" })).await;
    let room = room["id"].as_str().expect("room id").to_owned();
    let me: Value =
        http.get(format!("{base}/v1/me")).bearer_auth(&tokens[1]).send().await.expect("me").json().await.expect("json");
    let player_id = me["id"].as_str().or_else(|| me["user"]["id"].as_str()).expect("user id").to_owned();
    post(
        &http,
        format!("{base}/v1/rooms/{room}/participants"),
        &tokens[0],
        json!({ "user_id": player_id, "role": "viewer" }),
    )
    .await;
    post(&http, format!("{base}/v1/rooms/{room}/join"), &tokens[1], json!({})).await;
    let player = tokens.pop().expect("player");
    let publisher = tokens.pop().expect("publisher");
    Setup { http, base: base.to_owned(), room, publisher, player, player_login }
}

// ---------------------------------------------------------------- Janus ----

/// Janus's HTTP API: one session, whose events a long poll hands to the handle they name.
struct Janus {
    http: reqwest::Client,
    url: String,
    session: u64,
    handles: std::sync::Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Value>>>,
    transactions: AtomicU64,
}

impl Janus {
    async fn connect(url: &str) -> Arc<Self> {
        let mut janus = Self {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_owned(),
            session: 0,
            handles: std::sync::Mutex::default(),
            transactions: AtomicU64::new(0),
        };
        janus.session = janus.request("", json!({ "janus": "create" })).await["data"]["id"].as_u64().expect("session");
        let janus = Arc::new(janus);
        tokio::spawn(janus.clone().poll());
        janus
    }

    async fn request(&self, path: &str, mut body: Value) -> Value {
        body["transaction"] = json!(format!("t{}", self.transactions.fetch_add(1, Ordering::Relaxed)));
        let r = self.http.post(format!("{}{path}", self.url)).json(&body).send().await.expect("janus request");
        let v: Value = r.json().await.expect("janus json");
        assert_ne!(v["janus"], "error", "janus: {v}");
        v
    }

    async fn poll(self: Arc<Self>) {
        let url = format!("{}/{}?maxev=64", self.url, self.session);
        loop {
            let Ok(r) = self.http.get(&url).send().await else { return };
            let Ok(v) = r.json::<Value>().await else { return };
            let events = if let Value::Array(a) = v { a } else { vec![v] };
            let handles = self.handles.lock().expect("lock");
            for e in events {
                if let Some(tx) = e["sender"].as_u64().and_then(|h| handles.get(&h)) {
                    let _ = tx.try_send(e);
                }
            }
        }
    }

    async fn attach(&self) -> (u64, tokio::sync::mpsc::Receiver<Value>) {
        let body = json!({ "janus": "attach", "plugin": "janus.plugin.videoroom" });
        let handle = self.request(&format!("/{}", self.session), body).await["data"]["id"].as_u64().expect("handle");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        self.handles.lock().expect("lock").insert(handle, tx);
        (handle, rx)
    }

    /// A VideoRoom request: synchronous ones answer here, the others with an event later.
    async fn message(&self, handle: u64, body: Value, jsep: Option<Value>) -> Value {
        let mut m = json!({ "janus": "message", "body": body });
        if let Some(jsep) = jsep {
            m["jsep"] = jsep;
        }
        self.request(&format!("/{}/{handle}", self.session), m).await
    }

    /// The handle's next event of kind `kind` (`event` for VideoRoom's, `webrtcup` when its
    /// connection is up); others are skipped.
    async fn next(rx: &mut tokio::sync::mpsc::Receiver<Value>, kind: &str) -> Value {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no janus {kind} in time"))
                .expect("janus events");
            if e["janus"] == kind {
                assert!(e["plugindata"]["data"].get("error").is_none(), "janus: {e}");
                return e;
            }
        }
    }

    /// The handle's next VideoRoom event.
    async fn event(rx: &mut tokio::sync::mpsc::Receiver<Value>) -> Value {
        Self::next(rx, "event").await
    }

    async fn trickle_done(&self, handle: u64) {
        let body = json!({ "janus": "trickle", "candidate": { "completed": true } });
        self.request(&format!("/{}/{handle}", self.session), body).await;
    }

    async fn detach(&self, handle: u64) {
        let _ = self
            .http
            .post(format!("{}/{}/{handle}", self.url, self.session))
            .json(&json!({ "janus": "detach", "transaction": "d" }))
            .send()
            .await;
        self.handles.lock().expect("lock").remove(&handle);
    }

    /// A room for one round: every publisher of it, no bit rate cap, no keyframe timer.
    async fn create_room(&self, room: u64) {
        let (handle, _events) = self.attach().await;
        let body = json!({ "request": "create", "room": room, "publishers": 16, "bitrate": 0, "fir_freq": 0,
            "audiocodec": "opus", "videocodec": "vp8", "notify_joining": false });
        let v = self.message(handle, body, None).await;
        assert_eq!(v["plugindata"]["data"]["videoroom"], "created", "{v}");
        self.detach(handle).await;
    }

    /// Joins `room` as a publisher and publishes what `pc` offers; returns the handle, the feed
    /// and the handle's events (Janus takes subscribers once they say `webrtcup`).
    async fn publish(
        &self,
        room: u64,
        pc: &mut RTCPeerConnection,
        local: SocketAddr,
    ) -> (u64, u64, tokio::sync::mpsc::Receiver<Value>) {
        let (handle, mut events) = self.attach().await;
        self.message(handle, json!({ "request": "join", "ptype": "publisher", "room": room }), None).await;
        let joined = Self::event(&mut events).await;
        let feed = joined["plugindata"]["data"]["id"].as_u64().expect("publisher id");
        add_host_candidate(pc, local);
        let offer = pc.create_offer(None).expect("offer");
        pc.set_local_description(Instant::now(), offer).expect("local");
        let sdp = pc.local_description().expect("sdp").sdp;
        self.message(handle, json!({ "request": "publish" }), Some(json!({ "type": "offer", "sdp": sdp }))).await;
        let configured = Self::event(&mut events).await;
        let answer = configured["jsep"]["sdp"].as_str().expect("answer").to_owned();
        pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(answer).expect("answer sdp"))
            .expect("remote");
        self.trickle_done(handle).await;
        (handle, feed, events)
    }

    /// Waits for the handle's connection to be up.
    async fn webrtc_up(mut events: tokio::sync::mpsc::Receiver<Value>) {
        Self::next(&mut events, "webrtcup").await;
    }

    /// Subscribes to `feeds` in `room`: Janus offers, a new connection answers.
    async fn subscribe(&self, room: u64, feeds: &[u64], local: SocketAddr) -> (RTCPeerConnection, u64) {
        let (handle, mut events) = self.attach().await;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({ "feed": f })).collect();
        let join = json!({ "request": "join", "ptype": "subscriber", "room": room, "streams": streams });
        self.message(handle, join, None).await;
        let attached = Self::event(&mut events).await;
        let offer = attached["jsep"]["sdp"].as_str().expect("offer").to_owned();
        let mut pc = new_pc();
        pc.set_remote_description(Instant::now(), RTCSessionDescription::offer(offer).expect("offer sdp"))
            .expect("remote");
        add_host_candidate(&mut pc, local);
        let answer = pc.create_answer(None).expect("answer");
        pc.set_local_description(Instant::now(), answer).expect("local");
        let sdp = pc.local_description().expect("sdp").sdp;
        self.message(handle, json!({ "request": "start" }), Some(json!({ "type": "answer", "sdp": sdp }))).await;
        Self::event(&mut events).await;
        self.trickle_done(handle).await;
        (pc, handle)
    }
}

/// Whom the clients signal to.
enum Signal {
    Outpost(Setup),
    Janus(Arc<Janus>),
}

struct Server {
    signal: Signal,
    /// The address the clients' sockets bind to.
    local_ip: IpAddr,
    /// This round's Janus room.
    janus_room: u64,
}

/// How a client hangs up after a round.
enum HangUp {
    Http { url: String, token: String },
    Janus(u64),
}

impl Server {
    async fn hang_up(&self, h: HangUp) {
        match (h, &self.signal) {
            (HangUp::Http { url, token }, Signal::Outpost(s)) => {
                let _ = s.http.delete(url).bearer_auth(token).send().await;
            }
            (HangUp::Janus(handle), Signal::Janus(j)) => j.detach(handle).await,
            _ => {}
        }
    }
}

// --------------------------------------------------------------- WebRTC ----

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn new_pc() -> RTCPeerConnection {
    let mut media = MediaEngine::default();
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: opus(), payload_type: 111 }, RtpCodecKind::Audio)
        .expect("opus");
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: vp8(), payload_type: 96 }, RtpCodecKind::Video)
        .expect("vp8");
    let registry = register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .expect("peer connection")
}

/// Gives `pc` its one host candidate: the UDP socket at `local`.
fn add_host_candidate(pc: &mut RTCPeerConnection, local: SocketAddr) {
    let candidate = outpost::media::sfu::host_candidate(local, false).expect("candidate");
    pc.add_local_candidate(candidate).expect("local candidate");
}

/// Offers from `pc` (on `socket`) to `url`, applies the answer, returns the connection's URL.
async fn negotiate(
    pc: &mut RTCPeerConnection,
    local: SocketAddr,
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> String {
    add_host_candidate(pc, local);
    let offer = pc.create_offer(None).expect("offer");
    pc.set_local_description(Instant::now(), offer).expect("local");
    let sdp = pc.local_description().expect("sdp").sdp;
    let r = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .expect("signal");
    assert_eq!(r.status().as_u16(), 201, "{url}: {}", r.text().await.unwrap_or_default());
    let location = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let answer = RTCSessionDescription::answer(r.text().await.expect("answer")).expect("answer sdp");
    pc.set_remote_description(Instant::now(), answer).expect("remote");
    location
}

/// Sends what `pc` has to send, and hands its events and received RTP packets on.
async fn pump(
    pc: &mut RTCPeerConnection,
    socket: &UdpSocket,
    mut on_event: impl FnMut(RTCPeerConnectionEvent),
    mut on_rtp: impl FnMut(&rtc::rtp::Packet),
) {
    while let Some(out) = pc.poll_write() {
        let _ = socket.send_to(&out.message, out.transport.peer_addr).await;
    }
    while let Some(e) = pc.poll_event() {
        on_event(e);
    }
    while let Some(m) = pc.poll_read() {
        if let RTCMessage::RtpPacket(_, p) = m.message {
            on_rtp(&p);
        }
    }
}

/// Gives `pc` a datagram that came to `local` from `from`.
fn take_datagram(pc: &mut RTCPeerConnection, local: SocketAddr, from: SocketAddr, data: &[u8]) {
    let transport =
        TransportContext { local_addr: local, peer_addr: from, ecn: None, transport_protocol: TransportProtocol::UDP };
    let _ = pc.handle_read(TaggedBytesMut { now: Instant::now(), transport, message: BytesMut::from(data) });
}

/// Drives `pc` on `socket` until `stop`: datagrams, timers, and `on_tick` every 10 ms.
async fn drive(
    mut pc: RTCPeerConnection,
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    mut on_tick: impl FnMut(&mut RTCPeerConnection, bool),
    mut on_rtp: impl FnMut(&rtc::rtp::Packet),
) {
    let local = socket.local_addr().expect("addr");
    let mut buf = vec![0u8; 2048];
    let mut connected = false;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        let on_event = |e| {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = e {
                connected = s == RTCPeerConnectionState::Connected;
            }
        };
        pump(&mut pc, &socket, on_event, &mut on_rtp).await;
        let wake = pc.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    take_datagram(&mut pc, local, from, &buf[..n]);
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let _ = pc.handle_timeout(Instant::now());
            }
            _ = tick.tick() => on_tick(&mut pc, connected),
        }
    }
    let _ = pc.close();
}

fn track(kind: RtpCodecKind, id: &str, ssrc: u32) -> MediaStreamTrack {
    let codec = if kind == RtpCodecKind::Video { vp8() } else { opus() };
    MediaStreamTrack::new(
        "bench".to_owned(),
        id.to_owned(),
        id.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec,
            active: true,
            ..Default::default()
        }],
    )
}

fn rtp_header(payload_type: u8, sequence_number: u16, timestamp: u32, ssrc: u32, marker: bool) -> rtc::rtp::Header {
    rtc::rtp::Header { version: 2, marker, payload_type, sequence_number, timestamp, ssrc, ..Default::default() }
}

/// Sends one packet on `sender`; false if it was refused.
fn send(
    pc: &mut RTCPeerConnection,
    sender: RTCRtpSenderId,
    header: rtc::rtp::Header,
    payload: Vec<u8>,
    now: Instant,
) -> bool {
    let packet = rtc::rtp::Packet { header, payload: Bytes::from(payload) };
    pc.rtp_sender(sender).is_some_and(|mut s| s.write_rtp(now, packet).is_ok())
}

/// The publisher: video at `kbps` in ~1,100-byte packets (30 frames a second) and 50 audio
/// packets a second, each payload starting with its send time.
async fn publisher(
    server: &Server,
    kbps: u64,
    audio_only: bool,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> (tokio::task::JoinHandle<()>, HangUp, Option<(u64, tokio::sync::mpsc::Receiver<Value>)>) {
    let socket = UdpSocket::bind((server.local_ip, 0)).await.expect("bind");
    let local = socket.local_addr().expect("addr");
    let mut pc = new_pc();
    let video: Option<RTCRtpSenderId> =
        (!audio_only).then(|| pc.add_track(track(RtpCodecKind::Video, "v", 0x1111)).expect("video"));
    let audio: RTCRtpSenderId = pc.add_track(track(RtpCodecKind::Audio, "a", 0x2222)).expect("audio");
    let (hang_up, feed) = match &server.signal {
        Signal::Outpost(s) => {
            let url = format!("{}/v1/rooms/{}/whip", s.base, s.room);
            let location = negotiate(&mut pc, local, &s.http, &url, &s.publisher).await;
            (HangUp::Http { url: format!("{}{location}", s.base), token: s.publisher.clone() }, None)
        }
        Signal::Janus(j) => {
            let (handle, feed, events) = j.publish(server.janus_room, &mut pc, local).await;
            (HangUp::Janus(handle), Some((feed, events)))
        }
    };
    let per_frame = (kbps * 1000 / 8 / 1100 / 30).max(1) as usize;
    let task = tokio::spawn(async move {
        let (mut vseq, mut aseq, mut ticks) = (0u16, 0u16, 0u64);
        let pt = |pc: &mut RTCPeerConnection, s: RTCRtpSenderId| {
            pc.rtp_sender(s).and_then(|mut x| x.get_parameters().rtp_parameters.codecs.first().map(|c| c.payload_type))
        };
        Box::pin(drive(
            pc,
            socket,
            stop,
            move |pc, connected| {
                if !connected {
                    return;
                }
                ticks += 1;
                let now = Instant::now();
                let mut stamp = [0u8; 9];
                stamp[1..].copy_from_slice(&now_us().to_be_bytes());
                if ticks % 2 == 0 {
                    if let Some(p) = pt(pc, audio) {
                        let mut payload = vec![0u8; 80];
                        payload[..9].copy_from_slice(&stamp);
                        let header = rtp_header(p, aseq, (ticks * 480) as u32, 0x2222, false);
                        aseq = aseq.wrapping_add(1);
                        if send(pc, audio, header, payload, now) {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // 30 frames a second: every 3rd or 4th tick.
                if let Some(video) = video
                    && ticks * 30 / 100 != (ticks - 1) * 30 / 100
                {
                    let Some(p) = pt(pc, video) else { return };
                    for i in 0..per_frame {
                        let mut payload = vec![0u8; 1100];
                        payload[..9].copy_from_slice(&stamp);
                        // VP8 payload descriptor: the first packet starts the frame.
                        payload[0] = if i == 0 { 0x10 } else { 0x00 };
                        let header = rtp_header(p, vseq, (ticks * 900) as u32, 0x1111, i + 1 == per_frame);
                        vseq = vseq.wrapping_add(1);
                        if send(pc, video, header, payload, now) {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            },
            |_| {},
        ))
        .await;
    });
    (task, hang_up, feed)
}

/// What the players saw.
#[derive(Default)]
struct Seen {
    packets: AtomicU64,
    measuring: AtomicBool,
    delays_us: std::sync::Mutex<Vec<u64>>,
    joins_ms: std::sync::Mutex<Vec<u64>>,
}

impl Seen {
    /// A received packet: the first one's join time, and while measuring, its count and delay.
    fn record(&self, first: &mut bool, started: Instant, delays: &mut Vec<u64>, p: &rtc::rtp::Packet) {
        if std::mem::take(first) {
            self.joins_ms.lock().expect("lock").push(started.elapsed().as_millis() as u64);
        }
        if self.measuring.load(Ordering::Relaxed) {
            self.packets.fetch_add(1, Ordering::Relaxed);
            if let Some(b) = p.payload.get(1..9) {
                delays.push(now_us().saturating_sub(u64::from_be_bytes(b.try_into().unwrap_or_default())));
            }
        }
    }
}

/// A player: a WHEP connection to Outpost, or a subscriber of `feeds` in Janus.
async fn player(
    server: &Server,
    feeds: &[u64],
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> (tokio::task::JoinHandle<()>, HangUp) {
    let socket = UdpSocket::bind((server.local_ip, 0)).await.expect("bind");
    let local = socket.local_addr().expect("addr");
    let started = Instant::now();
    let (pc, hang_up) = match &server.signal {
        Signal::Outpost(s) => {
            let mut pc = new_pc();
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                };
                pc.add_transceiver_from_kind(kind, Some(init)).expect("transceiver");
            }
            let url = format!("{}/v1/rooms/{}/whep", s.base, s.room);
            let location = negotiate(&mut pc, local, &s.http, &url, &s.player).await;
            (pc, HangUp::Http { url: format!("{}{location}", s.base), token: s.player.clone() })
        }
        Signal::Janus(j) => {
            let (pc, handle) = j.subscribe(server.janus_room, feeds, local).await;
            (pc, HangUp::Janus(handle))
        }
    };
    let task = tokio::spawn(async move {
        let mut first = true;
        let mut delays = Vec::new();
        Box::pin(drive(
            pc,
            socket,
            stop,
            |_, _| {},
            |p| {
                seen.record(&mut first, started, &mut delays, p);
            },
        ))
        .await;
        seen.delays_us.lock().expect("lock").append(&mut delays);
    });
    (task, hang_up)
}

/// A fresh access token for the session `refresh` belongs to (which moves on to the new one).
async fn renewed(http: &reqwest::Client, base: &str, refresh: &mut String) -> Value {
    let pair = http
        .post(format!("{base}/v1/auth/refresh"))
        .json(&json!({ "refresh_token": refresh }))
        .send()
        .await
        .expect("refresh");
    let pair: Value = pair.json().await.expect("refresh json");
    pair["refresh_token"].as_str().expect("refresh token").clone_into(refresh);
    pair["access_token"].clone()
}

/// A call participant that only receives: joins over the realtime socket with a recvonly
/// audio section and answers every offer the relay makes as tracks come.
async fn caller(
    s: &Setup,
    local_ip: IpAddr,
    renew: Duration,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> tokio::task::JoinHandle<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let socket = UdpSocket::bind((local_ip, 0)).await.expect("bind");
    let local = socket.local_addr().expect("addr");
    let mut pc = new_pc();
    let init = RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Recvonly,
        streams: vec![],
        send_encodings: vec![],
    };
    pc.add_transceiver_from_kind(RtpCodecKind::Audio, Some(init)).expect("transceiver");
    add_host_candidate(&mut pc, local);
    let offer = pc.create_offer(None).expect("offer");
    pc.set_local_description(Instant::now(), offer).expect("local");
    let sdp = pc.local_description().expect("sdp").sdp;
    let session: Value = s
        .http
        .post(format!("{}/v1/auth/login", s.base))
        .json(&s.player_login)
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login json");
    let access = session["access_token"].as_str().expect("token");
    let mut req = format!("{}/v1/realtime", s.base.replace("http://", "ws://")).into_client_request().expect("request");
    req.headers_mut()
        .insert("sec-websocket-protocol", format!("outpost.v1, access_token.{access}").parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("realtime socket");
    let started = Instant::now();
    let join = json!({ "op": "call_join", "room": s.room, "sdp": sdp });
    ws.send(Message::text(join.to_string())).await.expect("join");
    let (http, base) = (s.http.clone(), s.base.clone());
    let mut refresh = session["refresh_token"].as_str().expect("refresh token").to_owned();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let (mut first, mut delays) = (true, Vec::new());
        // The call lasts as long as the socket: its token is renewed before it expires (15
        // minutes), as a client does.
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + renew, renew);
        let mut open = true;
        while !stop.load(Ordering::Relaxed) {
            pump(&mut pc, &socket, |_| {}, |p| seen.record(&mut first, started, &mut delays, p)).await;
            let wake = pc.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                r = socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        take_datagram(&mut pc, local, from, &buf[..n]);
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake.min(Instant::now() + Duration::from_millis(50)))) => {
                    let _ = pc.handle_timeout(Instant::now());
                }
                _ = renew.tick() => {
                    let auth = json!({ "op": "auth", "token": renewed(&http, &base, &mut refresh).await });
                    let _ = ws.send(Message::text(auth.to_string())).await;
                }
                frame = ws.next(), if open => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(_)) => continue,
                        // Not polled again once it ended (it would answer at once, for ever).
                        Some(Err(_)) | None => {
                            eprintln!("the call participant's socket ended");
                            open = false;
                            continue;
                        }
                    };
                    let f: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let sdp = f["sdp"].as_str().unwrap_or_default().to_owned();
                    match f["op"].as_str() {
                        Some("call_joined") => {
                            let answer = RTCSessionDescription::answer(sdp).expect("answer");
                            pc.set_remote_description(Instant::now(), answer).expect("remote");
                        }
                        Some("call_offer") => {
                            let offer = RTCSessionDescription::offer(sdp).expect("offer");
                            pc.set_remote_description(Instant::now(), offer).expect("remote offer");
                            let answer = pc.create_answer(None).expect("answer");
                            pc.set_local_description(Instant::now(), answer).expect("local answer");
                            let sdp = pc.local_description().expect("sdp").sdp;
                            let reply = json!({ "op": "call_answer", "connection": f["connection"], "sdp": sdp });
                            let _ = ws.send(Message::text(reply.to_string())).await;
                        }
                        Some("error") => panic!("{f}"),
                        _ => {}
                    }
                }
            }
        }
        let _ = pc.close();
        let _ = ws.close(None).await;
        seen.delays_us.lock().expect("lock").append(&mut delays);
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let signal = match &a.janus {
        Some(url) => Signal::Janus(Janus::connect(url).await),
        None => Signal::Outpost(setup(&a.base, &a.key).await),
    };
    let mut server = Server { signal, local_ip: a.local_ip.parse().expect("--local-ip"), janus_room: 0 };
    let name = if a.janus.is_some() { "janus" } else { "outpost" };
    for &n in &a.subs {
        if let Signal::Janus(j) = &server.signal {
            server.janus_room = now_us() % 1_000_000_000;
            j.create_room(server.janus_room).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Seen::default());
        let (mut tasks, mut hang_ups) = (Vec::new(), Vec::new());
        let audio10 = a.shape == "audio10";
        let mut feeds = Vec::new();
        for _ in 0..if audio10 { 10 } else { 1 } {
            let (task, hang_up, feed) = publisher(&server, a.video_kbps, audio10, stop.clone(), sent.clone()).await;
            tasks.push(task);
            hang_ups.push(hang_up);
            if let Some((feed, events)) = feed {
                Janus::webrtc_up(events).await;
                feeds.push(feed);
            }
        }
        for _ in 0..n {
            match &server.signal {
                Signal::Outpost(s) if audio10 => {
                    tasks.push(caller(s, server.local_ip, a.renew, stop.clone(), seen.clone()).await);
                }
                _ => {
                    let (task, hang_up) = player(&server, &feeds, stop.clone(), seen.clone()).await;
                    tasks.push(task);
                    hang_ups.push(hang_up);
                }
            }
        }
        // Everyone receiving, then a second to settle.
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.joins_ms.lock().expect("lock").len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let joined = seen.joins_ms.lock().expect("lock").len();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (cpu0, sent0) = (cpu_s(a.pid), sent.load(Ordering::Relaxed));
        seen.measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
        seen.measuring.store(false, Ordering::Relaxed);
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = cpu_s(a.pid) - cpu0;
        let sent_n = sent.load(Ordering::Relaxed) - sent0;
        let rss = rss_kb(a.pid);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        // Hang up, as clients do, before the next round.
        for h in hang_ups {
            server.hang_up(h).await;
        }
        let got = seen.packets.load(Ordering::Relaxed);
        let pps = got as f64 / elapsed;
        let expected = sent_n * n as u64;
        let loss = if expected == 0 { 0.0 } else { 1.0 - got as f64 / expected as f64 };
        let mut delays = std::mem::take(&mut *seen.delays_us.lock().expect("lock"));
        let mut joins = std::mem::take(&mut *seen.joins_ms.lock().expect("lock"));
        let busy = cpu / elapsed;
        println!(
            "RESULT server={name} shape={} subs={n} joined={joined} forwarded_pps={pps:.0} per_busy_core_pps={:.0} cpu_cores={busy:.2} cpu_per_sub_pct={:.2} loss_pct={:.2} delay_p50_ms={:.2} delay_p99_ms={:.2} join_p50_ms={} join_p99_ms={} rss_kb={rss}",
            a.shape,
            if busy > 0.0 { pps / busy } else { 0.0 },
            busy * 100.0 / n as f64,
            loss.max(0.0) * 100.0,
            pct(&mut delays, 0.5) as f64 / 1000.0,
            pct(&mut delays, 0.99) as f64 / 1000.0,
            pct(&mut joins, 0.5),
            pct(&mut joins, 0.99),
        );
        // The server lets the connections go before the next round.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
