//! Media: WHIP (`POST /v1/rooms/{id}/whip`, RFC 9725) publishes into a room's call, WHEP
//! (`POST /v1/rooms/{id}/whep`) plays it; each answers an SDP offer with an SDP answer and a
//! `Location` naming the connection, which `DELETE` ends. `/v1/media/turn-credentials` hands
//! out credentials for the built-in TURN server.
//!
//! A room's call is for its joined participants: `member` and above publish, everyone joined
//! plays. The answer carries the media relay's one ICE candidate (the relay is ICE-lite), so
//! no trickle is needed; `PATCH` on a connection answers 405, as RFC 9725 lets a server that
//! does not take trickled candidates.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::auth_api::NoContent;
use super::body::{JsonBody, SdpBody};
use super::problem::Problem;
use super::{ApiTags, UserAuth, parse_id, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::DomainError;
use crate::domain::policy::{Permission, RoomRole};
use crate::domain::rooms::RoomStatus;
use crate::ids::{Id, rfc3339};
use crate::media::sfu::{Direction, SessionInfo, Sfu, SfuError};
use crate::tenancy::OrgScope;

crate::problems!(MediaErrors: 401, 403, 409);
crate::problems!(SignalErrors: 400, 401, 403, 404, 409, 413, 415);
crate::problems!(ConnectionErrors: 401, 403, 404);
crate::problems!(ModerateErrors: 400, 401, 403, 404, 409, 422);

/// What a media connection does.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "MediaDirection", rename_all = "snake_case")]
pub enum DirectionView {
    /// WHIP: sends tracks.
    Publish,
    /// WHEP: receives tracks.
    Play,
    /// Over the realtime socket: sends and receives.
    Call,
}

/// A media (WebRTC) connection in a room's call.
#[derive(Object, Debug)]
#[oai(rename = "MediaConnection")]
pub struct ConnectionView {
    pub id: String,
    pub room_id: String,
    pub user_id: String,
    pub direction: DirectionView,
    pub created_at: String,
}

fn connection_view(s: &SessionInfo) -> ConnectionView {
    ConnectionView {
        id: s.id.to_string(),
        room_id: s.room.to_string(),
        user_id: s.user.to_string(),
        direction: direction_view(s.direction),
        created_at: rfc3339(s.created_at_ms),
    }
}

/// A room's call: who is connected and what they publish (the same as the realtime
/// `call_state` frame).
#[derive(Object, Debug)]
#[oai(rename = "CallState")]
pub struct CallStateView {
    pub participants: Vec<CallParticipantView>,
    pub active_speaker: Option<String>,
    pub locked: bool,
    /// The running recording's id, if the call is being recorded.
    pub recording: Option<String>,
}

/// One connection in a `call_state` (and in `GET /v1/rooms/{id}/call`).
#[derive(Object, Debug)]
#[oai(rename = "CallParticipant")]
pub struct CallParticipantView {
    pub connection: String,
    pub user: String,
    /// `call`, `publish` (WHIP) or `play` (WHEP).
    pub direction: String,
    pub tracks: Vec<CallTrackView>,
    pub speaking: bool,
    pub spatial: serde_json::Value,
}

/// One published track in a `call_state` (and in `GET /v1/rooms/{id}/call`).
#[derive(Object, Debug)]
#[oai(rename = "CallTrack")]
pub struct CallTrackView {
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

// The realtime frame's shapes are the engine's; REST answers carry the same fields as API
// objects.
impl From<crate::realtime::protocol::CallParticipant> for CallParticipantView {
    fn from(p: crate::realtime::protocol::CallParticipant) -> Self {
        let tracks = p
            .tracks
            .into_iter()
            .map(|t| CallTrackView {
                id: t.id,
                kind: t.kind,
                codec: t.codec,
                track: t.track,
                source: t.source,
                muted: t.muted,
                muted_by_moderator: t.muted_by_moderator,
            })
            .collect();
        Self {
            connection: p.connection,
            user: p.user,
            direction: p.direction,
            tracks,
            speaking: p.speaking,
            spatial: p.spatial,
        }
    }
}

fn direction_view(d: Direction) -> DirectionView {
    match d {
        Direction::Publish => DirectionView::Publish,
        Direction::Play => DirectionView::Play,
        Direction::Call => DirectionView::Call,
    }
}

fn call_state_view(s: &crate::media::sfu::CallState) -> CallStateView {
    CallStateView {
        participants: crate::realtime::call_participants(s).into_iter().map(CallParticipantView::from).collect(),
        active_speaker: s.active_speaker.map(|c| c.to_string()),
        locked: s.locked,
        recording: s.recording.map(|r| r.to_string()),
    }
}

/// Which tracks of whom to mute or unmute.
#[derive(Object, Debug, serde::Deserialize)]
#[oai(rename = "CallMute")]
#[serde(deny_unknown_fields)]
pub struct CallMuteBody {
    pub user_id: String,
    /// `mic`, `camera` or `screen`; absent: all their tracks.
    pub source: Option<String>,
    /// False unmutes (default true).
    #[serde(default = "yes")]
    #[oai(default = "yes")]
    pub muted: bool,
}

fn yes() -> bool {
    true
}

#[derive(Object, Debug, serde::Deserialize)]
#[oai(rename = "CallRemove")]
#[serde(deny_unknown_fields)]
pub struct CallRemoveBody {
    pub user_id: String,
}

#[derive(Object, Debug, serde::Deserialize)]
#[oai(rename = "CallLock")]
#[serde(deny_unknown_fields)]
pub struct CallLockBody {
    pub locked: bool,
}

/// What a moderation act changed.
#[derive(Object, Debug)]
#[oai(rename = "CallModerated")]
pub struct ModeratedView {
    /// Tracks muted or unmuted, or connections ended.
    pub changed: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "MediaConnectionList")]
pub struct ConnectionList {
    pub items: Vec<ConnectionView>,
}

#[derive(ApiResponse)]
pub enum SdpAnswer {
    /// The SDP answer. `Location` names the connection (`DELETE` it to hang up); `Link`
    /// headers name the TURN server with fresh credentials when this server runs one.
    #[oai(status = 201, content_type = "application/sdp")]
    Created(
        PlainText<String>,
        #[oai(header = "Location")] String,
        #[oai(header = "ETag")] String,
        #[oai(header = "Link")] Option<String>,
    ),
}

impl From<SfuError> for Problem {
    fn from(e: SfuError) -> Self {
        use poem::http::StatusCode;
        let status = match e {
            SfuError::InvalidSdp(_) => StatusCode::BAD_REQUEST,
            SfuError::NotPublisher(_) => StatusCode::FORBIDDEN,
            SfuError::NoConnection => return Problem::not_found("media connection"),
            SfuError::CallFull(_) | SfuError::Locked | SfuError::TooManyTracks(_) | SfuError::Conflict(_) => {
                StatusCode::CONFLICT
            }
            SfuError::ServerFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            SfuError::Disk(_) => StatusCode::INSUFFICIENT_STORAGE,
            SfuError::Listen { .. } => {
                return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "media relay failure");
            }
        };
        Problem::new(status, e.code(), e.to_string())
    }
}

