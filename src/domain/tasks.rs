//! Tasks: status, priority, assignees, due date, labels, an optional room or channel, and
//! dependencies forming a graph without cycles.
//!
//! An edge that would close a cycle is refused (`dependency_cycle`), however long the cycle;
//! the search is bounded by `GRAPH_VISIT_MAX`. A task cannot be marked done while a task it
//! depends on is open, unless forced. Changes carry the version (`If-Match`).

use std::collections::{HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::assets::{self, SharedIn};
use super::chat::messages::Attachment;
use super::paging::{self, Page, PageRequest};
use super::{DomainError, FieldError, check};
use crate::ids::Id;
use crate::store::tables::{TASK_ASSIGNEES, TASKS, org_id_id_key, org_id_key};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Rows, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

pub const TITLE_CHARS_MAX: usize = 300;
pub const DESCRIPTION_CHARS_MAX: usize = 20_000;
pub const ASSIGNEES_MAX: usize = 50;
pub const LABELS_MAX: usize = 50;
/// Longest label, in characters.
pub const LABEL_CHARS_MAX: usize = 50;
pub const DEPENDENCIES_MAX: usize = 200;
/// Files one task carries at most.
pub const ATTACHMENTS_MAX: usize = 50;
/// Most tasks one cycle check visits.
pub const GRAPH_VISIT_MAX: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Todo,
    InProgress,
    Blocked,
    Done,
    Cancelled,
}

