//! Crash safety: a real server under concurrent write load is killed with SIGKILL at random
//! moments, again and again. After each kill, every acknowledged write is in the store, the
//! event log has no gap, the followers' checkpoints are within it, and the audit chains verify.
//!
//! Every cycle also has other work in flight when the kill comes, in turn: an online backup
//! (one that said it finished must restore), updates to a shared document compacted every 16
//! updates (every acknowledged change is in its state at the next start), and the search
//! follower catching up on what was written while it was down (the kill comes soon after a
//! start). Retention keeps no event the followers have applied, so every start's first
//! retention pass trims the log while the rest goes on; after each kill the log still holds
//! everything after the slowest follower's checkpoint, each organization's log is dense from
//! its first kept event, and the global order agrees with them.
//!
//! The suite runs 24 cycles; `CRASH_CYCLES=200 cargo nextest run -E
//! 'test(acknowledged_writes_survive_sigkill)'` is the long run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost::ids::{Id, random_u64};
use outpost::store::tables::{self, EVENT_HEADS, EVENTS, FOLLOWERS, LOG_ORDER, ORGS};
use outpost::store::{Store, prefix_end};
use serde_json::{Value, json};
use yrs::updates::decoder::Decode as _;
use yrs::{Doc, GetString as _, Text as _, Transact as _, Update};

use crate::support::{ChildServer, cli};

const WRITERS: usize = 16;