pub(super) fn sfu(app: &App) -> Result<&Sfu, DomainError> {
    app.sfu.as_ref().ok_or_else(|| DomainError::Conflict {
        code: "media_disabled",
        detail: "this server runs no media relay (media.rtc_listen is not set)".into(),
    })
}

/// The caller's joined role in room `id` if it is at least `need` (403 otherwise, 404 when
/// they may not see it), and the room is live (409 when archived).
fn call_role(app: &App, p: &Principal, room: Id, need: RoomRole) -> Result<RoomRole, DomainError> {
    let (r, part) = crate::domain::rooms::get(&app.store, OrgScope::member(p), p.user, room)?;
    let role = part.filter(|x| x.joined_at_ms.is_some()).map(|x| x.role);
    let Some(role) = role.filter(|r| *r >= need) else {
        return Err(DomainError::Forbidden {
            detail: format!("the room's call is for its joined participants with role {} or above", need.as_str()),
        });
    };
    if r.status != RoomStatus::Active {
        return Err(DomainError::Conflict {
            code: "room_archived",
            detail: "the room is archived; its call is over".into(),
        });
    }
    Ok(role)
}

/// Refuses (403) unless the caller holds `need` in room `id`, before anything about the
/// request's body is looked at; the writer checks again when it records the act.
pub(super) fn require_room_role(app: &App, p: &Principal, room: Id, need: RoomRole) -> Result<(), DomainError> {
    let (_, part) = crate::domain::rooms::get(&app.store, OrgScope::member(p), p.user, room)?;
    if part.filter(|x| x.joined_at_ms.is_some()).is_some_and(|x| x.role >= need) {
        Ok(())
    } else {
        Err(DomainError::Forbidden { detail: format!("this takes the room role {} or above", need.as_str()) })
    }
}

