//! OAuth apps: Outpost as an authorization server, so third-party apps and agents act in an
//! organization on a user's behalf with tokens that never grant more than the user has.
//!
//! An admin registers an **app** (or, when the organization allows it, the app registers
//! itself: RFC 7591): its redirect URIs (matched exactly), the scopes it may ask for (permission
//! names), and a client secret (shown once, kept as a digest) unless it is a public client. Its
//! `client_id` names the organization, so the token endpoint knows whose rows to read.
//!
//! A user who consents gets an **authorization code** (single use, a minute, bound to the app,
//! the redirect URI and a PKCE S256 challenge). Exchanging it opens an ordinary session marked
//! with the app and the granted scopes: its refresh tokens rotate with reuse detection like any
//! other, its access tokens are checked against the session at every request, and each request
//! needs both the user's role and the granted scopes to allow it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::login::{Granted, Origin, SessionPolicy, open_session_for_app};
use super::orgs::{OrgStatus, Organization};
use super::policy::Permission;
pub use super::sessions::AppMark;
use super::sessions::{RefreshRecord, Session};
use super::users::{self, UserStatus, new_org_token, parse_org_token, sha256};
use super::{DomainError, FieldError, check};
use crate::ids::{self, Id};
use crate::store::tables::{OAUTH_APPS, OAUTH_CODES, ORGS, REFRESH_TOKENS, SESSIONS, org_bytes_key, org_id_key};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

pub const NAME_CHARS_MAX: usize = 100;
pub const REDIRECT_URIS_MAX: usize = 10;
pub const URI_BYTES_MAX: usize = 2000;
/// How long an authorization code is good for.
pub const CODE_TTL_MS: i64 = 60_000;

/// A registered app.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OAuthApp {
    pub id: Id,
    pub name: String,
    /// Hex SHA-256 of the client secret's random part; `None` for a public client.
    pub secret_sha256: Option<String>,
    pub redirect_uris: Vec<String>,
    /// The permissions it may ask for.
    pub scopes: Vec<String>,
    /// Registered by the app itself (RFC 7591).
    pub dynamic: bool,
    pub created_by: Option<Id>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
}

/// An authorization code's record (the code itself is never stored).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Code {
    pub app: Id,
    pub user: Id,
    pub scopes: Vec<String>,
    pub redirect_uri: String,
    /// base64url(SHA-256(verifier)).
    pub challenge: String,
    pub expires_at_ms: i64,
}

/// An app as given; absent fields stay as they are on update.
#[derive(Clone, Debug, Default)]
pub struct AppFields {
    pub name: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    /// Make a client secret (a confidential client).
    pub confidential: bool,
    pub expected_version: Option<u64>,
}

/// `oa_<org>_<app>`: the client id, naming its organization.
pub fn client_id(org: Id, app: Id) -> String {
    format!("oa_{}_{}", org.0.simple(), app.0.simple())
}

/// The organization and app a client id names.
pub fn parse_client_id(text: &str) -> Option<(Id, Id)> {
    let rest = text.strip_prefix("oa_")?;
    let (org, app) = rest.split_once('_')?;
    Some((Id(uuid::Uuid::try_parse(org).ok()?), Id(uuid::Uuid::try_parse(app).ok()?)))
}

/// The permissions scope names name; `None` when one names none.
pub fn permissions(scopes: &[String]) -> Option<Vec<Permission>> {
    scopes.iter().map(|s| Permission::parse(s)).collect()
}

