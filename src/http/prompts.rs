//! `/v1/prompt-templates`, `/v1/prompts/render` and `/v1/global-prompt-templates`: layered
//! system-prompt templates, their history, and the composed prompt with its provenance.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::problem::Problem;
use super::{ApiTags, OperatorAuth, UserAuth, mutation_ctx, parse_id, parse_if_match, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::DomainError;
use crate::domain::paging::{Page, PageRequest};
use crate::domain::policy::Permission;
use crate::domain::prompts::{
    self, Body, Level, Merge, NewTemplate, Section, Template, TemplateFilter, TemplatePatch, Variable, Version, Viewer,
};
use crate::ids::{Id, rfc3339};
use crate::prompts::{Input, Rendered, Subject, Tool};
use crate::store::writer::MutationCtx;
use crate::tenancy::OrgScope;

crate::problems!(PromptReadErrors: 400, 401, 403, 404, 422);
crate::problems!(PromptWriteErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422, 507);
crate::problems!(RenderErrors: 400, 401, 403, 404, 413, 415, 422, 502, 504);

/// A template's layer.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[oai(rename = "PromptLevel", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum LevelView {
    Global,
    Org,
    Room,
    User,
}

/// The layers an organization's templates sit at.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[oai(rename = "OrgPromptLevel", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum OrgLevelView {
    Org,
    Room,
    User,
}

/// How a section combines with the same-named section of the layers below: after it
/// (`append`) or instead of it (`replace`).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[oai(rename = "PromptMerge", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum MergeView {
    Append,
    Replace,
}

/// A section as written.
#[derive(Object, Debug, Clone, Deserialize)]
#[oai(rename = "PromptSectionInput", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SectionInput {
    /// 1–64 of a–z, 0–9, `_`, `-`, `.`; unique in the template.
    pub name: String,
    /// minijinja template text (no `include`, `import` or `extends`); at most 16 KiB.
    pub text: String,
    /// Default `append`.
    pub merge: Option<MergeView>,
    /// Sections compose in ascending priority (default 0; ties in order of appearance).
    pub priority: Option<i32>,
    /// The layers above may not append to or replace it (default false).
    pub locked: Option<bool>,
}

/// A section of a template.
#[derive(Object, Debug, Clone)]
#[oai(rename = "PromptSection")]
pub struct SectionView {
    pub name: String,
    pub text: String,
    pub merge: MergeView,
    pub priority: i32,
    pub locked: bool,
}

/// A custom variable, used as `vars.<name>`.
#[derive(Object, Debug, Clone, Deserialize)]
#[oai(rename = "PromptVariable", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct VariableView {
    /// 1–64 of a–z, 0–9 and `_`, not starting with a digit.
    pub name: String,
    #[oai(default)]
    #[serde(default)]
    pub description: String,
    /// Used when a render gives no value; without one a render must.
    pub default: Option<String>,
}

/// Makes a template.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "CreatePromptTemplate", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub level: OrgLevelView,
    /// The room of a `room` template.
    pub room_id: Option<String>,
    /// The user of a `user` template (default: you).
    pub user_id: Option<String>,
    /// The prompt this template is a layer of: 1–64 of a–z, 0–9, `_`, `-`, `.`.
    pub name: String,
    pub description: Option<String>,
    pub sections: Vec<SectionInput>,
    pub variables: Option<Vec<VariableView>>,
    /// What this version is about.
    pub note: Option<String>,
}

/// Makes a global template.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "CreateGlobalPromptTemplate", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateGlobalBody {
    /// The prompt this template is a layer of: 1–64 of a–z, 0–9, `_`, `-`, `.`.
    pub name: String,
    pub description: Option<String>,
    pub sections: Vec<SectionInput>,
    pub variables: Option<Vec<VariableView>>,
    pub note: Option<String>,
}

/// Saves a new version.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "UpdatePromptTemplate", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    pub description: Option<String>,
    /// All the sections of the new version.
    pub sections: Option<Vec<SectionInput>>,
    /// All the variables of the new version.
    pub variables: Option<Vec<VariableView>>,
    pub note: Option<String>,
    /// The version this change is based on (or `If-Match`); 412 if it moved on.
    pub version: Option<u64>,
}

