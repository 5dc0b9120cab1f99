//! `/v1/tasks`: tasks and their dependencies.

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::chat::{
    AttachmentView, EditBody, MessagePage, MessageView, Posted, anchor, change_message, ids, message_view,
};
use super::problem::Problem;
use super::{ApiTags, UserAuth, id_at, parse_id, parse_if_match, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::DomainError;
use crate::domain::chat::{self, MessageChange, NewMessage, Place};
use crate::domain::paging::PageRequest;
use crate::domain::policy::Permission;
use crate::domain::tasks::{self, Priority, Task, TaskFields, TaskFilter, TaskStatus};
use crate::ids::{Id, rfc3339};
use crate::tenancy::OrgScope;

crate::problems!(TaskReadErrors: 400, 401, 403, 404, 422);
crate::problems!(TaskWriteErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422, 507);

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "TaskStatus", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum StatusView {
    Todo,
    InProgress,
    Blocked,
    Done,
    Cancelled,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "TaskPriority", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PriorityView {
    Low,
    Normal,
    High,
    Urgent,
}

mirror_enum!(StatusView <=> TaskStatus { Todo, InProgress, Blocked, Done, Cancelled });
mirror_enum!(PriorityView <=> Priority { Low, Normal, High, Urgent });

/// A task.
#[derive(Object, Debug)]
#[oai(rename = "Task")]
pub struct TaskView {
    pub id: String,
    pub title: String,
    pub description: String,
    pub status: StatusView,
    pub priority: PriorityView,
    pub assignee_ids: Vec<String>,
    pub due_at: Option<String>,
    pub labels: Vec<String>,
    pub room_id: Option<String>,
    pub channel_id: Option<String>,
    /// Tasks this one waits for.
    pub depends_on: Vec<String>,
    /// With `include=dependencies`: those tasks.
    pub dependencies: Option<Vec<TaskView>>,
    pub created_by: String,
    pub version: u64,
    /// Comments posted so far (the newest comment's number).
    pub comment_count: u64,
    /// Files attached to the task itself.
    pub attachments: Vec<AttachmentView>,
    pub created_at: String,
    pub updated_at: String,
}

fn view(t: Task, deps: Option<Vec<Task>>) -> TaskView {
    TaskView {
        id: t.id.to_string(),
        title: t.title,
        description: t.description,
        status: t.status.into(),
        priority: t.priority.into(),
        assignee_ids: t.assignees.iter().map(ToString::to_string).collect(),
        due_at: t.due_at_ms.map(rfc3339),
        labels: t.labels,
        room_id: t.room.map(|r| r.to_string()),
        channel_id: t.channel.map(|c| c.to_string()),
        depends_on: t.depends_on.iter().map(ToString::to_string).collect(),
        dependencies: deps.map(|d| d.into_iter().map(|t| view(t, None)).collect()),
        created_by: t.created_by.to_string(),
        version: t.version,
        comment_count: t.comment_seq,
        attachments: t.attachments.into_iter().map(AttachmentView::from).collect(),
        created_at: rfc3339(t.created_at_ms),
        updated_at: rfc3339(t.updated_at_ms),
    }
}

#[derive(Object, Debug)]
#[oai(rename = "TaskPage")]
pub struct TaskPage {
    pub items: Vec<TaskView>,
    pub next_cursor: Option<String>,
}

/// A new task (absent fields: the defaults).
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "NewTask", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewTaskBody {
    pub title: String,
    pub description: Option<String>,
    pub status: Option<StatusView>,
    pub priority: Option<PriorityView>,
    pub assignee_ids: Option<Vec<String>>,
    /// RFC 3339.
    pub due_at: Option<String>,
    pub labels: Option<Vec<String>>,
    pub room_id: Option<String>,
    pub channel_id: Option<String>,
    /// Files of the creator's own (uploaded first) to attach, at most 50; whoever reads the
    /// organization's tasks may then download them.
    pub attachment_ids: Option<Vec<String>>,
    /// Create it done even though tasks it depends on are open.
    pub force: Option<bool>,
}

impl From<NewTaskBody> for TaskBody {
    fn from(b: NewTaskBody) -> Self {
        Self {
            title: Some(b.title),
            description: b.description,
            status: b.status,
            priority: b.priority,
            assignee_ids: b.assignee_ids,
            due_at: b.due_at,
            labels: b.labels,
            room_id: b.room_id,
            channel_id: b.channel_id,
            attachment_ids: b.attachment_ids,
            force: b.force,
            version: None,
        }
    }
}

/// Changes to a task (absent fields: unchanged).
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "TaskFields", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    pub title: Option<String>,
    pub description: Option<String>,
    pub status: Option<StatusView>,
    pub priority: Option<PriorityView>,
    pub assignee_ids: Option<Vec<String>>,
    /// RFC 3339.
    pub due_at: Option<String>,
    pub labels: Option<Vec<String>>,
    pub room_id: Option<String>,
    pub channel_id: Option<String>,
    /// All the files the task carries: those it did not carry before must be the caller's own
    /// (uploaded first); those left out are detached.
    pub attachment_ids: Option<Vec<String>>,
    /// Mark done even though tasks it depends on are open.
    pub force: Option<bool>,
    pub version: Option<u64>,
}

#[derive(ApiResponse)]
pub enum TaskCreated {
    #[oai(status = 201)]
    Created(Json<TaskView>, #[oai(header = "Location")] String),
}

fn time_ms(s: &str, pointer: &str) -> Result<i64, DomainError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| DomainError::invalid(pointer, "invalid_time", "an RFC 3339 time"))
}