fn cycles() -> usize {
    std::env::var("CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

/// The text of document `doc` as the server at `base` has it.
async fn doc_text(http: &reqwest::Client, base: &str, token: &str, doc: &str) -> String {
    let r = http.get(format!("{base}/v1/docs/{doc}/state")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let state = r.bytes().await.unwrap();
    let d = Doc::new();
    d.transact_mut().apply_update(Update::decode_v1(&state).unwrap()).unwrap();
    let t = d.get_or_insert_text("text");
    t.get_string(&d.transact())
}

/// A change made by a client of its own: `mark` inserted at the start of the text.
fn change(mark: &str) -> Vec<u8> {
    let d = Doc::new();
    let t = d.get_or_insert_text("text");
    let mut txn = d.transact_mut();
    t.insert(&mut txn, 0, mark);
    txn.encode_update_v1()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let (code, key, _) = cli(&["operator", "create-key", "--data", &data], &[], None);
    assert_eq!(code, 0);
    let key = key.trim().to_owned();
    // Documents compact every 16 updates; retention keeps no event the followers have applied,
    // so each start's first retention pass trims while the writers write and search catches up.
    let env = [("OUTPOST_DOCS__COMPACT_AFTER_UPDATES", "16"), ("OUTPOST_EVENTS__RETENTION_AGE_S", "0")];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    // A member with a document, made before the first kill.
    let (doc, slug) = {
        let server = ChildServer::start_with_env(dir.path(), &env);
        let s = crate::support::TestServer::attached(server.base.clone(), key.clone());
        let (org, slug) = crate::identity::create_org(&s).await;
        crate::identity::operator_invite_and_accept(&s, &org, "cy@example.org", "member").await;
        let token = crate::identity::login(&s, &slug, "cy").await.access;
        let room = crate::support::post_json(&s, &token, "/v1/rooms", json!({ "name": "r" })).await;
        let room = room["id"].as_str().unwrap();
        let doc =
            crate::support::post_json(&s, &token, &format!("/v1/rooms/{room}/docs"), json!({ "name": "d" })).await;
        (doc["id"].as_str().unwrap().to_owned(), slug)
    };
    let mut all_acked: HashSet<Id> = HashSet::new();
    let mut trimmed = 0;
    let mut marks_acked: Vec<String> = Vec::new();
    let (mut backups_finished, mut backups_cut) = (0, 0);
    let cycles = cycles();
    for cycle in 0..cycles {
        let server = ChildServer::start_with_env(dir.path(), &env);
        let s = crate::support::TestServer::attached(server.base.clone(), key.clone());
        let token = crate::identity::login(&s, &slug, "cy").await.access;
        // Every change acknowledged before the last kill is in the document.
        let text = doc_text(&http, &server.base, &token, &doc).await;
        for m in &marks_acked {
            assert!(text.contains(m.as_str()), "cycle {cycle}: acknowledged change {m} lost");
        }
        let acked = Arc::new(Mutex::new(Vec::<Id>::new()));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let (http, url, key, acked) =
                (http.clone(), format!("{}/v1/orgs", server.base), key.clone(), acked.clone());
            writers.spawn(async move {
                for i in 0.. {
                    let body = json!({ "slug": format!("c{cycle}w{w}n{i}"), "name": "crash" });
                    // Connection errors are expected once the server dies; they are not acks.
                    let Ok(r) = http.post(&url).bearer_auth(&key).json(&body).send().await else {
                        return;
                    };
                    if r.status() != 201 {
                        return;
                    }
                    let Ok(v) = r.json::<Value>().await else {
                        return;
                    };
                    acked.lock().unwrap().push(v["id"].as_str().unwrap().parse().unwrap());
                }
            });
        }
        let marks = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut backup = None;
        let backup_file = dir.path().join(format!("cycle{cycle}.backup"));
        match cycle % 3 {
            // A backup in flight (through the running server's admin socket), begun after some
            // load and killed a moment later: during it, or just after it finished.
            0 => {
                tokio::time::sleep(Duration::from_millis(60 + random_u64() % 200)).await;
                let (data, out) = (data.clone(), backup_file.to_str().unwrap().to_owned());
                backup = Some(std::thread::spawn(move || cli(&["backup", "--out", &out, "--data", &data], &[], None)));
            }
            // Changes to the document, compacted every 16.
            1 => {
                let (http, base, token, doc, marks) =
                    (http.clone(), server.base.clone(), token.clone(), doc.clone(), marks.clone());
                writers.spawn(async move {
                    for i in 0.. {
                        let mark = format!("<{cycle}.{i}>");
                        let r = http
                            .post(format!("{base}/v1/docs/{doc}/updates"))
                            .bearer_auth(&token)
                            .header("content-type", "application/octet-stream")
                            .body(change(&mark))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => marks.lock().unwrap().push(mark),
                            _ => return,
                        }
                    }
                });
            }
            // The search follower is still catching up on the writes the last cycles made
            // while it was down: the kill comes soon after the start.
            _ => {}
        }
        let wait = match cycle % 3 {
            0 => random_u64() % 40,
            1 => 60 + random_u64() % 340,
            _ => 10 + random_u64() % 60,
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill9();
        while writers.join_next().await.is_some() {}
        let new_acked: Vec<Id> = acked.lock().unwrap().clone();
        all_acked.extend(new_acked.iter().copied());
        marks_acked.extend(marks.lock().unwrap().iter().cloned());
        if let Some(b) = backup {
            let (code, _, err) = b.join().unwrap();
            // A backup that said it finished is whole: it restores.
            if code == 0 {
                backups_finished += 1;
                let target = tempfile::tempdir().unwrap();
                let (code, _, err) = cli(
                    &["restore", "--from", backup_file.to_str().unwrap(), "--data", target.path().to_str().unwrap()],
                    &[],
                    None,
                );
                assert_eq!(code, 0, "cycle {cycle}: a finished backup does not restore: {err}");
            } else {
                backups_cut += 1;
                assert!(!err.is_empty(), "cycle {cycle}: a failed backup says why");
            }
            let _ = std::fs::remove_file(&backup_file);
            // Nothing of a cut-off backup is left behind.
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".partial"))
                .collect();
            assert!(left.is_empty(), "cycle {cycle}: a backup left {left:?}");
        }
        // The whole store is read every cycle in the suite's run; in a long run, every 20th
        // cycle and the last (each read grows with the store), and the cycle's own writes always.
        let whole = cycles <= 24 || cycle % 20 == 19 || cycle + 1 == cycles;
        if whole {
            trimmed = check_store(dir.path(), &all_acked, true, cycle);
        } else {
            check_store(dir.path(), &new_acked, false, cycle);
        }
    }
    assert!(all_acked.len() > cycles * 10, "too little load to mean anything: {}", all_acked.len());
    assert!(marks_acked.len() > cycles, "too few document changes to mean anything: {}", marks_acked.len());
    assert!(trimmed > 0, "retention never trimmed the log");
    println!(
        "crash cycles: {cycles}; {} writes and {} document changes acknowledged, all kept; {backups_finished} backups finished before their kill and restored, {backups_cut} cut off by it; {trimmed} events trimmed by retention",
        all_acked.len(),
        marks_acked.len()
    );
    // The last cycle's changes, after one more start.
    let server = ChildServer::start_with_env(dir.path(), &env);
    let s = crate::support::TestServer::attached(server.base.clone(), key.clone());
    let token = crate::identity::login(&s, &slug, "cy").await.access;
    let text = doc_text(&http, &server.base, &token, &doc).await;
    assert!(marks_acked.iter().all(|m| text.contains(m.as_str())), "an acknowledged change was lost");
}

