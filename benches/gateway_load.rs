//! Gateway overhead against a running server, with the service in this process:
//!
//! * registers the service (its base URL this process's listener, an API key credential, the
//!   gateway's budget at its highest);
//! * latency: one connection each way, calls alternating direct / through the gateway, N of
//!   each; p50/p99 of both and what the gateway adds;
//! * throughput: C connections for D seconds straight to the service, then the same through the
//!   gateway (requests per second, and the ratio).
//!
//! `benches/gateway.sh` starts the server and runs it.

#[path = "loadkit/mod.rs"]
mod loadkit;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadkit::{arg, percentile};
use poem::{Route, get, handler};
use serde_json::{Value, json};

/// What a typical JSON API answers for one item (about 200 bytes).
#[handler]
fn item(req: &poem::Request) -> poem::Response {
    let key = req.header("x-api-key").unwrap_or_default();
    if key != "bench-key" {
        return poem::Response::builder().status(poem::http::StatusCode::UNAUTHORIZED).finish();
    }
    poem::Response::builder().content_type("application/json").body(
        json!({ "id": 42, "title": "printer on fire", "state": "open", "assignee": "ada", "tags": ["ops", "urgent"],
                "updated_at": "2026-12-05T07:00:00Z", "path": req.uri().path() })
        .to_string(),
    )
}

/// One call; its time in microseconds.
async fn once(client: &reqwest::Client, url: &str, token: Option<&str>) -> f64 {
    let started = Instant::now();
    let req = client.get(url).header("x-api-key", "bench-key");
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let r = req.send().await.expect("load program");
    assert_eq!(r.status(), 200, "{url}: {:?}", r.text().await);
    r.bytes().await.expect("load program");
    started.elapsed().as_secs_f64() * 1e6
}

async fn throughput(urls: Arc<Vec<String>>, token: Option<String>, conns: usize, seconds: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (urls, token, done) = (urls.clone(), token.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            // One connection per task, kept alive.
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("load program");
            let mut i = c;
            while Instant::now() < deadline {
                once(&client, &urls[i % urls.len()], token.as_deref()).await;
                done.fetch_add(1, Ordering::Relaxed);
                i += conns;
            }
        }));
    }
    for t in tasks {
        t.await.expect("load program");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let url = arg("url", "");
    let token = arg("token", "");
    let calls: usize = arg("calls", "2000").parse().expect("load program");
    let conns: usize = arg("conns", "32").parse().expect("load program");
    let seconds: f64 = arg("seconds", "8").parse().expect("load program");
    let base = loadkit::serve_loopback(Route::new().at("/items/:n", get(item))).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{url}/v1/services"))
        .bearer_auth(&token)
        .json(&json!({
            "name": "bench",
            "base_url": base,
            "credential": { "kind": "api_key", "secret": "bench-key" },
            "gateway": { "rate_per_s": 100_000, "retries": 0 },
        }))
        .send()
        .await
        .expect("load program");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let made: Value = r.json().await.expect("load program");
    let id = made["service"]["id"].as_str().expect("load program").to_owned();
    let direct: Vec<String> = (0..64).map(|i| format!("{base}/items/{i}")).collect();
    let proxied: Vec<String> = (0..64).map(|i| format!("{url}/v1/services/{id}/proxy/items/{i}")).collect();

    // Latency: one connection each, alternating, after a warm-up.
    let (straight, through) = (reqwest::Client::new(), reqwest::Client::new());
    for i in 0..200 {
        once(&straight, &direct[i % 64], None).await;
        once(&through, &proxied[i % 64], Some(&token)).await;
    }
    let (mut took_direct, mut took_gateway) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for i in 0..calls {
        took_direct.push(once(&straight, &direct[i % 64], None).await);
        took_gateway.push(once(&through, &proxied[i % 64], Some(&token)).await);
    }
    took_direct.sort_by(f64::total_cmp);
    took_gateway.sort_by(f64::total_cmp);
    let (d50, d99) = (percentile(&took_direct, 0.5), percentile(&took_direct, 0.99));
    let (p50, p99) = (percentile(&took_gateway, 0.5), percentile(&took_gateway, 0.99));
    println!(
        "latency_calls={calls} direct_p50_us={d50:.0} direct_p99_us={d99:.0} gateway_p50_us={p50:.0} gateway_p99_us={p99:.0} added_p50_us={:.0} added_p99_us={:.0}",
        p50 - d50,
        p99 - d99
    );

    let direct_rps = throughput(Arc::new(direct), None, conns, seconds).await;
    let gateway_rps = throughput(Arc::new(proxied), Some(token), conns, seconds).await;
    println!(
        "conns={conns} direct_rps={direct_rps:.0} gateway_rps={gateway_rps:.0} ratio={:.2}",
        gateway_rps / direct_rps
    );
}
