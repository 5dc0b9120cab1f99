//! The document engine: shared Yjs documents loaded in memory, kept durable before anyone sees
//! a change.
//!
//! An update (from a sync socket or REST) is decoded first — what does not decode is refused
//! and touches nothing — then appended through the store writer (group-committed with every
//! other change), and only once that commit is durable applied to the loaded document and
//! relayed to its sockets. So the in-memory state, which answers every new client's sync, never
//! holds anything a crash could lose. A socket joins a document and updates are applied under
//! the same lock, so a joiner gets each update either in its initial sync or relayed, never
//! neither.
//!
//! Loaded documents are bounded (`docs.loaded_max`) and unloaded when nobody has been connected
//! for `docs.idle_unload_s`. A document whose stored updates pass `docs.compact_after_updates`
//! (and a quarter of its snapshot's size, so that a large document is not rebuilt every few
//! edits) is compacted in the background: its snapshot and updates are merged, from one snapshot of
//! the store, and swapped in through the writer atomically. The `doc.changed` events owed for
//! a burst's last changes are logged a second after it ends.

pub mod content;
pub mod nesting;
pub mod v1;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OnceCell, mpsc};
use yrs::encoding::write::Write as _;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::config::DocsConfig;
use crate::domain::DomainError;
use crate::domain::docs::{self, Appended, Caps, EditSession};
use crate::ids::Id;
use crate::metrics::Metrics;
use crate::panics;
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Store, StoreError};
use crate::tenancy::OrgScope;

/// An encoded sync-protocol message, shared by every socket it goes to.
pub type Frame = Arc<[u8]>;

/// How often idle documents are looked for.
const JANITOR_EVERY: Duration = Duration::from_secs(5);
/// One awareness state (a client's cursor, name, colour) at most, in bytes of JSON.
pub const AWARENESS_STATE_BYTES_MAX: usize = 16 * 1024;
/// Awareness client ids one socket may speak for.
pub const AWARENESS_CLIENTS_PER_SOCKET_MAX: usize = 16;

type Key = (Id, Id);

/// The loaded documents of one server.
pub struct Engine {
    store: Store,
    writer: Writer,
    pub(crate) metrics: Arc<Metrics>,
    cfg: DocsConfig,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    /// Documents with a compaction or a trailing announcement under way.
    chores: Mutex<HashSet<(Key, Chore)>>,
    next_conn: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Chore {
    Compact,
    Announce,
}

struct Slot {
    live: OnceCell<Arc<LiveDoc>>,
}

/// One loaded document.
pub struct LiveDoc {
    pub scope: OrgScope,
    pub id: Id,
    inner: Mutex<Inner>,
}

struct Inner {
    doc: Doc,
    peers: HashMap<u64, Peer>,
    /// Awareness states by Yjs client id.
    awareness: HashMap<yrs::ClientID, Aware>,
    /// Encoded bytes loaded plus applied since: the memory estimate.
    bytes: u64,
    /// Changes in flight (committed or about to be, not yet applied): the document stays loaded.
    pins: usize,
    /// How deep its deepest shared type sits, at most (see [`nesting`]).
    deepest: u32,
    idle_since: Option<Instant>,
    /// Which stored updates the document holds (`None`: not known, after it broke and until it
    /// is rebuilt), so that it can be compacted from memory.
    applied: Option<Applied>,
}

/// Which of a document's stored updates (numbered from 1) a loaded document holds: every one
/// through `through`, and the runs in `ahead` (applied before an earlier one, whose commit
/// finished first but whose caller took the lock later).
struct Applied {
    through: u64,
    /// First → last update of each run beyond `through`.
    ahead: BTreeMap<u64, u64>,
}

/// Runs held beyond a gap at most; past it they are forgotten (the gap is an update committed
/// but never applied here, its caller gone: only a reload fills it).
const APPLIED_RUNS_MAX: usize = 1024;

impl Applied {
    fn through(n: u64) -> Self {
        Self { through: n, ahead: BTreeMap::new() }
    }