/// `Link` headers for the TURN server (RFC 9725 section 4.6), if there is one.
fn ice_links(app: &App, user: Id) -> Option<String> {
    let turn = app.turn.as_ref()?;
    let c = turn.credentials(user);
    let links: Vec<String> = c
        .urls
        .iter()
        .map(|u| {
            format!(
                "<{u}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                c.username, c.password
            )
        })
        .collect();
    Some(links.join(", "))
}

async fn signal(
    app: &App,
    auth: &UserAuth,
    room_id: &str,
    body: &SdpBody,
    direction: Direction,
) -> Result<SdpAnswer, SignalErrors> {
    let p = auth.require(app, Permission::RoomsRead).await?;
    let room = parse_id(room_id, "room")?;
    let need = if direction == Direction::Publish { RoomRole::Member } else { RoomRole::Viewer };
    call_role(app, &p, room, need)?;
    let sfu = sfu(app)?;
    let offer = body.sdp()?;
    let answer = sfu.open(p.org, room, p.user, direction, offer, true, None).map_err(Problem::from)?;
    let location = format!("/v1/media/connections/{}", answer.session.id);
    let etag = format!("\"{}\"", answer.session.id);
    Ok(SdpAnswer::Created(PlainText(answer.sdp), location, etag, ice_links(app, p.user)))
}

/// Time-limited TURN credentials: give them to `RTCPeerConnection` as an ICE server.
#[derive(Object, Debug)]
#[oai(rename = "TurnCredentials")]
pub struct TurnCredentialsView {
    /// e.g. `turn:203.0.113.10:3478?transport=udp`.
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
    /// Seconds they stay valid.
    pub ttl_s: u64,
    pub expires_at: String,
}

#[derive(Default)]
pub struct MediaApi;

#[OpenApi(tag = "ApiTags::Media")]
impl MediaApi {
    /// Publish into the room's call (WHIP, RFC 9725): send an SDP offer with the tracks to
    /// send, get the SDP answer. Joined participants with role `member` or above publish.
    /// Codecs: Opus, VP8 and H.264 (constrained baseline, packetization mode 1).
    ///
    /// Permission: `rooms.read`. Room role: `member`.
    #[oai(path = "/v1/rooms/:room_id/whip", method = "post", operation_id = "whipPublish")]
    async fn whip(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
        body: SdpBody,
    ) -> Result<SdpAnswer, SignalErrors> {
        signal(&app, &auth, &room_id.0, &body, Direction::Publish).await
    }

    /// Play the room's call (WHEP): send an SDP offer with the sections to receive (audio,
    /// video), get the SDP answer. Each section plays the newest track of its kind published
    /// in the call, your own WHIP stream's too (to monitor it): a newer one takes over, and
    /// when it ends the next newest plays.
    ///
    /// Permission: `rooms.read`. Room role: `viewer`.
    #[oai(path = "/v1/rooms/:room_id/whep", method = "post", operation_id = "whepPlay")]
    async fn whep(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
        body: SdpBody,
    ) -> Result<SdpAnswer, SignalErrors> {
        signal(&app, &auth, &room_id.0, &body, Direction::Play).await
    }

