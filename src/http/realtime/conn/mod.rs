//! One realtime socket: authentication, the socket's wait loop, delivery in `seq` order without
//! duplicates at the replay/live seam, periodic re-checks of the session and of each
//! subscription, idle and slow-client cut-offs, and the going-away close on shutdown. What each
//! client frame does is in `frames`.

mod frames;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::auth::{self, AuthError, Principal, Proof};
use crate::http::socket::{self, Budget, End, LapseCodes, Socket, WriteFailed, bye, timed};
use crate::http::ws::{Message, ReadError};
use crate::ids::rfc3339;
use crate::realtime::pace::Pacer;
use crate::realtime::protocol::{ClientFrame, ServerFrame, close};
use crate::realtime::{Delivery, Hub, Registration, ephemeral, may_change_access, may_follow};

/// Awaits a future from the heap, for the steps an idle socket is not in. It is boxed in a
/// statement of its own: boxed in the statement that awaits it, the future would still take its
/// whole size in the socket's task, as a temporary that lives across the await.
macro_rules! boxed {
    ($f:expr) => {{
        let f = Box::pin($f);
        f.await
    }};
}

/// Queued events written together at most (one flush for all of them).
const WRITE_BATCH_MAX: usize = 256;
/// How a lapsed token closes a realtime socket.
const LAPSE: LapseCodes = LapseCodes {
    expired: close::UNAUTHORIZED,
    expired_reason: "the access token expired; send auth before it does",
    revoked: close::REVOKED,
};

/// Checks a bearer token once: the caller, and what the token proved (kept for the re-checks
/// instead of the token, which is several hundred bytes an open socket).
async fn authenticate(app: &App, token: &str) -> Result<(Principal, Proof), AuthError> {
    let proof = auth::prove(&app.auth_caches, &app.keys.ring(), token, app.access_ttl())?;
    let p = auth::stand(&app.store, &app.auth_caches, &proof).await?;
    Ok((p, proof))
}

/// Serves one upgraded socket until it closes. `offered` is a token given as a subprotocol.
///
/// An open socket's task keeps only its wait loop's state, so an idle socket costs little. The
/// opening (authentication, budgets, registration, the welcome) runs in this task, which ends
/// once it is done; the wait loop then runs in a task of its own ([`run`]). A task's future is
/// as large as everything it ever holds: the socket handed in here, kept in the future's
/// arguments, and the opening's state would otherwise be carried by the loop for the socket's
/// whole life.
pub async fn serve(app: App, hub: Arc<Hub>, socket: Socket, offered: Option<String>) {
    if let Some(opened) = open(app, hub, socket, offered).await {
        tokio::spawn(run(opened));
    }
}

/// The wait loop of an opened socket. Every step it takes is boxed (`boxed!`), so the task keeps
/// only what the loop waits with; a value awaited takes room in the awaiting future for as long
/// as the await lasts.
async fn run(opened: Box<Opened>) {
    let (mut c, mut stopping, mut tick, idle, mut pacer) = opened.unbox();
    let mailbox = c.reg.mailbox.clone();
    let mut heard = Instant::now();
    loop {
        if mailbox.is_slow() {
            return boxed!(c.close(close::TOO_SLOW, "the client did not keep up; resume from the positions given"));
        }
        tokio::select! {
            frame = c.ws.recv() => {
                heard = Instant::now();
                if let Err(end) = boxed!(c.on_frame(frame)) {
                    return boxed!(c.end(end));
                }
            }
            // While the pacer holds, events and ephemeral frames wait in the mailbox: they go
            // out together when it is due. A cut-off is seen at the top of the loop.
            () = mailbox.notify.notified(), if !pacer.holding() => {
                if !mailbox.is_slow()
                    && pacer.ready(tokio::time::Instant::now())
                    && boxed!(c.write_out(&mailbox, &mut pacer)).is_err()
                {
                    return;
                }
            }
            () = pacer.due() => {
                if boxed!(c.write_out(&mailbox, &mut pacer)).is_err() {
                    return;
                }
            }
            _ = stopping.changed() => {
                return boxed!(c.close(close::GOING_AWAY, "the server is shutting down; resume from the positions given"));
            }
            _ = tick.tick() => {
                if heard.elapsed() > idle {
                    return boxed!(c.close(close::IDLE, "nothing heard from the client"));
                }
                if let Err(end) = boxed!(c.recheck()) {
                    return boxed!(c.end(end));
                }
                if boxed!(socket::ping(&mut c.ws)).is_err() {
                    return;
                }
            }
        }
    }
}

/// What an opened socket's wait loop keeps.
struct Opened {
    c: Conn,
    stopping: tokio::sync::watch::Receiver<bool>,
    tick: tokio::time::Interval,
    idle: Duration,
    pacer: Pacer,
}

