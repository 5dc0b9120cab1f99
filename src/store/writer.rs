//! The one store writer: a thread that group-commits Mutations.
//!
//! Callers submit a Mutation (a closure over `Tx`) on a bounded queue and await its own result.
//! The thread takes everything queued (up to `batch_len_max`), applies each in turn inside ONE
//! redb write transaction, appends each one's events to its org's log and its record to its
//! org's audit chain, and commits once, durably. Then every caller gets its own answer and the
//! events are published in-process.
//!
//! Isolation inside a batch: a Mutation that rejects before writing anything affects nobody else.
//! One that rejects after it wrote rows cannot be undone piecemeal (redb has no cheap nested
//! rollback), so the writer aborts the transaction and replays the batch without it — rare, and
//! correct. A failed commit fails every caller of that batch; none of them was acknowledged.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redb::{ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::audit;
use super::events::{Event, EventBus};
use super::tables::{self, Table, Tenancy};
use super::{Store, StoreError, change_slot};
use crate::ids::{self, Id};
use crate::metrics::Metrics;
use crate::tenancy::OrgScope;

/// Who asked for a change, and from where: the audit record's context.
#[derive(Clone, Debug)]
pub struct MutationCtx {
    pub scope: OrgScope,
    /// `operator:<key id>`, `user:<id>`, `system`.
    pub actor: String,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
}

impl MutationCtx {
    /// Work the instance does by itself (no request behind it).
    pub fn system(scope: OrgScope) -> Self {
        Self { scope, actor: "system".into(), request_id: None, client_addr: None }
    }
}

/// Writer settings (from the config).
#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub queue_len_max: usize,
    pub batch_len_max: usize,
    pub min_free_disk_bytes: u64,
    pub data_dir: PathBuf,
    /// How long a caller waits for room in a full queue before `StoreError::Busy`.
    pub enqueue_timeout: Duration,
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
    state: Arc<WriterState>,
    enqueue_timeout: Duration,
}

/// What the writer reports about itself for readiness checks.
pub struct WriterState {
    alive: AtomicBool,
    last_commit_ok: AtomicBool,
    disk_low: AtomicBool,
}

impl WriterState {
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
    pub fn last_commit_ok(&self) -> bool {
        self.last_commit_ok.load(Ordering::Relaxed)
    }
    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Relaxed)
    }
}

enum Command {
    Job(Box<dyn Job>),
    Shutdown(oneshot::Sender<()>),
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub fn start(store: Store, bus: EventBus, metrics: Arc<Metrics>, opts: WriterOptions) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(opts.queue_len_max.max(1));
        let state = Arc::new(WriterState {
            alive: AtomicBool::new(true),
            last_commit_ok: AtomicBool::new(true),
            disk_low: AtomicBool::new(false),
        });
        let enqueue_timeout = opts.enqueue_timeout;
        let thread_state = state.clone();
        let gseq = store.reader()?.meta_u64("gseq")?.unwrap_or(0);
        std::thread::Builder::new().name("store-writer".into()).spawn(move || {
            let mut w = WriterThread { store, bus, metrics, opts, gseq, disk: DiskCheck::default() };
            let stopped = w.run(rx, &thread_state);
            // Close the store before saying so: whoever waits on shutdown may reopen it.
            drop(w);
            thread_state.alive.store(false, Ordering::Relaxed);
            if let Some(done) = stopped {
                let _ = done.send(());
            }
        })?;
        Ok(Self { tx, state, enqueue_timeout })
    }

    /// Applies `f` in the next group commit and returns its own result once it is durable.
    /// `f` may run more than once (a batch replay), so it must be a pure function of its
    /// captures and the transaction.
    pub async fn submit<T, E, F>(&self, ctx: MutationCtx, f: F) -> Result<T, E>
    where
        F: FnMut(&mut Tx<'_, '_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.submit_job(ctx, JobKind::Audited, f).await
    }

    /// A high-rate content change (a shared document's update): confined to its organization
    /// like any Mutation, but its audit record is optional — the audit chain records editing
    /// sessions, not keystrokes. Events it emits are logged as usual.
    pub async fn submit_content<T, E, F>(&self, ctx: MutationCtx, f: F) -> Result<T, E>
    where
        F: FnMut(&mut Tx<'_, '_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.submit_job(ctx, JobKind::Content, f).await
    }

    /// Appends `records` (audit records of things already done: gateway calls, MCP requests),
    /// each to its own organization's chain, in the next group commit; returns once they are
    /// durable. They change nothing else, so many calls' records share one job and one commit.
    pub async fn append_records(&self, records: Vec<Record>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let job = Box::new(RecordsJob { ctx: MutationCtx::system(OrgScope::INSTANCE), records, reply: Some(reply) });
        self.enqueue(job).await?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Instance housekeeping (log trimming, follower checkpoints): may touch global tables,
    /// writes neither events nor audit records.
    pub(crate) async fn maintain<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnMut(&mut Tx<'_, '_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.submit_job(MutationCtx::system(OrgScope::INSTANCE), JobKind::Maintenance, f).await
    }

    async fn submit_job<T, E, F>(&self, ctx: MutationCtx, kind: JobKind, f: F) -> Result<T, E>
    where
        F: FnMut(&mut Tx<'_, '_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Box::new(TypedJob { ctx, kind, f, result: None, reply: Some(reply) })).await?;
        rx.await.unwrap_or_else(|_| Err(StoreError::Closed.into()))
    }

    /// Puts `job` on the queue, waiting for room at most `enqueue_timeout`.
    async fn enqueue(&self, job: Box<dyn Job>) -> Result<(), StoreError> {
        match tokio::time::timeout(self.enqueue_timeout, self.tx.send(Command::Job(job))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Busy),
        }
    }

    /// Commits everything queued so far, then stops the thread.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(done)).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub fn state(&self) -> &WriterState {
        &self.state
    }

    /// Mutations waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum JobKind {
    Audited,
    Content,
    Maintenance,
    /// Audit records only ([`Writer::append_records`]).
    Records,
}

