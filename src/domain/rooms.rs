//! Rooms (the collaboration sessions) and their participants.
//!
//! A room is organization-wide (any member may see and join it) or private (only its
//! participants see it; others join by invitation). Capacity is enforced inside the writer:
//! the room record carries its count of joined participants, so two racing joins for the last
//! place commit one after the other and exactly one succeeds.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::paging::{self, Page, PageRequest};
use super::{DomainError, FieldError, check};
use crate::domain::policy::{self, RoomAction, RoomRole};
use crate::ids::Id;
use crate::store::tables::{ROOM_PARTICIPANTS, ROOMS, USER_ROOMS, org_id_id_key, org_id_key};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Store, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

pub const NAME_CHARS_MAX: usize = 200;
pub const DESCRIPTION_CHARS_MAX: usize = 4000;
pub const JSON_BYTES_MAX: usize = 16 * 1024;
pub const PARTICIPANTS_MAX: u32 = 10_000;
pub const PARTICIPANTS_DEFAULT: u32 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Private,
    Org,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomStatus {
    Active,
    Archived,
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Room {
    pub id: Id,
    pub name: String,
    pub description: String,
    pub owner: Id,
    pub visibility: Visibility,
    pub status: RoomStatus,
    pub max_participants: u32,
    /// Participants who have joined (invited ones do not count).
    pub joined: u32,
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub user: Id,
    pub role: RoomRole,
    /// `None` while invited and not yet joined.
    pub joined_at_ms: Option<i64>,
    pub last_seen_at_ms: i64,
}

/// Fields of a new room, or changes to one (absent: unchanged / default).
#[derive(Clone, Debug, Default)]
pub struct RoomFields {
    pub name: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<Visibility>,
    pub max_participants: Option<u32>,
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub expected_version: Option<u64>,
}

fn validate(f: &RoomFields, creating: bool) -> Result<(), DomainError> {
    let mut errors = Vec::new();
    match &f.name {
        Some(n) if n.trim().is_empty() || n.chars().count() > NAME_CHARS_MAX => {
            errors.push(FieldError::new("/name", "invalid_length", format!("1–{NAME_CHARS_MAX} characters")));
        }
        None if creating => errors.push(FieldError::new("/name", "missing_field", "a room needs a name")),
        _ => {}
    }
    if f.description.as_ref().is_some_and(|d| d.chars().count() > DESCRIPTION_CHARS_MAX) {
        errors.push(FieldError::new("/description", "too_long", format!("at most {DESCRIPTION_CHARS_MAX} characters")));
    }
    if f.max_participants.is_some_and(|m| m == 0 || m > PARTICIPANTS_MAX) {
        errors.push(FieldError::new("/max_participants", "out_of_range", format!("1–{PARTICIPANTS_MAX}")));
    }
    for (ptr, m) in [("/settings", &f.settings), ("/metadata", &f.metadata)] {
        if m.as_ref().is_some_and(|m| serde_json::to_vec(m).map_or(usize::MAX, |v| v.len()) > JSON_BYTES_MAX) {
            errors.push(FieldError::new(ptr, "too_large", format!("at most {JSON_BYTES_MAX} bytes of JSON")));
        }
    }
    check(errors)
}

fn room_topic(id: Id) -> String {
    format!("room:{id}")
}

/// Creates a room; its creator is its host, joined.
pub async fn create(writer: &Writer, ctx: MutationCtx, owner: Id, f: RoomFields) -> Result<Room, DomainError> {
    validate(&f, true)?;
    let org = ctx.scope.org();
    let id = Id::new();
    writer
        .submit(ctx, move |tx| {
            let now = tx.now_ms();
            let room = Room {
                id,
                name: f.name.clone().unwrap_or_default().trim().to_owned(),
                description: f.description.clone().unwrap_or_default(),
                owner,
                visibility: f.visibility.unwrap_or(Visibility::Org),
                status: RoomStatus::Active,
                max_participants: f.max_participants.unwrap_or(PARTICIPANTS_DEFAULT),
                joined: 1,
                settings: f.settings.clone().unwrap_or_default(),
                metadata: f.metadata.clone().unwrap_or_default(),
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
            };
            put_room(tx, org, &room)?;
            let host = Participant { user: owner, role: RoomRole::Host, joined_at_ms: Some(now), last_seen_at_ms: now };
            put_participant(tx, org, id, &host)?;
            if room.visibility == Visibility::Org {
                tx.emit("org", "room.created", json!({ "id": id, "name": room.name }));
            }
            tx.emit(
                room_topic(id),
                "room.created",
                json!({ "id": id, "name": room.name, "visibility": room.visibility }),
            );
            tx.audit("room.create", format!("room:{id}"), json!({ "name": room.name, "visibility": room.visibility }));
            Ok(room)
        })
        .await
}

/// A room `user` of `scope` may see, and their part in it.
pub fn get(store: &Store, scope: OrgScope, user: Id, id: Id) -> Result<(Room, Option<Participant>), DomainError> {
    store.peek(|r| visible(r, scope.org(), user, id))
}

/// The room `id` if `user` may see it (404 otherwise), with their participation.
pub(crate) fn visible(r: &impl Lookup, org: Id, user: Id, id: Id) -> Result<(Room, Option<Participant>), DomainError> {
    let room: Room = r
        .record::<Room>(ROOMS, &org_id_key(org, id))?
        .filter(|r| r.status != RoomStatus::Deleted)
        .ok_or(DomainError::NotFound { what: "room" })?;
    let part: Option<Participant> = r.record(ROOM_PARTICIPANTS, &org_id_id_key(org, id, user))?;
    if room.visibility == Visibility::Private && part.is_none() {
        return Err(DomainError::NotFound { what: "room" });
    }
    Ok((room, part))
}

/// Filters of the room list.
#[derive(Clone, Debug, Default)]
pub struct RoomFilter {
    pub status: Option<RoomStatus>,
    pub visibility: Option<Visibility>,
    /// Only rooms the caller takes part in.
    pub mine: bool,
    pub text: Option<String>,
}

/// Rooms `user` of `scope` may see.
pub async fn list(
    store: &Store,
    scope: OrgScope,
    user: Id,
    page: PageRequest,
    filter: RoomFilter,
) -> Result<Page<(Room, Option<Participant>)>, DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            let start = page.start_in(org.as_bytes());
            let rows = r.range(ROOMS, &start, &prefix_end(org.as_bytes()), false, paging::SCAN_MAX)?;
            let text = filter.text.as_ref().map(|t| t.to_lowercase());
            let mut items = Vec::new();
            let mut last = None;
            for (k, v) in &rows {
                last = Some(k.clone());
                let room: Room = decode(ROOMS, v)?;
                let me: Option<Participant> = r.record(ROOM_PARTICIPANTS, &org_id_id_key(org, room.id, user))?;
                let member = me.is_some();
                let status_ok = filter.status.map_or(room.status == RoomStatus::Active, |s| room.status == s)
                    && room.status != RoomStatus::Deleted;
                let ok = status_ok
                    && (room.visibility == Visibility::Org || member)
                    && (!filter.mine || member)
                    && filter.visibility.is_none_or(|vis| room.visibility == vis)
                    && text.as_ref().is_none_or(|t| {
                        room.name.to_lowercase().contains(t) || room.description.to_lowercase().contains(t)
                    });
                if ok {
                    items.push((room, me));
                    if items.len() == page.limit {
                        break;
                    }
                }
            }
            let more = rows.len() == paging::SCAN_MAX || items.len() == page.limit;
            Ok(Page { items, next_cursor: if more { last.map(|k| paging::encode_cursor(&k)) } else { None } })
        })
        .await
}

