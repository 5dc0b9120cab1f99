//! `/v1/yjs/{id}`: one document sync socket, speaking the standard y-websocket binary protocol, so a stock
//! `WebsocketProvider` works unchanged: sync step 1/2 and updates, awareness, awareness
//! queries. The server opens with its step 1 and everyone's awareness.
//!
//! An editor's updates are committed before they are relayed or answered (see `crate::docs`);
//! frames already waiting on the socket are taken together into one commit. A read-only
//! client's updates are refused with the protocol's permission-denied message and never
//! applied. Undecodable input closes the socket with 4400 and changes nothing. Closes the
//! client should not retry as they are (bad input, an expired token, lost access, a deleted
//! document) use 4400–4499, where the stock provider stops reconnecting. Awareness is
//! relayed, not stored, and rate-limited: beyond `docs.awareness_per_s` only each client's
//! latest state goes out, a moment later. The session and access are checked again every
//! `realtime.recheck_s`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use poem::web::Data;
use poem::{IntoResponse, Request, handler};
use tokio::time::Instant;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};

use super::parse_id;
use super::problem::Problem;
use super::socket::{self, Budget, End, LapseCodes, Socket, WriteFailed, bye, socket_ctx, timed};
use super::ws::{Message as WsMessage, Upgrade};
use crate::app::App;
use crate::auth::{Principal, Proof};
use crate::docs::{Engine, Frame, Joined, LiveDoc, encode};
use crate::domain::DomainError;
use crate::domain::docs::{self, Access, EditSession};
use crate::domain::policy::Permission;
use crate::ids::{self, Id};
use crate::realtime::pace::Pacer;
use crate::store::StoreError;
use crate::tenancy::OrgScope;

/// Close codes of the sync socket. The y-websocket provider reconnects after any code but
/// 4400–4499, so those are the ones a retry as-is cannot mend.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    /// The store cannot take writes now (disk low, overloaded); try again later.
    pub const TRY_LATER: u16 = 1013;
    /// The client fell behind; it syncs again when it reconnects.
    pub const TOO_SLOW: u16 = 4008;
    /// A message or update that does not decode.
    pub const INVALID: u16 = 4400;
    /// The access token expired: reconnect with a fresh one in `params`.
    pub const UNAUTHORIZED: u16 = 4401;
    /// The session was revoked, or the caller may no longer see the document.
    pub const REVOKED: u16 = 4403;
    /// The document was deleted.
    pub const NOT_FOUND: u16 = 4404;
}

/// How a lapsed token closes a sync socket.
const LAPSE: LapseCodes = LapseCodes {
    expired: close::UNAUTHORIZED,
    expired_reason: "the access token expired; reconnect with a fresh one",
    revoked: close::REVOKED,
};
/// Frames already waiting on the socket taken into one commit at most.
const DRAIN_MAX: usize = 64;
/// Queued frames written with one flush at most.
const WRITE_BATCH_MAX: usize = 256;

/// Serves one upgraded socket of user `p` (already checked: may read `live`, with `access`)
/// until it closes.
async fn serve(app: App, live: Arc<LiveDoc>, ws: Socket, p: Principal, proof: Proof, access: Access) {
    let engine = app.docs.clone();
    let (joined, first) = engine.join(live);
    let mut s = Session {
        app: app.clone(),
        engine: engine.clone(),
        p,
        proof,
        access,
        joined,
        ws,
        editing: None,
        updates: 0,
        bytes: 0,
        budget: Budget::new(engine.config().awareness_per_s),
        held: HashMap::new(),
    };
    s.run(first).await;
    s.finish().await;
}

