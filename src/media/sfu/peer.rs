//! One peer connection: the offer/answer, then a task that owns the sans-I/O `rtc` connection
//! and feeds it datagrams, timers and forwarded packets.
//!
//! A publishing connection hands each packet of a track to that track's outlets (the
//! connections receiving it), unless a moderator suspended the track. A receiving connection
//! has local senders (slots): a WHEP connection one per media section it offered to receive,
//! each bound to at most one published track at a time; a call connection one per other
//! connection's track, added and removed by renegotiating (we offer, the client answers; the
//! server is the impolite side when offers cross, so the client rolls its own back). A slot
//! rewrites what it forwards — SSRC, payload type, header extension ids, and sequence numbers
//! and timestamps across a switch of source — so the receiver sees one continuous stream.
//! Keyframe requests (PLI, FIR) from a receiver go to the publisher, at most one per track
//! every `KEYFRAME_GAP`. Audio levels (RFC 6464 header extension) feed the active speaker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::sdp::extmap::{SDES_MID_URI, SDES_REPAIR_RTP_STREAM_ID_URI, SDES_RTP_STREAM_ID_URI, TRANSPORT_CC_URI};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::mpsc;

use super::{Direction, Kind, Note, NoteSink, SessionInfo, Shared};

use super::keyframe::{KeyframeRequests, keyframe_start};
use super::rewrite::{self, Rewrite};
use super::sdp::{AUDIO_LEVEL_URI, Setup, local_track, sections, slot_track};
use super::simulcast::{self, Quality};
/// A connection that has not connected by then is given up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
/// A connection that loses its client (ICE disconnected) and does not get it back by then is
/// ended, so its tracks stop holding the call's players.
const RECONNECT_GRACE: Duration = Duration::from_secs(10);
/// Queued messages handled before the connection's output is flushed.
const BATCH: usize = 64;
/// How often a publisher reports its loudest recent audio level.
const LEVEL_WINDOW: Duration = Duration::from_millis(300);
/// Trickled candidates taken per connection.
const REMOTE_CANDIDATES_MAX: usize = 32;

/// What a connection's task is sent.
pub enum PeerMsg {
    /// A datagram from the shared socket, or a frame from an ICE-TCP connection (`tcp`).
    Datagram { data: BytesMut, from: SocketAddr, at: Instant, tcp: bool },
    /// A packet of published track `source`, of its simulcast layer `layer` (0 when it has
    /// one).
    Rtp { source: u64, layer: u8, packet: rtc::rtp::Packet },
    /// Bind WHEP slot `slot` to a published track, or unbind it.
    Attach { slot: usize, source: Option<Arc<Source>> },
    /// A call connection receives a new track (renegotiation adds a sender).
    AddSource(Arc<Source>),
    /// A track a call connection received is gone.
    RemoveSource(u64),
    /// Ask the remote publisher of local track `track` for a keyframe (of one layer, or all).
    Keyframe { track: Arc<str>, layer: Option<u8> },
    /// The client's SDP: an answer to our offer, or an offer of its own.
    ClientSdp { offer: bool, sdp: String },
    /// A candidate the client trickled.
    Candidate(String),
    /// A moderator muted or unmuted the client's track `track`.
    Moderated { track: String, muted: bool, by: crate::ids::Id },
    /// The video quality the client wants to receive.
    Quality(Quality),
    /// The quality it wants for particular tracks (by relay id); `None` pauses one (the
    /// client does not show it).
    TrackQuality(Vec<(u64, Option<Quality>)>),
    /// End the connection, saying why.
    Close(&'static str),
}

/// A connection that receives a track's packets.
#[derive(Clone)]
pub struct Outlet {
    pub session: crate::ids::Id,
    pub tx: mpsc::Sender<PeerMsg>,
}

/// A published track's receivers, read by its publisher's task per packet.
pub type Outlets = Arc<RwLock<Vec<Outlet>>>;

/// A published track as its receivers see it.
pub struct Source {
    pub id: u64,
    pub kind: Kind,
    /// e.g. `video/VP8`.
    pub mime: String,
    /// The publisher's header extension ids by URI.
    pub extensions: Vec<(u8, String)>,
    /// The publisher's connection, for keyframe requests.
    pub publisher: mpsc::Sender<PeerMsg>,
    /// The track's id on the publisher's connection.
    pub track: Arc<str>,
    /// Whose track it is.
    pub user: crate::ids::Id,
    /// A moderator stopped its forwarding.
    suspended: AtomicBool,
    /// Bits per second of each simulcast layer (by arrival order), measured by the publisher.
    pub(super) layer_bps: std::sync::Mutex<Vec<u64>>,
}

impl Source {
    pub fn new(
        id: u64,
        kind: Kind,
        mime: String,
        extensions: Vec<(u8, String)>,
        publisher: mpsc::Sender<PeerMsg>,
        track: Arc<str>,
        user: crate::ids::Id,
    ) -> Self {
        Self {
            id,
            kind,
            mime,
            extensions,
            publisher,
            track,
            user,
            suspended: AtomicBool::new(false),
            layer_bps: std::sync::Mutex::default(),
        }
    }

