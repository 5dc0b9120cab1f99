//! Shared documents: records, access and the Mutations over their stored state.
//!
//! A document belongs to a room, whose roles decide access: whoever may see the room reads its
//! documents; joined participants from `member` up edit them (an archived room's documents are
//! read-only); moderators and the document's creator delete them. The Yjs state is stored as a
//! snapshot plus the updates after it (`DOC_UPDATES`, the document's own durable log); an
//! update is appended through the writer before anyone is told of it. The org log carries
//! coarse `doc.changed` events on `doc:{id}` (at most one a second per document, with counts and
//! sizes, never the bytes), and the audit chain records editing sessions, not keystrokes.
//! Decoding and merging Yjs data is the engine's work (`crate::docs`); this module only keeps
//! bytes, counters and caps.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::paging::{self, Page, PageRequest};
use super::rooms::{Participant, Room, RoomStatus};
use super::{DomainError, FieldError, check};
use crate::domain::policy::{self, RoomAction, RoomRole};
use crate::ids::Id;
use crate::store::tables::{
    DOC_SNAPSHOTS, DOC_UPDATES, DOC_USAGE, DOC_VERSION_STATES, DOC_VERSIONS, DOCS, ROOM_DOCS, org_id_id_key,
    org_id_key, org_id_seq_key,
};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Reader, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

pub const NAME_CHARS_MAX: usize = 200;
pub const LABEL_CHARS_MAX: usize = 200;
/// Fewest milliseconds between two `doc.changed` events of one document.
pub const EVENT_INTERVAL_MS: i64 = 1000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: Id,
    pub room: Id,
    pub name: String,
    pub created_by: Id,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub deleted_at_ms: Option<i64>,
    /// The last update number handed out.
    pub update_seq: u64,
    /// Updates up to this number are merged into the snapshot.
    pub snapshot_through: u64,
    pub snapshot_bytes: u64,
    /// Updates stored after the snapshot, and their bytes.
    pub tail_updates: u64,
    pub tail_bytes: u64,
    pub compactions: u64,
    /// When the last `doc.changed` event was logged, and what came after it.
    pub announced_at_ms: i64,
    pub unannounced_updates: u64,
    pub unannounced_bytes: u64,
}

impl Document {
    pub fn stored_bytes(&self) -> u64 {
        self.snapshot_bytes + self.tail_bytes
    }
}

/// A named version: the document's state saved under a label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocVersion {
    pub id: Id,
    pub doc: Id,
    pub label: String,
    pub created_by: Id,
    pub created_at_ms: i64,
    pub bytes: u64,
    /// The document's update number the state was taken at.
    pub update_seq: u64,
}

/// Caps on stored state (from the config).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub update_bytes_max: usize,
    pub document_bytes_max: u64,
    pub org_bytes_max: u64,
}

/// What a caller may do with a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What someone with `part` in `room` may do with its documents, and their joined role.
fn standing_in(room: &Room, part: Option<Participant>) -> (Access, Option<RoomRole>) {
    let role = part.filter(|p| p.joined_at_ms.is_some()).map(|p| p.role);
    let write = room.status == RoomStatus::Active && role.is_some_and(|r| r >= RoomRole::Member);
    (if write { Access::Write } else { Access::Read }, role)
}

/// The document `id` if `user` may see it (404 otherwise), what they may do, their room role.
fn standing(r: &impl Lookup, org: Id, user: Id, id: Id) -> Result<(Document, Access, Option<RoomRole>), DomainError> {
    let doc: Document = r
        .record::<Document>(DOCS, &org_id_key(org, id))?
        .filter(|d| d.deleted_at_ms.is_none())
        .ok_or(DomainError::NotFound { what: "document" })?;
    let (room, part) = super::rooms::visible(r, org, user, doc.room).map_err(|e| match e {
        DomainError::NotFound { .. } => DomainError::NotFound { what: "document" },
        other => other,
    })?;
    let (access, role) = standing_in(&room, part);
    Ok((doc, access, role))
}

