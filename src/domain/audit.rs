//! Queries over an organization's audit chain, for its admins: filters by actor, action,
//! target and time, in `n` order, a bounded scan per page.

use super::DomainError;
use crate::store::Store;
use crate::store::audit::AuditRecord;
use crate::tenancy::OrgScope;

/// Records examined per page at most; a page may hold fewer matches, with a position to go on.
pub const SCAN_MAX: usize = 10_000;

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == r.actor)
            && self.action.as_ref().is_none_or(|a| *a == r.action)
            && self.target.as_ref().is_none_or(|t| *t == r.target)
            && self.since_ms.is_none_or(|s| r.at_ms >= s)
            && self.until_ms.is_none_or(|u| r.at_ms < u)
    }
}

/// One page: the matches, and where the next page starts (absent at the end of the chain).
pub struct AuditPage {
    pub items: Vec<AuditRecord>,
    pub next_after: Option<u64>,
}

/// Matching records after position `after`, at most `limit`.
pub async fn query(
    store: &Store,
    scope: OrgScope,
    filter: AuditFilter,
    after: u64,
    limit: usize,
) -> Result<AuditPage, DomainError> {
    store
        .read(move |r| {
            let mut items = Vec::new();
            let mut pos = after;
            let mut scanned = 0;
            loop {
                let chunk = r.audit_after(&scope, pos, 1000)?;
                let Some(last) = chunk.last().map(|c| c.n) else { return Ok(AuditPage { items, next_after: None }) };
                for rec in chunk {
                    pos = rec.n;
                    scanned += 1;
                    // Records are in time order: past `until` nothing more can match.
                    if filter.until_ms.is_some_and(|u| rec.at_ms >= u) {
                        return Ok(AuditPage { items, next_after: None });
                    }
                    if filter.matches(&rec) {
                        items.push(rec);
                        if items.len() == limit {
                            return Ok(AuditPage { items, next_after: Some(pos) });
                        }
                    }
                }
                if scanned >= SCAN_MAX {
                    return Ok(AuditPage { items, next_after: Some(last) });
                }
            }
        })
        .await
}
