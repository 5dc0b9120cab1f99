//! The service registry: the APIs an organization registers so its apps can find them, see
//! whether they are up, and (through the gateway) call them with the organization's stored
//! credentials, which never reach a client.
//!
//! A service's credential is sealed in the vault and never answered, logged or audited; only
//! its kind shows. Its health is checked by the server (an HTTP path, an interval, a timeout,
//! thresholds); each change of status is an event on the `org` topic, an audit record, and a
//! line of the service's health history (bounded).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::paging::{Page, PageRequest, newest_first};
use super::policy::Role;
use super::secrets::{self, SealedSecret};
use super::{DomainError, FieldError, check};
use crate::egress::{AddressPolicy, EgressError, check_url};
use crate::ids::{self, Id};
use crate::store::stamped::Stamped;
use crate::store::tables::{OAUTH_CONNECTIONS, SERVICE_HEALTH, SERVICES, org_id_id_key, org_id_key};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Reader, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;
use crate::vault::Vault;

pub const NAME_CHARS_MAX: usize = 100;
pub const DESCRIPTION_CHARS_MAX: usize = 2000;
pub const URL_BYTES_MAX: usize = 2048;
pub const CAPABILITIES_MAX: usize = 100;
pub const METADATA_MAX: usize = 50;
/// The UI mapping's JSON at most, in bytes.
pub const UI_BYTES_MAX: usize = 64 * 1024;
/// A credential's secret at most, in bytes.
pub const SECRET_BYTES_MAX: usize = 4096;
/// Health changes each service's history keeps (the newest).
pub const HISTORY_MAX: usize = 100;

/// How a credential is put on a call.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialKind {
    /// The secret in a header of its own (`X-Api-Key`, say).
    ApiKey { header: String },
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `Authorization: Basic` of `username:<secret>`.
    Basic { username: String },
    /// `Authorization: Bearer` with a fresh access token of one of the organization's OAuth
    /// connections (no secret of its own).
    #[serde(rename = "oauth_connection")]
    OAuthConnection { connection: Id },
}

/// A credential as stored: its kind, its secret sealed for its service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedCredential {
    #[serde(flatten)]
    pub kind: CredentialKind,
    pub sealed: String,
}

/// A credential as given, its secret in the clear (never stored so).
#[derive(Clone, PartialEq, Eq)]
pub struct NewCredential {
    pub kind: CredentialKind,
    pub secret: String,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential").field("kind", &self.kind).finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not checked yet (or no check configured).
    Unknown,
    Up,
    /// Answering, but slower than the check's `degraded_ms`.
    Degraded,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

/// How a service's health is checked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path under the base URL, answered 2xx when healthy.
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// A 2xx slower than this counts as degraded.
    pub degraded_ms: u64,
    /// Consecutive good checks before a service counts as up again.
    pub healthy_threshold: u32,
    /// Consecutive failed checks before it counts as down.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval_ms: 10_000,
            timeout_ms: 2_000,
            degraded_ms: 1_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// How the gateway calls a service.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GatewaySettings {
    /// A whole call (each try of it), in milliseconds.
    pub timeout_ms: u64,
    /// Tries after the first for idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS) that
    /// could not connect, timed out or were answered 502, 503 or 504.
    pub retries: u32,
    /// Calls a second through the gateway (bursts of twice this).
    pub rate_per_s: u32,
    /// A request's body at most, in bytes.
    pub request_bytes_max: u64,
    /// An answer's body at most, in bytes (a longer one is a 502).
    pub response_bytes_max: u64,
    /// The circuit opens when at least this share of the calls in the window failed ...
    pub breaker_failure_percent: u8,
    /// ... and the window holds at least this many calls.
    pub breaker_min_calls: u32,
    pub breaker_window_ms: u64,
    /// How long it stays open before letting probes through.
    pub breaker_open_ms: u64,
    /// Probes let through at once when half-open; this many successes in a row close it.
    pub breaker_probes: u32,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            retries: 2,
            rate_per_s: 100,
            request_bytes_max: 1024 * 1024,
            response_bytes_max: 8 * 1024 * 1024,
            breaker_failure_percent: 50,
            breaker_min_calls: 10,
            breaker_window_ms: 30_000,
            breaker_open_ms: 15_000,
            breaker_probes: 3,
        }
    }
}