/// An audit record of something already done, with the context it was done in.
pub struct Record {
    pub ctx: MutationCtx,
    pub action: &'static str,
    pub target: String,
    /// A JSON object.
    pub details: serde_json::Value,
}

/// A queued Mutation, type-erased so one queue carries every kind.
trait Job: Send {
    fn ctx(&self) -> &MutationCtx;
    fn kind(&self) -> JobKind;
    /// Applies the Mutation; the result is kept inside until `finish`. Returns whether it
    /// succeeded.
    fn apply(&mut self, tx: &mut Tx<'_, '_>) -> bool;
    /// Replaces the kept result with a refusal: the writer left this Mutation out of the batch.
    fn refuse(&mut self, why: StoreError);
    /// Sends the caller its answer: its kept result if `committed` is Ok, else the error.
    fn finish(self: Box<Self>, committed: Result<(), &StoreError>);
    /// Records to append beside the Mutation's own, each in its own context.
    fn records(&self) -> &[Record] {
        &[]
    }
}

/// Records to append, and nothing else ([`Writer::append_records`]).
struct RecordsJob {
    /// The job's own context (the instance's); each record has its own.
    ctx: MutationCtx,
    records: Vec<Record>,
    reply: Option<oneshot::Sender<Result<(), StoreError>>>,
}

impl Job for RecordsJob {
    fn ctx(&self) -> &MutationCtx {
        &self.ctx
    }
    fn kind(&self) -> JobKind {
        JobKind::Records
    }
    fn apply(&mut self, _tx: &mut Tx<'_, '_>) -> bool {
        true
    }
    fn refuse(&mut self, _why: StoreError) {}
    fn finish(mut self: Box<Self>, committed: Result<(), &StoreError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(committed.map_err(clone_err));
        }
    }
    fn records(&self) -> &[Record] {
        &self.records
    }
}

struct TypedJob<T, E, F> {
    ctx: MutationCtx,
    kind: JobKind,
    f: F,
    result: Option<Result<T, E>>,
    reply: Option<oneshot::Sender<Result<T, E>>>,
}

