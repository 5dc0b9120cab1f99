//! The media relay (SFU): peer connections on one UDP port, tracks published into a room's
//! call and forwarded, without decoding, to the connections that receive them.
//!
//! Built on `rtc`, the sans-I/O WebRTC core under the `webrtc` crate, rather than on `webrtc`'s
//! async layer: that layer gives every connection its own sockets, while an SFU wants every
//! connection on one port (`udp`) and one task per connection that owns its state (`peer`).
//! With the core driven directly, the socket, the timers and the fan-out stay ours.
//!
//! Three kinds of connection share a call. A WHIP connection publishes. A WHEP connection
//! plays: it has fixed slots (one per media section it offered to receive), each bound to the
//! newest published track of its kind from another user: a newer one takes the slot over, and
//! when the bound track ends the slot moves to the newest remaining. A
//! call connection (signaled over the realtime socket) publishes and receives every other
//! connection's tracks, renegotiating as they come and go.
//!
//! A track's receivers are a list its publisher's task reads per packet (`Outlets`), so
//! forwarding never touches the registry lock. The registry also keeps the call's media state
//! (who publishes what, muted, speaking, positions and surfaces) and hands a snapshot to the
//! state sink whenever it changes.

mod feedback;
mod net;
pub mod peer;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::config::MediaConfig;
use crate::ids::Id;
use crate::metrics::Metrics;
use crate::store::Store;
use peer::{PeerMsg, Source};

/// Messages queued for one connection at most; past it datagrams are dropped like a full
/// network queue would.
const PEER_QUEUE: usize = 2048;
/// Tracks one connection may label (`call_update`), at most.
const LABELS_MAX: usize = 32;
/// Client-supplied spatial data per connection, at most (bytes of JSON).
pub const SPATIAL_BYTES_MAX: usize = 4096;
/// The longest trickled candidate line taken.
const CANDIDATE_BYTES_MAX: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("media listen address {addr}: {detail}")]
    Listen { addr: SocketAddr, detail: String },
    /// The offer is not SDP we can answer (400).
    #[error("{0}")]
    InvalidSdp(String),
    /// The room's call has its maximum of connections (409).
    #[error("the call in this room has its maximum of {0} connections")]
    CallFull(usize),
    /// This server has its maximum of connections (503).
    #[error("this server carries its maximum of {0} media connections")]
    ServerFull(usize),
    /// Writing a recording failed (507).
    #[error("recording: {0}")]
    Disk(String),
    /// More tracks than a connection, a call or this server carries (409).
    #[error("{0}")]
    TooManyTracks(String),
    /// A host locked the call (409).
    #[error("the call is locked: nobody new may join")]
    Locked,
    /// The caller may receive but not send (403).
    #[error("{0}")]
    NotPublisher(String),
    /// No such connection of the caller's (404).
    #[error("no such media connection")]
    NoConnection,
    /// The request does not fit the connection's state (409), e.g. an offer while ours waits.
    #[error("{0}")]
    Conflict(String),
}

impl SfuError {
    /// The stable code clients see, by REST and on the realtime socket.
    pub fn code(&self) -> &'static str {
        match self {
            SfuError::InvalidSdp(_) => "invalid_sdp",
            SfuError::CallFull(_) => "call_full",
            SfuError::ServerFull(_) => "media_full",
            SfuError::Locked => "call_locked",
            SfuError::TooManyTracks(_) => "too_many_tracks",
            SfuError::NotPublisher(_) => "forbidden",
            SfuError::NoConnection => "not_found",
            SfuError::Conflict(_) => "media_busy",
            SfuError::Disk(_) => "recording_failed",
            SfuError::Listen { .. } => "internal",
        }
    }
}

