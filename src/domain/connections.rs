//! OAuth connections: Outpost as an OAuth client of outside services, so integrations (the
//! gateway's services, MCP servers) call them with tokens that stay fresh without anyone
//! pasting them.
//!
//! An organization's admin adds a **provider** (a template from the catalog shipped in the
//! binary, `oauth_providers.toml`, filled with the client id and secret of the app registered
//! there). A **connection** is one account at a provider: the organization's (made by an admin,
//! usable as a service's credential) or a user's own. Its tokens are sealed in the vault, per
//! connection, and never leave the server in any answer, event, audit record or log line.
//!
//! An authorization in progress is a **pending** row keyed by a digest of its `state`: single
//! use (the callback deletes it in the same commit that reads it), bound to the organization,
//! user, provider and redirect URI, and expiring (ten minutes by default).
//!
//! The network half (discovery, the token endpoint, refresh, revocation) is `crate::oauth`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{DomainError, FieldError, check};
use crate::egress::{AddressPolicy, EgressError, check_url};
use crate::ids::{self, Id};
use crate::store::tables::{
    OAUTH_CONNECTIONS, OAUTH_PENDING, OAUTH_PROVIDERS, SERVICES, SSO_PROVIDERS, org_bytes_key, org_id_key,
};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;
use crate::vault::Vault;

pub const NAME_CHARS_MAX: usize = 100;
pub const URL_BYTES_MAX: usize = 2048;
pub const SCOPES_MAX: usize = 50;
pub const SCOPE_BYTES_MAX: usize = 200;
pub const CLIENT_ID_BYTES_MAX: usize = 500;
pub const CLIENT_SECRET_BYTES_MAX: usize = 4096;
pub const PARAMS_MAX: usize = 20;
/// Bytes of the random part of a `state`.
const STATE_NONCE_BYTES: usize = 32;

/// How the client proves itself at the token endpoint.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (`client_secret_basic`).
    #[default]
    Basic,
    /// In the form (`client_secret_post`).
    Post,
}

/// How a connection gets its tokens.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// A person signs in at the provider and consents (with PKCE).
    #[default]
    AuthorizationCode,
    /// The client's own credentials, no person (service to service).
    ClientCredentials,
}

/// A provider template of the catalog.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    #[serde(skip)]
    pub key: String,
    pub name: String,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "space")]
    pub scope_separator: String,
    pub pkce: bool,
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub grant: Grant,
    /// Placeholders in the URLs the admin fills in (`{tenant}`).
    #[serde(default)]
    pub params: Vec<String>,
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    pub quirks: String,
}

fn space() -> String {
    " ".into()
}

/// The template that takes its endpoints from an issuer's discovery document.
pub const GENERIC_OIDC: &str = "generic_oidc";
/// The template whose endpoints the admin gives.
pub const CUSTOM: &str = "custom";

static CATALOG: LazyLock<Vec<Template>> = LazyLock::new(|| {
    let all: BTreeMap<String, Template> =
        toml::from_str(include_str!("oauth_providers.toml")).unwrap_or_else(|e| panic!("the provider catalog: {e}"));
    all.into_iter().map(|(key, t)| Template { key, ..t }).collect()
});

/// The catalog, by key.
pub fn templates() -> &'static [Template] {
    &CATALOG
}

pub fn template(key: &str) -> Option<&'static Template> {
    CATALOG.iter().find(|t| t.key == key)
}

/// An organization's provider: a template filled in, with the app's client credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Provider {
    pub id: Id,
    pub name: String,
    pub template: String,
    pub client_id: String,
    /// Base64 of the client secret sealed for this provider; `None` for a public client.
    pub client_secret: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: String,
    pub revocation_url: Option<String>,
    /// The issuer whose discovery document named the endpoints (`generic_oidc`).
    pub issuer: Option<String>,
    /// Asked for when a connection names none.
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub pkce: bool,
    pub client_auth: ClientAuth,
    pub grant: Grant,
    pub authorize_params: BTreeMap<String, String>,
    pub created_by: Id,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
}

impl Provider {
    /// The client secret, opened.
    pub fn secret(&self, vault: &Vault, org: Id) -> Result<Option<String>, DomainError> {
        let Some(sealed) = &self.client_secret else { return Ok(None) };
        open_string(vault, &provider_purpose(org, self.id), sealed)
            .map(Some)
            .ok_or_else(|| damaged("provider", self.id))
    }
}

/// Endpoints found in an issuer's discovery document (or given by the admin).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
}

