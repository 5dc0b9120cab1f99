//! `/v1/sso` and `/v1/auth/sso`: an organization's identity providers and its single sign-on
//! policy (admins), and signing in through them (anyone): the options of an organization, the
//! start, the provider's callback that ends in Outpost's own tokens, and logging out there too.
//! Client secrets are never answered.

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::{NoContent, TokenPair, token_pair};
use super::body::JsonBody;
use super::problem::Problem;
use super::users::RoleView;
use super::{ApiTags, UserAuth, origin, parse_id, parse_if_match, user_ctx};
use crate::app::App;
use crate::domain::DomainError;
use crate::domain::policy::{Permission, Role};
use crate::domain::sessions;
use crate::domain::sso::{self, IdentityProvider, IdpFields, RoleRule};
use crate::ids::rfc3339;
use crate::oauth::OAuthError;
use crate::store::writer::MutationCtx;
use crate::tenancy::OrgScope;

crate::problems!(SsoReadErrors: 400, 401, 403, 404, 422);
crate::problems!(SsoOptionsErrors: 400, 404, 422);
crate::problems!(SsoWriteErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422, 502);
crate::problems!(SsoStartErrors: 400, 404, 409, 413, 415, 422, 502);
crate::problems!(SsoCallbackErrors: 400, 401, 404, 502, 507);
crate::problems!(SsoLogoutErrors: 401, 403, 404, 502);
crate::problems!(BackchannelErrors: 400, 404, 413, 415, 422, 502, 507);

/// A value of the role claim and the role it gives.
#[derive(Object, Debug, Clone, Deserialize)]
#[oai(rename = "SsoRoleRule", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RoleRuleView {
    /// Matches when the claim is this string, or an array holding it.
    pub value: String,
    /// At most `admin`.
    pub role: RoleView,
}

/// An identity provider to add.
#[derive(Object, Deserialize)]
#[oai(rename = "SsoProviderInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewIdpBody {
    /// Shown on the sign-in page. Default: "Single sign-on".
    pub name: Option<String>,
    /// The issuer URL; its discovery document (`/.well-known/openid-configuration`) is read now.
    pub issuer: String,
    pub client_id: String,
    /// Never answered. Absent: a public client.
    pub client_secret: Option<String>,
    /// Default: `openid email profile`; must hold `openid`.
    pub scopes: Option<Vec<String>>,
    /// The `id_token` signature algorithms accepted. Default: RS256, PS256, ES256, EdDSA.
    pub algorithms: Option<Vec<String>>,
    /// Make an account at a first sign-in that links to none. Default: false.
    pub jit: Option<bool>,
    /// The role when no rule matches. Default: `member`.
    pub default_role: Option<RoleView>,
    /// Only people a rule matches may sign in (no default role). Default: false.
    pub rule_required: Option<bool>,
    /// The claim the rules look at (e.g. `groups`); when set, the role follows it at every
    /// sign-in (owners excepted).
    pub role_claim: Option<String>,
    pub role_rules: Option<Vec<RoleRuleView>>,
    /// Default: true.
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for NewIdpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewIdpBody").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

/// Changes to an identity provider: absent fields stay as they are.
#[derive(Object, Deserialize)]
#[oai(rename = "SsoProviderPatch", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct IdpPatchBody {
    pub name: Option<String>,
    pub client_id: Option<String>,
    /// A new secret (never answered).
    pub client_secret: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub jit: Option<bool>,
    pub default_role: Option<RoleView>,
    /// Only people a rule matches may sign in (no default role); false with `default_role`
    /// sets one again.
    pub rule_required: Option<bool>,
    pub role_claim: Option<String>,
    pub role_rules: Option<Vec<RoleRuleView>>,
    pub enabled: Option<bool>,
    /// The version last seen (or `If-Match`).
    pub version: Option<u64>,
}

impl std::fmt::Debug for IdpPatchBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpPatchBody").field("name", &self.name).finish_non_exhaustive()
    }
}

/// An identity provider: never its client secret.
#[derive(Object, Debug)]
#[oai(rename = "SsoProvider")]
pub struct IdpView {
    pub id: String,
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub has_client_secret: bool,
    pub scopes: Vec<String>,
    pub algorithms: Vec<String>,
    pub jit: bool,
    pub default_role: Option<RoleView>,
    pub role_claim: Option<String>,
    pub role_rules: Vec<RoleRuleView>,
    pub enabled: bool,
    /// The redirect URI to register at the provider.
    pub redirect_uri: String,
    /// Where the provider posts back-channel logouts (register it there, if it supports them).
    pub backchannel_logout_uri: String,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "SsoProviderList")]
