//! The realtime hub: live events of the log fanned out to WebSocket subscribers.
//!
//! One dispatcher task reads the event bus in commit order and hands each event to the bounded
//! queue of every socket subscribed to its topic, never waiting: a queue that is full marks
//! its socket as too slow, and that socket is closed (4008) with its resume positions while
//! everyone else carries on. If the dispatcher itself falls behind the bus it reads the log
//! for what it missed, so nothing is skipped. Sockets replay missed events from the log on
//! `subscribe {since}` and drop duplicates at the seam by `seq`. See `openapi/realtime.md`.

pub mod ephemeral;
pub mod pace;
pub mod protocol;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use self::ephemeral::{Lock, LockRefusal, Locks, Mailbox, Presence};
use self::protocol::ServerFrame;
use crate::auth::Principal;
use crate::domain::DomainError;
use crate::domain::policy::Permission;
use crate::ids::Id;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::events::{BusReceiver, Event};
use crate::tenancy::OrgScope;

/// One socket's place in the hub: its mailbox.
#[derive(Clone)]
struct Sub {
    mailbox: Arc<Mailbox>,
}

type TopicKey = (Id, String);

/// An event on its way to sockets, its frame written once for all of them.
pub struct Delivery {
    pub event: Arc<Event>,
    pub text: String,
}

/// The `event` frame of `e`.
pub fn event_frame(e: &Event) -> ServerFrame {
    ServerFrame::Event {
        topic: e.topic.clone(),
        seq: e.seq,
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        at: crate::ids::rfc3339(e.at_ms),
        data: e.data.clone(),
    }
}

#[derive(Default)]
struct Topics {
    /// (org, topic) → socket id → its queue.
    subs: HashMap<TopicKey, HashMap<u64, Sub>>,
    /// Open sockets per user and per org.
    per_user: HashMap<Id, usize>,
    per_org: HashMap<Id, usize>,
    /// Who is here, per topic and socket.
    presence: HashMap<TopicKey, BTreeMap<u64, Presence>>,
    /// Leased locks per topic.
    locks: HashMap<TopicKey, Locks>,
    /// The latest `call_state` frame per room topic with a call.
    calls: HashMap<TopicKey, Arc<str>>,
}

impl Topics {
    /// Leaves `frame` in the mailbox of every subscriber of `key` but `except`.
    /// Written out only if the topic has subscribers.
    fn broadcast(&self, key: &TopicKey, mailbox_key: &str, frame: &ServerFrame, except: Option<u64>) {
        if let Some(subs) = self.subs.get(key) {
            Self::deliver(subs, mailbox_key, &Arc::from(frame.to_text()), except);
        }
    }

    /// [`Topics::broadcast`] of a frame already written out (done before taking the hub's lock).
    fn broadcast_text(&self, key: &TopicKey, mailbox_key: &str, text: &Arc<str>, except: Option<u64>) {
        if let Some(subs) = self.subs.get(key) {
            Self::deliver(subs, mailbox_key, text, except);
        }
    }

    fn deliver(subs: &HashMap<u64, Sub>, mailbox_key: &str, text: &Arc<str>, except: Option<u64>) {
        let mailbox_key: Arc<str> = Arc::from(mailbox_key);
        for (id, sub) in subs {
            if Some(*id) != except {
                sub.mailbox.put(mailbox_key.clone(), text.clone());
            }
        }
    }
}

/// A call's participants as the wire shows them, in `call_state` and by REST.
pub fn call_participants(state: &crate::media::sfu::CallState) -> Vec<protocol::CallParticipant> {
    use self::protocol::{CallParticipant, CallTrack};
    state
        .participants
        .iter()
        .map(|p| CallParticipant {
            connection: p.connection.to_string(),
            user: p.user.to_string(),
            direction: p.direction.as_str().to_owned(),
            tracks: p
                .tracks
                .iter()
                .map(|t| CallTrack {
                    id: t.id.to_string(),
                    kind: t.kind.as_str().to_owned(),
                    codec: t.codec.clone(),
                    track: t.client_track.clone(),
                    source: t.source.clone(),
                    muted: t.muted,
                    muted_by_moderator: t.muted_by_moderator,
                })
                .collect(),
            speaking: p.speaking,
            spatial: p.spatial.clone(),
        })
        .collect()
}

/// The `call_state` frame of a call's media state.
pub fn call_state_frame(topic: &str, state: &crate::media::sfu::CallState) -> ServerFrame {
    ServerFrame::CallState {
        topic: topic.to_owned(),
        participants: call_participants(state),
        active_speaker: state.active_speaker.map(|c| c.to_string()),
        locked: state.locked,
        recording: state.recording.map(|r| r.to_string()),
    }
}

