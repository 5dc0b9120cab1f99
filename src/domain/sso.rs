//! Single sign-on: an organization's members sign in at its own OpenID identity provider
//! (Keycloak, Authentik, Entra ID, Okta…) and come back with Outpost's own session.
//!
//! An admin adds **identity providers** (issuer, client id, sealed client secret, the signature
//! algorithms accepted, and how people are provisioned). A sign-in in progress is a **pending**
//! row keyed by a digest of its `state`, single use and expiring, holding the PKCE verifier
//! (sealed) and the `nonce` the `id_token` must carry.
//!
//! A verified `id_token` signs in the account **linked** to its issuer and subject. The first
//! time, it is linked to an existing account only through a verified email; else, with
//! just-in-time provisioning on, an account is made. A claim (a groups claim, say) maps onto a
//! role at every sign-in, so the identity provider stays the source of truth; an owner is never
//! changed by it. The session that starts is an ordinary one: the same rotating refresh tokens
//! with reuse detection, revocable like any other.
//!
//! The **policy** "SSO required" refuses passwords to the organization's members (operators
//! keep their keys). It can only be turned on while an enabled provider exists, and the last
//! enabled provider cannot go while it is on.
//!
//! The network half (discovery, JWKS, the token endpoint, checking the `id_token`) is
//! `crate::sso`.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::connections::{open_string, pending_key, seal_string, state_parts};
use super::login::{Granted, Marks, Origin, SessionPolicy, open_session};
use super::orgs::{OrgStatus, Organization, sso_policy};
use super::policy::Role;
use super::sessions::{Session, SsoMark};
use super::users::{Profile, User, UserStatus, login_key};
use super::{DomainError, FieldError, check};
use crate::ids::{self, Id};
use crate::store::tables::{
    ORG_SLUGS, ORGS, SESSIONS, SSO_LINKS, SSO_PENDING, SSO_PROVIDERS, USER_LOGINS, USER_SESSIONS, USERS, org_bytes_key,
    org_id_key,
};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;
use crate::vault::Vault;

pub const NAME_CHARS_MAX: usize = 100;
pub const ISSUER_BYTES_MAX: usize = 2048;
pub const CLIENT_ID_BYTES_MAX: usize = 500;
pub const CLIENT_SECRET_BYTES_MAX: usize = 4096;
pub const CLAIM_BYTES_MAX: usize = 100;
pub const RULES_MAX: usize = 50;
pub const RULE_VALUE_BYTES_MAX: usize = 200;
/// Bytes of the random part of a `state`.
const STATE_NONCE_BYTES: usize = 32;

/// The `id_token` signature algorithms a provider may be allowed (asymmetric only: a shared
/// secret would let anyone holding the client secret mint tokens).
pub const ALGORITHMS: &[&str] = &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];
/// The allow-list a provider gets when none is given.
pub const DEFAULT_ALGORITHMS: &[&str] = &["RS256", "PS256", "ES256", "EdDSA"];
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];

/// A value of the role claim and the role it gives.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoleRule {
    pub value: String,
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityProvider {
    pub id: Id,
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    /// Base64 of the client secret sealed for this provider; `None` for a public client.
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// The `id_token` signature algorithms accepted.
    pub algorithms: Vec<String>,
    /// Whether a first sign-in with no account to link makes one.
    pub jit: bool,
    /// The role when no rule matches (`None`: only people a rule matches may sign in).
    pub default_role: Option<Role>,
    /// The claim the rules look at (a string or an array of strings).
    pub role_claim: Option<String>,
    pub role_rules: Vec<RoleRule>,
    pub enabled: bool,
    pub created_by: Id,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
}

impl IdentityProvider {
    /// The client secret, opened.
    pub fn secret(&self, vault: &Vault, org: Id) -> Result<Option<String>, DomainError> {
        let Some(sealed) = &self.client_secret else { return Ok(None) };
        open_string(vault, &secret_purpose(org, self.id), sealed).map(Some).ok_or_else(|| {
            DomainError::Store(StoreError::Corrupt {
                table: "sso_providers".into(),
                detail: format!("identity provider {}: its secret does not open", self.id),
            })
        })
    }

