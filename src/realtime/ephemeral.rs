//! Ephemeral state, never stored: presence per topic, relayed signals (typing, cursors, custom)
//! and leased object locks with fencing tokens.
//!
//! Ephemeral frames reach a socket through its `Mailbox`, which keeps only the latest frame per
//! key (per sender and kind for signals, per socket for presence, per name for locks): a
//! receiver that is behind gets the newest cursor position, not a backlog of old ones. The
//! mailbox is bounded; beyond its size the oldest keys are dropped (ephemeral data is
//! replaced soon anyway).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use serde::Serialize;
use tokio::sync::Notify;

use super::Delivery;
use crate::ids::Id;

/// Distinct pending keys per socket at most.
const MAILBOX_KEYS_MAX: usize = 512;
/// The custom state a presence entry may carry, at most (bytes of JSON).
pub const PRESENCE_STATE_BYTES_MAX: usize = 2048;
/// A signal's data, at most (bytes of JSON).
pub const SIGNAL_BYTES_MAX: usize = 4096;
/// Lock leases: shortest and longest.
pub const LEASE_MIN: Duration = Duration::from_millis(100);
pub const LEASE_MAX: Duration = Duration::from_secs(600);
/// Locks per room at most.
pub const LOCKS_PER_TOPIC_MAX: usize = 1000;

/// The latest frame of each key, keys in the order they first arrived. Every relayed signal
/// passes through here, so the hash is a fast one (foldhash, seeded per process); the map is
/// bounded by `MAILBOX_KEYS_MAX`.
type Pending = IndexMap<Arc<str>, Arc<str>, foldhash::fast::RandomState>;

/// What waits for one socket, with one wake-up for all of it: the events the hub handed it, in
/// order and `events_max` at most (a socket that lets more pile up is cut off as slow), and the
/// latest ephemeral frame of each key. Empty, it holds no allocation of its own: an idle socket
/// pays for the struct and nothing else.
pub struct Mailbox {
    waiting: Mutex<Waiting>,
    pub notify: Notify,
    slow: AtomicBool,
    events_max: usize,
}

#[derive(Default)]
struct Waiting {
    events: VecDeque<Arc<Delivery>>,
    pending: Pending,
}

/// A drained queue (of events, or of ephemeral frames) keeps this much room for the next ones;
/// a larger one (after a burst) is given back.
const KEPT_ROOM: usize = 16;

impl Mailbox {
    pub fn new(events_max: usize) -> Self {
        Self { waiting: Mutex::default(), notify: Notify::new(), slow: AtomicBool::new(false), events_max }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leaves `frame` (written once for every receiver) under `key`, replacing an older one
    /// not yet taken.
    pub fn put(&self, key: impl Into<Arc<str>>, frame: Arc<str>) {
        let key = key.into();
        {
            let pending = &mut self.lock().pending;
            // A key already waiting keeps its place and takes the newer frame.
            pending.insert(key, frame);
            if pending.len() > MAILBOX_KEYS_MAX {
                pending.shift_remove_index(0);
            }
        }
        self.notify.notify_one();
    }

    /// Every ephemeral frame waiting, oldest key first.
    pub fn take(&self) -> Vec<Arc<str>> {
        let pending = &mut self.lock().pending;
        let frames = pending.drain(..).map(|(_, frame)| frame).collect();
        if pending.capacity() > KEPT_ROOM {
            *pending = Pending::default();
        }
        frames
    }

    /// Queues event `d` and says how many now wait, or `None` (and queues nothing) when
    /// `events_max` already do.
    pub fn deliver(&self, d: Arc<Delivery>) -> Option<usize> {
        let depth = {
            let events = &mut self.lock().events;
            if events.len() >= self.events_max {
                return None;
            }
            events.push_back(d);
            events.len()
        };
        self.notify.notify_one();
        Some(depth)
    }

    /// The oldest `max` events at most.
    pub fn take_events(&self, max: usize) -> Vec<Arc<Delivery>> {
        let events = &mut self.lock().events;
        let taken = events.drain(..events.len().min(max)).collect();
        if events.is_empty() && events.capacity() > KEPT_ROOM {
            *events = VecDeque::new();
        }
        taken
    }

    pub fn has_events(&self) -> bool {
        !self.lock().events.is_empty()
    }

    /// The socket fell too far behind: it is to close (and resume elsewhere).
    pub fn cut_off(&self) {
        self.slow.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }
}

/// Someone here on a topic.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Presence {
    pub user: String,
    pub device: String,
    /// `online`, `away` or `busy`.
    pub status: String,
    /// Size-capped app state, e.g. a position in a 3D space.
    pub state: serde_json::Value,
    pub since: String,
}