impl<T, E, F> Job for TypedJob<T, E, F>
where
    F: FnMut(&mut Tx<'_, '_>) -> Result<T, E> + Send,
    T: Send,
    E: From<StoreError> + Send,
{
    fn ctx(&self) -> &MutationCtx {
        &self.ctx
    }
    fn kind(&self) -> JobKind {
        self.kind
    }
    fn apply(&mut self, tx: &mut Tx<'_, '_>) -> bool {
        let r = (self.f)(tx);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }
    fn refuse(&mut self, why: StoreError) {
        self.result = Some(Err(E::from(why)));
    }
    fn finish(mut self: Box<Self>, committed: Result<(), &StoreError>) {
        let answer = match (committed, self.result.take()) {
            (_, Some(Err(rejected))) => Err(rejected),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Err(e), _) => Err(E::from(clone_err(e))),
            (Ok(()), None) => Err(E::from(StoreError::Storage("mutation was never applied".into()))),
        };
        if let Some(reply) = self.reply.take() {
            // The caller may have gone away (timeout); its change is durable all the same.
            let _ = reply.send(answer);
        }
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::DiskFull => StoreError::DiskFull,
        StoreError::Closed => StoreError::Closed,
        StoreError::Busy => StoreError::Busy,
        other => StoreError::Storage(other.to_string()),
    }
}

/// The store's tables in one batch attempt, each opened the first time the batch touches it
/// and kept open to its end. Opening a table in a write transaction costs a lookup and closing
/// it a write-back of its root: doing that per operation was most of the writer's time, and
/// opening every table for every batch was a tenth of it again when a batch touches only the
/// audit chain (a window of gateway calls' records).
pub(crate) struct OpenTables<'txn> {
    txn: &'txn WriteTransaction,
    tables: Vec<OnceCell<RedbTable<'txn>>>,
}

type RedbTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

impl<'txn> OpenTables<'txn> {
    fn new(txn: &'txn WriteTransaction) -> Self {
        Self { txn, tables: tables::ALL.iter().map(|_| OnceCell::new()).collect() }
    }

    fn opened(&self, table: Table) -> Result<&RedbTable<'txn>, StoreError> {
        let cell = &self.tables[table.idx];
        if let Some(t) = cell.get() {
            return Ok(t);
        }
        let t = self.txn.open_table(table.def)?;
        Ok(cell.get_or_init(|| t))
    }

    pub(crate) fn table(&mut self, table: Table) -> Result<&mut RedbTable<'txn>, StoreError> {
        self.opened(table)?;
        Ok(self.tables[table.idx].get_mut().expect("opened just above"))
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.opened(table)?.get(key)?.map(|v| v.value().to_vec()))
    }
}

/// One Mutation's view of the open write transaction.
pub struct Tx<'a, 'txn> {
    tables: &'a mut OpenTables<'txn>,
    /// The change-counter slots of the rows written so far in this attempt.
    changed: &'a mut Vec<usize>,
    scope: OrgScope,
    kind: JobKind,
    now_ms: i64,
    dirty: bool,
    events: Vec<PendingEvent>,
    audit: Option<PendingAudit>,
    /// How many audit records the Mutation declared (more than one is refused).
    audits: u32,
}

struct PendingEvent {
    topic: String,
    kind: String,
    data: serde_json::Value,
}

struct PendingAudit {
    action: String,
    target: String,
    details: serde_json::Value,
}

/// An audit record's own parts, borrowed.
struct AuditParts<'a> {
    action: &'a str,
    target: &'a str,
    details: &'a serde_json::Value,
}

impl Tx<'_, '_> {
    /// The organization this Mutation is confined to.
    pub fn org(&self) -> Id {
        self.scope.org()
    }

