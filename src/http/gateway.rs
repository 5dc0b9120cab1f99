//! `/v1/services/{service_id}/proxy/{path}`: the service gateway, one operation per method.
//!
//! `{path}` is the path under the service's base URL. Generated clients send it as one
//! parameter, its slashes percent-encoded (`tickets%2F42`); a path written out with its
//! slashes (`/proxy/tickets/42`) is the same call, folded into that one parameter at the edge
//! (see [`fold_proxy_path`]). The service's own answers come back as they are, with
//! `Outpost-Gateway-Attempts`; answers of the gateway itself are problems.

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Body, Request, RequestBody, Response};
use poem_openapi::param::Path;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaRequest, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, OpenApi};

use super::body::{BodyLimit, read_up_to};
use super::problem::Problem;
use super::services::service_for;
use super::{ApiTags, UserAuth, limited};
use crate::app::App;
use crate::domain::policy::Permission;
use crate::gateway::{Call, GatewayError};

crate::problems!(GatewayErrors: 400, 401, 403, 404, 413, 429, 502, 504);

/// Where the gateway's paths start, and the part after the service's id.
const PREFIX: &str = "/v1/services/";
const PROXY: &str = "/proxy/";

/// Folds a proxied path written out with its slashes into the one `{path}` parameter
/// (`/v1/services/<id>/proxy/a/b` → `/v1/services/<id>/proxy/a%2Fb`); other requests pass as
/// they are.
pub fn fold_proxy_path(req: &mut Request) {
    let uri = req.uri();
    let Some(rest) = uri.path().strip_prefix(PREFIX) else { return };
    let Some((id, tail)) = rest.split_once(PROXY) else { return };
    if id.contains('/') || (!tail.is_empty() && !tail.contains('/')) {
        return;
    }
    let tail = if tail.is_empty() { "%2F".to_owned() } else { tail.replace('/', "%2F") };
    let mut folded = format!("{PREFIX}{id}{PROXY}{tail}");
    if let Some(q) = uri.query() {
        folded.push('?');
        folded.push_str(q);
    }
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = folded.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(u) = poem::http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// A proxied request's body: any type, taken as it comes and read once the service's limit is
/// known.
pub struct AnyBody(Option<Body>);

impl<'a> ApiExtractor<'a> for AnyBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(_registry: &mut Registry) {}

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some("Sent on to the service as it is, with its Content-Type"),
            content: vec![MetaMediaType {
                content_type: "*/*",
                schema: <poem_openapi::types::Binary<Vec<u8>> as Type>::schema_ref(),
            }],
            required: false,
        })
    }

    async fn from_request(
        _request: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(Self(body.take().ok()))
    }
}

/// The service's answer, as it gave it.
pub struct Proxied(Response);

impl poem::IntoResponse for Proxied {
    fn into_response(self) -> Response {
        self.0
    }
}

impl ApiResponse for Proxied {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The service's answer: its status (any), headers and body as it gave them",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "*/*",
                    schema: <poem_openapi::types::Binary<Vec<u8>> as Type>::schema_ref(),
                }],
                headers: vec![MetaHeader {
                    name: "Outpost-Gateway-Attempts".to_owned(),
                    description: Some("Tries the call took (more than 1 after retries)".to_owned()),
                    required: true,
                    deprecated: false,
                    schema: <u32 as Type>::schema_ref(),
                }],
            }],
        }
    }

    fn register(_registry: &mut Registry) {}
}

fn problem(app: &App, e: &GatewayError) -> Problem {
    let detail = e.to_string();
    let mut p = match e {
        GatewayError::NotACaller(_) => Problem::new(StatusCode::FORBIDDEN, "not_a_caller", detail),
        GatewayError::BadPath => Problem::new(StatusCode::BAD_REQUEST, "invalid_path", detail),
        GatewayError::TooLarge(limit) => super::body::too_large(*limit),
        GatewayError::Limited(l) => return limited(app, *l),
        GatewayError::CircuitOpen(wait) => {
            let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "circuit_open", detail);
            p.retry_after_s = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
            p
        }
        GatewayError::AuditBacklog => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "audit_backlog", detail),
        GatewayError::Timeout(_) => Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", detail),
        GatewayError::Unreachable(_) => Problem::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", detail),
        GatewayError::AnswerTooLarge(_) => Problem::new(StatusCode::BAD_GATEWAY, "upstream_too_large", detail),
        GatewayError::Refused(_) => Problem::new(StatusCode::BAD_GATEWAY, "upstream_refused", detail),
        GatewayError::Credential => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "credential_unavailable", detail),
        GatewayError::Connection(_) => Problem::new(StatusCode::BAD_GATEWAY, "connection_unavailable", detail),
    };
    if p.status == StatusCode::SERVICE_UNAVAILABLE && p.retry_after_s.is_none() {
        p.retry_after_s = Some(1);
    }
    p
}