/// Restores an older version as a new one.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "RollbackPromptTemplate", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The kept version to restore.
    pub to_version: u64,
    /// The version this change is based on (or `If-Match`); 412 if it moved on.
    pub version: Option<u64>,
}

/// A system-prompt template at its current version.
#[derive(Object, Debug)]
#[oai(rename = "PromptTemplate")]
pub struct TemplateView {
    pub id: String,
    pub level: LevelView,
    pub room_id: Option<String>,
    pub user_id: Option<String>,
    pub name: String,
    pub description: String,
    pub version: u64,
    pub sections: Vec<SectionView>,
    pub variables: Vec<VariableView>,
    pub created_at: String,
    pub updated_at: String,
    /// Who saved the current version (`user:…`, `operator:…`).
    pub updated_by: String,
}

#[derive(Object, Debug)]
#[oai(rename = "PromptTemplatePage")]
pub struct TemplatePage {
    pub items: Vec<TemplateView>,
    pub next_cursor: Option<String>,
}

/// A saved version of a template.
#[derive(Object, Debug)]
#[oai(rename = "PromptTemplateVersion")]
pub struct VersionView {
    pub version: u64,
    pub note: String,
    pub actor: String,
    pub at: String,
    /// Set when this version restored an older one.
    pub restored_from: Option<u64>,
    pub sections: Vec<SectionView>,
    pub variables: Vec<VariableView>,
}

#[derive(Object, Debug)]
#[oai(rename = "PromptTemplateVersionPage")]
pub struct VersionPage {
    pub items: Vec<VersionView>,
    pub next_cursor: Option<String>,
}

/// What changed in a section between two versions.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename = "PromptSectionChange", rename_all = "snake_case")]
pub enum ChangeView {
    Added,
    Removed,
    Changed,
    Unchanged,
}

#[derive(Object, Debug)]
#[oai(rename = "PromptSectionDiff")]
pub struct SectionDiff {
    pub name: String,
    pub change: ChangeView,
}

/// Two versions compared.
#[derive(Object, Debug)]
#[oai(rename = "PromptTemplateDiff")]
pub struct DiffView {
    pub from: u64,
    pub to: u64,
    /// A unified diff of the two versions written out as text (each section's settings on a
    /// `## section` line, then its text; then the variables).
    pub unified: String,
    pub sections: Vec<SectionDiff>,
    pub variables_changed: bool,
}

/// Asks for the composed prompt.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "RenderPrompt", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RenderBody {
    /// The prompt's name.
    pub name: String,
    /// Compose with this room's layer (a room the prompt's user may see).
    pub room_id: Option<String>,
    /// Whose prompt (default: yours; another user's needs `prompts.manage`).
    pub user_id: Option<String>,
    /// `locale` in the context (default: the user's, else `en`).
    pub locale: Option<String>,
    /// Values of the custom variables the templates declare (each at most 16 KiB).
    pub variables: Option<BTreeMap<String, String>>,
    /// MCP servers (service ids) whose tools the caller may call go into `tools`.
    pub mcp_services: Option<Vec<String>>,
}

/// Where a part of a section comes from.
#[derive(Object, Debug)]
#[oai(rename = "PromptSource")]
pub struct SourceView {
    pub level: LevelView,
    pub template_id: String,
    pub version: u64,
    pub merge: MergeView,
}

#[derive(Object, Debug)]
#[oai(rename = "RenderedPromptSection")]
pub struct RenderedSectionView {
    pub name: String,
    pub priority: i32,
    pub text: String,
    /// The layer that locked it, if one did.
    pub locked_by: Option<LevelView>,
    /// The layers' parts, in the order they were joined.
    pub from: Vec<SourceView>,
}

/// A section a lock kept out.
#[derive(Object, Debug)]
#[oai(rename = "SkippedPromptSection")]
pub struct SkippedView {
    pub level: LevelView,
    pub template_id: String,
    pub version: u64,
    pub section: String,
    pub locked_by: LevelView,
}

/// A value that looks like an injection attempt. It is rendered as data all the same.
#[derive(Object, Debug)]
#[oai(rename = "PromptFlag")]
pub struct FlagView {
    /// The value's place in the context: `vars.<name>`, `user.name`, `tools.<n>.description`, …
    pub source: String,
    /// `ignore_instructions`, `role_marker`, `chat_markup`, `new_identity`,
    /// `prompt_exfiltration`, `jailbreak`, `delimiter`, `template_syntax`, `hidden_characters`.
    pub pattern: String,
}

