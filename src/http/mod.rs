//! The HTTP transport: routes, the edge middleware, authentication extractors, and the
//! conversions between wire types and domain types. Only this module knows about poem.
//!
//! Every request passes `Edge`, which assigns the request id (the client's `X-Request-Id` if it
//! is sane, else a new UUIDv7), opens the request's tracing span, bounds its time, turns every
//! error into problem+json, echoes the request id, and counts it in `/metrics` by operationId.

/// `From` both ways between a wire enum and the domain enum it mirrors variant for variant;
/// the matches are exhaustive, so a variant added on one side only does not compile.
macro_rules! mirror_enum {
    ($wire:ident <=> $domain:ident { $($variant:ident),+ $(,)? }) => {
        impl From<$wire> for $domain {
            fn from(v: $wire) -> Self {
                match v {
                    $($wire::$variant => $domain::$variant,)+
                }
            }
        }

        impl From<$domain> for $wire {
            fn from(v: $domain) -> Self {
                match v {
                    $($domain::$variant => $wire::$variant,)+
                }
            }
        }
    };
}

pub mod api_keys;
pub mod apps;
pub mod audit;
pub mod auth_api;
pub mod body;
pub mod chat;
pub mod connections;
pub mod docs;
pub mod document;
pub mod files;
pub mod gate;
pub mod gateway;
pub mod mcp;
pub mod mcp_server;
pub mod me;
pub mod media;
pub mod oauth_server;
pub mod ops;
pub mod orgs;
pub mod problem;
pub mod prompts;
pub mod realtime;
pub mod recordings;
pub mod rendered;
pub mod rooms;
pub mod search;
pub mod services;
pub mod socket;
pub mod sso;
pub mod tasks;
pub mod tls;
pub mod users;
pub mod webhooks;
pub mod ws;
pub mod yjs;

use std::time::{Duration, Instant};

use poem::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use poem::http::{HeaderName, HeaderValue, StatusCode};
use poem::{Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route};
use poem_openapi::auth::Bearer;
use poem_openapi::{OpenApiService, OperationId, SecurityScheme, Tags};
use tracing::Instrument;

use crate::app::App;
use crate::auth::{self, Operator, Principal};
use crate::domain::DomainError;
use crate::domain::policy::Permission;
use crate::ids::Id;
use crate::metrics::{RouteLabels, RouteOnly};
use crate::store::writer::MutationCtx;
use crate::tenancy::OrgScope;
use body::BodyLimit;
use problem::Problem;

#[derive(Tags)]
pub enum ApiTags {
    /// Tenants of this instance (operators only).
    Organizations,
    /// Event logs and audit chains.
    Audit,
    /// Health probes.
    Operations,
    /// Login, tokens, sessions, invitations.
    Auth,
    /// The caller's own account.
    Me,
    /// The organization's users (admins).
    Users,
    /// Rooms and their participants.
    Rooms,
    /// Channels and messages.
    Chat,
    /// Tasks and their dependencies.
    Tasks,
    /// One search box.
    Search,
    /// Shared (Yjs) documents in rooms, their state and versions.
    Docs,
    /// Calls' media: WHIP and WHEP, call state and moderation, recordings, TURN credentials.
    Media,
    /// Files: resumable (tus) and one-request uploads, records, downloads, signed links.
    Files,
    /// Outbound webhooks: endpoints, signing secrets, deliveries, resending and recovery.
    Webhooks,
    /// The service registry: services, their credentials (never answered) and health.
    Services,
    /// OAuth: providers, authorizations and the connections they make (tokens never answered).
    Connections,
    /// Single sign-on: identity providers, the policy, and signing in through them.
    Sso,
    /// OAuth apps: Outpost as their authorization server (the protocol at `/oauth/...`).
    Apps,
    /// System-prompt templates at four layers (global, organization, room, user), their
    /// history, and the composed prompt with its provenance.
    Prompts,
}

