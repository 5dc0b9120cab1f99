//! Document storage load against a running Outpost, driven by `benches/docs.sh`:
//!
//! * `fill`: appends N small updates (one character each, as an editor typing) to one document
//!   over REST with C requests in flight; reports updates per second.
//! * `create`: creates N small documents in a room (a short paragraph each), writing their ids
//!   to a file.
//! * `touch`: reads the JSON of every document in that file (which loads it), on a freshly
//!   started server, in two halves; reports the server's RSS before, between and after, and
//!   what each document of the second half added.
//! * `load`: times the first read of a document's state after a restart (the load from the
//!   store: snapshot plus stored updates), and a second, warm read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

struct Args {
    mode: String,
    url: String,
    token: String,
    doc: String,
    room: String,
    ids: String,
    n: usize,
    concurrency: usize,
    pid: u32,
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        url: String::new(),
        token: String::new(),
        doc: String::new(),
        room: String::new(),
        ids: String::new(),
        n: 1000,
        concurrency: 32,
        pid: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--mode" => a.mode = v(),
            "--url" => a.url = v(),
            "--token" => a.token = v(),
            "--doc" => a.doc = v(),
            "--room" => a.room = v(),
            "--ids" => a.ids = v(),
            "--n" => a.n = v().parse().expect("--n"),
            "--concurrency" => a.concurrency = v().parse().expect("--concurrency"),
            "--pid" => a.pid = v().parse().expect("--pid"),
            _ => {}
        }
    }
    a
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `n` updates, each typing one more character at the end of text "text", as one client.
fn typing(n: usize) -> Vec<Vec<u8>> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("text");
    (0..n)
        .map(|i| {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, &((b'a' + (i % 26) as u8) as char).to_string());
            txn.encode_update_v1()
        })
        .collect()
}

async fn post_update(http: &reqwest::Client, a: &Args, doc: &str, update: Vec<u8>) {
    let r = http
        .post(format!("{}/v1/docs/{doc}/updates", a.url))
        .bearer_auth(&a.token)
        .header("content-type", "application/octet-stream")
        .body(update)
        .send()
        .await
        .expect("post update");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

async fn fill(a: Arc<Args>) {
    let updates = Arc::new(typing(a.n));
    let http = reqwest::Client::new();
    let started = Instant::now();
    let a2 = a.clone();
    each(a.n, a.concurrency, move |i| {
        let (a, http, updates) = (a2.clone(), http.clone(), updates.clone());
        async move { post_update(&http, &a, &a.doc, updates[i].clone()).await }
    })
    .await;
    let s = started.elapsed().as_secs_f64();
    println!("RESULT mode=fill updates={} seconds={s:.2} updates_per_s={:.0}", a.n, a.n as f64 / s);
}

/// Runs `work(i)` for i in 0..n with `concurrency` in flight.
async fn each<F, Fut>(n: usize, concurrency: usize, work: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (next, work) = (Arc::new(AtomicU64::new(0)), Arc::new(work));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, work) = (next.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                work(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
}

async fn create(a: Arc<Args>) {
    let http = reqwest::Client::new();
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(a.n)));
    // A small document: a short paragraph, typed as 20 updates merged into one.
    let paragraph = Arc::new(yrs::merge_updates_v1(typing(20)).expect("merge"));
    let started = Instant::now();
    let (a2, ids2) = (a.clone(), ids.clone());
    each(a.n, a.concurrency, move |_| {
        let (a, http, ids, paragraph) = (a2.clone(), http.clone(), ids2.clone(), paragraph.clone());
        async move {
            let r = http
                .post(format!("{}/v1/rooms/{}/docs", a.url, a.room))
                .bearer_auth(&a.token)
                .json(&json!({ "name": "small" }))
                .send()
                .await
                .expect("create");
            let d: Value = r.json().await.expect("doc");
            let id = d["id"].as_str().expect("id").to_owned();
            post_update(&http, &a, &id, paragraph.to_vec()).await;
            ids.lock().expect("ids").push(id);
        }
    })
    .await;
    let ids = ids.lock().expect("ids").join("\n");
    std::fs::write(&a.ids, ids).expect("write ids");
    println!("RESULT mode=create docs={} seconds={:.1}", a.n, started.elapsed().as_secs_f64());
}

async fn touch(a: Arc<Args>) {
    let ids: Vec<String> = std::fs::read_to_string(&a.ids).expect("ids file").lines().map(str::to_owned).collect();
    let half = ids.len() / 2;
    let before = rss_kb(a.pid);
    // The first half also pays for what is made once (threads of the blocking pool, caches,
    // connections); the second half shows what one more loaded document costs.
    load_all(&a, ids[..half].to_vec()).await;
    let middle = rss_kb(a.pid);
    load_all(&a, ids[half..].to_vec()).await;
    let after = rss_kb(a.pid);
    println!(
        "RESULT mode=touch docs={} rss_before_kb={before} rss_half_kb={middle} rss_after_kb={after} per_doc_bytes={:.0}",
        ids.len(),
        (after.saturating_sub(middle) * 1024) as f64 / (ids.len() - half) as f64
    );
}

/// Reads the JSON of each document (loading it).
async fn load_all(a: &Arc<Args>, ids: Vec<String>) {
    let http = reqwest::Client::new();
    let (a2, ids) = (a.clone(), Arc::new(ids));
    each(ids.len(), a.concurrency, move |i| {
        let (a, http, ids) = (a2.clone(), http.clone(), ids.clone());
        async move {
            let r = http.get(format!("{}/v1/docs/{}/json", a.url, ids[i])).bearer_auth(&a.token).send().await;
            assert_eq!(r.expect("json").status(), 200);
        }
    })
    .await;
}

async fn load(a: Arc<Args>) {
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    let mut len = 0;
    for _ in 0..2 {
        let started = Instant::now();
        let r =
            http.get(format!("{}/v1/docs/{}/state", a.url, a.doc)).bearer_auth(&a.token).send().await.expect("state");
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.expect("body");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let doc = Doc::new();
        doc.transact_mut().apply_update(Update::decode_v1(&bytes).expect("update")).expect("apply");
        let text = doc.get_or_insert_text("text");
        len = text.get_string(&doc.transact()).len();
    }
    let meta: Value = http
        .get(format!("{}/v1/docs/{}", a.url, a.doc))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    println!(
        "RESULT mode=load first_ms={:.1} warm_ms={:.1} text_chars={len} pending_updates={} stored_bytes={} compactions={}",
        times[0], times[1], meta["pending_updates"], meta["stored_bytes"], meta["compactions"]
    );
}

fn main() {
    let a = Arc::new(args());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        match a.mode.as_str() {
            "fill" => fill(a).await,
            "create" => create(a).await,
            "touch" => touch(a).await,
            "load" => load(a).await,
            m => panic!("unknown --mode {m:?} (fill, create, touch, load)"),
        }
    });
}
