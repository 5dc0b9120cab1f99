//! The compact binary form of the records the store keeps one or more of per change (audit
//! records, events): no field names, numbers at fixed width (big-endian), byte strings as a
//! LEB128 length and the bytes, and text the same way except that an id as we write them — a
//! lowercase hyphenated UUID, alone or after a `kind:` prefix (`user:…`, `message:…`) — goes as
//! the prefix and the UUID's 16 bytes instead of its 36 characters. A record stored this way
//! begins with [`BINARY`]; one stored as JSON, the form before schema 3, begins with `{`, so a
//! reader tells them apart by the first byte and reads both.
//!
//! A JSON value inside such a record (an event's data, an audit record's details) goes the same
//! way: a tag byte, then its content, with numbers as LEB128 and strings as texts. No tag is a
//! byte JSON text can begin with, so a value stored as JSON before schema 4 still reads.
//!
//! Events and audit records since schema 5 are in the compact form ([`COMPACT`], written with
//! [`Compact`]): the same fields in the same order, but numbers as LEB128 (a signed one
//! zigzagged first), and each text with a header that also says when it is one of [`WORDS`] —
//! the event kinds, audit actions, id prefixes and data keys the server writes over and over —
//! which then goes as the word's number alone (`message.posted`, 15 bytes, as one; `user:<id>`,
//! 22, as 17). [`Fields`] reads both forms.

use std::collections::HashMap;
use std::sync::LazyLock;

/// The first byte of a record in binary form.
pub const BINARY: u8 = 1;

/// The first byte of a record in the compact binary form (schema 5).
pub const COMPACT: u8 = 2;

/// Whether a stored value is in a binary form (else it is JSON).
pub fn is_binary(value: &[u8]) -> bool {
    matches!(value.first(), Some(&(BINARY | COMPACT)))
}

