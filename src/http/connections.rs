//! `/v1/oauth` and `/v1/connections`: OAuth providers (templates filled in with an app's client
//! credentials), authorizations through the provider and back to the callback, and the
//! connections they make. Tokens and client secrets are never answered.

use std::collections::BTreeMap;

use poem::Request;
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::problem::Problem;
use super::{ApiTags, UserAuth, parse_id, parse_if_match, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::DomainError;
use crate::domain::connections::{
    self, ClientAuth, Connection, Endpoints, GENERIC_OIDC, Grant, Owner, Provider, ProviderFields, Status, Template,
};
use crate::domain::policy::Permission;
use crate::ids::rfc3339;
use crate::oauth::OAuthError;
use crate::tenancy::OrgScope;

crate::problems!(OAuthReadErrors: 400, 401, 403, 404, 422);
crate::problems!(OAuthWriteErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422, 502);
crate::problems!(CallbackErrors: 400, 404, 409, 502, 507);

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "OAuthClientAuth", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthView {
    /// HTTP Basic with the client id and secret.
    Basic,
    /// Client id and secret in the form.
    Post,
}

mirror_enum!(ClientAuthView <=> ClientAuth { Basic, Post });

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "OAuthGrant", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum GrantView {
    /// A person signs in at the provider and consents (PKCE S256).
    AuthorizationCode,
    /// The app's own credentials, no person.
    ClientCredentials,
}

mirror_enum!(GrantView <=> Grant { AuthorizationCode, ClientCredentials });

/// A provider template of the catalog shipped in the server.
#[derive(Object, Debug)]
#[oai(rename = "OAuthTemplate")]
pub struct TemplateView {
    /// What `template` names when adding a provider.
    pub key: String,
    pub name: String,
    /// Endpoints, with `{placeholders}` for `params`.
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub pkce: bool,
    pub client_auth: ClientAuthView,
    pub grant: GrantView,
    /// Placeholders to fill in (`params` when adding a provider).
    pub params: Vec<String>,
    pub authorize_params: BTreeMap<String, String>,
    /// What differs from the standard at this provider.
    pub quirks: String,
}

#[derive(Object, Debug)]
#[oai(rename = "OAuthTemplateList")]
pub struct TemplateList {
    /// The redirect URI to register with a provider.
    pub redirect_uri: String,
    pub items: Vec<TemplateView>,
}

/// A provider to add.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "OAuthProviderInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewProviderBody {
    /// A template's key (`GET /v1/oauth/templates`).
    pub template: String,
    /// Default: the template's name.
    pub name: Option<String>,
    /// The template's placeholders (`{"tenant": "contoso.onmicrosoft.com"}`).
    pub params: Option<BTreeMap<String, String>>,
    /// The client id of the app registered at the provider.
    pub client_id: String,
    /// Its secret (sealed; never answered). Absent: a public client.
    #[oai(write_only)]
    pub client_secret: Option<String>,
    /// For `generic_oidc`: the issuer whose discovery document names the endpoints.
    pub issuer: Option<String>,
    /// For `custom` (and to override what discovery found for `generic_oidc`).
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    /// Scopes asked for when a connection names none (default: the template's).
    pub scopes: Option<Vec<String>>,
    /// Added to the authorization URL (default: the template's).
    pub authorize_params: Option<BTreeMap<String, String>>,
    /// For `custom` and `generic_oidc` (default `authorization_code`); the catalog's templates
    /// say their own.
    pub grant: Option<GrantView>,
}

/// A change to a provider (absent fields are unchanged).
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "OAuthProviderPatch", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PatchProviderBody {
    pub name: Option<String>,
    pub client_id: Option<String>,
    /// A new secret (sealed; never answered).
    #[oai(write_only)]
    pub client_secret: Option<String>,
    /// True: no secret any more (a public client).
    pub remove_client_secret: Option<bool>,
    pub scopes: Option<Vec<String>>,
}