    /// How many layers it has (one without simulcast; none measured yet counts as one).
    pub fn layer_count(&self) -> usize {
        self.layer_bps.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len().max(1)
    }

    /// The layers' bit rates, by arrival order.
    pub fn layer_bps(&self) -> Vec<u64> {
        self.layer_bps.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The layer a receiver that wants `quality` (and can take `cap_bps`) gets: the layers
    /// ranked by bit rate, low (the lowest), medium (the next), high (the highest), and never
    /// above the cap unless nothing fits.
    pub fn pick_layer(&self, quality: Quality, cap_bps: Option<u64>) -> u8 {
        self.pick_layer_from(quality, cap_bps, None)
    }

    /// As `pick_layer` for a receiver getting `current` now (`simulcast::choose`).
    pub fn pick_layer_from(&self, quality: Quality, cap_bps: Option<u64>, current: Option<u8>) -> u8 {
        simulcast::choose(&self.layer_bps(), quality, cap_bps, current)
    }
}

impl Source {
    pub fn set_suspended(&self, on: bool) {
        self.suspended.store(on, Ordering::Release);
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }
}

/// A track this connection receives from its client.
struct Inbound {
    receiver: RTCRtpReceiverId,
    /// Every layer's SSRC, by arrival order (one without simulcast).
    layers: Vec<u32>,
    /// Payload bytes per layer in the current window.
    layer_bytes: Vec<u64>,
    source: Arc<Source>,
    outlets: Outlets,
    /// When a keyframe was last asked for, per layer.
    last_keyframe_request: KeyframeRequests,
    /// The audio level extension's id on this connection (audio tracks).
    level_ext: Option<u8>,
    /// The loudest level (0–127, louder higher) in the current window.
    level_max: u8,
}

/// How a slot rewrites the packets of the source it is bound to.
struct Binding {
    source: Arc<Source>,
    /// Worked out from what was negotiated, at the first packet after it was.
    rewrite: Option<Rewrite>,
    seq_offset: Option<u16>,
    ts_offset: u32,
    /// The simulcast layer forwarded now (`None`: none yet), and the one wanted.
    layer: Option<u8>,
    target: u8,
    /// The receiver does not show it: nothing is forwarded.
    paused: bool,
    /// The next packet forwarded must start a keyframe (after a pause or a layer change).
    needs_keyframe: bool,
}

/// A local sender of a receiving connection.
struct Slot {
    sender: RTCRtpSenderId,
    kind: Kind,
    ssrc: u32,
    track: Arc<str>,
    binding: Option<Binding>,
    last_seq: Option<u16>,
    last_ts: u32,
    /// Bound in the registry but waiting for the client's answer before packets flow.
    live: bool,
}

pub(super) struct Peer {
    shared: Arc<Shared>,
    info: SessionInfo,
    pc: RTCPeerConnection,
    stream: String,
    /// Our own queue, handed to receivers as the way back for keyframe requests.
    me: mpsc::Sender<PeerMsg>,
    notes: Option<NoteSink>,
    inbound: HashMap<String, Inbound>,
    slots: Vec<Option<Slot>>,
    /// Which slot forwards each source.
    by_source: HashMap<u64, usize>,
    /// Renegotiation (call connections): sources to add and remove at the next offer.
    to_add: Vec<Arc<Source>>,
    to_remove: Vec<u64>,
    /// Our offer waits for the client's answer.
    offering: bool,
    next_slot_id: usize,
    connected: bool,
    ended: Option<&'static str>,
    levels_at: Instant,
    /// The video quality the client asked for, and the bit rate its last REMB allowed.
    quality: Quality,
    remb_bps: Option<u64>,
    /// Per received track (relay id): its own quality, or paused (`None`).
    per_source: HashMap<u64, Option<Quality>>,
    /// When the client was lost (ICE disconnected), while it is.
    lost_at: Option<Instant>,
    /// Candidates the client trickled.
    remote_candidates: usize,
}

impl Peer {
    pub(super) fn new(
        shared: Arc<Shared>,
        info: SessionInfo,
        setup: Setup,
        me: mpsc::Sender<PeerMsg>,
        notes: Option<NoteSink>,
    ) -> Self {
        let Setup { mut pc, stream, .. } = setup;
        let mut slots = Vec::new();
        let senders: Vec<RTCRtpSenderId> = pc.get_senders().collect();
        for sender in senders {
            let Some(s) = pc.rtp_sender(sender) else { continue };
            let track = s.track();
            let Some(ssrc) = track.ssrcs().next() else { continue };
            let kind = if track.kind() == RtpCodecKind::Audio { Kind::Audio } else { Kind::Video };
            slots.push(Some(Slot {
                sender,
                kind,
                ssrc,
                track: Arc::from(track.track_id().as_str()),
                binding: None,
                last_seq: None,
                last_ts: 0,
                live: true,
            }));
        }
        slots.sort_by(|a, b| a.as_ref().map(|s| s.track.clone()).cmp(&b.as_ref().map(|s| s.track.clone())));
        let next_slot_id = slots.len();
        Self {
            shared,
            info,
            pc,
            stream,
            me,
            notes,
            inbound: HashMap::new(),
            slots,
            by_source: HashMap::new(),
            to_add: Vec::new(),
            to_remove: Vec::new(),
            offering: false,
            next_slot_id,
            connected: false,
            ended: None,
            levels_at: Instant::now(),
            quality: Quality::High,
            remb_bps: None,
            per_source: HashMap::new(),
            remote_candidates: 0,
            lost_at: None,
        }
    }

