//! One peer connection: the offer/answer, then a task that owns the sans-I/O `rtc` connection
//! and feeds it datagrams, timers and forwarded packets.
//!
//! A publishing connection hands each packet of a track to that track's outlets (the playing
//! connections bound to it). A playing connection has one local sender (slot) per media
//! section the client offered to receive; each slot is bound to at most one published track at
//! a time, and rewrites what it forwards — SSRC, payload type, header extension ids, and
//! sequence numbers and timestamps across a switch of source — so the receiver sees one
//! continuous stream. Keyframe requests (PLI, FIR) from a player go to the publisher, at most
//! one per track every `KEYFRAME_GAP`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::mpsc;

use super::{Direction, Kind, Outlets, SessionInfo, SfuError, Shared};

/// At most one keyframe request per published track in this time.
const KEYFRAME_GAP: Duration = Duration::from_millis(500);
/// A connection that has not connected by then is given up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
/// Queued messages handled before the connection's output is flushed.
const BATCH: usize = 64;

/// What a connection's task is sent.
pub enum PeerMsg {
    /// A datagram from the shared socket.
    Datagram { data: BytesMut, from: SocketAddr, at: Instant },
    /// A packet of source `source` for local sender `slot`.
    Rtp { slot: usize, source: u64, packet: rtc::rtp::Packet },
    /// Bind local sender `slot` to a published track, or unbind it.
    Attach { slot: usize, source: Option<Arc<Source>> },
    /// Ask the remote publisher of local track `track` for a keyframe.
    Keyframe { track: Arc<str> },
    /// End the connection.
    Close,
}

/// A published track as its players see it.
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
}

/// An answered offer: the connection, our ICE username fragment, the answer, and (playing)
/// the kind of each local sender.
pub(super) struct Setup {
    pub pc: RTCPeerConnection,
    pub ufrag: String,
    pub sdp: String,
    pub slots: Vec<Kind>,
}

/// The media sections of an SDP offer: kind and whether the client sends, receives.
fn sections(sdp: &str) -> Vec<(Kind, bool, bool)> {
    let mut out: Vec<(Option<Kind>, bool, bool)> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            let kind = match m.split(' ').next() {
                Some("audio") => Some(Kind::Audio),
                Some("video") => Some(Kind::Video),
                _ => None,
            };
            out.push((kind, true, true));
        } else if let Some(last) = out.last_mut() {
            match line {
                "a=sendonly" => (last.1, last.2) = (true, false),
                "a=recvonly" => (last.1, last.2) = (false, true),
                "a=inactive" => (last.1, last.2) = (false, false),
                _ => {}
            }
        }
    }
    out.into_iter().filter_map(|(k, s, r)| k.map(|k| (k, s, r))).collect()
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    crate::ids::fill_random(&mut bytes);
    bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
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

fn vp8() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback { typ: typ.to_owned(), parameter: parameter.to_owned() };
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![fb("goog-remb", ""), fb("ccm", "fir"), fb("nack", ""), fb("nack", "pli")],
    }
}

fn invalid(e: impl std::fmt::Display) -> SfuError {
    SfuError::InvalidSdp(format!("the offer cannot be answered: {e}"))
}