/// A provider as given (its secret in the clear, never stored so).
#[derive(Clone, Default)]
pub struct ProviderFields {
    pub name: Option<String>,
    pub template: String,
    /// The template's placeholders.
    pub params: BTreeMap<String, String>,
    pub client_id: Option<String>,
    /// `Some(None)`: a public client (no secret).
    pub client_secret: Option<Option<String>>,
    pub issuer: Option<String>,
    /// For `custom` (given) and `generic_oidc` (discovered).
    pub endpoints: Endpoints,
    pub scopes: Option<Vec<String>>,
    pub authorize_params: Option<BTreeMap<String, String>>,
    /// For `custom` and `generic_oidc` (the catalog's templates say their own).
    pub grant: Option<Grant>,
    pub expected_version: Option<u64>,
}

impl std::fmt::Debug for ProviderFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderFields")
            .field("template", &self.template)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Whose a connection is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// The organization's: made by an admin, usable as a service's credential.
    Org,
    /// One user's own account.
    User { id: Id },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    /// The provider refused the refresh token: someone must connect again.
    NeedsReauth,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::NeedsReauth => "needs_reauth",
        }
    }
}

/// A connection's tokens, in the clear (only ever sealed at rest, never printed).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("refresh_token", &self.refresh_token.is_some()).finish_non_exhaustive()
    }
}

/// Tokens fresh from the provider's token endpoint.
#[derive(Clone, Debug)]
pub struct Issued {
    pub tokens: Tokens,
    /// When the access token expires (`None`: the provider did not say).
    pub expires_at_ms: Option<i64>,
    /// The scopes granted (`None`: as requested).
    pub scopes: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connection {
    pub id: Id,
    pub provider_id: Id,
    pub owner: Owner,
    pub status: Status,
    pub requested_scopes: Vec<String>,
    pub granted_scopes: Vec<String>,
    /// Base64 of the sealed `Tokens` JSON.
    pub tokens: String,
    pub expires_at_ms: Option<i64>,
    /// Whether a refresh token is held.
    pub refreshable: bool,
    /// Counts the tokens it has had (1 when made, one more per refresh).
    pub generation: u64,
    /// Why the last refresh failed (the provider's error code and description).
    pub last_error: Option<String>,
    pub created_by: Id,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub refreshed_at_ms: Option<i64>,
    pub version: u64,
}

impl Connection {
    /// The tokens, opened.
    pub fn tokens(&self, vault: &Vault, org: Id) -> Result<Tokens, DomainError> {
        open_string(vault, &tokens_purpose(org, self.id), &self.tokens)
            .and_then(|s| serde_json::from_str(&s).ok())
            .ok_or_else(|| damaged("connection", self.id))
    }

    /// Whether `user` may see and use it (an org connection: anyone the permission lets in).
    pub fn visible_to(&self, user: Id) -> bool {
        match self.owner {
            Owner::Org => true,
            Owner::User { id } => id == user,
        }
    }

    /// Where its events go: the org topic for the organization's, the user's inbox for theirs.
    fn topic(&self) -> String {
        match self.owner {
            Owner::Org => "org".into(),
            Owner::User { id } => format!("user:{id}"),
        }
    }
}

/// An authorization in progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    pub provider_id: Id,
    pub user: Id,
    pub owner: Owner,
    pub scopes: Vec<String>,
    /// Base64 of the sealed PKCE verifier.
    pub verifier: String,
    pub redirect_uri: String,
    /// Where the browser goes when done (a path on this server).
    pub return_to: Option<String>,
    pub expires_at_ms: i64,
}

fn provider_purpose(org: Id, id: Id) -> String {
    format!("oauth_client_secret:{org}:{id}")
}

fn tokens_purpose(org: Id, id: Id) -> String {
    format!("oauth_tokens:{org}:{id}")
}

fn verifier_purpose(org: Id) -> String {
    format!("oauth_pkce_verifier:{org}")
}

pub(super) fn seal_string(vault: &Vault, purpose: &str, plain: &str) -> String {
    STANDARD.encode(vault.seal(purpose, plain.as_bytes()))
}

pub(super) fn open_string(vault: &Vault, purpose: &str, sealed: &str) -> Option<String> {
    let bytes = STANDARD.decode(sealed).ok()?;
    String::from_utf8(vault.open(purpose, &bytes).ok()?).ok()
}

fn damaged(what: &str, id: Id) -> DomainError {
    DomainError::Store(StoreError::Corrupt {
        table: format!("oauth_{what}s"),
        detail: format!("{what} {id}: its secret does not open"),
    })
}

fn check_scopes(pointer: &str, scopes: &[String], errors: &mut Vec<FieldError>) {
    let bad = |s: &String| s.is_empty() || s.len() > SCOPE_BYTES_MAX || s.bytes().any(|b| b <= b' ' || b == b'"');
    if scopes.len() > SCOPES_MAX || scopes.iter().any(bad) {
        errors.push(FieldError::new(
            pointer,
            "invalid_scopes",
            format!("at most {SCOPES_MAX} scopes of 1–{SCOPE_BYTES_MAX} printable characters without spaces"),
        ));
    }
}

