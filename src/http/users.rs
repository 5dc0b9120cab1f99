//! `/v1/users` and `/v1/invitations`: an organization's admins manage its users.

use std::collections::BTreeMap;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::body::JsonBody;
use super::{ApiTags, UserAuth, parse_id, user_ctx};
use crate::app::App;
use crate::domain::paging::PageRequest;
use crate::domain::policy::{Permission, Role};
use crate::domain::sessions;
use crate::domain::users::{self, AdminChange, NewInvite, User, UserFilter, UserStatus};

use crate::ids::rfc3339;
use crate::tenancy::OrgScope;

crate::problems!(UserReadErrors: 400, 401, 403, 404);
crate::problems!(UserListErrors: 400, 401, 403, 422);
crate::problems!(UserWriteErrors: 400, 401, 403, 404, 409, 413, 415, 422, 507);

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "Role", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RoleView {
    Guest,
    Member,
    Admin,
    Owner,
}

mirror_enum!(RoleView <=> Role { Guest, Member, Admin, Owner });

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "UserStatus", rename_all = "snake_case")]
pub enum UserStatusView {
    Invited,
    Active,
    Suspended,
}

/// A user of the organization.
#[derive(Object, Debug, Clone)]
#[oai(rename = "User")]
pub struct UserView {
    pub id: String,
    pub email: String,
    /// Set when the invitation is accepted.
    pub username: Option<String>,
    pub display_name: String,
    pub role: RoleView,
    pub status: UserStatusView,
    pub avatar: Option<String>,
    pub time_zone: Option<String>,
    pub locale: Option<String>,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
}

pub fn user_view(u: User) -> UserView {
    UserView {
        id: u.id.to_string(),
        email: u.email,
        username: u.username,
        display_name: u.display_name,
        role: u.role.into(),
        status: match u.status {
            UserStatus::Invited => UserStatusView::Invited,
            UserStatus::Suspended => UserStatusView::Suspended,
            UserStatus::Active | UserStatus::Deleted => UserStatusView::Active,
        },
        avatar: u.profile.avatar,
        time_zone: u.profile.time_zone,
        locale: u.profile.locale,
        version: u.version,
        created_at: rfc3339(u.created_at_ms),
        updated_at: rfc3339(u.updated_at_ms),
    }
}

#[derive(Object, Debug)]
#[oai(rename = "UserPage")]
pub struct UserPage {
    pub items: Vec<UserView>,
    pub next_cursor: Option<String>,
}

/// Invites someone by email.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "CreateInvitation", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    pub email: String,
    pub role: RoleView,
    pub display_name: Option<String>,
}

/// The invited user and the one-time token they redeem at `POST /v1/auth/invitations/accept`.
#[derive(Object, Debug)]
#[oai(rename = "Invitation")]
pub struct InvitationView {
    pub user: UserView,
    /// Shown only now; hand it to the invitee.
    pub token: String,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ChangeRole", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    pub role: RoleView,
}

/// A password reset token, redeemed at `POST /v1/auth/password-reset`.
#[derive(Object, Debug)]
#[oai(rename = "PasswordResetToken")]
pub struct ResetView {
    pub token: String,
}

#[derive(Object, Debug)]
#[oai(rename = "SessionsRevoked")]
pub struct RevokedView {
    pub revoked: u64,
}

#[derive(ApiResponse)]
pub enum InvitationCreated {
    #[oai(status = 201)]
    Created(Json<InvitationView>),
}

#[derive(ApiResponse)]
pub enum UserDeleted {
    #[oai(status = 204)]
    NoContent,
}

#[derive(Default)]
pub struct UsersApi;

#[OpenApi(tag = "ApiTags::Users")]
#[allow(clippy::too_many_arguments)] // query parameters are arguments by the framework's design
impl UsersApi {
    /// Invite a user
    ///
    /// Permission: `users.invite`.
    #[oai(path = "/v1/invitations", method = "post", operation_id = "createInvitation")]
    async fn invite(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<InviteBody>,
    ) -> Result<InvitationCreated, UserWriteErrors> {
        let p = auth.require(&app, Permission::UsersInvite).await?;
        let b = body.0;
        let new = NewInvite { email: b.email, role: b.role.into(), display_name: b.display_name };
        let (user, token) = users::invite(&app.writer, user_ctx(req, &p), Some(p.role), new).await?;
        Ok(InvitationCreated::Created(Json(InvitationView { user: user_view(user), token })))
    }

