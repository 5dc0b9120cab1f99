//! The event log: per-org `seq`, a topic index, the global commit order, retention, the
//! in-process bus, and `Follower` for durable consumers.
//!
//! Events are appended by the writer in the same transaction as the rows they describe. After
//! commit they are published on a bounded in-process bus. A receiver that falls behind the bus
//! is told so (with the position to resume from) and reads the log instead; nothing is skipped
//! silently. Durable consumers (search, webhooks) are `Follower`s: they read the log in global
//! commit order from a checkpoint kept in the store, and their checkpoints hold back trimming.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::tables::{self, EVENT_HEADS, EVENT_TOPICS, EVENTS, FOLLOWERS, LOG_ORDER};
use super::{Reader, Store, StoreError, decode, packed, prefix_end};
use crate::ids::Id;
use crate::tenancy::OrgScope;

/// One committed event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub org: Id,
    /// Position in the org's log: dense, starting at 1.
    pub seq: u64,
    /// Position in the instance's commit order (what followers checkpoint).
    pub gseq: u64,
    /// The store epoch the event was written under.
    pub epoch: u64,
    pub topic: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub actor: String,
    pub at_ms: i64,
    pub data: serde_json::Value,
}

impl Event {
    /// The stored form, compact binary (`packed::Compact`): `gseq`, `epoch`, `at_ms`, then
    /// `topic`, `type`, `actor` and `data` (a JSON value in binary form). The organization and
    /// `seq` are the key's.
    pub fn to_stored(&self) -> Vec<u8> {
        let mut out = packed::Compact::with_capacity(16 + 12 + self.topic.len() + self.actor.len() + 48);
        out.number(self.gseq);
        out.number(self.epoch);
        out.signed(self.at_ms);
        for text in [&self.topic, &self.kind, &self.actor] {
            out.text(text);
        }
        out.value(&self.data);
        out.into_bytes()
    }

    /// Reads an event as stored under `key` (`org ‖ seq`): compact binary, binary as schemas 3
    /// and 4 stored it (numbers at fixed width, no words), or JSON as before schema 3.
    pub fn from_stored(key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        if !packed::is_binary(value) {
            return decode(EVENTS, value);
        }
        let read = || -> Result<Self, String> {
            let (org, seq) = tables::split_org_seq(key).ok_or("event has a malformed key")?;
            let mut f = packed::Fields::of(value)?;
            let (gseq, epoch, at_ms) = (f.number()?, f.number()?, f.signed()?);
            let (topic, kind, actor) = (f.text()?, f.text()?, f.text()?);
            let data = f.value().map_err(|e| format!("event data: {e}"))?;
            f.end()?;
            Ok(Self { org, seq, gseq, epoch, topic, kind, actor, at_ms, data })
        };
        read().map_err(|detail| StoreError::Corrupt { table: "events".into(), detail })
    }
}

/// The in-process publication of committed events. Bounded: a slow receiver lags, and is told.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    /// The last gseq published, so a new receiver knows where "live" begins.
    head: Arc<AtomicU64>,
    /// Topic generations: a slot per hash of (org, topic), bumped by every event published
    /// on a topic of that slot (a shared slot only means an extra bump).
    generations: Arc<[AtomicU64]>,
}

/// Slots of topic generations (fixed: memory does not grow with topics).
const GENERATION_SLOTS: usize = 4096;

fn generation_slot(org: Id, topic: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    org.hash(&mut h);
    topic.hash(&mut h);
    (h.finish() % GENERATION_SLOTS as u64) as usize
}

impl EventBus {
    pub fn new(capacity: usize, head_gseq: u64) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        let generations = (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect();
        Self { tx, head: Arc::new(AtomicU64::new(head_gseq)), generations }
    }

