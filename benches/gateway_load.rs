//! Gateway overhead against a running server, with the service in this process:
//!
//! * registers the service (its base URL this process's listener, an API key credential, the
//!   gateway's budget at its highest);
//! * latency: one connection each way, calls alternating direct / through the gateway, N of
//!   each; p50/p99 of both and what the gateway adds;
//! * throughput: C connections for D seconds straight to the service, then the same through the
//!   gateway (requests per second, and the ratio);
//! * with `--proxy URL` (a reverse proxy in front of `--service-port`, nginx in
//!   `benches/gateway.sh`): the same latency and throughput through it, the cost of a bare proxy
//!   hop on this machine (no authentication, no credential, no audit record) beside the gateway's.
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
    let service_port: u16 = arg("service-port", "0").parse().expect("load program");
    let proxy = arg("proxy", "");
    let base = loadkit::serve_loopback(Route::new().at("/items/:n", get(item)), service_port).await;
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

    let hopped: Vec<String> = (0..64).map(|i| format!("{proxy}/items/{i}")).collect();

    // Latency: one connection each, alternating, after a warm-up.
    let (straight, through, hop) = (reqwest::Client::new(), reqwest::Client::new(), reqwest::Client::new());
    for i in 0..200 {
        once(&straight, &direct[i % 64], None).await;
        once(&through, &proxied[i % 64], Some(&token)).await;
        if !proxy.is_empty() {
            once(&hop, &hopped[i % 64], None).await;
        }
    }
    let mut took = [Vec::with_capacity(calls), Vec::with_capacity(calls), Vec::with_capacity(calls)];
    for i in 0..calls {
        took[0].push(once(&straight, &direct[i % 64], None).await);
        took[1].push(once(&through, &proxied[i % 64], Some(&token)).await);
        if !proxy.is_empty() {
            took[2].push(once(&hop, &hopped[i % 64], None).await);
        }
    }
    for t in &mut took {
        t.sort_by(f64::total_cmp);
    }
    let (d50, d99) = (percentile(&took[0], 0.5), percentile(&took[0], 0.99));
    let (p50, p99) = (percentile(&took[1], 0.5), percentile(&took[1], 0.99));
    println!(
        "latency_calls={calls} direct_p50_us={d50:.0} direct_p99_us={d99:.0} gateway_p50_us={p50:.0} gateway_p99_us={p99:.0} added_p50_us={:.0} added_p99_us={:.0}",
        p50 - d50,
        p99 - d99
    );
    if !proxy.is_empty() {
        let (h50, h99) = (percentile(&took[2], 0.5), percentile(&took[2], 0.99));
        println!(
            "proxy_p50_us={h50:.0} proxy_p99_us={h99:.0} proxy_added_p50_us={:.0} proxy_added_p99_us={:.0}",
            h50 - d50,
            h99 - d99
        );
    }

    let direct_rps = throughput(Arc::new(direct), None, conns, seconds).await;
    let gateway_rps = throughput(Arc::new(proxied), Some(token), conns, seconds).await;
    println!(
        "conns={conns} direct_rps={direct_rps:.0} gateway_rps={gateway_rps:.0} ratio={:.2}",
        gateway_rps / direct_rps
    );
    if !proxy.is_empty() {
        let proxy_rps = throughput(Arc::new(hopped), None, conns, seconds).await;
        println!(
            "proxy_rps={proxy_rps:.0} proxy_ratio={:.2} gateway_to_proxy={:.2}",
            proxy_rps / direct_rps,
            gateway_rps / proxy_rps
        );
    }
}
