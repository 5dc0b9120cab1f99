//! Outbound webhooks: deliveries of the event log's events to the endpoints organizations
//! register, signed the Standard Webhooks way so receivers verify them with off-the-shelf
//! libraries. Every call goes out through [`crate::egress`].
//!
//! Two parts, both restartable at any instant:
//! - the **follower** reads the log in commit order and puts a message for each event into the
//!   queue of every endpoint that wants it, in the same commit as its checkpoint — so after a
//!   crash each event is queued exactly once;
//! - a **deliverer** per endpoint with messages queued sends the first one, writes the attempt
//!   down, and moves on only when it was delivered or given up: each endpoint receives its
//!   messages in commit order, and a failing one waits alone. At-least-once: a crash between a
//!   delivery and its record sends that message again (same `webhook-id`).

pub mod signing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::config::WebhooksConfig;
use crate::domain::DomainError;
use crate::domain::webhooks::{self as domain, Attempt, DisabledReason, Endpoint, Outcome, Pending, Recorded, Trigger};
use crate::egress::{Answer, Egress};
use crate::ids::{self, Id};
use crate::metrics::{EndpointLabels, Metrics, OutcomeLabels};
use crate::store::events::{Event, EventBus};
use crate::store::followers::{Follower, FollowerRegistry};
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Lookup, Store, StoreError};
use crate::tenancy::OrgScope;
use crate::vault::{Vault, VaultCell};
use signing::Secret;

/// The follower's name (its checkpoint in the store).
pub const FOLLOWER: &str = "webhooks";
/// Events per follower batch at most (each may queue a message for every endpoint).
const BATCH_MAX: usize = 128;
/// Bytes of a receiver's answer kept in the log.
const EXCERPT_BYTES: usize = 1024;
/// The longest wait a receiver's `Retry-After` may ask for.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// What the webhooks engine is built from.
pub struct Parts {
    pub store: Store,
    pub writer: Writer,
    pub bus: EventBus,
    pub egress: Egress,
    pub vault: VaultCell,
    pub metrics: Arc<Metrics>,
    pub config: WebhooksConfig,
}

/// One endpoint's deliverer, while it has one: pokes tell it there is news (a message queued,
/// the endpoint changed).
#[derive(Default)]
struct Slot {
    pokes: AtomicU64,
    notify: Notify,
}

type Key = (Id, Id);

/// One event's message for its endpoints: (org, position, endpoints, the encoded message).
type Queued = (Id, u64, Vec<Id>, Arc<[u8]>);

struct Inner {
    parts: Parts,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    /// Messages queued per endpoint (known to be), for the backlog cap and the metrics.
    backlog: Mutex<HashMap<Key, usize>>,
    in_flight: Semaphore,
    stop: tokio::sync::watch::Sender<bool>,
}

