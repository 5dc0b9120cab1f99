//! `/v1/rooms`: rooms and their participants.

use std::collections::BTreeMap;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::problem::Problem;
use super::realtime::{PresenceList, presence_list};
use super::{ApiTags, UserAuth, parse_id, parse_if_match, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::paging::PageRequest;
use crate::domain::policy::{Permission, RoomRole};
use crate::domain::rooms::{self, Participant, Room, RoomFields, RoomFilter, RoomStatus, Visibility};
use crate::ids::{Id, rfc3339};
use crate::tenancy::OrgScope;

crate::problems!(RoomReadErrors: 400, 401, 403, 404);
crate::problems!(RoomListErrors: 400, 401, 403, 422);
crate::problems!(RoomWriteErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422, 507);

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "RoomVisibility", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum VisibilityView {
    /// Only participants see it; others join by invitation.
    Private,
    /// Everyone in the organization sees it and may join.
    Org,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "RoomStatus", rename_all = "snake_case")]
pub enum StatusView {
    Active,
    Archived,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "RoomRole", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RoomRoleView {
    Viewer,
    Member,
    Moderator,
    Host,
}

mirror_enum!(VisibilityView <=> Visibility { Private, Org });
mirror_enum!(RoomRoleView <=> RoomRole { Viewer, Member, Moderator, Host });

/// A room: where people meet.
#[derive(Object, Debug)]
#[oai(rename = "Room")]
pub struct RoomView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub owner_id: String,
    pub visibility: VisibilityView,
    pub status: StatusView,
    pub max_participants: u32,
    /// Participants who have joined.
    pub participant_count: u32,
    /// The caller's role here, if they take part.
    pub my_role: Option<RoomRoleView>,
    pub settings: BTreeMap<String, serde_json::Value>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
}

fn view(r: Room, me: Option<&Participant>) -> RoomView {
    RoomView {
        id: r.id.to_string(),
        name: r.name,
        description: r.description,
        owner_id: r.owner.to_string(),
        visibility: r.visibility.into(),
        status: if r.status == RoomStatus::Archived { StatusView::Archived } else { StatusView::Active },
        max_participants: r.max_participants,
        participant_count: r.joined,
        my_role: me.map(|p| p.role.into()),
        settings: r.settings.into_iter().collect(),
        metadata: r.metadata.into_iter().collect(),
        version: r.version,
        created_at: rfc3339(r.created_at_ms),
        updated_at: rfc3339(r.updated_at_ms),
    }
}

/// A participant of a room.
#[derive(Object, Debug)]
#[oai(rename = "Participant")]
pub struct ParticipantView {
    pub user_id: String,
    pub role: RoomRoleView,
    /// Absent while invited and not yet joined.
    pub joined_at: Option<String>,
    pub last_seen_at: String,
}

#[allow(clippy::needless_pass_by_value)] // used as a map function over owned participants
fn participant_view(p: Participant) -> ParticipantView {
    ParticipantView {
        user_id: p.user.to_string(),
        role: p.role.into(),
        joined_at: p.joined_at_ms.map(rfc3339),
        last_seen_at: rfc3339(p.last_seen_at_ms),
    }
}

#[derive(Object, Debug)]
#[oai(rename = "RoomPage")]
pub struct RoomPage {
    pub items: Vec<RoomView>,
    pub next_cursor: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "ParticipantList")]
pub struct ParticipantList {
    pub items: Vec<ParticipantView>,
}

/// Creates a room.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "CreateRoom", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomBody {
    pub name: String,
    pub description: Option<String>,
    /// Default `org`.
    pub visibility: Option<VisibilityView>,
    /// 1–10,000 (default 50).
    pub max_participants: Option<u32>,
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    pub metadata: Option<BTreeMap<String, serde_json::Value>>,
}

/// Changes a room; absent fields stay.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "UpdateRoom", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomBody {
    pub name: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<VisibilityView>,
    pub max_participants: Option<u32>,
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    pub metadata: Option<BTreeMap<String, serde_json::Value>>,
    pub version: Option<u64>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "InviteParticipant", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    pub user_id: String,
    /// Default `member`.
    pub role: Option<RoomRoleView>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ChangeRoomRole", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RoomRoleBody {
    pub role: RoomRoleView,
}

