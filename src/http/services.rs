//! `/v1/services`: the service registry: services an organization registers, their sealed
//! credentials (never answered), health checks and health history.

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::problem::Problem;
use super::users::RoleView;
use super::{ApiTags, UserAuth, parse_id, parse_if_match, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::DomainError;
use crate::domain::paging::PageRequest;
use crate::domain::policy::{Permission, Role};
use crate::domain::services::{
    self, CredentialKind, GatewaySettings, Health, HealthChange, HealthCheck, McpSettings, NewCredential, Service,
    ServiceFields,
};
use crate::ids::rfc3339;
use crate::tenancy::OrgScope;
use crate::webhooks::signing::Secret;

crate::problems!(ServiceReadErrors: 400, 401, 403, 404, 422);
crate::problems!(ServiceWriteErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422, 507);

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "ServiceCredentialKind", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CredentialKindView {
    /// The secret in a header of its own (`header`).
    ApiKey,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `Authorization: Basic` of `username` and the secret.
    Basic,
    /// `Authorization: Bearer` with a fresh access token of the organization's OAuth
    /// connection `connection_id` (refreshed ahead of its expiry; no secret here).
    OauthConnection,
}

/// A credential to store (sealed; never answered).
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ServiceCredentialInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CredentialBody {
    pub kind: CredentialKindView,
    /// The API key, token or password (required for every kind but `oauth_connection`).
    #[oai(write_only)]
    pub secret: Option<String>,
    /// For `api_key`: the header that carries it (default `X-Api-Key`).
    pub header: Option<String>,
    /// For `basic`.
    pub username: Option<String>,
    /// For `oauth_connection`: one of the organization's connections (not a user's own).
    pub connection_id: Option<String>,
}

/// A stored credential: what kind, never its secret.
#[derive(Object, Debug)]
#[oai(rename = "ServiceCredential")]
pub struct CredentialView {
    pub kind: CredentialKindView,
    pub header: Option<String>,
    pub username: Option<String>,
    pub connection_id: Option<String>,
}

/// How the server checks a service's health (absent fields: the defaults).
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ServiceHealthCheckInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckBody {
    /// Path under the base URL answered 2xx when healthy (default `/health`).
    pub path: Option<String>,
    /// Default 10000 (100–86400000).
    pub interval_ms: Option<u64>,
    /// Default 2000, or the interval when shorter (10–60000, at most the interval).
    pub timeout_ms: Option<u64>,
    /// A 2xx slower than this counts as degraded (default 1000, or half the timeout when shorter).
    pub degraded_ms: Option<u64>,
    /// Good checks in a row before a down service is up again (default 2).
    pub healthy_threshold: Option<u32>,
    /// Failed checks in a row before it is down (default 3).
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Object, Debug)]
#[oai(rename = "ServiceHealthCheck")]
pub struct HealthCheckView {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub degraded_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "ServiceHealth", rename_all = "snake_case")]
pub enum HealthView {
    Unknown,
    Up,
    Degraded,
    Down,
}

mirror_enum!(HealthView <=> Health { Unknown, Up, Degraded, Down });

/// How the gateway calls a service (absent fields: the defaults on creation, unchanged on a
/// change).
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ServiceGatewayInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct GatewayBody {
    /// Each try of a call, in milliseconds (default 10000; 100–120000). The whole request,
    /// retries included, is also held to the server's `http.request_timeout_ms` (30 s unless
    /// the operator says otherwise).
    pub timeout_ms: Option<u64>,
    /// Tries after the first for GET, HEAD, PUT, DELETE and OPTIONS that could not connect,
    /// timed out or were answered 502, 503 or 504 (default 2; 0–5).
    pub retries: Option<u32>,
    /// Calls a second, in bursts of up to twice this (default 100; 1–100000).
    pub rate_per_s: Option<u32>,
    /// A request body at most, in bytes (default 1048576; at most 16777216, and never more
    /// than the server's `http.body_limit_bytes`).
    pub request_bytes_max: Option<u64>,
    /// An answer body at most, in bytes; a longer one is a 502 (default 8388608; at most
    /// 67108864). Each call in flight reserves this much of the server's
    /// `services.gateway_buffer_bytes_max` while it lasts.
    pub response_bytes_max: Option<u64>,
    /// The circuit opens when at least this percentage of the calls in the window failed
    /// (default 50; 1–100) ...
    pub breaker_failure_percent: Option<u8>,
    /// ... and the window holds at least this many calls (default 10).
    pub breaker_min_calls: Option<u32>,
    /// The window, in milliseconds (default 30000; 1000–3600000).
    pub breaker_window_ms: Option<u64>,
    /// How long the circuit stays open before probes go through (default 15000; 100–3600000).
    pub breaker_open_ms: Option<u64>,
    /// Probes let through when half-open; this many successes in a row close it (default 3).
    pub breaker_probes: Option<u32>,
}