fn check_fields(f: &AppFields, errors: &mut Vec<FieldError>) {
    if f.name.as_deref().is_some_and(|n| n.trim().is_empty() || n.chars().count() > NAME_CHARS_MAX) {
        errors.push(FieldError::new("/name", "invalid_length", format!("1–{NAME_CHARS_MAX} characters")));
    }
    if let Some(uris) = &f.redirect_uris {
        let ok = |u: &String| {
            u.len() <= URI_BYTES_MAX
                && reqwest::Url::parse(u).is_ok_and(|p| {
                    let loopback = matches!(p.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                    p.fragment().is_none() && (p.scheme() == "https" || (p.scheme() == "http" && loopback))
                })
        };
        if uris.is_empty() || uris.len() > REDIRECT_URIS_MAX || !uris.iter().all(ok) {
            errors.push(FieldError::new(
                "/redirect_uris",
                "invalid_redirect_uris",
                format!("1–{REDIRECT_URIS_MAX} https URLs (http on loopback) without a fragment"),
            ));
        }
    }
    if let Some(s) = &f.scopes {
        if s.is_empty() || permissions(s).is_none() {
            errors.push(FieldError::new(
                "/scopes",
                "invalid_scopes",
                format!(
                    "one or more permission names: {}",
                    Permission::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
}

fn summary(a: &OAuthApp) -> serde_json::Value {
    json!({ "id": a.id, "name": a.name, "redirect_uris": a.redirect_uris, "scopes": a.scopes, "dynamic": a.dynamic })
}

/// Registers an app: it and its client secret (shown once), if confidential.
pub async fn create(
    writer: &Writer,
    ctx: MutationCtx,
    caller: Option<Id>,
    f: AppFields,
    per_org_max: usize,
) -> Result<(OAuthApp, Option<String>), DomainError> {
    let mut errors = Vec::new();
    check_fields(&f, &mut errors);
    if f.redirect_uris.is_none() {
        errors.push(FieldError::new("/redirect_uris", "required", "where users are sent back"));
    }
    if f.scopes.is_none() {
        errors.push(FieldError::new("/scopes", "required", "the permissions the app may ask for"));
    }
    check(errors)?;
    let org = ctx.scope.org();
    let (secret, digest) = if f.confidential {
        let (text, digest) = new_org_token("oas", org);
        (Some(text), Some(hex(&digest)))
    } else {
        (None, None)
    };
    let now = ids::now_ms();
    let app = OAuthApp {
        id: Id::new(),
        name: f.name.map_or_else(|| "An app".to_owned(), |n| n.trim().to_owned()),
        secret_sha256: digest,
        redirect_uris: f.redirect_uris.unwrap_or_default(),
        scopes: f.scopes.unwrap_or_default(),
        dynamic: caller.is_none(),
        created_by: caller,
        created_at_ms: now,
        updated_at_ms: now,
        version: 1,
    };
    let app = writer
        .submit(ctx, move |tx| {
            if caller.is_none() && !policy_of(tx, org)?.dynamic_registration {
                return Err(DomainError::Forbidden {
                    detail: "this organization does not take dynamic client registrations".into(),
                });
            }
            if tx.range(OAUTH_APPS, org.as_bytes(), &prefix_end(org.as_bytes()), per_org_max + 1)?.len() >= per_org_max
            {
                return Err(DomainError::Conflict {
                    code: "quota_exceeded",
                    detail: format!("at most {per_org_max} OAuth apps per organization"),
                });
            }
            tx.put(OAUTH_APPS, &org_id_key(org, app.id), &encode(&app))?;
            tx.emit("org", "oauth_app.created", summary(&app));
            tx.audit("oauth_app.create", format!("oauth_app:{}", app.id), summary(&app));
            Ok(app.clone())
        })
        .await?;
    Ok((app, secret))
}

/// Changes an app's name, redirect URIs or scopes.
pub async fn update(writer: &Writer, ctx: MutationCtx, id: Id, f: AppFields) -> Result<OAuthApp, DomainError> {
    let mut errors = Vec::new();
    check_fields(&f, &mut errors);
    check(errors)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut a = load(tx, org, id)?;
            super::paging::check_version(f.expected_version, a.version)?;
            if let Some(n) = &f.name {
                n.trim().clone_into(&mut a.name);
            }
            if let Some(u) = &f.redirect_uris {
                a.redirect_uris.clone_from(u);
            }
            if let Some(s) = &f.scopes {
                a.scopes.clone_from(s);
            }
            a.version += 1;
            a.updated_at_ms = tx.now_ms();
            tx.put(OAUTH_APPS, &org_id_key(org, id), &encode(&a))?;
            tx.emit("org", "oauth_app.updated", summary(&a));
            tx.audit("oauth_app.update", format!("oauth_app:{id}"), summary(&a));
            Ok(a)
        })
        .await
}

/// Removes an app and ends every session it holds.
pub async fn delete(writer: &Writer, ctx: MutationCtx, id: Id) -> Result<usize, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let a = load(tx, org, id)?;
            tx.delete(OAUTH_APPS, &org_id_key(org, id))?;
            let ended = end_app_sessions(tx, org, id)?;
            tx.emit("org", "oauth_app.deleted", json!({ "id": id, "name": a.name }));
            tx.audit("oauth_app.delete", format!("oauth_app:{id}"), json!({ "name": a.name, "sessions_ended": ended }));
            Ok(ended)
        })
        .await
}

fn end_app_sessions(tx: &mut Tx<'_, '_>, org: Id, app: Id) -> Result<usize, DomainError> {
    let mut n = 0;
    for (k, v) in tx.range(SESSIONS, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
        let mut s: Session = decode(SESSIONS, &v)?;
        if s.app.as_ref().is_some_and(|m| m.app == app) && s.revoked_at_ms.is_none() {
            s.revoked_at_ms = Some(tx.now_ms());
            tx.put(SESSIONS, &k, &encode(&s))?;
            tx.emit(format!("user:{}", s.user), "session.revoked", json!({ "session": s.id, "reason": "app_removed" }));
            n += 1;
        }
    }
    Ok(n)
}

fn load(tx: &Tx<'_, '_>, org: Id, id: Id) -> Result<OAuthApp, DomainError> {
    tx.record::<OAuthApp>(OAUTH_APPS, &org_id_key(org, id))?.ok_or(DomainError::NotFound { what: "OAuth app" })
}

pub fn get(store: &Store, scope: OrgScope, id: Id) -> Result<OAuthApp, DomainError> {
    store
        .peek(|r| r.record::<OAuthApp>(OAUTH_APPS, &org_id_key(scope.org(), id)))?
        .ok_or(DomainError::NotFound { what: "OAuth app" })
}

pub async fn list(store: &Store, scope: OrgScope, max: usize) -> Result<Vec<OAuthApp>, DomainError> {
    Ok(store.org_records(OAUTH_APPS, scope.org(), max).await?)
}

pub use super::orgs::AppsPolicy;

fn policy_of(r: &impl Lookup, org: Id) -> Result<AppsPolicy, StoreError> {
    Ok(r.record::<Organization>(ORGS, org.as_bytes())?.map(|o| o.apps).unwrap_or_default())
}

pub fn policy(store: &Store, scope: OrgScope) -> Result<AppsPolicy, DomainError> {
    Ok(store.peek(|r| policy_of(r, scope.org()))?)
}

pub async fn set_policy(writer: &Writer, ctx: MutationCtx, policy: AppsPolicy) -> Result<AppsPolicy, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut o: Organization =
                tx.record(ORGS, org.as_bytes())?.ok_or(DomainError::NotFound { what: "organization" })?;
            o.apps = policy;
            o.updated_at_ms = tx.now_ms();
            tx.put(ORGS, org.as_bytes(), &encode(&o))?;
            let details = json!({ "dynamic_registration": policy.dynamic_registration });
            tx.emit("org", "oauth_apps_policy.updated", details.clone());
            tx.audit("oauth_apps_policy.update", format!("org:{org}"), details);
            Ok(policy)
        })
        .await
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The app a client id names, with its organization's scope, when the organization is active.
/// The client's secret (if it has one) is checked by [`authenticate`].
pub fn client(store: &Store, client_id: &str) -> Result<Option<(OrgScope, OAuthApp)>, DomainError> {
    let Some((org, id)) = parse_client_id(client_id) else { return Ok(None) };
    let found = store.peek(|r| {
        let live = r.record::<Organization>(ORGS, org.as_bytes())?.is_some_and(|o| o.status == OrgStatus::Active);
        if !live {
            return Ok(None);
        }
        r.record::<OAuthApp>(OAUTH_APPS, &org_id_key(org, id))
    })?;
    Ok(found.map(|a| (OrgScope::from_credential(org), a)))
}