/// The webhooks engine (cheap to clone).
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl Webhooks {
    pub fn new(parts: Parts) -> Self {
        let in_flight = Semaphore::new(parts.config.in_flight_max);
        let (stop, _) = tokio::sync::watch::channel(false);
        Self { inner: Arc::new(Inner { parts, slots: Mutex::default(), backlog: Mutex::default(), in_flight, stop }) }
    }

    /// Runs the follower, starts a deliverer for every endpoint with a backlog, and trims the
    /// logs of attempts, until [`Webhooks::stop`].
    pub async fn run(self, followers: Arc<FollowerRegistry>) {
        let inner = self.inner.clone();
        let store = inner.parts.store.clone();
        match store.read(domain::backlogs).await {
            Ok(found) => {
                lock(&inner.backlog).extend(found.iter().map(|(k, n)| (*k, *n)));
                for (org, ep) in found.keys() {
                    inner.poke(*org, *ep);
                }
            }
            Err(e) => tracing::error!(error = %e, "webhooks: cannot read the queues"),
        }
        let trimmer = tokio::spawn(inner.clone().trim_logs());
        inner.follow(followers).await;
        trimmer.abort();
    }

    /// Stops the follower (after the batch it is on) and every deliverer (an attempt in flight
    /// is sent again after the next start).
    pub fn stop(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// Tells an endpoint's deliverer to look again (it was changed, or messages were queued
    /// outside the follower).
    pub fn poke(&self, org: Id, endpoint: Id) {
        self.inner.poke(org, endpoint);
    }

    /// Counts an endpoint's backlog again from the store, and pokes its deliverer.
    pub async fn recount(&self, org: Id, endpoint: Id) {
        let counted = self.inner.parts.store.read(move |r| domain::backlog_of(r, org, endpoint)).await;
        if let Ok(n) = counted {
            let mut b = lock(&self.inner.backlog);
            if n == 0 {
                b.remove(&(org, endpoint));
            } else {
                b.insert((org, endpoint), n);
            }
        }
        self.poke(org, endpoint);
    }

    /// Messages waiting for an endpoint.
    pub fn backlog(&self, org: Id, endpoint: Id) -> usize {
        lock(&self.inner.backlog).get(&(org, endpoint)).copied().unwrap_or(0)
    }

    /// Forgets a deleted endpoint's numbers.
    pub fn forget(&self, org: Id, endpoint: Id) {
        lock(&self.inner.backlog).remove(&(org, endpoint));
        let labels = EndpointLabels { org: org.to_string(), endpoint: endpoint.to_string() };
        self.inner.parts.metrics.webhook_backlog.remove(&labels);
        self.inner.parts.metrics.webhook_lag_seconds.remove(&labels);
        self.poke(org, endpoint);
    }

    /// Sends a `webhook.test` message to the endpoint now, outside its queue, and logs the
    /// attempt.
    pub async fn test_send(&self, org: Id, endpoint: &Endpoint) -> Result<Attempt, StoreError> {
        let msg_id = format!("msg_test_{}", Id::new().0.simple());
        let now = ids::now_ms();
        let body = serde_json::json!({
            "type": "webhook.test",
            "timestamp": ids::rfc3339(now),
            "data": { "org_id": org, "endpoint_id": endpoint.id },
        })
        .to_string();
        let pending = Pending {
            msg_id,
            kind: "webhook.test".into(),
            body,
            event_at_ms: now,
            enqueued_at_ms: now,
            attempts: 0,
            next_at_ms: now,
            trigger: Trigger::Test,
        };
        let mut attempt = self.inner.attempt(org, endpoint, 0, &pending).await;
        // A test is one try, never retried.
        if attempt.outcome == Outcome::Failed {
            attempt.outcome = Outcome::Exhausted;
            attempt.next_at_ms = None;
        }
        domain::record_test(&self.inner.parts.writer, org, endpoint.id, attempt.clone()).await?;
        Ok(attempt)
    }

    /// Re-seals every endpoint's secrets under `vault` (a vault rotation).
    pub async fn reseal(&self, vault: Arc<Vault>, actor: &str) -> Result<usize, DomainError> {
        let orgs = self.inner.parts.store.read(domain::orgs_with_endpoints).await?;
        let mut n = 0;
        for org in orgs {
            let ctx = MutationCtx {
                scope: OrgScope::from_own_record(org),
                actor: actor.to_owned(),
                request_id: None,
                client_addr: None,
            };
            n += domain::reseal(&self.inner.parts.writer, vault.clone(), ctx).await?;
        }
        Ok(n)
    }

    /// Brings the backlog and lag gauges up to date (before a scrape).
    pub fn refresh_gauges(&self) {
        let m = &self.inner.parts.metrics;
        let backlog: Vec<(Key, usize)> = lock(&self.inner.backlog).iter().map(|(k, n)| (*k, *n)).collect();
        let heads = self.inner.parts.store.peek(|r| {
            backlog
                .iter()
                .map(|((org, ep), _)| domain::head(r, *org, *ep).map(|h| h.map(|(_, p)| p.event_at_ms)))
                .collect::<Result<Vec<_>, _>>()
        });
        let now = ids::now_ms();
        for (i, ((org, ep), n)) in backlog.iter().enumerate() {
            let labels = EndpointLabels { org: org.to_string(), endpoint: ep.to_string() };
            m.webhook_backlog.get_or_create(&labels).set(*n as i64);
            let lag_ms = heads.as_ref().ok().and_then(|h| h[i]).map_or(0, |at| (now - at).max(0));
            m.webhook_lag_seconds.get_or_create(&labels).set(lag_ms / 1000);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held for map updates only, never across an await.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn poke(self: &Arc<Self>, org: Id, endpoint: Id) {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(&(org, endpoint)) {
            slot.pokes.fetch_add(1, Ordering::AcqRel);
            slot.notify.notify_one();
            return;
        }
        if *self.stop.borrow() {
            return;
        }
        let slot = Arc::new(Slot::default());
        slots.insert((org, endpoint), slot.clone());
        tokio::spawn(self.clone().deliver(org, endpoint, slot));
    }

    /// Ends a deliverer that found nothing to do, unless it was poked since it looked.
    fn retire(&self, key: Key, slot: &Arc<Slot>, seen: u64) -> bool {
        let mut slots = lock(&self.slots);
        if slot.pokes.load(Ordering::Acquire) != seen {
            return false;
        }
        if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&key);
        }
        true
    }

    /// Follows the log into the endpoints' queues until stopped.
    async fn follow(self: Arc<Self>, followers: Arc<FollowerRegistry>) {
        let mut stop = self.stop.subscribe();
        let p = &self.parts;
        let mut follower = loop {
            match Follower::open(FOLLOWER, p.store.clone(), p.writer.clone(), followers.clone()).await {
                Ok(f) => break f,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks follower cannot start; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        let mut bus = p.bus.subscribe();
        while !*stop.borrow() {
            let batch = tokio::select! {
                b = follower.wait_batch(&mut bus, BATCH_MAX, Duration::from_secs(1)) => b,
                _ = stop.changed() => break,
            };
            let done = match batch {
                Ok(b) if b.is_empty() => continue,
                Ok(b) => self.queue_batch(&mut follower, b).await,
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                tracing::error!(error = %e, "webhooks follower: a batch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Queues a batch's messages and moves the checkpoint past it, in one commit; then pokes
    /// the endpoints concerned and switches off those whose backlog is full.
    async fn queue_batch(self: &Arc<Self>, follower: &mut Follower, batch: Vec<Event>) -> Result<(), StoreError> {
        let last = batch.last().map_or(follower.position(), |e| e.gseq);
        let per_org_max = self.parts.config.endpoints_per_org_max;
        let plan = self.parts.store.read(move |r| plan(r, &batch, per_org_max)).await?;
        // The backlog cap, against what is known to be queued.
        let cap = self.parts.config.backlog_per_endpoint_max;
        let mut full = HashSet::new();
        let mut take: Vec<Queued> = Vec::with_capacity(plan.len());
        let now = ids::now_ms();
        {
            let mut backlog = lock(&self.backlog);
            for (event, endpoints) in plan {
                let mut to = Vec::with_capacity(endpoints.len());
                for ep in endpoints {
                    let n = backlog.entry((event.org, ep)).or_insert(0);
                    if *n >= cap {
                        full.insert((event.org, ep));
                    } else {
                        *n += 1;
                        to.push(ep);
                    }
                }
                // One message body per event, whatever the number of endpoints.
                let bytes: Arc<[u8]> = domain::encode_pending(&domain::pending_for(&event, Trigger::Event, now)).into();
                take.push((event.org, event.gseq, to, bytes));
            }
            backlog.retain(|_, n| *n > 0);
        }
        let take = Arc::new(take);
        let items = take.clone();
        let written = follower
            .checkpoint_with(last, move |tx| {
                for (org, gseq, endpoints, bytes) in items.iter() {
                    for ep in endpoints {
                        domain::enqueue_new(tx, *org, *ep, *gseq, bytes)?;
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = written {
            // Nothing was queued: undo the counts, and the batch is read again.
            let mut backlog = lock(&self.backlog);
            for (org, _, endpoints, _) in take.iter() {
                for ep in endpoints {
                    if let Some(n) = backlog.get_mut(&(*org, *ep)) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            return Err(e);
        }
        let touched: HashSet<Key> =
            take.iter().flat_map(|(org, _, endpoints, _)| endpoints.iter().map(move |ep| (*org, *ep))).collect();
        for (org, ep) in touched {
            self.poke(org, ep);
        }
        for (org, ep) in full {
            self.switch_off(org, ep, DisabledReason::BacklogFull).await;
        }
        Ok(())
    }

    async fn switch_off(&self, org: Id, endpoint: Id, reason: DisabledReason) {
        let ctx = MutationCtx::system(OrgScope::from_own_record(org));
        match domain::disable(&self.parts.writer, ctx, endpoint, reason).await {
            Ok(true) => {
                self.parts.metrics.webhook_endpoints_disabled.inc();
                tracing::warn!(%org, %endpoint, reason = reason.as_str(), "webhook endpoint switched off");
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, %org, %endpoint, "cannot switch a webhook endpoint off"),
        }
    }

    /// One endpoint's deliverer: the first queued message, when due, until the queue is empty
    /// or the endpoint is off.
    async fn deliver(self: Arc<Self>, org: Id, endpoint: Id, slot: Arc<Slot>) {
        let mut stop = self.stop.subscribe();
        let mut last_sent: Option<tokio::time::Instant> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let seen = slot.pokes.load(Ordering::Acquire);
            let found = self
                .parts
                .store
                .read(move |r| {
                    let e = r.record::<Endpoint>(
                        crate::store::tables::WEBHOOK_ENDPOINTS,
                        &crate::store::tables::org_id_key(org, endpoint),
                    )?;
                    Ok::<_, StoreError>((e, domain::head(r, org, endpoint)?))
                })
                .await;
            let (e, head) = match found {
                Ok(x) => x,
                Err(err) => {
                    tracing::warn!(error = %err, "webhook deliverer cannot read its queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let (Some(e), Some((gseq, pending))) = (e.filter(|e| e.enabled && self.parts.config.enabled), head) else {
                if self.retire((org, endpoint), &slot, seen) {
                    return;
                }
                continue;
            };
            let wait_ms = pending.next_at_ms - ids::now_ms();
            let pace = e.rate_per_s.and_then(|r| last_sent.map(|t| t + Duration::from_secs(1) / r));
            let due = tokio::time::Instant::now() + Duration::from_millis(wait_ms.max(0).unsigned_abs());
            let due = pace.map_or(due, |p| p.max(due));
            if due > tokio::time::Instant::now() {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = slot.notify.notified() => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            last_sent = Some(tokio::time::Instant::now());
            let attempt = {
                let _turn = self.in_flight.acquire().await;
                tokio::select! {
                    a = self.attempt(org, &e, gseq, &pending) => a,
                    _ = stop.changed() => return,
                }
            };
            let at_ms = attempt.at_ms;
            match domain::record_attempt(&self.parts.writer, org, endpoint, gseq, attempt).await {
                Ok(Recorded { removed, failing_since_ms }) => {
                    if removed {
                        let mut b = lock(&self.backlog);
                        if let Some(n) = b.get_mut(&(org, endpoint)) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    let limit = i64::try_from(self.parts.config.disable_after_ms).unwrap_or(i64::MAX);
                    if failing_since_ms.is_some_and(|since| at_ms - since >= limit) {
                        self.switch_off(org, endpoint, DisabledReason::Failing).await;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "webhook deliverer cannot record an attempt; it is made again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Sends a message once and says how that went (and when to try again).
    async fn attempt(&self, org: Id, e: &Endpoint, gseq: u64, p: &Pending) -> Attempt {
        let number = p.attempts + 1;
        let at_ms = ids::now_ms();
        let started = std::time::Instant::now();
        let sent = self.send(org, e, &p.msg_id, &p.body).await;
        let latency = started.elapsed();
        let m = &self.parts.metrics;
        m.webhook_delivery_seconds.observe(latency.as_secs_f64());
        let (status, error, response, retry_after) = match &sent {
            Ok(a) => (Some(a.status), None, excerpt(a), retry_after(a)),
            Err(why) => (None, Some(why.clone()), String::new(), None),
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let schedule = &self.parts.config.retry_schedule_ms;
        let (outcome, next_at_ms) = if delivered {
            (Outcome::Delivered, None)
        } else if let Some(&wait) = schedule.get(p.attempts as usize) {
            let wait = jittered(wait, self.parts.config.retry_jitter_percent);
            let wait = retry_after.map_or(wait, |r| wait.max(r));
            (Outcome::Failed, Some(ids::now_ms() + i64::try_from(wait).unwrap_or(i64::MAX / 2)))
        } else {
            (Outcome::Exhausted, None)
        };
        m.webhook_deliveries.get_or_create(&OutcomeLabels { outcome: outcome.as_str().to_owned() }).inc();
        Attempt {
            id: Id::new(),
            msg_id: p.msg_id.clone(),
            kind: p.kind.clone(),
            gseq,
            trigger: p.trigger,
            attempt: number,
            at_ms,
            outcome,
            status,
            error,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            response,
            next_at_ms,
        }
    }

    /// One signed POST of `body` to the endpoint.
    async fn send(&self, org: Id, e: &Endpoint, msg_id: &str, body: &str) -> Result<Answer, String> {
        let url = reqwest::Url::parse(&e.url).map_err(|err| format!("the URL cannot be called: {err}"))?;
        let keys = e.signing_keys(&self.parts.vault.get(), org, ids::now_ms()).map_err(|err| err.to_string())?;
        let secrets: Vec<Secret> = keys.into_iter().map(Secret::from_key).collect();
        let refs: Vec<&Secret> = secrets.iter().collect();
        let mut req = self.parts.egress.request(reqwest::Method::POST, url);
        for (name, value) in &e.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        for (name, value) in signing::headers(&refs, msg_id, ids::now_ms() / 1000, body.as_bytes()) {
            req = req.header(name, value);
        }
        let req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .build()
            .map_err(|err| format!("the request cannot be made: {err}"))?;
        self.parts.egress.send(req).await.map_err(|err| err.to_string())
    }

    /// Trims every endpoint's log of attempts now and then.
    async fn trim_logs(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(self.parts.config.attempts_trim_interval_ms)) => {}
                _ = stop.changed() => return,
            }
            let all = self.parts.store.read(domain::all_endpoints).await.unwrap_or_default();
            let keep = self.parts.config.attempts_kept_per_endpoint;
            let age_ms = i64::try_from(self.parts.config.attempts_kept_s.saturating_mul(1000)).unwrap_or(i64::MAX);
            for (org, ep) in all {
                let cutoff = ids::now_ms().saturating_sub(age_ms);
                let due = self.parts.store.read(move |r| domain::attempts_to_trim(r, org, ep, keep, cutoff)).await;
                if !due.unwrap_or(true) {
                    continue;
                }
                if let Err(e) = domain::trim_attempts(&self.parts.writer, org, ep, keep, cutoff, 10_000).await {
                    tracing::warn!(error = %e, "cannot trim a webhook endpoint's log");
                }
            }
        }
    }
}

/// What a batch of events puts in which queues: each event with the endpoints that take it,
/// in commit order.
fn plan(r: &crate::store::Reader, batch: &[Event], per_org_max: usize) -> Result<Vec<(Event, Vec<Id>)>, StoreError> {
    let mut endpoints: BTreeMap<Id, Vec<Endpoint>> = BTreeMap::new();
    let mut shared: HashMap<(Id, String), bool> = HashMap::new();
    let mut out = Vec::new();
    for event in batch {
        if event.org == Id::NIL {
            continue;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = endpoints.entry(event.org) {
            slot.insert(domain::endpoints_of(r, event.org, per_org_max)?);
        }
        // An endpoint takes events from its making on (recover reaches further back).
        let wanted: Vec<Id> = endpoints[&event.org]
            .iter()
            .filter(|e| e.wants(event) && event.at_ms >= e.created_at_ms)
            .map(|e| e.id)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let key = (event.org, event.topic.clone());
        let open = if let Some(v) = shared.get(&key) {
            *v
        } else {
            let v = domain::shared_with_org(r, event.org, &event.topic)?;
            shared.insert(key, v);
            v
        };
        if open {
            out.push((event.clone(), wanted));
        }
    }
    Ok(out)
}

/// `wait` moved by up to `percent` of itself, either way, at random.
fn jittered(wait: u64, percent: u8) -> u64 {
    let span = wait / 100 * u64::from(percent);
    if span == 0 {
        return wait;
    }
    let r = ids::random_u64() % (2 * span + 1);
    wait - span + r
}

/// A receiver's `Retry-After` (seconds) on 429 or 503, bounded, in milliseconds.
fn retry_after(a: &Answer) -> Option<u64> {
    if !matches!(a.status, 429 | 503) {
        return None;
    }
    let secs: u64 = a.headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX).as_millis().try_into().unwrap_or(u64::MAX))
}

/// The start of an answer's body, as text.
fn excerpt(a: &Answer) -> String {
    let end = a.body.len().min(EXCERPT_BYTES);
    String::from_utf8_lossy(&a.body[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_share() {
        for _ in 0..1000 {
            let j = jittered(10_000, 20);
            assert!((8_000..=12_000).contains(&j), "{j}");
        }
        assert_eq!(jittered(10_000, 0), 10_000);
        assert_eq!(jittered(50, 20), 50);
    }
}