/// The document `id` if `user` may see it (404 otherwise), with what they may do.
pub fn access(r: &impl Lookup, org: Id, user: Id, id: Id) -> Result<(Document, Access), DomainError> {
    standing(r, org, user, id).map(|(doc, access, _)| (doc, access))
}

/// Like `access`, refusing unless the caller may edit.
fn writable(r: &impl Lookup, org: Id, user: Id, id: Id) -> Result<Document, DomainError> {
    match access(r, org, user, id)? {
        (doc, Access::Write) => Ok(doc),
        (_, Access::Read) => Err(read_only()),
    }
}

pub fn read_only() -> DomainError {
    DomainError::Forbidden {
        detail: "you may read this document but not change it (a joined member of an active room edits)".into(),
    }
}

/// The room `room` if `user` may add documents to it.
fn room_for_new_doc(r: &impl Lookup, org: Id, user: Id, room: Id) -> Result<Room, DomainError> {
    let (room, part) = super::rooms::visible(r, org, user, room)?;
    if standing_in(&room, part).0 != Access::Write {
        return Err(DomainError::Forbidden { detail: "a joined member of an active room adds documents to it".into() });
    }
    Ok(room)
}

fn validate_name(name: &str, pointer: &str, max: usize) -> Result<(), DomainError> {
    let mut errors = Vec::new();
    if name.trim().is_empty() || name.chars().count() > max {
        errors.push(FieldError::new(pointer, "invalid_length", format!("1–{max} characters")));
    }
    check(errors)
}

pub fn doc_topic(id: Id) -> String {
    format!("doc:{id}")
}

/// Creates a document in `room`, optionally with an initial state (one update, already
/// checked by the engine).
pub async fn create(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    room: Id,
    name: String,
    initial: Option<Vec<u8>>,
    caps: Caps,
) -> Result<Document, DomainError> {
    validate_name(&name, "/name", NAME_CHARS_MAX)?;
    let name = name.trim().to_owned();
    let org = ctx.scope.org();
    let id = Id::new();
    writer
        .submit(ctx, move |tx| {
            room_for_new_doc(tx, org, user, room)?;
            let now = tx.now_ms();
            let mut doc = Document {
                id,
                room,
                name: name.clone(),
                created_by: user,
                created_at_ms: now,
                updated_at_ms: now,
                deleted_at_ms: None,
                update_seq: 0,
                snapshot_through: 0,
                snapshot_bytes: 0,
                tail_updates: 0,
                tail_bytes: 0,
                compactions: 0,
                announced_at_ms: now,
                unannounced_updates: 0,
                unannounced_bytes: 0,
            };
            if let Some(state) = &initial {
                store_updates(tx, org, &mut doc, std::slice::from_ref(state), caps)?;
                doc.unannounced_updates = 0;
                doc.unannounced_bytes = 0;
            }
            tx.put(DOCS, &org_id_key(org, id), &encode(&doc))?;
            tx.put(ROOM_DOCS, &org_id_id_key(org, room, id), &[])?;
            tx.emit(format!("room:{room}"), "doc.created", json!({ "id": id, "name": doc.name }));
            tx.audit(
                "doc.create",
                format!("doc:{id}"),
                json!({ "room": room, "name": doc.name, "bytes": doc.stored_bytes() }),
            );
            Ok(doc)
        })
        .await
}

/// A document the user may see, and what they may do with it.
pub fn get(store: &Store, scope: OrgScope, user: Id, id: Id) -> Result<(Document, Access), DomainError> {
    store.peek(|r| access(r, scope.org(), user, id))
}