async fn proxy(
    app: &App,
    auth: &UserAuth,
    req: &Request,
    service_id: &str,
    path: &str,
    body: Option<AnyBody>,
) -> Result<Proxied, GatewayErrors> {
    let (p, service) = service_for(app, auth, service_id, Permission::ServicesCall).await?;
    let limit = req.data::<BodyLimit>().map_or(1 << 20, |l| l.0).min(service.gateway.request_bytes_max);
    let bytes = match body.and_then(|b| b.0) {
        Some(b) => read_up_to(b, limit).await?,
        None => Vec::new(),
    };
    let caller = super::caller(req, &p);
    let call = Call {
        method: req.method().clone(),
        path: format!("/{}", path.trim_start_matches('/')),
        query: req.uri().query(),
        headers: req.headers(),
        body: bytes.into(),
    };
    let reply = app.gateway.forward(caller, &service, call).await.map_err(|e| problem(app, &e))?;
    let mut resp = Response::builder().status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (name, value) in &reply.headers {
        resp = resp.header(name, value);
    }
    Ok(Proxied(resp.header("outpost-gateway-attempts", reply.attempts.to_string()).body(reply.body)))
}

#[derive(Default)]
pub struct GatewayApi;

#[OpenApi(tag = "ApiTags::Services")]
impl GatewayApi {
    /// Call a service: GET
    ///
    /// Forwards the request to `{path}` under the service's base URL with its stored credential
    /// and the caller's identity in signed `Outpost-Identity` headers; the caller's own
    /// `Authorization` and cookies never go on. Retried on failure (idempotent methods), held
    /// to the service's rate limit, timeout, body limits and circuit breaker; each call is
    /// audited. The service's answer comes back as it is, with `Outpost-Gateway-Attempts`.
    ///
    /// Permission: `services.call` (and a role the service names among its callers).
    #[oai(path = "/v1/services/:service_id/proxy/:path", method = "get", operation_id = "proxyServiceGet")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        /// The path under the service's base URL, slashes percent-encoded (`tickets%2F42`).
        path: Path<String>,
    ) -> Result<Proxied, GatewayErrors> {
        proxy(&app, &auth, req, &service_id.0, &path.0, None).await
    }

    /// Call a service: POST
    ///
    /// As `proxyServiceGet`, with the request's body sent on; never retried.
    ///
    /// Permission: `services.call` (and a role the service names among its callers).
    #[oai(path = "/v1/services/:service_id/proxy/:path", method = "post", operation_id = "proxyServicePost")]
    async fn post(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        /// The path under the service's base URL, slashes percent-encoded (`tickets%2F42`).
        path: Path<String>,
        body: AnyBody,
    ) -> Result<Proxied, GatewayErrors> {
        proxy(&app, &auth, req, &service_id.0, &path.0, Some(body)).await
    }

    /// Call a service: PUT
    ///
    /// As `proxyServiceGet`, with the request's body sent on.
    ///
    /// Permission: `services.call` (and a role the service names among its callers).
    #[oai(path = "/v1/services/:service_id/proxy/:path", method = "put", operation_id = "proxyServicePut")]
    async fn put(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        /// The path under the service's base URL, slashes percent-encoded (`tickets%2F42`).
        path: Path<String>,
        body: AnyBody,
    ) -> Result<Proxied, GatewayErrors> {
        proxy(&app, &auth, req, &service_id.0, &path.0, Some(body)).await
    }

    /// Call a service: PATCH
    ///
    /// As `proxyServiceGet`, with the request's body sent on; never retried.
    ///
    /// Permission: `services.call` (and a role the service names among its callers).
    #[oai(path = "/v1/services/:service_id/proxy/:path", method = "patch", operation_id = "proxyServicePatch")]
    async fn patch(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        /// The path under the service's base URL, slashes percent-encoded (`tickets%2F42`).
        path: Path<String>,
        body: AnyBody,
    ) -> Result<Proxied, GatewayErrors> {
        proxy(&app, &auth, req, &service_id.0, &path.0, Some(body)).await
    }

    /// Call a service: DELETE
    ///
    /// As `proxyServiceGet`, with the request's body, if any, sent on.
    ///
    /// Permission: `services.call` (and a role the service names among its callers).
    #[oai(path = "/v1/services/:service_id/proxy/:path", method = "delete", operation_id = "proxyServiceDelete")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        /// The path under the service's base URL, slashes percent-encoded (`tickets%2F42`).
        path: Path<String>,
        body: AnyBody,
    ) -> Result<Proxied, GatewayErrors> {
        proxy(&app, &auth, req, &service_id.0, &path.0, Some(body)).await
    }
}
