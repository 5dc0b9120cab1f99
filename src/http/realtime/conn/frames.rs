//! What each frame a realtime client sends does: auth renewal, subscribe (with replay from the
//! log, the inbox's own resume position, and reset on another epoch or a trimmed log), ack,
//! presence, signals, locks, and the call signaling ops (through `calls`).

use std::time::Duration;

use super::{Conn, authenticate};
use crate::domain::{DomainError, inbox};
use crate::http::socket::{End, socket_ctx};
use crate::ids::rfc3339;
use crate::realtime::protocol::{ClientFrame, ServerFrame, close};
use crate::realtime::{ephemeral, event_frame, may_follow};
use crate::tenancy::OrgScope;

/// The device name of an inbox `subscribe` or `ack` that gives none.
const DEFAULT_DEVICE: &str = "default";
/// Events read from the log per step of a replay.
const REPLAY_PAGE: usize = 500;

fn not_subscribed(topic: &str, r#ref: Option<String>) -> ServerFrame {
    ServerFrame::error("not_subscribed", format!("subscribe to {topic} first"), r#ref)
}

impl Conn {
    pub(super) async fn handle(&mut self, frame: ClientFrame) -> Result<(), End> {
        match frame {
            ClientFrame::Ping { r#ref } => self.send(&ServerFrame::Pong { r#ref }).await?,
            ClientFrame::Auth { token } => match authenticate(&self.app, &token).await {
                Ok((p, proof)) if p.org == self.p.org && p.user == self.p.user => {
                    (self.p, self.proof) = (p, proof);
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
            ClientFrame::Unsubscribe { topic, r#ref } => self.drop_topic(topic, "requested", r#ref).await?,
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
        let may = crate::domain::rooms::get(&self.app.store, OrgScope::member(&self.p), self.p.user, room)
            .ok()
            .and_then(|(_, me)| me)
            .is_some_and(|me| me.role >= crate::domain::policy::RoomRole::Member);
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
}