/// The documents of a room the user may see, oldest first, and what they may do with them
/// (the same for all: it follows from the room).
pub async fn list(
    store: &Store,
    scope: OrgScope,
    user: Id,
    room: Id,
    page: PageRequest,
) -> Result<(Page<Document>, Access), DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            let (found, part) = super::rooms::visible(r, org, user, room)?;
            let (access, _) = standing_in(&found, part);
            let prefix = org_id_key(org, room);
            let start = page.start_in(&prefix);
            let rows = r.range(ROOM_DOCS, &start, &prefix_end(&prefix), false, paging::SCAN_MAX)?;
            let mut items = Vec::new();
            let mut last = None;
            for (k, _) in &rows {
                last = Some(k.clone());
                let Some(doc_id) = Id::from_slice(&k[32..]) else { continue };
                if let Some(doc) = r.record::<Document>(DOCS, &org_id_key(org, doc_id))? {
                    if doc.deleted_at_ms.is_none() {
                        items.push(doc);
                        if items.len() == page.limit {
                            break;
                        }
                    }
                }
            }
            let more = rows.len() == paging::SCAN_MAX || items.len() == page.limit;
            let next_cursor = if more { last.map(|k| paging::encode_cursor(&k)) } else { None };
            Ok((Page { items, next_cursor }, access))
        })
        .await
}

/// Deletes a document (softly: its state stays stored and counted until the room goes).
/// Moderators and hosts of the room, or its creator while a member, may.
pub async fn delete(writer: &Writer, ctx: MutationCtx, user: Id, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let (mut doc, access, role) = standing(tx, org, user, id)?;
            if access != Access::Write {
                return Err(read_only());
            }
            if doc.created_by != user && !policy::room_allows(role, RoomAction::Moderate) {
                return Err(DomainError::Forbidden {
                    detail: "moderators, hosts and the document's creator delete documents".into(),
                });
            }
            let now = tx.now_ms();
            doc.deleted_at_ms = Some(now);
            doc.updated_at_ms = now;
            tx.put(DOCS, &org_id_key(org, id), &encode(&doc))?;
            tx.delete(ROOM_DOCS, &org_id_id_key(org, doc.room, id))?;
            tx.emit(format!("room:{}", doc.room), "doc.deleted", json!({ "id": id }));
            tx.emit(doc_topic(id), "doc.deleted", json!({ "id": id }));
            tx.audit("doc.delete", format!("doc:{id}"), json!({ "room": doc.room, "name": doc.name }));
            Ok(())
        })
        .await
}

/// An editing session's bounds, for its audit records.
#[derive(Clone, Debug)]
pub struct EditSession {
    pub id: Id,
    /// `socket` or `rest`.
    pub via: &'static str,
}

/// What an append stored.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Updates stored.
    pub stored: u64,
    /// The last update number handed out.
    pub update_seq: u64,
    /// Whether the document is now due for compaction.
    pub compact: bool,
    /// Whether some of this document's changes are not yet announced by an event.
    pub unannounced: bool,
}

#[allow(clippy::too_many_arguments)] // the change, who makes it, and the limits it runs under
/// Appends updates (already decoded and checked by the engine) to the document's log, durably,
/// if `user` may still edit it. `starts` is the editing session when this is its first change:
/// that append carries the session's opening audit record.
pub async fn append(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    id: Id,
    updates: std::sync::Arc<[Vec<u8>]>,
    starts: Option<EditSession>,
    caps: Caps,
    compact_after: u64,
) -> Result<Appended, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit_content(ctx, move |tx| {
            let mut doc = writable(tx, org, user, id)?;
            store_updates(tx, org, &mut doc, &updates, caps)?;
            let now = tx.now_ms();
            doc.updated_at_ms = now;
            announce_if_due(tx, &mut doc, now);
            tx.put(DOCS, &org_id_key(org, id), &encode(&doc))?;
            if let Some(s) = &starts {
                tx.audit("doc.edit", format!("doc:{id}"), json!({ "session": s.id, "via": s.via, "room": doc.room }));
            }
            Ok(Appended {
                stored: updates.len() as u64,
                update_seq: doc.update_seq,
                compact: due_for_compaction(&doc, compact_after),
                unannounced: doc.unannounced_updates > 0,
            })
        })
        .await
}