impl Opened {
    /// The parts, out of their box, and the box freed. Taken apart in the loop itself, the box
    /// would be freed only when the loop ends: moving every field out of a box leaves its
    /// memory held to the end of the scope, a whole copy of the loop's state per open socket.
    fn unbox(self: Box<Self>) -> (Conn, tokio::sync::watch::Receiver<bool>, tokio::time::Interval, Duration, Pacer) {
        let Opened { c, stopping, tick, idle, pacer } = *self;
        (c, stopping, tick, idle, pacer)
    }
}

/// Authenticates the socket, charges the opening to the caller's budgets, registers it with the
/// hub and says welcome; `None` when it was refused (and told why) or is gone.
async fn open(app: App, hub: Arc<Hub>, mut ws: Socket, offered: Option<String>) -> Option<Box<Opened>> {
    let cfg = app.config.realtime.clone();
    // Authentication first: from the subprotocol, or the first frame within the deadline.
    let token = if let Some(t) = offered {
        t
    } else {
        let first = tokio::time::timeout(Duration::from_secs(cfg.auth_timeout_s), ws.recv()).await;
        match first {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(ClientFrame::Auth { token }) = serde_json::from_str::<ClientFrame>(&t) {
                    token
                } else {
                    bye(&mut ws, close::UNAUTHORIZED, "the first frame must be auth").await;
                    return None;
                }
            }
            Ok(Some(Err(ReadError::Protocol(code, reason)))) => {
                bye(&mut ws, code, reason).await;
                return None;
            }
            Ok(_) => return None,
            Err(_) => {
                bye(&mut ws, close::UNAUTHORIZED, "no auth frame in time").await;
                return None;
            }
        }
    };
    let (p, proof) = match boxed!(authenticate(&app, &token)) {
        Ok(x) => x,
        Err(e) => {
            bye(&mut ws, close::UNAUTHORIZED, &e.to_string()).await;
            return None;
        }
    };
    // Opening a socket is a request against the user's and organization's budgets, like any
    // other: a flood of connects is shed here, before it subscribes to anything.
    if let Err(l) = app.limits.request(p.org, p.user) {
        let why =
            format!("too many requests ({} limit): retry in {} s", l.limiter.as_str(), l.retry_after.as_secs().max(1));
        bye(&mut ws, close::TOO_MANY, &why).await;
        return None;
    }
    let caps = (cfg.connections_per_user_max, cfg.connections_per_org_max);
    let Some(reg) = hub.register(p.org, p.user, cfg.send_queue_len, caps) else {
        bye(&mut ws, close::TOO_MANY, "too many open sockets for this user or organization").await;
        return None;
    };
    let calls = super::calls::Calls::new(&app);
    let mut c = Conn {
        app,
        p,
        proof,
        reg,
        positions: Positions::default(),
        here_since: BTreeMap::new(),
        budget: Budget::new(cfg.signals_per_s),
        calls,
        ws,
    };
    c.send(&c.welcome()).await.ok()?;
    let tick = socket::recheck_every(&c.app);
    Some(Box::new(Opened {
        c,
        stopping: hub.stopping(),
        tick,
        idle: Duration::from_secs(cfg.idle_timeout_s),
        pacer: Pacer::new(Duration::from_millis(cfg.write_coalesce_ms), hub.busy.clone()),
    }))
}

struct Conn {
    app: App,
    p: Principal,
    /// What the caller's credential proved: the re-checks start from it.
    proof: Proof,
    reg: Registration,
    /// Subscribed topics and the last seq delivered on each.
    positions: Positions,
    /// When this socket's presence began on each topic.
    here_since: BTreeMap<String, String>,
    /// Presence updates and signals this socket may still send now.
    budget: Budget,
    /// The call connections this socket signals for.
    calls: super::calls::Calls,
    ws: Socket,
}

impl Conn {
    fn welcome(&self) -> ServerFrame {
        ServerFrame::Welcome {
            user: self.p.user.to_string(),
            org: self.p.org.to_string(),
            session: self.p.session.to_string(),
            epoch: self.app.store.epoch(),
            expires_at: self.proof.expires_ms().map_or_else(String::new, rfc3339),
        }
    }

    async fn send(&mut self, f: &ServerFrame) -> Result<(), WriteFailed> {
        timed(self.ws.send_text(&f.to_text())).await
    }