    /// The media connections in the room's call.
    ///
    /// Permission: `rooms.read`. Room role: `viewer`.
    #[oai(path = "/v1/rooms/:room_id/media/connections", method = "get", operation_id = "listMediaConnections")]
    async fn list_connections(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
    ) -> Result<Json<ConnectionList>, ConnectionErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        call_role(&app, &p, room, RoomRole::Viewer).or_else(|e| match e {
            DomainError::Conflict { .. } => Ok(RoomRole::Viewer),
            other => Err(other),
        })?;
        let items = app.sfu.as_ref().map(|s| s.sessions_in(p.org, room)).unwrap_or_default();
        Ok(Json(ConnectionList { items: items.iter().map(connection_view).collect() }))
    }

    /// The room's call: who is connected, what they publish (muted or not), who speaks, and
    /// their spatial data.
    ///
    /// Permission: `rooms.read`. Room role: `viewer`.
    #[oai(path = "/v1/rooms/:room_id/call", method = "get", operation_id = "getCall")]
    async fn get_call(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
    ) -> Result<Json<CallStateView>, ConnectionErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        call_role(&app, &p, room, RoomRole::Viewer).or_else(|e| match e {
            DomainError::Conflict { .. } => Ok(RoomRole::Viewer),
            other => Err(other),
        })?;
        let state = app.sfu.as_ref().map(|s| s.state(room));
        Ok(Json(state.as_ref().map_or(
            CallStateView { participants: Vec::new(), active_speaker: None, locked: false, recording: None },
            call_state_view,
        )))
    }

    /// Mute (stop forwarding) or unmute someone's tracks in the call; they are told
    /// (`call_muted`) and the call state shows it. Audited.
    ///
    /// Permission: `rooms.read`. Room role: `moderator`.
    #[oai(path = "/v1/rooms/:room_id/call/mute", method = "post", operation_id = "muteInCall")]
    async fn mute(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &poem::Request,
        room_id: Path<String>,
        body: JsonBody<CallMuteBody>,
    ) -> Result<Json<ModeratedView>, ModerateErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        require_room_role(&app, &p, room, RoomRole::Moderator)?;
        let target = body_user(&body.0.user_id)?;
        let source = body.0.source.clone();
        if source.as_deref().is_some_and(|s| !matches!(s, "mic" | "camera" | "screen")) {
            return Err(DomainError::invalid("/source", "invalid", "source is mic, camera or screen").into());
        }
        let muted = body.0.muted;
        let action = crate::domain::rooms::CallAction::Mute { target, source: source.clone(), muted };
        crate::domain::rooms::call_action(&app.writer, user_ctx(req, &p), p.user, room, action)
            .await
            .map_err(not_a_participant)?;
        let changed = app.sfu.as_ref().map_or(0, |s| s.moderate(room, target, source.as_deref(), muted, p.user));
        Ok(Json(ModeratedView { changed: changed as u64 }))
    }

    /// End someone's connections to the call (they stay in the room, and may join again
    /// unless the call is locked). Audited.
    ///
    /// Permission: `rooms.read`. Room role: `moderator`.
    #[oai(path = "/v1/rooms/:room_id/call/remove", method = "post", operation_id = "removeFromCall")]
    async fn remove(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &poem::Request,
        room_id: Path<String>,
        body: JsonBody<CallRemoveBody>,
    ) -> Result<Json<ModeratedView>, ModerateErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        require_room_role(&app, &p, room, RoomRole::Moderator)?;
        let target = body_user(&body.0.user_id)?;
        let action = crate::domain::rooms::CallAction::Remove { target };
        crate::domain::rooms::call_action(&app.writer, user_ctx(req, &p), p.user, room, action)
            .await
            .map_err(not_a_participant)?;
        let changed = app.sfu.as_ref().map_or(0, |s| s.close_user(room, target, "removed"));
        Ok(Json(ModeratedView { changed: changed as u64 }))
    }

    /// Lock the call (nobody new joins; those in it stay) or unlock it. Audited.
    ///
    /// Permission: `rooms.read`. Room role: `host`.
    #[oai(path = "/v1/rooms/:room_id/call/lock", method = "put", operation_id = "lockCall")]
    async fn lock(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &poem::Request,
        room_id: Path<String>,
        body: JsonBody<CallLockBody>,
    ) -> Result<Json<CallStateView>, ModerateErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        require_room_role(&app, &p, room, RoomRole::Host)?;
        let locked = body.0.locked;
        let action = crate::domain::rooms::CallAction::Lock { locked };
        crate::domain::rooms::call_action(&app.writer, user_ctx(req, &p), p.user, room, action).await?;
        let sfu = sfu(&app)?;
        sfu.set_locked(room, p.org, locked);
        Ok(Json(call_state_view(&sfu.state(room))))
    }

    /// Hang up a media connection (the WHIP/WHEP resource). Its owner hangs up their own; a
    /// room moderator or host hangs up anyone's.
    ///
    /// Permission: `rooms.read`.
    #[oai(path = "/v1/media/connections/:connection_id", method = "delete", operation_id = "deleteMediaConnection")]
    async fn delete_connection(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        connection_id: Path<String>,
    ) -> Result<NoContent, ConnectionErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let id = parse_id(&connection_id.0, "media connection")?;
        let not_found = DomainError::NotFound { what: "media connection" };
        let Some(sfu) = app.sfu.as_ref() else { return Err(not_found.into()) };
        let Some(s) = sfu.session(p.org, id) else { return Err(not_found.into()) };
        if s.user != p.user {
            let (_, part) =
                crate::domain::rooms::get(&app.store, OrgScope::member(&p), p.user, s.room).map_err(|_| not_found)?;
            let role = part.filter(|x| x.joined_at_ms.is_some()).map(|x| x.role);
            if role.is_none_or(|r| r < RoomRole::Moderator) {
                return Err(DomainError::Forbidden {
                    detail: "only its owner, or a moderator or host of the room, hangs up a media connection".into(),
                }
                .into());
            }
        }
        sfu.close(id, "removed");
        Ok(NoContent::Done)
    }

    /// Fresh credentials for the built-in TURN server (409 `turn_disabled` when the server runs
    /// without one).
    ///
    /// Permission: `rooms.read`.
    #[oai(path = "/v1/media/turn-credentials", method = "post", operation_id = "createTurnCredentials")]
    async fn turn_credentials(
        &self,
        app: Data<&App>,
        auth: UserAuth,
    ) -> Result<Json<TurnCredentialsView>, MediaErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let turn = app.turn.as_ref().ok_or_else(|| DomainError::Conflict {
            code: "turn_disabled",
            detail: "this server runs no TURN server (media.turn_listen is not set)".into(),
        })?;
        let c = turn.credentials(p.user);
        Ok(Json(TurnCredentialsView {
            urls: c.urls,
            username: c.username,
            credential: c.password,
            ttl_s: app.config.media.turn_credential_ttl_s,
            expires_at: rfc3339(c.expires_at_s as i64 * 1000),
        }))
    }
}

/// The user a call moderation names in its body. It is a field, not the resource: a malformed id
/// is 422 at `/user_id`, like one who does not take part (`not_a_participant`), while the room
/// in the path stays a 404 when missing.
fn body_user(id: &str) -> Result<Id, DomainError> {
    id.parse().map_err(|_| DomainError::invalid("/user_id", "invalid_id", "not an id"))
}

fn not_a_participant(e: DomainError) -> DomainError {
    match e {
        DomainError::NotFound { what: "participant" } => {
            DomainError::invalid("/user_id", "not_a_participant", "this user does not take part in the room")
        }
        e => e,
    }
}