/// How Outpost speaks to a service that is an MCP server (the Model Context Protocol).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct McpSettings {
    /// Per tool, the roles that may call it (besides being among the service's callers); a tool
    /// not named here is open to every caller.
    #[serde(default)]
    pub tool_roles: BTreeMap<String, Vec<Role>>,
    /// Audit records of tool calls carry the arguments themselves, not only their SHA-256.
    #[serde(default)]
    pub audit_arguments: bool,
    /// A request to the server (a tool call, a read) at most, in milliseconds; progress
    /// notifications do not extend it.
    pub timeout_ms: u64,
}

impl Default for McpSettings {
    fn default() -> Self {
        Self { tool_roles: BTreeMap::new(), audit_arguments: false, timeout_ms: 60_000 }
    }
}

/// A base URL that names a local MCP server the operator allows (`stdio:<command name>`).
pub const STDIO_PREFIX: &str = "stdio:";

/// The bounds on an MCP server's settings.
pub const MCP_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;
pub const MCP_TOOL_ROLES_MAX: usize = 500;

/// The gateway's bounds on its settings.
pub const GATEWAY_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=120_000;
pub const GATEWAY_RETRIES_MAX: u32 = 5;
pub const GATEWAY_RATE_PER_S: std::ops::RangeInclusive<u32> = 1..=100_000;
pub const GATEWAY_REQUEST_BYTES_MAX: u64 = 16 * 1024 * 1024;
pub const GATEWAY_RESPONSE_BYTES_MAX: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub id: Id,
    pub name: String,
    /// What sort of service (free text: `rest`, `ticketing`, `ci`, …).
    pub kind: String,
    pub base_url: String,
    pub description: String,
    pub capabilities: Vec<String>,
    /// How the interface clients render it (a JSON document).
    pub ui: serde_json::Value,
    /// Roles that may call it through the gateway.
    pub callers: Vec<Role>,
    pub metadata: BTreeMap<String, String>,
    pub credential: Option<SealedCredential>,
    /// `None`: not checked.
    pub health_check: Option<HealthCheck>,
    pub health: Health,
    pub health_since_ms: i64,
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Set when the service is an MCP server: its base URL is the server's Streamable HTTP
    /// endpoint, and its credential goes on every request of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpSettings>,
    /// The secrets that sign the caller's identity on gateway calls, newest first.
    #[serde(default)]
    pub signing: Vec<SealedSecret>,
    pub created_by: Id,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
}

impl Service {
    /// The credential's secret, opened.
    pub fn secret(&self, vault: &Vault, org: Id) -> Result<Option<(CredentialKind, String)>, DomainError> {
        let Some(c) = &self.credential else { return Ok(None) };
        let sealed = STANDARD.decode(&c.sealed).map_err(|_| damaged(self.id))?;
        let plain = vault.open(&purpose(org, self.id), &sealed).map_err(|_| damaged(self.id))?;
        Ok(Some((c.kind.clone(), String::from_utf8(plain).map_err(|_| damaged(self.id))?)))
    }
}

impl Service {
    /// The secrets that sign gateway calls at `now_ms`, newest first, opened.
    pub fn signing_keys(&self, vault: &Vault, org: Id, now_ms: i64) -> Result<Vec<Vec<u8>>, DomainError> {
        secrets::in_force(&self.signing, vault, &signing_purpose(org, self.id), now_ms).ok_or_else(|| damaged(self.id))
    }
}

/// The header that carries a service's credential, or `None` if the stored credential cannot
/// be a header (a header name or value that does not parse). Marked sensitive, so it is never
/// printed.
pub fn credential_header(
    kind: &CredentialKind,
    secret: &str,
) -> Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
    let (name, value) = match kind {
        CredentialKind::ApiKey { header } => {
            (reqwest::header::HeaderName::from_bytes(header.as_bytes()).ok()?, secret.to_owned())
        }
        CredentialKind::Bearer => (reqwest::header::AUTHORIZATION, format!("Bearer {secret}")),
        CredentialKind::Basic { username } => (
            reqwest::header::AUTHORIZATION,
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"))),
        ),
        // Its token comes from the connection (`crate::oauth`), as a bearer token.
        CredentialKind::OAuthConnection { .. } => return None,
    };
    let mut value = reqwest::header::HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

