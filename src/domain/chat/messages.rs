//! The message record and its storage: key layout (`org ‖ place ‖ seq`, with an id index),
//! and removing every message of a place with it (a task's comments when the task goes). It
//! knows no place: channels and tasks build on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::DomainError;
use crate::ids::Id;
use crate::store::tables::{MESSAGE_IDS, MESSAGES, org_id_key};
use crate::store::writer::Tx;
use crate::store::{decode, prefix_end};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub text: String,
    pub at_ms: i64,
}

/// A file attached to a message, as the message shows it (the file's record has the rest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: Id,
    pub name: String,
    pub content_type: String,
    pub size: u64,
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
    /// Files attached when it was posted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// `org ‖ channel ‖ seq`.
pub(crate) fn message_key(org: Id, channel: Id, seq: u64) -> Vec<u8> {
    let mut k = org_id_key(org, channel).to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Removes every message of the place `container` (a task's comments, when the task goes) and
/// their id index entries.
pub fn delete_in(tx: &mut Tx<'_, '_>, org: Id, container: Id) -> Result<(), DomainError> {
    let base = org_id_key(org, container);
    for (k, v) in tx.range(MESSAGES, &base, &prefix_end(&base), usize::MAX)? {
        let m: Message = decode(MESSAGES, &v)?;
        tx.delete(MESSAGES, &k)?;
        tx.delete(MESSAGE_IDS, &org_id_key(org, m.id))?;
    }
    Ok(())
}