/// Loads the room for a change by `user`, refusing unless their room role allows `action`.
fn load_for(
    tx: &Tx<'_, '_>,
    org: Id,
    user: Id,
    id: Id,
    action: RoomAction,
) -> Result<(Room, Option<Participant>), DomainError> {
    let (room, part) = visible(tx, org, user, id)?;
    let joined_role = part.as_ref().filter(|p| p.joined_at_ms.is_some()).map(|p| p.role);
    if !policy::room_allows(joined_role, action) {
        return Err(DomainError::Forbidden {
            detail: format!("your part in this room does not allow that ({:?} needed)", action.min_role()),
        });
    }
    Ok((room, part))
}

/// `target`'s part in room `id`, which a change about them needs (404 without one).
fn participant(tx: &Tx<'_, '_>, org: Id, id: Id, target: Id) -> Result<Participant, DomainError> {
    tx.record(ROOM_PARTICIPANTS, &org_id_id_key(org, id, target))?.ok_or(DomainError::NotFound { what: "participant" })
}

/// Whether a participant of room role `actor` may act on one of role `target` (remove them,
/// mute them): moderators act on lower roles, hosts on anyone.
fn acts_on(actor: RoomRole, target: RoomRole) -> bool {
    actor == RoomRole::Host || target < actor
}