    /// Updates `first..=last` are in the document now.
    fn add(&mut self, first: u64, last: u64) {
        if first > self.through + 1 {
            if self.ahead.len() >= APPLIED_RUNS_MAX {
                self.ahead.clear();
            }
            self.ahead.insert(first, last);
            return;
        }
        self.through = self.through.max(last);
        while let Some((&f, &l)) = self.ahead.first_key_value() {
            if f > self.through + 1 {
                break;
            }
            self.ahead.pop_first();
            self.through = self.through.max(l);
        }
    }
}

struct Peer {
    tx: mpsc::Sender<Frame>,
    /// Told when the socket must close because it fell behind.
    cut: Arc<Notify>,
}

struct Aware {
    clock: u32,
    json: Arc<str>,
    conn: u64,
}

/// A peer registered on a document: unregisters (and clears its awareness) when dropped.
pub struct Joined {
    engine: Arc<Engine>,
    pub live: Arc<LiveDoc>,
    pub conn: u64,
    pub rx: mpsc::Receiver<Frame>,
    pub cut: Arc<Notify>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.engine.leave(&self.live, self.conn);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Held for in-memory work only, never across an await.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on one transaction of `doc` under [`panics::contain`], and commits it after.
///
/// The transaction is not dropped while a panic of the engine's unwinds: its drop commits, which
/// after such a panic can panic again, and a panic while unwinding aborts the process (found by
/// fuzzing: a delete set naming clocks before a client's first structure). It is dropped once
/// the first panic is caught, where a second is contained like the first. A document that
/// panicked may be half-changed: the caller throws it away or rebuilds it from the store.
pub fn transact_contained<T>(
    doc: &Doc,
    f: impl FnOnce(&mut yrs::TransactionMut<'_>) -> T,
) -> Result<T, panics::Contained> {
    let mut txn = std::mem::ManuallyDrop::new(doc.transact_mut());
    let out = panics::contain(|| f(&mut txn));
    let committed = panics::contain(move || drop(std::mem::ManuallyDrop::into_inner(txn)));
    let out = out?;
    committed?;
    Ok(out)
}

/// Checks that updates decode (through [`v1::update`]) and that the engine can integrate each
/// on its own (into an empty document, contained: yrs panics on some malformed updates),
/// refusing the lot if one fails. Empty updates are dropped.
pub fn decode_updates(raw: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, DomainError> {
    let mut out = Vec::with_capacity(raw.len());
    for bytes in raw {
        let u = v1::update(&bytes)
            .map_err(|e| DomainError::invalid("", "invalid_update", format!("not a Yjs update (v1): {e}")))?;
        if u.is_empty() {
            continue;
        }
        if !one_run_per_client(&u) {
            return Err(DomainError::invalid(
                "",
                "invalid_update",
                "this update is malformed: a client's structures overlap or are out of order".to_owned(),
            ));
        }
        let trial = transact_contained(&Doc::new(), |txn| txn.apply_update(u).is_ok());
        if trial.is_err() {
            return Err(DomainError::invalid(
                "",
                "invalid_update",
                "this update is malformed: the document engine cannot integrate it".to_owned(),
            ));
        }
        out.push(bytes);
    }
    Ok(out)
}

/// Whether each client's structures in `u` are one run of consecutive clocks, as every Yjs
/// encoder writes them. yrs also takes a client written twice (overlapping, or with a gap) and
/// clocks that wrap around, and integrating such an update frees a structure the document
/// still points to (a use after free, found by fuzzing under AddressSanitizer): memory unsafety
/// that no containment can catch, so such updates never reach the engine. Re-encoding writes
/// each client once from its first clock, so a malformed update reads back with other ids.
pub fn one_run_per_client(u: &Update) -> bool {
    let ids = u.insertions(true);
    if ids.iter().any(|(_, ranges)| ranges.iter().any(|r| r.start >= r.end)) {
        return false;
    }
    // Through the door again: what yrs writes back for a malformed update can declare more
    // than it holds (found by fuzzing: 6 GiB reserved).
    match v1::update(&u.encode_v1()) {
        Ok(again) => again.insertions(true) == ids && again.delete_set() == u.delete_set(),
        Err(_) => false,
    }
}

/// What a peer at `sv` lacks, as one update (v1). Structures still waiting for what they
/// depend on (pending: sent by a client and stored, but never integrated) are left out: putting
/// them in means merging them with the rest, which yrs cannot do for every malformed one (it
/// panics, found by fuzzing), and what never integrated is no part of the document's content.
pub fn state_update(doc: &Doc, sv: &StateVector) -> Vec<u8> {
    doc.transact().encode_diff_v1(sv)
}

pub fn encode(msg: &Message) -> Frame {
    msg.encode_v1().into()
}

impl Engine {
    pub fn new(store: Store, writer: Writer, metrics: Arc<Metrics>, cfg: DocsConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            writer,
            metrics,
            cfg,
            slots: Mutex::default(),
            chores: Mutex::default(),
            next_conn: AtomicU64::new(1),
        })
    }

    pub fn config(&self) -> &DocsConfig {
        &self.cfg
    }

    pub fn caps(&self) -> Caps {
        Caps {
            update_bytes_max: self.cfg.update_bytes_max,
            document_bytes_max: self.cfg.document_bytes_max,
            org_bytes_max: self.cfg.org_bytes_max,
        }
    }

    /// The loaded document, loading it from the store if need be. The caller has checked access.
    pub async fn open(&self, scope: OrgScope, id: Id) -> Result<Arc<LiveDoc>, DomainError> {
        let org = scope.org();
        let slot = {
            let mut slots = lock(&self.slots);
            if !slots.contains_key(&(org, id)) && slots.len() >= self.cfg.loaded_max {
                self.evict_idle(&mut slots, Duration::ZERO);
                if slots.len() >= self.cfg.loaded_max {
                    return Err(StoreError::Busy.into());
                }
            }
            slots.entry((org, id)).or_insert_with(|| Arc::new(Slot { live: OnceCell::new() })).clone()
        };
        let live = slot.live.get_or_try_init(|| self.load(scope, id)).await?;
        Ok(live.clone())
    }

    /// The document as the store has it, built on the blocking pool, with its stored size, the
    /// depth of its deepest type and the last update it holds.
    async fn build_stored(&self, scope: OrgScope, id: Id) -> Result<(Doc, u64, u32, u64), DomainError> {
        let org = scope.org();
        let state = self
            .store
            .read(move |r| docs::stored_state(r, org, id))
            .await?
            .ok_or(DomainError::NotFound { what: "document" })?;
        Ok(tokio::task::spawn_blocking(move || {
            let (doc, bytes) = build(&state);
            let deepest = deepest_type(&doc);
            if deepest > nesting::NESTING_MAX {
                tracing::warn!(doc = %state.doc.id, deepest, "shared types nest deeper than is now taken");
            }
            (doc, bytes, deepest, state.doc.update_seq)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("loading a document failed: {e}")))?)
    }

    async fn load(&self, scope: OrgScope, id: Id) -> Result<Arc<LiveDoc>, DomainError> {
        let (doc, bytes, deepest, through) = self.build_stored(scope, id).await?;
        self.metrics.docs_loaded.inc();
        self.metrics.docs_loaded_bytes.inc_by(bytes as i64);
        Ok(Arc::new(LiveDoc {
            scope,
            id,
            inner: Mutex::new(Inner {
                doc,
                peers: HashMap::new(),
                awareness: HashMap::new(),
                bytes,
                pins: 0,
                deepest,
                idle_since: Some(Instant::now()),
                applied: Some(Applied::through(through)),
            }),
        }))
    }

    /// Rebuilds a loaded document from the store, keeping its sockets.
    async fn reload(&self, live: &Arc<LiveDoc>) -> Result<(), DomainError> {
        let (doc, bytes, deepest, through) = self.build_stored(live.scope, live.id).await?;
        let mut inner = lock(&live.inner);
        self.metrics.docs_loaded_bytes.inc_by(bytes as i64 - inner.bytes as i64);
        inner.doc = doc;
        inner.bytes = bytes;
        inner.deepest = deepest;
        // What was applied to the stand-in meanwhile is lost with it: a gap that holds the
        // mark until the next reload.
        inner.applied = Some(Applied::through(through));
        Ok(())
    }

    /// Unloads documents nobody has used for `idle` (all idle ones with `Duration::ZERO`).
    fn evict_idle(&self, slots: &mut HashMap<Key, Arc<Slot>>, idle: Duration) {
        slots.retain(|_, slot| {
            let Some(live) = slot.live.get() else {
                return true; // still loading
            };
            let inner = lock(&live.inner);
            let keep = inner.pins > 0 || inner.idle_since.is_none_or(|t| t.elapsed() < idle);
            if !keep {
                self.metrics.docs_loaded.dec();
                self.metrics.docs_loaded_bytes.dec_by(inner.bytes as i64);
            }
            keep
        });
    }

    /// Unloads idle documents every few seconds, for as long as the server runs.
    pub async fn janitor(self: Arc<Self>) {
        let idle = Duration::from_secs(self.cfg.idle_unload_s);
        let mut tick = tokio::time::interval(JANITOR_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.evict_idle(&mut lock(&self.slots), idle);
        }
    }

    /// Registers a socket on a document: answers its handle and the frames that start the
    /// sync (the server's step 1 and who is here).
    pub fn join(self: &Arc<Self>, live: Arc<LiveDoc>) -> (Joined, Vec<Frame>) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.cfg.send_queue_len);
        let cut = Arc::new(Notify::new());
        let mut first = Vec::with_capacity(2);
        {
            let mut inner = lock(&live.inner);
            inner.peers.insert(conn, Peer { tx, cut: cut.clone() });
            inner.idle_since = None;
            let sv = inner.doc.transact().state_vector();
            first.push(encode(&Message::Sync(SyncMessage::SyncStep1(sv))));
            if let Some(f) = awareness_frame(&inner) {
                first.push(f);
            }
        }
        self.metrics.docs_connections.inc();
        (Joined { engine: self.clone(), live, conn, rx, cut }, first)
    }

