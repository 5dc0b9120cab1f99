//! System-prompt templates: named templates at four layers (global → organization → room →
//! user), each a list of sections with a merge rule, kept with their history.
//!
//! A template is identified by its layer, its owner (the room or user it belongs to; none for
//! the global and organization layers) and its name; the prompt of a name is composed from the
//! template of that name at each layer that has one. Every change is a new version; the last
//! `VERSIONS_KEPT` versions are kept for the history, diffs and rollbacks. Global templates
//! belong to the operators and live under the nil organization (`OrgScope::INSTANCE`).
//!
//! This module checks a template's shape; whether its sections compile and render in the
//! sandbox is the prompt engine's check (`crate::prompts`), made before a version is saved.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::paging::{Page, PageRequest, encode_cursor};
use super::{DomainError, FieldError, check};
use crate::ids::Id;
use crate::store::tables::{PROMPT_NAMES, PROMPT_TEMPLATES, PROMPT_VERSIONS, ROOMS, USERS, org_id_key, org_id_seq_key};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Reader, Store, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

/// The event topic of template changes: a composition read after a topic's generation is
/// current until the generation moves.
pub const TOPIC: &str = "prompts";
/// Longest template, section and variable name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Sections per template at most.
pub const SECTIONS_MAX: usize = 32;
/// Longest section text, in bytes.
pub const SECTION_BYTES_MAX: usize = 16 * 1024;
/// Longest template (all its sections' text), in bytes.
pub const TEMPLATE_BYTES_MAX: usize = 64 * 1024;
/// Custom variables a template declares at most.
pub const VARIABLES_MAX: usize = 32;
/// Longest variable default, in bytes.
pub const DEFAULT_BYTES_MAX: usize = 4 * 1024;
/// Longest description or version note, in characters.
pub const NOTE_CHARS_MAX: usize = 500;
/// Templates per organization (or globally) at most.
pub const TEMPLATES_PER_ORG_MAX: usize = 10_000;
/// Versions of a template kept; older ones are dropped as new ones come.
pub const VERSIONS_KEPT: u64 = 200;

/// Where a template sits; later layers are more specific.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Global,
    Org,
    Room,
    User,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Global => "global",
            Level::Org => "org",
            Level::Room => "room",
            Level::User => "user",
        }
    }

    fn byte(self) -> u8 {
        self as u8
    }
}

/// How a section combines with the same-named section of the layers below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// After what the layers below wrote.
    Append,
    /// Instead of it.
    Replace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    /// Template text (minijinja).
    pub text: String,
    pub merge: Merge,
    /// Sections are composed in ascending priority (ties: the order they first appear).
    pub priority: i32,
    /// The layers above may not append to or replace it.
    pub locked: bool,
}

/// A custom variable a template uses as `vars.<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    pub description: String,
    /// Used when the render does not give one; without one the render must.
    pub default: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub sections: Vec<Section>,
    pub variables: Vec<Variable>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub id: Id,
    pub level: Level,
    /// The room of a room template.
    pub room: Option<Id>,
    /// The user of a user template.
    pub user: Option<Id>,
    pub name: String,
    pub description: String,
    pub version: u64,
    pub body: Body,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Who made the current version (`user:…`, `operator:…`).
    pub updated_by: String,
}

/// One version of a template, as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub template: Id,
    pub version: u64,
    pub body: Body,
    pub note: String,
    pub actor: String,
    pub at_ms: i64,
    /// Set when this version restored an older one.
    pub restored_from: Option<u64>,
}

/// Who asks: whether they manage the layer's templates (global ones: operators; the others:
/// `prompts.manage`), else the user whose own templates they may handle.
#[derive(Clone, Copy, Debug)]
pub struct Viewer {
    pub user: Option<Id>,
    pub manager: bool,
}

impl Viewer {
    fn may(&self, t: &Template) -> bool {
        self.manager || (t.level == Level::User && t.user.is_some() && t.user == self.user)
    }
}

pub struct NewTemplate {
    pub level: Level,
    pub room: Option<Id>,
    pub user: Option<Id>,
    pub name: String,
    pub description: String,
    pub body: Body,
    pub note: String,
}

pub struct TemplatePatch {
    pub description: Option<String>,
    pub body: Option<Body>,
    pub note: String,
    pub expected_version: Option<u64>,
}