/// An operator API key (`opk_…`), made with `outpost operator create-key`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "opk")]
pub struct OperatorAuth(Bearer);

impl OperatorAuth {
    /// Checks the key; a 401 problem when it is not a valid operator key.
    pub async fn check(&self, app: &App) -> Result<Operator, Problem> {
        auth::operator(&app.store, &app.operator_keys, &self.0.token).await.map_err(Problem::from)
    }

    /// Checks the key and scopes the work to the organization named in the path (a malformed
    /// id is simply not found).
    pub async fn org_scope(&self, app: &App, org_id: &str) -> Result<(Operator, OrgScope), Problem> {
        let op = self.check(app).await?;
        let scope = OrgScope::operator(parse_id(org_id, "organization")?, &op);
        Ok((op, scope))
    }
}

/// A user's access token (PASETO v4.public), from `POST /v1/auth/login`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "PASETO v4.public")]
pub struct UserAuth(Bearer);

impl UserAuth {
    /// Checks the token and that its session, user and organization stand, and spends one
    /// request of the user's and the organization's budgets.
    pub async fn check(&self, app: &App) -> Result<Principal, Problem> {
        let p = auth::user(&app.store, &app.auth_caches, &app.keys.ring(), &self.0.token, app.access_ttl())
            .await
            .map_err(Problem::from)?;
        app.limits.request(p.org, p.user).map_err(|l| limited(app, l))?;
        if let Some((key, _)) = &p.api_key {
            app.note_key_use(p.org, *key);
        }
        Ok(p)
    }

    /// As `check`, and refuses unless the user's role holds `permission`.
    pub async fn require(&self, app: &App, permission: Permission) -> Result<Principal, Problem> {
        let p = self.check(app).await?;
        p.require(permission).map_err(Problem::from)?;
        Ok(p)
    }
}

/// Counts a refusal by a rate limit and turns it into its problem.
pub fn limited(app: &App, l: crate::limits::Limited) -> Problem {
    app.metrics.rate_limited.get_or_create(&crate::metrics::LimiterLabels { limiter: l.limiter.as_str().into() }).inc();
    Problem::from(l)
}

/// The request id of the request being served.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The API document's service (its paths carry their full `/v1/...` prefix): two groups, as
/// a tuple is `Default` up to twelve members.
pub type Apis = (
    (
        orgs::OrgsApi,
        orgs::OrgInvitesApi,
        audit::AuditApi,
        audit::OrgAuditApi,
        ops::OpsApi,
        auth_api::AuthApi,
        me::MeApi,
        users::UsersApi,
        api_keys::ApiKeysApi,
        sso::SsoApi,
        apps::AppsApi,
        mcp::McpApi,
    ),
    (
        rooms::RoomsApi,
        chat::ChatApi,
        tasks::TasksApi,
        search::SearchApi,
        docs::DocsApi,
        media::MediaApi,
        recordings::RecordingsApi,
        files::FilesApi,
        webhooks::WebhooksApi,
        services::ServicesApi,
        gateway::GatewayApi,
        connections::ConnectionsApi,
    ),
    (prompts::PromptsApi, prompts::GlobalPromptsApi),
);

pub fn api_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(Apis::default(), "Outpost", crate::VERSION).description(
        "Multi-tenant real-time collaboration. Errors are application/problem+json with a stable \
             `code`; lists are cursor-paginated; updates take `If-Match`.",
    )
}

/// The API document as pretty JSON (what `openapi/outpost.json` holds), made exact by
/// `document`.
pub fn openapi_json() -> String {
    document::DOCUMENT.clone()
}

/// `GET /v1/openapi.json`.
#[poem::handler]
fn serve_document() -> Response {
    Response::builder().content_type("application/json; charset=utf-8").body(document::DOCUMENT.as_str())
}

/// Who calls a registered service (through the gateway, or an MCP server): the principal's
/// user and role, and the request's audit context.
pub(crate) fn caller(req: &Request, p: &crate::auth::Principal) -> crate::gateway::Caller {
    let request_id = req.data::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    crate::gateway::Caller { user: p.user, role: p.role, request_id, ctx: user_ctx(req, p) }
}

