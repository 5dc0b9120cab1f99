//! Webhook delivery against a running server, with the receiver in this process:
//!
//! * `ceiling`: the receiver's own ceiling: C connections POST a delivery-sized body to it as
//!   fast as it answers, for D seconds (requests per second).
//! * `deliver`: E endpoints (one path each) are registered, taking `task.created`; then
//!   - burst: N tasks are posted as fast as the server takes them, and the clock runs until
//!     every one has reached every endpoint (deliveries per second);
//!   - steady: tasks are posted at R a second for D seconds; the lag of each delivery (its
//!     arrival minus the event's commit time, both this machine's clock) is reported as
//!     p50/p99.
//!
//! `benches/webhooks.sh` starts the server and runs both.

#[path = "loadkit/mod.rs"]
mod loadkit;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadkit::{arg, percentile};
use poem::web::Data;
use poem::{EndpointExt, Route, handler, post};
use serde_json::{Value, json};

struct Received {
    count: AtomicU64,
    lags_ms: std::sync::Mutex<Vec<u32>>,
    record_lag: std::sync::atomic::AtomicBool,
}

#[handler]
async fn hook(body: poem::Body, seen: Data<&Arc<Received>>) -> poem::http::StatusCode {
    let Ok(bytes) = body.into_bytes().await else { return poem::http::StatusCode::BAD_REQUEST };
    let now = now_ms();
    seen.count.fetch_add(1, Ordering::Relaxed);
    if seen.record_lag.load(Ordering::Relaxed) {
        let at = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["timestamp"].as_str().map(str::to_owned))
            .and_then(|t| time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok())
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64);
        if let Some(at) = at {
            let lag = u32::try_from((now - at).max(0)).unwrap_or(u32::MAX);
            seen.lags_ms.lock().expect("load program").push(lag);
        }
    }
    poem::http::StatusCode::NO_CONTENT
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("load program").as_millis() as i64
}

async fn start_receiver(seen: Arc<Received>) -> String {
    loadkit::serve_loopback(Route::new().at("/hook/:n", post(hook)).data(seen), 0).await
}

async fn ceiling(base: &str, conns: usize, seconds: f64, seen: &Arc<Received>) {
    let body = json!({
        "type": "task.created",
        "timestamp": "2026-12-05T07:00:00.000Z",
        "data": { "org_id": "0193", "topic": "org", "seq": 1, "actor": "user:0193", "data": { "id": "x", "title": "t" } },
    })
    .to_string();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (client, body, url) = (client.clone(), body.clone(), format!("{base}/hook/{i}"));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
                assert!(r.is_ok_and(|r| r.status() == 204));
            }
        }));
    }
    for t in tasks {
        t.await.expect("load program");
    }
    let n = seen.count.load(Ordering::Relaxed);
    println!("ceiling_rps={:.0}", n as f64 / start.elapsed().as_secs_f64());
}

async fn post_task(client: &reqwest::Client, url: &str, token: &str, i: u64) {
    let r = client.post(format!("{url}/v1/tasks")).bearer_auth(token).json(&json!({ "title": format!("t{i}") })).send();
    let r = r.await.expect("load program");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
}

async fn wait_count(seen: &Received, n: u64, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while seen.count.load(Ordering::Relaxed) < n {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn deliver(url: &str, token: &str, receiver: &str, seen: &Arc<Received>) {
    let endpoints: u64 = arg("endpoints", "100").parse().expect("load program");
    let burst: u64 = arg("burst", "200").parse().expect("load program");
    let rate: f64 = arg("rate", "20").parse().expect("load program");
    let seconds: f64 = arg("seconds", "10").parse().expect("load program");
    let client = reqwest::Client::new();
    for i in 0..endpoints {
        let r = client
            .post(format!("{url}/v1/webhooks/endpoints"))
            .bearer_auth(token)
            .json(&json!({ "url": format!("{receiver}/hook/{i}"), "event_types": ["task.created"] }))
            .send()
            .await
            .expect("load program");
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
    }
    // Burst: posted by 8 clients as fast as they are taken.
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut posters = Vec::new();
    for _ in 0..8 {
        let (client, url, token, next) = (client.clone(), url.to_owned(), token.to_owned(), next.clone());
        posters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= burst {
                    return;
                }
                post_task(&client, &url, &token, i).await;
            }
        }));
    }
    for p in posters {
        p.await.expect("load program");
    }
    let posted = start.elapsed();
    let want = burst * endpoints;
    let done = wait_count(seen, want, Duration::from_secs(600)).await;
    let took = start.elapsed();
    println!(
        "burst_events={burst} endpoints={endpoints} deliveries={} posted_s={:.2} all_delivered={done} took_s={:.2} deliveries_per_s={:.0}",
        seen.count.load(Ordering::Relaxed),
        posted.as_secs_f64(),
        took.as_secs_f64(),
        seen.count.load(Ordering::Relaxed) as f64 / took.as_secs_f64()
    );
    // Steady: R tasks a second, each delivered to every endpoint; lag per delivery.
    seen.record_lag.store(true, Ordering::Relaxed);
    let before = seen.count.load(Ordering::Relaxed);
    let total = (rate * seconds) as u64;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..total {
        tick.tick().await;
        let (client, url, token) = (client.clone(), url.to_owned(), token.to_owned());
        tokio::spawn(async move { post_task(&client, &url, &token, burst + i).await });
    }
    let done = wait_count(seen, before + total * endpoints, Duration::from_secs(120)).await;
    let mut lags = seen.lags_ms.lock().expect("load program").clone();
    lags.sort_unstable();
    println!(
        "steady_rate={rate} endpoints={endpoints} deliveries_per_s={:.0} all_delivered={done} lag_p50_ms={} lag_p99_ms={} lag_max_ms={}",
        rate * endpoints as f64,
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0)
    );
}

#[tokio::main]
async fn main() {
    let seen = Arc::new(Received {
        count: AtomicU64::new(0),
        lags_ms: std::sync::Mutex::new(Vec::new()),
        record_lag: std::sync::atomic::AtomicBool::new(false),
    });
    let receiver = start_receiver(seen.clone()).await;
    match arg("mode", "deliver").as_str() {
        "ceiling" => {
            ceiling(
                &receiver,
                arg("conns", "64").parse().expect("load program"),
                arg("seconds", "8").parse().expect("load program"),
                &seen,
            )
            .await;
        }
        _ => deliver(&arg("url", ""), &arg("token", ""), &receiver, &seen).await,
    }
}
