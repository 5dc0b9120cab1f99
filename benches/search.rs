//! Search at scale: a server holding a million messages (posted over HTTP, so the search
//! follower indexes them as they commit), then
//!
//! * **indexing rate**: how fast the follower kept up during the load, and a full rebuild
//!   from the store (`outpost reindex`), in documents per second;
//! * **query latency** over HTTP (`GET /v1/search`), p50/p99 per query shape: a common word,
//!   a rare word, two words, a phrase, a typo; a tenth of the channels are private to someone
//!   else, so permission filtering is in the path;
//! * **index lag under steady posting**: a steady stream of posts, and for a sample of them the
//!   time from the post's acknowledgement until search finds it;
//! * **index size** on disk, beside the store's.
//!
//!   cargo bench --bench search                                   # 1,000,000 messages in /var/tmp
//!   cargo bench --bench search -- --messages 100000 --dir /tmp   # a quicker look

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    messages: u64,
    dir: PathBuf,
    clients: usize,
    queries: usize,
    steady_rate: u64,
    steady_seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        messages: 1_000_000,
        dir: PathBuf::from("/var/tmp"),
        clients: 64,
        queries: 400,
        steady_rate: 1000,
        steady_seconds: 15,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--messages" => a.messages = v().parse().unwrap_or(a.messages),
            "--dir" => a.dir = PathBuf::from(v()),
            "--clients" => a.clients = v().parse().unwrap_or(a.clients),
            "--queries" => a.queries = v().parse().unwrap_or(a.queries),
            "--steady-rate" => a.steady_rate = v().parse().unwrap_or(a.steady_rate),
            "--steady-seconds" => a.steady_seconds = v().parse().unwrap_or(a.steady_seconds),
            _ => {}
        }
    }
    a
}

/// A small deterministic generator (xorshift), so every run posts the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 20,000 pronounceable words; low indexes are drawn far more often (a skewed, Zipf-like
/// vocabulary, as in real chat).
fn vocabulary() -> Vec<String> {
    const ON: [&str; 16] = ["b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "k", "st", "pr"];
    const NU: [&str; 6] = ["a", "e", "i", "o", "u", "ai"];
    let mut words = Vec::with_capacity(20_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    while words.len() < 20_000 {
        let syllables = 2 + rng.below(2);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ON[rng.below(16) as usize]);
            w.push_str(NU[rng.below(6) as usize]);
        }
        if !words.contains(&w) {
            words.push(w);
        }
    }
    words
}

fn sentence(rng: &mut Rng, vocab: &[String]) -> String {
    let n = 5 + rng.below(20);
    let mut out = String::new();
    for i in 0..n {
        // u^3 skews towards the front of the vocabulary.
        let u = (rng.below(1 << 20) as f64) / f64::from(1 << 20);
        let idx = ((u * u * u) * vocab.len() as f64) as usize;
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&vocab[idx.min(vocab.len() - 1)]);
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| {
            let m = e.metadata().map_or((false, 0), |m| (m.is_dir(), m.len()));
            if m.0 { dir_bytes(&e.path()) } else { m.1 }
        })
        .sum()
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Makes one query of a shape.
type QueryMaker<'a> = Box<dyn Fn(&mut Rng) -> String + 'a>;

struct Who {
    access: String,
}

async fn setup(http: &reqwest::Client, base: &str, key: &str) -> (Who, Who, Vec<String>, Vec<String>) {
    let slug = format!("bench{}", std::process::id());
    let org: Value = http
        .post(format!("{base}/v1/orgs"))
        .bearer_auth(key)
        .json(&json!({ "slug": slug, "name": "Search bench" }))
        .send()
        .await
        .expect("org")
        .json()
        .await
        .expect("org json");
    let org_id = org["id"].as_str().expect("org id").to_owned();
    let mut people = Vec::new();
    for name in ["poster", "reader"] {
        let inv: Value = http
            .post(format!("{base}/v1/orgs/{org_id}/invitations"))
            .bearer_auth(key)
            .json(&json!({ "email": format!("{name}@example.org"), "role": "member" }))
            .send()
            .await
            .expect("invite")
            .json()
            .await
            .expect("invite json");
        let r = http
            .post(format!("{base}/v1/auth/invitations/accept"))
            .json(&json!({ "token": inv["token"], "username": name, "password": "correct horse battery" }))
            .send()
            .await
            .expect("accept");
        assert_eq!(r.status(), 200);
        let t: Value = http
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({ "org": slug, "login": name, "password": "correct horse battery" }))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login json");
        people.push(Who { access: t["access_token"].as_str().expect("token").to_owned() });
    }
    let reader = people.pop().expect("reader");
    let poster = people.pop().expect("poster");
    // 18 public channels and 2 private ones the reader is not in.
    let (mut public, mut private) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let kind = if i < 18 { "public" } else { "private" };
        let c: Value = http
            .post(format!("{base}/v1/channels"))
            .bearer_auth(&poster.access)
            .json(&json!({ "kind": kind, "name": format!("c{i}") }))
            .send()
            .await
            .expect("channel")
            .json()
            .await
            .expect("channel json");
        let id = c["id"].as_str().expect("channel id").to_owned();
        if i < 18 { public.push(id) } else { private.push(id) }
    }
    (poster, reader, public, private)
}