#[derive(Object, Debug)]
#[oai(rename = "ServiceGateway")]
pub struct GatewayView {
    pub timeout_ms: u64,
    pub retries: u32,
    pub rate_per_s: u32,
    pub request_bytes_max: u64,
    pub response_bytes_max: u64,
    pub breaker_failure_percent: u8,
    pub breaker_min_calls: u32,
    pub breaker_window_ms: u64,
    pub breaker_open_ms: u64,
    pub breaker_probes: u32,
}

/// How Outpost speaks to the service as an MCP server: its base URL is the server's Streamable
/// HTTP endpoint (absent fields: the defaults on creation, unchanged on a change).
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ServiceMcpInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct McpBody {
    /// Per tool, the roles that may call it (besides being among the service's callers); a
    /// tool not named here is open to every caller. At most 500 tools.
    pub tool_roles: Option<BTreeMap<String, Vec<RoleView>>>,
    /// Audit records of tool calls carry the arguments themselves, not only their SHA-256
    /// (default false).
    pub audit_arguments: Option<bool>,
    /// A request to the server (a tool call, a read) at most, in milliseconds (default 60000;
    /// 100–600000).
    pub timeout_ms: Option<u64>,
}

#[derive(Object, Debug)]
#[oai(rename = "ServiceMcp")]
pub struct McpView {
    pub tool_roles: BTreeMap<String, Vec<RoleView>>,
    pub audit_arguments: bool,
    pub timeout_ms: u64,
}

/// A base URL naming a local MCP server (`stdio:<name>`) must name one of the operator's
/// `mcp.commands`, and the service must be an MCP server.
pub(super) fn check_stdio(app: &App, base_url: &str, is_mcp: bool) -> Result<(), Problem> {
    let Some(name) = base_url.strip_prefix(services::STDIO_PREFIX) else { return Ok(()) };
    if !app.config.mcp.commands.iter().any(|c| c.name == name) {
        let detail = format!("{name:?} is not one of the operator's mcp.commands");
        return Err(DomainError::invalid("/base_url", "unknown_command", detail).into());
    }
    if !is_mcp {
        let detail = "a stdio: service is an MCP server: give it mcp settings";
        return Err(DomainError::invalid("/mcp", "required", detail).into());
    }
    Ok(())
}

/// `b`'s fields over `base`.
fn mcp(base: McpSettings, b: McpBody) -> McpSettings {
    McpSettings {
        tool_roles: b.tool_roles.map_or(base.tool_roles, |t| {
            t.into_iter().map(|(k, v)| (k, v.into_iter().map(Role::from).collect())).collect()
        }),
        audit_arguments: b.audit_arguments.unwrap_or(base.audit_arguments),
        timeout_ms: b.timeout_ms.unwrap_or(base.timeout_ms),
    }
}

/// A secret that signs the caller's identity on gateway calls (never its key, which is shown
/// once).
#[derive(Object, Debug)]
#[oai(rename = "ServiceSigningSecretInfo")]
pub struct SigningSecretView {
    pub id: String,
    pub created_at: String,
    /// When it stops signing (a newer secret replaced it).
    pub expires_at: Option<String>,
}