fn fields(b: TaskBody, if_match: Option<&str>) -> Result<TaskFields, DomainError> {
    let assignees = b
        .assignee_ids
        .map(|v| {
            v.iter().enumerate().map(|(i, s)| id_at(s, &format!("/assignee_ids/{i}"))).collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(TaskFields {
        title: b.title,
        description: b.description,
        status: b.status.map(TaskStatus::from),
        priority: b.priority.map(Priority::from),
        assignees,
        due_at_ms: b.due_at.map(|d| time_ms(&d, "/due_at").map(Some)).transpose()?,
        labels: b.labels,
        room: b.room_id.map(|r| id_at(&r, "/room_id").map(Some)).transpose()?,
        channel: b.channel_id.map(|c| id_at(&c, "/channel_id").map(Some)).transpose()?,
        attachments: b.attachment_ids.map(|v| ids(Some(v), "/attachment_ids")).transpose()?,
        force: b.force.unwrap_or(false),
        expected_version: parse_if_match(if_match)?.or(b.version),
    })
}

/// Comma-separated values of an enum parameter.
fn list_of<T>(v: Option<String>, name: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, DomainError> {
    let Some(s) = v else { return Ok(Vec::new()) };
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            parse(x).ok_or_else(|| {
                DomainError::invalid(&format!("?{name}"), "invalid_value", format!("unknown {name} '{x}'"))
            })
        })
        .collect()
}

/// A comment on a task.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "PostComment", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    /// 1–10,000 characters.
    pub text: String,
    /// Users to notify in their inbox.
    pub mention_ids: Option<Vec<String>>,
    /// Files of the author's own (uploaded first) to attach; whoever reads the organization's
    /// tasks may then download them.
    pub attachment_ids: Option<Vec<String>>,
}

#[derive(Default)]
pub struct TasksApi;

