//! Tampering with the audit chain offline is detected, by the CLI and the operator endpoint;
//! a chain stored as JSON before schema 3 goes on in binary and verifies whole.

use outpost::store::audit::AuditRecord;
use outpost::store::events::Event;
use outpost::store::tables::{AUDIT, AUDIT_HEADS, EVENTS, META, org_seq_key};
use redb::ReadableTable;
use serde_json::Value;

use crate::support::{TestServer, cli, slug};

/// Runs `f` in one write transaction on the stopped server's store; what it returns.
pub(crate) fn edit<T>(dir: &std::path::Path, f: impl FnOnce(&redb::WriteTransaction) -> T) -> T {
    let db = redb::Database::open(dir.join("outpost.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    let out = f(&txn);
    txn.commit().unwrap();
    out
}

/// Rewrites every row of `table` as `f` makes it from its key and stored value; how many.
pub(crate) fn rewrite(
    txn: &redb::WriteTransaction,
    table: outpost::store::tables::Table,
    f: impl Fn(&[u8], &[u8]) -> Vec<u8>,
) -> usize {
    let mut t = txn.open_table(table.def).unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        t.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).collect();
    for (k, v) in &rows {
        t.insert(k.as_slice(), f(k, v).as_slice()).unwrap();
    }
    rows.len()
}

fn verify(dir: &std::path::Path) -> (i32, String) {
    let (code, out, _) = cli(&["audit", "verify", "--data", dir.to_str().unwrap()], &[], None);
    (code, out)
}

#[tokio::test]
async fn altered_or_removed_records_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(crate::support::config_for(dir.path())).await;
    let mut orgs = Vec::new();
    for i in 0..3 {
        let org = s.create_org(&slug(&format!("aud{i}"))).await;
        let id: outpost::ids::Id = org["id"].as_str().unwrap().parse().unwrap();
        s.http
            .patch(s.url(&format!("/v1/orgs/{id}")))
            .bearer_auth(&s.key)
            .json(&serde_json::json!({ "name": "renamed" }))
            .send()
            .await
            .unwrap();
        s.post(&format!("/v1/orgs/{id}/suspend"), &serde_json::json!({})).send().await.unwrap();
        orgs.push(id);
    }
    s.stop().await;
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");

    // Alter one detail of the second org's second record.
    let key = org_seq_key(orgs[1], 2);
    edit(dir.path(), |txn| {
        let mut t = txn.open_table(AUDIT.def).unwrap();
        let stored = t.get(key.as_slice()).unwrap().unwrap().value().to_vec();
        let mut rec = AuditRecord::from_stored(&key, &stored).unwrap();
        rec.details["changed"] = serde_json::json!(["nothing"]);
        t.insert(key.as_slice(), rec.to_stored().as_slice()).unwrap();
    });
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1);
    assert!(out.contains(&orgs[1].to_string()) && out.contains("record 2") && out.contains("altered"), "{out}");

    // The operator endpoint reports the same first broken link.
    let s = TestServer::start_with(crate::support::config_for(dir.path())).await;
    let v: Value = s.get("/v1/audit/verification").send().await.unwrap().json().await.unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_broken"]["org_id"], orgs[1].to_string());
    assert_eq!(v["first_broken"]["n"], 2);
    s.stop().await;

    // Removing a record from the middle of a chain is detected as well.
    edit(dir.path(), |txn| {
        let mut t = txn.open_table(AUDIT.def).unwrap();
        t.remove(org_seq_key(orgs[1], 2).as_slice()).unwrap();
    });
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1);
    assert!(out.contains(&orgs[1].to_string()) && out.contains("record 2"), "{out}");
}

#[tokio::test]
async fn a_removed_tail_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(crate::support::config_for(dir.path())).await;
    let org = s.create_org(&slug("tail")).await;
    let id: outpost::ids::Id = org["id"].as_str().unwrap().parse().unwrap();
    s.post(&format!("/v1/orgs/{id}/suspend"), &serde_json::json!({})).send().await.unwrap();
    s.stop().await;
    edit(dir.path(), |txn| {
        txn.open_table(AUDIT.def).unwrap().remove(org_seq_key(id, 2).as_slice()).unwrap();
    });
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1);
    assert!(out.contains(&id.to_string()) && out.contains("missing"), "{out}");
    // A chain whose head was removed along with its tail record no longer matches either.
    edit(dir.path(), |txn| {
        txn.open_table(AUDIT_HEADS.def).unwrap().remove(id.as_bytes().as_slice()).unwrap();
    });
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
}

