//! One document sync socket, speaking the standard y-websocket binary protocol, so a stock
//! `WebsocketProvider` works unchanged: sync step 1/2 and updates, awareness, awareness
//! queries. The server opens with its step 1 and everyone's awareness.
//!
//! An editor's updates are committed before they are relayed or answered (see `crate::docs`);
//! frames already waiting on the socket are taken together into one commit. A read-only
//! client's updates are refused with the protocol's permission-denied message and never
//! applied. Undecodable input closes the socket with 4400 and changes nothing. Awareness is
//! relayed, not stored, and rate-limited: beyond `docs.awareness_per_s` only each client's
//! latest state goes out, a moment later. The session and access are checked again every
//! `realtime.recheck_s`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use poem::web::websocket::{Message as WsMessage, WebSocketStream};
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;

use super::{Engine, Frame, Joined, LiveDoc, encode};
use crate::app::App;
use crate::auth::{self, AuthError, Principal};
use crate::domain::DomainError;
use crate::domain::docs::{self, Access, EditSession};
use crate::ids::{self, Id};
use crate::store::StoreError;
use crate::store::writer::MutationCtx;
use crate::tenancy::OrgScope;

/// Close codes of the sync socket (the y-websocket provider reconnects after any of them).
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    /// The store cannot take writes now (disk low, overloaded); try again later.
    pub const TRY_LATER: u16 = 1013;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const REVOKED: u16 = 4003;
    pub const NOT_FOUND: u16 = 4004;
    pub const TOO_SLOW: u16 = 4008;
    /// A message or update that does not decode.
    pub const INVALID: u16 = 4400;
}

/// A write the client does not take within this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames already waiting on the socket taken into one commit at most.
const DRAIN_MAX: usize = 64;
/// Queued frames written with one flush at most.
const WRITE_BATCH_MAX: usize = 64;

use crate::realtime::conn::{Budget, Sink, Stream, bye};

/// Serves one upgraded socket of user `p` (already checked: may read `live`) until it closes.
pub async fn serve(
    app: App,
    engine: Arc<Engine>,
    live: Arc<LiveDoc>,
    socket: WebSocketStream,
    p: Principal,
    token: String,
) {
    let (sink, mut stream) = socket.split();
    let (joined, first) = engine.join(live);
    let mut s = Session {
        app: app.clone(),
        engine: engine.clone(),
        p,
        token,
        joined,
        sink,
        editing: None,
        updates: 0,
        bytes: 0,
        budget: Budget::new(engine.config().awareness_per_s),
        held: HashMap::new(),
    };
    s.run(&mut stream, first).await;
    s.finish().await;
}

struct Session {
    app: App,
    engine: Arc<Engine>,
    p: Principal,
    token: String,
    joined: Joined,
    sink: Sink,
    /// The editing session, once this socket changed the document; and when it began.
    editing: Option<(EditSession, i64)>,
    updates: u64,
    bytes: u64,
    budget: Budget,
    /// Awareness held back by the rate limit: the latest entry per client.
    held: HashMap<u64, yrs::sync::awareness::AwarenessUpdateEntry>,
}

/// Why a socket ends.
enum End {
    Gone,
    Close(u16, String),
}

