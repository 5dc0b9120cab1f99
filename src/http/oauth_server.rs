//! Outpost as an OAuth 2 authorization server: the protocol endpoints, shaped by their RFCs
//! (form bodies, `{"error": …}` answers, redirects) rather than by the JSON API's conventions,
//! and so kept out of the OpenAPI document; RFC 8414 metadata describes them instead.
//!
//! - `GET /oauth/authorize`: the consent page (the app, what it asks for, the user's login);
//!   `POST /oauth/authorize`: the user's answer, sent back to the app's redirect URI with a
//!   code (PKCE S256 required) or `access_denied`.
//! - `POST /oauth/token`: the authorization-code and refresh-token grants (RFC 6749, 7636).
//! - `POST /oauth/revoke` (RFC 7009) and `POST /oauth/introspect` (RFC 7662).
//! - `GET /.well-known/oauth-authorization-server/orgs/{slug}` (RFC 8414): each organization is
//!   an issuer, `<public_url>/orgs/{slug}`.
//! - `POST /oauth/register/{slug}` (RFC 7591), when the organization allows it.

use std::collections::HashMap;

use poem::http::{HeaderValue, StatusCode, header};
use poem::web::{Data, Form, Json, Path, Query};
use poem::{IntoResponse, Request, Response, handler};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth_api::token_pair;
use super::origin;
use crate::app::App;
use crate::auth::tokens;
use crate::domain::apps::{self, AppFields, OAuthApp};
use crate::domain::login::{self, Refreshed, Standing};
use crate::domain::orgs::Organization;
use crate::domain::policy::Permission;
use crate::domain::{DomainError, sso};
use crate::tenancy::OrgScope;

/// An organization's issuer.
pub fn issuer(app: &App, slug: &str) -> String {
    format!("{}/orgs/{slug}", crate::app::public_url(&app.config))
}

/// An RFC 6749 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = Json(json!({ "error": error, "error_description": description })).into_response();
    r.set_status(status);
    no_store(r)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A page of the server's own (the consent page, or why there is none).
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width,initial-scale=1\"><title>{t}</title><style>body{{font:16px system-ui,\
         sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}}label{{display:block;\
         margin:.6rem 0}}input{{width:100%;padding:.4rem;box-sizing:border-box}}button{{padding:.5rem 1rem;\
         margin:.8rem .5rem 0 0}}.err{{color:#a00}}li code{{background:#f3f3f3;padding:0 .2rem}}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut r = poem::web::Html(html).into_response();
    r.set_status(status);
    // The edge adds the page's security headers (`security_headers`).
    no_store(r)
}

/// An authorization request's parameters (the query of GET, the form of POST).
#[derive(Deserialize, Default, Clone)]
pub struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// The consent form's fields.
    login: Option<String>,
    password: Option<String>,
    decision: Option<String>,
}

/// A checked authorization request.
struct Authorization {
    scope: OrgScope,
    org: Organization,
    app: OAuthApp,
    redirect_uri: String,
    scopes: Vec<String>,
    challenge: String,
    state: Option<String>,
}

/// Back to the app with `params` in the redirect URI's query.
fn back(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    // Registered redirect URIs were checked to parse when the app was registered.
    let Ok(mut url) = reqwest::Url::parse(redirect_uri) else {
        return page(
            StatusCode::BAD_REQUEST,
            "This sign-in link is not valid",
            "<p>The redirect URI does not parse.</p>",
        );
    };
    url.query_pairs_mut().extend_pairs(params.iter().copied());
    no_store(Response::builder().status(StatusCode::SEE_OTHER).header(header::LOCATION, url.as_str()).finish())
}

fn org_record(app: &App, scope: OrgScope) -> Option<Organization> {
    crate::domain::orgs::record(&app.store, scope).ok().flatten()
}

