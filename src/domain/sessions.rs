//! Login sessions: password login, rotating refresh tokens with reuse detection, logout,
//! listing and revoking sessions, and the per-request check that a session still stands.
//!
//! A session is one login; its refresh tokens form a family. Every refresh retires the
//! presented token and hands out a new one. Presenting a retired token again means two
//! parties hold the family, so the whole session is revoked and the reuse is audited.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::DomainError;
use super::users::{self, User, UserStatus, new_org_token, parse_org_token};
use crate::domain::orgs::{OrgStatus, Organization};
use crate::ids::Id;
use crate::store::tables::{
    ORG_SLUGS, ORGS, REFRESH_TOKENS, SESSIONS, USER_LOGINS, USER_SESSIONS, USERS, org_bytes_key, org_id_id_key,
    org_id_key,
};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Reader, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub id: Id,
    pub user: Id,
    pub created_at_ms: i64,
    pub last_used_at_ms: i64,
    /// When the current refresh token stops working.
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub user_agent: Option<String>,
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub session: Id,
    pub user: Id,
    /// Set when this token was exchanged for a newer one.
    pub rotated_at_ms: Option<i64>,
}

/// Session settings (from the config).
#[derive(Clone, Copy, Debug)]
pub struct SessionPolicy {
    pub refresh_ttl_ms: i64,
    pub sessions_per_user_max: usize,
}

/// What a successful login or refresh gives: the session and its new refresh token. The
/// caller signs the access token.
pub struct Granted {
    pub org: Id,
    pub user: User,
    pub session: Session,
    pub refresh_token: String,
}

/// Where a login or refresh came from.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub user_agent: Option<String>,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
}

/// Finds the organization and user a login names: (org, user) when both exist and are usable.
pub async fn find_login(
    store: &Store,
    org_slug: String,
    login: String,
) -> Result<Option<(Id, Option<User>)>, DomainError> {
    store
        .read(move |r| {
            let Some(org) = r.get(ORG_SLUGS, org_slug.as_bytes())?.and_then(|v| Id::from_slice(&v)) else {
                return Ok(None);
            };
            let org_rec: Option<Organization> = r.get(ORGS, org.as_bytes())?.map(|v| decode(ORGS, &v)).transpose()?;
            if org_rec.is_none_or(|o| o.status != OrgStatus::Active) {
                return Ok(None);
            }
            let kind = if login.contains('@') { 'e' } else { 'u' };
            let key = org_bytes_key(org, format!("{kind}:{}", login.to_lowercase()).as_bytes());
            let user = match r.get(USER_LOGINS, &key)?.and_then(|v| Id::from_slice(&v)) {
                Some(id) => r.get(USERS, &org_id_key(org, id))?.map(|v| decode::<User>(USERS, &v)).transpose()?,
                None => None,
            };
            Ok(Some((org, user.filter(|u| u.status == UserStatus::Active))))
        })
        .await
}

