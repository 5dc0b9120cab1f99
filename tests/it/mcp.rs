//! Outpost as an MCP client, against the reference server `@modelcontextprotocol/server-everything`
//! (npm) over Streamable HTTP (and the older HTTP+SSE transport): a server tried before it is registered, tools, resources and
//! prompts listed and used, arguments checked against the tool's schema before anything is
//! sent, per-tool roles, progress reaching the caller's realtime socket, cancellation, a server
//! that dies mid-call (the breaker opens) and comes back (the session is opened again), audit
//! records without the arguments, and the credential never shown.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestServer, config_for, expect_problem, get_json, post_json};

/// The credential the tests store: it must reach the server and nothing else.
const SECRET: &str = "mcp-bearer-7d1e-never-shown-anywhere";

/// The reference server, running until dropped or killed (the role matrix uses it too).
pub struct Everything {
    port: u16,
    /// `streamableHttp`, or `sse` for the 2024-11-05 transport.
    mode: &'static str,
    child: Option<tokio::process::Child>,
}

impl Everything {
    pub async fn start() -> Self {
        Self::start_in("streamableHttp").await
    }

    async fn start_in(mode: &'static str) -> Self {
        let mut e = Self { port: free_port(), mode, child: None };
        // A port found free can be taken before the server binds it (the suite's own servers
        // and clients open ports all the while): then it exits, and starts again on another one.
        let mut said = String::new();
        for _ in 0..20 {
            match e.restart().await {
                Ok(()) => return e,
                Err(why) => said = why,
            }
            e.port = free_port();
        }
        panic!("server-everything did not start; the last attempt said: {said}");
    }