/// Filters of the template list.
#[derive(Clone, Debug, Default)]
pub struct TemplateFilter {
    pub level: Option<Level>,
    pub name: Option<String>,
    pub room: Option<Id>,
    pub user: Option<Id>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_BYTES_MAX
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'))
}

fn valid_variable(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_BYTES_MAX
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A template's name is checked here; its layer and owner by the caller.
pub fn check_name(name: &str) -> Result<(), DomainError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "/name",
            "invalid_name",
            format!("1–{NAME_BYTES_MAX} of a–z, 0–9, '_', '-', '.', starting with a letter or digit"),
        ))
    }
}

fn check_note(pointer: &str, s: &str, errors: &mut Vec<FieldError>) {
    if s.chars().count() > NOTE_CHARS_MAX {
        errors.push(FieldError::new(pointer, "too_long", format!("at most {NOTE_CHARS_MAX} characters")));
    }
}

/// The shape of a body: names, counts and sizes (its template text is the engine's check).
pub fn check_body(body: &Body) -> Result<(), DomainError> {
    let mut errors = Vec::new();
    if body.sections.is_empty() || body.sections.len() > SECTIONS_MAX {
        errors.push(FieldError::new("/sections", "invalid_length", format!("1–{SECTIONS_MAX} sections")));
    }
    let mut total = 0;
    for (i, s) in body.sections.iter().enumerate() {
        if !valid_name(&s.name) {
            errors.push(FieldError::new(
                &format!("/sections/{i}/name"),
                "invalid_name",
                "1–64 of a–z, 0–9, '_', '-', '.', starting with a letter or digit",
            ));
        }
        if body.sections[..i].iter().any(|o| o.name == s.name) {
            errors.push(FieldError::new(&format!("/sections/{i}/name"), "duplicate", "section names are unique"));
        }
        if s.text.len() > SECTION_BYTES_MAX {
            errors.push(FieldError::new(
                &format!("/sections/{i}/text"),
                "too_long",
                format!("at most {SECTION_BYTES_MAX} bytes"),
            ));
        }
        total += s.text.len();
    }
    if total > TEMPLATE_BYTES_MAX {
        errors.push(FieldError::new("/sections", "too_long", format!("at most {TEMPLATE_BYTES_MAX} bytes of text")));
    }
    if body.variables.len() > VARIABLES_MAX {
        errors.push(FieldError::new("/variables", "too_many", format!("at most {VARIABLES_MAX} variables")));
    }
    for (i, v) in body.variables.iter().enumerate() {
        if !valid_variable(&v.name) {
            errors.push(FieldError::new(
                &format!("/variables/{i}/name"),
                "invalid_name",
                "1–64 of a–z, 0–9 and '_', not starting with a digit",
            ));
        }
        if body.variables[..i].iter().any(|o| o.name == v.name) {
            errors.push(FieldError::new(&format!("/variables/{i}/name"), "duplicate", "variable names are unique"));
        }
        if v.default.as_ref().is_some_and(|d| d.len() > DEFAULT_BYTES_MAX) {
            errors.push(FieldError::new(
                &format!("/variables/{i}/default"),
                "too_long",
                format!("at most {DEFAULT_BYTES_MAX} bytes"),
            ));
        }
        check_note(&format!("/variables/{i}/description"), &v.description, &mut errors);
    }
    check(errors)
}

/// `org ‖ name ‖ 0 ‖ level ‖ owner`: the name index's key.
fn name_key(org: Id, name: &str, level: Level, owner: Option<Id>) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len() + 18);
    k.extend_from_slice(org.as_bytes());
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.push(level.byte());
    k.extend_from_slice(owner.unwrap_or(Id::NIL).as_bytes());
    k
}

fn owner(t: &Template) -> Option<Id> {
    t.room.or(t.user)
}