/// What a connection does in its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sends tracks into the call (WHIP).
    Publish,
    /// Receives the call's tracks in fixed slots (WHEP).
    Play,
    /// Sends and receives everything, renegotiating (the realtime socket).
    Call,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Publish => "publish",
            Direction::Play => "play",
            Direction::Call => "call",
        }
    }

    fn publishes(self) -> bool {
        matches!(self, Direction::Publish | Direction::Call)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

/// What a connection's owner is told (the realtime socket that signals for it).
#[derive(Clone, Debug)]
pub enum Note {
    /// A new offer from us (tracks came or went): answer it.
    Offer { room: Id, connection: Id, sdp: String },
    /// Our answer to the client's renegotiation offer.
    Answer { room: Id, connection: Id, sdp: String },
    /// The connection ended (`left`, `removed`, `failed`, `room_closed`).
    Ended { room: Id, connection: Id, reason: &'static str },
    /// A moderator muted (or unmuted) one of the connection's tracks.
    Muted { room: Id, connection: Id, track: String, muted: bool, by: Id },
}

/// Where a connection's notes go.
pub type NoteSink = Arc<dyn Fn(Note) + Send + Sync>;

/// Where a call's media state goes when it changes (org, room, state).
pub type StateSink = Arc<dyn Fn(Id, Id, CallState) + Send + Sync>;

/// A connection as the API shows it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: Id,
    pub org: Id,
    pub room: Id,
    pub user: Id,
    pub direction: Direction,
    pub created_at_ms: i64,
}

/// One published track in the media state.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackState {
    /// The source's id in the relay (stable while it is published).
    pub id: u64,
    pub kind: Kind,
    /// e.g. `video/VP8`, `video/H264`, `audio/opus`.
    pub codec: String,
    /// The client's own id for the track (its `MediaStreamTrack.id`).
    pub client_track: String,
    /// `mic`, `camera`, `screen` or `unknown`, as the client says.
    pub source: String,
    /// The publisher says it is muted.
    pub muted: bool,
    /// A moderator stopped its forwarding.
    pub muted_by_moderator: bool,
}

/// One connection in the media state.
#[derive(Clone, Debug, PartialEq)]
pub struct ParticipantState {
    pub connection: Id,
    pub user: Id,
    pub direction: Direction,
    pub tracks: Vec<TrackState>,
    /// Its audio is loud enough to count as speaking (from the audio level header extension).
    pub speaking: bool,
    /// Client-supplied position/orientation and screen-share surfaces (size-capped JSON).
    pub spatial: serde_json::Value,
}

/// A call's media state.
#[derive(Clone, Debug, PartialEq)]
pub struct CallState {
    pub participants: Vec<ParticipantState>,
    /// The connection speaking now, if anyone is.
    pub active_speaker: Option<Id>,
    pub locked: bool,
    /// A recording of the call is running (everyone in it should know).
    pub recording: Option<Id>,
}

/// The answer to an offer: the new connection and the SDP to give back.
pub struct Answer {
    pub session: SessionInfo,
    pub sdp: String,
}

/// A connection that receives a track's packets.
#[derive(Clone)]
pub(crate) struct Outlet {
    pub session: Id,
    pub tx: mpsc::Sender<PeerMsg>,
}

/// A published track's receivers, read by its publisher's task per packet.
pub(crate) type Outlets = Arc<RwLock<Vec<Outlet>>>;

struct Published {
    source: Arc<Source>,
    session: Id,
    user: Id,
    outlets: Outlets,
    state: TrackState,
}

enum Receiving {
    /// WHEP: fixed slots, each with its kind and the source it is bound to.
    Slots(Vec<(Kind, Option<u64>)>),
    /// A call connection: every other connection's tracks.
    All,
}

struct Player {
    session: Id,
    tx: mpsc::Sender<PeerMsg>,
    receiving: Receiving,
}

#[derive(Default)]
struct Call {
    org: Option<Id>,
    sessions: Vec<Id>,
    /// In publishing order; WHEP slots bind to the newest of a kind.
    tracks: Vec<Published>,
    players: Vec<Player>,
    locked: bool,
    /// Per connection: audio level and spatial data.
    levels: HashMap<Id, u8>,
    spatial: HashMap<Id, serde_json::Value>,
    /// Client-declared track labels before the track shows up: (connection, client track) →
    /// (source, muted).
    labels: HashMap<(Id, String), (String, bool)>,
    /// Moderator mutes by (connection, client track), kept across renegotiation.
    moderator_muted: HashMap<(Id, String), Id>,
    last_state: Option<CallState>,
    /// The running recording: its id, its queue, its thread.
    recorder: Option<Recorder>,
}

struct Recorder {
    id: Id,
    tx: mpsc::Sender<PeerMsg>,
    thread: std::thread::JoinHandle<record::Recording>,
}

struct Entry {
    info: SessionInfo,
    ufrag: String,
    tx: mpsc::Sender<PeerMsg>,
}