fn damaged(id: Id) -> DomainError {
    DomainError::Store(StoreError::Corrupt {
        table: "services".into(),
        detail: format!("service {id}: its credential does not open"),
    })
}

fn purpose(org: Id, service: Id) -> String {
    format!("service_credential:{org}:{service}")
}

fn signing_purpose(org: Id, service: Id) -> String {
    format!("service_signing:{org}:{service}")
}

/// One change of a service's health.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthChange {
    pub id: Id,
    pub at_ms: i64,
    pub from: Health,
    pub to: Health,
    /// What the check that decided it saw (`status 503`, `timeout`, `412 ms`).
    pub detail: String,
}

/// A new service, or the fields a change replaces (`None`: unchanged).
#[derive(Clone, Debug, Default)]
pub struct ServiceFields {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub description: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub ui: Option<serde_json::Value>,
    pub callers: Option<Vec<Role>>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// `Some(None)` removes the credential.
    pub credential: Option<Option<NewCredential>>,
    /// `Some(None)` stops checking.
    pub health_check: Option<Option<HealthCheck>>,
    pub gateway: Option<GatewaySettings>,
    /// `Some(None)`: no longer an MCP server.
    pub mcp: Option<Option<McpSettings>>,
    pub expected_version: Option<u64>,
}

fn check_fields(policy: &AddressPolicy, f: &ServiceFields, errors: &mut Vec<FieldError>) {
    let chars = |s: &str| s.chars().count();
    if f.name.as_deref().is_some_and(|n| n.trim().is_empty() || chars(n) > NAME_CHARS_MAX) {
        errors.push(FieldError::new("/name", "invalid_length", format!("1–{NAME_CHARS_MAX} characters")));
    }
    if f.kind.as_deref().is_some_and(|k| chars(k) > NAME_CHARS_MAX) {
        errors.push(FieldError::new("/kind", "invalid_length", format!("at most {NAME_CHARS_MAX} characters")));
    }
    if f.description.as_deref().is_some_and(|d| chars(d) > DESCRIPTION_CHARS_MAX) {
        errors.push(FieldError::new(
            "/description",
            "invalid_length",
            format!("at most {DESCRIPTION_CHARS_MAX} characters"),
        ));
    }
    check_base_url(policy, f, errors);
    if f.capabilities
        .as_ref()
        .is_some_and(|c| c.len() > CAPABILITIES_MAX || c.iter().any(|x| x.is_empty() || chars(x) > NAME_CHARS_MAX))
    {
        errors.push(FieldError::new(
            "/capabilities",
            "invalid_list",
            format!("at most {CAPABILITIES_MAX} names of 1–{NAME_CHARS_MAX} characters"),
        ));
    }
    if f.metadata.as_ref().is_some_and(|m| {
        m.len() > METADATA_MAX || m.iter().any(|(k, v)| chars(k) > NAME_CHARS_MAX || chars(v) > DESCRIPTION_CHARS_MAX)
    }) {
        errors.push(FieldError::new("/metadata", "too_large", format!("at most {METADATA_MAX} entries")));
    }
    if f.ui.as_ref().is_some_and(|u| !u.is_object() || u.to_string().len() > UI_BYTES_MAX) {
        errors.push(FieldError::new("/ui", "invalid_ui", format!("a JSON object of at most {UI_BYTES_MAX} bytes")));
    }
    if let Some(Some(c)) = &f.credential {
        let oauth = matches!(c.kind, CredentialKind::OAuthConnection { .. });
        if oauth && !c.secret.is_empty() {
            errors.push(FieldError::new(
                "/credential/secret",
                "invalid_secret",
                "an OAuth connection's token comes from the connection: give no secret",
            ));
        } else if !oauth
            && (c.secret.is_empty() || c.secret.len() > SECRET_BYTES_MAX || c.secret.contains(['\r', '\n']))
        {
            errors.push(FieldError::new(
                "/credential/secret",
                "invalid_secret",
                format!("1–{SECRET_BYTES_MAX} bytes, one line"),
            ));
        }
        let header_ok =
            |h: &str| !h.is_empty() && h.len() <= 100 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        match &c.kind {
            CredentialKind::ApiKey { header } if !header_ok(header) || header.eq_ignore_ascii_case("host") => {
                errors.push(FieldError::new(
                    "/credential/header",
                    "invalid_header",
                    "a header name (letters, digits, -)",
                ));
            }
            CredentialKind::Basic { username } if username.contains(':') || username.len() > 200 => {
                errors.push(FieldError::new("/credential/username", "invalid_username", "no `:`, at most 200 bytes"));
            }
            _ => {}
        }
    }
    if let Some(g) = &f.gateway {
        check_gateway(g, errors);
    }
    if let Some(Some(m)) = &f.mcp {
        check_mcp(m, errors);
    }
    if let Some(Some(h)) = &f.health_check {
        if !h.path.starts_with('/') || h.path.len() > 1000 {
            errors.push(FieldError::new("/health_check/path", "invalid_path", "a path starting with /"));
        }
        if !(100..=86_400_000).contains(&h.interval_ms) {
            errors.push(FieldError::new("/health_check/interval_ms", "out_of_range", "100–86400000"));
        }
        if !(10..=60_000).contains(&h.timeout_ms) || h.timeout_ms > h.interval_ms {
            errors.push(FieldError::new("/health_check/timeout_ms", "out_of_range", "10–60000, at most the interval"));
        }
        if !(1..=100).contains(&h.healthy_threshold) || !(1..=100).contains(&h.unhealthy_threshold) {
            errors.push(FieldError::new("/health_check", "out_of_range", "thresholds are 1–100"));
        }
    }
}

