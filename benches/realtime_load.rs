//! Realtime load against a running server, Outpost or a Socket.IO 4 peer, the same way:
//!
//! * `fanout`: R rooms × S subscribers; P publishers post as fast as their answers come back
//!   (closed loop) for D seconds; reports deliveries per second and the delay from the
//!   publisher's send to each subscriber's receipt (p50/p99), plus the server's CPU and RSS.
//!   For Outpost a publish is a durable message post over HTTP (fan-out follows the commit);
//!   for Socket.IO an `emit` with an acknowledgement after `io.to(room).emit`.
//! * `idle`: N connections each following one topic; reports the server's RSS per connection.
//! * `resume` (Outpost): a client away while N events land comes back with `since`; reports
//!   the time until all of them are replayed.
//!
//! `benches/realtime.sh` starts both servers and runs every scenario.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// Client sockets read into a 4 KiB buffer: the library's default (128 KiB) is zeroed on every
/// read, which made the generator spend a tenth of the machine in `memset`.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Clone)]
struct Args {
    mode: String,
    target: String,
    url: String,
    token: String,
    /// Outpost: channel ids, one per room.
    channels: Vec<String>,
    rooms: usize,
    subs: usize,
    publishers: usize,
    seconds: f64,
    conns: usize,
    events: usize,
    pid: u32,
    /// Outpost: `post` (durable messages over HTTP) or `signal` (relayed, never stored).
    publish: String,
    /// Publishes a second over all publishers, each still waiting for its acknowledgement;
    /// 0: as fast as acknowledgements come back.
    rate: f64,
}

fn args() -> Args {
    let mut a = Args {
        mode: "fanout".into(),
        target: "outpost".into(),
        url: String::new(),
        token: String::new(),
        channels: Vec::new(),
        rooms: 1,
        subs: 1000,
        publishers: 8,
        seconds: 8.0,
        conns: 10_000,
        events: 10_000,
        pid: 0,
        publish: "post".into(),
        rate: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--mode" => a.mode = v(),
            "--target" => a.target = v(),
            "--url" => a.url = v(),
            "--token" => a.token = v(),
            "--channels" => a.channels = v().split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            "--rooms" => a.rooms = v().parse().unwrap_or(1),
            "--subs" => a.subs = v().parse().unwrap_or(1000),
            "--publishers" => a.publishers = v().parse().unwrap_or(8),
            "--seconds" => a.seconds = v().parse().unwrap_or(8.0),
            "--conns" => a.conns = v().parse().unwrap_or(10_000),
            "--events" => a.events = v().parse().unwrap_or(10_000),
            "--pid" => a.pid = v().parse().unwrap_or(0),
            "--publish" => a.publish = v(),
            "--rate" => a.rate = v().parse().unwrap_or(0.0),
            _ => {}
        }
    }
    a
}

fn ws_url(a: &Args) -> String {
    let base = a.url.replace("http://", "ws://");
    if a.target == "socketio" {
        format!("{base}/socket.io/?EIO=4&transport=websocket")
    } else {
        format!("{base}/v1/realtime")
    }
}

async fn text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A connected client, subscribed to `room` (index) if one is given, ready for messages.
async fn join(a: &Args, room: Option<usize>) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(ws_url(a), Some(ws_config()), true).await.expect("connect");
    if a.target == "socketio" {
        let open = text(&mut ws).await.expect("open");
        assert!(open.starts_with('0'), "{open}");
        ws.send(Message::text("40")).await.expect("send");
        let ok = text(&mut ws).await.expect("connect ack");
        assert!(ok.starts_with("40"), "{ok}");
        if let Some(room) = room {
            ws.send(Message::text(format!("42[\"join\",\"r{room}\"]"))).await.expect("join");
        }
    } else {
        ws.send(Message::text(json!({ "op": "auth", "token": a.token }).to_string())).await.expect("auth");
        let w = text(&mut ws).await.expect("welcome");
        assert!(w.contains("\"welcome\""), "{w}");
        if let Some(room) = room {
            let topic = format!("channel:{}", a.channels[room]);
            ws.send(Message::text(json!({ "op": "subscribe", "topic": topic }).to_string())).await.expect("sub");
            loop {
                let f = text(&mut ws).await.expect("subscribed");
                if f.contains("\"subscribed\"") {
                    break;
                }
            }
        }
    }
    ws
}

/// What a delivery says of when it was sent.
enum Stamp {
    /// A relayed signal or a Socket.IO message carries its send time (µs since the run began).
    Sent(u64),
    /// A message post carries the id the server gave it; its send time is looked up by that.
    Id(String),
}