/// State the connections' tasks share with the registry.
pub(crate) struct Shared {
    socket: Arc<tokio::net::UdpSocket>,
    /// The address in our ICE candidate, and the local address of every datagram.
    host: SocketAddr,
    routes: Arc<RwLock<net::Routes>>,
    calls: Mutex<HashMap<Id, Call>>,
    sessions: Mutex<HashMap<Id, Entry>>,
    next_source: AtomicU64,
    metrics: Arc<Metrics>,
    sessions_max: usize,
    room_sessions_max: usize,
    tracks_max: usize,
    room_tracks_max: usize,
    connection_tracks_max: usize,
    state_sink: RwLock<Option<StateSink>>,
    /// Where recordings go: `<data dir>/recordings`.
    recordings: std::path::PathBuf,
    /// ICE over TCP is listening on the media port.
    tcp: bool,
    tcp_conns: net::TcpConns,
}

/// The running media relay.
#[derive(Clone)]
pub struct Sfu {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The address to advertise when listening on `listen`: the configured public address, the
/// listen address, or for an unspecified one the address this host reaches others from.
fn advertised(listen: SocketAddr, public: Option<IpAddr>) -> IpAddr {
    if let Some(ip) = public {
        return ip;
    }
    if !listen.ip().is_unspecified() {
        return listen.ip();
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel for a route.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip())
}

impl Sfu {
    /// Binds the media port and starts reading it; `None` when `media.rtc_listen` is unset.
    pub async fn start(
        cfg: &MediaConfig,
        recordings: std::path::PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, SfuError> {
        let Some(addr) = cfg.rtc_listen else {
            return Ok(None);
        };
        let listen_err = |e: std::io::Error| SfuError::Listen { addr, detail: e.to_string() };
        let (socket, tcp_listener) = super::bind_udp_and_tcp(addr, cfg.rtc_tcp).await.map_err(listen_err)?;
        let local = socket.local_addr().map_err(listen_err)?;
        // A port taken for TCP by something else costs the fallback, not the relay.
        let tcp_listener = tcp_listener.and_then(|l| {
            l.inspect_err(|e| tracing::warn!(%local, error = %e, "no ICE over TCP: the media port is taken for TCP"))
                .ok()
        });
        let socket = Arc::new(socket);
        let host = SocketAddr::new(advertised(local, cfg.public_ip), local.port());
        let routes = Arc::new(RwLock::new(net::Routes::default()));
        tokio::spawn(net::read_loop(socket.clone(), routes.clone(), metrics.clone()));
        tracing::info!(%local, advertised = %host, "media relay listening (UDP)");
        let tcp_conns = net::TcpConns::default();
        let tcp = match tcp_listener {
            Some(l) => {
                let conns = tcp_conns.clone();
                tokio::spawn(net::tcp_accept_loop(l, routes.clone(), conns, metrics.clone(), cfg.sessions_max));
                tracing::info!(%local, "media relay listening (ICE over TCP)");
                true
            }
            None => false,
        };
        Ok(Some(Self {
            shared: Arc::new(Shared {
                socket,
                host,
                routes,
                calls: Mutex::default(),
                sessions: Mutex::default(),
                next_source: AtomicU64::new(1),
                metrics,
                sessions_max: cfg.sessions_max,
                room_sessions_max: cfg.room_sessions_max,
                tracks_max: cfg.tracks_max,
                room_tracks_max: cfg.room_tracks_max,
                connection_tracks_max: cfg.connection_tracks_max,
                state_sink: RwLock::default(),
                recordings,
                tcp,
                tcp_conns,
            }),
        }))
    }

    /// Where calls' media state goes from now on.
    pub fn set_state_sink(&self, sink: StateSink) {
        *write(&self.shared.state_sink) = Some(sink);
    }

    /// The address in our ICE candidates.
    pub fn host(&self) -> SocketAddr {
        self.shared.host
    }

    /// Answers `offer` with a new connection in `room`'s call. `may_publish` false refuses an
    /// offer that sends (a viewer's); `notes` (call connections) hears offers and endings.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        org: Id,
        room: Id,
        user: Id,
        direction: Direction,
        offer: &str,
        may_publish: bool,
        notes: Option<NoteSink>,
    ) -> Result<Answer, SfuError> {
        let sh = &self.shared;
        {
            let sessions = lock(&sh.sessions);
            if sessions.len() >= sh.sessions_max {
                return Err(SfuError::ServerFull(sh.sessions_max));
            }
            let calls = lock(&sh.calls);
            if let Some(c) = calls.get(&room) {
                if c.locked {
                    return Err(SfuError::Locked);
                }
                if c.sessions.len() >= sh.room_sessions_max {
                    return Err(SfuError::CallFull(sh.room_sessions_max));
                }
            }
        }
        // Tracks this offer would add, against the call's and the server's caps.
        let adding = peer::sections(offer).iter().filter(|(_, sends, _)| *sends).count();
        if direction != Direction::Play {
            let in_room = lock(&sh.calls).get(&room).map_or(0, |c| c.tracks.len());
            let total = usize::try_from(sh.metrics.media_tracks.get()).unwrap_or(0);
            if in_room + adding > sh.room_tracks_max {
                return Err(SfuError::TooManyTracks(format!("the call carries at most {} tracks", sh.room_tracks_max)));
            }
            if total + adding > sh.tracks_max {
                return Err(SfuError::TooManyTracks(format!("this server carries at most {} tracks", sh.tracks_max)));
            }
        }
        let setup = peer::answer(offer, direction, sh.host, sh.tcp, may_publish, sh.connection_tracks_max)?;
        let info = SessionInfo { id: Id::new(), org, room, user, direction, created_at_ms: crate::ids::now_ms() };
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        {
            let mut sessions = lock(&sh.sessions);
            let mut calls = lock(&sh.calls);
            let call = calls.entry(room).or_default();
            call.org = Some(org);
            if call.locked {
                return Err(SfuError::Locked);
            }
            if call.sessions.len() >= sh.room_sessions_max {
                return Err(SfuError::CallFull(sh.room_sessions_max));
            }
            call.sessions.push(info.id);
            match direction {
                Direction::Play => {
                    let mut player = Player {
                        session: info.id,
                        tx: tx.clone(),
                        receiving: Receiving::Slots(setup.slots.iter().map(|k| (*k, None)).collect()),
                    };
                    for slot in 0..setup.slots.len() {
                        let kind = setup.slots[slot];
                        // A WHEP session plays every track of the call, its own user's too (a
                        // streamer monitors their own stream that way): it publishes none itself.
                        if let Some(t) = call.tracks.iter().rev().find(|t| t.state.kind == kind && t.session != info.id)
                        {
                            bind_slot(&mut player, slot, t);
                        }
                    }
                    call.players.push(player);
                }
                Direction::Call => {
                    let player = Player { session: info.id, tx: tx.clone(), receiving: Receiving::All };
                    for t in &call.tracks {
                        add_outlet(&player, t);
                    }
                    call.players.push(player);
                }
                Direction::Publish => {}
            }
            sessions.insert(info.id, Entry { info: info.clone(), ufrag: setup.ufrag.clone(), tx: tx.clone() });
        }
        write(&sh.routes).add(setup.ufrag.clone(), net::Route { session: info.id, tx: tx.clone() });
        sh.metrics.media_sessions.inc();
        let sdp = setup.sdp.clone();
        let task = peer::Peer::new(sh.clone(), info.clone(), setup, tx, notes);
        tokio::spawn(task.run(rx));
        sh.state_changed(room);
        Ok(Answer { session: info, sdp })
    }