/// A base URL: http(s) held to the egress policy, or a local MCP server's `stdio:<name>`.
fn check_base_url(policy: &AddressPolicy, f: &ServiceFields, errors: &mut Vec<FieldError>) {
    if let Some(name) = f.base_url.as_deref().and_then(|u| u.strip_prefix(STDIO_PREFIX)) {
        // A local MCP server the operator allows (checked against the configuration at the edge).
        if !crate::config::McpCommand::name_ok(name) {
            errors.push(FieldError::new(
                "/base_url",
                "invalid_url",
                "stdio:<the name of one of the operator's commands>",
            ));
        }
        if matches!(f.health_check, Some(Some(_))) {
            errors.push(FieldError::new(
                "/health_check",
                "not_checkable",
                "a local (stdio) MCP server has no URL to check",
            ));
        }
    } else if let Some(u) = &f.base_url {
        let parsed = (u.len() <= URL_BYTES_MAX)
            .then(|| reqwest::Url::parse(u).ok())
            .flatten()
            .ok_or_else(|| EgressError::BadUrl(format!("not a URL of at most {URL_BYTES_MAX} bytes")));
        match parsed.and_then(|url| check_url(policy, &url).map(|()| url)) {
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                errors.push(FieldError::new("/base_url", "invalid_url", "a base URL has no query or fragment"));
            }
            Ok(_) => {}
            Err(EgressError::Refused(why)) => errors.push(FieldError::new("/base_url", "address_refused", why)),
            Err(e) => errors.push(FieldError::new("/base_url", "invalid_url", e.to_string())),
        }
    }
}

fn check_mcp(m: &McpSettings, errors: &mut Vec<FieldError>) {
    if !MCP_TIMEOUT_MS.contains(&m.timeout_ms) {
        let range = format!("{}–{}", MCP_TIMEOUT_MS.start(), MCP_TIMEOUT_MS.end());
        errors.push(FieldError::new("/mcp/timeout_ms", "out_of_range", range));
    }
    if m.tool_roles.len() > MCP_TOOL_ROLES_MAX
        || m.tool_roles.keys().any(|t| t.is_empty() || t.chars().count() > NAME_CHARS_MAX)
    {
        errors.push(FieldError::new(
            "/mcp/tool_roles",
            "invalid_list",
            format!("at most {MCP_TOOL_ROLES_MAX} tools, named in 1–{NAME_CHARS_MAX} characters"),
        ));
    }
}