    fn note(&self, note: Note) {
        if let Some(n) = &self.notes {
            n(note);
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<PeerMsg>) {
        let deadline = Instant::now() + CONNECT_DEADLINE;
        tracing::info!(session = %self.info.id, room = %self.info.room, direction = self.info.direction.as_str(), "media connection opened");
        while self.ended.is_none() {
            self.flush().await;
            if self.ended.is_some() {
                break;
            }
            if !self.connected && Instant::now() >= deadline {
                tracing::info!(session = %self.info.id, "media connection never connected; closing");
                self.ended = Some("failed");
                break;
            }
            if self.lost_at.is_some_and(|t| t.elapsed() >= RECONNECT_GRACE) {
                tracing::info!(session = %self.info.id, "media connection lost its client; closing");
                self.ended = Some("failed");
                break;
            }
            let mut wake = self.pc.poll_timeout().unwrap_or(deadline);
            if let Some(t) = self.lost_at {
                wake = wake.min(t + RECONNECT_GRACE);
            }
            if !self.connected {
                wake = wake.min(deadline);
            }
            wake = wake.min(self.levels_at + LEVEL_WINDOW);
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    for _ in 1..BATCH {
                        if self.ended.is_some() {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(msg) => self.handle(msg),
                            Err(_) => break,
                        }
                    }
                }
                () = sleep => {
                    if let Err(e) = self.pc.handle_timeout(Instant::now()) {
                        tracing::debug!(session = %self.info.id, error = %e, "media timer");
                    }
                }
            }
            self.report_levels();
        }
        let reason = self.ended.unwrap_or("failed");
        let _ = self.pc.close();
        self.flush().await;
        for (_, i) in self.inbound.drain() {
            self.shared.unpublish(self.info.room, i.source.id);
        }
        self.shared.ended(self.info.id);
        self.note(Note::Ended { room: self.info.room, connection: self.info.id, reason });
        tracing::info!(session = %self.info.id, reason, "media connection closed");
    }