/// Starts a session for `user` (whose password was checked), evicting the oldest sessions
/// beyond the cap.
pub async fn start(
    writer: &Writer,
    org: Id,
    user: User,
    policy: SessionPolicy,
    origin: Origin,
) -> Result<Granted, DomainError> {
    let (refresh_token, digest) = new_org_token("rt", org);
    let session_id = Id::new();
    let ctx = MutationCtx {
        scope: OrgScope::for_login(org),
        actor: format!("user:{}", user.id),
        request_id: origin.request_id.clone(),
        client_addr: origin.client_addr.clone(),
    };
    let user_id = user.id;
    let session = writer
        .submit(ctx, move |tx| {
            let now = tx.now_ms();
            let session = Session {
                id: session_id,
                user: user_id,
                created_at_ms: now,
                last_used_at_ms: now,
                expires_at_ms: now + policy.refresh_ttl_ms,
                revoked_at_ms: None,
                user_agent: origin.user_agent.clone(),
                client_addr: origin.client_addr.clone(),
            };
            let evicted = evict_beyond_cap(tx, org, user_id, policy.sessions_per_user_max.saturating_sub(1))?;
            tx.put(SESSIONS, &org_id_key(org, session_id), &encode(&session))?;
            tx.put(USER_SESSIONS, &org_id_id_key(org, user_id, session_id), &now.to_be_bytes())?;
            let rec = RefreshRecord { session: session_id, user: user_id, rotated_at_ms: None };
            tx.put(REFRESH_TOKENS, &org_bytes_key(org, &digest), &encode(&rec))?;
            tx.emit(format!("user:{user_id}"), "session.started", json!({ "session": session_id, "evicted": evicted }));
            tx.audit(
                "auth.login",
                format!("user:{user_id}"),
                json!({ "session": session_id, "evicted": evicted, "user_agent": origin.user_agent }),
            );
            Ok::<_, DomainError>(session)
        })
        .await?;
    Ok(Granted { org, user, session, refresh_token })
}

/// Records a failed login in the org's audit chain, and the lock-out it caused, if any.
pub async fn record_failed_login(
    writer: &Writer,
    org: Id,
    user: Option<Id>,
    login: String,
    origin: Origin,
    throttled: Option<crate::limits::Limited>,
) -> Result<(), DomainError> {
    let ctx = MutationCtx {
        scope: OrgScope::for_login(org),
        actor: user.map_or_else(|| "anonymous".into(), |u| format!("user:{u}")),
        request_id: origin.request_id,
        client_addr: origin.client_addr,
    };
    writer
        .submit(ctx, move |tx| {
            let target = user.map_or_else(|| "login".into(), |u| format!("user:{u}"));
            match throttled {
                Some(l) => {
                    tx.audit(
                        "auth.login_throttled",
                        target,
                        json!({ "login": login, "locked_s": l.retry_after.as_secs() }),
                    );
                }
                None => tx.audit("auth.login_failed", target, json!({ "login": login })),
            }
            Ok::<_, DomainError>(())
        })
        .await
}

/// What presenting a refresh token led to.
pub enum Refreshed {
    Granted(Box<Granted>),
    /// A rotated token came back: the session was revoked.
    ReuseDetected,
}

/// Exchanges a refresh token for a new one (and a new access token, signed by the caller).
pub async fn refresh(
    writer: &Writer,
    token: &str,
    policy: SessionPolicy,
    origin: Origin,
) -> Result<Refreshed, DomainError> {
    let invalid =
        || DomainError::Unauthorized { code: "invalid_refresh_token", detail: "the refresh token is not valid".into() };
    let t = parse_org_token("rt", token).ok_or_else(invalid)?;
    let org = t.org;
    let (new_token, new_digest) = new_org_token("rt", org);
    let ctx = MutationCtx {
        scope: OrgScope::from_credential(org),
        actor: "refresh-token".into(),
        request_id: origin.request_id.clone(),
        client_addr: origin.client_addr.clone(),
    };
    let outcome = writer
        .submit(ctx, move |tx| {
            let now = tx.now_ms();
            let key = org_bytes_key(org, &t.secret_sha256);
            let mut rec: RefreshRecord =
                tx.get(REFRESH_TOKENS, &key)?.map(|v| decode(REFRESH_TOKENS, &v)).transpose()?.ok_or_else(invalid)?;
            let mut session: Session = tx
                .get(SESSIONS, &org_id_key(org, rec.session))?
                .map(|v| decode(SESSIONS, &v))
                .transpose()?
                .ok_or_else(invalid)?;
            if session.revoked_at_ms.is_some() || session.expires_at_ms < now {
                return Err(invalid());
            }
            if rec.rotated_at_ms.is_some() {
                // Someone else holds this family: end it, and say so in the audit trail.
                session.revoked_at_ms = Some(now);
                tx.put(SESSIONS, &org_id_key(org, session.id), &encode(&session))?;
                tx.emit(
                    format!("user:{}", rec.user),
                    "session.revoked",
                    json!({ "session": session.id, "reason": "refresh_reuse" }),
                );
                tx.audit("auth.refresh_reuse", format!("user:{}", rec.user), json!({ "session": session.id }));
                return Ok(None);
            }
            let user =
                users::load(tx, org, rec.user)?.filter(|u| u.status == UserStatus::Active).ok_or_else(invalid)?;
            rec.rotated_at_ms = Some(now);
            tx.put(REFRESH_TOKENS, &key, &encode(&rec))?;
            let next = RefreshRecord { session: session.id, user: user.id, rotated_at_ms: None };
            tx.put(REFRESH_TOKENS, &org_bytes_key(org, &new_digest), &encode(&next))?;
            session.last_used_at_ms = now;
            session.expires_at_ms = now + policy.refresh_ttl_ms;
            if origin.client_addr.is_some() {
                session.client_addr.clone_from(&origin.client_addr);
            }
            tx.put(SESSIONS, &org_id_key(org, session.id), &encode(&session))?;
            tx.audit("auth.refresh", format!("user:{}", user.id), json!({ "session": session.id }));
            Ok(Some((user, session)))
        })
        .await?;
    Ok(match outcome {
        Some((user, session)) => Refreshed::Granted(Box::new(Granted { org, user, session, refresh_token: new_token })),
        None => Refreshed::ReuseDetected,
    })
}