fn check_endpoint(policy: &AddressPolicy, pointer: &str, url: &str, errors: &mut Vec<FieldError>) {
    let parsed = (url.len() <= URL_BYTES_MAX)
        .then(|| reqwest::Url::parse(url).ok())
        .flatten()
        .ok_or_else(|| EgressError::BadUrl(format!("not a URL of at most {URL_BYTES_MAX} bytes")));
    match parsed.and_then(|u| check_url(policy, &u)) {
        Ok(()) => {}
        Err(EgressError::Refused(why)) => errors.push(FieldError::new(pointer, "address_refused", why)),
        Err(e) => errors.push(FieldError::new(pointer, "invalid_url", e.to_string())),
    }
}

/// A template URL with its placeholders filled in; a value that is not a host-like word is
/// refused (it would change the URL's shape).
fn fill(url: &str, params: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = url.to_owned();
    for (k, v) in params {
        if v.is_empty() || v.len() > 255 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
            return Err(format!("`{k}` must be a host name, domain or id (letters, digits, - . _ :)"));
        }
        out = out.replace(&format!("{{{k}}}"), v);
    }
    if out.contains('{') { Err("a placeholder of the template is not filled in".into()) } else { Ok(out) }
}

/// The provider a template and the given fields make (not yet stored): placeholders filled,
/// endpoints checked against the egress policy.
fn build(
    vault: &Vault,
    policy: &AddressPolicy,
    org: Id,
    id: Id,
    caller: Id,
    f: &ProviderFields,
) -> Result<Provider, DomainError> {
    let Some(t) = template(&f.template) else {
        return Err(DomainError::invalid(
            "/template",
            "unknown_template",
            format!("one of {}", templates().iter().map(|t| t.key.as_str()).collect::<Vec<_>>().join(", ")),
        ));
    };
    let mut errors = Vec::new();
    let open = t.key == CUSTOM || t.key == GENERIC_OIDC;
    let grant = if open { f.grant.unwrap_or(t.grant) } else { t.grant };
    if !open && f.grant.is_some_and(|g| g != t.grant) {
        errors.push(FieldError::new("/grant", "fixed_by_template", "only custom and generic_oidc choose their grant"));
    }
    let missing: Vec<&String> = t.params.iter().filter(|p| !f.params.contains_key(*p)).collect();
    if !missing.is_empty() || f.params.len() > PARAMS_MAX || f.params.keys().any(|k| !t.params.contains(k)) {
        errors.push(FieldError::new("/params", "invalid_params", format!("this template takes {:?}", t.params)));
    }
    let endpoint = |given: &Option<String>, templated: &Option<String>| -> Result<Option<String>, String> {
        match (given, templated) {
            (Some(g), _) if open => Ok(Some(g.clone())),
            (_, Some(u)) => fill(u, &f.params).map(Some),
            _ => Ok(None),
        }
    };
    let mut urls = [None, None, None];
    let given = [&f.endpoints.authorize_url, &f.endpoints.token_url, &f.endpoints.revocation_url];
    let templated = [&t.authorize_url, &t.token_url, &t.revocation_url];
    for (i, name) in ["authorize_url", "token_url", "revocation_url"].into_iter().enumerate() {
        match endpoint(given[i], templated[i]) {
            Ok(Some(u)) => {
                check_endpoint(policy, &format!("/{name}"), &u, &mut errors);
                urls[i] = Some(u);
            }
            Ok(None) => {}
            Err(why) => errors.push(FieldError::new("/params", "invalid_params", why)),
        }
    }
    let [authorize_url, token_url, revocation_url] = urls;
    if token_url.is_none() {
        errors.push(FieldError::new("/token_url", "required", "the provider's token endpoint"));
    }
    if grant == Grant::AuthorizationCode && authorize_url.is_none() {
        errors.push(FieldError::new("/authorize_url", "required", "the provider's authorization endpoint"));
    }
    let client_id = f.client_id.clone().unwrap_or_default();
    if client_id.is_empty() || client_id.len() > CLIENT_ID_BYTES_MAX || client_id.contains(['\r', '\n']) {
        errors.push(FieldError::new("/client_id", "invalid_client_id", format!("1–{CLIENT_ID_BYTES_MAX} bytes")));
    }
    let secret = f.client_secret.clone().flatten();
    if secret.as_ref().is_some_and(|s| s.is_empty() || s.len() > CLIENT_SECRET_BYTES_MAX) {
        errors.push(FieldError::new("/client_secret", "invalid_secret", format!("1–{CLIENT_SECRET_BYTES_MAX} bytes")));
    }
    if secret.is_none() && grant == Grant::ClientCredentials {
        errors.push(FieldError::new("/client_secret", "required", "client credentials need a secret"));
    }
    check_name(f.name.as_deref(), &mut errors);
    let scopes = f.scopes.clone().unwrap_or_else(|| t.scopes.clone());
    check_scopes("/scopes", &scopes, &mut errors);
    let authorize_params = f.authorize_params.clone().unwrap_or_else(|| t.authorize_params.clone());
    if authorize_params.len() > PARAMS_MAX || authorize_params.iter().any(|(k, v)| k.len() > 100 || v.len() > 500) {
        errors.push(FieldError::new("/authorize_params", "too_large", format!("at most {PARAMS_MAX} short entries")));
    }
    check(errors)?;
    let now = ids::now_ms();
    Ok(Provider {
        id,
        name: f.name.clone().map_or_else(|| t.name.clone(), |n| n.trim().to_owned()),
        template: t.key.clone(),
        client_id,
        client_secret: secret.map(|s| seal_string(vault, &provider_purpose(org, id), &s)),
        authorize_url,
        token_url: token_url.unwrap_or_default(),
        revocation_url,
        issuer: f.issuer.clone(),
        scopes,
        scope_separator: t.scope_separator.clone(),
        pkce: t.pkce,
        client_auth: t.client_auth,
        grant,
        authorize_params,
        created_by: caller,
        created_at_ms: now,
        updated_at_ms: now,
        version: 1,
    })
}

