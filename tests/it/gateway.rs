//! The service gateway against a live service on loopback: the credential goes on and nowhere
//! else, the caller's identity arrives signed (checked by the `standardwebhooks` library from
//! PyPI), idempotent calls are retried, and the limits, the circuit breaker and the audit
//! records hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::web::Data;
use poem::{EndpointExt, Route, handler};
use serde_json::{Value, json};

use crate::support::{TestServer, config_for, get_json, post_json};

/// The credential the tests store: it must reach the service and nothing else.
const SECRET: &str = "sk_live_9c2e_gateway_never_shown";

/// A request as the service saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: HashMap<String, Vec<String>>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<Seen>>,
    /// Answers 503 this many more times at `/flaky`.
    flaky: AtomicU32,
    /// Requests at `/slow` now, and the most at once.
    slow_now: AtomicU32,
    slow_most: AtomicU32,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Records everything; `/flaky` fails while told to, `/slow` takes a second, `/big` answers
/// 64 KiB, `/status/N` answers N; everything else echoes what it got.
#[handler]
#[allow(clippy::needless_pass_by_value)] // poem hands the extractors over by value
async fn upstream(req: &poem::Request, body: poem::Body, up: Data<&Arc<Upstream>>) -> poem::Response {
    let body = body.into_vec().await.unwrap_or_default();
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in req.headers() {
        headers.entry(k.as_str().to_owned()).or_default().push(v.to_str().unwrap_or("?").to_owned());
    }
    let path = req.uri().path().to_owned();
    up.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        query: req.uri().query().map(str::to_owned),
        headers,
        body: body.clone(),
    });
    let status = |code: u16| poem::Response::builder().status(poem::http::StatusCode::from_u16(code).unwrap());
    if path == "/flaky" && up.flaky.load(Ordering::SeqCst) > 0 {
        up.flaky.fetch_sub(1, Ordering::SeqCst);
        return status(503).body("try later");
    }
    if path == "/slow" {
        let now = up.slow_now.fetch_add(1, Ordering::SeqCst) + 1;
        up.slow_most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        up.slow_now.fetch_sub(1, Ordering::SeqCst);
    }
    if path == "/big" {
        return status(200).body(vec![b'x'; 64 * 1024]);
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse().ok()) {
        return status(code).body("as asked");
    }
    status(200)
        .header("content-type", "application/json")
        .header("set-cookie", "upstream_session=1")
        .header("x-upstream", "yes")
        .body(json!({ "path": path, "bytes": body.len() }).to_string())
}

/// The service on a free loopback port.
async fn start_upstream() -> (String, Arc<Upstream>) {
    let up = Arc::new(Upstream::default());
    let app = Route::new().at("/*", upstream).at("/", upstream).data(up.clone());
    (crate::support::serve_loopback(app).await, up)
}

struct Org {
    owner: String,
    member: String,
    guest: String,
}

async fn org(s: &TestServer) -> Org {
    let (org_id, sl) = crate::identity::create_org(s).await;
    for (who, role) in [("owner", "owner"), ("mia", "member"), ("gus", "guest")] {
        crate::identity::operator_invite_and_accept(s, &org_id, &format!("{who}@example.org"), role).await;
    }
    Org {
        owner: crate::identity::login(s, &sl, "owner").await.access,
        member: crate::identity::login(s, &sl, "mia").await.access,
        guest: crate::identity::login(s, &sl, "gus").await.access,
    }
}

/// Registers a service; (its id, its signing secret).
async fn register(s: &TestServer, owner: &str, body: Value) -> (String, String) {
    let made = post_json(s, owner, "/v1/services", body).await;
    let id = made["service"]["id"].as_str().unwrap_or_else(|| panic!("not registered: {made}"));
    (id.to_owned(), made["signing_secret"].as_str().unwrap().to_owned())
}

/// Verifies each case (secret, identity headers) with the `standardwebhooks` library, the
/// identity as the payload; one line per case.
const VERIFY: &str = r#"
import json, sys
from standardwebhooks import Webhook
for case in json.load(sys.stdin):
    h = case["headers"]
    headers = {"webhook-id": h["outpost-identity-id"], "webhook-timestamp": h["outpost-identity-timestamp"],
               "webhook-signature": h["outpost-identity-signature"]}
    try:
        Webhook(case["secret"]).verify(h["outpost-identity"].encode(), headers, json_parse=False)
        print("ok")
    except Exception as e:
        print(type(e).__name__)