/// The whole HTTP application over `app`.
pub fn routes(app: App) -> impl Endpoint + 'static {
    let api = api_service();
    let docs = api.swagger_ui();
    let limit = app.config.http.body_limit_bytes;
    let timeout = Duration::from_millis(app.config.http.request_timeout_ms);
    let origins = app.config.http.cors_allowed_origins.clone();
    let cors = (!origins.is_empty()).then(|| {
        poem::middleware::Cors::new()
            .allow_origins(origins)
            .allow_methods(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
            .allow_headers([
                "authorization",
                "content-type",
                "if-match",
                "x-request-id",
                "tus-resumable",
                "upload-length",
                "upload-offset",
                "upload-metadata",
                "upload-checksum",
                "range",
                "if-none-match",
                "if-range",
            ])
            .expose_headers([
                "etag",
                "location",
                "x-request-id",
                "retry-after",
                "tus-resumable",
                "tus-version",
                "tus-extension",
                "tus-max-size",
                "upload-offset",
                "upload-length",
                "upload-expires",
                "upload-metadata",
                "content-range",
                "content-disposition",
            ])
            .max_age(600)
    });
    // The REST API as MCP tools call it, in-process with the caller's credential.
    let tools_api: mcp_server::Api = std::sync::Arc::new(
        Route::new().nest("/", api_service()).data(BodyLimit(limit)).data(app.clone()).map_to_response().boxed(),
    );
    let mcp = std::sync::Arc::new(mcp_server::endpoint(app.clone(), tools_api));
    let beside = Beside(Route::new())
        .at("/v1/openapi.json", poem::get(serve_document))
        .at("/mcp", mcp.clone())
        .at("/orgs/:slug/mcp", mcp)
        .at("/.well-known/oauth-protected-resource/mcp", poem::get(mcp_server::metadata))
        .at("/.well-known/oauth-protected-resource/orgs/:slug/mcp", poem::get(mcp_server::org_metadata))
        .nest("/docs", docs)
        .at("/metrics", ops::metrics)
        .at("/v1/realtime", poem::get(realtime::realtime))
        .at("/v1/yjs/:doc_id", poem::get(yjs::sync))
        .at("/oauth/authorize", poem::get(oauth_server::authorize_page).post(oauth_server::authorize_answer))
        .at("/oauth/token", poem::post(oauth_server::token_endpoint))
        .at("/oauth/revoke", poem::post(oauth_server::revoke))
        .at("/oauth/introspect", poem::post(oauth_server::introspect))
        .at("/oauth/register/:slug", poem::post(oauth_server::register))
        .at("/.well-known/oauth-authorization-server/orgs/:slug", poem::get(oauth_server::metadata));
    Split { api: api.into_endpoint(), beside: beside.0 }
        // Each layer's future holds the one inside it, and an unstarted future is copied whole
        // every time it moves: unboxed, a request's future was 28 KiB, copied several times
        // before it first ran. Boxed here, the layers above hold a pointer.
        .boxed()
        .data(BodyLimit(limit))
        .data(app.clone())
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .boxed()
        .with(EdgeMiddleware { app, timeout })
}

/// The API and the routes beside it (its document and docs, the sockets, MCP, OAuth, metrics).
/// Nearly every request is the API's, so it is reached without a router in front: a router
/// nesting it would rebuild every request's URI on the way in.
struct Split<A, B> {
    api: A,
    beside: B,
}

impl<A: Endpoint, B: Endpoint> Endpoint for Split<A, B> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if beside_the_api(req.uri().path()) {
            self.beside.call(req).await.map(IntoResponse::into_response)
        } else {
            self.api.call(req).await.map(IntoResponse::into_response)
        }
    }
}

/// The router of the routes beside the API, each path held to [`beside_the_api`] as it is added:
/// one added here and not there would never be reached (checked once, when the routes are built).
struct Beside(Route);

