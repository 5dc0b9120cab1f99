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
use super::body::SdpBody;
use super::problem::Problem;
use super::{ApiTags, UserAuth, parse_id};
use crate::app::App;
use crate::auth::Principal;
use crate::auth::policy::{Permission, RoomRole};
use crate::domain::DomainError;
use crate::domain::rooms::RoomStatus;
use crate::ids::{Id, rfc3339};
use crate::media::sfu::{Direction, SessionInfo, Sfu, SfuError};

crate::problems!(MediaErrors: 401, 403, 409);
crate::problems!(SignalErrors: 400, 401, 403, 404, 409, 413, 415);
crate::problems!(ConnectionErrors: 401, 403, 404);

/// What a media connection does.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "MediaDirection", rename_all = "snake_case")]
pub enum DirectionView {
    Publish,
    Play,
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
        direction: match s.direction {
            Direction::Publish => DirectionView::Publish,
            Direction::Play => DirectionView::Play,
        },
        created_at: rfc3339(s.created_at_ms),
    }
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
        match e {
            SfuError::InvalidSdp(detail) => Problem::new(StatusCode::BAD_REQUEST, "invalid_sdp", detail),
            SfuError::CallFull(_) => Problem::new(StatusCode::CONFLICT, "call_full", e.to_string()),
            SfuError::ServerFull(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "media_full", e.to_string()),
            SfuError::Listen { .. } => {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "media relay failure")
            }
        }
    }
}

fn sfu(app: &App) -> Result<&Sfu, DomainError> {
    app.sfu.as_ref().ok_or_else(|| DomainError::Conflict {
        code: "media_disabled",
        detail: "this server runs no media relay (media.rtc_listen is not set)".into(),
    })
}

/// The caller's joined role in room `id` if it is at least `need` (403 otherwise, 404 when
/// they may not see it), and the room is live (409 when archived).
fn call_role(app: &App, p: &Principal, room: Id, need: RoomRole) -> Result<RoomRole, DomainError> {
    let (r, part) = crate::domain::rooms::get(&app.store, p, room)?;
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
    let answer = sfu.open(p.org, room, p.user, direction, offer).map_err(Problem::from)?;
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

pub struct MediaApi;

#[OpenApi(tag = "ApiTags::Media")]
impl MediaApi {
    /// Publish into the room's call (WHIP, RFC 9725): send an SDP offer with the tracks to
    /// send, get the SDP answer. Joined participants with role `member` or above publish.
    /// Codecs: Opus and VP8.
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
    /// video), get the SDP answer. Each section plays the newest published track of its kind,
    /// and moves on to the next newest when that one ends.
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
            let (_, part) = crate::domain::rooms::get(&app.store, &p, s.room).map_err(|_| not_found)?;
            let role = part.filter(|x| x.joined_at_ms.is_some()).map(|x| x.role);
            if role.is_none_or(|r| r < RoomRole::Moderator) {
                return Err(DomainError::Forbidden {
                    detail: "only its owner, or a moderator or host of the room, hangs up a media connection".into(),
                }
                .into());
            }
        }
        sfu.close(id);
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
