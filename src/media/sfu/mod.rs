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
//! newest published track of its kind (any but its own session's): a newer one takes the slot over, and
//! when the bound track ends the slot moves to the newest remaining. A
//! call connection (signaled over the realtime socket) publishes and receives every other
//! connection's tracks, renegotiating as they come and go.
//!
//! A track's receivers are a list its publisher's task reads per packet (`Outlets`), so
//! forwarding never touches the registry lock. The registry also keeps the call's media state
//! (who publishes what, muted, speaking, positions and surfaces) and hands a snapshot to the
//! state sink whenever it changes.

mod feedback;
pub mod keyframe;
mod model;
pub mod net;
pub mod peer;
pub mod record;
mod rewrite;
mod routing;
pub mod sdp;
pub mod simulcast;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::config::MediaConfig;
use crate::ids::Id;
use crate::metrics::Metrics;
use crate::store::Store;
use peer::{Outlets, PeerMsg, Source};
use routing::{add_outlet, bind_slot};

pub use sdp::host_candidate;

pub use model::{
    Answer, CallState, Direction, Kind, Note, NoteSink, ParticipantState, SessionInfo, SfuError, StateSink, TrackState,
};

/// Messages queued for one connection at most; past it datagrams are dropped like a full
/// network queue would.
const PEER_QUEUE: usize = 2048;
/// Tracks one connection may label (`call_update`), at most.
const LABELS_MAX: usize = 32;
/// Client-supplied spatial data per connection, at most (bytes of JSON).
pub const SPATIAL_BYTES_MAX: usize = 4096;
/// The longest trickled candidate line taken.
const CANDIDATE_BYTES_MAX: usize = 512;

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
        let adding = sdp::sections(offer).iter().filter(|(_, sends, _)| *sends).count();
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
        let setup = sdp::answer(offer, direction, sh.host, sh.tcp, may_publish, sh.connection_tracks_max)?;
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
        quality: Option<simulcast::Quality>,
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
    pub fn track_quality(&self, id: Id, list: Vec<(u64, Option<simulcast::Quality>)>) -> Result<(), SfuError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_the_public_one_then_the_listen_one() {
        let public: IpAddr = "203.0.113.7".parse().expect("an address");
        let listen: SocketAddr = "127.0.0.1:3478".parse().expect("an address");
        assert_eq!(advertised(listen, Some(public)), public);
        assert_eq!(advertised(listen, None), listen.ip());
        // Listening everywhere: an address of this host, never the unspecified one.
        let any: SocketAddr = "0.0.0.0:3478".parse().expect("an address");
        assert!(!advertised(any, None).is_unspecified());
    }
}
