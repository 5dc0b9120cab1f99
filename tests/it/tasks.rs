//! Tasks: fields and filters, optimistic concurrency, dependencies without cycles (however
//! long), and "done" held back by open dependencies unless forced.

use reqwest::Method as M;
use serde_json::{Value, json};

use crate::identity::{Login, create_org, login, operator_invite_and_accept};
use crate::support::{TestServer, expect_problem};

async fn call(s: &TestServer, m: M, who: &Login, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut r = s.http.request(m, s.url(path)).bearer_auth(&who.access);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

async fn task(s: &TestServer, who: &Login, body: Value) -> String {
    let r = call(s, M::POST, who, "/v1/tasks", Some(body)).await;
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tasks_filters_and_dependencies() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "tia@example.org", "member").await;
    operator_invite_and_accept(&s, &org_id, "gus@example.org", "guest").await;
    let tia = login(&s, &sl, "tia").await;
    let gus = login(&s, &sl, "gus").await;

    let a = task(&s, &tia, json!({ "title": "Write spec", "priority": "high", "assignee_ids": [tia.user_id], "labels": ["docs"], "due_at": "2030-01-10T00:00:00Z" })).await;
    let b = task(
        &s,
        &tia,
        json!({ "title": "Build it", "priority": "urgent", "labels": ["code"], "due_at": "2030-02-01T00:00:00Z" }),
    )
    .await;
    let c = task(&s, &tia, json!({ "title": "Ship it", "status": "blocked" })).await;
    let r = call(&s, M::POST, &tia, "/v1/tasks", Some(json!({ "title": "" }))).await;
    expect_problem(r, 422, "validation_failed").await;
    let r = call(&s, M::POST, &tia, "/v1/tasks", Some(json!({ "title": "x", "assignee_ids": [gus.user_id, org_id] })))
        .await;
    let p = expect_problem(r, 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["pointer"], "/assignee_ids/1");
    // Guests read, but do not write.
    expect_problem(call(&s, M::POST, &gus, "/v1/tasks", Some(json!({ "title": "nope" }))).await, 403, "forbidden")
        .await;

    // Filters: each given one must match.
    let titles = |v: Value| {
        v["items"].as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let list = |q: String| {
        let (s, g) = (&s, &gus);
        async move { call(s, M::GET, g, &format!("/v1/tasks{q}"), None).await.json::<Value>().await.unwrap() }
    };
    assert_eq!(titles(list("?priority=high,urgent".into()).await), ["Write spec", "Build it"]);
    assert_eq!(titles(list("?status=blocked".into()).await), ["Ship it"]);
    assert_eq!(titles(list(format!("?assignee={}", tia.user_id)).await), ["Write spec"]);
    assert_eq!(titles(list("?label=code".into()).await), ["Build it"]);
    assert_eq!(titles(list("?due_before=2030-01-15T00:00:00Z".into()).await), ["Write spec"]);
    assert_eq!(titles(list("?q=SHIP".into()).await), ["Ship it"]);
    expect_problem(call(&s, M::GET, &gus, "/v1/tasks?status=later", None).await, 422, "validation_failed").await;

    // Dependencies: c waits for b, b for a. Closing the loop is refused, however long.
    let dep = |t: &str, d: &str, m: M| {
        let (s, tia) = (&s, &tia);
        let path = format!("/v1/tasks/{t}/dependencies/{d}");
        async move { call(s, m, tia, &path, None).await }
    };
    assert_eq!(dep(&c, &b, M::PUT).await.status(), 200);
    assert_eq!(dep(&b, &a, M::PUT).await.status(), 200);
    expect_problem(dep(&a, &c, M::PUT).await, 409, "dependency_cycle").await;
    expect_problem(dep(&a, &a, M::PUT).await, 409, "dependency_cycle").await;
    let mut chain = vec![a.clone()];
    for i in 0..30 {
        let t = task(&s, &tia, json!({ "title": format!("step {i}") })).await;
        assert_eq!(dep(&t, chain.last().unwrap(), M::PUT).await.status(), 200);
        chain.push(t);
    }
    expect_problem(dep(&a, chain.last().unwrap(), M::PUT).await, 409, "dependency_cycle").await;

    // Done waits for open dependencies unless forced; If-Match guards changes.
    let got: Value =
        call(&s, M::GET, &gus, &format!("/v1/tasks/{c}?include=dependencies"), None).await.json().await.unwrap();
    assert_eq!(got["dependencies"][0]["title"], "Build it");
    let v = got["version"].as_u64().unwrap();
    let patch = |t: &str, body: Value, if_match: Option<u64>| {
        let mut r = s.http.patch(s.url(&format!("/v1/tasks/{t}"))).bearer_auth(&tia.access).json(&body);
        if let Some(v) = if_match {
            r = r.header("if-match", format!("\"{v}\""));
        }
        r.send()
    };
    expect_problem(patch(&c, json!({ "status": "done" }), Some(v)).await.unwrap(), 409, "dependencies_open").await;
    expect_problem(
        patch(&c, json!({ "status": "done", "force": true }), Some(v - 1)).await.unwrap(),
        412,
        "version_conflict",
    )
    .await;
    let r: Value = patch(&c, json!({ "status": "done", "force": true }), Some(v)).await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "done");
    assert_eq!(patch(&a, json!({ "status": "done" }), None).await.unwrap().status(), 200);
    assert_eq!(patch(&b, json!({ "status": "done" }), None).await.unwrap().status(), 200, "its dependency is done now");
    assert_eq!(dep(&c, &b, M::DELETE).await.status(), 200);
    expect_problem(dep(&c, &b, M::DELETE).await, 404, "not_found").await;

    // Assignment reaches the assignee's inbox; everything is audited.
    let inbox: Value = s
        .get(&format!("/v1/orgs/{org_id}/events?topic=user:{}", tia.user_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(inbox["items"].as_array().unwrap().iter().any(|e| e["type"] == "task.assigned"));
    assert_eq!(call(&s, M::DELETE, &tia, &format!("/v1/tasks/{a}"), None).await.status(), 204);
    expect_problem(call(&s, M::GET, &tia, &format!("/v1/tasks/{a}"), None).await, 404, "not_found").await;
    s.stop().await;
}
