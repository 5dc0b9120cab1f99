//! OAuth connections at work: the network half of `domain::connections`. The protocol is the
//! `oauth2` crate's (authorization URLs with PKCE S256, the code, refresh and client-credentials
//! grants, RFC 7009 revocation); every request it makes goes out through [`crate::egress`], so
//! a provider's endpoints are held to the same address policy as webhooks and the gateway.
//!
//! Access tokens are refreshed ahead of their expiry when used, one refresh per connection at a
//! time (single flight): callers that find a refresh under way wait for it and take its token.
//! A provider that refuses the refresh token (an OAuth error answer) marks the connection
//! `needs_reauth`; a provider that cannot be reached leaves it as it was.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse,
};
use serde::Deserialize;

use crate::config::OAuthConfig;
use crate::domain::DomainError;
use crate::domain::connections::{
    self, ClientAuth, Connection, Endpoints, Grant, Issued, Owner, Pending, Provider, Status, Tokens,
};
use crate::domain::services::{CredentialKind, Service};
use crate::egress::{CallLimits, Egress, EgressError};
use crate::ids::{self, Id};
use crate::metrics::{Metrics, OAuthLabels};
use crate::store::Store;
use crate::store::writer::{MutationCtx, Writer};
use crate::tenancy::OrgScope;
use crate::vault::VaultCell;

/// The path providers send people back to.
pub const CALLBACK_PATH: &str = "/v1/oauth/callback";
/// A discovery document or token answer at most, in bytes.
const ANSWER_BYTES_MAX: u64 = 256 * 1024;

/// What the engine is built from.
pub struct Parts {
    pub store: Store,
    pub writer: Writer,
    pub egress: Egress,
    pub vault: VaultCell,
    pub metrics: Arc<Metrics>,
    pub config: OAuthConfig,
    /// `<public_url>`, without a trailing slash.
    pub public_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The provider answered with an OAuth error (`invalid_grant`, `access_denied`, …).
    #[error("the provider refused: {code}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused { code: String, description: Option<String> },
    /// No usable answer from the provider (refused address, timeout, not OAuth).
    #[error("the provider could not be used: {0}")]
    Unreachable(String),
    /// The callback's `state` was never issued, was used already or expired.
    #[error("this authorization is unknown, used already or expired: start again")]
    InvalidState,
    /// The callback names another issuer than the provider's (RFC 9207: a mix-up).
    #[error("the authorization response comes from another issuer ({0})")]
    IssuerMismatch(String),
    /// An `id_token` failed its checks (signature, algorithm, issuer, audience, expiry, nonce).
    #[error("the identity provider's id_token is refused: {0}")]
    InvalidIdToken(String),
    /// A back-channel logout token failed its checks.
    #[error("the identity provider's logout token is refused: {0}")]
    InvalidLogoutToken(String),
    /// The connection cannot give a token until someone connects again.
    #[error("the connection needs to be authorized again{}", .0.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NeedsReauth(Option<String>),
    /// The provider is not set up for what was asked (no authorization endpoint, say).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Domain(#[from] DomainError),
}

type Client = BasicClient<EndpointMaybeSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// The lock a connection's refresh is made under.
type Flight = Arc<tokio::sync::Mutex<()>>;

struct Inner {
    parts: Parts,
    /// One lock per connection being refreshed.
    flights: Mutex<HashMap<(Id, Id), Flight>>,
}

/// The OAuth client engine (cheap to clone).
#[derive(Clone)]
pub struct OAuth {
    inner: Arc<Inner>,
}

/// The HTTP the `oauth2` crate's requests go out by: egress, bounded.
type HttpFuture = Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, EgressError>> + Send>>;

pub(crate) fn http(egress: &Egress, timeout_ms: u64) -> impl Fn(oauth2::HttpRequest) -> HttpFuture + use<> {
    let egress = egress.clone();
    move |request: oauth2::HttpRequest| {
        let egress = egress.clone();
        Box::pin(async move {
            let req = reqwest::Request::try_from(request).map_err(|e| EgressError::BadUrl(e.to_string()))?;
            let limits = CallLimits { timeout_ms, response_bytes_max: ANSWER_BYTES_MAX };
            let a = egress.send_within(req, limits).await?;
            if a.truncated {
                return Err(EgressError::Failed(format!("an answer longer than {ANSWER_BYTES_MAX} bytes")));
            }
            let mut resp = oauth2::http::Response::builder().status(a.status);
            for (k, v) in &a.headers {
                resp = resp.header(k, v);
            }
            resp.body(a.body).map_err(|e| EgressError::Failed(e.to_string()))
        })
    }
}