    /// The batch's clock: every Mutation of one commit sees the same time.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tables.get(table, key)
    }

    /// Entries with keys in `[start, end)`, ascending, at most `limit`.
    pub fn range(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<super::Rows, StoreError> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        for item in self.tables.opened(table)?.range::<&[u8]>(start..end)?.take(limit) {
            let (k, v) = item?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.check_scope(table, key)?;
        self.dirty = true;
        self.tables.table(table)?.insert(key, value)?;
        self.changed.push(change_slot(table, key));
        Ok(())
    }

    pub fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        self.check_scope(table, key)?;
        self.dirty = true;
        self.changed.push(change_slot(table, key));
        Ok(self.tables.table(table)?.remove(key)?.is_some())
    }

    /// Appends an event to the org's log, in this same transaction.
    pub fn emit(&mut self, topic: impl Into<String>, kind: &str, data: serde_json::Value) {
        self.events.push(PendingEvent { topic: topic.into(), kind: kind.to_owned(), data });
    }

    /// Sets this Mutation's audit record (exactly one per audited Mutation).
    pub fn audit(&mut self, action: &str, target: impl Into<String>, details: serde_json::Value) {
        self.audits += 1;
        self.audit = Some(PendingAudit { action: action.to_owned(), target: target.into(), details });
    }

    fn check_scope(&self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        let name = || redb::TableHandle::name(&table.def).to_owned();
        match table.tenancy {
            // Housekeeping is the instance's own work and spans organizations.
            _ if self.kind == JobKind::Maintenance => Ok(()),
            Tenancy::Org if key.starts_with(self.scope.org().as_bytes()) => Ok(()),
            Tenancy::Global if global_writable_by_mutations(table) => Ok(()),
            _ => Err(StoreError::OutOfScope(name())),
        }
    }
}

impl super::Lookup for Tx<'_, '_> {
    fn row(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(table, key)
    }
}

/// Global tables that ordinary Mutations may write (instance-wide unique indexes).
fn global_writable_by_mutations(table: Table) -> bool {
    redb::TableHandle::name(&table.def) == redb::TableHandle::name(&tables::ORG_SLUGS.def)
}

struct WriterThread {
    store: Store,
    bus: EventBus,
    metrics: Arc<Metrics>,
    opts: WriterOptions,
    /// The last global log position handed out (committed).
    gseq: u64,
    disk: DiskCheck,
}

