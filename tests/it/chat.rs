//! Channels and messages over HTTP: visibility, joining, idempotent posting, edits kept,
//! tombstones, reactions, history in both directions and around a message, threads, read
//! positions and unread counts, mentions in the inbox, direct channels found again.

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

async fn post_in(s: &TestServer, ch: &str, who: &Login, body: Value) -> reqwest::Response {
    call(s, M::POST, who, &format!("/v1/channels/{ch}/messages"), Some(body)).await
}

async fn page_of(s: &TestServer, ch: &str, who: &Login, q: &str) -> Value {
    call(s, M::GET, who, &format!("/v1/channels/{ch}/messages{q}"), None).await.json().await.unwrap()
}

#[tokio::test]
async fn channels_and_messages() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    for who in ["ana", "ben", "cy"] {
        operator_invite_and_accept(&s, &org_id, &format!("{who}@example.org"), "member").await;
    }
    let (ana, ben, cy) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await, login(&s, &sl, "cy").await);

    // A public channel: Ben reads it but posts only after joining.
    let r = call(&s, M::POST, &ana, "/v1/channels", Some(json!({ "kind": "public", "name": "general" }))).await;
    assert_eq!(r.status(), 201);
    let ch = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(post_in(&s, &ch, &ana, json!({ "text": "hello" })).await.status(), 201);
    let r = post_in(&s, &ch, &ben, json!({ "text": "hi" })).await;
    expect_problem(r, 403, "forbidden").await;
    let hist: Value = call(&s, M::GET, &ben, &format!("/v1/channels/{ch}/messages"), None).await.json().await.unwrap();
    assert_eq!(hist["items"].as_array().unwrap().len(), 1);
    assert_eq!(call(&s, M::POST, &ben, &format!("/v1/channels/{ch}/join"), None).await.status(), 204);

    // Mentions land in the mentioned user's inbox topic.
    let r = post_in(&s, &ch, &ben, json!({ "text": "@ana look", "mention_ids": [ana.user_id] })).await;
    let mention: Value = r.json().await.unwrap();
    let inbox: Value = s
        .get(&format!("/v1/orgs/{org_id}/events?topic=user:{}", ana.user_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        inbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "mention" && e["data"]["message"] == mention["id"])
    );

    // Idempotent posting: the same key twice is one message.
    let idem = |key: &'static str| {
        s.http
            .post(s.url(&format!("/v1/channels/{ch}/messages")))
            .bearer_auth(&ben.access)
            .header("idempotency-key", key)
            .json(&json!({ "text": "once" }))
            .send()
    };
    let a: Value = idem("k-1").await.unwrap().json().await.unwrap();
    let b: Value = idem("k-1").await.unwrap().json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    let c: Value = call(&s, M::GET, &ben, &format!("/v1/channels/{ch}"), None).await.json().await.unwrap();
    assert_eq!(c["last_seq"], 3);

    // Edits keep the old text; a deleted message is a tombstone.
    let id = a["id"].as_str().unwrap();
    let r = call(&s, M::PATCH, &ana, &format!("/v1/channels/{ch}/messages/{id}"), Some(json!({ "text": "not mine" })))
        .await;
    expect_problem(r, 403, "forbidden").await;
    let edited: Value =
        call(&s, M::PATCH, &ben, &format!("/v1/channels/{ch}/messages/{id}"), Some(json!({ "text": "once, edited" })))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(edited["text"], "once, edited");
    assert_eq!(edited["versions"][0]["text"], "once");
    // Reactions count people, once each.
    for who in [&ana, &ana, &ben] {
        call(&s, M::PUT, who, &format!("/v1/channels/{ch}/messages/{id}/reactions/thumbsup"), None).await;
    }
    let m: Value = call(&s, M::GET, &cy, &format!("/v1/channels/{ch}/messages/{id}"), None).await.json().await.unwrap();
    assert_eq!(m["reactions"][0]["count"], 2);
    let m: Value = call(&s, M::DELETE, &ana, &format!("/v1/channels/{ch}/messages/{id}/reactions/thumbsup"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["reactions"][0]["count"], 1);
    let m: Value =
        call(&s, M::DELETE, &ben, &format!("/v1/channels/{ch}/messages/{id}"), None).await.json().await.unwrap();
    assert!(m["deleted_at"].is_string() && m["text"] == "" && m["versions"].as_array().unwrap().is_empty());
    let r =
        call(&s, M::PATCH, &ben, &format!("/v1/channels/{ch}/messages/{id}"), Some(json!({ "text": "back" }))).await;
    expect_problem(r, 409, "message_deleted").await;

    // History in both directions and around a message (seq 4..=33 are these).
    for i in 0..30 {
        post_in(&s, &ch, &ana, json!({ "text": format!("m{i}") })).await;
    }
    let seqs =
        |v: &Value| v["items"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(seqs(&page_of(&s, &ch, &ana, "").await), (14..=33).collect::<Vec<_>>());
    assert_eq!(seqs(&page_of(&s, &ch, &ana, "?before=14&limit=5").await), (9..=13).collect::<Vec<_>>());
    assert_eq!(seqs(&page_of(&s, &ch, &ana, "?after=30").await), [31, 32, 33]);
    assert_eq!(seqs(&page_of(&s, &ch, &ana, "?around=20&limit=5").await), (18..=22).collect::<Vec<_>>());
    expect_problem(
        call(&s, M::GET, &ana, &format!("/v1/channels/{ch}/messages?before=3&after=1"), None).await,
        422,
        "validation_failed",
    )
    .await;

    // Read positions: Ben has unread messages until he marks them read.
    let list: Value = call(&s, M::GET, &ben, "/v1/channels", None).await.json().await.unwrap();
    let mine = list["items"].as_array().unwrap().iter().find(|c| c["id"] == ch.as_str()).unwrap().clone();
    assert_eq!(mine["unread"], 30);
    let r: Value = call(&s, M::POST, &ben, &format!("/v1/channels/{ch}/read"), Some(json!({ "seq": 30 })))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["unread"], 3);
    let r: Value = call(&s, M::POST, &ben, &format!("/v1/channels/{ch}/read"), Some(json!({ "seq": 10 })))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["unread"], 3, "never backwards");

    // Threads: replies stay out of the main history.
    let parent = page_of(&s, &ch, &ana, "?around=20&limit=1").await["items"][0]["id"].as_str().unwrap().to_owned();
    let r = post_in(&s, &ch, &ben, json!({ "text": "a reply", "thread_parent_id": parent })).await;
    assert_eq!(r.json::<Value>().await.unwrap()["thread_parent_seq"], 20);
    assert_eq!(seqs(&page_of(&s, &ch, &ana, "").await).last(), Some(&33));
    let thread = page_of(&s, &ch, &ana, &format!("?thread={parent}")).await;
    assert_eq!(thread["items"].as_array().unwrap().len(), 1);
    let m: Value =
        call(&s, M::GET, &ana, &format!("/v1/channels/{ch}/messages/{parent}"), None).await.json().await.unwrap();
    assert_eq!(m["reply_count"], 1);

    // Private channels are invisible to others; direct channels are found again.
    let r = call(
        &s,
        M::POST,
        &ana,
        "/v1/channels",
        Some(json!({ "kind": "private", "name": "secret", "member_ids": [ben.user_id] })),
    )
    .await;
    let private = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    expect_problem(call(&s, M::GET, &cy, &format!("/v1/channels/{private}"), None).await, 404, "not_found").await;
    assert_eq!(call(&s, M::GET, &ben, &format!("/v1/channels/{private}"), None).await.status(), 200);
    let r =
        call(&s, M::POST, &ana, "/v1/channels", Some(json!({ "kind": "direct", "member_ids": [cy.user_id] }))).await;
    assert_eq!(r.status(), 201);
    let dm = r.json::<Value>().await.unwrap()["id"].clone();
    let r =
        call(&s, M::POST, &cy, "/v1/channels", Some(json!({ "kind": "direct", "member_ids": [ana.user_id] }))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], dm);
    s.stop().await;
}

