//! Tampering with the audit chain offline is detected, by the CLI and the operator endpoint;
//! a chain stored as JSON before schema 3 goes on in binary and verifies whole.

use outpost::store::audit::AuditRecord;
use outpost::store::events::Event;
use outpost::store::packed;
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

/// The forms a store's audit records and events have had before the compact one.
#[derive(Clone, Copy, Debug)]
enum OldForm {
    /// Schemas 1 and 2: each as its JSON.
    Json,
    /// Schemas 3 and 4: the first binary form (numbers at fixed width, texts without words).
    Binary,
}

impl OldForm {
    fn schema(self) -> u32 {
        match self {
            Self::Json => 2,
            Self::Binary => 4,
        }
    }

    fn first_byte(self) -> u8 {
        match self {
            Self::Json => b'{',
            Self::Binary => packed::BINARY,
        }
    }

    fn audit(self, r: &AuditRecord) -> Vec<u8> {
        match self {
            Self::Json => serde_json::to_vec(r).unwrap(),
            Self::Binary => {
                let mut out = vec![packed::BINARY];
                out.extend_from_slice(&r.at_ms.to_be_bytes());
                for text in [&r.actor, &r.action, &r.target] {
                    packed::put_text(&mut out, text);
                }
                packed::put_optional(&mut out, r.request_id.as_deref());
                packed::put_optional(&mut out, r.client_addr.as_deref());
                packed::put_value(&mut out, &r.details);
                out.extend_from_slice(&outpost::ids::unhex32(&r.prev_hash).unwrap());
                out
            }
        }
    }

    fn event(self, e: &Event) -> Vec<u8> {
        match self {
            Self::Json => serde_json::to_vec(e).unwrap(),
            Self::Binary => {
                let mut out = vec![packed::BINARY];
                for n in [e.gseq, e.epoch] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
                out.extend_from_slice(&e.at_ms.to_be_bytes());
                for text in [&e.topic, &e.kind, &e.actor] {
                    packed::put_text(&mut out, text);
                }
                packed::put_value(&mut out, &e.data);
                out
            }
        }
    }
}

/// A store from before schema 3 holds its audit records and events as JSON.
#[tokio::test]
async fn a_chain_stored_as_json_goes_on_in_binary_and_verifies_whole() {
    a_chain_stored_in_an_older_form_goes_on_and_verifies_whole(OldForm::Json).await;
}

/// A store from before schema 5 holds them in the first binary form.
#[tokio::test]
async fn a_chain_stored_in_the_first_binary_form_goes_on_compact_and_verifies_whole() {
    a_chain_stored_in_an_older_form_goes_on_and_verifies_whole(OldForm::Binary).await;
}

/// Opened by this build, a store with records in an older form is migrated without a rewrite:
/// the old records stay as they are, new ones are compact, the API lists both alike, and the
/// chain verifies across the change and detects tampering on either side.
async fn a_chain_stored_in_an_older_form_goes_on_and_verifies_whole(form: OldForm) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(crate::support::config_for(dir.path())).await;
    let org = s.create_org(&slug("old")).await;
    let id: outpost::ids::Id = org["id"].as_str().unwrap().parse().unwrap();
    let rename = |s: &TestServer, name: &str| {
        s.http.patch(s.url(&format!("/v1/orgs/{id}"))).bearer_auth(&s.key).json(&serde_json::json!({ "name": name }))
    };
    assert_eq!(rename(&s, "first").send().await.unwrap().status(), 200);
    let before: Value = s.get(&format!("/v1/orgs/{id}/audit")).send().await.unwrap().json().await.unwrap();
    let events_before: Value = s.get(&format!("/v1/orgs/{id}/events")).send().await.unwrap().json().await.unwrap();
    s.stop().await;
    // What the older schema stored.
    let stored = edit(dir.path(), |txn| {
        rewrite(txn, EVENTS, |k, v| form.event(&Event::from_stored(k, v).unwrap()));
        let schema = form.schema();
        txn.open_table(META.def)
            .unwrap()
            .insert(b"schema_version".as_slice(), schema.to_be_bytes().as_slice())
            .unwrap();
        if schema < 4 {
            crate::store::topic_index_as_schema_3(txn);
        }
        rewrite(txn, AUDIT, |k, v| form.audit(&AuditRecord::from_stored(k, v).unwrap()))
    });
    let old = before["items"].as_array().unwrap().len();
    assert!(old >= 2 && stored >= old, "{old} records of the organization's, {stored} in all");
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "the old chain verifies: {out}");

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

    // Both forms are in the tables, and tampering with either is found.
    let (forms, event_forms) = edit(dir.path(), |txn| {
        let t = txn.open_table(AUDIT.def).unwrap();
        let e = txn.open_table(EVENTS.def).unwrap();
        let first = |v: Option<redb::AccessGuard<'_, &[u8]>>| v.unwrap().value()[0];
        (
            (1..=old as u64 + 1).map(|n| first(t.get(org_seq_key(id, n).as_slice()).unwrap())).collect::<Vec<u8>>(),
            (1..=was.len() as u64 + 1)
                .map(|n| first(e.get(org_seq_key(id, n).as_slice()).unwrap()))
                .collect::<Vec<u8>>(),
        )
    });
    for stored in [&forms[..old], &event_forms[..was.len()]] {
        assert!(stored.iter().all(|b| *b == form.first_byte()), "{form:?}: {stored:?}");
    }
    assert_eq!((forms[old], event_forms[was.len()]), (packed::COMPACT, packed::COMPACT));
    for (n, which) in [(old as u64, "old"), (old as u64 + 1, "compact")] {
        let key = org_seq_key(id, n);
        let original = edit(dir.path(), |txn| {
            let mut t = txn.open_table(AUDIT.def).unwrap();
            let stored = t.get(key.as_slice()).unwrap().unwrap().value().to_vec();
            let mut rec = AuditRecord::from_stored(&key, &stored).unwrap();
            rec.actor.push('!');
            let altered = if stored[0] == packed::COMPACT { rec.to_stored() } else { form.audit(&rec) };
            t.insert(key.as_slice(), altered.as_slice()).unwrap();
            stored
        });
        let (code, out) = verify(dir.path());
        assert_eq!(code, 1, "an altered {which} record: {out}");
        assert!(out.contains(&format!("record {n}")) && out.contains("altered"), "{which}: {out}");
        edit(dir.path(), |txn| {
            txn.open_table(AUDIT.def).unwrap().insert(key.as_slice(), original.as_slice()).unwrap();
        });
    }
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");
}