impl Beside {
    fn at<E: IntoEndpoint<Endpoint: 'static>>(self, path: &str, ep: E) -> Self {
        Self(self.0.at(Self::held(path), ep))
    }

    fn nest<E: IntoEndpoint<Endpoint: 'static>>(self, path: &str, ep: E) -> Self {
        Self(self.0.nest(Self::held(path), ep))
    }

    fn held(path: &str) -> &str {
        assert!(beside_the_api(path), "{path} is routed beside the API but `beside_the_api` does not say so");
        path
    }
}

/// Whether `path` is one of the routes beside the API (no API path starts like these; a test
/// holds the document to that, and `Beside` holds the routes).
fn beside_the_api(path: &str) -> bool {
    matches!(path, "/v1/openapi.json" | "/v1/realtime" | "/metrics" | "/mcp")
        || ["/docs", "/oauth/", "/.well-known/", "/orgs/", "/v1/yjs/"].iter().any(|p| path.starts_with(p))
}

struct EdgeMiddleware {
    app: App,
    timeout: Duration,
}

impl<E: Endpoint> poem::Middleware<E> for EdgeMiddleware {
    type Output = Edge<E>;
    fn transform(&self, ep: E) -> Self::Output {
        Edge {
            inner: ep,
            limit: self.app.config.http.body_limit_bytes,
            tls: self.app.config.tls.cert_file.is_some(),
            app: self.app.clone(),
            timeout: self.timeout,
        }
    }
}

/// The request id's header, named once (a name given as text is parsed on every insert).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Bodies up to this size are read whole before their request is handled (see `Edge::call`).
const SMALL_BODY_BYTES: u64 = 64 << 10;

pub struct Edge<E> {
    inner: E,
    limit: u64,
    tls: bool,
    app: App,
    timeout: Duration,
}

impl<E: Endpoint> Endpoint for Edge<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        gateway::fold_proxy_path(&mut req);
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| Id::new().to_string(), str::to_owned);
        req.set_data(RequestId(request_id.clone()));
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %path);
        // A declared length over the limit is refused before anything reads the body;
        // `JsonBody` also stops reading at the limit when no length was declared. Uploads
        // stream their bodies to disk under their own limits, and are bounded by an idle time
        // rather than a total one (a large file takes as long as it takes).
        let upload = is_upload(&method, &path);
        let declared = req.header("content-length").and_then(|v| v.parse::<u64>().ok());
        let has_body = declared.is_some_and(|n| n > 0) || req.header("transfer-encoding").is_some();
        let http1 = req.version() < poem::http::Version::HTTP_2;
        // A small body is read whole before the request is handled, so that an answer refusing
        // it early (429, 403, ...) leaves the connection able to carry the next request: a
        // client answered 429 then stays on its connection, where it is paced (`gate::Paced`),
        // instead of opening a fresh one for every request.
        let buffered = !upload && declared.is_some_and(|n| n > 0 && n <= SMALL_BODY_BYTES);
        let result = if declared.is_some_and(|n| n > self.limit) && !upload {
            Ok(Err(body::too_large(self.limit).into()))
        } else if upload {
            Ok(self.inner.call(req).instrument(span.clone()).await)
        } else {
            let handle = async {
                if buffered {
                    let bytes = req.take_body().into_bytes().await?;
                    req.set_body(bytes);
                }
                self.inner.call(req).await
            };
            tokio::time::timeout(self.timeout, handle).instrument(span.clone()).await
        };
        let has_body = has_body && !buffered;
        let (mut resp, route) = match result {
            Ok(Ok(r)) => {
                let resp = r.into_response();
                let route = resp.data::<OperationId>().map(|o| o.0);
                (resp, route)
            }
            Ok(Err(err)) => {
                let route = err.data::<OperationId>().map(|o| o.0);
                (error_response(err), route)
            }
            Err(_) => (
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request_timeout",
                    "the request took too long and was abandoned",
                )
                .into_response(),
                None,
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(X_REQUEST_ID, v);
        }
        // RFC 9110: a 405 says which methods the resource does answer.
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            if let Some(allow) = document::allowed_methods(&path).and_then(|a| HeaderValue::from_str(&a).ok()) {
                resp.headers_mut().insert("allow", allow);
            }
        }
        // An error may be answered before the request's body was read (a refused upload, a
        // body over the limit); the connection then cannot carry another request, and saying
        // so keeps a client from sending its next one down a connection about to close.
        if http1 && has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
            resp.headers_mut().insert(poem::http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        security_headers(&mut resp, &path, self.tls);
        if path.starts_with("/v1/uploads") {
            let h = resp.headers_mut();
            h.insert("tus-resumable", HeaderValue::from_static(files::TUS_VERSION));
            h.insert("tus-version", HeaderValue::from_static(files::TUS_VERSION));
        }
        let status = resp.status().as_u16();
        let route = route.unwrap_or(if path == "/metrics" || path.starts_with("/docs") || path == "/v1/openapi.json" {
            "static"
        } else {
            "unmatched"
        });
        let elapsed = started.elapsed();
        let m = &self.app.metrics;
        m.http_requests.get_or_create(&RouteLabels { route, method: method_label(&method), status }).inc();
        m.http_latency_seconds.get_or_create(&RouteOnly { route }).observe(elapsed.as_secs_f64());
        span.in_scope(|| {
            tracing::info!(status, route, latency_us = elapsed.as_micros() as u64, "request");
        });
        Ok(resp)
    }
}

