//! Single sign-on against a real OpenID provider (the certified Node `oidc-provider`, on
//! loopback) as the organization's identity provider: just-in-time provisioning with a groups
//! claim mapped onto roles, linking through a verified email only, a replayed state refused, a
//! key rotation at the provider followed without a failed sign-in, forged, expired,
//! wrong-audience, wrong-nonce, wrong-issuer, unsigned and HMAC `id_token`s refused, "SSO
//! required" enforced on passwords and their refresh tokens, and logging out at the provider.
//! No secret shows in any answer, audit record or log line.

use serde_json::{Value, json};

use crate::connections::{Idp, child_server};
use crate::support::{Browser, TestServer, expect_problem, get_json, post_json};

const CLIENT_SECRET: &str = "sso-client-secret-never-shown-8c1e";

fn client(s: &TestServer) -> Value {
    json!({
        "client_id": "outpost-sso",
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [format!("{}/v1/auth/sso/callback", s.base)],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    })
}

fn person(sub: &str, email: &str, verified: bool, groups: &[&str]) -> Value {
    json!({ "sub": sub, "email": email, "email_verified": verified, "groups": groups, "name": format!("{sub} (sso)") })
}

async fn idp_post(idp: &Idp, path: &str, body: Value) {
    let r = reqwest::Client::new().post(format!("{}{path}", idp.base)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
}

/// Starts a sign-in for the organization and goes through the provider as a browser would;
/// the callback's answer and the callback URL.
async fn sign_in(s: &TestServer, org: &str) -> (reqwest::Response, String) {
    let r = s.http.post(s.url("/v1/auth/sso/start")).json(&json!({ "org": org })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let started: Value = r.json().await.unwrap();
    let url = started["authorization_url"].as_str().unwrap();
    assert!(url.contains("code_challenge_method=S256") && url.contains("nonce="), "{url}");
    let r = Browser::new().get(url).await;
    let at = r.url().to_string();
    assert!(at.contains("/v1/auth/sso/callback?"), "landed on {at}");
    (r, at)
}

/// Signs in and expects Outpost's tokens.
async fn tokens(s: &TestServer, org: &str) -> Value {
    let (r, at) = sign_in(s, org).await;
    assert_eq!(r.status(), 200, "{at}");
    r.json().await.unwrap()
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one sign-in story, told in order
async fn members_sign_in_through_the_organizations_identity_provider() {
    let dir = tempfile::tempdir().unwrap();
    let (child, s) = child_server(dir.path());
    let (org_id, sl) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "owner@example.org", "owner").await;
    let mia = crate::identity::operator_invite_and_accept(&s, &org_id, "mia@example.org", "member").await;
    let owner_login = crate::identity::login(&s, &sl, "owner").await;
    let owner = owner_login.access.clone();
    let alice = person("alice", "alice@example.test", true, &["staff"]);
    let idp = Idp::start(json!({ "clients": [client(&s)], "account": alice })).await;
    let mut seen = Vec::new();

    // The provider, from its issuer's discovery document; the groups claim maps onto roles.
    let r = s
        .http
        .post(s.url("/v1/sso/providers"))
        .bearer_auth(&owner)
        .json(&json!({
            "name": "Company IdP",
            "issuer": idp.base,
            "client_id": "outpost-sso",
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "email", "profile", "groups"],
            "jit": true,
            "role_claim": "groups",
            "role_rules": [{ "value": "outpost-admins", "role": "admin" }],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let provider: Value = r.json().await.unwrap();
    seen.push(provider.to_string());
    assert_eq!(provider["has_client_secret"], true);
    assert_eq!(provider["default_role"], "member");
    assert_eq!(provider["redirect_uri"], format!("{}/v1/auth/sso/callback", s.base));
    let provider_id = provider["id"].as_str().unwrap().to_owned();
    // An owner is never what a provider gives; an issuer that is not one is told at once.
    let bad = json!({ "issuer": idp.base, "client_id": "x", "role_rules": [{ "value": "g", "role": "owner" }] });
    let r = s.http.post(s.url("/v1/sso/providers")).bearer_auth(&owner).json(&bad).send().await.unwrap();
    expect_problem(r, 422, "validation_failed").await;
    let nowhere = json!({ "issuer": format!("{}/nowhere", idp.base), "client_id": "x" });
    let r = s.http.post(s.url("/v1/sso/providers")).bearer_auth(&owner).json(&nowhere).send().await.unwrap();
    expect_problem(r, 502, "provider_unreachable").await;

    // A sign-in page learns the organization's way in without signing in.
    let options: Value =
        reqwest::get(s.url(&format!("/v1/auth/sso/options?org={sl}"))).await.unwrap().json().await.unwrap();
    assert_eq!(options, json!({ "required": false, "providers": [{ "id": provider_id, "name": "Company IdP" }] }));

    // Alice has no account: one is made, a member (her group maps to nothing).
    let (r, callback) = sign_in(&s, &sl).await;
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    seen.push(a.to_string());
    assert_eq!(a["user"]["email"], "alice@example.test");
    assert_eq!(a["user"]["role"], "member");
    assert_eq!(a["user"]["display_name"], "alice (sso)");
    let alice_id = a["user"]["id"].as_str().unwrap().to_owned();
    let me = get_json(&s, a["access_token"].as_str().unwrap(), "/v1/me").await;
    assert_eq!(me["user"]["id"], alice_id.as_str());
    let sessions = get_json(&s, a["access_token"].as_str().unwrap(), "/v1/auth/sessions").await;
    assert_eq!(sessions["items"][0]["sso_provider_id"], provider_id.as_str(), "{sessions}");
    // The same callback again: the state is spent.
    expect_problem(reqwest::get(&callback).await.unwrap(), 400, "invalid_state").await;
    // Its refresh token rotates like any other.
    let r = s
        .http
        .post(s.url("/v1/auth/refresh"))
        .json(&json!({ "refresh_token": a["refresh_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Bob is in the admins' group: an admin.
    idp_post(&idp, "/_account", person("bob", "bob@example.test", true, &["staff", "outpost-admins"])).await;
    let b = tokens(&s, &sl).await;
    assert_eq!(b["user"]["role"], "admin");
    // Alice joins it at the provider: her role follows at her next sign-in, same account.
    idp_post(&idp, "/_account", person("alice", "alice@example.test", true, &["outpost-admins"])).await;
    let a2 = tokens(&s, &sl).await;
    assert_eq!(
        (a2["user"]["id"].as_str().unwrap(), a2["user"]["role"].as_str().unwrap()),
        (alice_id.as_str(), "admin")
    );

    // Mia signed up with a password; a verified email links her identity to that account.
    idp_post(&idp, "/_account", person("mia-at-idp", "mia@example.org", true, &[])).await;
    let m = tokens(&s, &sl).await;
    assert_eq!(m["user"]["id"], mia["id"], "linked, not a second account");
    // An unverified email links nothing (anyone could claim the owner's address).
    idp_post(&idp, "/_account", person("mallory", "owner@example.org", false, &[])).await;
    let (r, _) = sign_in(&s, &sl).await;
    expect_problem(r, 401, "sso_email_unverified").await;
    // With no default role, only people a rule matches get in.
    let r = s
        .http
        .patch(s.url(&format!("/v1/sso/providers/{provider_id}")))
        .bearer_auth(&owner)
        .json(&json!({ "rule_required": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    idp_post(&idp, "/_account", person("carol", "carol@example.test", true, &["contractors"])).await;
    let (r, _) = sign_in(&s, &sl).await;
    expect_problem(r, 401, "sso_no_role").await;
    let r = s
        .http
        .patch(s.url(&format!("/v1/sso/providers/{provider_id}")))
        .bearer_auth(&owner)
        .json(&json!({ "default_role": "member" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The provider rotates its signing key: the next sign-in fetches its keys again, once.
    idp_post(&idp, "/_account", person("alice", "alice@example.test", true, &["outpost-admins"])).await;
    tokens(&s, &sl).await;
    let before = idp.stats().await["jwks_fetches"].as_u64().unwrap();
    tokens(&s, &sl).await;
    assert_eq!(idp.stats().await["jwks_fetches"].as_u64().unwrap(), before, "kept keys are used");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    idp_post(&idp, "/_rotate", json!({})).await;
    let after_rotation = tokens(&s, &sl).await;
    assert_eq!(after_rotation["user"]["id"], alice_id.as_str());
    assert_eq!(idp.stats().await["jwks_fetches"].as_u64().unwrap(), before + 1);
    tokens(&s, &sl).await;
    assert_eq!(idp.stats().await["jwks_fetches"].as_u64().unwrap(), before + 1, "the new keys are kept");

    // Tokens that fail a check are refused, each with why, and sign no one in.
    let refusals = [
        ("expired", "ID token expired"),
        ("audience", "audiences"),
        ("nonce", "nonce mismatch"),
        ("issuer", "issuer"),
        ("forged", "signature: Crypto error"),
        ("none", "signature: No signature found"),
        ("hs256", "algorithm `HS256` is not one of"),
    ];
    for (mode, why) in refusals {
        idp_post(&idp, "/_tamper", json!({ "mode": mode })).await;
        let (r, _) = sign_in(&s, &sl).await;
        let p = expect_problem(r, 401, "invalid_id_token").await;
        assert!(p["detail"].as_str().unwrap().contains(why), "{mode}: {p}");
        seen.push(p.to_string());
    }
    let audit = s.http.get(s.url("/v1/audit/export")).bearer_auth(&owner).send().await.unwrap().text().await.unwrap();
    let logins = audit.lines().filter(|l| l.contains("\"auth.sso_login\"")).count();
    assert_eq!(logins, 8, "the refused tokens signed no one in");

    // SSO required: passwords are refused (a wrong one is still just wrong), and a session
    // begun with a password no longer refreshes. The provider still lets people in.
    let r = s
        .http
        .put(s.url("/v1/sso/policy"))
        .bearer_auth(&owner)
        .json(&json!({ "required": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let login = |password: &str| {
        s.http.post(s.url("/v1/auth/login")).json(&json!({ "org": sl, "login": "owner", "password": password })).send()
    };
    expect_problem(login(crate::identity::PASSWORD).await.unwrap(), 403, "sso_required").await;
    expect_problem(login("not-the-password-at-all").await.unwrap(), 401, "invalid_login").await;
    let r = s
        .http
        .post(s.url("/v1/auth/refresh"))
        .json(&json!({ "refresh_token": owner_login.refresh }))
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "sso_required").await;
    let options: Value =
        reqwest::get(s.url(&format!("/v1/auth/sso/options?org={sl}"))).await.unwrap().json().await.unwrap();
    assert_eq!(options["required"], true);
    // The last way in cannot be taken away while it is required.
    let r = s.http.delete(s.url(&format!("/v1/sso/providers/{provider_id}"))).bearer_auth(&owner).send().await.unwrap();
    expect_problem(r, 409, "sso_required_needs_provider").await;
    let a3 = tokens(&s, &sl).await;

    // Logging out ends the session here and says where to end it at the provider.
    let access = a3["access_token"].as_str().unwrap();
    let out = post_json(&s, access, "/v1/auth/sso/logout", json!({})).await;
    let end = out["end_session_url"].as_str().unwrap();
    assert!(end.starts_with(&format!("{}/session/end?", idp.base)) && end.contains("client_id=outpost-sso"), "{end}");
    let r = s.http.get(s.url("/v1/me")).bearer_auth(access).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // No secret in any answer, audit record or line the server wrote (at debug level).
    seen.push(get_json(&s, &owner, "/v1/sso/providers").await.to_string());
    seen.push(audit);
    seen.push(child.output());
    let mut secrets = vec![CLIENT_SECRET.to_owned()];
    secrets.extend(idp.tokens().await);
    for text in &seen {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in {text}");
        }
    }
}

/// An OpenID issuer that only publishes a discovery document and an empty key set, on
/// loopback: enough to register an identity provider no one signs in at (for the role and
/// tenant matrices). Its base URL.
pub async fn static_issuer() -> String {
    #[poem::handler]
    fn discovery(req: &poem::Request) -> poem::web::Json<Value> {
        let base = format!("http://{}", req.header("host").unwrap_or_default());
        poem::web::Json(json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "jwks_uri": format!("{base}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }))
    }
    #[poem::handler]
    fn jwks() -> poem::web::Json<Value> {
        poem::web::Json(json!({ "keys": [] }))
    }
    let routes =
        poem::Route::new().at("/.well-known/openid-configuration", poem::get(discovery)).at("/jwks", poem::get(jwks));
    crate::support::serve_loopback(routes).await
}

/// An identity provider of `token`'s organization at `issuer`: its id.
pub async fn static_provider(s: &TestServer, token: &str, issuer: &str) -> String {
    let made = post_json(s, token, "/v1/sso/providers", json!({ "issuer": issuer, "client_id": "c" })).await;
    made["id"].as_str().unwrap_or_else(|| panic!("no identity provider: {made}")).to_owned()
}

/// Signs in through `browser` (whose cookies keep the provider's session); the tokens.
async fn tokens_in(browser: &Browser, s: &TestServer, org: &str) -> Value {
    let started = post_json_anon(s, "/v1/auth/sso/start", json!({ "org": org })).await;
    let r = browser.get(started["authorization_url"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200, "{}", r.url());
    r.json().await.unwrap()
}

async fn post_json_anon(s: &TestServer, path: &str, body: Value) -> Value {
    let r = s.http.post(s.url(path)).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Logs out at the provider as its logout page would: the confirmation form, submitted.
async fn log_out_at(idp: &Idp, browser: &Browser) {
    let page = browser.get(&format!("{}/session/end?client_id=outpost-sso", idp.base)).await;
    let html = page.text().await.unwrap();
    let xsrf = html.split("name=\"xsrf\" value=\"").nth(1).and_then(|t| t.split('"').next()).expect("a logout form");
    let r = browser.post_form(&format!("{}/session/end/confirm", idp.base), &[("xsrf", xsrf), ("logout", "yes")]).await;
    assert!(r.status().is_success(), "logging out at the provider: {}", r.status());
}

#[tokio::test]
async fn logging_out_at_the_identity_provider_ends_the_sessions_it_signed_in() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, s) = child_server(dir.path());
    let (org_id, sl) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "owner@example.org", "owner").await;
    let owner = crate::identity::login(&s, &sl, "owner").await.access;
    let alice = person("alice", "alice@example.test", true, &["staff"]);
    let idp = Idp::start(json!({ "clients": [client(&s)], "account": alice })).await;
    let made = post_json(
        &s,
        &owner,
        "/v1/sso/providers",
        json!({ "issuer": idp.base, "client_id": "outpost-sso", "client_secret": CLIENT_SECRET, "jit": true }),
    )
    .await;
    let uri = made["backchannel_logout_uri"].as_str().unwrap().to_owned();
    assert_eq!(uri, format!("{}/v1/auth/sso/backchannel-logout/{org_id}/{}", s.base, made["id"].as_str().unwrap()));
    // The provider learns where to tell Outpost.
    let mut c = client(&s);
    c["backchannel_logout_uri"] = json!(uri);
    c["backchannel_logout_session_required"] = json!(true);
    idp_post(&idp, "/_clients", json!([c])).await;

    // Alice signs in from two browsers: two sessions at the provider, two here.
    let (one, two) = (Browser::new(), Browser::new());
    let first = tokens_in(&one, &s, &sl).await;
    let second = tokens_in(&two, &s, &sl).await;
    let me = |t: &Value| s.http.get(s.url("/v1/me")).bearer_auth(t["access_token"].as_str().unwrap()).send();
    assert_eq!(me(&first).await.unwrap().status(), 200);

    // She logs out at the provider in the first: that session ends here, the other stays.
    log_out_at(&idp, &one).await;
    assert_eq!(idp.stats().await["backchannel_errors"], Value::Null, "the provider's logout was taken");
    assert_eq!(me(&first).await.unwrap().status(), 401);
    assert_eq!(me(&second).await.unwrap().status(), 200);
    let r =
        s.http.post(s.url("/v1/auth/refresh")).json(&json!({ "refresh_token": first["refresh_token"] })).send().await;
    expect_problem(r.unwrap(), 401, "invalid_refresh_token").await;

    // Anything but the provider's signed logout token is refused, and ends nothing.
    for forged in ["not-a-jwt", "e30.e30.c2ln", second["access_token"].as_str().unwrap()] {
        let r = s.http.post(&uri).form(&[("logout_token", forged)]).send().await.unwrap();
        expect_problem(r, 400, "invalid_logout_token").await;
    }
    let r = s
        .http
        .post(s.url(&format!("/v1/auth/sso/backchannel-logout/{org_id}/{}", uuid::Uuid::now_v7())))
        .form(&[("logout_token", "x.y.z")])
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "not_found").await;
    assert_eq!(me(&second).await.unwrap().status(), 200);
    let audit = s.http.get(s.url("/v1/audit/export")).bearer_auth(&owner).send().await.unwrap().text().await.unwrap();
    let logout = audit.lines().find(|l| l.contains("\"auth.sso_logout\"")).expect("the logout is audited");
    assert!(logout.contains(first["session_id"].as_str().unwrap()), "{logout}");
}
