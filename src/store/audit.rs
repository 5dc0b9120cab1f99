//! The audit chain: one append-only, hash-chained record per Mutation, per organization.
//!
//! Record n carries the SHA-256 of record n-1 and its own hash over its canonical JSON (its
//! fields in declaration order, `details` with sorted keys) and that previous hash. The chain's
//! last link is also kept in `AUDIT_HEADS`, so removing records from the tail is detected too.
//! `verify` walks every chain and reports the first broken link.
//!
//! The hash is over the canonical JSON, but a record is stored in a compact binary form (since
//! schema 3, `packed`): no field names, the organization and position left to the key, the two
//! hashes and the ids in the text as raw bytes rather than hex — less than half the size; since
//! schema 5 also its time as LEB128 and its action and common words as numbers. Records stored
//! in an earlier form are read as they are, and the hash of every form is the same.

use serde::{Deserialize, Serialize};

use super::tables::{self, AUDIT, AUDIT_HEADS};
use super::{Reader, StoreError, packed, prefix_end};
use crate::ids::{Id, hex, unhex32 as unhex};
use crate::tenancy::OrgScope;

/// One audit record, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub org: Id,
    /// Position in the org's chain, dense from 1.
    pub n: u64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
    pub details: serde_json::Value,
    /// Hex SHA-256 of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of this record's canonical form.
    pub hash: String,
}

/// A record's canonical form, the one that is hashed: every stored field but `hash`, in the
/// stored order.
#[derive(Serialize)]
pub(crate) struct Canonical<'a> {
    pub org: Id,
    pub n: u64,
    pub at_ms: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub request_id: Option<&'a str>,
    pub client_addr: Option<&'a str>,
    pub details: &'a serde_json::Value,
    pub prev_hash: &'a str,
}

impl Canonical<'_> {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("audit records serialize")
    }

    fn digest(bytes: &[u8]) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// The record's hash (over its canonical JSON) and its stored form (binary).
    pub(crate) fn seal(&self) -> ([u8; 32], Vec<u8>) {
        let hash = Self::digest(&self.json());
        let prev = unhex(self.prev_hash).expect("the previous hash is the hex of a digest");
        (hash, self.stored(&prev))
    }

    /// The record's stored form, compact binary (`packed::Compact`, since schema 5): `at_ms`,
    /// then `actor`, `action`, `target`, `request_id`, `client_addr` and `details` (a JSON value
    /// in binary form; JSON text before schema 4), then the previous record's hash (`prev_hash`,
    /// the raw bytes of its hex). The organization and the position are the key's. The record's
    /// own hash is not stored since schema 4: it is its content's, and the next record holds it
    /// as its `prev_hash` (the last's is the chain head's); schema 3 stored it after
    /// `prev_hash`. Schemas 3 and 4 wrote the first binary form (numbers at fixed width, no
    /// words), which reads as before.
    fn stored(&self, prev_hash: &[u8; 32]) -> Vec<u8> {
        let texts =
            [self.actor, self.action, self.target, self.request_id.unwrap_or(""), self.client_addr.unwrap_or("")];
        // The tag and the time, five headers of at most three bytes each, the details (most are
        // small), and the previous hash.
        let size = 11 + 15 + 64 + 32 + texts.iter().map(|t| t.len()).sum::<usize>();
        let mut out = packed::Compact::with_capacity(size);
        out.signed(self.at_ms);
        for text in [self.actor, self.action, self.target] {
            out.text(text);
        }
        out.optional(self.request_id);
        out.optional(self.client_addr);
        out.value(self.details);
        out.fixed(prev_hash);
        out.into_bytes()
    }
}

impl AuditRecord {
    /// Reads a record as stored under `key` (`org ‖ n`), in any of its forms. A record stored
    /// without its own hash (schema 4) gets the hash of its content.
    pub fn from_stored(key: &[u8], value: &[u8]) -> Result<Self, String> {
        Self::read_stored(key, value).map(|(record, _)| record)
    }

