//! `/v1/webhooks`: an organization's webhook endpoints, their signing secrets, their logs of
//! delivery attempts, resending, recovering and test messages.

use std::collections::BTreeMap;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::problem::Problem;
use super::{ApiTags, UserAuth, parse_id, parse_if_match, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::DomainError;
use crate::domain::paging::PageRequest;
use crate::domain::policy::Permission;
use crate::domain::webhooks::{self, Attempt, DisabledReason, Endpoint, EndpointPatch, NewEndpoint, Outcome, Trigger};
use crate::ids::{Id, rfc3339};
use crate::tenancy::OrgScope;
use crate::webhooks::signing::Secret;

crate::problems!(HookReadErrors: 400, 401, 403, 404, 422);
crate::problems!(HookWriteErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422, 507);

/// How long the secrets a rotation replaces go on signing when the request does not say.
const OVERLAP_DEFAULT_S: u64 = 86_400;

/// A new webhook endpoint.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "NewWebhookEndpoint", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewEndpointBody {
    /// Where deliveries are POSTed (http or https). Loopback, private and link-local addresses
    /// are refused unless the operator allows them (`egress.allow_cidrs`).
    pub url: String,
    pub description: Option<String>,
    /// Event types to receive: names (`message.created`) or prefixes ending in `*`
    /// (`message.*`, `*`). Absent or empty: every type.
    pub event_types: Option<Vec<String>>,
    /// Topics to receive: `org`, `room:<id>`, `channel:<id>`, `doc:<id>` or a prefix ending in
    /// `*` (`room:*`). Absent or empty: every topic shared with the whole organization.
    pub topics: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Deliveries per second at most; absent: as fast as the receiver answers.
    pub rate_limit_per_s: Option<u32>,
    /// Headers sent with every delivery (not `webhook-*`, `content-type` and the like).
    pub headers: Option<BTreeMap<String, String>>,
}

/// Changes to a webhook endpoint: each field present is replaced.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "WebhookEndpointChanges", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PatchEndpointBody {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub topics: Option<Vec<String>>,
    /// Turning a switched-off endpoint on resumes its deliveries where they stopped.
    pub enabled: Option<bool>,
    /// 0 removes the limit.
    pub rate_limit_per_s: Option<u32>,
    pub headers: Option<BTreeMap<String, String>>,
    /// The version this change is based on (or `If-Match`).
    pub version: Option<u64>,
}

/// Why the server switched an endpoint off.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "WebhookDisabledReason", rename_all = "snake_case")]
pub enum DisabledReasonView {
    /// Every attempt failed for `webhooks.disable_after_ms`.
    Failing,
    /// Its backlog reached `webhooks.backlog_per_endpoint_max`.
    BacklogFull,
}

mirror_enum!(DisabledReasonView <=> DisabledReason { Failing, BacklogFull });

/// A signing secret (never its key, which is shown once).
#[derive(Object, Debug)]
#[oai(rename = "WebhookSecretInfo")]
pub struct SecretView {
    pub id: String,
    pub created_at: String,
    /// When it stops signing (a newer secret replaced it).
    pub expires_at: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "WebhookEndpoint")]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub topics: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<DisabledReasonView>,
    pub rate_limit_per_s: Option<u32>,
    pub headers: BTreeMap<String, String>,
    /// Newest first; every one not expired signs each delivery.
    pub secrets: Vec<SecretView>,
    /// Messages waiting to be delivered.
    pub backlog: u64,
    /// Since when every attempt has failed.
    pub failing_since: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "WebhookEndpointList")]
pub struct EndpointList {
    pub items: Vec<EndpointView>,
}

/// An endpoint and its new signing secret, shown only now.
#[derive(Object, Debug)]
#[oai(rename = "WebhookEndpointWithSecret")]
pub struct WithSecretView {
    pub endpoint: EndpointView,
    /// `whsec_…`: give it to the receiver's Standard Webhooks library.
    pub secret: String,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "RotateWebhookSecret", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Seconds the secrets replaced go on signing beside the new one (default 86400; 0 stops
    /// them now).
    pub overlap_s: Option<u64>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "RecoverWebhookMessages", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RecoverBody {
    /// RFC 3339: every event since then that the log still holds and the endpoint's filters
    /// take is queued again, in commit order.
    pub since: String,
}

#[derive(Object, Debug)]
#[oai(rename = "WebhookRecovery")]
pub struct RecoveredView {
    pub queued: u64,
    /// More would have been queued than the endpoint's backlog has room for.
    pub truncated: bool,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "WebhookAttemptOutcome", rename_all = "snake_case")]
pub enum OutcomeView {
    /// The receiver answered 2xx.
    Delivered,
    /// It did not; another attempt is scheduled (`next_attempt_at`).
    Failed,
    /// It did not, and no attempt is left.
    Exhausted,
}

mirror_enum!(OutcomeView <=> Outcome { Delivered, Failed, Exhausted });

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "WebhookAttemptTrigger", rename_all = "snake_case")]
pub enum TriggerView {
    Event,
    Resend,
    Recover,
    Test,
}

