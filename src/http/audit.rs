//! Operator views of an organization's event log and audit chain, and chain verification.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{ApiTags, OperatorAuth};
use crate::app::App;
use crate::domain::DomainError;
use crate::ids::rfc3339;
use crate::store::audit::{AuditRecord, Verification};
use crate::store::events::Event;
use crate::tenancy::OrgScope;

crate::problems!(LogReadErrors: 400, 401, 404, 422);
crate::problems!(VerifyErrors: 401);

pub const PAGE_MAX: u32 = 1000;

/// One committed event of an organization's log.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Event")]
pub struct EventView {
    /// Position in the organization's log: dense, from 1.
    pub seq: u64,
    /// `org`, `room:{id}`, `channel:{id}`, `user:{id}`, `doc:{id}`.
    pub topic: String,
    /// e.g. `org.created`.
    #[oai(rename = "type")]
    pub kind: String,
    pub actor: String,
    /// RFC 3339 UTC.
    pub at: String,
    pub data: serde_json::Value,
}

/// A page of events, with the log's bounds for resuming.
#[derive(Object, Debug)]
#[oai(rename = "EventPage")]
pub struct EventPage {
    /// The store's epoch; positions from another epoch are meaningless here.
    pub epoch: String,
    /// Oldest seq still retained (0 when the log is empty).
    pub first_seq: u64,
    /// Last seq written.
    pub head_seq: u64,
    pub items: Vec<EventView>,
    /// Pass as `after` for the next page; absent when this page reached the head.
    pub next_after: Option<u64>,
}

/// One audit record.
#[derive(Object, Debug, Clone)]
#[oai(rename = "AuditRecord")]
pub struct AuditView {
    /// Position in the organization's chain: dense, from 1.
    pub n: u64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
    pub details: serde_json::Value,
    /// Hex SHA-256 of the previous record.
    pub prev_hash: String,
    /// Hex SHA-256 of this record.
    pub hash: String,
}

#[derive(Object, Debug)]
#[oai(rename = "AuditPage")]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    pub next_after: Option<u64>,
}

/// The result of verifying every audit chain.
#[derive(Object, Debug)]
#[oai(rename = "AuditVerification")]
pub struct VerificationView {
    pub ok: bool,
    pub orgs: u64,
    pub records: u64,
    pub first_broken: Option<BrokenLinkView>,
}

#[derive(Object, Debug)]
#[oai(rename = "AuditBrokenLink")]
pub struct BrokenLinkView {
    /// The organization whose chain breaks (the nil UUID is the instance's own chain).
    pub org_id: String,
    /// The first record that does not verify, or the first missing position.
    pub n: u64,
    pub reason: String,
}

#[derive(Default)]
pub struct AuditApi;

#[OpenApi(tag = "ApiTags::Audit")]
impl AuditApi {
    /// List an organization's events
    ///
    /// Events after `after`, in `seq` order, optionally of one topic.
    #[oai(path = "/v1/orgs/:org_id/events", method = "get", operation_id = "listOrganizationEvents")]
    async fn events(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        org_id: Path<String>,
        /// Return events with `seq` greater than this (default 0).
        after: Query<Option<u64>>,
        /// Only events of this topic.
        topic: Query<Option<String>>,
        /// Page size, 1–1000 (default 100).
        limit: Query<Option<u32>>,
    ) -> Result<Json<EventPage>, LogReadErrors> {
        let (_, scope) = auth.org_scope(&app, &org_id.0).await?;
        let limit = page_limit(limit.0)?;
        let after = after.0.unwrap_or(0);
        let topic = topic.0;
        let epoch = app.store.epoch();
        super::ensure_org_exists(&app, scope).await?;
        let (items, bounds) = app
            .store
            .read(move |r| {
                Ok::<_, DomainError>((r.events_after(&scope, topic.as_deref(), after, limit)?, r.log_bounds(&scope)?))
            })
            .await?;
        let next_after = next_after(&items, limit, |e| e.seq);
        Ok(Json(EventPage {
            epoch: epoch.to_string(),
            first_seq: bounds.first_seq,
            head_seq: bounds.head_seq,
            items: items.into_iter().map(event_view).collect(),
            next_after,
        }))
    }

    /// List an organization's audit records
    #[oai(path = "/v1/orgs/:org_id/audit", method = "get", operation_id = "listOrganizationAudit")]
    async fn audit(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        org_id: Path<String>,
        /// Return records with `n` greater than this (default 0).
        after: Query<Option<u64>>,
        /// Page size, 1–1000 (default 100).
        limit: Query<Option<u32>>,
    ) -> Result<Json<AuditPage>, LogReadErrors> {
        let (_, scope) = auth.org_scope(&app, &org_id.0).await?;
        let limit = page_limit(limit.0)?;
        let after = after.0.unwrap_or(0);
        let items = app.store.read(move |r| r.audit_after(&scope, after, limit).map_err(DomainError::from)).await?;
        if items.is_empty() && after == 0 {
            return Err(DomainError::NotFound { what: "organization" }.into());
        }
        let next_after = next_after(&items, limit, |r| r.n);
        Ok(Json(AuditPage { items: items.into_iter().map(audit_view).collect(), next_after }))
    }

    /// Verify every audit chain
    ///
    /// Walks every organization's chain and reports the first record that was altered or
    /// removed, if any.
    #[oai(path = "/v1/audit/verification", method = "get", operation_id = "verifyAudit")]
    async fn verify(&self, app: Data<&App>, auth: OperatorAuth) -> Result<Json<VerificationView>, VerifyErrors> {
        auth.check(&app).await?;
        let v = app.store.read(|r| r.verify_audit(&mut |_, _| {})).await?;
        Ok(Json(verification_view(v)))
    }
}