/// Checks an authorization request. Errors before the redirect URI is known to be the app's
/// are pages (never a redirect to an unchecked URI); after, redirects with the error.
fn check(app: &App, p: &AuthorizeParams) -> Result<Authorization, Response> {
    let bad_page =
        |why: &str| page(StatusCode::BAD_REQUEST, "This sign-in link is not valid", &format!("<p>{}</p>", escape(why)));
    let client = p.client_id.as_deref().unwrap_or_default();
    let Ok(Some((scope, a))) = apps::client(&app.store, client) else {
        return Err(bad_page("The app is unknown."));
    };
    let Some(org) = org_record(app, scope) else { return Err(bad_page("The app is unknown.")) };
    let Some(redirect_uri) = p.redirect_uri.clone().filter(|u| a.redirect_uris.contains(u)) else {
        return Err(bad_page("The redirect URI is not one the app registered."));
    };
    let state: Option<&str> = p.state.as_deref();
    let fail = |error: &str, description: &str| {
        let mut q = vec![("error", error), ("error_description", description)];
        if let Some(s) = state {
            q.push(("state", s));
        }
        back(&redirect_uri, &q)
    };
    if p.response_type.as_deref() != Some("code") {
        return Err(fail("unsupported_response_type", "only the authorization code flow is offered"));
    }
    let challenge = p.code_challenge.clone().unwrap_or_default();
    if p.code_challenge_method.as_deref() != Some("S256") || challenge.len() != 43 {
        return Err(fail("invalid_request", "PKCE with S256 is required"));
    }
    let scopes: Vec<String> = match p.scope.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        None => a.scopes.clone(),
    };
    if scopes.iter().any(|s| !a.scopes.contains(s)) {
        return Err(fail("invalid_scope", "the app may not ask for one of these scopes"));
    }
    Ok(Authorization { scope, org, app: a, redirect_uri, scopes, challenge, state: p.state.clone() })
}

