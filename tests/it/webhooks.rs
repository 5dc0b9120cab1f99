//! Webhooks, checked by an independent implementation: the `standardwebhooks` library from
//! PyPI verifies what Outpost signs.

use base64::Engine as _;
use outpost::webhooks::signing::{self, Secret};
use serde_json::{Value, json};

use crate::support::peer_python;

/// Verifies each case with `standardwebhooks.Webhook(secret).verify(body, headers)`; prints
/// one line per case: `ok`, or the library's error.
const VERIFY: &str = r#"
import base64, json, sys
from standardwebhooks import Webhook
for case in json.load(sys.stdin):
    body = base64.b64decode(case["body"])
    try:
        Webhook(case["secret"]).verify(body, case["headers"], json_parse=False)
        print("ok")
    except Exception as e:
        print(type(e).__name__ + ": " + str(e).replace("\n", " "))
"#;

fn case(secret: &Secret, headers: &[(&str, String); 3], body: &[u8]) -> Value {
    let headers: serde_json::Map<String, Value> =
        headers.iter().map(|(k, v)| ((*k).to_owned(), Value::String(v.clone()))).collect();
    json!({
        "secret": secret.written(),
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    })
}

#[tokio::test]
async fn the_standard_webhooks_library_verifies_every_signature_across_a_rotation() {
    let (old, new, stranger) = (Secret::generate(), Secret::generate(), Secret::generate());
    let now = outpost::ids::now_ms() / 1000;
    let body = br#"{"type":"message.created","data":{"text":"h\u00e9 \ud83d\ude00"}}"#;
    let one = signing::headers(&[&old], "msg_01", now, body);
    let both = signing::headers(&[&new, &old], "msg_02", now, body);
    let cases = json!([
        case(&old, &one, body),
        // During the overlap a receiver holding either secret verifies.
        case(&old, &both, body),
        case(&new, &both, body),
        // And nobody else, nor a changed body, nor a replayed old timestamp.
        case(&stranger, &both, body),
        case(&old, &one, br#"{"type":"message.created","data":{"text":"changed"}}"#),
        case(&old, &signing::headers(&[&old], "msg_03", now - 3600, body), body),
    ]);
    let lines = crate::support::python_lines(VERIFY, &cases).await;
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(&lines[..3], ["ok", "ok", "ok"], "{lines:?}");
    for refused in &lines[3..] {
        assert!(refused.starts_with("WebhookVerificationError"), "{lines:?}");
    }
}

/// The receiver of `tests/peers/webhook_receiver.py`: it checks every delivery with the
/// `standardwebhooks` library, fails on request, and records what it got.
struct Receiver {
    _child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Receiver {
    async fn start() -> Self {
        use tokio::io::AsyncBufReadExt;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/webhook_receiver.py");
        let mut child = tokio::process::Command::new(peer_python())
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await.unwrap();
        let port = line.unwrap().unwrap().strip_prefix("listening ").unwrap().to_owned();
        Self { _child: child, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }

    fn hook(&self, name: &str) -> String {
        format!("{}/hook/{name}", self.base)
    }

    async fn setup(&self, name: &str, setup: Value) {
        let r = self.http.put(format!("{}/control/{name}", self.base)).json(&setup).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }

    async fn received(&self, name: &str) -> Vec<Value> {
        self.http.get(format!("{}/received/{name}", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// Waits until `name` has accepted `n` deliveries (answered 204); all its records.
    async fn wait_accepted(&self, name: &str, n: usize) -> Vec<Value> {
        self.wait_until(name, n, |got| accepted(got).len()).await
    }

    /// Waits until `name` has accepted `n` distinct messages (one cut off by a kill may come
    /// twice); all its records.
    async fn wait_distinct(&self, name: &str, n: usize) -> Vec<Value> {
        let distinct = |got: &[Value]| {
            accepted(got).iter().map(|r| r["id"].to_string()).collect::<std::collections::HashSet<_>>().len()
        };
        self.wait_until(name, n, distinct).await
    }

    async fn wait_until(&self, name: &str, n: usize, count: impl Fn(&[Value]) -> usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let got = self.received(name).await;
            if count(&got) >= n {
                return got;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} accepted {} of {n}: {got:?}", count(&got));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn accepted(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["status"] == 204).collect()
}

/// The `seq`s of accepted deliveries, in arrival order.
fn seqs(records: &[Value]) -> Vec<u64> {
    accepted(records).iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// A new organization with an owner: (org id, slug, the owner's token).
async fn owner_of_new_org(s: &crate::support::TestServer) -> (String, String, String) {
    let (org_id, sl) = crate::identity::create_org(s).await;
    crate::identity::operator_invite_and_accept(s, &org_id, "owner@example.org", "owner").await;
    let token = crate::identity::login(s, &sl, "owner").await.access;
    (org_id, sl, token)
}

async fn create_endpoint(s: &crate::support::TestServer, token: &str, body: Value) -> (String, String) {
    let r = s.http.post(s.url("/v1/webhooks/endpoints")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let made: Value = r.json().await.unwrap();
    (made["endpoint"]["id"].as_str().unwrap().to_owned(), made["secret"].as_str().unwrap().to_owned())
}

async fn post_tasks(s: &crate::support::TestServer, token: &str, n: usize) {
    for i in 0..n {
        let t: Value = crate::support::post_json(s, token, "/v1/tasks", json!({ "title": format!("t{i}") })).await;
        assert!(t["id"].is_string(), "{t}");
    }
}

#[tokio::test]
async fn deliveries_are_signed_in_order_retried_switched_off_and_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config_for(dir.path());
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    config.webhooks.retry_schedule_ms = vec![50; 8];
    config.webhooks.retry_jitter_percent = 0;
    config.webhooks.disable_after_ms = 1_000;
    let s = crate::support::TestServer::start_with(config).await;
    let rx = Receiver::start().await;
    let (org_id, _, owner) = owner_of_new_org(&s).await;
    let hooks = |path: &str| format!("/v1/webhooks/endpoints{path}");

    // A takes task events and fails 5 times first; B takes task.created and always fails; C
    // takes messages.
    let (a, a1) = create_endpoint(
        &s,
        &owner,
        json!({ "url": rx.hook("a"), "event_types": ["task.*"], "headers": { "X-Team": "ops" } }),
    )
    .await;
    rx.setup("a", json!({ "secrets": [a1], "fail": 5 })).await;
    let (b, b1) = create_endpoint(&s, &owner, json!({ "url": rx.hook("b"), "event_types": ["task.created"] })).await;
    rx.setup("b", json!({ "secrets": [b1], "always_fail": true })).await;
    let (_, c1) = create_endpoint(&s, &owner, json!({ "url": rx.hook("c"), "event_types": ["message.*"] })).await;
    rx.setup("c", json!({ "secrets": [c1] })).await;
    post_tasks(&s, &owner, 10).await;

    // Every task event reaches A once accepted, in commit order, verified, with its header;
    // the first was tried six times under one webhook-id.
    let got = rx.wait_accepted("a", 10).await;
    assert_eq!(got.len(), 15, "{got:?}");
    assert!(got[..6].iter().all(|r| r["id"] == got[0]["id"]), "{got:?}");
    let order = seqs(&got);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(accepted(&got).iter().all(|r| r["verified"] == json!([0]) && r["custom"] == "ops"), "{got:?}");
    // The receiver answers before the attempt's record commits: wait for the last one.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = crate::support::get_json(&s, &owner, &hooks(&format!("/{a}/attempts?limit=100"))).await;
        if log["items"].as_array().unwrap().len() >= 15 || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 15, "{log}");
    let oldest = items.last().unwrap();
    assert_eq!(
        (oldest["attempt"].as_u64(), oldest["outcome"].as_str(), oldest["status"].as_u64()),
        (Some(1), Some("failed"), Some(500))
    );
    assert!(items.iter().any(|i| i["attempt"] == 6 && i["outcome"] == "delivered" && i["status"] == 204), "{log}");

    // B kept failing: switched off, with an event and an audit record; A was not held up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let e = crate::support::get_json(&s, &owner, &hooks(&format!("/{b}"))).await;
        if e["enabled"] == false {
            assert_eq!(e["disabled_reason"], "failing", "{e}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "B is still on: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let audit = crate::support::get_json(&s, &owner, "/v1/audit?action=webhook.endpoint.disable").await;
    assert_eq!(audit["items"][0]["actor"], "system", "{audit}");
    let events = s.get(&format!("/v1/orgs/{org_id}/events?topic=org&limit=1000")).send().await.unwrap();
    let events: Value = events.json().await.unwrap();
    assert!(events.to_string().contains("webhook.endpoint_disabled"), "{events}");

    // Rotation with an overlap: both secrets sign; the receiver verifies with either.
    let r = crate::support::post_json(&s, &owner, &hooks(&format!("/{a}/secret/rotate")), json!({ "overlap_s": 3600 }))
        .await;
    let a2 = r["secret"].as_str().unwrap().to_owned();
    assert_eq!(r["endpoint"]["secrets"].as_array().unwrap().len(), 2, "{r}");
    rx.setup("a", json!({ "secrets": [a1, a2], "fail": 0 })).await;
    post_tasks(&s, &owner, 2).await;
    let got = rx.wait_accepted("a", 12).await;
    assert!(accepted(&got)[10..].iter().all(|r| r["verified"] == json!([0, 1])), "{got:?}");
    // Without one: only the newest signs.
    let r =
        crate::support::post_json(&s, &owner, &hooks(&format!("/{a}/secret/rotate")), json!({ "overlap_s": 0 })).await;
    let a3 = r["secret"].as_str().unwrap().to_owned();
    rx.setup("a", json!({ "secrets": [a1, a2, a3] })).await;
    post_tasks(&s, &owner, 1).await;
    let got = rx.wait_accepted("a", 13).await;
    assert_eq!(accepted(&got)[12]["verified"], json!([2]), "{got:?}");

    // Resend one message: it comes again under its id; recover replays everything since.
    let first = accepted(&got)[0]["id"].as_str().unwrap().to_owned();
    let r = s.http.post(s.url(&hooks(&format!("/{a}/messages/{first}/resend")))).bearer_auth(&owner).send().await;
    assert_eq!(r.unwrap().status(), 202);
    let got = rx.wait_accepted("a", 14).await;
    assert_eq!(accepted(&got)[13]["id"], first.as_str());
    let since = outpost::ids::rfc3339(outpost::ids::now_ms() - 600_000);
    let r = crate::support::post_json(&s, &owner, &hooks(&format!("/{a}/recover")), json!({ "since": since })).await;
    assert_eq!(r["queued"], 13, "{r}");
    let got = rx.wait_accepted("a", 27).await;
    assert_eq!(seqs(&got)[14..], seqs(&got)[..13], "{got:?}");

    // A test message, now, outside the queue.
    let t = crate::support::post_json(&s, &owner, &hooks(&format!("/{a}/test")), json!({})).await;
    assert_eq!((t["outcome"].as_str(), t["status"].as_u64()), (Some("delivered"), Some(204)), "{t}");
    assert_eq!(rx.received("a").await.last().unwrap()["type"], "webhook.test");

    // Messages: a public channel's reach C, a private channel's never do.
    for kind in ["private", "public"] {
        let ch = crate::support::post_json(&s, &owner, "/v1/channels", json!({ "kind": kind, "name": kind })).await;
        let id = ch["id"].as_str().unwrap();
        crate::support::post_json(&s, &owner, &format!("/v1/channels/{id}/messages"), json!({ "text": kind })).await;
    }
    let got = rx.wait_accepted("c", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got_later = rx.received("c").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got_later.len(), 1, "a private channel's message went out: {got_later:?}");

    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("outpost_webhook_deliveries_total{outcome=\"delivered\"}"), "{metrics}");
    assert!(metrics.contains("outpost_webhook_endpoints_disabled_total 1"), "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn refused_targets_are_refused_before_any_connection() {
    // The default configuration: no address beyond the public ones may be called.
    let s = crate::support::TestServer::start().await;
    let rx = Receiver::start().await;
    let (_, _, owner) = owner_of_new_org(&s).await;
    let port = rx.base.rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("http://127.0.0.2:{port}/hook/x"),
        format!("http://[::1]:{port}/hook/x"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.1.2.3/hook".to_owned(),
        "http://[::ffff:192.168.1.1]/hook".to_owned(),
        "ftp://example.org/hook".to_owned(),
    ] {
        let r = s.http.post(s.url("/v1/webhooks/endpoints")).bearer_auth(&owner).json(&json!({ "url": url })).send();
        let p = crate::support::expect_problem(r.await.unwrap(), 422, "validation_failed").await;
        let code = p["errors"][0]["code"].as_str().unwrap().to_owned();
        assert!(code == "address_refused" || code == "invalid_url", "{url}: {p}");
    }
    // A name is taken, but what it resolves to is checked before connecting: `localhost` is
    // the receiver's own address, and the receiver hears nothing.
    let (x, _) = create_endpoint(&s, &owner, json!({ "url": format!("http://localhost:{port}/hook/x") })).await;
    let t = crate::support::post_json(&s, &owner, &format!("/v1/webhooks/endpoints/{x}/test"), json!({})).await;
    assert_eq!(t["outcome"], "exhausted", "{t}");
    assert!(t["error"].as_str().unwrap().contains("refused"), "{t}");
    assert!(rx.received("x").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn queued_deliveries_survive_sigkill_in_order() {
    use crate::support::{ChildServer, TestServer, cli};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let (code, key, _) = cli(&["operator", "create-key", "--data", &data], &[], None);
    assert_eq!(code, 0);
    let key = key.trim().to_owned();
    let env = [
        ("OUTPOST_EGRESS__ALLOW_CIDRS", "[\"127.0.0.0/8\"]"),
        ("OUTPOST_WEBHOOKS__RETRY_SCHEDULE_MS", "[1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]"),
        ("OUTPOST_WEBHOOKS__RETRY_JITTER_PERCENT", "0"),
    ];
    let rx = Receiver::start().await;
    let server = ChildServer::start_with_env(dir.path(), &env);
    let s = TestServer::attached(server.base.clone(), key.clone());
    let (_, slug, owner) = owner_of_new_org(&s).await;
    // Paced to 20 a second, so the second kill comes while deliveries are going out.
    let (_, k1) = create_endpoint(
        &s,
        &owner,
        json!({ "url": rx.hook("k"), "event_types": ["task.created"], "rate_limit_per_s": 20 }),
    )
    .await;
    // The receiver is down (answers 500): deliveries pile up, then the server is killed.
    rx.setup("k", json!({ "secrets": [k1], "always_fail": true })).await;
    post_tasks(&s, &owner, 15).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while rx.received("k").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no attempt reached the receiver");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.kill9();

    // Back up, the receiver too: everything queued goes out; more is posted, and the server
    // is killed again in the middle of delivering it.
    rx.setup("k", json!({ "secrets": [k1] })).await;
    let server = ChildServer::start_with_env(dir.path(), &env);
    let s = TestServer::attached(server.base.clone(), key.clone());
    let owner = crate::identity::login(&s, &slug, "owner").await.access;
    post_tasks(&s, &owner, 15).await;
    rx.wait_accepted("k", 20).await;
    server.kill9();
    let at_kill = accepted(&rx.received("k").await).len();
    assert!(at_kill < 30, "the kill came after every delivery");
    let server = ChildServer::start_with_env(dir.path(), &env);
    let got = rx.wait_distinct("k", 30).await;
    // In commit order (a delivery cut off by the kill may come twice, in its place).
    let order = seqs(&got);
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    let mut distinct = order.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 30, "{order:?}");
    assert!(accepted(&got).iter().all(|r| r["verified"] == json!([0])));
    drop(server);
}

#[tokio::test]
async fn signing_secrets_survive_a_vault_rotation_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config_for(dir.path());
    config.egress.allow_cidrs = vec!["127.0.0.1/32".into()];
    let s = crate::support::TestServer::start_with(config.clone()).await;
    let rx = Receiver::start().await;
    let (_, _, owner) = owner_of_new_org(&s).await;
    let (v, secret) =
        create_endpoint(&s, &owner, json!({ "url": rx.hook("v"), "event_types": ["nothing.here"] })).await;
    rx.setup("v", json!({ "secrets": [secret] })).await;
    let test = format!("/v1/webhooks/endpoints/{v}/test");
    let c = config.clone();
    tokio::task::spawn_blocking(move || outpost::commands::rotate_vault(&c)).await.unwrap().unwrap();
    let t = crate::support::post_json(&s, &owner, &test, json!({})).await;
    assert_eq!(t["status"], 204, "{t}");
    s.stop().await;
    let s = crate::support::TestServer::start_with(config).await;
    let t = crate::support::post_json(&s, &owner, &test, json!({})).await;
    assert_eq!(t["status"], 204, "{t}");
    assert!(accepted(&rx.received("v").await).iter().all(|r| r["verified"] == json!([0])));
    s.stop().await;
}

#[tokio::test]
async fn a_full_backlog_switches_the_endpoint_off_and_recover_brings_back_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config_for(dir.path());
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    config.webhooks.backlog_per_endpoint_max = 3;
    config.webhooks.retry_schedule_ms = vec![60_000];
    config.webhooks.attempts_kept_per_endpoint = 4;
    config.webhooks.attempts_trim_interval_ms = 200;
    let s = crate::support::TestServer::start_with(config).await;
    let rx = Receiver::start().await;
    let (_, _, owner) = owner_of_new_org(&s).await;
    let (f, f1) = create_endpoint(&s, &owner, json!({ "url": rx.hook("f"), "event_types": ["task.created"] })).await;
    rx.setup("f", json!({ "secrets": [f1], "always_fail": true })).await;
    // Three fit in the backlog; the two after them do not.
    post_tasks(&s, &owner, 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let since = outpost::ids::rfc3339(outpost::ids::now_ms());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    post_tasks(&s, &owner, 2).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let e = loop {
        let e = crate::support::get_json(&s, &owner, &format!("/v1/webhooks/endpoints/{f}")).await;
        if e["enabled"] == false {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "still on: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((e["disabled_reason"].as_str(), e["backlog"].as_u64()), (Some("backlog_full"), Some(3)), "{e}");
    // Back on, the receiver up: the backlog goes out at once; then what did not fit is
    // recovered: all five, in order.
    rx.setup("f", json!({ "secrets": [f1] })).await;
    let r = s
        .http
        .patch(s.url(&format!("/v1/webhooks/endpoints/{f}")))
        .bearer_auth(&owner)
        .json(&json!({ "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    rx.wait_accepted("f", 3).await;
    let r = crate::support::post_json(
        &s,
        &owner,
        &format!("/v1/webhooks/endpoints/{f}/recover"),
        json!({ "since": since }),
    )
    .await;
    assert_eq!((r["queued"].as_u64(), r["truncated"].as_bool()), (Some(2), Some(false)), "{r}");
    let got = rx.wait_accepted("f", 5).await;
    let order = seqs(&got);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // Its log is trimmed to the newest four attempts, the last delivery among them.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = crate::support::get_json(&s, &owner, &format!("/v1/webhooks/endpoints/{f}/attempts?limit=100")).await;
        let items = log["items"].as_array().unwrap();
        if items.len() <= 4 {
            assert_eq!(items[0]["outcome"], "delivered", "{log}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never trimmed: {log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s.stop().await;
}