/// Whether `secret` is the app's client secret (a public client takes none).
pub fn authenticate(app: &OAuthApp, org: Id, secret: Option<&str>) -> bool {
    match (&app.secret_sha256, secret) {
        (None, None) => true,
        // Digests are compared, not secrets: how long the comparison takes tells nothing of the
        // secret.
        (Some(want), Some(given)) => {
            parse_org_token("oas", given).is_some_and(|t| t.org == org && hex(&t.secret_sha256) == *want)
        }
        _ => false,
    }
}

/// Issues an authorization code for `user`'s consent; the code (shown once, to the redirect).
#[allow(clippy::too_many_arguments)] // the authorization's parts
pub async fn issue_code(
    writer: &Writer,
    scope: OrgScope,
    app: &OAuthApp,
    user: Id,
    scopes: Vec<String>,
    redirect_uri: String,
    challenge: String,
    origin: Origin,
) -> Result<String, DomainError> {
    let org = scope.org();
    let (code, digest) = new_org_token("oac", org);
    let app_id = app.id;
    let ctx = MutationCtx {
        scope,
        actor: format!("user:{user}"),
        request_id: origin.request_id,
        client_addr: origin.client_addr,
    };
    writer
        .submit(ctx, move |tx| {
            let now = tx.now_ms();
            let rec = Code {
                app: app_id,
                user,
                scopes: scopes.clone(),
                redirect_uri: redirect_uri.clone(),
                challenge: challenge.clone(),
                expires_at_ms: now + CODE_TTL_MS,
            };
            tx.put(OAUTH_CODES, &org_bytes_key(org, &digest), &encode(&rec))?;
            tx.audit("oauth_app.consent", format!("oauth_app:{app_id}"), json!({ "user": user, "scopes": scopes }));
            Ok::<_, DomainError>(())
        })
        .await?;
    Ok(code)
}