/// The parts of an issuer's discovery document used here.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
}

impl OAuth {
    pub fn new(parts: Parts) -> Self {
        Self { inner: Arc::new(Inner { parts, flights: Mutex::default() }) }
    }

    /// What the engine is built from (for single sign-on, which shares it).
    pub(crate) fn parts(&self) -> &Parts {
        &self.inner.parts
    }

    /// The redirect URI to register at providers.
    pub fn redirect_uri(&self) -> String {
        format!("{}{CALLBACK_PATH}", self.inner.parts.public_url)
    }

    fn timeout_ms(&self) -> u64 {
        self.inner.parts.config.request_timeout_ms
    }

    /// Reads an issuer's discovery document (`/.well-known/openid-configuration`): its
    /// authorization, token and revocation endpoints. The document must name the same issuer.
    pub async fn discover(&self, issuer: &str) -> Result<Endpoints, OAuthError> {
        let base = issuer.trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}/.well-known/openid-configuration"))
            .map_err(|e| OAuthError::Unreachable(format!("the issuer is not a URL: {e}")))?;
        let req = self.inner.parts.egress.request(reqwest::Method::GET, url).header("accept", "application/json");
        let req = req.build().map_err(|e| OAuthError::Unreachable(e.to_string()))?;
        let limits = CallLimits { timeout_ms: self.timeout_ms(), response_bytes_max: ANSWER_BYTES_MAX };
        let a = self
            .inner
            .parts
            .egress
            .send_within(req, limits)
            .await
            .map_err(|e| OAuthError::Unreachable(e.to_string()))?;
        if a.status != 200 || a.truncated {
            return Err(OAuthError::Unreachable(format!("the discovery document was answered {}", a.status)));
        }
        let d: Discovery = serde_json::from_slice(&a.body)
            .map_err(|e| OAuthError::Unreachable(format!("the discovery document does not parse: {e}")))?;
        if d.issuer.trim_end_matches('/') != base {
            return Err(OAuthError::Unreachable(format!("the discovery document names another issuer ({})", d.issuer)));
        }
        Ok(Endpoints {
            authorize_url: d.authorization_endpoint,
            token_url: d.token_endpoint,
            revocation_url: d.revocation_endpoint,
        })
    }

    /// The provider's client, its secret opened.
    fn client(&self, org: Id, p: &Provider) -> Result<Client, OAuthError> {
        let bad = |what: &str| OAuthError::Unsupported(format!("the provider's {what} does not parse"));
        let mut c = BasicClient::new(ClientId::new(p.client_id.clone()))
            .set_auth_uri_option(
                p.authorize_url
                    .as_ref()
                    .map(|u| oauth2::AuthUrl::new(u.clone()))
                    .transpose()
                    .map_err(|_| bad("authorization URL"))?,
            )
            .set_token_uri_option(Some(oauth2::TokenUrl::new(p.token_url.clone()).map_err(|_| bad("token URL"))?))
            .set_revocation_url_option(
                p.revocation_url
                    .as_ref()
                    .map(|u| oauth2::RevocationUrl::new(u.clone()))
                    .transpose()
                    .map_err(|_| bad("revocation URL"))?,
            )
            .set_auth_type(match p.client_auth {
                ClientAuth::Basic => AuthType::BasicAuth,
                ClientAuth::Post => AuthType::RequestBody,
            });
        if let Some(secret) = p.secret(&self.inner.parts.vault.get(), org)? {
            c = c.set_client_secret(ClientSecret::new(secret));
        }
        Ok(c)
    }

    fn scopes(p: &Provider, scopes: &[String]) -> Vec<Scope> {
        if p.scope_separator == " " {
            scopes.iter().map(|s| Scope::new(s.clone())).collect()
        } else if scopes.is_empty() {
            Vec::new()
        } else {
            vec![Scope::new(scopes.join(&p.scope_separator))]
        }
    }

    fn count(&self, grant: &str, outcome: &str, started: Instant) {
        let m = &self.inner.parts.metrics;
        m.oauth_token_requests.get_or_create(&OAuthLabels { grant: grant.into(), outcome: outcome.into() }).inc();
        m.oauth_token_seconds.observe(started.elapsed().as_secs_f64());
    }

    /// What a token request's failure means here (and counts it).
    fn token_error(
        &self,
        grant: &str,
        started: Instant,
        e: RequestTokenError<EgressError, BasicErrorResponse>,
    ) -> OAuthError {
        match e {
            RequestTokenError::ServerResponse(r) => {
                self.count(grant, "refused", started);
                OAuthError::Refused {
                    code: r.error().to_string(),
                    description: r.error_description().map(|d| d.chars().take(500).collect()),
                }
            }
            RequestTokenError::Request(e) => {
                self.count(grant, "failed", started);
                OAuthError::Unreachable(e.to_string())
            }
            RequestTokenError::Parse(e, _) => {
                self.count(grant, "failed", started);
                OAuthError::Unreachable(format!("the token answer does not parse: {e}"))
            }
            RequestTokenError::Other(e) => {
                self.count(grant, "failed", started);
                OAuthError::Unreachable(e)
            }
        }
    }

    fn issued(p: &Provider, r: &BasicTokenResponse, keep_refresh: Option<String>) -> (Issued, bool) {
        let rotated = r.refresh_token().is_some();
        let tokens = Tokens {
            access_token: r.access_token().secret().clone(),
            refresh_token: r.refresh_token().map(|t| t.secret().clone()).or(keep_refresh),
        };
        let expires_at_ms =
            r.expires_in().map(|d| ids::now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)));
        let scopes = r.scopes().map(|s| {
            s.iter()
                .flat_map(|x| x.split(p.scope_separator.as_str()).map(str::to_owned).collect::<Vec<_>>())
                .filter(|x| !x.is_empty())
                .collect()
        });
        (Issued { tokens, expires_at_ms, scopes }, rotated)
    }

    /// Starts an authorization: the URL to send the person to, and when it stops being good.
    pub async fn authorize(
        &self,
        ctx: MutationCtx,
        user: Id,
        provider: &Provider,
        owner: Owner,
        scopes: Vec<String>,
        return_to: Option<String>,
    ) -> Result<(String, i64), OAuthError> {
        if provider.grant != Grant::AuthorizationCode {
            return Err(OAuthError::Unsupported(
                "this provider connects with client credentials: create the connection directly".into(),
            ));
        }
        let org = ctx.scope.org();
        let client = self.client(org, provider)?.set_redirect_uri(
            RedirectUrl::new(self.redirect_uri()).map_err(|e| OAuthError::Unsupported(e.to_string()))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let cfg = &self.inner.parts.config;
        let expires_at_ms = ids::now_ms() + i64::try_from(cfg.pending_ttl_s).unwrap_or(600) * 1000;
        let pending = Pending {
            provider_id: provider.id,
            user,
            owner,
            scopes: scopes.clone(),
            verifier: String::new(),
            redirect_uri: self.redirect_uri(),
            return_to,
            expires_at_ms,
        };
        let state = connections::begin(
            &self.inner.parts.writer,
            &self.inner.parts.vault.get(),
            ctx,
            pending,
            verifier.secret(),
            cfg.pending_per_org_max,
        )
        .await?;
        let mut req = client
            .authorize_url(move || CsrfToken::new(state))
            .map_err(|e| OAuthError::Unsupported(e.to_string()))?
            .add_scopes(Self::scopes(provider, &scopes));
        if provider.pkce {
            req = req.set_pkce_challenge(challenge);
        }
        for (k, v) in &provider.authorize_params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let (url, _) = req.url();
        Ok((url.to_string(), expires_at_ms))
    }

    /// Finishes an authorization at the callback: the state taken (once), the code exchanged
    /// with the PKCE verifier, the connection stored. Returns it and where to send the browser.
    pub async fn finish(
        &self,
        state: &str,
        code: &str,
        iss: Option<&str>,
    ) -> Result<(OrgScope, Connection, Option<String>), OAuthError> {
        let parts = &self.inner.parts;
        let Some((scope, p, verifier)) =
            connections::take(&parts.writer, &parts.vault.get(), state, "oauth:callback").await?
        else {
            return Err(OAuthError::InvalidState);
        };
        let org = scope.org();
        let provider = connections::get_provider(&parts.store, scope, p.provider_id)?;
        // RFC 9207: an issuer that names itself in its answer must be this provider's.
        if let (Some(expected), Some(got)) = (&provider.issuer, iss) {
            if expected.trim_end_matches('/') != got.trim_end_matches('/') {
                return Err(OAuthError::IssuerMismatch(got.chars().take(200).collect()));
            }
        }
        let client = self.client(org, &provider)?.set_redirect_uri(
            RedirectUrl::new(p.redirect_uri.clone()).map_err(|e| OAuthError::Unsupported(e.to_string()))?,
        );
        let mut req = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OAuthError::Unsupported(e.to_string()))?;
        if provider.pkce {
            req = req.set_pkce_verifier(PkceCodeVerifier::new(verifier));
        }
        let started = Instant::now();
        let http = http(&parts.egress, self.timeout_ms());
        let answer = req.request_async(&http).await.map_err(|e| self.token_error("authorization_code", started, e))?;
        self.count("authorization_code", "ok", started);
        let (issued, _) = Self::issued(&provider, &answer, None);
        let ctx = MutationCtx { scope, actor: format!("user:{}", p.user), request_id: None, client_addr: None };
        let c = connections::connect(
            &parts.writer,
            &parts.vault.get(),
            ctx,
            p.user,
            &provider,
            p.owner,
            p.scopes,
            issued,
            parts.config.connections_per_org_max,
        )
        .await?;
        Ok((scope, c, p.return_to))
    }

    /// Makes an organization's connection with the client-credentials grant.
    pub async fn connect_client(
        &self,
        ctx: MutationCtx,
        user: Id,
        provider: &Provider,
        scopes: Vec<String>,
    ) -> Result<Connection, OAuthError> {
        if provider.grant != Grant::ClientCredentials {
            return Err(OAuthError::Unsupported(
                "this provider connects through a person's authorization: start one".into(),
            ));
        }
        let parts = &self.inner.parts;
        let org = ctx.scope.org();
        let answer = self.client_credentials(org, provider, &scopes).await?;
        let (issued, _) = Self::issued(provider, &answer, None);
        let max = parts.config.connections_per_org_max;
        Ok(connections::connect(
            &parts.writer,
            &parts.vault.get(),
            ctx,
            user,
            provider,
            Owner::Org,
            scopes,
            issued,
            max,
        )
        .await?)
    }

    async fn client_credentials(
        &self,
        org: Id,
        provider: &Provider,
        scopes: &[String],
    ) -> Result<BasicTokenResponse, OAuthError> {
        let client = self.client(org, provider)?;
        let req = client
            .exchange_client_credentials()
            .map_err(|e| OAuthError::Unsupported(e.to_string()))?
            .add_scopes(Self::scopes(provider, scopes));
        let started = Instant::now();
        let http = http(&self.inner.parts.egress, self.timeout_ms());
        let answer = req.request_async(&http).await.map_err(|e| self.token_error("client_credentials", started, e))?;
        self.count("client_credentials", "ok", started);
        Ok(answer)
    }

    /// A connection's access token, refreshed first when it is about to expire (one refresh
    /// at a time per connection; the others wait for it).
    pub async fn access_token(&self, scope: OrgScope, id: Id) -> Result<String, OAuthError> {
        let parts = &self.inner.parts;
        let c = connections::get(&parts.store, scope, id)?;
        if let Some(t) = self.usable(scope.org(), &c)? {
            return Ok(t);
        }
        let key = (scope.org(), id);
        let flight = self.flight(key);
        let token = {
            let _turn = flight.lock().await;
            // Another caller may have refreshed it while this one waited.
            let c = connections::get(&parts.store, scope, id)?;
            match self.usable(scope.org(), &c)? {
                Some(t) => Ok(t),
                None => self
                    .refresh_now(scope, c)
                    .await
                    .and_then(|c| Ok(c.tokens(&parts.vault.get(), scope.org())?.access_token)),
            }
        };
        self.land(key, &flight);
        token
    }

    /// Refreshes a connection now, whatever its expiry (one refresh at a time).
    pub async fn refresh(&self, scope: OrgScope, id: Id) -> Result<Connection, OAuthError> {
        let key = (scope.org(), id);
        let flight = self.flight(key);
        let result = {
            let _turn = flight.lock().await;
            let c = connections::get(&self.inner.parts.store, scope, id)?;
            self.refresh_now(scope, c).await
        };
        self.land(key, &flight);
        result
    }

    fn flight(&self, key: (Id, Id)) -> Flight {
        let mut f = self.inner.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.entry(key).or_default().clone()
    }

    /// Forgets the connection's lock when no one else holds it.
    fn land(&self, key: (Id, Id), flight: &Flight) {
        let mut f = self.inner.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's reference and this one: nobody is waiting.
        if Arc::strong_count(flight) <= 2 {
            f.remove(&key);
        }
    }

    /// The access token, if it is good for longer than `refresh_ahead_s`.
    fn usable(&self, org: Id, c: &Connection) -> Result<Option<String>, OAuthError> {
        if c.status == Status::NeedsReauth {
            return Err(OAuthError::NeedsReauth(c.last_error.clone()));
        }
        let ahead = i64::try_from(self.inner.parts.config.refresh_ahead_s).unwrap_or(60) * 1000;
        if c.expires_at_ms.is_some_and(|e| e - ahead <= ids::now_ms()) {
            return Ok(None);
        }
        Ok(Some(c.tokens(&self.inner.parts.vault.get(), org)?.access_token))
    }

    /// Gets new tokens for `c` (the caller holds its flight): the refresh grant, or the client
    /// credentials again. A refusal marks it `needs_reauth`.
    async fn refresh_now(&self, scope: OrgScope, c: Connection) -> Result<Connection, OAuthError> {
        let parts = &self.inner.parts;
        let org = scope.org();
        let vault = parts.vault.get();
        let provider = connections::get_provider(&parts.store, scope, c.provider_id)?;
        let old = c.tokens(&vault, org)?;
        let ctx = || MutationCtx { scope, actor: "system:oauth".into(), request_id: None, client_addr: None };
        let answer = match (provider.grant, &old.refresh_token) {
            (Grant::ClientCredentials, _) => self.client_credentials(org, &provider, &c.requested_scopes).await,
            (Grant::AuthorizationCode, Some(rt)) => {
                let client = self.client(org, &provider)?;
                let rt = RefreshToken::new(rt.clone());
                let req = client.exchange_refresh_token(&rt).map_err(|e| OAuthError::Unsupported(e.to_string()))?;
                let started = Instant::now();
                let http = http(&parts.egress, self.timeout_ms());
                let r = req.request_async(&http).await.map_err(|e| self.token_error("refresh_token", started, e));
                if r.is_ok() {
                    self.count("refresh_token", "ok", started);
                }
                r
            }
            (Grant::AuthorizationCode, None) => Err(OAuthError::Refused {
                code: "no_refresh_token".into(),
                description: Some("the access token expired and the provider gave no refresh token".into()),
            }),
        };
        match answer {
            Ok(r) => {
                let (issued, rotated) = Self::issued(&provider, &r, old.refresh_token);
                Ok(connections::refreshed(&parts.writer, &vault, ctx(), c.id, c.generation, issued, rotated).await?)
            }
            Err(e @ OAuthError::Refused { .. }) => {
                let why = e.to_string();
                tracing::warn!(connection = %c.id, org = %org, error = %why, "an OAuth connection needs authorizing again");
                connections::needs_reauth(&parts.writer, ctx(), c.id, c.generation, why.clone()).await?;
                Err(OAuthError::NeedsReauth(Some(why)))
            }
            Err(e) => Err(e),
        }
    }

    /// Revokes a connection's tokens at the provider (RFC 7009; the refresh token, which takes
    /// its access tokens with it, else the access token) and removes it. Whether the provider
    /// took the revocation (`None`: it has no revocation endpoint) is in the audit record; the
    /// connection goes either way.
    pub async fn delete(&self, ctx: MutationCtx, c: &Connection) -> Result<Option<bool>, OAuthError> {
        let parts = &self.inner.parts;
        let scope = ctx.scope;
        let org = scope.org();
        let provider = connections::get_provider(&parts.store, scope, c.provider_id)?;
        connections::check_unused(&parts.store, scope, c.id).await?;
        let revoked = match &provider.revocation_url {
            Some(url) => {
                let tokens = c.tokens(&parts.vault.get(), org)?;
                let (token, hint) = match tokens.refresh_token {
                    Some(rt) => (rt, "refresh_token"),
                    None => (tokens.access_token, "access_token"),
                };
                let started = Instant::now();
                let result = self.revoke(org, &provider, url, &token, hint).await;
                self.count("revocation", if result.is_ok() { "ok" } else { "failed" }, started);
                if let Err(e) = &result {
                    tracing::warn!(connection = %c.id, org = %org, error = %e, "the provider did not take a revocation");
                }
                Some(result.is_ok())
            }
            None => None,
        };
        connections::delete(&parts.writer, ctx, c.id, revoked).await?;
        Ok(revoked)
    }

    /// One RFC 7009 revocation request. Made here rather than by the `oauth2` crate, which
    /// refuses revocation endpoints that are not `https`: which addresses a provider may have is
    /// the egress policy's business (on-premises identity providers on plain HTTP inside a
    /// closed network are common), and the token endpoint, which the crate does call over HTTP,
    /// carries the same tokens.
    async fn revoke(&self, org: Id, provider: &Provider, url: &str, token: &str, hint: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        let mut form = vec![("token", token.to_owned()), ("token_type_hint", hint.to_owned())];
        let secret = provider.secret(&self.inner.parts.vault.get(), org).map_err(|e| e.to_string())?;
        let mut req = self.inner.parts.egress.request(reqwest::Method::POST, url);
        match (provider.client_auth, secret) {
            (ClientAuth::Basic, Some(secret)) => {
                // RFC 6749 §2.3.1: each part form-encoded, then Basic.
                let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                req = req.basic_auth(enc(&provider.client_id), Some(enc(&secret)));
            }
            (_, secret) => {
                form.push(("client_id", provider.client_id.clone()));
                if let Some(secret) = secret {
                    form.push(("client_secret", secret));
                }
            }
        }
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&form).finish();
        let req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .build()
            .map_err(|e| e.to_string())?;
        let limits = CallLimits { timeout_ms: self.timeout_ms(), response_bytes_max: ANSWER_BYTES_MAX };
        let a = self.inner.parts.egress.send_within(req, limits).await.map_err(|e| e.to_string())?;
        if a.status == 200 { Ok(()) } else { Err(format!("answered {}", a.status)) }
    }

    /// The header that carries a service's credential on a call: a stored secret, or a fresh
    /// access token of the organization's connection. `Ok(None)`: the service has none.
    pub async fn service_header(
        &self,
        org: OrgScope,
        service: &Service,
    ) -> Result<Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>, OAuthError> {
        let Some(c) = &service.credential else { return Ok(None) };
        let (kind, secret) = match &c.kind {
            CredentialKind::OAuthConnection { connection } => {
                (CredentialKind::Bearer, self.access_token(org, *connection).await?)
            }
            _ => service
                .secret(&self.inner.parts.vault.get(), org.org())?
                .unwrap_or((CredentialKind::Bearer, String::new())),
        };
        crate::domain::services::credential_header(&kind, &secret)
            .map(Some)
            .ok_or_else(|| OAuthError::Unsupported("the credential cannot be put on a request".into()))
    }

    /// Re-seals every provider secret (OAuth and identity providers') and connection token under
    /// `vault` (a vault rotation).
    pub async fn reseal(&self, vault: Arc<crate::vault::Vault>, actor: &str) -> Result<usize, DomainError> {
        let orgs = self.inner.parts.store.read(connections::orgs_with_providers).await?;
        let mut n = 0;
        for org in orgs {
            let ctx = MutationCtx {
                scope: OrgScope::from_own_record(org),
                actor: actor.to_owned(),
                request_id: None,
                client_addr: None,
            };
            n += connections::reseal(&self.inner.parts.writer, vault.clone(), ctx.clone()).await?;
            n += crate::domain::sso::reseal(&self.inner.parts.writer, vault.clone(), ctx).await?;
        }
        Ok(n)
    }
}
