//! Negotiation: the codecs and header extensions the relay speaks (Opus, VP8, H.264; audio
//! levels), answering an offer as an ICE-lite peer with UDP and (optionally) passive TCP host
//! candidates on the one media port, the local tracks a receiving connection plays into, and
//! reading an offer's media sections.

use std::net::SocketAddr;
use std::time::Instant;

use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

use super::{Direction, Kind, SfuError};

/// The audio level header extension (RFC 6464).
pub(super) const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// An answered offer: the connection, our ICE username fragment, the answer, and (playing)
/// the kind of each local sender.
pub struct Setup {
    pub pc: RTCPeerConnection,
    pub ufrag: String,
    pub sdp: String,
    pub slots: Vec<Kind>,
    /// The stream id of our local tracks.
    pub stream: String,
}

/// The media sections of an SDP offer: kind and whether the client sends, receives.
pub fn sections(sdp: &str) -> Vec<(Kind, bool, bool)> {
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

/// H.264 constrained baseline, packetization mode 1: what OBS, GStreamer and ffmpeg send over
/// WHIP, and what every browser decodes.
fn h264() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback { typ: typ.to_owned(), parameter: parameter.to_owned() };
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".to_owned(),
        rtcp_feedback: vec![fb("goog-remb", ""), fb("ccm", "fir"), fb("nack", ""), fb("nack", "pli")],
    }
}

pub(super) fn invalid(e: impl std::fmt::Display) -> SfuError {
    SfuError::InvalidSdp(format!("the offer cannot be answered: {e}"))
}

/// A local track to send on: a fresh SSRC, the codec of its kind.
pub(super) fn local_track(stream: &str, id: String, kind: Kind) -> MediaStreamTrack {
    let (rtc_kind, codec) = match kind {
        Kind::Audio => (RtpCodecKind::Audio, opus()),
        Kind::Video => (RtpCodecKind::Video, vp8()),
    };
    let mut ssrc = [0u8; 4];
    crate::ids::fill_random(&mut ssrc);
    MediaStreamTrack::new(
        stream.to_owned(),
        id.clone(),
        id,
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
    )
}

/// The codecs and header extensions we negotiate, and the interceptors (NACK, RTCP reports,
/// TWCC feedback to publishers, and the tap that lets receivers' feedback through to us).
fn media_engine() -> Result<(MediaEngine, Registry), SfuError> {
    let mut media = MediaEngine::default();
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: opus(), payload_type: 111 }, RtpCodecKind::Audio)
        .map_err(invalid)?;
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: vp8(), payload_type: 96 }, RtpCodecKind::Video)
        .map_err(invalid)?;
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: h264(), payload_type: 102 }, RtpCodecKind::Video)
        .map_err(invalid)?;
    media
        .register_header_extension(
            RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.to_owned() },
            RtpCodecKind::Audio,
            None,
        )
        .map_err(invalid)?;
    let registry = register_default_interceptors(Registry::new(), &mut media).map_err(invalid)?;
    let registry = registry.with(super::feedback::SLOT.into(), super::feedback::FeedbackTap::default());
    Ok((media, registry))
}

/// Answers `offer` for a connection that publishes, plays or calls, with one host candidate
/// at `host`. `may_publish` false refuses an offer that sends.
pub fn answer(
    offer: &str,
    direction: Direction,
    host: SocketAddr,
    tcp: bool,
    may_publish: bool,
    tracks_max: usize,
) -> Result<Setup, SfuError> {
    let sections = sections(offer);
    let sends = sections.iter().any(|(_, s, _)| *s);
    let sending = sections.iter().filter(|(_, s, _)| *s).count();
    if direction != Direction::Play && sending > tracks_max {
        return Err(SfuError::TooManyTracks(format!(
            "the offer sends {sending} tracks; a connection sends at most {tracks_max}"
        )));
    }
    if sends && !may_publish && direction != Direction::Play {
        return Err(SfuError::NotPublisher(
            "the offer sends media, but your room role lets you receive only (send recvonly sections)".into(),
        ));
    }
    let usable: Vec<Kind> = sections
        .iter()
        .filter(|(_, sends, receives)| match direction {
            Direction::Publish => *sends,
            Direction::Play => *receives,
            Direction::Call => true,
        })
        .map(|(k, _, _)| *k)
        .collect();
    if usable.is_empty() && direction != Direction::Call {
        return Err(SfuError::InvalidSdp(match direction {
            Direction::Publish => "the offer has no audio or video section the client sends".into(),
            _ => "the offer has no audio or video section the client receives".into(),
        }));
    }
    let now = Instant::now();
    let (media, registry) = media_engine()?;
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
    let stream = random_token(12);
    let mut slots = Vec::new();
    if direction == Direction::Play {
        for (i, kind) in usable.iter().enumerate() {
            pc.add_track(local_track(&stream, slot_track(i), *kind)).map_err(invalid)?;
            slots.push(*kind);
        }
    }
    let offer = RTCSessionDescription::offer(offer.to_owned()).map_err(invalid)?;
    pc.set_remote_description(now, offer).map_err(invalid)?;
    pc.add_local_candidate(host_candidate(host, false)?).map_err(invalid)?;
    if tcp {
        // ICE over TCP on the same address and port, for networks that let no UDP through.
        pc.add_local_candidate(host_candidate(host, true)?).map_err(invalid)?;
    }
    let answer = pc.create_answer(None).map_err(invalid)?;
    pc.set_local_description(now, answer).map_err(invalid)?;
    let sdp = pc.local_description().map(|d| d.sdp).ok_or_else(|| invalid("no local description"))?;
    Ok(Setup { pc, ufrag, sdp, slots, stream })
}

/// The id of the local track on slot `slot`.
pub(super) fn slot_track(slot: usize) -> String {
    format!("outpost-{slot}")
}

/// Our host candidate at `host`: UDP, or passive TCP (ICE over TCP on the same port).
pub fn host_candidate(
    host: SocketAddr,
    tcp: bool,
) -> Result<rtc::peer_connection::transport::RTCIceCandidateInit, SfuError> {
    let (network, tcp_type) = if tcp {
        ("tcp", rtc::ice::tcp_type::TcpType::Passive)
    } else {
        ("udp", rtc::ice::tcp_type::TcpType::default())
    };
    let base_config = CandidateConfig {
        network: network.to_owned(),
        address: host.ip().to_string(),
        port: host.port(),
        component: 1,
        ..Default::default()
    };
    let candidate = CandidateHostConfig { base_config, tcp_type }.new_candidate_host().map_err(invalid)?;
    RTCIceCandidate::from(&candidate).to_json().map_err(invalid)
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
