//! Outpost as an MCP server: `/orgs/{slug}/mcp` (and `/mcp`) speak the Model Context Protocol
//! over Streamable HTTP (the `rmcp` SDK's server, stateless: every request stands alone), so an
//! agent can work in Outpost: search, read rooms, channels and messages, post, list, file and
//! change tasks, read a document's text.
//!
//! **Authorization.** Every request carries a bearer credential: an access token (one an
//! OAuth app got from the organization's authorization server, or a session's) or an API key.
//! Without one, or with one that does not hold, the answer is 401 with `WWW-Authenticate`
//! naming the protected-resource metadata (RFC 9728), which names the organization's
//! authorization server, so a stock MCP client finds its way to a token.
//!
//! **One policy.** A tool is the REST operation it mirrors, called in-process with the
//! caller's own credential: the same permission check, the token's scopes, room and channel
//! membership, validation, rate budgets, events and audit records. A refusal is a tool result
//! with `isError` carrying the operation's problem.

use std::fmt::Write as _;
use std::sync::Arc;

use poem::http::{HeaderValue, StatusCode, header};
use poem::web::{Data, Json, Path};
use poem::{Endpoint, IntoResponse, Request, Response, handler};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use super::problem::Problem;
use crate::app::App;
use crate::auth::Principal;
use crate::domain::policy::Permission;

/// The permissions the tools use: what an MCP client asks its token for.
pub const SCOPES: [Permission; 6] = [
    Permission::SelfManage,
    Permission::RoomsRead,
    Permission::ChatUse,
    Permission::TasksRead,
    Permission::TasksWrite,
    Permission::SearchUse,
];
/// Resources listed at most (channels, then documents of the rooms one takes part in).
const RESOURCES_MAX: usize = 100;

/// The REST API, called in-process by the tools.
pub type Api = Arc<poem::endpoint::BoxEndpoint<'static, Response>>;

/// Who is calling, as the transport checked: the credential to call the API with.
#[derive(Clone)]
struct Caller {
    bearer: String,
}

#[derive(Clone)]
pub struct Handler {
    api: Api,
}

/// The MCP endpoint: the SDK's Streamable HTTP service behind the bearer check.
pub struct McpEndpoint {
    service: StreamableHttpService<Handler, NeverSessionManager>,
    app: App,
}

pub fn endpoint(app: App, api: Api) -> McpEndpoint {
    let handler = Handler { api };
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let service = StreamableHttpService::new(move || Ok(handler.clone()), Arc::default(), config);
    McpEndpoint { service, app }
}

/// `<public_url>/.well-known/oauth-protected-resource<path>`: where a resource's metadata is.
fn metadata_url(app: &App, path: &str) -> String {
    format!("{}/.well-known/oauth-protected-resource{path}", crate::app::public_url(&app.config))
}