/// The composed prompt and where each part came from.
#[derive(Object, Debug)]
#[oai(rename = "RenderedPrompt")]
pub struct RenderedView {
    pub name: String,
    /// The sections' texts joined by blank lines.
    pub prompt: String,
    pub sections: Vec<RenderedSectionView>,
    pub skipped: Vec<SkippedView>,
    pub flagged: bool,
    pub flags: Vec<FlagView>,
    /// Whether the compiled composition came from the cache.
    pub cached: bool,
}

#[derive(ApiResponse)]
pub enum TemplateCreated {
    #[oai(status = 201)]
    Created(Json<TemplateView>, #[oai(header = "Location")] String, #[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
pub enum TemplateOk {
    #[oai(status = 200)]
    Ok(Json<TemplateView>, #[oai(header = "ETag")] String),
}

fn ok(t: Template) -> TemplateOk {
    let etag = super::etag(t.version);
    TemplateOk::Ok(Json(view(t)), etag)
}

fn created(t: Template, base: &str) -> TemplateCreated {
    let location = format!("{base}/{}", t.id);
    let etag = super::etag(t.version);
    TemplateCreated::Created(Json(view(t)), location, etag)
}

fn level_view(l: Level) -> LevelView {
    match l {
        Level::Global => LevelView::Global,
        Level::Org => LevelView::Org,
        Level::Room => LevelView::Room,
        Level::User => LevelView::User,
    }
}

fn merge_view(m: Merge) -> MergeView {
    match m {
        Merge::Append => MergeView::Append,
        Merge::Replace => MergeView::Replace,
    }
}

fn sections_view(b: &Body) -> Vec<SectionView> {
    b.sections
        .iter()
        .map(|s| SectionView {
            name: s.name.clone(),
            text: s.text.clone(),
            merge: merge_view(s.merge),
            priority: s.priority,
            locked: s.locked,
        })
        .collect()
}

fn variables_view(b: &Body) -> Vec<VariableView> {
    b.variables
        .iter()
        .map(|v| VariableView { name: v.name.clone(), description: v.description.clone(), default: v.default.clone() })
        .collect()
}

fn view(t: Template) -> TemplateView {
    TemplateView {
        id: t.id.to_string(),
        level: level_view(t.level),
        room_id: t.room.map(|r| r.to_string()),
        user_id: t.user.map(|u| u.to_string()),
        sections: sections_view(&t.body),
        variables: variables_view(&t.body),
        name: t.name,
        description: t.description,
        version: t.version,
        created_at: rfc3339(t.created_at_ms),
        updated_at: rfc3339(t.updated_at_ms),
        updated_by: t.updated_by,
    }
}

fn version_view(v: Version) -> VersionView {
    VersionView {
        sections: sections_view(&v.body),
        variables: variables_view(&v.body),
        version: v.version,
        note: v.note,
        actor: v.actor,
        at: rfc3339(v.at_ms),
        restored_from: v.restored_from,
    }
}

fn body(sections: Vec<SectionInput>, variables: Option<Vec<VariableView>>) -> Body {
    Body {
        sections: sections
            .into_iter()
            .map(|s| Section {
                name: s.name,
                text: s.text,
                merge: match s.merge {
                    Some(MergeView::Replace) => Merge::Replace,
                    _ => Merge::Append,
                },
                priority: s.priority.unwrap_or(0),
                locked: s.locked.unwrap_or(false),
            })
            .collect(),
        variables: variables
            .unwrap_or_default()
            .into_iter()
            .map(|v| Variable { name: v.name, description: v.description, default: v.default })
            .collect(),
    }
}

/// A template's body written out as text, for diffs.
fn as_text(b: &Body) -> String {
    let mut s = String::new();
    for x in &b.sections {
        let merge = if x.merge == Merge::Replace { "replace" } else { "append" };
        let _ = writeln!(s, "## section {} (merge {merge}, priority {}, locked {})", x.name, x.priority, x.locked);
        s.push_str(&x.text);
        if !x.text.ends_with('\n') {
            s.push('\n');
        }
    }
    for v in &b.variables {
        let _ = writeln!(s, "## variable {} = {:?} ({})", v.name, v.default, v.description);
    }
    s
}

fn diff(a: &Version, b: &Version) -> DiffView {
    let (ta, tb) = (as_text(&a.body), as_text(&b.body));
    let unified = similar::TextDiff::from_lines(&ta, &tb)
        .unified_diff()
        .context_radius(3)
        .header(&format!("version {}", a.version), &format!("version {}", b.version))
        .to_string();
    let mut sections = Vec::new();
    for s in &b.body.sections {
        let change = match a.body.sections.iter().find(|o| o.name == s.name) {
            None => ChangeView::Added,
            Some(o) if o == s => ChangeView::Unchanged,
            Some(_) => ChangeView::Changed,
        };
        sections.push(SectionDiff { name: s.name.clone(), change });
    }
    for s in &a.body.sections {
        if !b.body.sections.iter().any(|n| n.name == s.name) {
            sections.push(SectionDiff { name: s.name.clone(), change: ChangeView::Removed });
        }
    }
    DiffView {
        from: a.version,
        to: b.version,
        unified,
        sections,
        variables_changed: a.body.variables != b.body.variables,
    }
}

fn page_view(p: Page<Template>) -> TemplatePage {
    TemplatePage { items: p.items.into_iter().map(view).collect(), next_cursor: p.next_cursor }
}

fn rendered_view(name: String, r: Rendered) -> RenderedView {
    RenderedView {
        name,
        prompt: r.prompt,
        sections: r
            .sections
            .into_iter()
            .map(|s| RenderedSectionView {
                name: s.name,
                priority: s.priority,
                text: s.text,
                locked_by: s.locked_by.map(level_view),
                from: s
                    .from
                    .into_iter()
                    .map(|f| SourceView {
                        level: level_view(f.level),
                        template_id: f.template.to_string(),
                        version: f.version,
                        merge: merge_view(f.merge),
                    })
                    .collect(),
            })
            .collect(),
        skipped: r
            .skipped
            .into_iter()
            .map(|s| SkippedView {
                level: level_view(s.level),
                template_id: s.template.to_string(),
                version: s.version,
                section: s.section,
                locked_by: level_view(s.locked_by),
            })
            .collect(),
        flagged: !r.flags.is_empty(),
        flags: r.flags.into_iter().map(|f| FlagView { source: f.source, pattern: f.pattern.to_owned() }).collect(),
        cached: r.cached,
    }
}

/// Who handles an organization's templates: managers (`prompts.manage`) every one, everyone
/// else their own user templates (`self.manage`).
fn viewer(p: &Principal) -> Result<Viewer, Problem> {
    p.require(Permission::SelfManage)?;
    Ok(Viewer { user: Some(p.user), manager: p.require(Permission::PromptsManage).is_ok() })
}

const OPERATOR: Viewer = Viewer { user: None, manager: true };

fn optional_id(s: Option<&str>, at: &str) -> Result<Option<Id>, DomainError> {
    s.map(|s| super::id_at(s, at)).transpose()
}

#[derive(Default)]
pub struct PromptsApi;

#[OpenApi(tag = "ApiTags::Prompts")]
impl PromptsApi {
    /// Create a prompt template
    ///
    /// A layer of the prompt `name`: the organization's (`org`), a room's (`room`), or a user's
    /// (`user`). The text is checked before it is saved: syntax, the names it uses (the
    /// context's and the variables it declares), and a trial render within the fuel and size
    /// limits (422 naming the section).
    ///
    /// Permission: `self.manage` (your own user templates); `prompts.manage` for the
    /// organization's, rooms' and others'.
    #[oai(path = "/v1/prompt-templates", method = "post", operation_id = "createPromptTemplate")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<CreateBody>,
    ) -> Result<TemplateCreated, PromptWriteErrors> {
        let p = auth.check(&app).await?;
        let v = viewer(&p)?;
        let b = body.0;
        let level = match b.level {
            OrgLevelView::Org => Level::Org,
            OrgLevelView::Room => Level::Room,
            OrgLevelView::User => Level::User,
        };
        let room = optional_id(b.room_id.as_deref(), "/room_id")?;
        let mut user = optional_id(b.user_id.as_deref(), "/user_id")?;
        if level == Level::User {
            user = user.or(Some(p.user));
        }
        if !v.manager && (level != Level::User || user != Some(p.user)) {
            p.require(Permission::PromptsManage)?;
        }
        prompts::check_name(&b.name)?;
        let body = body_checked(&app, level, b.sections, b.variables)?;
        let new = NewTemplate {
            level,
            room,
            user,
            name: b.name,
            description: b.description.unwrap_or_default(),
            body,
            note: b.note.unwrap_or_default(),
        };
        let t = prompts::create(&app.writer, user_ctx(req, &p), new).await?;
        Ok(created(t, "/v1/prompt-templates"))
    }

    /// List prompt templates
    ///
    /// Every template of the organization for managers; your own user templates otherwise.
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/prompt-templates", method = "get", operation_id = "listPromptTemplates")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        /// Only this layer's.
        level: Query<Option<OrgLevelView>>,
        /// Only the templates of this prompt.
        name: Query<Option<String>>,
        /// Only this room's.
        room_id: Query<Option<String>>,
        /// Only this user's.
        user_id: Query<Option<String>>,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<u32>>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
    ) -> Result<Json<TemplatePage>, PromptReadErrors> {
        let p = auth.check(&app).await?;
        let v = viewer(&p)?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let filter = TemplateFilter {
            level: level.0.map(|l| match l {
                OrgLevelView::Org => Level::Org,
                OrgLevelView::Room => Level::Room,
                OrgLevelView::User => Level::User,
            }),
            name: name.0,
            room: optional_id(room_id.0.as_deref(), "?room_id")?,
            user: optional_id(user_id.0.as_deref(), "?user_id")?,
        };
        let page = prompts::list(&app.store, OrgScope::member(&p), v, filter, page).await?;
        Ok(Json(page_view(page)))
    }

    /// Get a prompt template
    ///
    /// Permission: `self.manage` (your own user templates; others' need `prompts.manage`).
    #[oai(path = "/v1/prompt-templates/:template_id", method = "get", operation_id = "getPromptTemplate")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        template_id: Path<String>,
    ) -> Result<TemplateOk, PromptReadErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let v = viewer(&p)?;
        Ok(ok(prompts::get(&app.store, OrgScope::member(&p), v, id).await?))
    }

    /// Update a prompt template
    ///
    /// Saves a new version (the sections and variables given replace the old ones whole),
    /// checked as on creation.
    ///
    /// Permission: `self.manage` (your own user templates; others' need `prompts.manage`).
    #[oai(path = "/v1/prompt-templates/:template_id", method = "patch", operation_id = "updatePromptTemplate")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        template_id: Path<String>,
        /// The `ETag` (version) the change is based on; 412 if it moved on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UpdateBody>,
    ) -> Result<TemplateOk, PromptWriteErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let v = viewer(&p)?;
        let expected = parse_if_match(if_match.0.as_deref())?;
        let t = update_template(&app, user_ctx(req, &p), OrgScope::member(&p), v, id, body.0, expected).await?;
        Ok(ok(t))
    }

    /// Delete a prompt template
    ///
    /// The template and its history go; the audit trail keeps what happened.
    ///
    /// Permission: `self.manage` (your own user templates; others' need `prompts.manage`).
    #[oai(path = "/v1/prompt-templates/:template_id", method = "delete", operation_id = "deletePromptTemplate")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        template_id: Path<String>,
    ) -> Result<NoContent, PromptWriteErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let v = viewer(&p)?;
        prompts::delete(&app.writer, user_ctx(req, &p), v, id).await?;
        Ok(NoContent::Done)
    }

    /// List a prompt template's versions
    ///
    /// Newest first; the last 200 versions are kept.
    ///
    /// Permission: `self.manage` (your own user templates; others' need `prompts.manage`).
    #[oai(
        path = "/v1/prompt-templates/:template_id/versions",
        method = "get",
        operation_id = "listPromptTemplateVersions"
    )]
    async fn versions(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        template_id: Path<String>,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<u32>>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
    ) -> Result<Json<VersionPage>, PromptReadErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let v = viewer(&p)?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let page = prompts::versions(&app.store, OrgScope::member(&p), v, id, page).await?;
        Ok(Json(VersionPage {
            items: page.items.into_iter().map(version_view).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// Compare two versions of a prompt template
    ///
    /// Permission: `self.manage` (your own user templates; others' need `prompts.manage`).
    #[oai(path = "/v1/prompt-templates/:template_id/diff", method = "get", operation_id = "diffPromptTemplateVersions")]
    async fn diff(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        template_id: Path<String>,
        /// The older version (default: the one before `to`).
        from: Query<Option<u64>>,
        /// The newer version (default: the current one).
        to: Query<Option<u64>>,
    ) -> Result<Json<DiffView>, PromptReadErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let v = viewer(&p)?;
        Ok(Json(diff_versions(&app, OrgScope::member(&p), v, id, from.0, to.0).await?))
    }

    /// Roll a prompt template back
    ///
    /// Saves the body of a kept older version as a new version (the history keeps both).
    ///
    /// Permission: `self.manage` (your own user templates; others' need `prompts.manage`).
    #[oai(
        path = "/v1/prompt-templates/:template_id/rollback",
        method = "post",
        operation_id = "rollbackPromptTemplate"
    )]
    async fn rollback(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        template_id: Path<String>,
        /// The `ETag` (version) the change is based on; 412 if it moved on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<RollbackBody>,
    ) -> Result<TemplateOk, PromptWriteErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let v = viewer(&p)?;
        let expected = parse_if_match(if_match.0.as_deref())?.or(body.0.version);
        let t = prompts::rollback(&app.writer, user_ctx(req, &p), v, id, body.0.to_version, expected).await?;
        Ok(ok(t))
    }

    /// Render a prompt
    ///
    /// Composes the prompt `name` from its templates (global → organization → the room's →
    /// the user's) and renders it in the sandbox with the context: `org` (`id`, `name`,
    /// `slug`), `room` (`id`, `name`, `description`; none without a room), `user` (`id`,
    /// `name`, `role`, `locale`, `time_zone`), `locale`, `now`, `today`, `tools` (`service`,
    /// `name`, `description` of the MCP tools the caller may call on the services named) and
    /// `vars` (the custom variables). Every string value is printed delimited as `«…»`, with
    /// `\`, `«`, `»`, line breaks and control characters escaped inside; values that look like
    /// injection attempts are flagged here and in the audit trail
    /// (`prompt.injection_flagged`), never changed.
    ///
    /// Permission: `self.manage` (your own prompt; another user's needs `prompts.manage`).
    #[oai(path = "/v1/prompts/render", method = "post", operation_id = "renderPrompt")]
    async fn render(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<RenderBody>,
    ) -> Result<Json<RenderedView>, RenderErrors> {
        let p = auth.check(&app).await?;
        let v = viewer(&p)?;
        let b = body.0;
        prompts::check_name(&b.name)?;
        let user = optional_id(b.user_id.as_deref(), "/user_id")?.unwrap_or(p.user);
        if user != p.user && !v.manager {
            p.require(Permission::PromptsManage)?;
        }
        let room = optional_id(b.room_id.as_deref(), "/room_id")?;
        if let Some(l) = &b.locale {
            if !crate::prompts::valid_locale(l) {
                return Err(DomainError::invalid("/locale", "invalid_locale", "letters, digits and '-', 1–35").into());
            }
        }
        let scope = OrgScope::member(&p);
        let subject = subject(&app, scope, user, room)?;
        let tools = tools(&app, &p, b.mcp_services.unwrap_or_default()).await?;
        let input =
            Input { name: b.name.clone(), room, user, locale: b.locale, vars: b.variables.unwrap_or_default(), tools };
        let rendered = app.prompts.render(scope, subject, input).await?;
        if !rendered.flags.is_empty() {
            prompts::flagged(&app.writer, user_ctx(req, &p), &b.name, room, user, &rendered.flags).await?;
        }
        Ok(Json(rendered_view(b.name, rendered)))
    }
}