/// Revokes one session of `user` (their own, or any with `admin`).
pub async fn revoke(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    session: Id,
    reason: &'static str,
) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut s: Session = tx
                .get(SESSIONS, &org_id_key(org, session))?
                .map(|v| decode(SESSIONS, &v))
                .transpose()?
                .filter(|s: &Session| s.user == user)
                .ok_or(DomainError::NotFound { what: "session" })?;
            if s.revoked_at_ms.is_none() {
                s.revoked_at_ms = Some(tx.now_ms());
                tx.put(SESSIONS, &org_id_key(org, session), &encode(&s))?;
                tx.emit(format!("user:{user}"), "session.revoked", json!({ "session": session, "reason": reason }));
            }
            tx.audit("auth.session_revoke", format!("user:{user}"), json!({ "session": session, "reason": reason }));
            Ok(())
        })
        .await
}

/// Revokes every session of `user` (an admin action).
pub async fn revoke_all(writer: &Writer, ctx: MutationCtx, user: Id) -> Result<usize, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let n = revoke_all_in(tx, org, user)?;
            tx.audit("auth.sessions_revoke_all", format!("user:{user}"), json!({ "revoked": n }));
            Ok(n)
        })
        .await
}

pub(crate) fn revoke_all_in(tx: &mut Tx<'_, '_>, org: Id, user: Id) -> Result<usize, StoreError> {
    revoke_all_except(tx, org, user, None)
}

