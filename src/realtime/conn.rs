//! One realtime socket: authentication, subscriptions with resume, delivery in `seq` order
//! without duplicates at the replay/live seam, periodic re-checks of the session, idle and
//! slow-client cut-offs, and the going-away close on shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{CloseCode, Message, WebSocketStream};
use tokio::sync::mpsc;

use super::pace::Pacer;
use super::protocol::{ClientFrame, FRAME_BYTES_MAX, ServerFrame, close};
use super::{Delivery, Hub, Registration, ephemeral, event_frame, may_change_access, may_follow};
use crate::app::App;
use crate::auth::{self, AuthError, Principal};
use crate::domain::{DomainError, inbox};
use crate::ids::rfc3339;
use crate::store::writer::MutationCtx;
use crate::tenancy::OrgScope;

/// A write the client does not take within this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The device name of an inbox `subscribe` or `ack` that gives none.
const DEFAULT_DEVICE: &str = "default";
/// Events read from the log per step of a replay.
const REPLAY_PAGE: usize = 500;

pub(crate) type Sink = SplitSink<WebSocketStream, Message>;
pub(crate) type Stream = SplitStream<WebSocketStream>;

/// Queued events written together at most (one flush for all of them).
const WRITE_BATCH_MAX: usize = 256;
/// How long a closing socket waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Checks a bearer token: the caller and, for an access token, when it expires (ms).
async fn authenticate(app: &App, token: &str) -> Result<(Principal, Option<i64>), AuthError> {
    let p = auth::user(&app.store, &app.verified_tokens, &app.keys.ring(), token, app.access_ttl()).await?;
    let exp = if token.starts_with(crate::domain::api_keys::PREFIX) {
        None
    } else {
        Some(app.verified_tokens.verify(&app.keys.ring(), token, app.access_ttl())?.exp_s * 1000)
    };
    Ok((p, exp))
}

/// Why a socket's token no longer stands.
pub(crate) enum Lapsed {
    /// The access token expired (a fresh one fixes it).
    Expired,
    /// The session was revoked, or the user or organization is no longer active.
    Revoked(String),
}

/// Checks a socket's token again: the caller as they stand now, `None` when the store could not
/// say (a hiccup is not a verdict on the session; look again next time), or why it lapsed.
pub(crate) async fn recheck_token(app: &App, token: &str) -> Result<Option<Principal>, Lapsed> {
    match auth::user(&app.store, &app.verified_tokens, &app.keys.ring(), token, app.access_ttl()).await {
        Ok(p) => Ok(Some(p)),
        Err(AuthError::Store(e)) => {
            tracing::warn!(error = %e, "a socket's recheck could not read the store");
            Ok(None)
        }
        Err(AuthError::Token(_)) => Err(Lapsed::Expired),
        Err(e) => Err(Lapsed::Revoked(e.to_string())),
    }
}

/// The context of a change a socket's user makes (no HTTP request behind it).
pub(crate) fn socket_ctx(p: &Principal) -> MutationCtx {
    MutationCtx { scope: OrgScope::member(p), actor: p.actor(), request_id: None, client_addr: None }
}

