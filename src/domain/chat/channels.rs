//! Channels: kinds (public, private, direct found by its member set), membership, names and
//! topics, archiving, and each member's read position.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::users::sha256;
use crate::domain::{DomainError, FieldError, check};
use crate::ids::Id;
use crate::store::tables::{CHANNEL_MEMBERS, CHANNELS, DIRECT_CHANNELS, org_bytes_key, org_id_id_key, org_id_key};
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Lookup, Store, decode, encode, prefix_end};

pub const NAME_CHARS_MAX: usize = 80;
pub const TOPIC_CHARS_MAX: usize = 250;
pub const MEMBERS_MAX: usize = 10_000;
pub const DIRECT_MEMBERS_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Public,
    Private,
    Direct,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub id: Id,
    pub kind: ChannelKind,
    pub name: Option<String>,
    pub topic: String,
    pub archived: bool,
    pub created_by: Id,
    /// The last message number handed out.
    pub last_seq: u64,
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub user: Id,
    pub joined_at_ms: i64,
    /// The last message this member has read.
    pub read_seq: u64,
}

pub(super) fn topic(id: Id) -> String {
    format!("channel:{id}")
}

pub(super) fn get_channel(r: &impl Lookup, org: Id, id: Id) -> Result<Channel, DomainError> {
    r.record(CHANNELS, &org_id_key(org, id))?.ok_or(DomainError::NotFound { what: "channel" })
}

pub(super) fn get_member(r: &impl Lookup, org: Id, id: Id, user: Id) -> Result<Option<Member>, DomainError> {
    Ok(r.record(CHANNEL_MEMBERS, &org_id_id_key(org, id, user))?)
}

/// The channel if `user` may see it (404 otherwise), with their membership.
pub(super) fn visible(r: &impl Lookup, org: Id, user: Id, id: Id) -> Result<(Channel, Option<Member>), DomainError> {
    let ch = get_channel(r, org, id)?;
    let m = get_member(r, org, id, user)?;
    if ch.kind != ChannelKind::Public && m.is_none() {
        return Err(DomainError::NotFound { what: "channel" });
    }
    Ok((ch, m))
}

/// A new channel's fields.
pub struct NewChannel {
    pub kind: ChannelKind,
    pub name: Option<String>,
    pub topic: Option<String>,
    /// Others to add (for direct channels: the other participants).
    pub members: Vec<Id>,
}

/// Creates a channel, or for a direct channel finds the one of the same member set; with the
/// creator's membership. The bool says whether it was made now.
pub async fn create(
    writer: &Writer,
    ctx: MutationCtx,
    me: Id,
    new: NewChannel,
) -> Result<(Channel, Member, bool), DomainError> {
    let mut errors = Vec::new();
    match (new.kind, &new.name) {
        (ChannelKind::Direct, Some(_)) => {
            errors.push(FieldError::new("/name", "not_allowed", "direct channels have no name"));
        }
        (ChannelKind::Public | ChannelKind::Private, None) => {
            errors.push(FieldError::new("/name", "missing_field", "a channel needs a name"));
        }
        (_, Some(n)) if n.trim().is_empty() || n.chars().count() > NAME_CHARS_MAX => {
            errors.push(FieldError::new("/name", "invalid_length", format!("1–{NAME_CHARS_MAX} characters")));
        }
        _ => {}
    }
    if new.topic.as_ref().is_some_and(|t| t.chars().count() > TOPIC_CHARS_MAX) {
        errors.push(FieldError::new("/topic", "too_long", format!("at most {TOPIC_CHARS_MAX} characters")));
    }
    let mut members: Vec<Id> = new.members.iter().copied().chain([me]).collect();
    members.sort_unstable();
    members.dedup();
    if new.kind == ChannelKind::Direct && !(2..=DIRECT_MEMBERS_MAX).contains(&members.len()) {
        errors.push(FieldError::new(
            "/member_ids",
            "out_of_range",
            format!("a direct channel has 2–{DIRECT_MEMBERS_MAX} members, you included"),
        ));
    }
    if members.len() > MEMBERS_MAX {
        errors.push(FieldError::new("/member_ids", "too_many", format!("at most {MEMBERS_MAX}")));
    }
    check(errors)?;
    let org = ctx.scope.org();
    let id = Id::new();
    // The same member set always maps to the same direct channel.
    let set_key = (new.kind == ChannelKind::Direct).then(|| {
        let bytes: Vec<u8> = members.iter().flat_map(|m| *m.as_bytes()).collect();
        org_bytes_key(org, &sha256(&bytes))
    });
    writer
        .submit(ctx, move |tx| {
            if let Some(k) = &set_key {
                if let Some(existing) = tx.get(DIRECT_CHANNELS, k)?.and_then(|v| Id::from_slice(&v)) {
                    let (ch, m) = visible(tx, org, me, existing)?;
                    let m = m.ok_or(DomainError::NotFound { what: "channel" })?;
                    return Ok((ch, m, false));
                }
            }
            for m in &members {
                if !crate::domain::users::active(tx, org, *m)? {
                    return Err(DomainError::invalid("/member_ids", "unknown_user", format!("no active user {m}")));
                }
            }
            let now = tx.now_ms();
            let ch = Channel {
                id,
                kind: new.kind,
                name: new.name.as_ref().map(|n| n.trim().to_owned()),
                topic: new.topic.clone().unwrap_or_default(),
                archived: false,
                created_by: me,
                last_seq: 0,
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
            };
            tx.put(CHANNELS, &org_id_key(org, id), &encode(&ch))?;
            if let Some(k) = &set_key {
                tx.put(DIRECT_CHANNELS, k, id.as_bytes())?;
            }
            let added: Vec<Id> = if new.kind == ChannelKind::Public { vec![me] } else { members.clone() };
            for m in &added {
                let member = Member { user: *m, joined_at_ms: now, read_seq: 0 };
                tx.put(CHANNEL_MEMBERS, &org_id_id_key(org, id, *m), &encode(&member))?;
                if *m != me {
                    tx.emit(format!("user:{m}"), "channel.added", json!({ "channel": id, "kind": ch.kind }));
                }
            }
            if ch.kind == ChannelKind::Public {
                tx.emit("org", "channel.created", json!({ "id": id, "name": ch.name }));
            }
            tx.emit(topic(id), "channel.created", json!({ "id": id, "kind": ch.kind, "name": ch.name }));
            tx.audit(
                "channel.create",
                format!("channel:{id}"),
                json!({ "kind": ch.kind, "name": ch.name, "members": added.len() }),
            );
            Ok((ch, Member { user: me, joined_at_ms: now, read_seq: 0 }, true))
        })
        .await
}

