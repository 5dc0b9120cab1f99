//! Call signaling on the realtime socket: `call_join` with an SDP offer opens a connection to
//! the media relay that this socket owns; offers and answers go back and forth as tracks come
//! and go; `call_update` labels tracks and carries spatial data; the connections end with the
//! socket. Room roles decide: joined participants take part, `member` and above send.

use std::collections::HashMap;
use std::sync::Arc;

use crate::app::App;
use crate::auth::Principal;
use crate::domain::policy::{Permission, RoomRole};
use crate::domain::rooms::RoomStatus;
use crate::ids::Id;
use crate::media::sfu::simulcast::Quality;
use crate::media::sfu::{Direction, Note, NoteSink, SPATIAL_BYTES_MAX, Sfu, SfuError};
use crate::realtime::ephemeral::Mailbox;
use crate::realtime::protocol::{CallTrackUpdate, ServerFrame};
use crate::tenancy::OrgScope;

/// Tracks a `call_update` may label at once.
const TRACK_UPDATES_MAX: usize = 16;

/// The call connections one socket signals for (connection → room); they end with it.
#[derive(Default)]
pub struct Calls {
    sfu: Option<Sfu>,
    owned: HashMap<Id, Id>,
}

impl Drop for Calls {
    fn drop(&mut self) {
        if let Some(sfu) = &self.sfu {
            for id in self.owned.keys() {
                sfu.close(*id, "left");
            }
        }
    }
}