fn check_name(name: Option<&str>, errors: &mut Vec<FieldError>) {
    if name.is_some_and(|n| n.trim().is_empty() || n.chars().count() > NAME_CHARS_MAX) {
        errors.push(FieldError::new("/name", "invalid_length", format!("1–{NAME_CHARS_MAX} characters")));
    }
}

/// What events and audit records show of a provider: never its secret.
fn provider_summary(p: &Provider) -> serde_json::Value {
    json!({
        "id": p.id,
        "name": p.name,
        "template": p.template,
        "client_id": p.client_id,
        "token_url": p.token_url,
        "grant": p.grant,
    })
}

/// Adds a provider to the organization.
pub async fn create_provider(
    writer: &Writer,
    vault: &Vault,
    policy: &AddressPolicy,
    ctx: MutationCtx,
    caller: Id,
    f: ProviderFields,
    per_org_max: usize,
) -> Result<Provider, DomainError> {
    let org = ctx.scope.org();
    let p = build(vault, policy, org, Id::new(), caller, &f)?;
    writer
        .submit(ctx, move |tx| {
            if tx.range(OAUTH_PROVIDERS, org.as_bytes(), &prefix_end(org.as_bytes()), per_org_max + 1)?.len()
                >= per_org_max
            {
                return Err(DomainError::Conflict {
                    code: "quota_exceeded",
                    detail: format!("at most {per_org_max} OAuth providers per organization"),
                });
            }
            let mut p = p.clone();
            p.created_at_ms = tx.now_ms();
            p.updated_at_ms = p.created_at_ms;
            tx.put(OAUTH_PROVIDERS, &org_id_key(org, p.id), &encode(&p))?;
            tx.emit("org", "oauth_provider.created", provider_summary(&p));
            tx.audit("oauth_provider.create", format!("oauth_provider:{}", p.id), provider_summary(&p));
            Ok(p)
        })
        .await
}

/// Changes a provider's name, client credentials or scopes.
pub async fn update_provider(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    id: Id,
    f: ProviderFields,
) -> Result<Provider, DomainError> {
    let mut errors = Vec::new();
    check_name(f.name.as_deref(), &mut errors);
    if let Some(s) = &f.scopes {
        check_scopes("/scopes", s, &mut errors);
    }
    if f.client_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > CLIENT_ID_BYTES_MAX || c.contains(['\r', '\n'])) {
        errors.push(FieldError::new("/client_id", "invalid_client_id", format!("1–{CLIENT_ID_BYTES_MAX} bytes")));
    }
    if let Some(Some(s)) = &f.client_secret {
        if s.is_empty() || s.len() > CLIENT_SECRET_BYTES_MAX {
            errors.push(FieldError::new(
                "/client_secret",
                "invalid_secret",
                format!("1–{CLIENT_SECRET_BYTES_MAX} bytes"),
            ));
        }
    }
    check(errors)?;
    let org = ctx.scope.org();
    let secret = f.client_secret.clone().map(|s| s.map(|s| seal_string(vault, &provider_purpose(org, id), &s)));
    writer
        .submit(ctx, move |tx| {
            let mut p = load_provider(tx, org, id)?;
            super::paging::check_version(f.expected_version, p.version)?;
            if p.grant == Grant::ClientCredentials && secret == Some(None) {
                return Err(DomainError::invalid("/client_secret", "required", "client credentials need a secret"));
            }
            if let Some(n) = &f.name {
                n.trim().clone_into(&mut p.name);
            }
            if let Some(c) = &f.client_id {
                p.client_id.clone_from(c);
            }
            if let Some(s) = &secret {
                p.client_secret.clone_from(s);
            }
            if let Some(s) = &f.scopes {
                p.scopes.clone_from(s);
            }
            p.version += 1;
            p.updated_at_ms = tx.now_ms();
            tx.put(OAUTH_PROVIDERS, &org_id_key(org, id), &encode(&p))?;
            tx.emit("org", "oauth_provider.updated", provider_summary(&p));
            tx.audit("oauth_provider.update", format!("oauth_provider:{id}"), provider_summary(&p));
            Ok(p)
        })
        .await
}

