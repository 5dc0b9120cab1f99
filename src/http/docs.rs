//! Shared documents: `/v1/rooms/{id}/docs` and `/v1/docs/...` (REST). The sync socket is
//! `http::yjs`.
//!
//! States and updates travel as Yjs updates (v1 encoding) in `application/octet-stream`
//! bodies.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::{BinaryBody, JsonBody};
use super::problem::Problem;
use super::{ApiTags, UserAuth, parse_id, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::docs::LiveDoc;
use crate::domain::DomainError;
use crate::domain::docs::{self, Access, Appended, DocVersion, Document, EditSession};
use crate::domain::paging::PageRequest;
use crate::domain::policy::Permission;
use crate::ids::{Id, rfc3339};
use crate::tenancy::OrgScope;

crate::problems!(DocReadErrors: 400, 401, 403, 404, 422);
crate::problems!(DocWriteErrors: 400, 401, 403, 404, 409, 413, 415, 422, 507);

/// A shared document (Yjs) in a room.
#[derive(Object, Debug)]
#[oai(rename = "Document")]
pub struct DocView {
    pub id: String,
    pub room_id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    /// Bytes stored: the snapshot plus the updates after it.
    pub stored_bytes: u64,
    /// The number of the last stored update.
    pub update_seq: u64,
    /// Updates stored after the snapshot (compaction merges them).
    pub pending_updates: u64,
    pub compactions: u64,
    /// What the caller may do: `read` or `write`.
    pub access: AccessView,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "DocumentAccess", rename_all = "snake_case")]
pub enum AccessView {
    Read,
    Write,
}

fn view(d: &Document, access: Access) -> DocView {
    DocView {
        id: d.id.to_string(),
        room_id: d.room.to_string(),
        name: d.name.clone(),
        created_by: d.created_by.to_string(),
        created_at: rfc3339(d.created_at_ms),
        updated_at: rfc3339(d.updated_at_ms),
        stored_bytes: d.stored_bytes(),
        update_seq: d.update_seq,
        pending_updates: d.tail_updates,
        compactions: d.compactions,
        access: match access {
            Access::Read => AccessView::Read,
            Access::Write => AccessView::Write,
        },
    }
}

#[derive(Object, Debug)]
#[oai(rename = "DocumentPage")]
pub struct DocPage {
    pub items: Vec<DocView>,
    pub next_cursor: Option<String>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "NewDocument")]
#[serde(deny_unknown_fields)]
pub struct NewDocBody {
    /// 1–200 characters.
    pub name: String,
}

#[derive(ApiResponse)]
pub enum DocCreated {
    #[oai(status = 201)]
    Created(Json<DocView>, #[oai(header = "Location")] String),
}

/// What an applied update did.
#[derive(Object, Debug)]
#[oai(rename = "AppliedUpdate")]
pub struct AppliedView {
    /// The document's last stored update number now (unchanged when the update was empty).
    pub update_seq: u64,
    /// Whether anything was stored (an empty update stores nothing).
    pub stored: bool,
}

/// A named version: the document's state saved under a label.
#[derive(Object, Debug)]
#[oai(rename = "DocumentVersion")]
pub struct VersionView {
    pub id: String,
    pub doc_id: String,
    pub label: String,
    pub created_by: String,
    pub created_at: String,
    pub bytes: u64,
    /// The document's update number the state was taken at.
    pub update_seq: u64,
}

fn version_view(v: DocVersion) -> VersionView {
    VersionView {
        id: v.id.to_string(),
        doc_id: v.doc.to_string(),
        label: v.label,
        created_by: v.created_by.to_string(),
        created_at: rfc3339(v.created_at_ms),
        bytes: v.bytes,
        update_seq: v.update_seq,
    }
}

#[derive(Object, Debug)]
#[oai(rename = "DocumentVersionPage")]
pub struct VersionPage {
    pub items: Vec<VersionView>,
    pub next_cursor: Option<String>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "NewDocumentVersion")]
#[serde(deny_unknown_fields)]
pub struct NewVersionBody {
    /// 1–200 characters.
    pub label: String,
}

#[derive(ApiResponse)]
pub enum VersionCreated {
    #[oai(status = 201)]
    Created(Json<VersionView>, #[oai(header = "Location")] String),
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "RestoreMode", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// A new document in the same room, holding the version's state.
    NewDocument,
    /// A new update on this document that makes its content the version's again (texts,
    /// maps and arrays; everyone connected sees it like any edit).
    Update,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "RestoreVersion")]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    pub mode: RestoreMode,
    /// The new document's name (`new_document`; default: the version's label).
    pub name: Option<String>,
}