impl WriterThread {
    /// Runs until a shutdown request (returned, to be answered once the store is closed) or
    /// until every sender is gone.
    fn run(&mut self, mut rx: mpsc::Receiver<Command>, state: &WriterState) -> Option<oneshot::Sender<()>> {
        let batch_max = self.opts.batch_len_max.max(1);
        let mut stop: Option<oneshot::Sender<()>> = None;
        while stop.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut jobs = Vec::with_capacity(batch_max);
            let mut push = |cmd: Command, jobs: &mut Vec<Box<dyn Job>>| match cmd {
                Command::Job(j) => jobs.push(j),
                Command::Shutdown(done) => stop = Some(done),
            };
            push(first, &mut jobs);
            while jobs.len() < batch_max {
                match rx.try_recv() {
                    Ok(cmd) => push(cmd, &mut jobs),
                    Err(_) => break,
                }
            }
            self.metrics.writer_queue_len.set(rx.len() as i64);
            if !jobs.is_empty() {
                let ok = self.run_batch(jobs, state);
                state.last_commit_ok.store(ok, Ordering::Relaxed);
            }
        }
        // Commit whatever was queued behind the shutdown request, then stop taking more.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Job(j) => rest.push(j),
                Command::Shutdown(done) => {
                    let _ = done.send(());
                }
            }
        }
        for chunk in chunks(rest, batch_max) {
            self.run_batch(chunk, state);
        }
        stop
    }

    /// Applies and commits one batch; returns whether the commit succeeded.
    fn run_batch(&mut self, mut jobs: Vec<Box<dyn Job>>, state: &WriterState) -> bool {
        let started = Instant::now();
        // Refuse new changes while the disk is below its floor; housekeeping may still run.
        let disk_low = self.disk.low(&self.opts);
        state.disk_low.store(disk_low, Ordering::Relaxed);
        if disk_low {
            let (keep, refuse): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.kind() == JobKind::Maintenance);
            for j in refuse {
                j.finish(Err(&StoreError::DiskFull));
            }
            jobs = keep;
            if jobs.is_empty() {
                return true;
            }
        }
        let mut excluded = vec![false; jobs.len()];
        let outcome = loop {
            match self.attempt(&mut jobs, &mut excluded) {
                Attempt::Replay => {}
                Attempt::Done(r) => break r,
            }
        };
        let n = jobs.len();
        let committed = match outcome {
            Ok((published, mut changed)) => {
                // Row counters, then events, then the answers: whoever hears back from a write
                // and then reads, or subscribes, sees it everywhere.
                changed.sort_unstable();
                changed.dedup();
                self.store.rows_changed(&changed);
                // Publish before answering: whoever hears back from a write and then subscribes
                // must not see that write's events arrive live after the fact.
                self.bus.publish(published);
                for j in jobs {
                    j.finish(Ok(()));
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, batch = n, "store commit failed");
                for j in jobs {
                    j.finish(Err(&e));
                }
                false
            }
        };
        self.metrics.writer_batch_len.observe(n as f64);
        self.metrics.writer_commit_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.writer_commits.inc();
        committed
    }

    fn attempt(&mut self, jobs: &mut [Box<dyn Job>], excluded: &mut [bool]) -> Attempt {
        let txn = match self.store.db().begin_write() {
            Ok(t) => t,
            Err(e) => return Attempt::Done(Err(e.into())),
        };
        let mut open = OpenTables::new(&txn);
        let now_ms = ids::now_ms();
        let mut log = LogAppender::new(self.gseq, self.store.epoch());
        let mut changed = Vec::new();
        for (i, job) in jobs.iter_mut().enumerate() {
            if excluded[i] {
                continue;
            }
            let ctx = job.ctx().clone();
            let mut tx = Tx {
                tables: &mut open,
                changed: &mut changed,
                scope: ctx.scope,
                kind: job.kind(),
                now_ms,
                dirty: false,
                events: Vec::new(),
                audit: None,
                audits: 0,
            };
            let ok = job.apply(&mut tx);
            let (dirty, kind, audits) = (tx.dirty, tx.kind, tx.audits);
            let (events, audit) = (std::mem::take(&mut tx.events), tx.audit.take());
            if !ok {
                if dirty {
                    // Its partial writes are in the transaction: start over without it.
                    excluded[i] = true;
                    drop(open);
                    let _ = txn.abort();
                    return Attempt::Replay;
                }
                continue;
            }
            // A Mutation that found nothing to change (an idempotent repeat) writes nothing and
            // needs no record; one that changes something declares exactly one.
            let changed = dirty || !events.is_empty();
            let wrong_audit = match (kind, audits) {
                (JobKind::Audited, 0) if changed => Some("changes something but declares no audit record"),
                (_, n) if n > 1 => Some("declares more than one audit record"),
                _ => None,
            };
            if let Some(wrong) = wrong_audit {
                // A programmer error: every audited Mutation declares exactly one record. It is
                // left out of the batch and its caller told so; the others go on without it.
                tracing::error!(actor = %ctx.actor, audits, "a mutation {wrong}");
                job.refuse(StoreError::Storage(format!("the change was not made: it {wrong}")));
                excluded[i] = true;
                drop(open);
                let _ = txn.abort();
                return Attempt::Replay;
            }
            let parts =
                audit.as_ref().map(|a| AuditParts { action: &a.action, target: &a.target, details: &a.details });
            let mut appended = Ok(());
            if kind != JobKind::Maintenance && (parts.is_some() || !events.is_empty()) {
                appended = log.append(&mut open, &ctx, now_ms, events, parts);
            }
            for r in job.records() {
                if appended.is_err() {
                    break;
                }
                let parts = AuditParts { action: r.action, target: &r.target, details: &r.details };
                appended = log.append(&mut open, &r.ctx, now_ms, Vec::new(), Some(parts));
            }
            if let Err(e) = appended {
                drop(open);
                let _ = txn.abort();
                return Attempt::Done(Err(e));
            }
        }
        let published = match log.finish(&mut open) {
            Ok(p) => p,
            Err(e) => {
                drop(open);
                let _ = txn.abort();
                return Attempt::Done(Err(e));
            }
        };
        drop(open);
        if let Err(e) = txn.commit() {
            return Attempt::Done(Err(e.into()));
        }
        self.gseq = log.gseq;
        Attempt::Done(Ok((published, changed)))
    }
}

enum Attempt {
    Replay,
    /// The events to publish and the change-counter slots of the rows written.
    Done(Result<(Vec<Arc<Event>>, Vec<usize>), StoreError>),
}

/// Appends events and audit records for one batch, caching the heads it moves.
struct LogAppender {
    gseq: u64,
    epoch: u64,
    event_heads: HashMap<Id, u64>,
    audit_heads: HashMap<Id, (u64, [u8; 32])>,
    published: Vec<Arc<Event>>,
}