    /// The record, and whether its hash was stored with it (JSON, or binary before schema 4)
    /// rather than computed from its content.
    fn read_stored(key: &[u8], value: &[u8]) -> Result<(Self, bool), String> {
        if !packed::is_binary(value) {
            return serde_json::from_slice(value).map(|r| (r, true)).map_err(|e| e.to_string());
        }
        let (org, n) = tables::split_org_seq(key).ok_or("record has a malformed key")?;
        let mut f = packed::Fields::of(value)?;
        let at_ms = f.signed()?;
        let (actor, action, target) = (f.text()?, f.text()?, f.text()?);
        let (request_id, client_addr) = (f.optional()?, f.optional()?);
        let details = f.value().map_err(|e| format!("record's details: {e}"))?;
        let prev_hash = hex(&f.hash()?);
        let stored_hash = if f.is_empty() { None } else { Some(f.hash()?) };
        f.end()?;
        let mut record = Self {
            org,
            n,
            at_ms,
            actor,
            action,
            target,
            request_id,
            client_addr,
            details,
            prev_hash,
            hash: String::new(),
        };
        record.hash = hex(&stored_hash.unwrap_or_else(|| record.compute_hash()));
        Ok((record, stored_hash.is_some()))
    }

    /// The binary stored form of this record as it is: its `prev_hash` as it is (not recomputed;
    /// one that is not 64 hex digits is stored as zeros, which no chain verifies), its own hash
    /// not at all. What the writer stores for a new record is [`Canonical::seal`]'s.
    pub fn to_stored(&self) -> Vec<u8> {
        self.canonical().stored(&unhex(&self.prev_hash).unwrap_or([0; 32]))
    }

    fn canonical(&self) -> Canonical<'_> {
        Canonical {
            org: self.org,
            n: self.n,
            at_ms: self.at_ms,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            request_id: self.request_id.as_deref(),
            client_addr: self.client_addr.as_deref(),
            details: &self.details,
            prev_hash: &self.prev_hash,
        }
    }

    /// The hash this record's content should have.
    pub fn compute_hash(&self) -> [u8; 32] {
        Canonical::digest(&self.canonical().json())
    }

    pub fn hash_bytes(&self) -> [u8; 32] {
        unhex(&self.hash).unwrap_or([0; 32])
    }
}

/// The stored form of a chain head: n (u64 BE) ‖ hash.
pub(crate) fn encode_head(n: u64, hash: &[u8; 32]) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&n.to_be_bytes());
    v[8..].copy_from_slice(hash);
    v
}

pub(crate) fn parse_head(v: &[u8]) -> (u64, [u8; 32]) {
    let n = tables::u64_be(v).unwrap_or(0);
    let mut h = [0u8; 32];
    if v.len() == 40 {
        h.copy_from_slice(&v[8..]);
    }
    (n, h)
}

/// The first broken link found by `verify`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokenLink {
    pub org: Id,
    /// The record where the chain breaks (the first record that does not verify, or the
    /// position where one is missing).
    pub n: u64,
    pub reason: String,
}

/// What `verify` found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verification {
    pub orgs: u64,
    pub records: u64,
    pub first_broken: Option<BrokenLink>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.first_broken.is_none()
    }
}

impl Reader {
    /// Audit records of `scope`'s org after `after` (exclusive), ascending, at most `limit`.
    pub fn audit_after(&self, scope: &OrgScope, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let org = scope.org();
        let start = tables::org_seq_key(org, after.saturating_add(1));
        self.range(AUDIT, &start, &prefix_end(org.as_bytes()), false, limit)?
            .iter()
            .map(|(k, v)| {
                AuditRecord::from_stored(k, v).map_err(|detail| StoreError::Corrupt { table: "audit".into(), detail })
            })
            .collect()
    }