/// A request's method as a metric label: the standard ones by name, any other as `other`
/// (labels are a closed set, whatever clients send).
fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Whether a request streams a file's bytes (a tus creation or append, a one-request upload).
fn is_upload(method: &poem::http::Method, path: &str) -> bool {
    use poem::http::Method;
    (*method == Method::PATCH && path.starts_with("/v1/uploads/"))
        || (*method == Method::POST && (path == "/v1/uploads" || path == "/v1/assets" || path == "/v1/assets/form"))
}

/// Headers every answer carries. API answers are never cached and never framed or rendered as
/// a page; the docs UI needs its scripts, so it gets a policy of its own.
fn security_headers(resp: &mut Response, path: &str, tls: bool) {
    let h = resp.headers_mut();
    h.reserve(6);
    if tls {
        h.insert(STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if path.starts_with("/docs") {
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    } else if path == "/oauth/authorize" {
        // The consent page: its own inline style, and nothing else (no form-action: the answer
        // redirects to the app, elsewhere).
        let csp = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else {
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
        if !h.contains_key(CACHE_CONTROL) {
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }
}

/// Turns any error that reached the edge into a problem+json answer. Our own problem types
/// render themselves; poem's and poem-openapi's errors are mapped here.
fn error_response(err: poem::Error) -> Response {
    if let Some(p) = foreign_problem(&err) {
        return p.into_response();
    }
    let resp = err.into_response();
    let ours = resp.content_type().is_some_and(|ct| ct.starts_with(problem::CONTENT_TYPE));
    if ours {
        return resp;
    }
    let status = resp.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return Problem::new(status, "payload_too_large", "the request body is over the limit").into_response();
    }
    if status.is_client_error() {
        return Problem::new(status, "bad_request", status.canonical_reason().unwrap_or("bad request")).into_response();
    }
    tracing::error!(status = status.as_u16(), "unhandled error");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error").into_response()
}

/// The problem for an error raised outside our handlers (routing, extractors), if known.
fn foreign_problem(err: &poem::Error) -> Option<Problem> {
    use poem_openapi::error::{AuthorizationError, ContentTypeError, ParseParamError, ParsePathError};
    if let Some(p) = err.downcast_ref::<Problem>() {
        return Some(p.clone());
    }
    if err.is::<poem::error::NotFoundError>() {
        return Some(Problem::new(StatusCode::NOT_FOUND, "not_found", "no such route"));
    }
    if err.is::<poem::error::MethodNotAllowedError>() {
        return Some(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        ));
    }
    if err.is::<AuthorizationError>() {
        return Some(Problem::from(auth::AuthError::Missing));
    }
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        return Some(
            Problem::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string())
                .with_errors(vec![Problem::field(&format!("?{}", e.name), "invalid_parameter", e.reason.clone())]),
        );
    }
    if let Some(e) = err.downcast_ref::<ParsePathError>() {
        return Some(Problem::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string()));
    }
    if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        return Some(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", e.to_string()));
    }
    None
}