/// Answers `offer` for a connection that publishes or plays, with one host candidate at
/// `host`.
pub(super) fn answer(offer: &str, direction: Direction, host: SocketAddr) -> Result<Setup, SfuError> {
    let sections = sections(offer);
    let usable: Vec<Kind> = sections
        .iter()
        .filter(|(_, sends, receives)| match direction {
            Direction::Publish => *sends,
            Direction::Play => *receives,
        })
        .map(|(k, _, _)| *k)
        .collect();
    if usable.is_empty() {
        return Err(SfuError::InvalidSdp(match direction {
            Direction::Publish => "the offer has no audio or video section the client sends".into(),
            Direction::Play => "the offer has no audio or video section the client receives".into(),
        }));
    }
    let now = Instant::now();
    let mut media = MediaEngine::default();
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: opus(), payload_type: 111 }, RtpCodecKind::Audio)
        .map_err(invalid)?;
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: vp8(), payload_type: 96 }, RtpCodecKind::Video)
        .map_err(invalid)?;
    let registry = register_default_interceptors(Registry::new(), &mut media).map_err(invalid)?;
    let ufrag = random_token(16);
    let settings =
        SettingEngineBuilder::new().with_lite(true).with_ice_credentials(ufrag.clone(), random_token(32)).build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(invalid)?;
    let mut slots = Vec::new();
    if direction == Direction::Play {
        let stream = random_token(12);
        for (i, kind) in usable.iter().enumerate() {
            let (rtc_kind, codec) = match kind {
                Kind::Audio => (RtpCodecKind::Audio, opus()),
                Kind::Video => (RtpCodecKind::Video, vp8()),
            };
            let mut ssrc = [0u8; 4];
            crate::ids::fill_random(&mut ssrc);
            let track = MediaStreamTrack::new(
                stream.clone(),
                slot_track(i),
                slot_track(i),
                rtc_kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(u32::from_be_bytes(ssrc)),
                        ..Default::default()
                    },
                    codec,
                    active: true,
                    ..Default::default()
                }],
            );
            pc.add_track(track).map_err(invalid)?;
            slots.push(*kind);
        }
    }
    let offer = RTCSessionDescription::offer(offer.to_owned()).map_err(invalid)?;
    pc.set_remote_description(now, offer).map_err(invalid)?;
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: host.ip().to_string(),
            port: host.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(invalid)?;
    let init = RTCIceCandidate::from(&candidate).to_json().map_err(invalid)?;
    pc.add_local_candidate(init).map_err(invalid)?;
    let answer = pc.create_answer(None).map_err(invalid)?;
    pc.set_local_description(now, answer).map_err(invalid)?;
    let sdp = pc.local_description().map(|d| d.sdp).ok_or_else(|| invalid("no local description"))?;
    Ok(Setup { pc, ufrag, sdp, slots })
}

/// The id of the local track on sender `slot`.
fn slot_track(slot: usize) -> String {
    format!("outpost-{slot}")
}

/// A track this connection receives from its client.
struct Inbound {
    receiver: RTCRtpReceiverId,
    ssrc: u32,
    source: Arc<super::peer::Source>,
    outlets: Outlets,
    last_keyframe_request: Option<Instant>,
}

/// How a slot rewrites the packets of the source it is bound to.
struct Binding {
    source: Arc<Source>,
    payload_type: u8,
    /// (publisher's extension id, ours).
    extensions: Vec<(u8, u8)>,
    seq_offset: Option<u16>,
    ts_offset: u32,
}

/// A local sender of a playing connection.
struct Slot {
    sender: RTCRtpSenderId,
    kind: Kind,
    ssrc: u32,
    track: Arc<str>,
    binding: Option<Binding>,
    last_seq: Option<u16>,
    last_ts: u32,
}

pub(super) struct Peer {
    shared: Arc<Shared>,
    info: SessionInfo,
    pc: RTCPeerConnection,
    /// Our own queue, handed to players as the way back for keyframe requests.
    me: mpsc::Sender<PeerMsg>,
    inbound: HashMap<String, Inbound>,
    slots: Vec<Slot>,
    connected: bool,
    ended: bool,
}

