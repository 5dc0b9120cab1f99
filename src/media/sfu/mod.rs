//! The media relay (SFU): peer connections on one UDP port, tracks published into a room's
//! call and forwarded, without decoding, to the connections that play them.
//!
//! Built on `rtc`, the sans-I/O WebRTC core under the `webrtc` crate, rather than on `webrtc`'s
//! async layer: that layer gives every connection its own sockets, while an SFU wants every
//! connection on one port (`udp`) and one task per connection that owns its state (`peer`).
//! With the core driven directly, the socket, the timers and the fan-out stay ours.
//!
//! The registry here knows, per room, the published tracks and the playing connections'
//! slots; publishing binds free slots of the same kind to the new track, unpublishing moves
//! them to the newest remaining one. A track's subscribers are a list its publisher's task
//! reads per packet (`Outlets`), so forwarding never touches the registry lock.

pub mod peer;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::MediaConfig;
use crate::ids::Id;
use crate::metrics::Metrics;
use peer::{PeerMsg, Source};

/// Messages queued for one connection at most; past it datagrams are dropped like a full
/// network queue would.
const PEER_QUEUE: usize = 2048;

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
}

/// What a connection does in its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sends tracks into the call (WHIP).
    Publish,
    /// Receives the call's tracks (WHEP).
    Play,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Publish => "publish",
            Direction::Play => "play",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

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

/// The answer to an offer: the new connection and the SDP to give back.
pub struct Answer {
    pub session: SessionInfo,
    pub sdp: String,
}

/// A connection that receives a track's packets, and the local sender (slot) they go out on.
#[derive(Clone)]
pub(crate) struct Outlet {
    pub session: Id,
    pub slot: usize,
    pub tx: mpsc::Sender<PeerMsg>,
}

/// A published track's subscribers, read by its publisher's task per packet.
pub(crate) type Outlets = Arc<RwLock<Vec<Outlet>>>;

struct Published {
    source: Arc<Source>,
    session: Id,
    kind: Kind,
    outlets: Outlets,
}

struct Player {
    session: Id,
    tx: mpsc::Sender<PeerMsg>,
    /// Per local sender: its kind and the source it is bound to.
    slots: Vec<(Kind, Option<u64>)>,
}

#[derive(Default)]
struct Call {
    sessions: Vec<Id>,
    /// In publishing order; players bind to the newest of a kind.
    tracks: Vec<Published>,
    players: Vec<Player>,
}

struct Entry {
    info: SessionInfo,
    ufrag: String,
    tx: mpsc::Sender<PeerMsg>,
}

/// State the connections' tasks share with the registry.
pub(crate) struct Shared {
    socket: Arc<UdpSocket>,
    /// The address in our ICE candidate, and the local address of every datagram.
    host: SocketAddr,
    routes: Arc<RwLock<udp::Routes>>,
    calls: Mutex<HashMap<Id, Call>>,
    sessions: Mutex<HashMap<Id, Entry>>,
    next_source: AtomicU64,
    metrics: Arc<Metrics>,
    sessions_max: usize,
    room_sessions_max: usize,
}

