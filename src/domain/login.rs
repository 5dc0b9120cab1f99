//! Logging in: finding the organization and account a login names, password logins that
//! start a session, failed attempts recorded, rotating refresh tokens with reuse detection
//! (presenting a retired token again means two parties hold the family: the whole session is
//! revoked and the reuse audited), and the per-request check that a session still stands.

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
use crate::store::{Reader, Store, StoreError, decode, encode};
use crate::tenancy::OrgScope;

use super::sessions::{AppMark, RefreshRecord, Session, SsoMark, evict_beyond_cap};

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
    let ctx = MutationCtx {
        scope: OrgScope::for_login(org),
        actor: format!("user:{}", user.id),
        request_id: origin.request_id.clone(),
        client_addr: origin.client_addr.clone(),
    };
    let user_id = user.id;
    let (session, refresh_token) = writer
        .submit(ctx, move |tx| {
            let (session, token, evicted) = open_session(tx, org, user_id, policy, &origin, Marks::default())?;
            tx.audit(
                "auth.login",
                format!("user:{user_id}"),
                json!({ "session": session.id, "evicted": evicted, "user_agent": origin.user_agent }),
            );
            Ok::<_, DomainError>((session, token))
        })
        .await?;
    Ok(Granted { org, user, session, refresh_token })
}

/// What a session came through besides a password: an identity provider, an app.
#[derive(Default)]
pub(super) struct Marks {
    pub sso: Option<SsoMark>,
    pub app: Option<AppMark>,
}

/// Opens a session of an app (`domain::apps`) inside the caller's commit.
pub(super) fn open_session_for_app(
    tx: &mut Tx<'_, '_>,
    org: Id,
    user: Id,
    policy: SessionPolicy,
    origin: &Origin,
    app: AppMark,
) -> Result<(Session, String, Vec<Id>), DomainError> {
    open_session(tx, org, user, policy, origin, Marks { sso: None, app: Some(app) })
}

/// Opens a session for `user` inside the caller's commit (which audits it): the session, its
/// first refresh token, and the old sessions the cap evicted.
pub(super) fn open_session(
    tx: &mut Tx<'_, '_>,
    org: Id,
    user: Id,
    policy: SessionPolicy,
    origin: &Origin,
    marks: Marks,
) -> Result<(Session, String, Vec<Id>), DomainError> {
    let (refresh_token, digest) = new_org_token("rt", org);
    let now = tx.now_ms();
    let session = Session {
        id: Id::new(),
        user,
        created_at_ms: now,
        last_used_at_ms: now,
        expires_at_ms: now + policy.refresh_ttl_ms,
        revoked_at_ms: None,
        user_agent: origin.user_agent.clone(),
        client_addr: origin.client_addr.clone(),
        sso: marks.sso,
        app: marks.app,
    };
    let evicted = evict_beyond_cap(tx, org, user, policy.sessions_per_user_max.saturating_sub(1))?;
    tx.put(SESSIONS, &org_id_key(org, session.id), &encode(&session))?;
    tx.put(USER_SESSIONS, &org_id_id_key(org, user, session.id), &now.to_be_bytes())?;
    let rec = RefreshRecord { session: session.id, user, rotated_at_ms: None };
    tx.put(REFRESH_TOKENS, &org_bytes_key(org, &digest), &encode(&rec))?;
    tx.emit(format!("user:{user}"), "session.started", json!({ "session": session.id, "evicted": evicted }));
    Ok((session, refresh_token, evicted))
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
/// `app`: the app presenting it (an app's session refreshes only through it, and others' never
/// through an app).
pub async fn refresh(
    writer: &Writer,
    token: &str,
    app: Option<Id>,
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
            if session.app.as_ref().map(|m| m.app) != app {
                return Err(invalid());
            }
            if session.sso.is_none() && crate::domain::orgs::sso_required(tx, org)? {
                return Err(DomainError::Unauthorized {
                    code: "sso_required",
                    detail: "this organization requires single sign-on: sign in through it".into(),
                });
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

/// Why a token's session no longer stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// The user's account as of this check (their current role inside), and the app the
    /// session was granted to, if any.
    Ok(Box<User>, Option<AppMark>),
    SessionRevoked,
    UserInactive,
    OrgInactive,
}

/// A number that changes whenever a row `standing` reads for these ids is written: read it
/// before `standing`, and that standing holds for as long as the number stays the same.
pub fn standing_stamp(store: &Store, org: Id, user: Id, session: Id) -> u64 {
    store
        .row_changes(ORGS, org.as_bytes())
        .wrapping_add(store.row_changes(SESSIONS, &org_id_key(org, session)))
        .wrapping_add(store.row_changes(USERS, &org_id_key(org, user)))
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
    let Some(s) = s.filter(|s| s.revoked_at_ms.is_none() && s.user == user) else {
        return Ok(Standing::SessionRevoked);
    };
    let u: Option<User> = r.get(USERS, &org_id_key(org, user))?.map(|v| decode(USERS, &v)).transpose()?;
    Ok(match u {
        Some(u) if u.status == UserStatus::Active => Standing::Ok(Box::new(u), s.app),
        _ => Standing::UserInactive,
    })
}