/// Where the next page starts: after the last item of a full page; none after a short one.
fn next_after<T>(items: &[T], limit: usize, position: impl Fn(&T) -> u64) -> Option<u64> {
    if items.len() == limit { items.last().map(position) } else { None }
}

fn page_limit(limit: Option<u32>) -> Result<usize, DomainError> {
    crate::domain::paging::limit(limit, 100, PAGE_MAX).map(|n| n as usize)
}

pub fn event_view(e: Event) -> EventView {
    EventView { seq: e.seq, topic: e.topic, kind: e.kind, actor: e.actor, at: rfc3339(e.at_ms), data: e.data }
}

fn audit_view(r: AuditRecord) -> AuditView {
    AuditView {
        n: r.n,
        at: rfc3339(r.at_ms),
        actor: r.actor,
        action: r.action,
        target: r.target,
        request_id: r.request_id,
        client_addr: r.client_addr,
        details: r.details,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

pub fn verification_view(v: Verification) -> VerificationView {
    VerificationView {
        ok: v.first_broken.is_none(),
        orgs: v.orgs,
        records: v.records,
        first_broken: v.first_broken.map(|b| BrokenLinkView { org_id: b.org.to_string(), n: b.n, reason: b.reason }),
    }
}

crate::problems!(OrgAuditErrors: 400, 401, 403, 422);

#[derive(poem_openapi::ApiResponse)]
pub enum AuditExport {
    /// One audit record per line (JSON), oldest first.
    #[oai(status = 200, content_type = "application/x-ndjson")]
    Lines(poem_openapi::payload::Binary<poem::Body>),
}

/// Page size of an export's internal reads.
const EXPORT_PAGE: usize = 1000;

#[derive(Default)]
pub struct OrgAuditApi;

#[OpenApi(tag = "ApiTags::Audit")]
#[allow(clippy::too_many_arguments)] // query parameters are arguments by the framework's design
impl OrgAuditApi {
    /// Query my organization's audit records
    ///
    /// Filters combine; pages follow the chain's order. A page examines at most 10,000
    /// records, so it may hold fewer matches than `limit` with a `next_after` to go on.
    ///
    /// Permission: `audit.read`.
    #[oai(path = "/v1/audit", method = "get", operation_id = "queryAudit")]
    async fn query(
        &self,
        app: Data<&App>,
        auth: super::UserAuth,
        /// e.g. `user:<id>`, `operator:<id>`.
        actor: Query<Option<String>>,
        /// e.g. `auth.login_failed`.
        action: Query<Option<String>>,
        /// e.g. `user:<id>`.
        target: Query<Option<String>>,
        /// RFC 3339; records at or after.
        since: Query<Option<String>>,
        /// RFC 3339; records before.
        until: Query<Option<String>>,
        /// Records after this position (default 0).
        after: Query<Option<u64>>,
        /// Page size, 1–1000 (default 100).
        limit: Query<Option<u32>>,
    ) -> Result<Json<AuditPage>, OrgAuditErrors> {
        let p = auth.require(&app, crate::domain::policy::Permission::AuditRead).await?;
        let filter = audit_filter(actor.0, action.0, target.0, since.0, until.0)?;
        let limit = page_limit(limit.0)?;
        let page =
            crate::domain::audit::query(&app.store, OrgScope::member(&p), filter, after.0.unwrap_or(0), limit).await?;
        Ok(Json(AuditPage { items: page.items.into_iter().map(audit_view).collect(), next_after: page.next_after }))
    }

    /// Export my organization's audit records as NDJSON
    ///
    /// The same filters as the query, every match, streamed.
    ///
    /// Permission: `audit.read`.
    #[oai(path = "/v1/audit/export", method = "get", operation_id = "exportAudit")]
    async fn export(
        &self,
        app: Data<&App>,
        auth: super::UserAuth,
        actor: Query<Option<String>>,
        action: Query<Option<String>>,
        target: Query<Option<String>>,
        since: Query<Option<String>>,
        until: Query<Option<String>>,
    ) -> Result<AuditExport, OrgAuditErrors> {
        let p = auth.require(&app, crate::domain::policy::Permission::AuditRead).await?;
        let filter = audit_filter(actor.0, action.0, target.0, since.0, until.0)?;
        let (store, scope) = (app.store.clone(), OrgScope::member(&p));
        let pages = futures_util::stream::unfold(Some(0u64), move |after| {
            let (store, filter) = (store.clone(), filter.clone());
            async move {
                let after = after?;
                match crate::domain::audit::query(&store, scope, filter, after, EXPORT_PAGE).await {
                    Ok(page) => {
                        let mut lines = Vec::new();
                        for r in page.items {
                            let v = poem_openapi::types::ToJSON::to_json(&audit_view(r)).unwrap_or_default();
                            lines.extend(serde_json::to_vec(&v).unwrap_or_default());
                            lines.push(b'\n');
                        }
                        Some((Ok::<_, std::io::Error>(lines), page.next_after))
                    }
                    Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
                }
            }
        });
        Ok(AuditExport::Lines(poem_openapi::payload::Binary(poem::Body::from_bytes_stream(pages))))
    }
}

fn audit_filter(
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    until: Option<String>,
) -> Result<crate::domain::audit::AuditFilter, DomainError> {
    let time = |name: &str, v: Option<String>| -> Result<Option<i64>, DomainError> {
        v.map(|s| {
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| {
                    DomainError::invalid(
                        &format!("?{name}"),
                        "invalid_time",
                        "an RFC 3339 time like 2026-01-31T12:00:00Z",
                    )
                })
        })
        .transpose()
    };
    Ok(crate::domain::audit::AuditFilter {
        actor,
        action,
        target,
        since_ms: time("since", since)?,
        until_ms: time("until", until)?,
    })
}