/// The running media relay.
#[derive(Clone)]
pub struct Sfu {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    pub async fn start(cfg: &MediaConfig, metrics: Arc<Metrics>) -> Result<Option<Self>, SfuError> {
        let Some(addr) = cfg.rtc_listen else {
            return Ok(None);
        };
        let listen_err = |e: std::io::Error| SfuError::Listen { addr, detail: e.to_string() };
        let socket = Arc::new(UdpSocket::bind(addr).await.map_err(listen_err)?);
        let local = socket.local_addr().map_err(listen_err)?;
        let host = SocketAddr::new(advertised(local, cfg.public_ip), local.port());
        let routes = Arc::new(RwLock::new(udp::Routes::default()));
        tokio::spawn(udp::read_loop(socket.clone(), routes.clone(), metrics.clone()));
        tracing::info!(%local, advertised = %host, "media relay listening (UDP)");
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
            }),
        }))
    }

    /// The address in our ICE candidates.
    pub fn host(&self) -> SocketAddr {
        self.shared.host
    }

    /// Answers `offer` with a new connection in `room`'s call that publishes or plays.
    pub fn open(&self, org: Id, room: Id, user: Id, direction: Direction, offer: &str) -> Result<Answer, SfuError> {
        let sh = &self.shared;
        {
            let sessions = lock(&sh.sessions);
            if sessions.len() >= sh.sessions_max {
                return Err(SfuError::ServerFull(sh.sessions_max));
            }
            let calls = lock(&sh.calls);
            if calls.get(&room).is_some_and(|c| c.sessions.len() >= sh.room_sessions_max) {
                return Err(SfuError::CallFull(sh.room_sessions_max));
            }
        }
        let setup = peer::answer(offer, direction, sh.host)?;
        let info = SessionInfo { id: Id::new(), org, room, user, direction, created_at_ms: crate::ids::now_ms() };
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        {
            let mut sessions = lock(&sh.sessions);
            let mut calls = lock(&sh.calls);
            let call = calls.entry(room).or_default();
            if call.sessions.len() >= sh.room_sessions_max {
                return Err(SfuError::CallFull(sh.room_sessions_max));
            }
            call.sessions.push(info.id);
            if direction == Direction::Play {
                let mut player = Player { session: info.id, tx: tx.clone(), slots: Vec::new() };
                for (slot, kind) in setup.slots.iter().enumerate() {
                    player.slots.push((*kind, None));
                    if let Some(t) = call.tracks.iter().rev().find(|t| t.kind == *kind) {
                        bind(&mut player, slot, t);
                    }
                }
                call.players.push(player);
            }
            sessions.insert(info.id, Entry { info: info.clone(), ufrag: setup.ufrag.clone(), tx: tx.clone() });
        }
        sh.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(setup.ufrag.clone(), udp::Route { session: info.id, tx: tx.clone() });
        sh.metrics.media_sessions.inc();
        let task = peer::Peer::new(sh.clone(), info.clone(), setup.pc, tx);
        tokio::spawn(task.run(rx));
        Ok(Answer { session: info, sdp: setup.sdp })
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

    /// Ends connection `id`; its task tears everything down. False when there is none.
    pub fn close(&self, id: Id) -> bool {
        let tx = lock(&self.shared.sessions).get(&id).map(|e| e.tx.clone());
        match tx {
            Some(tx) => {
                // A full queue still ends: the task also stops when every sender is gone,
                // and the registry entry goes now.
                if tx.try_send(PeerMsg::Close).is_err() {
                    self.shared.ended(id);
                }
                true
            }
            None => false,
        }
    }

    /// Ends every connection in `room` (the room was deleted or archived).
    pub fn close_room(&self, room: Id) {
        let ids = lock(&self.shared.calls).get(&room).map(|c| c.sessions.clone()).unwrap_or_default();
        for id in ids {
            self.close(id);
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

fn bind(player: &mut Player, slot: usize, t: &Published) {
    player.slots[slot].1 = Some(t.source.id);
    t.outlets.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(Outlet {
        session: player.session,
        slot,
        tx: player.tx.clone(),
    });
    let _ = player.tx.try_send(PeerMsg::Attach { slot, source: Some(t.source.clone()) });
}

impl Shared {
    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    pub(crate) fn host(&self) -> SocketAddr {
        self.host
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A new track from `session` in `room`: free player slots of its kind bind to it.
    pub(crate) fn publish(
        &self,
        room: Id,
        session: Id,
        kind: Kind,
        make: impl FnOnce(u64) -> Source,
    ) -> (Arc<Source>, Outlets) {
        let source = Arc::new(make(self.next_source.fetch_add(1, Ordering::Relaxed)));
        let outlets: Outlets = Arc::default();
        let mut calls = lock(&self.calls);
        let call = calls.entry(room).or_default();
        let t = Published { source: source.clone(), session, kind, outlets: outlets.clone() };
        for p in &mut call.players {
            for slot in 0..p.slots.len() {
                if p.slots[slot] == (kind, None) {
                    bind(p, slot, &t);
                }
            }
        }
        call.tracks.push(t);
        self.metrics.media_tracks.inc();
        (source, outlets)
    }

    /// Track `source` is gone: its players move to the newest remaining track of its kind.
    pub(crate) fn unpublish(&self, room: Id, source: u64) {
        let mut calls = lock(&self.calls);
        let Some(call) = calls.get_mut(&room) else { return };
        let Some(at) = call.tracks.iter().position(|t| t.source.id == source) else { return };
        let gone = call.tracks.remove(at);
        self.metrics.media_tracks.dec();
        let Call { tracks, players, .. } = call;
        for p in players.iter_mut() {
            for slot in 0..p.slots.len() {
                if p.slots[slot].1 == Some(source) {
                    p.slots[slot].1 = None;
                    match tracks.iter().rev().find(|t| t.kind == gone.kind) {
                        Some(t) => bind(p, slot, t),
                        None => {
                            let _ = p.tx.try_send(PeerMsg::Attach { slot, source: None });
                        }
                    }
                }
            }
        }
    }

    /// Connection `id` has ended: forget it everywhere.
    pub(crate) fn ended(&self, id: Id) {
        let Some(entry) = lock(&self.sessions).remove(&id) else { return };
        self.metrics.media_sessions.dec();
        self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&entry.ufrag, id);
        let room = entry.info.room;
        let sources: Vec<u64> = {
            let mut calls = lock(&self.calls);
            let Some(call) = calls.get_mut(&room) else { return };
            call.sessions.retain(|s| *s != id);
            call.players.retain(|p| p.session != id);
            for t in &call.tracks {
                t.outlets.write().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|o| o.session != id);
            }
            call.tracks.iter().filter(|t| t.session == id).map(|t| t.source.id).collect()
        };
        for s in sources {
            self.unpublish(room, s);
        }
        let mut calls = lock(&self.calls);
        if calls.get(&room).is_some_and(|c| c.sessions.is_empty()) {
            calls.remove(&room);
        }
    }
}