    /// Starts it (again) on its port, or what it wrote before it exited; its environment is
    /// empty but for what node needs, since one of its tools answers with it.
    async fn restart(&mut self) -> Result<(), String> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
        );
        // What it writes goes to a file (a pipe nobody reads could fill and stop it), read if it
        // exits before it answers.
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .arg(self.mode)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.reopen().expect("the log")))
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        // Starting node on a busy machine can take a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err("no answer within 60 s".into());
            }
            if child.try_wait().unwrap().is_some() {
                let said = std::fs::read_to_string(log.path()).unwrap_or_default();
                return Err(said.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    pub fn url(&self) -> String {
        let path = if self.mode == "sse" { "sse" } else { "mcp" };
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn call(s: &TestServer, token: &str, id: &str, tool: &str, body: Value) -> reqwest::Response {
    s.http
        .post(s.url(&format!("/v1/services/{id}/mcp/tools/{tool}/call")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A 30-second call of the long-running tool, going on while the test does.
fn slow_call(
    s: &TestServer,
    token: &str,
    id: &str,
    call_id: Option<&str>,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let mut body = json!({ "arguments": { "duration": 30, "steps": 30 } });
    if let Some(c) = call_id {
        body["call_id"] = json!(c);
    }
    let url = s.url(&format!("/v1/services/{id}/mcp/tools/trigger-long-running-operation/call"));
    let req = s.http.post(url).bearer_auth(token).json(&body);
    tokio::spawn(async move { req.send().await.unwrap() })
}

fn text_of(result: &Value) -> String {
    result["content"].as_array().unwrap().iter().filter_map(|c| c["text"].as_str()).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn an_everything_server_through_outpost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    config.limits.user_requests_per_s = 100_000;
    let s = TestServer::start_with(config).await;
    let mut everything = Everything::start().await;
    let (org_id, sl) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "owner@example.org", "owner").await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "mia@example.org", "member").await;
    let owner = crate::identity::login(&s, &sl, "owner").await.access;
    let mia = crate::identity::login(&s, &sl, "mia").await;
    let member = mia.access.clone();
    let mut seen = Vec::new();

    // Tried before it is registered: who it is, what it offers; members may not try.
    let test = json!({ "base_url": everything.url(), "credential": { "kind": "bearer", "secret": SECRET } });
    let tried = post_json(&s, &owner, "/v1/mcp/test", test.clone()).await;
    seen.push(tried.to_string());
    assert!(tried["server_name"].as_str().unwrap().contains("everything"), "{tried}");
    assert!(!tried["protocol_version"].as_str().unwrap().is_empty());
    let names: Vec<&str> = tried["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"echo") && names.contains(&"get-sum"), "{names:?}");
    let r = s.http.post(s.url("/v1/mcp/test")).bearer_auth(&member).json(&test).send().await.unwrap();
    expect_problem(r, 403, "forbidden").await;

    // Registered with a credential, a tool kept for owners, short breaker settings.
    let made = post_json(
        &s,
        &owner,
        "/v1/services",
        json!({
            "name": "Everything",
            "kind": "mcp",
            "base_url": everything.url(),
            "credential": { "kind": "bearer", "secret": SECRET },
            "gateway": { "breaker_min_calls": 2, "breaker_failure_percent": 50, "breaker_window_ms": 60000, "breaker_open_ms": 500, "breaker_probes": 1 },
            "mcp": { "tool_roles": { "get-env": ["owner"] }, "timeout_ms": 5000 },
        }),
    )
    .await;
    seen.push(made.to_string());
    let id = made["service"]["id"].as_str().unwrap().to_owned();
    assert_eq!(made["service"]["mcp"]["tool_roles"], json!({ "get-env": ["owner"] }), "{made}");

    // The catalog, with what the caller may call.
    let tools = get_json(&s, &member, &format!("/v1/services/{id}/mcp/tools")).await;
    let find = |name: &str| tools["items"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned().unwrap();
    assert_eq!(find("echo")["callable"], true);
    assert_eq!(find("get-env")["callable"], false);
    assert_eq!(find("get-sum")["input_schema"]["required"], json!(["a", "b"]));

    // Calls: a result, arguments refused before sending, roles, unknown tools.
    let r = call(&s, &member, &id, "echo", json!({ "arguments": { "message": "hi" } })).await;
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await.unwrap();
    assert_eq!(text_of(&echoed), "Echo: hi", "{echoed}");
    assert_eq!(echoed["is_error"], false);
    let r = call(&s, &member, &id, "get-sum", json!({ "arguments": { "a": "two", "b": 3 } })).await;
    let p = expect_problem(r, 422, "invalid_arguments").await;
    assert_eq!(p["errors"][0]["pointer"], "/arguments/a", "{p}");
    let r = call(&s, &member, &id, "get-sum", json!({ "arguments": { "b": 3 } })).await;
    expect_problem(r, 422, "invalid_arguments").await;
    let r = call(&s, &member, &id, "get-sum", json!({ "arguments": { "a": 2, "b": 3 } })).await;
    let sum: Value = r.json().await.unwrap();
    assert!(text_of(&sum).contains('5'), "{sum}");
    let r = call(&s, &member, &id, "get-env", json!({})).await;
    expect_problem(r, 403, "tool_not_allowed").await;
    let r = call(&s, &owner, &id, "get-env", json!({})).await;
    assert_eq!(r.status(), 200);
    let env = r.text().await.unwrap();
    assert!(!env.contains(SECRET), "the credential reached the server's environment");
    let r = call(&s, &member, &id, "no-such-tool", json!({})).await;
    expect_problem(r, 404, "unknown_tool").await;
    let r = call(&s, &member, &id, "echo", json!({ "arguments": { "message": "x" }, "call_id": "no spaces" })).await;
    expect_problem(r, 422, "validation_failed").await;

    // Resources and prompts.
    let resources = get_json(&s, &member, &format!("/v1/services/{id}/mcp/resources")).await;
    let first = resources["items"][0]["uri"].as_str().unwrap().to_owned();
    let read = post_json(&s, &member, &format!("/v1/services/{id}/mcp/resources/read"), json!({ "uri": first })).await;
    assert_eq!(read["contents"][0]["uri"], first.as_str(), "{read}");
    let prompts = get_json(&s, &member, &format!("/v1/services/{id}/mcp/prompts")).await;
    let args_prompt = prompts["items"].as_array().unwrap().iter().find(|p| p["name"] == "args-prompt").unwrap();
    assert!(args_prompt["arguments"].as_array().unwrap().iter().any(|a| a["name"] == "city" && a["required"] == true));
    let got = post_json(
        &s,
        &member,
        &format!("/v1/services/{id}/mcp/prompts/args-prompt/get"),
        json!({ "arguments": { "city": "Reykjavik" } }),
    )
    .await;
    assert!(got["messages"].to_string().contains("Reykjavik"), "{got}");

    // Progress reaches the caller's own socket, named by the call.
    let (mut ws, _) = crate::realtime::connect(&s, &mia).await;
    let inbox = format!("user:{}", mia.user_id);
    let frames = crate::realtime::subscribe(&mut ws, &inbox, None, None).await;
    assert_eq!(frames.last().unwrap()["op"], "subscribed", "{frames:?}");
    let body = json!({ "arguments": { "duration": 1, "steps": 4 }, "call_id": "long-1" });
    let r = call(&s, &member, &id, "trigger-long-running-operation", body).await;
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert!(text_of(&done).contains("completed"), "{done}");
    let mut progress = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while progress.last().is_none_or(|p: &Value| p["data"]["progress"].as_f64() != Some(4.0)) {
        assert!(tokio::time::Instant::now() < deadline, "no progress to 4: {progress:?}");
        let f = crate::realtime::next(&mut ws).await;
        if f["op"] == "signal" && f["kind"] == "mcp.progress" {
            progress.push(f);
        }
    }
    let last = progress.last().unwrap();
    assert_eq!(last["topic"], inbox.as_str());
    assert_eq!(last["from"], id.as_str());
    assert_eq!(last["data"]["call_id"], "long-1");
    assert_eq!(last["data"]["tool"], "trigger-long-running-operation");
    assert_eq!(last["data"]["total"], 4.0);
    ws.close(None).await.unwrap();

    // Cancelled by its caller: the call ends at once with call_cancelled; nobody else's call
    // and no unknown call can be cancelled.
    let pending = slow_call(&s, &member, &id, Some("long-2"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancel = |token: &str, call_id: &str| {
        s.http.delete(s.url(&format!("/v1/services/{id}/mcp/calls/{call_id}"))).bearer_auth(token.to_owned()).send()
    };
    expect_problem(cancel(&owner, "long-2").await.unwrap(), 404, "not_found").await;
    assert_eq!(cancel(&member, "long-2").await.unwrap().status(), 204);
    let r = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("ended at once").unwrap();
    expect_problem(r, 409, "call_cancelled").await;
    expect_problem(cancel(&member, "long-2").await.unwrap(), 404, "not_found").await;

    // Audit records name the tool and the arguments' digest, never the arguments.
    // (A call's record joins the writer's next commit after its answer: wait for the last.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = get_json(&s, &owner, "/v1/audit?action=mcp.tool.call&limit=100").await;
        if audit["items"].as_array().unwrap().len() == 5 {
            break audit;
        }
        assert!(tokio::time::Instant::now() < deadline, "{audit}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    seen.push(audit.to_string());
    let records = audit["items"].as_array().unwrap();
    let outcomes: Vec<&str> = records.iter().map(|r| r["details"]["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "ok").count(), 4, "{outcomes:?}");
    assert!(outcomes.contains(&"cancelled"), "{outcomes:?}");
    let echo = records.iter().find(|r| r["details"]["tool"] == "echo").unwrap();
    assert_eq!(echo["details"]["arguments_sha256"].as_str().unwrap().len(), 64);
    assert!(echo["details"].get("arguments").is_none(), "{echo}");
    assert!(!audit.to_string().contains("\"hi\""), "an argument's value was audited");

    // The server dies mid-call: a clear problem, then the breaker opens; it comes back and
    // the session is opened again.
    let pending = slow_call(&s, &member, &id, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    everything.kill().await;
    let r = tokio::time::timeout(Duration::from_secs(25), pending).await.expect("the call ends").unwrap();
    let status = r.status().as_u16();
    let p: Value = r.json().await.unwrap();
    assert!(
        (status == 502 && p["code"] == "upstream_unreachable") || (status == 504 && p["code"] == "upstream_timeout"),
        "{status} {p}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&s, &member, &id, "echo", json!({ "arguments": { "message": "down?" } })).await;
        let (status, p): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
        assert!([502, 503, 504].contains(&status), "{status} {p}");
        if p["code"] == "circuit_open" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the breaker never opened: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    everything.restart().await.expect("server-everything started again");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(&s, &member, &id, "echo", json!({ "arguments": { "message": "back" } })).await;
        if r.status() == 200 {
            assert_eq!(text_of(&r.json().await.unwrap()), "Echo: back");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never back: {}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("outpost_mcp_requests_total{method=\"tools/call\",outcome=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("outpost_mcp_requests_total{method=\"tools/call\",outcome=\"invalid_arguments\"}"));
    assert!(metrics.contains("outpost_mcp_sessions 1"), "{metrics}");
    seen.push(get_json(&s, &owner, &format!("/v1/services/{id}")).await.to_string());
    seen.push(s.http.get(s.url("/v1/audit/export")).bearer_auth(&owner).send().await.unwrap().text().await.unwrap());
    for text in &seen {
        assert!(!text.contains(SECRET), "the credential showed: {text}");
    }
    everything.kill().await;
    s.stop().await;
}

#[tokio::test]
async fn an_mcp_server_is_held_to_the_egress_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.egress.allowed_only = false;
    let s = TestServer::start_with(config).await;
    let (_, owner, _) = crate::connections::people(&s).await;
    // Loopback is refused by default: no connection is tried (nothing listens there anyway).
    for url in ["http://127.0.0.2:9/mcp", "http://localhost:9/mcp", "http://[::1]:9/mcp", "http://169.254.169.254/mcp"]
    {
        let r = s
            .http
            .post(s.url("/v1/mcp/test"))
            .bearer_auth(&owner)
            .json(&json!({ "base_url": url }))
            .send()
            .await
            .unwrap();
        let p = expect_problem(r, 422, "validation_failed").await;
        assert_eq!(p["errors"][0]["pointer"], "/base_url", "{url}: {p}");
        assert_eq!(p["errors"][0]["code"], "address_refused", "{url}: {p}");
    }
    // A service that is not an MCP server has no MCP operations.
    let r = s
        .http
        .post(s.url("/v1/services"))
        .bearer_auth(&owner)
        .json(&json!({ "name": "Plain", "base_url": "https://api.example.org" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    let id = made["service"]["id"].as_str().unwrap();
    let r = s.http.get(s.url(&format!("/v1/services/{id}/mcp/tools"))).bearer_auth(&owner).send().await.unwrap();
    expect_problem(r, 404, "not_an_mcp_server").await;
    s.stop().await;
}

/// A stdio server written with the official Python SDK, started from the operator's
/// `mcp.commands`: a clean environment, a tool list change picked up, a server that dies
/// mid-call (a clear problem) started again on the next use.
#[tokio::test]
async fn a_python_stdio_server_the_operator_allows() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.limits.user_requests_per_s = 100_000;
    config.mcp.commands = vec![outpost::config::McpCommand {
        name: "py-tools".into(),
        program: crate::support::peer_python().into(),
        args: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/mcp_stdio_server.py").into()],
        env: [("OUTPOST_TEST_ONLY".to_owned(), "1".to_owned())].into(),
        memory_max_bytes: 2 * 1024 * 1024 * 1024,
        cpu_max_s: 600,
        open_files_max: 256,
    }];
    let s = TestServer::start_with(config).await;
    let (_, owner, member) = crate::connections::people(&s).await;

    // Only the operator's commands, and only as MCP servers.
    for (body, pointer, code) in [
        (json!({ "name": "x", "base_url": "stdio:nope", "mcp": {} }), "/base_url", "unknown_command"),
        (json!({ "name": "x", "base_url": "stdio:py-tools" }), "/mcp", "required"),
        (json!({ "name": "x", "base_url": "stdio:../bin/sh", "mcp": {} }), "/base_url", "unknown_command"),
    ] {
        let r = s.http.post(s.url("/v1/services")).bearer_auth(&owner).json(&body).send().await.unwrap();
        let p = expect_problem(r, 422, "validation_failed").await;
        assert_eq!((p["errors"][0]["pointer"].as_str(), p["errors"][0]["code"].as_str()), (Some(pointer), Some(code)));
    }
    let tried = post_json(&s, &owner, "/v1/mcp/test", json!({ "base_url": "stdio:py-tools" })).await;
    assert_eq!(tried["server_name"], "outpost-test-stdio", "{tried}");
    let made = post_json(
        &s,
        &owner,
        "/v1/services",
        json!({ "name": "Python tools", "kind": "mcp", "base_url": "stdio:py-tools", "mcp": { "timeout_ms": 10000 } }),
    )
    .await;
    let id = made["service"]["id"].as_str().unwrap().to_owned();
    let names = |tools: &Value| -> Vec<String> {
        tools["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
    };
    let tools = get_json(&s, &member, &format!("/v1/services/{id}/mcp/tools")).await;
    assert!(names(&tools).contains(&"add".to_owned()) && !names(&tools).contains(&"shout".to_owned()), "{tools}");

    let r = call(&s, &member, &id, "add", json!({ "arguments": { "a": 2, "b": 40 } })).await;
    assert_eq!(text_of(&r.json().await.unwrap()), "42");
    // Its environment is the command's own, nothing of the server's.
    let r = call(&s, &member, &id, "environment", json!({})).await;
    let env = text_of(&r.json().await.unwrap());
    assert!(env.split(' ').all(|v| ["OUTPOST_TEST_ONLY", "LC_CTYPE"].contains(&v)), "{env}");

    // The server adds a tool and says so: the next listing has it, and it can be called.
    let r = call(&s, &member, &id, "grow", json!({})).await;
    assert_eq!(text_of(&r.json().await.unwrap()), "grown");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tools = get_json(&s, &member, &format!("/v1/services/{id}/mcp/tools")).await;
        if names(&tools).contains(&"shout".to_owned()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the list change was not picked up: {tools}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = call(&s, &member, &id, "shout", json!({ "arguments": { "text": "hi" } })).await;
    assert_eq!(text_of(&r.json().await.unwrap()), "HI");

    // It dies in the middle of a call: a clear problem; the next use starts it again (its
    // tools as at start).
    let r = call(&s, &member, &id, "crash", json!({})).await;
    let status = r.status().as_u16();
    let p: Value = r.json().await.unwrap();
    assert_eq!((status, p["code"].as_str()), (502, Some("upstream_unreachable")), "{p}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&s, &member, &id, "add", json!({ "arguments": { "a": 1, "b": 1 } })).await;
        if r.status() == 200 {
            assert_eq!(text_of(&r.json().await.unwrap()), "2");
            break;
        }
        let p: Value = r.json().await.unwrap();
        assert!(["mcp_reconnecting", "circuit_open"].contains(&p["code"].as_str().unwrap()), "{p}");
        assert!(tokio::time::Instant::now() < deadline, "never started again: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tools = get_json(&s, &member, &format!("/v1/services/{id}/mcp/tools")).await;
    assert!(!names(&tools).contains(&"shout".to_owned()), "a new process lists its own tools: {tools}");

    // Its process ends with its session: here, when the service is removed.
    assert_eq!(stdio_servers(), 1);
    let r = s.http.delete(s.url(&format!("/v1/services/{id}"))).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stdio_servers() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the server's process outlived its session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

/// Live processes running the test's stdio server (zombies excluded).
fn stdio_servers() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains("tests/peers/mcp_stdio_server.py")
        })
        .count()
}

/// A server of the 2024-11-05 revision (HTTP+SSE): the Streamable HTTP `initialize` fails, the
/// URL answers a GET with an event stream, and Outpost talks the old transport.
#[tokio::test]
async fn an_older_server_over_http_and_sse() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    let s = TestServer::start_with(config).await;
    let everything = Everything::start_in("sse").await;
    let (org_id, sl) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "owner@example.org", "owner").await;
    let owner = crate::identity::login(&s, &sl, "owner").await.access;
    let tried = post_json(&s, &owner, "/v1/mcp/test", json!({ "base_url": everything.url() })).await;
    assert!(tried["server_name"].as_str().unwrap_or_default().contains("everything"), "{tried}");
    let made = post_json(
        &s,
        &owner,
        "/v1/services",
        json!({ "name": "Old", "kind": "mcp", "base_url": everything.url(), "mcp": {} }),
    )
    .await;
    let id = made["service"]["id"].as_str().unwrap().to_owned();
    let tools = get_json(&s, &owner, &format!("/v1/services/{id}/mcp/tools")).await;
    assert!(tools["items"].as_array().unwrap().iter().any(|t| t["name"] == "get-sum"), "{tools}");
    let r = call(&s, &owner, &id, "get-sum", json!({ "arguments": { "a": 20, "b": 22 } })).await;
    assert_eq!(r.status(), 200);
    let sum: Value = r.json().await.unwrap();
    assert!(text_of(&sum).contains("42"), "{sum}");
    let r = call(&s, &owner, &id, "echo", json!({ "arguments": { "message": "over SSE" } })).await;
    let echoed: Value = r.json().await.unwrap();
    assert_eq!(text_of(&echoed), "Echo: over SSE", "{echoed}");
    s.stop().await;
}