/// Creates a template (its version 1).
pub async fn create(writer: &Writer, ctx: MutationCtx, new: NewTemplate) -> Result<Template, DomainError> {
    check_name(&new.name)?;
    check_body(&new.body)?;
    let mut errors = Vec::new();
    check_note("/description", &new.description, &mut errors);
    check_note("/note", &new.note, &mut errors);
    match new.level {
        Level::Room if new.room.is_none() => {
            errors.push(FieldError::new("/room_id", "required", "a room template names its room"));
        }
        Level::User if new.user.is_none() => {
            errors.push(FieldError::new("/user_id", "required", "a user template names its user"));
        }
        _ => {}
    }
    if new.level != Level::Room && new.room.is_some() {
        errors.push(FieldError::new("/room_id", "not_allowed", "only a room template names a room"));
    }
    if new.level != Level::User && new.user.is_some() {
        errors.push(FieldError::new("/user_id", "not_allowed", "only a user template names a user"));
    }
    check(errors)?;
    let org = ctx.scope.org();
    let actor = ctx.actor.clone();
    let id = Id::new();
    writer
        .submit(ctx, move |tx| {
            if let Some(room) = new.room {
                let r: Option<super::rooms::Room> = tx.record(ROOMS, &org_id_key(org, room))?;
                if r.is_none_or(|r| r.status == super::rooms::RoomStatus::Deleted) {
                    return Err(DomainError::invalid("/room_id", "unknown_room", "no such room"));
                }
            }
            if let Some(user) = new.user {
                if tx.get(USERS, &org_id_key(org, user))?.is_none() {
                    return Err(DomainError::invalid("/user_id", "unknown_user", "no such user"));
                }
            }
            let index = name_key(org, &new.name, new.level, new.room.or(new.user));
            if tx.get(PROMPT_NAMES, &index)?.is_some() {
                return Err(DomainError::Conflict {
                    code: "template_exists",
                    detail: format!("this layer already has a template named {}", new.name),
                });
            }
            let count = tx.range(PROMPT_NAMES, org.as_bytes(), &prefix_end(org.as_bytes()), TEMPLATES_PER_ORG_MAX)?;
            if count.len() >= TEMPLATES_PER_ORG_MAX {
                return Err(DomainError::Conflict {
                    code: "quota_exceeded",
                    detail: format!("at most {TEMPLATES_PER_ORG_MAX} prompt templates"),
                });
            }
            let now = tx.now_ms();
            let t = Template {
                id,
                level: new.level,
                room: new.room,
                user: new.user,
                name: new.name.clone(),
                description: new.description.clone(),
                version: 1,
                body: new.body.clone(),
                created_at_ms: now,
                updated_at_ms: now,
                updated_by: actor.clone(),
            };
            tx.put(PROMPT_NAMES, &index, id.as_bytes())?;
            save(tx, org, &t, &new.note, None)?;
            tx.emit(TOPIC, "prompt.template_created", summary(&t));
            tx.audit("prompt.template.create", format!("prompt_template:{id}"), summary(&t));
            Ok(t)
        })
        .await
}

fn summary(t: &Template) -> serde_json::Value {
    json!({
        "id": t.id, "level": t.level, "name": t.name, "room": t.room, "user": t.user, "version": t.version,
    })
}

/// Writes `t` and its version `t.version`, dropping the version that falls out of the kept ones.
fn save(tx: &mut Tx, org: Id, t: &Template, note: &str, restored_from: Option<u64>) -> Result<(), DomainError> {
    tx.put(PROMPT_TEMPLATES, &org_id_key(org, t.id), &encode(t))?;
    let v = Version {
        template: t.id,
        version: t.version,
        body: t.body.clone(),
        note: note.to_owned(),
        actor: t.updated_by.clone(),
        at_ms: t.updated_at_ms,
        restored_from,
    };
    tx.put(PROMPT_VERSIONS, &org_id_seq_key(org, t.id, t.version), &encode(&v))?;
    if t.version > VERSIONS_KEPT {
        tx.delete(PROMPT_VERSIONS, &org_id_seq_key(org, t.id, t.version - VERSIONS_KEPT))?;
    }
    Ok(())
}

/// The template `id` if `viewer` may handle it (404 otherwise: no hint that it exists).
fn mine(r: &impl Lookup, org: Id, id: Id, viewer: Viewer) -> Result<Template, DomainError> {
    r.record::<Template>(PROMPT_TEMPLATES, &org_id_key(org, id))?
        .filter(|t| viewer.may(t))
        .ok_or(DomainError::NotFound { what: "prompt template" })
}