fn challenge(app: &App, path: &str, error: Option<&str>) -> Response {
    let mut value = format!("Bearer resource_metadata=\"{}\"", metadata_url(app, path));
    if let Some(e) = error {
        let _ = write!(value, ", error=\"{e}\"");
    }
    let mut r = Problem::new(
        StatusCode::UNAUTHORIZED,
        if error.is_some() { "invalid_token" } else { "unauthenticated" },
        "send an access token or an API key as a bearer credential",
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

impl Endpoint for McpEndpoint {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let path = req.uri().path().to_owned();
        let Some(bearer) = super::bearer_header(&req) else { return Ok(challenge(&self.app, &path, None)) };
        let app = &self.app;
        let Ok(p) = crate::auth::user(&app.store, &app.auth_caches, &app.keys.ring(), &bearer, app.access_ttl()).await
        else {
            return Ok(challenge(app, &path, Some("invalid_token")));
        };
        // An organization's resource takes that organization's credentials only.
        if let Some(slug) = path.strip_prefix("/orgs/").and_then(|p| p.strip_suffix("/mcp")) {
            if org_slug(app, &p) != Some(slug.to_owned()) {
                return Ok(challenge(app, &path, Some("invalid_token")));
            }
        }
        req.extensions_mut().insert(Caller { bearer });
        let http_req: poem::http::Request<_> = req.into();
        let resp = self.service.handle(http_req).await;
        let (parts, body) = resp.into_parts();
        let stream = futures_util::StreamExt::map(http_body_util::BodyExt::into_data_stream(body), |chunk| {
            chunk.map_err(|never| match never {})
        });
        let mut out =
            Response::builder()
                .status(parts.status)
                .body(poem::Body::from_bytes_stream::<_, _, std::io::Error>(stream));
        *out.headers_mut() = parts.headers;
        Ok(out)
    }
}

fn org_slug(app: &App, p: &Principal) -> Option<String> {
    crate::domain::orgs::record(&app.store, crate::tenancy::OrgScope::member(p)).ok().flatten().map(|o| o.slug)
}

/// `GET /.well-known/oauth-protected-resource/orgs/{slug}/mcp` (RFC 9728): the organization's
/// MCP server as a protected resource, and its authorization server.
#[handler]
pub async fn org_metadata(app: Data<&App>, Path(slug): Path<String>) -> Response {
    let Ok(Some(scope)) = crate::domain::sso::entry(&app.store, slug.clone()).await else {
        return Problem::new(StatusCode::NOT_FOUND, "not_found", "no such organization").into_response();
    };
    let Ok(Some(org)) = crate::domain::orgs::record(&app.store, scope) else {
        return Problem::new(StatusCode::NOT_FOUND, "not_found", "no such organization").into_response();
    };
    let base = crate::app::public_url(&app.config);
    Json(json!({
        "resource": format!("{base}/orgs/{slug}/mcp"),
        "resource_name": format!("Outpost: {}", org.name),
        "authorization_servers": [super::oauth_server::issuer(&app, &slug)],
        "scopes_supported": SCOPES.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
    }))
    .into_response()
}

/// `GET /.well-known/oauth-protected-resource/mcp`: the instance-wide MCP endpoint, which takes
/// any organization's access tokens and API keys (each organization is its own authorization
/// server: use `/orgs/{slug}/mcp` to be led to one).
#[handler]
#[allow(clippy::needless_pass_by_value)] // the extractor is taken by value by design
pub fn metadata(app: Data<&App>) -> Response {
    let base = crate::app::public_url(&app.config);
    Json(json!({
        "resource": format!("{base}/mcp"),
        "resource_name": "Outpost",
        "authorization_servers": [],
        "scopes_supported": SCOPES.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
    }))
    .into_response()
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::default(),
    }
}

fn tools() -> Vec<Tool> {
    let limit =
        json!({ "type": "integer", "minimum": 1, "maximum": 100, "description": "At most this many (default 20)." });
    let id = |what: &str| json!({ "type": "string", "format": "uuid", "description": format!("The {what}'s id.") });
    vec![
        Tool::new(
            "search",
            "Search what you may see: messages, tasks, documents, rooms, files.",
            schema(
                json!({ "type": "object", "properties": { "query": { "type": "string" }, "limit": limit }, "required": ["query"] }),
            ),
        ),
        Tool::new(
            "list_rooms",
            "The rooms you may see.",
            schema(json!({ "type": "object", "properties": { "limit": limit } })),
        ),
        Tool::new(
            "list_channels",
            "The channels you may see or belong to.",
            schema(json!({ "type": "object", "properties": {} })),
        ),
        Tool::new(
            "read_messages",
            "A channel's recent messages, newest first.",
            schema(
                json!({ "type": "object", "properties": { "channel_id": id("channel"), "limit": limit }, "required": ["channel_id"] }),
            ),
        ),
        Tool::new(
            "post_message",
            "Post a message to a channel you belong to.",
            schema(
                json!({ "type": "object", "properties": { "channel_id": id("channel"), "text": { "type": "string", "minLength": 1 } }, "required": ["channel_id", "text"] }),
            ),
        ),
        Tool::new(
            "list_tasks",
            "The organization's tasks.",
            schema(json!({ "type": "object", "properties": {
                "status": { "type": "string", "enum": ["todo", "in_progress", "blocked", "done", "cancelled"] }, "limit": limit } })),
        ),
        Tool::new(
            "create_task",
            "File a task.",
            schema(json!({ "type": "object", "properties": {
                "title": { "type": "string", "minLength": 1 }, "description": { "type": "string" } }, "required": ["title"] })),
        ),
        Tool::new(
            "update_task",
            "Change a task's title, description or status.",
            schema(json!({ "type": "object", "properties": {
                "task_id": id("task"), "title": { "type": "string" }, "description": { "type": "string" },
                "status": { "type": "string", "enum": ["todo", "in_progress", "blocked", "done", "cancelled"] } }, "required": ["task_id"] })),
        ),
        Tool::new(
            "read_document",
            "A shared document's text.",
            schema(json!({ "type": "object", "properties": { "doc_id": id("document") }, "required": ["doc_id"] })),
        ),
    ]
}