/// History pages are kept rendered between changes: every change shows on the very next read
/// by anyone, and leaving a private channel closes its pages at once.
#[tokio::test]
async fn kept_history_pages_are_never_stale_and_never_leak() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    for who in ["ana", "ben"] {
        operator_invite_and_accept(&s, &org_id, &format!("{who}@example.org"), "member").await;
    }
    let (ana, ben) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await);
    let r = call(
        &s,
        M::POST,
        &ana,
        "/v1/channels",
        Some(json!({ "kind": "private", "name": "ops", "member_ids": [ben.user_id] })),
    )
    .await;
    let ch = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let texts = |v: &Value| {
        v["items"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let first: Value = post_in(&s, &ch, &ana, json!({ "text": "one" })).await.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(texts(&page_of(&s, &ch, &ben, "").await), ["one"]);
    }
    // A post, an edit, a reaction and a delete, each seen by the next read of the same page.
    post_in(&s, &ch, &ben, json!({ "text": "two" })).await;
    assert_eq!(texts(&page_of(&s, &ch, &ana, "").await), ["one", "two"]);
    call(&s, M::PATCH, &ana, &format!("/v1/channels/{ch}/messages/{id}"), Some(json!({ "text": "uno" }))).await;
    assert_eq!(texts(&page_of(&s, &ch, &ben, "").await), ["uno", "two"]);
    call(&s, M::PUT, &ben, &format!("/v1/channels/{ch}/messages/{id}/reactions/ok"), None).await;
    assert_eq!(page_of(&s, &ch, &ana, "").await["items"][0]["reactions"][0]["count"], 1);
    call(&s, M::DELETE, &ana, &format!("/v1/channels/{ch}/messages/{id}"), None).await;
    assert_eq!(texts(&page_of(&s, &ch, &ben, "").await), ["", "two"]);
    // Ben leaves: the page he just read is not his any more.
    let r = call(&s, M::DELETE, &ben, &format!("/v1/channels/{ch}/members/{}", ben.user_id), None).await;
    assert_eq!(r.status(), 204);
    let r = call(&s, M::GET, &ben, &format!("/v1/channels/{ch}/messages"), None).await;
    expect_problem(r, 404, "not_found").await;
    assert_eq!(texts(&page_of(&s, &ch, &ana, "").await), ["", "two"]);
    s.stop().await;
}