/// Whether a document's stored updates should be merged into its snapshot: `compact_after` of
/// them at least, and together a quarter of the snapshot's size at least. Merging rebuilds the
/// whole document, so for a large one it waits until the work is worth it: the merging done per
/// byte appended stays bounded however large the document grows (a rule of every N updates
/// would make a document's compactions cost in proportion to its size times its edits).
pub fn due_for_compaction(doc: &Document, compact_after: u64) -> bool {
    doc.tail_updates >= compact_after && doc.tail_bytes.saturating_mul(4) >= doc.snapshot_bytes
}

/// Writes updates after the document's log and moves its counters, within the caps.
fn store_updates(
    tx: &mut Tx<'_, '_>,
    org: Id,
    doc: &mut Document,
    updates: &[Vec<u8>],
    caps: Caps,
) -> Result<(), DomainError> {
    let added: u64 = updates.iter().map(|u| u.len() as u64).sum();
    if let Some(u) = updates.iter().find(|u| u.len() > caps.update_bytes_max) {
        return Err(too_large(
            "update_too_large",
            format!("an update of {} bytes; at most {}", u.len(), caps.update_bytes_max),
        ));
    }
    if doc.stored_bytes() + added > caps.document_bytes_max {
        return Err(too_large(
            "document_too_large",
            format!(
                "the document would hold {} bytes; at most {}",
                doc.stored_bytes() + added,
                caps.document_bytes_max
            ),
        ));
    }
    let usage = tx.get(DOC_USAGE, org.as_bytes())?.and_then(|v| crate::store::tables::u64_be(&v)).unwrap_or(0);
    if usage + added > caps.org_bytes_max {
        return Err(too_large(
            "org_documents_too_large",
            format!("the organization's documents would hold {} bytes; at most {}", usage + added, caps.org_bytes_max),
        ));
    }
    for u in updates {
        doc.update_seq += 1;
        tx.put(DOC_UPDATES, &org_id_seq_key(org, doc.id, doc.update_seq), u)?;
    }
    doc.tail_updates += updates.len() as u64;
    doc.tail_bytes += added;
    doc.unannounced_updates += updates.len() as u64;
    doc.unannounced_bytes += added;
    tx.put(DOC_USAGE, org.as_bytes(), &(usage + added).to_be_bytes())?;
    Ok(())
}

fn too_large(code: &'static str, detail: String) -> DomainError {
    DomainError::TooLarge { code, detail }
}

/// Logs a `doc.changed` event for what came since the last one, if the last is old enough.
fn announce_if_due(tx: &mut Tx<'_, '_>, doc: &mut Document, now: i64) {
    if doc.unannounced_updates == 0 || now - doc.announced_at_ms < EVENT_INTERVAL_MS {
        return;
    }
    tx.emit(
        doc_topic(doc.id),
        "doc.changed",
        json!({
            "id": doc.id,
            "updates": doc.unannounced_updates,
            "bytes": doc.unannounced_bytes,
            "update_seq": doc.update_seq,
            "stored_bytes": doc.stored_bytes(),
        }),
    );
    doc.announced_at_ms = now;
    doc.unannounced_updates = 0;
    doc.unannounced_bytes = 0;
}

/// Logs the `doc.changed` event still owed for a quiet document's last changes (the engine
/// calls this a second after a burst ends). Answers whether something is still owed.
pub async fn announce(writer: &Writer, scope: OrgScope, id: Id) -> Result<bool, DomainError> {
    let org = scope.org();
    writer
        .submit_content(MutationCtx::system(scope), move |tx| {
            let Some(mut doc) = tx.record::<Document>(DOCS, &org_id_key(org, id))? else {
                return Ok(false);
            };
            let now = tx.now_ms();
            announce_if_due(tx, &mut doc, now);
            tx.put(DOCS, &org_id_key(org, id), &encode(&doc))?;
            Ok(doc.unannounced_updates > 0)
        })
        .await
}