fn consent_page(a: &Authorization, p: &AuthorizeParams, error: Option<&str>) -> Response {
    let hidden: String = [
        ("response_type", p.response_type.as_deref()),
        ("client_id", p.client_id.as_deref()),
        ("redirect_uri", p.redirect_uri.as_deref()),
        ("scope", Some(a.scopes.join(" ")).as_deref()),
        ("state", p.state.as_deref()),
        ("code_challenge", p.code_challenge.as_deref()),
        ("code_challenge_method", p.code_challenge_method.as_deref()),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|v| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", escape(v))))
    .collect();
    let scopes: String = a.scopes.iter().map(|s| ["<li><code>", &escape(s), "</code></li>"].concat()).collect();
    let error = error.map(|e| format!("<p class=\"err\">{}</p>", escape(e))).unwrap_or_default();
    let host =
        reqwest::Url::parse(&a.redirect_uri).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    let body = format!(
        "<p><strong>{app}</strong> asks to act in <strong>{org}</strong> on your behalf, with:</p><ul>{scopes}</ul>\
         <p>never beyond what your own role allows. You will be sent back to <code>{host}</code>.</p>{error}\
         <form method=\"post\" action=\"/oauth/authorize\">{hidden}\
         <label>Email or username<input name=\"login\" autocomplete=\"username\" required></label>\
         <label>Password<input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button name=\"decision\" value=\"allow\">Allow</button><button name=\"decision\" value=\"deny\" formnovalidate>Deny</button>\
         </form>",
        app = escape(&a.app.name),
        org = escape(&a.org.name),
        host = escape(&host),
    );
    page(if error.is_empty() { StatusCode::OK } else { StatusCode::UNAUTHORIZED }, "Allow access?", &body)
}

/// `GET /oauth/authorize`: the consent page.
#[handler]
#[allow(clippy::unused_async)] // handlers are async by the framework's contract
pub async fn authorize_page(app: Data<&App>, Query(p): Query<AuthorizeParams>) -> Response {
    match check(&app, &p) {
        Ok(a) => consent_page(&a, &p, None),
        Err(r) => r,
    }
}

/// `POST /oauth/authorize`: the user's answer.
#[handler]
pub async fn authorize_answer(app: Data<&App>, req: &Request, Form(p): Form<AuthorizeParams>) -> Response {
    let a = match check(&app, &p) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let with_state = |mut q: Vec<(&'static str, String)>| {
        if let Some(s) = &a.state {
            q.push(("state", s.clone()));
        }
        q.push(("iss", issuer(&app, &a.org.slug)));
        q
    };
    if p.decision.as_deref() != Some("allow") {
        let q = with_state(vec![("error", "access_denied".into()), ("error_description", "the user said no".into())]);
        return back(&a.redirect_uri, &q.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>());
    }
    let org = a.scope.org();
    let login_name = p.login.clone().unwrap_or_default();
    let addr = req.remote_addr().as_socket_addr().map(std::net::SocketAddr::ip);
    if let Err(l) = app.limits.login_attempt(addr, org, &login_name) {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            &format!("<p>Try again in {} seconds.</p>", l.retry_after.as_secs().max(1)),
        );
    }
    let user =
        login::find_login(&app.store, a.org.slug.clone(), login_name.clone()).await.ok().flatten().and_then(|(_, u)| u);
    let ok = app
        .hasher
        .verify(p.password.clone().unwrap_or_default(), user.as_ref().and_then(|u| u.password_hash.clone()))
        .await;
    let user_id = user.as_ref().map(|u| u.id);
    let Some(user) = user.filter(|_| ok) else {
        let tripped = app.limits.login_failed(org, &login_name);
        // The consent page is answered whether or not the failure could be written down.
        let _ = login::record_failed_login(&app.writer, org, user_id, login_name, origin(req), tripped.err()).await;
        return consent_page(&a, &p, Some("The login or password is wrong."));
    };
    app.limits.login_succeeded(org, &login_name);
    if app.store.peek(|r| crate::domain::orgs::sso_required(r, org)).unwrap_or(true) {
        return consent_page(
            &a,
            &p,
            Some("This organization requires single sign-on, which this page does not offer yet."),
        );
    }
    match apps::issue_code(
        &app.writer,
        a.scope,
        &a.app,
        user.id,
        a.scopes.clone(),
        a.redirect_uri.clone(),
        a.challenge.clone(),
        origin(req),
    )
    .await
    {
        Ok(code) => {
            let q = with_state(vec![("code", code)]);
            back(&a.redirect_uri, &q.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
        }
        Err(e) => {
            page(StatusCode::SERVICE_UNAVAILABLE, "Please try again", &format!("<p>{}</p>", escape(&e.to_string())))
        }
    }
}

/// The client of a token, revocation or introspection request: HTTP Basic or the form's
/// `client_id` (and `client_secret`), checked.
fn client_of(app: &App, req: &Request, form: &HashMap<String, String>) -> Result<(OrgScope, OAuthApp), Response> {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            let dec =
                |x: &str| url::form_urlencoded::parse(format!("x={x}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((dec(id)?, dec(secret)?))
        });
    let (id, secret) = match basic {
        Some((id, secret)) => (id, Some(secret)),
        None => (form.get("client_id").cloned().unwrap_or_default(), form.get("client_secret").cloned()),
    };
    let refuse = || {
        let mut r =
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "the client is unknown or its secret is wrong");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"outpost\""));
        r
    };
    let Ok(Some((scope, a))) = apps::client(&app.store, &id) else { return Err(refuse()) };
    if !apps::authenticate(&a, scope.org(), secret.as_deref().filter(|s| !s.is_empty())) {
        return Err(refuse());
    }
    Ok((scope, a))
}

fn granted_answer(app: &App, g: login::Granted, scopes: &[String]) -> Response {
    match token_pair(app, g) {
        Ok(t) => no_store(
            Json(json!({
                "access_token": t.access_token,
                "token_type": "Bearer",
                "expires_in": t.expires_in,
                "refresh_token": t.refresh_token,
                "scope": scopes.join(" "),
            }))
            .into_response(),
        ),
        Err(_) => oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "no signing key"),
    }
}