#[allow(clippy::too_many_lines, clippy::many_single_char_names)] // one report, phase after phase
fn main() {
    let a = args();
    let data = tempfile::Builder::new().prefix("outpost-search-bench").tempdir_in(&a.dir).expect("temp dir");
    let mut config = outpost::Config { data_dir: data.path().to_path_buf(), ..outpost::Config::default() };
    config.store.min_free_disk_bytes = 0;
    config.limits.user_requests_per_s = 10_000_000;
    config.limits.org_requests_per_s = 10_000_000;
    config.auth.access_ttl_s = 86_400;
    config.auth.refresh_ttl_s = 86_400;
    let c = config.clone();
    let (_, key) = outpost::commands::create_operator_key(&c, "bench").expect("operator key");

    // The server gets its own runtime (two workers, like the machine); the load its own.
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(outpost::run(listener, config.clone(), async move {
        let _ = stopped.await;
    }));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    rt.block_on(async {
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.get(format!("{base}/health/ready")).send().await.map_or(true, |r| r.status() != 200) {
            assert!(Instant::now() < deadline, "server not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (poster, reader, public, private) = setup(&http, &base, &key).await;
        let vocab = Arc::new(vocabulary());
        let poster = Arc::new(poster.access);
        let channels: Arc<Vec<String>> = Arc::new(public.iter().chain(private.iter()).cloned().collect());

        // 1. Load: every message over HTTP while the follower indexes behind.
        println!("loading {} messages with {} clients ...", a.messages, a.clients);
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..a.clients {
            let (http, base, poster, vocab, channels, next) =
                (http.clone(), base.clone(), poster.clone(), vocab.clone(), channels.clone(), next.clone());
            let total = a.messages;
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(0x1234_5678 + c as u64 * 7919);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let ch = &channels[(n % channels.len() as u64) as usize];
                    let text = sentence(&mut rng, &vocab);
                    let r = http
                        .post(format!("{base}/v1/channels/{ch}/messages"))
                        .bearer_auth(poster.as_str())
                        .json(&json!({ "text": text }))
                        .send()
                        .await
                        .expect("post");
                    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
                }
            }));
        }
        let mut max_lag = 0.0f64;
        while !tasks.iter().all(tokio::task::JoinHandle::is_finished) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            max_lag = max_lag.max(metric(&http, &base, "outpost_follower_lag_events{follower=\"search\"}").await);
            let done = next.load(Ordering::Relaxed).min(a.messages);
            if done % 100_000 < 8_000 {
                eprintln!("  {done} posted ({:.0}/s)", done as f64 / started.elapsed().as_secs_f64());
            }
        }
        for t in tasks {
            t.await.expect("poster");
        }
        let posted_s = started.elapsed().as_secs_f64();
        // The follower catches up.
        while metric(&http, &base, "outpost_follower_lag_events{follower=\"search\"}").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let followed_s = started.elapsed().as_secs_f64();
        println!(
            "load: {} messages posted in {posted_s:.1} s ({:.0}/s); the index followed in {followed_s:.1} s ({:.0} docs/s), lag at most {max_lag:.0} events",
            a.messages,
            a.messages as f64 / posted_s,
            a.messages as f64 / followed_s
        );

        // 2. Query latency.
        let mut rng = Rng(42);
        let shapes: [(&str, QueryMaker<'_>); 5] = [
            ("common word", Box::new(|r: &mut Rng| vocab[r.below(20) as usize].clone())),
            ("rare word", Box::new(|r: &mut Rng| vocab[10_000 + r.below(10_000) as usize].clone())),
            (
                "two words",
                Box::new(|r: &mut Rng| format!("{} {}", vocab[r.below(500) as usize], vocab[r.below(5000) as usize])),
            ),
            (
                "phrase",
                Box::new(|r: &mut Rng| format!("\"{} {}\"", vocab[r.below(50) as usize], vocab[r.below(50) as usize])),
            ),
            (
                "typo",
                Box::new(|r: &mut Rng| {
                    let mut w: Vec<char> = vocab[100 + r.below(2000) as usize].chars().collect();
                    w.swap(1, 2);
                    w.into_iter().collect()
                }),
            ),
        ];
        let mut all = Vec::new();
        println!("query latency over HTTP, {} queries per shape (ms):", a.queries);
        for (name, make) in &shapes {
            let mut lat = Vec::with_capacity(a.queries);
            let mut hits = 0u64;
            for _ in 0..a.queries {
                let q = make(&mut rng);
                let t = Instant::now();
                let r = http
                    .get(format!("{base}/v1/search"))
                    .query(&[("q", q.as_str())])
                    .bearer_auth(&reader.access)
                    .send()
                    .await
                    .expect("search");
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.expect("json");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                hits += v["items"].as_array().map_or(0, Vec::len) as u64;
                for h in v["items"].as_array().into_iter().flatten() {
                    let scope = h["scope"].as_str().unwrap_or_default();
                    assert!(!private.iter().any(|p| scope.ends_with(p.as_str())), "a private hit leaked");
                }
            }
            lat.sort_by(f64::total_cmp);
            println!(
                "  {name:<12} p50 {:>6.2}  p99 {:>6.2}  max {:>6.2}  ({:.1} hits/page)",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                lat.last().copied().unwrap_or(0.0),
                hits as f64 / a.queries as f64
            );
            all.extend(lat);
        }
        all.sort_by(f64::total_cmp);
        println!("  {:<12} p50 {:>6.2}  p99 {:>6.2}", "all", percentile(&all, 0.5), percentile(&all, 0.99));

        // 3. Lag under steady posting: ack → found, for every hundredth post.
        let interval = Duration::from_secs_f64(1.0 / a.steady_rate as f64);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let until = Instant::now() + Duration::from_secs(a.steady_seconds);
        let mut probes = Vec::new();
        let mut n = 0u64;
        while Instant::now() < until {
            tick.tick().await;
            n += 1;
            let (http, base, poster, ch) =
                (http.clone(), base.clone(), poster.clone(), public[(n % public.len() as u64) as usize].clone());
            let reader = reader.access.clone();
            probes.push(tokio::spawn(async move {
                let marker = format!("zq{n}x");
                let r = http
                    .post(format!("{base}/v1/channels/{ch}/messages"))
                    .bearer_auth(poster.as_str())
                    .json(&json!({ "text": format!("steady {marker}") }))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
                if n % 100 != 0 {
                    return None;
                }
                let acked = Instant::now();
                loop {
                    let v: Value = http
                        .get(format!("{base}/v1/search"))
                        .query(&[("q", format!("\"{marker}\"").as_str())])
                        .bearer_auth(&reader)
                        .send()
                        .await
                        .expect("search")
                        .json()
                        .await
                        .expect("json");
                    if v["items"].as_array().is_some_and(|a| !a.is_empty()) {
                        return Some(acked.elapsed().as_secs_f64() * 1000.0);
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }));
        }
        let mut lags: Vec<f64> = Vec::new();
        for p in probes {
            if let Some(l) = p.await.expect("probe") {
                lags.push(l);
            }
        }
        lags.sort_by(f64::total_cmp);
        println!(
            "steady posting at {}/s for {} s: acknowledged → searchable p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} probes; search commits at most every 500 ms)",
            a.steady_rate,
            a.steady_seconds,
            percentile(&lags, 0.5),
            percentile(&lags, 0.99),
            lags.last().copied().unwrap_or(0.0),
            lags.len()
        );

        // 4. Size, then a full rebuild from the store.
        let index_bytes = dir_bytes(&config.data_dir.join("search"));
        let store_bytes = std::fs::metadata(config.data_dir.join("outpost.redb")).map_or(0, |m| m.len());
        println!(
            "on disk: index {:.0} MiB, store {:.0} MiB",
            index_bytes as f64 / 1_048_576.0,
            store_bytes as f64 / 1_048_576.0
        );
        let c = config.clone();
        let t = Instant::now();
        let docs = tokio::task::spawn_blocking(move || outpost::commands::reindex(&c))
            .await
            .expect("join")
            .expect("reindex");
        let secs = t.elapsed().as_secs_f64();
        let docs: f64 = docs.parse().unwrap_or(0.0);
        println!("rebuild (outpost reindex, server running): {docs:.0} documents in {secs:.1} s ({:.0} docs/s)", docs / secs);
    });
    let _ = stop.send(());
    let _ = server_rt.block_on(server);
}
