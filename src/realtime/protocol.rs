//! The realtime wire protocol: JSON text frames, one object each, told apart by `op`. Every
//! frame here appears, with an example, in `openapi/realtime.md` (a test checks both ways).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol Outpost speaks.
pub const SUBPROTOCOL: &str = "outpost.v1";
/// A second offered subprotocol may carry the access token: `access_token.<token>`.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "access_token.";

/// A frame larger than this from a client is refused (close 4002 or 1009).
pub const FRAME_BYTES_MAX: usize = 64 << 10;

/// Close codes (4000–4999 are the application's).
pub mod close {
    /// No valid `auth` frame in time, or the token was refused or expired without `auth`.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The session was revoked, or the user or organization is no longer active.
    pub const REVOKED: u16 = 4003;
    /// A frame the protocol does not allow (not JSON, unknown op, too large).
    pub const PROTOCOL: u16 = 4002;
    /// The client did not keep up: its send queue filled. It should reconnect and resume from
    /// the positions in the `closing` frame (or its own).
    pub const TOO_SLOW: u16 = 4008;
    /// Too many connections for this user or organization.
    pub const TOO_MANY: u16 = 4029;
    /// Nothing heard from the client for the idle timeout.
    pub const IDLE: u16 = 4010;
    /// The server is shutting down; reconnect and resume (standard "going away").
    pub const GOING_AWAY: u16 = 1001;
}

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Authenticates (the first frame, unless the token came as a subprotocol), or
    /// re-authenticates with a fresh token before the current one expires.
    Auth { token: String },
    /// Subscribes to a topic; with `since` (the last `seq` seen on it) and `epoch`, replays
    /// what was missed first.
    Subscribe {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// For the inbox (`user:{me}`) without `since`: resume from where this device last
        /// acknowledged (`default` when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    Unsubscribe {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// Sets (or updates) the caller's presence on a room or channel topic it follows.
    Presence {
        topic: String,
        /// `online` (default), `away` or `busy`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        /// App state, at most 2 KiB of JSON (e.g. a position in a 3D space).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Relays an ephemeral signal to the topic's other subscribers (never stored).
    Signal { topic: String, kind: String, data: serde_json::Value },
    /// Takes, or renews, a named lock in a room for `lease_ms`.
    Lock {
        topic: String,
        name: String,
        lease_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// Releases a lock held under `token`.
    Unlock {
        topic: String,
        name: String,
        token: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// Records durably that this device has seen the inbox (`user:{me}`) up to `seq`.
    Ack {
        topic: String,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// Joins the room's call with an SDP offer (the tracks to send; none to only receive).
    CallJoin {
        room: String,
        sdp: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// The answer to our `call_offer`.
    CallAnswer { connection: String, sdp: String },
    /// A renegotiation offer of the client's (it adds or removes tracks); answered with
    /// `call_answer`.
    CallOffer { connection: String, sdp: String },
    /// A trickled ICE candidate of the client's: `candidate` as `RTCIceCandidate.candidate`
    /// gives it (`candidate:…`), empty at the end of gathering. Optional: the relay also learns
    /// the client's addresses from its connectivity checks.
    CallCandidate {
        connection: String,
        candidate: String,
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "sdpMid")]
        sdp_mid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "sdpMLineIndex")]
        sdp_m_line_index: Option<u16>,
    },
    /// Labels the client's tracks (`source`: mic, camera, screen), says which it muted, and
    /// sets its spatial data (position, orientation, screen surfaces; at most 4 KiB of JSON).
    CallUpdate {
        connection: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tracks: Vec<CallTrackUpdate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spatial: Option<serde_json::Value>,
        /// The video quality to receive when publishers send several (simulcast): `low`,
        /// `medium` or `high` (the default); the relay also stays within what the client's
        /// bandwidth estimates (REMB) allow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        video_quality: Option<String>,
        /// Per received video track (by the relay's id from `call_state`): `off` (not shown:
        /// nothing is sent), `low`, `medium` or `high`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        video: BTreeMap<String, String>,
    },
    /// Leaves the call (closing the socket leaves it too).
    CallLeave {
        connection: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
}

/// What a client says about one of its tracks, by the track's own id.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallTrackUpdate {
    /// The track's id in the client (`MediaStreamTrack.id`, the SDP's msid track id).
    pub track: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted: Option<bool>,
}

/// One published track in a `call_state` (and in `GET /v1/rooms/{id}/call`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct CallTrack {
    /// The relay's id for the track.
    pub id: String,
    /// `audio` or `video`.
    pub kind: String,
    /// e.g. `video/VP8`, `video/H264`, `audio/opus`.
    pub codec: String,
    /// The publisher's own id for it.
    pub track: String,
    /// `mic`, `camera`, `screen` or `unknown`.
    pub source: String,
    pub muted: bool,
    pub muted_by_moderator: bool,
}

