//! The compact binary form of the records the store keeps one or more of per change (audit
//! records, events): no field names, numbers at fixed width (big-endian), text and byte strings
//! as a LEB128 length and the bytes. A record stored this way begins with [`BINARY`]; one
//! stored as JSON, the form before schema 3, begins with `{`, so a reader tells them apart by
//! the first byte and reads both.

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

/// Appends an optional text: 0 for none, else its length plus one, then it.
pub fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(t) => {
            put_len(out, t.len() + 1);
            out.extend_from_slice(t.as_bytes());
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

    pub fn text(&mut self) -> Result<String, String> {
        let len = self.len()?;
        self.string(len)
    }

    pub fn optional(&mut self) -> Result<Option<String>, String> {
        match self.len()? {
            0 => Ok(None),
            len => self.string(len - 1).map(Some),
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
        put_bytes(&mut out, long.as_bytes());
        put_bytes(&mut out, b"");
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
