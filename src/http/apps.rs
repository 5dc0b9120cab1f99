//! `/v1/oauth-apps`: the organization's OAuth apps (Outpost as their authorization server) and
//! its policy for them. Client secrets are answered once, when made. The protocol endpoints
//! themselves (`/oauth/...`) are `oauth_server`'s.

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::{ApiTags, UserAuth, parse_id, parse_if_match, user_ctx};
use crate::app::App;
use crate::domain::apps::{self, AppFields, AppsPolicy, OAuthApp};
use crate::domain::policy::Permission;
use crate::ids::rfc3339;
use crate::tenancy::OrgScope;

crate::problems!(AppsReadErrors: 400, 401, 403, 404, 422);
crate::problems!(AppsWriteErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422);

/// An app to register.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "OAuthAppInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewAppBody {
    pub name: String,
    /// Where users are sent back (matched exactly): https, or http on loopback.
    pub redirect_uris: Vec<String>,
    /// The permissions the app may ask for (`GET /v1/me/permissions` names them).
    pub scopes: Vec<String>,
    /// A public client (a browser or native app) has no secret; PKCE protects its codes.
    /// Default: false (a client secret is made and answered once).
    pub public: Option<bool>,
}

/// Changes to an app: absent fields stay as they are.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "OAuthAppPatch", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AppPatchBody {
    pub name: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    /// The version last seen (or `If-Match`).
    pub version: Option<u64>,
}

/// An app: never its client secret.
#[derive(Object, Debug)]
#[oai(rename = "OAuthApp")]
pub struct AppView {
    pub id: String,
    pub name: String,
    pub client_id: String,
    /// Whether it authenticates with a client secret.
    pub confidential: bool,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    /// Registered by the app itself (RFC 7591).
    pub dynamic: bool,
    /// The organization's issuer; its metadata (RFC 8414) is at
    /// `/.well-known/oauth-authorization-server/orgs/{slug}`.
    pub issuer: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

/// A new app, with its client secret: shown only this once.
#[derive(Object, Debug)]
#[oai(rename = "OAuthAppWithSecret")]
pub struct AppWithSecret {
    pub app: AppView,
    /// Absent for a public client.
    pub client_secret: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "OAuthAppList")]
pub struct AppList {
    pub items: Vec<AppView>,
}

#[derive(ApiResponse)]
pub enum AppCreated {
    #[oai(status = 201)]
    Created(Json<AppWithSecret>, #[oai(header = "Location")] String),
}

/// The organization's policy for apps.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "OAuthAppsPolicy", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    /// Apps may register themselves (RFC 7591) at `/oauth/register/{slug}`, as MCP clients do.
    pub dynamic_registration: bool,
}

fn view(app: &App, slug: &str, a: OAuthApp, org: crate::ids::Id) -> AppView {
    AppView {
        client_id: apps::client_id(org, a.id),
        id: a.id.to_string(),
        name: a.name,
        confidential: a.secret_sha256.is_some(),
        redirect_uris: a.redirect_uris,
        scopes: a.scopes,
        dynamic: a.dynamic,
        issuer: super::oauth_server::issuer(app, slug),
        created_at: rfc3339(a.created_at_ms),
        updated_at: rfc3339(a.updated_at_ms),
        version: a.version,
    }
}

fn slug_of(app: &App, scope: OrgScope) -> String {
    crate::domain::orgs::record(&app.store, scope).ok().flatten().map(|o| o.slug).unwrap_or_default()
}

#[derive(Default)]
pub struct AppsApi;