pub fn valid_status(s: &str) -> bool {
    matches!(s, "online" | "away" | "busy")
}

/// A held lock.
#[derive(Clone, Debug, PartialEq)]
pub struct Lock {
    pub holder_user: Id,
    pub holder_conn: u64,
    pub token: u64,
    pub expires: Instant,
    pub expires_at_ms: i64,
}

/// Why a lock was not granted.
#[derive(Debug, PartialEq, Eq)]
pub enum LockRefusal {
    Held { holder: Id, expires_at_ms: i64 },
    TooMany,
}

/// The locks of one topic, by name. Pure: time comes in as arguments, so lease expiry and
/// fencing are tested without sleeping.
#[derive(Default, Debug)]
pub struct Locks {
    held: HashMap<String, Lock>,
}

impl Locks {
    /// Takes (or, for its holder, renews) `name` for `lease`. A new holder gets a new, larger
    /// fencing token; a renewal keeps the token.
    #[allow(clippy::too_many_arguments)] // the lock's whole identity and its clock
    pub fn acquire(
        &mut self,
        name: &str,
        user: Id,
        conn: u64,
        lease: Duration,
        now: Instant,
        now_ms: i64,
        next_token: &mut dyn FnMut() -> u64,
    ) -> Result<Lock, LockRefusal> {
        self.expire(now);
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        if let Some(l) = self.held.get_mut(name) {
            if l.holder_conn != conn {
                return Err(LockRefusal::Held { holder: l.holder_user, expires_at_ms: l.expires_at_ms });
            }
            l.expires = now + lease;
            l.expires_at_ms = now_ms + lease_ms;
            return Ok(l.clone());
        }
        if self.held.len() >= LOCKS_PER_TOPIC_MAX {
            return Err(LockRefusal::TooMany);
        }
        let l = Lock {
            holder_user: user,
            holder_conn: conn,
            token: next_token(),
            expires: now + lease,
            expires_at_ms: now_ms + lease_ms,
        };
        self.held.insert(name.to_owned(), l.clone());
        Ok(l)
    }

    /// Releases `name` if `conn` holds it under `token`; a stale token changes nothing.
    pub fn release(&mut self, name: &str, conn: u64, token: u64, now: Instant) -> bool {
        self.expire(now);
        match self.held.get(name) {
            Some(l) if l.holder_conn == conn && l.token == token => {
                self.held.remove(name);
                true
            }
            _ => false,
        }
    }

    /// Drops every lock of `conn` (it disconnected or unsubscribed); answers their names.
    pub fn release_all(&mut self, conn: u64) -> Vec<String> {
        let gone: Vec<String> =
            self.held.iter().filter(|(_, l)| l.holder_conn == conn).map(|(n, _)| n.clone()).collect();
        for n in &gone {
            self.held.remove(n);
        }
        gone
    }

