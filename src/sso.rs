//! Single sign-on at work: the network half of `domain::sso`. The protocol is the
//! `openidconnect` crate's (discovery, the authorization request with PKCE S256 and a nonce,
//! the code exchange, and the `id_token` checks: signature against the issuer's JWKS, an
//! algorithm allow-list, `iss`, `aud`, `exp`, `nonce`); its requests go out through
//! [`crate::egress`] like every other outbound call.
//!
//! An issuer's discovery document and JWKS are kept for `oauth.discovery_cache_s`. A token
//! signed by a key not among them (the issuer rotated its keys) fetches them again at once —
//! at most once a second per provider — and is checked again, so a rotation costs no sign-in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    JsonWebKey, LogoutRequest, Nonce, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadataWithLogout, RedirectUrl,
    RequestTokenError, Scope, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};

use crate::domain::login::{Granted, Origin, SessionPolicy};
use crate::domain::sso::{self, Claims, IdentityProvider, Pending};
use crate::ids::{self, Id};
use crate::metrics::OAuthLabels;
use crate::oauth::{OAuth, OAuthError, http};
use crate::store::writer::MutationCtx;

/// The path identity providers send people back to.
pub const CALLBACK_PATH: &str = "/v1/auth/sso/callback";
/// The path identity providers post back-channel logouts to (`/{org}/{provider}` follow).
pub const BACKCHANNEL_LOGOUT_PATH: &str = "/v1/auth/sso/backchannel-logout";
/// A provider's keys are fetched again for an unknown key at most this often.
const REFETCH_MIN: Duration = Duration::from_secs(1);
/// The event a logout token carries (OpenID Connect Back-Channel Logout 1.0).
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How far a logout token's `iat` may be from now, in seconds.
const LOGOUT_TOKEN_SKEW_S: i64 = 300;

/// Every claim of the `id_token`, for the role claim and `sid`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Extra(serde_json::Map<String, serde_json::Value>);

impl AdditionalClaims for Extra {}

type IdToken =
    openidconnect::IdToken<Extra, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// An issuer's discovery document with its keys, as fetched.
struct Discovered {
    doc: ProviderMetadataWithLogout,
    fetched: Instant,
}

struct Inner {
    oauth: OAuth,
    cache: Mutex<HashMap<(Id, Id), Arc<Discovered>>>,
}

/// The single sign-on engine (cheap to clone).
#[derive(Clone)]
pub struct Sso {
    inner: Arc<Inner>,
}

/// Where a started sign-in goes.
pub struct Started {
    pub authorization_url: String,
    pub expires_at_ms: i64,
}

impl Sso {
    pub fn new(oauth: OAuth) -> Self {
        Self { inner: Arc::new(Inner { oauth, cache: Mutex::default() }) }
    }

    /// The redirect URI to register at identity providers.
    pub fn redirect_uri(&self) -> String {
        format!("{}{CALLBACK_PATH}", self.inner.oauth.parts().public_url)
    }

    /// The back-channel logout URI to register at an identity provider.
    pub fn backchannel_logout_uri(&self, org: Id, provider: Id) -> String {
        format!("{}{BACKCHANNEL_LOGOUT_PATH}/{org}/{provider}", self.inner.oauth.parts().public_url)
    }

    /// Reads an issuer's discovery document and keys.
    pub async fn discover(&self, issuer: &str) -> Result<ProviderMetadataWithLogout, OAuthError> {
        let parts = self.inner.oauth.parts();
        let url = IssuerUrl::new(issuer.to_owned()).map_err(|e| OAuthError::Unreachable(e.to_string()))?;
        let client = http(&parts.egress, parts.config.request_timeout_ms);
        let started = Instant::now();
        let doc = ProviderMetadataWithLogout::discover_async(url, &client).await.map_err(|e| {
            self.count("discovery", "failed", started);
            OAuthError::Unreachable(format!("the issuer's discovery document or keys: {e}"))
        })?;
        self.count("discovery", "ok", started);
        Ok(doc)
    }

