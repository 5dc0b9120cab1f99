//! Crash safety: a real server under concurrent write load is killed with SIGKILL at random
//! moments, again and again. After each kill, every acknowledged write is in the store, the
//! event log has no gap, and the audit chains verify.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost::ids::{Id, random_u64};
use outpost::store::tables::{self, EVENT_HEADS, EVENTS, LOG_ORDER, ORGS};
use outpost::store::{Store, prefix_end};
use serde_json::{Value, json};

use crate::support::{ChildServer, cli};

const CYCLES: usize = 24;
const WRITERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (code, key, _) = cli(&["operator", "create-key", "--data", dir.path().to_str().unwrap()], &[], None);
    assert_eq!(code, 0);
    let key = key.trim().to_owned();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut all_acked: HashSet<Id> = HashSet::new();
    for cycle in 0..CYCLES {
        let server = ChildServer::start(dir.path());
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
        tokio::time::sleep(Duration::from_millis(60 + random_u64() % 340)).await;
        server.kill9();
        while writers.join_next().await.is_some() {}
        all_acked.extend(acked.lock().unwrap().iter().copied());
        check_store(dir.path(), &all_acked, cycle);
    }
    assert!(all_acked.len() > CYCLES * 10, "too little load to mean anything: {}", all_acked.len());
}

fn check_store(dir: &std::path::Path, acked: &HashSet<Id>, cycle: usize) {
    let (store, _) = Store::open(dir, &mut |_| {}).unwrap();
    let r = store.reader().unwrap();
    for id in acked {
        assert!(r.get(ORGS, id.as_bytes()).unwrap().is_some(), "cycle {cycle}: acknowledged org {id} lost");
    }
    // Each org's log is dense from 1 to its head, and every event is in the global order.
    let mut total = 0u64;
    r.for_each(EVENT_HEADS, |k, v| {
        let org = Id::from_slice(k).unwrap();
        let head = tables::u64_be(v).unwrap();
        let rows = r.range(EVENTS, org.as_bytes(), &prefix_end(org.as_bytes()), false, usize::MAX).unwrap();
        let seqs: Vec<u64> = rows.iter().map(|(k, _)| tables::split_org_seq(k).unwrap().1).collect();
        assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "cycle {cycle}: gap in org {org}'s log");
        total += head;
        Ok(true)
    })
    .unwrap();
    let gseq = r.meta_u64("gseq").unwrap().unwrap();
    assert_eq!(gseq, total, "cycle {cycle}: global order and org logs disagree");
    assert_eq!(r.len(LOG_ORDER).unwrap(), gseq);
    let v = r.verify_audit(&mut |_, _| {}).unwrap();
    assert!(v.ok(), "cycle {cycle}: {v:?}");
    // Every acknowledged org has its creation event.
    let created: HashSet<Id> = r
        .range(EVENTS, &[], &[0xff; 25], false, usize::MAX)
        .unwrap()
        .iter()
        .filter_map(|(_, v)| {
            let e: Value = serde_json::from_slice(v).unwrap();
            (e["type"] == "org.created").then(|| e["data"]["id"].as_str().unwrap().parse().unwrap())
        })
        .collect();
    assert!(acked.is_subset(&created), "cycle {cycle}: an acknowledged org has no event");
}