#[OpenApi(tag = "ApiTags::Tasks")]
#[allow(clippy::too_many_arguments)] // query parameters are arguments by the framework's design
impl TasksApi {
    /// Create a task
    ///
    /// Permission: `tasks.write`.
    #[oai(path = "/v1/tasks", method = "post", operation_id = "createTask")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<NewTaskBody>,
    ) -> Result<TaskCreated, TaskWriteErrors> {
        let p = auth.require(&app, Permission::TasksWrite).await?;
        let t = tasks::create(&app.writer, user_ctx(req, &p), p.user, fields(body.0.into(), None)?).await?;
        let location = format!("/v1/tasks/{}", t.id);
        Ok(TaskCreated::Created(Json(view(t, None)), location))
    }

    /// List tasks
    ///
    /// Every filter given must match. `status` and `priority` take comma-separated values.
    ///
    /// Permission: `tasks.read`.
    #[oai(path = "/v1/tasks", method = "get", operation_id = "listTasks")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
        /// e.g. `todo,blocked`.
        status: Query<Option<String>>,
        /// e.g. `high,urgent`.
        priority: Query<Option<String>>,
        assignee: Query<Option<String>>,
        label: Query<Option<String>>,
        room: Query<Option<String>>,
        channel: Query<Option<String>>,
        /// RFC 3339: due at or after.
        due_after: Query<Option<String>>,
        /// RFC 3339: due before.
        due_before: Query<Option<String>>,
        /// Matches title or description.
        q: Query<Option<String>>,
    ) -> Result<Json<TaskPage>, TaskReadErrors> {
        let p = auth.require(&app, Permission::TasksRead).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let parse_status = |s: &str| {
            serde_json::from_value::<StatusView>(serde_json::Value::String(s.into())).ok().map(TaskStatus::from)
        };
        let parse_priority = |s: &str| {
            serde_json::from_value::<PriorityView>(serde_json::Value::String(s.into())).ok().map(Priority::from)
        };
        let filter = TaskFilter {
            statuses: list_of(status.0, "status", parse_status)?,
            priorities: list_of(priority.0, "priority", parse_priority)?,
            assignee: assignee.0.map(|a| id_at(&a, "?assignee")).transpose()?,
            label: label.0,
            room: room.0.map(|r| id_at(&r, "?room")).transpose()?,
            channel: channel.0.map(|c| id_at(&c, "?channel")).transpose()?,
            due_after_ms: due_after.0.map(|d| time_ms(&d, "?due_after")).transpose()?,
            due_before_ms: due_before.0.map(|d| time_ms(&d, "?due_before")).transpose()?,
            text: q.0,
        };
        let page = tasks::list(&app.store, OrgScope::member(&p), page, filter).await?;
        Ok(Json(TaskPage {
            items: page.items.into_iter().map(|t| view(t, None)).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// Get a task
    ///
    /// `include=dependencies` adds the tasks it depends on.
    ///
    /// Permission: `tasks.read`.
    #[oai(path = "/v1/tasks/:task_id", method = "get", operation_id = "getTask")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        task_id: Path<String>,
        include: Query<Option<String>>,
    ) -> Result<Json<TaskView>, TaskReadErrors> {
        let p = auth.check(&app).await?;
        let deps = include.0.as_deref() == Some("dependencies");
        let (t, d) = tasks::get(&app.store, OrgScope::member(&p), parse_id(&task_id.0, "task")?, deps).await?;
        p.require(Permission::TasksRead)?;
        Ok(Json(view(t, deps.then_some(d))))
    }

    /// Update a task
    ///
    /// Marking it `done` while a task it depends on is open answers `dependencies_open`,
    /// unless `force` is set.
    ///
    /// Permission: `tasks.write`.
    #[oai(path = "/v1/tasks/:task_id", method = "patch", operation_id = "updateTask")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<TaskBody>,
    ) -> Result<Json<TaskView>, TaskWriteErrors> {
        let (p, id) = task_for(&app, &auth, &task_id.0, Permission::TasksWrite).await?;
        let t =
            tasks::update(&app.writer, user_ctx(req, &p), p.user, id, fields(body.0, if_match.0.as_deref())?).await?;
        Ok(Json(view(t, None)))
    }

    /// Delete a task
    ///
    /// Permission: `tasks.write`.
    #[oai(path = "/v1/tasks/:task_id", method = "delete", operation_id = "deleteTask")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
    ) -> Result<NoContent, TaskWriteErrors> {
        let (p, id) = task_for(&app, &auth, &task_id.0, Permission::TasksWrite).await?;
        tasks::delete(&app.writer, user_ctx(req, &p), id).await?;
        Ok(NoContent::Done)
    }

    /// Add a dependency
    ///
    /// The task waits for `depends_on_id`; an edge that would close a cycle answers
    /// `dependency_cycle`.
    ///
    /// Permission: `tasks.write`.
    #[oai(path = "/v1/tasks/:task_id/dependencies/:depends_on_id", method = "put", operation_id = "addTaskDependency")]
    async fn add_dep(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
        depends_on_id: Path<String>,
    ) -> Result<Json<TaskView>, TaskWriteErrors> {
        dependency(&app, &auth, req, &task_id.0, &depends_on_id.0, true).await
    }

    /// Remove a dependency
    ///
    /// Permission: `tasks.write`.
    #[oai(
        path = "/v1/tasks/:task_id/dependencies/:depends_on_id",
        method = "delete",
        operation_id = "removeTaskDependency"
    )]
    async fn remove_dep(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
        depends_on_id: Path<String>,
    ) -> Result<Json<TaskView>, TaskWriteErrors> {
        dependency(&app, &auth, req, &task_id.0, &depends_on_id.0, false).await
    }

    /// Comment on a task
    ///
    /// Comments are messages: edits keep earlier versions, deletion leaves a tombstone,
    /// mentions reach inboxes, and an `Idempotency-Key` makes a retry return the first comment.
    ///
    /// Permission: `tasks.write`.
    #[oai(path = "/v1/tasks/:task_id/comments", method = "post", operation_id = "postTaskComment")]
    async fn comment(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: JsonBody<CommentBody>,
    ) -> Result<Posted, TaskWriteErrors> {
        let (p, id) = task_for(&app, &auth, &task_id.0, Permission::TasksWrite).await?;
        let b = body.0;
        let new = NewMessage {
            text: b.text,
            thread_parent: None,
            mentions: ids(b.mention_ids, "/mention_ids")?,
            idempotency_key: idempotency_key.0,
            attachments: ids(b.attachment_ids, "/attachment_ids")?,
        };
        let m = chat::post(&app.writer, user_ctx(req, &p), p.user, Place::Task(id), new).await?;
        Ok(super::rendered::Rendered::of(&message_view(m)))
    }

    /// List a task's comments
    ///
    /// The newest comments, or those `before` / `after` a comment number, or `around` one.
    /// Oldest first.
    ///
    /// Permission: `tasks.read`.
    #[oai(path = "/v1/tasks/:task_id/comments", method = "get", operation_id = "listTaskComments")]
    async fn comments(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        task_id: Path<String>,
        before: Query<Option<u64>>,
        after: Query<Option<u64>>,
        around: Query<Option<u64>>,
        /// 1–100 (default 20).
        limit: Query<Option<u32>>,
    ) -> Result<Json<MessagePage>, TaskReadErrors> {
        let (p, id) = task_for(&app, &auth, &task_id.0, Permission::TasksRead).await?;
        let anchor = anchor(before.0, after.0, around.0)?;
        let limit = super::chat::history_limit(limit.0)? as usize;
        let items = chat::history(&app.store, p.org, p.user, Place::Task(id), anchor, None, limit).await?;
        Ok(Json(MessagePage { items: items.into_iter().map(message_view).collect() }))
    }

    /// Get a comment, with its earlier versions
    ///
    /// Permission: `tasks.read`.
    #[oai(path = "/v1/tasks/:task_id/comments/:comment_id", method = "get", operation_id = "getTaskComment")]
    async fn get_comment(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        task_id: Path<String>,
        comment_id: Path<String>,
    ) -> Result<Json<MessageView>, TaskReadErrors> {
        let (p, id) = task_for(&app, &auth, &task_id.0, Permission::TasksRead).await?;
        let m = chat::message(&app.store, p.org, p.user, Place::Task(id), parse_id(&comment_id.0, "message")?).await?;
        Ok(Json(message_view(m)))
    }

    /// Edit my comment
    ///
    /// Permission: `tasks.write`.
    #[oai(path = "/v1/tasks/:task_id/comments/:comment_id", method = "patch", operation_id = "editTaskComment")]
    async fn edit_comment(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
        comment_id: Path<String>,
        body: JsonBody<EditBody>,
    ) -> Result<Json<MessageView>, TaskWriteErrors> {
        change_comment(&app, &auth, req, &task_id.0, &comment_id.0, MessageChange::Edit(body.0.text)).await
    }

    /// Delete a comment
    ///
    /// Its author or an admin; a tombstone stays in its place.
    ///
    /// Permission: `tasks.write`.
    #[oai(path = "/v1/tasks/:task_id/comments/:comment_id", method = "delete", operation_id = "deleteTaskComment")]
    async fn delete_comment(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
        comment_id: Path<String>,
    ) -> Result<Json<MessageView>, TaskWriteErrors> {
        change_comment(&app, &auth, req, &task_id.0, &comment_id.0, MessageChange::Delete).await
    }

    /// React to a comment
    ///
    /// Permission: `tasks.write`.
    #[oai(
        path = "/v1/tasks/:task_id/comments/:comment_id/reactions/:emoji",
        method = "put",
        operation_id = "addTaskCommentReaction"
    )]
    async fn react_comment(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
        comment_id: Path<String>,
        emoji: Path<String>,
    ) -> Result<Json<MessageView>, TaskWriteErrors> {
        let react = MessageChange::React { emoji: emoji.0, add: true };
        change_comment(&app, &auth, req, &task_id.0, &comment_id.0, react).await
    }

    /// Take back a reaction to a comment
    ///
    /// Permission: `tasks.write`.
    #[oai(
        path = "/v1/tasks/:task_id/comments/:comment_id/reactions/:emoji",
        method = "delete",
        operation_id = "removeTaskCommentReaction"
    )]
    async fn unreact_comment(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        task_id: Path<String>,
        comment_id: Path<String>,
        emoji: Path<String>,
    ) -> Result<Json<MessageView>, TaskWriteErrors> {
        let react = MessageChange::React { emoji: emoji.0, add: false };
        change_comment(&app, &auth, req, &task_id.0, &comment_id.0, react).await
    }
}