fn invalid_grant(detail: &str) -> DomainError {
    DomainError::Unauthorized { code: "invalid_grant", detail: detail.into() }
}

/// Exchanges an authorization code: checked against the app, the redirect URI and the PKCE
/// verifier, taken once, and turned into a session of the app with the granted scopes.
#[allow(clippy::too_many_arguments)] // the token request's parts
pub async fn exchange(
    writer: &Writer,
    scope: OrgScope,
    app: &OAuthApp,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
    policy: SessionPolicy,
    origin: Origin,
) -> Result<(Granted, Vec<String>), DomainError> {
    let org = scope.org();
    let t =
        parse_org_token("oac", code).filter(|t| t.org == org).ok_or_else(|| invalid_grant("the code is not valid"))?;
    let challenge = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
    let (app_id, redirect_uri) = (app.id, redirect_uri.to_owned());
    let ctx = MutationCtx {
        scope,
        actor: format!("oauth_app:{app_id}"),
        request_id: origin.request_id.clone(),
        client_addr: origin.client_addr.clone(),
    };
    let (user, session, refresh_token, scopes) = writer
        .submit(ctx, move |tx| {
            let key = org_bytes_key(org, &t.secret_sha256);
            let Some(c) = tx.record::<Code>(OAUTH_CODES, &key)? else {
                return Err(invalid_grant("the code is unknown or used already"));
            };
            // Taken whatever follows: a code works once.
            tx.delete(OAUTH_CODES, &key)?;
            let why = if c.expires_at_ms <= tx.now_ms() {
                Some("the code has expired")
            } else if c.app != app_id {
                Some("the code was issued to another app")
            } else if c.redirect_uri != redirect_uri {
                Some("the redirect URI differs from the authorization's")
            } else if c.challenge != challenge {
                Some("the code verifier does not match the challenge")
            } else {
                None
            };
            if let Some(why) = why {
                tx.audit("oauth_app.token_refused", format!("oauth_app:{app_id}"), json!({ "reason": why }));
                return Ok(Err(why));
            }
            let user = users::load(tx, org, c.user)?.filter(|u| u.status == UserStatus::Active);
            let Some(user) = user else {
                tx.audit(
                    "oauth_app.token_refused",
                    format!("oauth_app:{app_id}"),
                    json!({ "reason": "user inactive" }),
                );
                return Ok(Err("the user is no longer active"));
            };
            let mark = AppMark { app: app_id, scopes: c.scopes.clone() };
            let (session, token, evicted) = open_session_for_app(tx, org, user.id, policy, &origin, mark)?;
            tx.audit(
                "oauth_app.token",
                format!("user:{}", user.id),
                json!({ "app": app_id, "session": session.id, "scopes": c.scopes, "evicted": evicted }),
            );
            Ok(Ok((user, session, token, c.scopes)))
        })
        .await?
        .map_err(invalid_grant)?;
    Ok((Granted { org, user, session, refresh_token }, scopes))
}