/// The subject of a render, from its records.
fn subject(app: &App, scope: OrgScope, user: Id, room: Option<Id>) -> Result<Subject, DomainError> {
    let (o, u, room) = prompts::subject_records(&app.store, scope, user, room)?;
    Ok(Subject {
        org: (o.id, o.name, o.slug),
        room: room.map(|r| (r.id, r.name, r.description)),
        user: (u.id, u.display_name, u.role.as_str(), u.profile.locale, u.profile.time_zone),
    })
}

/// The tools of the MCP services named that the caller may call.
async fn tools(app: &App, p: &Principal, services: Vec<String>) -> Result<Vec<Tool>, Problem> {
    if services.len() > 16 {
        return Err(DomainError::invalid("/mcp_services", "too_many", "at most 16 services").into());
    }
    let mut out = Vec::new();
    for (i, id) in services.iter().enumerate() {
        let id = super::id_at(id, &format!("/mcp_services/{i}"))?;
        let service = crate::domain::services::get(&app.store, OrgScope::member(p), id)?;
        if p.require(Permission::ServicesCall).is_err() {
            continue;
        }
        let catalog = app.mcp.list(OrgScope::member(p), &service).await.map_err(super::mcp::problem)?;
        for t in &catalog.tools {
            if super::mcp::callable(p, &service, &t.tool.name) {
                out.push(Tool {
                    service: id,
                    name: t.tool.name.to_string(),
                    description: t.tool.description.as_ref().map(ToString::to_string).unwrap_or_default(),
                });
            }
        }
    }
    Ok(out)
}

