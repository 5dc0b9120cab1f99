//! The log's consumers that write: durable followers (each keeps its checkpoint, the last global
//! position it applied, and resumes from it after a restart), their registry for lag metrics and
//! readiness, and retention, which trims the log but never past the slowest follower.
//!
//! These write through the writer's housekeeping path (`Writer::maintain`: no events, no audit
//! records); the log itself (`events`) knows nothing of the writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events::{BusReceiver, Event};
use super::tables::{self, EVENT_HEADS, EVENT_TOPICS, EVENTS, FOLLOWERS, LOG_ORDER};
use super::writer::Writer;
use super::{Store, StoreError, prefix_end};
use crate::ids::Id;

/// Retention limits for the log.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub age: Duration,
    pub count_max: u64,
    /// Most log entries removed per housekeeping pass, so a pass never stalls the writer.
    pub batch_max: usize,
}

/// Trims events past retention (by age and per-org count), never past the slowest follower's
/// checkpoint. Returns the number of events removed.
pub async fn trim(writer: &Writer, retention: Retention) -> Result<u64, StoreError> {
    writer
        .maintain(move |tx| {
            let now = tx.now_ms();
            let age_cutoff_ms = now - retention.age.as_millis() as i64;
            // Followers hold back trimming: nothing after the slowest checkpoint goes.
            let mut hold = u64::MAX;
            for (_, v) in tx.range(FOLLOWERS, &[], &[0xff; 256], usize::MAX)? {
                hold = hold.min(tables::u64_be(&v).unwrap_or(0));
            }
            let heads: Vec<(Id, u64)> = tx
                .range(EVENT_HEADS, &[], &[0xff; 17], usize::MAX)?
                .iter()
                .filter_map(|(k, v)| Some((Id::from_slice(k)?, tables::u64_be(v)?)))
                .collect();
            let mut removed = 0u64;
            for (org, head) in heads {
                let count_floor = head.saturating_sub(retention.count_max);
                let start = tables::org_seq_key(org, 0);
                let end = prefix_end(org.as_bytes());
                for (k, v) in tx.range(EVENTS, &start, &end, retention.batch_max)? {
                    let event = Event::from_stored(&k, &v)?;
                    let too_old = event.at_ms < age_cutoff_ms;
                    let too_many = event.seq <= count_floor;
                    if !(too_old || too_many) || event.gseq > hold || removed as usize >= retention.batch_max {
                        break;
                    }
                    tx.delete(EVENTS, &k)?;
                    tx.delete(EVENT_TOPICS, &tables::topic_key(org, &event.topic, event.seq))?;
                    tx.delete(LOG_ORDER, &event.gseq.to_be_bytes())?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
}

/// Sets follower `name`'s checkpoint (after a rebuild that covered the log up to `gseq`).
pub async fn set_checkpoint(writer: &Writer, name: &str, gseq: u64) -> Result<(), StoreError> {
    let name = name.to_owned();
    writer.maintain(move |tx| tx.put(FOLLOWERS, name.as_bytes(), &gseq.to_be_bytes())).await
}

/// A durable consumer of the log: resumes from its checkpoint, takes batches, checkpoints.
pub struct Follower {
    name: String,
    store: Store,
    writer: Writer,
    position: u64,
    registry: Arc<FollowerRegistry>,
}

impl Follower {
    /// Opens (or registers) the follower `name` at its stored checkpoint (0 for a new one).
    /// A new follower's checkpoint is stored at once, so trimming waits for it from now on.
    pub async fn open(
        name: &str,
        store: Store,
        writer: Writer,
        registry: Arc<FollowerRegistry>,
    ) -> Result<Self, StoreError> {
        let n = name.to_owned();
        let position = store.read(move |r| r.follower_checkpoint(&n)).await?;
        let mut f = Self { name: name.to_owned(), store, writer, position: position.unwrap_or(0), registry };
        if position.is_none() {
            f.checkpoint(0).await?;
        }
        f.registry.report(&f.name, f.position);
        Ok(f)
    }

    /// The next batch after the checkpoint (empty when caught up). Does not move the checkpoint.
    pub async fn next_batch(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let after = self.position;
        self.store.read(move |r| r.events_after_gseq(after, limit)).await
    }

    /// Records that everything up to `gseq` has been applied; durable when this returns.
    pub async fn checkpoint(&mut self, gseq: u64) -> Result<(), StoreError> {
        let name = self.name.clone();
        self.writer.maintain(move |tx| tx.put(FOLLOWERS, name.as_bytes(), &gseq.to_be_bytes())).await?;
        self.position = gseq;
        self.registry.report(&self.name, gseq);
        Ok(())
    }

    /// Like [`Follower::checkpoint`], with `f`'s writes in the same commit: what the follower
    /// derived from the events up to `gseq` becomes durable exactly when its checkpoint does.
    pub async fn checkpoint_with<T, F>(&mut self, gseq: u64, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(&mut super::writer::Tx<'_, '_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let name = self.name.clone();
        let out = self
            .writer
            .maintain(move |tx| {
                let out = f(tx)?;
                tx.put(FOLLOWERS, name.as_bytes(), &gseq.to_be_bytes())?;
                Ok(out)
            })
            .await?;
        self.position = gseq;
        self.registry.report(&self.name, gseq);
        Ok(out)
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Waits for events after the checkpoint, up to `wait`, then returns the next batch.
    pub async fn wait_batch(
        &self,
        bus: &mut BusReceiver,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Event>, StoreError> {
        let batch = self.next_batch(limit).await?;
        if !batch.is_empty() {
            return Ok(batch);
        }
        let _ = tokio::time::timeout(wait, bus.recv()).await;
        self.next_batch(limit).await
    }
}

/// Positions of live followers, for lag metrics and the readiness check.
#[derive(Default)]
pub struct FollowerRegistry {
    inner: std::sync::Mutex<std::collections::BTreeMap<String, (u64, Instant)>>,
}

impl FollowerRegistry {
    fn report(&self, name: &str, gseq: u64) {
        // A std Mutex: held for a map insert, never across an await.
        if let Ok(mut m) = self.inner.lock() {
            m.insert(name.to_owned(), (gseq, Instant::now()));
        }
    }

    /// Each follower's (name, position, time since it last advanced).
    pub fn snapshot(&self) -> Vec<(String, u64, Duration)> {
        self.inner
            .lock()
            .map(|m| m.iter().map(|(n, (g, t))| (n.clone(), *g, t.elapsed())).collect())
            .unwrap_or_default()
    }

    /// Followers that are behind `head_gseq` and have not advanced for `stall`.
    pub fn stalled(&self, head_gseq: u64, stall: Duration) -> Vec<String> {
        self.snapshot()
            .into_iter()
            .filter(|(_, g, since)| *g < head_gseq && *since > stall)
            .map(|(n, _, _)| n)
            .collect()
    }
}