/// The caller holding `needs`, and the task in the path (404 before 403).
async fn task_for(app: &App, auth: &UserAuth, task_id: &str, needs: Permission) -> Result<(Principal, Id), Problem> {
    let p = auth.check(app).await?;
    let id = parse_id(task_id, "task")?;
    tasks::get(&app.store, OrgScope::member(&p), id, false).await?;
    p.require(needs)?;
    Ok((p, id))
}

async fn change_comment(
    app: &App,
    auth: &UserAuth,
    req: &Request,
    task_id: &str,
    comment_id: &str,
    c: MessageChange,
) -> Result<Json<MessageView>, TaskWriteErrors> {
    let (p, id) = task_for(app, auth, task_id, Permission::TasksWrite).await?;
    let comment = parse_id(comment_id, "message")?;
    Ok(change_message(app, req, &p, Place::Task(id), comment, c).await?)
}

async fn dependency(
    app: &App,
    auth: &UserAuth,
    req: &Request,
    task: &str,
    dep: &str,
    add: bool,
) -> Result<Json<TaskView>, TaskWriteErrors> {
    let (p, id) = task_for(app, auth, task, Permission::TasksWrite).await?;
    let dep = parse_id(dep, "task")?;
    Ok(Json(view(tasks::dependency(&app.writer, user_ctx(req, &p), id, dep, add).await?, None)))
}