/// A number that changes whenever a row `get` reads for these ids is written: read it before
/// `get`, and what `get` said holds for as long as the number stays the same.
pub fn visibility_stamp(store: &Store, org: Id, user: Id, id: Id) -> u64 {
    store
        .row_changes(CHANNELS, &org_id_key(org, id))
        .wrapping_add(store.row_changes(CHANNEL_MEMBERS, &org_id_id_key(org, id, user)))
}

/// A channel the caller may see, with their membership.
pub fn get(store: &Store, org: Id, user: Id, id: Id) -> Result<(Channel, Option<Member>), DomainError> {
    store.peek(|r| visible(r, org, user, id))
}

/// The channels the caller may see (public ones and those they belong to), each with their
/// membership.
pub async fn list(store: &Store, org: Id, user: Id) -> Result<Vec<(Channel, Option<Member>)>, DomainError> {
    store
        .read(move |r| {
            let mut out = Vec::new();
            for (_, v) in
                r.range(CHANNELS, org.as_bytes(), &prefix_end(org.as_bytes()), false, crate::domain::paging::SCAN_MAX)?
            {
                let ch: Channel = decode(CHANNELS, &v)?;
                let m = get_member(r, org, ch.id, user)?;
                if ch.archived || (ch.kind != ChannelKind::Public && m.is_none()) {
                    continue;
                }
                out.push((ch, m));
            }
            Ok(out)
        })
        .await
}

/// Joins a public channel.
pub async fn join(writer: &Writer, ctx: MutationCtx, user: Id, id: Id) -> Result<Member, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (ch, m) = visible(tx, org, user, id)?;
            if let Some(m) = m {
                return Ok(m);
            }
            if ch.archived {
                return Err(DomainError::Conflict {
                    code: "channel_archived",
                    detail: "the channel is archived".into(),
                });
            }
            let m = Member { user, joined_at_ms: tx.now_ms(), read_seq: ch.last_seq };
            tx.put(CHANNEL_MEMBERS, &org_id_id_key(org, id, user), &encode(&m))?;
            tx.emit(topic(id), "member.joined", json!({ "user": user }));
            tx.audit("channel.join", format!("channel:{id}"), json!({}));
            Ok(m)
        })
        .await
}

/// Marks the channel read up to `seq` (members; never backwards).
pub async fn mark_read(writer: &Writer, ctx: MutationCtx, user: Id, channel: Id, seq: u64) -> Result<u64, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (ch, member) = visible(tx, org, user, channel)?;
            let mut m = member.ok_or(DomainError::Forbidden { detail: "join the channel first".into() })?;
            let to = seq.min(ch.last_seq).max(m.read_seq);
            m.read_seq = to;
            tx.put(CHANNEL_MEMBERS, &org_id_id_key(org, channel, user), &encode(&m))?;
            tx.audit("channel.read", format!("channel:{channel}"), json!({ "seq": to }));
            Ok(ch.last_seq - to)
        })
        .await
}

