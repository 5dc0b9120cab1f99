//! `/v1/api-keys`: users make keys for their scripts; admins make service-account keys and see
//! and revoke every key of the organization.

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::users::RoleView;
use super::{ApiTags, UserAuth, parse_id, user_ctx};
use crate::app::App;
use crate::domain::DomainError;
use crate::domain::api_keys::{self, ApiKey, NewKey};
use crate::domain::policy::{Permission, Role};
use crate::ids::rfc3339;
use crate::tenancy::OrgScope;

crate::problems!(KeyReadErrors: 400, 401, 403);
crate::problems!(KeyWriteErrors: 400, 401, 403, 404, 409, 413, 415, 422, 507);

/// Makes an API key.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "CreateApiKey", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    pub name: String,
    /// Permissions the key may use (each must be held by the key's role), e.g. `users.read`.
    pub scopes: Vec<String>,
    /// RFC 3339; absent: the key does not expire.
    pub expires_at: Option<String>,
    /// Make a service-account key with this role instead of a key acting as you (admins).
    pub service_account_role: Option<RoleView>,
}

/// An API key (without its secret).
#[derive(Object, Debug)]
#[oai(rename = "ApiKey")]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// The user it acts as; absent for a service account.
    pub user_id: Option<String>,
    pub service_account_role: Option<RoleView>,
    pub scopes: Vec<String>,
    /// Keys read `oak_<org>_<id>_…`.
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "CreatedApiKey")]
pub struct CreatedKeyView {
    pub key: KeyView,
    /// Shown only now; send as `Authorization: Bearer …`.
    pub token: String,
}

#[derive(Object, Debug)]
#[oai(rename = "ApiKeyList")]
pub struct KeyList {
    pub items: Vec<KeyView>,
}

#[derive(ApiResponse)]
pub enum KeyCreated {
    #[oai(status = 201)]
    Created(Json<CreatedKeyView>),
}

#[derive(Default)]
pub struct ApiKeysApi;

#[OpenApi(tag = "ApiTags::Me")]
impl ApiKeysApi {
    /// Create an API key
    ///
    /// A key acting as you (never beyond your current role), or, for admins, a service-account
    /// key with a role of its own.
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/api-keys", method = "post", operation_id = "createApiKey")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<CreateKeyBody>,
    ) -> Result<KeyCreated, KeyWriteErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        let b = body.0;
        let expires_at_ms = b
            .expires_at
            .map(|s| {
                time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                    .map_err(|_| DomainError::invalid("/expires_at", "invalid_time", "an RFC 3339 time"))
            })
            .transpose()?;
        let new = NewKey {
            name: b.name,
            scopes: b.scopes,
            expires_at_ms,
            service_role: b.service_account_role.map(Role::from),
        };
        let (key, token) = api_keys::create(&app.writer, user_ctx(req, &p), p.user, p.role, new).await?;
        Ok(KeyCreated::Created(Json(CreatedKeyView { key: view(key, p.org), token })))
    }

    /// List API keys
    ///
    /// Your own keys; with `all=true` (admins), every key of the organization.
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/api-keys", method = "get", operation_id = "listApiKeys")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        all: Query<Option<bool>>,
    ) -> Result<Json<KeyList>, KeyReadErrors> {
        let p = auth.require(&app, Permission::SelfManage).await?;
        let manager = all.0.unwrap_or(false);
        if manager {
            p.require(Permission::UsersManage)?;
        }
        let keys = api_keys::list(&app.store, OrgScope::member(&p), p.user, manager).await?;
        Ok(Json(KeyList { items: keys.into_iter().map(|k| view(k, p.org)).collect() }))
    }

    /// Revoke an API key
    ///
    /// Your own, or (admins) any key of the organization.
    ///
    /// Permission: `self.manage`.
    #[oai(path = "/v1/api-keys/:key_id", method = "delete", operation_id = "revokeApiKey")]
    async fn revoke(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        key_id: Path<String>,
    ) -> Result<NoContent, KeyWriteErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&key_id.0, "API key")?;
        p.require(Permission::SelfManage)?;
        let manager = p.require(Permission::UsersManage).is_ok();
        api_keys::revoke(&app.writer, user_ctx(req, &p), p.user, manager, id).await?;
        Ok(NoContent::Done)
    }
}

fn view(k: ApiKey, org: crate::ids::Id) -> KeyView {
    KeyView {
        id: k.id.to_string(),
        name: k.name,
        user_id: k.user.map(|u| u.to_string()),
        service_account_role: k.service_role.map(RoleView::from),
        scopes: k.scopes,
        prefix: format!("{}{}_{}_", api_keys::PREFIX, org.0.simple(), k.id.0.simple()),
        created_at: rfc3339(k.created_at_ms),
        expires_at: k.expires_at_ms.map(rfc3339),
        last_used_at: k.last_used_at_ms.map(rfc3339),
    }
}