pub struct IdpList {
    pub items: Vec<IdpView>,
}

#[derive(ApiResponse)]
pub enum IdpCreated {
    #[oai(status = 201)]
    Created(Json<IdpView>, #[oai(header = "Location")] String),
}

/// The organization's single sign-on policy.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "SsoPolicy", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    /// Passwords are refused to the organization's members (operators keep their keys), and
    /// sessions begun with a password no longer refresh.
    pub required: bool,
}

/// An organization's way in, for a sign-in page.
#[derive(Object, Debug)]
#[oai(rename = "SsoOption")]
pub struct OptionView {
    pub id: String,
    pub name: String,
}

#[derive(Object, Debug)]
#[oai(rename = "SsoOptions")]
pub struct OptionsView {
    /// Whether passwords are refused.
    pub required: bool,
    /// The enabled identity providers.
    pub providers: Vec<OptionView>,
}

/// Starts signing in through an identity provider.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "SsoStartRequest", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// The organization's slug.
    pub org: String,
    /// Which provider; may be left out when the organization has one enabled.
    pub provider_id: Option<String>,
}

/// Where to send the person.
#[derive(Object, Debug)]
#[oai(rename = "SsoStart")]
pub struct StartView {
    /// The provider's authorization URL (PKCE S256, a nonce and a single-use state inside).
    pub authorization_url: String,
    /// When the sign-in stops being good.
    pub expires_at: String,
}

#[derive(ApiResponse)]
pub enum Started {
    #[oai(status = 201)]
    Started(Json<StartView>),
}

/// The session ended here; where to end it at the provider.
#[derive(Object, Debug)]
#[oai(rename = "SsoLogout")]
pub struct LogoutView {
    /// The provider's end-session URL (RP-initiated logout), when the session came through
    /// a provider that has one.
    pub end_session_url: Option<String>,
}

/// A back-channel logout, as identity providers post it.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "SsoBackchannelLogout")]
pub struct BackchannelBody {
    /// A JWT signed by the provider, naming the subject or session that logged out there.
    pub logout_token: String,
}

/// What a back-channel logout ended.
#[derive(Object, Debug)]
#[oai(rename = "SsoBackchannelLogoutDone")]
pub struct BackchannelDone {
    pub sessions_ended: u64,
}

fn rule_views(rules: Vec<RoleRule>) -> Vec<RoleRuleView> {
    rules.into_iter().map(|r| RoleRuleView { value: r.value, role: r.role.into() }).collect()
}

fn rules(given: Option<Vec<RoleRuleView>>) -> Option<Vec<RoleRule>> {
    given.map(|rs| rs.into_iter().map(|r| RoleRule { value: r.value, role: Role::from(r.role) }).collect())
}

fn view(app: &App, org: crate::ids::Id, p: IdentityProvider) -> IdpView {
    IdpView {
        backchannel_logout_uri: app.sso.backchannel_logout_uri(org, p.id),
        id: p.id.to_string(),
        name: p.name,
        issuer: p.issuer,
        client_id: p.client_id,
        has_client_secret: p.client_secret.is_some(),
        scopes: p.scopes,
        algorithms: p.algorithms,
        jit: p.jit,
        default_role: p.default_role.map(RoleView::from),
        role_claim: p.role_claim,
        role_rules: rule_views(p.role_rules),
        enabled: p.enabled,
        redirect_uri: app.sso.redirect_uri(),
        created_by: p.created_by.to_string(),
        created_at: rfc3339(p.created_at_ms),
        updated_at: rfc3339(p.updated_at_ms),
        version: p.version,
    }
}

/// The organization a slug names (active), or 404.
async fn org_of(app: &App, slug: String) -> Result<OrgScope, Problem> {
    sso::entry(&app.store, slug).await?.ok_or_else(|| Problem::not_found("organization"))
}

#[derive(Default)]
pub struct SsoApi;

