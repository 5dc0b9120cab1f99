//! What people do with messages in a place: post (numbered, idempotent, mentions to inboxes,
//! thread replies counted), edit (earlier texts kept), delete (a tombstone), react, and read
//! history pages around an anchor or one message.

use std::collections::BTreeMap;

use serde_json::json;

use super::channels::{ChannelKind, DIRECT_MEMBERS_MAX, Member};
use super::messages::{Attachment, Message, Version, index_entry, key_of_entry, message_key};
use super::{Opened, Place, find_message, open};
use crate::domain::users::sha256;
use crate::domain::{DomainError, FieldError, check};
use crate::ids::Id;
use crate::store::tables::{
    CHANNEL_MEMBERS, MESSAGE_IDEMPOTENCY, MESSAGE_IDS, MESSAGES, org_bytes_key, org_id_id_key, org_id_key,
};
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Store, encode, prefix_end};

/// What posting asks for.
pub const TEXT_CHARS_MAX: usize = 10_000;
pub const MENTIONS_MAX: usize = 50;
/// Longest reaction, in characters.
pub const EMOJI_CHARS_MAX: usize = 32;
/// Longest idempotency key, in characters.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 200;
pub const REACTIONS_MAX: usize = 50;
/// Files one message may carry.
pub const ATTACHMENTS_MAX: usize = 10;
pub const HISTORY_LIMIT_MAX: usize = 100;
pub const HISTORY_LIMIT_MAX_U32: u32 = HISTORY_LIMIT_MAX as u32;

pub struct NewMessage {
    pub text: String,
    pub thread_parent: Option<Id>,
    pub mentions: Vec<Id>,
    pub idempotency_key: Option<String>,
    /// The author's own files to attach; whoever reads the place then reads them too.
    pub attachments: Vec<Id>,
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
    if new.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.chars().count() > IDEMPOTENCY_KEY_CHARS_MAX) {
        let detail = format!("1–{IDEMPOTENCY_KEY_CHARS_MAX} characters");
        errors.push(FieldError::new("/idempotency_key", "invalid_length", detail));
    }
    if new.attachments.len() > ATTACHMENTS_MAX {
        errors.push(FieldError::new("/attachment_ids", "too_many", format!("at most {ATTACHMENTS_MAX}")));
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
                if let Some(entry) = tx.get(MESSAGE_IDEMPOTENCY, k)? {
                    let at = key_of_entry(org, &entry);
                    if let Some(v) = tx.get(MESSAGES, &at)? {
                        return Ok(Message::from_stored(&at, &v)?);
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
                    tx.put(MESSAGES, &at, &p.to_stored())?;
                    Some(p.seq)
                }
                None => None,
            };
            let mut mentions = Vec::new();
            for m in &new.mentions {
                if !mentions.contains(m) && crate::domain::users::active(tx, org, *m)? {
                    mentions.push(*m);
                }
            }
            let shared_in = match place {
                Place::Channel(c) => crate::domain::assets::SharedIn::Channel(c),
                Place::Task(t) => crate::domain::assets::SharedIn::Task(t),
            };
            let mut attachments: Vec<Attachment> = Vec::new();
            for (i, file) in new.attachments.iter().enumerate() {
                if attachments.iter().any(|a| a.id == *file) {
                    continue;
                }
                let pointer = format!("/attachment_ids/{i}");
                let a = crate::domain::assets::share(tx, org, author, *file, shared_in, &pointer)?;
                attachments.push(Attachment { id: a.id, name: a.name, content_type: a.content_type, size: a.size });
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
                attachments,
            };
            let at = message_key(org, container, msg.seq);
            tx.put(MESSAGES, &at, &msg.to_stored())?;
            tx.put(MESSAGE_IDS, &org_id_key(org, id), index_entry(&at))?;
            if let Some(k) = &idem_key {
                tx.put(MESSAGE_IDEMPOTENCY, k, index_entry(&at))?;
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
        if emoji.is_empty() || emoji.chars().count() > EMOJI_CHARS_MAX || emoji.contains(char::is_whitespace) {
            let detail = format!("1–{EMOJI_CHARS_MAX} characters without spaces");
            return Err(DomainError::invalid("/emoji", "invalid_emoji", detail));
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
            tx.put(MESSAGES, &at, &m.to_stored())?;
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
                r.scan(MESSAGES, from, to, rev, |k, v| {
                    rows += 1;
                    let m = Message::from_stored(k, v)?;
                    if wanted(&m) {
                        out.push(m);
                    }
                    Ok(out.len() < n && rows < crate::domain::paging::SCAN_MAX)
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