    fn handle(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::Datagram { data, from, at, tcp } => {
                let transport = TransportContext {
                    local_addr: self.shared.host(),
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: if tcp { TransportProtocol::TCP } else { TransportProtocol::UDP },
                };
                if let Err(e) = self.pc.handle_read(TaggedBytesMut { now: at, transport, message: data }) {
                    tracing::debug!(session = %self.info.id, error = %e, "media datagram refused");
                }
            }
            PeerMsg::Rtp { source, layer, packet } => self.forward(source, layer, packet),
            PeerMsg::Attach { slot, source } => self.attach(slot, source),
            PeerMsg::AddSource(source) => {
                self.to_remove.retain(|s| *s != source.id);
                self.to_add.push(source);
                self.renegotiate();
            }
            PeerMsg::RemoveSource(id) => {
                if self.to_add.iter().any(|s| s.id == id) {
                    self.to_add.retain(|s| s.id != id);
                } else {
                    self.to_remove.push(id);
                    // Stop forwarding now; the sender goes at the next offer.
                    if let Some(slot) =
                        self.by_source.get(&id).and_then(|i| self.slots.get_mut(*i)).and_then(Option::as_mut)
                    {
                        slot.binding = None;
                    }
                    self.renegotiate();
                }
            }
            PeerMsg::Keyframe { track, layer } => self.request_keyframe(&track, layer),
            PeerMsg::Quality(q) => {
                self.quality = q;
                self.retarget();
            }
            PeerMsg::TrackQuality(list) => {
                for (id, q) in list {
                    self.per_source.insert(id, q);
                }
                // Kept for tracks this connection receives, or is about to.
                let (by_source, to_add) = (&self.by_source, &self.to_add);
                self.per_source.retain(|id, _| by_source.contains_key(id) || to_add.iter().any(|s| s.id == *id));
                self.retarget();
            }
            PeerMsg::ClientSdp { offer, sdp } => self.client_sdp(offer, sdp),
            PeerMsg::Candidate(candidate) => {
                // A bounded number: a lite agent needs none, and each is checked against.
                if self.remote_candidates < REMOTE_CANDIDATES_MAX {
                    self.remote_candidates += 1;
                    let init = RTCIceCandidateInit { candidate, ..Default::default() };
                    if let Err(e) = self.pc.add_remote_candidate(init) {
                        tracing::debug!(connection = %self.info.id, error = %e, "a trickled candidate was not taken");
                    }
                }
            }
            PeerMsg::Moderated { track, muted, by } => {
                self.note(Note::Muted { room: self.info.room, connection: self.info.id, track, muted, by });
            }
            PeerMsg::Close(reason) => self.ended = Some(reason),
        }
    }