/// Saves a new version of a template (its text, its description, or both).
pub async fn update(
    writer: &Writer,
    ctx: MutationCtx,
    viewer: Viewer,
    id: Id,
    patch: TemplatePatch,
) -> Result<Template, DomainError> {
    if let Some(b) = &patch.body {
        check_body(b)?;
    }
    let mut errors = Vec::new();
    if let Some(d) = &patch.description {
        check_note("/description", d, &mut errors);
    }
    check_note("/note", &patch.note, &mut errors);
    check(errors)?;
    let org = ctx.scope.org();
    let actor = ctx.actor.clone();
    writer
        .submit(ctx, move |tx| {
            let mut t = mine(tx, org, id, viewer)?;
            if patch.expected_version.is_some_and(|v| v != t.version) {
                return Err(DomainError::VersionConflict { current: t.version });
            }
            if let Some(d) = &patch.description {
                t.description.clone_from(d);
            }
            if let Some(b) = &patch.body {
                t.body = b.clone();
            }
            t.version += 1;
            t.updated_at_ms = tx.now_ms();
            t.updated_by.clone_from(&actor);
            save(tx, org, &t, &patch.note, None)?;
            tx.emit(TOPIC, "prompt.template_updated", summary(&t));
            tx.audit("prompt.template.update", format!("prompt_template:{id}"), summary(&t));
            Ok(t)
        })
        .await
}

/// Saves a new version with the body of an older one.
pub async fn rollback(
    writer: &Writer,
    ctx: MutationCtx,
    viewer: Viewer,
    id: Id,
    to: u64,
    expected_version: Option<u64>,
) -> Result<Template, DomainError> {
    let org = ctx.scope.org();
    let actor = ctx.actor.clone();
    writer
        .submit(ctx, move |tx| {
            let mut t = mine(tx, org, id, viewer)?;
            if expected_version.is_some_and(|v| v != t.version) {
                return Err(DomainError::VersionConflict { current: t.version });
            }
            let old: Version = tx.record(PROMPT_VERSIONS, &org_id_seq_key(org, id, to))?.ok_or_else(|| {
                DomainError::invalid("/version", "unknown_version", format!("version {to} is not kept"))
            })?;
            t.body = old.body;
            t.version += 1;
            t.updated_at_ms = tx.now_ms();
            t.updated_by.clone_from(&actor);
            save(tx, org, &t, &format!("restored version {to}"), Some(to))?;
            tx.emit(TOPIC, "prompt.template_updated", summary(&t));
            let mut details = summary(&t);
            details["restored_from"] = json!(to);
            tx.audit("prompt.template.rollback", format!("prompt_template:{id}"), details);
            Ok(t)
        })
        .await
}

/// Deletes a template and its history.
pub async fn delete(writer: &Writer, ctx: MutationCtx, viewer: Viewer, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let t = mine(tx, org, id, viewer)?;
            tx.delete(PROMPT_TEMPLATES, &org_id_key(org, id))?;
            tx.delete(PROMPT_NAMES, &name_key(org, &t.name, t.level, owner(&t)))?;
            let first = t.version.saturating_sub(VERSIONS_KEPT - 1).max(1);
            for v in first..=t.version {
                tx.delete(PROMPT_VERSIONS, &org_id_seq_key(org, id, v))?;
            }
            tx.emit(TOPIC, "prompt.template_deleted", summary(&t));
            tx.audit("prompt.template.delete", format!("prompt_template:{id}"), summary(&t));
            Ok(())
        })
        .await
}

pub async fn get(store: &Store, scope: OrgScope, viewer: Viewer, id: Id) -> Result<Template, DomainError> {
    store.read(move |r| mine(r, scope.org(), id, viewer)).await
}

/// Templates `viewer` may handle, matching `filter`, in id order.
pub async fn list(
    store: &Store,
    scope: OrgScope,
    viewer: Viewer,
    filter: TemplateFilter,
    page: PageRequest,
) -> Result<Page<Template>, DomainError> {
    store
        .read(move |r| {
            let org = scope.org();
            let prefix = org.as_bytes().to_vec();
            let scan = super::paging::SCAN_MAX;
            let rows = r.range(PROMPT_TEMPLATES, &page.start_in(&prefix), &prefix_end(&prefix), false, scan + 1)?;
            let mut items = Vec::new();
            let mut last = None;
            let mut rest = rows.len().min(scan);
            for (k, v) in rows.iter().take(scan) {
                rest -= 1;
                last = Some(k.clone());
                let t: Template = decode(PROMPT_TEMPLATES, v)?;
                let keep = viewer.may(&t)
                    && filter.level.is_none_or(|l| l == t.level)
                    && filter.name.as_ref().is_none_or(|n| *n == t.name)
                    && filter.room.is_none_or(|x| t.room == Some(x))
                    && filter.user.is_none_or(|x| t.user == Some(x));
                if keep {
                    items.push(t);
                    if items.len() == page.limit {
                        break;
                    }
                }
            }
            let more = rest > 0 || rows.len() > scan;
            Ok(Page { items, next_cursor: if more { last.map(|k| encode_cursor(&k)) } else { None } })
        })
        .await
}