/// The audit context of a user's request.
pub fn user_ctx(req: &Request, p: &Principal) -> MutationCtx {
    mutation_ctx(req, OrgScope::member(p), p.actor())
}

/// The caller's address, user agent and request id.
pub fn origin(req: &Request) -> crate::domain::login::Origin {
    crate::domain::login::Origin {
        user_agent: req.header("user-agent").map(|s| s.chars().take(200).collect()),
        client_addr: req.remote_addr().as_socket_addr().map(|a| a.ip().to_string()),
        request_id: req.data::<RequestId>().map(|r| r.0.clone()),
    }
}

/// The audit context of a request: who, from where, which request.
pub fn mutation_ctx(req: &Request, scope: OrgScope, actor: String) -> MutationCtx {
    MutationCtx {
        scope,
        actor,
        request_id: req.data::<RequestId>().map(|r| r.0.clone()),
        client_addr: req.remote_addr().as_socket_addr().map(|a| a.ip().to_string()),
    }
}

/// The token of an `Authorization: Bearer …` header, for upgrades that take one beside their
/// own ways (subprotocol, query parameter).
pub fn bearer_header(req: &Request) -> Option<String> {
    req.headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// An id given in a body field or query parameter at `pointer`: a malformed one is 422.
pub fn id_at(s: &str, pointer: &str) -> Result<Id, DomainError> {
    s.parse().map_err(|_| DomainError::invalid(pointer, "invalid_id", "not an id"))
}

/// The `ETag` of a record's version.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// Parses a path id; a malformed one is simply not found (no hint about what exists).
pub fn parse_id(s: &str, what: &'static str) -> Result<Id, DomainError> {
    s.parse().map_err(|_| DomainError::NotFound { what })
}

/// Parses `If-Match: "3"` (also `W/"3"` and bare `3`). `*` matches any version.
pub fn parse_if_match(v: Option<&str>) -> Result<Option<u64>, DomainError> {
    let Some(v) = v.map(str::trim) else {
        return Ok(None);
    };
    if v == "*" {
        return Ok(None);
    }
    let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
    v.parse().map(Some).map_err(|_| {
        DomainError::invalid("?If-Match", "invalid_parameter", "If-Match must be an ETag this server gave out")
    })
}

/// 404 unless the organization of `scope` exists (and is not deleted).
pub async fn ensure_org_exists(app: &App, scope: OrgScope) -> Result<(), DomainError> {
    crate::domain::orgs::get(&app.store, scope).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_api_path_is_taken_for_a_route_beside_it() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).expect("the document is JSON");
        let paths = doc["paths"].as_object().expect("the document has paths");
        assert!(paths.len() > 50, "{} paths", paths.len());
        for path in paths.keys() {
            assert!(!beside_the_api(path), "{path} would not reach the API");
        }
        for path in [
            "/v1/openapi.json",
            "/v1/realtime",
            "/metrics",
            "/mcp",
            "/docs",
            "/docs/oauth-receiver.html",
            "/oauth/token",
            "/.well-known/oauth-protected-resource/orgs/acme/mcp",
            "/orgs/acme/mcp",
            "/v1/yjs/01a24d42-fd74-7582-81e3-d83a0a8016fa",
        ] {
            assert!(beside_the_api(path), "{path}");
        }
    }
}