struct Session {
    app: App,
    engine: Arc<Engine>,
    p: Principal,
    /// What the caller's credential proved: the re-checks start from it.
    proof: Proof,
    /// What the caller may do, as of the last check. The writer checks again on every change;
    /// a refusal there makes this `Read`.
    access: Access,
    joined: Joined,
    ws: Socket,
    /// The editing session, once this socket changed the document; and when it began.
    editing: Option<(EditSession, i64)>,
    updates: u64,
    bytes: u64,
    budget: Budget,
    /// Awareness held back by the rate limit: the latest entry per client.
    held: HashMap<yrs::ClientID, yrs::sync::awareness::AwarenessUpdateEntry>,
}

impl Session {
    async fn run(&mut self, first: Vec<Frame>) {
        if self.write(&first).await.is_err() {
            return;
        }
        let mut stopping = self.app.hub.stopping();
        let mut recheck = socket::recheck_every(&self.app);
        let flush_every = Duration::from_secs_f64(1.0 / f64::from(self.engine.config().awareness_per_s));
        let mut flush = tokio::time::interval(flush_every);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cut = self.joined.cut.clone();
        let mut pacer =
            Pacer::new(Duration::from_millis(self.app.config.realtime.write_coalesce_ms), self.app.hub.busy.clone());
        // Frames taken from the queue and not yet written (held while the pacer says wait).
        let mut held: Vec<Frame> = Vec::new();
        let end = loop {
            tokio::select! {
                frame = self.ws.recv() => {
                    let r = match frame {
                        Some(Ok(WsMessage::Binary(b))) => self.take(b).await,
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => Ok(()),
                        Some(Ok(WsMessage::Text(_))) => Err(End::Close(close::INVALID, "messages are binary (y-websocket protocol)".into())),
                        Some(Err(e)) => Err(End::on_read(&e)),
                        Some(Ok(WsMessage::Close(_))) | None => Err(End::Gone),
                    };
                    if let Err(end) = r {
                        break end;
                    }
                }
                // While the pacer holds, relayed frames wait in the queue: they go out together
                // when it is due.
                Some(f) = self.joined.rx.recv(), if !pacer.holding() => {
                    held.push(f);
                    if pacer.ready(Instant::now()) && self.write_out(&mut held, &mut pacer).await.is_err() {
                        break End::Gone;
                    }
                }
                () = pacer.due() => {
                    if self.write_out(&mut held, &mut pacer).await.is_err() {
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
            bye(&mut self.ws, code, &reason).await;
        }
    }

    /// Handles one binary message, and for updates any others already waiting behind it.
    async fn take(&mut self, first: Vec<u8>) -> Result<(), End> {
        let mut updates = Vec::new();
        self.handle(&first, &mut updates).await?;
        if !updates.is_empty() {
            // Take what is already here into the same commit.
            while updates.len() < DRAIN_MAX {
                match self.ws.recv().now_or_never() {
                    Some(Some(Ok(WsMessage::Binary(b)))) => self.handle(&b, &mut updates).await?,
                    Some(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => {}
                    Some(Some(Err(e))) => return Err(End::on_read(&e)),
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
        let msg = crate::docs::v1::message(raw)
            .map_err(|e| End::Close(close::INVALID, format!("not a y-websocket message: {e}")))?;
        match msg {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let Ok(f) = self.engine.step2(&self.joined.live, sv).await else {
                    return Err(End::Close(close::TRY_LATER, "the document could not be read".into()));
                };
                self.write(&[f]).await?;
            }
            Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => {
                if self.access == Access::Write {
                    updates.push(u);
                } else if crate::docs::decode_updates(vec![u]).map_err(invalid)?.is_empty() {
                    // An empty step 2 (the usual answer of a client with nothing new) is fine.
                } else {
                    self.engine.metrics.docs_refused.inc();
                    self.deny("read-only: your part in this room lets you read this document, not change it").await?;
                }
            }
            Message::Awareness(update) => self.awareness(update),
            Message::AwarenessQuery => {
                if let Some(f) = self.engine.awareness_all(&self.joined.live) {
                    self.write(&[f]).await?;
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
        let live = self.joined.live.clone();
        let ctx = socket_ctx(&self.p);
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
            Err(DomainError::Forbidden { detail }) => {
                self.access = Access::Read;
                self.deny(&format!("read-only: {detail}")).await
            }
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
        Ok(self.write(&[f]).await?)
    }

    /// The token, session and user are still good, and the document still readable (and
    /// what the caller may do with it now).
    async fn recheck(&mut self) -> Result<(), End> {
        if let Some(p) = socket::recheck(&self.app, &self.proof, &LAPSE).await? {
            self.p = p;
        }
        match docs::get(&self.app.store, OrgScope::member(&self.p), self.p.user, self.joined.live.id) {
            Ok((_, access)) => {
                self.access = access;
                Ok(())
            }
            Err(DomainError::Store(_)) => Ok(()),
            Err(_) => Err(End::Close(close::REVOKED, "you may no longer see this document, or it was deleted".into())),
        }
    }

    /// Writes `held` and what queued behind it, with one flush.
    async fn write_out(&mut self, held: &mut Vec<Frame>, pacer: &mut Pacer) -> Result<(), WriteFailed> {
        while held.len() < WRITE_BATCH_MAX {
            match self.joined.rx.try_recv() {
                Ok(f) => held.push(f),
                Err(_) => break,
            }
        }
        let batch = std::mem::take(held);
        self.write(&batch).await?;
        pacer.wrote(Instant::now(), batch.len(), !self.joined.rx.is_empty());
        Ok(())
    }

    async fn write(&mut self, frames: &[Frame]) -> Result<(), WriteFailed> {
        let ws = &mut self.ws;
        timed(async {
            for f in frames {
                ws.feed_binary(&f[..]).await?;
            }
            ws.flush().await
        })
        .await
    }

    /// Closes the editing session in the audit chain.
    async fn finish(self) {
        let Some((session, started)) = self.editing else {
            return;
        };
        let ctx = socket_ctx(&self.p);
        let id = self.joined.live.id;
        if let Err(e) = docs::end_session(&self.app.writer, ctx, id, session, self.updates, self.bytes, started).await {
            tracing::warn!(doc = %id, error = %e, "could not record the end of an editing session");
        }
    }
}

fn invalid(_: DomainError) -> End {
    End::Close(close::INVALID, "an update that does not decode".into())
}

/// Upgrades to a document sync socket (y-websocket protocol). The access token comes as the
/// `access_token` query parameter (what a provider's `params` sends) or a bearer header;
/// problems before the upgrade are answered over HTTP.
#[handler]
pub async fn sync(req: &Request, ws: Upgrade, app: Data<&App>, doc_id: poem::web::Path<String>) -> poem::Response {
    match upgrade(req, ws, app.0, &doc_id.0).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn upgrade(req: &Request, ws: Upgrade, app: &App, doc_id: &str) -> Result<poem::Response, Problem> {
    let token = req
        .uri()
        .query()
        .and_then(|q| url_param(q, "access_token"))
        .or_else(|| super::bearer_header(req))
        .ok_or_else(|| Problem::unauthenticated("missing_token", "give the access token as ?access_token="))?;
    let proof = crate::auth::prove(&app.auth_caches, &app.keys.ring(), &token, app.access_ttl())?;
    let p = crate::auth::stand(&app.store, &app.auth_caches, &proof).await?;
    p.require(Permission::RoomsRead)?;
    let scope = OrgScope::member(&p);
    let id = parse_id(doc_id, "document")?;
    let (_, access) = docs::get(&app.store, scope, p.user, id)?;
    let live = app.docs.open(scope, id).await?;
    let frame_max = app.config.docs.update_bytes_max + 1024;
    let app = app.clone();
    Ok(ws.accept(&[], frame_max, move |socket| serve(app, live, socket, p, proof, access)))
}

/// The value of query parameter `name`, decoded.
fn url_param(query: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}