fn body_checked(
    app: &App,
    level: Level,
    sections: Vec<SectionInput>,
    variables: Option<Vec<VariableView>>,
) -> Result<Body, DomainError> {
    let b = body(sections, variables);
    app.prompts.check(level, &b)?;
    Ok(b)
}

async fn update_template(
    app: &App,
    ctx: MutationCtx,
    scope: OrgScope,
    v: Viewer,
    id: Id,
    b: UpdateBody,
    if_match: Option<u64>,
) -> Result<Template, DomainError> {
    let expected_version = if_match.or(b.version);
    let body = match (b.sections, b.variables) {
        (None, None) => None,
        (sections, variables) => {
            // What is not given stays as it is.
            let current = prompts::get(&app.store, scope, v, id).await?;
            let sections = match sections {
                Some(s) => body(s, None).sections,
                None => current.body.sections.clone(),
            };
            let variables = match variables {
                Some(vs) => body(Vec::new(), Some(vs)).variables,
                None => current.body.variables.clone(),
            };
            let b = Body { sections, variables };
            app.prompts.check(current.level, &b)?;
            Some(b)
        }
    };
    let patch = TemplatePatch { description: b.description, body, note: b.note.unwrap_or_default(), expected_version };
    prompts::update(&app.writer, ctx, v, id, patch).await
}