fn check_gateway(g: &GatewaySettings, errors: &mut Vec<FieldError>) {
    let mut bad = |field: &str, range: String| {
        errors.push(FieldError::new(&format!("/gateway/{field}"), "out_of_range", range));
    };
    if !GATEWAY_TIMEOUT_MS.contains(&g.timeout_ms) {
        bad("timeout_ms", format!("{}–{}", GATEWAY_TIMEOUT_MS.start(), GATEWAY_TIMEOUT_MS.end()));
    }
    if g.retries > GATEWAY_RETRIES_MAX {
        bad("retries", format!("0–{GATEWAY_RETRIES_MAX}"));
    }
    if !GATEWAY_RATE_PER_S.contains(&g.rate_per_s) {
        bad("rate_per_s", format!("{}–{}", GATEWAY_RATE_PER_S.start(), GATEWAY_RATE_PER_S.end()));
    }
    if g.request_bytes_max > GATEWAY_REQUEST_BYTES_MAX {
        bad("request_bytes_max", format!("0–{GATEWAY_REQUEST_BYTES_MAX}"));
    }
    if !(1..=GATEWAY_RESPONSE_BYTES_MAX).contains(&g.response_bytes_max) {
        bad("response_bytes_max", format!("1–{GATEWAY_RESPONSE_BYTES_MAX}"));
    }
    if !(1..=100).contains(&g.breaker_failure_percent) {
        bad("breaker_failure_percent", "1–100".into());
    }
    if !(1..=100_000).contains(&g.breaker_min_calls) {
        bad("breaker_min_calls", "1–100000".into());
    }
    if !(1_000..=3_600_000).contains(&g.breaker_window_ms) {
        bad("breaker_window_ms", "1000–3600000".into());
    }
    if !(100..=3_600_000).contains(&g.breaker_open_ms) {
        bad("breaker_open_ms", "100–3600000".into());
    }
    if !(1..=100).contains(&g.breaker_probes) {
        bad("breaker_probes", "1–100".into());
    }
}

fn seal(vault: &Vault, org: Id, id: Id, c: &NewCredential) -> SealedCredential {
    SealedCredential {
        kind: c.kind.clone(),
        sealed: STANDARD.encode(vault.seal(&purpose(org, id), c.secret.as_bytes())),
    }
}

/// What events and audit records show of a service: never its credential's secret.
fn summary(s: &Service) -> serde_json::Value {
    json!({
        "id": s.id,
        "name": s.name,
        "kind": s.kind,
        "base_url": s.base_url,
        "credential": s.credential.as_ref().map(|c| &c.kind),
        "callers": s.callers,
        "mcp": s.mcp.is_some(),
    })
}

/// Registers a service; returns it and the key bytes of the secret that signs its gateway
/// calls (shown once).
pub async fn create(
    writer: &Writer,
    vault: &Vault,
    policy: &AddressPolicy,
    ctx: MutationCtx,
    caller: Id,
    f: ServiceFields,
    per_org_max: usize,
) -> Result<(Service, Vec<u8>), DomainError> {
    let mut errors = Vec::new();
    if f.name.is_none() {
        errors.push(FieldError::new("/name", "required", "a service has a name"));
    }
    if f.base_url.is_none() {
        errors.push(FieldError::new("/base_url", "required", "a service has a base URL"));
    }
    check_fields(policy, &f, &mut errors);
    check(errors)?;
    let org = ctx.scope.org();
    let id = Id::new();
    let credential = f.credential.clone().flatten().map(|c| seal(vault, org, id, &c));
    let (key, signing) = secrets::generate(vault, &signing_purpose(org, id), ids::now_ms());
    let s = writer
        .submit(ctx, move |tx| {
            if tx.range(SERVICES, org.as_bytes(), &prefix_end(org.as_bytes()), per_org_max + 1)?.len() >= per_org_max {
                return Err(DomainError::Conflict {
                    code: "quota_exceeded",
                    detail: format!("at most {per_org_max} services per organization"),
                });
            }
            check_connection(tx, org, credential.as_ref())?;
            let now = tx.now_ms();
            let s = Service {
                id,
                name: f.name.clone().unwrap_or_default().trim().to_owned(),
                kind: f.kind.clone().unwrap_or_default(),
                base_url: f.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned(),
                description: f.description.clone().unwrap_or_default(),
                capabilities: f.capabilities.clone().unwrap_or_default(),
                ui: f.ui.clone().unwrap_or_else(|| json!({})),
                callers: f.callers.clone().unwrap_or_else(|| vec![Role::Member, Role::Admin, Role::Owner]),
                metadata: f.metadata.clone().unwrap_or_default(),
                credential: credential.clone(),
                health_check: f.health_check.clone().flatten(),
                health: Health::Unknown,
                health_since_ms: now,
                gateway: f.gateway.unwrap_or_default(),
                mcp: f.mcp.clone().flatten(),
                signing: vec![signing.clone()],
                created_by: caller,
                created_at_ms: now,
                updated_at_ms: now,
                version: 1,
            };
            tx.put(SERVICES, &org_id_key(org, id), &encode(&s))?;
            tx.emit("org", "service.created", summary(&s));
            tx.audit("service.create", format!("service:{id}"), summary(&s));
            Ok::<_, DomainError>(s)
        })
        .await?;
    Ok((s, key))
}