    /// The role the claims give: the highest a matching rule names, else the default.
    pub fn role_for(&self, claims: &Claims) -> Option<Role> {
        let matched = self
            .role_rules
            .iter()
            .filter(|r| claims.role_values.contains(&r.value))
            .map(|r| r.role)
            .max_by_key(|r| Role::ALL.iter().position(|x| x == r));
        matched.or(self.default_role)
    }
}

/// A provider as given (its secret in the clear, never stored so). Absent fields stay as they
/// are on update.
#[derive(Clone, Default)]
pub struct IdpFields {
    pub name: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    /// `Some(None)`: a public client.
    pub client_secret: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub jit: Option<bool>,
    pub default_role: Option<Option<Role>>,
    pub role_claim: Option<Option<String>>,
    pub role_rules: Option<Vec<RoleRule>>,
    pub enabled: Option<bool>,
    pub expected_version: Option<u64>,
}

impl std::fmt::Debug for IdpFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpFields")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// What a verified `id_token` says of the person.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    /// The role claim's values (empty when the provider has none or the token lacks it).
    pub role_values: Vec<String>,
    /// The provider's session id (`sid`), for logging out there.
    pub sid: Option<String>,
}

/// A sign-in in progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    pub provider_id: Id,
    pub nonce: String,
    /// Base64 of the sealed PKCE verifier.
    pub verifier: String,
    pub expires_at_ms: i64,
}

pub use super::orgs::SsoPolicy as Policy;

fn secret_purpose(org: Id, id: Id) -> String {
    format!("sso_client_secret:{org}:{id}")
}

fn verifier_purpose(org: Id) -> String {
    format!("sso_pkce_verifier:{org}")
}

fn check_fields(f: &IdpFields, errors: &mut Vec<FieldError>) {
    if f.name.as_deref().is_some_and(|n| n.trim().is_empty() || n.chars().count() > NAME_CHARS_MAX) {
        errors.push(FieldError::new("/name", "invalid_length", format!("1–{NAME_CHARS_MAX} characters")));
    }
    if let Some(i) = &f.issuer {
        let ok = i.len() <= ISSUER_BYTES_MAX
            && reqwest::Url::parse(i).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
        if !ok {
            errors.push(FieldError::new("/issuer", "invalid_url", "an http(s) URL without a query"));
        }
    }
    if f.client_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > CLIENT_ID_BYTES_MAX || c.contains(['\r', '\n'])) {
        errors.push(FieldError::new("/client_id", "invalid_client_id", format!("1–{CLIENT_ID_BYTES_MAX} bytes")));
    }
    if let Some(Some(s)) = &f.client_secret {
        if s.is_empty() || s.len() > CLIENT_SECRET_BYTES_MAX {
            errors.push(FieldError::new(
                "/client_secret",
                "invalid_secret",
                format!("1–{CLIENT_SECRET_BYTES_MAX} bytes"),
            ));
        }
    }
    if let Some(s) = &f.scopes {
        let bad = |s: &String| s.is_empty() || s.len() > 200 || s.bytes().any(|b| b <= b' ' || b == b'"');
        if s.len() > 50 || s.iter().any(bad) || !s.iter().any(|s| s == "openid") {
            errors.push(FieldError::new(
                "/scopes",
                "invalid_scopes",
                "at most 50 scopes without spaces, `openid` among them",
            ));
        }
    }
    if let Some(a) = &f.algorithms {
        if a.is_empty() || a.iter().any(|a| !ALGORITHMS.contains(&a.as_str())) {
            errors.push(FieldError::new("/algorithms", "invalid_algorithms", format!("one or more of {ALGORITHMS:?}")));
        }
    }
    if let Some(Some(c)) = &f.role_claim {
        if c.is_empty() || c.len() > CLAIM_BYTES_MAX {
            errors.push(FieldError::new("/role_claim", "invalid_length", format!("1–{CLAIM_BYTES_MAX} bytes")));
        }
    }
    if let Some(rules) = &f.role_rules {
        if rules.len() > RULES_MAX || rules.iter().any(|r| r.value.is_empty() || r.value.len() > RULE_VALUE_BYTES_MAX) {
            errors.push(FieldError::new(
                "/role_rules",
                "invalid_rules",
                format!("at most {RULES_MAX} non-empty values"),
            ));
        }
    }
    let owner = |r: Option<Role>| r == Some(Role::Owner);
    if f.role_rules.as_ref().is_some_and(|rs| rs.iter().any(|r| r.role == Role::Owner))
        || f.default_role.is_some_and(owner)
    {
        errors.push(FieldError::new("/role_rules", "owner_not_mapped", "an identity provider gives at most `admin`"));
    }
}

