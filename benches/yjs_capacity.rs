//! A light Yjs load generator for capacity runs, where the stock node providers of
//! `benches/peers/yjs_load.mjs` would use up the machine before the server does.
//!
//! D documents × E editors, each editor on its own socket, each making R changes a second on a
//! fixed schedule: a change sets the editor's own key in a shared Y.Map to a timestamp and types
//! one character into the editor's own Y.Text (as editors working in different paragraphs do),
//! in one transaction, made with yrs as a real client would. An editor only ever builds on its
//! own changes, which is all a Yjs client needs to make valid updates; that is also why each has
//! a text of its own: editors that never see each other's typing, all typing into one text,
//! would leave the server (any Yjs server) to order an ever-growing run of concurrent inserts on
//! every change, a conflict no real client makes. Receivers do not apply what they get: they
//! find the timestamp in the relayed update's bytes, which is enough to count it and time it. Speaks the y-websocket
//! protocol (Outpost, the y-websocket 2 server) and Hocuspocus's (the document name before
//! each message, and an authentication message first).
//!
//! Reports changes applied and relayed per second, change → received by another editor
//! p50/p99, the server's CPU in the window, and this generator's own CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::encoding::read::{Cursor, Read as _};
use yrs::encoding::write::Write as _;
use yrs::updates::decoder::DecoderV1;
use yrs::updates::encoder::{Encoder, EncoderV1};
use yrs::{Doc, Map, Text, Transact};

/// Client sockets read into a 4 KiB buffer: the library's default (128 KiB) is zeroed on every
/// read, which made the generator spend a tenth of the machine in `memset`.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

const MARK: &[u8] = b"t=";

struct Args {
    target: String,
    url: String,
    token: String,
    doc_ids: Vec<String>,
    docs: usize,
    editors: usize,
    rate: f64,
    seconds: f64,
    pid: u32,
}

fn args() -> Args {
    let mut a = Args {
        target: "outpost".into(),
        url: String::new(),
        token: String::new(),
        doc_ids: Vec::new(),
        docs: 1,
        editors: 50,
        rate: 10.0,
        seconds: 8.0,
        pid: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--target" => a.target = v(),
            "--url" => a.url = v(),
            "--token" => a.token = v(),
            "--doc-ids" => a.doc_ids = v().split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            "--docs" => a.docs = v().parse().expect("--docs"),
            "--editors" => a.editors = v().parse().expect("--editors"),
            "--rate" => a.rate = v().parse().expect("--rate"),
            "--seconds" => a.seconds = v().parse().expect("--seconds"),
            "--pid" => a.pid = v().parse().expect("--pid"),
            _ => {}
        }
    }
    a
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// One editor's document and how it frames messages for its server.
struct Editor {
    doc: Doc,
    /// Unique across the run: stamped into each change, so an echo of one's own is known.
    id: usize,
    /// Hocuspocus: the document name that starts every message.
    name: Option<String>,
}

impl Editor {
    fn frame(&self, body: impl FnOnce(&mut EncoderV1)) -> Vec<u8> {
        let mut enc = EncoderV1::new();
        if let Some(name) = &self.name {
            enc.write_string(name);
        }
        body(&mut enc);
        enc.to_vec()
    }

    /// The next change as a sync update message.
    fn change(&self) -> Vec<u8> {
        let (map, text) = (self.doc.get_or_insert_map("map"), self.doc.get_or_insert_text(format!("text{}", self.id)));
        let update = {
            let mut txn = self.doc.transact_mut();
            map.insert(&mut txn, format!("e{}", self.id), format!("t={};{};", now_us(), self.id));
            text.insert(&mut txn, 0, "x");
            txn.encode_update_v1()
        };
        self.frame(|e| {
            e.write_var(0u8); // sync
            e.write_var(2u8); // update
            e.write_buf(&update);
        })
    }
}

/// The timestamp and editor inside a relayed update, if the message is one.
fn stamp(msg: &[u8], hocuspocus: bool) -> Option<(u64, usize)> {
    let mut d = DecoderV1::new(Cursor::new(msg));
    if hocuspocus {
        d.read_string().ok()?;
    }
    let (kind, sub): (u8, u8) = (d.read_var().ok()?, d.read_var().ok()?);
    if kind != 0 || sub != 2 {
        return None;
    }
    let at = msg.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let mut fields = msg[at..].split(|b| *b == b';');
    let mut number = || std::str::from_utf8(fields.next()?).ok()?.parse::<u64>().ok();
    Some((number()?, usize::try_from(number()?).ok()?))
}

#[derive(Default)]
struct Totals {
    applied: AtomicU64,
    relayed: AtomicU64,
}