impl Peer {
    pub(super) fn new(
        shared: Arc<Shared>,
        info: SessionInfo,
        mut pc: RTCPeerConnection,
        me: mpsc::Sender<PeerMsg>,
    ) -> Self {
        let mut slots = Vec::new();
        let senders: Vec<RTCRtpSenderId> = pc.get_senders().collect();
        for sender in senders {
            let Some(s) = pc.rtp_sender(sender) else { continue };
            let track = s.track();
            let Some(ssrc) = track.ssrcs().next() else { continue };
            let kind = if track.kind() == RtpCodecKind::Audio { Kind::Audio } else { Kind::Video };
            slots.push(Slot {
                sender,
                kind,
                ssrc,
                track: Arc::from(track.track_id().as_str()),
                binding: None,
                last_seq: None,
                last_ts: 0,
            });
        }
        slots.sort_by(|a, b| a.track.cmp(&b.track));
        Self { shared, info, pc, me, inbound: HashMap::new(), slots, connected: false, ended: false }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<PeerMsg>) {
        let deadline = Instant::now() + CONNECT_DEADLINE;
        tracing::info!(session = %self.info.id, room = %self.info.room, direction = self.info.direction.as_str(), "media connection opened");
        while !self.ended {
            self.flush().await;
            if self.ended {
                break;
            }
            if !self.connected && Instant::now() >= deadline {
                tracing::info!(session = %self.info.id, "media connection never connected; closing");
                break;
            }
            let wake = self.pc.poll_timeout().map_or(deadline, |t| t.min(if self.connected { t } else { deadline }));
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(msg) => self.handle(msg),
                            Err(_) => break,
                        }
                        if self.ended {
                            break;
                        }
                    }
                }
                () = sleep => {
                    if let Err(e) = self.pc.handle_timeout(Instant::now()) {
                        tracing::debug!(session = %self.info.id, error = %e, "media timer");
                    }
                }
            }
        }
        let _ = self.pc.close();
        self.flush().await;
        for (_, i) in self.inbound.drain() {
            self.shared.unpublish(self.info.room, i.source.id);
        }
        self.shared.ended(self.info.id);
        tracing::info!(session = %self.info.id, "media connection closed");
    }

    fn handle(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::Datagram { data, from, at } => {
                let transport = TransportContext {
                    local_addr: self.shared.host(),
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                };
                if let Err(e) = self.pc.handle_read(TaggedBytesMut { now: at, transport, message: data }) {
                    tracing::debug!(session = %self.info.id, error = %e, "media datagram refused");
                }
            }
            PeerMsg::Rtp { slot, source, packet } => self.forward(slot, source, packet),
            PeerMsg::Attach { slot, source } => self.attach(slot, source),
            PeerMsg::Keyframe { track } => self.request_keyframe(&track),
            PeerMsg::Close => self.ended = true,
        }
    }

    /// Sends what the connection has to send, and handles its events and reads.
    async fn flush(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.pc.poll_write() {
                progressed = true;
                let socket = self.shared.socket();
                let to = out.transport.peer_addr;
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
                    RTCPeerConnectionState::Connected => self.connected = true,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => self.ended = true,
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                if self.info.direction != Direction::Publish || self.inbound.contains_key(&init.track_id) {
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
                let track_id: Arc<str> = Arc::from(init.track_id.as_str());
                let me = self.me.clone();
                let (source, outlets) = self.shared.publish(self.info.room, self.info.id, kind, |id| Source {
                    id,
                    kind,
                    mime,
                    extensions,
                    publisher: me,
                    track: track_id,
                });
                tracing::info!(session = %self.info.id, track = %init.track_id, mime = %source.mime, "track published");
                self.inbound.insert(
                    init.track_id,
                    Inbound {
                        receiver: init.receiver_id,
                        ssrc: init.ssrc,
                        source,
                        outlets,
                        last_keyframe_request: None,
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
                let Some(i) = self.inbound.get(&track_id) else { return };
                let metrics = self.shared.metrics();
                metrics.media_packets_in.inc();
                let outlets = i.outlets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                for o in outlets.iter() {
                    let msg = PeerMsg::Rtp { slot: o.slot, source: i.source.id, packet: packet.clone() };
                    if o.tx.try_send(msg).is_err() {
                        metrics.media_packets_dropped.inc();
                    }
                }
            }
            RTCMessage::RtcpPacket(track_id, packets) => {
                let wants_keyframe = packets.iter().any(|p| {
                    p.as_any().downcast_ref::<PictureLossIndication>().is_some()
                        || p.as_any().downcast_ref::<FullIntraRequest>().is_some()
                });
                if !wants_keyframe {
                    return;
                }
                let Some(slot) = self.slots.iter().find(|s| *s.track == *track_id) else { return };
                if let Some(b) = &slot.binding {
                    let _ = b.source.publisher.try_send(PeerMsg::Keyframe { track: b.source.track.clone() });
                }
            }
            _ => {}
        }
    }

    fn attach(&mut self, slot: usize, source: Option<Arc<Source>>) {
        let Some(s) = self.slots.get_mut(slot) else { return };
        let Some(source) = source else {
            s.binding = None;
            return;
        };
        let Some(mut sender) = self.pc.rtp_sender(s.sender) else { return };
        let params = &sender.get_parameters().rtp_parameters;
        let Some(payload_type) = params
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&source.mime))
            .map(|c| c.payload_type)
        else {
            tracing::info!(session = %self.info.id, mime = %source.mime, "the player did not negotiate this codec");
            s.binding = None;
            return;
        };
        let extensions = source
            .extensions
            .iter()
            .filter_map(|(from, uri)| {
                params.header_extensions.iter().find(|h| h.uri == *uri).map(|h| (*from, h.id as u8))
            })
            .collect();
        s.binding = Some(Binding { source: source.clone(), payload_type, extensions, seq_offset: None, ts_offset: 0 });
        if source.kind == Kind::Video {
            let _ = source.publisher.try_send(PeerMsg::Keyframe { track: source.track.clone() });
        }
    }

    fn forward(&mut self, slot: usize, source: u64, mut packet: rtc::rtp::Packet) {
        let Some(s) = self.slots.get_mut(slot) else { return };
        let Some(b) = s.binding.as_mut().filter(|b| b.source.id == source) else { return };
        let h = &mut packet.header;
        // A new source continues the old one's numbering, so the receiver sees one stream.
        let seq_offset = *b.seq_offset.get_or_insert_with(|| {
            let step = if s.kind == Kind::Video { 3000 } else { 960 };
            b.ts_offset = s.last_seq.map_or(0, |_| s.last_ts.wrapping_add(step).wrapping_sub(h.timestamp));
            s.last_seq.map_or(0, |last| last.wrapping_add(1).wrapping_sub(h.sequence_number))
        });
        h.sequence_number = h.sequence_number.wrapping_add(seq_offset);
        h.timestamp = h.timestamp.wrapping_add(b.ts_offset);
        h.ssrc = s.ssrc;
        h.payload_type = b.payload_type;
        h.extensions.retain_mut(|e| match b.extensions.iter().find(|(from, _)| *from == e.id) {
            Some((_, to)) => {
                e.id = *to;
                true
            }
            None => false,
        });
        if h.extensions.is_empty() {
            h.extension = false;
        }
        let (seq, ts) = (h.sequence_number, h.timestamp);
        let newer = s.last_seq.is_none_or(|last| seq.wrapping_sub(last) < 0x8000);
        if newer {
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

    fn request_keyframe(&mut self, track: &str) {
        let Some(i) = self.inbound.get_mut(track) else { return };
        let now = Instant::now();
        if i.last_keyframe_request.is_some_and(|t| now.duration_since(t) < KEYFRAME_GAP) {
            return;
        }
        i.last_keyframe_request = Some(now);
        let (receiver, ssrc) = (i.receiver, i.ssrc);
        let Some(mut r) = self.pc.rtp_receiver(receiver) else { return };
        let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
        if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
            self.shared.metrics().media_keyframe_requests.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sections_and_directions() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nm=video 9 x 96\r\n";
        assert_eq!(
            sections(sdp),
            vec![(Kind::Audio, true, false), (Kind::Video, false, true), (Kind::Video, true, true)]
        );
    }
}
