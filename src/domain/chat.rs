//! Channels and messages.
//!
//! Channels are public (anyone in the organization may read and join), private (members
//! only) or direct (a fixed set of two or more users; the same set always finds the same
//! channel). Messages are numbered per channel (`seq`), which orders history, threads and read
//! positions. Edits keep every previous text; deletion leaves a tombstone. Posting with an
//! idempotency key returns the first message for a repeated key, so a retry never posts twice.
//! Mentions reach the mentioned users' inbox topics.
//!
//! A task's comments are messages too ([`Place::Task`]): the same numbering, edits, tombstones,
//! reactions, mentions and idempotent posting, with the task deciding who may read and write
//! them instead of channel membership.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::tasks::Task;
use super::users::sha256;
use super::{DomainError, FieldError, check};
use crate::ids::Id;
use crate::store::tables::{
    CHANNEL_MEMBERS, CHANNELS, DIRECT_CHANNELS, MESSAGE_IDEMPOTENCY, MESSAGE_IDS, MESSAGES, TASKS, org_bytes_key,
    org_id_id_key, org_id_key,
};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Store, decode, encode, prefix_end};

pub const TEXT_CHARS_MAX: usize = 10_000;
pub const NAME_CHARS_MAX: usize = 80;
pub const TOPIC_CHARS_MAX: usize = 250;
pub const MEMBERS_MAX: usize = 10_000;
pub const DIRECT_MEMBERS_MAX: usize = 16;
pub const MENTIONS_MAX: usize = 50;
pub const REACTIONS_MAX: usize = 50;
pub const HISTORY_LIMIT_MAX: usize = 100;

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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub text: String,
    pub at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: Id,
    /// The channel, or for a task's comment the task.
    pub channel: Id,
    /// Whether this is a task's comment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_task: bool,
    pub seq: u64,
    pub author: Id,
    /// Empty once deleted.
    pub text: String,
    /// The `seq` of the message this replies to in a thread.
    pub thread_parent: Option<u64>,
    pub reply_count: u32,
    pub mentions: Vec<Id>,
    /// Emoji → who reacted.
    pub reactions: BTreeMap<String, Vec<Id>>,
    /// Earlier texts, oldest first.
    pub versions: Vec<Version>,
    pub created_at_ms: i64,
    pub edited_at_ms: Option<i64>,
    pub deleted_at_ms: Option<i64>,
}

fn topic(id: Id) -> String {
    format!("channel:{id}")
}

/// Where messages live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A channel's history: its members post, whoever sees the channel reads.
    Channel(Id),
    /// A task's comments: whoever may read tasks reads them (the caller checks the permission).
    Task(Id),
}

impl Place {
    pub fn id(self) -> Id {
        match self {
            Place::Channel(id) | Place::Task(id) => id,
        }
    }

    fn missing(self) -> DomainError {
        DomainError::NotFound { what: if matches!(self, Place::Channel(_)) { "channel" } else { "task" } }
    }
}

impl Message {
    pub fn place(&self) -> Place {
        if self.on_task { Place::Task(self.channel) } else { Place::Channel(self.channel) }
    }
}

/// A place's record as one read or transaction sees it.
enum Opened {
    Channel(Channel, Option<Member>),
    Task(Task),
}

/// The place if `user` may see it (404 otherwise).
fn open(r: &impl Lookup, org: Id, user: Id, place: Place) -> Result<Opened, DomainError> {
    match place {
        Place::Channel(id) => {
            let (ch, m) = visible(r, org, user, id)?;
            Ok(Opened::Channel(ch, m))
        }
        Place::Task(id) => Ok(Opened::Task(r.record(TASKS, &org_id_key(org, id))?.ok_or(place.missing())?)),
    }
}

impl Opened {
    /// Whether the caller may post or react here (`doing`: what the refusal names).
    fn may_write(&self, doing: &str) -> Result<(), DomainError> {
        match self {
            Opened::Channel(_, None) => Err(DomainError::Forbidden { detail: format!("join the channel to {doing}") }),
            Opened::Channel(ch, Some(_)) if ch.archived => {
                Err(DomainError::Conflict { code: "channel_archived", detail: "the channel is archived".into() })
            }
            Opened::Channel(..) | Opened::Task(_) => Ok(()),
        }
    }

    /// The topics its message events go to.
    fn topics(&self) -> Vec<String> {
        match self {
            Opened::Channel(ch, _) => vec![topic(ch.id)],
            Opened::Task(t) => super::tasks::topics(t),
        }
    }

