//! `/v1/orgs`: operators manage organizations.

use std::collections::BTreeMap;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::body::JsonBody;
use super::{ApiTags, OperatorAuth, mutation_ctx, parse_if_match};
use crate::app::App;
use crate::domain::orgs::{self, NewOrg, OrgPatch, OrgStatus, Organization};
use crate::domain::paging::PageRequest;
use crate::ids::{Id, rfc3339};
use crate::tenancy::OrgScope;

crate::problems!(OrgCreateErrors: 400, 401, 409, 413, 415, 422, 507);
crate::problems!(OrgReadErrors: 400, 401, 404);
crate::problems!(OrgListErrors: 400, 401, 422);
crate::problems!(OrgUpdateErrors: 400, 401, 404, 412, 413, 415, 422, 507);
crate::problems!(OrgActionErrors: 401, 404, 507);

/// An organization: a tenant of this instance.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Organization")]
pub struct OrgView {
    /// UUIDv7.
    pub id: String,
    /// Unique, URL-safe name used at login.
    pub slug: String,
    pub name: String,
    pub status: OrgStatusView,
    /// Free-form settings (at most 16 KiB of JSON).
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Raised by every change; send it back as `If-Match` to update safely.
    pub version: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "OrganizationStatus", rename_all = "snake_case")]
pub enum OrgStatusView {
    Active,
    Suspended,
}

/// A page of organizations.
#[derive(Object, Debug)]
#[oai(rename = "OrganizationPage")]
pub struct OrgPage {
    pub items: Vec<OrgView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Creates an organization.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "CreateOrganization", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgBody {
    /// 2–63 characters of a-z, 0-9 and '-', not starting or ending with '-'. Unique.
    pub slug: String,
    /// 1–200 characters.
    pub name: String,
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
}

/// Changes an organization; absent fields stay as they are.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "UpdateOrganization", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrgBody {
    pub name: Option<String>,
    /// Replaces the whole settings object.
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    /// The version this change is based on (alternative to `If-Match`).
    pub version: Option<u64>,
}

#[derive(ApiResponse)]
pub enum OrgCreated {
    /// Created.
    #[oai(status = 201)]
    Created(Json<OrgView>, #[oai(header = "Location")] String, #[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
pub enum OrgOk {
    #[oai(status = 200)]
    Ok(Json<OrgView>, #[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
pub enum OrgDeleted {
    /// Deleted.
    #[oai(status = 204)]
    NoContent,
}

#[derive(Default)]
pub struct OrgsApi;

#[OpenApi(tag = "ApiTags::Organizations")]
impl OrgsApi {
    /// Create an organization
    #[oai(path = "/v1/orgs", method = "post", operation_id = "createOrganization")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        body: JsonBody<CreateOrgBody>,
    ) -> Result<OrgCreated, OrgCreateErrors> {
        let op = auth.check(&app).await?;
        let b = body.0;
        let scope = OrgScope::operator(Id::new(), &op);
        let new = NewOrg { slug: b.slug, name: b.name, settings: b.settings.map(|s| s.into_iter().collect()) };
        let org = orgs::create(&app.writer, mutation_ctx(req, scope, op.actor()), new).await?;
        let location = format!("/v1/orgs/{}", org.id);
        let etag = super::etag(org.version);
        Ok(OrgCreated::Created(Json(view(org)), location, etag))
    }

    /// List organizations
    #[oai(path = "/v1/orgs", method = "get", operation_id = "listOrganizations")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<u32>>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
        /// Only organizations with this status.
        status: Query<Option<OrgStatusView>>,
    ) -> Result<Json<OrgPage>, OrgListErrors> {
        auth.check(&app).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let status = status.0.map(|s| match s {
            OrgStatusView::Active => OrgStatus::Active,
            OrgStatusView::Suspended => OrgStatus::Suspended,
        });
        let page = orgs::list(&app.store, page, status).await?;
        Ok(Json(OrgPage { items: page.items.into_iter().map(view).collect(), next_cursor: page.next_cursor }))
    }

    /// Get an organization
    #[oai(path = "/v1/orgs/:org_id", method = "get", operation_id = "getOrganization")]
    async fn get(&self, app: Data<&App>, auth: OperatorAuth, org_id: Path<String>) -> Result<OrgOk, OrgReadErrors> {
        let (_, scope) = auth.org_scope(&app, &org_id.0).await?;
        Ok(ok(orgs::get(&app.store, scope).await?))
    }

    /// Update an organization
    #[oai(path = "/v1/orgs/:org_id", method = "patch", operation_id = "updateOrganization")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        org_id: Path<String>,
        /// The `ETag` (version) the change is based on; 412 if it moved on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UpdateOrgBody>,
    ) -> Result<OrgOk, OrgUpdateErrors> {
        let (op, scope) = auth.org_scope(&app, &org_id.0).await?;
        let b = body.0;
        let expected_version = parse_if_match(if_match.0.as_deref())?.or(b.version);
        let patch = OrgPatch { name: b.name, settings: b.settings.map(|s| s.into_iter().collect()), expected_version };
        Ok(ok(orgs::update(&app.writer, mutation_ctx(req, scope, op.actor()), patch).await?))
    }

    /// Suspend an organization
    ///
    /// Its members lose access until it is reactivated; nothing is deleted.
    #[oai(path = "/v1/orgs/:org_id/suspend", method = "post", operation_id = "suspendOrganization")]
    async fn suspend(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        org_id: Path<String>,
    ) -> Result<OrgOk, OrgActionErrors> {
        set_suspended(&app, auth, req, &org_id.0, true).await
    }

    /// Reactivate a suspended organization
    #[oai(path = "/v1/orgs/:org_id/reactivate", method = "post", operation_id = "reactivateOrganization")]
    async fn reactivate(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        org_id: Path<String>,
    ) -> Result<OrgOk, OrgActionErrors> {
        set_suspended(&app, auth, req, &org_id.0, false).await
    }

    /// Delete an organization
    ///
    /// It disappears from the API and its slug becomes free; its audit chain is kept.
    #[oai(path = "/v1/orgs/:org_id", method = "delete", operation_id = "deleteOrganization")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        org_id: Path<String>,
    ) -> Result<OrgDeleted, OrgActionErrors> {
        let (op, scope) = auth.org_scope(&app, &org_id.0).await?;
        orgs::delete(&app.writer, mutation_ctx(req, scope, op.actor())).await?;
        Ok(OrgDeleted::NoContent)
    }
}