impl TaskStatus {
    pub fn open(self) -> bool {
        !matches!(self, TaskStatus::Done | TaskStatus::Cancelled)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: Id,
    pub title: String,
    pub description: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub assignees: Vec<Id>,
    pub due_at_ms: Option<i64>,
    pub labels: Vec<String>,
    pub room: Option<Id>,
    pub channel: Option<Id>,
    /// Tasks this one waits for.
    pub depends_on: Vec<Id>,
    pub created_by: Id,
    pub version: u64,
    /// The last comment number handed out (comments do not change `version`).
    #[serde(default)]
    pub comment_seq: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Files attached to the task itself (a spec, a mock-up); comments carry their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A new task, or changes to one (absent: unchanged / default).
#[derive(Clone, Debug, Default)]
pub struct TaskFields {
    pub title: Option<String>,
    pub description: Option<String>,
    pub status: Option<TaskStatus>,
    pub priority: Option<Priority>,
    pub assignees: Option<Vec<Id>>,
    /// `Some(None)` clears the due date.
    pub due_at_ms: Option<Option<i64>>,
    pub labels: Option<Vec<String>>,
    pub room: Option<Option<Id>>,
    pub channel: Option<Option<Id>>,
    /// The files the task carries, all of them (those not there before must be the changer's
    /// own; those left out are detached).
    pub attachments: Option<Vec<Id>>,
    /// Marking done while dependencies are open.
    pub force: bool,
    pub expected_version: Option<u64>,
}

fn validate(f: &TaskFields, creating: bool) -> Result<(), DomainError> {
    let mut errors = Vec::new();
    match &f.title {
        Some(t) if t.trim().is_empty() || t.chars().count() > TITLE_CHARS_MAX => {
            errors.push(FieldError::new("/title", "invalid_length", format!("1–{TITLE_CHARS_MAX} characters")));
        }
        None if creating => errors.push(FieldError::new("/title", "missing_field", "a task needs a title")),
        _ => {}
    }
    if f.description.as_ref().is_some_and(|d| d.chars().count() > DESCRIPTION_CHARS_MAX) {
        errors.push(FieldError::new("/description", "too_long", format!("at most {DESCRIPTION_CHARS_MAX} characters")));
    }
    if f.assignees.as_ref().is_some_and(|a| a.len() > ASSIGNEES_MAX) {
        errors.push(FieldError::new("/assignee_ids", "too_many", format!("at most {ASSIGNEES_MAX}")));
    }
    if let Some(labels) = &f.labels {
        if labels.len() > LABELS_MAX {
            errors.push(FieldError::new("/labels", "too_many", format!("at most {LABELS_MAX}")));
        }
        for (i, l) in labels.iter().enumerate() {
            if l.trim().is_empty() || l.chars().count() > LABEL_CHARS_MAX {
                let detail = format!("1–{LABEL_CHARS_MAX} characters");
                errors.push(FieldError::new(&format!("/labels/{i}"), "invalid_length", detail));
            }
        }
    }
    if f.attachments.as_ref().is_some_and(|a| a.len() > ATTACHMENTS_MAX) {
        errors.push(FieldError::new("/attachment_ids", "too_many", format!("at most {ATTACHMENTS_MAX}")));
    }
    check(errors)
}

/// The task's files after a change to `ids`: those it carried stay as they were, new ones must
/// be `me`'s own live files and are shared in the task (so whoever reads tasks reads them).
fn attach(
    tx: &mut Tx<'_, '_>,
    org: Id,
    me: Id,
    task: Id,
    had: &[Attachment],
    ids: &[Id],
) -> Result<Vec<Attachment>, DomainError> {
    let mut out: Vec<Attachment> = Vec::with_capacity(ids.len());
    for (i, file) in ids.iter().enumerate() {
        if out.iter().any(|a| a.id == *file) {
            continue;
        }
        if let Some(kept) = had.iter().find(|a| a.id == *file) {
            out.push(kept.clone());
            continue;
        }
        let a = assets::share(tx, org, me, *file, SharedIn::Task(task), &format!("/attachment_ids/{i}"))?;
        out.push(Attachment { id: a.id, name: a.name, content_type: a.content_type, size: a.size });
    }
    Ok(out)
}

fn load(tx: &Tx<'_, '_>, org: Id, id: Id) -> Result<Option<Task>, DomainError> {
    Ok(tx.get(TASKS, &org_id_key(org, id))?.map(|v| decode(TASKS, &v)).transpose()?)
}

/// Keeps `task_assignees` true to a task whose assignees go from `before` to `after`.
fn index_assignees(tx: &mut Tx<'_, '_>, org: Id, task: Id, before: &[Id], after: &[Id]) -> Result<(), DomainError> {
    for gone in before.iter().filter(|u| !after.contains(u)) {
        tx.delete(TASK_ASSIGNEES, &org_id_id_key(org, *gone, task))?;
    }
    for new in after.iter().filter(|u| !before.contains(u)) {
        tx.put(TASK_ASSIGNEES, &org_id_id_key(org, *new, task), &[])?;
    }
    Ok(())
}

fn check_assignees(tx: &Tx<'_, '_>, org: Id, assignees: &[Id]) -> Result<(), DomainError> {
    for (i, a) in assignees.iter().enumerate() {
        if !super::users::active(tx, org, *a)? {
            return Err(DomainError::invalid(
                &format!("/assignee_ids/{i}"),
                "unknown_user",
                "no active user with this id",
            ));
        }
    }
    Ok(())
}

/// The topics a task's events go to.
pub fn topics(t: &Task) -> Vec<String> {
    let mut topics = vec!["org".to_owned()];
    topics.extend(t.room.map(|r| format!("room:{r}")));
    topics.extend(t.channel.map(|c| format!("channel:{c}")));
    topics
}

pub async fn create(writer: &Writer, ctx: MutationCtx, me: Id, f: TaskFields) -> Result<Task, DomainError> {
    validate(&f, true)?;
    let org = ctx.scope.org();
    let id = Id::new();
    writer
        .submit(ctx, move |tx| {
            let mut assignees = f.assignees.clone().unwrap_or_default();
            check_assignees(tx, org, &assignees)?;
            assignees.sort_unstable();
            assignees.dedup();
            let attachments = attach(tx, org, me, id, &[], f.attachments.as_deref().unwrap_or_default())?;
            let now = tx.now_ms();
            let t = Task {
                id,
                title: f.title.clone().unwrap_or_default().trim().to_owned(),
                description: f.description.clone().unwrap_or_default(),
                status: f.status.unwrap_or(TaskStatus::Todo),
                priority: f.priority.unwrap_or(Priority::Normal),
                assignees,
                due_at_ms: f.due_at_ms.flatten(),
                labels: f.labels.clone().unwrap_or_default(),
                room: f.room.flatten(),
                channel: f.channel.flatten(),
                depends_on: Vec::new(),
                created_by: me,
                version: 1,
                comment_seq: 0,
                created_at_ms: now,
                updated_at_ms: now,
                attachments,
            };
            tx.put(TASKS, &org_id_key(org, id), &encode(&t))?;
            index_assignees(tx, org, id, &[], &t.assignees)?;
            for topic in topics(&t) {
                tx.emit(topic, "task.created", json!({ "id": id, "title": t.title }));
            }
            for a in &t.assignees {
                tx.emit(format!("user:{a}"), "task.assigned", json!({ "task": id, "title": t.title }));
            }
            tx.audit("task.create", format!("task:{id}"), json!({ "title": t.title }));
            Ok(t)
        })
        .await
}

/// One task, and with `deps` the tasks it depends on.
pub async fn get(store: &Store, scope: OrgScope, id: Id, deps: bool) -> Result<(Task, Vec<Task>), DomainError> {
    store
        .read(move |r| {
            let org = scope.org();
            let t: Task = r
                .get(TASKS, &org_id_key(org, id))?
                .map(|v| decode(TASKS, &v))
                .transpose()?
                .ok_or(DomainError::NotFound { what: "task" })?;
            let mut out = Vec::new();
            if deps {
                for d in &t.depends_on {
                    if let Some(v) = r.get(TASKS, &org_id_key(org, *d))? {
                        out.push(decode(TASKS, &v)?);
                    }
                }
            }
            Ok((t, out))
        })
        .await
}

/// Filters of the task list; every one given must match.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub statuses: Vec<TaskStatus>,
    pub priorities: Vec<Priority>,
    pub assignee: Option<Id>,
    pub label: Option<String>,
    pub room: Option<Id>,
    pub channel: Option<Id>,
    pub due_after_ms: Option<i64>,
    pub due_before_ms: Option<i64>,
    pub text: Option<String>,
}

impl TaskFilter {
    fn matches(&self, t: &Task) -> bool {
        let text = self.text.as_ref().map(|s| s.to_lowercase());
        (self.statuses.is_empty() || self.statuses.contains(&t.status))
            && (self.priorities.is_empty() || self.priorities.contains(&t.priority))
            && self.assignee.is_none_or(|a| t.assignees.contains(&a))
            && self.label.as_ref().is_none_or(|l| t.labels.contains(l))
            && self.room.is_none_or(|r| t.room == Some(r))
            && self.channel.is_none_or(|c| t.channel == Some(c))
            && self.due_after_ms.is_none_or(|a| t.due_at_ms.is_some_and(|d| d >= a))
            && self.due_before_ms.is_none_or(|b| t.due_at_ms.is_some_and(|d| d < b))
            && text.is_none_or(|q| t.title.to_lowercase().contains(&q) || t.description.to_lowercase().contains(&q))
    }
}

pub async fn list(
    store: &Store,
    scope: OrgScope,
    page: PageRequest,
    filter: TaskFilter,
) -> Result<Page<Task>, DomainError> {
    store
        .read(move |r| {
            let org = scope.org();
            // Filtered by assignee, the list walks that user's index entries; else every task.
            if let Some(user) = filter.assignee {
                let prefix = org_id_key(org, user);
                let rows =
                    r.range(TASK_ASSIGNEES, &page.start_in(&prefix), &prefix_end(&prefix), false, paging::SCAN_MAX)?;
                collect(&rows, &page, &filter, |k, _| {
                    let task = k.get(32..48).and_then(Id::from_slice).ok_or_else(|| StoreError::Corrupt {
                        table: "task_assignees".into(),
                        detail: "short key".into(),
                    })?;
                    r.record(TASKS, &org_id_key(org, task))
                })
            } else {
                let rows = r.range(
                    TASKS,
                    &page.start_in(org.as_bytes()),
                    &prefix_end(org.as_bytes()),
                    false,
                    paging::SCAN_MAX,
                )?;
                collect(&rows, &page, &filter, |_, v| decode(TASKS, v).map(Some))
            }
        })
        .await
}

/// One page of the tasks `rows` lead to that match `filter`; the cursor is the last row's key.
fn collect(
    rows: &Rows,
    page: &PageRequest,
    filter: &TaskFilter,
    mut task: impl FnMut(&[u8], &[u8]) -> Result<Option<Task>, StoreError>,
) -> Result<Page<Task>, DomainError> {
    let mut items = Vec::new();
    let mut last = None;
    for (k, v) in rows {
        last = Some(k.clone());
        if let Some(t) = task(k, v)?.filter(|t| filter.matches(t)) {
            items.push(t);
            if items.len() == page.limit {
                break;
            }
        }
    }
    let more = rows.len() == paging::SCAN_MAX || items.len() == page.limit;
    Ok(Page { items, next_cursor: if more { last.map(|k| paging::encode_cursor(&k)) } else { None } })
}

pub async fn update(writer: &Writer, ctx: MutationCtx, me: Id, id: Id, f: TaskFields) -> Result<Task, DomainError> {
    validate(&f, false)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut t = load(tx, org, id)?.ok_or(DomainError::NotFound { what: "task" })?;
            paging::check_version(f.expected_version, t.version)?;
            if let Some(s) = f.status {
                if s == TaskStatus::Done && t.status != TaskStatus::Done && !f.force {
                    let mut open = Vec::new();
                    for d in &t.depends_on {
                        if load(tx, org, *d)?.is_some_and(|d| d.status.open()) {
                            open.push(*d);
                        }
                    }
                    if !open.is_empty() {
                        return Err(DomainError::Conflict {
                            code: "dependencies_open",
                            detail: format!(
                                "{} task(s) this one depends on are still open; pass force to mark it done anyway",
                                open.len()
                            ),
                        });
                    }
                }
                t.status = s;
            }
            if let Some(a) = &f.assignees {
                check_assignees(tx, org, a)?;
                let mut a = a.clone();
                a.sort_unstable();
                a.dedup();
                for new in a.iter().filter(|x| !t.assignees.contains(x)) {
                    tx.emit(format!("user:{new}"), "task.assigned", json!({ "task": id, "title": t.title }));
                }
                index_assignees(tx, org, id, &t.assignees, &a)?;
                t.assignees = a;
            }
            if let Some(x) = &f.title {
                x.trim().clone_into(&mut t.title);
            }
            if let Some(x) = &f.description {
                t.description.clone_from(x);
            }
            if let Some(x) = f.priority {
                t.priority = x;
            }
            if let Some(x) = f.due_at_ms {
                t.due_at_ms = x;
            }
            if let Some(x) = &f.labels {
                t.labels.clone_from(x);
            }
            if let Some(x) = f.room {
                t.room = x;
            }
            if let Some(x) = f.channel {
                t.channel = x;
            }
            if let Some(ids) = &f.attachments {
                t.attachments = attach(tx, org, me, id, &t.attachments, ids)?;
            }
            t.version += 1;
            t.updated_at_ms = tx.now_ms();
            tx.put(TASKS, &org_id_key(org, id), &encode(&t))?;
            for topic in topics(&t) {
                tx.emit(topic, "task.updated", json!({ "id": id, "version": t.version, "status": t.status }));
            }
            tx.audit(
                "task.update",
                format!("task:{id}"),
                json!({ "version": t.version, "status": t.status, "forced": f.force }),
            );
            Ok(t)
        })
        .await
}