    /// Event kinds and audit actions start with this.
    fn noun(&self) -> &'static str {
        if matches!(self, Opened::Task(_)) { "comment" } else { "message" }
    }

    /// Hands out the next message number, writing the record that keeps count.
    fn next_seq(&mut self, tx: &mut Tx<'_, '_>, org: Id) -> Result<u64, DomainError> {
        match self {
            Opened::Channel(ch, _) => {
                ch.last_seq += 1;
                tx.put(CHANNELS, &org_id_key(org, ch.id), &encode(ch))?;
                Ok(ch.last_seq)
            }
            Opened::Task(t) => {
                t.comment_seq += 1;
                tx.put(TASKS, &org_id_key(org, t.id), &encode(t))?;
                Ok(t.comment_seq)
            }
        }
    }
}

/// The message `id` if it lives in `place`.
fn find_message(r: &impl Lookup, org: Id, place: Place, id: Id) -> Result<(Vec<u8>, Message), DomainError> {
    let gone = || DomainError::NotFound { what: "message" };
    let at = r.row(MESSAGE_IDS, &org_id_key(org, id))?.ok_or_else(gone)?;
    let m: Message = r.record(MESSAGES, &at)?.ok_or_else(gone)?;
    if m.place() != place {
        return Err(gone());
    }
    Ok((at, m))
}

fn get_channel(r: &impl Lookup, org: Id, id: Id) -> Result<Channel, DomainError> {
    r.record(CHANNELS, &org_id_key(org, id))?.ok_or(DomainError::NotFound { what: "channel" })
}

fn get_member(r: &impl Lookup, org: Id, id: Id, user: Id) -> Result<Option<Member>, DomainError> {
    Ok(r.record(CHANNEL_MEMBERS, &org_id_id_key(org, id, user))?)
}