    fn leave(&self, live: &LiveDoc, conn: u64) {
        let mut inner = lock(&live.inner);
        inner.peers.remove(&conn);
        let gone: Vec<yrs::ClientID> =
            inner.awareness.iter().filter(|(_, a)| a.conn == conn).map(|(c, _)| *c).collect();
        if !gone.is_empty() {
            let mut update = AwarenessUpdate { clients: HashMap::new() };
            for client in gone {
                if let Some(a) = inner.awareness.remove(&client) {
                    update.clients.insert(
                        client,
                        yrs::sync::awareness::AwarenessUpdateEntry { clock: a.clock + 1, json: "null".into() },
                    );
                }
            }
            let frame = encode(&Message::Awareness(update));
            Self::relay(&mut inner, &frame, None);
        }
        if inner.peers.is_empty() {
            inner.idle_since = Some(Instant::now());
        }
        self.metrics.docs_connections.dec();
    }

    /// Sends `frame` to every peer but `except`; a peer whose queue is full is cut off.
    fn relay(inner: &mut Inner, frame: &Frame, except: Option<u64>) -> u64 {
        let mut sent = 0;
        inner.peers.retain(|conn, peer| {
            if Some(*conn) == except {
                return true;
            }
            if peer.tx.try_send(frame.clone()).is_err() {
                peer.cut.notify_one();
                return false;
            }
            sent += 1;
            true
        });
        sent
    }

