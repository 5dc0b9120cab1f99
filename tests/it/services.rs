//! The service registry: services with sealed credentials that no answer, event or audit
//! record ever shows, and health checks that follow a service going down and coming back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use poem::web::Data;
use poem::{EndpointExt, Route, get, handler};
use serde_json::{Value, json};

use crate::support::{TestServer, config_for, get_json, post_json};

/// The credential the tests store: it must reach the service and nothing else.
const SECRET: &str = "sk_live_4f1d_never_shown_anywhere";

struct Fake {
    healthy: AtomicBool,
    keys_seen: std::sync::Mutex<Vec<String>>,
}

#[handler]
#[allow(clippy::needless_pass_by_value)] // poem hands the extractor over by value
fn health(req: &poem::Request, fake: Data<&Arc<Fake>>) -> poem::http::StatusCode {
    if let Some(k) = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
        fake.keys_seen.lock().unwrap().push(k.to_owned());
    }
    if fake.healthy.load(Ordering::Relaxed) {
        poem::http::StatusCode::OK
    } else {
        poem::http::StatusCode::SERVICE_UNAVAILABLE
    }
}

/// A service on loopback whose `/health` answers 200 or 503 as the test says.
async fn fake_service() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake { healthy: AtomicBool::new(true), keys_seen: std::sync::Mutex::default() });
    let app = Route::new().at("/health", get(health)).data(fake.clone());
    (crate::support::serve_loopback(app).await, fake)
}

async fn wait_health(s: &TestServer, token: &str, id: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = get_json(s, token, &format!("/v1/services/{id}")).await;
        if v["health"] == want {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {want}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_follows_a_service_down_and_back_and_its_credential_stays_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    let s = TestServer::start_with(config).await;
    let (base, fake) = fake_service().await;
    let (org_id, sl) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "owner@example.org", "owner").await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "mia@example.org", "member").await;
    let owner = crate::identity::login(&s, &sl, "owner").await.access;
    let member = crate::identity::login(&s, &sl, "mia").await.access;
    let mut seen = Vec::new();

    let r = s
        .http
        .post(s.url("/v1/services"))
        .bearer_auth(&owner)
        .json(&json!({
            "name": "Tickets",
            "kind": "ticketing",
            "base_url": base,
            "capabilities": ["tickets.create"],
            "ui": { "shape": "cube", "color": "#3366ff" },
            "credential": { "kind": "api_key", "secret": SECRET },
            "health_check": { "interval_ms": 100, "timeout_ms": 100, "healthy_threshold": 2, "unhealthy_threshold": 2 },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    seen.push(made.to_string());
    let made = made["service"].clone();
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(
        made["credential"],
        json!({ "kind": "api_key", "header": "X-Api-Key", "username": null, "connection_id": null })
    );

    // Up at the first good check; down after two failed ones; up after two good ones.
    let v = wait_health(&s, &member, &id, "up").await;
    seen.push(v.to_string());
    fake.healthy.store(false, Ordering::Relaxed);
    wait_health(&s, &member, &id, "down").await;
    fake.healthy.store(true, Ordering::Relaxed);
    wait_health(&s, &member, &id, "up").await;
    assert!(fake.keys_seen.lock().unwrap().iter().all(|k| k == SECRET), "the check carries the credential");
    assert!(!fake.keys_seen.lock().unwrap().is_empty());

    let history = get_json(&s, &member, &format!("/v1/services/{id}/health")).await;
    seen.push(history.to_string());
    let moves: Vec<(&str, &str)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["from"].as_str().unwrap(), c["to"].as_str().unwrap()))
        .collect();
    assert_eq!(moves, [("down", "up"), ("up", "down"), ("unknown", "up")], "{history}");
    assert!(history["items"][1]["detail"].as_str().unwrap().contains("503"), "{history}");

    // The transitions are events on the org topic, and audit records by the system.
    let events: Value =
        s.get(&format!("/v1/orgs/{org_id}/events?topic=org&limit=1000")).send().await.unwrap().json().await.unwrap();
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(kinds.contains(&"service.down") && kinds.contains(&"service.up"), "{kinds:?}");
    seen.push(events.to_string());
    let audit = get_json(&s, &owner, "/v1/audit?action=service.health").await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 3, "{audit}");
    let export = s.http.get(s.url("/v1/audit/export")).bearer_auth(&owner).send().await.unwrap().text().await.unwrap();
    seen.push(export);
    seen.push(get_json(&s, &member, "/v1/services").await.to_string());

    // A new credential replaces it, still never shown; a member may read but not change.
    let r = s
        .http
        .patch(s.url(&format!("/v1/services/{id}")))
        .bearer_auth(&owner)
        .json(&json!({ "credential": { "kind": "bearer", "secret": format!("{SECRET}-2") } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    seen.push(r.text().await.unwrap());
    let r = s.http.delete(s.url(&format!("/v1/services/{id}"))).bearer_auth(&member).send().await.unwrap();
    assert_eq!(r.status(), 403);
    for text in &seen {
        assert!(!text.contains(SECRET), "the credential showed: {text}");
    }
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("outpost_service_health_checks_total{outcome=\"failed\"}"), "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn a_service_url_is_held_to_the_egress_policy() {
    let s = TestServer::start().await;
    let (org_id, sl) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "owner@example.org", "owner").await;
    let owner = crate::identity::login(&s, &sl, "owner").await.access;
    for url in ["http://127.0.0.1:9", "http://169.254.169.254", "http://192.168.0.10/api"] {
        let p = post_json(&s, &owner, "/v1/services", json!({ "name": "x", "base_url": url })).await;
        assert_eq!(
            (p["status"].as_u64(), p["errors"][0]["code"].as_str()),
            (Some(422), Some("address_refused")),
            "{p}"
        );
    }
    // A name is looked up when called, each address it gives checked then; with
    // `egress.allowed_only` (as the tests run) it is refused at once.
    let p =
        post_json(&s, &owner, "/v1/services", json!({ "name": "x", "base_url": "https://api.example.org/v2" })).await;
    assert_eq!(p["errors"][0]["code"], "address_refused", "{p}");
    s.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.egress.allowed_only = false;
    let s = TestServer::start_with(config).await;
    let (org_id, sl) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org_id, "owner@example.org", "owner").await;
    let owner = crate::identity::login(&s, &sl, "owner").await.access;
    let ok =
        post_json(&s, &owner, "/v1/services", json!({ "name": "x", "base_url": "https://api.example.org/v2" })).await;
    assert_eq!(ok["service"]["health"], "unknown", "{ok}");
    s.stop().await;
}