#[derive(ApiResponse)]
pub enum Restored {
    /// The document, changed by a new update.
    #[oai(status = 200)]
    Updated(Json<DocView>),
    /// The new document.
    #[oai(status = 201)]
    Created(Json<DocView>, #[oai(header = "Location")] String),
}

#[derive(Default)]
pub struct DocsApi;

#[OpenApi(tag = "ApiTags::Docs")]
impl DocsApi {
    /// Create a document in a room.
    ///
    /// Permission: `rooms.read`. Room role: `member` (joined; the room active).
    #[oai(path = "/v1/rooms/:room_id/docs", method = "post", operation_id = "createDocument")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
        body: JsonBody<NewDocBody>,
    ) -> Result<DocCreated, DocWriteErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        let caps = app.docs.caps();
        let d = docs::create(&app.writer, user_ctx(req, &p), p.user, room, body.0.name, None, caps).await?;
        let location = format!("/v1/docs/{}", d.id);
        Ok(DocCreated::Created(Json(view(&d, Access::Write)), location))
    }

    /// A room's documents, oldest first.
    ///
    /// Permission: `rooms.read` (and to see the room).
    #[oai(path = "/v1/rooms/:room_id/docs", method = "get", operation_id = "listDocuments")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<DocPage>, DocReadErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let room = parse_id(&room_id.0, "room")?;
        let scope = OrgScope::member(&p);
        let (page, access) = docs::list(&app.store, scope, p.user, room, page).await?;
        let items = page.items.iter().map(|d| view(d, access)).collect();
        Ok(Json(DocPage { items, next_cursor: page.next_cursor }))
    }

    /// A document's metadata.
    ///
    /// Permission: `rooms.read` (and to see the document's room).
    #[oai(path = "/v1/docs/:doc_id", method = "get", operation_id = "getDocument")]
    async fn get(&self, app: Data<&App>, auth: UserAuth, doc_id: Path<String>) -> Result<Json<DocView>, DocReadErrors> {
        let (_, _, d, access) = doc_for(&app, &auth, &doc_id.0).await?;
        Ok(Json(view(&d, access)))
    }

    /// Delete a document (soft: it disappears from lists and reads).
    ///
    /// Permission: `rooms.read`. Room role: `moderator` — or `member` for the document's
    /// creator.
    #[oai(path = "/v1/docs/:doc_id", method = "delete", operation_id = "deleteDocument")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        doc_id: Path<String>,
    ) -> Result<NoContent, DocWriteErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        docs::delete(&app.writer, user_ctx(req, &p), p.user, parse_id(&doc_id.0, "document")?).await?;
        Ok(NoContent::Done)
    }

    /// The document's state as one Yjs update (v1), or — given the caller's state vector
    /// (`state_vector`, base64url) — only what that state lacks.
    ///
    /// Permission: `rooms.read` (and to see the document's room).
    #[oai(path = "/v1/docs/:doc_id/state", method = "get", operation_id = "getDocumentState")]
    async fn state(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        doc_id: Path<String>,
        state_vector: Query<Option<String>>,
    ) -> Result<Binary<Vec<u8>>, DocReadErrors> {
        let (_, scope, d, _) = doc_for(&app, &auth, &doc_id.0).await?;
        let sv = match state_vector.0.as_deref() {
            None => yrs::StateVector::default(),
            Some(s) => URL_SAFE_NO_PAD.decode(s).ok().and_then(|b| crate::docs::v1::state_vector(&b).ok()).ok_or_else(
                || DomainError::invalid("/state_vector", "invalid_state_vector", "base64url of a Yjs state vector"),
            )?,
        };
        let live = app.docs.open(scope, d.id).await?;
        Ok(Binary(app.docs.diff(&live, sv).await?))
    }

    /// The document's top-level shared types as JSON: texts as strings, maps as objects,
    /// arrays as arrays, XML as its string form.
    ///
    /// Permission: `rooms.read` (and to see the document's room).
    #[oai(path = "/v1/docs/:doc_id/json", method = "get", operation_id = "getDocumentJson")]
    async fn json(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        doc_id: Path<String>,
    ) -> Result<Json<serde_json::Value>, DocReadErrors> {
        let (_, scope, d, _) = doc_for(&app, &auth, &doc_id.0).await?;
        let live = app.docs.open(scope, d.id).await?;
        Ok(Json(app.docs.json(&live).await?))
    }

    /// Apply a Yjs update (v1) — for services and agents without a socket. It is stored
    /// durably before this answers and before anyone connected sees it.
    ///
    /// Permission: `rooms.read`. Room role: `member` (joined; the room active).
    #[oai(path = "/v1/docs/:doc_id/updates", method = "post", operation_id = "applyDocumentUpdate")]
    async fn apply(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        doc_id: Path<String>,
        body: BinaryBody,
    ) -> Result<Json<AppliedView>, DocWriteErrors> {
        let (p, scope, d, access) = doc_for(&app, &auth, &doc_id.0).await?;
        let d = writable(d, access)?;
        let live = app.docs.open(scope, d.id).await?;
        let applied = apply_update(&app, req, &p, &live, body.0).await?;
        Ok(Json(match applied {
            Some(a) => AppliedView { update_seq: a.update_seq, stored: true },
            None => AppliedView { update_seq: d.update_seq, stored: false },
        }))
    }

    /// Save the document's current state as a named version.
    ///
    /// Permission: `rooms.read`. Room role: `member` (joined; the room active).
    #[oai(path = "/v1/docs/:doc_id/versions", method = "post", operation_id = "createDocumentVersion")]
    async fn save_version(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        doc_id: Path<String>,
        body: JsonBody<NewVersionBody>,
    ) -> Result<VersionCreated, DocWriteErrors> {
        let (p, scope, d, access) = doc_for(&app, &auth, &doc_id.0).await?;
        let d = writable(d, access)?;
        let id = d.id;
        let live = app.docs.open(scope, id).await?;
        let state = app.docs.diff(&live, yrs::StateVector::default()).await?;
        let caps = app.docs.caps();
        let v = docs::save_version(&app.writer, user_ctx(req, &p), p.user, id, body.0.label, state, d.update_seq, caps)
            .await?;
        let location = format!("/v1/docs/{id}/versions/{}", v.id);
        Ok(VersionCreated::Created(Json(version_view(v)), location))
    }

    /// A document's versions, oldest first.
    ///
    /// Permission: `rooms.read` (and to see the document's room).
    #[oai(path = "/v1/docs/:doc_id/versions", method = "get", operation_id = "listDocumentVersions")]
    async fn versions(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        doc_id: Path<String>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<VersionPage>, DocReadErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let id = parse_id(&doc_id.0, "document")?;
        let page = docs::list_versions(&app.store, OrgScope::member(&p), p.user, id, page).await?;
        Ok(Json(VersionPage {
            items: page.items.into_iter().map(version_view).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// A version's state as one Yjs update (v1).
    ///
    /// Permission: `rooms.read` (and to see the document's room).
    #[oai(
        path = "/v1/docs/:doc_id/versions/:version_id/state",
        method = "get",
        operation_id = "getDocumentVersionState"
    )]
    async fn version_state(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        doc_id: Path<String>,
        version_id: Path<String>,
    ) -> Result<Binary<Vec<u8>>, DocReadErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let (id, vid) = (parse_id(&doc_id.0, "document")?, parse_id(&version_id.0, "version")?);
        let (_, state) = docs::version(&app.store, OrgScope::member(&p), p.user, id, vid).await?;
        Ok(Binary(state))
    }

    /// Restore a version: as a new document in the same room, or as a new update that makes
    /// this document's content the version's again.
    ///
    /// Permission: `rooms.read`. Room role: `member` (joined; the room active).
    #[oai(
        path = "/v1/docs/:doc_id/versions/:version_id/restore",
        method = "post",
        operation_id = "restoreDocumentVersion"
    )]
    async fn restore(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        doc_id: Path<String>,
        version_id: Path<String>,
        body: JsonBody<RestoreBody>,
    ) -> Result<Restored, DocWriteErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let scope = OrgScope::member(&p);
        let (id, vid) = (parse_id(&doc_id.0, "document")?, parse_id(&version_id.0, "version")?);
        let (v, state) = docs::version(&app.store, scope, p.user, id, vid).await?;
        let (d, access) = docs::get(&app.store, scope, p.user, id)?;
        let d = writable(d, access)?;
        let caps = app.docs.caps();
        match body.0.mode {
            RestoreMode::NewDocument => {
                let name = body.0.name.unwrap_or(v.label);
                let n = docs::create(&app.writer, user_ctx(req, &p), p.user, d.room, name, Some(state), caps).await?;
                let location = format!("/v1/docs/{}", n.id);
                Ok(Restored::Created(Json(view(&n, Access::Write)), location))
            }
            RestoreMode::Update => {
                let live = app.docs.open(scope, id).await?;
                let update = app.docs.revert_to(&live, state).await?;
                apply_update(&app, req, &p, &live, update).await?;
                let (d, access) = docs::get(&app.store, scope, p.user, id)?;
                Ok(Restored::Updated(Json(view(&d, access))))
            }
        }
    }
}

/// The caller (holding `rooms.read`), the scope they work in, and the document in the path
/// with what they may do with it.
async fn doc_for(app: &App, auth: &UserAuth, doc_id: &str) -> Result<(Principal, OrgScope, Document, Access), Problem> {
    let p = auth.require(app, Permission::RoomsRead).await?;
    let scope = OrgScope::member(&p);
    let (d, access) = docs::get(&app.store, scope, p.user, parse_id(doc_id, "document")?)?;
    Ok((p, scope, d, access))
}

/// The document, if the caller may change it.
fn writable(d: Document, access: Access) -> Result<Document, DomainError> {
    if access == Access::Write { Ok(d) } else { Err(docs::read_only()) }
}

/// Applies one update made over REST (its own edit session), durably.
async fn apply_update(
    app: &App,
    req: &Request,
    p: &Principal,
    live: &Arc<LiveDoc>,
    update: Vec<u8>,
) -> Result<Option<Appended>, DomainError> {
    let session = EditSession { id: Id::new(), via: "rest" };
    app.docs.apply(live, user_ctx(req, p), p.user, vec![update], None, Some(session)).await
}