#[OpenApi(tag = "ApiTags::Sso")]
impl SsoApi {
    /// Add an identity provider
    ///
    /// An OpenID provider the organization's members sign in at. Its discovery document and
    /// keys are read now (held to the server's egress policy). Register `redirect_uri` (in the
    /// answer) with it.
    ///
    /// Permission: `sso.manage`.
    #[oai(path = "/v1/sso/providers", method = "post", operation_id = "createSsoProvider")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<NewIdpBody>,
    ) -> Result<IdpCreated, SsoWriteErrors> {
        let p = auth.require(&app, Permission::SsoManage).await?;
        let b = body.0;
        let fields = IdpFields {
            name: b.name,
            issuer: Some(b.issuer.trim_end_matches('/').to_owned()),
            client_id: Some(b.client_id),
            client_secret: Some(b.client_secret),
            scopes: b.scopes,
            algorithms: b.algorithms,
            jit: b.jit,
            default_role: Some(if b.rule_required == Some(true) {
                None
            } else {
                Some(b.default_role.map_or(Role::Member, Role::from))
            }),
            role_claim: Some(b.role_claim),
            role_rules: rules(b.role_rules),
            enabled: b.enabled,
            expected_version: None,
        };
        // Fields first (a bad one is told without a network call), then the issuer itself.
        if let Some(issuer) = &fields.issuer {
            let parsed = reqwest::Url::parse(issuer)
                .map_err(|_| DomainError::invalid("/issuer", "invalid_url", "an http(s) URL without a query"))?;
            if let Err(e) = crate::egress::check_url(app.egress.policy(), &parsed) {
                return Err(DomainError::invalid("/issuer", "address_refused", e.to_string()).into());
            }
        }
        let issuer = fields.issuer.clone().unwrap_or_default();
        app.sso.discover(&issuer).await?;
        let made = sso::create(
            &app.writer,
            &app.vault(),
            user_ctx(req, &p),
            p.user,
            fields,
            app.config.oauth.identity_providers_per_org_max,
        )
        .await?;
        let location = format!("/v1/sso/providers/{}", made.id);
        Ok(IdpCreated::Created(Json(view(&app, p.org, made)), location))
    }

    /// List the identity providers
    ///
    /// Permission: `sso.manage`.
    #[oai(path = "/v1/sso/providers", method = "get", operation_id = "listSsoProviders")]
    async fn list(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<IdpList>, SsoReadErrors> {
        let p = auth.require(&app, Permission::SsoManage).await?;
        let max = app.config.oauth.identity_providers_per_org_max;
        let items = sso::list(&app.store, OrgScope::member(&p), max).await?;
        Ok(Json(IdpList { items: items.into_iter().map(|i| view(&app, p.org, i)).collect() }))
    }

    /// Get an identity provider
    ///
    /// Permission: `sso.manage`.
    #[oai(path = "/v1/sso/providers/:provider_id", method = "get", operation_id = "getSsoProvider")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        provider_id: Path<String>,
    ) -> Result<Json<IdpView>, SsoReadErrors> {
        let p = auth.check(&app).await?;
        let idp = sso::get(&app.store, OrgScope::member(&p), parse_id(&provider_id.0, "identity provider")?)?;
        p.require(Permission::SsoManage)?;
        Ok(Json(view(&app, p.org, idp)))
    }

    /// Change an identity provider
    ///
    /// Takes `If-Match` (or `version`). The last enabled provider cannot be disabled while SSO
    /// is required.
    ///
    /// Permission: `sso.manage`.
    #[oai(path = "/v1/sso/providers/:provider_id", method = "patch", operation_id = "updateSsoProvider")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        provider_id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<IdpPatchBody>,
    ) -> Result<Json<IdpView>, SsoWriteErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&provider_id.0, "identity provider")?;
        sso::get(&app.store, OrgScope::member(&p), id)?;
        p.require(Permission::SsoManage)?;
        let b = body.0;
        let default_role = match (b.rule_required, b.default_role) {
            (Some(true), _) => Some(None),
            (_, Some(r)) => Some(Some(Role::from(r))),
            _ => None,
        };
        let fields = IdpFields {
            name: b.name,
            issuer: None,
            client_id: b.client_id,
            client_secret: b.client_secret.map(Some),
            scopes: b.scopes,
            algorithms: b.algorithms,
            jit: b.jit,
            default_role,
            role_claim: b.role_claim.map(|c| Some(c).filter(|c| !c.is_empty())),
            role_rules: rules(b.role_rules),
            enabled: b.enabled,
            expected_version: parse_if_match(if_match.0.as_deref())?.or(b.version),
        };
        let idp = sso::update(&app.writer, &app.vault(), user_ctx(req, &p), id, fields).await?;
        app.sso.forget(p.org, id);
        Ok(Json(view(&app, p.org, idp)))
    }

    /// Remove an identity provider
    ///
    /// The accounts it linked stay. Not while it is the last enabled one and SSO is required.
    ///
    /// Permission: `sso.manage`.
    #[oai(path = "/v1/sso/providers/:provider_id", method = "delete", operation_id = "deleteSsoProvider")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        provider_id: Path<String>,
    ) -> Result<NoContent, SsoWriteErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&provider_id.0, "identity provider")?;
        sso::get(&app.store, OrgScope::member(&p), id)?;
        p.require(Permission::SsoManage)?;
        sso::delete(&app.writer, user_ctx(req, &p), id).await?;
        app.sso.forget(p.org, id);
        Ok(NoContent::Done)
    }

    /// Get the single sign-on policy
    ///
    /// Permission: `sso.manage`.
    #[oai(path = "/v1/sso/policy", method = "get", operation_id = "getSsoPolicy")]
    async fn policy(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<PolicyView>, SsoReadErrors> {
        let p = auth.require(&app, Permission::SsoManage).await?;
        let policy = sso::policy(&app.store, OrgScope::member(&p))?;
        Ok(Json(PolicyView { required: policy.required }))
    }

    /// Set the single sign-on policy
    ///
    /// `required` needs an enabled identity provider (409 `no_identity_provider`).
    ///
    /// Permission: `sso.manage`.
    #[oai(path = "/v1/sso/policy", method = "put", operation_id = "setSsoPolicy")]
    async fn set_policy(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<PolicyView>,
    ) -> Result<Json<PolicyView>, SsoWriteErrors> {
        let p = auth.require(&app, Permission::SsoManage).await?;
        let set = sso::set_policy(&app.writer, user_ctx(req, &p), sso::Policy { required: body.0.required }).await?;
        Ok(Json(PolicyView { required: set.required }))
    }

    /// An organization's sign-in options
    ///
    /// Its enabled identity providers and whether passwords are refused. No authentication.
    #[oai(path = "/v1/auth/sso/options", method = "get", operation_id = "listSsoOptions")]
    async fn options(&self, app: Data<&App>, org: Query<String>) -> Result<Json<OptionsView>, SsoOptionsErrors> {
        let scope = org_of(&app, org.0).await?;
        let max = app.config.oauth.identity_providers_per_org_max;
        let providers = sso::list(&app.store, scope, max)
            .await?
            .into_iter()
            .filter(|p| p.enabled)
            .map(|p| OptionView { id: p.id.to_string(), name: p.name })
            .collect();
        Ok(Json(OptionsView { required: sso::policy(&app.store, scope)?.required, providers }))
    }

    /// Start signing in through an identity provider
    ///
    /// Answers the provider's authorization URL; the person signs in there and comes back to
    /// `GET /v1/auth/sso/callback`. No authentication.
    #[oai(path = "/v1/auth/sso/start", method = "post", operation_id = "startSso")]
    async fn start(
        &self,
        app: Data<&App>,
        req: &Request,
        body: JsonBody<StartBody>,
    ) -> Result<Started, SsoStartErrors> {
        let b = body.0;
        let scope = org_of(&app, b.org).await?;
        let idp = if let Some(id) = b.provider_id {
            sso::get(&app.store, scope, parse_id(&id, "identity provider")?)?
        } else {
            let max = app.config.oauth.identity_providers_per_org_max;
            let mut enabled: Vec<_> =
                sso::list(&app.store, scope, max).await?.into_iter().filter(|p| p.enabled).collect();
            if enabled.len() != 1 {
                return Err(DomainError::invalid(
                    "/provider_id",
                    "provider_required",
                    format!("the organization has {} enabled identity providers: name one", enabled.len()),
                )
                .into());
            }
            enabled.remove(0)
        };
        let o = origin(req);
        let ctx =
            MutationCtx { scope, actor: "anonymous".into(), request_id: o.request_id, client_addr: o.client_addr };
        let s = app.sso.start(ctx, &idp).await?;
        Ok(Started::Started(Json(StartView {
            authorization_url: s.authorization_url,
            expires_at: rfc3339(s.expires_at_ms),
        })))
    }

    /// Single sign-on callback
    ///
    /// Where identity providers send people back. The state is taken (once), the code
    /// exchanged with the PKCE verifier, the `id_token` checked (signature, algorithm, issuer,
    /// audience, expiry, nonce), and the person signed in: their linked account, one linked
    /// through a verified email, or one made (with provisioning on). Answers Outpost's own
    /// tokens. No authentication: the state is the credential.
    #[oai(path = "/v1/auth/sso/callback", method = "get", operation_id = "ssoCallback")]
    #[allow(clippy::too_many_arguments)] // one parameter per field of the provider's answer
    async fn callback(
        &self,
        app: Data<&App>,
        req: &Request,
        state: Query<Option<String>>,
        code: Query<Option<String>>,
        iss: Query<Option<String>>,
        error: Query<Option<String>>,
        error_description: Query<Option<String>>,
    ) -> Result<Json<TokenPair>, SsoCallbackErrors> {
        let Some(state) = state.0 else {
            return Err(Problem::new(
                poem::http::StatusCode::BAD_REQUEST,
                "invalid_state",
                "the callback has no state",
            )
            .into());
        };
        if let Some(error) = error.0 {
            // The provider's refusal, shown; the state is spent all the same.
            let o = origin(req);
            sso::take(&app.writer, &app.vault(), &state, &o).await?.ok_or(OAuthError::InvalidState)?;
            let detail: String = format!(
                "the identity provider refused: {error}{}",
                error_description.0.map(|d| format!(": {d}")).unwrap_or_default()
            )
            .chars()
            .take(600)
            .collect();
            return Err(Problem::new(poem::http::StatusCode::BAD_REQUEST, "authorization_denied", detail).into());
        }
        let Some(code) = code.0 else {
            return Err(Problem::new(
                poem::http::StatusCode::BAD_REQUEST,
                "invalid_request",
                "the callback has no code",
            )
            .into());
        };
        let granted = app.sso.finish(&state, &code, iss.0.as_deref(), app.session_policy(), origin(req)).await?;
        Ok(Json(token_pair(&app, granted)?))
    }

    /// Back-channel logout
    ///
    /// Where an identity provider posts a logout token (OpenID Connect Back-Channel Logout 1.0)
    /// when someone logs out there: checked against the provider's keys (signature, algorithm,
    /// `iss`, `aud`, `iat`, the logout event, no `nonce`), it ends the sessions signed in for
    /// its subject or with its session id. No authentication: the signed token is the
    /// credential.
    #[oai(
        path = "/v1/auth/sso/backchannel-logout/:org_id/:provider_id",
        method = "post",
        operation_id = "ssoBackchannelLogout"
    )]
    async fn backchannel(
        &self,
        app: Data<&App>,
        org_id: Path<String>,
        provider_id: Path<String>,
        body: poem_openapi::payload::Form<BackchannelBody>,
    ) -> Result<Json<BackchannelDone>, BackchannelErrors> {
        let org = parse_id(&org_id.0, "identity provider")?;
        let provider = parse_id(&provider_id.0, "identity provider")?;
        let n = app.sso.backchannel_logout(org, provider, &body.0.logout_token).await?;
        Ok(Json(BackchannelDone { sessions_ended: n as u64 }))
    }

    /// Log out, at the identity provider too
    ///
    /// Ends the current session and answers the provider's end-session URL to send the
    /// browser to (RP-initiated logout), when the session came through one.
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/auth/sso/logout", method = "post", operation_id = "ssoLogout")]
    async fn logout(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
    ) -> Result<Json<LogoutView>, SsoLogoutErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        let scope = OrgScope::member(&p);
        let mine = sessions::list(&app.store, scope, p.user).await?;
        let provider = mine.into_iter().find(|s| s.id == p.session).and_then(|s| s.sso).map(|m| m.provider);
        sessions::revoke(&app.writer, user_ctx(req, &p), p.user, p.session, "logout").await?;
        let end_session_url = match provider.map(|id| sso::get(&app.store, scope, id)) {
            Some(Ok(idp)) => app.sso.logout_url(p.org, &idp).await.ok().flatten(),
            _ => None,
        };
        Ok(Json(LogoutView { end_session_url }))
    }
}
