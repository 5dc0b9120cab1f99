//! Outpost as an MCP server, used by an independent client: the official MCP TypeScript SDK
//! finds the authorization server from the protected-resource metadata, registers itself,
//! goes through the consent page, and works with the tools; the tools hold to the member's
//! permissions and the token's scopes.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::identity::{create_org, login, operator_invite_and_accept};
use crate::support::{TestServer, get_json, post_json};

const SCOPE: &str = "self.manage rooms.read chat.use tasks.read tasks.write search.use";

/// Runs `tests/peers/mcp_ts_client.mjs` with `input`; its one line of JSON.
async fn ts_client(input: &Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/mcp_ts_client.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("in time").unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}

/// One JSON-RPC request to an MCP endpoint, as a plain HTTP POST: (status, body).
async fn rpc(s: &TestServer, path: &str, token: &str, method: &str, params: Value) -> (u16, Value) {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let r = s
        .http
        .post(s.url(path))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_stock_client_authorizes_and_works_within_the_members_rights() {
    // The URL clients reach the server at, which the metadata and the issuer name.
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = crate::support::config_for(dir.path());
    config.oauth.public_url = Some(format!("http://{}", listener.local_addr().unwrap()));
    let s = TestServer::start_on(config, "http", listener).await;
    let (org_id, sl) = create_org(&s).await;
    for (who, role) in [("owner", "owner"), ("mia", "member"), ("gus", "guest")] {
        operator_invite_and_accept(&s, &org_id, &format!("{who}@example.org"), role).await;
    }
    let owner = login(&s, &sl, "owner").await.access;
    let r = s
        .http
        .put(s.url("/v1/oauth-apps-policy"))
        .bearer_auth(&owner)
        .json(&json!({ "dynamic_registration": true }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let general = post_json(&s, &owner, "/v1/channels", json!({ "kind": "public", "name": "general" })).await;
    let general = general["id"].as_str().unwrap().to_owned();
    let secret = post_json(&s, &owner, "/v1/channels", json!({ "kind": "private", "name": "board" })).await;
    let secret = secret["id"].as_str().unwrap().to_owned();
    let mia = login(&s, &sl, "mia").await;
    let r = s.http.post(s.url(&format!("/v1/channels/{general}/join"))).bearer_auth(&mia.access).send().await.unwrap();
    assert!(r.status().is_success());

    // Without a credential: where to get one.
    let url = format!("/orgs/{sl}/mcp");
    let r = s.http.post(s.url(&url)).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let meta_url = format!("{}/.well-known/oauth-protected-resource/orgs/{sl}/mcp", s.base);
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{meta_url}\""));
    let meta: Value = reqwest::get(&meta_url).await.unwrap().json().await.unwrap();
    assert_eq!(meta["resource"], format!("{}{url}", s.base));
    assert_eq!(meta["authorization_servers"], json!([format!("{}/orgs/{sl}", s.base)]));

    let seen = ts_client(&json!({
        "url": s.url(&url),
        "login": "mia",
        "password": crate::identity::PASSWORD,
        "redirect_uri": "http://127.0.0.1:9/callback",
        "scope": SCOPE,
        "calls": [
            ["post_message", { "channel_id": general, "text": "posted by an agent" }],
            ["read_messages", { "channel_id": general }],
            ["create_task", { "title": "filed by an agent" }],
            ["list_tasks", {}],
            ["post_message", { "channel_id": secret, "text": "not mine to post" }],
            ["list_channels", {}],
        ],
        "read": [format!("outpost://channels/{general}")],
    }))
    .await;
    assert_eq!(seen["unauthenticated"]["status"], 401, "{seen}");
    assert_eq!(seen["token_scope"], SCOPE, "{seen}");
    let tools: Vec<&str> = seen["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for t in ["search", "list_rooms", "list_channels", "read_messages", "post_message", "list_tasks", "create_task"] {
        assert!(tools.contains(&t), "{t} in {tools:?}");
    }
    let calls = seen["calls"].as_array().unwrap();
    assert_eq!(calls[0]["isError"], false, "{seen}");
    assert!(calls[1]["text"].as_str().unwrap().contains("posted by an agent"), "{seen}");
    assert_eq!(calls[2]["isError"], false, "{seen}");
    assert!(calls[3]["text"].as_str().unwrap().contains("filed by an agent"), "{seen}");
    assert_eq!(calls[4]["isError"], true, "a member cannot post where they do not belong: {seen}");
    assert!(!calls[5]["text"].as_str().unwrap().contains("board"), "nor see the channel: {seen}");
    assert!(seen["reads"][0]["text"].as_str().unwrap().contains("posted by an agent"), "{seen}");

    // The message is in the channel, by Mia, and the task is hers.
    let messages = get_json(&s, &owner, &format!("/v1/channels/{general}/messages")).await;
    let m = &messages["items"][0];
    assert_eq!((m["text"].as_str(), m["author_id"].as_str()), (Some("posted by an agent"), Some(mia.user_id.as_str())));
    let tasks = get_json(&s, &owner, "/v1/tasks").await;
    assert!(tasks.to_string().contains("filed by an agent"), "{tasks}");
    let task_id = calls[2]["structured"]["id"].as_str().unwrap().to_owned();
    let update = json!({ "name": "update_task", "arguments": { "task_id": task_id, "status": "done" } });
    let (_, r) = rpc(&s, &url, &mia.access, "tools/call", update).await;
    assert_eq!(r["result"]["structuredContent"]["status"], "done", "{r}");

    // A guest's token cannot file a task (guests do not hold tasks.write), through MCP or not;
    // another organization's token is not this resource's; an API key works at /mcp.
    let gus = login(&s, &sl, "gus").await.access;
    let call = json!({ "name": "create_task", "arguments": { "title": "by a guest" } });
    let (st, r) = rpc(&s, &url, &gus, "tools/call", call.clone()).await;
    assert_eq!((st, r["result"]["isError"].as_bool()), (200, Some(true)), "{r}");
    assert!(r["result"]["content"][0]["text"].as_str().unwrap().contains("tasks.write"), "{r}");
    let (other_id, other_sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &other_id, "zed@example.org", "owner").await;
    let zed = login(&s, &other_sl, "zed").await.access;
    let (st, _) = rpc(&s, &url, &zed, "tools/list", json!({})).await;
    assert_eq!(st, 401);
    let key = post_json(&s, &mia.access, "/v1/api-keys", json!({ "name": "agent", "scopes": ["chat.use"] })).await;
    let key = key["token"].as_str().unwrap();
    let (st, r) =
        rpc(&s, "/mcp", key, "tools/call", json!({ "name": "read_messages", "arguments": { "channel_id": general } }))
            .await;
    assert_eq!((st, r["result"]["isError"].as_bool()), (200, Some(false)), "{r}");
    let (_, r) = rpc(&s, "/mcp", key, "tools/call", json!({ "name": "list_tasks", "arguments": {} })).await;
    assert_eq!(r["result"]["isError"], true, "the key's scopes hold: {r}");

    // A document's text, and search, for a member of the room.
    let room = post_json(&s, &owner, "/v1/rooms", json!({ "name": "plans", "visibility": "private" })).await;
    let doc =
        post_json(&s, &owner, &format!("/v1/rooms/{}/docs", room["id"].as_str().unwrap()), json!({ "name": "d" }))
            .await;
    let doc_id = doc["id"].as_str().unwrap();
    let (_, r) =
        rpc(&s, &url, &owner, "tools/call", json!({ "name": "read_document", "arguments": { "doc_id": doc_id } }))
            .await;
    assert_eq!(
        (r["result"]["isError"].as_bool(), r["result"]["structuredContent"]["doc_id"].as_str()),
        (Some(false), Some(doc_id)),
        "{r}"
    );
    let (_, r) =
        rpc(&s, &url, &gus, "tools/call", json!({ "name": "read_document", "arguments": { "doc_id": doc_id } })).await;
    assert_eq!(r["result"]["isError"], true, "a guest outside the room: {r}");
    let (_, r) =
        rpc(&s, &url, &owner, "tools/call", json!({ "name": "search", "arguments": { "query": "agent" } })).await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    let (_, r) = rpc(&s, &url, &owner, "tools/call", json!({ "name": "nothing", "arguments": {} })).await;
    assert!(r["error"]["code"].is_i64(), "an unknown tool is a protocol error: {r}");
    s.stop().await;
}