/// What events and audit records show of a provider: never its secret.
fn summary(p: &IdentityProvider) -> serde_json::Value {
    json!({
        "id": p.id,
        "name": p.name,
        "issuer": p.issuer,
        "client_id": p.client_id,
        "jit": p.jit,
        "enabled": p.enabled,
        "default_role": p.default_role,
        "role_claim": p.role_claim,
    })
}

fn count_enabled(tx: &Tx<'_, '_>, org: Id, except: Option<Id>) -> Result<usize, DomainError> {
    let mut n = 0;
    for (_, v) in tx.range(SSO_PROVIDERS, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
        let p: IdentityProvider = decode(SSO_PROVIDERS, &v)?;
        if p.enabled && Some(p.id) != except {
            n += 1;
        }
    }
    Ok(n)
}

fn keeps_a_way_in(tx: &Tx<'_, '_>, org: Id, except: Id) -> Result<(), DomainError> {
    if sso_policy(tx, org)?.required && count_enabled(tx, org, Some(except))? == 0 {
        return Err(DomainError::Conflict {
            code: "sso_required_needs_provider",
            detail: "SSO is required: turn the policy off before removing or disabling the last enabled provider"
                .into(),
        });
    }
    Ok(())
}

/// Adds an identity provider (its issuer already checked by discovery).
pub async fn create(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    caller: Id,
    f: IdpFields,
    per_org_max: usize,
) -> Result<IdentityProvider, DomainError> {
    let mut errors = Vec::new();
    check_fields(&f, &mut errors);
    if f.issuer.is_none() {
        errors.push(FieldError::new("/issuer", "required", "the provider's issuer URL"));
    }
    if f.client_id.is_none() {
        errors.push(FieldError::new("/client_id", "required", "the client id registered at the provider"));
    }
    check(errors)?;
    let org = ctx.scope.org();
    let id = Id::new();
    let now = ids::now_ms();
    let p = IdentityProvider {
        id,
        name: f.name.map_or_else(|| "Single sign-on".to_owned(), |n| n.trim().to_owned()),
        issuer: f.issuer.unwrap_or_default(),
        client_id: f.client_id.unwrap_or_default(),
        client_secret: f.client_secret.flatten().map(|s| seal_string(vault, &secret_purpose(org, id), &s)),
        scopes: f.scopes.unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect()),
        algorithms: f.algorithms.unwrap_or_else(|| DEFAULT_ALGORITHMS.iter().map(|s| (*s).to_owned()).collect()),
        jit: f.jit.unwrap_or(false),
        default_role: f.default_role.unwrap_or(Some(Role::Member)),
        role_claim: f.role_claim.flatten(),
        role_rules: f.role_rules.unwrap_or_default(),
        enabled: f.enabled.unwrap_or(true),
        created_by: caller,
        created_at_ms: now,
        updated_at_ms: now,
        version: 1,
    };
    writer
        .submit(ctx, move |tx| {
            if tx.range(SSO_PROVIDERS, org.as_bytes(), &prefix_end(org.as_bytes()), per_org_max + 1)?.len()
                >= per_org_max
            {
                return Err(DomainError::Conflict {
                    code: "quota_exceeded",
                    detail: format!("at most {per_org_max} identity providers per organization"),
                });
            }
            tx.put(SSO_PROVIDERS, &org_id_key(org, p.id), &encode(&p))?;
            tx.emit("org", "sso_provider.created", summary(&p));
            tx.audit("sso_provider.create", format!("sso_provider:{}", p.id), summary(&p));
            Ok(p.clone())
        })
        .await
}

