//! The relay's vocabulary, as the rest of the server sees it: its errors (each with the problem
//! code it answers with), connection directions and track kinds, the notes a call connection
//! signals back over the realtime socket, the sinks for notes and state, the sessions, and the
//! call's media state (tracks, participants, speaking, spatial data) handed to the hub.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::ids::Id;

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

    pub(super) fn publishes(self) -> bool {
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
