//! The one door for Yjs bytes from outside (updates, state vectors, y-websocket messages): each
//! is walked and its shape checked before yrs decodes it.
//!
//! yrs reserves memory for every count it reads before reading the elements: a few bytes
//! declaring 200 million clients make it build (and fill) a hash table of hundreds of MiB
//! before it finds the input short, which took over four seconds per request in the release
//! build. A Yjs value nested 100,000 deep (two bytes a level) overflows its recursive decoder's
//! stack, which aborts the process. So the walk below refuses a count that the bytes left
//! cannot hold (each element takes at least one byte, most take more) and nesting deeper than
//! [`DEPTH_MAX`], in one pass that allocates nothing; only then does yrs see the bytes. It
//! follows yrs's reading of the v1 format (<https://github.com/yjs/yjs/blob/main/INTERNALS.md>),
//! including its quirks, so what it lets through is exactly what yrs would read.

use std::fmt;

use yrs::sync::Message;
use yrs::updates::decoder::Decode;
use yrs::{StateVector, Update};

/// How deep values may nest in an update (serde_json's own limit for JSON).
pub const DEPTH_MAX: u32 = 128;

const CLOCK_MAX: u64 = u32::MAX as u64;

/// yrs never frees a document holding a subdocument (about 3 KB each, found by fuzzing under
/// LeakSanitizer), and every update is integrated into a scratch document before it is
/// stored; a subdocument is also synced as a document of its own, which this server does not
/// do. So they are refused.
const SUBDOCUMENTS: &str = "subdocuments are not supported: make each its own document";

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<yrs::encoding::read::Error> for Malformed {
    fn from(e: yrs::encoding::read::Error) -> Self {
        Self(e.to_string())
    }
}

fn refuse<T>(why: &str) -> Result<T, Malformed> {
    Err(Malformed(why.to_owned()))
}

/// A Yjs update (v1).
pub fn update(bytes: &[u8]) -> Result<Update, Malformed> {
    Walk::new(bytes).update()?;
    Ok(Update::decode_v1(bytes)?)
}

/// A state vector (v1).
pub fn state_vector(bytes: &[u8]) -> Result<StateVector, Malformed> {
    Walk::new(bytes).state_vector()?;
    Ok(StateVector::decode_v1(bytes)?)
}

/// A y-websocket message: sync step 1 or 2, update, awareness, awareness query, auth. The update
/// a sync step 2 or update carries is left as bytes (for [`update`]).
pub fn message(bytes: &[u8]) -> Result<Message, Malformed> {
    Walk::new(bytes).message()?;
    Ok(Message::decode_v1(bytes)?)
}

/// An item of an update, as [`items`] lists it: where it sits is all the nesting check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub client: u64,
    /// The first clock it takes, and how many.
    pub start: u64,
    pub len: u64,
    pub parent: Parent,
    /// Whether it is a shared type (so other items may sit inside it).
    pub is_type: bool,
}

/// Where an item sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// Directly in a root type.
    Root,
    /// In the shared type the item with this id (client, clock) holds.
    In(u64, u64),
    /// Next to the item with this id, so in the same parent (Yjs writes no parent then).
    Beside(u64, u64),
    /// Unknown (a collected item's).
    Unknown,
}

/// Every item (and collected range) of a Yjs update (v1), in the order written; what is
/// refused by [`update`] is refused here too.
pub fn items(bytes: &[u8], out: &mut Vec<Item>) -> Result<(), Malformed> {
    let mut walk = Walk::new(bytes);
    walk.items = Some(out);
    walk.update()
}

struct Walk<'a, 'o> {
    rest: &'a [u8],
    depth: u32,
    items: Option<&'o mut Vec<Item>>,
}