/// The live session of `scope`'s organization a refresh token belongs to: not exchanged yet,
/// its session neither revoked nor expired.
pub fn refresh_session(store: &Store, scope: OrgScope, token: &str) -> Result<Option<Session>, DomainError> {
    let org = scope.org();
    let Some(t) = parse_org_token("rt", token).filter(|t| t.org == org) else { return Ok(None) };
    Ok(store.peek(|r| {
        let Some(rec) = r.record::<RefreshRecord>(REFRESH_TOKENS, &org_bytes_key(org, &t.secret_sha256))? else {
            return Ok::<_, StoreError>(None);
        };
        if rec.rotated_at_ms.is_some() {
            return Ok(None);
        }
        let s = r.record::<Session>(SESSIONS, &org_id_key(org, rec.session))?;
        Ok(s.filter(|s| s.revoked_at_ms.is_none() && s.expires_at_ms > ids::now_ms()))
    })?)
}

/// The session `id` of `scope`'s organization, if live.
pub fn live_session(store: &Store, scope: OrgScope, id: Id) -> Result<Option<Session>, DomainError> {
    let s = store.peek(|r| r.record::<Session>(SESSIONS, &org_id_key(scope.org(), id)))?;
    Ok(s.filter(|s| s.revoked_at_ms.is_none() && s.expires_at_ms > ids::now_ms()))
}

/// Ends a session of `app` (RFC 7009 revocation); whether there was one to end.
pub async fn revoke(writer: &Writer, scope: OrgScope, app: Id, session: Id) -> Result<bool, DomainError> {
    let org = scope.org();
    let ctx = MutationCtx { scope, actor: format!("oauth_app:{app}"), request_id: None, client_addr: None };
    writer
        .submit(ctx, move |tx| {
            let key = org_id_key(org, session);
            let Some(mut s) = tx.record::<Session>(SESSIONS, &key)? else { return Ok(false) };
            if s.app.as_ref().is_none_or(|m| m.app != app) || s.revoked_at_ms.is_some() {
                return Ok(false);
            }
            s.revoked_at_ms = Some(tx.now_ms());
            tx.put(SESSIONS, &key, &encode(&s))?;
            tx.emit(
                format!("user:{}", s.user),
                "session.revoked",
                json!({ "session": session, "reason": "app_revoked" }),
            );
            tx.audit("oauth_app.revoke", format!("user:{}", s.user), json!({ "app": app, "session": session }));
            Ok(true)
        })
        .await
}