impl Session {
    async fn run(&mut self, stream: &mut Stream, first: Vec<Frame>) {
        if self.write(&first).await.is_err() {
            return;
        }
        let mut stopping = self.app.hub.stopping();
        let mut recheck = tokio::time::interval(Duration::from_secs(self.app.config.realtime.recheck_s));
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        let flush_every = Duration::from_secs_f64(1.0 / f64::from(self.engine.config().awareness_per_s));
        let mut flush = tokio::time::interval(flush_every);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cut = self.joined.cut.clone();
        let end = loop {
            tokio::select! {
                frame = stream.next() => {
                    let r = match frame {
                        Some(Ok(WsMessage::Binary(b))) => self.take(b, stream).await,
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => Ok(()),
                        Some(Ok(WsMessage::Text(_))) => Err(End::Close(close::INVALID, "messages are binary (y-websocket protocol)".into())),
                        Some(Ok(WsMessage::Close(_)) | Err(_)) | None => Err(End::Gone),
                    };
                    if let Err(end) = r {
                        break end;
                    }
                }
                Some(f) = self.joined.rx.recv() => {
                    let mut batch = vec![f];
                    while batch.len() < WRITE_BATCH_MAX {
                        match self.joined.rx.try_recv() {
                            Ok(f) => batch.push(f),
                            Err(_) => break,
                        }
                    }
                    if self.write(&batch).await.is_err() {
                        break End::Gone;
                    }
                }
                () = cut.notified() => {
                    break End::Close(close::TOO_SLOW, "the client did not keep up; reconnect to sync again".into());
                }
                _ = stopping.changed() => break End::Close(close::GOING_AWAY, "the server is shutting down".into()),
                _ = recheck.tick() => {
                    if let Err(end) = self.recheck().await {
                        break end;
                    }
                }
                _ = flush.tick(), if !self.held.is_empty() => {
                    if self.budget.take() {
                        let update = AwarenessUpdate { clients: std::mem::take(&mut self.held) };
                        self.engine.awareness(&self.joined.live, self.joined.conn, update);
                    }
                }
            }
        };
        if let End::Close(code, reason) = end {
            bye(&mut self.sink, stream, code, &reason).await;
        }
    }

    /// Handles one binary message, and for updates any others already waiting behind it.
    async fn take(&mut self, first: Vec<u8>, stream: &mut Stream) -> Result<(), End> {
        let mut updates = Vec::new();
        self.handle(&first, &mut updates).await?;
        if !updates.is_empty() {
            // Take what is already here into the same commit.
            while updates.len() < DRAIN_MAX {
                match stream.next().now_or_never() {
                    Some(Some(Ok(WsMessage::Binary(b)))) => self.handle(&b, &mut updates).await?,
                    Some(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => {}
                    Some(_) => return Err(End::Gone),
                    None => break,
                }
            }
            self.commit(updates).await?;
        }
        Ok(())
    }

    /// Handles one message; updates are collected into `updates` for the caller to commit.
    async fn handle(&mut self, raw: &[u8], updates: &mut Vec<Vec<u8>>) -> Result<(), End> {
        let msg = Message::decode_v1(raw)
            .map_err(|e| End::Close(close::INVALID, format!("not a y-websocket message: {e}")))?;
        match msg {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let f = self.engine.step2(&self.joined.live, &sv);
                self.write(&[f]).await.map_err(|()| End::Gone)?;
            }
            Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => {
                if self.access() == Access::Write {
                    updates.push(u);
                } else if super::decode_updates(vec![u]).map_err(invalid)?.is_empty() {
                    // An empty step 2 (the usual answer of a client with nothing new) is fine.
                } else {
                    self.engine.metrics.docs_refused.inc();
                    self.deny("read-only: your part in this room lets you read this document, not change it").await?;
                }
            }
            Message::Awareness(update) => self.awareness(update),
            Message::AwarenessQuery => {
                if let Some(f) = self.engine.awareness_all(&self.joined.live) {
                    self.write(&[f]).await.map_err(|()| End::Gone)?;
                }
            }
            Message::Auth(_) | Message::Custom(..) => {}
        }
        Ok(())
    }

    fn awareness(&mut self, update: AwarenessUpdate) {
        if self.held.is_empty() && self.budget.take() {
            self.engine.awareness(&self.joined.live, self.joined.conn, update);
        } else {
            self.held.extend(update.clients);
        }
    }