/// Removes a provider no connection uses.
pub async fn delete_provider(writer: &Writer, ctx: MutationCtx, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let p = load_provider(tx, org, id)?;
            for (_, v) in tx.range(OAUTH_CONNECTIONS, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
                let c: Connection = decode(OAUTH_CONNECTIONS, &v)?;
                if c.provider_id == id {
                    return Err(DomainError::Conflict {
                        code: "provider_in_use",
                        detail: format!("connection {} uses this provider: delete it first", c.id),
                    });
                }
            }
            tx.delete(OAUTH_PROVIDERS, &org_id_key(org, id))?;
            tx.emit("org", "oauth_provider.deleted", json!({ "id": id, "name": p.name }));
            tx.audit("oauth_provider.delete", format!("oauth_provider:{id}"), json!({ "name": p.name }));
            Ok(())
        })
        .await
}

fn load_provider(tx: &Tx<'_, '_>, org: Id, id: Id) -> Result<Provider, DomainError> {
    tx.record::<Provider>(OAUTH_PROVIDERS, &org_id_key(org, id))?
        .ok_or(DomainError::NotFound { what: "OAuth provider" })
}

pub fn get_provider(store: &Store, scope: OrgScope, id: Id) -> Result<Provider, DomainError> {
    store
        .peek(|r| r.record::<Provider>(OAUTH_PROVIDERS, &org_id_key(scope.org(), id)))?
        .ok_or(DomainError::NotFound { what: "OAuth provider" })
}

pub async fn list_providers(store: &Store, scope: OrgScope, max: usize) -> Result<Vec<Provider>, DomainError> {
    Ok(store.org_records(OAUTH_PROVIDERS, scope.org(), max).await?)
}

/// The scopes a connection asks for: those given, else the provider's.
pub fn scopes_for(provider: &Provider, given: Option<Vec<String>>) -> Result<Vec<String>, DomainError> {
    let scopes = given.unwrap_or_else(|| provider.scopes.clone());
    let mut errors = Vec::new();
    check_scopes("/scopes", &scopes, &mut errors);
    check(errors)?;
    Ok(scopes)
}

/// The `state` of an authorization: the organization's id and a random nonce, base64url.
pub(super) fn state_parts(state: &str) -> Option<(Id, Vec<u8>)> {
    let raw = URL_SAFE_NO_PAD.decode(state).ok()?;
    (raw.len() == 16 + STATE_NONCE_BYTES).then(|| Some((Id::from_slice(&raw[..16])?, raw[16..].to_vec()))).flatten()
}

/// The `state` for a nonce of `org`.
pub(super) fn state_text(org: Id, nonce: &[u8]) -> String {
    let mut raw = org.as_bytes().to_vec();
    raw.extend_from_slice(nonce);
    URL_SAFE_NO_PAD.encode(raw)
}

pub(super) fn pending_key(org: Id, nonce: &[u8]) -> Vec<u8> {
    org_bytes_key(org, ring::digest::digest(&ring::digest::SHA256, nonce).as_ref())
}

