//! Identity: the whole journey from an operator's invitation to a member's logout, tokens
//! wrong in every way, refresh reuse, the session cap, and the vault's refusals.

use serde_json::{Value, json};

use crate::support::{TestServer, cli, config_for, expect_problem, slug};

/// A logged-in user: tokens and ids.
pub struct Login {
    pub access: String,
    pub refresh: String,
    pub user_id: String,
    pub session_id: String,
}

pub const PASSWORD: &str = "correct horse battery staple";

pub async fn create_org(s: &TestServer) -> (String, String) {
    let sl = slug("idorg");
    let org = s.create_org(&sl).await;
    (org["id"].as_str().unwrap().to_owned(), sl)
}

/// Operator invites `email` as `role` into `org_id`; the invitee accepts. Returns the user.
pub async fn operator_invite_and_accept(s: &TestServer, org_id: &str, email: &str, role: &str) -> Value {
    let r = s
        .post(&format!("/v1/orgs/{org_id}/invitations"), &json!({ "email": email, "role": role }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let inv: Value = r.json().await.unwrap();
    assert_eq!(inv["user"]["status"], "invited");
    accept(s, inv["token"].as_str().unwrap(), email.split('@').next().unwrap()).await
}

pub async fn accept(s: &TestServer, token: &str, username: &str) -> Value {
    let r = s
        .http
        .post(s.url("/v1/auth/invitations/accept"))
        .json(&json!({ "token": token, "username": username, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    r.json().await.unwrap()
}

pub async fn login(s: &TestServer, org_slug: &str, login: &str) -> Login {
    let r = s
        .http
        .post(s.url("/v1/auth/login"))
        .header("user-agent", "identity-test/1.0")
        .json(&json!({ "org": org_slug, "login": login, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login {login}");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["access_token"].as_str().unwrap().starts_with("v4.public."));
    Login {
        access: t["access_token"].as_str().unwrap().to_owned(),
        refresh: t["refresh_token"].as_str().unwrap().to_owned(),
        user_id: t["user"]["id"].as_str().unwrap().to_owned(),
        session_id: t["session_id"].as_str().unwrap().to_owned(),
    }
}

/// An org with an owner, an admin, a member and a guest, all logged in.
pub async fn populated_org(s: &TestServer) -> (String, Vec<(&'static str, Login)>) {
    let (org_id, sl) = create_org(s).await;
    let mut out = Vec::new();
    for role in ["owner", "admin", "member", "guest"] {
        let email = format!("{role}-{}@example.org", &sl[6..]);
        operator_invite_and_accept(s, &org_id, &email, role).await;
        out.push((role, login(s, &sl, &email).await));
    }
    (org_id, out)
}

#[tokio::test]
async fn the_whole_journey() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    // Operator invites the admin; the admin accepts and logs in.
    let admin = operator_invite_and_accept(&s, &org_id, "ada@example.org", "admin").await;
    assert_eq!(admin["status"], "active");
    assert_eq!(admin["username"], "ada");
    let a = login(&s, &sl, "ada@example.org").await;
    let me: Value = s.http.get(s.url("/v1/me")).bearer_auth(&a.access).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(me["org_id"], org_id.as_str());
    let perms: Value =
        s.http.get(s.url("/v1/me/permissions")).bearer_auth(&a.access).send().await.unwrap().json().await.unwrap();
    assert!(perms["permissions"].as_array().unwrap().iter().any(|p| p == "users.invite"));

    // The admin invites a member, who accepts and logs in with the username.
    let r = s
        .http
        .post(s.url("/v1/invitations"))
        .bearer_auth(&a.access)
        .json(&json!({ "email": "max@example.org", "role": "member" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let inv: Value = r.json().await.unwrap();
    // An admin cannot invite an owner.
    let r = s
        .http
        .post(s.url("/v1/invitations"))
        .bearer_auth(&a.access)
        .json(&json!({ "email": "o@example.org", "role": "owner" }))
        .send()
        .await
        .unwrap();
    expect_problem(r, 403, "forbidden").await;
    accept(&s, inv["token"].as_str().unwrap(), "max").await;
    // An invitation works once.
    let r = s
        .http
        .post(s.url("/v1/auth/invitations/accept"))
        .json(&json!({ "token": inv["token"], "username": "max2", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "invalid_token").await;
    let m = login(&s, &sl, "max").await;
    let perms: Value =
        s.http.get(s.url("/v1/me/permissions")).bearer_auth(&m.access).send().await.unwrap().json().await.unwrap();
    assert_eq!(perms["role"], "member");
    assert!(!perms["permissions"].as_array().unwrap().iter().any(|p| p == "users.invite"));

    // Wrong passwords and unknown users get the same answer.
    for (login, pw) in [("max", "wrong password!"), ("nobody", PASSWORD)] {
        let r = s
            .http
            .post(s.url("/v1/auth/login"))
            .json(&json!({ "org": sl, "login": login, "password": pw }))
            .send()
            .await
            .unwrap();
        expect_problem(r, 401, "invalid_login").await;
    }

    // The member refreshes, lists sessions, logs out.
    let r = s.http.post(s.url("/v1/auth/refresh")).json(&json!({ "refresh_token": m.refresh })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_ne!(t["refresh_token"], m.refresh.as_str());
    assert_eq!(t["session_id"], m.session_id.as_str());
    let access = t["access_token"].as_str().unwrap().to_owned();
    let list: Value =
        s.http.get(s.url("/v1/auth/sessions")).bearer_auth(&access).send().await.unwrap().json().await.unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["current"], true);
    assert_eq!(items[0]["user_agent"], "identity-test/1.0");
    let r = s.http.post(s.url("/v1/auth/logout")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.http.get(s.url("/v1/me")).bearer_auth(&access).send().await.unwrap();
    expect_problem(r, 401, "session_revoked").await;

    // The admin sees both in the directory; the audit chain has the whole story.
    let users: Value =
        s.http.get(s.url("/v1/users")).bearer_auth(&a.access).send().await.unwrap().json().await.unwrap();
    assert_eq!(users["items"].as_array().unwrap().len(), 2);
    let audit: Value =
        s.get(&format!("/v1/orgs/{org_id}/audit?limit=1000")).send().await.unwrap().json().await.unwrap();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    for want in
        ["user.invite", "user.accept_invite", "auth.login", "auth.login_failed", "auth.refresh", "auth.session_revoke"]
    {
        assert!(actions.contains(&want), "audit lacks {want}: {actions:?}");
    }
    let keys: Value = s.http.get(s.url("/v1/auth/keys")).send().await.unwrap().json().await.unwrap();
    assert!(keys["keys"][0]["public_key"].as_str().unwrap().starts_with("k4.public."));
    assert_eq!(keys["keys"][0]["status"], "current");
    s.stop().await;
}

#[tokio::test]
async fn refresh_reuse_revokes_the_family_and_the_cap_evicts_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.auth.sessions_per_user_max = 2;
    let s = TestServer::start_with(config).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "rita@example.org", "member").await;

    let first = login(&s, &sl, "rita").await;
    let refresh = |token: String| {
        let s = &s;
        async move { s.http.post(s.url("/v1/auth/refresh")).json(&json!({ "refresh_token": token })).send().await.unwrap() }
    };
    let r = refresh(first.refresh.clone()).await;
    assert_eq!(r.status(), 200);
    let next: Value = r.json().await.unwrap();
    // The rotated token comes back: the whole session ends, the newer token too.
    expect_problem(refresh(first.refresh.clone()).await, 401, "refresh_token_reused").await;
    expect_problem(refresh(next["refresh_token"].as_str().unwrap().to_owned()).await, 401, "invalid_refresh_token")
        .await;
    let r = s.http.get(s.url("/v1/me")).bearer_auth(next["access_token"].as_str().unwrap()).send().await.unwrap();
    expect_problem(r, 401, "session_revoked").await;
    let audit: Value =
        s.get(&format!("/v1/orgs/{org_id}/audit?limit=1000")).send().await.unwrap().json().await.unwrap();
    assert!(audit["items"].as_array().unwrap().iter().any(|r| r["action"] == "auth.refresh_reuse"));

    // Cap of two: a third login ends the oldest.
    let a = login(&s, &sl, "rita").await;
    let b = login(&s, &sl, "rita").await;
    let c = login(&s, &sl, "rita").await;
    let r = s.http.get(s.url("/v1/me")).bearer_auth(&a.access).send().await.unwrap();
    expect_problem(r, 401, "session_revoked").await;
    for l in [&b, &c] {
        assert_eq!(s.http.get(s.url("/v1/me")).bearer_auth(&l.access).send().await.unwrap().status(), 200);
    }
    let list: Value =
        s.http.get(s.url("/v1/auth/sessions")).bearer_auth(&c.access).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn failed_logins_lock_the_account_out_and_say_so() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "lou@example.org", "member").await;
    let attempt = |pw: &'static str| {
        let (s, sl) = (&s, sl.clone());
        async move {
            s.http
                .post(s.url("/v1/auth/login"))
                .json(&json!({ "org": sl, "login": "lou", "password": pw }))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..5 {
        expect_problem(attempt("wrong password!").await, 401, "invalid_login").await;
    }
    let r = attempt("wrong password!").await;
    assert_eq!(r.headers()["retry-after"], "30");
    expect_problem(r, 429, "rate_limited").await;
    // Locked out: even the right password waits.
    expect_problem(attempt(PASSWORD).await, 429, "rate_limited").await;
    let audit: Value =
        s.get(&format!("/v1/orgs/{org_id}/audit?limit=1000")).send().await.unwrap().json().await.unwrap();
    let throttled: Vec<&Value> =
        audit["items"].as_array().unwrap().iter().filter(|r| r["action"] == "auth.login_throttled").collect();
    assert_eq!(throttled.len(), 1);
    assert_eq!(throttled[0]["details"]["locked_s"], 30);
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("outpost_rate_limited_total{limiter=\"login_account\"} 2"), "{metrics}");
    s.stop().await;
}

#[test]
fn the_vault_refuses_a_readable_or_wrong_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, _) = cli(&["operator", "create-key", "--data", d], &[], None);
    assert_eq!(code, 0);
    let key = dir.path().join("master.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = cli(&["serve", "--listen", "127.0.0.1:0", "--data", d], &[], None);
    assert_eq!(code, 1);
    assert!(err.contains("readable by other users"), "{err}");
    // Another key file: the sealed signing keys do not open.
    std::fs::remove_file(&key).unwrap();
    let (code, _, err) = cli(&["serve", "--listen", "127.0.0.1:0", "--data", d], &[], None);
    assert_eq!(code, 1);
    assert!(err.contains("wrong key file"), "{err}");
}

#[tokio::test]
async fn signing_keys_and_the_vault_rotate_without_breaking_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config_for(dir.path())).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "kim@example.org", "member").await;
    let before = login(&s, &sl, "kim").await;
    let kid_of = |token: &str| {
        let footer = token.rsplit('.').next().unwrap();
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, footer).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["kid"].as_str().unwrap().to_owned()
    };
    let config = s.config.clone();
    let kid =
        tokio::task::spawn_blocking(move || outpost::commands::rotate_signing_key(&config)).await.unwrap().unwrap();
    let keys: Value = s.http.get(s.url("/v1/auth/keys")).send().await.unwrap().json().await.unwrap();
    let statuses: Vec<(&str, &str)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kid"].as_str().unwrap(), k["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.contains(&(kid.as_str(), "current")));
    assert!(statuses.contains(&(kid_of(&before.access).as_str(), "retired")));
    // The old token still verifies; new ones carry the new key id.
    assert_eq!(s.http.get(s.url("/v1/me")).bearer_auth(&before.access).send().await.unwrap().status(), 200);
    let after = login(&s, &sl, "kim").await;
    assert_eq!(kid_of(&after.access), kid);

    // The vault's master key changes; everything still opens, before and after a restart.
    let key_file = dir.path().join("master.key");
    let old_file = std::fs::read_to_string(&key_file).unwrap();
    let config = s.config.clone();
    tokio::task::spawn_blocking(move || outpost::commands::rotate_vault(&config)).await.unwrap().unwrap();
    let new_file = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(old_file, new_file);
    assert_eq!(new_file.lines().filter(|l| !l.starts_with('#')).count(), 1, "only the new key remains");
    s.stop().await;
    let s = TestServer::start_with(config_for(dir.path())).await;
    assert_eq!(s.http.get(s.url("/v1/me")).bearer_auth(&after.access).send().await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn admins_query_and_export_their_audit_trail() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "ann@example.org", "admin").await;
    operator_invite_and_accept(&s, &org_id, "bo@example.org", "member").await;
    let admin = login(&s, &sl, "ann").await;
    let member = login(&s, &sl, "bo").await;
    let r = s
        .http
        .post(s.url("/v1/auth/login"))
        .json(&json!({ "org": sl, "login": "bo", "password": "nope nope nope" }))
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "invalid_login").await;

    let get = |q: &str| {
        let (s, t) = (&s, admin.access.clone());
        let url = s.url(&format!("/v1/audit{q}"));
        async move { s.http.get(url).bearer_auth(t).send().await.unwrap() }
    };
    let logins: Value = get("?action=auth.login").await.json().await.unwrap();
    let items = logins["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|r| r["action"] == "auth.login"));
    let by_actor: Value = get(&format!("?actor=user:{}", member.user_id)).await.json().await.unwrap();
    assert!(
        by_actor["items"].as_array().unwrap().iter().all(|r| r["actor"] == format!("user:{}", member.user_id).as_str())
    );
    let future: Value = get("?since=2999-01-01T00:00:00Z").await.json().await.unwrap();
    assert!(future["items"].as_array().unwrap().is_empty());
    let page: Value = get("?limit=2").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_after"], 2);
    expect_problem(get("?since=yesterday").await, 422, "validation_failed").await;

    // The export has every record, one JSON object per line, in chain order.
    let r = get("/export").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/x-ndjson"));
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let all: Value = s.get(&format!("/v1/orgs/{org_id}/audit?limit=1000")).send().await.unwrap().json().await.unwrap();
    assert_eq!(lines.len(), all["items"].as_array().unwrap().len());
    assert!(lines.windows(2).all(|w| w[1]["n"].as_u64() > w[0]["n"].as_u64()));

    // Members may not.
    let r = s.http.get(s.url("/v1/audit")).bearer_auth(&member.access).send().await.unwrap();
    expect_problem(r, 403, "forbidden").await;
    s.stop().await;
}

#[tokio::test]
async fn api_keys_act_within_their_scopes() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "ida@example.org", "admin").await;
    operator_invite_and_accept(&s, &org_id, "mo@example.org", "member").await;
    let admin = login(&s, &sl, "ida").await;
    let member = login(&s, &sl, "mo").await;
    let create = |token: String, body: Value| {
        let s = &s;
        async move { s.http.post(s.url("/v1/api-keys")).bearer_auth(token).json(&body).send().await.unwrap() }
    };
    let call = |token: String, path: &'static str| {
        let s = &s;
        async move { s.http.get(s.url(path)).bearer_auth(token).send().await.unwrap() }
    };

    // A member's key limited to self.manage: /v1/me works, the directory does not.
    let r = create(member.access.clone(), json!({ "name": "script", "scopes": ["self.manage"] })).await;
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    let token = k["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with(k["key"]["prefix"].as_str().unwrap()));
    assert_eq!(call(token.clone(), "/v1/me").await.status(), 200);
    expect_problem(call(token.clone(), "/v1/users").await, 403, "forbidden").await;
    // Scopes beyond the role are refused; so is a member making a service account.
    let r = create(member.access.clone(), json!({ "name": "x", "scopes": ["users.manage"] })).await;
    let p = expect_problem(r, 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["code"], "beyond_role");
    let r = create(
        member.access.clone(),
        json!({ "name": "svc", "scopes": ["users.read"], "service_account_role": "member" }),
    )
    .await;
    expect_problem(r, 403, "forbidden").await;

    // An admin's service account reads the directory.
    let r = create(
        admin.access.clone(),
        json!({ "name": "sync", "scopes": ["users.read"], "service_account_role": "member" }),
    )
    .await;
    assert_eq!(r.status(), 201);
    let svc: Value = r.json().await.unwrap();
    let svc_token = svc["token"].as_str().unwrap().to_owned();
    assert!(svc["key"]["user_id"].is_null());
    assert_eq!(call(svc_token.clone(), "/v1/users").await.status(), 200);
    // Listing never shows a secret; admins see every key.
    let all: Value = call(admin.access.clone(), "/v1/api-keys?all=true").await.json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert!(!all.to_string().contains(&token) && !all.to_string().contains(&svc_token));
    let mine: Value = call(member.access.clone(), "/v1/api-keys").await.json().await.unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    // Its use was written down (in the background, shortly after).
    let mut used = Value::Null;
    for _ in 0..100 {
        let mine: Value = call(member.access.clone(), "/v1/api-keys").await.json().await.unwrap();
        used = mine["items"][0]["last_used_at"].clone();
        if used.is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(used.is_string(), "last_used_at was not recorded");
    expect_problem(call(member.access.clone(), "/v1/api-keys?all=true").await, 403, "forbidden").await;

    // Revoked: refused; a suspended owner's key: refused.
    let id = svc["key"]["id"].as_str().unwrap();
    let r = s.http.delete(s.url(&format!("/v1/api-keys/{id}"))).bearer_auth(&admin.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    expect_problem(call(svc_token, "/v1/users").await, 401, "credentials_revoked").await;
    let r = s
        .http
        .post(s.url(&format!("/v1/users/{}/suspend", member.user_id)))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect_problem(call(token, "/v1/me").await, 401, "user_inactive").await;
    // Garbage that looks like a key.
    expect_problem(call("oak_nothing".into(), "/v1/me").await, 401, "invalid_credentials").await;
    let audit: Value =
        s.get(&format!("/v1/orgs/{org_id}/audit?limit=1000")).send().await.unwrap().json().await.unwrap();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"api_key.create") && actions.contains(&"api_key.revoke"));
    s.stop().await;
}

#[tokio::test]
async fn password_changes_and_resets_end_other_logins() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "pat@example.org", "member").await;
    operator_invite_and_accept(&s, &org_id, "al@example.org", "admin").await;
    let admin = login(&s, &sl, "al").await;
    let laptop = login(&s, &sl, "pat").await;
    let phone = login(&s, &sl, "pat").await;
    let me = |t: &str| s.http.get(s.url("/v1/me")).bearer_auth(t.to_owned()).send();

    // Wrong current password, then a weak new one: refused, nothing changes.
    let change = |t: &str, current: &str, new: &str| {
        s.http
            .post(s.url("/v1/me/password"))
            .bearer_auth(t.to_owned())
            .json(&json!({ "current_password": current, "new_password": new }))
            .send()
    };
    let p = expect_problem(
        change(&laptop.access, "wrong one!!", "another long one").await.unwrap(),
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(p["errors"][0]["code"], "wrong_password");
    let p = expect_problem(change(&laptop.access, PASSWORD, "short").await.unwrap(), 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["code"], "weak_password");
    assert_eq!(me(&phone.access).await.unwrap().status(), 200);

    // Changing it keeps this login and ends the others.
    assert_eq!(change(&laptop.access, PASSWORD, "a brand new passphrase").await.unwrap().status(), 204);
    assert_eq!(me(&laptop.access).await.unwrap().status(), 200);
    expect_problem(me(&phone.access).await.unwrap(), 401, "session_revoked").await;
    let r = s
        .http
        .post(s.url("/v1/auth/login"))
        .json(&json!({ "org": sl, "login": "pat", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "invalid_login").await;

    // An admin's reset token sets a new one and ends every login, once.
    let r = s
        .http
        .post(s.url(&format!("/v1/users/{}/password-reset", laptop.user_id)))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let redeem = || {
        s.http
            .post(s.url("/v1/auth/password-reset"))
            .json(&json!({ "token": token, "password": "reset to this passphrase" }))
            .send()
    };
    assert_eq!(redeem().await.unwrap().status(), 204);
    expect_problem(redeem().await.unwrap(), 401, "invalid_token").await;
    expect_problem(me(&laptop.access).await.unwrap(), 401, "session_revoked").await;
    let r = s
        .http
        .post(s.url("/v1/auth/login"))
        .json(&json!({ "org": sl, "login": "pat", "password": "reset to this passphrase" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn profiles_preferences_and_the_directory() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "zoe@example.org", "admin").await;
    operator_invite_and_accept(&s, &org_id, "yan@example.org", "guest").await;
    let r = s
        .post(&format!("/v1/orgs/{org_id}/invitations"), &json!({ "email": "pending@example.org", "role": "member" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .post(&format!("/v1/orgs/{org_id}/invitations"), &json!({ "email": "ZOE@example.org", "role": "member" }))
        .send()
        .await
        .unwrap();
    expect_problem(r, 409, "email_taken").await;
    let z = login(&s, &sl, "zoe").await;

    let patch = |body: Value, if_match: Option<&str>| {
        let mut req = s.http.patch(s.url("/v1/me")).bearer_auth(&z.access).json(&body);
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        req.send()
    };
    let me: Value = s.http.get(s.url("/v1/me")).bearer_auth(&z.access).send().await.unwrap().json().await.unwrap();
    let v = me["user"]["version"].as_u64().unwrap();
    let r = patch(
        json!({ "display_name": "Zoë", "time_zone": "Europe/Berlin", "preferences": { "theme": "dark" } }),
        Some(&format!("\"{v}\"")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = patch(json!({ "locale": "de-DE" }), Some(&format!("\"{v}\""))).await.unwrap();
    expect_problem(r, 412, "version_conflict").await;
    let big = "x".repeat(17 * 1024);
    let r = patch(json!({ "preferences": { "blob": big } }), None).await.unwrap();
    let p = expect_problem(r, 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["pointer"], "/preferences");
    let me: Value = s.http.get(s.url("/v1/me")).bearer_auth(&z.access).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (me["user"]["display_name"].as_str(), me["user"]["time_zone"].as_str()),
        (Some("Zoë"), Some("Europe/Berlin"))
    );
    assert_eq!(me["preferences"]["theme"], "dark");

    // The directory filters by status, role and text.
    let list = |q: &'static str| {
        let s = &s;
        let t = z.access.clone();
        async move {
            s.http
                .get(s.url(&format!("/v1/users{q}")))
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let names = |v: &Value| {
        v["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(names(&list("?status=invited").await), ["pending@example.org"]);
    assert_eq!(names(&list("?role=guest").await), ["yan@example.org"]);
    assert_eq!(names(&list("?q=ZO").await), ["zoe@example.org"]);
    assert_eq!(list("").await["items"].as_array().unwrap().len(), 3, "everyone not deleted, invited included");
    s.stop().await;
}

/// `GET /v1/me/permissions` as `token`.
async fn my_permissions_answer(s: &TestServer, token: &str) -> reqwest::Response {
    s.http.get(s.url("/v1/me/permissions")).bearer_auth(token).send().await.unwrap()
}

/// `GET /v1/me/permissions` as `token`: the status, and the body.
async fn my_permissions(s: &TestServer, token: &str) -> (u16, Value) {
    let r = my_permissions_answer(s, token).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A busy session's standing is remembered between its requests. Each write that changes it
/// takes effect from the very next request: a role change either way, a logout, a suspended
/// account, a suspended organization.
#[tokio::test]
async fn a_remembered_standing_ends_with_the_write_that_changes_it() {
    let s = TestServer::start().await;
    let (org_id, logins) = populated_org(&s).await;
    let by = |role: &str| &logins.iter().find(|(r, _)| *r == role).unwrap().1;
    let (owner, admin, member, guest) = (by("owner"), by("admin"), by("member"), by("guest"));
    let me = |t: &str| s.http.get(s.url("/v1/me")).bearer_auth(t.to_owned()).send();
    for l in [owner, admin, member, guest] {
        for _ in 0..3 {
            assert_eq!(my_permissions(&s, &l.access).await.0, 200);
            assert_eq!(me(&l.access).await.unwrap().status(), 200);
        }
    }

    for (role, invites) in [("admin", true), ("guest", false), ("member", false)] {
        let r = s
            .http
            .put(s.url(&format!("/v1/users/{}/role", member.user_id)))
            .bearer_auth(&owner.access)
            .json(&json!({ "role": role }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let (status, perms) = my_permissions(&s, &member.access).await;
        assert_eq!((status, perms["role"].as_str()), (200, Some(role)));
        assert_eq!(perms["permissions"].as_array().unwrap().iter().any(|p| p == "users.invite"), invites);
        // The kept `/v1/me` answer ends with the write too.
        let v: Value = me(&member.access).await.unwrap().json().await.unwrap();
        assert_eq!(v["user"]["role"], role, "{v}");
    }

    let r = s.http.post(s.url("/v1/auth/logout")).bearer_auth(&guest.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    expect_problem(my_permissions_answer(&s, &guest.access).await, 401, "session_revoked").await;
    expect_problem(me(&guest.access).await.unwrap(), 401, "session_revoked").await;

    let r = s
        .http
        .post(s.url(&format!("/v1/users/{}/suspend", member.user_id)))
        .bearer_auth(&owner.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // Suspension ends the account's sessions too.
    expect_problem(my_permissions_answer(&s, &member.access).await, 401, "session_revoked").await;
    expect_problem(me(&member.access).await.unwrap(), 401, "session_revoked").await;

    assert_eq!(my_permissions(&s, &admin.access).await.0, 200);
    let r = s.post(&format!("/v1/orgs/{org_id}/suspend"), &json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    expect_problem(my_permissions_answer(&s, &admin.access).await, 401, "org_inactive").await;
    expect_problem(me(&admin.access).await.unwrap(), 401, "org_inactive").await;
    s.stop().await;
}