    /// Drops expired locks; answers their names.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self.held.iter().filter(|(_, l)| l.expires <= now).map(|(n, _)| n.clone()).collect();
        for n in &gone {
            self.held.remove(n);
        }
        gone
    }

    pub fn held(&self) -> impl Iterator<Item = (&String, &Lock)> {
        self.held.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_renewals_keep_the_token_and_stale_tokens_lose() {
        let mut locks = Locks::default();
        let mut counter = 100;
        let mut next = move || {
            counter += 1;
            counter
        };
        let t0 = Instant::now();
        let (a, b) = (Id::new(), Id::new());
        let lease = Duration::from_secs(10);
        let first = locks.acquire("slide-3", a, 1, lease, t0, 0, &mut next).unwrap();
        assert_eq!(first.token, 101);
        // Someone else waits while the lease runs.
        let refused = locks.acquire("slide-3", b, 2, lease, t0 + Duration::from_secs(5), 5_000, &mut next);
        assert_eq!(refused, Err(LockRefusal::Held { holder: a, expires_at_ms: 10_000 }));
        // The holder renews: same token, later expiry.
        let renewed = locks.acquire("slide-3", a, 1, lease, t0 + Duration::from_secs(9), 9_000, &mut next).unwrap();
        assert_eq!((renewed.token, renewed.expires_at_ms), (101, 19_000));
        // The lease runs out: the next holder gets a larger token, and the old one cannot
        // release (or renew) what is no longer theirs.
        let second = locks.acquire("slide-3", b, 2, lease, t0 + Duration::from_secs(20), 20_000, &mut next).unwrap();
        assert!(second.token > first.token);
        assert!(!locks.release("slide-3", 1, first.token, t0 + Duration::from_secs(21)));
        let stale = locks.acquire("slide-3", a, 1, lease, t0 + Duration::from_secs(21), 21_000, &mut next);
        assert!(matches!(stale, Err(LockRefusal::Held { .. })));
        assert!(locks.release("slide-3", 2, second.token, t0 + Duration::from_secs(22)));
        // Expiry and disconnects drop locks.
        locks.acquire("x", a, 1, lease, t0, 0, &mut next).unwrap();
        locks.acquire("y", a, 1, Duration::from_secs(1), t0, 0, &mut next).unwrap();
        assert_eq!(locks.expire(t0 + Duration::from_secs(2)), vec!["y".to_owned()]);
        assert_eq!(locks.release_all(1), vec!["x".to_owned()]);
        assert!(locks.is_empty());
    }

    #[test]
    fn a_mailbox_keeps_the_latest_per_key() {
        let m = Mailbox::new(8);
        for x in 0..100 {
            m.put("cursor:ana", Arc::from(x.to_string()));
        }
        m.put("cursor:ben", Arc::from("b"));
        assert_eq!(m.take(), vec![Arc::from("99"), Arc::from("b")]);
        assert!(m.take().is_empty());
    }

    fn delivery(seq: u64) -> Arc<Delivery> {
        let event = crate::store::events::Event {
            org: Id::new(),
            seq,
            gseq: seq,
            epoch: 1,
            topic: "channel:x".to_owned(),
            kind: "message.created".to_owned(),
            actor: "user:x".to_owned(),
            at_ms: 0,
            data: serde_json::Value::Null,
        };
        Arc::new(Delivery { event: Arc::new(event), text: seq.to_string() })
    }

    #[test]
    fn a_mailbox_queues_events_in_order_up_to_its_bound_and_gives_back_a_bursts_room() {
        let m = Mailbox::new(100);
        assert!(!m.has_events());
        for seq in 1..=100 {
            assert_eq!(m.deliver(delivery(seq)), Some(seq as usize));
        }
        // Full: the 101st is refused, and nothing already queued is lost or reordered.
        assert_eq!(m.deliver(delivery(101)), None);
        let first: Vec<u64> = m.take_events(30).iter().map(|d| d.event.seq).collect();
        assert_eq!(first, (1..=30).collect::<Vec<_>>());
        assert!(m.has_events());
        let rest: Vec<u64> = m.take_events(usize::MAX).iter().map(|d| d.event.seq).collect();
        assert_eq!(rest, (31..=100).collect::<Vec<_>>());
        assert!(!m.has_events());
        // Drained after a burst, the queue holds no room of its own.
        assert_eq!(m.lock().events.capacity(), 0);
        // Being cut off is seen by the socket, and a cut-off mailbox still holds what was queued.
        m.deliver(delivery(1));
        assert!(!m.is_slow());
        m.cut_off();
        assert!(m.is_slow());
        assert_eq!(m.take_events(10).len(), 1);
    }
}