fn arg<'a>(args: &'a JsonObject, name: &str) -> Result<&'a str, ErrorData> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ErrorData::invalid_params(format!("`{name}` is required (a string)"), None))
}

/// A path segment: an id, checked so nothing else rides in the path.
fn id_arg(args: &JsonObject, name: &str) -> Result<String, ErrorData> {
    let v = arg(args, name)?;
    uuid::Uuid::try_parse(v)
        .map(|u| u.to_string())
        .map_err(|_| ErrorData::invalid_params(format!("`{name}` is not an id"), None))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| format!("{k}={}", url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()))
        })
        .collect();
    if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
}

fn limit_arg(args: &JsonObject) -> Option<String> {
    args.get("limit").and_then(Value::as_u64).map(|l| l.to_string())
}

/// What a call of the API answered: its status and JSON body.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Handler {
    async fn api(&self, caller: &Caller, method: &str, uri: &str, body: Option<Value>) -> Answer {
        let mut req = Request::builder()
            .method(method.parse().unwrap_or(poem::http::Method::GET))
            .uri_str(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", caller.bearer))
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.content_type("application/json");
        }
        let req = req.body(body.map(|b| b.to_string()).unwrap_or_default());
        let resp = match self.api.call(req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        let status = resp.status();
        let bytes = resp.into_body().into_bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, body }
    }

    async fn tool(&self, caller: &Caller, name: &str, args: &JsonObject) -> Result<Answer, ErrorData> {
        Ok(match name {
            "search" => {
                let q = query(&[("q", Some(arg(args, "query")?.to_owned())), ("limit", limit_arg(args))]);
                self.api(caller, "GET", &format!("/v1/search{q}"), None).await
            }
            "list_rooms" => {
                self.api(caller, "GET", &format!("/v1/rooms{}", query(&[("limit", limit_arg(args))])), None).await
            }
            "list_channels" => self.api(caller, "GET", "/v1/channels", None).await,
            "read_messages" => {
                let id = id_arg(args, "channel_id")?;
                let q = query(&[("limit", limit_arg(args))]);
                self.api(caller, "GET", &format!("/v1/channels/{id}/messages{q}"), None).await
            }
            "post_message" => {
                let id = id_arg(args, "channel_id")?;
                let text = arg(args, "text")?;
                self.api(caller, "POST", &format!("/v1/channels/{id}/messages"), Some(json!({ "text": text }))).await
            }
            "list_tasks" => {
                let status = args.get("status").and_then(Value::as_str).map(str::to_owned);
                let q = query(&[("status", status), ("limit", limit_arg(args))]);
                self.api(caller, "GET", &format!("/v1/tasks{q}"), None).await
            }
            "create_task" => {
                let mut body = json!({ "title": arg(args, "title")? });
                if let Some(d) = args.get("description") {
                    body["description"] = d.clone();
                }
                self.api(caller, "POST", "/v1/tasks", Some(body)).await
            }
            "update_task" => {
                let id = id_arg(args, "task_id")?;
                let mut body = serde_json::Map::new();
                for k in ["title", "description", "status"] {
                    if let Some(v) = args.get(k) {
                        body.insert(k.to_owned(), v.clone());
                    }
                }
                self.api(caller, "PATCH", &format!("/v1/tasks/{id}"), Some(Value::Object(body))).await
            }
            "read_document" => {
                let id = id_arg(args, "doc_id")?;
                let mut a = self.api(caller, "GET", &format!("/v1/docs/{id}/json"), None).await;
                if a.status.is_success() {
                    a.body = json!({ "doc_id": id, "text": document_text(&a.body) });
                }
                a
            }
            _ => return Err(ErrorData::invalid_params(format!("no tool named {name}"), None)),
        })
    }
}