#[OpenApi(tag = "ApiTags::Apps")]
impl AppsApi {
    /// Register an OAuth app
    ///
    /// An app that acts in the organization on a user's behalf, with the user's consent, never
    /// beyond the user's own role. A confidential app's client secret is answered only now.
    ///
    /// Permission: `apps.manage`.
    #[oai(path = "/v1/oauth-apps", method = "post", operation_id = "createOAuthApp")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<NewAppBody>,
    ) -> Result<AppCreated, AppsWriteErrors> {
        let p = auth.require(&app, Permission::AppsManage).await?;
        let b = body.0;
        let fields = AppFields {
            name: Some(b.name),
            redirect_uris: Some(b.redirect_uris),
            scopes: Some(b.scopes),
            confidential: !b.public.unwrap_or(false),
            expected_version: None,
        };
        let max = app.config.oauth.apps_per_org_max;
        let (made, secret) = apps::create(&app.writer, user_ctx(req, &p), Some(p.user), fields, max).await?;
        let location = format!("/v1/oauth-apps/{}", made.id);
        let slug = slug_of(&app, OrgScope::member(&p));
        Ok(AppCreated::Created(
            Json(AppWithSecret { app: view(&app, &slug, made, p.org), client_secret: secret }),
            location,
        ))
    }

    /// List the OAuth apps
    ///
    /// Permission: `apps.manage`.
    #[oai(path = "/v1/oauth-apps", method = "get", operation_id = "listOAuthApps")]
    async fn list(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<AppList>, AppsReadErrors> {
        let p = auth.require(&app, Permission::AppsManage).await?;
        let items = apps::list(&app.store, OrgScope::member(&p), app.config.oauth.apps_per_org_max).await?;
        let slug = slug_of(&app, OrgScope::member(&p));
        Ok(Json(AppList { items: items.into_iter().map(|a| view(&app, &slug, a, p.org)).collect() }))
    }

    /// Get an OAuth app
    ///
    /// Permission: `apps.manage`.
    #[oai(path = "/v1/oauth-apps/:app_id", method = "get", operation_id = "getOAuthApp")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        app_id: Path<String>,
    ) -> Result<Json<AppView>, AppsReadErrors> {
        let p = auth.check(&app).await?;
        let a = apps::get(&app.store, OrgScope::member(&p), parse_id(&app_id.0, "OAuth app")?)?;
        p.require(Permission::AppsManage)?;
        Ok(Json(view(&app, &slug_of(&app, OrgScope::member(&p)), a, p.org)))
    }

    /// Change an OAuth app
    ///
    /// Takes `If-Match` (or `version`). Narrower scopes apply to new grants.
    ///
    /// Permission: `apps.manage`.
    #[oai(path = "/v1/oauth-apps/:app_id", method = "patch", operation_id = "updateOAuthApp")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        app_id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<AppPatchBody>,
    ) -> Result<Json<AppView>, AppsWriteErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&app_id.0, "OAuth app")?;
        apps::get(&app.store, OrgScope::member(&p), id)?;
        p.require(Permission::AppsManage)?;
        let b = body.0;
        let fields = AppFields {
            name: b.name,
            redirect_uris: b.redirect_uris,
            scopes: b.scopes,
            confidential: false,
            expected_version: parse_if_match(if_match.0.as_deref())?.or(b.version),
        };
        let a = apps::update(&app.writer, user_ctx(req, &p), id, fields).await?;
        Ok(Json(view(&app, &slug_of(&app, OrgScope::member(&p)), a, p.org)))
    }

    /// Remove an OAuth app
    ///
    /// Every session it holds ends.
    ///
    /// Permission: `apps.manage`.
    #[oai(path = "/v1/oauth-apps/:app_id", method = "delete", operation_id = "deleteOAuthApp")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        app_id: Path<String>,
    ) -> Result<NoContent, AppsWriteErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&app_id.0, "OAuth app")?;
        apps::get(&app.store, OrgScope::member(&p), id)?;
        p.require(Permission::AppsManage)?;
        apps::delete(&app.writer, user_ctx(req, &p), id).await?;
        Ok(NoContent::Done)
    }

    /// Get the policy for OAuth apps
    ///
    /// Permission: `apps.manage`.
    #[oai(path = "/v1/oauth-apps-policy", method = "get", operation_id = "getOAuthAppsPolicy")]
    async fn policy(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<PolicyView>, AppsReadErrors> {
        let p = auth.require(&app, Permission::AppsManage).await?;
        let policy = apps::policy(&app.store, OrgScope::member(&p))?;
        Ok(Json(PolicyView { dynamic_registration: policy.dynamic_registration }))
    }

    /// Set the policy for OAuth apps
    ///
    /// Permission: `apps.manage`.
    #[oai(path = "/v1/oauth-apps-policy", method = "put", operation_id = "setOAuthAppsPolicy")]
    async fn set_policy(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<PolicyView>,
    ) -> Result<Json<PolicyView>, AppsWriteErrors> {
        let p = auth.require(&app, Permission::AppsManage).await?;
        let set = apps::set_policy(
            &app.writer,
            user_ctx(req, &p),
            AppsPolicy { dynamic_registration: body.0.dynamic_registration },
        )
        .await?;
        Ok(Json(PolicyView { dynamic_registration: set.dynamic_registration }))
    }
}