/// A template's kept versions, newest first.
pub async fn versions(
    store: &Store,
    scope: OrgScope,
    viewer: Viewer,
    id: Id,
    page: PageRequest,
) -> Result<Page<Version>, DomainError> {
    store
        .read(move |r| {
            let org = scope.org();
            mine(r, org, id, viewer)?;
            Ok(super::paging::newest_first(r, PROMPT_VERSIONS, &org_id_key(org, id), &page)?)
        })
        .await
}

/// Two kept versions of a template.
pub async fn two_versions(
    store: &Store,
    scope: OrgScope,
    viewer: Viewer,
    id: Id,
    from: u64,
    to: u64,
) -> Result<(Version, Version), DomainError> {
    store
        .read(move |r| {
            let org = scope.org();
            mine(r, org, id, viewer)?;
            let one = |v: u64, at: &str| {
                r.record::<Version>(PROMPT_VERSIONS, &org_id_seq_key(org, id, v))?
                    .ok_or_else(|| DomainError::invalid(at, "unknown_version", format!("version {v} is not kept")))
            };
            Ok((one(from, "?from")?, one(to, "?to")?))
        })
        .await
}

/// The templates named `name` at each layer that applies, lowest layer first: the global
/// one, the organization's, the room's (with `room`) and the user's (with `user`).
pub fn layers(
    r: &Reader,
    org: Id,
    name: &str,
    room: Option<Id>,
    user: Option<Id>,
) -> Result<Vec<Template>, DomainError> {
    let mut wanted = vec![(Id::NIL, Level::Global, None), (org, Level::Org, None)];
    if let Some(room) = room {
        wanted.push((org, Level::Room, Some(room)));
    }
    if let Some(user) = user {
        wanted.push((org, Level::User, Some(user)));
    }
    let mut out = Vec::new();
    for (o, level, owner) in wanted {
        let Some(id) = r.get(PROMPT_NAMES, &name_key(o, name, level, owner))? else { continue };
        let Some(id) = Id::from_slice(&id) else { continue };
        if let Some(t) = r.record::<Template>(PROMPT_TEMPLATES, &org_id_key(o, id))? {
            out.push(t);
        }
    }
    Ok(out)
}

/// The records a render's context is made of, read on one snapshot: the organization, the
/// user (active), and the room (one the user may see).
pub fn subject_records(
    store: &Store,
    scope: OrgScope,
    user: Id,
    room: Option<Id>,
) -> Result<(super::orgs::Organization, super::users::User, Option<super::rooms::Room>), DomainError> {
    let org = scope.org();
    store.peek(|r| {
        let o = r
            .record::<super::orgs::Organization>(crate::store::tables::ORGS, org.as_bytes())?
            .ok_or(DomainError::NotFound { what: "organization" })?;
        let u = r
            .record::<super::users::User>(USERS, &org_id_key(org, user))?
            .filter(|u| u.status == super::users::UserStatus::Active)
            .ok_or(DomainError::NotFound { what: "user" })?;
        let room = room.map(|id| super::rooms::visible(r, org, user, id).map(|(room, _)| room)).transpose()?;
        Ok((o, u, room))
    })
}

/// Records that a render printed values matching injection patterns (the value's place and
/// the pattern, never the value).
pub async fn flagged(
    writer: &Writer,
    ctx: MutationCtx,
    name: &str,
    room: Option<Id>,
    user: Id,
    flags: &[impl Serialize],
) -> Result<(), DomainError> {
    let details = json!({ "name": name, "room": room, "user": user, "flags": flags });
    let target = format!("prompt:{name}");
    writer
        .submit(ctx, move |tx| {
            tx.audit("prompt.injection_flagged", target.clone(), details.clone());
            Ok::<_, DomainError>(())
        })
        .await
}
