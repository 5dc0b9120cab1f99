//! Cursor pagination and optimistic concurrency helpers shared by every list and update.
//!
//! A cursor is the opaque, URL-safe encoding of the last key a page ended at; the next page
//! starts strictly after it. Page sizes are bounded (default 20, max 100), and a list never
//! scans more than `SCAN_MAX` entries per request, so filtered lists stay cheap: a page may
//! then hold fewer items than asked, with a cursor to go on.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::DomainError;
use crate::store::prefix_end;

pub const LIMIT_DEFAULT: u32 = 20;
pub const LIMIT_MAX: u32 = 100;
/// Most entries one list request examines.
pub const SCAN_MAX: usize = 2_000;

/// A validated page request.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    pub limit: usize,
    /// The key after which the page starts.
    pub after: Option<Vec<u8>>,
}

/// A page size: `default` when absent, else 1–`max`; out of range is 422 at `?limit`. Every list
/// checks its size here, so each answers the same problem and the document states each `max`.
pub fn limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, DomainError> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(DomainError::invalid("?limit", "out_of_range", format!("limit must be between 1 and {max}")));
    }
    Ok(limit)
}

impl PageRequest {
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, DomainError> {
        let limit = self::limit(limit, LIMIT_DEFAULT, LIMIT_MAX)?;
        let after = match cursor {
            None | Some("") => None,
            Some(c) => Some(URL_SAFE_NO_PAD.decode(c).map_err(|_| {
                DomainError::invalid("?cursor", "invalid_cursor", "the cursor is not one this server gave out")
            })?),
        };
        Ok(Self { limit: limit as usize, after })
    }

    /// Where a page over the keys under `prefix` starts: at `prefix`, or strictly after the
    /// cursor's key. A cursor from outside `prefix` (another organization's, room's or list's,
    /// or made up) never leads out of it: one before the range starts the list over, one after
    /// it gives an empty page.
    pub fn start_in(&self, prefix: &[u8]) -> Vec<u8> {
        match &self.after {
            None => prefix.to_vec(),
            Some(key) if key.starts_with(prefix) => key_after(key),
            Some(key) if key.as_slice() < prefix => prefix.to_vec(),
            Some(_) => prefix_end(prefix),
        }
    }

    /// Where a newest-first page over the keys under `prefix` ends (exclusive): after the last
    /// key, or at the cursor's key. A cursor from outside `prefix` never leads out of it and
    /// is read as every list reads one, by key: one below the range starts the list over, one
    /// above it gives an empty page.
    pub fn end_in(&self, prefix: &[u8]) -> Vec<u8> {
        match &self.after {
            Some(key) if key.starts_with(prefix) => key.clone(),
            Some(key) if key.as_slice() > prefix => prefix.to_vec(),
            None | Some(_) => prefix_end(prefix),
        }
    }
}

/// One page of results.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub fn encode_cursor(key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// The smallest key strictly after `key`.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// The page of records under `prefix` in `table`, newest (highest key) first.
pub fn newest_first<T: serde::de::DeserializeOwned>(
    r: &crate::store::Reader,
    table: crate::store::tables::Table,
    prefix: &[u8],
    page: &PageRequest,
) -> Result<Page<T>, crate::store::StoreError> {
    let rows = r.range(table, prefix, &page.end_in(prefix), true, page.limit + 1)?;
    let more = rows.len() > page.limit;
    let mut items = Vec::new();
    let mut last = None;
    for (k, v) in rows.into_iter().take(page.limit) {
        items.push(crate::store::decode(table, &v)?);
        last = Some(k);
    }
    Ok(Page { items, next_cursor: if more { last.map(|k| encode_cursor(&k)) } else { None } })
}

/// Checks an expected version (from `If-Match` or the body) against the current one.
pub fn check_version(expected: Option<u64>, current: u64) -> Result<(), DomainError> {
    match expected {
        Some(v) if v != current => Err(DomainError::VersionConflict { current }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_limits_are_bounded() {
        let c = encode_cursor(&[1, 2, 255]);
        let p = PageRequest::parse(Some(5), Some(&c)).ok();
        assert_eq!(p.and_then(|p| p.after), Some(vec![1, 2, 255]));
        assert!(PageRequest::parse(Some(101), None).is_err());
        assert!(PageRequest::parse(Some(0), None).is_err());
        assert!(PageRequest::parse(None, Some("!!")).is_err());
    }

    #[test]
    fn version_checks() {
        assert!(check_version(None, 3).is_ok());
        assert!(check_version(Some(3), 3).is_ok());
        assert!(matches!(check_version(Some(2), 3), Err(DomainError::VersionConflict { current: 3 })));
    }
}
