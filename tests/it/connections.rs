//! OAuth connections against a real OpenID provider (the certified Node `oidc-provider`, on
//! loopback): an authorization with PKCE through the provider's sign-in and back to the
//! callback, a replayed state refused, an expired access token refreshed once under 100
//! concurrent gateway calls, a refused refresh turning the connection `needs_reauth`, and a
//! deleted connection revoked at the provider. No token or secret shows in any answer, audit
//! record or log line.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::web::Data;
use poem::{EndpointExt, Route, handler, post};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::support::{Browser, TestServer, config_for, expect_problem, get_json, post_json};

const CLIENT_SECRET: &str = "idp-client-secret-never-shown-3f9a";

/// The provider, running until dropped.
pub struct Idp {
    pub base: String,
    _child: tokio::process::Child,
    log: tempfile::NamedTempFile,
}

impl Drop for Idp {
    /// A failing test shows what the provider wrote (its back-channel errors among it).
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the provider wrote:\n{}", std::fs::read_to_string(self.log.path()).unwrap_or_default());
        }
    }
}

impl Idp {
    /// Starts the provider on a port of its choosing. A start that prints nothing in time is
    /// reported (what it wrote, and from node's diagnostic report its stack and what it waits on) and
    /// tried again: a peer's slow start is not a failure of Outpost's.
    pub async fn start(cfg: Value) -> Self {
        let mut said = Vec::new();
        for _ in 0..3 {
            match Self::start_once(&cfg).await {
                Ok(idp) => {
                    if !said.is_empty() {
                        eprintln!("the provider started after {} silent attempts:\n{}", said.len(), said.join("\n"));
                    }
                    return idp;
                }
                Err(why) => said.push(why),
            }
        }
        panic!("the provider did not start:\n{}", said.join("\n"));
    }

    async fn start_once(cfg: &Value) -> Result<Self, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/oidc_provider.mjs");
        let reports = tempfile::tempdir().expect("a report folder");
        // What it writes besides `ready` goes to a file (read if it does not start).
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = tokio::process::Command::new("node")
            .arg("--report-on-signal")
            .arg(format!("--report-directory={}", reports.path().display()))
            .arg(script)
            .arg(cfg.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.reopen().expect("the log")))
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Node loads the provider's modules and makes an RSA key first: under a second here.
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let port = match first {
            Ok(Ok(Some(line))) => line.strip_prefix("ready ").and_then(|p| p.trim().parse::<u16>().ok()),
            _ => None,
        };
        let Some(port) = port else {
            let exited = child.try_wait();
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").args(["-USR2", &pid.to_string()]).status();
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let report: String = std::fs::read_dir(reports.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            // Node writes the report from its event loop: none means the main thread was busy.
            // An idle one shows what its loop waits on.
            let state = serde_json::from_str::<Value>(&report).map_or_else(
                |_| json!("no report: its main thread was busy"),
                |r| json!({ "stack": r["javascriptStack"], "waiting_on": r["libuv"], "usage": r["resourceUsage"] }),
            );
            let wrote = std::fs::read_to_string(log.path()).unwrap_or_default();
            return Err(format!("no `ready` line in 30 s (exited: {exited:?}); it wrote: {wrote}; its state: {state}"));
        };
        // Whatever else it prints is read, so its writes never meet a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { base: format!("http://127.0.0.1:{port}"), _child: child, log })
    }

    /// Every access and refresh token it holds.
    pub async fn tokens(&self) -> Vec<String> {
        let v: Value = reqwest::get(format!("{}/_tokens", self.base)).await.unwrap().json().await.unwrap();
        v.as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect()
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/_stats", self.base)).await.unwrap().json().await.unwrap()
    }
}

/// An org's owner and member, on a server whose callback the provider knows.
async fn server(refresh_ahead_s: u64) -> (TestServer, tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    config.oauth.refresh_ahead_s = refresh_ahead_s;
    config.limits.user_requests_per_s = 100_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.oauth.public_url = Some(format!("http://{}", listener.local_addr().unwrap()));
    let s = TestServer::start_on(config, "http", listener).await;
    let (_, owner, member) = people(&s).await;
    (s, dir, owner, member)
}