/// Changes a provider.
pub async fn update(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    id: Id,
    f: IdpFields,
) -> Result<IdentityProvider, DomainError> {
    let mut errors = Vec::new();
    check_fields(&f, &mut errors);
    check(errors)?;
    let org = ctx.scope.org();
    let secret = f.client_secret.clone().map(|s| s.map(|s| seal_string(vault, &secret_purpose(org, id), &s)));
    writer
        .submit(ctx, move |tx| {
            let mut p = load(tx, org, id)?;
            super::paging::check_version(f.expected_version, p.version)?;
            if f.enabled == Some(false) && p.enabled {
                keeps_a_way_in(tx, org, id)?;
            }
            if let Some(n) = &f.name {
                n.trim().clone_into(&mut p.name);
            }
            macro_rules! set {
                ($($field:ident),*) => { $( if let Some(v) = &f.$field { p.$field.clone_from(v); } )* };
            }
            set!(issuer, client_id, scopes, algorithms, jit, default_role, role_claim, role_rules, enabled);
            if let Some(s) = &secret {
                p.client_secret.clone_from(s);
            }
            p.version += 1;
            p.updated_at_ms = tx.now_ms();
            tx.put(SSO_PROVIDERS, &org_id_key(org, id), &encode(&p))?;
            tx.emit("org", "sso_provider.updated", summary(&p));
            tx.audit("sso_provider.update", format!("sso_provider:{id}"), summary(&p));
            Ok(p)
        })
        .await
}

/// Removes a provider; the accounts it linked stay (they sign in again once another links them).
pub async fn delete(writer: &Writer, ctx: MutationCtx, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let p = load(tx, org, id)?;
            if p.enabled {
                keeps_a_way_in(tx, org, id)?;
            }
            tx.delete(SSO_PROVIDERS, &org_id_key(org, id))?;
            let prefix = org_bytes_key(org, id.as_bytes());
            for (k, _) in tx.range(SSO_LINKS, &prefix, &prefix_end(&prefix), usize::MAX)? {
                tx.delete(SSO_LINKS, &k)?;
            }
            tx.emit("org", "sso_provider.deleted", json!({ "id": id, "name": p.name }));
            tx.audit("sso_provider.delete", format!("sso_provider:{id}"), json!({ "name": p.name }));
            Ok(())
        })
        .await
}

fn load(tx: &Tx<'_, '_>, org: Id, id: Id) -> Result<IdentityProvider, DomainError> {
    tx.record::<IdentityProvider>(SSO_PROVIDERS, &org_id_key(org, id))?
        .ok_or(DomainError::NotFound { what: "identity provider" })
}

pub fn get(store: &Store, scope: OrgScope, id: Id) -> Result<IdentityProvider, DomainError> {
    store
        .peek(|r| r.record::<IdentityProvider>(SSO_PROVIDERS, &org_id_key(scope.org(), id)))?
        .ok_or(DomainError::NotFound { what: "identity provider" })
}

pub async fn list(store: &Store, scope: OrgScope, max: usize) -> Result<Vec<IdentityProvider>, DomainError> {
    Ok(store.org_records(SSO_PROVIDERS, scope.org(), max).await?)
}

/// The organization's policy.
pub fn policy(store: &Store, scope: OrgScope) -> Result<Policy, DomainError> {
    Ok(store.peek(|r| sso_policy(r, scope.org()))?)
}

/// Sets the organization's policy; "required" needs an enabled provider.
pub async fn set_policy(writer: &Writer, ctx: MutationCtx, policy: Policy) -> Result<Policy, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut o: Organization =
                tx.record(ORGS, org.as_bytes())?.ok_or(DomainError::NotFound { what: "organization" })?;
            if policy.required && count_enabled(tx, org, None)? == 0 {
                return Err(DomainError::Conflict {
                    code: "no_identity_provider",
                    detail: "SSO can only be required once an enabled identity provider exists".into(),
                });
            }
            o.sso = policy;
            o.updated_at_ms = tx.now_ms();
            tx.put(ORGS, org.as_bytes(), &encode(&o))?;
            tx.emit("org", "sso_policy.updated", json!({ "required": policy.required }));
            tx.audit("sso_policy.update", format!("org:{org}"), json!({ "required": policy.required }));
            Ok(policy)
        })
        .await
}

/// The scope of the active organization a sign-in page names by its slug; `None` for none.
pub async fn entry(store: &Store, slug: String) -> Result<Option<OrgScope>, DomainError> {
    store
        .read(move |r| {
            let Some(org) = r.get(ORG_SLUGS, slug.as_bytes())?.and_then(|v| Id::from_slice(&v)) else {
                return Ok(None);
            };
            let live = r.record::<Organization>(ORGS, org.as_bytes())?.is_some_and(|o| o.status == OrgStatus::Active);
            Ok(live.then(|| OrgScope::from_credential(org)))
        })
        .await
}

