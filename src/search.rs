//! Search: one tantivy index per store (the organization a field every query filters on) over
//! messages (with their attachments' names), tasks, rooms, users and files, kept up to date by a durable follower of the event log.
//!
//! The follower reads committed events in order, loads the current state of what they name
//! from the store, upserts or deletes it in the index (by its key, so doing it twice is
//! harmless), commits the index, and only then moves its checkpoint. A crash anywhere in
//! between replays from the last checkpoint. A document whose making event (a post, a new
//! task or room) is past every log position the index may have seen is added without the
//! delete an upsert starts with: that delete is a term query against every segment at the next
//! commit, and a new document has nothing to delete. A new (or rebuilt) index is filled from the
//! store's tables first, so it never depends on log retention. Permission filtering happens at
//! query time against the store: nobody sees a hit from a private channel or room they are
//! not in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{FAST, Field, IndexRecordOption, STORED, STRING, Schema, TEXT, TantivyDocument, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Term, doc};

use crate::domain::chat::{ChannelKind, Message};
use crate::domain::rooms::{Room, RoomStatus, Visibility};
use crate::domain::tasks::Task;
use crate::domain::users::{User, UserStatus};
use crate::ids::Id;
use crate::store::events::{Event, EventBus};
use crate::store::followers::{Follower, FollowerRegistry};
use crate::store::tables::{
    self, ASSETS, CHANNEL_MEMBERS, CHANNELS, MESSAGE_IDS, MESSAGES, ROOM_PARTICIPANTS, ROOMS, TASKS, USERS,
};
use crate::store::writer::Writer;
use crate::store::{Reader, Store, StoreError, decode};

/// The follower's name (its checkpoint in the store).
pub const FOLLOWER: &str = "search";
/// Events per indexing batch at most.
const BATCH_MAX: usize = 20_000;
/// Index commits at most this often while keeping up: a commit costs far more than a
/// document, so under load batches grow instead of commits multiplying (search lags by about
/// this much). A follower that is behind (its last batch was full) does not wait.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Hits examined per query at most (permission filtering drops some).
const CANDIDATES_MAX: usize = 1000;
/// The index writer's memory budget.
const WRITER_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory: {0}")]
    Dir(String),
    #[error("search query: {0}")]
    Query(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Fields {
    key: Field,
    org: Field,
    kind: Field,
    scope: Field,
    title: Field,
    body: Field,
}

/// The index, its reader and its one writer.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    // A std Mutex: only blocking code (the indexer, reindex) takes it.
    writer: Mutex<Writing>,
    f: Fields,
    /// Whether the index was created (empty) when opened.
    pub created: bool,
    pub dir: PathBuf,
}

/// The index writer, and how far into the log the index may have seen.
struct Writing {
    w: IndexWriter,
    /// No event past this log position has been applied to the index, by this process or an
    /// earlier one: a document made by a later event is not in it. `None` until the follower
    /// has read the log's head (anything may be in the index until then).
    seen_through: Option<u64>,
}

impl Writing {
    /// Everything up to log position `at` is known: what was applied to the index is at or
    /// below it, or at or below what was known before.
    fn seen_up_to(&mut self, at: u64) {
        self.seen_through = Some(self.seen_through.map_or(at, |s| s.max(at)));
    }
}

/// A document to index.
pub struct Doc {
    pub key: String,
    pub org: Id,
    pub kind: &'static str,
    /// `org`, `channel:<id>`, `room:<id>` or `task:<id>`: who may see it.
    pub scope: String,
    pub title: String,
    pub body: String,
}

pub enum Op {
    /// Replaces the document of its key, or adds it.
    Upsert(Doc),
    Delete(String),
    /// Everything of one scope (a deleted task's comments).
    DeleteScope(String),
}