/// Revokes every live session of `user` but `keep`; the number revoked.
pub(crate) fn revoke_all_except(tx: &mut Tx<'_, '_>, org: Id, user: Id, keep: Option<Id>) -> Result<usize, StoreError> {
    let prefix = org_id_key(org, user);
    let mut n = 0;
    for (k, _) in tx.range(USER_SESSIONS, &prefix, &prefix_end(&prefix), 10_000)? {
        let Some(sid) = Id::from_slice(&k[32..]) else { continue };
        if Some(sid) == keep {
            continue;
        }
        let key = org_id_key(org, sid);
        if let Some(v) = tx.get(SESSIONS, &key)? {
            let mut s: Session = decode(SESSIONS, &v)?;
            if s.revoked_at_ms.is_none() {
                s.revoked_at_ms = Some(tx.now_ms());
                tx.put(SESSIONS, &key, &encode(&s))?;
                tx.emit(format!("user:{user}"), "session.revoked", json!({ "session": sid }));
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Revokes the oldest live sessions of `user` so that at most `keep` remain; their ids.
fn evict_beyond_cap(tx: &mut Tx<'_, '_>, org: Id, user: Id, keep: usize) -> Result<Vec<Id>, StoreError> {
    let prefix = org_id_key(org, user);
    let now = tx.now_ms();
    let mut live: Vec<(i64, Id)> = Vec::new();
    for (k, _) in tx.range(USER_SESSIONS, &prefix, &prefix_end(&prefix), 10_000)? {
        let Some(sid) = Id::from_slice(&k[32..]) else { continue };
        if let Some(v) = tx.get(SESSIONS, &org_id_key(org, sid))? {
            let s: Session = decode(SESSIONS, &v)?;
            if s.revoked_at_ms.is_none() && s.expires_at_ms > now {
                live.push((s.created_at_ms, sid));
            } else {
                // Dead sessions leave the index (their records stay for the audit trail).
                tx.delete(USER_SESSIONS, &k)?;
            }
        }
    }
    live.sort_unstable();
    let excess = live.len().saturating_sub(keep);
    let mut evicted = Vec::new();
    for (_, sid) in live.into_iter().take(excess) {
        let key = org_id_key(org, sid);
        if let Some(v) = tx.get(SESSIONS, &key)? {
            let mut s: Session = decode(SESSIONS, &v)?;
            s.revoked_at_ms = Some(now);
            tx.put(SESSIONS, &key, &encode(&s))?;
            tx.emit(format!("user:{user}"), "session.revoked", json!({ "session": sid, "reason": "session_cap" }));
            evicted.push(sid);
        }
    }
    Ok(evicted)
}

/// The live sessions of `user`.
pub async fn list(store: &Store, scope: OrgScope, user: Id) -> Result<Vec<Session>, DomainError> {
    store
        .read(move |r| {
            let org = scope.org();
            let prefix = org_id_key(org, user);
            let now = crate::ids::now_ms();
            let mut out = Vec::new();
            for (k, _) in r.range(USER_SESSIONS, &prefix, &prefix_end(&prefix), false, 1000)? {
                let Some(sid) = Id::from_slice(&k[32..]) else { continue };
                if let Some(v) = r.get(SESSIONS, &org_id_key(org, sid))? {
                    let s: Session = decode(SESSIONS, &v)?;
                    if s.revoked_at_ms.is_none() && s.expires_at_ms > now {
                        out.push(s);
                    }
                }
            }
            Ok(out)
        })
        .await
}

/// Why a token's session no longer stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// The user's account as of this check (their current role inside).
    Ok(Box<User>),
    SessionRevoked,
    UserInactive,
    OrgInactive,
}

/// Checks, on one snapshot, that the session, the user and the org of a token still stand;
/// the user's current role when they do (a role change takes effect at once).
pub fn standing(r: &Reader, org: Id, user: Id, session: Id) -> Result<Standing, StoreError> {
    let org_ok = r
        .get(ORGS, org.as_bytes())?
        .map(|v| decode::<Organization>(ORGS, &v))
        .transpose()?
        .is_some_and(|o| o.status == OrgStatus::Active);
    if !org_ok {
        return Ok(Standing::OrgInactive);
    }
    let s: Option<Session> = r.get(SESSIONS, &org_id_key(org, session))?.map(|v| decode(SESSIONS, &v)).transpose()?;
    if s.is_none_or(|s| s.revoked_at_ms.is_some() || s.user != user) {
        return Ok(Standing::SessionRevoked);
    }
    let u: Option<User> = r.get(USERS, &org_id_key(org, user))?.map(|v| decode(USERS, &v)).transpose()?;
    Ok(match u {
        Some(u) if u.status == UserStatus::Active => Standing::Ok(Box::new(u)),
        _ => Standing::UserInactive,
    })
}