mirror_enum!(TriggerView <=> Trigger { Event, Resend, Recover, Test });

/// One delivery attempt.
#[derive(Object, Debug)]
#[oai(rename = "WebhookAttempt")]
pub struct AttemptView {
    pub id: String,
    /// The `webhook-id` sent: the same for every attempt at a message.
    pub msg_id: String,
    #[oai(rename = "type")]
    pub kind: String,
    pub trigger: TriggerView,
    /// 1 for the first attempt at a message.
    pub attempt: u32,
    pub at: String,
    pub outcome: OutcomeView,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// Why there was no answer (refused before connecting, timeout, connection failed).
    pub error: Option<String>,
    pub latency_ms: u64,
    /// The start of the receiver's answer (1 KiB at most).
    pub response: String,
    pub next_attempt_at: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "WebhookAttemptPage")]
pub struct AttemptPage {
    pub items: Vec<AttemptView>,
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum EndpointCreated {
    #[oai(status = 201)]
    Created(Json<WithSecretView>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum Queued {
    /// Queued: the endpoint's deliverer sends it in order.
    #[oai(status = 202)]
    Accepted,
}

#[derive(ApiResponse)]
pub enum Recovered {
    #[oai(status = 202)]
    Accepted(Json<RecoveredView>),
}

#[derive(Default)]
pub struct WebhooksApi;

/// The caller, the endpoint (404 unless it is in the caller's organization), and then the
/// permission: someone of another organization learns nothing, not even that it exists.
async fn endpoint_for(app: &App, auth: &UserAuth, id: &str) -> Result<(Principal, Endpoint), Problem> {
    let p = auth.check(app).await?;
    let e = webhooks::get(&app.store, OrgScope::member(&p), parse_id(id, "webhook endpoint")?)?;
    p.require(Permission::WebhooksManage)?;
    Ok((p, e))
}

fn view(app: &App, org: Id, e: Endpoint) -> EndpointView {
    EndpointView {
        backlog: app.webhooks.backlog(org, e.id) as u64,
        id: e.id.to_string(),
        url: e.url,
        description: e.description,
        event_types: e.event_types,
        topics: e.topics,
        enabled: e.enabled,
        disabled_reason: e.disabled_reason.map(DisabledReasonView::from),
        rate_limit_per_s: e.rate_per_s,
        headers: e.headers,
        secrets: e
            .secrets
            .into_iter()
            .map(|s| SecretView {
                id: s.id.to_string(),
                created_at: rfc3339(s.created_at_ms),
                expires_at: s.expires_at_ms.map(rfc3339),
            })
            .collect(),
        failing_since: e.failing_since_ms.map(rfc3339),
        created_by: e.created_by.to_string(),
        created_at: rfc3339(e.created_at_ms),
        updated_at: rfc3339(e.updated_at_ms),
        version: e.version,
    }
}

fn attempt_view(a: Attempt) -> AttemptView {
    AttemptView {
        id: a.id.to_string(),
        msg_id: a.msg_id,
        kind: a.kind,
        trigger: a.trigger.into(),
        attempt: a.attempt,
        at: rfc3339(a.at_ms),
        outcome: a.outcome.into(),
        status: a.status,
        error: a.error,
        latency_ms: a.latency_ms,
        response: a.response,
        next_attempt_at: a.next_at_ms.map(rfc3339),
    }
}

fn time_ms(s: &str, pointer: &str) -> Result<i64, DomainError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MIN))
        .map_err(|_| DomainError::invalid(pointer, "invalid_time", "an RFC 3339 time"))
}

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Register a webhook endpoint
    ///
    /// Events of the organization that its filters take are POSTed to it, signed the Standard
    /// Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature`), in commit order,
    /// retried with backoff. The signing secret is in this answer only.
    ///
    /// Permission: `webhooks.manage`.
    #[oai(path = "/v1/webhooks/endpoints", method = "post", operation_id = "createWebhookEndpoint")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<NewEndpointBody>,
    ) -> Result<EndpointCreated, HookWriteErrors> {
        let p = auth.require(&app, Permission::WebhooksManage).await?;
        let b = body.0;
        let new = NewEndpoint {
            url: b.url,
            description: b.description.unwrap_or_default(),
            event_types: b.event_types.unwrap_or_default(),
            topics: b.topics.unwrap_or_default(),
            enabled: b.enabled.unwrap_or(true),
            rate_per_s: b.rate_limit_per_s,
            headers: b.headers.unwrap_or_default(),
        };
        let policy = app.egress.policy();
        let cap = app.config.webhooks.endpoints_per_org_max;
        let (e, key) = webhooks::create(&app.writer, &app.vault(), policy, user_ctx(req, &p), p.user, new, cap).await?;
        let location = format!("/v1/webhooks/endpoints/{}", e.id);
        let secret = Secret::from_key(key).written();
        Ok(EndpointCreated::Created(Json(WithSecretView { endpoint: view(&app, p.org, e), secret }), location))
    }

    /// List webhook endpoints
    ///
    /// Permission: `webhooks.manage`.
    #[oai(path = "/v1/webhooks/endpoints", method = "get", operation_id = "listWebhookEndpoints")]
    async fn list(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<EndpointList>, HookReadErrors> {
        let p = auth.require(&app, Permission::WebhooksManage).await?;
        let all = webhooks::list(&app.store, OrgScope::member(&p), app.config.webhooks.endpoints_per_org_max).await?;
        Ok(Json(EndpointList { items: all.into_iter().map(|e| view(&app, p.org, e)).collect() }))
    }

    /// Get a webhook endpoint
    ///
    /// Permission: `webhooks.manage`.
    #[oai(path = "/v1/webhooks/endpoints/:endpoint_id", method = "get", operation_id = "getWebhookEndpoint")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        endpoint_id: Path<String>,
    ) -> Result<Json<EndpointView>, HookReadErrors> {
        let (p, e) = endpoint_for(&app, &auth, &endpoint_id.0).await?;
        Ok(Json(view(&app, p.org, e)))
    }

    /// Change a webhook endpoint
    ///
    /// Turning a switched-off endpoint on (`enabled: true`) resumes its deliveries where they
    /// stopped; `recover` replays what it missed meanwhile.
    ///
    /// Permission: `webhooks.manage`.
    #[oai(path = "/v1/webhooks/endpoints/:endpoint_id", method = "patch", operation_id = "updateWebhookEndpoint")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        endpoint_id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<PatchEndpointBody>,
    ) -> Result<Json<EndpointView>, HookWriteErrors> {
        let (p, e) = endpoint_for(&app, &auth, &endpoint_id.0).await?;
        let b = body.0;
        let patch = EndpointPatch {
            url: b.url,
            description: b.description,
            event_types: b.event_types,
            topics: b.topics,
            enabled: b.enabled,
            rate_per_s: b.rate_limit_per_s.map(|r| (r > 0).then_some(r)),
            headers: b.headers,
            expected_version: parse_if_match(if_match.0.as_deref())?.or(b.version),
        };
        let e = webhooks::update(&app.writer, app.egress.policy(), user_ctx(req, &p), e.id, patch).await?;
        app.webhooks.poke(p.org, e.id);
        Ok(Json(view(&app, p.org, e)))
    }

    /// Delete a webhook endpoint
    ///
    /// Its undelivered messages and its log of attempts go with it.
    ///
    /// Permission: `webhooks.manage`.
    #[oai(path = "/v1/webhooks/endpoints/:endpoint_id", method = "delete", operation_id = "deleteWebhookEndpoint")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        endpoint_id: Path<String>,
    ) -> Result<NoContent, HookWriteErrors> {
        let (p, e) = endpoint_for(&app, &auth, &endpoint_id.0).await?;
        webhooks::delete(&app.writer, user_ctx(req, &p), e.id).await?;
        app.webhooks.forget(p.org, e.id);
        Ok(NoContent::Done)
    }

    /// Rotate a webhook endpoint's signing secret
    ///
    /// A new secret signs from now on; the ones it replaces sign beside it for `overlap_s`, so
    /// receivers switch at their own pace. The new secret is in this answer only.
    ///
    /// Permission: `webhooks.manage`.
    #[oai(
        path = "/v1/webhooks/endpoints/:endpoint_id/secret/rotate",
        method = "post",
        operation_id = "rotateWebhookSecret"
    )]
    async fn rotate(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        endpoint_id: Path<String>,
        body: JsonBody<RotateBody>,
    ) -> Result<Json<WithSecretView>, HookWriteErrors> {
        let (p, e) = endpoint_for(&app, &auth, &endpoint_id.0).await?;
        let overlap_s = body.0.overlap_s.unwrap_or(OVERLAP_DEFAULT_S);
        let max = app.config.webhooks.rotation_overlap_max_s;
        if overlap_s > max {
            return Err(DomainError::invalid("/overlap_s", "out_of_range", format!("at most {max} seconds")).into());
        }
        let overlap_ms = i64::try_from(overlap_s * 1000).unwrap_or(i64::MAX);
        let (e, key) = webhooks::rotate_secret(&app.writer, &app.vault(), user_ctx(req, &p), e.id, overlap_ms).await?;
        let secret = Secret::from_key(key).written();
        Ok(Json(WithSecretView { endpoint: view(&app, p.org, e), secret }))
    }

    /// List a webhook endpoint's delivery attempts
    ///
    /// Newest first; each endpoint keeps its newest `webhooks.attempts_kept_per_endpoint`.
    ///
    /// Permission: `webhooks.manage`.
    #[oai(path = "/v1/webhooks/endpoints/:endpoint_id/attempts", method = "get", operation_id = "listWebhookAttempts")]
    async fn attempts(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        endpoint_id: Path<String>,
        /// 1–100, default 20.
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<AttemptPage>, HookReadErrors> {
        let (p, e) = endpoint_for(&app, &auth, &endpoint_id.0).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let page = webhooks::attempts(&app.store, OrgScope::member(&p), e.id, page).await?;
        Ok(Json(AttemptPage {
            items: page.items.into_iter().map(attempt_view).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// Resend one message
    ///
    /// The message (`msg_id`, the `webhook-id` it was sent with) is queued again from the event
    /// log, whatever happened to it before; 404 once the log no longer holds its event.
    ///
    /// Permission: `webhooks.manage`.
    #[oai(
        path = "/v1/webhooks/endpoints/:endpoint_id/messages/:msg_id/resend",
        method = "post",
        operation_id = "resendWebhookMessage"
    )]
    async fn resend(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        endpoint_id: Path<String>,
        msg_id: Path<String>,
    ) -> Result<Queued, HookWriteErrors> {
        let (p, e) = endpoint_for(&app, &auth, &endpoint_id.0).await?;
        webhooks::resend(&app.store, &app.writer, user_ctx(req, &p), e.id, msg_id.0).await?;
        app.webhooks.recount(p.org, e.id).await;
        Ok(Queued::Accepted)
    }

    /// Recover messages since a time
    ///
    /// Every event since `since` that the log still holds and the endpoint's filters take is
    /// queued again, in commit order (those still queued stay as they are), up to the room its
    /// backlog has left.
    ///
    /// Permission: `webhooks.manage`.
    #[oai(
        path = "/v1/webhooks/endpoints/:endpoint_id/recover",
        method = "post",
        operation_id = "recoverWebhookMessages"
    )]
    async fn recover(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        endpoint_id: Path<String>,
        body: JsonBody<RecoverBody>,
    ) -> Result<Recovered, HookWriteErrors> {
        let (p, e) = endpoint_for(&app, &auth, &endpoint_id.0).await?;
        let since_ms = time_ms(&body.0.since, "/since")?;
        let room = app.config.webhooks.backlog_per_endpoint_max.saturating_sub(app.webhooks.backlog(p.org, e.id));
        let (queued, truncated) =
            webhooks::recover(&app.store, &app.writer, user_ctx(req, &p), e.id, since_ms, room).await?;
        app.webhooks.recount(p.org, e.id).await;
        Ok(Recovered::Accepted(Json(RecoveredView { queued: queued as u64, truncated })))
    }

    /// Send a test message
    ///
    /// A `webhook.test` message goes to the endpoint now, outside its queue, once; the answer
    /// is the attempt (also in the endpoint's log).
    ///
    /// Permission: `webhooks.manage`.
    #[oai(path = "/v1/webhooks/endpoints/:endpoint_id/test", method = "post", operation_id = "testWebhookEndpoint")]
    async fn test(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        endpoint_id: Path<String>,
    ) -> Result<Json<AttemptView>, HookWriteErrors> {
        let (p, e) = endpoint_for(&app, &auth, &endpoint_id.0).await?;
        let a = app.webhooks.test_send(p.org, &e).await.map_err(DomainError::from)?;
        Ok(Json(attempt_view(a)))
    }
}