/// A document's shared types as text: each text as it is, anything else as JSON.
fn document_text(v: &Value) -> String {
    let Some(types) = v.get("types").and_then(Value::as_object).or_else(|| v.as_object()) else {
        return v.to_string();
    };
    types
        .iter()
        .map(|(name, t)| match t {
            Value::String(s) => format!("{name}:\n{s}"),
            other => format!("{name}:\n{other}"),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn caller(ctx: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    ctx.extensions
        .get::<poem::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request was not authenticated", None))
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().build())
            .with_server_info(Implementation::new("outpost", crate::VERSION))
            .with_instructions(
                "Outpost: rooms, channels, tasks and documents of one organization, with the caller's permissions.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller(&context)?;
        let args = request.arguments.unwrap_or_default();
        let answer = self.tool(&caller, &request.name, &args).await?;
        Ok(if answer.status.is_success() {
            let body = if answer.body.is_object() { answer.body } else { json!({ "result": answer.body }) };
            CallToolResult::structured(body)
        } else {
            CallToolResult::error(vec![ContentBlock::text(answer.body.to_string())])
        }
        .into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let caller = caller(&context)?;
        let mut out = Vec::new();
        let channels = self.api(&caller, "GET", "/v1/channels", None).await;
        for c in channels.body["items"].as_array().into_iter().flatten() {
            if let (Some(id), Some(name)) = (c["id"].as_str(), c["name"].as_str()) {
                out.push(
                    Resource::new(format!("outpost://channels/{id}"), format!("#{name}"))
                        .with_description("recent messages"),
                );
            }
        }
        let rooms = self.api(&caller, "GET", "/v1/rooms?mine=true&limit=20", None).await;
        for r in rooms.body["items"].as_array().into_iter().flatten() {
            let Some(room) = r["id"].as_str() else { continue };
            let docs = self.api(&caller, "GET", &format!("/v1/rooms/{room}/docs"), None).await;
            for d in docs.body["items"].as_array().into_iter().flatten() {
                if let (Some(id), Some(name)) = (d["id"].as_str(), d["name"].as_str()) {
                    out.push(
                        Resource::new(format!("outpost://docs/{id}"), name.to_owned())
                            .with_description("document text"),
                    );
                }
            }
            if out.len() >= RESOURCES_MAX {
                break;
            }
        }
        out.truncate(RESOURCES_MAX);
        Ok(ListResourcesResult::with_all_items(out))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = caller(&context)?;
        let uri = request.uri.clone();
        let (tool, key) = if let Some(id) = uri.strip_prefix("outpost://channels/") {
            ("read_messages", ("channel_id", id))
        } else if let Some(id) = uri.strip_prefix("outpost://docs/") {
            ("read_document", ("doc_id", id))
        } else {
            return Err(ErrorData::resource_not_found(format!("no resource {uri}"), None));
        };
        let mut args = JsonObject::new();
        args.insert(key.0.to_owned(), Value::String(key.1.to_owned()));
        let answer = self.tool(&caller, tool, &args).await?;
        if !answer.status.is_success() {
            return Err(ErrorData::resource_not_found(format!("no resource {uri} you may read"), Some(answer.body)));
        }
        let text = if tool == "read_document" {
            answer.body["text"].as_str().unwrap_or_default().to_owned()
        } else {
            answer.body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
                .map(|m| format!("{}: {}", m["author_id"].as_str().unwrap_or("?"), m["text"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("\n")
        };
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri)]).into())
    }
}