/// A service and the secret that signs its gateway calls, shown only now.
#[derive(Object, Debug)]
#[oai(rename = "ServiceWithSigningSecret")]
pub struct WithSecretView {
    pub service: ServiceView,
    /// `whsec_…`: the service checks the `Outpost-Identity` headers of gateway calls with it.
    pub signing_secret: String,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "RotateServiceSigningSecret", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Seconds the secrets replaced go on signing beside the new one (default 86400; 0 stops
    /// them now).
    pub overlap_s: Option<u64>,
}

/// A service to register.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "NewService", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewServiceBody {
    pub name: String,
    /// http or https, held to the egress policy (loopback and private addresses only when the
    /// operator allows them).
    pub base_url: String,
    /// What sort of service (free text: `rest`, `ticketing`, `ci`).
    pub kind: Option<String>,
    pub description: Option<String>,
    pub capabilities: Option<Vec<String>>,
    /// How interface clients render it: a JSON object of at most 64 KiB.
    pub ui: Option<serde_json::Value>,
    /// Roles that may call it through the gateway (default member, admin, owner).
    pub callers: Option<Vec<RoleView>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub credential: Option<CredentialBody>,
    /// Absent: not checked (health stays `unknown`).
    pub health_check: Option<HealthCheckBody>,
    pub gateway: Option<GatewayBody>,
    /// Present: the service is an MCP server (its tools, resources and prompts are reached
    /// through `/v1/services/{id}/mcp/…`).
    pub mcp: Option<McpBody>,
}

/// Changes to a service: each field present is replaced.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "ServiceChanges", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PatchServiceBody {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub kind: Option<String>,
    pub description: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub ui: Option<serde_json::Value>,
    pub callers: Option<Vec<RoleView>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub credential: Option<CredentialBody>,
    /// Drop the stored credential.
    pub remove_credential: Option<bool>,
    pub health_check: Option<HealthCheckBody>,
    /// Stop checking its health.
    pub remove_health_check: Option<bool>,
    /// The fields present replace the gateway's settings.
    pub gateway: Option<GatewayBody>,
    /// The fields present replace the MCP settings (a service that was not an MCP server
    /// becomes one).
    pub mcp: Option<McpBody>,
    /// It is no longer an MCP server.
    pub remove_mcp: Option<bool>,
    /// The version this change is based on (or `If-Match`).
    pub version: Option<u64>,
}

#[derive(Object, Debug)]
#[oai(rename = "Service")]
pub struct ServiceView {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub description: String,
    pub capabilities: Vec<String>,
    pub ui: serde_json::Value,
    pub callers: Vec<RoleView>,
    pub metadata: BTreeMap<String, String>,
    /// Its kind only: the secret is never answered.
    pub credential: Option<CredentialView>,
    pub health_check: Option<HealthCheckView>,
    pub health: HealthView,
    pub health_since: String,
    pub gateway: GatewayView,
    /// Present when the service is an MCP server.
    pub mcp: Option<McpView>,
    /// Newest first; every one not expired signs each gateway call.
    pub signing_secrets: Vec<SigningSecretView>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "ServiceList")]
pub struct ServiceList {
    pub items: Vec<ServiceView>,
}

#[derive(Object, Debug)]
#[oai(rename = "ServiceHealthChange")]
pub struct HealthChangeView {
    pub id: String,
    pub at: String,
    pub from: HealthView,
    pub to: HealthView,
    /// What the deciding check saw (`status 503`, `no answer within 2000 ms`, …).
    pub detail: String,
}