/// The channel if `user` may see it (404 otherwise), with their membership.
fn visible(r: &impl Lookup, org: Id, user: Id, id: Id) -> Result<(Channel, Option<Member>), DomainError> {
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
                if !super::users::active(tx, org, *m)? {
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
                r.range(CHANNELS, org.as_bytes(), &prefix_end(org.as_bytes()), false, super::paging::SCAN_MAX)?
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

/// What posting asks for.
pub struct NewMessage {
    pub text: String,
    pub thread_parent: Option<Id>,
    pub mentions: Vec<Id>,
    pub idempotency_key: Option<String>,
}

/// Posts a message (in a channel: members only). With an idempotency key, a repeat returns
/// the first message instead of posting again.
#[allow(clippy::too_many_lines)] // one transaction's checks and writes, in order
pub async fn post(
    writer: &Writer,
    ctx: MutationCtx,
    author: Id,
    place: Place,
    new: NewMessage,
) -> Result<Message, DomainError> {
    let mut errors = Vec::new();
    if new.text.trim().is_empty() || new.text.chars().count() > TEXT_CHARS_MAX {
        errors.push(FieldError::new("/text", "invalid_length", format!("1–{TEXT_CHARS_MAX} characters")));
    }
    if new.mentions.len() > MENTIONS_MAX {
        errors.push(FieldError::new("/mention_ids", "too_many", format!("at most {MENTIONS_MAX}")));
    }
    if new.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        errors.push(FieldError::new("/idempotency_key", "invalid_length", "1–200 bytes"));
    }
    if matches!(place, Place::Task(_)) && new.thread_parent.is_some() {
        errors.push(FieldError::new("/thread_parent_id", "not_allowed", "task comments have no threads"));
    }
    check(errors)?;
    let org = ctx.scope.org();
    let id = Id::new();
    writer
        .submit(ctx, move |tx| {
            let idem_key = new.idempotency_key.as_ref().map(|k| {
                let mut b = author.as_bytes().to_vec();
                b.extend_from_slice(k.as_bytes());
                org_bytes_key(org, &sha256(&b))
            });
            if let Some(k) = &idem_key {
                if let Some(at) = tx.get(MESSAGE_IDEMPOTENCY, k)? {
                    if let Some(m) = tx.record::<Message>(MESSAGES, &at)? {
                        return Ok(m);
                    }
                }
            }
            let mut opened = open(tx, org, author, place)?;
            opened.may_write("post in it")?;
            let container = place.id();
            let parent = match new.thread_parent {
                Some(pid) => {
                    let unknown = || DomainError::invalid("/thread_parent_id", "unknown_message", "no such message");
                    let (at, mut p) = find_message(tx, org, place, pid).map_err(|_| unknown())?;
                    if p.thread_parent.is_some() {
                        return Err(DomainError::invalid(
                            "/thread_parent_id",
                            "invalid_parent",
                            "a thread starts at a top-level message of this channel",
                        ));
                    }
                    p.reply_count += 1;
                    tx.put(MESSAGES, &at, &encode(&p))?;
                    Some(p.seq)
                }
                None => None,
            };
            let mut mentions = Vec::new();
            for m in &new.mentions {
                if !mentions.contains(m) && super::users::active(tx, org, *m)? {
                    mentions.push(*m);
                }
            }
            let seq = opened.next_seq(tx, org)?;
            let now = tx.now_ms();
            let msg = Message {
                id,
                channel: container,
                on_task: matches!(place, Place::Task(_)),
                seq,
                author,
                text: new.text.clone(),
                thread_parent: parent,
                reply_count: 0,
                mentions: mentions.clone(),
                reactions: BTreeMap::new(),
                versions: Vec::new(),
                created_at_ms: now,
                edited_at_ms: None,
                deleted_at_ms: None,
            };
            let at = message_key(org, container, msg.seq);
            tx.put(MESSAGES, &at, &encode(&msg))?;
            tx.put(MESSAGE_IDS, &org_id_key(org, id), &at)?;
            if let Some(k) = &idem_key {
                tx.put(MESSAGE_IDEMPOTENCY, k, &at)?;
            }
            if let Opened::Channel(_, Some(member)) = &opened {
                // The author has read what they wrote.
                tx.put(
                    CHANNEL_MEMBERS,
                    &org_id_id_key(org, container, author),
                    &encode(&Member { read_seq: msg.seq, ..member.clone() }),
                )?;
            }
            let noun = opened.noun();
            let data = match place {
                Place::Channel(_) => json!({ "id": id, "seq": seq, "author": author, "thread_parent": parent }),
                Place::Task(_) => json!({ "id": id, "seq": seq, "author": author, "task": container }),
            };
            for t in opened.topics() {
                tx.emit(t, &format!("{noun}.posted"), data.clone());
            }
            for m in &mentions {
                let at = match place {
                    Place::Channel(_) => json!({ "channel": container, "message": id, "author": author }),
                    Place::Task(_) => json!({ "task": container, "message": id, "author": author }),
                };
                tx.emit(format!("user:{m}"), "mention", at);
            }
            // A direct message reaches the other members' inboxes (a direct channel has at most
            // DIRECT_MEMBERS_MAX members).
            if let Opened::Channel(ch, _) = &opened {
                if ch.kind == ChannelKind::Direct {
                    let base = org_id_key(org, container);
                    for (k, _) in tx.range(CHANNEL_MEMBERS, &base, &prefix_end(&base), DIRECT_MEMBERS_MAX)? {
                        let Some(member) = Id::from_slice(&k[32..]) else { continue };
                        if member != author && !mentions.contains(&member) {
                            tx.emit(
                                format!("user:{member}"),
                                "direct_message",
                                json!({ "channel": container, "message": id, "author": author, "seq": seq }),
                            );
                        }
                    }
                }
            }
            tx.audit(&format!("{noun}.post"), format!("message:{id}"), json!({ "place": container, "seq": seq }));
            Ok(msg)
        })
        .await
}

/// `org ‖ channel ‖ seq`.
fn message_key(org: Id, channel: Id, seq: u64) -> Vec<u8> {
    let mut k = org_id_key(org, channel).to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// What a change to a message is.
pub enum MessageChange {
    Edit(String),
    Delete,
    React { emoji: String, add: bool },
}

/// Edits (author), deletes (author, or an org admin) or reacts to a message.
pub async fn change(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    admin: bool,
    place: Place,
    message: Id,
    change: MessageChange,
) -> Result<Message, DomainError> {
    if let MessageChange::Edit(t) = &change {
        if t.trim().is_empty() || t.chars().count() > TEXT_CHARS_MAX {
            return Err(DomainError::invalid("/text", "invalid_length", format!("1–{TEXT_CHARS_MAX} characters")));
        }
    }
    if let MessageChange::React { emoji, .. } = &change {
        if emoji.is_empty() || emoji.chars().count() > 32 || emoji.contains(char::is_whitespace) {
            return Err(DomainError::invalid("/emoji", "invalid_emoji", "1–32 characters without spaces"));
        }
    }
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let opened = open(tx, org, user, place)?;
            let (at, mut m) = find_message(tx, org, place, message)?;
            if m.deleted_at_ms.is_some() {
                return Err(DomainError::Conflict {
                    code: "message_deleted",
                    detail: "the message was deleted".into(),
                });
            }
            let now = tx.now_ms();
            let (kind, action, details) = match &change {
                MessageChange::Edit(text) => {
                    if m.author != user {
                        return Err(DomainError::Forbidden { detail: "only the author edits a message".into() });
                    }
                    let old = std::mem::replace(&mut m.text, text.clone());
                    m.versions.push(Version { text: old, at_ms: m.edited_at_ms.unwrap_or(m.created_at_ms) });
                    m.edited_at_ms = Some(now);
                    ("edited", "edit", json!({ "versions": m.versions.len() }))
                }
                MessageChange::Delete => {
                    if m.author != user && !admin {
                        return Err(DomainError::Forbidden {
                            detail: "only the author or an admin deletes a message".into(),
                        });
                    }
                    m.text.clear();
                    m.versions.clear();
                    m.reactions.clear();
                    m.deleted_at_ms = Some(now);
                    ("deleted", "delete", json!({}))
                }
                MessageChange::React { emoji, add } => {
                    opened.may_write("react")?;
                    let who = m.reactions.entry(emoji.clone()).or_default();
                    if *add && !who.contains(&user) {
                        if m.reactions.len() > REACTIONS_MAX {
                            return Err(DomainError::Conflict {
                                code: "too_many_reactions",
                                detail: format!("at most {REACTIONS_MAX} kinds"),
                            });
                        }
                        m.reactions.entry(emoji.clone()).or_default().push(user);
                    } else if !*add {
                        who.retain(|u| *u != user);
                    }
                    m.reactions.retain(|_, v| !v.is_empty());
                    ("reaction", "react", json!({ "emoji": emoji, "add": add }))
                }
            };
            tx.put(MESSAGES, &at, &encode(&m))?;
            let noun = opened.noun();
            for t in opened.topics() {
                tx.emit(t, &format!("{noun}.{kind}"), json!({ "id": message, "seq": m.seq }));
            }
            tx.audit(&format!("{noun}.{action}"), format!("message:{message}"), details);
            Ok(m)
        })
        .await
}

