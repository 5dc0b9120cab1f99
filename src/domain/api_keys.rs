//! API keys: long-lived credentials for scripts and services, scoped to a subset of the
//! permissions, optionally expiring, shown once, stored as a SHA-256, revocable.
//!
//! A key belongs to a user (it acts as that user, never beyond their current role) or to a
//! service account (a named, non-human principal with a fixed role, made by someone allowed
//! to give that role). The key text names its organization and id:
//! `oak_<org>_<key id>_<secret>`, so it is checked against that organization's own records.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::users::{self, UserStatus, sha256};
use super::{DomainError, FieldError, check};
use crate::domain::policy::{self, Permission, Role};
use crate::ids::{self, Id};
use crate::store::tables::{API_KEYS, org_id_key};
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Reader, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

/// Longest key name, in characters.
pub const NAME_CHARS_MAX: usize = 100;

pub const PREFIX: &str = "oak_";
/// Keys per organization at most.
pub const KEYS_PER_ORG_MAX: usize = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Id,
    pub name: String,
    /// The user the key acts as, or `None` for a service account.
    pub user: Option<Id>,
    /// A service account's role (a user key follows its user's current role).
    pub service_role: Option<Role>,
    pub scopes: Vec<String>,
    pub secret_sha256: String,
    pub created_by: Id,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
}

impl ApiKey {
    pub fn permissions(&self) -> Vec<Permission> {
        self.scopes.iter().filter_map(|s| Permission::parse(s)).collect()
    }
}

pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at_ms: Option<i64>,
    /// `Some(role)` makes a service account key with that role.
    pub service_role: Option<Role>,
}

/// Creates a key for the caller (or a service account); returns it and its text, shown once.
pub async fn create(
    writer: &Writer,
    ctx: MutationCtx,
    caller: Id,
    caller_role: Role,
    new: NewKey,
) -> Result<(ApiKey, String), DomainError> {
    let mut errors = Vec::new();
    if new.name.trim().is_empty() || new.name.chars().count() > NAME_CHARS_MAX {
        errors.push(FieldError::new("/name", "invalid_length", format!("1–{NAME_CHARS_MAX} characters")));
    }
    let effective_role = new.service_role.unwrap_or(caller_role);
    for (i, s) in new.scopes.iter().enumerate() {
        match Permission::parse(s) {
            None => errors.push(FieldError::new(
                &format!("/scopes/{i}"),
                "unknown_permission",
                format!("no permission named {s}"),
            )),
            Some(p) if !policy::allows(effective_role, p) => {
                errors.push(FieldError::new(
                    &format!("/scopes/{i}"),
                    "beyond_role",
                    format!("the key's role does not hold {s}"),
                ));
            }
            Some(_) => {}
        }
    }
    if new.scopes.is_empty() {
        errors.push(FieldError::new("/scopes", "empty", "name at least one permission"));
    }
    if new.expires_at_ms.is_some_and(|e| e <= ids::now_ms()) {
        errors.push(FieldError::new("/expires_at", "in_the_past", "must be in the future"));
    }
    check(errors)?;
    if let Some(role) = new.service_role {
        if !policy::may_assign(caller_role, role) {
            return Err(DomainError::Forbidden {
                detail: format!("your role cannot make a {} service account", role.as_str()),
            });
        }
    }
    let org = ctx.scope.org();
    let id = Id::new();
    let mut secret = [0u8; 32];
    ids::fill_random(&mut secret);
    let secret_text = URL_SAFE_NO_PAD.encode(secret);
    let token = format!("{PREFIX}{}_{}_{secret_text}", org.0.simple(), id.0.simple());
    let digest = crate::ids::hex(&sha256(secret_text.as_bytes()));
    let key = writer
        .submit(ctx, move |tx| {
            let existing = tx.range(API_KEYS, org.as_bytes(), &prefix_end(org.as_bytes()), KEYS_PER_ORG_MAX)?.len();
            if existing >= KEYS_PER_ORG_MAX {
                return Err(DomainError::Conflict {
                    code: "quota_exceeded",
                    detail: format!("at most {KEYS_PER_ORG_MAX} API keys per organization"),
                });
            }
            let key = ApiKey {
                id,
                name: new.name.trim().to_owned(),
                user: new.service_role.is_none().then_some(caller),
                service_role: new.service_role,
                scopes: new.scopes.clone(),
                secret_sha256: digest.clone(),
                created_by: caller,
                created_at_ms: tx.now_ms(),
                expires_at_ms: new.expires_at_ms,
                revoked_at_ms: None,
                last_used_at_ms: None,
            };
            tx.put(API_KEYS, &org_id_key(org, id), &encode(&key))?;
            tx.emit("org", "api_key.created", json!({ "id": id, "name": key.name, "scopes": key.scopes }));
            tx.audit(
                "api_key.create",
                format!("api_key:{id}"),
                json!({ "name": key.name, "scopes": key.scopes, "service_role": key.service_role }),
            );
            Ok(key)
        })
        .await?;
    Ok((key, token))
}