fn put_room(tx: &mut Tx<'_, '_>, org: Id, room: &Room) -> Result<(), DomainError> {
    tx.put(ROOMS, &org_id_key(org, room.id), &encode(room))?;
    Ok(())
}

fn put_participant(tx: &mut Tx<'_, '_>, org: Id, room: Id, p: &Participant) -> Result<(), DomainError> {
    tx.put(ROOM_PARTICIPANTS, &org_id_id_key(org, room, p.user), &encode(p))?;
    tx.put(USER_ROOMS, &org_id_id_key(org, p.user, room), &[])?;
    Ok(())
}

fn remove_participant(tx: &mut Tx<'_, '_>, org: Id, room: Id, user: Id) -> Result<(), DomainError> {
    tx.delete(ROOM_PARTICIPANTS, &org_id_id_key(org, room, user))?;
    tx.delete(USER_ROOMS, &org_id_id_key(org, user, room))?;
    Ok(())
}

/// Edits a room (hosts).
/// Changes a room (hosts); answers it with the caller's participation.
pub async fn update(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    id: Id,
    f: RoomFields,
) -> Result<(Room, Option<Participant>), DomainError> {
    validate(&f, false)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (mut room, me) = load_for(tx, org, user, id, RoomAction::Host)?;
            paging::check_version(f.expected_version, room.version)?;
            if let Some(m) = f.max_participants {
                if m < room.joined {
                    return Err(DomainError::invalid(
                        "/max_participants",
                        "below_joined",
                        format!("{} participants have joined", room.joined),
                    ));
                }
                room.max_participants = m;
            }
            if let Some(n) = &f.name {
                n.trim().clone_into(&mut room.name);
            }
            if let Some(d) = &f.description {
                room.description.clone_from(d);
            }
            if let Some(v) = f.visibility {
                room.visibility = v;
            }
            if let Some(s) = &f.settings {
                room.settings.clone_from(s);
            }
            if let Some(m) = &f.metadata {
                room.metadata.clone_from(m);
            }
            room.version += 1;
            room.updated_at_ms = tx.now_ms();
            put_room(tx, org, &room)?;
            tx.emit(room_topic(id), "room.updated", json!({ "id": id, "version": room.version }));
            tx.audit("room.update", format!("room:{id}"), json!({ "version": room.version }));
            Ok((room, me))
        })
        .await
}

/// Archives, restores or deletes a room (hosts).
pub async fn set_status(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    id: Id,
    status: RoomStatus,
) -> Result<(Room, Option<Participant>), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (mut room, me) = load_for(tx, org, user, id, RoomAction::Host)?;
            let (kind, action) = match status {
                RoomStatus::Active => ("room.restored", "room.restore"),
                RoomStatus::Archived => ("room.archived", "room.archive"),
                RoomStatus::Deleted => ("room.deleted", "room.delete"),
            };
            room.status = status;
            room.version += 1;
            room.updated_at_ms = tx.now_ms();
            put_room(tx, org, &room)?;
            tx.emit(room_topic(id), kind, json!({ "id": id }));
            if room.visibility == Visibility::Org {
                tx.emit("org", kind, json!({ "id": id }));
            }
            tx.audit(action, format!("room:{id}"), json!({}));
            Ok((room, me))
        })
        .await
}

