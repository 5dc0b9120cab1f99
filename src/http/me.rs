//! `/v1/me`: the caller's own account, profile, permissions and password.

use bytes::Bytes;
use poem::Request;
use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::rendered::Rendered;
use super::users::{Preferences, RoleView, UserView, user_view};
use super::{ApiTags, UserAuth, parse_if_match, user_ctx};
use crate::app::App;
use crate::auth::password;
use crate::domain::DomainError;
use crate::domain::policy::{self, Permission};
use crate::domain::users::{self, ProfilePatch};
use crate::ids::Id;
use crate::store::stamped::Stamped;
use crate::store::tables::{USERS, org_id_key};
use crate::tenancy::OrgScope;

crate::problems!(MeErrors: 401, 403, 404);
crate::problems!(MeWriteErrors: 400, 401, 403, 404, 412, 413, 415, 422, 507);

/// The caller's account and preferences.
#[derive(Object, Debug)]
#[oai(rename = "Me")]
pub struct MeView {
    pub user: UserView,
    pub org_id: String,
    pub session_id: String,
    pub preferences: Preferences,
}

/// What the caller may do.
#[derive(Object, Debug)]
#[oai(rename = "MyPermissions")]
pub struct PermissionsView {
    pub role: RoleView,
    /// e.g. `users.read`, `users.invite`.
    pub permissions: Vec<String>,
}

/// Changes to one's own profile; absent fields stay.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "UpdateMe", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeBody {
    pub display_name: Option<String>,
    /// The avatar: the id of one of the caller's image files (uploaded first; every member of
    /// the organization may then read it, and its thumbnails), or a URL.
    pub avatar: Option<String>,
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub time_zone: Option<String>,
    /// BCP 47 tag, e.g. `de-DE`.
    pub locale: Option<String>,
    /// Replaces the whole preferences object (at most 16 KiB of JSON).
    pub preferences: Option<Preferences>,
    pub version: Option<u64>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ChangePassword", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    pub current_password: String,
    pub new_password: String,
}

/// Callers whose `GET /v1/me` answer is kept at most; a full map starts over.
const RENDERED_MAX: usize = 10_000;
/// The largest answer kept (most are about half a kilobyte; preferences may take 16 KiB, and
/// an answer that large is rendered each time), so the map holds 40 MiB at most.
const RENDERED_BYTES_MAX: usize = 4096;

pub struct MeApi {
    /// Each caller's answer to `GET /v1/me`, by (organization, user, session), rendered once and
    /// kept while the user's row stays unwritten. The caller's token, session, account and role
    /// are still checked on every request: this keeps content, never decisions.
    rendered: Stamped<(Id, Id, Id), Bytes>,
}

impl Default for MeApi {
    fn default() -> Self {
        Self { rendered: Stamped::new(RENDERED_MAX) }
    }
}

#[OpenApi(tag = "ApiTags::Me")]
impl MeApi {
    /// Get my account
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/me", method = "get", operation_id = "getMe")]
    async fn me(&self, app: Data<&App>, auth: UserAuth) -> Result<Rendered<MeView>, MeErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        // Read the user row's counter before the row: an answer is never labelled newer than
        // what it was rendered from. (The check above handed back an account too, but one
        // remembered under its own stamp; on a miss the row is read again, once per change.)
        let key = (p.org, p.user, p.session);
        let stamp = app.store.row_changes(USERS, &org_id_key(p.org, p.user));
        if let Some(bytes) = self.rendered.get(&key, stamp) {
            return Ok(Rendered::from_bytes(bytes));
        }
        let u = users::get(&app.store, OrgScope::member(&p), p.user).await?;
        let preferences = u.preferences.clone().into_iter().collect();
        let me =
            MeView { user: user_view(u), org_id: p.org.to_string(), session_id: p.session.to_string(), preferences };
        // poem's own encoding, so the answer is byte for byte what `Json` would have sent.
        let bytes = Bytes::from(me.to_json_string());
        if bytes.len() <= RENDERED_BYTES_MAX {
            self.rendered.put(key, stamp, bytes.clone());
        }
        Ok(Rendered::from_bytes(bytes))
    }

    /// List my permissions
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/me/permissions", method = "get", operation_id = "getMyPermissions")]
    async fn permissions(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<PermissionsView>, MeErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        let permissions = policy::permissions(p.role).into_iter().map(|x| x.as_str().to_owned()).collect();
        Ok(Json(PermissionsView { role: p.role.into(), permissions }))
    }

    /// Update my profile and preferences
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/me", method = "patch", operation_id = "updateMe")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<UpdateMeBody>,
    ) -> Result<Json<UserView>, MeWriteErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        let b = body.0;
        let patch = ProfilePatch {
            display_name: b.display_name,
            avatar: b.avatar,
            time_zone: b.time_zone,
            locale: b.locale,
            preferences: b.preferences.map(|m| m.into_iter().collect()),
            expected_version: parse_if_match(if_match.0.as_deref())?.or(b.version),
        };
        Ok(Json(user_view(users::update_profile(&app.writer, user_ctx(req, &p), p.user, patch).await?)))
    }

    /// Change my password
    ///
    /// Ends every other session of mine.
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/me/password", method = "post", operation_id = "changeMyPassword")]
    async fn password(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<PasswordBody>,
    ) -> Result<NoContent, MeWriteErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        let b = body.0;
        let u = users::get(&app.store, OrgScope::member(&p), p.user).await?;
        if !app.hasher.verify(b.current_password, u.password_hash).await {
            return Err(
                DomainError::invalid("/current_password", "wrong_password", "the current password is wrong").into()
            );
        }
        if let Some(why) = password::check_new(&b.new_password) {
            return Err(DomainError::invalid("/new_password", "weak_password", why).into());
        }
        let hash = app.hasher.hash(b.new_password).await;
        users::set_password(&app.writer, user_ctx(req, &p), p.user, hash, Some(p.session)).await?;
        Ok(NoContent::Done)
    }
}
