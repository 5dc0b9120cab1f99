//! `/v1/auth/...`: login, refresh, logout, sessions, public keys, invitations, resets.

use poem::Request;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::body::JsonBody;
use super::problem::Problem;
use super::users::{UserView, user_view};
use super::{ApiTags, UserAuth, origin, parse_id, user_ctx};
use crate::app::App;
use crate::auth::password;
use crate::auth::tokens::{self, AccessClaims};
use crate::domain::login::{self, Granted, Refreshed};
use crate::domain::policy::Permission;
use crate::domain::sessions::{self, Session};
use crate::domain::{DomainError, users};
use crate::ids::rfc3339;
use crate::tenancy::OrgScope;

crate::problems!(LoginErrors: 400, 401, 403, 413, 415, 422, 429);
crate::problems!(RefreshErrors: 400, 401, 413, 415, 422, 429);
crate::problems!(SessionErrors: 401, 403, 404);
crate::problems!(KeysErrors: 400);
crate::problems!(AcceptErrors: 400, 401, 413, 415, 422, 507);

/// Logs in to an organization.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "LoginRequest", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// The organization's slug.
    pub org: String,
    /// Email or username.
    pub login: String,
    pub password: String,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "RefreshRequest", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh_token: String,
}

/// Tokens for a session.
#[derive(Object, Debug)]
#[oai(rename = "TokenPair")]
pub struct TokenPair {
    /// PASETO v4.public; send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque; exchange at `POST /v1/auth/refresh` (each use returns a new one).
    pub refresh_token: String,
    pub session_id: String,
    pub user: UserView,
}

/// One login session.
#[derive(Object, Debug)]
#[oai(rename = "Session")]
pub struct SessionView {
    pub id: String,
    pub current: bool,
    pub user_agent: Option<String>,
    pub client_addr: Option<String>,
    pub created_at: String,
    pub last_used_at: String,
    pub expires_at: String,
    /// The identity provider it was signed in through (absent: a password login).
    pub sso_provider_id: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "SessionList")]
pub struct SessionList {
    pub items: Vec<SessionView>,
}

/// A public key that verifies access tokens.
#[derive(Object, Debug)]
#[oai(rename = "PublicKey")]
pub struct KeyView {
    /// PASERK id (`k4.pid.…`), as in a token footer's `kid`.
    pub kid: String,
    /// PASERK public key (`k4.public.…`).
    pub public_key: String,
    /// `current` signs new tokens; `retired` only verifies tokens it signed before.
    pub status: String,
    pub created_at: String,
    pub retired_at: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "PublicKeySet")]
pub struct KeySet {
    pub keys: Vec<KeyView>,
}

/// Redeems an invitation.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "AcceptInvitation", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {
    pub token: String,
    pub username: String,
    /// At least 10 characters.
    pub password: String,
    pub display_name: Option<String>,
}

/// Sets a new password with a reset token.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "RedeemPasswordReset", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    pub token: String,
    pub password: String,
}

#[derive(ApiResponse)]
pub enum NoContent {
    #[oai(status = 204)]
    Done,
}

#[derive(Default)]
pub struct AuthApi;