/// The stamp a delivery carries, if it is one. Found by search, not parsed: the generator
/// shares the machine with the server and must stay cheap per frame.
fn delivery_stamp(target: &str, t: &str) -> Option<Stamp> {
    let from = if target == "socketio" {
        if !t.starts_with("42[\"msg\"") {
            return None;
        }
        0
    } else {
        if !(t.starts_with("{\"op\":\"event\"") || t.starts_with("{\"op\":\"signal\"")) {
            return None;
        }
        t.find("\"data\":")?
    };
    let rest = &t[from..];
    if let Some(at) = rest.find("\"t\":") {
        let digits = &rest[at + 4..];
        let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
        return digits[..end].parse().ok().map(Stamp::Sent);
    }
    let at = rest.find("\"id\":\"")? + 6;
    let end = rest[at..].find('"')?;
    Some(Stamp::Id(rest[at..at + end].to_owned()))
}

/// Microseconds since `base`, as stamped into what a publisher sends.
fn micros_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What one subscriber received while measuring.
#[derive(Default)]
struct Log {
    /// Send-to-receipt delays of stamped deliveries, µs.
    delays_us: Vec<u64>,
    /// Message posts: id and receipt time, matched with the send times afterwards.
    by_id: Vec<(String, Instant)>,
}

fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The server's live heap bytes when it runs with `benches/heap_live.c` preloaded (the bench
/// sets `HEAP_LIVE_DIR`), else `None`: asked for with SIGUSR2, read from the file it writes.
async fn live_heap(a: &Args) -> Option<i64> {
    // Only Outpost has the handler; SIGUSR2 would end node.
    if a.target != "outpost" {
        return None;
    }
    let (dir, pid) = (std::env::var("HEAP_LIVE_DIR").ok()?, a.pid);
    let file = format!("{dir}/live.{pid}");
    let _ = std::fs::remove_file(&file);
    std::process::Command::new("kill").args(["-USR2", &pid.to_string()]).status().ok()?;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        if let Some(n) = std::fs::read_to_string(&file).ok().and_then(|t| t.trim().parse().ok()) {
            return Some(n);
        }
    }
    None
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * p).round() as usize] }
}

async fn connect_all(a: &Args, n: usize, rooms: usize) -> Vec<Ws> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 200).min(n)).map(|k| join(a, Some(k % rooms))).collect();
        out.extend(futures_util::future::join_all(batch).await);
        i += 200;
    }
    out
}