/// What every editor of a run shares.
struct Run {
    a: Args,
    totals: Totals,
    measuring: AtomicBool,
    stop: AtomicBool,
    start_at: Instant,
}

async fn editor(run: Arc<Run>, doc: String, id: usize) -> Vec<u32> {
    let (a, start_at) = (&run.a, run.start_at);
    let hocus = a.target == "hocuspocus";
    let url = match a.target.as_str() {
        "outpost" => format!("{}/{doc}?access_token={}", a.url, a.token),
        "hocuspocus" => a.url.clone(),
        _ => format!("{}/{doc}", a.url),
    };
    // Without Nagle's delay, like the servers' own sockets.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await.expect("connect");
    let (mut tx, mut rx) = ws.split();
    let ed = Editor { doc: Doc::new(), id, name: hocus.then(|| doc.clone()) };
    if hocus {
        let auth = ed.frame(|enc| {
            enc.write_var(2u8); // auth
            enc.write_var(0u8); // token
            enc.write_string("bench");
        });
        tx.send(Message::binary(auth)).await.expect("auth");
    }
    // Receive for the whole run; latencies while measuring, in tenths of a millisecond.
    let r2 = run.clone();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Some(Ok(m)) = rx.next().await {
            if r2.stop.load(Ordering::Relaxed) {
                break;
            }
            if let Message::Binary(b) = m {
                if let Some((t, from)) = stamp(&b, hocus) {
                    // Some servers echo a change to its sender too; only others' count.
                    if from != id && r2.measuring.load(Ordering::Relaxed) {
                        r2.totals.relayed.fetch_add(1, Ordering::Relaxed);
                        lat.push((now_us().saturating_sub(t) / 100) as u32);
                    }
                }
            }
        }
        lat
    });
    tokio::time::sleep_until(start_at.into()).await;
    // A fixed schedule, spread over the interval so editors do not all fire at once.
    let every = Duration::from_secs_f64(1.0 / a.rate);
    let offset = every.mul_f64((id as f64 * 0.618_033_988_7).fract());
    let mut tick = tokio::time::interval_at((start_at + offset).into(), every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !run.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if tx.send(Message::binary(ed.change())).await.is_err() {
            break;
        }
        if run.measuring.load(Ordering::Relaxed) {
            run.totals.applied.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = tx.close().await;
    tokio::time::timeout(Duration::from_secs(5), reader).await.ok().and_then(Result::ok).unwrap_or_default()
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    f64::from(v[((v.len() - 1) as f64 * p) as usize]) / 10.0
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let docs: Vec<String> = if a.doc_ids.is_empty() {
            (0..a.docs).map(|d| format!("bench-doc-{d}")).collect()
        } else {
            a.doc_ids.clone()
        };
        // Everyone connects first; changes start together a moment later, measuring 2 s after.
        let start_at = Instant::now() + Duration::from_secs(2) + Duration::from_millis((docs.len() * a.editors) as u64);
        let editors = a.editors;
        let run = Arc::new(Run {
            a,
            totals: Totals::default(),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            start_at,
        });
        let mut tasks = Vec::new();
        for (d, doc) in docs.iter().enumerate() {
            for e in 0..editors {
                tasks.push(tokio::spawn(editor(run.clone(), doc.clone(), d * editors + e)));
            }
        }
        tokio::time::sleep_until((start_at + Duration::from_secs(2)).into()).await;
        let (pid, me) = (run.a.pid.to_string(), std::process::id().to_string());
        let (cpu0, gen0) = (cpu_s(&pid), cpu_s(&me));
        run.measuring.store(true, Ordering::Relaxed);
        let began = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(run.a.seconds)).await;
        run.measuring.store(false, Ordering::Relaxed);
        let window = began.elapsed().as_secs_f64();
        let (cpu, gen_cpu) = (cpu_s(&pid) - cpu0, cpu_s(&me) - gen0);
        // Let what was sent in the window arrive, then stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap_or_default());
        }
        lat.sort_unstable();
        let (applied, relayed) = (run.totals.applied.load(Ordering::Relaxed), run.totals.relayed.load(Ordering::Relaxed));
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
            .unwrap_or_default();
        println!(
            "RESULT target={} docs={} editors={editors} rate={} applied_per_s={:.0} relayed_per_s={:.0} expected_per_s={:.0} p50_ms={:.1} p99_ms={:.1} cpu_s={cpu:.2} gen_cpu_s={gen_cpu:.2} window_s={window:.1} rss={rss}",
            run.a.target,
            docs.len(),
            run.a.rate,
            applied as f64 / window,
            relayed as f64 / window,
            applied as f64 * (editors - 1) as f64 / window,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
        );
    });
}