/// An organization with an owner and a member: its id, their access tokens.
pub(crate) async fn people(s: &TestServer) -> (String, String, String) {
    let (org_id, sl) = crate::identity::create_org(s).await;
    crate::identity::operator_invite_and_accept(s, &org_id, "owner@example.org", "owner").await;
    crate::identity::operator_invite_and_accept(s, &org_id, "mia@example.org", "member").await;
    let owner = crate::identity::login(s, &sl, "owner").await.access;
    let member = crate::identity::login(s, &sl, "mia").await.access;
    (org_id, owner, member)
}

/// The real binary, logging at debug level, on a port the test chose (so the redirect URI,
/// which defaults to the listen address, is known beforehand).
pub(crate) fn child_server(dir: &std::path::Path) -> (crate::support::ChildServer, TestServer) {
    let data = dir.to_str().unwrap().to_owned();
    let (code, key, _) = crate::support::cli(&["operator", "create-key", "--data", &data], &[], None);
    assert_eq!(code, 0);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = [
        ("OUTPOST_EGRESS__ALLOW_CIDRS", "[\"127.0.0.0/8\"]"),
        ("OUTPOST_LOG__LEVEL", "debug"),
        ("OUTPOST_LIMITS__USER_REQUESTS_PER_S", "100000"),
        ("OUTPOST_OAUTH__REFRESH_AHEAD_S", "0"),
    ];
    let server = crate::support::ChildServer::start_listening(dir, &format!("127.0.0.1:{port}"), &env);
    let s = TestServer::attached(server.base.clone(), key.trim().to_owned());
    (server, s)
}

fn client(s: &TestServer) -> Value {
    json!({
        "client_id": "outpost",
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [format!("{}/v1/oauth/callback", s.base)],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    })
}

/// Goes through the provider's sign-in as a browser would (cookies, redirects) and lands on
/// the callback; its answer and the callback URL it reached.
async fn sign_in(authorization_url: &str) -> (reqwest::Response, String) {
    let r = Browser::new().get(authorization_url).await;
    let url = r.url().to_string();
    (r, url)
}

/// Starts an authorization and signs in; the connection made.
async fn connect(s: &TestServer, token: &str, provider_id: &str, owner: &str) -> (Value, String) {
    let started =
        post_json(s, token, "/v1/connections/authorizations", json!({ "provider_id": provider_id, "owner": owner }))
            .await;
    let url = started["authorization_url"].as_str().unwrap_or_else(|| panic!("no authorization: {started}"));
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let (r, callback) = sign_in(url).await;
    assert!(callback.contains("/v1/oauth/callback?"), "landed on {callback}");
    assert_eq!(r.status(), 200, "{callback}");
    (r.json().await.unwrap(), callback)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

struct Upstream {
    seen: Mutex<Vec<String>>,
}

#[handler]
#[allow(clippy::needless_pass_by_value)] // poem hands the extractor over by value
fn echo(req: &poem::Request, up: Data<&Arc<Upstream>>) -> &'static str {
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    up.seen.lock().unwrap().push(auth.to_owned());
    "ok"
}