/// Writes down an authorization about to start; returns its `state`. Expired ones of the
/// organization are cleared on the way; at most `pending_max` wait at once.
pub async fn begin(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    pending: Pending,
    verifier: &str,
    pending_max: usize,
) -> Result<String, DomainError> {
    let org = ctx.scope.org();
    let mut nonce = [0u8; STATE_NONCE_BYTES];
    ids::fill_random(&mut nonce);
    let state = state_text(org, &nonce);
    let pending = Pending { verifier: seal_string(vault, &verifier_purpose(org), verifier), ..pending };
    writer
        .submit(ctx, move |tx| {
            let now = tx.now_ms();
            let rows = tx.range(OAUTH_PENDING, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)?;
            let mut live = 0;
            for (k, v) in rows {
                let p: Pending = decode(OAUTH_PENDING, &v)?;
                if p.expires_at_ms <= now {
                    tx.delete(OAUTH_PENDING, &k)?;
                } else {
                    live += 1;
                }
            }
            if live >= pending_max {
                return Err(DomainError::Conflict {
                    code: "too_many_pending",
                    detail: format!("{pending_max} authorizations are already waiting: finish or let them expire"),
                });
            }
            tx.put(OAUTH_PENDING, &pending_key(org, &nonce), &encode(&pending))?;
            let details = json!({
                "provider_id": pending.provider_id,
                "owner": pending.owner,
                "scopes": pending.scopes,
                "expires_at": ids::rfc3339(pending.expires_at_ms),
            });
            tx.audit("connection.authorize", format!("oauth_provider:{}", pending.provider_id), details);
            Ok(())
        })
        .await?;
    Ok(state)
}

/// Takes the authorization a callback's `state` names: gone once taken, whether or not it is
/// still in time. `None` for a state never issued, already used or expired. Returns its
/// organization's scope, the record and the PKCE verifier.
pub async fn take(
    writer: &Writer,
    vault: &Vault,
    state: &str,
    actor: &str,
) -> Result<Option<(OrgScope, Pending, String)>, DomainError> {
    let Some((org, nonce)) = state_parts(state) else { return Ok(None) };
    // The state is checked against the organization's own rows: a forged id finds none.
    let scope = OrgScope::from_credential(org);
    let ctx = MutationCtx { scope, actor: actor.to_owned(), request_id: None, client_addr: None };
    let key = pending_key(org, &nonce);
    let found = writer
        .submit(ctx, move |tx| {
            let Some(p) = tx.record::<Pending>(OAUTH_PENDING, &key)? else { return Ok(None) };
            tx.delete(OAUTH_PENDING, &key)?;
            let in_time = p.expires_at_ms > tx.now_ms();
            let details = json!({ "provider_id": p.provider_id, "user": p.user, "in_time": in_time });
            tx.audit("connection.callback", format!("oauth_provider:{}", p.provider_id), details);
            Ok::<_, DomainError>(in_time.then_some(p))
        })
        .await?;
    let Some(p) = found else { return Ok(None) };
    let verifier = open_string(vault, &verifier_purpose(org), &p.verifier).ok_or_else(|| damaged("pending", org))?;
    Ok(Some((scope, p, verifier)))
}

/// What events and audit records show of a connection: never a token.
fn summary(c: &Connection) -> serde_json::Value {
    json!({
        "id": c.id,
        "provider_id": c.provider_id,
        "owner": c.owner,
        "status": c.status.as_str(),
        "granted_scopes": c.granted_scopes,
        "generation": c.generation,
    })
}

/// Stores a new connection with its first tokens.
#[allow(clippy::too_many_arguments)] // the connection's parts
pub async fn connect(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    caller: Id,
    provider: &Provider,
    owner: Owner,
    requested: Vec<String>,
    issued: Issued,
    per_org_max: usize,
) -> Result<Connection, DomainError> {
    let org = ctx.scope.org();
    let id = Id::new();
    let sealed =
        seal_string(vault, &tokens_purpose(org, id), &serde_json::to_string(&issued.tokens).unwrap_or_default());
    let provider_id = provider.id;
    writer
        .submit(ctx, move |tx| {
            load_provider(tx, org, provider_id)?;
            if tx.range(OAUTH_CONNECTIONS, org.as_bytes(), &prefix_end(org.as_bytes()), per_org_max + 1)?.len()
                >= per_org_max
            {
                return Err(DomainError::Conflict {
                    code: "quota_exceeded",
                    detail: format!("at most {per_org_max} connections per organization"),
                });
            }
            let now = tx.now_ms();
            let c = Connection {
                id,
                provider_id,
                owner,
                status: Status::Active,
                granted_scopes: issued.scopes.clone().unwrap_or_else(|| requested.clone()),
                requested_scopes: requested.clone(),
                tokens: sealed.clone(),
                expires_at_ms: issued.expires_at_ms,
                refreshable: issued.tokens.refresh_token.is_some(),
                generation: 1,
                last_error: None,
                created_by: caller,
                created_at_ms: now,
                updated_at_ms: now,
                refreshed_at_ms: None,
                version: 1,
            };
            tx.put(OAUTH_CONNECTIONS, &org_id_key(org, id), &encode(&c))?;
            tx.emit(c.topic(), "connection.created", summary(&c));
            tx.audit("connection.create", format!("connection:{id}"), summary(&c));
            Ok(c)
        })
        .await
}