fn grant_error(e: DomainError) -> Response {
    match e {
        DomainError::Unauthorized { detail, .. } => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &detail),
        other => oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", &other.to_string()),
    }
}

/// `POST /oauth/token`.
#[handler]
pub async fn token_endpoint(app: Data<&App>, req: &Request, Form(form): Form<HashMap<String, String>>) -> Response {
    let (scope, a) = match client_of(&app, req, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    match field("grant_type") {
        "authorization_code" => {
            let r = apps::exchange(
                &app.writer,
                scope,
                &a,
                field("code"),
                field("redirect_uri"),
                field("code_verifier"),
                app.session_policy(),
                origin(req),
            )
            .await;
            match r {
                Ok((g, scopes)) => granted_answer(&app, g, &scopes),
                Err(e) => grant_error(e),
            }
        }
        "refresh_token" => {
            match login::refresh(&app.writer, field("refresh_token"), Some(a.id), app.session_policy(), origin(req))
                .await
            {
                Ok(Refreshed::Granted(g)) => {
                    let scopes = g.session.app.as_ref().map(|m| m.scopes.clone()).unwrap_or_default();
                    granted_answer(&app, *g, &scopes)
                }
                Ok(Refreshed::ReuseDetected) => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "this refresh token was used already: the grant is revoked",
                ),
                Err(e) => grant_error(e),
            }
        }
        "" => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required"),
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "authorization_code or refresh_token"),
    }
}

/// The session a token (access or refresh) of `scope`'s organization stands for, if live.
fn session_of(app: &App, scope: OrgScope, token: &str) -> Option<(crate::domain::sessions::Session, Option<i64>)> {
    if token.starts_with("rt_") {
        return apps::refresh_session(&app.store, scope, token).ok().flatten().map(|s| (s, None));
    }
    let claims = tokens::verify(&app.keys.ring(), token, app.access_ttl()).ok()?;
    if claims.org != scope.org() {
        return None;
    }
    let standing = app.store.peek(|r| login::standing(r, claims.org, claims.user, claims.session)).ok()?;
    if !matches!(standing, Standing::Ok(..)) {
        return None;
    }
    apps::live_session(&app.store, scope, claims.session).ok().flatten().map(|s| (s, Some(claims.exp_s)))
}