    /// The answer to a client's sync step 1: what it lacks.
    pub async fn step2(&self, live: &Arc<LiveDoc>, sv: StateVector) -> Result<Frame, DomainError> {
        let update = self.diff(live, sv).await?;
        Ok(encode(&Message::Sync(SyncMessage::SyncStep2(update))))
    }

    /// Everyone's awareness, for a client that asks.
    pub fn awareness_all(&self, live: &LiveDoc) -> Option<Frame> {
        awareness_frame(&lock(&live.inner))
    }

    /// Takes an awareness update from socket `conn`: newer states replace older ones and go to
    /// the other sockets. Oversized states, and client ids beyond the socket's share, are
    /// ignored.
    pub fn awareness(&self, live: &LiveDoc, conn: u64, update: AwarenessUpdate) {
        let mut inner = lock(&live.inner);
        let mut accepted = AwarenessUpdate { clients: HashMap::new() };
        for (client, entry) in update.clients {
            if entry.json.len() > AWARENESS_STATE_BYTES_MAX {
                continue;
            }
            let known = inner.awareness.get(&client);
            if known.is_some_and(|a| a.conn != conn) {
                continue; // another socket speaks for this client id
            }
            if known.is_none()
                && inner.awareness.values().filter(|a| a.conn == conn).count() >= AWARENESS_CLIENTS_PER_SOCKET_MAX
            {
                continue;
            }
            let removing = &*entry.json == "null";
            let newer = known.is_none_or(|a| entry.clock > a.clock || (entry.clock == a.clock && removing));
            if !newer {
                continue;
            }
            if removing {
                inner.awareness.remove(&client);
            } else {
                inner.awareness.insert(client, Aware { clock: entry.clock, json: entry.json.clone(), conn });
            }
            accepted.clients.insert(client, entry);
        }
        if !accepted.clients.is_empty() {
            let frame = encode(&Message::Awareness(accepted));
            Self::relay(&mut inner, &frame, Some(conn));
        }
    }