/// Changes to a channel's name or topic (members; direct channels have no name).
pub async fn update(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    channel: Id,
    name: Option<String>,
    topic_text: Option<String>,
    expected_version: Option<u64>,
) -> Result<(Channel, Option<Member>), DomainError> {
    let mut errors = Vec::new();
    if name.as_ref().is_some_and(|n| n.trim().is_empty() || n.chars().count() > NAME_CHARS_MAX) {
        errors.push(FieldError::new("/name", "invalid_length", format!("1–{NAME_CHARS_MAX} characters")));
    }
    if topic_text.as_ref().is_some_and(|t| t.chars().count() > TOPIC_CHARS_MAX) {
        errors.push(FieldError::new("/topic", "too_long", format!("at most {TOPIC_CHARS_MAX} characters")));
    }
    check(errors)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (mut ch, member) = visible(tx, org, user, channel)?;
            if member.is_none() {
                return Err(DomainError::Forbidden { detail: "join the channel to change it".into() });
            }
            crate::domain::paging::check_version(expected_version, ch.version)?;
            if name.is_some() && ch.kind == ChannelKind::Direct {
                return Err(DomainError::invalid("/name", "not_allowed", "direct channels have no name"));
            }
            if let Some(n) = &name {
                ch.name = Some(n.trim().to_owned());
            }
            if let Some(t) = &topic_text {
                ch.topic.clone_from(t);
            }
            ch.version += 1;
            ch.updated_at_ms = tx.now_ms();
            tx.put(CHANNELS, &org_id_key(org, channel), &encode(&ch))?;
            tx.emit(topic(channel), "channel.updated", json!({ "id": channel, "name": ch.name, "topic": ch.topic }));
            tx.audit("channel.update", format!("channel:{channel}"), json!({ "name": ch.name, "topic": ch.topic }));
            Ok((ch, member))
        })
        .await
}

/// Archives a channel (its creator or an admin).
pub async fn archive(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    admin: bool,
    channel: Id,
) -> Result<(Channel, Option<Member>), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (mut ch, member) = visible(tx, org, user, channel)?;
            if ch.created_by != user && !admin {
                return Err(DomainError::Forbidden {
                    detail: "only its creator or an admin archives a channel".into(),
                });
            }
            ch.archived = true;
            ch.version += 1;
            ch.updated_at_ms = tx.now_ms();
            tx.put(CHANNELS, &org_id_key(org, channel), &encode(&ch))?;
            tx.emit(topic(channel), "channel.archived", json!({ "id": channel }));
            tx.audit("channel.archive", format!("channel:{channel}"), json!({}));
            Ok((ch, member))
        })
        .await
}

/// Adds `target` (members add people to public and private channels; direct ones are fixed).
pub async fn add_member(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    channel: Id,
    target: Id,
) -> Result<Member, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (ch, member) = visible(tx, org, user, channel)?;
            if member.is_none() {
                return Err(DomainError::Forbidden { detail: "join the channel to add people".into() });
            }
            if ch.kind == ChannelKind::Direct {
                return Err(DomainError::Conflict {
                    code: "direct_channel_fixed",
                    detail: "a direct channel's members are fixed".into(),
                });
            }
            if !crate::domain::users::active(tx, org, target)? {
                return Err(DomainError::NotFound { what: "user" });
            }
            if let Some(m) = get_member(tx, org, channel, target)? {
                return Ok(m);
            }
            let m = Member { user: target, joined_at_ms: tx.now_ms(), read_seq: 0 };
            tx.put(CHANNEL_MEMBERS, &org_id_id_key(org, channel, target), &encode(&m))?;
            tx.emit(topic(channel), "member.added", json!({ "user": target }));
            tx.emit(format!("user:{target}"), "channel.added", json!({ "channel": channel, "kind": ch.kind }));
            tx.audit("channel.add_member", format!("channel:{channel}"), json!({ "user": target }));
            Ok(m)
        })
        .await
}

/// Removes `target`: oneself (leaving), or anyone by the channel's creator or an admin.
pub async fn remove_member(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    admin: bool,
    channel: Id,
    target: Id,
) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (ch, member) = visible(tx, org, user, channel)?;
            if member.is_none() {
                return Err(DomainError::Forbidden { detail: "you do not belong to this channel".into() });
            }
            if target != user && ch.created_by != user && !admin {
                return Err(DomainError::Forbidden { detail: "only its creator or an admin removes others".into() });
            }
            if ch.kind == ChannelKind::Direct {
                return Err(DomainError::Conflict {
                    code: "direct_channel_fixed",
                    detail: "a direct channel's members are fixed".into(),
                });
            }
            if get_member(tx, org, channel, target)?.is_none() {
                return Err(DomainError::NotFound { what: "member" });
            }
            tx.delete(CHANNEL_MEMBERS, &org_id_id_key(org, channel, target))?;
            tx.emit(topic(channel), "member.removed", json!({ "user": target }));
            tx.audit("channel.remove_member", format!("channel:{channel}"), json!({ "user": target }));
            Ok(())
        })
        .await
}