    /// The connection `id` of organization `org`.
    pub fn session(&self, org: Id, id: Id) -> Option<SessionInfo> {
        lock(&self.shared.sessions).get(&id).filter(|e| e.info.org == org).map(|e| e.info.clone())
    }

    /// The connections in `room`'s call.
    pub fn sessions_in(&self, org: Id, room: Id) -> Vec<SessionInfo> {
        let sessions = lock(&self.shared.sessions);
        let mut v: Vec<SessionInfo> =
            sessions.values().filter(|e| e.info.org == org && e.info.room == room).map(|e| e.info.clone()).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Hands connection `id` a message from its owner.
    fn send(&self, id: Id, msg: PeerMsg) -> Result<(), SfuError> {
        let tx = lock(&self.shared.sessions).get(&id).map(|e| e.tx.clone()).ok_or(SfuError::NoConnection)?;
        tx.try_send(msg).map_err(|_| SfuError::Conflict("the connection is busy; try again".into()))
    }

    /// The client's answer to our offer.
    pub fn client_answer(&self, id: Id, sdp: String) -> Result<(), SfuError> {
        self.send(id, PeerMsg::ClientSdp { offer: false, sdp })
    }

    /// A renegotiation offer from the client (it adds or removes tracks); the answer comes as a
    /// note.
    pub fn client_offer(&self, id: Id, sdp: String) -> Result<(), SfuError> {
        self.send(id, PeerMsg::ClientSdp { offer: true, sdp })
    }

    /// A candidate the client trickled (`candidate:…`, or empty at the end of gathering).
    pub fn client_candidate(&self, id: Id, candidate: String) -> Result<(), SfuError> {
        let value = candidate.strip_prefix("candidate:").unwrap_or(&candidate);
        if value.is_empty() {
            return Ok(());
        }
        if candidate.len() > CANDIDATE_BYTES_MAX || rtc::ice::candidate::unmarshal_candidate(value).is_err() {
            return Err(SfuError::InvalidSdp("not an ICE candidate line".into()));
        }
        self.send(id, PeerMsg::Candidate(candidate))
    }

    /// The client's labels and mute flags for its tracks, and its spatial data.
    pub fn update(
        &self,
        id: Id,
        tracks: Vec<(String, Option<String>, Option<bool>)>,
        spatial: Option<serde_json::Value>,
        quality: Option<peer::Quality>,
    ) -> Result<(), SfuError> {
        if let Some(q) = quality {
            self.send(id, PeerMsg::Quality(q))?;
        }
        let room = {
            let sessions = lock(&self.shared.sessions);
            sessions.get(&id).map(|e| e.info.room).ok_or(SfuError::NoConnection)?
        };
        {
            let mut calls = lock(&self.shared.calls);
            let call = calls.get_mut(&room).ok_or(SfuError::NoConnection)?;
            for (client_track, source, muted) in tracks {
                let key = (id, client_track.clone());
                if !call.labels.contains_key(&key) && call.labels.keys().filter(|(s, _)| *s == id).count() >= LABELS_MAX
                {
                    return Err(SfuError::TooManyTracks(format!("a connection labels at most {LABELS_MAX} tracks")));
                }
                let label = call.labels.entry(key).or_insert(("unknown".into(), false));
                if let Some(s) = source {
                    label.0 = s;
                }
                if let Some(m) = muted {
                    label.1 = m;
                }
                let label = label.clone();
                for t in call.tracks.iter_mut().filter(|t| t.session == id && t.state.client_track == client_track) {
                    (t.state.source, t.state.muted) = label.clone();
                }
            }
            if let Some(s) = spatial {
                call.spatial.insert(id, s);
            }
        }
        self.shared.state_changed(room);
        Ok(())
    }

    /// The video quality connection `id` wants for particular tracks; `None` pauses one.
    pub fn track_quality(&self, id: Id, list: Vec<(u64, Option<peer::Quality>)>) -> Result<(), SfuError> {
        self.send(id, PeerMsg::TrackQuality(list))
    }

    /// Ends connection `id` (its task tears everything down); false when there is none.
    pub fn close(&self, id: Id, reason: &'static str) -> bool {
        let tx = lock(&self.shared.sessions).get(&id).map(|e| e.tx.clone());
        match tx {
            Some(tx) => {
                // A full queue still ends: the registry entry goes now, and the task stops
                // when it finds itself forgotten.
                if tx.try_send(PeerMsg::Close(reason)).is_err() {
                    self.shared.ended(id);
                }
                true
            }
            None => false,
        }
    }

    /// Ends every connection of `user` in `room` (they left or were removed).
    pub fn close_user(&self, room: Id, user: Id, reason: &'static str) -> usize {
        let ids: Vec<Id> = lock(&self.shared.sessions)
            .values()
            .filter(|e| e.info.room == room && e.info.user == user)
            .map(|e| e.info.id)
            .collect();
        for id in &ids {
            self.close(*id, reason);
        }
        ids.len()
    }

    /// Ends every connection in `room` (the room was deleted or archived).
    pub fn close_room(&self, room: Id) {
        let ids = lock(&self.shared.calls).get(&room).map(|c| c.sessions.clone()).unwrap_or_default();
        for id in ids {
            self.close(id, "room_closed");
        }
    }

    /// Locks (or unlocks) the call in `room`: nobody new joins while it is locked.
    pub fn set_locked(&self, room: Id, org: Id, locked: bool) {
        {
            let mut calls = lock(&self.shared.calls);
            let call = calls.entry(room).or_default();
            call.org = Some(org);
            call.locked = locked;
        }
        self.shared.state_changed(room);
    }

    /// Mutes (stops forwarding) or unmutes `user`'s tracks of `source` (`mic`, `camera`,
    /// `screen`; `None`: all) in `room`. Returns the tracks changed.
    pub fn moderate(&self, room: Id, user: Id, source: Option<&str>, muted: bool, by: Id) -> usize {
        let mut changed = Vec::new();
        {
            let mut calls = lock(&self.shared.calls);
            let Some(call) = calls.get_mut(&room) else { return 0 };
            for t in &mut call.tracks {
                if t.user != user || source.is_some_and(|s| s != t.state.source) {
                    continue;
                }
                if t.state.muted_by_moderator != muted {
                    t.state.muted_by_moderator = muted;
                    t.source.set_suspended(muted);
                    changed.push((t.session, t.state.client_track.clone()));
                }
            }
            for (session, track) in &changed {
                if muted {
                    call.moderator_muted.insert((*session, track.clone()), by);
                } else {
                    call.moderator_muted.remove(&(*session, track.clone()));
                }
            }
        }
        for (session, track) in &changed {
            let _ = self.send(*session, PeerMsg::Moderated { track: track.clone(), muted, by });
        }
        if !changed.is_empty() {
            self.shared.state_changed(room);
        }
        changed.len()
    }

    /// Where recordings are kept.
    pub fn recordings_dir(&self) -> &std::path::Path {
        &self.shared.recordings
    }

    /// Starts recording `room`'s call (audio, and video when `video`): what is published now
    /// and whatever is published until it stops.
    pub fn start_recording(&self, org: Id, room: Id, by: Id, video: bool) -> Result<record::Recording, SfuError> {
        let sh = &self.shared;
        let rec = record::Recording {
            id: Id::new(),
            org,
            room,
            started_by: by,
            video,
            started_at_ms: crate::ids::now_ms(),
            ended_at_ms: None,
            status: "recording".into(),
            files: Vec::new(),
        };
        let (tx, rx) = mpsc::channel(PEER_QUEUE * 4);
        {
            let mut calls = lock(&sh.calls);
            let call = calls.entry(room).or_default();
            if let Some(r) = &call.recorder {
                return Err(SfuError::Conflict(format!("the call is being recorded already ({})", r.id)));
            }
            record::save(&sh.recordings, &rec).map_err(|e| SfuError::Disk(e.to_string()))?;
            call.org = Some(org);
            let player = Player { session: rec.id, tx: tx.clone(), receiving: Receiving::All };
            for t in &call.tracks {
                add_outlet(&player, t);
            }
            call.players.push(player);
            let root = sh.recordings.clone();
            let started = rec.clone();
            let thread = std::thread::Builder::new()
                .name("outpost-recorder".into())
                .spawn(move || record::run(&root, started, rx))
                .map_err(|e| SfuError::Disk(e.to_string()))?;
            call.recorder = Some(Recorder { id: rec.id, tx, thread });
        }
        sh.state_changed(room);
        Ok(rec)
    }

    /// Stops recording `id` in `room` and returns its final metadata (`None`: it is not
    /// running).
    pub async fn stop_recording(&self, room: Id, id: Id) -> Option<record::Recording> {
        let recorder = {
            let mut calls = lock(&self.shared.calls);
            let call = calls.get_mut(&room)?;
            if call.recorder.as_ref().is_none_or(|r| r.id != id) {
                return None;
            }
            call.players.retain(|p| p.session != id);
            for t in &call.tracks {
                write(&t.outlets).retain(|o| o.session != id);
            }
            call.recorder.take()?
        };
        let Recorder { tx, thread, .. } = recorder;
        // Whatever is queued is written first; then the files close.
        let _ = tx.send(PeerMsg::Close("stopped")).await;
        drop(tx);
        let done = tokio::task::spawn_blocking(move || thread.join().ok()).await.ok().flatten();
        self.shared.state_changed(room);
        done
    }

    /// The media state of `room`'s call.
    pub fn state(&self, room: Id) -> CallState {
        self.shared.snapshot(room)
    }

    /// Ends calls as rooms change: whoever leaves or is removed from a room leaves its call;
    /// an archived or deleted room's call ends, and its recording with it. Runs until the bus
    /// closes; whatever the bus drops for being behind is read back from the log.
    pub async fn follow_rooms(self, bus: crate::store::events::BusReceiver, store: Store, from_gseq: u64) {
        let this = &self;
        crate::store::events::follow(bus, store, from_gseq, "media relay", |e| async move {
            this.on_room_event(&e).await;
        })
        .await;
    }

    async fn on_room_event(&self, e: &crate::store::events::Event) {
        let Some(room) = e.topic.strip_prefix("room:").and_then(|r| r.parse::<Id>().ok()) else { return };
        match e.kind.as_str() {
            "participant.left" | "participant.kicked" => {
                if let Some(user) = e.data["user"].as_str().and_then(|u| u.parse().ok()) {
                    let reason = if e.kind == "participant.left" { "left" } else { "removed" };
                    self.close_user(room, user, reason);
                }
            }
            "room.archived" | "room.deleted" => {
                self.close_room(room);
                // A recording ends with its call: its files close and it says so.
                if let Some(id) = self.state(room).recording {
                    self.stop_recording(room, id).await;
                }
            }
            _ => {}
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        lock(&self.shared.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn bind_slot(player: &mut Player, slot: usize, t: &Published) {
    let Receiving::Slots(slots) = &mut player.receiving else { return };
    slots[slot].1 = Some(t.source.id);
    add_outlet(player, t);
    let _ = player.tx.try_send(PeerMsg::Attach { slot, source: Some(t.source.clone()) });
}

fn add_outlet(player: &Player, t: &Published) {
    if t.session == player.session {
        return;
    }
    write(&t.outlets).push(Outlet { session: player.session, tx: player.tx.clone() });
    if matches!(player.receiving, Receiving::All) {
        let _ = player.tx.try_send(PeerMsg::AddSource(t.source.clone()));
    }
}

impl Shared {
    pub(crate) fn socket(&self) -> &tokio::net::UdpSocket {
        &self.socket
    }

    pub(crate) fn host(&self) -> SocketAddr {
        self.host
    }

    /// Sends `frame` on the ICE-TCP connection from `to`, if there is one (dropped if its
    /// queue is full, as a datagram would be).
    pub(crate) fn send_tcp(&self, to: SocketAddr, frame: bytes::Bytes) {
        let tx = self.tcp_conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&to).cloned();
        if let Some(tx) = tx
            && tx.try_send(frame).is_err()
        {
            self.metrics.media_datagrams_dropped.inc();
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A new track from `session` in `room`: WHEP slots of its kind that are free bind to it,
    /// call connections add it.
    pub(crate) fn publish(
        &self,
        room: Id,
        session: Id,
        kind: Kind,
        client_track: &str,
        make: impl FnOnce(u64) -> Source,
    ) -> (Arc<Source>, Outlets) {
        let source = Arc::new(make(self.next_source.fetch_add(1, Ordering::Relaxed)));
        let outlets: Outlets = Arc::default();
        // Sessions before calls, the order `open` takes them in.
        let user = lock(&self.sessions).get(&session).map(|e| e.info.user).unwrap_or_default();
        {
            let mut calls = lock(&self.calls);
            let call = calls.entry(room).or_default();
            let (label, muted) =
                call.labels.get(&(session, client_track.to_owned())).cloned().unwrap_or(("unknown".into(), false));
            let moderated = call.moderator_muted.contains_key(&(session, client_track.to_owned()));
            source.set_suspended(moderated);
            let t = Published {
                source: source.clone(),
                session,
                user,
                outlets: outlets.clone(),
                state: TrackState {
                    id: source.id,
                    kind,
                    codec: source.mime.clone(),
                    client_track: client_track.to_owned(),
                    source: label,
                    muted,
                    muted_by_moderator: moderated,
                },
            };
            for p in &mut call.players {
                match &p.receiving {
                    Receiving::Slots(slots) => {
                        if p.session == session {
                            continue;
                        }
                        // The newest track of a kind plays: a bound slot moves over too.
                        if let Some(slot) = slots.iter().position(|s| s.0 == kind) {
                            if let Some(old) = slots[slot].1
                                && let Some(o) = call.tracks.iter().find(|x| x.source.id == old)
                            {
                                write(&o.outlets).retain(|x| x.session != p.session);
                            }
                            bind_slot(p, slot, &t);
                        }
                    }
                    Receiving::All => add_outlet(p, &t),
                }
            }
            call.tracks.push(t);
        }
        self.metrics.media_tracks.inc();
        self.state_changed(room);
        (source, outlets)
    }

    /// Track `source` is gone: its WHEP slots move to the newest remaining track of its kind,
    /// call connections drop it.
    pub(crate) fn unpublish(&self, room: Id, source: u64) {
        {
            let mut calls = lock(&self.calls);
            let Some(call) = calls.get_mut(&room) else { return };
            let Some(at) = call.tracks.iter().position(|t| t.source.id == source) else { return };
            let gone = call.tracks.remove(at);
            self.metrics.media_tracks.dec();
            let Call { tracks, players, .. } = call;
            for p in players.iter_mut() {
                let bound: Vec<usize> = match &mut p.receiving {
                    Receiving::Slots(slots) => slots
                        .iter_mut()
                        .enumerate()
                        .filter(|(_, s)| s.1 == Some(source))
                        .map(|(i, s)| {
                            s.1 = None;
                            i
                        })
                        .collect(),
                    Receiving::All => {
                        if p.session != gone.session {
                            let _ = p.tx.try_send(PeerMsg::RemoveSource(source));
                        }
                        Vec::new()
                    }
                };
                for slot in bound {
                    match tracks.iter().rev().find(|t| t.state.kind == gone.state.kind && t.session != p.session) {
                        Some(t) => bind_slot(p, slot, t),
                        None => {
                            let _ = p.tx.try_send(PeerMsg::Attach { slot, source: None });
                        }
                    }
                }
            }
        }
        self.state_changed(room);
    }

    /// Connection `id` has ended: forget it everywhere.
    pub(crate) fn ended(&self, id: Id) {
        let Some(entry) = lock(&self.sessions).remove(&id) else { return };
        self.metrics.media_sessions.dec();
        write(&self.routes).remove(&entry.ufrag, id);
        let room = entry.info.room;
        let sources: Vec<u64> = {
            let mut calls = lock(&self.calls);
            let Some(call) = calls.get_mut(&room) else { return };
            call.sessions.retain(|s| *s != id);
            call.players.retain(|p| p.session != id);
            call.levels.remove(&id);
            call.spatial.remove(&id);
            call.labels.retain(|(s, _), _| *s != id);
            call.moderator_muted.retain(|(s, _), _| *s != id);
            for t in &call.tracks {
                write(&t.outlets).retain(|o| o.session != id);
            }
            call.tracks.iter().filter(|t| t.session == id).map(|t| t.source.id).collect()
        };
        for s in sources {
            self.unpublish(room, s);
        }
        {
            let mut calls = lock(&self.calls);
            if calls.get(&room).is_some_and(|c| c.sessions.is_empty() && !c.locked && c.recorder.is_none()) {
                calls.remove(&room);
            }
        }
        self.state_changed(room);
    }

    /// A publisher's loudest recent audio level (0–127); the state goes out when the active
    /// speaker changes.
    pub(crate) fn audio_level(&self, room: Id, session: Id, level: u8) {
        let changed = {
            let mut calls = lock(&self.calls);
            let Some(call) = calls.get_mut(&room) else { return };
            let before = speaker(&call.levels);
            call.levels.insert(session, level);
            speaker(&call.levels) != before
        };
        if changed {
            self.state_changed(room);
        }
    }

    fn snapshot(&self, room: Id) -> CallState {
        let sessions: Vec<SessionInfo> = {
            let s = lock(&self.sessions);
            s.values().filter(|e| e.info.room == room).map(|e| e.info.clone()).collect()
        };
        let calls = lock(&self.calls);
        let Some(call) = calls.get(&room) else {
            return CallState { participants: Vec::new(), active_speaker: None, locked: false, recording: None };
        };
        let mut by_id: BTreeMap<Id, ParticipantState> = BTreeMap::new();
        for s in sessions {
            by_id.insert(
                s.id,
                ParticipantState {
                    connection: s.id,
                    user: s.user,
                    direction: s.direction,
                    tracks: Vec::new(),
                    speaking: call.levels.get(&s.id).is_some_and(|l| *l >= SPEAKING),
                    spatial: call.spatial.get(&s.id).cloned().unwrap_or(serde_json::Value::Null),
                },
            );
        }
        for t in &call.tracks {
            if let Some(p) = by_id.get_mut(&t.session) {
                p.tracks.push(t.state.clone());
            }
        }
        CallState {
            participants: by_id.into_values().collect(),
            active_speaker: speaker(&call.levels),
            locked: call.locked,
            recording: call.recorder.as_ref().map(|r| r.id),
        }
    }

    /// Hands the call's state to the sink if it changed.
    pub(crate) fn state_changed(&self, room: Id) {
        let state = self.snapshot(room);
        let org = {
            let mut calls = lock(&self.calls);
            let org = calls.get(&room).and_then(|c| c.org);
            if let Some(c) = calls.get_mut(&room) {
                if c.last_state.as_ref() == Some(&state) {
                    return;
                }
                c.last_state = Some(state.clone());
            }
            org
        };
        let sink = self.state_sink.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let (Some(sink), Some(org)) = (sink, org) {
            sink(org, room, state);
        }
    }
}

/// The audio level (0–127, louder higher; 127 minus the -dBov of RFC 6464) that counts as
/// speaking: about -40 dBov, above room noise and below a voice.
const SPEAKING: u8 = 87;

/// The connection speaking: the loudest at or above `SPEAKING`.
fn speaker(levels: &HashMap<Id, u8>) -> Option<Id> {
    levels
        .iter()
        .filter(|(_, l)| **l >= SPEAKING)
        .max_by_key(|(id, l)| (**l, std::cmp::Reverse(**id)))
        .map(|(id, _)| *id)
}