    async fn commit(&mut self, updates: Vec<Vec<u8>>) -> Result<(), End> {
        let starts = self.editing.is_none().then(|| EditSession { id: Id::new(), via: "socket" });
        let bytes: u64 = updates.iter().map(|u| u.len() as u64).sum();
        let ctx = MutationCtx {
            scope: OrgScope::member(&self.p),
            actor: self.p.actor(),
            request_id: None,
            client_addr: None,
        };
        let live = self.joined.live.clone();
        let r = self.engine.apply(&live, ctx, self.p.user, updates, Some(self.joined.conn), starts.clone()).await;
        match r {
            Ok(applied) => {
                if let (Some(s), Some(_)) = (starts, applied.as_ref()) {
                    self.editing = Some((s, ids::now_ms()));
                }
                if let Some(a) = applied {
                    self.updates += a.stored;
                    self.bytes += bytes;
                }
                Ok(())
            }
            Err(DomainError::Invalid(_)) => Err(End::Close(close::INVALID, "an update that does not decode".into())),
            Err(DomainError::TooLarge { code, detail }) => self.deny(&format!("{code}: {detail}")).await,
            Err(DomainError::Forbidden { detail }) => self.deny(&format!("read-only: {detail}")).await,
            Err(DomainError::NotFound { .. }) => Err(End::Close(close::NOT_FOUND, "the document is gone".into())),
            Err(DomainError::Store(StoreError::DiskFull | StoreError::Busy)) => {
                Err(End::Close(close::TRY_LATER, "the store cannot take changes now; try again later".into()))
            }
            Err(e) => Err(End::Close(close::TRY_LATER, e.to_string())),
        }
    }

    /// Tells the client its change was refused (the protocol's permission-denied message).
    async fn deny(&mut self, reason: &str) -> Result<(), End> {
        let f = encode(&Message::Auth(Some(reason.to_owned())));
        self.write(&[f]).await.map_err(|()| End::Gone)
    }

    fn access(&self) -> Access {
        docs::get(&self.app.store, OrgScope::member(&self.p), self.p.user, self.joined.live.id)
            .map_or(Access::Read, |(_, a)| a)
    }

    /// The token, session and user are still good, and the document still readable.
    async fn recheck(&mut self) -> Result<(), End> {
        match auth::user(
            &self.app.store,
            &self.app.verified_tokens,
            &self.app.keys.ring(),
            &self.token,
            self.app.access_ttl(),
        )
        .await
        {
            Ok(p) => self.p = p,
            Err(AuthError::Store(e)) => tracing::warn!(error = %e, "document socket recheck could not read the store"),
            Err(AuthError::Token(_)) => {
                return Err(End::Close(
                    close::UNAUTHORIZED,
                    "the access token expired; reconnect with a fresh one".into(),
                ));
            }
            Err(e) => return Err(End::Close(close::REVOKED, e.to_string())),
        }
        match docs::get(&self.app.store, OrgScope::member(&self.p), self.p.user, self.joined.live.id) {
            Ok(_) | Err(DomainError::Store(_)) => Ok(()),
            Err(_) => Err(End::Close(close::REVOKED, "you may no longer see this document".into())),
        }
    }

    async fn write(&mut self, frames: &[Frame]) -> Result<(), ()> {
        let send = async {
            for f in frames {
                self.sink.feed(WsMessage::Binary(f.to_vec())).await?;
            }
            self.sink.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, send).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Closes the editing session in the audit chain.
    async fn finish(self) {
        let Some((session, started)) = self.editing else {
            return;
        };
        let ctx = MutationCtx {
            scope: OrgScope::member(&self.p),
            actor: self.p.actor(),
            request_id: None,
            client_addr: None,
        };
        let id = self.joined.live.id;
        if let Err(e) = docs::end_session(&self.app.writer, ctx, id, session, self.updates, self.bytes, started).await {
            tracing::warn!(doc = %id, error = %e, "could not record the end of an editing session");
        }
    }
}

fn invalid(_: DomainError) -> End {
    End::Close(close::INVALID, "an update that does not decode".into())
}