/// Joins a room: any org room, or a private one the user was invited to. Capacity is
/// checked in the same transaction as the join.
pub async fn join(writer: &Writer, ctx: MutationCtx, user: Id, id: Id) -> Result<Participant, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (mut room, existing) = visible(tx, org, user, id)?;
            if room.status != RoomStatus::Active {
                return Err(DomainError::Conflict { code: "room_archived", detail: "the room is archived".into() });
            }
            if let Some(p) = existing.as_ref().filter(|p| p.joined_at_ms.is_some()) {
                return Ok(p.clone());
            }
            if room.joined >= room.max_participants {
                return Err(DomainError::Conflict {
                    code: "room_full",
                    detail: format!("the room holds {} participants", room.max_participants),
                });
            }
            let now = tx.now_ms();
            let p = Participant {
                user,
                role: existing.map_or(RoomRole::Member, |e| e.role),
                joined_at_ms: Some(now),
                last_seen_at_ms: now,
            };
            room.joined += 1;
            put_room(tx, org, &room)?;
            put_participant(tx, org, id, &p)?;
            tx.emit(room_topic(id), "participant.joined", json!({ "user": user, "role": p.role }));
            tx.audit("room.join", format!("room:{id}"), json!({ "role": p.role }));
            Ok(p)
        })
        .await
}

/// Leaves a room.
pub async fn leave(writer: &Writer, ctx: MutationCtx, user: Id, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (mut room, part) = load_for(tx, org, user, id, RoomAction::Participate)?;
            if part.is_some_and(|p| p.joined_at_ms.is_some()) {
                room.joined = room.joined.saturating_sub(1);
                put_room(tx, org, &room)?;
            }
            remove_participant(tx, org, id, user)?;
            tx.emit(room_topic(id), "participant.left", json!({ "user": user }));
            tx.audit("room.leave", format!("room:{id}"), json!({}));
            Ok(())
        })
        .await
}

/// Invites `target` with `role` (moderators and hosts; only hosts give host or moderator).
pub async fn invite(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    id: Id,
    target: Id,
    role: RoomRole,
) -> Result<Participant, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (_, me) = load_for(tx, org, user, id, RoomAction::Moderate)?;
            if role >= RoomRole::Moderator && me.map(|m| m.role) != Some(RoomRole::Host) {
                return Err(DomainError::Forbidden { detail: "only a host makes hosts and moderators".into() });
            }
            // The room is what the path names and it exists; the user is a field of the body.
            if !super::users::active(tx, org, target)? {
                return Err(DomainError::invalid("/user_id", "unknown_user", "no active user with this id here"));
            }
            if let Some(p) = tx.record::<Participant>(ROOM_PARTICIPANTS, &org_id_id_key(org, id, target))? {
                return Ok(p);
            }
            let p = Participant { user: target, role, joined_at_ms: None, last_seen_at_ms: tx.now_ms() };
            put_participant(tx, org, id, &p)?;
            tx.emit(room_topic(id), "participant.invited", json!({ "user": target, "role": role }));
            tx.emit(format!("user:{target}"), "room.invitation", json!({ "room": id, "role": role }));
            tx.audit("room.invite", format!("room:{id}"), json!({ "user": target, "role": role }));
            Ok(p)
        })
        .await
}

