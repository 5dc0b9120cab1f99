//! Tenant isolation, generated from the API document: for every operation that names a
//! resource, every principal of organization B is refused on organization A's resource with
//! 404 (operator-only operations: 401) — never 403, never a hint that it exists, and nothing
//! changes. Operations added later are covered because this reads the document.

use serde_json::{Map, Value, json};

use crate::identity::populated_org;
use crate::openapi::{OPEN, PUBLIC};
use crate::support::TestServer;

/// A minimal body that passes parsing for `schema` (so the refusal, not the parser, answers).
pub fn sample(doc: &Value, schema: &Value) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return sample(doc, &doc["components"]["schemas"][name]);
    }
    if let Some(all) = schema["allOf"].as_array() {
        return sample(doc, &all[0]);
    }
    if let Some(e) = schema["enum"].as_array() {
        return e[0].clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut m = Map::new();
            for req in schema["required"].as_array().into_iter().flatten() {
                let k = req.as_str().unwrap();
                m.insert(k.to_owned(), sample(doc, &schema["properties"][k]));
            }
            Value::Object(m)
        }
        Some("integer") => json!(1),
        Some("boolean") => json!(false),
        Some("array") => json!([]),
        _ => json!("x@example.org"),
    }
}

#[tokio::test]
async fn org_b_never_sees_org_a() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config_for(dir.path());
    config.limits.user_requests_per_s = 100_000;
    config.limits.org_requests_per_s = 100_000;
    // An OAuth provider's token endpoint on loopback.
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    let s = TestServer::start_with(config).await;
    let (org_a, a) = populated_org(&s).await;
    let (_org_b, b) = populated_org(&s).await;
    let a_member = &a.iter().find(|(r, _)| *r == "member").unwrap().1;
    let doc: Value = s.http.get(s.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    // A's resources of every kind, and B's principals: each role's token and an API key with
    // everything that role holds.
    let a_key: Value = crate::support::post_json(
        &s,
        &a_member.access,
        "/v1/api-keys",
        json!({ "name": "a", "scopes": ["self.manage"] }),
    )
    .await;
    let a_key_id = a_key["key"]["id"].as_str().unwrap().to_owned();
    let a_room: Value = crate::support::post_json(
        &s,
        &a_member.access,
        "/v1/rooms",
        json!({ "name": "A's room", "visibility": "org" }),
    )
    .await;
    let a_room_id = a_room["id"].as_str().unwrap().to_owned();
    let a_chan: Value =
        crate::support::post_json(&s, &a_member.access, "/v1/channels", json!({ "kind": "public", "name": "general" }))
            .await;
    let a_chan_id = a_chan["id"].as_str().unwrap().to_owned();
    let a_msg: Value = crate::support::post_json(
        &s,
        &a_member.access,
        &format!("/v1/channels/{a_chan_id}/messages"),
        json!({ "text": "secret plans" }),
    )
    .await;
    let a_msg_id = a_msg["id"].as_str().unwrap().to_owned();
    let mut a_tasks = Vec::new();
    for title in ["a", "b"] {
        let t: Value = crate::support::post_json(&s, &a_member.access, "/v1/tasks", json!({ "title": title })).await;
        a_tasks.push(t["id"].as_str().unwrap().to_owned());
    }
    let a_comment: Value = crate::support::post_json(
        &s,
        &a_member.access,
        &format!("/v1/tasks/{}/comments", a_tasks[0]),
        json!({ "text": "secret remark" }),
    )
    .await;
    let a_comment_id = a_comment["id"].as_str().unwrap().to_owned();
    let a_doc: Value = crate::support::post_json(
        &s,
        &a_member.access,
        &format!("/v1/rooms/{a_room_id}/docs"),
        json!({ "name": "A's doc" }),
    )
    .await;
    let a_doc_id = a_doc["id"].as_str().unwrap().to_owned();
    let a_version: Value = crate::support::post_json(
        &s,
        &a_member.access,
        &format!("/v1/docs/{a_doc_id}/versions"),
        json!({ "label": "first" }),
    )
    .await;
    let a_version_id = a_version["id"].as_str().unwrap().to_owned();
    // A file of A's member, and an upload of theirs in progress.
    let r = s.http.post(s.url("/v1/assets?name=a.txt")).bearer_auth(&a_member.access).body("a's").send().await.unwrap();
    assert_eq!(r.status(), 201);
    let a_asset_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let r = s
        .http
        .post(s.url("/v1/uploads"))
        .bearer_auth(&a_member.access)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let a_upload_id = r.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_owned();
    // A webhook endpoint of A's (made by its admin), and a message id of A's log.
    let a_admin = &a.iter().find(|(r, _)| *r == "admin").unwrap().1;
    let a_hook: Value = crate::support::post_json(
        &s,
        &a_admin.access,
        "/v1/webhooks/endpoints",
        json!({ "url": "http://localhost:9/hook", "event_types": ["nothing.here"] }),
    )
    .await;
    let a_endpoint_id = a_hook["endpoint"]["id"].as_str().unwrap().to_owned();
    let a_msg_ref = format!("msg_{}_1", org_a.replace('-', ""));
    let a_service: Value = crate::support::post_json(
        &s,
        &a_admin.access,
        "/v1/services",
        json!({ "name": "A's service", "base_url": "http://localhost:9" }),
    )
    .await;
    let a_service_id = a_service["service"]["id"].as_str().unwrap().to_owned();
    // An OAuth provider of A's, and its connection (client credentials, on loopback).
    let (tokens, _) = crate::connections::token_server().await;
    let a_provider_id = crate::connections::client_credentials_provider(&s, &a_admin.access, &tokens).await;
    let a_conn: Value =
        crate::support::post_json(&s, &a_admin.access, "/v1/connections", json!({ "provider_id": a_provider_id }))
            .await;
    let a_conn_id = a_conn["id"].as_str().unwrap_or_else(|| panic!("no connection: {a_conn}")).to_owned();
    // An identity provider of A's.
    let issuer = crate::sso::static_issuer().await;
    let a_idp_id = crate::sso::static_provider(&s, &a_admin.access, &issuer).await;
    // An OAuth app of A's.
    let a_app = crate::support::post_json(
        &s,
        &a_admin.access,
        "/v1/oauth-apps",
        json!({ "name": "A's app", "redirect_uris": ["https://a.example/cb"], "scopes": ["self.manage"] }),
    )
    .await;
    let a_app_id = a_app["app"]["id"].as_str().unwrap_or_else(|| panic!("no app: {a_app}")).to_owned();
    // A prompt template of A's.
    let a_template = crate::support::post_json(
        &s,
        &a_admin.access,
        "/v1/prompt-templates",
        json!({ "level": "org", "name": "a", "sections": [{ "name": "a", "text": "hi" }] }),
    )
    .await;
    let a_template_id = a_template["id"].as_str().unwrap_or_else(|| panic!("no template: {a_template}")).to_owned();
    let mut principals: Vec<(String, String)> = Vec::new();
    for (role, login) in &b {
        principals.push(((*role).to_owned(), login.access.clone()));
        let perms: Value = s
            .http
            .get(s.url("/v1/me/permissions"))
            .bearer_auth(&login.access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r = s
            .http
            .post(s.url("/v1/api-keys"))
            .bearer_auth(&login.access)
            .json(&json!({ "name": "b", "scopes": perms["permissions"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let k: Value = r.json().await.unwrap();
        principals.push((format!("{role} API key"), k["token"].as_str().unwrap().to_owned()));
    }

    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.contains('{') {
            continue;
        }
        // OAuth connections and media connections share the parameter's name.
        let oauth_path = path
            .replace("/v1/connections/{connection_id}", &format!("/v1/connections/{a_conn_id}"))
            .replace("/v1/sso/providers/{provider_id}", &format!("/v1/sso/providers/{a_idp_id}"));
        let concrete = oauth_path
            .replace("{org_id}", &org_a)
            .replace("{app_id}", &a_app_id)
            .replace("{template_id}", &a_template_id)
            .replace("{provider_id}", &a_provider_id)
            .replace("{user_id}", &a_member.user_id)
            .replace("{session_id}", &a_member.session_id)
            .replace("{key_id}", &a_key_id)
            .replace("{room_id}", &a_room_id)
            .replace("{channel_id}", &a_chan_id)
            .replace("{message_id}", &a_msg_id)
            .replace("{emoji}", "thumbsup")
            .replace("{task_id}", &a_tasks[0])
            .replace("{depends_on_id}", &a_tasks[1])
            .replace("{comment_id}", &a_comment_id)
            .replace("{doc_id}", &a_doc_id)
            .replace("{version_id}", &a_version_id)
            .replace("{asset_id}", &a_asset_id)
            .replace("{upload_id}", &a_upload_id)
            .replace("{endpoint_id}", &a_endpoint_id)
            .replace("{msg_id}", &a_msg_ref)
            .replace("{service_id}", &a_service_id)
            .replace("{path}", "tickets")
            .replace("{tool}", "echo")
            .replace("{call_id}", "call-1")
            .replace("{connection_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{recording_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{name}", "00-audio-1.ogg");
        assert!(!concrete.contains('{'), "isolation test does not know a parameter of {path}");
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(!PUBLIC.contains(&id));
            // A signed download link carries no token: the signature names the organization,
            // and files.rs shows another organization's (or a forged) one refused.
            if OPEN.contains(&id) {
                continue;
            }
            // Required headers (the tus protocol's) with their sample values, so that the
            // refusal, not a missing header, answers.
            let headers: Vec<(String, String)> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "header" && p["required"] == true)
                .map(|p| {
                    let value = p["schema"]["enum"][0].as_str().map_or_else(|| "0".to_owned(), str::to_owned);
                    (p["name"].as_str().unwrap().to_owned(), value)
                })
                .collect();
            let operator_only = op["security"].to_string().contains("OperatorAuth");
            let body = op["requestBody"]["content"]["application/json"]["schema"].clone();
            for (role, token) in &principals {
                let mut req =
                    s.http.request(method.to_uppercase().parse().unwrap(), s.url(&concrete)).bearer_auth(token);
                for (name, value) in &headers {
                    req = req.header(name, value);
                }
                if !body.is_null() {
                    req = req.json(&sample(&doc, &body));
                }
                let r = req.send().await.unwrap();
                let want = if operator_only { 401 } else { 404 };
                assert_eq!(r.status().as_u16(), want, "{method} {path} as org B {role}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 200, "only {checked} checks");

    // Lists are scoped by the token: none of A's users shows up for B.
    let b_admin = &b.iter().find(|(r, _)| *r == "admin").unwrap().1;
    let list: Value = s
        .http
        .get(s.url("/v1/users?limit=100"))
        .bearer_auth(&b_admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (_, l) in &a {
        assert!(!list.to_string().contains(&l.user_id));
    }
    // Nothing changed in A: the member is still there, active, a member, logged in.
    let a_admin = &a.iter().find(|(r, _)| *r == "admin").unwrap().1;
    let u: Value = s
        .http
        .get(s.url(&format!("/v1/users/{}", a_member.user_id)))
        .bearer_auth(&a_admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((u["status"].as_str(), u["role"].as_str()), (Some("active"), Some("member")));
    assert_eq!(s.http.get(s.url("/v1/me")).bearer_auth(&a_member.access).send().await.unwrap().status(), 200);
    s.stop().await;
}

/// A cursor is opaque but comes back from the client: one crafted to point outside the
/// caller's range (before it: another organization's, room's or document's keys; after it)
/// never leads out of it. Before the range the list starts over, after it the page is empty.
/// Every paginated list in the document is tried, so a list added later is covered too.
#[tokio::test]
async fn a_cursor_never_leaves_its_list() {
    use base64::Engine as _;
    let s = TestServer::start().await;
    let (_org_a, a) = populated_org(&s).await;
    let (_org_b, b) = populated_org(&s).await;
    let a_admin = &a.iter().find(|(r, _)| *r == "admin").unwrap().1;
    let b_admin = &b.iter().find(|(r, _)| *r == "admin").unwrap().1;
    // A's records, made before B's so their keys sort before B's.
    let secret = "a-secret-title";
    crate::support::post_json(&s, &a_admin.access, "/v1/tasks", json!({ "title": secret })).await;
    crate::support::post_json(&s, &a_admin.access, "/v1/rooms", json!({ "name": secret, "visibility": "org" })).await;
    let mut a_marks: Vec<String> = a.iter().map(|(_, l)| l.user_id.clone()).chain([secret.to_owned()]).collect();
    // A webhook endpoint of each, A's with an attempt in its log.
    let hook = json!({ "url": "http://localhost:9/hook", "event_types": ["nothing.here"] });
    let a_hook: Value = crate::support::post_json(&s, &a_admin.access, "/v1/webhooks/endpoints", hook.clone()).await;
    let a_hook_id = a_hook["endpoint"]["id"].as_str().unwrap();
    let a_try: Value =
        crate::support::post_json(&s, &a_admin.access, &format!("/v1/webhooks/endpoints/{a_hook_id}/test"), json!({}))
            .await;
    a_marks.push(a_try["msg_id"].as_str().unwrap().to_owned());
    let b_hook: Value = crate::support::post_json(&s, &b_admin.access, "/v1/webhooks/endpoints", hook).await;
    let b_hook_id = b_hook["endpoint"]["id"].as_str().unwrap().to_owned();
    let b_service: Value = crate::support::post_json(
        &s,
        &b_admin.access,
        "/v1/services",
        json!({ "name": "b", "base_url": "http://localhost:9" }),
    )
    .await;
    let b_service_id = b_service["service"]["id"].as_str().unwrap().to_owned();
    let b_room: Value =
        crate::support::post_json(&s, &b_admin.access, "/v1/rooms", json!({ "name": "b", "visibility": "org" })).await;
    let b_room_id = b_room["id"].as_str().unwrap().to_owned();
    let b_doc: Value =
        crate::support::post_json(&s, &b_admin.access, &format!("/v1/rooms/{b_room_id}/docs"), json!({ "name": "d" }))
            .await;
    let b_doc_id = b_doc["id"].as_str().unwrap().to_owned();
    let template = json!({ "level": "org", "name": "t", "sections": [{ "name": "a", "text": "hi" }] });
    crate::support::post_json(&s, &a_admin.access, "/v1/prompt-templates", template.clone()).await;
    let b_template: Value = crate::support::post_json(&s, &b_admin.access, "/v1/prompt-templates", template).await;
    let b_template_id = b_template["id"].as_str().unwrap().to_owned();

    let doc: Value = s.http.get(s.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut checked = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let Some(op) = ops.get("get") else { continue };
        if !op["parameters"].as_array().into_iter().flatten().any(|p| p["name"] == "cursor") {
            continue;
        }
        if op["security"].to_string().contains("OperatorAuth") {
            continue; // the operators' list of organizations spans every organization by design
        }
        let concrete = path
            .replace("{room_id}", &b_room_id)
            .replace("{doc_id}", &b_doc_id)
            .replace("{endpoint_id}", &b_hook_id)
            .replace("{service_id}", &b_service_id)
            .replace("{template_id}", &b_template_id);
        assert!(!concrete.contains('{'), "cursor test does not know a parameter of {path}");
        let page = |raw: Vec<u8>| {
            let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            let req = s.http.get(s.url(&concrete)).query(&[("cursor", cursor)]).bearer_auth(&b_admin.access);
            async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200, "{path}");
                r.json::<Value>().await.unwrap()
            }
        };
        let plain: Value = crate::support::get_json(&s, &b_admin.access, &concrete).await;
        // The smallest key there is, and one just below B's own id range: the list starts over.
        for raw in [vec![0u8], vec![0u8; 17]] {
            let body = page(raw).await;
            let text = body.to_string();
            for m in &a_marks {
                assert!(!text.contains(m.as_str()), "{path} followed a crafted cursor into A's records: {text}");
            }
            assert_eq!(body["items"], plain["items"], "{path}: a cursor before the list starts it over");
        }
        // Past every key: an empty page.
        let body = page(vec![0xff; 64]).await;
        assert_eq!(body["items"], json!([]), "{path}");
        checked.push(path.clone());
    }
    assert!(checked.len() >= 6, "lists checked: {checked:?}");
}
