//! Organizations: the tenants. Operators create, list, read, update, suspend, reactivate and
//! delete them; every change is one Mutation with an `org.*` event on the org's `org` topic and
//! an audit record in the org's chain.
//!
//! Deleting is soft: the organization disappears from reads and its slug is released, while its
//! audit chain stays intact (an audit trail is never deleted by the thing it audits).

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::paging::{self, Page, PageRequest};
use super::{DomainError, FieldError, check};
use crate::ids::Id;
use crate::store::tables::{ORG_SLUGS, ORGS};
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Lookup, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

/// Most bytes of an organization's `settings` object, as JSON.
pub const SETTINGS_BYTES_MAX: usize = 16 * 1024;
pub const NAME_CHARS_MAX: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgStatus {
    Active,
    Suspended,
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub id: Id,
    pub slug: String,
    pub name: String,
    pub status: OrgStatus,
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Single sign-on policy (admins set it, `domain::sso`).
    #[serde(default)]
    pub sso: SsoPolicy,
    /// The OAuth apps' policy (`domain::apps`).
    #[serde(default)]
    pub apps: AppsPolicy,
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// An organization's policy for OAuth apps.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppsPolicy {
    /// Apps may register themselves (RFC 7591).
    pub dynamic_registration: bool,
}

/// An organization's single sign-on policy.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SsoPolicy {
    /// Passwords are refused to the organization's members.
    pub required: bool,
}

/// The organization's single sign-on policy (the default for one not found).
pub fn sso_policy(r: &impl Lookup, org: Id) -> Result<SsoPolicy, StoreError> {
    Ok(r.record::<Organization>(ORGS, org.as_bytes())?.map(|o| o.sso).unwrap_or_default())
}

/// The organization of `scope`, as stored (whatever its status).
pub fn record(store: &Store, scope: OrgScope) -> Result<Option<Organization>, DomainError> {
    Ok(store.peek(|r| r.record::<Organization>(ORGS, scope.org().as_bytes()))?)
}

/// Whether `org`'s members must sign in through SSO.
pub fn sso_required(r: &impl Lookup, org: Id) -> Result<bool, StoreError> {
    Ok(sso_policy(r, org)?.required)
}

/// Input of create.
#[derive(Clone, Debug)]
pub struct NewOrg {
    pub slug: String,
    pub name: String,
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Input of update: absent fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct OrgPatch {
    pub name: Option<String>,
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    /// The version the caller last saw (from `If-Match` or the body).
    pub expected_version: Option<u64>,
}

pub async fn create(writer: &Writer, ctx: MutationCtx, new: NewOrg) -> Result<Organization, DomainError> {
    let mut errors = Vec::new();
    validate_slug(&new.slug, &mut errors);
    validate_name(&new.name, &mut errors);
    if let Some(s) = &new.settings {
        validate_settings(s, &mut errors);
    }
    check(errors)?;
    let id = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            if tx.get(ORG_SLUGS, new.slug.as_bytes())?.is_some() {
                return Err(DomainError::Conflict {
                    code: "slug_taken",
                    detail: format!("the slug '{}' is already in use", new.slug),
                });
            }
            let org = Organization {
                id,
                slug: new.slug.clone(),
                name: new.name.clone(),
                status: OrgStatus::Active,
                settings: new.settings.clone().unwrap_or_default(),
                sso: SsoPolicy::default(),
                apps: AppsPolicy::default(),
                version: 1,
                created_at_ms: tx.now_ms(),
                updated_at_ms: tx.now_ms(),
            };
            tx.put(ORGS, id.as_bytes(), &encode(&org))?;
            tx.put(ORG_SLUGS, org.slug.as_bytes(), id.as_bytes())?;
            tx.emit("org", "org.created", json!({ "id": id, "slug": org.slug, "name": org.name }));
            tx.audit("org.create", format!("org:{id}"), json!({ "slug": org.slug, "name": org.name }));
            Ok(org)
        })
        .await
}

/// The organization of `scope`, unless deleted.
pub async fn get(store: &Store, scope: OrgScope) -> Result<Organization, DomainError> {
    store
        .read(move |r| {
            let org: Organization = r
                .get(ORGS, scope.org().as_bytes())?
                .map(|v| decode(ORGS, &v))
                .transpose()?
                .filter(|o: &Organization| o.status != OrgStatus::Deleted)
                .ok_or(DomainError::NotFound { what: "organization" })?;
            Ok(org)
        })
        .await
}

/// Organizations in creation order (operators only), optionally of one status.
pub async fn list(
    store: &Store,
    page: PageRequest,
    status: Option<OrgStatus>,
) -> Result<Page<Organization>, DomainError> {
    store
        .read(move |r| {
            // The nil org holds the instance's own records and is not a tenant.
            let start = page.start_in(&[]).max(paging::key_after(Id::NIL.as_bytes()));
            let rows = r.range(ORGS, &start, &prefix_end(&[0xff; 16]), false, paging::SCAN_MAX)?;
            let mut items = Vec::new();
            let mut last_key = None;
            for (k, v) in &rows {
                last_key = Some(k.clone());
                let org: Organization = decode(ORGS, v)?;
                let wanted = match status {
                    Some(s) => org.status == s,
                    None => org.status != OrgStatus::Deleted,
                };
                if wanted {
                    items.push(org);
                    if items.len() == page.limit {
                        break;
                    }
                }
            }
            let more = rows.len() == paging::SCAN_MAX || items.len() == page.limit;
            let next_cursor = if more { last_key.map(|k| paging::encode_cursor(&k)) } else { None };
            Ok(Page { items, next_cursor })
        })
        .await
}