/// A store from before schema 3 holds its audit records and events as JSON. Opened by this build
/// it is migrated without a rewrite: the old records stay JSON, new ones are binary, the API
/// lists both alike, and the chain verifies across the change and detects tampering on either
/// side.
#[tokio::test]
async fn a_chain_stored_as_json_goes_on_in_binary_and_verifies_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(crate::support::config_for(dir.path())).await;
    let org = s.create_org(&slug("json")).await;
    let id: outpost::ids::Id = org["id"].as_str().unwrap().parse().unwrap();
    let rename = |s: &TestServer, name: &str| {
        s.http.patch(s.url(&format!("/v1/orgs/{id}"))).bearer_auth(&s.key).json(&serde_json::json!({ "name": name }))
    };
    assert_eq!(rename(&s, "first").send().await.unwrap().status(), 200);
    let before: Value = s.get(&format!("/v1/orgs/{id}/audit")).send().await.unwrap().json().await.unwrap();
    let events_before: Value = s.get(&format!("/v1/orgs/{id}/events")).send().await.unwrap().json().await.unwrap();
    s.stop().await;
    // What schema 2 stored: each audit record and event as its JSON.
    let stored = edit(dir.path(), |txn| {
        rewrite(txn, EVENTS, |k, v| serde_json::to_vec(&Event::from_stored(k, v).unwrap()).unwrap());
        txn.open_table(META.def).unwrap().insert(b"schema_version".as_slice(), 2u32.to_be_bytes().as_slice()).unwrap();
        crate::store::topic_index_as_schema_3(txn);
        rewrite(txn, AUDIT, |k, v| serde_json::to_vec(&AuditRecord::from_stored(k, v).unwrap()).unwrap())
    });
    let old = before["items"].as_array().unwrap().len();
    assert!(old >= 2 && stored >= old, "{old} records of the organization's, {stored} in all");
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "the JSON chain verifies: {out}");

    let s = TestServer::start_with(crate::support::config_for(dir.path())).await;
    assert_eq!(rename(&s, "second").send().await.unwrap().status(), 200);
    let after: Value = s.get(&format!("/v1/orgs/{id}/audit")).send().await.unwrap().json().await.unwrap();
    let items = after["items"].as_array().unwrap();
    assert_eq!(items.len(), old + 1, "{after}");
    assert_eq!(items[..old], before["items"].as_array().unwrap()[..], "the old records read as before");
    assert_eq!(items[old]["prev_hash"], items[old - 1]["hash"], "the new record links to the last old one");
    let events: Value = s.get(&format!("/v1/orgs/{id}/events")).send().await.unwrap().json().await.unwrap();
    let (was, now) = (events_before["items"].as_array().unwrap(), events["items"].as_array().unwrap());
    assert_eq!(now.len(), was.len() + 1, "{events}");
    assert_eq!(now[..was.len()], was[..], "the old events read as before");
    assert_eq!(now[was.len()]["type"], "org.updated", "{events}");
    s.stop().await;
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");

    // Both forms are in the table, and tampering with either is found.
    let forms = edit(dir.path(), |txn| {
        let t = txn.open_table(AUDIT.def).unwrap();
        (1..=old as u64 + 1)
            .map(|n| t.get(org_seq_key(id, n).as_slice()).unwrap().unwrap().value()[0])
            .collect::<Vec<u8>>()
    });
    assert!(forms[..old].iter().all(|b| *b == b'{') && forms[old] == 1, "{forms:?}");
    for (n, form) in [(old as u64, "JSON"), (old as u64 + 1, "binary")] {
        let key = org_seq_key(id, n);
        let original = edit(dir.path(), |txn| {
            let mut t = txn.open_table(AUDIT.def).unwrap();
            let stored = t.get(key.as_slice()).unwrap().unwrap().value().to_vec();
            let mut rec = AuditRecord::from_stored(&key, &stored).unwrap();
            rec.actor.push('!');
            let altered = if stored[0] == b'{' { serde_json::to_vec(&rec).unwrap() } else { rec.to_stored() };
            t.insert(key.as_slice(), altered.as_slice()).unwrap();
            stored
        });
        let (code, out) = verify(dir.path());
        assert_eq!(code, 1, "an altered {form} record: {out}");
        assert!(out.contains(&format!("record {n}")) && out.contains("altered"), "{form}: {out}");
        edit(dir.path(), |txn| {
            txn.open_table(AUDIT.def).unwrap().insert(key.as_slice(), original.as_slice()).unwrap();
        });
    }
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");
}
