//! Load against a running server: token refreshes per second from N concurrent clients (each
//! its own session, exchanging its refresh token in a loop), and login latency.
//!
//!   cargo bench --bench auth_load -- --url http://127.0.0.1:18080 --org ORG_SLUG \
//!       --login USER --password PW --clients 100 --seconds 8
//!
//! `benches/auth.sh` sets up the server and the user and runs this beside the other
//! scenarios.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    url: String,
    org: String,
    login: String,
    password: String,
    clients: usize,
    seconds: f64,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        org: String::new(),
        login: String::new(),
        password: String::new(),
        clients: 100,
        seconds: 8.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => a.url = v(),
            "--org" => a.org = v(),
            "--login" => a.login = v(),
            "--password" => a.password = v(),
            "--clients" => a.clients = v().parse().unwrap_or(100),
            "--seconds" => a.seconds = v().parse().unwrap_or(8.0),
            _ => {}
        }
    }
    a
}

async fn login(http: &reqwest::Client, a: &Args) -> (Duration, String) {
    let start = Instant::now();
    let r = http
        .post(format!("{}/v1/auth/login", a.url))
        .json(&json!({ "org": a.org, "login": a.login, "password": a.password }))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200, "login failed");
    let v: Value = r.json().await.expect("json");
    (start.elapsed(), v["refresh_token"].as_str().expect("refresh").to_owned())
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let a = Arc::new(args());
    assert!(!a.url.is_empty(), "--url is required");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::builder().pool_max_idle_per_host(a.clients).build().expect("client");
        // Login latency, one at a time.
        let mut logins = Vec::new();
        for _ in 0..10 {
            logins.push(login(&http, &a).await.0);
        }
        // One session per client.
        let mut tokens = Vec::new();
        for _ in 0..a.clients {
            tokens.push(login(&http, &a).await.1);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let start = Instant::now();
        for mut token in tokens {
            let (http, a, stop) = (http.clone(), a.clone(), stop.clone());
            tasks.spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = http
                        .post(format!("{}/v1/auth/refresh", a.url))
                        .json(&json!({ "refresh_token": token }))
                        .send()
                        .await
                        .expect("refresh");
                    assert_eq!(r.status(), 200, "refresh failed");
                    let v: Value = r.json().await.expect("json");
                    v["refresh_token"].as_str().expect("token").clone_into(&mut token);
                    lat.push(t.elapsed());
                }
                lat
            });
        }
        tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        while let Some(r) = tasks.join_next().await {
            lat.extend(r.expect("task"));
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "login latency: p50 {:.1?}  p99 {:.1?}  (10 sequential)",
            pct(&mut logins, 0.5),
            pct(&mut logins, 0.99)
        );
        println!(
            "refreshes: {:.0}/s from {} clients over {:.1} s; latency p50 {:.1?} p99 {:.1?}",
            lat.len() as f64 / elapsed,
            a.clients,
            elapsed,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    });
}