/// Writes down a sign-in about to start; returns its `state`. Expired ones of the organization
/// are cleared on the way; at most `pending_max` wait at once.
pub async fn begin(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    pending: Pending,
    verifier: &str,
    pending_max: usize,
) -> Result<String, DomainError> {
    let org = ctx.scope.org();
    let mut nonce = [0u8; STATE_NONCE_BYTES];
    ids::fill_random(&mut nonce);
    let state = super::connections::state_text(org, &nonce);
    let pending = Pending { verifier: seal_string(vault, &verifier_purpose(org), verifier), ..pending };
    writer
        .submit(ctx, move |tx| {
            let now = tx.now_ms();
            let mut live = 0;
            for (k, v) in tx.range(SSO_PENDING, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
                if decode::<Pending>(SSO_PENDING, &v)?.expires_at_ms <= now {
                    tx.delete(SSO_PENDING, &k)?;
                } else {
                    live += 1;
                }
            }
            if live >= pending_max {
                return Err(DomainError::Conflict {
                    code: "too_many_pending",
                    detail: format!("{pending_max} sign-ins are already waiting: try again in a few minutes"),
                });
            }
            tx.put(SSO_PENDING, &pending_key(org, &nonce), &encode(&pending))?;
            let details =
                json!({ "provider_id": pending.provider_id, "expires_at": ids::rfc3339(pending.expires_at_ms) });
            tx.audit("auth.sso_start", format!("sso_provider:{}", pending.provider_id), details);
            Ok(())
        })
        .await?;
    Ok(state)
}

/// Takes the sign-in a callback's `state` names: gone once taken. `None` for a state never
/// issued, already used or expired. Returns the organization's scope (the state is checked
/// against its own rows: a forged id finds none), the record and the PKCE verifier.
pub async fn take(
    writer: &Writer,
    vault: &Vault,
    state: &str,
    origin: &Origin,
) -> Result<Option<(OrgScope, Pending, String)>, DomainError> {
    let Some((org, nonce)) = state_parts(state) else { return Ok(None) };
    let scope = OrgScope::from_credential(org);
    let ctx = MutationCtx {
        scope,
        actor: "anonymous".into(),
        request_id: origin.request_id.clone(),
        client_addr: origin.client_addr.clone(),
    };
    let key = pending_key(org, &nonce);
    let found = writer
        .submit(ctx, move |tx| {
            let Some(p) = tx.record::<Pending>(SSO_PENDING, &key)? else { return Ok(None) };
            tx.delete(SSO_PENDING, &key)?;
            let in_time = p.expires_at_ms > tx.now_ms();
            let details = json!({ "provider_id": p.provider_id, "in_time": in_time });
            tx.audit("auth.sso_callback", format!("sso_provider:{}", p.provider_id), details);
            Ok::<_, DomainError>(in_time.then_some(p))
        })
        .await?;
    let Some(p) = found else { return Ok(None) };
    let verifier = open_string(vault, &verifier_purpose(org), &p.verifier).ok_or_else(|| {
        DomainError::Store(StoreError::Corrupt {
            table: "sso_pending".into(),
            detail: "a verifier does not open".into(),
        })
    })?;
    Ok(Some((scope, p, verifier)))
}

fn refused(code: &'static str, detail: impl Into<String>) -> DomainError {
    DomainError::Unauthorized { code, detail: detail.into() }
}