#[derive(ApiResponse)]
pub enum RoomCreated {
    #[oai(status = 201)]
    Created(Json<RoomView>, #[oai(header = "Location")] String),
}

fn map_json(m: Option<BTreeMap<String, serde_json::Value>>) -> Option<serde_json::Map<String, serde_json::Value>> {
    m.map(|m| m.into_iter().collect())
}

#[derive(Default)]
pub struct RoomsApi;

#[OpenApi(tag = "ApiTags::Rooms")]
#[allow(clippy::too_many_arguments)] // query parameters are arguments by the framework's design
impl RoomsApi {
    /// Create a room
    ///
    /// The creator becomes its host.
    ///
    /// Permission: `rooms.create`.
    #[oai(path = "/v1/rooms", method = "post", operation_id = "createRoom")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<CreateRoomBody>,
    ) -> Result<RoomCreated, RoomWriteErrors> {
        let p = auth.require(&app, Permission::RoomsCreate).await?;
        let b = body.0;
        let f = RoomFields {
            name: Some(b.name),
            description: b.description,
            visibility: b.visibility.map(Visibility::from),
            max_participants: b.max_participants,
            settings: map_json(b.settings),
            metadata: map_json(b.metadata),
            expected_version: None,
        };
        let room = rooms::create(&app.writer, user_ctx(req, &p), p.user, f).await?;
        let location = format!("/v1/rooms/{}", room.id);
        let me = Participant {
            user: p.user,
            role: RoomRole::Host,
            joined_at_ms: Some(room.created_at_ms),
            last_seen_at_ms: room.created_at_ms,
        };
        Ok(RoomCreated::Created(Json(view(room, Some(&me))), location))
    }