"#;

async fn verify(cases: &[(String, &Seen)]) -> Vec<String> {
    let cases: Vec<Value> = cases
        .iter()
        .map(|(secret, seen)| {
            let h: HashMap<&str, &str> =
                ["outpost-identity", "outpost-identity-id", "outpost-identity-timestamp", "outpost-identity-signature"]
                    .into_iter()
                    .map(|k| (k, seen.header(k).unwrap_or_else(|| panic!("no {k}: {seen:?}"))))
                    .collect();
            json!({ "secret": secret, "headers": h })
        })
        .collect();
    crate::support::python_lines(VERIFY, &Value::from(cases)).await
}

fn loopback_config(dir: &std::path::Path) -> outpost::Config {
    let mut config = config_for(dir);
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    config.limits.user_requests_per_s = 10_000;
    config
}

#[tokio::test]
async fn calls_carry_the_credential_and_a_signed_identity_and_nothing_of_the_callers() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(loopback_config(dir.path())).await;
    let (base, up) = start_upstream().await;
    let o = org(&s).await;
    let (id, signing) = register(
        &s,
        &o.owner,
        json!({
            "name": "Tickets",
            "base_url": format!("{base}/api"),
            "credential": { "kind": "api_key", "secret": SECRET },
        }),
    )
    .await;
    assert!(signing.starts_with("whsec_"), "{signing}");
    let mut answers = Vec::new();

    // Written out with slashes or as one encoded parameter: the same call.
    for path in ["tickets/42", "tickets%2F42"] {
        let r = s
            .http
            .get(s.url(&format!("/v1/services/{id}/proxy/{path}?state=open")))
            .bearer_auth(&o.member)
            .header("cookie", "outpost_session=mine")
            .header("x-api-key", "forged")
            .header("outpost-identity", "forged")
            .header("x-custom", "kept")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["outpost-gateway-attempts"], "1");
        assert_eq!(r.headers()["x-upstream"], "yes");
        assert!(r.headers().get("set-cookie").is_none(), "the service's cookies stay behind");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["path"], "/api/tickets/42");
        answers.push(v.to_string());
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for call in &seen {
        assert_eq!((call.method.as_str(), call.path.as_str()), ("GET", "/api/tickets/42"));
        assert_eq!(call.query.as_deref(), Some("state=open"));
        assert_eq!(call.headers["x-api-key"], [SECRET], "the stored credential, and only it");
        assert_eq!(call.header("x-custom"), Some("kept"));
        for gone in ["authorization", "cookie"] {
            assert!(call.header(gone).is_none(), "{gone} went on: {call:?}");
        }
        let identity: Value = serde_json::from_str(call.header("outpost-identity").unwrap()).unwrap();
        assert_eq!(identity["role"], "member");
        assert_eq!(identity["method"], "GET");
        assert_eq!(identity["path"], "/api/tickets/42?state=open");
        assert_eq!(identity["body_sha256"], "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    // A body goes on with its type; the identity names its digest.
    let r = s
        .http
        .post(s.url(&format!("/v1/services/{id}/proxy/tickets")))
        .bearer_auth(&o.member)
        .header("content-type", "application/json")
        .body(r#"{"title":"printer on fire"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    answers.push(r.text().await.unwrap());
    let post = up.seen().pop().unwrap();
    assert_eq!(post.body, br#"{"title":"printer on fire"}"#);
    assert_eq!(post.header("content-type"), Some("application/json"));
    let identity: Value = serde_json::from_str(post.header("outpost-identity").unwrap()).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &post.body);
    let hex = digest.as_ref().iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    });
    assert_eq!(identity["body_sha256"], hex);

    // After a rotation both secrets sign while the overlap lasts; a stranger's does not.
    let rotated =
        post_json(&s, &o.owner, &format!("/v1/services/{id}/signing-secret/rotate"), json!({ "overlap_s": 60 })).await;
    let new_secret = rotated["signing_secret"].as_str().unwrap().to_owned();
    answers.push(rotated.to_string());
    let r = s.http.get(s.url(&format!("/v1/services/{id}/proxy/after"))).bearer_auth(&o.owner).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let after = up.seen().pop().unwrap();
    assert_eq!(after.header("outpost-identity-signature").unwrap().split(' ').count(), 2);
    let stranger = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
    let lines = verify(&[
        (signing.clone(), &seen[0]),
        (signing.clone(), &post),
        (signing.clone(), &after),
        (new_secret.clone(), &after),
        (new_secret, &seen[0]),
        (stranger, &after),
    ])
    .await;
    assert_eq!(lines, ["ok", "ok", "ok", "ok", "WebhookVerificationError", "WebhookVerificationError"]);

    // Guests are not among the default callers; paths may not climb out of the base URL.
    let r = s.http.get(s.url(&format!("/v1/services/{id}/proxy/x"))).bearer_auth(&o.guest).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_a_caller");
    let r = s
        .http
        .get(s.url(&format!("/v1/services/{id}/proxy/%2e%2e%2Fsecrets")))
        .bearer_auth(&o.member)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_path");
    assert_eq!(up.seen().len(), 4, "refused calls send nothing");

    // Each call is audited: method, path, status, never the query, a body or a secret.
    // (Written after the answer, in the writer's next commit: waited for.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = get_json(&s, &o.owner, "/v1/audit?action=service.call&limit=100").await;
        if audit["items"].as_array().unwrap().len() >= 4 || tokio::time::Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let records = audit["items"].as_array().unwrap();
    assert_eq!(records.len(), 4, "the calls that reached the service: {audit}");
    let first = records.iter().find(|r| r["details"]["method"] == "GET").unwrap();
    assert_eq!(first["details"]["path"], "/tickets/42");
    assert_eq!(first["details"]["status"], 200);
    let export =
        s.http.get(s.url("/v1/audit/export")).bearer_auth(&o.owner).send().await.unwrap().text().await.unwrap();
    assert!(!export.contains("state=open") && !export.contains("printer on fire"), "{export}");
    answers.push(export);
    answers.push(get_json(&s, &o.member, &format!("/v1/services/{id}")).await.to_string());
    for text in &answers {
        assert!(!text.contains(SECRET), "the credential showed: {text}");
    }
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("outpost_gateway_calls_total{outcome=\"answered\"} 4"), "{metrics}");

    // The gateway keeps services decoded between calls: a change is in force from the next call.
    let r = s
        .http
        .patch(s.url(&format!("/v1/services/{id}")))
        .bearer_auth(&o.owner)
        .json(&json!({ "credential": { "kind": "api_key", "secret": "changed-key" }, "callers": ["owner", "admin"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = call(&s, &o.member, "GET", &id, "x", "").await;
    assert_eq!(code_of(r).await, (403, "not_a_caller".to_owned(), None), "the member's standing changed");
    assert_eq!(call(&s, &o.owner, "GET", &id, "x", "").await.status(), 200);
    assert_eq!(up.seen().pop().unwrap().headers["x-api-key"], ["changed-key"], "the new credential went");
    s.stop().await;
}

async fn call(s: &TestServer, token: &str, method: &str, id: &str, path: &str, body: &str) -> reqwest::Response {
    let req =
        s.http.request(method.parse().unwrap(), s.url(&format!("/v1/services/{id}/proxy/{path}"))).bearer_auth(token);
    let req = if body.is_empty() { req } else { req.body(body.to_owned()) };
    req.send().await.unwrap()
}

async fn code_of(r: reqwest::Response) -> (u16, String, Option<String>) {
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["code"].as_str().unwrap_or_default().to_owned(), retry)
}

#[tokio::test]
async fn retries_limits_and_the_circuit_breaker_hold() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(loopback_config(dir.path())).await;
    let (base, up) = start_upstream().await;
    let o = org(&s).await;
    let (id, _) = register(
        &s,
        &o.owner,
        json!({
            "name": "Flaky",
            "base_url": base,
            "gateway": { "timeout_ms": 300, "retries": 2, "request_bytes_max": 10, "response_bytes_max": 1024 },
        }),
    )
    .await;

    // Idempotent calls are tried again on 503; others are not.
    up.flaky.store(2, Ordering::SeqCst);
    let r = call(&s, &o.member, "GET", &id, "flaky", "").await;
    assert_eq!((r.status().as_u16(), r.headers()["outpost-gateway-attempts"].to_str().unwrap()), (200, "3"));
    up.flaky.store(1, Ordering::SeqCst);
    let r = call(&s, &o.member, "POST", &id, "flaky", "x").await;
    assert_eq!((r.status().as_u16(), r.text().await.unwrap().as_str()), (503, "try later"));

    // Time, size and reach.
    assert_eq!(code_of(call(&s, &o.member, "GET", &id, "slow", "").await).await.1, "upstream_timeout");
    assert_eq!(code_of(call(&s, &o.member, "GET", &id, "big", "").await).await.1, "upstream_too_large");
    let (status, code, _) = code_of(call(&s, &o.member, "POST", &id, "x", "more than ten bytes").await).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
    let before = up.seen().len();
    let (dead, _) = register(&s, &o.owner, json!({ "name": "Gone", "base_url": "http://127.0.0.1:1" })).await;
    let (status, code, _) = code_of(call(&s, &o.member, "PUT", &dead, "x", "").await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unreachable"));

    // A budget of 1 a second: a burst of two, then 429 with Retry-After.
    let (slow_id, _) =
        register(&s, &o.owner, json!({ "name": "Tight", "base_url": base, "gateway": { "rate_per_s": 1 } })).await;
    for _ in 0..2 {
        assert_eq!(call(&s, &o.member, "GET", &slow_id, "ok", "").await.status(), 200);
    }
    let (status, code, retry) = code_of(call(&s, &o.member, "GET", &slow_id, "ok", "").await).await;
    assert_eq!((status, code.as_str(), retry.is_some()), (429, "rate_limited", true));
    assert_eq!(up.seen().len(), before + 2, "the refused call sent nothing");

    // The breaker: open after half of at least 4 calls failed; calls then fail at once
    // without reaching the service; half-open after 500 ms; a good probe closes it, a bad one
    // opens it again.
    let (b, _) = register(
        &s,
        &o.owner,
        json!({
            "name": "Breaker",
            "base_url": base,
            "gateway": { "retries": 0, "breaker_min_calls": 4, "breaker_failure_percent": 50,
                         "breaker_open_ms": 500, "breaker_probes": 1 },
        }),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(call(&s, &o.member, "GET", &b, "status/500", "").await.status(), 500);
    }
    let reached = up.seen().len();
    let (status, code, retry) = code_of(call(&s, &o.member, "GET", &b, "status/200", "").await).await;
    assert_eq!((status, code.as_str(), retry.as_deref()), (503, "circuit_open", Some("1")));
    assert_eq!(up.seen().len(), reached, "an open circuit sends nothing");
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("outpost_gateway_breaker_state{org="), "{metrics}");
    assert!(metrics.lines().any(|l| l.contains(&b) && l.ends_with(" 2")), "open: {metrics}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(&s, &o.member, "GET", &b, "status/500", "").await.status(), 500, "a failed probe");
    assert_eq!(code_of(call(&s, &o.member, "GET", &b, "status/200", "").await).await.1, "circuit_open");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(&s, &o.member, "GET", &b, "status/200", "").await.status(), 200, "a good probe");
    for _ in 0..3 {
        assert_eq!(call(&s, &o.member, "GET", &b, "status/204", "").await.status(), 204, "closed again");
    }
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("outpost_gateway_breaker_state") && l.contains(&b) && l.ends_with(" 0"))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_name_that_resolves_to_a_refused_address_is_never_connected_to() {
    // The default policy: loopback refused. `localhost` passes registration (a name), and is
    // refused at the call, before any connection: the listener below never sees one.
    let s = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let o = org(&s).await;
    let (id, _) =
        register(&s, &o.owner, json!({ "name": "Local", "base_url": format!("http://localhost:{port}") })).await;
    let (status, code, _) = code_of(call(&s, &o.member, "GET", &id, "x", "").await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_refused"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    s.stop().await;
}

#[tokio::test]
async fn the_credential_never_appears_in_the_servers_output() {
    use crate::support::ChildServer;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OUTPOST_EGRESS__ALLOW_CIDRS", "[\"127.0.0.0/8\"]"),
        ("OUTPOST_LOG__LEVEL", "debug"),
        ("OUTPOST_LIMITS__USER_REQUESTS_PER_S", "10000"),
    ];
    let data = dir.path().to_str().unwrap().to_owned();
    let (code, key, _) = crate::support::cli(&["operator", "create-key", "--data", &data], &[], None);
    assert_eq!(code, 0);
    let server = ChildServer::start_with_env(dir.path(), &env);
    let s = TestServer::attached(server.base.clone(), key.trim().to_owned());
    let (base, up) = start_upstream().await;
    let o = org(&s).await;
    let (id, _) = register(
        &s,
        &o.owner,
        json!({
            "name": "Basic",
            "base_url": base,
            "credential": { "kind": "basic", "username": "svc", "secret": SECRET },
            "health_check": { "interval_ms": 100 },
            "gateway": { "retries": 1, "timeout_ms": 200 },
        }),
    )
    .await;
    let mut answers = Vec::new();
    for (method, path) in [("GET", "ok"), ("POST", "status/500"), ("GET", "slow"), ("DELETE", "status/404")] {
        let r = call(&s, &o.member, method, &id, path, "").await;
        let headers = format!("{:?}", r.headers());
        answers.push(format!("{headers} {}", r.text().await.unwrap()));
    }
    let seen = up.seen();
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("svc:{SECRET}"));
    assert_eq!(seen[0].header("authorization"), Some(format!("Basic {basic}").as_str()));
    // Through health checks too, for a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let export = s.http.get(s.url("/v1/audit/export")).bearer_auth(&o.owner).send().await.unwrap();
    let export = export.text().await.unwrap();
    assert!(export.contains("service.call"), "{export}");
    answers.push(export);
    let output = server.output();
    assert!(output.contains("outpost is ready") && output.lines().count() > 10, "the output was captured: {output}");
    for text in answers.iter().chain([&output]) {
        assert!(!text.contains(SECRET) && !text.contains(&basic), "the credential showed: {text}");
    }
}