/// The account an identity signs in to, and how it was found: `linked` (before), now
/// `linked_by_email`, or `provisioned`. Links it when it was not.
fn account(
    tx: &mut Tx<'_, '_>,
    org: Id,
    idp: &IdentityProvider,
    claims: &Claims,
    mapped: Option<Role>,
) -> Result<(User, &'static str), DomainError> {
    let link_key = org_bytes_key(org, &[idp.id.as_bytes().as_slice(), claims.subject.as_bytes()].concat());
    let mut how = "linked";
    let linked = tx.get(SSO_LINKS, &link_key)?.and_then(|v| Id::from_slice(&v));
    let mut user = match linked {
        Some(id) => super::users::load(tx, org, id)?,
        None => None,
    };
    if user.is_none() {
        let email = claims.email.clone().filter(|_| claims.email_verified);
        let by_email = match &email {
            Some(e) => tx.get(USER_LOGINS, &login_key(org, 'e', e))?.and_then(|v| Id::from_slice(&v)),
            None => None,
        };
        user = match by_email {
            Some(id) => {
                how = "linked_by_email";
                super::users::load(tx, org, id)?
            }
            None if claims.email.is_some() && !claims.email_verified => {
                return Err(refused("sso_email_unverified", "the identity provider has not verified this email"));
            }
            None if !idp.jit => {
                return Err(refused("sso_not_provisioned", "no account here is linked to this identity"));
            }
            None => {
                let Some(email) = email else {
                    return Err(refused("sso_email_missing", "the identity provider gave no email"));
                };
                let Some(role) = mapped else {
                    return Err(refused("sso_no_role", "the identity provider's claims give no role here"));
                };
                how = "provisioned";
                let now = tx.now_ms();
                let u = User {
                    id: Id::new(),
                    email: email.clone(),
                    username: None,
                    display_name: claims
                        .name
                        .clone()
                        .filter(|n| !n.trim().is_empty())
                        .unwrap_or_else(|| email.split('@').next().unwrap_or("").to_owned())
                        .chars()
                        .take(super::users::DISPLAY_NAME_CHARS_MAX)
                        .collect(),
                    role,
                    status: UserStatus::Active,
                    password_hash: None,
                    profile: Profile::default(),
                    preferences: serde_json::Map::new(),
                    version: 1,
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                tx.put(USER_LOGINS, &login_key(org, 'e', &email), u.id.as_bytes())?;
                tx.emit("org", "user.joined", json!({ "id": u.id, "username": u.username }));
                Some(u)
            }
        };
        if let Some(u) = &user {
            tx.put(SSO_LINKS, &link_key, u.id.as_bytes())?;
        }
    }
    let Some(user) = user else {
        return Err(refused("sso_not_provisioned", "the account linked to this identity is gone"));
    };
    Ok((user, how))
}

/// Signs in the person a verified `id_token` names: the linked account, else one linked now
/// through a verified email, else one made (with provisioning on). Their role follows the
/// provider's mapping. Starts a session, all in one commit.
pub async fn sign_in(
    writer: &Writer,
    scope: OrgScope,
    idp: IdentityProvider,
    claims: Claims,
    session_policy: SessionPolicy,
    origin: Origin,
) -> Result<Granted, DomainError> {
    let org = scope.org();
    let ctx = MutationCtx {
        scope,
        actor: format!("sso:{}", idp.id),
        request_id: origin.request_id.clone(),
        client_addr: origin.client_addr.clone(),
    };
    let (user, session, refresh_token) = writer
        .submit(ctx, move |tx| {
            let mapped = idp.role_for(&claims);
            let (mut user, how) = account(tx, org, &idp, &claims, mapped)?;
            let (role_before, status_before) = (user.role, user.status);
            match user.status {
                UserStatus::Active => {}
                // An invitation is answered by signing in.
                UserStatus::Invited => {
                    user.status = UserStatus::Active;
                    tx.emit("org", "user.joined", json!({ "id": user.id, "username": user.username }));
                }
                UserStatus::Suspended | UserStatus::Deleted => {
                    return Err(refused("user_inactive", "this account is suspended or deleted"));
                }
            }
            // The identity provider says what the role is (an owner stays one).
            if user.role != Role::Owner && idp.role_claim.is_some() {
                user.role =
                    mapped.ok_or_else(|| refused("sso_no_role", "the identity provider's claims give no role here"))?;
            }
            let changed = user.role != role_before || user.status != status_before;
            if changed && how != "provisioned" {
                user.version += 1;
                user.updated_at_ms = tx.now_ms();
            }
            if changed || how == "provisioned" {
                tx.put(USERS, &org_id_key(org, user.id), &encode(&user))?;
            }
            if user.role != role_before && how != "provisioned" {
                tx.emit("org", "user.role_changed", json!({ "id": user.id, "role": user.role, "status": user.status }));
            }
            let (session, refresh_token, evicted) = open_session(
                tx,
                org,
                user.id,
                session_policy,
                &origin,
                Marks { sso: Some(SsoMark { provider: idp.id, sid: claims.sid.clone() }), app: None },
            )?;
            tx.audit(
                "auth.sso_login",
                format!("user:{}", user.id),
                json!({
                    "provider_id": idp.id,
                    "session": session.id,
                    "account": how,
                    "role": user.role,
                    "evicted": evicted,
                }),
            );
            Ok::<_, DomainError>((user, session, refresh_token))
        })
        .await?;
    Ok(Granted { org, user, session, refresh_token })
}

/// Re-seals the client secrets of `org`'s identity providers under the vault's current key;
/// how many.
pub async fn reseal(writer: &Writer, vault: std::sync::Arc<Vault>, ctx: MutationCtx) -> Result<usize, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let n = reseal_in(tx, &vault, org)?;
            if n > 0 {
                tx.audit("sso.secrets.reseal", "sso", json!({ "key_id": vault.key_id(), "resealed": n }));
            }
            Ok(n)
        })
        .await
}