    /// Applies updates from `user`: decoded (else refused whole), appended durably, then applied
    /// to the loaded document and relayed to every socket on it but `from`.
    pub async fn apply(
        self: &Arc<Self>,
        live: &Arc<LiveDoc>,
        ctx: MutationCtx,
        user: Id,
        raw: Vec<Vec<u8>>,
        from: Option<u64>,
        starts: Option<EditSession>,
    ) -> Result<Option<Appended>, DomainError> {
        let started = Instant::now();
        let decoded = match decode_updates(raw) {
            Ok(d) => d,
            Err(e) => {
                self.metrics.docs_refused.inc();
                return Err(e);
            }
        };
        if decoded.is_empty() {
            return Ok(None);
        }
        let deepest = match check_nesting(live, &decoded) {
            Ok(d) => d,
            Err(e) => {
                self.metrics.docs_refused.inc();
                return Err(e);
            }
        };
        let _pin = Pin::new(live);
        let decoded: Arc<[Vec<u8>]> = decoded.into();
        let n = decoded.len() as u64;
        let appended = match docs::append(
            &self.writer,
            ctx,
            user,
            live.id,
            decoded.clone(),
            starts,
            self.caps(),
            self.cfg.compact_after_updates,
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                self.metrics.docs_refused.inc();
                return Err(e);
            }
        };
        let mut relayed = 0;
        let broken = {
            let mut inner = lock(&live.inner);
            // Applied in one transaction. (Decoded again: a decoded update cannot be held
            // across the commit's await, it is not `Send`.)
            let doc = &inner.doc;
            let applied = transact_contained(doc, |txn| {
                let mut applied = Vec::with_capacity(decoded.len());
                for b in decoded.iter() {
                    let Ok(update) = Update::decode_v1(b) else { continue };
                    match txn.apply_update(update) {
                        Ok(()) => applied.push(b),
                        // Stored, but it does not fit this document (it names parents that are
                        // not shared types): loading skips it the same way.
                        Err(e) => tracing::warn!(doc = %live.id, error = %e, "a stored update does not apply"),
                    }
                }
                applied
            });
            match applied {
                Ok(applied) => {
                    inner.deepest = inner.deepest.max(deepest);
                    // All of them count as held, those that did not apply too: building the
                    // document from the store skips them the same way.
                    if let Some(held) = inner.applied.as_mut().filter(|_| appended.stored > 0) {
                        held.add(appended.update_seq + 1 - appended.stored, appended.update_seq);
                    }
                    for b in applied {
                        let size = b.len() as u64;
                        inner.bytes += size;
                        self.metrics.docs_loaded_bytes.inc_by(size as i64);
                        relayed += Self::relay(&mut inner, &update_frame(b), from);
                    }
                    false
                }
                Err(e) => {
                    tracing::warn!(doc = %live.id, error = %e, "a stored update broke the loaded document; reloading it");
                    // It may be half-changed: until the reload below, an empty document stands
                    // in (what arrives meanwhile is stored first, so the reload has it too).
                    inner.doc = Doc::new();
                    inner.applied = None;
                    true
                }
            }
        };
        if broken {
            // Stored, but the engine panicked integrating it with this document's state: the
            // loaded copy may be half-changed, so it is rebuilt from the store, where loading
            // skips that update as it skips any that does not apply.
            self.reload(live).await?;
        }
        self.metrics.docs_updates.inc_by(n);
        self.metrics.docs_relayed.inc_by(relayed);
        self.metrics.docs_sync_seconds.observe(started.elapsed().as_secs_f64());
        if appended.compact {
            self.spawn_chore(live.scope, live.id, Chore::Compact);
        }
        if appended.unannounced {
            self.spawn_chore(live.scope, live.id, Chore::Announce);
        }
        Ok(Some(appended))
    }

    /// What a client at state vector `sv` lacks (everything, for an empty one), as one update
    /// (v1).
    pub async fn diff(&self, live: &Arc<LiveDoc>, sv: StateVector) -> Result<Vec<u8>, DomainError> {
        read_doc(live, move |doc| state_update(doc, &sv)).await
    }

    /// An update that makes the document's content that of `state` (a version's): texts,
    /// maps and arrays are rewritten to their old content. Made on a copy: nothing changes
    /// until the caller applies it.
    pub async fn revert_to(&self, live: &Arc<LiveDoc>, state: Vec<u8>) -> Result<Vec<u8>, DomainError> {
        read_doc(live, move |doc| {
            let invalid = |e: &dyn std::fmt::Display| DomainError::invalid("", "invalid_update", e.to_string());
            let broken = |e: panics::Contained| StoreError::Storage(e.to_string());
            let old = Doc::new();
            let u = Update::decode_v1(&state).map_err(|e| invalid(&e))?;
            transact_contained(&old, |txn| txn.apply_update(u)).map_err(broken)?.map_err(|e| invalid(&e))?;
            let copy = Doc::new();
            let current = state_update(doc, &StateVector::default());
            let u = Update::decode_v1(&current).map_err(|e| StoreError::Storage(e.to_string()))?;
            transact_contained(&copy, |txn| txn.apply_update(u))
                .map_err(broken)?
                .map_err(|e| StoreError::Storage(e.to_string()))?;
            content::rewrite(&copy, &old)
        })
        .await?
    }

    /// The document's top-level shared types as JSON.
    pub async fn json(&self, live: &Arc<LiveDoc>) -> Result<serde_json::Value, DomainError> {
        read_doc(live, content::to_json).await
    }

    fn spawn_chore(self: &Arc<Self>, scope: OrgScope, id: Id, chore: Chore) {
        let org = scope.org();
        if !lock(&self.chores).insert(((org, id), chore)) {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            match chore {
                Chore::Compact => {
                    if let Err(e) = engine.compact(scope, id).await {
                        tracing::warn!(doc = %id, error = %e, "compaction failed");
                    }
                }
                Chore::Announce => loop {
                    tokio::time::sleep(Duration::from_millis(docs::EVENT_INTERVAL_MS as u64 + 50)).await;
                    match docs::announce(&engine.writer, scope, id).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(doc = %id, error = %e, "a document change event was not logged");
                            break;
                        }
                    }
                },
            }
            lock(&engine.chores).remove(&((org, id), chore));
        });
    }

    /// Merges the document's snapshot and stored updates into one snapshot. Answers the bytes
    /// saved (0 when there was nothing to merge).
    ///
    /// A loaded document that holds every stored update through some point past the snapshot
    /// is compacted from memory: its state replaces the snapshot and those updates (it may
    /// hold later ones too; applying an update twice changes nothing). Otherwise the document
    /// is built again from the store to be merged.
    pub async fn compact(&self, scope: OrgScope, id: Id) -> Result<i64, DomainError> {
        let org = scope.org();
        let live = lock(&self.slots).get(&(org, id)).and_then(|slot| slot.live.get().cloned());
        if let Some(live) = live {
            let Some(doc) = self.store.read(move |r| docs::stored_record(r, org, id)).await? else {
                return Err(DomainError::NotFound { what: "document" });
            };
            let expected = doc.snapshot_through;
            let taken = read_doc_held(&live, move |doc, held| {
                held.filter(|h| h.through > expected).map(|h| (h.through, state_update(doc, &StateVector::default())))
            })
            .await?;
            if let Some((through, snapshot)) = taken {
                let saved = docs::compact(&self.writer, scope, id, expected, through, snapshot).await?;
                self.metrics.docs_compactions.inc();
                return Ok(saved);
            }
        }
        let Some(state) = self.store.read(move |r| docs::stored_state(r, org, id)).await? else {
            return Err(DomainError::NotFound { what: "document" });
        };
        let Some(through) = state.tail.last().map(|(n, _)| *n) else {
            return Ok(0);
        };
        let expected = state.doc.snapshot_through;
        let snapshot = tokio::task::spawn_blocking(move || {
            let (doc, _) = build(&state);
            panics::contain(|| state_update(&doc, &StateVector::default()))
        })
        .await
        .map_err(|e| StoreError::Storage(format!("compaction failed: {e}")))?
        .map_err(|e| StoreError::Storage(format!("compaction failed: {e}")))?;
        let saved = docs::compact(&self.writer, scope, id, expected, through, snapshot).await?;
        self.metrics.docs_compactions.inc();
        Ok(saved)
    }
}