pub async fn delete(writer: &Writer, ctx: MutationCtx, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let t = load(tx, org, id)?.ok_or(DomainError::NotFound { what: "task" })?;
            tx.delete(TASKS, &org_id_key(org, id))?;
            index_assignees(tx, org, id, &t.assignees, &[])?;
            // Its comments go with it (search drops them with the task's scope).
            super::chat::messages::delete_in(tx, org, id)?;
            for topic in topics(&t) {
                tx.emit(topic, "task.deleted", json!({ "id": id }));
            }
            tx.audit("task.delete", format!("task:{id}"), json!({ "title": t.title }));
            Ok(())
        })
        .await
}

/// Adds (`add`) or removes the edge "`id` depends on `dep`".
pub async fn dependency(writer: &Writer, ctx: MutationCtx, id: Id, dep: Id, add: bool) -> Result<Task, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut t = load(tx, org, id)?.ok_or(DomainError::NotFound { what: "task" })?;
            if add {
                if load(tx, org, dep)?.is_none() {
                    return Err(DomainError::NotFound { what: "task" });
                }
                if t.depends_on.contains(&dep) {
                    return Ok(t);
                }
                if t.depends_on.len() >= DEPENDENCIES_MAX {
                    return Err(DomainError::Conflict {
                        code: "too_many_dependencies",
                        detail: format!("at most {DEPENDENCIES_MAX}"),
                    });
                }
                if dep == id || reaches(tx, org, dep, id)? {
                    return Err(DomainError::Conflict {
                        code: "dependency_cycle",
                        detail: "this dependency would close a cycle".into(),
                    });
                }
                t.depends_on.push(dep);
            } else {
                let before = t.depends_on.len();
                t.depends_on.retain(|d| *d != dep);
                if t.depends_on.len() == before {
                    return Err(DomainError::NotFound { what: "dependency" });
                }
            }
            t.version += 1;
            t.updated_at_ms = tx.now_ms();
            tx.put(TASKS, &org_id_key(org, id), &encode(&t))?;
            let kind = if add { "task.dependency_added" } else { "task.dependency_removed" };
            tx.emit("org", kind, json!({ "task": id, "depends_on": dep }));
            tx.audit(kind, format!("task:{id}"), json!({ "depends_on": dep }));
            Ok(t)
        })
        .await
}

/// Whether `target` is reachable from `from` along "depends on" edges.
fn reaches(tx: &Tx<'_, '_>, org: Id, from: Id, target: Id) -> Result<bool, DomainError> {
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([from]);
    while let Some(n) = queue.pop_front() {
        if n == target {
            return Ok(true);
        }
        if !seen.insert(n) {
            continue;
        }
        if seen.len() > GRAPH_VISIT_MAX {
            return Err(DomainError::Conflict {
                code: "graph_too_large",
                detail: "the dependency graph is too large to check".into(),
            });
        }
        if let Some(t) = load(tx, org, n)? {
            queue.extend(t.depends_on);
        }
    }
    Ok(false)
}