/// Puts a new secret first for signing gateway calls; those before it sign on for
/// `overlap_ms`, then stop. Returns the service and the new secret's key bytes (shown once).
pub async fn rotate_signing(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    id: Id,
    overlap_ms: i64,
) -> Result<(Service, Vec<u8>), DomainError> {
    let org = ctx.scope.org();
    let (key, sealed) = secrets::generate(vault, &signing_purpose(org, id), ids::now_ms());
    let s = writer
        .submit(ctx, move |tx| {
            let mut s = load(tx, org, id)?;
            let now = tx.now_ms();
            let ends = secrets::rotate(&mut s.signing, sealed.clone(), now, overlap_ms);
            s.version += 1;
            s.updated_at_ms = now;
            tx.put(SERVICES, &org_id_key(org, id), &encode(&s))?;
            let details = json!({ "id": id, "secret_id": sealed.id, "previous_until": ids::rfc3339(ends) });
            tx.emit("org", "service.signing_secret_rotated", details.clone());
            tx.audit("service.signing_secret.rotate", format!("service:{id}"), details);
            Ok::<_, DomainError>(s)
        })
        .await?;
    Ok((s, key))
}

/// A credential naming an OAuth connection must name one of the organization's own (not a
/// user's personal connection).
fn check_connection(tx: &Tx<'_, '_>, org: Id, c: Option<&SealedCredential>) -> Result<(), DomainError> {
    let Some(SealedCredential { kind: CredentialKind::OAuthConnection { connection }, .. }) = c else { return Ok(()) };
    match tx.record::<super::connections::Connection>(OAUTH_CONNECTIONS, &org_id_key(org, *connection))? {
        Some(conn) if conn.owner == super::connections::Owner::Org => Ok(()),
        Some(_) => Err(DomainError::invalid(
            "/credential/connection",
            "personal_connection",
            "a service's credential is one of the organization's connections, not a user's own",
        )),
        None => Err(DomainError::invalid("/credential/connection", "not_found", "no such connection")),
    }
}

fn load(tx: &Tx<'_, '_>, org: Id, id: Id) -> Result<Service, DomainError> {
    tx.record::<Service>(SERVICES, &org_id_key(org, id))?.ok_or(DomainError::NotFound { what: "service" })
}

