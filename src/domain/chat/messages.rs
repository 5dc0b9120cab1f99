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

/// A message as stored. Fields at their empty value are left out of the row (most messages have
/// no thread, reactions, edits or mentions: 117 of a short message's 355 bytes were those
/// fields' names and empty values) and read back as empty.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_parent: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reply_count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Id>,
    /// Emoji → who reacted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, Vec<Id>>,
    /// Earlier texts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<Version>,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<i64>,
    /// Files attached when it was posted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use crate::domain::chat::messages::{Message, Version};
    use crate::ids::Id;

    fn plain() -> Message {
        Message {
            id: Id::new(),
            channel: Id::new(),
            on_task: false,
            seq: 7,
            author: Id::new(),
            text: "hello".into(),
            thread_parent: None,
            reply_count: 0,
            mentions: vec![],
            reactions: BTreeMap::new(),
            versions: vec![],
            created_at_ms: 1,
            edited_at_ms: None,
            deleted_at_ms: None,
            attachments: vec![],
        }
    }

    #[test]
    fn empty_fields_are_left_out_and_read_back_as_empty() {
        let m = plain();
        let row = serde_json::to_value(&m).unwrap();
        let keys: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert_eq!(serde_json::from_value::<Message>(row).unwrap(), m);
        // A row written with every field, as stores made before kept them, reads the same.
        let mut old = serde_json::to_value(&m).unwrap();
        for (k, v) in [
            ("thread_parent", serde_json::Value::Null),
            ("reply_count", 0.into()),
            ("mentions", serde_json::json!([])),
            ("reactions", serde_json::json!({})),
            ("versions", serde_json::json!([])),
            ("edited_at_ms", serde_json::Value::Null),
            ("deleted_at_ms", serde_json::Value::Null),
        ] {
            old[k] = v;
        }
        assert_eq!(serde_json::from_value::<Message>(old).unwrap(), m);
    }

    #[test]
    fn a_message_with_every_field_set_round_trips() {
        let mut m = plain();
        m.thread_parent = Some(3);
        m.reply_count = 2;
        m.mentions = vec![Id::new()];
        m.reactions.insert("👍".into(), vec![Id::new()]);
        m.versions.push(Version { text: "helo".into(), at_ms: 2 });
        m.edited_at_ms = Some(2);
        m.deleted_at_ms = Some(3);
        let back: Message = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