/// Keys of the organization: all of them for `manager`, else only `caller`'s own.
pub async fn list(store: &Store, scope: OrgScope, caller: Id, manager: bool) -> Result<Vec<ApiKey>, DomainError> {
    store
        .read(move |r| {
            let org = scope.org();
            let mut out = Vec::new();
            for (_, v) in r.range(API_KEYS, org.as_bytes(), &prefix_end(org.as_bytes()), false, KEYS_PER_ORG_MAX)? {
                let k: ApiKey = decode(API_KEYS, &v)?;
                if k.revoked_at_ms.is_none() && (manager || k.created_by == caller) {
                    out.push(k);
                }
            }
            Ok(out)
        })
        .await
}

/// Revokes a key (its creator's, or any with `manager`).
pub async fn revoke(writer: &Writer, ctx: MutationCtx, caller: Id, manager: bool, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut k: ApiKey = tx
                .get(API_KEYS, &org_id_key(org, id))?
                .map(|v| decode(API_KEYS, &v))
                .transpose()?
                .filter(|k: &ApiKey| k.revoked_at_ms.is_none() && (manager || k.created_by == caller))
                .ok_or(DomainError::NotFound { what: "API key" })?;
            k.revoked_at_ms = Some(tx.now_ms());
            tx.put(API_KEYS, &org_id_key(org, id), &encode(&k))?;
            tx.emit("org", "api_key.revoked", json!({ "id": id }));
            tx.audit("api_key.revoke", format!("api_key:{id}"), json!({ "name": k.name }));
            Ok(())
        })
        .await
}

/// Records that a key was used (bookkeeping: no event, no audit record).
pub async fn touch(writer: &Writer, org: Id, id: Id) -> Result<(), StoreError> {
    writer
        .maintain(move |tx| {
            let key = org_id_key(org, id);
            if let Some(v) = tx.get(API_KEYS, &key)? {
                let mut k: ApiKey = decode(API_KEYS, &v)?;
                k.last_used_at_ms = Some(tx.now_ms());
                tx.put(API_KEYS, &key, &encode(&k))?;
            }
            Ok(())
        })
        .await
}

/// A presented key, parsed: (org, key id, secret digest).
pub fn parse(token: &str) -> Option<(Id, Id, String)> {
    let rest = token.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '_');
    let org = Id(uuid::Uuid::try_parse(parts.next()?).ok()?);
    let id = Id(uuid::Uuid::try_parse(parts.next()?).ok()?);
    let secret = parts.next()?;
    (secret.len() == 43).then(|| (org, id, crate::ids::hex(&sha256(secret.as_bytes()))))
}

/// What checking a key found: the key and the role it acts with, or why it fails.
pub enum KeyCheck {
    Valid { key: ApiKey, role: Role },
    Invalid,
    Expired,
    Revoked,
    OwnerInactive,
}

/// Checks a presented key on one snapshot (the organization must be active; a user key's user
/// too).
pub fn check_key(r: &Reader, org: Id, id: Id, digest: &str) -> Result<KeyCheck, StoreError> {
    let Some(v) = r.get(API_KEYS, &org_id_key(org, id))? else { return Ok(KeyCheck::Invalid) };
    let key: ApiKey = decode(API_KEYS, &v)?;
    let same = key.secret_sha256.len() == digest.len()
        && key.secret_sha256.bytes().zip(digest.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Ok(KeyCheck::Invalid);
    }
    if key.revoked_at_ms.is_some() {
        return Ok(KeyCheck::Revoked);
    }
    if key.expires_at_ms.is_some_and(|e| e <= ids::now_ms()) {
        return Ok(KeyCheck::Expired);
    }
    let role = match (key.user, key.service_role) {
        (Some(u), _) => {
            let user: Option<users::User> = r
                .get(crate::store::tables::USERS, &org_id_key(org, u))?
                .map(|v| decode(crate::store::tables::USERS, &v))
                .transpose()?;
            match user {
                Some(u) if u.status == UserStatus::Active => u.role,
                _ => return Ok(KeyCheck::OwnerInactive),
            }
        }
        (None, Some(role)) => role,
        (None, None) => return Ok(KeyCheck::Invalid),
    };
    Ok(KeyCheck::Valid { key, role })
}