fn error(code: &str, detail: impl Into<String>, r#ref: Option<String>) -> ServerFrame {
    ServerFrame::error(code, detail, r#ref)
}

fn sfu_error(e: &SfuError, r#ref: Option<String>) -> ServerFrame {
    error(e.code(), e.to_string(), r#ref)
}

/// Where a connection's notes go: this socket's mailbox, latest per connection and kind.
fn note_sink(mailbox: Arc<Mailbox>) -> NoteSink {
    Arc::new(move |note: Note| {
        let (key, frame) = match note {
            Note::Offer { room, connection, sdp } => (
                format!("call:{connection}:offer"),
                ServerFrame::CallOffer { room: room.to_string(), connection: connection.to_string(), sdp },
            ),
            Note::Answer { room, connection, sdp } => (
                format!("call:{connection}:answer"),
                ServerFrame::CallAnswer { room: room.to_string(), connection: connection.to_string(), sdp },
            ),
            Note::Ended { room, connection, reason } => (
                format!("call:{connection}:ended"),
                ServerFrame::CallEnded {
                    room: room.to_string(),
                    connection: connection.to_string(),
                    reason: reason.to_owned(),
                },
            ),
            Note::Muted { room, connection, track, muted, by } => (
                format!("call:{connection}:muted:{track}"),
                ServerFrame::CallMuted {
                    room: room.to_string(),
                    connection: connection.to_string(),
                    track,
                    muted,
                    by: by.to_string(),
                },
            ),
        };
        mailbox.put(key, Arc::from(frame.to_text()));
    })
}

impl Calls {
    pub fn new(app: &App) -> Self {
        Self { sfu: app.sfu.clone(), owned: HashMap::new() }
    }

    fn sfu(&self, r#ref: Option<&String>) -> Result<&Sfu, ServerFrame> {
        self.sfu.as_ref().ok_or_else(|| {
            error("media_disabled", "this server runs no media relay (media.rtc_listen is not set)", r#ref.cloned())
        })
    }

    /// One of this socket's connections.
    fn owned(&self, connection: &str) -> Result<Id, ServerFrame> {
        connection
            .parse::<Id>()
            .ok()
            .filter(|id| self.owned.contains_key(id))
            .ok_or_else(|| error("not_found", "no such call connection on this socket", None))
    }

    /// `call_join`: checks the caller's room role, answers the offer.
    pub fn join(
        &mut self,
        app: &App,
        p: &Principal,
        mailbox: Arc<Mailbox>,
        room: &str,
        sdp: &str,
        r#ref: Option<String>,
    ) -> ServerFrame {
        let sfu = match self.sfu(r#ref.as_ref()) {
            Ok(s) => s.clone(),
            Err(f) => return f,
        };
        if p.require(Permission::RoomsRead).is_err() {
            return error("forbidden", "joining a call needs rooms.read", r#ref);
        }
        let Ok(room_id) = room.parse::<Id>() else {
            return error("not_found", "no such room", r#ref);
        };
        let (r, part) = match crate::domain::rooms::get(&app.store, OrgScope::member(p), p.user, room_id) {
            Ok(x) => x,
            Err(crate::domain::DomainError::NotFound { .. }) => return error("not_found", "no such room", r#ref),
            Err(e) => return error("unavailable", e.to_string(), r#ref),
        };
        let Some(role) = part.filter(|x| x.joined_at_ms.is_some()).map(|x| x.role) else {
            return error("forbidden", "join the room first: its call is for its joined participants", r#ref);
        };
        if r.status != RoomStatus::Active {
            return error("room_archived", "the room is archived; its call is over", r#ref);
        }
        let notes = note_sink(mailbox);
        match sfu.open(p.org, room_id, p.user, Direction::Call, sdp, role >= RoomRole::Member, Some(notes)) {
            Ok(answer) => {
                self.owned.insert(answer.session.id, room_id);
                ServerFrame::CallJoined {
                    room: room_id.to_string(),
                    connection: answer.session.id.to_string(),
                    sdp: answer.sdp,
                    r#ref,
                }
            }
            Err(e) => sfu_error(&e, r#ref),
        }
    }

    /// `call_answer` (`offer` false) or `call_offer` (`offer` true).
    pub fn sdp(&self, connection: &str, sdp: String, offer: bool) -> Result<(), ServerFrame> {
        let id = self.owned(connection)?;
        let sfu = self.sfu(None)?;
        let sent = if offer { sfu.client_offer(id, sdp) } else { sfu.client_answer(id, sdp) };
        sent.map_err(|e| sfu_error(&e, None))
    }

    /// `call_candidate`.
    pub fn candidate(&self, connection: &str, candidate: String) -> Result<(), ServerFrame> {
        let id = self.owned(connection)?;
        self.sfu(None)?.client_candidate(id, candidate).map_err(|e| sfu_error(&e, None))
    }

    /// `call_update`.
    pub fn update(
        &self,
        connection: &str,
        tracks: Vec<CallTrackUpdate>,
        spatial: Option<serde_json::Value>,
        video_quality: Option<&str>,
        video: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), ServerFrame> {
        let id = self.owned(connection)?;
        if tracks.len() > TRACK_UPDATES_MAX {
            return Err(error("invalid_call_update", "at most 16 tracks per call_update", None));
        }
        for t in &tracks {
            if t.track.is_empty() || t.track.len() > 128 {
                return Err(error("invalid_call_update", "track ids are 1–128 bytes", None));
            }
            if t.source.as_deref().is_some_and(|s| !matches!(s, "mic" | "camera" | "screen" | "unknown")) {
                return Err(error("invalid_call_update", "source is mic, camera, screen or unknown", None));
            }
        }
        if let Some(s) = &spatial
            && serde_json::to_vec(s).map_or(usize::MAX, |v| v.len()) > SPATIAL_BYTES_MAX
        {
            return Err(error("invalid_call_update", "spatial is at most 4 KiB of JSON", None));
        }
        let quality = match video_quality {
            None => None,
            Some(q) => Some(
                Quality::parse(q)
                    .ok_or_else(|| error("invalid_call_update", "video_quality is low, medium or high", None))?,
            ),
        };
        if video.len() > TRACK_UPDATES_MAX * 16 {
            return Err(error("invalid_call_update", "video names at most 256 tracks", None));
        }
        let mut per_track = Vec::new();
        for (track, q) in video {
            let Ok(id) = track.parse::<u64>() else {
                return Err(error("invalid_call_update", "video is keyed by the relay's track ids", None));
            };
            let q = match q.as_str() {
                "off" => None,
                other => Some(Quality::parse(other).ok_or_else(|| {
                    error("invalid_call_update", "a track's video is off, low, medium or high", None)
                })?),
            };
            per_track.push((id, q));
        }
        let tracks = tracks.into_iter().map(|t| (t.track, t.source, t.muted)).collect();
        let sfu = self.sfu(None)?;
        sfu.update(id, tracks, spatial, quality).map_err(|e| sfu_error(&e, None))?;
        if !per_track.is_empty() {
            sfu.track_quality(id, per_track).map_err(|e| sfu_error(&e, None))?;
        }
        Ok(())
    }

    /// `call_leave`: the connection ends (`call_ended` follows).
    pub fn leave(&mut self, connection: &str, r#ref: Option<String>) -> Result<(), ServerFrame> {
        let id = self.owned(connection).map_err(|_| error("not_found", "no such call connection", r#ref))?;
        self.owned.remove(&id);
        if let Some(sfu) = &self.sfu {
            sfu.close(id, "left");
        }
        Ok(())
    }
}