/// Invites the first users of an organization (operators only).
#[derive(Object, Debug, serde::Deserialize)]
#[oai(rename = "OperatorInvitation", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct OperatorInviteBody {
    pub email: String,
    pub role: super::users::RoleView,
    pub display_name: Option<String>,
}

#[derive(ApiResponse)]
pub enum OperatorInvited {
    #[oai(status = 201)]
    Created(Json<super::users::InvitationView>),
}

crate::problems!(OrgInviteErrors: 400, 401, 404, 409, 413, 415, 422, 507);

#[derive(Default)]
pub struct OrgInvitesApi;

#[OpenApi(tag = "ApiTags::Organizations")]
impl OrgInvitesApi {
    /// Invite a user into an organization
    ///
    /// How an operator brings in an organization's first owner or admin.
    #[oai(path = "/v1/orgs/:org_id/invitations", method = "post", operation_id = "createOrganizationInvitation")]
    async fn invite(
        &self,
        app: Data<&App>,
        auth: OperatorAuth,
        req: &Request,
        org_id: Path<String>,
        body: JsonBody<OperatorInviteBody>,
    ) -> Result<OperatorInvited, OrgInviteErrors> {
        let (op, scope) = auth.org_scope(&app, &org_id.0).await?;
        orgs::get(&app.store, scope).await?;
        let b = body.0;
        let new = crate::domain::users::NewInvite { email: b.email, role: b.role.into(), display_name: b.display_name };
        let (user, token) =
            crate::domain::users::invite(&app.writer, mutation_ctx(req, scope, op.actor()), None, new).await?;
        Ok(OperatorInvited::Created(Json(super::users::InvitationView { user: super::users::user_view(user), token })))
    }
}

async fn set_suspended(
    app: &App,
    auth: OperatorAuth,
    req: &Request,
    org_id: &str,
    suspended: bool,
) -> Result<OrgOk, OrgActionErrors> {
    let (op, scope) = auth.org_scope(app, org_id).await?;
    Ok(ok(orgs::set_suspended(&app.writer, mutation_ctx(req, scope, op.actor()), suspended).await?))
}

/// The organization with its version as the `ETag`.
fn ok(org: Organization) -> OrgOk {
    let etag = super::etag(org.version);
    OrgOk::Ok(Json(view(org)), etag)
}

fn view(o: Organization) -> OrgView {
    OrgView {
        id: o.id.to_string(),
        slug: o.slug,
        name: o.name,
        status: match o.status {
            OrgStatus::Suspended => OrgStatusView::Suspended,
            // Deleted organizations are never shown.
            OrgStatus::Active | OrgStatus::Deleted => OrgStatusView::Active,
        },
        settings: o.settings.into_iter().collect(),
        version: o.version,
        created_at: rfc3339(o.created_at_ms),
        updated_at: rfc3339(o.updated_at_ms),
    }
}