    /// List users
    ///
    /// Permission: `users.read`.
    #[oai(path = "/v1/users", method = "get", operation_id = "listUsers")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
        status: Query<Option<UserStatusView>>,
        role: Query<Option<RoleView>>,
        /// Matches email, username or display name (case-insensitive substring).
        q: Query<Option<String>>,
    ) -> Result<Json<UserPage>, UserListErrors> {
        let p = auth.require(&app, Permission::UsersRead).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let filter = UserFilter {
            status: status.0.map(|s| match s {
                UserStatusView::Invited => UserStatus::Invited,
                UserStatusView::Active => UserStatus::Active,
                UserStatusView::Suspended => UserStatus::Suspended,
            }),
            role: role.0.map(Role::from),
            text: q.0,
        };
        let page = users::list(&app.store, OrgScope::member(&p), page, filter).await?;
        Ok(Json(UserPage { items: page.items.into_iter().map(user_view).collect(), next_cursor: page.next_cursor }))
    }

    /// Get a user
    ///
    /// Permission: `users.read`.
    #[oai(path = "/v1/users/:user_id", method = "get", operation_id = "getUser")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        user_id: Path<String>,
    ) -> Result<Json<UserView>, UserReadErrors> {
        let (_, user) = resolve(&app, &auth, &user_id.0, Permission::UsersRead).await?;
        Ok(Json(user_view(user)))
    }

    /// Change a user's role
    ///
    /// Permission: `users.manage`.
    #[oai(path = "/v1/users/:user_id/role", method = "put", operation_id = "changeUserRole")]
    async fn role(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        user_id: Path<String>,
        body: JsonBody<RoleBody>,
    ) -> Result<Json<UserView>, UserWriteErrors> {
        administer(&app, auth, req, &user_id.0, AdminChange::Role(body.0.role.into())).await
    }

    /// Suspend a user
    ///
    /// Ends their sessions; their content stays.
    ///
    /// Permission: `users.manage`.
    #[oai(path = "/v1/users/:user_id/suspend", method = "post", operation_id = "suspendUser")]
    async fn suspend(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        user_id: Path<String>,
    ) -> Result<Json<UserView>, UserWriteErrors> {
        administer(&app, auth, req, &user_id.0, AdminChange::Suspend).await
    }

    /// Reactivate a suspended user
    ///
    /// Permission: `users.manage`.
    #[oai(path = "/v1/users/:user_id/reactivate", method = "post", operation_id = "reactivateUser")]
    async fn reactivate(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        user_id: Path<String>,
    ) -> Result<Json<UserView>, UserWriteErrors> {
        administer(&app, auth, req, &user_id.0, AdminChange::Reactivate).await
    }

    /// Delete a user
    ///
    /// Soft: their content stays, their access ends, their email and username become free.
    ///
    /// Permission: `users.manage`.
    #[oai(path = "/v1/users/:user_id", method = "delete", operation_id = "deleteUser")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        user_id: Path<String>,
    ) -> Result<UserDeleted, UserWriteErrors> {
        administer(&app, auth, req, &user_id.0, AdminChange::Delete).await?;
        Ok(UserDeleted::NoContent)
    }

    /// Revoke all of a user's sessions
    ///
    /// Permission: `users.manage`.
    #[oai(path = "/v1/users/:user_id/sessions/revoke", method = "post", operation_id = "revokeUserSessions")]
    async fn revoke_sessions(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        user_id: Path<String>,
    ) -> Result<Json<RevokedView>, UserWriteErrors> {
        let (p, target) = resolve(&app, &auth, &user_id.0, Permission::UsersManage).await?;
        crate::domain::policy::require_may_manage(p.role, target.role)?;
        let n = sessions::revoke_all(&app.writer, user_ctx(req, &p), target.id).await?;
        Ok(Json(RevokedView { revoked: n as u64 }))
    }

    /// Issue a password reset token
    ///
    /// Permission: `users.manage`.
    #[oai(path = "/v1/users/:user_id/password-reset", method = "post", operation_id = "issuePasswordReset")]
    async fn reset(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        user_id: Path<String>,
    ) -> Result<Json<ResetView>, UserWriteErrors> {
        let (p, target) = resolve(&app, &auth, &user_id.0, Permission::UsersManage).await?;
        let token = users::issue_reset(&app.writer, user_ctx(req, &p), p.role, target.id).await?;
        Ok(Json(ResetView { token }))
    }
}

async fn administer(
    app: &App,
    auth: UserAuth,
    req: &Request,
    user_id: &str,
    change: AdminChange,
) -> Result<Json<UserView>, UserWriteErrors> {
    let (p, target) = resolve(app, &auth, user_id, Permission::UsersManage).await?;
    let user = users::administer(&app.writer, user_ctx(req, &p), p.user, p.role, target.id, change).await?;
    Ok(Json(user_view(user)))
}

/// The caller holding `needs`, and the user named in the path, found in the caller's
/// organization. Not found comes before not allowed, so nobody learns whether an id exists
/// elsewhere.
async fn resolve(
    app: &App,
    auth: &UserAuth,
    user_id: &str,
    needs: Permission,
) -> Result<(crate::auth::Principal, User), super::problem::Problem> {
    let p = auth.check(app).await?;
    let id = parse_id(user_id, "user")?;
    let user = users::get(&app.store, OrgScope::member(&p), id).await?;
    p.require(needs)?;
    Ok((p, user))
}

/// Preferences as they travel: a JSON object.
pub type Preferences = BTreeMap<String, serde_json::Value>;
