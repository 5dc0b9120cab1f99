//! Search follows the log: new, edited and deleted messages are found (or not) by their
//! current text, typos and phrases work, private hits stay private, and after a crash the
//! index catches up to exactly what the log holds.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::identity::{Login, PASSWORD, create_org, login, operator_invite_and_accept};
use crate::support::{ChildServer, TestServer, cli, post_json};

/// Searches until `done` holds for the answer (the index follows the log asynchronously).
async fn search_until(
    http: &reqwest::Client,
    base: &str,
    who: &Login,
    q: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = http
            .get(format!("{base}/v1/search"))
            .query(&[("q", q)])
            .bearer_auth(&who.access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "search for {q:?} never got there: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["items"].as_array().map(|a| a.iter().map(|h| h["id"].as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn search_follows_edits_deletes_and_permissions() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "sam@example.org", "member").await;
    operator_invite_and_accept(&s, &org_id, "kit@example.org", "member").await;
    let sam = login(&s, &sl, "sam").await;
    let kit = login(&s, &sl, "kit").await;
    let chan =
        |who: &Login, body: Value| s.http.post(s.url("/v1/channels")).bearer_auth(&who.access).json(&body).send();
    let public =
        chan(&sam, json!({ "kind": "public", "name": "general" })).await.unwrap().json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let private =
        chan(&sam, json!({ "kind": "private", "name": "secret" })).await.unwrap().json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let post = |ch: &str, text: &str| {
        s.http
            .post(s.url(&format!("/v1/channels/{ch}/messages")))
            .bearer_auth(&sam.access)
            .json(&json!({ "text": text }))
            .send()
    };
    let m: Value = post(&public, "the quarterly roadmap is ready").await.unwrap().json().await.unwrap();
    let mid = m["id"].as_str().unwrap().to_owned();
    let hidden: Value = post(&private, "the quarterly budget is secret").await.unwrap().json().await.unwrap();
    let hid = hidden["id"].as_str().unwrap().to_owned();

    // Found, with a highlighted snippet; a typo and a phrase find it too.
    let v = search_until(&s.http, &s.base, &kit, "roadmap", |v| ids(v).contains(&mid)).await;
    assert!(v["items"][0]["snippet"].as_str().unwrap().contains("<b>roadmap</b>"), "{v}");
    search_until(&s.http, &s.base, &kit, "roadmpa", |v| ids(v).contains(&mid)).await;
    search_until(&s.http, &s.base, &kit, "\"quarterly roadmap\"", |v| ids(v).contains(&mid)).await;
    // The private message: its channel's members find it, others never do.
    search_until(&s.http, &s.base, &sam, "budget", |v| ids(v).contains(&hid)).await;
    let v = search_until(&s.http, &s.base, &kit, "quarterly", |v| ids(v).contains(&mid)).await;
    assert!(!ids(&v).contains(&hid), "a private hit leaked: {v}");

    // Edited: found by the new text, not the old; deleted: gone.
    s.http
        .patch(s.url(&format!("/v1/channels/{public}/messages/{mid}")))
        .bearer_auth(&sam.access)
        .json(&json!({ "text": "the annual plan is ready" }))
        .send()
        .await
        .unwrap();
    search_until(&s.http, &s.base, &kit, "annual", |v| ids(v).contains(&mid)).await;
    search_until(&s.http, &s.base, &kit, "roadmap", |v| !ids(v).contains(&mid)).await;
    s.http
        .delete(s.url(&format!("/v1/channels/{public}/messages/{mid}")))
        .bearer_auth(&sam.access)
        .send()
        .await
        .unwrap();
    search_until(&s.http, &s.base, &kit, "annual", |v| !ids(v).contains(&mid)).await;

    // Tasks and type filters.
    let t: Value = s
        .http
        .post(s.url("/v1/tasks"))
        .bearer_auth(&sam.access)
        .json(&json!({ "title": "Migrate the billing database" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tid = t["id"].as_str().unwrap().to_owned();
    search_until(&s.http, &s.base, &kit, "billing", |v| ids(v).contains(&tid)).await;
    let v: Value = s
        .http
        .get(s.url("/v1/search"))
        .query(&[("q", "billing"), ("type", "message")])
        .bearer_auth(&kit.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!ids(&v).contains(&tid));
    let r = s
        .http
        .get(s.url("/v1/search"))
        .query(&[("q", "x"), ("type", "planets")])
        .bearer_auth(&kit.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // A task's comments are found as messages of that task, until the task goes.
    let made = |token: &str, path: String, body: Value| {
        let (s, token) = (&s, token.to_owned());
        async move { post_json(s, &token, &path, body).await["id"].as_str().unwrap().to_owned() }
    };
    let cid =
        made(&sam.access, format!("/v1/tasks/{tid}/comments"), json!({ "text": "the ledger export needs a checksum" }))
            .await;
    let v = search_until(&s.http, &s.base, &kit, "checksum", |v| ids(v).contains(&cid)).await;
    assert_eq!(v["items"][0]["type"], "message", "{v}");
    let did = made(&sam.access, "/v1/tasks".into(), json!({ "title": "Doomed" })).await;
    let dcid = made(&sam.access, format!("/v1/tasks/{did}/comments"), json!({ "text": "a walrus remark" })).await;
    search_until(&s.http, &s.base, &kit, "walrus", |v| ids(v).contains(&dcid)).await;
    let r = s.http.delete(s.url(&format!("/v1/tasks/{did}"))).bearer_auth(&sam.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    search_until(&s.http, &s.base, &kit, "walrus", |v| !ids(v).contains(&dcid)).await;

    // Another organization's hits never cross over.
    let (other_org, other_sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &other_org, "oz@example.org", "member").await;
    let oz = login(&s, &other_sl, "oz").await;
    let oz_chan = made(&oz.access, "/v1/channels".into(), json!({ "kind": "public", "name": "general" })).await;
    let oz_id = made(
        &oz.access,
        format!("/v1/channels/{oz_chan}/messages"),
        json!({ "text": "the ledger belongs to another org" }),
    )
    .await;
    search_until(&s.http, &s.base, &oz, "ledger", |v| ids(v).contains(&oz_id)).await;
    let v = search_until(&s.http, &s.base, &kit, "ledger", |v| ids(v).contains(&cid)).await;
    assert!(!ids(&v).contains(&oz_id), "another org's hit leaked: {v}");
    let v = search_until(&s.http, &s.base, &oz, "ledger", |v| ids(v).contains(&oz_id)).await;
    assert!(!ids(&v).contains(&cid), "another org's hit leaked: {v}");

    // A rebuild from the store, while the server runs, keeps what is there (and nothing deleted).
    let config = s.config.clone();
    let n = tokio::task::spawn_blocking(move || outpost::commands::reindex(&config)).await.unwrap().unwrap();
    assert!(n.parse::<u64>().unwrap() >= 4, "{n} documents");
    search_until(&s.http, &s.base, &kit, "billing", |v| ids(v).contains(&tid)).await;
    search_until(&s.http, &s.base, &kit, "annual", |v| !ids(v).contains(&mid)).await;
    s.stop().await;
}

/// Request budgets out of the way of a quick burst of posts.
const UNLIMITED: &[(&str, &str)] = &[("OUTPOST_LIMITS__USER_REQUESTS_PER_S", "1000000")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_catches_up_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, key, _) = cli(&["operator", "create-key", "--data", d], &[], None);
    assert_eq!(code, 0);
    let key = key.trim().to_owned();
    let server = ChildServer::start_with_env(dir.path(), UNLIMITED);
    let http = reqwest::Client::new();
    let base = server.base.clone();
    let org: Value = http
        .post(format!("{base}/v1/orgs"))
        .bearer_auth(&key)
        .json(&json!({ "slug": "crashy", "name": "C" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org_id = org["id"].as_str().unwrap();
    let inv: Value = http
        .post(format!("{base}/v1/orgs/{org_id}/invitations"))
        .bearer_auth(&key)
        .json(&json!({ "email": "cat@example.org", "role": "member" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    http.post(format!("{base}/v1/auth/invitations/accept"))
        .json(&json!({ "token": inv["token"], "username": "cat", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let t: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "org": "crashy", "login": "cat", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = t["access_token"].as_str().unwrap().to_owned();
    let ch: Value = http
        .post(format!("{base}/v1/channels"))
        .bearer_auth(&access)
        .json(&json!({ "kind": "public", "name": "log" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ch = ch["id"].as_str().unwrap().to_owned();
    // Post quickly and kill the server while the indexer is behind.
    let mut acked = 0;
    for i in 0..150 {
        let r = http
            .post(format!("{base}/v1/channels/{ch}/messages"))
            .bearer_auth(&access)
            .json(&json!({ "text": format!("zebra entry {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        acked += 1;
    }
    server.kill9();

    // After a restart the follower resumes from its checkpoint: every message is found.
    let server = ChildServer::start_with_env(dir.path(), UNLIMITED);
    let me =
        Login { access: access.clone(), refresh: String::new(), user_id: String::new(), session_id: String::new() };
    let count = |v: &Value| v["items"].as_array().map_or(0, Vec::len);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut total = 0;
        let mut offset = 0;
        loop {
            let v: Value = http
                .get(format!("{}/v1/search", server.base))
                .query(&[("q", "zebra"), ("type", "message"), ("limit", "50"), ("offset", &offset.to_string())])
                .bearer_auth(&me.access)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            total += count(&v);
            match v["next_offset"].as_u64() {
                Some(n) => offset = n,
                None => break,
            }
        }
        if total == acked {
            break;
        }
        assert!(total < acked, "more hits ({total}) than messages ({acked})");
        assert!(Instant::now() < deadline, "the index stopped at {total} of {acked}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill9();
}

/// Deep pages and oversized pages are refused with a problem before the index is asked: an
/// `offset` of 2^32 - 1 once made ranking reserve room for four billion hits and abort.
#[tokio::test]
async fn page_bounds_are_refused_before_the_index_is_asked() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "sam@example.org", "member").await;
    let sam = login(&s, &sl, "sam").await;
    for (query, pointer) in [
        ("q=roadmap&offset=4294967295", "?offset"),
        ("q=roadmap&offset=1001", "?offset"),
        ("q=roadmap&limit=51", "?limit"),
        ("q=roadmap&limit=0", "?limit"),
    ] {
        let resp = s.http.get(s.url(&format!("/v1/search?{query}"))).bearer_auth(&sam.access).send().await.unwrap();
        let p = crate::support::expect_problem(resp, 422, "validation_failed").await;
        assert_eq!(p["errors"][0]["pointer"], pointer, "{query}: {p}");
    }
    let ok =
        s.http.get(s.url("/v1/search?q=roadmap&offset=1000&limit=50")).bearer_auth(&sam.access).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    s.stop().await;
}