/// A provider: never its client secret.
#[derive(Object, Debug)]
#[oai(rename = "OAuthProvider")]
pub struct ProviderView {
    pub id: String,
    pub name: String,
    pub template: String,
    pub client_id: String,
    pub has_client_secret: bool,
    pub authorize_url: Option<String>,
    pub token_url: String,
    pub revocation_url: Option<String>,
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
    pub pkce: bool,
    pub client_auth: ClientAuthView,
    pub grant: GrantView,
    pub authorize_params: BTreeMap<String, String>,
    /// The redirect URI to register with the provider.
    pub redirect_uri: String,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "OAuthProviderList")]
pub struct ProviderList {
    pub items: Vec<ProviderView>,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "ConnectionOwner", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum OwnerView {
    /// The organization's (admins make them; a service can call with one).
    Org,
    /// The caller's own account.
    User,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "ConnectionStatus", rename_all = "snake_case")]
pub enum StatusView {
    Active,
    /// The provider refused the refresh token: connect again.
    NeedsReauth,
}

mirror_enum!(StatusView <=> Status { Active, NeedsReauth });

/// An authorization to start.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ConnectionAuthorizationInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeBody {
    pub provider_id: String,
    /// Default `user`; `org` needs `connections.manage`.
    pub owner: Option<OwnerView>,
    /// Default: the provider's.
    pub scopes: Option<Vec<String>>,
    /// A path on this server the browser is sent to when done (with `connection_id`, or
    /// `error`, added to its query). Absent: the callback answers the connection as JSON.
    pub return_to: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "ConnectionAuthorization")]
pub struct AuthorizationView {
    /// Send the person's browser here.
    pub authorization_url: String,
    /// Where the provider sends them back.
    pub redirect_uri: String,
    /// The authorization must be finished by then.
    pub expires_at: String,
}

#[derive(ApiResponse)]
pub enum AuthorizationStarted {
    #[oai(status = 201)]
    Started(Json<AuthorizationView>),
}

/// A client-credentials connection to make.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ConnectionInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewConnectionBody {
    pub provider_id: String,
    /// Default: the provider's.
    pub scopes: Option<Vec<String>>,
}

/// A connection: never its tokens.
#[derive(Object, Debug)]
#[oai(rename = "Connection")]
pub struct ConnectionView {
    pub id: String,
    pub provider_id: String,
    pub owner: OwnerView,
    /// For `owner: user`: whose.
    pub user_id: Option<String>,
    pub status: StatusView,
    pub requested_scopes: Vec<String>,
    pub granted_scopes: Vec<String>,
    /// When the current access token expires (absent: the provider did not say).
    pub expires_at: Option<String>,
    /// Whether a refresh token is held.
    pub refreshable: bool,
    /// How many tokens it has had (1 when made, one more per refresh).
    pub generation: u64,
    /// Why the last refresh failed.
    pub last_error: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub refreshed_at: Option<String>,
    pub version: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "ConnectionList")]
pub struct ConnectionList {
    pub items: Vec<ConnectionView>,
}