    /// Reads one frame from the client and does what it asks; `Err` says how the socket ends.
    async fn on_frame(&mut self, frame: Option<Result<Message, ReadError>>) -> Result<(), End> {
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
            Some(Ok(Message::Binary(_))) => return Err(End::Close(close::PROTOCOL, "frames are JSON text".to_owned())),
            Some(Err(e)) => return Err(End::on_read(&e)),
            Some(Ok(Message::Close(_))) | None => return Err(End::Gone),
        };
        match serde_json::from_str::<ClientFrame>(&text) {
            Ok(frame) => self.handle(frame).await,
            Err(e) => Ok(self.send(&ServerFrame::error("invalid_frame", e.to_string(), None)).await?),
        }
    }

    async fn end(self, end: End) {
        if let End::Close(code, reason) = end {
            self.close(code, &reason).await;
        }
    }

    /// Says where to resume, then closes with `code`.
    async fn close(mut self, code: u16, reason: &str) {
        let resume = std::mem::take(&mut self.positions).into_map();
        let _ = self.send(&ServerFrame::Closing { code, reason: reason.to_owned(), resume }).await;
        bye(&mut self.ws, code, reason).await;
    }

    /// Writes what is waiting in the mailbox (`WRITE_BATCH_MAX` events at most, then the
    /// ephemeral frames) with one flush for all of it.
    async fn write_out(&mut self, mailbox: &ephemeral::Mailbox, pacer: &mut Pacer) -> Result<(), WriteFailed> {
        let batch = mailbox.take_events(WRITE_BATCH_MAX);
        // One time limit for the whole write, not one timer per frame.
        let write = async {
            let mut wrote = self.deliver_all(&batch).await?;
            for text in mailbox.take() {
                self.ws.feed_text(&text).await?;
                wrote += 1;
            }
            if wrote > 0 {
                self.ws.flush().await?;
            }
            Ok::<_, WriteFailed>(wrote)
        };
        let wrote = timed(write).await?;
        let more = mailbox.has_events();
        if wrote == 0 {
            pacer.cancel();
        } else {
            pacer.wrote(tokio::time::Instant::now(), wrote, more);
        }
        // What is still waiting goes out on the loop's next turn, unless the pacer holds it.
        if more && !pacer.holding() {
            mailbox.notify.notify_one();
        }
        Ok(())
    }

    /// Feeds the deliveries still wanted (in order, once each); how many it fed. Not flushed
    /// unless an event may change who sees its topic. The caller puts a time limit on it.
    async fn deliver_all(&mut self, batch: &[Arc<Delivery>]) -> Result<usize, WriteFailed> {
        let mut wrote = 0;
        for d in batch {
            let e = &d.event;
            let Some(last) = self.positions.get_mut(&e.topic) else { continue };
            if e.seq <= *last {
                continue;
            }
            *last = e.seq;
            self.ws.feed_text(&d.text).await?;
            wrote += 1;
            self.app.metrics.realtime_events_sent.inc();
            if may_change_access(&e.kind) {
                self.ws.flush().await?;
                self.recheck_access(&e.topic).await?;
            }
        }
        Ok(wrote)
    }

    /// After an event that may change who sees `topic`: drop it if the caller no longer does.
    async fn recheck_access(&mut self, topic: &str) -> Result<(), WriteFailed> {
        if may_follow(&self.app.store, &self.p, topic).is_err() {
            self.drop_topic(topic.to_owned(), "access_lost", None).await?;
        }
        Ok(())
    }

    /// The token, session, user and organization are still good; subscriptions still allowed.
    async fn recheck(&mut self) -> Result<(), End> {
        if let Some(p) = socket::recheck(&self.app, &self.proof, &LAPSE).await? {
            self.p = p;
        }
        let lost: Vec<String> =
            self.positions.keys().filter(|t| may_follow(&self.app.store, &self.p, t).is_err()).cloned().collect();
        for topic in lost {
            self.drop_topic(topic, "access_lost", None).await?;
        }
        Ok(())
    }

    /// Ends the subscription to `topic` (and this socket's presence there) and says why.
    async fn drop_topic(&mut self, topic: String, reason: &str, r#ref: Option<String>) -> Result<(), WriteFailed> {
        self.reg.unsubscribe(&topic);
        self.positions.remove(&topic);
        self.here_since.remove(&topic);
        self.send(&ServerFrame::Unsubscribed { topic, reason: reason.to_owned(), r#ref }).await
    }
}

/// A socket's subscribed topics and the last seq delivered on each: a vector sorted by topic,
/// sized to what it holds. Most sockets follow one or a few topics; a map's smallest node
/// holds eleven, which an idle socket would carry for nothing.
#[derive(Default)]
struct Positions(Vec<(String, u64)>);

impl Positions {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(t, _)| t.as_str().cmp(topic))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn contains_key(&self, topic: &str) -> bool {
        self.find(topic).is_ok()
    }

    fn get(&self, topic: &str) -> Option<&u64> {
        self.find(topic).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, topic: &str) -> Option<&mut u64> {
        self.find(topic).ok().map(|i| &mut self.0[i].1)
    }

    fn insert(&mut self, topic: String, seq: u64) {
        match self.find(&topic) {
            Ok(i) => self.0[i].1 = seq,
            Err(i) => {
                // Grown one place at a time: the bound on topics per socket keeps the copies few.
                self.0.reserve_exact(1);
                self.0.insert(i, (topic, seq));
            }
        }
    }

    fn remove(&mut self, topic: &str) {
        if let Ok(i) = self.find(topic) {
            self.0.remove(i);
            if self.0.is_empty() {
                self.0 = Vec::new();
            }
        }
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(t, _)| t)
    }

    fn into_map(self) -> BTreeMap<String, u64> {
        self.0.into_iter().collect()
    }
}