/// Removes `target` (moderators remove lower roles; hosts anyone but themselves).
pub async fn kick(writer: &Writer, ctx: MutationCtx, user: Id, id: Id, target: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (mut room, me) = load_for(tx, org, user, id, RoomAction::Moderate)?;
            let my_role = me.map_or(RoomRole::Viewer, |m| m.role);
            let p = participant(tx, org, id, target)?;
            if target == user || !acts_on(my_role, p.role) {
                return Err(DomainError::Forbidden { detail: "you cannot remove this participant".into() });
            }
            if p.joined_at_ms.is_some() {
                room.joined = room.joined.saturating_sub(1);
                put_room(tx, org, &room)?;
            }
            remove_participant(tx, org, id, target)?;
            tx.emit(room_topic(id), "participant.kicked", json!({ "user": target }));
            tx.emit(format!("user:{target}"), "room.removed", json!({ "room": id }));
            tx.audit("room.kick", format!("room:{id}"), json!({ "user": target }));
            Ok(())
        })
        .await
}

/// Changes a participant's room role (hosts).
pub async fn change_role(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    id: Id,
    target: Id,
    role: RoomRole,
) -> Result<Participant, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            load_for(tx, org, user, id, RoomAction::Host)?;
            let mut p = participant(tx, org, id, target)?;
            let from = p.role;
            p.role = role;
            put_participant(tx, org, id, &p)?;
            tx.emit(room_topic(id), "participant.role_changed", json!({ "user": target, "from": from, "to": role }));
            tx.audit("room.change_role", format!("room:{id}"), json!({ "user": target, "from": from, "to": role }));
            Ok(p)
        })
        .await
}

/// The participants of a room `user` of `scope` may see.
pub async fn participants(store: &Store, scope: OrgScope, user: Id, id: Id) -> Result<Vec<Participant>, DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            visible(r, org, user, id)?;
            let prefix = org_id_key(org, id);
            r.range(ROOM_PARTICIPANTS, &prefix, &prefix_end(&prefix), false, PARTICIPANTS_MAX as usize)?
                .iter()
                .map(|(_, v)| decode(ROOM_PARTICIPANTS, v).map_err(DomainError::from))
                .collect()
        })
        .await
}

/// A moderator's act on a room's call.
#[derive(Clone, Debug)]
pub enum CallAction {
    /// Stop (or resume) forwarding `target`'s tracks of `source` (all when `None`).
    Mute { target: Id, source: Option<String>, muted: bool },
    /// End `target`'s connections to the call (they stay in the room).
    Remove { target: Id },
    /// Let nobody new join the call (or let them again).
    Lock { locked: bool },
    /// Start (or stop) recording the call.
    Record { recording: Id, started: bool, video: bool },
}

/// Records a moderator's act on the call in `id`: an event on the room topic and an audit
/// record. Muting and removing take a moderator (of a lower role than the target, as with
/// kicks); locking takes a host. The media relay carries it out after the commit.
pub async fn call_action(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    id: Id,
    action: CallAction,
) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let need = if matches!(action, CallAction::Lock { .. } | CallAction::Record { .. }) {
                RoomAction::Host
            } else {
                RoomAction::Moderate
            };
            let (_, me) = load_for(tx, org, user, id, need)?;
            let my_role = me.map_or(RoomRole::Viewer, |m| m.role);
            if let CallAction::Mute { target, .. } | CallAction::Remove { target } = &action {
                let p = participant(tx, org, id, *target)?;
                if *target != user && !acts_on(my_role, p.role) {
                    return Err(DomainError::Forbidden {
                        detail: "moderators act on participants of a lower role; hosts on anyone".into(),
                    });
                }
            }
            let (kind, audit, data) = match &action {
                CallAction::Mute { target, source, muted } => {
                    ("call.muted", "call.mute", json!({ "user": target, "source": source, "muted": muted }))
                }
                CallAction::Remove { target } => ("call.removed", "call.remove", json!({ "user": target })),
                CallAction::Lock { locked } => ("call.locked", "call.lock", json!({ "locked": locked })),
                CallAction::Record { recording, started: true, video } => {
                    ("call.recording_started", "call.record", json!({ "recording": recording, "video": video }))
                }
                CallAction::Record { recording, started: false, .. } => {
                    ("call.recording_stopped", "call.record_stop", json!({ "recording": recording }))
                }
            };
            tx.emit(room_topic(id), kind, data.clone());
            tx.audit(audit, format!("room:{id}"), data);
            Ok(())
        })
        .await
}