/// Closes an editing session in the audit chain.
pub async fn end_session(
    writer: &Writer,
    ctx: MutationCtx,
    id: Id,
    session: EditSession,
    updates: u64,
    bytes: u64,
    started_at_ms: i64,
) -> Result<(), DomainError> {
    writer
        .submit(ctx, move |tx| {
            tx.audit(
                "doc.edit_end",
                format!("doc:{id}"),
                json!({ "session": session.id, "via": session.via, "updates": updates, "bytes": bytes,
                        "started_at_ms": started_at_ms }),
            );
            Ok::<_, DomainError>(())
        })
        .await
}

/// A document's stored state: its snapshot and the updates after it, in order.
pub struct StoredState {
    pub doc: Document,
    pub snapshot: Option<Vec<u8>>,
    /// `(update number, bytes)`.
    pub tail: Vec<(u64, Vec<u8>)>,
}

/// Reads a document's stored state from one snapshot of the store (deleted ones too: the
/// caller has checked access).
pub fn stored_state(r: &Reader, org: Id, id: Id) -> Result<Option<StoredState>, StoreError> {
    let Some(doc) = r.record::<Document>(DOCS, &org_id_key(org, id))? else {
        return Ok(None);
    };
    let snapshot = r.get(DOC_SNAPSHOTS, &org_id_key(org, id))?;
    let mut tail = Vec::with_capacity(doc.tail_updates as usize);
    let start = org_id_seq_key(org, id, doc.snapshot_through + 1);
    let end = prefix_end(&org_id_key(org, id));
    r.scan(DOC_UPDATES, &start, &end, false, |k, v| {
        let n = crate::store::tables::u64_be(&k[32..]).unwrap_or(0);
        tail.push((n, v.to_vec()));
        Ok(true)
    })?;
    Ok(Some(StoredState { doc, snapshot, tail }))
}

/// A document's record alone (deleted ones too: the caller has checked access).
pub fn stored_record(r: &Reader, org: Id, id: Id) -> Result<Option<Document>, StoreError> {
    r.record::<Document>(DOCS, &org_id_key(org, id))
}

/// Replaces the snapshot and the updates through `through` with `snapshot` (a state holding
/// every one of them, made by the engine), atomically. Refused as stale when another
/// compaction moved the snapshot meanwhile. Answers the bytes saved.
pub async fn compact(
    writer: &Writer,
    scope: OrgScope,
    id: Id,
    expected_snapshot_through: u64,
    through: u64,
    snapshot: Vec<u8>,
) -> Result<i64, DomainError> {
    let org = scope.org();
    writer
        .submit_content(MutationCtx::system(scope), move |tx| {
            let Some(mut doc) = tx.record::<Document>(DOCS, &org_id_key(org, id))? else {
                return Err(DomainError::NotFound { what: "document" });
            };
            if doc.snapshot_through != expected_snapshot_through || through > doc.update_seq {
                return Err(DomainError::Conflict { code: "compaction_stale", detail: "the document moved on".into() });
            }
            let rows = tx.range(
                DOC_UPDATES,
                &org_id_seq_key(org, id, doc.snapshot_through + 1),
                &org_id_seq_key(org, id, through + 1),
                usize::MAX,
            )?;
            let merged_bytes: u64 = rows.iter().map(|(_, v)| v.len() as u64).sum();
            for (k, _) in &rows {
                tx.delete(DOC_UPDATES, k)?;
            }
            tx.put(DOC_SNAPSHOTS, &org_id_key(org, id), &snapshot)?;
            let before = doc.stored_bytes();
            doc.tail_updates -= rows.len() as u64;
            doc.tail_bytes -= merged_bytes;
            doc.snapshot_bytes = snapshot.len() as u64;
            doc.snapshot_through = through;
            doc.compactions += 1;
            tx.put(DOCS, &org_id_key(org, id), &encode(&doc))?;
            let saved = before as i64 - doc.stored_bytes() as i64;
            let usage = tx.get(DOC_USAGE, org.as_bytes())?.and_then(|v| crate::store::tables::u64_be(&v)).unwrap_or(0);
            tx.put(DOC_USAGE, org.as_bytes(), &usage.saturating_add_signed(-saved).to_be_bytes())?;
            Ok(saved)
        })
        .await
}