/// Where a history page is anchored.
#[derive(Clone, Copy, Debug)]
pub enum Anchor {
    /// The newest messages.
    Latest,
    Before(u64),
    After(u64),
    /// Centred on a message: some before it, it, some after.
    Around(u64),
}

/// A page of history (top-level messages, or one thread's replies), oldest first.
pub async fn history(
    store: &Store,
    org: Id,
    user: Id,
    place: Place,
    anchor: Anchor,
    thread: Option<Id>,
    limit: usize,
) -> Result<Vec<Message>, DomainError> {
    let limit = limit.clamp(1, HISTORY_LIMIT_MAX);
    store
        .read(move |r| {
            open(r, org, user, place)?;
            let channel = place.id();
            let parent = match thread {
                Some(t) => Some(find_message(r, org, place, t)?.1.seq),
                None => None,
            };
            let wanted = |m: &Message| match parent {
                Some(p) => m.thread_parent == Some(p),
                None => m.thread_parent.is_none(),
            };
            let base = org_id_key(org, channel);
            let end = prefix_end(&base);
            // Scans are bounded: at most this many rows per direction, however sparse a thread.
            let scan = |from: &[u8], to: &[u8], rev: bool, n: usize| -> Result<Vec<Message>, DomainError> {
                let mut out = Vec::new();
                if n == 0 {
                    return Ok(out);
                }
                // Lazily, stopping at `n` matches or `SCAN_MAX` rows, whichever comes first.
                let mut rows = 0;
                r.scan(MESSAGES, from, to, rev, |_, v| {
                    rows += 1;
                    let m: Message = decode(MESSAGES, v)?;
                    if wanted(&m) {
                        out.push(m);
                    }
                    Ok(out.len() < n && rows < super::paging::SCAN_MAX)
                })?;
                Ok(out)
            };
            let mut items = match anchor {
                Anchor::Latest => scan(&base, &end, true, limit)?,
                Anchor::Before(s) => scan(&base, &message_key(org, channel, s), true, limit)?,
                Anchor::After(s) => {
                    let mut v = scan(&message_key(org, channel, s.saturating_add(1)), &end, false, limit)?;
                    v.reverse();
                    v
                }
                Anchor::Around(s) => {
                    let half = limit / 2;
                    let mut before = scan(&base, &message_key(org, channel, s), true, half)?;
                    let mut after =
                        scan(&message_key(org, channel, s), &end, false, limit.saturating_sub(before.len()))?;
                    after.reverse();
                    after.append(&mut before);
                    after
                }
            };
            items.reverse();
            Ok(items)
        })
        .await
}

/// The message `id` in `place` (visible to the caller), by id.
pub async fn message(store: &Store, org: Id, user: Id, place: Place, id: Id) -> Result<Message, DomainError> {
    store
        .read(move |r| {
            open(r, org, user, place)?;
            Ok(find_message(r, org, place, id)?.1)
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
            super::paging::check_version(expected_version, ch.version)?;
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
            if !super::users::active(tx, org, target)? {
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
