//! Rooms: visibility, participants and their roles, the life of a room, and the capacity race.

use reqwest::Method as M;
use serde_json::{Value, json};

use crate::identity::{Login, create_org, login, operator_invite_and_accept};
use crate::support::{TestServer, config_for, expect_problem, get_json};

async fn users(s: &TestServer, n: usize) -> (String, Vec<Login>) {
    let (org_id, sl) = create_org(s).await;
    let mut out = Vec::new();
    for i in 0..n {
        let email = format!("u{i}@example.org");
        operator_invite_and_accept(s, &org_id, &email, "member").await;
        out.push(login(s, &sl, &email).await);
    }
    (org_id, out)
}

#[tokio::test]
async fn a_rooms_life() {
    let s = TestServer::start().await;
    let (org_id, u) = users(&s, 3).await;
    let (host, guest, other) = (&u[0], &u[1], &u[2]);
    let call = |m: reqwest::Method, t: &str, path: &str, body: Option<Value>| {
        let mut r = s.http.request(m, s.url(path)).bearer_auth(t.to_owned());
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };
    let r = call(M::POST, &host.access, "/v1/rooms", Some(json!({ "name": "Design review", "visibility": "private", "max_participants": 3, "metadata": { "floor": 2 } }))).await.unwrap();
    assert_eq!(r.status(), 201);
    let room: Value = r.json().await.unwrap();
    let id = room["id"].as_str().unwrap().to_owned();
    assert_eq!((room["my_role"].as_str(), room["participant_count"].as_u64()), (Some("host"), Some(1)));

    // Private: invisible to others until invited.
    expect_problem(call(M::GET, &guest.access, &format!("/v1/rooms/{id}"), None).await.unwrap(), 404, "not_found")
        .await;
    expect_problem(
        call(M::POST, &guest.access, &format!("/v1/rooms/{id}/join"), None).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let list: Value = call(M::GET, &guest.access, "/v1/rooms", None).await.unwrap().json().await.unwrap();
    assert!(list["items"].as_array().unwrap().is_empty());
    let r = call(
        M::POST,
        &host.access,
        &format!("/v1/rooms/{id}/participants"),
        Some(json!({ "user_id": guest.user_id, "role": "viewer" })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(call(M::GET, &guest.access, &format!("/v1/rooms/{id}"), None).await.unwrap().status(), 200);
    let r = call(M::POST, &guest.access, &format!("/v1/rooms/{id}/join"), None).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "viewer");
    // A viewer cannot invite or edit.
    let r = call(
        M::POST,
        &guest.access,
        &format!("/v1/rooms/{id}/participants"),
        Some(json!({ "user_id": other.user_id })),
    )
    .await
    .unwrap();
    expect_problem(r, 403, "forbidden").await;
    let r =
        call(M::PATCH, &guest.access, &format!("/v1/rooms/{id}"), Some(json!({ "name": "mine now" }))).await.unwrap();
    expect_problem(r, 403, "forbidden").await;

    // The host edits with If-Match (a second edit of version 1 is stale), promotes, kicks.
    let edit_version_1 = |body: Value| {
        s.http
            .patch(s.url(&format!("/v1/rooms/{id}")))
            .bearer_auth(&host.access)
            .header("if-match", "\"1\"")
            .json(&body)
            .send()
    };
    assert_eq!(edit_version_1(json!({ "description": "weekly" })).await.unwrap().status(), 200);
    let r = edit_version_1(json!({ "description": "stale" })).await.unwrap();
    expect_problem(r, 412, "version_conflict").await;
    let r = call(
        M::PUT,
        &host.access,
        &format!("/v1/rooms/{id}/participants/{}/role", guest.user_id),
        Some(json!({ "role": "moderator" })),
    )
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "moderator");
    let parts: Value =
        call(M::GET, &guest.access, &format!("/v1/rooms/{id}/participants"), None).await.unwrap().json().await.unwrap();
    assert_eq!(parts["items"].as_array().unwrap().len(), 2);
    // A moderator cannot remove the host; the host removes the moderator, who then sees nothing.
    let r =
        call(M::DELETE, &guest.access, &format!("/v1/rooms/{id}/participants/{}", host.user_id), None).await.unwrap();
    expect_problem(r, 403, "forbidden").await;
    let r =
        call(M::DELETE, &host.access, &format!("/v1/rooms/{id}/participants/{}", guest.user_id), None).await.unwrap();
    assert_eq!(r.status(), 204);
    expect_problem(call(M::GET, &guest.access, &format!("/v1/rooms/{id}"), None).await.unwrap(), 404, "not_found")
        .await;

    // Archive: no joining; restore; delete: gone.
    let r = call(M::POST, &host.access, &format!("/v1/rooms/{id}/archive"), None).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "archived");
    call(M::POST, &host.access, &format!("/v1/rooms/{id}/participants"), Some(json!({ "user_id": other.user_id })))
        .await
        .unwrap();
    let r = call(M::POST, &other.access, &format!("/v1/rooms/{id}/join"), None).await.unwrap();
    expect_problem(r, 409, "room_archived").await;
    call(M::POST, &host.access, &format!("/v1/rooms/{id}/restore"), None).await.unwrap();
    assert_eq!(call(M::POST, &other.access, &format!("/v1/rooms/{id}/join"), None).await.unwrap().status(), 200);
    assert_eq!(call(M::POST, &other.access, &format!("/v1/rooms/{id}/leave"), None).await.unwrap().status(), 204);
    assert_eq!(call(M::DELETE, &host.access, &format!("/v1/rooms/{id}"), None).await.unwrap().status(), 204);
    expect_problem(call(M::GET, &host.access, &format!("/v1/rooms/{id}"), None).await.unwrap(), 404, "not_found").await;

    // Every change is on the room's topic, in order, and in the audit trail.
    let events: Value = s
        .get(&format!("/v1/orgs/{org_id}/events?topic=room:{id}&limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "room.created",
            "participant.invited",
            "participant.joined",
            "room.updated",
            "participant.role_changed",
            "participant.kicked",
            "room.archived",
            "participant.invited",
            "room.restored",
            "participant.joined",
            "participant.left",
            "room.deleted"
        ]
    );
    let audit: Value =
        s.get(&format!("/v1/orgs/{org_id}/audit?limit=1000")).send().await.unwrap().json().await.unwrap();
    assert!(audit["items"].as_array().unwrap().iter().any(|r| r["action"] == "room.kick"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_joins_fill_exactly_the_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.limits.login_per_addr_per_min = 10_000;
    let s = TestServer::start_with(config).await;
    let (_, u) = users(&s, 13).await;
    let r = s
        .http
        .post(s.url("/v1/rooms"))
        .bearer_auth(&u[0].access)
        .json(&json!({ "name": "Tight", "max_participants": 6 }))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let mut joins = tokio::task::JoinSet::new();
    for l in &u[1..] {
        let (http, url, token) = (s.http.clone(), s.url(&format!("/v1/rooms/{id}/join")), l.access.clone());
        joins.spawn(async move {
            let r = http.post(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body["code"].as_str().map(str::to_owned))
        });
    }
    let (mut ok, mut full) = (0, 0);
    while let Some(r) = joins.join_next().await {
        match r.unwrap() {
            (200, _) => ok += 1,
            (409, Some(code)) if code == "room_full" => full += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((ok, full), (5, 7), "the host holds one of six places");
    let room = get_json(&s, &u[0].access, &format!("/v1/rooms/{id}")).await;
    assert_eq!(room["participant_count"], 6);
    let parts = get_json(&s, &u[0].access, &format!("/v1/rooms/{id}/participants")).await;
    assert_eq!(parts["items"].as_array().unwrap().len(), 6);
    s.stop().await;
}
