//! The compact binary form of the records the store keeps one or more of per change (audit
//! records, events): no field names, numbers at fixed width (big-endian), byte strings as a
//! LEB128 length and the bytes, and text the same way except that an id as we write them — a
//! lowercase hyphenated UUID, alone or after a `kind:` prefix (`user:…`, `message:…`) — goes as
//! the prefix and the UUID's 16 bytes instead of its 36 characters. A record stored this way
//! begins with [`BINARY`]; one stored as JSON, the form before schema 3, begins with `{`, so a
//! reader tells them apart by the first byte and reads both.

/// The first byte of a record in binary form.
pub const BINARY: u8 = 1;

/// Whether a stored value is in binary form (else it is JSON).
pub fn is_binary(value: &[u8]) -> bool {
    value.first() == Some(&BINARY)
}

/// Appends a length, LEB128.
pub fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
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

    fn len(&mut self) -> Result<usize, String> {
        let mut n = 0usize;
        for shift in (0..usize::BITS).step_by(7) {
            let b = self.take(1)?[0];
            n |= usize::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err("record has a length that does not end".into())
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
