//! Store start-up: a store written by a newer build is refused, not guessed at; an older one
//! is migrated, once; a second process on the same data dir is refused while the first has it
//! open.

use outpost::store::events::Event;
use outpost::store::tables::{EVENT_TOPICS, EVENTS, META, TASK_ASSIGNEES};
use outpost::store::{SCHEMA_VERSION, Store, StoreError};
use redb::ReadableTable;
use serde_json::{Value, json};

use crate::identity::populated_org;
use crate::support::{TestServer, cli, config_for};

/// Puts the topic index back in the form schema 3 wrote (`org ‖ len (u16 BE) ‖ topic ‖ seq`),
/// from the events, for tests that make a store from before schema 4; how many entries.
pub(crate) fn topic_index_as_schema_3(txn: &redb::WriteTransaction) -> usize {
    let events: Vec<Event> = {
        let t = txn.open_table(EVENTS.def).unwrap();
        t.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| Event::from_stored(k.value(), v.value()).unwrap()).collect()
    };
    txn.delete_table(EVENT_TOPICS.def).unwrap();
    let mut t = txn.open_table(EVENT_TOPICS.def).unwrap();
    for e in &events {
        let key = [
            e.org.as_bytes().as_slice(),
            &(e.topic.len() as u16).to_be_bytes(),
            e.topic.as_bytes(),
            &e.seq.to_be_bytes(),
        ]
        .concat();
        t.insert(key.as_slice(), [].as_slice()).unwrap();
    }
    events.len()
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), &mut |_| {}).unwrap());
    {
        let db = redb::Database::open(dir.path().join("outpost.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META.def)
            .unwrap()
            .insert(b"schema_version".as_slice(), (SCHEMA_VERSION + 1).to_be_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path(), &mut |_| {}).err();
    assert!(matches!(err, Some(StoreError::SchemaTooNew { .. })), "{err:?}");
    let (code, _, stderr) =
        cli(&["serve", "--listen", "127.0.0.1:0", "--data", dir.path().to_str().unwrap()], &[], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("newer than this build supports"), "{stderr}");
}

#[test]
fn one_process_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = Store::open(dir.path(), &mut |_| {}).unwrap();
    assert!(report.created);
    let second = Store::open(dir.path(), &mut |_| {}).err();
    assert!(matches!(second, Some(StoreError::Locked)), "{second:?}");
    drop(store);
    let (_, report) = Store::open(dir.path(), &mut |_| {}).unwrap();
    assert!(!report.created);
}

/// A store made at schema 1, before tasks were indexed by assignee, is brought to the current
/// schema at its next start, once: the index is built from the tasks already there, the
/// filtered list reads it, and it follows later changes. (The package test upgrades a real
/// schema-1 server; schema 3, audit records in binary, is `audit::a_chain_stored_as_json_…`;
/// schema 4, messages in binary, is `chat::messages_stored_as_json_…`.)
#[tokio::test]
async fn a_schema_1_store_is_migrated_once() {
    assert_eq!(SCHEMA_VERSION, 5, "a new schema version needs its own migration test");
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config_for(dir.path())).await;
    let (_, people) = populated_org(&s).await;
    let admin = &people.iter().find(|(r, _)| *r == "admin").unwrap().1;
    let member = &people.iter().find(|(r, _)| *r == "member").unwrap().1;
    let mut ids = Vec::new();
    for (title, assignees) in
        [("both", vec![&admin.user_id, &member.user_id]), ("member's", vec![&member.user_id]), ("no one's", vec![])]
    {
        let t = crate::support::post_json(
            &s,
            &admin.access,
            "/v1/tasks",
            json!({ "title": title, "assignee_ids": assignees }),
        )
        .await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    s.stop().await;

    // What schema 1 was: the same tables, less the index, the topic index in its old form.
    let topics;
    {
        let db = redb::Database::open(dir.path().join("outpost.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(TASK_ASSIGNEES.def).unwrap());
        txn.open_table(META.def).unwrap().insert(b"schema_version".as_slice(), 1u32.to_be_bytes().as_slice()).unwrap();
        topics = topic_index_as_schema_3(&txn);
        txn.commit().unwrap();
    }
    let mut lines = Vec::new();
    let (store, report) = Store::open(dir.path(), &mut |l| lines.push(l.to_owned())).unwrap();
    assert_eq!(report.migrated_from, Some(1));
    assert!(lines.contains(&"migrating store schema 1 → 2: index tasks by assignee".to_owned()), "{lines:?}");
    assert!(lines.contains(&"migrated store schema to 2 (3 rows written)".to_owned()), "{lines:?}");
    assert!(lines.contains(&"migrated store schema to 3 (0 rows written)".to_owned()), "{lines:?}");
    assert!(topics > 0, "the organization's events have topics");
    assert!(lines.contains(&format!("migrated store schema to 4 ({topics} rows written)")), "{lines:?}");
    drop(store);
    {
        use redb::ReadableDatabase as _;
        let db = redb::Database::open(dir.path().join("outpost.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META.def).unwrap();
        assert_eq!(meta.get(b"schema_version".as_slice()).unwrap().unwrap().value(), 5u32.to_be_bytes());
    }
    lines.clear();
    let (store, report) = Store::open(dir.path(), &mut |l| lines.push(l.to_owned())).unwrap();
    assert_eq!(report.migrated_from, None);
    assert!(lines.iter().all(|l| !l.contains("migrat")), "migrated again: {lines:?}");
    drop(store);

    let s = TestServer::start_with(config_for(dir.path())).await;
    let titles = |who: String| {
        let s = &s;
        let token = admin.access.clone();
        async move {
            let page = crate::support::get_json(s, &token, &format!("/v1/tasks?assignee={who}")).await;
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["title"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(titles(member.user_id.clone()).await, ["both", "member's"]);
    assert_eq!(titles(admin.user_id.clone()).await, ["both"]);
    // Later changes keep the index true: a reassignment and a deletion.
    let r = s
        .http
        .patch(s.url(&format!("/v1/tasks/{}", ids[0])))
        .bearer_auth(&admin.access)
        .json(&json!({ "assignee_ids": [admin.user_id] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = s.http.delete(s.url(&format!("/v1/tasks/{}", ids[1]))).bearer_auth(&admin.access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(titles(member.user_id.clone()).await.is_empty());
    assert_eq!(titles(admin.user_id.clone()).await, ["both"]);
    let all: Value = crate::support::get_json(&s, &admin.access, "/v1/tasks").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    s.stop().await;
}

/// `outpost space` counts every table's rows, the same through a running server's admin socket
/// and on the store directly once it has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_reports_every_tables_rows_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config_for(dir.path())).await;
    for i in 0..30 {
        s.create_org(&crate::support::slug(&format!("space{i}"))).await;
    }
    let config = s.config.clone();
    let online = tokio::task::spawn_blocking(move || outpost::commands::space(&config)).await.unwrap().unwrap();
    let orgs = online.tables.iter().find(|t| t.table == "orgs").expect("the orgs table");
    assert!(orgs.entries >= 30, "{orgs:?}");
    assert!(orgs.stored_bytes > 30 * 100 && orgs.page_bytes() >= orgs.stored_bytes, "{orgs:?}");
    let audit: u64 = online.tables.iter().filter(|t| t.table.starts_with("audit")).map(|t| t.entries).sum();
    assert!(audit >= 30, "an audit record per org: {:?}", online.tables);
    assert!(online.file_bytes >= online.table_bytes(), "{online:?}");
    s.stop().await;

    let d = dir.path().to_str().unwrap();
    let (code, out, err) = cli(&["space", "--json", "--data", d], &[], None);
    assert_eq!(code, 0, "{out}{err}");
    let offline: outpost::store::space::SpaceReport = serde_json::from_str(&out).unwrap();
    let offline_orgs = offline.tables.iter().find(|t| t.table == "orgs").unwrap();
    assert_eq!(offline_orgs.entries, orgs.entries);
    let (code, out, err) = cli(&["space", "--data", d], &[], None);
    assert_eq!(code, 0, "{out}{err}");
    let line = out.lines().find(|l| l.starts_with("orgs ")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(line.split_whitespace().nth(1), Some(orgs.entries.to_string().as_str()), "{out}");
    assert!(out.lines().last().unwrap().starts_with("tables "), "{out}");
}