/// Changes a service. A new base URL or health check starts its health over (unknown).
pub async fn update(
    writer: &Writer,
    vault: &Vault,
    policy: &AddressPolicy,
    ctx: MutationCtx,
    id: Id,
    f: ServiceFields,
) -> Result<Service, DomainError> {
    let mut errors = Vec::new();
    check_fields(policy, &f, &mut errors);
    check(errors)?;
    let org = ctx.scope.org();
    let credential = f.credential.clone().map(|c| c.map(|c| seal(vault, org, id, &c)));
    writer
        .submit(ctx, move |tx| {
            let mut s = load(tx, org, id)?;
            super::paging::check_version(f.expected_version, s.version)?;
            let restart = f.base_url.is_some() || f.health_check.is_some();
            if let Some(v) = &f.name {
                v.trim().clone_into(&mut s.name);
            }
            if let Some(v) = &f.kind {
                s.kind.clone_from(v);
            }
            if let Some(v) = &f.base_url {
                v.trim_end_matches('/').clone_into(&mut s.base_url);
            }
            if let Some(v) = &f.description {
                s.description.clone_from(v);
            }
            if let Some(v) = &f.capabilities {
                s.capabilities.clone_from(v);
            }
            if let Some(v) = &f.ui {
                s.ui.clone_from(v);
            }
            if let Some(v) = &f.callers {
                s.callers.clone_from(v);
            }
            if let Some(v) = &f.metadata {
                s.metadata.clone_from(v);
            }
            if let Some(v) = &credential {
                check_connection(tx, org, v.as_ref())?;
                s.credential.clone_from(v);
            }
            if let Some(v) = &f.health_check {
                s.health_check.clone_from(v);
            }
            if let Some(v) = f.gateway {
                s.gateway = v;
            }
            if let Some(v) = &f.mcp {
                s.mcp.clone_from(v);
            }
            let now = tx.now_ms();
            if restart {
                s.health = Health::Unknown;
                s.health_since_ms = now;
            }
            s.version += 1;
            s.updated_at_ms = now;
            tx.put(SERVICES, &org_id_key(org, id), &encode(&s))?;
            tx.emit("org", "service.updated", summary(&s));
            tx.audit("service.update", format!("service:{id}"), summary(&s));
            Ok(s)
        })
        .await
}

/// Removes a service and its health history.
pub async fn delete(writer: &Writer, ctx: MutationCtx, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let s = load(tx, org, id)?;
            let prefix = org_id_key(org, id);
            for (k, _) in tx.range(SERVICE_HEALTH, &prefix, &prefix_end(&prefix), usize::MAX)? {
                tx.delete(SERVICE_HEALTH, &k)?;
            }
            tx.delete(SERVICES, &prefix)?;
            tx.emit("org", "service.deleted", json!({ "id": id, "name": s.name }));
            tx.audit("service.delete", format!("service:{id}"), json!({ "name": s.name }));
            Ok(())
        })
        .await
}

pub fn get(store: &Store, scope: OrgScope, id: Id) -> Result<Service, DomainError> {
    store
        .peek(|r| r.record::<Service>(SERVICES, &org_id_key(scope.org(), id)))?
        .ok_or(DomainError::NotFound { what: "service" })
}

/// Services kept decoded (they are read on every gateway call) while their rows stay
/// unwritten: at most this many…
const KEPT_MAX: usize = 1024;
/// …of at most this many bytes stored (a service may carry a 64 KiB UI mapping; one that large
/// is decoded each time), so the map holds about 16 MiB of rows at most.
const KEPT_ROW_BYTES_MAX: usize = 16 * 1024;

/// Decoded services by (organization, service), each kept while its row's change counter
/// (`Store::row_changes`) stays where it was when the row was read.
pub struct Kept(Stamped<(Id, Id), Arc<Service>>);

impl Default for Kept {
    fn default() -> Self {
        Self(Stamped::new(KEPT_MAX))
    }
}

/// One of the organization's services, as [`get`], from `kept` while its row is unchanged.
pub fn get_kept(store: &Store, kept: &Kept, scope: OrgScope, id: Id) -> Result<Arc<Service>, DomainError> {
    let org = scope.org();
    let key = org_id_key(org, id);
    // The counter before the row: what is kept is never labelled newer than what it was read from.
    let stamp = store.row_changes(SERVICES, &key);
    if let Some(s) = kept.0.get(&(org, id), stamp) {
        return Ok(s);
    }
    let row = store.peek(|r| r.get(SERVICES, &key))?.ok_or(DomainError::NotFound { what: "service" })?;
    let service = Arc::new(decode::<Service>(SERVICES, &row)?);
    if row.len() <= KEPT_ROW_BYTES_MAX {
        kept.0.put((org, id), stamp, service.clone());
    }
    Ok(service)
}

