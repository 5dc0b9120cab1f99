//! Chat: channels and the messages in them, and the places messages live.
//!
//! Channels are public (anyone in the organization may read and join), private (members
//! only) or direct (a fixed set of two or more users; the same set always finds the same
//! channel). Messages are numbered per place (`seq`), which orders history, threads and read
//! positions. Edits keep every previous text; deletion leaves a tombstone. Posting with an
//! idempotency key returns the first message for a repeated key, so a retry never posts twice.
//! Mentions reach the mentioned users' inbox topics.
//!
//! A task's comments are messages too ([`Place::Task`]): the same numbering, edits, tombstones,
//! reactions, mentions and idempotent posting, with the task deciding who may read and write
//! them instead of channel membership. This module resolves a place (`Opened`); `channels`
//! keeps channels, membership and read positions; `messages` is the message record and its
//! storage (which task deletion uses to take a task's comments with it); `posts` is what
//! people do with messages: post, edit, delete, react, read history.

pub mod channels;
pub mod messages;
pub mod posts;

pub use channels::{
    Channel, ChannelKind, Member, NewChannel, add_member, archive, create, get, join, list, mark_read, remove_member,
    update, visibility_stamp,
};
pub use channels::{DIRECT_MEMBERS_MAX, MEMBERS_MAX, NAME_CHARS_MAX, TOPIC_CHARS_MAX};
pub use messages::{Attachment, Message, Version};
pub use posts::{Anchor, MessageChange, NewMessage, change, history, message, post};
pub use posts::{HISTORY_LIMIT_MAX, HISTORY_LIMIT_MAX_U32, MENTIONS_MAX, REACTIONS_MAX, TEXT_CHARS_MAX};

use crate::domain::DomainError;
use crate::domain::tasks::Task;
use crate::ids::Id;
use crate::store::tables::{CHANNELS, MESSAGE_IDS, MESSAGES, TASKS, org_id_key};
use crate::store::writer::Tx;
use crate::store::{Lookup, encode};
use channels::{topic, visible};

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

    pub(crate) fn missing(self) -> DomainError {
        DomainError::NotFound { what: if matches!(self, Place::Channel(_)) { "channel" } else { "task" } }
    }
}

impl Message {
    pub fn place(&self) -> Place {
        if self.on_task { Place::Task(self.channel) } else { Place::Channel(self.channel) }
    }
}

/// A place's record as one read or transaction sees it.
pub(crate) enum Opened {
    Channel(Channel, Option<Member>),
    Task(Task),
}

/// The place if `user` may see it (404 otherwise).
pub(crate) fn open(r: &impl Lookup, org: Id, user: Id, place: Place) -> Result<Opened, DomainError> {
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
    pub(crate) fn may_write(&self, doing: &str) -> Result<(), DomainError> {
        match self {
            Opened::Channel(_, None) => Err(DomainError::Forbidden { detail: format!("join the channel to {doing}") }),
            Opened::Channel(ch, Some(_)) if ch.archived => {
                Err(DomainError::Conflict { code: "channel_archived", detail: "the channel is archived".into() })
            }
            Opened::Channel(..) | Opened::Task(_) => Ok(()),
        }
    }

    /// The topics its message events go to.
    pub(crate) fn topics(&self) -> Vec<String> {
        match self {
            Opened::Channel(ch, _) => vec![topic(ch.id)],
            Opened::Task(t) => super::tasks::topics(t),
        }
    }

    /// Event kinds and audit actions start with this.
    pub(crate) fn noun(&self) -> &'static str {
        if matches!(self, Opened::Task(_)) { "comment" } else { "message" }
    }

    /// Hands out the next message number, writing the record that keeps count.
    pub(crate) fn next_seq(&mut self, tx: &mut Tx<'_, '_>, org: Id) -> Result<u64, DomainError> {
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
pub(crate) fn find_message(r: &impl Lookup, org: Id, place: Place, id: Id) -> Result<(Vec<u8>, Message), DomainError> {
    let gone = || DomainError::NotFound { what: "message" };
    let at = messages::key_of_entry(org, &r.row(MESSAGE_IDS, &org_id_key(org, id))?.ok_or_else(gone)?);
    let m = Message::from_stored(&at, &r.row(MESSAGES, &at)?.ok_or_else(gone)?)?;
    if m.place() != place {
        return Err(gone());
    }
    Ok((at, m))
}