/// One connection in a `call_state` (and in `GET /v1/rooms/{id}/call`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct CallParticipant {
    pub connection: String,
    pub user: String,
    /// `call`, `publish` (WHIP) or `play` (WHEP).
    pub direction: String,
    pub tracks: Vec<CallTrack>,
    pub speaking: bool,
    pub spatial: serde_json::Value,
}

/// What the server sends.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authentication succeeded.
    Welcome {
        user: String,
        org: String,
        session: String,
        /// The store epoch: resume positions are only valid within one epoch.
        epoch: u64,
        /// When the access token expires (RFC 3339); send `auth` with a fresh one before.
        expires_at: String,
    },
    /// A subscription is live (after any replay).
    Subscribed {
        topic: String,
        /// The last seq delivered on this topic so far (0 if none).
        seq: u64,
        /// For the inbox: events after this device's acknowledged position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unread: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    Unsubscribed {
        topic: String,
        /// `requested`, or `access_lost` when the caller may no longer see the topic.
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// One durable event.
    Event {
        topic: String,
        seq: u64,
        #[serde(rename = "type")]
        kind: String,
        actor: String,
        at: String,
        data: serde_json::Value,
    },
    /// The client's position on a topic cannot be resumed (another epoch, or trimmed from the
    /// log): refetch by REST, then subscribe again without `since`.
    Reset { topic: String, reason: String },
    Error {
        code: String,
        detail: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// Someone's presence on a topic: `here` (already present when you subscribed), `join`,
    /// `update` or `leave`.
    Presence {
        topic: String,
        change: String,
        user: String,
        device: String,
        status: String,
        state: serde_json::Value,
        since: String,
    },
    /// A relayed signal.
    Signal { topic: String, from: String, kind: String, data: serde_json::Value },
    /// A lock's holder changed: `holder` null means free.
    LockState { topic: String, name: String, holder: Option<String>, token: Option<u64>, expires_at: Option<String> },
    /// Your `lock` is granted (or renewed): pass `token` along with what you change under it.
    Locked {
        topic: String,
        name: String,
        token: u64,
        expires_at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// An `ack` is durable: the position kept and what is still unread after it.
    Acked {
        topic: String,
        seq: u64,
        unread: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// Sent just before the server closes the socket: why, and where to resume each topic.
    Closing { code: u16, reason: String, resume: BTreeMap<String, u64> },
    /// You are in the call: the answer to your `call_join` offer, and your connection's id.
    CallJoined {
        room: String,
        connection: String,
        sdp: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// Our offer (others' tracks came or went): answer with `call_answer`.
    CallOffer { room: String, connection: String, sdp: String },
    /// Our answer to your `call_offer`.
    CallAnswer { room: String, connection: String, sdp: String },
    /// The call's media state on its room topic: who is connected, what they publish, who is
    /// speaking, and spatial data. Sent on subscribe and whenever it changes (latest only).
    CallState {
        topic: String,
        participants: Vec<CallParticipant>,
        active_speaker: Option<String>,
        locked: bool,
        /// The running recording's id when the call is being recorded.
        recording: Option<String>,
    },
    /// A moderator muted (or unmuted) one of your tracks: it is not forwarded while muted.
    CallMuted { room: String, connection: String, track: String, muted: bool, by: String },
    /// Your connection ended: `left`, `removed` (by a moderator), `failed` (the network),
    /// `room_closed`.
    CallEnded { room: String, connection: String, reason: String },
}

impl ServerFrame {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }

    pub fn error(code: &str, detail: impl Into<String>, r#ref: Option<String>) -> Self {
        ServerFrame::Error { code: code.to_owned(), detail: detail.into(), r#ref }
    }
}

/// Every op, for the protocol document's check.
pub const CLIENT_OPS: &[&str] = &[
    "auth",
    "subscribe",
    "unsubscribe",
    "ping",
    "presence",
    "signal",
    "lock",
    "unlock",
    "ack",
    "call_join",
    "call_answer",
    "call_offer",
    "call_candidate",
    "call_update",
    "call_leave",
];
pub const SERVER_OPS: &[&str] = &[
    "welcome",
    "subscribed",
    "unsubscribed",
    "event",
    "reset",
    "error",
    "pong",
    "presence",
    "signal",
    "lock_state",
    "locked",
    "acked",
    "closing",
    "call_joined",
    "call_offer",
    "call_answer",
    "call_state",
    "call_muted",
    "call_ended",
];