#[derive(ApiResponse)]
pub enum ConnectionCreated {
    #[oai(status = 201)]
    Created(Json<ConnectionView>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
#[allow(clippy::large_enum_variant)] // one answer per request, moved once
pub enum CallbackAnswer {
    /// The connection made (no `return_to` was given).
    #[oai(status = 200)]
    Connected(Json<ConnectionView>),
    /// Back to the `return_to` path, with `connection_id` or `error` in its query.
    #[oai(status = 303)]
    Redirect(#[oai(header = "Location")] String),
}

fn template_view(t: &Template) -> TemplateView {
    TemplateView {
        key: t.key.clone(),
        name: t.name.clone(),
        authorize_url: t.authorize_url.clone(),
        token_url: t.token_url.clone(),
        revocation_url: t.revocation_url.clone(),
        scopes: t.scopes.clone(),
        scope_separator: t.scope_separator.clone(),
        pkce: t.pkce,
        client_auth: t.client_auth.into(),
        grant: t.grant.into(),
        params: t.params.clone(),
        authorize_params: t.authorize_params.clone(),
        quirks: t.quirks.clone(),
    }
}

fn provider_view(app: &App, p: Provider) -> ProviderView {
    ProviderView {
        id: p.id.to_string(),
        name: p.name,
        template: p.template,
        client_id: p.client_id,
        has_client_secret: p.client_secret.is_some(),
        authorize_url: p.authorize_url,
        token_url: p.token_url,
        revocation_url: p.revocation_url,
        issuer: p.issuer,
        scopes: p.scopes,
        pkce: p.pkce,
        client_auth: p.client_auth.into(),
        grant: p.grant.into(),
        authorize_params: p.authorize_params,
        redirect_uri: app.oauth.redirect_uri(),
        created_by: p.created_by.to_string(),
        created_at: rfc3339(p.created_at_ms),
        updated_at: rfc3339(p.updated_at_ms),
        version: p.version,
    }
}

fn view(c: Connection) -> ConnectionView {
    let (owner, user_id) = match c.owner {
        Owner::Org => (OwnerView::Org, None),
        Owner::User { id } => (OwnerView::User, Some(id.to_string())),
    };
    ConnectionView {
        id: c.id.to_string(),
        provider_id: c.provider_id.to_string(),
        owner,
        user_id,
        status: c.status.into(),
        requested_scopes: c.requested_scopes,
        granted_scopes: c.granted_scopes,
        expires_at: c.expires_at_ms.map(rfc3339),
        refreshable: c.refreshable,
        generation: c.generation,
        last_error: c.last_error,
        created_by: c.created_by.to_string(),
        created_at: rfc3339(c.created_at_ms),
        updated_at: rfc3339(c.updated_at_ms),
        refreshed_at: c.refreshed_at_ms.map(rfc3339),
        version: c.version,
    }
}

/// The caller and the provider (404 unless it is in the caller's organization), then the
/// permission.
async fn provider_for(
    app: &App,
    auth: &UserAuth,
    id: &str,
    needs: Permission,
) -> Result<(Principal, Provider), Problem> {
    let p = auth.check(app).await?;
    let provider = connections::get_provider(&app.store, OrgScope::member(&p), parse_id(id, "OAuth provider")?)?;
    p.require(needs)?;
    Ok((p, provider))
}

/// The caller and a connection they may act on: their own, or the organization's with
/// `connections.manage` to change it (`connections.use` to read it). Another user's is 404.
async fn connection_for(
    app: &App,
    auth: &UserAuth,
    id: &str,
    change: bool,
) -> Result<(Principal, Connection), Problem> {
    let p = auth.check(app).await?;
    let c = connections::get(&app.store, OrgScope::member(&p), parse_id(id, "connection")?)?;
    if !c.visible_to(p.user) {
        return Err(Problem::not_found("connection"));
    }
    p.require(Permission::ConnectionsUse)?;
    if change && c.owner == Owner::Org {
        p.require(Permission::ConnectionsManage)?;
    }
    Ok((p, c))
}

/// A `return_to` is a path on this server: not another origin, not a scheme-relative URL.
fn check_return_to(r: Option<&str>) -> Result<(), DomainError> {
    match r {
        Some(r) if !r.starts_with('/') || r.starts_with("//") || r.contains(['\\', '\r', '\n']) || r.len() > 2000 => {
            Err(DomainError::invalid("/return_to", "invalid_return_to", "a path on this server, starting with one /"))
        }
        _ => Ok(()),
    }
}

fn with_query(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let value: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{path}{sep}{key}={value}")
}

#[derive(Default)]
pub struct ConnectionsApi;

#[OpenApi(tag = "ApiTags::Connections")]
impl ConnectionsApi {
    /// List the provider templates
    ///
    /// The catalog shipped in the server, and the redirect URI to register at a provider.
    ///
    /// Permission: `connections.use`.
    #[oai(path = "/v1/oauth/templates", method = "get", operation_id = "listOAuthTemplates")]
    async fn templates(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<TemplateList>, OAuthReadErrors> {
        auth.require(&app, Permission::ConnectionsUse).await?;
        Ok(Json(TemplateList {
            redirect_uri: app.oauth.redirect_uri(),
            items: connections::templates().iter().map(template_view).collect(),
        }))
    }

    /// Add an OAuth provider
    ///
    /// A template filled in with the client credentials of the app registered at the provider
    /// (its redirect URI: `redirect_uri` of `GET /v1/oauth/templates`). For `generic_oidc`
    /// the issuer's discovery document is read now. Every endpoint is held to the server's
    /// egress policy.
    ///
    /// Permission: `connections.manage`.
    #[oai(path = "/v1/oauth/providers", method = "post", operation_id = "createOAuthProvider")]
    async fn create_provider(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<NewProviderBody>,
    ) -> Result<ProviderCreated, OAuthWriteErrors> {
        let p = auth.require(&app, Permission::ConnectionsManage).await?;
        let b = body.0;
        let mut endpoints =
            Endpoints { authorize_url: b.authorize_url, token_url: b.token_url, revocation_url: b.revocation_url };
        if b.template == GENERIC_OIDC {
            let Some(issuer) = &b.issuer else {
                return Err(
                    DomainError::invalid("/issuer", "required", "generic_oidc reads the issuer's discovery").into()
                );
            };
            let mut issuer_errors = Vec::new();
            let ok = reqwest::Url::parse(issuer)
                .map_err(|e| e.to_string())
                .and_then(|u| crate::egress::check_url(app.egress.policy(), &u).map_err(|e| e.to_string()));
            if let Err(why) = ok {
                issuer_errors.push(crate::domain::FieldError::new("/issuer", "address_refused", why));
            }
            crate::domain::check(issuer_errors)?;
            let found = app.oauth.discover(issuer).await?;
            endpoints = Endpoints {
                authorize_url: endpoints.authorize_url.or(found.authorize_url),
                token_url: endpoints.token_url.or(found.token_url),
                revocation_url: endpoints.revocation_url.or(found.revocation_url),
            };
        }
        let fields = ProviderFields {
            name: b.name,
            template: b.template,
            params: b.params.unwrap_or_default(),
            client_id: Some(b.client_id),
            client_secret: Some(b.client_secret),
            issuer: b.issuer,
            endpoints,
            scopes: b.scopes,
            authorize_params: b.authorize_params,
            grant: b.grant.map(Grant::from),
            expected_version: None,
        };
        let max = app.config.oauth.providers_per_org_max;
        let provider = connections::create_provider(
            &app.writer,
            &app.vault(),
            app.egress.policy(),
            user_ctx(req, &p),
            p.user,
            fields,
            max,
        )
        .await?;
        let location = format!("/v1/oauth/providers/{}", provider.id);
        Ok(ProviderCreated::Created(Json(provider_view(&app, provider)), location))
    }

    /// List OAuth providers
    ///
    /// Permission: `connections.use`.
    #[oai(path = "/v1/oauth/providers", method = "get", operation_id = "listOAuthProviders")]
    async fn list_providers(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<ProviderList>, OAuthReadErrors> {
        let p = auth.require(&app, Permission::ConnectionsUse).await?;
        let max = app.config.oauth.providers_per_org_max;
        let all = connections::list_providers(&app.store, OrgScope::member(&p), max).await?;
        Ok(Json(ProviderList { items: all.into_iter().map(|x| provider_view(&app, x)).collect() }))
    }

    /// Get an OAuth provider
    ///
    /// Permission: `connections.use`.
    #[oai(path = "/v1/oauth/providers/:provider_id", method = "get", operation_id = "getOAuthProvider")]
    async fn get_provider(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        provider_id: Path<String>,
    ) -> Result<Json<ProviderView>, OAuthReadErrors> {
        let (_, provider) = provider_for(&app, &auth, &provider_id.0, Permission::ConnectionsUse).await?;
        Ok(Json(provider_view(&app, provider)))
    }

    /// Change an OAuth provider
    ///
    /// Its name, client id, client secret (a rotation at the provider) or default scopes.
    ///
    /// Permission: `connections.manage`.
    #[oai(path = "/v1/oauth/providers/:provider_id", method = "patch", operation_id = "updateOAuthProvider")]
    async fn update_provider(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        provider_id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<PatchProviderBody>,
    ) -> Result<Json<ProviderView>, OAuthWriteErrors> {
        let (p, provider) = provider_for(&app, &auth, &provider_id.0, Permission::ConnectionsManage).await?;
        let b = body.0;
        let client_secret = match (b.client_secret, b.remove_client_secret.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(DomainError::invalid(
                    "/remove_client_secret",
                    "conflicting_fields",
                    "give a new secret or remove it, not both",
                )
                .into());
            }
            (Some(s), false) => Some(Some(s)),
            (None, true) => Some(None),
            (None, false) => None,
        };
        let fields = ProviderFields {
            name: b.name,
            client_id: b.client_id,
            client_secret,
            scopes: b.scopes,
            expected_version: parse_if_match(if_match.0.as_deref())?,
            ..ProviderFields::default()
        };
        let updated =
            connections::update_provider(&app.writer, &app.vault(), user_ctx(req, &p), provider.id, fields).await?;
        Ok(Json(provider_view(&app, updated)))
    }

    /// Remove an OAuth provider
    ///
    /// Refused (409 `provider_in_use`) while a connection uses it.
    ///
    /// Permission: `connections.manage`.
    #[oai(path = "/v1/oauth/providers/:provider_id", method = "delete", operation_id = "deleteOAuthProvider")]
    async fn delete_provider(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        provider_id: Path<String>,
    ) -> Result<NoContent, OAuthWriteErrors> {
        let (p, provider) = provider_for(&app, &auth, &provider_id.0, Permission::ConnectionsManage).await?;
        connections::delete_provider(&app.writer, user_ctx(req, &p), provider.id).await?;
        Ok(NoContent::Done)
    }

    /// Start connecting an account
    ///
    /// Answers the provider's authorization URL (PKCE S256, a single-use `state` bound to the
    /// organization, the caller, the provider and the redirect URI, good for
    /// `oauth.pending_ttl_s`). Send the person's browser there; the provider sends it back to
    /// `GET /v1/oauth/callback`, which makes the connection.
    ///
    /// Permission: `connections.use`; `connections.manage` for the organization's.
    #[oai(path = "/v1/connections/authorizations", method = "post", operation_id = "startConnectionAuthorization")]
    async fn authorize(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<AuthorizeBody>,
    ) -> Result<AuthorizationStarted, OAuthWriteErrors> {
        let b = body.0;
        let (p, provider) = provider_for(&app, &auth, &b.provider_id, Permission::ConnectionsUse).await?;
        let owner = match b.owner.unwrap_or(OwnerView::User) {
            OwnerView::Org => {
                p.require(Permission::ConnectionsManage)?;
                Owner::Org
            }
            OwnerView::User => Owner::User { id: p.user },
        };
        check_return_to(b.return_to.as_deref())?;
        let scopes = connections::scopes_for(&provider, b.scopes)?;
        let (url, expires) =
            app.oauth.authorize(user_ctx(req, &p), p.user, &provider, owner, scopes, b.return_to).await?;
        Ok(AuthorizationStarted::Started(Json(AuthorizationView {
            authorization_url: url,
            redirect_uri: app.oauth.redirect_uri(),
            expires_at: rfc3339(expires),
        })))
    }

    /// Finish connecting an account
    ///
    /// Where providers send the browser back. The `state` is the credential: used once, within
    /// its time; the code is exchanged with its PKCE verifier. An `iss` (RFC 9207) must name
    /// the provider's issuer. A provider's error (`error`,
    /// `error_description`) is answered as a problem, never swallowed.
    ///
    /// No bearer token: the `state` names the organization and the user who started it.
    #[oai(path = "/v1/oauth/callback", method = "get", operation_id = "oauthCallback")]
    async fn callback(
        &self,
        app: Data<&App>,
        state: Query<Option<String>>,
        code: Query<Option<String>>,
        error: Query<Option<String>>,
        error_description: Query<Option<String>>,
        /// The issuer that answered (RFC 9207), checked against the provider's.
        iss: Query<Option<String>>,
    ) -> Result<CallbackAnswer, CallbackErrors> {
        let state = state.0.ok_or(OAuthError::InvalidState)?;
        if let Some(e) = error.0 {
            // The state is spent either way, so a denied authorization cannot be replayed.
            let taken = connections::take(&app.writer, &app.vault(), &state, "oauth:callback").await?;
            let Some((_, pending, _)) = taken else { return Err(OAuthError::InvalidState.into()) };
            let code: String = e.chars().filter(char::is_ascii_graphic).take(100).collect();
            let detail = error_description.0.map(|d| d.chars().take(500).collect::<String>());
            if let Some(r) = pending.return_to {
                return Ok(CallbackAnswer::Redirect(with_query(&r, "error", &code)));
            }
            let shown = detail.map_or_else(|| code.clone(), |d| format!("{code}: {d}"));
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "authorization_denied",
                format!("the provider did not authorize: {shown}"),
            )
            .into());
        }
        let Some(code) = code.0 else {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_callback", "neither a code nor an error").into());
        };
        let (_, c, return_to) = app.oauth.finish(&state, &code, iss.0.as_deref()).await?;
        Ok(match return_to {
            Some(r) => CallbackAnswer::Redirect(with_query(&r, "connection_id", &c.id.to_string())),
            None => CallbackAnswer::Connected(Json(view(c))),
        })
    }

    /// Connect with client credentials
    ///
    /// For a provider whose grant is `client_credentials`: the organization's connection, its
    /// token fetched now and again before it expires.
    ///
    /// Permission: `connections.manage`.
    #[oai(path = "/v1/connections", method = "post", operation_id = "createConnection")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<NewConnectionBody>,
    ) -> Result<ConnectionCreated, OAuthWriteErrors> {
        let b = body.0;
        let (p, provider) = provider_for(&app, &auth, &b.provider_id, Permission::ConnectionsManage).await?;
        let scopes = connections::scopes_for(&provider, b.scopes)?;
        let c = app.oauth.connect_client(user_ctx(req, &p), p.user, &provider, scopes).await?;
        let location = format!("/v1/connections/{}", c.id);
        Ok(ConnectionCreated::Created(Json(view(c)), location))
    }

    /// List connections
    ///
    /// The organization's, and the caller's own.
    ///
    /// Permission: `connections.use`.
    #[oai(path = "/v1/connections", method = "get", operation_id = "listConnections")]
    async fn list(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<ConnectionList>, OAuthReadErrors> {
        let p = auth.require(&app, Permission::ConnectionsUse).await?;
        let max = app.config.oauth.connections_per_org_max;
        let all = connections::list(&app.store, OrgScope::member(&p), p.user, max).await?;
        Ok(Json(ConnectionList { items: all.into_iter().map(view).collect() }))
    }

    /// Get a connection
    ///
    /// Another user's own connection is not found.
    ///
    /// Permission: `connections.use`.
    #[oai(path = "/v1/connections/:connection_id", method = "get", operation_id = "getConnection")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        connection_id: Path<String>,
    ) -> Result<Json<ConnectionView>, OAuthReadErrors> {
        let (_, c) = connection_for(&app, &auth, &connection_id.0, false).await?;
        Ok(Json(view(c)))
    }

    /// Refresh a connection's token now
    ///
    /// Tokens are refreshed ahead of their expiry when used; this does it at once (one refresh
    /// at a time per connection). A refusal by the provider marks the connection
    /// `needs_reauth` (409 `connection_needs_reauth`).
    ///
    /// Permission: `connections.use` for one's own; `connections.manage` for the organization's.
    #[oai(path = "/v1/connections/:connection_id/refresh", method = "post", operation_id = "refreshConnection")]
    async fn refresh(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        connection_id: Path<String>,
    ) -> Result<Json<ConnectionView>, OAuthWriteErrors> {
        let (p, c) = connection_for(&app, &auth, &connection_id.0, true).await?;
        Ok(Json(view(app.oauth.refresh(OrgScope::member(&p), c.id).await?)))
    }

    /// Remove a connection
    ///
    /// Its tokens are revoked at the provider first (RFC 7009) when it has a revocation
    /// endpoint; the audit record says whether the provider took it. Refused (409
    /// `connection_in_use`) while a service calls with it.
    ///
    /// Permission: `connections.use` for one's own; `connections.manage` for the organization's.
    #[oai(path = "/v1/connections/:connection_id", method = "delete", operation_id = "deleteConnection")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        connection_id: Path<String>,
    ) -> Result<NoContent, OAuthWriteErrors> {
        let (p, c) = connection_for(&app, &auth, &connection_id.0, true).await?;
        app.oauth.delete(user_ctx(req, &p), &c).await?;
        Ok(NoContent::Done)
    }
}

#[derive(ApiResponse)]
pub enum ProviderCreated {
    #[oai(status = 201)]
    Created(Json<ProviderView>, #[oai(header = "Location")] String),
}