    /// List rooms
    ///
    /// Organization rooms and the private rooms the caller takes part in.
    ///
    /// Permission: `rooms.read`.
    #[oai(path = "/v1/rooms", method = "get", operation_id = "listRooms")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
        /// Default `active`.
        status: Query<Option<StatusView>>,
        visibility: Query<Option<VisibilityView>>,
        /// Only rooms I take part in.
        mine: Query<Option<bool>>,
        /// Matches name or description (case-insensitive substring).
        q: Query<Option<String>>,
    ) -> Result<Json<RoomPage>, RoomListErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let filter = RoomFilter {
            status: status.0.map(|s| if s == StatusView::Archived { RoomStatus::Archived } else { RoomStatus::Active }),
            visibility: visibility.0.map(Visibility::from),
            mine: mine.0.unwrap_or(false),
            text: q.0,
        };
        let page = rooms::list(&app.store, OrgScope::member(&p), p.user, page, filter).await?;
        Ok(Json(RoomPage {
            items: page.items.into_iter().map(|(r, me)| view(r, me.as_ref())).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// Get a room
    ///
    /// Permission: `rooms.read`.
    #[oai(path = "/v1/rooms/:room_id", method = "get", operation_id = "getRoom")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
    ) -> Result<Json<RoomView>, RoomReadErrors> {
        let (_, room, me) = room_in_path(&app, &auth, &room_id.0).await?;
        Ok(Json(view(room, me.as_ref())))
    }

    /// Update a room
    ///
    /// Permission: `rooms.read`. Room role: `host`.
    #[oai(path = "/v1/rooms/:room_id", method = "patch", operation_id = "updateRoom")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<UpdateRoomBody>,
    ) -> Result<Json<RoomView>, RoomWriteErrors> {
        let (p, id) = room_for(&app, &auth, &room_id.0).await?;
        let b = body.0;
        let f = RoomFields {
            name: b.name,
            description: b.description,
            visibility: b.visibility.map(Visibility::from),
            max_participants: b.max_participants,
            settings: map_json(b.settings),
            metadata: map_json(b.metadata),
            expected_version: parse_if_match(if_match.0.as_deref())?.or(b.version),
        };
        let (room, me) = rooms::update(&app.writer, user_ctx(req, &p), p.user, id, f).await?;
        Ok(Json(view(room, me.as_ref())))
    }

    /// Archive a room
    ///
    /// Permission: `rooms.read`. Room role: `host`.
    #[oai(path = "/v1/rooms/:room_id/archive", method = "post", operation_id = "archiveRoom")]
    async fn archive(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
    ) -> Result<Json<RoomView>, RoomWriteErrors> {
        status(&app, auth, req, &room_id.0, RoomStatus::Archived).await
    }

    /// Restore an archived room
    ///
    /// Permission: `rooms.read`. Room role: `host`.
    #[oai(path = "/v1/rooms/:room_id/restore", method = "post", operation_id = "restoreRoom")]
    async fn restore(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
    ) -> Result<Json<RoomView>, RoomWriteErrors> {
        status(&app, auth, req, &room_id.0, RoomStatus::Active).await
    }

    /// Delete a room
    ///
    /// Soft: it disappears; its history stays in the event log and audit trail.
    ///
    /// Permission: `rooms.read`. Room role: `host`.
    #[oai(path = "/v1/rooms/:room_id", method = "delete", operation_id = "deleteRoom")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
    ) -> Result<NoContent, RoomWriteErrors> {
        status(&app, auth, req, &room_id.0, RoomStatus::Deleted).await?;
        Ok(NoContent::Done)
    }

    /// Join a room
    ///
    /// Any organization room, or a private room one was invited to; `room_full` when no place
    /// is left.
    ///
    /// Permission: `rooms.read`.
    #[oai(path = "/v1/rooms/:room_id/join", method = "post", operation_id = "joinRoom")]
    async fn join(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
    ) -> Result<Json<ParticipantView>, RoomWriteErrors> {
        let (p, id) = room_for(&app, &auth, &room_id.0).await?;
        Ok(Json(participant_view(rooms::join(&app.writer, user_ctx(req, &p), p.user, id).await?)))
    }

    /// Leave a room
    ///
    /// Permission: `rooms.read`. Room role: `viewer`.
    #[oai(path = "/v1/rooms/:room_id/leave", method = "post", operation_id = "leaveRoom")]
    async fn leave(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
    ) -> Result<NoContent, RoomWriteErrors> {
        let (p, id) = room_for(&app, &auth, &room_id.0).await?;
        rooms::leave(&app.writer, user_ctx(req, &p), p.user, id).await?;
        Ok(NoContent::Done)
    }

    /// List a room's participants
    ///
    /// Permission: `rooms.read`.
    #[oai(path = "/v1/rooms/:room_id/participants", method = "get", operation_id = "listParticipants")]
    async fn participants(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
    ) -> Result<Json<ParticipantList>, RoomReadErrors> {
        let (p, id) = room_for(&app, &auth, &room_id.0).await?;
        let items = rooms::participants(&app.store, OrgScope::member(&p), p.user, id).await?;
        Ok(Json(ParticipantList { items: items.into_iter().map(participant_view).collect() }))
    }

    /// Invite someone into a room
    ///
    /// Permission: `rooms.read`. Room role: `moderator`.
    #[oai(path = "/v1/rooms/:room_id/participants", method = "post", operation_id = "inviteParticipant")]
    async fn invite(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
        body: JsonBody<InviteBody>,
    ) -> Result<Json<ParticipantView>, RoomWriteErrors> {
        let (p, id) = room_for(&app, &auth, &room_id.0).await?;
        // A malformed id names nobody: the room role is checked first, then "user not found".
        let target = body.0.user_id.parse().unwrap_or(crate::ids::Id::NIL);
        let role = body.0.role.map_or(RoomRole::Member, RoomRole::from);
        Ok(Json(participant_view(rooms::invite(&app.writer, user_ctx(req, &p), p.user, id, target, role).await?)))
    }

    /// Change a participant's room role
    ///
    /// Permission: `rooms.read`. Room role: `host`.
    #[oai(
        path = "/v1/rooms/:room_id/participants/:user_id/role",
        method = "put",
        operation_id = "changeParticipantRole"
    )]
    async fn role(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
        user_id: Path<String>,
        body: JsonBody<RoomRoleBody>,
    ) -> Result<Json<ParticipantView>, RoomWriteErrors> {
        let (p, id) = room_for(&app, &auth, &room_id.0).await?;
        let target = parse_id(&user_id.0, "participant")?;
        Ok(Json(participant_view(
            rooms::change_role(&app.writer, user_ctx(req, &p), p.user, id, target, body.0.role.into()).await?,
        )))
    }

    /// Remove a participant
    ///
    /// Permission: `rooms.read`. Room role: `moderator`.
    #[oai(path = "/v1/rooms/:room_id/participants/:user_id", method = "delete", operation_id = "removeParticipant")]
    async fn kick(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
        user_id: Path<String>,
    ) -> Result<NoContent, RoomWriteErrors> {
        let (p, id) = room_for(&app, &auth, &room_id.0).await?;
        let target = parse_id(&user_id.0, "participant")?;
        rooms::kick(&app.writer, user_ctx(req, &p), p.user, id, target).await?;
        Ok(NoContent::Done)
    }

    /// Who is here
    ///
    /// The people with presence in the room now (set over the realtime socket), with their
    /// status and app state.
    ///
    /// Permission: `rooms.read`.
    #[oai(path = "/v1/rooms/:room_id/presence", method = "get", operation_id = "getRoomPresence")]
    async fn presence(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
    ) -> Result<Json<PresenceList>, RoomReadErrors> {
        let (p, id) = room_for(&app, &auth, &room_id.0).await?;
        Ok(Json(presence_list(&app, p.org, &format!("room:{id}"))))
    }
}

/// The caller, and the room in the path with their place in it, if they may see it (not found
/// before not allowed).
async fn room_in_path(
    app: &App,
    auth: &UserAuth,
    room_id: &str,
) -> Result<(Principal, Room, Option<Participant>), Problem> {
    let p = auth.check(app).await?;
    let (room, me) = rooms::get(&app.store, OrgScope::member(&p), p.user, parse_id(room_id, "room")?)?;
    p.require(Permission::RoomsRead)?;
    Ok((p, room, me))
}

/// The caller and the id of the room in the path, as `room_in_path`.
async fn room_for(app: &App, auth: &UserAuth, room_id: &str) -> Result<(Principal, Id), Problem> {
    let (p, room, _) = room_in_path(app, auth, room_id).await?;
    Ok((p, room.id))
}

async fn status(
    app: &App,
    auth: UserAuth,
    req: &Request,
    room_id: &str,
    to: RoomStatus,
) -> Result<Json<RoomView>, RoomWriteErrors> {
    let (p, id) = room_for(app, &auth, room_id).await?;
    let (room, me) = rooms::set_status(&app.writer, user_ctx(req, &p), p.user, id, to).await?;
    Ok(Json(view(room, me.as_ref())))
}