#[allow(clippy::too_many_lines)] // one scenario, start to report
async fn fanout(a: Args) {
    let total = a.rooms * a.subs;
    let clients = connect_all(&a, total, a.rooms).await;
    eprintln!("{} subscribers connected", clients.len());
    let received = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    let mut logs = Vec::new();
    // Send times are stamped relative to this, receipts measured against it.
    let base = Instant::now();
    for mut ws in clients {
        let (received, measuring, target) = (received.clone(), measuring.clone(), a.target.clone());
        let log: Arc<std::sync::Mutex<Log>> = Arc::default();
        logs.push(log.clone());
        // No time limit per frame (a timer each costs more than the rest of the frame): the
        // readers are stopped when the run ends.
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = &m else { continue };
                if t.as_str() == "2" {
                    let _ = ws.send(Message::text("3")).await;
                    continue;
                }
                if let Some(stamp) = delivery_stamp(&target, t) {
                    if measuring.load(Ordering::Relaxed) {
                        received.fetch_add(1, Ordering::Relaxed);
                        let mut log = log.lock().expect("log");
                        match stamp {
                            Stamp::Sent(sent) => log.delays_us.push(micros_since(base).saturating_sub(sent)),
                            Stamp::Id(id) => log.by_id.push((id, Instant::now())),
                        }
                    }
                }
            }
        }));
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_s(a.pid);
    let own_cpu0 = cpu_s(std::process::id());
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut pubs = Vec::new();
    for p in 0..a.publishers {
        let (a, sent, stop, published) = (a.clone(), sent.clone(), stop.clone(), published.clone());
        pubs.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let signals = a.target == "outpost" && a.publish == "signal";
            // Publisher p takes rooms p, p + P, p + 2P, … (each room one publisher), or with
            // fewer rooms than publishers room p mod R (each room P/R publishers).
            let mine: Vec<usize> =
                if a.rooms > a.publishers { (p..a.rooms).step_by(a.publishers).collect() } else { vec![p % a.rooms] };
            // A signal publisher must follow the rooms it signals to (so it also receives the
            // signals of the room's other publishers, which are not counted); a Socket.IO
            // publisher joins no room.
            let mut ws = if signals {
                Some(join(&a, Some(mine[0])).await)
            } else if a.target == "socketio" {
                Some(join(&a, None).await)
            } else {
                None
            };
            if let (true, Some(ws)) = (signals, ws.as_mut()) {
                for &r in &mine[1..] {
                    let topic = format!("channel:{}", a.channels[r]);
                    ws.send(Message::text(json!({ "op": "subscribe", "topic": topic }).to_string()))
                        .await
                        .expect("sub");
                    while !text(ws).await.expect("subscribed").contains("\"subscribed\"") {}
                }
            }
            let mut n = 0u64;
            // With a rate, publisher p publishes every P/rate seconds, the publishers staggered.
            let every = (a.rate > 0.0).then(|| Duration::from_secs_f64(a.publishers as f64 / a.rate));
            let mut next = every.map(|e| tokio::time::Instant::now() + e.mul_f64(p as f64 / a.publishers as f64));
            while !stop.load(Ordering::Relaxed) {
                if let (Some(at), Some(e)) = (next.as_mut(), every) {
                    tokio::time::sleep_until(*at).await;
                    *at += e;
                }
                let room = mine[(n as usize) % mine.len()];
                let at = Instant::now();
                if let (true, Some(ws)) = (signals, ws.as_mut()) {
                    // Relay a signal, then a ping: the pong comes back once the relay is done
                    // (frames of one socket are handled in order), like Socket.IO's ack.
                    let id = format!("p{p}-{n}");
                    let topic = format!("channel:{}", a.channels[room]);
                    let kind = format!("custom:m{}", n % 256);
                    let t = micros_since(base);
                    let sig = json!({ "op": "signal", "topic": topic, "kind": kind, "data": { "id": id, "t": t } });
                    // Both frames in one write, as a client sending them back to back would.
                    ws.feed(Message::text(sig.to_string())).await.expect("signal");
                    ws.feed(Message::text("{\"op\":\"ping\"}")).await.expect("ping");
                    ws.flush().await.expect("flush");
                    loop {
                        let t = text(ws).await.expect("pong");
                        assert!(!t.contains("\"error\""), "{t}");
                        if t.contains("\"pong\"") {
                            break;
                        }
                    }
                } else if let Some(ws) = ws.as_mut() {
                    let id = format!("p{p}-{n}");
                    let ack = n % 1_000_000;
                    let t = micros_since(base);
                    let frame = format!("42{ack}[\"publish\",{{\"room\":\"r{room}\",\"id\":\"{id}\",\"t\":{t}}}]");
                    ws.send(Message::text(frame)).await.expect("publish");
                    let want = format!("43{ack}");
                    loop {
                        let t = text(ws).await.expect("ack");
                        if t == "2" {
                            let _ = ws.send(Message::text("3")).await;
                        } else if t.starts_with(&want) {
                            break;
                        }
                    }
                } else {
                    let url = format!("{}/v1/channels/{}/messages", a.url, a.channels[room]);
                    let r = http
                        .post(url)
                        .bearer_auth(&a.token)
                        .json(&json!({ "text": format!("load {p} {n}") }))
                        .send()
                        .await
                        .expect("post");
                    assert_eq!(r.status(), 201);
                    let v: Value = r.json().await.expect("json");
                    sent.lock().await.insert(v["id"].as_str().expect("id").to_owned(), at);
                }
                n += 1;
                published.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        let _ = p.await;
    }
    let publish_s = started.elapsed().as_secs_f64();
    // Let what is in flight arrive, then count.
    let expect = published.load(Ordering::Relaxed) * a.subs as u64;
    let drain_until = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::Relaxed) < expect && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_s = started.elapsed().as_secs_f64();
    let cpu = cpu_s(a.pid) - cpu0;
    let own_cpu = cpu_s(std::process::id()) - own_cpu0;
    measuring.store(false, Ordering::Relaxed);
    let got = received.load(Ordering::Relaxed);
    for r in &readers {
        r.abort();
    }
    let sent = sent.lock().await;
    let mut lat = Vec::new();
    for log in logs {
        let log = log.lock().expect("log");
        lat.extend(log.delays_us.iter().map(|&us| us as f64 / 1000.0));
        for (id, at) in &log.by_id {
            if let Some(t0) = sent.get(id) {
                lat.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "RESULT target={}{} rooms={} subs={} publishers={} published={} published_per_s={:.0} delivered={got} expected={expect} delivered_per_s={:.0} p50_ms={:.2} p99_ms={:.2} cpu_s={cpu:.2} rss_kb={} hwm_kb={} generator_cpu_s={own_cpu:.2}",
        a.target,
        if a.target == "outpost" { format!("/{}", a.publish) } else { String::new() },
        a.rooms,
        a.subs,
        a.publishers,
        published.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed) as f64 / publish_s,
        got as f64 / delivered_s,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        rss_kb(a.pid, "VmRSS:"),
        rss_kb(a.pid, "VmHWM:"),
    );
}

