//! Login sessions as records: a session per login with its family of refresh tokens, the
//! live sessions of a user, and revoking them (one, all, all but the current one, the oldest
//! beyond the cap). Logging in and refreshing are `login`'s; this module knows no account.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::DomainError;
use crate::ids::Id;
use crate::store::tables::{SESSIONS, USER_SESSIONS, org_id_key};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Store, StoreError, decode, encode, prefix_end};
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
    /// The identity provider it was signed in through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso: Option<SsoMark>,
    /// The app it was granted to, with the scopes granted (`domain::apps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppMark>,
}

/// Where an app's session came from (`domain::apps`), and what it may do.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppMark {
    pub app: Id,
    /// The granted permissions.
    pub scopes: Vec<String>,
}

/// Where an SSO session came from: for logging out at the provider too.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SsoMark {
    pub provider: Id,
    /// The provider's session id (`sid`), when it gave one.
    pub sid: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub session: Id,
    pub user: Id,
    /// Set when this token was exchanged for a newer one.
    pub rotated_at_ms: Option<i64>,
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
pub(crate) fn evict_beyond_cap(tx: &mut Tx<'_, '_>, org: Id, user: Id, keep: usize) -> Result<Vec<Id>, StoreError> {
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