fn lock_state(topic: &str, name: &str, lock: Option<&Lock>) -> ServerFrame {
    ServerFrame::LockState {
        topic: topic.to_owned(),
        name: name.to_owned(),
        holder: lock.map(|l| l.holder_user.to_string()),
        token: lock.map(|l| l.token),
        expires_at: lock.map(|l| crate::ids::rfc3339(l.expires_at_ms)),
    }
}

fn presence_frame(topic: &str, change: &str, p: &Presence) -> ServerFrame {
    ServerFrame::Presence {
        topic: topic.to_owned(),
        change: change.to_owned(),
        user: p.user.clone(),
        device: p.device.clone(),
        status: p.status.clone(),
        state: p.state.clone(),
        since: p.since.clone(),
    }
}

pub struct Hub {
    topics: Mutex<Topics>,
    next_id: AtomicU64,
    /// Fencing tokens: increasing, and larger than any of an earlier run (seeded from the clock).
    next_token: AtomicU64,
    metrics: Arc<Metrics>,
    /// Turns true when the server shuts down: every socket says going-away.
    stop: tokio::sync::watch::Sender<bool>,
    /// How busy the runtime's workers are, for every socket's write pacing.
    pub busy: pace::Busy,
}

/// A socket's registration; dropping it removes every subscription and frees its place.
pub struct Registration {
    hub: Arc<Hub>,
    pub id: u64,
    org: Id,
    user: Id,
    /// Events and ephemeral frames for this socket, and whether it was cut off as slow.
    pub mailbox: Arc<Mailbox>,
    /// The topics it follows, so leaving touches only those.
    topics: HashSet<String>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        let (stop, _) = tokio::sync::watch::channel(false);
        let seed = u64::try_from(crate::ids::now_ms()).unwrap_or(0).saturating_mul(1000);
        Arc::new(Self {
            topics: Mutex::default(),
            next_id: AtomicU64::new(1),
            next_token: AtomicU64::new(seed),
            metrics,
            stop,
            busy: pace::Busy::new(),
        })
    }

    /// Closes every socket with going-away and its resume positions.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Topics> {
        // Held for map updates only, never across an await; a panic elsewhere leaves the maps
        // consistent, so a poisoned lock is still usable.
        self.topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a socket of `org`/`user` that may have `queue_len` events waiting, unless a
    /// cap is reached (`None`).
    pub fn register(
        self: &Arc<Self>,
        org: Id,
        user: Id,
        queue_len: usize,
        caps: (usize, usize),
    ) -> Option<Registration> {
        let mut t = self.lock();
        let (u, o) = (t.per_user.get(&user).copied().unwrap_or(0), t.per_org.get(&org).copied().unwrap_or(0));
        if u >= caps.0 || o >= caps.1 {
            return None;
        }
        t.per_user.insert(user, u + 1);
        t.per_org.insert(org, o + 1);
        drop(t);
        self.metrics.realtime_connections.inc();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Some(Registration {
            hub: self.clone(),
            id,
            org,
            user,
            mailbox: Arc::new(Mailbox::new(queue_len)),
            topics: HashSet::default(),
        })
    }

    /// A call's media state changed: every follower of its room topic gets the new state
    /// (the latest only), and so does whoever subscribes later while the call goes on.
    pub fn call_state(&self, org: Id, room: Id, state: &crate::media::sfu::CallState) {
        let topic = format!("room:{room}");
        let frame = call_state_frame(&topic, state);
        let key = (org, topic);
        let mut t = self.lock();
        if state.participants.is_empty() && !state.locked && state.recording.is_none() {
            t.calls.remove(&key);
        } else {
            t.calls.insert(key.clone(), Arc::from(frame.to_text()));
        }
        t.broadcast(&key, "call_state", &frame, None);
    }

    /// A signal from the server to `user`'s own sockets (those following `user:{user}`), the
    /// latest per `key`: progress of an MCP tool call they made, say. Never stored.
    pub fn signal_user(&self, org: Id, user: Id, key: &str, kind: &str, from: &str, data: serde_json::Value) {
        let topic = format!("user:{user}");
        let frame = ServerFrame::Signal { topic: topic.clone(), from: from.to_owned(), kind: kind.to_owned(), data };
        let text: Arc<str> = Arc::from(frame.to_text());
        self.lock().broadcast_text(&(org, topic), &format!("server:{key}"), &text, None);
    }

    /// Who is here on `topic` of `org`.
    pub fn presence(&self, org: Id, topic: &str) -> Vec<Presence> {
        self.lock().presence.get(&(org, topic.to_owned())).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Frees expired locks and tells the topics, until the hub stops.
    pub async fn expire_locks(self: Arc<Self>) {
        let mut stop = self.stopping();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let now = std::time::Instant::now();
            let mut t = self.lock();
            let mut freed = Vec::new();
            for (key, locks) in &mut t.locks {
                for name in locks.expire(now) {
                    freed.push((key.clone(), name));
                }
            }
            t.locks.retain(|_, l| !l.is_empty());
            for (key, name) in freed {
                t.broadcast(&key, &format!("lock:{name}"), &lock_state(&key.1, &name, None), None);
            }
        }
    }

    /// Hands `e` to every subscriber of its topic without waiting.
    fn dispatch(&self, e: &Arc<Event>) {
        let key = (e.org, e.topic.clone());
        if !self.lock().subs.contains_key(&key) {
            return;
        }
        // Written once, and outside the lock that subscribing sockets also need.
        let d = Arc::new(Delivery { event: e.clone(), text: event_frame(e).to_text() });
        let mut slow = Vec::new();
        let mut deepest = 0;
        {
            let t = self.lock();
            let Some(subs) = t.subs.get(&key) else { return };
            for sub in subs.values() {
                if sub.mailbox.is_slow() {
                    continue;
                }
                match sub.mailbox.deliver(d.clone()) {
                    Some(depth) => deepest = deepest.max(depth),
                    None => slow.push(sub.mailbox.clone()),
                }
            }
        }
        for s in slow {
            s.cut_off();
            self.metrics.realtime_cut_off_slow.inc();
        }
        self.metrics.realtime_send_queue_deepest.set(i64::try_from(deepest).unwrap_or(i64::MAX));
        let age_ms = crate::ids::now_ms().saturating_sub(e.at_ms);
        self.metrics.realtime_fanout_seconds.observe(age_ms as f64 / 1000.0);
    }

    /// Fans out the bus until it closes. Whatever the bus drops for being behind is read back
    /// from the log.
    pub async fn run(self: Arc<Self>, bus: BusReceiver, store: Store, from_gseq: u64) {
        crate::store::events::follow(bus, store, from_gseq, "realtime hub", |e| {
            self.dispatch(&e);
            std::future::ready(())
        })
        .await;
    }
}