async fn idle(a: Args) {
    let rooms = a.channels.len().max(1);
    // A first tenth (1,000 at most) is connected before the measure starts: memory the server
    // freed before (a login's password hash takes 19 MiB for a moment) would otherwise be
    // reused by the first sockets and hide part of what each costs.
    let warm = (a.conns / 10).min(1000);
    let warm_clients = connect_all(&a, warm, rooms).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kb(a.pid, "VmRSS:");
    let heap_before = live_heap(&a).await;
    let clients = connect_all(&a, a.conns - warm, rooms).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(a.pid, "VmRSS:");
    let heap_after = live_heap(&a).await;
    let measured = clients.len().max(1) as f64;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / measured;
    // The heap's own count, where the server reports it: what the sockets hold, without what
    // the allocator kept from earlier work or has yet to give back.
    let heap = match (heap_before, heap_after) {
        (Some(b), Some(a)) => format!(" heap_bytes_per_connection={:.0}", (a - b) as f64 / measured),
        _ => String::new(),
    };
    println!(
        "RESULT target={} idle_connections={} measured={} rss_before_kb={before} rss_after_kb={after} bytes_per_connection={per:.0}{heap}",
        a.target,
        warm_clients.len() + clients.len(),
        clients.len()
    );
    drop((warm_clients, clients));
}

async fn resume(a: Args) {
    let mut ws = join(&a, Some(0)).await;
    let topic = format!("channel:{}", a.channels[0]);
    ws.send(Message::text(json!({ "op": "ping" }).to_string())).await.expect("ping");
    let welcome_epoch = {
        let (mut w, _) =
            tokio_tungstenite::connect_async_with_config(ws_url(&a), Some(ws_config()), true).await.expect("connect");
        w.send(Message::text(json!({ "op": "auth", "token": a.token }).to_string())).await.expect("auth");
        let v: Value = serde_json::from_str(&text(&mut w).await.expect("welcome")).expect("json");
        v["epoch"].as_u64().expect("epoch")
    };
    // The position before going away: the subscription's answer.
    ws.send(Message::text(json!({ "op": "unsubscribe", "topic": topic }).to_string())).await.expect("unsub");
    ws.send(Message::text(json!({ "op": "subscribe", "topic": topic }).to_string())).await.expect("sub");
    let since = loop {
        let v: Value = serde_json::from_str(&text(&mut ws).await.expect("frame")).expect("json");
        if v["op"] == "subscribed" {
            break v["seq"].as_u64().expect("seq");
        }
    };
    drop(ws);
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let mut posters = Vec::new();
    for _ in 0..32 {
        let (http, next, a) = (http.clone(), next.clone(), a.clone());
        posters.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < a.events as u64 {
                let r = http
                    .post(format!("{}/v1/channels/{}/messages", a.url, a.channels[0]))
                    .bearer_auth(&a.token)
                    .json(&json!({ "text": "while away" }))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
            }
        }));
    }
    for p in posters {
        p.await.expect("poster");
    }
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(ws_url(&a), Some(ws_config()), true).await.expect("connect");
    ws.send(Message::text(json!({ "op": "auth", "token": a.token }).to_string())).await.expect("auth");
    text(&mut ws).await.expect("welcome");
    let t0 = Instant::now();
    let sub = json!({ "op": "subscribe", "topic": topic, "since": since, "epoch": welcome_epoch });
    ws.send(Message::text(sub.to_string())).await.expect("sub");
    let mut n = 0;
    loop {
        let t = text(&mut ws).await.expect("frame");
        if t.contains("\"op\":\"event\"") {
            n += 1;
        } else if t.contains("\"subscribed\"") {
            break;
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    println!(
        "RESULT target=outpost resume_events={n} resume_ms={ms:.1} events_per_s={:.0}",
        f64::from(n) / ms * 1000.0
    );
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        match a.mode.as_str() {
            "idle" => idle(a).await,
            "resume" => resume(a).await,
            _ => fanout(a).await,
        }
    });
}
