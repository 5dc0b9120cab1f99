//! Soak load against a running Outpost, driven by `benches/soak.sh`: USERS people of one
//! organization working steadily for SECONDS, in ROOMS rooms (each with a public channel and a
//! shared document), as a team's day looks:
//!
//! * chat: each person posts a message every 3 s and reads the channel's latest page every 30 s;
//! * tasks: each creates a task for themself every 15 s, marks their oldest open one done once
//!   they hold more than three, deletes done ones beyond twenty, and lists their tasks every
//!   60 s (the `assignee` index);
//! * documents: each types a character into the room's document every 5 s (a Yjs update over
//!   REST, from their own replica);
//! * presence: each keeps a realtime socket following their room, its channel and document and
//!   their inbox, moves (presence state) every 20 s, and reconnects every 15 minutes resuming
//!   each topic with `since`;
//! * sessions: each refreshes their tokens every 10 minutes and re-authenticates the socket.
//!
//! (A call runs beside it: `soak.sh` starts `sfu_load` for the same time.)
//!
//! Every SAMPLE seconds one CSV row goes to `--out`: the server's RSS, open file descriptors and
//! sockets (from /proc), the data directory's size, the largest follower lag (from /metrics),
//! and what the clients have done so far, errors included. Any answer other than the expected
//! status, and any socket closed by the server, is an error; the first few are printed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use yrs::{Doc, Text, Transact};

struct Args {
    url: String,
    key: String,
    pid: u32,
    data: String,
    out: String,
    seconds: u64,
    sample: u64,
    users: usize,
    rooms: usize,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        key: String::new(),
        pid: 0,
        data: String::new(),
        out: "soak.csv".into(),
        seconds: 3600,
        sample: 60,
        users: 24,
        rooms: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => a.url = v(),
            "--key" => a.key = v(),
            "--pid" => a.pid = v().parse().expect("--pid"),
            "--data" => a.data = v(),
            "--out" => a.out = v(),
            "--seconds" => a.seconds = v().parse().expect("--seconds"),
            "--sample" => a.sample = v().parse().expect("--sample"),
            "--users" => a.users = v().parse().expect("--users"),
            "--rooms" => a.rooms = v().parse().expect("--rooms"),
            _ => {}
        }
    }
    a
}

// --------------------------------------------------------------- counts ----

