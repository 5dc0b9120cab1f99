//! OAuth connections against a running server, with the provider's token endpoint and a
//! service in this process:
//!
//! * ceiling: C tasks calling the token endpoint straight for D seconds (tokens/s);
//! * refreshes: K client-credentials connections, C tasks forcing refreshes through
//!   `POST /v1/connections/{id}/refresh` for D seconds (refreshes/s: the token endpoint, the
//!   sealing and one durable commit with its audit record each), and the ratio to the ceiling;
//! * single flight: one connection whose tokens last `--ttl` seconds (the server refreshing
//!   0 s ahead), C tasks calling a service through the gateway with it for D seconds: calls/s,
//!   and how many refreshes the token endpoint saw for them.
//!
//! `benches/oauth.sh` starts the server and runs it.

#[path = "loadkit/mod.rs"]
#[allow(dead_code)] // each load program takes the parts of the kit it needs
mod loadkit;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadkit::arg;
use poem::web::Data;
use poem::{EndpointExt, Route, get, handler, post};
use serde_json::{Value, json};

struct Provider {
    issued: AtomicU64,
    ttl_s: u64,
}

/// A token endpoint for the client-credentials grant (client authentication checked).
#[handler]
#[allow(clippy::needless_pass_by_value)] // poem hands the extractor over by value
fn token_endpoint(req: &poem::Request, body: String, p: Data<&Arc<Provider>>) -> poem::Response {
    let basic_ok = req.header("authorization").is_some_and(|a| a.starts_with("Basic "));
    if !basic_ok || !body.contains("grant_type=client_credentials") {
        return poem::Response::builder()
            .status(poem::http::StatusCode::BAD_REQUEST)
            .content_type("application/json")
            .body(r#"{"error":"invalid_client"}"#);
    }
    let n = p.issued.fetch_add(1, Ordering::Relaxed);
    poem::Response::builder().content_type("application/json").body(
        json!({ "access_token": format!("bench-token-{n}-{:032x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                "token_type": "Bearer", "expires_in": p.ttl_s, "scope": "api:read" })
        .to_string(),
    )
}

#[handler]
fn item() -> &'static str {
    r#"{"id":42,"state":"open"}"#
}

/// Runs `f` from `conns` tasks until `seconds` pass; calls per second.
async fn run<F, Fut>(conns: usize, seconds: f64, f: F) -> f64
where
    F: Fn(usize, reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (f, done) = (f.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("load program");
            let mut i = c;
            while Instant::now() < deadline {
                f(i, client.clone()).await;
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

async fn post_json(client: &reqwest::Client, url: &str, token: &str, body: Value) -> Value {
    let r = client.post(url).bearer_auth(token).json(&body).send().await.expect("load program");
    assert!(r.status().is_success(), "{url}: {:?}", r.text().await);
    r.json().await.expect("load program")
}

async fn provider(client: &reqwest::Client, url: &str, token: &str, base: &str) -> String {
    let made = post_json(
        client,
        &format!("{url}/v1/oauth/providers"),
        token,
        json!({ "template": "custom", "grant": "client_credentials", "token_url": format!("{base}/token"),
                "client_id": "bench", "client_secret": "bench-secret", "scopes": ["api:read"] }),
    )
    .await;
    made["id"].as_str().expect("load program").to_owned()
}

#[tokio::main]
async fn main() {
    let url = arg("url", "");
    let token = arg("token", "");
    let conns: usize = arg("conns", "32").parse().expect("load program");
    let seconds: f64 = arg("seconds", "8").parse().expect("load program");
    let connections: usize = arg("connections", "64").parse().expect("load program");
    let ttl: u64 = arg("ttl", "1").parse().expect("load program");
    let client = reqwest::Client::new();

    // The provider for the refreshes: long-lived tokens (each refresh is forced).
    let long = Arc::new(Provider { issued: AtomicU64::new(0), ttl_s: 3600 });
    let long_base =
        loadkit::serve_loopback(Route::new().at("/token", post(token_endpoint)).data(long.clone()), 0).await;
    let endpoint = format!("{long_base}/token");
    let ceiling = run(conns, seconds, move |_, c| {
        let endpoint = endpoint.clone();
        async move {
            let r = c
                .post(&endpoint)
                .basic_auth("bench", Some("bench-secret"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials&scope=api%3Aread")
                .send()
                .await
                .expect("load program");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("load program");
        }
    })
    .await;

    let long_provider = provider(&client, &url, &token, &long_base).await;
    let mut ids = Vec::new();
    for _ in 0..connections {
        let made =
            post_json(&client, &format!("{url}/v1/connections"), &token, json!({ "provider_id": long_provider })).await;
        ids.push(made["id"].as_str().expect("load program").to_owned());
    }
    let ids = Arc::new(ids);
    let before = long.issued.load(Ordering::Relaxed);
    let (base_url, bearer) = (url.clone(), token.clone());
    let refreshes = run(conns, seconds, move |i, http| {
        let target = format!("{base_url}/v1/connections/{}/refresh", ids[i % ids.len()]);
        let bearer = bearer.clone();
        async move {
            let r = http.post(&target).bearer_auth(&bearer).send().await.expect("load program");
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
        }
    })
    .await;
    let endpoint_saw = long.issued.load(Ordering::Relaxed) - before;
    println!(
        "conns={conns} connections={connections} token_endpoint_rps={ceiling:.0} refreshes_per_s={refreshes:.0} \
         ratio={:.2} refresh_token_requests={endpoint_saw}",
        refreshes / ceiling
    );

    // Single flight: one connection with short-lived tokens, called through the gateway.
    let short = Arc::new(Provider { issued: AtomicU64::new(0), ttl_s: ttl });
    let short_base = loadkit::serve_loopback(
        Route::new().at("/token", post(token_endpoint)).at("/items", get(item)).data(short.clone()),
        0,
    )
    .await;
    let short_provider = provider(&client, &url, &token, &short_base).await;
    let conn =
        post_json(&client, &format!("{url}/v1/connections"), &token, json!({ "provider_id": short_provider })).await;
    let made = post_json(
        &client,
        &format!("{url}/v1/services"),
        &token,
        json!({ "name": "bench-oauth", "base_url": short_base,
                "credential": { "kind": "oauth_connection", "connection_id": conn["id"] },
                "gateway": { "rate_per_s": 100_000, "retries": 0 } }),
    )
    .await;
    let target = format!("{url}/v1/services/{}/proxy/items", made["service"]["id"].as_str().expect("load program"));
    let before = short.issued.load(Ordering::Relaxed);
    let bearer = token.clone();
    let calls = run(conns, seconds, move |_, http| {
        let (target, bearer) = (target.clone(), bearer.clone());
        async move {
            let r = http.get(&target).bearer_auth(&bearer).send().await.expect("load program");
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
            r.bytes().await.expect("load program");
        }
    })
    .await;
    let refreshed = short.issued.load(Ordering::Relaxed) - before;
    println!(
        "ttl_s={ttl} gateway_calls_per_s={calls:.0} calls={:.0} refreshes_during={refreshed} refreshes_per_expiry={:.2}",
        calls * seconds,
        refreshed as f64 / (seconds / ttl as f64)
    );
}