    /// The provider's discovery document and keys: kept ones while fresh, else fetched (also
    /// when `refetch` asks and the kept ones are older than a second).
    async fn discovered(&self, org: Id, p: &IdentityProvider, refetch: bool) -> Result<Arc<Discovered>, OAuthError> {
        let max_age = Duration::from_secs(self.inner.oauth.parts().config.discovery_cache_s);
        let key = (org, p.id);
        let kept = self.inner.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned();
        if let Some(d) = &kept {
            let age = d.fetched.elapsed();
            let same_issuer = d.doc.issuer().as_str().trim_end_matches('/') == p.issuer.trim_end_matches('/');
            if same_issuer && age < max_age && !(refetch && age >= REFETCH_MIN) {
                return Ok(d.clone());
            }
        }
        let d = Arc::new(Discovered { doc: self.discover(&p.issuer).await?, fetched: Instant::now() });
        self.inner.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, d.clone());
        Ok(d)
    }

    /// Forgets what was kept of a provider (changed or removed).
    pub fn forget(&self, org: Id, provider: Id) {
        self.inner.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&(org, provider));
    }

    fn client(&self, org: Id, p: &IdentityProvider, d: &Discovered) -> Result<CoreClientFor, OAuthError> {
        let secret = p.secret(&self.inner.oauth.parts().vault.get(), org)?;
        let redirect = RedirectUrl::new(self.redirect_uri()).map_err(|e| OAuthError::Unsupported(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            d.doc.clone(),
            ClientId::new(p.client_id.clone()),
            secret.map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    fn count(&self, grant: &str, outcome: &str, started: Instant) {
        let m = &self.inner.oauth.parts().metrics;
        m.oauth_token_requests.get_or_create(&OAuthLabels { grant: grant.into(), outcome: outcome.into() }).inc();
        m.oauth_token_seconds.observe(started.elapsed().as_secs_f64());
    }

    /// Starts a sign-in: the URL to send the person to.
    pub async fn start(&self, ctx: MutationCtx, p: &IdentityProvider) -> Result<Started, OAuthError> {
        if !p.enabled {
            return Err(OAuthError::Unsupported("this identity provider is disabled".into()));
        }
        let org = ctx.scope.org();
        let d = self.discovered(org, p, false).await?;
        let client = self.client(org, p, &d)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = Nonce::new_random();
        let cfg = &self.inner.oauth.parts().config;
        let expires_at_ms = ids::now_ms() + i64::try_from(cfg.pending_ttl_s).unwrap_or(600) * 1000;
        let pending =
            Pending { provider_id: p.id, nonce: nonce.secret().clone(), verifier: String::new(), expires_at_ms };
        let parts = self.inner.oauth.parts();
        let state =
            sso::begin(&parts.writer, &parts.vault.get(), ctx, pending, verifier.secret(), cfg.pending_per_org_max)
                .await?;
        let mut req = client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, move || CsrfToken::new(state), move || nonce)
            .set_pkce_challenge(challenge);
        for s in p.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, _, _) = req.url();
        Ok(Started { authorization_url: url.to_string(), expires_at_ms })
    }

    /// Finishes a sign-in at the callback: the state taken (once), the code exchanged with the
    /// PKCE verifier, the `id_token` checked, the person signed in.
    pub async fn finish(
        &self,
        state: &str,
        code: &str,
        iss: Option<&str>,
        policy: SessionPolicy,
        origin: Origin,
    ) -> Result<Granted, OAuthError> {
        let parts = self.inner.oauth.parts();
        let Some((scope, pending, verifier)) = sso::take(&parts.writer, &parts.vault.get(), state, &origin).await?
        else {
            return Err(OAuthError::InvalidState);
        };
        let org = scope.org();
        let p = sso::get(&parts.store, scope, pending.provider_id)?;
        if !p.enabled {
            return Err(OAuthError::Unsupported("this identity provider is disabled".into()));
        }
        if let Some(got) = iss {
            if got.trim_end_matches('/') != p.issuer.trim_end_matches('/') {
                return Err(OAuthError::IssuerMismatch(got.chars().take(200).collect()));
            }
        }
        let d = self.discovered(org, &p, false).await?;
        let client = self.client(org, &p, &d)?;
        let req = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OAuthError::Unsupported(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier));
        let started = Instant::now();
        let http = http(&parts.egress, parts.config.request_timeout_ms);
        let answer = req.request_async(&http).await.map_err(|e| {
            self.count(
                "sso_code",
                if matches!(e, RequestTokenError::ServerResponse(_)) { "refused" } else { "failed" },
                started,
            );
            match e {
                RequestTokenError::ServerResponse(r) => OAuthError::Refused {
                    code: r.error().to_string(),
                    description: r.error_description().map(|d| d.chars().take(500).collect()),
                },
                other => OAuthError::Unreachable(other.to_string()),
            }
        })?;
        self.count("sso_code", "ok", started);
        let raw = openidconnect::TokenResponse::id_token(&answer)
            .map(ToString::to_string)
            .ok_or_else(|| OAuthError::InvalidIdToken("the provider answered no id_token".into()))?;
        let token: IdToken = raw.parse().map_err(|e| OAuthError::InvalidIdToken(format!("it does not parse: {e}")))?;
        let nonce = Nonce::new(pending.nonce);
        let claims = match self.verify(org, &p, &d, &token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey)) => {
                // The issuer may have rotated its keys: fetch them again and check once more.
                let fresh = self.discovered(org, &p, true).await?;
                self.verify(org, &p, &fresh, &token, &nonce)
            }
            other => other,
        }
        .map_err(|e| match e {
            ClaimsVerificationError::SignatureVerification(why) => {
                OAuthError::InvalidIdToken(format!("signature: {why}"))
            }
            other => OAuthError::InvalidIdToken(other.to_string()),
        })?;
        sso::sign_in(&parts.writer, scope, p, claims, policy, origin).await.map_err(OAuthError::from)
    }

    fn verify(
        &self,
        org: Id,
        p: &IdentityProvider,
        d: &Discovered,
        token: &IdToken,
        nonce: &Nonce,
    ) -> Result<Claims, ClaimsVerificationError> {
        let client = self.client(org, p, d).map_err(|e| ClaimsVerificationError::Other(e.to_string()))?;
        let algs: Vec<CoreJwsSigningAlgorithm> = p
            .algorithms
            .iter()
            .filter_map(|a| serde_json::from_value(serde_json::Value::String(a.clone())).ok())
            .collect();
        let verifier = client.id_token_verifier().set_allowed_algs(algs);
        let c = token.claims(&verifier, nonce)?;
        let extra = &c.additional_claims().0;
        let role_values = p
            .role_claim
            .as_ref()
            .and_then(|name| extra.get(name))
            .map(|v| match v {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        Ok(Claims {
            subject: c.subject().as_str().to_owned(),
            email: c.email().map(|e| e.as_str().to_owned()),
            email_verified: c.email_verified().unwrap_or(false),
            name: c.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
            role_values,
            sid: extra.get("sid").and_then(|s| s.as_str()).map(str::to_owned),
        })
    }

    /// A back-channel logout from the provider: the logout token checked (signature against the
    /// provider's keys, fetched again for an unknown key; algorithm, `iss`, `aud`, `iat`, the
    /// logout event, no `nonce`; a subject or session id), then the sessions it names ended.
    /// How many.
    pub async fn backchannel_logout(&self, org: Id, provider: Id, token: &str) -> Result<usize, OAuthError> {
        let parts = self.inner.oauth.parts();
        let Some((scope, p)) = sso::logout_target(&parts.store, org, provider)? else {
            return Err(OAuthError::Domain(crate::domain::DomainError::NotFound { what: "identity provider" }));
        };
        let started = Instant::now();
        let d = self.discovered(org, &p, false).await?;
        let checked = match check_logout_token(&p, &d, token) {
            Err(LogoutRefusal::UnknownKey) => {
                let fresh = self.discovered(org, &p, true).await?;
                check_logout_token(&p, &fresh, token)
            }
            other => other,
        };
        let (subject, sid) = checked.map_err(|e| {
            self.count("backchannel_logout", "refused", started);
            OAuthError::InvalidLogoutToken(match e {
                LogoutRefusal::UnknownKey => "no key of the provider's has its kid".into(),
                LogoutRefusal::Bad(why) => why,
            })
        })?;
        self.count("backchannel_logout", "ok", started);
        Ok(sso::end_sessions(&parts.writer, scope, p.id, subject, sid).await?)
    }

    /// Where to send the browser to log out at the provider too (RP-initiated logout), when it
    /// has an end-session endpoint.
    pub async fn logout_url(&self, org: Id, p: &IdentityProvider) -> Result<Option<String>, OAuthError> {
        let d = self.discovered(org, p, false).await?;
        let Some(end) = d.doc.additional_metadata().end_session_endpoint.clone() else { return Ok(None) };
        let url = LogoutRequest::from(end).set_client_id(ClientId::new(p.client_id.clone())).http_get_url();
        Ok(Some(url.to_string()))
    }
}

type CoreClientFor = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// Why a logout token is refused.
enum LogoutRefusal {
    /// Signed by a key not among the provider's (perhaps rotated since they were fetched).
    UnknownKey,
    Bad(String),
}

fn part(text: &str) -> Result<serde_json::Value, LogoutRefusal> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| LogoutRefusal::Bad("not a signed JWT".into()))
}