/// The words a compact record may name by number. A word's number is its place here and is
/// stored: append only, never reorder or remove (`tests::words_keep_their_numbers`). The first
/// 31 take one byte as a text or as an id's prefix (the 32nd as a text), so the commonest come
/// first.
pub const WORDS: &[&str] = &[
    // 0–30: one byte.
    "user",
    "room",
    "channel",
    "message",
    "task",
    "org",
    "id",
    "seq",
    "author",
    "thread_parent",
    "message.posted",
    "message.post",
    "comment.posted",
    "comment.post",
    "place",
    "mention",
    "direct_message",
    "message.edited",
    "message.edit",
    "message.deleted",
    "message.delete",
    "message.reaction",
    "message.react",
    "versions",
    "emoji",
    "add",
    "doc",
    "doc.edit",
    "service",
    "service.call",
    "role",
    // 31 and on: two bytes.
    "status",
    "name",
    "channel.read",
    "comment.edited",
    "comment.edit",
    "comment.deleted",
    "comment.delete",
    "comment.reaction",
    "comment.react",
    "inbox.ack",
    "auth.refresh",
    "auth.login_failed",
    "session.started",
    "session.revoked",
    "auth.session_revoke",
    "auth.sessions_revoke_all",
    "auth.refresh_reuse",
    "auth.sso_start",
    "auth.sso_callback",
    "task.created",
    "task.create",
    "task.updated",
    "task.update",
    "task.deleted",
    "task.delete",
    "task.assigned",
    "depends_on",
    "room.created",
    "room.create",
    "room.updated",
    "room.update",
    "room.removed",
    "room.invitation",
    "room.invite",
    "room.join",
    "room.leave",
    "room.kick",
    "room.change_role",
    "participant.joined",
    "participant.left",
    "participant.kicked",
    "participant.invited",
    "participant.role_changed",
    "channel.created",
    "channel.updated",
    "channel.update",
    "channel.added",
    "channel.archived",
    "channel.archive",
    "channel.join",
    "channel.add_member",
    "channel.remove_member",
    "member.joined",
    "member.added",
    "member.removed",
    "user.joined",
    "user.invited",
    "user.invite",
    "user.accept_invite",
    "user.role_changed",
    "user.profile_updated",
    "user.update_profile",
    "user.change_password",
    "user.issue_password_reset",
    "user.reset_password",
    "invitation",
    "doc.created",
    "doc.create",
    "doc.deleted",
    "doc.delete",
    "doc.version_saved",
    "asset.deleted",
    "asset.delete",
    "room_asset.added",
    "room_asset.add",
    "file",
    "asset",
    "call",
    "org.created",
    "org.create",
    "org.updated",
    "org.update",
    "org.deleted",
    "org.delete",
    "api_key",
    "api_key.created",
    "api_key.revoked",
    "api_key.revoke",
    "operator_key.created",
    "operator_key.create",
    "signing_key.rotated",
    "signing_key.create",
    "vault.rotate",
    "service.created",
    "service.create",
    "service.updated",
    "service.update",
    "service.deleted",
    "service.delete",
    "service.health",
    "service.up",
    "service.degraded",
    "service.down",
    "service.unknown",
    "service.signing_secret_rotated",
    "service.signing_secret.rotate",
    "service.credentials.reseal",
    "webhook_endpoint",
    "webhook.endpoint_created",
    "webhook.endpoint.create",
    "webhook.endpoint_updated",
    "webhook.endpoint.update",
    "webhook.endpoint_deleted",
    "webhook.endpoint_disabled",
    "webhook.endpoint.disable",
    "webhook.secret_rotated",
    "webhook.secret.rotate",
    "connection",
    "connection.created",
    "connection.create",
    "connection.active",
    "connection.deleted",
    "connection.delete",
    "connection.needs_reauth",
    "connection.authorize",
    "connection.callback",
    "connection.refresh",
    "oauth_app",
    "oauth_app.created",
    "oauth_app.create",
    "oauth_app.updated",
    "oauth_app.update",
    "oauth_app.deleted",
    "oauth_app.delete",
    "oauth_app.consent",
    "oauth_app.revoke",
    "oauth_app.token_refused",
    "oauth_apps_policy.updated",
    "oauth_apps_policy.update",
    "oauth_provider",
    "oauth_provider.created",
    "oauth_provider.create",
    "oauth_provider.updated",
    "oauth_provider.update",
    "oauth_provider.deleted",
    "oauth_provider.delete",
    "oauth.secrets.reseal",
    "sso_provider",
    "sso_provider.created",
    "sso_provider.create",
    "sso_provider.updated",
    "sso_provider.update",
    "sso_provider.deleted",
    "sso_provider.delete",
    "sso_policy.updated",
    "sso_policy.update",
    "sso.secrets.reseal",
    "prompt_template",
    "prompt.template_created",
    "prompt.template.create",
    "prompt.template_updated",
    "prompt.template.update",
    "prompt.template_deleted",
    "prompt.template.delete",
    "prompt.template.rollback",
    "prompt.injection_flagged",
    "system",
];

/// Each word's number.
static WORD_NUMBERS: LazyLock<HashMap<&'static str, usize>> =
    LazyLock::new(|| WORDS.iter().enumerate().map(|(n, w)| (*w, n)).collect());

fn word(text: &str) -> Option<usize> {
    WORD_NUMBERS.get(text).copied()
}

/// Appends a length, LEB128.
pub fn put_len(out: &mut Vec<u8>, n: usize) {
    put_u64(out, n as u64);
}

