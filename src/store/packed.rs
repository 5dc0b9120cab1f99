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

/// The first byte of a record in binary form.
pub const BINARY: u8 = 1;

/// Whether a stored value is in binary form (else it is JSON).
pub fn is_binary(value: &[u8]) -> bool {
    value.first() == Some(&BINARY)
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

    /// What goes before the bytes: a plain text's length times two; 1 for a bare id; for a
    /// prefixed one, the prefix's length plus one, times two, plus one.
    fn header(&self) -> usize {
        match self {
            Self::Plain(t) => t.len() << 1,
            Self::Id(None, _) => 1,
            Self::Id(Some(prefix), _) => ((prefix.len() + 1) << 1) | 1,
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Self::Plain(t) => out.extend_from_slice(t.as_bytes()),
            Self::Id(prefix, id) => {
                out.extend_from_slice(prefix.unwrap_or("").as_bytes());
                out.extend_from_slice(id);
            }
        }
    }
}

/// Appends a text (see the module's note for ids).
pub fn put_text(out: &mut Vec<u8>, text: &str) {
    let t = Text::of(text);
    put_len(out, t.header());
    t.put(out);
}

/// Appends an optional text: 0 for none, else as `put_text` with its header plus one.
pub fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => {
            let t = Text::of(text);
            put_len(out, t.header() + 1);
            t.put(out);
        }
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

fn put_value_bare(out: &mut Vec<u8>, value: &serde_json::Value) {
    use serde_json::Value;
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
            put_text(out, s);
        }
        Value::Array(items) => {
            out.push(tag::ARRAY);
            put_len(out, items.len());
            for item in items {
                put_value_bare(out, item);
            }
        }
        Value::Object(map) => {
            out.push(tag::OBJECT);
            put_len(out, map.len());
            for (k, v) in map {
                put_text(out, k);
                put_value_bare(out, v);
            }
        }
    }
}

/// Appends a JSON value in binary form, after its length.
pub fn put_value(out: &mut Vec<u8>, value: &serde_json::Value) {
    let mut bare = Vec::with_capacity(64);
    put_value_bare(&mut bare, value);
    put_bytes(out, &bare);
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
}

impl<'a> Fields<'a> {
    /// The fields of `value`, which must be in binary form.
    pub fn of(value: &'a [u8]) -> Result<Self, String> {
        match value.split_first() {
            Some((&BINARY, rest)) => Ok(Self { rest }),
            _ => Err("record is not in binary form".into()),
        }
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

    /// The text whose header (`Text::header`) has been read.
    fn text_after(&mut self, header: usize) -> Result<String, String> {
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
        Self::value_in(bytes)
    }

    /// A value put with `put_optional_value`.
    pub fn optional_value(&mut self) -> Result<Option<serde_json::Value>, String> {
        match self.bytes()? {
            [] => Ok(None),
            bytes => Self::value_in(bytes).map(Some),
        }
    }

    /// The value `bytes` hold: binary, or JSON text.
    fn value_in(bytes: &[u8]) -> Result<serde_json::Value, String> {
        match bytes.first() {
            Some(&first) if first <= tag::OBJECT => {
                let mut inner = Fields { rest: bytes };
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