/// Serves one upgraded socket until it closes. `offered` is a token given as a subprotocol.
#[allow(clippy::too_many_lines)] // the socket's whole life: authenticate, then one select loop
pub async fn serve(app: App, hub: Arc<Hub>, socket: WebSocketStream, offered: Option<String>) {
    let cfg = app.config.realtime.clone();
    let (mut sink, mut stream) = socket.split();
    // Authentication first: from the subprotocol, or the first frame within the deadline.
    let token = if let Some(t) = offered {
        t
    } else {
        let first = tokio::time::timeout(Duration::from_secs(cfg.auth_timeout_s), stream.next()).await;
        match first {
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<ClientFrame>(&t) {
                Ok(ClientFrame::Auth { token }) => token,
                _ => return bye(&mut sink, &mut stream, close::UNAUTHORIZED, "the first frame must be auth").await,
            },
            Ok(_) => return,
            Err(_) => return bye(&mut sink, &mut stream, close::UNAUTHORIZED, "no auth frame in time").await,
        }
    };
    // The larger steps are boxed, so a socket's task keeps only what its wait loop needs for
    // as long as it is open (an idle socket costs kilobytes; see benches/realtime.sh).
    let (p, exp) = match Box::pin(authenticate(&app, &token)).await {
        Ok(x) => x,
        Err(e) => return bye(&mut sink, &mut stream, close::UNAUTHORIZED, &e.to_string()).await,
    };
    let (tx, mut rx) = mpsc::channel::<Arc<Delivery>>(cfg.send_queue_len);
    let Some(reg) = hub.register(p.org, p.user, tx, (cfg.connections_per_user_max, cfg.connections_per_org_max)) else {
        return bye(&mut sink, &mut stream, close::TOO_MANY, "too many open sockets for this user or organization")
            .await;
    };
    let mut c = Conn {
        app,
        p,
        token,
        exp,
        reg,
        positions: BTreeMap::new(),
        here_since: BTreeMap::new(),
        budget: Budget::new(cfg.signals_per_s),
        calls: super::calls::Calls::default(),
        sink,
    };
    c.calls = super::calls::Calls::new(&c.app);
    if c.send(&c.welcome()).await.is_err() {
        return;
    }
    let mut stopping = hub.stopping();
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.recheck_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle = Duration::from_secs(cfg.idle_timeout_s);
    let mut heard = Instant::now();
    let signal = c.reg.signal.clone();
    let mailbox = c.reg.mailbox.clone();
    let mut pacer = Pacer::new(Duration::from_millis(cfg.write_coalesce_ms), hub.busy.clone());
    // Deliveries taken from the queue and not yet written (held while the pacer says wait).
    let mut held: Vec<Arc<Delivery>> = Vec::new();
    loop {
        tokio::select! {
            frame = stream.next() => {
                heard = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        return Box::pin(c.close(&mut stream, close::PROTOCOL, "frames are JSON text")).await;
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                if text.len() > FRAME_BYTES_MAX {
                    return Box::pin(c.close(&mut stream, close::PROTOCOL, "frame too large")).await;
                }
                let frame = match serde_json::from_str::<ClientFrame>(&text) {
                    Ok(f) => f,
                    Err(e) => {
                        let err = ServerFrame::error("invalid_frame", e.to_string(), None);
                        if c.send(&err).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                if let Err(end) = Box::pin(c.handle(frame)).await {
                    return Box::pin(c.end(&mut stream, end)).await;
                }
            }
            // While the pacer holds, deliveries and signals wait in their queues: they go out
            // together when it is due.
            Some(d) = rx.recv(), if !pacer.holding() => {
                held.push(d);
                if pacer.ready(tokio::time::Instant::now()) && c.write_out(&mut held, &mut rx, &mailbox, &mut pacer).await.is_err() {
                    return;
                }
            }
            () = mailbox.notify.notified(), if !pacer.holding() => {
                if pacer.ready(tokio::time::Instant::now()) && c.write_out(&mut held, &mut rx, &mailbox, &mut pacer).await.is_err() {
                    return;
                }
            }
            () = pacer.due() => {
                if c.write_out(&mut held, &mut rx, &mailbox, &mut pacer).await.is_err() {
                    return;
                }
            }
            () = signal.notified() => {
                if signal.is_slow() {
                    return Box::pin(c.close(&mut stream, close::TOO_SLOW, "the client did not keep up; resume from the positions given")).await;
                }
            }
            _ = stopping.changed() => {
                return Box::pin(c.close(&mut stream, close::GOING_AWAY, "the server is shutting down; resume from the positions given")).await;
            }
            _ = tick.tick() => {
                if heard.elapsed() > idle {
                    return Box::pin(c.close(&mut stream, close::IDLE, "nothing heard from the client")).await;
                }
                if let Err(end) = Box::pin(c.recheck()).await {
                    return Box::pin(c.end(&mut stream, end)).await;
                }
                // Keep-alive: intermediaries see traffic, and a dead peer shows up as a failed write.
                let ping = tokio::time::timeout(WRITE_TIMEOUT, c.sink.send(Message::Ping(Vec::new()))).await;
                if !matches!(ping, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}

/// Why a connection ends.
enum End {
    /// The socket is gone; nothing more to say.
    Gone,
    Close(u16, String),
}

impl From<WriteFailed> for End {
    fn from(_: WriteFailed) -> Self {
        End::Gone
    }
}

struct WriteFailed;

struct Conn {
    app: App,
    p: Principal,
    token: String,
    /// When the access token expires (ms), or never for an API key.
    exp: Option<i64>,
    reg: Registration,
    /// Subscribed topics and the last seq delivered on each.
    positions: BTreeMap<String, u64>,
    /// When this socket's presence began on each topic.
    here_since: BTreeMap<String, String>,
    /// Presence updates and signals this socket may still send now.
    budget: Budget,
    /// The call connections this socket signals for.
    calls: super::calls::Calls,
    sink: Sink,
}

/// A token bucket for ephemeral frames: `rate` a second, bursts of twice that.
pub(crate) struct Budget {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    pub(crate) fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self { rate, tokens: 2.0 * rate, at: Instant::now() }
    }

    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(2.0 * self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn not_subscribed(topic: &str, r#ref: Option<String>) -> ServerFrame {
    ServerFrame::error("not_subscribed", format!("subscribe to {topic} first"), r#ref)
}

impl Conn {
    fn welcome(&self) -> ServerFrame {
        ServerFrame::Welcome {
            user: self.p.user.to_string(),
            org: self.p.org.to_string(),
            session: self.p.session.to_string(),
            epoch: self.app.store.epoch(),
            expires_at: self.exp.map_or_else(String::new, rfc3339),
        }
    }

    async fn send(&mut self, f: &ServerFrame) -> Result<(), WriteFailed> {
        self.send_text(f.to_text()).await
    }

    async fn send_text(&mut self, text: String) -> Result<(), WriteFailed> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.sink.send(Message::Text(text))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteFailed),
        }
    }

    async fn end(self, stream: &mut Stream, end: End) {
        if let End::Close(code, reason) = end {
            self.close(stream, code, &reason).await;
        }
    }

    /// Says where to resume, then closes with `code`.
    async fn close(mut self, stream: &mut Stream, code: u16, reason: &str) {
        let resume = std::mem::take(&mut self.positions);
        let _ = self.send(&ServerFrame::Closing { code, reason: reason.to_owned(), resume }).await;
        bye(&mut self.sink, stream, code, reason).await;
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<(), End> {
        match frame {
            ClientFrame::Ping { r#ref } => self.send(&ServerFrame::Pong { r#ref }).await?,
            ClientFrame::Auth { token } => match authenticate(&self.app, &token).await {
                Ok((p, exp)) if p.org == self.p.org && p.user == self.p.user => {
                    (self.p, self.exp, self.token) = (p, exp, token);
                    let w = self.welcome();
                    self.send(&w).await?;
                }
                Ok(_) => return Err(End::Close(close::UNAUTHORIZED, "a token of another user".into())),
                Err(e) => self.send(&ServerFrame::error("unauthorized", e.to_string(), None)).await?,
            },
            ClientFrame::Subscribe { topic, since, device, epoch, r#ref } => {
                self.subscribe(topic, since, device, epoch, r#ref).await?;
            }
            ClientFrame::Ack { topic, seq, device, r#ref } => self.ack(topic, seq, device, r#ref).await?,
            ClientFrame::Presence { topic, status, state, device } => {
                if let Err(f) = self.presence(&topic, status, state, device) {
                    self.send(&f).await?;
                }
            }
            ClientFrame::Signal { topic, kind, data } => {
                if let Err(f) = self.relay(&topic, &kind, data) {
                    self.send(&f).await?;
                }
            }
            ClientFrame::Lock { topic, name, lease_ms, r#ref } => {
                let f = self.lock(topic, name, lease_ms, r#ref);
                self.send(&f).await?;
            }
            ClientFrame::Unlock { topic, name, token, r#ref } => {
                if !self.positions.contains_key(&topic) {
                    self.send(&not_subscribed(&topic, r#ref)).await?;
                } else if !self.reg.unlock(&topic, &name, token) {
                    let f = ServerFrame::error(
                        "not_lock_holder",
                        format!("you do not hold {name} under that token"),
                        r#ref,
                    );
                    self.send(&f).await?;
                }
            }
            ClientFrame::CallJoin { room, sdp, r#ref } => {
                let f = self.calls.join(&self.app, &self.p, self.reg.mailbox.clone(), &room, &sdp, r#ref);
                self.send(&f).await?;
            }
            ClientFrame::CallAnswer { connection, sdp } => {
                if let Err(f) = self.calls.sdp(&connection, sdp, false) {
                    self.send(&f).await?;
                }
            }
            ClientFrame::CallOffer { connection, sdp } => {
                if let Err(f) = self.calls.sdp(&connection, sdp, true) {
                    self.send(&f).await?;
                }
            }
            ClientFrame::CallCandidate { connection, candidate, .. } => {
                if let Err(f) = self.calls.candidate(&connection, candidate) {
                    self.send(&f).await?;
                }
            }
            ClientFrame::CallUpdate { connection, tracks, spatial, video_quality, video } => {
                let r = if self.budget.take() {
                    self.calls.update(&connection, tracks, spatial, video_quality.as_deref(), &video)
                } else {
                    Err(ServerFrame::error("rate_limited", "too many presence updates, signals and call updates", None))
                };
                if let Err(f) = r {
                    self.send(&f).await?;
                }
            }
            ClientFrame::CallLeave { connection, r#ref } => {
                if let Err(f) = self.calls.leave(&connection, r#ref) {
                    self.send(&f).await?;
                }
            }
            ClientFrame::Unsubscribe { topic, r#ref } => {
                self.reg.unsubscribe(&topic);
                self.positions.remove(&topic);
                self.here_since.remove(&topic);
                self.send(&ServerFrame::Unsubscribed { topic, reason: "requested".into(), r#ref }).await?;
            }
        }
        Ok(())
    }

    fn presence(
        &mut self,
        topic: &str,
        status: Option<String>,
        state: Option<serde_json::Value>,
        device: Option<String>,
    ) -> Result<(), ServerFrame> {
        if !self.positions.contains_key(topic) {
            return Err(not_subscribed(topic, None));
        }
        if !(topic.starts_with("room:") || topic.starts_with("channel:")) {
            return Err(ServerFrame::error("invalid_presence", "presence is kept on room and channel topics", None));
        }
        let status = status.unwrap_or_else(|| "online".into());
        if !ephemeral::valid_status(&status) {
            return Err(ServerFrame::error("invalid_presence", "status is online, away or busy", None));
        }
        let state = state.unwrap_or(serde_json::Value::Null);
        if serde_json::to_vec(&state).map_or(usize::MAX, |v| v.len()) > ephemeral::PRESENCE_STATE_BYTES_MAX {
            return Err(ServerFrame::error("invalid_presence", "state is at most 2 KiB of JSON", None));
        }
        let device = device.unwrap_or_else(|| DEFAULT_DEVICE.to_owned());
        if inbox::check_device(&device).is_err() {
            return Err(ServerFrame::error("invalid_device", "device names are 1–64 bytes", None));
        }
        if !self.budget.take() {
            return Err(ServerFrame::error("rate_limited", "too many presence updates and signals", None));
        }
        let since = self.here_since.entry(topic.to_owned()).or_insert_with(|| rfc3339(crate::ids::now_ms())).clone();
        let p = ephemeral::Presence { user: self.p.user.to_string(), device, status, state, since };
        self.reg.set_presence(topic, p);
        Ok(())
    }

    fn relay(&mut self, topic: &str, kind: &str, data: serde_json::Value) -> Result<(), ServerFrame> {
        if !self.positions.contains_key(topic) {
            return Err(not_subscribed(topic, None));
        }
        let known = matches!(kind, "typing" | "cursor" | "pointer" | "selection")
            || kind.strip_prefix("custom:").is_some_and(|k| !k.is_empty() && k.len() <= 64);
        if !known {
            return Err(ServerFrame::error(
                "invalid_signal",
                "kind is typing, cursor, pointer, selection or custom:<name>",
                None,
            ));
        }
        if serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len()) > ephemeral::SIGNAL_BYTES_MAX {
            return Err(ServerFrame::error("invalid_signal", "data is at most 4 KiB of JSON", None));
        }
        if !self.budget.take() {
            return Err(ServerFrame::error("rate_limited", "too many presence updates and signals", None));
        }
        let frame =
            ServerFrame::Signal { topic: topic.to_owned(), from: self.p.user.to_string(), kind: kind.to_owned(), data };
        self.reg.signal(topic, kind, &frame);
        Ok(())
    }

    fn lock(&mut self, topic: String, name: String, lease_ms: u64, r#ref: Option<String>) -> ServerFrame {
        if !self.positions.contains_key(&topic) {
            return not_subscribed(&topic, r#ref);
        }
        let Some(room) = topic.strip_prefix("room:").and_then(|r| r.parse().ok()) else {
            return ServerFrame::error("invalid_lock", "locks are taken in rooms (room:{id})", r#ref);
        };
        if name.is_empty() || name.len() > 200 {
            return ServerFrame::error("invalid_lock", "lock names are 1–200 bytes", r#ref);
        }
        let lease = Duration::from_millis(lease_ms);
        if !(ephemeral::LEASE_MIN..=ephemeral::LEASE_MAX).contains(&lease) {
            return ServerFrame::error("invalid_lock", "lease_ms is 100–600000", r#ref);
        }
        // Viewers watch; taking a lock to change something needs at least the member role.
        let may = crate::domain::rooms::get(&self.app.store, &self.p, room)
            .ok()
            .and_then(|(_, me)| me)
            .is_some_and(|me| me.role >= crate::auth::policy::RoomRole::Member);
        if !may {
            return ServerFrame::error("forbidden", "taking locks needs the member room role", r#ref);
        }
        match self.reg.lock(&topic, &name, lease) {
            Ok(l) => ServerFrame::Locked { topic, name, token: l.token, expires_at: rfc3339(l.expires_at_ms), r#ref },
            Err(ephemeral::LockRefusal::Held { holder, expires_at_ms }) => ServerFrame::error(
                "lock_held",
                format!("{name} is held by {holder} until {}", rfc3339(expires_at_ms)),
                r#ref,
            ),
            Err(ephemeral::LockRefusal::TooMany) => {
                ServerFrame::error("too_many_locks", "this room holds too many locks", r#ref)
            }
        }
    }

    async fn ack(&mut self, topic: String, seq: u64, device: Option<String>, r#ref: Option<String>) -> Result<(), End> {
        if topic != inbox::topic(self.p.user) {
            let f = ServerFrame::error("not_ackable", "only your inbox (user:{you}) is acknowledged", r#ref);
            return Ok(self.send(&f).await?);
        }
        let ctx = socket_ctx(&self.p);
        let device = device.unwrap_or_else(|| DEFAULT_DEVICE.to_owned());
        let (org, user) = (self.p.org, self.p.user);
        let kept = match inbox::ack(&self.app.writer, ctx, user, device, seq).await {
            Ok(kept) => kept,
            Err(e) => return Ok(self.send(&ServerFrame::error("ack_failed", e.to_string(), r#ref)).await?),
        };
        let unread = self
            .app
            .store
            .read(move |r| inbox::unread(r, org, user, kept))
            .await
            .map_err(|e| End::Close(close::PROTOCOL, e.to_string()))?;
        Ok(self.send(&ServerFrame::Acked { topic, seq: kept, unread, r#ref }).await?)
    }

    async fn subscribe(
        &mut self,
        topic: String,
        since: Option<u64>,
        device: Option<String>,
        epoch: Option<u64>,
        r#ref: Option<String>,
    ) -> Result<(), End> {
        let max = self.app.config.realtime.subscriptions_per_connection_max;
        if self.positions.len() >= max && !self.positions.contains_key(&topic) {
            let f = ServerFrame::error("too_many_subscriptions", format!("at most {max} topics per socket"), r#ref);
            return Ok(self.send(&f).await?);
        }
        if let Err(e) = may_follow(&self.app.store, &self.p, &topic) {
            let code = match e {
                DomainError::Forbidden { .. } => "forbidden",
                _ => "not_found",
            };
            let f = ServerFrame::error(code, format!("cannot subscribe to {topic}: {e}"), r#ref);
            return Ok(self.send(&f).await?);
        }
        // Live events start queuing now; the replay below covers everything before, and
        // duplicates at the seam are dropped by seq.
        self.reg.subscribe(&topic);
        let scope = OrgScope::member(&self.p);
        let store = self.app.store.clone();
        let t = topic.clone();
        let (head, bounds) = store
            .read(move |r| Ok::<_, crate::store::StoreError>((r.topic_head(&scope, &t)?, r.log_bounds(&scope)?)))
            .await
            .map_err(|e| End::Close(close::PROTOCOL, e.to_string()))?;
        let mut last = head;
        // The inbox resumes by itself from where this device acknowledged.
        let is_inbox = topic == inbox::topic(self.p.user);
        let mut unread = None;
        let mut since = since;
        if is_inbox {
            let device = device.unwrap_or_else(|| DEFAULT_DEVICE.to_owned());
            if let Err(e) = inbox::check_device(&device) {
                return Ok(self.send(&ServerFrame::error("invalid_device", e.to_string(), r#ref)).await?);
            }
            let (store, org, user) = (self.app.store.clone(), self.p.org, self.p.user);
            let acked = store
                .read(move |r| {
                    let at = inbox::position(r, org, user, &device)?;
                    Ok::<_, crate::store::StoreError>((at, inbox::unread(r, org, user, at.unwrap_or(head))?))
                })
                .await
                .map_err(|e| End::Close(close::PROTOCOL, e.to_string()))?;
            unread = Some(acked.1);
            if since.is_none() {
                since = acked.0;
            }
        }
        if let Some(since) = since {
            let other_epoch = epoch.is_some_and(|e| e != self.app.store.epoch());
            let trimmed = bounds.first_seq > since.saturating_add(1);
            if other_epoch || trimmed {
                let reason = if other_epoch { "epoch" } else { "trimmed" };
                self.send(&ServerFrame::Reset { topic: topic.clone(), reason: reason.into() }).await?;
            } else {
                last = since;
                loop {
                    let (store, t) = (self.app.store.clone(), topic.clone());
                    let after = last;
                    let page = store
                        .read(move |r| r.events_after(&scope, Some(&t), after, REPLAY_PAGE))
                        .await
                        .map_err(|e| End::Close(close::PROTOCOL, e.to_string()))?;
                    let n = page.len();
                    for e in page {
                        last = e.seq;
                        self.send(&event_frame(&e)).await?;
                    }
                    self.app.metrics.realtime_replayed.inc_by(n as u64);
                    if n < REPLAY_PAGE {
                        break;
                    }
                }
            }
        }
        let last = last.max(self.positions.get(&topic).copied().unwrap_or(0));
        self.positions.insert(topic.clone(), last);
        Ok(self.send(&ServerFrame::Subscribed { topic, seq: last, unread, r#ref }).await?)
    }

    /// Writes what is waiting: `held` and what queued behind it, then the signals in the
    /// mailbox, with one flush for all of it.
    async fn write_out(
        &mut self,
        held: &mut Vec<Arc<Delivery>>,
        rx: &mut mpsc::Receiver<Arc<Delivery>>,
        mailbox: &ephemeral::Mailbox,
        pacer: &mut Pacer,
    ) -> Result<(), WriteFailed> {
        while held.len() < WRITE_BATCH_MAX {
            match rx.try_recv() {
                Ok(d) => held.push(d),
                Err(_) => break,
            }
        }
        let batch = std::mem::take(held);
        // One time limit for the whole write, not one timer per frame.
        let write = async {
            let mut wrote = self.deliver_all(&batch).await?;
            for text in mailbox.take() {
                self.sink.feed(Message::Text(text.to_string())).await.map_err(|_| WriteFailed)?;
                wrote += 1;
            }
            if wrote > 0 {
                self.sink.flush().await.map_err(|_| WriteFailed)?;
            }
            Ok(wrote)
        };
        let wrote = tokio::time::timeout(WRITE_TIMEOUT, write).await.map_err(|_| WriteFailed)??;
        if wrote == 0 {
            pacer.cancel();
            return Ok(());
        }
        pacer.wrote(tokio::time::Instant::now(), wrote, !rx.is_empty());
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
            self.sink.feed(Message::Text(d.text.clone())).await.map_err(|_| WriteFailed)?;
            wrote += 1;
            self.app.metrics.realtime_events_sent.inc();
            if may_change_access(&e.kind) {
                self.flush().await?;
                self.recheck_access(&e.topic).await?;
            }
        }
        Ok(wrote)
    }

    async fn flush(&mut self) -> Result<(), WriteFailed> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.sink.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteFailed),
        }
    }

    /// After an event that may change who sees `topic`: drop it if the caller no longer does.
    async fn recheck_access(&mut self, topic: &str) -> Result<(), WriteFailed> {
        let e_topic = topic.to_owned();
        if may_follow(&self.app.store, &self.p, &e_topic).is_err() {
            self.reg.unsubscribe(&e_topic);
            self.positions.remove(&e_topic);
            self.here_since.remove(&e_topic);
            let f = ServerFrame::Unsubscribed { topic: e_topic, reason: "access_lost".into(), r#ref: None };
            self.send(&f).await?;
        }
        Ok(())
    }

    /// The token, session, user and organization are still good; subscriptions still allowed.
    async fn recheck(&mut self) -> Result<(), End> {
        match recheck_token(&self.app, &self.token).await {
            Ok(Some(p)) => self.p = p,
            Ok(None) => {}
            Err(Lapsed::Expired) => {
                return Err(End::Close(
                    close::UNAUTHORIZED,
                    "the access token expired; send auth before it does".into(),
                ));
            }
            Err(Lapsed::Revoked(why)) => return Err(End::Close(close::REVOKED, why)),
        }
        let lost: Vec<String> =
            self.positions.keys().filter(|t| may_follow(&self.app.store, &self.p, t).is_err()).cloned().collect();
        for topic in lost {
            self.reg.unsubscribe(&topic);
            self.positions.remove(&topic);
            self.here_since.remove(&topic);
            self.send(&ServerFrame::Unsubscribed { topic, reason: "access_lost".into(), r#ref: None }).await?;
        }
        Ok(())
    }
}

/// The closing handshake: our close frame, then the client's answer (for a moment), so the
/// socket is not torn down under data the client has yet to read.
pub(crate) async fn bye(sink: &mut Sink, stream: &mut Stream, code: u16, reason: &str) {
    // Close reasons are at most 123 bytes.
    let reason: String = reason.chars().take(100).collect();
    let close = Message::Close(Some((CloseCode::from(code), reason)));
    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, sink.send(close)).await, Ok(Ok(()))) {
        return;
    }
    let answered = async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, answered).await;
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
}