/// The gateway keeps a service's opened signing secrets between calls; the end of a rotation's
/// overlap still takes effect on time, with nothing else about the service changing.
#[tokio::test]
async fn the_previous_signing_secret_stops_signing_when_the_overlap_ends() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(loopback_config(dir.path())).await;
    let (base, up) = start_upstream().await;
    let o = org(&s).await;
    let (id, _) = register(&s, &o.owner, json!({ "name": "Rotating", "base_url": base })).await;
    let signatures = || async {
        let r = s.http.get(s.url(&format!("/v1/services/{id}/proxy/x"))).bearer_auth(&o.owner).send().await.unwrap();
        assert_eq!(r.status(), 200);
        up.seen().pop().unwrap().header("outpost-identity-signature").unwrap().split(' ').count()
    };
    assert_eq!(signatures().await, 1);
    post_json(&s, &o.owner, &format!("/v1/services/{id}/signing-secret/rotate"), json!({ "overlap_s": 1 })).await;
    assert_eq!(signatures().await, 2, "both sign during the overlap");
    assert_eq!(signatures().await, 2, "and go on doing so from what the gateway kept");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(signatures().await, 1, "the previous secret stopped signing when its overlap ended");
}

#[tokio::test]
async fn a_call_cut_short_is_audited_as_cancelled() {
    // The edge gives a request 300 ms; the service takes a second. The call is dropped half-way,
    // and its record says so.
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(dir.path());
    config.http.request_timeout_ms = 300;
    let s = TestServer::start_with(config).await;
    let (base, up) = start_upstream().await;
    let o = org(&s).await;
    let (id, _) =
        register(&s, &o.owner, json!({ "name": "Slow", "base_url": base, "gateway": { "retries": 0 } })).await;
    let r = call(&s, &o.member, "GET", &id, "slow", "").await;
    assert_eq!(r.status(), 503);
    assert_eq!(up.seen().len(), 1, "the call reached the service");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = get_json(&s, &o.owner, "/v1/audit?action=service.call").await;
        if let Some(r) = audit["items"].as_array().unwrap().first() {
            assert_eq!(r["details"]["outcome"], "cancelled", "{audit}");
            assert_eq!((r["details"]["attempts"].as_u64(), r["details"]["path"].as_str()), (Some(1), Some("/slow")));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no record of the cut call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn answers_in_flight_stay_within_the_memory_budget() {
    // 1 MiB for answers being read: a service whose answers may be 1 MiB gets one call at a
    // time (the second waits), one whose answers are at most 64 KiB gets both at once.
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(dir.path());
    config.services.gateway_buffer_bytes_max = 1024 * 1024;
    let s = TestServer::start_with(config).await;
    let o = org(&s).await;
    for (cap, most) in [(1024 * 1024, 1), (64 * 1024, 2)] {
        let (base, up) = start_upstream().await;
        let body = json!({ "name": "Big", "base_url": base, "gateway": { "response_bytes_max": cap } });
        let (id, _) = register(&s, &o.owner, body).await;
        let (a, b) =
            tokio::join!(call(&s, &o.member, "GET", &id, "slow", ""), call(&s, &o.member, "GET", &id, "slow", ""));
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
        assert_eq!(up.slow_most.load(Ordering::SeqCst), most, "answers of up to {cap} bytes");
    }
    s.stop().await;
}