/// Checks a logout token (OpenID Connect Back-Channel Logout 1.0, section 2.6): its subject
/// and session id. `openidconnect` has no logout token type; the signature is still its key
/// types' (`JsonWebKey::verify_signature`), only the claims are read here.
fn check_logout_token(
    idp: &IdentityProvider,
    found: &Discovered,
    token: &str,
) -> Result<(Option<String>, Option<String>), LogoutRefusal> {
    let bad = |why: &str| LogoutRefusal::Bad(why.to_owned());
    let mut pieces = token.split('.');
    let (Some(head), Some(body), Some(sig), None) = (pieces.next(), pieces.next(), pieces.next(), pieces.next()) else {
        return Err(bad("not a signed JWT"));
    };
    let header = part(head)?;
    let alg_name = header["alg"].as_str().unwrap_or_default();
    if !idp.algorithms.iter().any(|a| a == alg_name) {
        return Err(LogoutRefusal::Bad(format!("algorithm `{alg_name}` is not allowed")));
    }
    let alg: CoreJwsSigningAlgorithm = serde_json::from_value(serde_json::Value::String(alg_name.to_owned()))
        .map_err(|_| bad("an unknown algorithm"))?;
    let kid = header["kid"].as_str();
    let keys: Vec<&CoreJsonWebKey> = found
        .doc
        .jwks()
        .keys()
        .iter()
        .filter(|k| kid.is_none_or(|want| k.key_id().is_some_and(|id| id.as_str() == want)))
        .collect();
    if keys.is_empty() {
        return Err(LogoutRefusal::UnknownKey);
    }
    let signature = URL_SAFE_NO_PAD.decode(sig).map_err(|_| bad("not a signed JWT"))?;
    let message = format!("{head}.{body}");
    if !keys.iter().any(|k| k.verify_signature(&alg, message.as_bytes(), &signature).is_ok()) {
        return Err(bad("the signature does not verify"));
    }
    let claims = part(body)?;
    if claims["iss"].as_str().map(|i| i.trim_end_matches('/')) != Some(idp.issuer.trim_end_matches('/')) {
        return Err(bad("another issuer"));
    }
    let aud_ok = match &claims["aud"] {
        serde_json::Value::String(a) => *a == idp.client_id,
        serde_json::Value::Array(a) => a.iter().any(|x| x.as_str() == Some(idp.client_id.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(bad("another audience"));
    }
    let now_s = ids::now_ms() / 1000;
    match claims["iat"].as_i64() {
        Some(iat) if (iat - now_s).abs() <= LOGOUT_TOKEN_SKEW_S => {}
        _ => return Err(bad("issued too long ago, in the future, or not said when")),
    }
    if claims["exp"].as_i64().is_some_and(|exp| exp <= now_s) {
        return Err(bad("expired"));
    }
    if !claims["events"].get(BACKCHANNEL_EVENT).is_some_and(serde_json::Value::is_object) {
        return Err(bad("not a back-channel logout event"));
    }
    if claims.get("nonce").is_some() {
        return Err(bad("a logout token carries no nonce"));
    }
    let (sub, sid) = (claims["sub"].as_str().map(str::to_owned), claims["sid"].as_str().map(str::to_owned));
    if sub.is_none() && sid.is_none() {
        return Err(bad("names neither a subject nor a session"));
    }
    Ok((sub, sid))
}
