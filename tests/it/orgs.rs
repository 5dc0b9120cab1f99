//! Organization CRUD over HTTP, with the events and audit records each change leaves.

use serde_json::{Value, json};

use crate::support::{TestServer, expect_problem, slug};

#[tokio::test]
async fn organization_lifecycle_emits_events_and_audit() {
    let s = TestServer::start().await;
    let sl = slug("acme");
    let r = s
        .post("/v1/orgs", &json!({ "slug": sl, "name": "Acme", "settings": { "theme": "dark" } }))
        .header("x-request-id", "req-create-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-request-id"], "req-create-1");
    assert_eq!(r.headers()["etag"], "\"1\"");
    let org: Value = r.json().await.unwrap();
    let id = org["id"].as_str().unwrap().to_owned();
    assert_eq!(org["slug"], sl.as_str());
    assert_eq!(org["status"], "active");
    assert_eq!(org["settings"]["theme"], "dark");
    assert_eq!(org["version"], 1);
    assert!(org["created_at"].as_str().unwrap().ends_with('Z'));

    // Location points at the new resource.
    let got: Value = s.get(&format!("/v1/orgs/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, org);

    // Update with If-Match; a stale one is refused with the current version.
    let r = s
        .http
        .patch(s.url(&format!("/v1/orgs/{id}")))
        .bearer_auth(&s.key)
        .header("if-match", "\"1\"")
        .json(&json!({ "name": "Acme Corp" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["name"], "Acme Corp");
    assert_eq!(updated["version"], 2);
    let r = s
        .http
        .patch(s.url(&format!("/v1/orgs/{id}")))
        .bearer_auth(&s.key)
        .json(&json!({ "name": "Stale", "version": 1 }))
        .send()
        .await
        .unwrap();
    let p = expect_problem(r, 412, "version_conflict").await;
    assert_eq!(p["current_version"], 2);

    // Suspend, reactivate.
    let r: Value = s.post(&format!("/v1/orgs/{id}/suspend"), &json!({})).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "suspended");
    let listed: Value = s.get("/v1/orgs?status=suspended").send().await.unwrap().json().await.unwrap();
    assert!(listed["items"].as_array().unwrap().iter().any(|o| o["id"] == id.as_str()));
    let r: Value = s.post(&format!("/v1/orgs/{id}/reactivate"), &json!({})).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "active");
    assert_eq!(r["version"], 4);

    // Duplicate slugs conflict while the org lives; deleting frees the slug.
    let r = s.post("/v1/orgs", &json!({ "slug": sl, "name": "Again" })).send().await.unwrap();
    expect_problem(r, 409, "slug_taken").await;

    // The event log has every change, in order, on the `org` topic.
    let events: Value = s.get(&format!("/v1/orgs/{id}/events")).send().await.unwrap().json().await.unwrap();
    let types: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["org.created", "org.updated", "org.suspended", "org.reactivated"]);
    let seqs: Vec<u64> = events["items"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(events["head_seq"], 4);
    let after2: Value =
        s.get(&format!("/v1/orgs/{id}/events?after=2&topic=org")).send().await.unwrap().json().await.unwrap();
    assert_eq!(after2["items"].as_array().unwrap().len(), 2);
    let none: Value = s.get(&format!("/v1/orgs/{id}/events?topic=room:x")).send().await.unwrap().json().await.unwrap();
    assert!(none["items"].as_array().unwrap().is_empty());

    // The audit chain has one linked record per change, with the request's id and address.
    let audit: Value = s.get(&format!("/v1/orgs/{id}/audit")).send().await.unwrap().json().await.unwrap();
    let items = audit["items"].as_array().unwrap();
    let actions: Vec<&str> = items.iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["org.create", "org.update", "org.suspend", "org.reactivate"]);
    assert_eq!(items[0]["request_id"], "req-create-1");
    assert_eq!(items[0]["client_addr"], "127.0.0.1");
    assert!(items[0]["actor"].as_str().unwrap().starts_with("operator:"));
    assert_eq!(items[0]["target"], format!("org:{id}"));
    for w in items.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }

    // Delete: 204, then gone everywhere, slug free again, chain still verifies.
    let r = s.http.delete(s.url(&format!("/v1/orgs/{id}"))).bearer_auth(&s.key).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.get(&format!("/v1/orgs/{id}")).send().await.unwrap();
    expect_problem(r, 404, "not_found").await;
    let r = s.http.delete(s.url(&format!("/v1/orgs/{id}"))).bearer_auth(&s.key).send().await.unwrap();
    expect_problem(r, 404, "not_found").await;
    s.create_org(&sl).await;
    let v: Value = s.get("/v1/audit/verification").send().await.unwrap().json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn lists_are_cursor_paginated() {
    let s = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(s.create_org(&slug(&format!("page{i}"))).await["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/orgs?limit=3&cursor={c}"),
            None => "/v1/orgs?limit=3".into(),
        };
        let page: Value = s.get(&path).send().await.unwrap().json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|o| o["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    // Every org once, in creation order.
    assert_eq!(seen, ids);
    let r = s.get("/v1/orgs?limit=101").send().await.unwrap();
    let p = expect_problem(r, 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["pointer"], "?limit");
    let r = s.get("/v1/orgs?cursor=***").send().await.unwrap();
    expect_problem(r, 422, "validation_failed").await;
    s.stop().await;
}