/// One search result.
#[derive(Clone, Debug)]
pub struct Hit {
    pub kind: String,
    pub id: String,
    pub scope: String,
    pub title: String,
    /// HTML with the matched words in `<b>`.
    pub snippet: String,
    pub score: f32,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let f = Fields {
        key: b.add_text_field("key", STRING | STORED),
        org: b.add_text_field("org", STRING),
        kind: b.add_text_field("kind", STRING | STORED),
        // A fast field: permission filtering reads it without loading stored documents.
        scope: b.add_text_field("scope", STRING | STORED | FAST),
        title: b.add_text_field("title", TEXT | STORED),
        body: b.add_text_field("body", TEXT | STORED),
    };
    (b.build(), f)
}

impl SearchIndex {
    /// Opens (creating if needed) the index in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        let dir_err = |e: std::io::Error| SearchError::Dir(e.to_string());
        let (schema, f) = schema();
        // An index of another schema (an older release's) is rebuilt: it is derived data.
        if dir.join("meta.json").exists() {
            let same = tantivy::directory::MmapDirectory::open(dir)
                .ok()
                .and_then(|d| Index::open(d).ok())
                .is_some_and(|i| i.schema() == schema);
            if !same {
                tracing::warn!(dir = %dir.display(), "search index has another schema; rebuilding it");
                std::fs::remove_dir_all(dir).map_err(dir_err)?;
            }
        }
        let created = !dir.join("meta.json").exists();
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let mmap = tantivy::directory::MmapDirectory::open(dir).map_err(|e| SearchError::Dir(e.to_string()))?;
        let index = Index::open_or_create(mmap, schema)?;
        // One indexing thread: the box has few cores and the writer and HTTP need them too.
        let writer = index.writer_with_num_threads(1, WRITER_BYTES)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writing = Writing { w: writer, seen_through: None };
        Ok(Self { index, reader, writer: Mutex::new(writing), f, created, dir: dir.to_path_buf() })
    }

    /// Notes that the log's head is at `head` as the follower starts: every event an earlier
    /// process applied to the index is at or below it.
    pub fn following_from(&self, head: u64) -> Result<(), SearchError> {
        self.lock()?.seen_up_to(head);
        Ok(())
    }

    /// Applies the operations of the events up to log position `through` and commits
    /// (blocking).
    pub fn apply(&self, ops: Vec<Planned>, through: u64) -> Result<(), SearchError> {
        let mut g = self.lock()?;
        let seen = g.seen_through;
        // From here on the batch counts as seen, whether or not its commit succeeds: applied
        // again (a retry, a replay from the checkpoint), each of its documents is replaced.
        g.seen_through = seen.map(|s| s.max(through));
        for p in ops {
            let new = matches!((p.made_at, seen), (Some(at), Some(seen)) if at > seen);
            self.write(&g.w, p.op, new)?;
        }
        g.w.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Writing>, SearchError> {
        self.writer.lock().map_err(|_| SearchError::Dir("index writer poisoned".into()))
    }

    /// Queues one operation (visible after the next commit). `new`: the document is known not
    /// to be in the index, so an upsert only adds it.
    fn write(&self, w: &IndexWriter, op: Op, new: bool) -> Result<(), SearchError> {
        match op {
            Op::Upsert(d) => {
                if !new {
                    w.delete_term(Term::from_field_text(self.f.key, &d.key));
                }
                w.add_document(doc!(
                    self.f.key => d.key,
                    self.f.org => d.org.to_string(),
                    self.f.kind => d.kind,
                    self.f.scope => d.scope,
                    self.f.title => d.title,
                    self.f.body => d.body,
                ))?;
            }
            Op::Delete(key) => {
                w.delete_term(Term::from_field_text(self.f.key, &key));
            }
            Op::DeleteScope(scope) => {
                w.delete_term(Term::from_field_text(self.f.scope, &scope));
            }
        }
        Ok(())
    }

    /// The query for `q` in `org`, of `kinds`, with or without one-letter typos.
    fn query(
        &self,
        searcher: &tantivy::Searcher,
        org: Id,
        q: &str,
        kinds: &[String],
        fuzzy: bool,
    ) -> Result<Box<dyn Query>, SearchError> {
        let mut parser = QueryParser::for_index(&self.index, vec![self.f.title, self.f.body]);
        if fuzzy {
            parser.set_field_fuzzy(self.f.title, false, 1, true);
            parser.set_field_fuzzy(self.f.body, false, 1, true);
        }
        let (text_query, errors) = parser.parse_query_lenient(q);
        if !errors.is_empty() && q.trim().is_empty() {
            return Err(SearchError::Query("empty query".into()));
        }
        let org_term = Term::from_field_text(self.f.org, &org.to_string());
        // When every document (deleted ones included) is this org's, as on a single-tenant
        // box, the org filter is a no-op; leaving it out lets the top-k collector skip blocks
        // of a common word's postings instead of scoring every match.
        let docs: u64 = searcher.segment_readers().iter().map(|s| u64::from(s.max_doc())).sum();
        let only_org = searcher.doc_freq(&org_term)? == docs;
        if only_org && kinds.is_empty() {
            return Ok(text_query);
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text_query)];
        if !only_org {
            clauses.push((Occur::Must, Box::new(TermQuery::new(org_term, IndexRecordOption::Basic))));
        }
        if !kinds.is_empty() {
            let any: Vec<(Occur, Box<dyn Query>)> = kinds
                .iter()
                .map(|k| {
                    (
                        Occur::Should,
                        Box::new(TermQuery::new(Term::from_field_text(self.f.kind, k), IndexRecordOption::Basic))
                            as Box<dyn Query>,
                    )
                })
                .collect();
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(any))));
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    /// One page of hits in `org` for `q`, best first, of `kinds` (all when empty), keeping
    /// only those whose scope `allowed` accepts; the bool says whether more follow. Typos of
    /// one letter are forgiven; `"quoted words"` match as a phrase. Stored documents are read
    /// (and snippets made) only for the page itself.
    pub fn search(
        &self,
        org: Id,
        q: &str,
        kinds: &[String],
        offset: usize,
        limit: usize,
        allowed: &mut dyn FnMut(&str) -> Result<bool, StoreError>,
    ) -> Result<(Vec<Hit>, bool), SearchError> {
        let searcher = self.reader.searcher();
        let columns = searcher
            .segment_readers()
            .iter()
            .map(|seg| seg.fast_fields().str("scope"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut decided: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        let want = offset + limit + 1;
        // Exact words first; only when they fall short are one-letter typos let in (fuzzy
        // matches are many and unranked, so they fill up rather than compete).
        // Grown as hits come, never sized by the caller's numbers alone.
        let mut picked: Vec<(f32, DocAddress)> = Vec::with_capacity(want.min(1024));
        for fuzzy in [false, true] {
            if fuzzy && (picked.len() >= want || q.contains('"')) {
                break;
            }
            let query = self.query(&searcher, org, q, kinds, fuzzy)?;
            let top = searcher.search(&*query, &TopDocs::with_limit(CANDIDATES_MAX))?;
            let mut scope = String::new();
            for (score, addr) in top {
                if picked.len() >= want {
                    break;
                }
                if fuzzy && picked.iter().any(|(_, a)| *a == addr) {
                    continue;
                }
                // Permission filtering on the scope column, one decision per scope.
                scope.clear();
                if let Some(col) = &columns[addr.segment_ord as usize] {
                    if let Some(ord) = col.term_ords(addr.doc_id).next() {
                        col.ord_to_str(ord, &mut scope).map_err(|e| SearchError::Dir(e.to_string()))?;
                    }
                }
                let ok = if let Some(ok) = decided.get(scope.as_str()) {
                    *ok
                } else {
                    let ok = allowed(&scope)?;
                    decided.insert(scope.clone(), ok);
                    ok
                };
                if ok {
                    picked.push((score, addr));
                }
            }
        }
        let more = picked.len() > offset + limit;
        let page: Vec<(f32, DocAddress)> = picked.into_iter().skip(offset).take(limit).collect();

        // Snippets come from the exact terms (fuzzy expansions are not highlighted).
        let exact = QueryParser::for_index(&self.index, vec![self.f.title, self.f.body]).parse_query_lenient(q).0;
        let mut snippets = SnippetGenerator::create(&searcher, &*exact, self.f.body)?;
        snippets.set_max_num_chars(160);
        let mut out = Vec::with_capacity(page.len());
        for (score, addr) in page {
            let d: TantivyDocument = searcher.doc(addr)?;
            let text = |f: Field| d.get_first(f).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let key = text(self.f.key);
            let id = key.split_once(':').map_or(key.clone(), |(_, id)| id.to_owned());
            let mut snippet = snippets.snippet_from_doc(&d).to_html();
            if snippet.is_empty() {
                snippet = text(self.f.body).chars().take(160).collect();
            }
            out.push(Hit {
                kind: text(self.f.kind),
                id,
                scope: text(self.f.scope),
                title: text(self.f.title),
                snippet,
                score,
            });
        }
        Ok((out, more))
    }

    /// Documents in the index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `user` of `org` may see something of `scope`.
pub fn may_see(r: &Reader, org: Id, user: Id, scope: &str) -> Result<bool, StoreError> {
    let Some((kind, id)) = scope.split_once(':') else { return Ok(scope == "org") };
    let Ok(id) = id.parse::<Id>() else { return Ok(false) };
    match kind {
        "channel" => {
            let ch: Option<crate::domain::chat::Channel> =
                r.get(CHANNELS, &tables::org_id_key(org, id))?.map(|v| decode(CHANNELS, &v)).transpose()?;
            let member = r.get(CHANNEL_MEMBERS, &tables::org_id_id_key(org, id, user))?.is_some();
            Ok(ch.is_some_and(|c| c.kind == ChannelKind::Public || member))
        }
        "room" => {
            let room: Option<Room> =
                r.get(ROOMS, &tables::org_id_key(org, id))?.map(|v| decode(ROOMS, &v)).transpose()?;
            let part = r.get(ROOM_PARTICIPANTS, &tables::org_id_id_key(org, id, user))?.is_some();
            Ok(room.is_some_and(|rm| rm.visibility == Visibility::Org || part))
        }
        // A task's comments: whoever sees tasks, while the task exists.
        "task" => Ok(r.get(TASKS, &tables::org_id_key(org, id))?.is_some()),
        // One's own files.
        "user" => Ok(id == user),
        _ => Ok(false),
    }
}

fn message_doc(org: Id, m: &Message) -> Op {
    let key = format!("message:{}", m.id);
    if m.deleted_at_ms.is_some() {
        return Op::Delete(key);
    }
    Op::Upsert(Doc {
        key,
        org,
        kind: "message",
        scope: if m.on_task { format!("task:{}", m.channel) } else { format!("channel:{}", m.channel) },
        title: String::new(),
        body: m.attachments.iter().fold(m.text.clone(), |mut body, a| {
            body.push(' ');
            body.push_str(&a.name);
            body
        }),
    })
}

/// A file, found by its name and type by its owner (where it is attached, its message is
/// found by the name too).
fn asset_doc(org: Id, a: &crate::domain::assets::Asset) -> Op {
    let key = format!("file:{}", a.id);
    if a.deleted_at_ms.is_some() {
        return Op::Delete(key);
    }
    Op::Upsert(Doc {
        key,
        org,
        kind: "file",
        scope: format!("user:{}", a.created_by),
        title: a.name.clone(),
        body: a.content_type.clone(),
    })
}

fn task_doc(org: Id, t: &Task) -> Op {
    Op::Upsert(Doc {
        key: format!("task:{}", t.id),
        org,
        kind: "task",
        scope: "org".into(),
        title: t.title.clone(),
        body: format!("{} {}", t.description, t.labels.join(" ")),
    })
}

fn room_doc(org: Id, rm: &Room) -> Op {
    let key = format!("room:{}", rm.id);
    if rm.status == RoomStatus::Deleted {
        return Op::Delete(key);
    }
    let scope = if rm.visibility == Visibility::Org { "org".into() } else { format!("room:{}", rm.id) };
    Op::Upsert(Doc { key, org, kind: "room", scope, title: rm.name.clone(), body: rm.description.clone() })
}

fn user_doc(org: Id, u: &User) -> Op {
    let key = format!("user:{}", u.id);
    if matches!(u.status, UserStatus::Deleted | UserStatus::Invited) {
        return Op::Delete(key);
    }
    Op::Upsert(Doc {
        key,
        org,
        kind: "user",
        scope: "org".into(),
        title: u.display_name.clone(),
        body: format!("{} {}", u.username.clone().unwrap_or_default(), u.email),
    })
}

/// An index operation a follower batch calls for. `made_at` is the log position of the event
/// that made its document (a post, a new task or room), when that event is in the batch: an
/// index that has seen nothing past that position cannot hold the document yet.
pub struct Planned {
    pub op: Op,
    pub made_at: Option<u64>,
}

/// Whether an event of `kind` makes the document its `id` names (no event about it comes
/// before).
fn makes_its_document(kind: &str) -> bool {
    matches!(kind, "message.posted" | "comment.posted" | "task.created" | "room.created")
}

/// The index operations `events` call for, from the store's current state.
pub fn ops_for(r: &Reader, events: &[Event]) -> Result<Vec<Planned>, StoreError> {
    let mut planned = Vec::new();
    // A post to several topics is one event per topic: only the first makes the document.
    let mut made = std::collections::HashSet::new();
    for e in events {
        let org = e.org;
        let id = e.data.get("id").and_then(|v| v.as_str()).and_then(|s| s.parse::<Id>().ok());
        let Some(id) = id else { continue };
        let made_at = (makes_its_document(&e.kind) && made.insert(id)).then_some(e.gseq);
        let mut push = |op: Op| planned.push(Planned { op, made_at });
        let kind = e.kind.as_str();
        if kind.starts_with("message.") || kind.starts_with("comment.") {
            match r.get(MESSAGE_IDS, &tables::org_id_key(org, id))? {
                Some(entry) => {
                    let at = crate::domain::chat::messages::key_of_entry(org, &entry);
                    if let Some(v) = r.get(MESSAGES, &at)? {
                        push(message_doc(org, &Message::from_stored(&at, &v)?));
                    }
                }
                None => push(Op::Delete(format!("message:{id}"))),
            }
        } else if kind.starts_with("task.") {
            if let Some(v) = r.get(TASKS, &tables::org_id_key(org, id))? {
                push(task_doc(org, &decode(TASKS, &v)?));
            } else {
                push(Op::Delete(format!("task:{id}")));
                push(Op::DeleteScope(format!("task:{id}")));
            }
        } else if kind.starts_with("room.") {
            if let Some(v) = r.get(ROOMS, &tables::org_id_key(org, id))? {
                push(room_doc(org, &decode(ROOMS, &v)?));
            }
        } else if kind.starts_with("asset.") {
            match r.get(ASSETS, &tables::org_id_key(org, id))? {
                Some(v) => push(asset_doc(org, &decode(ASSETS, &v)?)),
                None => push(Op::Delete(format!("file:{id}"))),
            }
        } else if kind.starts_with("user.") {
            if let Some(v) = r.get(USERS, &tables::org_id_key(org, id))? {
                push(user_doc(org, &decode(USERS, &v)?));
            }
        }
    }
    Ok(planned)
}

/// Every document the store holds now, one at a time, with `progress(done, total)` now and
/// then (blocking).
pub fn each_doc(
    r: &Reader,
    progress: &mut dyn FnMut(u64, u64),
    each: &mut dyn FnMut(Op) -> Result<(), SearchError>,
) -> Result<u64, SearchError> {
    let total = r.len(MESSAGES)? + r.len(TASKS)? + r.len(ROOMS)? + r.len(USERS)? + r.len(ASSETS)?;
    let mut done = 0u64;
    let org_of = |k: &[u8]| Id::from_slice(&k[..16]);
    let mut error = None;
    let mut visit = |k: &[u8], op: &dyn Fn(Id) -> Result<Op, StoreError>| -> Result<bool, StoreError> {
        if let Some(org) = org_of(k).filter(|o| *o != Id::NIL) {
            if let Err(e) = op(org).map_err(SearchError::from).and_then(&mut *each) {
                error = Some(e);
                return Ok(false);
            }
        }
        done += 1;
        if done % 10_000 == 0 {
            progress(done, total);
        }
        Ok(true)
    };
    r.for_each(MESSAGES, |k, v| visit(k, &|org| Ok(message_doc(org, &Message::from_stored(k, v)?))))?;
    r.for_each(TASKS, |k, v| visit(k, &|org| Ok(task_doc(org, &decode(TASKS, v)?))))?;
    r.for_each(ROOMS, |k, v| visit(k, &|org| Ok(room_doc(org, &decode(ROOMS, v)?))))?;
    r.for_each(USERS, |k, v| visit(k, &|org| Ok(user_doc(org, &decode(USERS, v)?))))?;
    r.for_each(ASSETS, |k, v| visit(k, &|org| Ok(asset_doc(org, &decode(ASSETS, v)?))))?;
    if let Some(e) = error {
        return Err(e);
    }
    progress(total, total);
    Ok(done)
}

/// Follows the event log into the index until `stop` turns true (between batches: a batch
/// being indexed is always finished and checkpointed first).
pub async fn follow(
    store: Store,
    bus: EventBus,
    writer: Writer,
    followers: Arc<FollowerRegistry>,
    index: Arc<SearchIndex>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut follower = loop {
        match Follower::open(FOLLOWER, store.clone(), writer.clone(), followers.clone()).await {
            Ok(f) => break f,
            Err(e) => {
                tracing::error!(error = %e, "search follower cannot start; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    // Whatever an earlier process indexed is at or below the log's head now.
    let idx = index.clone();
    let noted =
        store.read(move |r| -> Result<(), SearchError> { idx.following_from(r.meta_u64("gseq")?.unwrap_or(0)) });
    if let Err(e) = noted.await {
        // Until it is noted, every document is replaced as an upsert (correct, only slower).
        tracing::error!(error = %e, "search follower cannot read the log's head");
    }
    let mut bus = bus.subscribe();
    let mut last_commit = tokio::time::Instant::now() - COMMIT_EVERY;
    let mut behind = false;
    while !*stop.borrow() {
        if !behind {
            tokio::select! {
                () = tokio::time::sleep_until(last_commit + COMMIT_EVERY) => {}
                _ = stop.changed() => break,
            }
        }
        let waited = tokio::select! {
            b = follower.wait_batch(&mut bus, BATCH_MAX, Duration::from_secs(1)) => b,
            _ = stop.changed() => break,
        };
        let batch = match waited {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "search follower cannot read the log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        behind = batch.len() == BATCH_MAX;
        let Some(last) = batch.last().map(|e| e.gseq) else { continue };
        let (store, idx) = (store.clone(), index.clone());
        let applied = tokio::task::spawn_blocking(move || -> Result<(), SearchError> {
            let ops = ops_for(&store.reader()?, &batch)?;
            idx.apply(ops, last)
        })
        .await;
        match applied {
            Ok(Ok(())) => {
                last_commit = tokio::time::Instant::now();
                if let Err(e) = follower.checkpoint(last).await {
                    tracing::error!(error = %e, "search follower cannot checkpoint");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "search indexing failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => tracing::error!(error = %e, "search indexing task failed"),
        }
    }
}

/// Rebuilds `index` from the store and moves the search follower to the log head it saw.
pub async fn reindex(
    store: &Store,
    writer: &Writer,
    index: &Arc<SearchIndex>,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<u64, SearchError> {
    let (store, idx) = (store.clone(), index.clone());
    // The progress callback stays on this side; the blocking task reports totals only.
    let head = tokio::task::spawn_blocking(move || rebuild(&store, &idx, &mut |_, _| {}))
        .await
        .map_err(|e| SearchError::Dir(e.to_string()))??;
    progress(index.len(), index.len());
    crate::store::followers::set_checkpoint(writer, FOLLOWER, head).await?;
    Ok(index.len())
}

/// Rebuilds the index from the store's tables and moves the follower's checkpoint to the log
/// head the rebuild saw (blocking). Documents stream from one snapshot into the index writer;
/// the old contents stay searchable until the one commit at the end.
pub fn rebuild(store: &Store, index: &SearchIndex, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, SearchError> {
    let r = store.reader()?;
    let head = r.meta_u64("gseq")?.unwrap_or(0);
    let mut g = index.lock()?;
    g.w.delete_all_documents()?;
    // Counted as seen from here on, as a follower batch is (`apply`).
    g.seen_up_to(head);
    // Every document is new to the index after that delete.
    let written = each_doc(&r, progress, &mut |op| index.write(&g.w, op, true));
    if let Err(e) = written {
        g.w.rollback()?;
        return Err(e);
    }
    g.w.commit()?;
    index.reader.reload()?;
    Ok(head)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tantivy::collector::Count;
    use tantivy::query::TermQuery;
    use tantivy::schema::{IndexRecordOption, Value};
    use tantivy::{TantivyDocument, Term};

    use crate::ids::Id;
    use crate::search::{Doc, Op, Planned, SearchIndex};

    fn post(key: &str, body: &str, made_at: Option<u64>) -> Planned {
        let doc = Doc {
            key: key.into(),
            org: Id::NIL,
            kind: "message",
            scope: "org".into(),
            title: String::new(),
            body: body.into(),
        };
        Planned { op: Op::Upsert(doc), made_at }
    }

    /// The stored bodies of the documents of `key`.
    fn bodies(index: &SearchIndex, key: &str) -> Vec<String> {
        let searcher = index.reader.searcher();
        let query = TermQuery::new(Term::from_field_text(index.f.key, key), IndexRecordOption::Basic);
        let n = searcher.search(&query, &Count).unwrap();
        let top = searcher.search(&query, &tantivy::collector::TopDocs::with_limit(n.max(1))).unwrap();
        top.into_iter()
            .map(|(_, at)| {
                let d: TantivyDocument = searcher.doc(at).unwrap();
                d.get_first(index.f.body).and_then(|v| v.as_str()).unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn a_batch_applied_again_replaces_what_it_added() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        index.following_from(10).unwrap();
        // Made past the head the follower started from: added without a delete.
        index.apply(vec![post("message:a", "first", Some(11))], 11).unwrap();
        assert_eq!(bodies(&index, "message:a"), ["first"]);
        // The same batch again (its checkpoint was not moved before a crash, or its commit
        // failed and it is retried): replaced, not doubled.
        index.apply(vec![post("message:a", "first", Some(11))], 11).unwrap();
        assert_eq!(bodies(&index, "message:a"), ["first"]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn what_the_index_may_hold_is_replaced_and_what_it_cannot_is_added() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        // Before the follower has read the log's head, a making event may be in the index.
        index.apply(vec![post("message:a", "a1", Some(3))], 3).unwrap();
        index.apply(vec![post("message:a", "a2", Some(3))], 3).unwrap();
        assert_eq!(bodies(&index, "message:a"), ["a2"]);
        // A later process starts following at head 5; what was made at or below it is replaced.
        index.following_from(5).unwrap();
        index.apply(vec![post("message:a", "a3", Some(3))], 5).unwrap();
        assert_eq!(bodies(&index, "message:a"), ["a3"]);
        // Made and then edited in one batch: the edit's upsert replaces the new document.
        index.apply(vec![post("message:b", "b1", Some(6)), post("message:b", "b2", None)], 7).unwrap();
        assert_eq!(bodies(&index, "message:b"), ["b2"]);
        assert_eq!(index.len(), 2);
        // A follower starting again from an older head does not move what was seen back.
        index.following_from(1).unwrap();
        index.apply(vec![post("message:b", "b3", Some(6))], 7).unwrap();
        assert_eq!(bodies(&index, "message:b"), ["b3"]);
        assert_eq!(index.len(), 2);
    }
}