    /// A number that changes whenever an event is published on `topic` of `org`. Events are
    /// published after their commit and before the writer answers, so: read the generation,
    /// then read the store, and whatever is built from that read is current for as long as
    /// the generation stays the same.
    pub fn generation(&self, org: Id, topic: &str) -> u64 {
        self.generations[generation_slot(org, topic)].load(Ordering::Acquire)
    }

    pub(crate) fn publish(&self, events: Vec<Arc<Event>>) {
        for e in events {
            self.generations[generation_slot(e.org, &e.topic)].fetch_add(1, Ordering::AcqRel);
            self.head.store(e.gseq, Ordering::Release);
            // No receiver is fine: the log has it.
            let _ = self.tx.send(e);
        }
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> BusReceiver {
        let rx = self.tx.subscribe();
        BusReceiver { rx, last_gseq: self.head.load(Ordering::Acquire) }
    }

    pub fn head_gseq(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }
}

/// What a bus receiver gets.
#[derive(Debug)]
pub enum BusItem {
    Event(Arc<Event>),
    /// The receiver fell behind and events were dropped for it: read the log after `gseq`.
    Lagged {
        resume_after_gseq: u64,
    },
    Closed,
}

pub struct BusReceiver {
    rx: broadcast::Receiver<Arc<Event>>,
    last_gseq: u64,
}

impl BusReceiver {
    pub async fn recv(&mut self) -> BusItem {
        match self.rx.recv().await {
            Ok(e) => {
                self.last_gseq = e.gseq;
                BusItem::Event(e)
            }
            Err(broadcast::error::RecvError::Lagged(_)) => BusItem::Lagged { resume_after_gseq: self.last_gseq },
            Err(broadcast::error::RecvError::Closed) => BusItem::Closed,
        }
    }
}

/// Hands `on_event` every event committed after `from_gseq`, in commit order: from the bus as
/// they come, and from the log whatever the bus drops for this follower being behind. Returns
/// when the bus closes. `name` says who follows, in errors.
pub async fn follow<F, Fut>(mut bus: BusReceiver, store: Store, from_gseq: u64, name: &str, mut on_event: F)
where
    F: FnMut(Arc<Event>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut last = from_gseq;
    loop {
        match bus.recv().await {
            BusItem::Event(e) => {
                if e.gseq > last {
                    last = e.gseq;
                    on_event(e).await;
                }
            }
            BusItem::Lagged { .. } => loop {
                let after = last;
                match store.read(move |r| r.events_after_gseq(after, 1000)).await {
                    Ok(batch) if batch.is_empty() => break,
                    Ok(batch) => {
                        for e in batch {
                            last = e.gseq;
                            on_event(Arc::new(e)).await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(follower = name, error = %e, "cannot read the log");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            },
            BusItem::Closed => return,
        }
    }
}

/// The state of one org's log, for clients deciding between resume and reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LogBounds {
    /// The oldest seq still in the log (0 when empty).
    pub first_seq: u64,
    /// The last seq handed out (0 when none).
    pub head_seq: u64,
}

impl Reader {
    /// Events of `scope`'s org after `after` (exclusive), optionally of one topic, at most `limit`.
    pub fn events_after(
        &self,
        scope: &OrgScope,
        topic: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let org = scope.org();
        match topic {
            None => {
                let start = tables::org_seq_key(org, after.saturating_add(1));
                let end = prefix_end(org.as_bytes());
                self.range(EVENTS, &start, &end, false, limit)?.iter().map(|(k, v)| Event::from_stored(k, v)).collect()
            }
            Some(topic) => {
                let start = tables::topic_key(org, topic, after.saturating_add(1));
                let end = prefix_end(&tables::topic_prefix(org, topic));
                let mut out = Vec::new();
                for (k, _) in self.range(EVENT_TOPICS, &start, &end, false, limit)? {
                    let seq = tables::u64_be(&k[k.len() - 8..]).unwrap_or(0);
                    let at = tables::org_seq_key(org, seq);
                    if let Some(v) = self.get(EVENTS, &at)? {
                        out.push(Event::from_stored(&at, &v)?);
                    }
                }
                Ok(out)
            }
        }
    }

    /// The last seq of `topic` in `scope`'s org (0 if none).
    pub fn topic_head(&self, scope: &OrgScope, topic: &str) -> Result<u64, StoreError> {
        let prefix = tables::topic_prefix(scope.org(), topic);
        let last = self.range(EVENT_TOPICS, &prefix, &prefix_end(&prefix), true, 1)?;
        Ok(last.first().and_then(|(k, _)| tables::u64_be(&k[k.len() - 8..])).unwrap_or(0))
    }

    pub fn log_bounds(&self, scope: &OrgScope) -> Result<LogBounds, StoreError> {
        let org = scope.org();
        let head_seq = self.get(EVENT_HEADS, org.as_bytes())?.and_then(|v| tables::u64_be(&v)).unwrap_or(0);
        let first = self.range(EVENTS, org.as_bytes(), &prefix_end(org.as_bytes()), false, 1)?;
        let first_seq = first.first().and_then(|(k, _)| tables::split_org_seq(k)).map_or(0, |(_, s)| s);
        Ok(LogBounds { first_seq, head_seq })
    }

    /// Events in global commit order after `after_gseq`, at most `limit` (for followers).
    pub fn events_after_gseq(&self, after_gseq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let start = after_gseq.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for (_, at) in self.range(LOG_ORDER, &start, &[0xff; 9], false, limit)? {
            if let Some(v) = self.get(EVENTS, &at)? {
                out.push(Event::from_stored(&at, &v)?);
            }
        }
        Ok(out)
    }

    pub fn follower_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.get(FOLLOWERS, name.as_bytes())?.and_then(|v| tables::u64_be(&v)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::Event;
    use crate::ids::Id;
    use crate::store::packed;
    use crate::store::tables::org_seq_key;

    fn event() -> Event {
        Event {
            org: Id::new(),
            seq: 12,
            gseq: 99,
            epoch: u64::MAX - 1,
            topic: "channel:x".into(),
            kind: "message.created".into(),
            actor: "user:\u{1F600}".into(),
            at_ms: 1_765_000_000_123,
            data: json!({"id": "m", "text": "line\nbreak \"quoted\"", "n": [1, 2.5, null]}),
        }
    }

    #[test]
    fn an_event_reads_back_from_either_stored_form() {
        let e = event();
        let key = org_seq_key(e.org, e.seq);
        let stored = e.to_stored();
        assert_eq!(Event::from_stored(&key, &stored).unwrap(), e);
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(Event::from_stored(&key, &json).unwrap(), e, "as stored before schema 3");
        assert!(stored.len() + 100 < json.len(), "{} bytes stored, {} as JSON", stored.len(), json.len());
    }

    #[test]
    fn a_binary_event_with_its_data_as_json_text_still_reads() {
        let e = event();
        let key = org_seq_key(e.org, e.seq);
        // The schema 3 form, put by hand.
        let mut old = vec![packed::BINARY];
        for n in [e.gseq, e.epoch] {
            old.extend_from_slice(&n.to_be_bytes());
        }
        old.extend_from_slice(&e.at_ms.to_be_bytes());
        for text in [&e.topic, &e.kind, &e.actor] {
            packed::put_text(&mut old, text);
        }
        packed::put_bytes(&mut old, &serde_json::to_vec(&e.data).unwrap());
        assert_eq!(Event::from_stored(&key, &old).unwrap(), e);
        assert!(e.to_stored().len() < old.len());
    }

    #[test]
    fn a_damaged_event_does_not_read() {
        let e = event();
        let key = org_seq_key(e.org, e.seq);
        let stored = e.to_stored();
        for cut in 0..stored.len() {
            assert!(Event::from_stored(&key, &stored[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Event::from_stored(&key[..10], &stored).is_err(), "a short key");
    }
}