impl LogAppender {
    fn new(gseq: u64, epoch: u64) -> Self {
        Self { gseq, epoch, event_heads: HashMap::new(), audit_heads: HashMap::new(), published: Vec::new() }
    }

    fn append(
        &mut self,
        open: &mut OpenTables<'_>,
        ctx: &MutationCtx,
        now_ms: i64,
        events: Vec<PendingEvent>,
        pending: Option<AuditParts<'_>>,
    ) -> Result<(), StoreError> {
        let org = ctx.scope.org();
        if !events.is_empty() {
            let mut head = match self.event_heads.get(&org) {
                Some(h) => *h,
                None => open.get(tables::EVENT_HEADS, org.as_bytes())?.and_then(|v| tables::u64_be(&v)).unwrap_or(0),
            };
            for e in events {
                head += 1;
                self.gseq += 1;
                let event = Event {
                    org,
                    seq: head,
                    gseq: self.gseq,
                    epoch: self.epoch,
                    topic: e.topic,
                    kind: e.kind,
                    actor: ctx.actor.clone(),
                    at_ms: now_ms,
                    data: e.data,
                };
                let at = tables::org_seq_key(org, head);
                open.table(tables::EVENTS)?.insert(at.as_slice(), event.to_stored().as_slice())?;
                open.table(tables::EVENT_TOPICS)?
                    .insert(tables::topic_key(org, &event.topic, head).as_slice(), [].as_slice())?;
                open.table(tables::LOG_ORDER)?.insert(self.gseq.to_be_bytes().as_slice(), at.as_slice())?;
                self.published.push(Arc::new(event));
            }
            self.event_heads.insert(org, head);
        }
        let Some(pending) = pending else {
            return Ok(());
        };
        let (n, prev) = match self.audit_heads.get(&org) {
            Some(h) => *h,
            None => open.get(tables::AUDIT_HEADS, org.as_bytes())?.map_or((0, [0; 32]), |v| audit::parse_head(&v)),
        };
        let prev_hash = crate::ids::hex(&prev);
        let (hash, stored) = audit::Canonical {
            org,
            n: n + 1,
            at_ms: now_ms,
            actor: &ctx.actor,
            action: pending.action,
            target: pending.target,
            request_id: ctx.request_id.as_deref(),
            client_addr: ctx.client_addr.as_deref(),
            details: pending.details,
            prev_hash: &prev_hash,
        }
        .seal();
        open.table(tables::AUDIT)?.insert(tables::org_seq_key(org, n + 1).as_slice(), stored.as_slice())?;
        self.audit_heads.insert(org, (n + 1, hash));
        Ok(())
    }

    fn finish(&mut self, open: &mut OpenTables<'_>) -> Result<Vec<Arc<Event>>, StoreError> {
        for (org, head) in &self.event_heads {
            open.table(tables::EVENT_HEADS)?.insert(org.as_bytes().as_slice(), head.to_be_bytes().as_slice())?;
        }
        for (org, (n, hash)) in &self.audit_heads {
            open.table(tables::AUDIT_HEADS)?
                .insert(org.as_bytes().as_slice(), audit::encode_head(*n, hash).as_slice())?;
        }
        open.table(tables::META)?.insert(b"gseq".as_slice(), self.gseq.to_be_bytes().as_slice())?;
        Ok(std::mem::take(&mut self.published))
    }
}

fn chunks(mut v: Vec<Box<dyn Job>>, size: usize) -> Vec<Vec<Box<dyn Job>>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let rest = v.split_off(size.min(v.len()));
        out.push(std::mem::replace(&mut v, rest));
    }
    out
}

/// Free-space check of the data dir, at most twice a second.
#[derive(Default)]
struct DiskCheck {
    checked: Option<Instant>,
    low: bool,
}

impl DiskCheck {
    fn low(&mut self, opts: &WriterOptions) -> bool {
        if opts.min_free_disk_bytes == 0 {
            return false;
        }
        if self.checked.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
            self.checked = Some(Instant::now());
            self.low = super::free_disk_bytes(&opts.data_dir).is_some_and(|free| free < opts.min_free_disk_bytes);
        }
        self.low
    }
}