impl<'a> Walk<'a, '_> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes, depth: 0, items: None }
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.rest.split_first().ok_or_else(|| Malformed("ends early".into()))?;
        self.rest = rest;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.rest.len());
        let Some(n) = n else { return refuse("a length runs past the end") };
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// An unsigned or signed variable-length integer (7 bits a byte; a signed one keeps its
    /// sign in the first byte, which reads the same for skipping).
    fn var(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        refuse("a number runs over ten bytes")
    }

    /// A count of elements that take at least `each` bytes apiece: refused if what is left
    /// cannot hold them.
    fn count(&mut self, each: u64) -> Result<u64, Malformed> {
        let n = self.var()?;
        if n.saturating_mul(each) > self.rest.len() as u64 {
            return refuse("declares more elements than its bytes can hold");
        }
        Ok(n)
    }

    fn buf(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.var()?;
        self.take(n)
    }

    /// A clock (or a length of clocks): yrs keeps them in 32 bits and would wrap a larger one.
    fn clock(&mut self) -> Result<u64, Malformed> {
        let c = self.var()?;
        if c > CLOCK_MAX {
            return refuse("a clock past 2^32");
        }
        Ok(c)
    }

    fn id(&mut self) -> Result<(u64, u64), Malformed> {
        Ok((self.var()?, self.clock()?))
    }

    fn update(&mut self) -> Result<(), Malformed> {
        // Each client's section is its block count, client and clock: three bytes at least.
        for _ in 0..self.count(3)? {
            let blocks = self.count(2)?;
            let (client, mut clock) = self.id()?;
            for _ in 0..blocks {
                clock += self.block(client, clock)?;
                if clock > CLOCK_MAX {
                    return refuse("a clock past 2^32");
                }
            }
        }
        self.delete_set()
    }

    /// One block; answers how many clocks it takes.
    fn block(&mut self, client: u64, clock: u64) -> Result<u64, Malformed> {
        const GC: u8 = 0;
        const SKIP: u8 = 10;
        const HAS_ORIGIN: u8 = 0x80;
        const HAS_RIGHT_ORIGIN: u8 = 0x40;
        const HAS_PARENT_SUB: u8 = 0x20;
        let info = self.u8()?;
        if info == GC || info == SKIP {
            let len = self.clock()?;
            if info == GC {
                self.push(Item { client, start: clock, len, parent: Parent::Unknown, is_type: false });
            }
            return Ok(len);
        }
        let origin = if info & HAS_ORIGIN != 0 { Some(self.id()?) } else { None };
        let right = if info & HAS_RIGHT_ORIGIN != 0 { Some(self.id()?) } else { None };
        let parent = if let Some((c, k)) = origin.or(right) {
            Parent::Beside(c, k)
        } else {
            // The parent: a root type's name, or the id of the item holding it.
            let parent = if self.var()? == 1 {
                self.buf()?;
                Parent::Root
            } else {
                let (c, k) = self.id()?;
                Parent::In(c, k)
            };
            if info & HAS_PARENT_SUB != 0 {
                self.buf()?;
            }
            parent
        };
        let kind = info & 0x0f;
        let len = self.content(kind)?;
        // yrs drops an empty item without giving it a clock.
        if len > 0 {
            self.push(Item { client, start: clock, len, parent, is_type: kind == 7 });
        }
        Ok(len)
    }

    fn push(&mut self, item: Item) {
        if let Some(items) = self.items.as_mut() {
            items.push(item);
        }
    }

    /// One item's content; answers how many clocks it takes.
    fn content(&mut self, kind: u8) -> Result<u64, Malformed> {
        match kind {
            // Deleted: a length.
            1 => self.clock(),
            // JSON: yrs reads one string more than the count says.
            2 => {
                let n = self.count(1)?.saturating_add(1);
                if n > self.rest.len() as u64 {
                    return refuse("declares more elements than its bytes can hold");
                }
                (0..n).try_for_each(|_| self.buf().map(drop))?;
                Ok(n)
            }
            // A string takes a clock per UTF-16 unit.
            4 => {
                let s = self.buf()?;
                if self.items.is_none() {
                    return Ok(1);
                }
                let s = std::str::from_utf8(s).map_err(|_| Malformed("a string is not UTF-8".into()))?;
                Ok(s.chars().map(|c| c.len_utf16() as u64).sum())
            }
            // Binary, embed (JSON text).
            3 | 5 => self.buf().map(|_| 1),
            // Format: a key and JSON text.
            6 => {
                self.buf()?;
                self.buf().map(|_| 1)
            }
            // A shared type: its kind, and an XML element's tag.
            7 => match self.u8()? {
                3 => self.buf().map(|_| 1),
                0..=6 | 15 => Ok(1),
                9 => refuse(SUBDOCUMENTS),
                _ => refuse("an unknown shared type"),
            },
            // Values, a clock each.
            8 => {
                let n = self.count(1)?;
                (0..n).try_for_each(|_| self.any())?;
                Ok(n)
            }
            9 => refuse(SUBDOCUMENTS),
            _ => refuse("an unknown content kind"),
        }
    }

    fn any(&mut self) -> Result<(), Malformed> {
        if self.depth >= DEPTH_MAX {
            return refuse("values nest too deep");
        }
        self.depth += 1;
        match self.u8()? {
            120 | 121 | 126 | 127 => {}
            125 => {
                self.var()?;
            }
            124 => {
                self.take(4)?;
            }
            122 | 123 => {
                self.take(8)?;
            }
            116 | 119 => {
                self.buf()?;
            }
            118 => {
                // A key (a byte at least) and a value (a byte at least) apiece.
                for _ in 0..self.count(2)? {
                    self.buf()?;
                    self.any()?;
                }
            }
            117 => {
                for _ in 0..self.count(1)? {
                    self.any()?;
                }
            }
            _ => return refuse("an unknown value kind"),
        }
        self.depth -= 1;
        Ok(())
    }

    fn delete_set(&mut self) -> Result<(), Malformed> {
        for _ in 0..self.count(2)? {
            self.var()?;
            for _ in 0..self.count(2)? {
                let (start, len) = (self.clock()?, self.clock()?);
                if start + len > CLOCK_MAX {
                    return refuse("a deleted range past 2^32");
                }
            }
        }
        Ok(())
    }

    fn state_vector(&mut self) -> Result<(), Malformed> {
        (0..self.count(2)?).try_for_each(|_| self.id().map(drop))
    }

    fn message(&mut self) -> Result<(), Malformed> {
        const SYNC: u64 = 0;
        const AWARENESS: u64 = 1;
        const AUTH: u64 = 2;
        const QUERY_AWARENESS: u64 = 3;
        match self.var()? {
            SYNC => match self.var()? {
                0 => Walk::new(self.buf()?).state_vector(),
                // The update is checked when it is taken (by `update`).
                1 | 2 => self.buf().map(drop),
                _ => refuse("an unknown sync message"),
            },
            AWARENESS => Walk::new(self.buf()?).awareness(),
            AUTH => {
                if self.var()? == 0 {
                    self.buf()?;
                }
                Ok(())
            }
            QUERY_AWARENESS => Ok(()),
            _ => self.buf().map(drop),
        }
    }

    fn awareness(&mut self) -> Result<(), Malformed> {
        // A client, a clock and a JSON text: three bytes at least.
        for _ in 0..self.count(3)? {
            self.id()?;
            self.buf()?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use yrs::updates::encoder::Encode;
    use yrs::{Any, Array, Doc, Map, ReadTxn, Text, Transact};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn what_yjs_writes_passes_and_decodes_the_same() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        let list = doc.get_or_insert_array("a");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "héllo wörld");
            text.remove_range(&mut txn, 1, 3);
            map.insert(&mut txn, "n", 1.5);
            map.insert(&mut txn, "deep", Any::from(vec![Any::from(vec![Any::Null, Any::Bool(true)])]));
            map.insert(&mut txn, "bytes", Any::Buffer(vec![1u8, 2, 3].into()));
            map.insert(&mut txn, "big", i64::MAX);
            list.insert(&mut txn, 0, "x");
            list.insert(&mut txn, 1, yrs::MapPrelim::default());
        }
        let bytes = doc.transact().encode_state_as_update_v1(&StateVector::default());
        let ours = update(&bytes).unwrap();
        assert_eq!(ours.encode_v1(), Update::decode_v1(&bytes).unwrap().encode_v1());
        let sv = doc.transact().state_vector().encode_v1();
        assert_eq!(state_vector(&sv).unwrap(), doc.transact().state_vector());
        for m in [
            Message::Sync(yrs::sync::SyncMessage::SyncStep1(doc.transact().state_vector())),
            Message::Sync(yrs::sync::SyncMessage::Update(bytes.clone())),
            Message::AwarenessQuery,
            Message::Auth(Some("no".into())),
        ] {
            assert_eq!(message(&m.encode_v1()).unwrap(), m);
        }
    }

    #[test]
    fn a_count_its_bytes_cannot_hold_is_refused_before_yrs_reserves_for_it() {
        // The input that took the release build 4.5 s to refuse: its first varint declares
        // about 245 million clients.
        let slow = hex(concat!(
            "d6ffff7575750078787878000000000000000275757500d600013f0225ffff787875787878787875757575",
            "7575750078787878757575007575757575007878787875757500013f0225"
        ));
        assert!(update(&slow).unwrap_err().to_string().contains("more elements"));
        // A state vector and an awareness update declaring 2^31 entries in five bytes.
        assert!(state_vector(&[0x80, 0x80, 0x80, 0x80, 0x08]).is_err());
        assert!(message(&[1, 5, 0x80, 0x80, 0x80, 0x80, 0x08]).is_err());
        assert!(message(&[0, 0, 5, 0x80, 0x80, 0x80, 0x80, 0x08]).is_err());
    }

    #[test]
    fn subdocuments_are_refused() {
        let doc = Doc::new();
        doc.get_or_insert_map("m").insert(&mut doc.transact_mut(), "sub", Doc::new());
        let bytes = doc.transact().encode_state_as_update_v1(&StateVector::default());
        assert!(update(&bytes).unwrap_err().to_string().contains("subdocuments"));
    }

    #[test]
    fn values_nested_past_the_limit_are_refused_before_yrs_recurses() {
        // One client, one block: a root map entry ("m"/"k") holding one value nested 100,000
        // arrays deep.
        let mut bytes = vec![1, 1, 7, 0, 0x28, 1, 1, b'm', 1, b'k', 1];
        for _ in 0..100_000 {
            bytes.extend([117, 1]);
        }
        bytes.extend([126, 0]);
        assert!(update(&bytes).unwrap_err().to_string().contains("nest too deep"));
        // Within the limit, the same shape decodes.
        let mut ok = vec![1, 1, 7, 0, 0x28, 1, 1, b'm', 1, b'k', 1];
        for _ in 0..DEPTH_MAX - 1 {
            ok.extend([117, 1]);
        }
        ok.extend([126, 0]);
        update(&ok).unwrap();
    }
}