async fn diff_versions(
    app: &App,
    scope: OrgScope,
    v: Viewer,
    id: Id,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<DiffView, DomainError> {
    let to = match to {
        Some(t) => t,
        None => prompts::get(&app.store, scope, v, id).await?.version,
    };
    let from = from.unwrap_or(to.saturating_sub(1).max(1));
    let (a, b) = prompts::two_versions(&app.store, scope, v, id, from, to).await?;
    Ok(diff(&a, &b))
}

#[derive(Default)]
pub struct GlobalPromptsApi;

#[OpenApi(tag = "ApiTags::Prompts")]
impl GlobalPromptsApi {
    /// Create a global prompt template
    ///
    /// The lowest layer of the prompt `name`, under every organization's. Checked as an
    /// organization's template is.
    #[oai(path = "/v1/global-prompt-templates", method = "post", operation_id = "createGlobalPromptTemplate")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        body: JsonBody<CreateGlobalBody>,
    ) -> Result<TemplateCreated, PromptWriteErrors> {
        let op = auth.check(&app).await?;
        let b = body.0;
        prompts::check_name(&b.name)?;
        let body = body_checked(&app, Level::Global, b.sections, b.variables)?;
        let new = NewTemplate {
            level: Level::Global,
            room: None,
            user: None,
            name: b.name,
            description: b.description.unwrap_or_default(),
            body,
            note: b.note.unwrap_or_default(),
        };
        let t = prompts::create(&app.writer, mutation_ctx(req, OrgScope::INSTANCE, op.actor()), new).await?;
        Ok(created(t, "/v1/global-prompt-templates"))
    }

    /// List global prompt templates
    #[oai(path = "/v1/global-prompt-templates", method = "get", operation_id = "listGlobalPromptTemplates")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        /// Only the template of this prompt.
        name: Query<Option<String>>,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<u32>>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
    ) -> Result<Json<TemplatePage>, PromptReadErrors> {
        auth.check(&app).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let filter = TemplateFilter { name: name.0, ..TemplateFilter::default() };
        Ok(Json(page_view(prompts::list(&app.store, OrgScope::INSTANCE, OPERATOR, filter, page).await?)))
    }

    /// Get a global prompt template
    #[oai(path = "/v1/global-prompt-templates/:template_id", method = "get", operation_id = "getGlobalPromptTemplate")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        template_id: Path<String>,
    ) -> Result<TemplateOk, PromptReadErrors> {
        auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        Ok(ok(prompts::get(&app.store, OrgScope::INSTANCE, OPERATOR, id).await?))
    }

    /// Update a global prompt template
    #[oai(
        path = "/v1/global-prompt-templates/:template_id",
        method = "patch",
        operation_id = "updateGlobalPromptTemplate"
    )]
    async fn update(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        template_id: Path<String>,
        /// The `ETag` (version) the change is based on; 412 if it moved on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UpdateBody>,
    ) -> Result<TemplateOk, PromptWriteErrors> {
        let op = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let expected = parse_if_match(if_match.0.as_deref())?;
        let ctx = mutation_ctx(req, OrgScope::INSTANCE, op.actor());
        Ok(ok(update_template(&app, ctx, OrgScope::INSTANCE, OPERATOR, id, body.0, expected).await?))
    }

    /// Delete a global prompt template
    #[oai(
        path = "/v1/global-prompt-templates/:template_id",
        method = "delete",
        operation_id = "deleteGlobalPromptTemplate"
    )]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        template_id: Path<String>,
    ) -> Result<NoContent, PromptWriteErrors> {
        let op = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        prompts::delete(&app.writer, mutation_ctx(req, OrgScope::INSTANCE, op.actor()), OPERATOR, id).await?;
        Ok(NoContent::Done)
    }

    /// List a global prompt template's versions
    #[oai(
        path = "/v1/global-prompt-templates/:template_id/versions",
        method = "get",
        operation_id = "listGlobalPromptTemplateVersions"
    )]
    async fn versions(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        template_id: Path<String>,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<u32>>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
    ) -> Result<Json<VersionPage>, PromptReadErrors> {
        auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let page = prompts::versions(&app.store, OrgScope::INSTANCE, OPERATOR, id, page).await?;
        Ok(Json(VersionPage {
            items: page.items.into_iter().map(version_view).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// Compare two versions of a global prompt template
    #[oai(
        path = "/v1/global-prompt-templates/:template_id/diff",
        method = "get",
        operation_id = "diffGlobalPromptTemplateVersions"
    )]
    async fn diff(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        template_id: Path<String>,
        /// The older version (default: the one before `to`).
        from: Query<Option<u64>>,
        /// The newer version (default: the current one).
        to: Query<Option<u64>>,
    ) -> Result<Json<DiffView>, PromptReadErrors> {
        auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        Ok(Json(diff_versions(&app, OrgScope::INSTANCE, OPERATOR, id, from.0, to.0).await?))
    }

    /// Roll a global prompt template back
    #[oai(
        path = "/v1/global-prompt-templates/:template_id/rollback",
        method = "post",
        operation_id = "rollbackGlobalPromptTemplate"
    )]
    async fn rollback(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        template_id: Path<String>,
        /// The `ETag` (version) the change is based on; 412 if it moved on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<RollbackBody>,
    ) -> Result<TemplateOk, PromptWriteErrors> {
        let op = auth.check(&app).await?;
        let id = parse_id(&template_id.0, "prompt template")?;
        let expected = parse_if_match(if_match.0.as_deref())?.or(body.0.version);
        let ctx = mutation_ctx(req, OrgScope::INSTANCE, op.actor());
        Ok(ok(prompts::rollback(&app.writer, ctx, OPERATOR, id, body.0.to_version, expected).await?))
    }
}