pub async fn update(writer: &Writer, ctx: MutationCtx, patch: OrgPatch) -> Result<Organization, DomainError> {
    let mut errors = Vec::new();
    if let Some(n) = &patch.name {
        validate_name(n, &mut errors);
    }
    if let Some(s) = &patch.settings {
        validate_settings(s, &mut errors);
    }
    check(errors)?;
    writer
        .submit(ctx, move |tx| {
            let mut org = load_live(tx)?;
            paging::check_version(patch.expected_version, org.version)?;
            let mut changed = Vec::new();
            if let Some(n) = patch.name.as_ref().filter(|n| **n != org.name) {
                org.name.clone_from(n);
                changed.push("name");
            }
            if let Some(s) = patch.settings.as_ref().filter(|s| **s != org.settings) {
                org.settings.clone_from(s);
                changed.push("settings");
            }
            if changed.is_empty() {
                // An update that changes nothing is still an operator action: audited, no event.
                tx.audit("org.update", format!("org:{}", org.id), json!({ "changed": changed }));
                return Ok(org);
            }
            org.version += 1;
            org.updated_at_ms = tx.now_ms();
            tx.put(ORGS, org.id.as_bytes(), &encode(&org))?;
            tx.emit("org", "org.updated", json!({ "id": org.id, "changed": changed, "version": org.version }));
            tx.audit("org.update", format!("org:{}", org.id), json!({ "changed": changed, "version": org.version }));
            Ok(org)
        })
        .await
}

/// Suspends (`true`) or reactivates (`false`) an organization.
pub async fn set_suspended(writer: &Writer, ctx: MutationCtx, suspended: bool) -> Result<Organization, DomainError> {
    writer
        .submit(ctx, move |tx| {
            let mut org = load_live(tx)?;
            let (status, kind, action) = if suspended {
                (OrgStatus::Suspended, "org.suspended", "org.suspend")
            } else {
                (OrgStatus::Active, "org.reactivated", "org.reactivate")
            };
            if org.status != status {
                org.status = status;
                org.version += 1;
                org.updated_at_ms = tx.now_ms();
                tx.put(ORGS, org.id.as_bytes(), &encode(&org))?;
                tx.emit("org", kind, json!({ "id": org.id, "version": org.version }));
            }
            tx.audit(action, format!("org:{}", org.id), json!({ "version": org.version }));
            Ok(org)
        })
        .await
}

pub async fn delete(writer: &Writer, ctx: MutationCtx) -> Result<(), DomainError> {
    writer
        .submit(ctx, move |tx| {
            let mut org = load_live(tx)?;
            tx.delete(ORG_SLUGS, org.slug.as_bytes())?;
            org.status = OrgStatus::Deleted;
            org.version += 1;
            org.updated_at_ms = tx.now_ms();
            tx.put(ORGS, org.id.as_bytes(), &encode(&org))?;
            tx.emit("org", "org.deleted", json!({ "id": org.id }));
            tx.audit("org.delete", format!("org:{}", org.id), json!({ "slug": org.slug }));
            Ok(())
        })
        .await
}

fn load_live(tx: &crate::store::writer::Tx<'_, '_>) -> Result<Organization, DomainError> {
    let org: Organization = tx
        .get(ORGS, tx.org().as_bytes())?
        .map(|v| decode(ORGS, &v))
        .transpose()?
        .ok_or(DomainError::NotFound { what: "organization" })?;
    if org.status == OrgStatus::Deleted {
        return Err(DomainError::NotFound { what: "organization" });
    }
    Ok(org)
}

/// Slugs: 2–63 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
fn validate_slug(slug: &str, errors: &mut Vec<FieldError>) {
    let ok_chars = slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !(2..=63).contains(&slug.len()) || !ok_chars || slug.starts_with('-') || slug.ends_with('-') {
        errors.push(FieldError::new(
            "/slug",
            "invalid_slug",
            "2–63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
        ));
    }
}

fn validate_name(name: &str, errors: &mut Vec<FieldError>) {
    let n = name.trim().chars().count();
    if n == 0 || name.chars().count() > NAME_CHARS_MAX {
        errors.push(FieldError::new(
            "/name",
            "invalid_length",
            format!("1–{NAME_CHARS_MAX} characters, not only spaces"),
        ));
    }
}

fn validate_settings(s: &serde_json::Map<String, serde_json::Value>, errors: &mut Vec<FieldError>) {
    let len = serde_json::to_vec(s).map_or(usize::MAX, |v| v.len());
    if len > SETTINGS_BYTES_MAX {
        errors.push(FieldError::new("/settings", "too_large", format!("at most {SETTINGS_BYTES_MAX} bytes of JSON")));
    }
}
