//! The message record and its storage: key layout (`org ‖ place ‖ seq`, with an id index),
//! and removing every message of a place with it (a task's comments when the task goes). It
//! knows no place: channels and tasks build on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::DomainError;
use crate::ids::Id;
use crate::store::tables::{self, MESSAGE_IDS, MESSAGES, org_id_key};
use crate::store::writer::Tx;
use crate::store::{StoreError, decode, packed, prefix_end};

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

/// The fields a stored message keeps apart from the rest: the channel and `seq` in its key, the
/// others in their binary form.
const STORED_APART: [&str; 6] = ["id", "channel", "seq", "author", "text", "created_at_ms"];

impl Message {
    /// The stored form, binary (`packed`): the id and the author (16 bytes each) and
    /// `created_at_ms`, the text, then whatever else the message has (a thread, replies,
    /// mentions, reactions, edits, attachments, that it is a task's comment) as a JSON value in
    /// binary form, or nothing when it has none of those, as most have not. The channel and
    /// `seq` are the key's (`message_key`).
    pub fn to_stored(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44 + self.text.len());
        out.push(packed::BINARY);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&self.created_at_ms.to_be_bytes());
        packed::put_text(&mut out, &self.text);
        if self.only_the_basics() {
            packed::put_optional_value(&mut out, None);
        } else {
            let mut rest = serde_json::to_value(self).expect("messages serialize");
            if let Some(map) = rest.as_object_mut() {
                for k in STORED_APART {
                    map.shift_remove(k);
                }
            }
            packed::put_optional_value(&mut out, Some(&rest));
        }
        out
    }

    /// Whether the message has nothing but the fields stored apart. Every field is named, so a
    /// field added to `Message` must be placed here (the stored form would otherwise lose it).
    fn only_the_basics(&self) -> bool {
        let Self {
            id: _,
            channel: _,
            on_task,
            seq: _,
            author: _,
            text: _,
            thread_parent,
            reply_count,
            mentions,
            reactions,
            versions,
            created_at_ms: _,
            edited_at_ms,
            deleted_at_ms,
            attachments,
        } = self;
        !on_task
            && thread_parent.is_none()
            && *reply_count == 0
            && mentions.is_empty()
            && reactions.is_empty()
            && versions.is_empty()
            && edited_at_ms.is_none()
            && deleted_at_ms.is_none()
            && attachments.is_empty()
    }

    /// Reads a message as stored under `key` (`org ‖ channel ‖ seq`): binary, or JSON as
    /// messages were stored before schema 4.
    pub fn from_stored(key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        if !packed::is_binary(value) {
            return decode(MESSAGES, value);
        }
        let read = || -> Result<Self, String> {
            let (40, Some(channel), Some(seq)) =
                (key.len(), key.get(16..32).and_then(Id::from_slice), key.get(32..).and_then(tables::u64_be))
            else {
                return Err("message has a malformed key".into());
            };
            let mut f = packed::Fields::of(value)?;
            let (id, author, created_at_ms, text) = (f.id()?, f.id()?, f.i64()?, f.text()?);
            let rest = f.optional_value()?;
            f.end()?;
            let Some(mut rest) = rest else {
                return Ok(Self {
                    id,
                    channel,
                    on_task: false,
                    seq,
                    author,
                    text,
                    thread_parent: None,
                    reply_count: 0,
                    mentions: Vec::new(),
                    reactions: BTreeMap::new(),
                    versions: Vec::new(),
                    created_at_ms,
                    edited_at_ms: None,
                    deleted_at_ms: None,
                    attachments: Vec::new(),
                });
            };
            let map = rest.as_object_mut().ok_or("message's other fields are not an object")?;
            for (k, v) in STORED_APART.into_iter().zip([
                serde_json::to_value(id),
                serde_json::to_value(channel),
                Ok(seq.into()),
                serde_json::to_value(author),
                Ok(text.into()),
                Ok(created_at_ms.into()),
            ]) {
                map.insert(k.to_owned(), v.map_err(|e| e.to_string())?);
            }
            serde_json::from_value(rest).map_err(|e| format!("message: {e}"))
        };
        read().map_err(|detail| StoreError::Corrupt { table: "messages".into(), detail })
    }
}