impl Registration {
    /// Starts delivering `topic`'s events to this socket's queue.
    pub fn subscribe(&mut self, topic: &str) {
        self.topics.insert(topic.to_owned());
        let mut t = self.hub.lock();
        let subs = t.subs.entry((self.org, topic.to_owned())).or_default();
        let sub = Sub { mailbox: self.mailbox.clone() };
        if subs.insert(self.id, sub).is_none() {
            self.hub.metrics.realtime_subscriptions.inc();
        }
        // Who is already here, and which locks are held.
        let key = (self.org, topic.to_owned());
        if let Some(here) = t.presence.get(&key) {
            for (conn, p) in here {
                self.mailbox.put(format!("presence:{conn}"), Arc::from(presence_frame(topic, "here", p).to_text()));
            }
        }
        if let Some(locks) = t.locks.get(&key) {
            for (name, l) in locks.held() {
                self.mailbox.put(format!("lock:{name}"), Arc::from(lock_state(topic, name, Some(l)).to_text()));
            }
        }
        if let Some(call) = t.calls.get(&key) {
            self.mailbox.put("call_state".to_owned(), call.clone());
        }
    }

    /// Sets this socket's presence on `topic` and tells everyone following it.
    pub fn set_presence(&self, topic: &str, p: Presence) {
        let mut t = self.hub.lock();
        let key = (self.org, topic.to_owned());
        let entries = t.presence.entry(key.clone()).or_default();
        let change = if entries.contains_key(&self.id) { "update" } else { "join" };
        let frame = presence_frame(topic, change, &p);
        entries.insert(self.id, p);
        t.broadcast(&key, &format!("presence:{}", self.id), &frame, None);
    }

    /// Relays a signal to the topic's other subscribers (latest per sender and kind).
    pub fn signal(&self, topic: &str, kind: &str, frame: &ServerFrame) {
        let (key, mailbox_key) = ((self.org, topic.to_owned()), format!("signal:{}:{kind}", self.id));
        let text = Arc::from(frame.to_text());
        let t = self.hub.lock();
        t.broadcast_text(&key, &mailbox_key, &text, Some(self.id));
    }

    /// Takes or renews lock `name` on `topic`.
    pub fn lock(&self, topic: &str, name: &str, lease: std::time::Duration) -> Result<Lock, LockRefusal> {
        let mut t = self.hub.lock();
        let key = (self.org, topic.to_owned());
        let next = &self.hub.next_token;
        let got = t.locks.entry(key.clone()).or_default().acquire(
            name,
            self.user,
            self.id,
            lease,
            std::time::Instant::now(),
            crate::ids::now_ms(),
            &mut || next.fetch_add(1, Ordering::Relaxed) + 1,
        )?;
        t.broadcast(&key, &format!("lock:{name}"), &lock_state(topic, name, Some(&got)), None);
        Ok(got)
    }

