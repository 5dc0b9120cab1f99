//! TURN load against a running server (Outpost's built-in one, or coturn), driven by
//! `benches/turn.sh`:
//!
//! * `alloc`: N allocations (each a fresh client: authenticate, allocate, close) with C in
//!   flight; reports allocations per second.
//! * `relay`: K clients each hold an allocation and bounce 200-byte datagrams off an echo peer
//!   through it (one in flight per client) for S seconds; reports relayed datagrams per second
//!   (both directions) and the round trip p50/p99.
//!
//! Credentials are REST-style (`<expiry>:<name>`, HMAC-SHA1 of it under the shared secret):
//! given with `--user`/`--pass`, or made here from `--secret`, one name per client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

struct Args {
    mode: String,
    server: String,
    realm: String,
    user: String,
    pass: String,
    n: usize,
    concurrency: usize,
    seconds: f64,
    pid: u32,
    /// With a shared secret, each client signs a username of its own.
    secret: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        server: String::new(),
        realm: "outpost".into(),
        user: String::new(),
        pass: String::new(),
        n: 1000,
        concurrency: 16,
        seconds: 8.0,
        pid: 0,
        secret: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--mode" => a.mode = v(),
            "--server" => a.server = v(),
            "--realm" => a.realm = v(),
            "--user" => a.user = v(),
            "--pass" => a.pass = v(),
            "--secret" => a.secret = Some(v()),
            "--n" => a.n = v().parse().expect("--n"),
            "--concurrency" => a.concurrency = v().parse().expect("--concurrency"),
            "--seconds" => a.seconds = v().parse().expect("--seconds"),
            "--pid" => a.pid = v().parse().expect("--pid"),
            _ => {}
        }
    }
    a
}

fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>()) / 100.0
}

/// REST-style credentials for client `n` under `secret`.
fn signed(secret: &str, n: usize) -> (String, String) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let user = format!("{}:bench{n}", now + 3600);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let pass = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, user.as_bytes()).as_ref());
    (user, pass)
}

/// Client `n`, authenticated and listening.
async fn client(a: &Args, n: usize) -> Client {
    let (username, password) =
        a.secret.as_deref().map_or_else(|| (a.user.clone(), a.pass.clone()), |secret| signed(secret, n));
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let c = Client::new(ClientConfig {
        stun_serv_addr: a.server.clone(),
        turn_serv_addr: a.server.clone(),
        username,
        password,
        realm: a.realm.clone(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("client");
    c.listen().await.expect("listen");
    c
}

async fn alloc(a: Arc<Args>) {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (cpu0, started) = (cpu_s(a.pid), Instant::now());
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let (a, next, failed) = (a.clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= a.n {
                    break;
                }
                let c = client(&a, n).await;
                match c.allocate().await {
                    // Closing the relay refreshes it with a lifetime of zero: deallocated, so
                    // a later client on the same port is not taken for this one.
                    Ok(relay) => {
                        let _ = relay.close().await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = c.close().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("allocator");
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "RESULT mode=alloc allocations={} failed={} allocations_per_s={:.0} cpu_s={:.2}",
        a.n,
        failed.load(Ordering::Relaxed),
        a.n as f64 / s,
        cpu_s(a.pid) - cpu0
    );
}

async fn relay(a: Arc<Args>) {
    // The peer echoes whatever reaches it back where it came from (the relayed address).
    let peer = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("peer"));
    let peer_addr: SocketAddr = peer.local_addr().expect("peer addr");
    let echo = peer.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let (stop, measuring) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let mut tasks = Vec::new();
    for n in 0..a.concurrency {
        let (a, stop, measuring) = (a.clone(), stop.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let c = client(&a, n).await;
            let conn = c.allocate().await.expect("allocate");
            let payload = [7u8; 200];
            let mut buf = [0u8; 2048];
            let mut rtts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                conn.send_to(&payload, peer_addr).await.expect("send");
                match tokio::time::timeout(Duration::from_secs(1), conn.recv_from(&mut buf)).await {
                    Ok(Ok(_)) if measuring.load(Ordering::Relaxed) => rtts.push(at.elapsed().as_micros() as u32),
                    _ => {}
                }
            }
            let _ = conn.close().await;
            let _ = c.close().await;
            rtts
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, started) = (cpu_s(a.pid), Instant::now());
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let (s, cpu) = (started.elapsed().as_secs_f64(), cpu_s(a.pid) - cpu0);
    stop.store(true, Ordering::Relaxed);
    let mut rtts = Vec::new();
    for t in tasks {
        rtts.extend(t.await.expect("relayer"));
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts.get(((rtts.len().max(1) - 1) as f64 * p) as usize).map_or(0.0, |v| f64::from(*v) / 1000.0);
    println!(
        "RESULT mode=relay clients={} round_trips_per_s={:.0} relayed_per_s={:.0} p50_ms={:.3} p99_ms={:.3} cpu_s={cpu:.2}",
        a.concurrency,
        rtts.len() as f64 / s,
        2.0 * rtts.len() as f64 / s,
        pct(0.5),
        pct(0.99)
    );
}

fn main() {
    let a = Arc::new(args());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        match a.mode.as_str() {
            "alloc" => alloc(a).await,
            "relay" => relay(a).await,
            m => panic!("unknown --mode {m:?} (alloc, relay)"),
        }
    });
}