/// Runs `f` over the loaded document on the blocking pool: encoding a large document's whole
/// state is not work for an async worker.
async fn read_doc<T: Send + 'static>(
    live: &Arc<LiveDoc>,
    f: impl FnOnce(&Doc) -> T + Send + 'static,
) -> Result<T, DomainError> {
    read_doc_held(live, move |doc, _| f(doc)).await
}

/// [`read_doc`] with what the document holds of the store.
async fn read_doc_held<T: Send + 'static>(
    live: &Arc<LiveDoc>,
    f: impl FnOnce(&Doc, Option<&Applied>) -> T + Send + 'static,
) -> Result<T, DomainError> {
    let live = live.clone();
    tokio::task::spawn_blocking(move || {
        let inner = lock(&live.inner);
        panics::contain(|| f(&inner.doc, inner.applied.as_ref()))
    })
    .await
    .map_err(|e| StoreError::Storage(format!("reading a document failed: {e}")))?
    .map_err(|e| StoreError::Storage(format!("reading a document failed: {e}")).into())
}

/// An update as the sync protocol's update message.
fn update_frame(update: &[u8]) -> Frame {
    let mut enc = EncoderV1::new();
    enc.write_var(yrs::sync::protocol::MSG_SYNC);
    enc.write_var(yrs::sync::protocol::MSG_SYNC_UPDATE);
    enc.write_buf(update);
    enc.to_vec().into()
}