/// What the id index (and the idempotency index) keeps of a message's key: `channel ‖ seq`, the
/// organization being the index key's own.
pub(crate) fn index_entry(at: &[u8]) -> &[u8] {
    at.get(16..).unwrap_or(at)
}

/// The message's key from an index entry in `org`: `channel ‖ seq` since schema 4, the whole key
/// in entries written before.
pub(crate) fn key_of_entry(org: Id, entry: &[u8]) -> Vec<u8> {
    if entry.len() == 24 { [org.as_bytes().as_slice(), entry].concat() } else { entry.to_vec() }
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
        let m = Message::from_stored(&k, &v)?;
        tx.delete(MESSAGES, &k)?;
        tx.delete(MESSAGE_IDS, &org_id_key(org, m.id))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use crate::domain::chat::messages::{Attachment, Message, Version, index_entry, key_of_entry, message_key};
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

    fn key_of(m: &Message) -> Vec<u8> {
        message_key(Id::new(), m.channel, m.seq)
    }

    #[test]
    fn a_plain_message_is_stored_in_a_few_bytes_past_its_text() {
        let m = plain();
        let stored = m.to_stored();
        assert_eq!(stored.len(), 1 + 16 + 16 + 8 + 1 + m.text.len() + 1);
        assert_eq!(Message::from_stored(&key_of(&m), &stored).unwrap(), m);
        // The key holds the channel and the position.
        let elsewhere = message_key(Id::new(), Id::new(), 9);
        let moved = Message::from_stored(&elsewhere, &stored).unwrap();
        assert_eq!((moved.channel.as_bytes().as_slice(), moved.seq), (&elsewhere[16..32], 9));
    }

    #[test]
    fn a_stored_message_with_every_field_set_reads_back_whole() {
        let mut m = plain();
        m.on_task = true;
        m.thread_parent = Some(3);
        m.reply_count = 2;
        m.mentions = vec![Id::new()];
        m.reactions.insert("👍".into(), vec![Id::new(), Id::new()]);
        m.versions.push(Version { text: "helo".into(), at_ms: 2 });
        m.edited_at_ms = Some(2);
        m.deleted_at_ms = Some(3);
        m.text = String::new();
        m.attachments.push(Attachment {
            id: Id::new(),
            name: "a.png".into(),
            content_type: "image/png".into(),
            size: 5,
        });
        let key = key_of(&m);
        let stored = m.to_stored();
        assert_eq!(Message::from_stored(&key, &stored).unwrap(), m);
        // Each field alone, too.
        for one in 0..9 {
            let mut n = plain();
            match one {
                0 => n.on_task = true,
                1 => n.thread_parent = m.thread_parent,
                2 => n.reply_count = m.reply_count,
                3 => n.mentions.clone_from(&m.mentions),
                4 => n.reactions.clone_from(&m.reactions),
                5 => n.versions.clone_from(&m.versions),
                6 => n.edited_at_ms = m.edited_at_ms,
                7 => n.deleted_at_ms = m.deleted_at_ms,
                _ => n.attachments.clone_from(&m.attachments),
            }
            let stored = n.to_stored();
            assert!(stored.len() > plain().to_stored().len(), "field {one} is stored");
            assert_eq!(Message::from_stored(&key_of(&n), &stored).unwrap(), n, "field {one}");
        }
        for cut in 0..stored.len() {
            assert!(Message::from_stored(&key, &stored[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Message::from_stored(&key[..39], &stored).is_err(), "a short key");
    }

    #[test]
    fn an_index_entry_leaves_the_organization_to_its_key_and_an_old_one_still_reads() {
        let (org, channel) = (Id::new(), Id::new());
        let at = message_key(org, channel, 7);
        let entry = index_entry(&at);
        assert_eq!(entry.len(), 24);
        assert_eq!(key_of_entry(org, entry), at);
        assert_eq!(key_of_entry(org, &at), at, "as written before schema 4");
    }

    #[test]
    fn a_message_stored_as_json_still_reads() {
        let mut m = plain();
        m.reply_count = 4;
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Message::from_stored(&key_of(&m), &json).unwrap(), m);
        assert!(m.to_stored().len() * 2 < json.len(), "{} bytes as JSON", json.len());
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
