//! Tampering with the audit chain offline is detected, by the CLI and the operator endpoint.

use outpost::store::tables::{AUDIT, AUDIT_HEADS, org_seq_key};
use redb::ReadableTable;
use serde_json::Value;

use crate::support::{TestServer, cli, slug};

fn edit(dir: &std::path::Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(dir.join("outpost.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
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
        let mut rec: Value = serde_json::from_slice(t.get(key.as_slice()).unwrap().unwrap().value()).unwrap();
        rec["details"]["changed"] = serde_json::json!(["nothing"]);
        t.insert(key.as_slice(), serde_json::to_vec(&rec).unwrap().as_slice()).unwrap();
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
