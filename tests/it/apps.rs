//! Outpost as an OAuth authorization server, driven by a stock client library (Python
//! `authlib`): the authorization code flow with PKCE S256 through the consent page, API calls
//! within the granted scopes and never beyond the user's role, refresh with rotation and reuse
//! detection, introspection and revocation; RFC 8414 metadata; dynamic client registration
//! (RFC 7591) only when the organization allows it. No token or secret in an audit record or
//! anything the server wrote.

use serde_json::{Value, json};

use crate::support::{TestServer, expect_problem, get_json, post_json};

const CLIENT: &str = include_str!("../peers/oauth_app_client.py");
const REDIRECT: &str = "http://127.0.0.1:9/callback";

async fn flow(s: &TestServer, metadata_url: &str, client_id: &str, secret: Option<&str>, scope: &str) -> Value {
    let input = json!({
        "base": s.base,
        "metadata_url": metadata_url,
        "client_id": client_id,
        "client_secret": secret,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "login": "mia",
        "password": crate::identity::PASSWORD,
        "calls": [
            ["GET", "/v1/me", null],
            ["GET", "/v1/rooms", null],
            ["POST", "/v1/rooms", { "name": "by the app" }],
            ["GET", "/v1/users", null],
            ["POST", "/v1/invitations", { "email": "new@example.org", "role": "guest" }],
        ],
    });
    let lines = crate::support::python_lines(CLIENT, &input).await;
    serde_json::from_str(lines.last().unwrap()).unwrap()
}

#[tokio::test]
async fn a_stock_client_gets_scoped_tokens_refreshes_and_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    // The real binary, logging at debug level, so its output can be searched for secrets.
    let (child, s) = crate::connections::child_server(dir.path());
    let (org_id, sl) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "owner@example.org", "owner").await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "mia@example.org", "member").await;
    let owner = crate::identity::login(&s, &sl, "owner").await.access;

    // An app that may read rooms and invite people; Mia, a member, cannot invite anyone.
    let made = post_json(
        &s,
        &owner,
        "/v1/oauth-apps",
        json!({ "name": "Planner", "redirect_uris": [REDIRECT], "scopes": ["self.manage", "rooms.read", "users.invite"] }),
    )
    .await;
    let app = &made["app"];
    let secret = made["client_secret"].as_str().unwrap().to_owned();
    let client_id = app["client_id"].as_str().unwrap().to_owned();
    assert_eq!(app["issuer"], format!("{}/orgs/{sl}", s.base));
    assert_eq!(app["confidential"], true);
    let bad = json!({ "name": "x", "redirect_uris": ["http://example.com/cb"], "scopes": ["self.manage"] });
    let r = s.http.post(s.url("/v1/oauth-apps")).bearer_auth(&owner).json(&bad).send().await.unwrap();
    expect_problem(r, 422, "validation_failed").await;

    let metadata_url = s.url(&format!("/.well-known/oauth-authorization-server/orgs/{sl}"));
    let meta: Value = reqwest::get(&metadata_url).await.unwrap().json().await.unwrap();
    assert_eq!(meta["issuer"], format!("{}/orgs/{sl}", s.base));
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));

    let seen = flow(&s, &metadata_url, &client_id, Some(&secret), "self.manage rooms.read users.invite").await;
    assert_eq!(seen["scope"], "self.manage rooms.read users.invite");
    assert_eq!(seen["code_again"], json!([400, "invalid_grant"]), "a code works once");
    // Within the scopes and the role: yes. Outside the scopes (rooms.create, users.read), or
    // beyond the role (a member invites no one): no.
    let calls = &seen["calls"];
    assert_eq!(calls["GET /v1/me"], 200);
    assert_eq!(calls["GET /v1/rooms"], 200);
    assert_eq!(calls["POST /v1/rooms"], 403);
    assert_eq!(calls["GET /v1/users"], 403);
    assert_eq!(calls["POST /v1/invitations"], 403);
    // Refresh rotates; the old refresh token again ends the grant.
    assert_eq!(seen["refreshed"], true);
    assert_eq!(seen["after_refresh"], 200);
    assert_eq!(seen["replayed_refresh"], json!([400, "invalid_grant"]));
    assert_eq!(seen["after_replay"], 401);
    // Introspection tells what a token is; revocation ends its grant.
    assert_eq!(
        seen["introspected"],
        json!({ "active": true, "scope": "self.manage rooms.read users.invite", "client_id": client_id, "token_type": "access_token" })
    );
    assert_eq!(seen["revoke_status"], 200);
    assert_eq!(seen["after_revoke"], 401);
    assert_eq!(seen["introspected_after_revoke"], json!({ "active": false }));

    // Mia's sessions name the app; her own refresh endpoint does not take an app's token.
    let tokens: Vec<String> =
        seen["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    let r = s.http.post(s.url("/v1/auth/refresh")).json(&json!({ "refresh_token": tokens[2] })).send().await.unwrap();
    expect_problem(r, 401, "invalid_refresh_token").await;

    // A wrong secret is not the client.
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .basic_auth(&client_id, Some("oas_wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "rt_x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    // An unknown redirect URI gets a page, never a redirect.
    let r = s
        .http
        .get(s.url(&format!(
            "/oauth/authorize?response_type=code&client_id={client_id}&redirect_uri=https%3A%2F%2Fevil.example%2F&code_challenge=x&code_challenge_method=S256"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Dynamic registration: refused until the organization allows it.
    let registration = s.url(&format!("/oauth/register/{sl}"));
    let wants = json!({ "client_name": "An agent", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                        "scope": "self.manage rooms.read" });
    let r = s.http.post(&registration).json(&wants).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .http
        .put(s.url("/v1/oauth-apps-policy"))
        .bearer_auth(&owner)
        .json(&json!({ "dynamic_registration": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s.http.post(&registration).json(&wants).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let registered: Value = r.json().await.unwrap();
    assert!(registered.get("client_secret").is_none(), "a public client: {registered}");
    // The registered public client goes through the same flow with PKCE alone.
    let public =
        flow(&s, &metadata_url, registered["client_id"].as_str().unwrap(), None, "self.manage rooms.read").await;
    assert_eq!(public["calls"]["GET /v1/rooms"], 200);
    assert_eq!(public["calls"]["POST /v1/rooms"], 403);
    let apps = get_json(&s, &owner, "/v1/oauth-apps").await;
    assert_eq!(apps["items"].as_array().unwrap().len(), 2);

    // Removing the app ends what it holds.
    let app_id = app["id"].as_str().unwrap();
    let r = s.http.delete(s.url(&format!("/v1/oauth-apps/{app_id}"))).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let audit = s.http.get(s.url("/v1/audit/export")).bearer_auth(&owner).send().await.unwrap().text().await.unwrap();
    assert!(audit.contains("oauth_app.token") && audit.contains("oauth_app.revoke"), "audited");
    let mut secrets = tokens;
    secrets.push(secret);
    let log = child.output();
    for t in &secrets {
        assert!(!audit.contains(t.as_str()), "a token in the audit trail");
        assert!(!log.contains(t.as_str()), "a token in the server's output");
    }
}