    /// Walks every org's chain; `progress(done, total)` is called every few thousand records.
    pub fn verify_audit(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<Verification, StoreError> {
        let total = self.len(AUDIT)?;
        let mut v = Verification { orgs: 0, records: 0, first_broken: None };
        // The org, position and hash of the last record read, and whether that hash was stored
        // with it (else it is its content's, and only the next link or the head checks it).
        let mut cur: Option<(Id, u64, [u8; 32], bool)> = None;
        let mut broken: Option<BrokenLink> = None;
        let mut heads_to_check: Vec<(Id, u64, [u8; 32])> = Vec::new();
        self.for_each(AUDIT, |key, value| {
            v.records += 1;
            if v.records % 4096 == 0 {
                progress(v.records, total);
            }
            let Some((org, n)) = tables::split_org_seq(key) else {
                broken = Some(BrokenLink { org: Id::NIL, n: 0, reason: "malformed key".into() });
                return Ok(false);
            };
            let (expect_n, prev, prev_stored) = match cur {
                Some((o, last, h, stored)) if o == org => (last + 1, h, stored),
                other => {
                    if let Some((o, last, h, _)) = other {
                        heads_to_check.push((o, last, h));
                    }
                    v.orgs += 1;
                    (1, [0u8; 32], true)
                }
            };
            let fail = |reason: &str| Some(BrokenLink { org, n: expect_n.min(n), reason: reason.to_owned() });
            if n != expect_n {
                broken = fail(&format!("record {expect_n} is missing"));
                return Ok(false);
            }
            let (rec, hash_stored) = match AuditRecord::read_stored(key, value) {
                Ok(r) => r,
                Err(e) => {
                    broken = fail(&format!("record does not decode: {e}"));
                    return Ok(false);
                }
            };
            if rec.org != org || rec.n != n {
                broken = fail("record's org or position does not match its key");
            } else if rec.prev_hash != hex(&prev) && !prev_stored {
                // The record before kept no hash of its own: its content no longer gives the one
                // this record links to.
                broken = Some(BrokenLink {
                    org,
                    n: n - 1,
                    reason: "record content does not match the next record's link to it (altered)".into(),
                });
            } else if rec.prev_hash != hex(&prev) {
                broken = fail("previous-hash link does not match the record before it");
            } else if hash_stored && rec.hash != hex(&rec.compute_hash()) {
                broken = fail("record content does not match its hash (altered)");
            }
            if broken.is_some() {
                return Ok(false);
            }
            cur = Some((org, n, rec.hash_bytes(), hash_stored));
            Ok(true)
        })?;
        if broken.is_none() {
            heads_to_check.extend(cur.map(|(o, last, h, _)| (o, last, h)));
            broken = self.check_heads(&heads_to_check)?;
        }
        progress(v.records, total);
        v.first_broken = broken;
        Ok(v)
    }

    /// Compares each chain's last record with its stored head (detects a removed tail), and
    /// finds heads whose chains have vanished entirely.
    fn check_heads(&self, seen: &[(Id, u64, [u8; 32])]) -> Result<Option<BrokenLink>, StoreError> {
        for (org, n, hash) in seen {
            let head = self.get(AUDIT_HEADS, org.as_bytes())?.map(|v| parse_head(&v));
            match head {
                Some((hn, hh)) if hn == *n && hh == *hash => {}
                Some((hn, _)) if hn > *n => {
                    return Ok(Some(BrokenLink {
                        org: *org,
                        n: n + 1,
                        reason: format!("records {}..={hn} are missing", n + 1),
                    }));
                }
                head => {
                    let reason = match head {
                        Some((hn, _)) if hn == *n => "record content does not match the chain head (altered)",
                        Some(_) => "chain head is behind the last record (records added outside the chain)",
                        None => "chain head is missing",
                    };
                    return Ok(Some(BrokenLink { org: *org, n: *n, reason: reason.into() }));
                }
            }
        }
        let mut orphan = None;
        self.for_each(AUDIT_HEADS, |k, v| {
            let Some(org) = Id::from_slice(k) else {
                return Ok(true);
            };
            if !seen.iter().any(|(o, _, _)| *o == org) {
                let (hn, _) = parse_head(v);
                orphan = Some(BrokenLink { org, n: 1, reason: format!("all {hn} records are missing") });
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(orphan)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use crate::ids::{Id, hex};
    use crate::store::audit::{AuditRecord, Canonical};
    use crate::store::packed;
    use crate::store::tables::org_seq_key;

    fn details() -> serde_json::Value {
        json!({"z": 1, "a": {"q": "line\nbreak \"quoted\" é", "b": [1, null, true, 2.5]}, "m": null})
    }

    #[test]
    fn a_sealed_record_reads_back_whole_and_verifies() {
        let details = details();
        let prev = hex(&[7u8; 32]);
        for (request_id, client_addr) in [(None, None), (Some("req-1"), Some("127.0.0.1")), (Some(""), None)] {
            let c = Canonical {
                org: Id::new(),
                n: 42,
                at_ms: 1_765_000_000_123,
                actor: "user:\u{1F600}",
                action: "service.call",
                target: "service:x",
                request_id,
                client_addr,
                details: &details,
                prev_hash: &prev,
            };
            let (hash, stored) = c.seal();
            let record = AuditRecord::from_stored(&org_seq_key(c.org, c.n), &stored).unwrap();
            assert_eq!(record.hash, hex(&hash));
            assert_eq!(record.compute_hash(), hash, "the chain verifies it");
            assert_eq!(record.to_stored(), stored, "one stored form");
            assert!(!stored.windows(32).any(|w| w == hash), "the record's own hash is not stored");
            assert_eq!((record.org, record.n, record.at_ms), (c.org, c.n, c.at_ms));
            assert_eq!(
                (record.actor.as_str(), record.action.as_str(), record.target.as_str()),
                (c.actor, c.action, c.target)
            );
            assert_eq!((record.request_id.as_deref(), record.client_addr.as_deref()), (request_id, client_addr));
            assert_eq!((&record.details, record.prev_hash.as_str()), (&details, prev.as_str()));
            // What the same record took as JSON, the form before schema 3.
            let json = serde_json::to_vec(&record).unwrap();
            assert!(stored.len() * 3 < json.len() * 2, "{} bytes stored, {} as JSON", stored.len(), json.len());
        }
    }

    #[test]
    fn a_record_stored_as_json_still_reads_and_verifies() {
        let details = details();
        let c = Canonical {
            org: Id::new(),
            n: 1,
            at_ms: 1_765_000_000_123,
            actor: "system",
            action: "org.create",
            target: "org:x",
            request_id: Some("r"),
            client_addr: None,
            details: &details,
            prev_hash: &hex(&[0u8; 32]),
        };
        let (hash, stored) = c.seal();
        let record = AuditRecord::from_stored(&org_seq_key(c.org, 1), &stored).unwrap();
        let json = serde_json::to_vec(&record).unwrap();
        let read = AuditRecord::from_stored(&org_seq_key(c.org, 1), &json).unwrap();
        assert_eq!(read, record);
        assert_eq!(read.compute_hash(), hash);
    }

    #[test]
    fn a_binary_record_with_its_details_as_json_text_still_reads_and_verifies() {
        let details = details();
        let c = Canonical {
            org: Id::new(),
            n: 5,
            at_ms: 1_765_000_000_123,
            actor: "system",
            action: "org.create",
            target: "org:x",
            request_id: None,
            client_addr: Some("127.0.0.1"),
            details: &details,
            prev_hash: &hex(&[3u8; 32]),
        };
        let (hash, _) = c.seal();
        // The schema 3 form, put by hand.
        let mut old = vec![packed::BINARY];
        old.extend_from_slice(&c.at_ms.to_be_bytes());
        for text in [c.actor, c.action, c.target] {
            packed::put_text(&mut old, text);
        }
        packed::put_optional(&mut old, c.request_id);
        packed::put_optional(&mut old, c.client_addr);
        packed::put_bytes(&mut old, &serde_json::to_vec(&details).unwrap());
        old.extend_from_slice(&[3u8; 32]);
        old.extend_from_slice(&hash);
        let read = AuditRecord::from_stored(&org_seq_key(c.org, c.n), &old).unwrap();
        assert_eq!(read.details, details);
        assert_eq!(read.compute_hash(), hash);
        assert!(read.to_stored().len() < old.len(), "stored again, the details are smaller");
    }

    #[test]
    fn a_damaged_record_does_not_read() {
        let details = details();
        let c = Canonical {
            org: Id::new(),
            n: 3,
            at_ms: -1,
            actor: "user:a",
            action: "task.update",
            target: "task:b",
            request_id: Some("r"),
            client_addr: Some("::1"),
            details: &details,
            prev_hash: &hex(&[1u8; 32]),
        };
        let (_, stored) = c.seal();
        let key = org_seq_key(c.org, c.n);
        for cut in 0..stored.len() {
            assert!(AuditRecord::from_stored(&key, &stored[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = stored.clone();
        longer.push(0);
        assert!(AuditRecord::from_stored(&key, &longer).is_err());
        assert!(AuditRecord::from_stored(&key[..20], &stored).is_err(), "a short key");
    }
}