/// Appends a byte string: its length, then it.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// A text as stored: as it is, or as an id with the prefix before it.
enum Text<'a> {
    Plain(&'a str),
    Id(Option<&'a str>, [u8; 16]),
}

impl<'a> Text<'a> {
    fn of(text: &'a str) -> Self {
        const UUID_LEN: usize = uuid::fmt::Hyphenated::LENGTH;
        let Some(at) = text.len().checked_sub(UUID_LEN) else { return Self::Plain(text) };
        let (Some(head), Some(tail)) = (text.get(..at), text.get(at..)) else { return Self::Plain(text) };
        let Ok(id) = uuid::Uuid::try_parse(tail) else { return Self::Plain(text) };
        // Only the form that reads back the same: lowercase and hyphenated.
        if id.hyphenated().encode_lower(&mut [0u8; UUID_LEN]) != tail {
            return Self::Plain(text);
        }
        match head {
            "" => Self::Id(None, *id.as_bytes()),
            _ => head.strip_suffix(':').map_or(Self::Plain(text), |prefix| Self::Id(Some(prefix), *id.as_bytes())),
        }
    }

    /// Puts it in the first binary form: a header (LEB128), then the bytes. The header is a
    /// plain text's length times two; 1 for a bare id; for a prefixed one, the prefix's length
    /// plus one, times two, plus one. `header_extra` is added to the header (1 for an optional
    /// text), as in `put_compact`.
    fn put_first(&self, out: &mut Vec<u8>, header_extra: usize) {
        match self {
            Self::Plain(t) => {
                put_len(out, (t.len() << 1) + header_extra);
                out.extend_from_slice(t.as_bytes());
            }
            Self::Id(prefix, id) => {
                let n = prefix.map_or(0, |p| p.len() + 1);
                put_len(out, ((n << 1) | 1) + header_extra);
                out.extend_from_slice(prefix.unwrap_or("").as_bytes());
                out.extend_from_slice(id);
            }
        }
    }

    /// Puts it in the compact form: a header (LEB128) whose two low bits say what follows and
    /// whose other bits are a number for it — a plain text (0: its length, then it), an id
    /// (1: 0 for a bare one, else its prefix's word number plus one; then its 16 bytes), an id
    /// whose prefix is no word (2: the prefix's length, the prefix, the 16 bytes), or a word (3:
    /// its number). `header_extra` is added to the header (1 for an optional text).
    fn put_compact(&self, out: &mut Vec<u8>, header_extra: usize) {
        let header = |out: &mut Vec<u8>, n: usize, kind: usize| put_len(out, ((n << 2) | kind) + header_extra);
        match self {
            Self::Plain(t) => {
                if let Some(n) = word(t) {
                    header(out, n, compact::WORD);
                } else {
                    header(out, t.len(), compact::PLAIN);
                    out.extend_from_slice(t.as_bytes());
                }
            }
            Self::Id(prefix, id) => {
                match prefix {
                    None => header(out, 0, compact::ID),
                    Some(p) => {
                        if let Some(n) = word(p) {
                            header(out, n + 1, compact::ID);
                        } else {
                            header(out, p.len(), compact::PREFIXED_ID);
                            out.extend_from_slice(p.as_bytes());
                        }
                    }
                }
                out.extend_from_slice(id);
            }
        }
    }
}

/// What the two low bits of a compact text's header say.
mod compact {
    pub const PLAIN: usize = 0;
    pub const ID: usize = 1;
    pub const PREFIXED_ID: usize = 2;
    pub const WORD: usize = 3;
}

/// Appends a text (see the module's note for ids).
pub fn put_text(out: &mut Vec<u8>, text: &str) {
    Text::of(text).put_first(out, 0);
}

/// Appends an optional text: 0 for none, else as `put_text` with its header plus one.
pub fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => Text::of(text).put_first(out, 1),
    }
}

/// Tags of a JSON value in binary form: all below the bytes a JSON text can begin with (`{`,
/// `[`, `"`, `-`, digits, letters, and whitespace from 0x09).
mod tag {
    pub const NULL: u8 = 0;
    pub const FALSE: u8 = 1;
    pub const TRUE: u8 = 2;
    /// A number that is an unsigned integer: LEB128.
    pub const UINT: u8 = 3;
    /// A negative integer `n`: LEB128 of `-(n + 1)`.
    pub const NEG: u8 = 4;
    /// Any other number: the f64's bits, big-endian.
    pub const FLOAT: u8 = 5;
    /// A text (`put_text`).
    pub const STRING: u8 = 6;
    /// A count, then each item.
    pub const ARRAY: u8 = 7;
    /// A count, then each key (a text) and its value, in the map's order.
    pub const OBJECT: u8 = 8;
}

/// How deep a stored value may nest (serde_json's parser stops at 128 too).
const DEPTH_MAX: usize = 128;

/// Appends a number, LEB128.
fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_value_bare(out: &mut Vec<u8>, value: &serde_json::Value, compact: bool) {
    use serde_json::Value;
    let put_str = |out: &mut Vec<u8>, text: &str| {
        if compact { Text::of(text).put_compact(out, 0) } else { put_text(out, text) }
    };
    match value {
        Value::Null => out.push(tag::NULL),
        Value::Bool(b) => out.push(if *b { tag::TRUE } else { tag::FALSE }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(tag::UINT);
                put_u64(out, u);
            } else if let Some(i) = n.as_i64() {
                out.push(tag::NEG);
                // i is negative here, so -(i + 1) is at least 0 and never overflows.
                put_u64(out, (-(i + 1)) as u64);
            } else {
                out.push(tag::FLOAT);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_bits().to_be_bytes());
            }
        }
        Value::String(s) => {
            out.push(tag::STRING);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(tag::ARRAY);
            put_len(out, items.len());
            for item in items {
                put_value_bare(out, item, compact);
            }
        }
        Value::Object(map) => {
            out.push(tag::OBJECT);
            put_len(out, map.len());
            for (k, v) in map {
                put_str(out, k);
                put_value_bare(out, v, compact);
            }
        }
    }
}