#[derive(Object, Debug)]
#[oai(rename = "ServiceHealthPage")]
pub struct HealthPage {
    pub items: Vec<HealthChangeView>,
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum ServiceCreated {
    #[oai(status = 201)]
    Created(Json<WithSecretView>, #[oai(header = "Location")] String),
}

/// How long the secrets a rotation replaces go on signing when the request does not say.
const OVERLAP_DEFAULT_S: u64 = 86_400;

/// `b`'s fields over `base`.
fn gateway(base: GatewaySettings, b: Option<GatewayBody>) -> GatewaySettings {
    let Some(b) = b else { return base };
    GatewaySettings {
        timeout_ms: b.timeout_ms.unwrap_or(base.timeout_ms),
        retries: b.retries.unwrap_or(base.retries),
        rate_per_s: b.rate_per_s.unwrap_or(base.rate_per_s),
        request_bytes_max: b.request_bytes_max.unwrap_or(base.request_bytes_max),
        response_bytes_max: b.response_bytes_max.unwrap_or(base.response_bytes_max),
        breaker_failure_percent: b.breaker_failure_percent.unwrap_or(base.breaker_failure_percent),
        breaker_min_calls: b.breaker_min_calls.unwrap_or(base.breaker_min_calls),
        breaker_window_ms: b.breaker_window_ms.unwrap_or(base.breaker_window_ms),
        breaker_open_ms: b.breaker_open_ms.unwrap_or(base.breaker_open_ms),
        breaker_probes: b.breaker_probes.unwrap_or(base.breaker_probes),
    }
}

fn gateway_view(g: GatewaySettings) -> GatewayView {
    GatewayView {
        timeout_ms: g.timeout_ms,
        retries: g.retries,
        rate_per_s: g.rate_per_s,
        request_bytes_max: g.request_bytes_max,
        response_bytes_max: g.response_bytes_max,
        breaker_failure_percent: g.breaker_failure_percent,
        breaker_min_calls: g.breaker_min_calls,
        breaker_window_ms: g.breaker_window_ms,
        breaker_open_ms: g.breaker_open_ms,
        breaker_probes: g.breaker_probes,
    }
}

pub(super) fn credential(c: CredentialBody) -> Result<NewCredential, DomainError> {
    let kind = match c.kind {
        CredentialKindView::ApiKey => CredentialKind::ApiKey { header: c.header.unwrap_or_else(|| "X-Api-Key".into()) },
        CredentialKindView::Bearer => CredentialKind::Bearer,
        CredentialKindView::Basic => CredentialKind::Basic {
            username: c.username.ok_or_else(|| {
                DomainError::invalid("/credential/username", "required", "basic credentials name a username")
            })?,
        },
        CredentialKindView::OauthConnection => CredentialKind::OAuthConnection {
            connection: super::parse_id(
                c.connection_id.as_deref().ok_or_else(|| {
                    DomainError::invalid("/credential/connection_id", "required", "an oauth_connection names one")
                })?,
                "connection",
            )
            .map_err(|_| DomainError::invalid("/credential/connection_id", "invalid_id", "not a connection id"))?,
        },
    };
    let secret = match (&kind, c.secret) {
        (CredentialKind::OAuthConnection { .. }, s) => s.unwrap_or_default(),
        (_, Some(s)) => s,
        (_, None) => return Err(DomainError::invalid("/credential/secret", "required", "the credential's secret")),
    };
    Ok(NewCredential { kind, secret })
}

fn health_check(h: HealthCheckBody) -> HealthCheck {
    let d = HealthCheck::default();
    let interval_ms = h.interval_ms.unwrap_or(d.interval_ms);
    // Defaults that fit inside a shorter interval given alone.
    let timeout_ms = h.timeout_ms.unwrap_or(d.timeout_ms.min(interval_ms));
    HealthCheck {
        path: h.path.unwrap_or(d.path),
        interval_ms,
        timeout_ms,
        degraded_ms: h.degraded_ms.unwrap_or(d.degraded_ms.min(timeout_ms / 2)),
        healthy_threshold: h.healthy_threshold.unwrap_or(d.healthy_threshold),
        unhealthy_threshold: h.unhealthy_threshold.unwrap_or(d.unhealthy_threshold),
    }
}

fn roles(v: Option<Vec<RoleView>>) -> Option<Vec<Role>> {
    v.map(|v| v.into_iter().map(Role::from).collect())
}

fn view(s: Service) -> ServiceView {
    ServiceView {
        id: s.id.to_string(),
        name: s.name,
        kind: s.kind,
        base_url: s.base_url,
        description: s.description,
        capabilities: s.capabilities,
        ui: s.ui,
        callers: s.callers.into_iter().map(RoleView::from).collect(),
        metadata: s.metadata,
        credential: s.credential.map(|c| {
            let mut v =
                CredentialView { kind: CredentialKindView::Bearer, header: None, username: None, connection_id: None };
            match c.kind {
                CredentialKind::ApiKey { header } => (v.kind, v.header) = (CredentialKindView::ApiKey, Some(header)),
                CredentialKind::Bearer => {}
                CredentialKind::Basic { username } => {
                    (v.kind, v.username) = (CredentialKindView::Basic, Some(username));
                }
                CredentialKind::OAuthConnection { connection } => {
                    (v.kind, v.connection_id) = (CredentialKindView::OauthConnection, Some(connection.to_string()));
                }
            }
            v
        }),
        health_check: s.health_check.map(|h| HealthCheckView {
            path: h.path,
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            degraded_ms: h.degraded_ms,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }),
        health: s.health.into(),
        health_since: rfc3339(s.health_since_ms),
        gateway: gateway_view(s.gateway),
        mcp: s.mcp.map(|m| McpView {
            tool_roles: m
                .tool_roles
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().map(RoleView::from).collect()))
                .collect(),
            audit_arguments: m.audit_arguments,
            timeout_ms: m.timeout_ms,
        }),
        signing_secrets: s
            .signing
            .into_iter()
            .map(|k| SigningSecretView {
                id: k.id.to_string(),
                created_at: rfc3339(k.created_at_ms),
                expires_at: k.expires_at_ms.map(rfc3339),
            })
            .collect(),
        created_by: s.created_by.to_string(),
        created_at: rfc3339(s.created_at_ms),
        updated_at: rfc3339(s.updated_at_ms),
        version: s.version,
    }
}