    /// Sends what the connection has to send, and handles its events and reads.
    async fn flush(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.pc.poll_write() {
                progressed = true;
                let to = out.transport.peer_addr;
                if out.transport.transport_protocol == TransportProtocol::TCP {
                    self.shared.send_tcp(to, out.message.freeze());
                    continue;
                }
                let socket = self.shared.socket();
                // A send that fails otherwise is a lost datagram; retransmissions cover it.
                if let Err(e) = socket.try_send_to(&out.message, to)
                    && e.kind() == std::io::ErrorKind::WouldBlock
                {
                    let _ = socket.send_to(&out.message, to).await;
                }
            }
            while let Some(event) = self.pc.poll_event() {
                progressed = true;
                self.event(event);
            }
            while let Some(read) = self.pc.poll_read() {
                progressed = true;
                self.read(read);
            }
            if !progressed {
                return;
            }
        }
    }

    fn event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                tracing::debug!(session = %self.info.id, %state, "media connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        self.connected = true;
                        self.lost_at = None;
                        self.renegotiate();
                    }
                    RTCPeerConnectionState::Disconnected => {
                        self.lost_at.get_or_insert_with(Instant::now);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        self.ended.get_or_insert("failed");
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                if !self.info.direction.publishes() {
                    return;
                }
                if let Some(i) = self.inbound.get_mut(&init.track_id) {
                    // Another simulcast layer of a track already published.
                    if !i.layers.contains(&init.ssrc) {
                        i.layers.push(init.ssrc);
                        i.layer_bytes.push(0);
                        i.last_keyframe_request.add_layer();
                        tracing::info!(session = %self.info.id, track = %init.track_id, rid = ?init.rid, "simulcast layer");
                    }
                    return;
                }
                let Some(mut receiver) = self.pc.rtp_receiver(init.receiver_id) else { return };
                let extensions: Vec<(u8, String)> = receiver
                    .get_parameters()
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .map(|e| (e.id as u8, e.uri.clone()))
                    .collect();
                let track = receiver.track();
                let kind = if track.kind() == RtpCodecKind::Audio { Kind::Audio } else { Kind::Video };
                let Some(mime) = track.codec(init.ssrc).map(|c| c.mime_type.clone()) else { return };
                let level_ext = if kind == Kind::Audio {
                    extensions.iter().find(|(_, uri)| uri == AUDIO_LEVEL_URI).map(|(id, _)| *id)
                } else {
                    None
                };
                let track_id: Arc<str> = Arc::from(init.track_id.as_str());
                let me = self.me.clone();
                let user = self.info.user;
                let (source, outlets) = self.shared.publish(self.info.room, self.info.id, kind, &init.track_id, |id| {
                    Source::new(id, kind, mime, extensions, me, track_id, user)
                });
                tracing::info!(session = %self.info.id, track = %init.track_id, mime = %source.mime, "track published");
                self.inbound.insert(
                    init.track_id,
                    Inbound {
                        receiver: init.receiver_id,
                        layers: vec![init.ssrc],
                        layer_bytes: vec![0],
                        source,
                        outlets,
                        last_keyframe_request: KeyframeRequests::new(1),
                        level_ext,
                        level_max: 0,
                    },
                );
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                if let Some(i) = self.inbound.remove(&track_id) {
                    self.shared.unpublish(self.info.room, i.source.id);
                }
            }
            _ => {}
        }
    }

    fn read(&mut self, read: TaggedRTCMessage) {
        match read.message {
            RTCMessage::RtpPacket(track_id, packet) => {
                let Some(i) = self.inbound.get_mut(&track_id) else { return };
                let metrics = self.shared.metrics();
                metrics.media_packets_in.inc();
                if let Some(id) = i.level_ext
                    && let Some(e) = packet.header.extensions.iter().find(|e| e.id == id)
                    && let Some(b) = e.payload.first()
                {
                    // -dBov, 0 loudest and 127 silence: turned around so louder is higher.
                    i.level_max = i.level_max.max(127 - (b & 0x7f));
                }
                let layer = if let Some(l) = i.layers.iter().position(|s| *s == packet.header.ssrc) {
                    l
                } else {
                    i.layers.push(packet.header.ssrc);
                    i.layer_bytes.push(0);
                    i.last_keyframe_request.add_layer();
                    i.layers.len() - 1
                };
                i.layer_bytes[layer] += packet.payload.len() as u64;
                if i.source.is_suspended() {
                    return;
                }
                let outlets = i.outlets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                for o in outlets.iter() {
                    let msg = PeerMsg::Rtp { source: i.source.id, layer: layer as u8, packet: packet.clone() };
                    if o.tx.try_send(msg).is_err() {
                        metrics.media_packets_dropped.inc();
                    }
                }
            }
            RTCMessage::RtcpPacket(track_id, packets) => {
                if let Some(remb) =
                    packets.iter().find_map(|p| p.as_any().downcast_ref::<ReceiverEstimatedMaximumBitrate>())
                {
                    self.remb_bps = Some(remb.bitrate as u64);
                    self.shared.metrics().media_bandwidth_estimates.inc();
                }
                let nacks =
                    packets.iter().filter(|p| p.as_any().downcast_ref::<TransportLayerNack>().is_some()).count();
                if nacks > 0 {
                    self.shared.metrics().media_nacks.inc_by(nacks as u64);
                }
                let wants_keyframe = packets.iter().any(|p| {
                    p.as_any().downcast_ref::<PictureLossIndication>().is_some()
                        || p.as_any().downcast_ref::<FullIntraRequest>().is_some()
                });
                if !wants_keyframe {
                    return;
                }
                self.shared.metrics().media_keyframe_requests_received.inc();
                let slot = self.slots.iter().flatten().find(|s| *s.track == *track_id);
                if let Some(b) = slot.and_then(|s| s.binding.as_ref()) {
                    let layer = Some(b.layer.unwrap_or(b.target));
                    let _ = b.source.publisher.try_send(PeerMsg::Keyframe { track: b.source.track.clone(), layer });
                }
            }
            _ => {}
        }
    }

    /// Reports the loudest audio level of the last window to the registry.
    fn report_levels(&mut self) {
        if self.levels_at.elapsed() < LEVEL_WINDOW {
            return;
        }
        let window_ms = self.levels_at.elapsed().as_millis().max(1) as u64;
        self.levels_at = Instant::now();
        for i in self.inbound.values_mut() {
            // Smoothed over about a second: a keyframe's burst is not a layer's bit rate.
            let mut bps = i.source.layer_bps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            bps.resize(i.layer_bytes.len(), 0);
            for (rate, bytes) in bps.iter_mut().zip(&mut i.layer_bytes) {
                let now = *bytes * 8 * 1000 / window_ms;
                *rate = if *rate == 0 { now } else { (*rate * 2 + now) / 3 };
                *bytes = 0;
            }
        }
        self.retarget();
        let mut loudest = None;
        for i in self.inbound.values_mut().filter(|i| i.level_ext.is_some()) {
            let level = if i.source.is_suspended() { 0 } else { i.level_max };
            loudest = Some(loudest.unwrap_or(0).max(level));
            i.level_max = 0;
        }
        if let Some(level) = loudest {
            self.shared.audio_level(self.info.room, self.info.id, level);
        }
    }

    /// Binds slot `slot` to `source` (or unbinds it).
    fn attach(&mut self, slot: usize, source: Option<Arc<Source>>) {
        let Some(Some(s)) = self.slots.get_mut(slot) else { return };
        if let Some(old) = s.binding.take() {
            self.by_source.remove(&old.source.id);
        }
        let Some(source) = source else { return };
        let target = source.pick_layer(self.quality, self.remb_bps);
        s.binding = Some(Binding {
            source: source.clone(),
            rewrite: None,
            seq_offset: None,
            ts_offset: 0,
            layer: None,
            target,
            paused: false,
            needs_keyframe: false,
        });
        self.by_source.insert(source.id, slot);
        if source.kind == Kind::Video && s.live {
            let _ = source.publisher.try_send(PeerMsg::Keyframe { track: source.track.clone(), layer: Some(target) });
        }
    }

    /// How `sender` rewrites packets of `source`, from what its receiver negotiated: the
    /// payload type of the source's codec, the extensions both sides know (never the
    /// publisher's MID and RIDs, which name its own sections and layers, nor its transport-wide
    /// sequence numbers, which count its own transport: without them a receiver estimates its
    /// bandwidth itself and says so in REMB), and our MID.
    fn rewrite_for(&mut self, sender: RTCRtpSenderId, source: &Source) -> Option<Rewrite> {
        let transceivers: Vec<_> = self.pc.get_transceivers().collect();
        let mid = transceivers.into_iter().find_map(|t| {
            let t = self.pc.rtp_transceiver(t)?;
            if t.sender() == Some(sender) { t.mid().clone() } else { None }
        });
        let mut s = self.pc.rtp_sender(sender)?;
        let params = &s.get_parameters().rtp_parameters;
        let Some(payload_type) = params
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&source.mime))
            .map(|c| c.payload_type)
        else {
            tracing::info!(session = %self.info.id, mime = %source.mime, "the receiver did not negotiate this codec");
            return None;
        };
        let per_connection = [SDES_MID_URI, SDES_RTP_STREAM_ID_URI, SDES_REPAIR_RTP_STREAM_ID_URI, TRANSPORT_CC_URI];
        let extensions = source
            .extensions
            .iter()
            .filter(|(_, uri)| !per_connection.contains(&uri.as_str()))
            .filter_map(|(from, uri)| {
                params.header_extensions.iter().find(|h| h.uri == *uri).map(|h| (*from, h.id as u8))
            })
            .collect();
        let mid_id = params.header_extensions.iter().find(|h| h.uri == SDES_MID_URI).map(|h| h.id as u8);
        let mid = mid_id.zip(mid).map(|(id, m)| (id, bytes::Bytes::from(m)));
        Some(Rewrite { payload_type, extensions, mid })
    }

    /// Offers the senders added and removed since the last offer, if no offer is out and the
    /// connection is up.
    fn renegotiate(&mut self) {
        if self.info.direction != Direction::Call
            || self.offering
            || !self.connected
            || (self.to_add.is_empty() && self.to_remove.is_empty())
        {
            return;
        }
        let now = Instant::now();
        for id in std::mem::take(&mut self.to_remove) {
            if let Some(i) = self.by_source.remove(&id)
                && let Some(slot) = self.slots.get_mut(i).and_then(Option::take)
            {
                let _ = self.pc.remove_track(slot.sender);
            }
        }
        for source in std::mem::take(&mut self.to_add) {
            let id = slot_track(self.next_slot_id);
            self.next_slot_id += 1;
            let track = local_track(&self.stream, id.clone(), source.kind);
            let ssrc = track.ssrcs().next().unwrap_or_default();
            // A transceiver of its own, never one of the client's: `add_track` would reuse the
            // client's sending transceiver of the same kind, which it will not receive on.
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![self.stream.clone()],
                send_encodings: vec![],
            };
            let Ok(transceiver) = self.pc.add_transceiver_from_track(track, Some(init)) else { continue };
            let sender = RTCRtpSenderId::from(transceiver);
            // The sender may have been given SSRCs of its own: send with the one it announces.
            let ssrc = self.pc.rtp_sender(sender).and_then(|s| s.track().ssrcs().next()).unwrap_or(ssrc);
            self.slots.push(Some(Slot {
                sender,
                kind: source.kind,
                ssrc,
                track: Arc::from(id.as_str()),
                binding: None,
                last_seq: None,
                last_ts: 0,
                live: false,
            }));
            self.attach(self.slots.len() - 1, Some(source));
        }
        let offer = match self.pc.create_offer(None) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(session = %self.info.id, error = %e, "creating a renegotiation offer failed");
                return;
            }
        };
        if let Err(e) = self.pc.set_local_description(now, offer) {
            tracing::warn!(session = %self.info.id, error = %e, "setting our renegotiation offer failed");
            return;
        }
        let Some(sdp) = self.pc.local_description().map(|d| d.sdp) else { return };
        self.offering = true;
        self.note(Note::Offer { room: self.info.room, connection: self.info.id, sdp });
    }

    /// The client's answer to our offer, or its own offer (we answer it).
    fn client_sdp(&mut self, offer: bool, sdp: String) {
        let now = Instant::now();
        if offer {
            if !self.info.direction.publishes() && sections(&sdp).iter().any(|(_, s, _)| *s) {
                return;
            }
            if self.offering {
                // Offers crossed: ours goes back, the client's is answered, ours comes again.
                let rolled = RTCSessionDescription::rollback(None).and_then(|r| self.pc.set_local_description(now, r));
                if rolled.is_err() {
                    return;
                }
                self.offering = false;
            }
            let answered = RTCSessionDescription::offer(sdp)
                .and_then(|o| self.pc.set_remote_description(now, o))
                .and_then(|()| self.pc.create_answer(None))
                .and_then(|a| self.pc.set_local_description(now, a));
            match answered {
                Ok(()) => {
                    if let Some(sdp) = self.pc.local_description().map(|d| d.sdp) {
                        self.note(Note::Answer { room: self.info.room, connection: self.info.id, sdp });
                    }
                }
                Err(e) => tracing::info!(session = %self.info.id, error = %e, "the client's offer was refused"),
            }
        } else {
            if !self.offering {
                return;
            }
            let applied = RTCSessionDescription::answer(sdp).and_then(|a| self.pc.set_remote_description(now, a));
            if let Err(e) = applied {
                tracing::info!(session = %self.info.id, error = %e, "the client's answer was refused");
                return;
            }
            self.offering = false;
            for s in self.slots.iter_mut().flatten() {
                if let Some(b) = &mut s.binding {
                    b.rewrite = None;
                }
                if !s.live {
                    s.live = true;
                    if let Some(b) = &s.binding
                        && s.kind == Kind::Video
                    {
                        let layer = Some(b.target);
                        let _ = b.source.publisher.try_send(PeerMsg::Keyframe { track: b.source.track.clone(), layer });
                    }
                }
            }
        }
        self.renegotiate();
    }

    /// Points every video slot at the layer its receiver should get now; a change takes effect
    /// at the target layer's next keyframe, which is asked for.
    fn retarget(&mut self) {
        let (default, remb) = (self.quality, self.remb_bps);
        for s in self.slots.iter_mut().flatten() {
            let Some(b) = s.binding.as_mut() else { continue };
            if s.kind != Kind::Video {
                continue;
            }
            let quality = match self.per_source.get(&b.source.id) {
                Some(None) => {
                    if !b.paused {
                        b.paused = true;
                        b.layer = None;
                        b.needs_keyframe = true;
                    }
                    continue;
                }
                Some(Some(q)) => *q,
                None => default,
            };
            b.paused = false;
            let target = b.source.pick_layer_from(quality, remb, b.layer);
            b.target = target;
            // Until the switch is made, the target layer's keyframe is asked for again (the
            // publisher's side keeps that to twice a second per layer).
            if s.live && b.layer != Some(target) {
                let layer = Some(target);
                let _ = b.source.publisher.try_send(PeerMsg::Keyframe { track: b.source.track.clone(), layer });
            }
        }
    }

    fn forward(&mut self, source: u64, layer: u8, mut packet: rtc::rtp::Packet) {
        let Some(&slot) = self.by_source.get(&source) else { return };
        let unresolved = match self.slots.get(slot) {
            Some(Some(s)) if s.live => match &s.binding {
                Some(b) if b.source.id == source => b.rewrite.is_none().then(|| (s.sender, b.source.clone())),
                _ => return,
            },
            _ => return,
        };
        if let Some((sender, src)) = unresolved {
            let Some(rewrite) = self.rewrite_for(sender, &src) else { return };
            if let Some(Some(Slot { binding: Some(b), .. })) = self.slots.get_mut(slot) {
                b.rewrite = Some(rewrite);
            }
        }
        let Some(Some(s)) = self.slots.get_mut(slot) else { return };
        let Some(b) = s.binding.as_mut().filter(|b| b.source.id == source) else { return };
        if b.paused {
            return;
        }
        if b.layer != Some(layer) {
            // Another layer (or a resumption): taken only when it is the one wanted and, for
            // video, at a keyframe. A single-layer track's first packets need none.
            if layer != b.target {
                return;
            }
            let keyframe_needed = b.source.kind == Kind::Video && (b.needs_keyframe || b.source.layer_count() > 1);
            if keyframe_needed && !keyframe_start(&b.source.mime, &packet.payload) {
                return;
            }
            if b.layer.is_some() {
                self.shared.metrics().media_layer_switches.inc();
            }
            if b.layer.is_some() || b.needs_keyframe {
                // The new layer has numbering of its own: continue from where the last left.
                b.seq_offset = None;
            }
            b.layer = Some(layer);
            b.needs_keyframe = false;
        }
        let Some(rw) = &b.rewrite else { return };
        // Padding-only packets are the publisher's bandwidth probes to us, not media: dropped,
        // and the numbering after them closed up so the receiver sees no loss.
        if packet.payload.is_empty() {
            if let Some(offset) = b.seq_offset.as_mut() {
                *offset = offset.wrapping_sub(1);
            }
            return;
        }
        let h = &mut packet.header;
        // A new source continues the old one's numbering, so the receiver sees one stream.
        let seq_offset = *b.seq_offset.get_or_insert_with(|| {
            let step = if s.kind == Kind::Video { 3000 } else { 960 };
            let (seq_offset, ts_offset) =
                rewrite::offsets(s.last_seq.map(|q| (q, s.last_ts)), h.sequence_number, h.timestamp, step);
            b.ts_offset = ts_offset;
            seq_offset
        });
        h.sequence_number = h.sequence_number.wrapping_add(seq_offset);
        h.timestamp = h.timestamp.wrapping_add(b.ts_offset);
        rewrite::apply(h, rw, s.ssrc);
        let (seq, ts) = (h.sequence_number, h.timestamp);
        if rewrite::is_newer(seq, s.last_seq) {
            s.last_seq = Some(seq);
            s.last_ts = ts;
        }
        let bytes = packet.payload.len() as u64;
        let Some(mut sender) = self.pc.rtp_sender(s.sender) else { return };
        match sender.write_rtp(Instant::now(), packet) {
            Ok(()) => {
                let m = self.shared.metrics();
                m.media_packets_out.inc();
                m.media_bytes_out.inc_by(bytes);
            }
            Err(e) => tracing::trace!(session = %self.info.id, error = %e, "forwarding refused"),
        }
    }

    fn request_keyframe(&mut self, track: &str, layer: Option<u8>) {
        let Some(i) = self.inbound.get_mut(track) else { return };
        let now = Instant::now();
        let wanted: Vec<usize> = match layer.map(usize::from).filter(|l| *l < i.layers.len()) {
            Some(l) => vec![l],
            None => (0..i.layers.len()).collect(),
        };
        let ssrcs: Vec<u32> = i.last_keyframe_request.due(wanted, now).into_iter().map(|l| i.layers[l]).collect();
        if ssrcs.is_empty() {
            return;
        }
        let receiver = i.receiver;
        let Some(mut r) = self.pc.rtp_receiver(receiver) else { return };
        let plis: Vec<Box<dyn rtc::rtcp::Packet>> = ssrcs
            .into_iter()
            .map(|media_ssrc| {
                Box::new(PictureLossIndication { sender_ssrc: 0, media_ssrc }) as Box<dyn rtc::rtcp::Packet>
            })
            .collect();
        if r.write_rtcp(now, plis).is_ok() {
            self.shared.metrics().media_keyframe_requests.inc();
        }
    }
}