#[tokio::test]
async fn a_connection_is_made_with_pkce_refreshed_once_under_load_and_revoked_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (child, s) = child_server(dir.path());
    let (org_id, owner, member) = people(&s).await;
    let idp = Idp::start(json!({ "clients": [client(&s)], "access_ttl_s": 3 })).await;
    let mut seen = Vec::new();

    // The provider from its issuer's discovery document.
    let r = s
        .http
        .post(s.url("/v1/oauth/providers"))
        .bearer_auth(&owner)
        .json(&json!({
            "template": "generic_oidc",
            "name": "Local IdP",
            "issuer": idp.base,
            "client_id": "outpost",
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "email", "offline_access"],
            "authorize_params": { "prompt": "consent" },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let provider: Value = r.json().await.unwrap();
    seen.push(provider.to_string());
    assert_eq!(provider["token_url"], format!("{}/token", idp.base));
    assert_eq!(provider["revocation_url"], format!("{}/token/revocation", idp.base));
    assert_eq!(provider["has_client_secret"], true);
    assert_eq!(provider["redirect_uri"], format!("{}/v1/oauth/callback", s.base));
    let provider_id = provider["id"].as_str().unwrap().to_owned();

    // The organization's connection, through the provider's sign-in.
    let (conn, callback) = connect(&s, &owner, &provider_id, "org").await;
    seen.push(conn.to_string());
    assert_eq!(conn["status"], "active");
    assert_eq!(conn["owner"], "org");
    assert_eq!(conn["refreshable"], true);
    assert_eq!(conn["generation"], 1);
    let granted: Vec<&str> = conn["granted_scopes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(granted.contains(&"offline_access"), "{conn}");
    let conn_id = conn["id"].as_str().unwrap().to_owned();

    // The provider names itself in its answer (RFC 9207), and it is the one expected.
    assert!(callback.contains(&format!("iss={}", urlencode(&idp.base))), "{callback}");
    // The same callback again: the state is spent.
    let again = reqwest::get(&callback).await.unwrap();
    expect_problem(again, 400, "invalid_state").await;
    // A state never issued, and a provider's refusal shown, not swallowed (the state spent).
    expect_problem(reqwest::get(s.url("/v1/oauth/callback?state=forged&code=x")).await.unwrap(), 400, "invalid_state")
        .await;
    let started = post_json(&s, &member, "/v1/connections/authorizations", json!({ "provider_id": provider_id })).await;
    let url = reqwest::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    let state = url.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let mixed = format!("/v1/oauth/callback?state={state}&code=x&iss=http%3A%2F%2F127.0.0.1%3A1");
    // Another issuer's answer is refused (a mix-up), and spends the state.
    expect_problem(reqwest::get(s.url(&mixed)).await.unwrap(), 400, "issuer_mismatch").await;
    let started = post_json(&s, &member, "/v1/connections/authorizations", json!({ "provider_id": provider_id })).await;
    let url = reqwest::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    let state = url.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let denied = format!("/v1/oauth/callback?state={state}&error=access_denied&error_description=the+user+said+no");
    let p = expect_problem(reqwest::get(s.url(&denied)).await.unwrap(), 400, "authorization_denied").await;
    assert!(p["detail"].as_str().unwrap().contains("the user said no"), "{p}");
    expect_problem(reqwest::get(s.url(&denied)).await.unwrap(), 400, "invalid_state").await;

    // A service that calls with it: the gateway puts a fresh token on each call.
    let up = Arc::new(Upstream { seen: Mutex::default() });
    let base = crate::support::serve_loopback(Route::new().at("/*", poem::get(echo)).data(up.clone())).await;
    let made = post_json(
        &s,
        &owner,
        "/v1/services",
        json!({
            "name": "Tickets", "base_url": base,
            "credential": { "kind": "oauth_connection", "connection_id": conn_id },
            "gateway": { "rate_per_s": 10000 },
        }),
    )
    .await;
    seen.push(made.to_string());
    assert_eq!(made["service"]["credential"]["connection_id"], conn_id.as_str(), "{made}");
    let service = made["service"]["id"].as_str().unwrap().to_owned();
    let call = |token: String| {
        let req = s.http.get(s.url(&format!("/v1/services/{service}/proxy/x"))).bearer_auth(token);
        async move { req.send().await.unwrap() }
    };
    let r = call(member.clone()).await;
    assert_eq!(r.status(), 200);
    let first = up.seen.lock().unwrap()[0].clone();
    assert!(first.starts_with("Bearer ") && first.len() > 20, "{first}");

    // Past its expiry, 100 calls at once cause one refresh.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let before = idp.stats().await;
    let calls: Vec<_> = (0..100).map(|_| tokio::spawn(call(member.clone()))).collect();
    for c in calls {
        assert_eq!(c.await.unwrap().status(), 200);
    }
    let after = idp.stats().await;
    assert_eq!(
        after["grants"]["refresh_token"].as_u64().unwrap_or(0),
        before["grants"]["refresh_token"].as_u64().unwrap_or(0) + 1,
        "{after}"
    );
    let tokens: std::collections::BTreeSet<String> = up.seen.lock().unwrap()[1..].iter().cloned().collect();
    assert_eq!(tokens.len(), 1, "every call carried the refreshed token");
    assert_ne!(tokens.iter().next().unwrap(), &first);
    let fresh = tokens.into_iter().next().unwrap();
    let c = get_json(&s, &member, &format!("/v1/connections/{conn_id}")).await;
    assert_eq!(c["generation"], 2, "{c}");

    // The user takes the app's access away at the provider: the next refresh is refused, the
    // connection needs authorizing again, and the gateway says so.
    let mut issued = idp.tokens().await;
    reqwest::Client::new().post(format!("{}/_forget", idp.base)).send().await.unwrap();
    let r = s.http.post(s.url(&format!("/v1/connections/{conn_id}/refresh"))).bearer_auth(&owner).send().await.unwrap();
    let p = expect_problem(r, 409, "connection_needs_reauth").await;
    assert!(p["detail"].as_str().unwrap().contains("invalid_grant"), "{p}");
    let c = get_json(&s, &member, &format!("/v1/connections/{conn_id}")).await;
    assert_eq!(c["status"], "needs_reauth", "{c}");
    expect_problem(call(member.clone()).await, 502, "connection_unavailable").await;
    // Everyone in the organization is told, on its topic.
    let events: Value =
        s.get(&format!("/v1/orgs/{org_id}/events?topic=org&limit=1000")).send().await.unwrap().json().await.unwrap();
    let told = events["items"].as_array().unwrap().iter().any(|e| {
        e["type"] == "connection.needs_reauth"
            && e["data"]["id"] == conn_id.as_str()
            && e["data"]["status"] == "needs_reauth"
    });
    assert!(told, "no connection.needs_reauth event: {events}");
    seen.push(events.to_string());

    // A member's own connection; deleting it revokes its refresh token at the provider.
    let (mine, _) = connect(&s, &member, &provider_id, "user").await;
    assert_eq!(mine["owner"], "user");
    let mine_id = mine["id"].as_str().unwrap().to_owned();
    // Others do not see it, not even the owner.
    let r = s.http.get(s.url(&format!("/v1/connections/{mine_id}"))).bearer_auth(&owner).send().await.unwrap();
    expect_problem(r, 404, "not_found").await;
    issued.extend(idp.tokens().await);
    let held = idp.stats().await;
    assert_eq!(held["refresh_tokens"], 1, "{held}");
    let r = s.http.delete(s.url(&format!("/v1/connections/{mine_id}"))).bearer_auth(&member).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let gone = idp.stats().await;
    assert_eq!(gone["revocations"], held["revocations"].as_u64().unwrap() + 1, "{gone}");
    assert_eq!(gone["refresh_tokens"], 0, "{gone}");
    assert_eq!(gone["grants_revoked"], 1, "the grant went with it: {gone}");

    // The organization's connection is in use by the service: not removable until it is not.
    let r = s.http.delete(s.url(&format!("/v1/connections/{conn_id}"))).bearer_auth(&owner).send().await.unwrap();
    expect_problem(r, 409, "connection_in_use").await;

    // No token and no secret in any answer or audit record.
    let list = get_json(&s, &owner, "/v1/connections").await;
    seen.push(list.to_string());
    seen.push(get_json(&s, &owner, "/v1/oauth/providers").await.to_string());
    let audit = s.http.get(s.url("/v1/audit/export")).bearer_auth(&owner).send().await.unwrap().text().await.unwrap();
    assert!(audit.contains("connection.needs_reauth") && audit.contains("connection.refresh"), "audited");
    seen.push(audit);
    // Nor in anything the server wrote, at debug level, all along.
    seen.push(child.output());
    let mut secrets = vec![CLIENT_SECRET.to_owned(), first.replace("Bearer ", ""), fresh.replace("Bearer ", "")];
    secrets.extend(issued.iter().cloned());
    assert!(secrets.len() >= 5, "{secrets:?}");
    for text in &seen {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in {text}");
        }
    }
}

/// A provider's token and revocation endpoints for the client-credentials grant, on loopback:
/// the tokens it has issued and the revocations it has taken.
pub struct TokenServer {
    pub issued: Mutex<u32>,
    pub revoked: Mutex<u32>,
}

#[handler]
#[allow(clippy::needless_pass_by_value)] // poem hands the extractor over by value
fn token_endpoint(body: String, t: Data<&Arc<TokenServer>>) -> poem::Response {
    if !body.contains("grant_type=client_credentials") {
        return poem::Response::builder()
            .status(poem::http::StatusCode::BAD_REQUEST)
            .content_type("application/json")
            .body(r#"{"error":"unsupported_grant_type"}"#);
    }
    let mut n = t.issued.lock().unwrap();
    *n += 1;
    poem::Response::builder().content_type("application/json").body(
        json!({ "access_token": format!("cc-token-{n}"), "token_type": "Bearer", "expires_in": 3600, "scope": "api:read" })
            .to_string(),
    )
}

#[handler]
#[allow(clippy::needless_pass_by_value)] // poem hands the extractor over by value
fn revocation_endpoint(t: Data<&Arc<TokenServer>>) -> &'static str {
    *t.revoked.lock().unwrap() += 1;
    ""
}

/// Serves a token endpoint (`/token`) and a revocation endpoint (`/revoke`).
pub async fn token_server() -> (String, Arc<TokenServer>) {
    let t = Arc::new(TokenServer { issued: Mutex::new(0), revoked: Mutex::new(0) });
    let app = Route::new().at("/token", post(token_endpoint)).at("/revoke", post(revocation_endpoint)).data(t.clone());
    (crate::support::serve_loopback(app).await, t)
}

/// A provider of the organization's with the client-credentials grant at `base`.
pub async fn client_credentials_provider(s: &TestServer, admin: &str, base: &str) -> String {
    let made = post_json(
        s,
        admin,
        "/v1/oauth/providers",
        json!({
            "template": "custom", "grant": "client_credentials",
            "token_url": format!("{base}/token"), "revocation_url": format!("{base}/revoke"),
            "client_id": "svc", "client_secret": CLIENT_SECRET, "scopes": ["api:read"],
        }),
    )
    .await;
    made["id"].as_str().unwrap_or_else(|| panic!("no provider: {made}")).to_owned()
}

#[tokio::test]
async fn client_credentials_make_the_organizations_connection_and_bad_providers_are_refused() {
    let (s, _dir, owner, member) = server(60).await;
    let (base, t) = token_server().await;
    let provider = client_credentials_provider(&s, &owner, &base).await;
    let r = s
        .http
        .post(s.url("/v1/connections"))
        .bearer_auth(&owner)
        .json(&json!({ "provider_id": provider }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let c: Value = r.json().await.unwrap();
    assert_eq!((c["owner"].as_str(), c["status"].as_str()), (Some("org"), Some("active")));
    assert_eq!(c["granted_scopes"], json!(["api:read"]));
    assert_eq!(*t.issued.lock().unwrap(), 1);
    // Members make no organization connection; an authorization of a client-credentials
    // provider is refused.
    let r = s.http.post(s.url("/v1/connections")).bearer_auth(&member).json(&json!({ "provider_id": provider }));
    expect_problem(r.send().await.unwrap(), 403, "forbidden").await;
    let r = s
        .http
        .post(s.url("/v1/connections/authorizations"))
        .bearer_auth(&member)
        .json(&json!({ "provider_id": provider }));
    expect_problem(r.send().await.unwrap(), 422, "unsupported_by_provider").await;
    // A forced refresh fetches a new token with the client's credentials.
    let id = c["id"].as_str().unwrap();
    let r = s.http.post(s.url(&format!("/v1/connections/{id}/refresh"))).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(*t.issued.lock().unwrap(), 2);
    // The provider is in use; deleting the connection revokes its token, then the provider goes.
    let r = s.http.delete(s.url(&format!("/v1/oauth/providers/{provider}"))).bearer_auth(&owner).send().await.unwrap();
    expect_problem(r, 409, "provider_in_use").await;
    let r = s.http.delete(s.url(&format!("/v1/connections/{id}"))).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(*t.revoked.lock().unwrap(), 1);
    let r = s.http.delete(s.url(&format!("/v1/oauth/providers/{provider}"))).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(r.status(), 204);

    // Templates: placeholders filled in, refused when they would change a URL's shape; an
    // endpoint the egress policy refuses is refused when the provider is added.
    let templates = get_json(&s, &member, "/v1/oauth/templates").await;
    assert!(templates["items"].as_array().unwrap().len() >= 10);
    let bad = s.http.post(s.url("/v1/oauth/providers")).bearer_auth(&owner).json(&json!({
        "template": "okta", "params": { "domain": "evil.example/x?" }, "client_id": "c",
    }));
    let p = expect_problem(bad.send().await.unwrap(), 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["code"], "invalid_params", "{p}");
    let refused = s.http.post(s.url("/v1/oauth/providers")).bearer_auth(&owner).json(&json!({
        "template": "custom", "authorize_url": "http://10.0.0.1/a", "token_url": "http://10.0.0.1/t", "client_id": "c",
    }));
    let p = expect_problem(refused.send().await.unwrap(), 422, "validation_failed").await;
    assert!(p.to_string().contains("address_refused"), "{p}");
    s.stop().await;
}