/// Appends what `write` puts after its length (LEB128), with no buffer of its own: the length
/// gets one byte first, and more in place in the rare case it needs them.
fn put_sized(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.push(0);
    write(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut header = Vec::with_capacity(3);
        put_len(&mut header, len);
        out.splice(at..=at, header);
    }
}

/// Appends a JSON value in binary form, after its length.
pub fn put_value(out: &mut Vec<u8>, value: &serde_json::Value) {
    put_sized(out, |out| put_value_bare(out, value, false));
}

/// Writes a record in the compact form, field by field; [`Fields`] reads them back in order.
pub struct Compact(Vec<u8>);

impl Compact {
    pub fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(COMPACT);
        Self(out)
    }

    /// An unsigned number, LEB128 ([`Fields::number`]).
    pub fn number(&mut self, n: u64) {
        put_u64(&mut self.0, n);
    }

    /// A signed number, zigzagged and LEB128 ([`Fields::signed`]).
    pub fn signed(&mut self, n: i64) {
        put_u64(&mut self.0, ((n << 1) ^ (n >> 63)) as u64);
    }

    pub fn text(&mut self, text: &str) {
        Text::of(text).put_compact(&mut self.0, 0);
    }

    /// 0 for none, else as `text` with its header plus one.
    pub fn optional(&mut self, text: Option<&str>) {
        match text {
            None => self.0.push(0),
            Some(text) => Text::of(text).put_compact(&mut self.0, 1),
        }
    }

    /// A JSON value in binary form, after its length, its texts compact.
    pub fn value(&mut self, value: &serde_json::Value) {
        put_sized(&mut self.0, |out| put_value_bare(out, value, true));
    }

    /// Bytes of a length the reader knows (a digest).
    pub fn fixed(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Appends an optional JSON value: a zero length for none, else as `put_value` (a value is
/// never empty).
pub fn put_optional_value(out: &mut Vec<u8>, value: Option<&serde_json::Value>) {
    match value {
        None => put_len(out, 0),
        Some(value) => put_value(out, value),
    }
}

/// Reads a binary record's fields in the order they were put. Every read fails, rather than
/// panics, on a record cut short or malformed.
pub struct Fields<'a> {
    rest: &'a [u8],
    /// In the compact form (else the first binary form).
    compact: bool,
}

impl<'a> Fields<'a> {
    /// The fields of `value`, which must be in a binary form.
    pub fn of(value: &'a [u8]) -> Result<Self, String> {
        match value.split_first() {
            Some((&BINARY, rest)) => Ok(Self { rest, compact: false }),
            Some((&COMPACT, rest)) => Ok(Self { rest, compact: true }),
            _ => Err("record is not in binary form".into()),
        }
    }

    /// A number put with [`Compact::number`], or at fixed width in the first form.
    pub fn number(&mut self) -> Result<u64, String> {
        if self.compact { self.u64_leb() } else { self.u64() }
    }

    /// A number put with [`Compact::signed`], or at fixed width in the first form.
    pub fn signed(&mut self) -> Result<i64, String> {
        if !self.compact {
            return self.i64();
        }
        let z = self.u64_leb()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("record is cut short".into());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        self.fixed().map(u64::from_be_bytes)
    }

    pub fn i64(&mut self) -> Result<i64, String> {
        self.fixed().map(i64::from_be_bytes)
    }

    pub fn hash(&mut self) -> Result<[u8; 32], String> {
        self.fixed()
    }

    /// An id put as its 16 bytes.
    pub fn id(&mut self) -> Result<crate::ids::Id, String> {
        self.fixed().map(|b| crate::ids::Id(uuid::Uuid::from_bytes(b)))
    }

    fn len(&mut self) -> Result<usize, String> {
        usize::try_from(self.u64_leb()?).map_err(|_| "record has a length out of range".into())
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.len()?;
        self.take(len)
    }

    fn string(&mut self, len: usize) -> Result<String, String> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "record has text that is not UTF-8".into())
    }

    /// The text whose header (`Text::header`, or `Text::put_compact`'s) has been read.
    fn text_after(&mut self, header: usize) -> Result<String, String> {
        if self.compact {
            return self.compact_text_after(header);
        }
        let len = header >> 1;
        if header & 1 == 0 {
            return self.string(len);
        }
        let prefix = match len {
            0 => None,
            _ => Some(self.string(len - 1)?),
        };
        let id = uuid::Uuid::from_bytes(self.fixed()?);
        Ok(match prefix {
            None => id.hyphenated().to_string(),
            Some(prefix) => format!("{prefix}:{}", id.hyphenated()),
        })
    }

    fn compact_text_after(&mut self, header: usize) -> Result<String, String> {
        let n = header >> 2;
        let word = |n: usize| WORDS.get(n).copied().ok_or_else(|| format!("record names word {n}, which is not one"));
        let id = |f: &mut Self| f.fixed().map(|b| uuid::Uuid::from_bytes(b).hyphenated().to_string());
        match header & 3 {
            compact::PLAIN => self.string(n),
            compact::ID if n == 0 => id(self),
            compact::ID => {
                let prefix = word(n - 1)?;
                Ok(format!("{prefix}:{}", id(self)?))
            }
            compact::PREFIXED_ID => {
                let prefix = self.string(n)?;
                Ok(format!("{prefix}:{}", id(self)?))
            }
            _ => word(n).map(str::to_owned),
        }
    }

    pub fn text(&mut self) -> Result<String, String> {
        let header = self.len()?;
        self.text_after(header)
    }

    pub fn optional(&mut self) -> Result<Option<String>, String> {
        match self.len()? {
            0 => Ok(None),
            header => self.text_after(header - 1).map(Some),
        }
    }

    fn u64_leb(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..u64::BITS).step_by(7) {
            let b = self.take(1)?[0];
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err("record has a length that does not end".into())
    }

    fn value_bare(&mut self, depth: usize) -> Result<serde_json::Value, String> {
        use serde_json::Value;
        if depth > DEPTH_MAX {
            return Err("record has a value nested too deep".into());
        }
        Ok(match self.take(1)?[0] {
            tag::NULL => Value::Null,
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::UINT => self.u64_leb()?.into(),
            tag::NEG => {
                let m = i64::try_from(self.u64_leb()?).map_err(|_| "record has a number out of range")?;
                (-m - 1).into()
            }
            tag::FLOAT => {
                let f = f64::from_bits(self.u64()?);
                serde_json::Number::from_f64(f).map(Value::Number).ok_or("record has a number that is not finite")?
            }
            tag::STRING => Value::String(self.text()?),
            tag::ARRAY => {
                let n = self.len()?;
                // Each item takes at least a byte: a count beyond what is left is corrupt.
                if n > self.rest.len() {
                    return Err("record is cut short".into());
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value_bare(depth + 1)?);
                }
                Value::Array(items)
            }
            tag::OBJECT => {
                let n = self.len()?;
                if n > self.rest.len() {
                    return Err("record is cut short".into());
                }
                let mut map = serde_json::Map::with_capacity(n);
                for _ in 0..n {
                    let k = self.text()?;
                    let v = self.value_bare(depth + 1)?;
                    map.insert(k, v);
                }
                Value::Object(map)
            }
            other => return Err(format!("record has a value of unknown kind {other}")),
        })
    }

    /// A JSON value put with `put_value`, or one stored as JSON text with `put_bytes` (the form
    /// before schema 4).
    pub fn value(&mut self) -> Result<serde_json::Value, String> {
        let bytes = self.bytes()?;
        self.value_in(bytes)
    }

    /// A value put with `put_optional_value`.
    pub fn optional_value(&mut self) -> Result<Option<serde_json::Value>, String> {
        match self.bytes()? {
            [] => Ok(None),
            bytes => self.value_in(bytes).map(Some),
        }
    }

    /// The value `bytes` hold: binary (in this record's form), or JSON text.
    fn value_in(&self, bytes: &[u8]) -> Result<serde_json::Value, String> {
        match bytes.first() {
            Some(&first) if first <= tag::OBJECT => {
                let mut inner = Fields { rest: bytes, compact: self.compact };
                let value = inner.value_bare(0)?;
                inner.end().map(|()| value)
            }
            _ => serde_json::from_slice(bytes).map_err(|e| format!("record's JSON: {e}")),
        }
    }

    /// Whether every field has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Ends the reading: nothing may be left over.
    pub fn end(self) -> Result<(), String> {
        if self.rest.is_empty() { Ok(()) } else { Err("record has bytes after its end".into()) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn what_is_put_reads_back_and_a_cut_never_does() {
        let long = "x".repeat(300);
        let mut out = vec![BINARY];
        out.extend_from_slice(&7u64.to_be_bytes());
        out.extend_from_slice(&(-5i64).to_be_bytes());
        put_text(&mut out, &long);
        put_text(&mut out, "");
        put_optional(&mut out, None);
        put_optional(&mut out, Some(""));
        put_optional(&mut out, Some("é"));
        out.extend_from_slice(&[9u8; 32]);
        let read = |value: &[u8]| -> Result<_, String> {
            let mut f = Fields::of(value)?;
            let all =
                (f.u64()?, f.i64()?, f.text()?, f.text()?, f.optional()?, f.optional()?, f.optional()?, f.hash()?);
            f.end()?;
            Ok(all)
        };
        let all = read(&out).unwrap();
        assert_eq!(all, (7, -5, long, String::new(), None, Some(String::new()), Some("é".into()), [9u8; 32]));
        for cut in 0..out.len() {
            assert!(read(&out[..cut]).is_err(), "cut at {cut}");
        }
        out.push(0);
        assert!(read(&out).is_err(), "a byte after the end");
        assert!(Fields::of(b"{}").is_err() && !is_binary(b"{}") && is_binary(&[BINARY]));
    }

    #[test]
    fn ids_go_as_their_bytes_and_everything_reads_back_as_it_was() {
        let id = "0193aabb-cc00-7d11-8e22-f33344455566";
        let cases = [
            (format!("user:{id}"), 1 + 4 + 16),
            (id.to_owned(), 1 + 16),
            (format!("a:b:{id}"), 1 + 3 + 16),
            (format!(":{id}"), 1 + 16),
            (id.to_uppercase(), 1 + 36),
            (format!("user{id}"), 1 + 40),
            (format!("user:{}", &id[1..]), 1 + 40),
            ("message:not-an-id".to_owned(), 1 + 17),
            ("é".repeat(20), 1 + 40),
            (format!("é{}", &id[1..]), 1 + 37),
            (String::new(), 1),
        ];
        for (text, size) in cases {
            for optional in [false, true] {
                let mut out = vec![BINARY];
                if optional {
                    put_optional(&mut out, Some(&text));
                } else {
                    put_text(&mut out, &text);
                }
                assert_eq!(out.len() - 1, size, "{text:?}");
                let mut f = Fields::of(&out).unwrap();
                let read = if optional { f.optional().unwrap().unwrap() } else { f.text().unwrap() };
                assert_eq!(read, text);
                f.end().unwrap();
            }
        }
    }

    fn value_read(stored: &[u8]) -> Result<serde_json::Value, String> {
        let mut f = Fields::of(stored)?;
        let v = f.value()?;
        f.end().map(|()| v)
    }

    #[test]
    fn json_values_read_back_exactly_and_ids_in_them_are_short() {
        let id = "0193aabb-cc00-7d11-8e22-f33344455566";
        let values = [
            serde_json::json!({ "id": id, "seq": 42, "author": format!("user:{id}"), "thread_parent": null }),
            serde_json::json!({ "z": 1, "a": 2, "m": [true, false, null, "", "é", 0.5, -1.25e300] }),
            serde_json::json!([0, 127, 128, u64::MAX, -1, -128, i64::MIN, i64::MAX, 1.0, -0.0]),
            serde_json::json!({}),
            serde_json::json!([]),
            serde_json::json!("x".repeat(300)),
            serde_json::json!({ "deep": { "er": [[[{ "k": [id] }]]] } }),
            serde_json::Value::Null,
        ];
        for value in values {
            let mut out = vec![BINARY];
            put_value(&mut out, &value);
            let back = value_read(&out).unwrap();
            assert_eq!(back, value);
            // The same text, keys in the same order, as the hash of an audit record needs.
            assert_eq!(serde_json::to_string(&back).unwrap(), serde_json::to_string(&value).unwrap());
            for cut in 1..out.len() {
                assert!(value_read(&out[..cut]).is_err(), "{value} cut at {cut}");
            }
        }
        // An event's data: the two ids take 17 bytes each, not 38.
        let data = serde_json::json!({ "id": id, "seq": 42, "author": id, "thread_parent": null });
        let mut out = vec![BINARY];
        put_value(&mut out, &data);
        assert!(out.len() < serde_json::to_vec(&data).unwrap().len() * 3 / 5, "{} bytes", out.len());
    }

    #[test]
    fn a_value_stored_as_json_text_still_reads() {
        let value = serde_json::json!({ "place": "0193aabb-cc00-7d11-8e22-f33344455566", "seq": 3 });
        let mut out = vec![BINARY];
        put_bytes(&mut out, &serde_json::to_vec(&value).unwrap());
        assert_eq!(value_read(&out).unwrap(), value);
        // Nor can JSON text begin with a tag: serde_json never writes leading whitespace.
        for text in ["null", "true", "1", "-1", "\"s\"", "[]", "{}"] {
            assert!(text.as_bytes()[0] > tag::OBJECT, "{text}");
        }
    }

    #[test]
    fn a_malformed_value_fails_and_never_panics() {
        // Arrays in arrays, deeper than any value may be.
        let mut deep: Vec<u8> = std::iter::repeat_n([tag::ARRAY, 1], DEPTH_MAX + 1).flatten().collect();
        deep.push(tag::NULL);
        let mut nested = vec![BINARY];
        put_bytes(&mut nested, &deep);
        let cases: [&[u8]; 6] = [
            &nested,
            &[BINARY, 1, 9],
            &[BINARY, 2, tag::ARRAY, 200],
            &[BINARY, 9, tag::FLOAT, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0],
            &[BINARY, 2, tag::NULL, tag::NULL],
            &[BINARY, 11, tag::NEG, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ];
        for case in cases {
            assert!(value_read(case).is_err(), "{case:?}");
        }
    }

    #[test]
    fn compact_texts_name_words_and_read_back_as_they_were() {
        let id = "0193aabb-cc00-7d11-8e22-f33344455566";
        let cases = [
            ("message.posted".to_owned(), 1),
            ("user".to_owned(), 1),
            ("role".to_owned(), 1),
            ("name".to_owned(), 2),
            ("system".to_owned(), 2),
            (format!("user:{id}"), 1 + 16),
            (format!("room:{id}"), 1 + 16),
            (format!("oauth_app:{id}"), 2 + 16),
            (id.to_owned(), 1 + 16),
            (format!("gadget:{id}"), 1 + 6 + 16),
            (format!(":{id}"), 1 + 16),
            (format!("a:b:{id}"), 1 + 3 + 16),
            (id.to_uppercase(), 2 + 36),
            ("message.posted ".to_owned(), 1 + 15),
            ("Message.posted".to_owned(), 1 + 14),
            ("x".repeat(40), 2 + 40),
            (String::new(), 1),
        ];
        for (text, size) in cases {
            for optional in [false, true] {
                let mut out = Compact::with_capacity(0);
                if optional {
                    out.optional(Some(&text));
                } else {
                    out.text(&text);
                }
                let out = out.into_bytes();
                assert_eq!(out.len() - 1, size, "{text:?}");
                let mut f = Fields::of(&out).unwrap();
                let read = if optional { f.optional().unwrap().unwrap() } else { f.text().unwrap() };
                assert_eq!(read, text);
                f.end().unwrap();
                for cut in 1..out.len() {
                    let mut f = Fields::of(&out[..cut]).unwrap();
                    let read = if optional { f.optional().map(|_| ()) } else { f.text().map(|_| ()) };
                    assert!(read.is_err(), "{text:?} cut at {cut}");
                }
            }
        }
        let mut none = Compact::with_capacity(0);
        none.optional(None);
        assert_eq!(Fields::of(&none.into_bytes()).unwrap().optional().unwrap(), None);
        // A word number past the list, as a text and as an id's prefix.
        for header in [(WORDS.len() << 2) | 3, ((WORDS.len() + 1) << 2) | 1] {
            let mut out = vec![COMPACT];
            put_len(&mut out, header);
            out.extend_from_slice(&[0; 16]);
            assert!(Fields::of(&out).unwrap().text().is_err(), "{header}");
        }
    }

    #[test]
    fn compact_numbers_read_back_and_a_cut_never_does() {
        let unsigned = [0, 1, 127, 128, 1 << 40, u64::MAX];
        let signed = [0, -1, 1, 63, -64, 64, 1_765_000_000_123, -1_765_000_000_123, i64::MIN, i64::MAX];
        let mut out = Compact::with_capacity(0);
        for n in unsigned {
            out.number(n);
        }
        for n in signed {
            out.signed(n);
        }
        out.fixed(&[7; 32]);
        let out = out.into_bytes();
        let read = |value: &[u8]| -> Result<_, String> {
            let mut f = Fields::of(value)?;
            let u: Vec<u64> = (0..unsigned.len()).map(|_| f.number()).collect::<Result<_, _>>()?;
            let s: Vec<i64> = (0..signed.len()).map(|_| f.signed()).collect::<Result<_, _>>()?;
            let h = f.hash()?;
            f.end()?;
            Ok((u, s, h))
        };
        assert_eq!(read(&out).unwrap(), (unsigned.to_vec(), signed.to_vec(), [7; 32]));
        for cut in 0..out.len() {
            assert!(read(&out[..cut]).is_err(), "cut at {cut}");
        }
        // A time in milliseconds takes six bytes, not eight.
        let mut t = Compact::with_capacity(0);
        t.signed(1_765_000_000_123);
        assert_eq!(t.into_bytes().len() - 1, 6);
    }

    #[test]
    fn compact_values_read_back_exactly_with_their_keys_in_order() {
        let id = "0193aabb-cc00-7d11-8e22-f33344455566";
        let data = serde_json::json!({ "id": id, "seq": 42, "author": id, "thread_parent": null });
        let values = [
            data.clone(),
            serde_json::json!({ "z": 1, "user": 2, "id": [true, "role", format!("user:{id}"), 0.5, -3] }),
            serde_json::json!({ "place": id, "seq": 7, "deep": { "status": [[{ "name": "system" }]] } }),
            serde_json::json!({ "long": "y".repeat(20_000), "after": 1 }),
            serde_json::json!([]),
            serde_json::Value::Null,
        ];
        for value in values {
            let mut out = Compact::with_capacity(0);
            out.value(&value);
            let out = out.into_bytes();
            let mut f = Fields::of(&out).unwrap();
            let back = f.value().unwrap();
            f.end().unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), serde_json::to_string(&value).unwrap());
            for cut in 1..out.len() {
                let mut f = Fields::of(&out[..cut]).unwrap();
                assert!(f.value().and_then(|_| f.end()).is_err(), "{value} cut at {cut}");
            }
        }
        // A chat message's event data: its keys are words, its ids 17 bytes.
        let mut first = vec![BINARY];
        put_value(&mut first, &data);
        let mut compact = Compact::with_capacity(0);
        compact.value(&data);
        assert_eq!(compact.into_bytes().len(), first.len() - 24);
    }

    /// A word's number is stored: the list may only grow at its end. The snapshot pins every
    /// number; a new word is a new last line, and any other change to it means stored records
    /// would read as other words.
    #[test]
    fn words_keep_their_numbers() {
        let mut seen = std::collections::HashSet::new();
        for w in WORDS {
            assert!(seen.insert(*w), "{w} twice");
            assert!(matches!(Text::of(w), Text::Plain(_)) && !w.is_empty() && w.len() < 64, "{w}");
        }
        let numbered: Vec<String> = WORDS.iter().enumerate().map(|(n, w)| format!("{n} {w}")).collect();
        insta::assert_snapshot!(numbered.join("\n"));
    }

    #[test]
    fn lengths_take_as_many_bytes_as_they_need() {
        for (n, bytes) in [(0usize, 1usize), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (usize::MAX, 10)] {
            let mut out = vec![BINARY];
            put_len(&mut out, n);
            assert_eq!(out.len() - 1, bytes, "{n}");
            assert_eq!(Fields::of(&out).unwrap().len().unwrap(), n);
        }
        // Eleven bytes that all say "more" never end.
        let mut out = vec![BINARY];
        out.extend_from_slice(&[0x80; 11]);
        assert!(Fields::of(&out).unwrap().len().is_err());
    }
}