/// `POST /oauth/revoke` (RFC 7009): always 200 for a known client.
#[handler]
pub async fn revoke(app: Data<&App>, req: &Request, Form(form): Form<HashMap<String, String>>) -> Response {
    let (scope, a) = match client_of(&app, req, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    if let Some((s, _)) = session_of(&app, scope, token).filter(|(s, _)| s.app.as_ref().is_some_and(|m| m.app == a.id))
    {
        if apps::revoke(&app.writer, scope, a.id, s.id).await.is_err() {
            return oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again");
        }
    }
    no_store(StatusCode::OK.into_response())
}

/// `POST /oauth/introspect` (RFC 7662): what a token of the calling app is.
#[handler]
#[allow(clippy::unused_async)] // handlers are async by the framework's contract
pub async fn introspect(app: Data<&App>, req: &Request, Form(form): Form<HashMap<String, String>>) -> Response {
    let (scope, a) = match client_of(&app, req, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    let answer = match session_of(&app, scope, token).filter(|(s, _)| s.app.as_ref().is_some_and(|m| m.app == a.id)) {
        Some((s, exp)) => {
            let scopes = s.app.as_ref().map(|m| m.scopes.join(" ")).unwrap_or_default();
            json!({
                "active": true,
                "scope": scopes,
                "client_id": apps::client_id(scope.org(), a.id),
                "sub": s.user,
                "token_type": if exp.is_some() { "access_token" } else { "refresh_token" },
                "exp": exp.unwrap_or(s.expires_at_ms / 1000),
                "iat": s.created_at_ms / 1000,
                "sid": s.id,
            })
        }
        None => json!({ "active": false }),
    };
    no_store(Json(answer).into_response())
}

/// `GET /.well-known/oauth-authorization-server/orgs/{slug}` (RFC 8414).
#[handler]
pub async fn metadata(app: Data<&App>, Path(slug): Path<String>) -> Response {
    let Ok(Some(_)) = sso::entry(&app.store, slug.clone()).await else {
        return oauth_error(StatusCode::NOT_FOUND, "not_found", "no such organization");
    };
    let base = crate::app::public_url(&app.config);
    Json(json!({
        "issuer": issuer(&app, &slug),
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "registration_endpoint": format!("{base}/oauth/register/{slug}"),
        "scopes_supported": Permission::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

/// `POST /oauth/register/{slug}` (RFC 7591).
#[handler]
pub async fn register(app: Data<&App>, req: &Request, Path(slug): Path<String>, body: poem::Body) -> Response {
    let bad = |error: &str, d: &str| oauth_error(StatusCode::BAD_REQUEST, error, d);
    let Ok(Some(scope)) = sso::entry(&app.store, slug).await else {
        return oauth_error(StatusCode::NOT_FOUND, "not_found", "no such organization");
    };
    let Ok(bytes) = body.into_bytes_limit(64 * 1024).await else {
        return bad("invalid_client_metadata", "a JSON object of at most 64 KiB");
    };
    let Ok(m) = serde_json::from_slice::<Value>(&bytes) else {
        return bad("invalid_client_metadata", "a JSON object");
    };
    let strings =
        |v: &Value| v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect::<Vec<_>>());
    let Some(redirect_uris) = strings(&m["redirect_uris"]).filter(|u| !u.is_empty()) else {
        return bad("invalid_redirect_uri", "redirect_uris is required");
    };
    let method = m["token_endpoint_auth_method"].as_str().unwrap_or("client_secret_basic").to_owned();
    if !["none", "client_secret_basic", "client_secret_post"].contains(&method.as_str()) {
        return bad(
            "invalid_client_metadata",
            "token_endpoint_auth_method: none, client_secret_basic or client_secret_post",
        );
    }
    let scopes: Vec<String> = match m["scope"].as_str() {
        Some(s) => s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        None => vec![Permission::SelfManage.as_str().to_owned()],
    };
    let fields = AppFields {
        name: Some(m["client_name"].as_str().unwrap_or("An app").chars().take(apps::NAME_CHARS_MAX).collect()),
        redirect_uris: Some(redirect_uris),
        scopes: Some(scopes),
        confidential: method != "none",
        expected_version: None,
    };
    let o = origin(req);
    let ctx = crate::store::writer::MutationCtx {
        scope,
        actor: "anonymous".into(),
        request_id: o.request_id,
        client_addr: o.client_addr,
    };
    match apps::create(&app.writer, ctx, None, fields, app.config.oauth.apps_per_org_max).await {
        Ok((a, secret)) => {
            let mut out = json!({
                "client_id": apps::client_id(scope.org(), a.id),
                "client_id_issued_at": a.created_at_ms / 1000,
                "client_name": a.name,
                "redirect_uris": a.redirect_uris,
                "scope": a.scopes.join(" "),
                "token_endpoint_auth_method": method,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            });
            if let Some(s) = secret {
                out["client_secret"] = json!(s);
                out["client_secret_expires_at"] = json!(0);
            }
            let mut r = no_store(Json(out).into_response());
            r.set_status(StatusCode::CREATED);
            r
        }
        Err(DomainError::Forbidden { detail }) => oauth_error(StatusCode::FORBIDDEN, "access_denied", &detail),
        Err(DomainError::Invalid(fields)) => {
            let d = fields.iter().map(|f| format!("{}: {}", f.pointer, f.detail)).collect::<Vec<_>>().join("; ");
            let error = if fields.iter().any(|f| f.pointer == "/redirect_uris") {
                "invalid_redirect_uri"
            } else {
                "invalid_client_metadata"
            };
            bad(error, &d)
        }
        Err(e) => oauth_error(StatusCode::CONFLICT, "invalid_client_metadata", &e.to_string()),
    }
}
