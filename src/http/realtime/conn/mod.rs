//! One realtime socket: authentication, the socket's wait loop, delivery in `seq` order without
//! duplicates at the replay/live seam, periodic re-checks of the session and of each
//! subscription, idle and slow-client cut-offs, and the going-away close on shutdown. What each
//! client frame does is in `frames`.

mod frames;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{Message, WebSocketStream};
use tokio::sync::mpsc;

use crate::app::App;
use crate::auth::{self, AuthError, Principal};
use crate::http::socket::{self, Budget, End, LapseCodes, Sink, Stream, WRITE_TIMEOUT, WriteFailed, bye};
use crate::ids::rfc3339;
use crate::realtime::pace::Pacer;
use crate::realtime::protocol::{ClientFrame, FRAME_BYTES_MAX, ServerFrame, close};
use crate::realtime::{Delivery, Hub, Registration, ephemeral, may_change_access, may_follow};

/// Queued events written together at most (one flush for all of them).
const WRITE_BATCH_MAX: usize = 256;
/// How a lapsed token closes a realtime socket.
const LAPSE: LapseCodes = LapseCodes {
    expired: close::UNAUTHORIZED,
    expired_reason: "the access token expired; send auth before it does",
    revoked: close::REVOKED,
};

/// Checks a bearer token: the caller and, for an access token, when it expires (ms).
async fn authenticate(app: &App, token: &str) -> Result<(Principal, Option<i64>), AuthError> {
    let p = auth::user(&app.store, &app.auth_caches, &app.keys.ring(), token, app.access_ttl()).await?;
    let exp = if token.starts_with(crate::domain::api_keys::PREFIX) {
        None
    } else {
        Some(app.auth_caches.tokens.verify(&app.keys.ring(), token, app.access_ttl())?.exp_s * 1000)
    };
    Ok((p, exp))
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
    // Opening a socket is a request against the user's and organization's budgets, like any
    // other: a flood of connects is shed here, before it subscribes to anything.
    if let Err(l) = app.limits.request(p.org, p.user) {
        let why =
            format!("too many requests ({} limit): retry in {} s", l.limiter.as_str(), l.retry_after.as_secs().max(1));
        return bye(&mut sink, &mut stream, close::TOO_MANY, &why).await;
    }
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
                if socket::ping(&mut c.sink).await.is_err() {
                    return;
                }
            }
        }
    }
}

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
        match tokio::time::timeout(WRITE_TIMEOUT, self.sink.send(Message::Text(f.to_text()))).await {
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
        if may_follow(&self.app.store, &self.p, topic).is_err() {
            self.drop_topic(topic.to_owned(), "access_lost", None).await?;
        }
        Ok(())
    }

    /// The token, session, user and organization are still good; subscriptions still allowed.
    async fn recheck(&mut self) -> Result<(), End> {
        if let Some(p) = socket::recheck_token(&self.app, &self.token, &LAPSE).await? {
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