/// Keeps a document loaded while a change to it is in flight.
struct Pin<'a>(&'a LiveDoc);

impl<'a> Pin<'a> {
    fn new(live: &'a LiveDoc) -> Self {
        lock(&live.inner).pins += 1;
        Self(live)
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        lock(&self.0.inner).pins -= 1;
    }
}

/// Everyone's awareness as one message, if anyone has some.
fn awareness_frame(inner: &Inner) -> Option<Frame> {
    let clients: HashMap<yrs::ClientID, yrs::sync::awareness::AwarenessUpdateEntry> = inner
        .awareness
        .iter()
        .map(|(c, a)| (*c, yrs::sync::awareness::AwarenessUpdateEntry { clock: a.clock, json: a.json.clone() }))
        .collect();
    (!clients.is_empty()).then(|| encode(&Message::Awareness(AwarenessUpdate { clients })))
}

/// Builds a document from its stored state: the snapshot, then the updates after it. An update
/// that does not apply is skipped (and logged); so is one the engine panics on (contained),
/// after which the build starts over without it, each update in its own transaction. Answers
/// the document with its stored size.
/// How deep the shared types of `updates` (one batch, for `live`) would sit at most: refused
/// (422 `invalid_update`) past [`nesting::NESTING_MAX`] or when a new type's parent is nowhere.
fn check_nesting(live: &LiveDoc, updates: &[Vec<u8>]) -> Result<u32, DomainError> {
    let refuse = |why: String| DomainError::invalid("", "invalid_update", why);
    let mut items = Vec::new();
    for u in updates {
        v1::items(u, &mut items).map_err(|e| refuse(format!("not a Yjs update (v1): {e}")))?;
    }
    let inner = lock(&live.inner);
    if !items.iter().any(|i| i.is_type) {
        return Ok(inner.deepest);
    }
    let sv = inner.doc.transact().state_vector();
    let in_doc = |client: u64, clock: u64| clock < u64::from(sv.get(&yrs::ClientID::new(client)));
    match nesting::deepest(&mut items, &in_doc, inner.deepest) {
        Ok(d) if d > nesting::NESTING_MAX => Err(refuse(format!(
            "shared types would nest {d} levels deep; {} is the most a document takes",
            nesting::NESTING_MAX
        ))),
        Ok(d) => Ok(d),
        Err(nesting::Unplaced::ParentMissing) => {
            Err(refuse("this update creates a shared type inside one the document does not have".to_owned()))
        }
        Err(nesting::Unplaced::Circular) => Err(refuse("this update's items name each other as parents".to_owned())),
    }
}