#[derive(Default)]
struct Counts {
    messages: AtomicU64,
    reads: AtomicU64,
    tasks_created: AtomicU64,
    tasks_done: AtomicU64,
    tasks_deleted: AtomicU64,
    doc_updates: AtomicU64,
    presence: AtomicU64,
    refreshes: AtomicU64,
    reconnects: AtomicU64,
    events: AtomicU64,
    /// Bytes the clients sent to be stored: message text, task titles, Yjs updates.
    payload_bytes: AtomicU64,
    errors: AtomicU64,
    first_errors: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().expect("lock");
        if first.len() < 20 {
            eprintln!("error: {what}");
            first.push(what);
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

// ------------------------------------------------------------------ API ----

struct Api {
    http: reqwest::Client,
    url: String,
    counts: Arc<Counts>,
}

impl Api {
    /// Sends a request; the JSON body of an answer with `want` status, or None (counted).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        want: u16,
    ) -> Option<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) if r.status().as_u16() == want => Some(r.json().await.unwrap_or(Value::Null)),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                self.counts.error(format!("{method} {path}: {status} {}", text.chars().take(200).collect::<String>()));
                None
            }
            Err(e) => {
                self.counts.error(format!("{method} {path}: {e}"));
                None
            }
        }
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Option<Value> {
        self.call(reqwest::Method::POST, path, token, Some(body), 201).await
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

struct Room {
    id: String,
    channel: String,
    doc: String,
}

struct Person {
    me: String,
    access: String,
    refresh: String,
}

/// The organization, its people (logged in) and rooms, made with the operator key.
async fn setup(api: &Api, key: &str, users: usize, rooms: usize) -> (Vec<Person>, Vec<Room>) {
    let slug = format!("soak{}", std::process::id());
    let org = id(&api.post("/v1/orgs", key, json!({ "slug": slug, "name": "Soak" })).await.expect("org"));
    let mut people = Vec::new();
    for i in 0..users {
        let role = if i == 0 { "admin" } else { "member" };
        let inv = api
            .post(
                &format!("/v1/orgs/{org}/invitations"),
                key,
                json!({ "email": format!("p{i}@{slug}.example.org"), "role": role }),
            )
            .await
            .expect("invitation");
        let (login, password) = (format!("p{i}"), "soak password 123");
        let accept = json!({ "token": inv["token"], "username": login, "password": password });
        api.http.post(format!("{}/v1/auth/invitations/accept", api.url)).json(&accept).send().await.expect("accept");
        let t: Value = api
            .http
            .post(format!("{}/v1/auth/login", api.url))
            .json(&json!({ "org": slug, "login": login, "password": password }))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login json");
        people.push(Person {
            me: t["user"]["id"].as_str().expect("user id").to_owned(),
            access: t["access_token"].as_str().expect("access token").to_owned(),
            refresh: t["refresh_token"].as_str().expect("refresh token").to_owned(),
        });
    }
    let mut out = Vec::new();
    for r in 0..rooms {
        let owner = &people[0].access;
        let room = id(&api
            .post("/v1/rooms", owner, json!({ "name": format!("room {r}"), "visibility": "org" }))
            .await
            .expect("room"));
        let channel = id(&api
            .post("/v1/channels", owner, json!({ "kind": "public", "name": format!("room-{r}") }))
            .await
            .expect("channel"));
        let doc =
            id(&api.post(&format!("/v1/rooms/{room}/docs"), owner, json!({ "name": "notes" })).await.expect("doc"));
        out.push(Room { id: room, channel, doc });
    }
    for (i, p) in people.iter().enumerate().skip(1) {
        let room = &out[i % rooms];
        api.call(reqwest::Method::POST, &format!("/v1/rooms/{}/join", room.id), &p.access, Some(json!({})), 200).await;
        api.call(
            reqwest::Method::POST,
            &format!("/v1/channels/{}/join", room.channel),
            &p.access,
            Some(json!({})),
            204,
        )
        .await;
    }
    (people, out)
}

// ---------------------------------------------------------------- people ----

/// One person's HTTP work until `end`; hands fresh access tokens to their socket.
#[allow(clippy::too_many_lines)] // one person's day, in the order it happens
async fn work(
    api: Arc<Api>,
    n: usize,
    mut person: Person,
    room: Arc<Room>,
    token_tx: watch::Sender<String>,
    end: Instant,
) {
    let counts = api.counts.clone();
    let replica = Doc::new();
    let text = replica.get_or_insert_text("text");
    let mut open: VecDeque<String> = VecDeque::new();
    let mut done: VecDeque<String> = VecDeque::new();
    // Spread the people over the first seconds so their requests do not come in lockstep.
    tokio::time::sleep(Duration::from_millis(137 * n as u64 % 3000)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut second: u64 = 0;
    while Instant::now() < end {
        tick.tick().await;
        second += 1;
        let token = person.access.clone();
        if second % 3 == 0 {
            let body = format!("message {second} from {n}: the build on the edge box is green again");
            if api
                .post(&format!("/v1/channels/{}/messages", room.channel), &token, json!({ "text": body }))
                .await
                .is_some()
            {
                add(&counts.messages, 1);
                add(&counts.payload_bytes, body.len() as u64);
            }
        }
        if second % 5 == 0 {
            let update = {
                let mut txn = replica.transact_mut();
                let len = text.len(&txn);
                text.insert(&mut txn, len, &((b'a' + (second % 26) as u8) as char).to_string());
                txn.encode_update_v1()
            };
            let r = api
                .http
                .post(format!("{}/v1/docs/{}/updates", api.url, room.doc))
                .bearer_auth(&token)
                .header("content-type", "application/octet-stream")
                .body(update.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    add(&counts.doc_updates, 1);
                    add(&counts.payload_bytes, update.len() as u64);
                }
                Ok(r) => counts.error(format!("doc update: {}", r.status())),
                Err(e) => counts.error(format!("doc update: {e}")),
            }
        }
        if second % 15 == 0 {
            let title = format!("follow up {second} of {n}");
            let task = json!({ "title": title, "assignee_ids": [person.me], "room_id": room.id });
            if let Some(created) = api.post("/v1/tasks", &token, task).await {
                add(&counts.tasks_created, 1);
                add(&counts.payload_bytes, title.len() as u64);
                open.push_back(id(&created));
            }
            if open.len() > 3 {
                let task = open.pop_front().expect("open task");
                let patch = json!({ "status": "done" });
                if api
                    .call(reqwest::Method::PATCH, &format!("/v1/tasks/{task}"), &token, Some(patch), 200)
                    .await
                    .is_some()
                {
                    add(&counts.tasks_done, 1);
                    done.push_back(task);
                }
            }
            if done.len() > 20 {
                let task = done.pop_front().expect("done task");
                if api.call(reqwest::Method::DELETE, &format!("/v1/tasks/{task}"), &token, None, 204).await.is_some() {
                    add(&counts.tasks_deleted, 1);
                }
            }
        }
        if second % 30 == 0
            && api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/channels/{}/messages?limit=50", room.channel),
                    &token,
                    None,
                    200,
                )
                .await
                .is_some()
        {
            add(&counts.reads, 1);
        }
        if second % 60 == 0
            && api
                .call(reqwest::Method::GET, &format!("/v1/tasks?assignee={}&limit=50", person.me), &token, None, 200)
                .await
                .is_some()
        {
            add(&counts.reads, 1);
        }
        if second % 600 == 0 {
            let body = json!({ "refresh_token": person.refresh });
            if let Some(pair) = api.call(reqwest::Method::POST, "/v1/auth/refresh", "", Some(body), 200).await {
                pair["access_token"].as_str().expect("access token").clone_into(&mut person.access);
                pair["refresh_token"].as_str().expect("refresh token").clone_into(&mut person.refresh);
                add(&counts.refreshes, 1);
                let _ = token_tx.send(person.access.clone());
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One person's socket until `end`: follows their topics, moves, reconnects with `since`.
async fn follow(
    url: String,
    n: usize,
    me: String,
    room: Arc<Room>,
    mut token: watch::Receiver<String>,
    counts: Arc<Counts>,
    end: Instant,
) {
    let topics = [
        format!("room:{}", room.id),
        format!("channel:{}", room.channel),
        format!("doc:{}", room.doc),
        format!("user:{me}"),
    ];
    let mut since: HashMap<String, u64> = HashMap::new();
    let mut epoch: Option<u64> = None;
    let ws_url = format!("{}/v1/realtime", url.replace("http://", "ws://"));
    tokio::time::sleep(Duration::from_millis(211 * n as u64 % 5000)).await;
    while Instant::now() < end {
        let session_end = (Instant::now() + Duration::from_secs(900)).min(end);
        let ws = tokio_tungstenite::connect_async(&ws_url).await;
        let Ok((mut ws, _)) = ws else {
            counts.error(format!("realtime connect: {}", ws.err().map(|e| e.to_string()).unwrap_or_default()));
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let auth = json!({ "op": "auth", "token": token.borrow_and_update().clone() });
        let _ = ws.send(Message::text(auth.to_string())).await;
        for t in &topics {
            let mut sub = json!({ "op": "subscribe", "topic": t });
            if let (Some(s), Some(e)) = (since.get(t), epoch) {
                sub["since"] = json!(s);
                sub["epoch"] = json!(e);
            }
            let _ = ws.send(Message::text(sub.to_string())).await;
        }
        if session(&mut ws, n, &room, &mut token, &counts, &mut since, &mut epoch, session_end).await {
            let _ = ws.close(None).await;
            if Instant::now() < end {
                add(&counts.reconnects, 1);
            }
        }
    }
}

/// Runs one connection until `until`; false when the server closed it first (counted).
#[allow(clippy::too_many_arguments)]
async fn session(
    ws: &mut Ws,
    n: usize,
    room: &Room,
    token: &mut watch::Receiver<String>,
    counts: &Counts,
    since: &mut HashMap<String, u64>,
    epoch: &mut Option<u64>,
    until: Instant,
) -> bool {
    let mut moves = tokio::time::interval(Duration::from_secs(20));
    let mut step = 0u64;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until.into()) => return true,
            _ = moves.tick() => {
                step += 1;
                let state = json!({ "position": [n as f64, 0.0, (step % 10) as f64] });
                let frame = json!({ "op": "presence", "topic": format!("room:{}", room.id), "state": state });
                if ws.send(Message::text(frame.to_string())).await.is_ok() {
                    add(&counts.presence, 1);
                }
            }
            Ok(()) = token.changed() => {
                let frame = json!({ "op": "auth", "token": token.borrow_and_update().clone() });
                let _ = ws.send(Message::text(frame.to_string())).await;
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    match v["op"].as_str() {
                        Some("welcome") => *epoch = v["epoch"].as_u64(),
                        Some("event") => {
                            add(&counts.events, 1);
                            if let (Some(topic), Some(seq)) = (v["topic"].as_str(), v["seq"].as_u64()) {
                                since.insert(topic.to_owned(), seq);
                            }
                        }
                        Some("error") => counts.error(format!("realtime error frame: {t}")),
                        Some("reset") => counts.error(format!("realtime reset: {t}")),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    counts.error(format!("realtime closed by the server: {f:?}"));
                    return false;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    counts.error(format!("realtime: {e}"));
                    return false;
                }
                None => {
                    counts.error("realtime: connection ended".into());
                    return false;
                }
            },
        }
    }
}

// -------------------------------------------------------------- sampling ----

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors and, of them, sockets.
fn fds(pid: u32) -> (u64, u64) {
    let (mut all, mut sockets) = (0, 0);
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        all += 1;
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")) {
            sockets += 1;
        }
    }
    (all, sockets)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn follower_lag_max(http: &reqwest::Client, url: &str) -> i64 {
    let Ok(r) = http.get(format!("{url}/metrics")).send().await else { return -1 };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("outpost_follower_lag_events{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .max()
        .unwrap_or(0)
}

const HEADER: &str = "t_s,rss_kib,fds,sockets,store_bytes,follower_lag_max,messages,reads,tasks_created,tasks_done,\
tasks_deleted,doc_updates,presence,refreshes,reconnects,events,payload_bytes,errors";

async fn sample(a: &Args, http: &reqwest::Client, t_s: u64, c: &Counts) -> String {
    let (all, sockets) = fds(a.pid);
    let g = |x: &AtomicU64| x.load(Ordering::Relaxed);
    format!(
        "{t_s},{},{all},{sockets},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        proc_status_kb(a.pid, "VmRSS:"),
        dir_bytes(std::path::Path::new(&a.data)),
        follower_lag_max(http, &a.url).await,
        g(&c.messages),
        g(&c.reads),
        g(&c.tasks_created),
        g(&c.tasks_done),
        g(&c.tasks_deleted),
        g(&c.doc_updates),
        g(&c.presence),
        g(&c.refreshes),
        g(&c.reconnects),
        g(&c.events),
        g(&c.payload_bytes),
        g(&c.errors),
    )
}

#[tokio::main]
async fn main() {
    let a = args();
    let counts = Arc::new(Counts::default());
    let api = Arc::new(Api { http: reqwest::Client::new(), url: a.url.clone(), counts: counts.clone() });
    let (people, rooms) = setup(&api, &a.key, a.users, a.rooms).await;
    let rooms: Vec<Arc<Room>> = rooms.into_iter().map(Arc::new).collect();
    eprintln!("{} people in {} rooms; running {} s", people.len(), rooms.len(), a.seconds);
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for (n, p) in people.into_iter().enumerate() {
        let room = rooms[n % rooms.len()].clone();
        let (tx, rx) = watch::channel(p.access.clone());
        tasks.push(tokio::spawn(follow(a.url.clone(), n, p.me.clone(), room.clone(), rx, counts.clone(), end)));
        tasks.push(tokio::spawn(work(api.clone(), n, p, room, tx, end)));
    }
    let mut out = String::from(HEADER);
    out.push('\n');
    let start = Instant::now();
    let mut n = 0;
    loop {
        let row = sample(&a, &api.http, start.elapsed().as_secs(), &counts).await;
        eprintln!("{row}");
        out.push_str(&row);
        out.push('\n');
        std::fs::write(&a.out, &out).expect("write the samples");
        if Instant::now() >= end {
            break;
        }
        n += 1;
        tokio::time::sleep_until((start + Duration::from_secs(a.sample * n)).min(end).into()).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let errors = counts.errors.load(Ordering::Relaxed);
    println!("errors {errors}");
    std::process::exit(i32::from(errors > 0));
}