    /// Releases lock `name` held under `token`; false if it is not (or no longer) ours.
    pub fn unlock(&self, topic: &str, name: &str, token: u64) -> bool {
        let mut t = self.hub.lock();
        let key = (self.org, topic.to_owned());
        let freed = t.locks.get_mut(&key).is_some_and(|l| l.release(name, self.id, token, std::time::Instant::now()));
        if freed {
            t.broadcast(&key, &format!("lock:{name}"), &lock_state(topic, name, None), None);
        }
        freed
    }

    /// Leaves `topic`: presence gone, locks freed.
    fn leave(&self, t: &mut Topics, topic_key: &TopicKey) {
        if let Some(entries) = t.presence.get_mut(topic_key) {
            if let Some(p) = entries.remove(&self.id) {
                if entries.is_empty() {
                    t.presence.remove(topic_key);
                }
                let frame = presence_frame(&topic_key.1, "leave", &p);
                t.broadcast(topic_key, &format!("presence:{}", self.id), &frame, Some(self.id));
            }
        }
        if let Some(locks) = t.locks.get_mut(topic_key) {
            let freed = locks.release_all(self.id);
            if locks.is_empty() {
                t.locks.remove(topic_key);
            }
            for name in freed {
                t.broadcast(topic_key, &format!("lock:{name}"), &lock_state(&topic_key.1, &name, None), Some(self.id));
            }
        }
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        self.topics.remove(topic);
        let mut t = self.hub.lock();
        self.remove(&mut t, &(self.org, topic.to_owned()));
    }

    /// Leaves `key` and stops its deliveries to this socket.
    fn remove(&self, t: &mut Topics, key: &TopicKey) {
        self.leave(t, key);
        if let Some(subs) = t.subs.get_mut(key) {
            if subs.remove(&self.id).is_some() {
                self.hub.metrics.realtime_subscriptions.dec();
            }
            if subs.is_empty() {
                t.subs.remove(key);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut guard = self.hub.lock();
        let t = &mut *guard;
        for topic in std::mem::take(&mut self.topics) {
            self.remove(t, &(self.org, topic));
        }
        for (map, key) in [(&mut t.per_user, self.user), (&mut t.per_org, self.org)] {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        drop(guard);
        self.hub.metrics.realtime_connections.dec();
    }
}

/// Whether `p` may follow `topic`: `org`, `user:{me}`, `room:{id}` it can see, `channel:{id}`
/// it can see. 404-like for rooms and channels it cannot see, like the REST API. Ids are
/// spelled as the server writes them (lowercase, hyphenated): events are routed by that
/// spelling, so another one would be a subscription that never delivers.
pub fn may_follow(store: &Store, p: &Principal, topic: &str) -> Result<(), DomainError> {
    let (kind, rest) = topic.split_once(':').unwrap_or((topic, ""));
    let id =
        || rest.parse::<Id>().ok().filter(|id| id.to_string() == rest).ok_or(DomainError::NotFound { what: "topic" });
    match kind {
        "org" if rest.is_empty() => Ok(()),
        "user" if id()? == p.user => Ok(()),
        "user" => Err(DomainError::Forbidden { detail: "only your own inbox".into() }),
        "room" => {
            crate::domain::rooms::get(store, OrgScope::member(p), p.user, id()?)?;
            p.require(Permission::RoomsRead).map_err(|_| DomainError::Forbidden { detail: "rooms.read".into() })
        }
        "channel" => {
            crate::domain::chat::get(store, p.org, p.user, id()?)?;
            p.require(Permission::ChatUse).map_err(|_| DomainError::Forbidden { detail: "chat.use".into() })
        }
        "doc" => {
            crate::domain::docs::get(store, crate::tenancy::OrgScope::member(p), p.user, id()?)?;
            p.require(Permission::RoomsRead).map_err(|_| DomainError::Forbidden { detail: "rooms.read".into() })
        }
        _ => Err(DomainError::NotFound { what: "topic" }),
    }
}

/// Events after which a subscriber's access to the topic is looked at again.
pub fn may_change_access(kind: &str) -> bool {
    matches!(
        kind,
        "participant.left"
            | "participant.kicked"
            | "room.updated"
            | "room.deleted"
            | "room.archived"
            | "member.removed"
            | "channel.archived"
            | "doc.deleted"
    )
}