/// Stores the tokens of a refresh (`issued.tokens` holds the refresh token to keep: the new
/// one if the provider rotated it, else the old), unless another refresh got there first
/// (`generation`).
pub async fn refreshed(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    id: Id,
    generation: u64,
    issued: Issued,
    rotated: bool,
) -> Result<Connection, DomainError> {
    let org = ctx.scope.org();
    let sealed =
        seal_string(vault, &tokens_purpose(org, id), &serde_json::to_string(&issued.tokens).unwrap_or_default());
    writer
        .submit(ctx, move |tx| {
            let mut c = load(tx, org, id)?;
            if c.generation != generation {
                return Ok(c);
            }
            c.tokens.clone_from(&sealed);
            c.refreshable = issued.tokens.refresh_token.is_some();
            c.expires_at_ms = issued.expires_at_ms;
            if let Some(s) = &issued.scopes {
                c.granted_scopes.clone_from(s);
            }
            let was = c.status;
            c.status = Status::Active;
            c.last_error = None;
            c.generation += 1;
            let now = tx.now_ms();
            c.refreshed_at_ms = Some(now);
            c.updated_at_ms = now;
            c.version += 1;
            tx.put(OAUTH_CONNECTIONS, &org_id_key(org, id), &encode(&c))?;
            let mut details = summary(&c);
            details["refresh_token_rotated"] = json!(rotated);
            if was != Status::Active {
                tx.emit(c.topic(), "connection.active", summary(&c));
            }
            tx.audit("connection.refresh", format!("connection:{id}"), details);
            Ok(c)
        })
        .await
}

/// Marks a connection `needs_reauth` after the provider refused its refresh token (an event
/// tells its owner), unless it changed since (`generation`).
pub async fn needs_reauth(
    writer: &Writer,
    ctx: MutationCtx,
    id: Id,
    generation: u64,
    why: String,
) -> Result<Connection, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut c = load(tx, org, id)?;
            if c.generation != generation || c.status == Status::NeedsReauth {
                return Ok(c);
            }
            c.status = Status::NeedsReauth;
            c.last_error = Some(why.clone());
            c.updated_at_ms = tx.now_ms();
            c.version += 1;
            tx.put(OAUTH_CONNECTIONS, &org_id_key(org, id), &encode(&c))?;
            let mut details = summary(&c);
            details["error"] = json!(why);
            tx.emit(c.topic(), "connection.needs_reauth", details.clone());
            tx.audit("connection.needs_reauth", format!("connection:{id}"), details);
            Ok(c)
        })
        .await
}

/// Removes a connection; `revoked` says whether the provider took the revocation.
pub async fn delete(writer: &Writer, ctx: MutationCtx, id: Id, revoked: Option<bool>) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let c = load(tx, org, id)?;
            let services = tx.range(SERVICES, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)?;
            if let Some(service) = service_using(&services, id) {
                return Err(in_use(&service));
            }
            tx.delete(OAUTH_CONNECTIONS, &org_id_key(org, id))?;
            let details = json!({ "id": id, "provider_id": c.provider_id, "owner": c.owner, "revoked": revoked });
            tx.emit(c.topic(), "connection.deleted", details.clone());
            tx.audit("connection.delete", format!("connection:{id}"), details);
            Ok(())
        })
        .await
}

/// The service whose credential connection `id` is, among `services` rows (read as JSON: the
/// registry's records are `domain::services`', which builds on this module).
fn service_using(services: &[(Vec<u8>, Vec<u8>)], id: Id) -> Option<String> {
    services.iter().find_map(|(_, v)| {
        let s: serde_json::Value = serde_json::from_slice(v).ok()?;
        let cred = &s["credential"];
        (cred["kind"] == "oauth_connection" && cred["connection"] == json!(id)).then(|| s["id"].to_string())
    })
}

fn in_use(service: &str) -> DomainError {
    DomainError::Conflict {
        code: "connection_in_use",
        detail: format!("service {service} calls with this connection: change its credential first"),
    }
}

/// Refuses while a service calls with connection `id` (checked again when it is removed).
pub async fn check_unused(store: &Store, scope: OrgScope, id: Id) -> Result<(), DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            let services = r.range(SERVICES, org.as_bytes(), &prefix_end(org.as_bytes()), false, usize::MAX)?;
            service_using(&services, id).map_or(Ok(()), |s| Err(in_use(&s)))
        })
        .await
}

fn load(tx: &Tx<'_, '_>, org: Id, id: Id) -> Result<Connection, DomainError> {
    tx.record::<Connection>(OAUTH_CONNECTIONS, &org_id_key(org, id))?
        .ok_or(DomainError::NotFound { what: "connection" })
}

pub fn get(store: &Store, scope: OrgScope, id: Id) -> Result<Connection, DomainError> {
    store
        .peek(|r| r.record::<Connection>(OAUTH_CONNECTIONS, &org_id_key(scope.org(), id)))?
        .ok_or(DomainError::NotFound { what: "connection" })
}