/// Messages stored as JSON, id index entries holding the whole key and topic index keys with the
/// topic as text, the forms before schema 4, read as before once the store is at schema 4 (the
/// topic index rewritten); old messages are changed, and new ones posted, in binary beside them;
/// the search index rebuilt from the store finds both.
#[tokio::test]
async fn messages_stored_as_json_read_as_before_and_go_on_in_binary() {
    use outpost::domain::chat::Message;
    use outpost::store::tables::{MESSAGE_IDS, MESSAGES, META};

    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(crate::support::config_for(dir.path())).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "ana@example.org", "member").await;
    operator_invite_and_accept(&s, &org_id, "ben@example.org", "member").await;
    let (ana, ben) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await);
    let r = call(&s, M::POST, &ana, "/v1/channels", Some(json!({ "kind": "public", "name": "old" }))).await;
    let ch = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    call(&s, M::POST, &ben, &format!("/v1/channels/{ch}/join"), None).await;
    let plain: Value = post_in(&s, &ch, &ana, json!({ "text": "a plain zebra" })).await.json().await.unwrap();
    let rich: Value = post_in(&s, &ch, &ana, json!({ "text": "@ben a rich zebra", "mention_ids": [ben.user_id] }))
        .await
        .json()
        .await
        .unwrap();
    let (plain_id, rich_id) = (plain["id"].as_str().unwrap(), rich["id"].as_str().unwrap());
    let reply = post_in(&s, &ch, &ben, json!({ "text": "a reply", "thread_parent_id": rich_id })).await;
    assert_eq!(reply.status(), 201);
    call(&s, M::PUT, &ben, &format!("/v1/channels/{ch}/messages/{rich_id}/reactions/ok"), None).await;
    call(
        &s,
        M::PATCH,
        &ana,
        &format!("/v1/channels/{ch}/messages/{rich_id}"),
        Some(json!({ "text": "@ben edited zebra" })),
    )
    .await;
    let before = page_of(&s, &ch, &ana, "").await;
    assert_eq!(before["items"].as_array().unwrap().len(), 2, "the reply is in its thread: {before}");
    let topic_events = |s: &TestServer| {
        let r = s.get(&format!("/v1/orgs/{org_id}/events?topic=channel:{ch}"));
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let events_before = topic_events(&s).await;
    assert!(events_before["items"].as_array().unwrap().len() >= 5, "{events_before}");
    let thread_before = page_of(&s, &ch, &ana, &format!("?thread={rich_id}")).await;
    assert_eq!(thread_before["items"][0]["text"], "a reply", "{thread_before}");
    s.stop().await;

    // What schema 3 stored: each message as its JSON.
    let rewritten = crate::audit::edit(dir.path(), |txn| {
        txn.open_table(META.def).unwrap().insert(b"schema_version".as_slice(), 3u32.to_be_bytes().as_slice()).unwrap();
        crate::store::topic_index_as_schema_3(txn);
        crate::audit::rewrite(txn, MESSAGES, |k, v| {
            assert_eq!(v[0], 1, "stored in binary");
            serde_json::to_vec(&Message::from_stored(k, v).unwrap()).unwrap()
        })
    });
    assert!(rewritten >= 3, "{rewritten} messages");
    // And each id index entry as the whole key of its message.
    let org: outpost::ids::Id = org_id.parse().unwrap();
    crate::audit::edit(dir.path(), |txn| {
        crate::audit::rewrite(txn, MESSAGE_IDS, |_, v| {
            assert_eq!(v.len(), 24, "channel and seq");
            [org.as_bytes().as_slice(), v].concat()
        })
    });
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();

    let s = TestServer::start_with(crate::support::config_for(dir.path())).await;
    let (ana, ben) = (login(&s, &sl, "ana").await, login(&s, &sl, "ben").await);
    assert_eq!(page_of(&s, &ch, &ana, "").await, before, "the old messages read as before");
    assert_eq!(page_of(&s, &ch, &ana, &format!("?thread={rich_id}")).await, thread_before);
    // The same events (the organization's head has moved on: logging in writes events too).
    let events_after = topic_events(&s).await;
    assert_eq!(events_after["items"], events_before["items"], "the topic index, rewritten, finds the same events");
    // An old message changed, and a new one posted, are stored in binary.
    call(&s, M::PUT, &ben, &format!("/v1/channels/{ch}/messages/{plain_id}/reactions/ok"), None).await;
    assert_eq!(post_in(&s, &ch, &ben, json!({ "text": "a new zebra" })).await.status(), 201);
    let after = page_of(&s, &ch, &ana, "").await;
    let items = after["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{after}");
    assert!(items.iter().any(|m| m["id"] == plain_id && m["reactions"][0]["count"] == 1), "{after}");
    let mut hits = Value::Null;
    for _ in 0..100 {
        let r = s.http.get(s.url("/v1/search?q=zebra")).bearer_auth(&ana.access).send().await.unwrap();
        hits = r.json::<Value>().await.unwrap();
        if hits["items"].as_array().map_or(0, Vec::len) == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(hits["items"].as_array().map_or(0, Vec::len), 3, "the rebuilt index has old and new: {hits}");
    s.stop().await;

    let binary = crate::audit::edit(dir.path(), |txn| {
        use redb::ReadableTable as _;
        let t = txn.open_table(MESSAGES.def).unwrap();
        t.iter().unwrap().map(|r| r.unwrap()).filter(|(_, v)| v.value()[0] == 1).count()
    });
    assert_eq!(binary, 2, "the changed message and the new one");
}