/// The organization's services, oldest first.
pub async fn list(store: &Store, scope: OrgScope, max: usize) -> Result<Vec<Service>, DomainError> {
    Ok(store.org_records(SERVICES, scope.org(), max).await?)
}

/// Every service of the instance with a health check, as (org, service).
pub fn checked(r: &Reader) -> Result<Vec<(Id, Service)>, StoreError> {
    let mut out = Vec::new();
    r.for_each(SERVICES, |k, v| {
        if let Some(org) = k.get(..16).and_then(Id::from_slice) {
            let s: Service = decode(SERVICES, v)?;
            if s.health_check.is_some() {
                out.push((org, s));
            }
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Records a change of health decided by the checker: the service's status, a line of its
/// history (the oldest beyond `HISTORY_MAX` dropped), an event and an audit record. Nothing
/// happens if the service is gone, no longer checked, or changed since (`version`).
pub async fn record_health(
    writer: &Writer,
    ctx: MutationCtx,
    id: Id,
    version: u64,
    to: Health,
    detail: String,
) -> Result<Option<HealthChange>, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let Some(mut s) = tx.record::<Service>(SERVICES, &org_id_key(org, id))? else { return Ok(None) };
            if s.version != version || s.health == to || s.health_check.is_none() {
                return Ok(None);
            }
            let now = tx.now_ms();
            let change = HealthChange { id: Id::new(), at_ms: now, from: s.health, to, detail: detail.clone() };
            s.health = to;
            s.health_since_ms = now;
            tx.put(SERVICES, &org_id_key(org, id), &encode(&s))?;
            tx.put(SERVICE_HEALTH, &org_id_id_key(org, id, change.id), &encode(&change))?;
            let prefix = org_id_key(org, id);
            let rows = tx.range(SERVICE_HEALTH, &prefix, &prefix_end(&prefix), HISTORY_MAX + 16)?;
            for (k, _) in rows.iter().take(rows.len().saturating_sub(HISTORY_MAX)) {
                tx.delete(SERVICE_HEALTH, k)?;
            }
            let details =
                json!({ "id": id, "name": s.name, "from": change.from.as_str(), "to": to.as_str(), "detail": detail });
            tx.emit("org", &format!("service.{}", to.as_str()), details.clone());
            tx.audit("service.health", format!("service:{id}"), details);
            Ok(Some(change))
        })
        .await
}

/// A service's health history, newest first.
pub async fn history(
    store: &Store,
    scope: OrgScope,
    id: Id,
    page: PageRequest,
) -> Result<Page<HealthChange>, DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            if r.get(SERVICES, &org_id_key(org, id))?.is_none() {
                return Err(DomainError::NotFound { what: "service" });
            }
            Ok(newest_first(r, SERVICE_HEALTH, &org_id_key(org, id), &page)?)
        })
        .await
}

/// The organizations with services.
pub fn orgs_with_services(r: &Reader) -> Result<Vec<Id>, StoreError> {
    let mut orgs = Vec::new();
    r.for_each(SERVICES, |k, _| {
        if let Some(org) = k.get(..16).and_then(Id::from_slice) {
            if orgs.last() != Some(&org) {
                orgs.push(org);
            }
        }
        Ok(true)
    })?;
    Ok(orgs)
}

/// Re-seals every service credential of `org` under the vault's current key; how many.
pub async fn reseal(writer: &Writer, vault: std::sync::Arc<Vault>, ctx: MutationCtx) -> Result<usize, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut n = 0;
            for (k, v) in tx.range(SERVICES, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
                let mut s: Service = decode(SERVICES, &v)?;
                if let Some(c) = &mut s.credential {
                    c.sealed = vault.reseal_base64(&purpose(org, s.id), &c.sealed).map_err(|_| damaged(s.id))?;
                    n += 1;
                }
                n += secrets::reseal(&mut s.signing, &vault, &signing_purpose(org, s.id))
                    .ok_or_else(|| damaged(s.id))?;
                tx.put(SERVICES, &k, &encode(&s))?;
            }
            if n > 0 {
                tx.audit("service.credentials.reseal", "services", json!({ "key_id": vault.key_id(), "resealed": n }));
            }
            Ok(n)
        })
        .await
}