/// The organization's connections `user` may see (the organization's and their own).
pub async fn list(store: &Store, scope: OrgScope, user: Id, max: usize) -> Result<Vec<Connection>, DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            let mut out = Vec::new();
            for (_, v) in r.range(OAUTH_CONNECTIONS, org.as_bytes(), &prefix_end(org.as_bytes()), false, max)? {
                let c: Connection = decode(OAUTH_CONNECTIONS, &v)?;
                if c.visible_to(user) {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await
}

/// Re-seals every provider secret and connection token of `org` under the vault's current
/// key (pending authorizations expire within minutes and are left to); how many.
pub async fn reseal(writer: &Writer, vault: std::sync::Arc<Vault>, ctx: MutationCtx) -> Result<usize, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut n = 0;
            for (k, v) in tx.range(OAUTH_PROVIDERS, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
                let mut p: Provider = decode(OAUTH_PROVIDERS, &v)?;
                if let Some(s) = &mut p.client_secret {
                    *s = vault.reseal_base64(&provider_purpose(org, p.id), s).map_err(|_| damaged("provider", p.id))?;
                    tx.put(OAUTH_PROVIDERS, &k, &encode(&p))?;
                    n += 1;
                }
            }
            for (k, v) in tx.range(OAUTH_CONNECTIONS, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
                let mut c: Connection = decode(OAUTH_CONNECTIONS, &v)?;
                c.tokens = vault
                    .reseal_base64(&tokens_purpose(org, c.id), &c.tokens)
                    .map_err(|_| damaged("connection", c.id))?;
                tx.put(OAUTH_CONNECTIONS, &k, &encode(&c))?;
                n += 1;
            }
            if n > 0 {
                tx.audit("oauth.secrets.reseal", "oauth", json!({ "key_id": vault.key_id(), "resealed": n }));
            }
            Ok(n)
        })
        .await
}

/// The organizations with OAuth or identity providers (each provider's secret and each
/// connection's tokens belong to one).
pub fn orgs_with_providers(r: &crate::store::Reader) -> Result<Vec<Id>, StoreError> {
    let mut orgs = Vec::new();
    r.for_each(OAUTH_PROVIDERS, |k, _| {
        if let Some(org) = k.get(..16).and_then(Id::from_slice) {
            if orgs.last() != Some(&org) {
                orgs.push(org);
            }
        }
        Ok(true)
    })?;
    r.for_each(SSO_PROVIDERS, |k, _| {
        if let Some(org) = k.get(..16).and_then(Id::from_slice) {
            if orgs.last() != Some(&org) {
                orgs.push(org);
            }
        }
        Ok(true)
    })?;
    orgs.sort_unstable();
    orgs.dedup();
    Ok(orgs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_template_fills_into_urls_that_parse() {
        assert!(templates().len() >= 10);
        for t in templates() {
            let params: BTreeMap<String, String> = t.params.iter().map(|p| (p.clone(), "example.com".into())).collect();
            for u in [&t.authorize_url, &t.token_url, &t.revocation_url].into_iter().flatten() {
                let filled = fill(u, &params).unwrap();
                assert!(reqwest::Url::parse(&filled).is_ok(), "{}: {filled}", t.key);
            }
            let has_endpoints = t.token_url.is_some() || t.key == GENERIC_OIDC || t.key == CUSTOM;
            assert!(has_endpoints, "{} has no token endpoint", t.key);
            assert!(t.grant == Grant::ClientCredentials || t.authorize_url.is_some() || t.token_url.is_none());
        }
        assert_eq!(template("slack").unwrap().scope_separator, ",");
    }

    #[test]
    fn a_placeholder_value_cannot_change_the_urls_shape() {
        let t = template("okta").unwrap();
        let mut p = BTreeMap::new();
        p.insert("domain".to_owned(), "evil.example/x?".to_owned());
        assert!(fill(t.token_url.as_ref().unwrap(), &p).is_err());
        assert!(fill(t.token_url.as_ref().unwrap(), &BTreeMap::new()).is_err(), "unfilled");
    }

    #[test]
    fn a_state_names_its_organization_and_nothing_else_parses() {
        let org = Id::new();
        let mut raw = org.as_bytes().to_vec();
        raw.extend_from_slice(&[7u8; STATE_NONCE_BYTES]);
        let (o, n) = state_parts(&URL_SAFE_NO_PAD.encode(&raw)).unwrap();
        assert_eq!((o, n.len()), (org, STATE_NONCE_BYTES));
        assert!(state_parts("short").is_none());
        assert!(state_parts(&URL_SAFE_NO_PAD.encode(&raw[..40])).is_none());
    }
}