fn change_view(c: HealthChange) -> HealthChangeView {
    HealthChangeView {
        id: c.id.to_string(),
        at: rfc3339(c.at_ms),
        from: c.from.into(),
        to: c.to.into(),
        detail: c.detail,
    }
}

/// The caller, the service (404 unless it is in the caller's organization), then the
/// permission.
pub(super) async fn service_for(
    app: &App,
    auth: &UserAuth,
    id: &str,
    needs: Permission,
) -> Result<(Principal, Arc<Service>), Problem> {
    let p = auth.check(app).await?;
    let s = services::get_kept(&app.store, &app.kept_services, OrgScope::member(&p), parse_id(id, "service")?)?;
    p.require(needs)?;
    Ok((p, s))
}

#[derive(Default)]
pub struct ServicesApi;

#[OpenApi(tag = "ApiTags::Services")]
impl ServicesApi {
    /// Register a service
    ///
    /// Its credential is sealed in the vault and never answered; only its kind shows.
    ///
    /// Permission: `services.manage`.
    #[oai(path = "/v1/services", method = "post", operation_id = "createService")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<NewServiceBody>,
    ) -> Result<ServiceCreated, ServiceWriteErrors> {
        let p = auth.require(&app, Permission::ServicesManage).await?;
        let b = body.0;
        check_stdio(&app, &b.base_url, b.mcp.is_some())?;
        let fields = ServiceFields {
            name: Some(b.name),
            kind: b.kind,
            base_url: Some(b.base_url),
            description: b.description,
            capabilities: b.capabilities,
            ui: b.ui,
            callers: roles(b.callers),
            metadata: b.metadata,
            credential: b.credential.map(credential).transpose()?.map(Some),
            health_check: b.health_check.map(|h| Some(health_check(h))),
            gateway: Some(gateway(GatewaySettings::default(), b.gateway)),
            mcp: b.mcp.map(|m| Some(mcp(McpSettings::default(), m))),
            expected_version: None,
        };
        let cap = app.config.services.per_org_max;
        let (s, key) =
            services::create(&app.writer, &app.vault(), app.egress.policy(), user_ctx(req, &p), p.user, fields, cap)
                .await?;
        app.registry.poke();
        let location = format!("/v1/services/{}", s.id);
        let signing_secret = Secret::from_key(key).written();
        Ok(ServiceCreated::Created(Json(WithSecretView { service: view(s), signing_secret }), location))
    }

    /// List services
    ///
    /// Permission: `services.read`.
    #[oai(path = "/v1/services", method = "get", operation_id = "listServices")]
    async fn list(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<ServiceList>, ServiceReadErrors> {
        let p = auth.require(&app, Permission::ServicesRead).await?;
        let all = services::list(&app.store, OrgScope::member(&p), app.config.services.per_org_max).await?;
        Ok(Json(ServiceList { items: all.into_iter().map(view).collect() }))
    }

    /// Get a service
    ///
    /// Permission: `services.read`.
    #[oai(path = "/v1/services/:service_id", method = "get", operation_id = "getService")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        service_id: Path<String>,
    ) -> Result<Json<ServiceView>, ServiceReadErrors> {
        let (_, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesRead).await?;
        Ok(Json(view(Arc::unwrap_or_clone(s))))
    }

    /// Change a service
    ///
    /// A new base URL or health check starts its health over (`unknown`).
    ///
    /// Permission: `services.manage`.
    #[oai(path = "/v1/services/:service_id", method = "patch", operation_id = "updateService")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<PatchServiceBody>,
    ) -> Result<Json<ServiceView>, ServiceWriteErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesManage).await?;
        let b = body.0;
        let credential = match (b.credential, b.remove_credential.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(DomainError::invalid(
                    "/remove_credential",
                    "conflicting",
                    "give a credential or remove it",
                )
                .into());
            }
            (Some(c), false) => Some(Some(credential(c)?)),
            (None, true) => Some(None),
            (None, false) => None,
        };
        let health = match (b.health_check, b.remove_health_check.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(DomainError::invalid(
                    "/remove_health_check",
                    "conflicting",
                    "give a health check or remove it",
                )
                .into());
            }
            (Some(h), false) => Some(Some(health_check(h))),
            (None, true) => Some(None),
            (None, false) => None,
        };
        let mcp_settings = match (b.mcp, b.remove_mcp.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(
                    DomainError::invalid("/remove_mcp", "conflicting", "give MCP settings or remove them").into()
                );
            }
            (Some(m), false) => Some(Some(mcp(s.mcp.clone().unwrap_or_default(), m))),
            (None, true) => Some(None),
            (None, false) => None,
        };
        let is_mcp = mcp_settings.as_ref().map_or(s.mcp.is_some(), Option::is_some);
        check_stdio(&app, b.base_url.as_deref().unwrap_or(&s.base_url), is_mcp)?;
        let fields = ServiceFields {
            name: b.name,
            kind: b.kind,
            base_url: b.base_url,
            description: b.description,
            capabilities: b.capabilities,
            ui: b.ui,
            callers: roles(b.callers),
            metadata: b.metadata,
            credential,
            health_check: health,
            gateway: b.gateway.is_some().then(|| gateway(s.gateway, b.gateway)),
            mcp: mcp_settings,
            expected_version: parse_if_match(if_match.0.as_deref())?.or(b.version),
        };
        let s =
            services::update(&app.writer, &app.vault(), app.egress.policy(), user_ctx(req, &p), s.id, fields).await?;
        app.registry.poke();
        Ok(Json(view(s)))
    }

    /// Remove a service
    ///
    /// Its health history goes with it.
    ///
    /// Permission: `services.manage`.
    #[oai(path = "/v1/services/:service_id", method = "delete", operation_id = "deleteService")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
    ) -> Result<NoContent, ServiceWriteErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesManage).await?;
        services::delete(&app.writer, user_ctx(req, &p), s.id).await?;
        app.registry.poke();
        app.mcp.forget(p.org, s.id);
        Ok(NoContent::Done)
    }

    /// Rotate a service's signing secret
    ///
    /// A new secret signs the caller's identity on gateway calls from now on; the ones it
    /// replaces sign beside it for `overlap_s`, so the service switches at its own pace. The
    /// new secret is in this answer only.
    ///
    /// Permission: `services.manage`.
    #[oai(
        path = "/v1/services/:service_id/signing-secret/rotate",
        method = "post",
        operation_id = "rotateServiceSigningSecret"
    )]
    async fn rotate(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        body: JsonBody<RotateBody>,
    ) -> Result<Json<WithSecretView>, ServiceWriteErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesManage).await?;
        let overlap_s = body.0.overlap_s.unwrap_or(OVERLAP_DEFAULT_S);
        let max = app.config.services.signing_overlap_max_s;
        if overlap_s > max {
            return Err(DomainError::invalid("/overlap_s", "out_of_range", format!("at most {max} seconds")).into());
        }
        let overlap_ms = i64::try_from(overlap_s * 1000).unwrap_or(i64::MAX);
        let (s, key) = services::rotate_signing(&app.writer, &app.vault(), user_ctx(req, &p), s.id, overlap_ms).await?;
        let signing_secret = Secret::from_key(key).written();
        Ok(Json(WithSecretView { service: view(s), signing_secret }))
    }

    /// List a service's health changes
    ///
    /// Newest first; each service keeps its last 100.
    ///
    /// Permission: `services.read`.
    #[oai(path = "/v1/services/:service_id/health", method = "get", operation_id = "listServiceHealth")]
    async fn health(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        service_id: Path<String>,
        /// 1–100, default 20.
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<HealthPage>, ServiceReadErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesRead).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let page = services::history(&app.store, OrgScope::member(&p), s.id, page).await?;
        Ok(Json(HealthPage { items: page.items.into_iter().map(change_view).collect(), next_cursor: page.next_cursor }))
    }
}