/// How deep the deepest shared type of `doc` sits, from its whole state.
pub fn deepest_type(doc: &Doc) -> u32 {
    let state = doc.transact().encode_state_as_update_v1(&StateVector::default());
    let mut items = Vec::new();
    if v1::items(&state, &mut items).is_err() {
        return 0;
    }
    // Every link of a whole state is inside it; one that is not counts as the top.
    nesting::deepest(&mut items, &|_, _| true, 0).unwrap_or(0)
}

pub fn build(state: &docs::StoredState) -> (Doc, u64) {
    let parts: Vec<(u64, &[u8])> = state
        .snapshot
        .iter()
        .map(|s| (0u64, s.as_slice()))
        .chain(state.tail.iter().map(|(n, u)| (*n, u.as_slice())))
        .collect();
    let bytes = parts.iter().map(|(_, raw)| raw.len() as u64).sum();
    let apply = |txn: &mut yrs::TransactionMut<'_>, n: u64, raw: &[u8]| match Update::decode_v1(raw) {
        // Snapshots (n = 0) are the server's own encoding; what clients sent is checked again.
        Ok(u) if n > 0 && !one_run_per_client(&u) => {
            tracing::warn!(doc = %state.doc.id, update = n, "skipped a stored update whose structures overlap");
        }
        Ok(u) => {
            if let Err(e) = txn.apply_update(u) {
                tracing::warn!(doc = %state.doc.id, update = n, error = %e, "skipped a stored update");
            }
        }
        Err(e) => tracing::warn!(doc = %state.doc.id, update = n, error = %e, "skipped a stored update"),
    };
    // The common case: every part in one transaction.
    let doc = Doc::new();
    let whole = transact_contained(&doc, |txn| {
        for (n, raw) in &parts {
            apply(txn, *n, raw);
        }
    });
    if whole.is_ok() {
        return (doc, bytes);
    }
    let mut skipped: Vec<usize> = Vec::new();
    'again: loop {
        let doc = Doc::new();
        for (i, (n, raw)) in parts.iter().enumerate() {
            if skipped.contains(&i) {
                continue;
            }
            if let Err(e) = transact_contained(&doc, |txn| apply(txn, *n, raw)) {
                tracing::warn!(doc = %state.doc.id, update = n, error = %e, "skipped a stored update the engine cannot integrate");
                skipped.push(i);
                continue 'again;
            }
        }
        return (doc, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_moves_only_over_updates_held_without_a_gap() {
        let mut held = Applied::through(4);
        held.add(7, 9); // 5 and 6 not yet
        assert_eq!(held.through, 4);
        held.add(5, 5);
        assert_eq!(held.through, 5);
        held.add(6, 6); // fills the gap: 7..=9 join
        assert_eq!(held.through, 9);
        assert!(held.ahead.is_empty());
        held.add(12, 12);
        held.add(11, 11);
        assert_eq!(held.through, 9, "10 is missing");
        held.add(10, 10);
        assert_eq!(held.through, 12);
        // Runs beyond a gap that never fills are bounded.
        for n in 0..(APPLIED_RUNS_MAX as u64 + 10) {
            held.add(100 + 2 * n, 100 + 2 * n);
        }
        assert!(held.ahead.len() <= APPLIED_RUNS_MAX);
        assert_eq!(held.through, 12);
    }
}