#[OpenApi(tag = "ApiTags::Auth")]
#[allow(clippy::unused_async)] // operations are async by the framework's contract
impl AuthApi {
    /// Log in
    ///
    /// Answers an access token (15 minutes by default) and a refresh token.
    #[oai(path = "/v1/auth/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        app: Data<&App>,
        req: &Request,
        body: JsonBody<LoginBody>,
    ) -> Result<Json<TokenPair>, LoginErrors> {
        let b = body.0;
        let addr = req.remote_addr().as_socket_addr().map(std::net::SocketAddr::ip);
        let found = login::find_login(&app.store, b.org, b.login.clone()).await?;
        let (org, user) = match found {
            Some((org, user)) => (Some(org), user),
            None => (None, None),
        };
        // Unknown organizations share one bucket per address, so probing slugs costs the same.
        app.limits
            .login_attempt(addr, org.unwrap_or(crate::ids::Id::NIL), &b.login)
            .map_err(|l| super::limited(&app, l))?;
        let ok = app.hasher.verify(b.password, user.as_ref().and_then(|u| u.password_hash.clone())).await;
        let (Some(org), Some(user), true) = (org, user.clone(), ok) else {
            if let Some(org) = org {
                let tripped = app.limits.login_failed(org, &b.login);
                login::record_failed_login(&app.writer, org, user.map(|u| u.id), b.login, origin(req), tripped.err())
                    .await?;
                if let Err(l) = tripped {
                    return Err(super::limited(&app, l).into());
                }
            }
            return Err(
                Problem::unauthenticated("invalid_login", "the organization, login or password is wrong").into()
            );
        };
        app.limits.login_succeeded(org, &b.login);
        if app.store.peek(|r| crate::domain::orgs::sso_required(r, org)).map_err(DomainError::from)? {
            return Err(Problem::new(
                poem::http::StatusCode::FORBIDDEN,
                "sso_required",
                "this organization requires single sign-on: start at POST /v1/auth/sso/start",
            )
            .into());
        }
        let granted = login::start(&app.writer, org, user, app.session_policy(), origin(req)).await?;
        Ok(Json(token_pair(&app, granted)?))
    }

    /// Refresh tokens
    ///
    /// Exchanges a refresh token for a new pair. A refresh token works once: presenting it
    /// again revokes the whole session (`refresh_token_reused`).
    #[oai(path = "/v1/auth/refresh", method = "post", operation_id = "refreshTokens")]
    async fn refresh(
        &self,
        app: Data<&App>,
        req: &Request,
        body: JsonBody<RefreshBody>,
    ) -> Result<Json<TokenPair>, RefreshErrors> {
        match login::refresh(&app.writer, &body.0.refresh_token, None, app.session_policy(), origin(req)).await? {
            Refreshed::Granted(g) => Ok(Json(token_pair(&app, *g)?)),
            Refreshed::ReuseDetected => Err(Problem::unauthenticated(
                "refresh_token_reused",
                "this refresh token was already used; the session has been revoked",
            )
            .into()),
        }
    }

    /// Log out
    ///
    /// Ends the current session.
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/auth/logout", method = "post", operation_id = "logout")]
    async fn logout(&self, app: Data<&App>, auth: UserAuth, req: &Request) -> Result<NoContent, SessionErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        sessions::revoke(&app.writer, user_ctx(req, &p), p.user, p.session, "logout").await?;
        Ok(NoContent::Done)
    }

    /// List my sessions
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/auth/sessions", method = "get", operation_id = "listSessions")]
    async fn sessions(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<SessionList>, SessionErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        let items = sessions::list(&app.store, OrgScope::member(&p), p.user).await?;
        Ok(Json(SessionList { items: items.into_iter().map(|s| session_view(s, p.session)).collect() }))
    }

    /// Revoke one of my sessions
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/auth/sessions/:session_id", method = "delete", operation_id = "revokeSession")]
    async fn revoke(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        session_id: Path<String>,
    ) -> Result<NoContent, SessionErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        let id = parse_id(&session_id.0, "session")?;
        sessions::revoke(&app.writer, user_ctx(req, &p), p.user, id, "revoked_by_user").await?;
        Ok(NoContent::Done)
    }

    /// Public keys for verifying access tokens
    ///
    /// Other services verify tokens offline with these (PASERK), choosing by the footer's `kid`.
    #[oai(path = "/v1/auth/keys", method = "get", operation_id = "listPublicKeys")]
    async fn keys(&self, app: Data<&App>) -> Result<Json<KeySet>, KeysErrors> {
        let ring = app.keys.ring();
        let ttl_ms = app.access_ttl().as_millis() as i64;
        let now = crate::ids::now_ms();
        let mut keys: Vec<KeyView> = ring
            .verifiers
            .values()
            .filter(|v| v.record.retired_at_ms.is_none_or(|r| r + ttl_ms > now))
            .map(|v| KeyView {
                kid: v.record.kid.clone(),
                public_key: v.record.public.clone(),
                status: if v.record.retired_at_ms.is_none() { "current".into() } else { "retired".into() },
                created_at: rfc3339(v.record.created_at_ms),
                retired_at: v.record.retired_at_ms.map(rfc3339),
            })
            .collect();
        keys.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(Json(KeySet { keys }))
    }

    /// Accept an invitation
    ///
    /// Sets the username and password and activates the account; then log in.
    #[oai(path = "/v1/auth/invitations/accept", method = "post", operation_id = "acceptInvitation")]
    async fn accept(
        &self,
        app: Data<&App>,
        req: &Request,
        body: JsonBody<AcceptBody>,
    ) -> Result<Json<UserView>, AcceptErrors> {
        let b = body.0;
        if let Some(why) = password::check_new(&b.password) {
            return Err(DomainError::invalid("/password", "weak_password", why).into());
        }
        let hash = app.hasher.hash(b.password).await;
        let o = origin(req);
        let user =
            users::accept_invite(&app.writer, &b.token, b.username, hash, b.display_name, o.request_id, o.client_addr)
                .await?;
        Ok(Json(user_view(user)))
    }

    /// Reset a password with a reset token
    ///
    /// Ends every session of the user.
    #[oai(path = "/v1/auth/password-reset", method = "post", operation_id = "redeemPasswordReset")]
    async fn reset(
        &self,
        app: Data<&App>,
        req: &Request,
        body: JsonBody<ResetBody>,
    ) -> Result<NoContent, AcceptErrors> {
        let b = body.0;
        if let Some(why) = password::check_new(&b.password) {
            return Err(DomainError::invalid("/password", "weak_password", why).into());
        }
        let hash = app.hasher.hash(b.password).await;
        let o = origin(req);
        users::redeem_reset(&app.writer, &b.token, hash, o.request_id, o.client_addr).await?;
        Ok(NoContent::Done)
    }
}

pub(super) fn token_pair(app: &App, g: Granted) -> Result<TokenPair, Problem> {
    let claims = AccessClaims {
        org: g.org,
        user: g.user.id,
        role: g.user.role.as_str().into(),
        session: g.session.id,
        exp_s: 0,
    };
    let ttl = app.access_ttl();
    let access_token =
        tokens::issue(&app.keys.ring(), &claims, ttl).map_err(|e| Problem::from(crate::auth::AuthError::Token(e)))?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer".into(),
        expires_in: ttl.as_secs(),
        refresh_token: g.refresh_token,
        session_id: g.session.id.to_string(),
        user: user_view(g.user),
    })
}

fn session_view(s: Session, current: crate::ids::Id) -> SessionView {
    SessionView {
        id: s.id.to_string(),
        current: s.id == current,
        user_agent: s.user_agent,
        client_addr: s.client_addr,
        created_at: rfc3339(s.created_at_ms),
        last_used_at: rfc3339(s.last_used_at_ms),
        expires_at: rfc3339(s.expires_at_ms),
        sso_provider_id: s.sso.map(|m| m.provider.to_string()),
    }
}