/// Every org of `acked` is in the store; with `whole`, the logs, the audit chains and the
/// creation events of them all are checked too.
/// Answers how many events retention has trimmed (with `whole`; 0 without).
fn check_store<'a>(dir: &std::path::Path, acked: impl IntoIterator<Item = &'a Id>, whole: bool, cycle: usize) -> u64 {
    let (store, _) = Store::open(dir, &mut |_| {}).unwrap();
    let r = store.reader().unwrap();
    let acked: HashSet<Id> = acked.into_iter().copied().collect();
    for id in &acked {
        assert!(r.get(ORGS, id.as_bytes()).unwrap().is_some(), "cycle {cycle}: acknowledged org {id} lost");
    }
    let gseq = r.meta_u64("gseq").unwrap().unwrap();
    // A follower never claims more than the log holds, and retention never removed what the
    // slowest one has yet to apply: the global order is whole after it.
    let mut hold = gseq;
    r.for_each(FOLLOWERS, |k, v| {
        let at = tables::u64_be(v).unwrap();
        assert!(at <= gseq, "cycle {cycle}: follower {} at {at}, past the log's {gseq}", String::from_utf8_lossy(k));
        hold = hold.min(at);
        Ok(true)
    })
    .unwrap();
    let after_hold = r.range(LOG_ORDER, &(hold + 1).to_be_bytes(), &[0xff; 8], false, usize::MAX).unwrap();
    let kept: Vec<u64> = after_hold.iter().map(|(k, _)| tables::u64_be(k).unwrap()).collect();
    assert_eq!(kept, (hold + 1..=gseq).collect::<Vec<_>>(), "cycle {cycle}: the log lost events a follower needs");
    if !whole {
        return 0;
    }
    // Each org's log is dense from its first kept event (retention trims a prefix) to its
    // head, and the global order holds exactly the events kept.
    let mut total = 0u64;
    let mut whole_logs: HashSet<Id> = HashSet::new();
    r.for_each(EVENT_HEADS, |k, v| {
        let org = Id::from_slice(k).unwrap();
        let head = tables::u64_be(v).unwrap();
        let rows = r.range(EVENTS, org.as_bytes(), &prefix_end(org.as_bytes()), false, usize::MAX).unwrap();
        let seqs: Vec<u64> = rows.iter().map(|(k, _)| tables::split_org_seq(k).unwrap().1).collect();
        let first = seqs.first().copied().unwrap_or(head + 1);
        assert_eq!(seqs, (first..=head).collect::<Vec<_>>(), "cycle {cycle}: gap in org {org}'s log");
        if first == 1 {
            whole_logs.insert(org);
        }
        total += seqs.len() as u64;
        Ok(true)
    })
    .unwrap();
    assert_eq!(r.len(LOG_ORDER).unwrap(), total, "cycle {cycle}: global order and org logs disagree");
    let v = r.verify_audit(&mut |_, _| {}).unwrap();
    assert!(v.ok(), "cycle {cycle}: {v:?}");
    // Every acknowledged org whose log retention has not trimmed has its creation event.
    let created: HashSet<Id> = r
        .range(EVENTS, &[], &[0xff; 25], false, usize::MAX)
        .unwrap()
        .iter()
        .filter_map(|(k, v)| {
            let e = outpost::store::events::Event::from_stored(k, v).unwrap();
            (e.kind == "org.created").then(|| e.data["id"].as_str().unwrap().parse().unwrap())
        })
        .collect();
    let missing: Vec<&Id> = acked.iter().filter(|o| whole_logs.contains(o) && !created.contains(o)).collect();
    assert!(missing.is_empty(), "cycle {cycle}: acknowledged orgs without their event: {missing:?}");
    gseq - total
}