#[allow(clippy::too_many_arguments)] // the version, who saves it, and the caps it runs under
/// Saves `state` (the document's current state, made by the engine) as a named version.
pub async fn save_version(
    writer: &Writer,
    ctx: MutationCtx,
    user: Id,
    id: Id,
    label: String,
    state: Vec<u8>,
    update_seq: u64,
    caps: Caps,
) -> Result<DocVersion, DomainError> {
    validate_name(&label, "/label", LABEL_CHARS_MAX)?;
    let label = label.trim().to_owned();
    let org = ctx.scope.org();
    let vid = Id::new();
    writer
        .submit(ctx, move |tx| {
            let doc = writable(tx, org, user, id)?;
            let bytes = state.len() as u64;
            let usage = tx.get(DOC_USAGE, org.as_bytes())?.and_then(|v| crate::store::tables::u64_be(&v)).unwrap_or(0);
            if bytes > caps.document_bytes_max || usage + bytes > caps.org_bytes_max {
                return Err(too_large("org_documents_too_large", "no room for this version under the caps".into()));
            }
            let v = DocVersion {
                id: vid,
                doc: id,
                label: label.clone(),
                created_by: user,
                created_at_ms: tx.now_ms(),
                bytes,
                update_seq,
            };
            tx.put(DOC_VERSIONS, &org_id_id_key(org, id, vid), &encode(&v))?;
            tx.put(DOC_VERSION_STATES, &org_id_key(org, vid), &state)?;
            tx.put(DOC_USAGE, org.as_bytes(), &(usage + bytes).to_be_bytes())?;
            tx.emit(doc_topic(id), "doc.version_saved", json!({ "id": id, "version": vid, "label": v.label }));
            tx.audit(
                "doc.version_save",
                format!("doc:{id}"),
                json!({ "version": vid, "label": v.label, "room": doc.room }),
            );
            Ok(v)
        })
        .await
}

/// A document's versions, oldest first.
pub async fn list_versions(
    store: &Store,
    scope: OrgScope,
    user: Id,
    id: Id,
    page: PageRequest,
) -> Result<Page<DocVersion>, DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            access(r, org, user, id)?;
            let prefix = org_id_key(org, id);
            let start = page.start_in(&prefix);
            let rows = r.range(DOC_VERSIONS, &start, &prefix_end(&prefix), false, page.limit)?;
            let items = rows.iter().map(|(_, v)| decode(DOC_VERSIONS, v)).collect::<Result<Vec<DocVersion>, _>>()?;
            let next_cursor =
                if rows.len() == page.limit { rows.last().map(|(k, _)| paging::encode_cursor(k)) } else { None };
            Ok(Page { items, next_cursor })
        })
        .await
}

/// One version and its state.
pub async fn version(
    store: &Store,
    scope: OrgScope,
    user: Id,
    id: Id,
    vid: Id,
) -> Result<(DocVersion, Vec<u8>), DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            access(r, org, user, id)?;
            let v: DocVersion = r
                .record(DOC_VERSIONS, &org_id_id_key(org, id, vid))?
                .ok_or(DomainError::NotFound { what: "version" })?;
            let state = r.get(DOC_VERSION_STATES, &org_id_key(org, vid))?.unwrap_or_default();
            Ok((v, state))
        })
        .await
}