fn reseal_in(tx: &mut Tx<'_, '_>, vault: &Vault, org: Id) -> Result<usize, DomainError> {
    let mut n = 0;
    for (k, v) in tx.range(SSO_PROVIDERS, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
        let mut p: IdentityProvider = decode(SSO_PROVIDERS, &v)?;
        if let Some(s) = &mut p.client_secret {
            *s = vault.reseal_base64(&secret_purpose(org, p.id), s).map_err(|_| {
                DomainError::Store(StoreError::Corrupt {
                    table: "sso_providers".into(),
                    detail: format!("identity provider {}: its secret does not open", p.id),
                })
            })?;
            tx.put(SSO_PROVIDERS, &k, &encode(&p))?;
            n += 1;
        }
    }
    Ok(n)
}

/// An organization's identity provider named by a back-channel logout's address, with the
/// organization's scope: `None` when either is unknown. The logout token is checked against
/// this provider's keys before anything changes.
pub fn logout_target(store: &Store, org: Id, id: Id) -> Result<Option<(OrgScope, IdentityProvider)>, DomainError> {
    let found = store.peek(|r| r.record::<IdentityProvider>(SSO_PROVIDERS, &org_id_key(org, id)))?;
    Ok(found.map(|p| (OrgScope::from_credential(org), p)))
}

/// Ends the sessions an identity provider's logout names: those it signed in for `subject`,
/// or with its session id `sid` (both given: both must match). How many ended.
pub async fn end_sessions(
    writer: &Writer,
    scope: OrgScope,
    provider: Id,
    subject: Option<String>,
    sid: Option<String>,
) -> Result<usize, DomainError> {
    let org = scope.org();
    let ctx = MutationCtx { scope, actor: format!("sso:{provider}"), request_id: None, client_addr: None };
    writer
        .submit(ctx, move |tx| {
            // The sessions to look at: the linked account's, else (a sid alone) the organization's.
            let candidates: Vec<Id> = match &subject {
                Some(sub) => {
                    let link = org_bytes_key(org, &[provider.as_bytes().as_slice(), sub.as_bytes()].concat());
                    match tx.get(SSO_LINKS, &link)?.and_then(|v| Id::from_slice(&v)) {
                        Some(user) => {
                            let prefix = org_id_key(org, user);
                            tx.range(USER_SESSIONS, &prefix, &prefix_end(&prefix), 10_000)?
                                .iter()
                                .filter_map(|(k, _)| Id::from_slice(&k[32..]))
                                .collect()
                        }
                        None => Vec::new(),
                    }
                }
                None => tx
                    .range(SESSIONS, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)?
                    .iter()
                    .filter_map(|(k, _)| Id::from_slice(&k[16..]))
                    .collect(),
            };
            let mut ended = Vec::new();
            for id in candidates {
                let key = org_id_key(org, id);
                let Some(mut s) = tx.record::<Session>(SESSIONS, &key)? else { continue };
                let ours = s.sso.as_ref().is_some_and(|m| {
                    // A session whose provider gave no sid is matched by its subject alone.
                    m.provider == provider
                        && sid.as_ref().is_none_or(|want| m.sid.as_ref().is_none_or(|have| have == want))
                });
                if ours && s.revoked_at_ms.is_none() {
                    s.revoked_at_ms = Some(tx.now_ms());
                    tx.put(SESSIONS, &key, &encode(&s))?;
                    tx.emit(
                        format!("user:{}", s.user),
                        "session.revoked",
                        json!({ "session": id, "reason": "sso_logout" }),
                    );
                    ended.push(id);
                }
            }
            tx.audit(
                "auth.sso_logout",
                format!("sso_provider:{provider}"),
                json!({ "sessions": ended, "by_subject": subject.is_some(), "by_sid": sid.is_some() }),
            );
            Ok(ended.len())
        })
        .await
}
