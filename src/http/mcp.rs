//! `/v1/services/{service_id}/mcp/…`: a registered MCP server's tools, resources and prompts,
//! reached through Outpost's session with it (`src/mcp.rs`); `/v1/mcp/test` tries a server
//! before it is registered.

use std::collections::BTreeMap;

use poem::Request;
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;
use serde_json::Value;

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::problem::Problem;
use super::services::{CredentialBody, credential, service_for};
use super::{ApiTags, UserAuth};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::policy::Permission;
use crate::domain::services::Service;
use crate::mcp::{ARGUMENTS_BYTES_MAX, McpError};
use crate::tenancy::OrgScope;

crate::problems!(McpReadErrors: 400, 401, 403, 404, 502, 504);
crate::problems!(McpCallErrors: 400, 401, 403, 404, 409, 413, 415, 422, 502, 504);

/// A tool the server offers.
#[derive(Object, Debug)]
#[oai(rename = "McpTool")]
pub struct ToolView {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// The JSON Schema its arguments must satisfy (checked by Outpost before a call goes out).
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    /// Hints the server gives (`readOnlyHint`, `destructiveHint`, …), as it gave them.
    pub annotations: Option<Value>,
    /// Whether the caller may call it (their role among the service's callers and the tool's).
    pub callable: bool,
}

#[derive(Object, Debug)]
#[oai(rename = "McpToolList")]
pub struct ToolList {
    pub items: Vec<ToolView>,
}

/// A call of a tool.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "McpToolCall", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// The tool's arguments (an object its input schema accepts; default `{}`).
    pub arguments: Option<BTreeMap<String, Value>>,
    /// A name for the call, 1–100 letters, digits, `-` or `_`: progress signals carry it, and
    /// `DELETE /v1/services/{id}/mcp/calls/{call_id}` cancels the call while it runs. One is
    /// made up when absent.
    pub call_id: Option<String>,
}

/// A tool's result as the server gave it.
#[derive(Object, Debug)]
#[oai(rename = "McpToolResult")]
pub struct ResultView {
    pub call_id: String,
    /// MCP content blocks (`{"type": "text", "text": …}`, images, resource links, …).
    pub content: Vec<Value>,
    pub structured_content: Option<Value>,
    /// The tool ran and reports a failure of its own (not a failure to call it).
    pub is_error: bool,
    pub duration_ms: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "McpResource")]
pub struct ResourceView {
    pub uri: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    pub size: Option<u64>,
}

#[derive(Object, Debug)]
#[oai(rename = "McpResourceList")]
pub struct ResourceList {
    pub items: Vec<ResourceView>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "McpResourceRead", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// One of the server's resources' URIs (or one its templates make).
    pub uri: String,
}

#[derive(Object, Debug)]
#[oai(rename = "McpResourceContents")]
pub struct ContentsView {
    /// Each with its `uri`, `mimeType` and `text` or base64 `blob`, as the server gave them.
    pub contents: Vec<Value>,
}

#[derive(Object, Debug)]
#[oai(rename = "McpPromptArgument")]
pub struct PromptArgumentView {
    pub name: String,
    pub description: Option<String>,
    pub required: bool,
}

#[derive(Object, Debug)]
#[oai(rename = "McpPrompt")]
pub struct PromptView {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub arguments: Vec<PromptArgumentView>,
}

#[derive(Object, Debug)]
#[oai(rename = "McpPromptList")]
pub struct PromptList {
    pub items: Vec<PromptView>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "McpPromptGet", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PromptBody {
    pub arguments: Option<BTreeMap<String, String>>,
}

#[derive(Object, Debug)]
#[oai(rename = "McpPromptMessages")]
pub struct PromptMessagesView {
    pub description: Option<String>,
    /// Each with its `role` and `content`, as the server gave them.
    pub messages: Vec<Value>,
}

/// A server to try before registering it.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "McpServerTest", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    /// The server's Streamable HTTP endpoint, held to the egress policy.
    pub base_url: String,
    pub credential: Option<CredentialBody>,
}

#[derive(Object, Debug)]
#[oai(rename = "McpServerTestResult")]
pub struct TestView {
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    /// The MCP version the server and Outpost agreed on.
    pub protocol_version: String,
    pub instructions: Option<String>,
    pub tools: Vec<ToolView>,
}

pub(super) fn problem(e: McpError) -> Problem {
    let detail = e.to_string();
    let with_wait = |code: &str, wait: std::time::Duration| {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail.clone());
        p.retry_after_s = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        p
    };
    match e {
        McpError::NotMcp => Problem::new(StatusCode::NOT_FOUND, "not_an_mcp_server", detail),
        McpError::NotACaller(_) => Problem::new(StatusCode::FORBIDDEN, "not_a_caller", detail),
        McpError::ToolNotAllowed(..) => Problem::new(StatusCode::FORBIDDEN, "tool_not_allowed", detail),
        McpError::UnknownTool(_) => Problem::new(StatusCode::NOT_FOUND, "unknown_tool", detail),
        McpError::InvalidArguments(v) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_arguments", detail)
            .with_errors(
                v.into_iter().map(|(at, why)| Problem::field(&format!("/arguments{at}"), "schema", why)).collect(),
            ),
        McpError::BadSchema(_) => Problem::new(StatusCode::BAD_GATEWAY, "invalid_tool_schema", detail),
        McpError::TooLarge => super::body::too_large(ARGUMENTS_BYTES_MAX as u64),
        McpError::CircuitOpen(wait) => with_wait("circuit_open", wait),
        McpError::Reconnecting(wait) => with_wait("mcp_reconnecting", wait),
        McpError::AuditBacklog => with_wait("audit_backlog", std::time::Duration::from_secs(1)),
        McpError::Busy => with_wait("mcp_busy", std::time::Duration::from_secs(1)),
        McpError::DuplicateCall => Problem::new(StatusCode::CONFLICT, "duplicate_call_id", detail),
        McpError::Timeout(_) => Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", detail),
        McpError::Cancelled => Problem::new(StatusCode::CONFLICT, "call_cancelled", detail),
        McpError::Unreachable(_) => Problem::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", detail),
        McpError::Refused(_) => Problem::new(StatusCode::BAD_GATEWAY, "upstream_refused", detail),
        McpError::Server(_) => Problem::new(StatusCode::BAD_GATEWAY, "mcp_server_error", detail),
        McpError::Credential(_) => Problem::new(StatusCode::BAD_GATEWAY, "credential_unavailable", detail),
    }
}

/// Whether `p` may call `tool` of `service`.
pub(super) fn callable(p: &Principal, service: &Service, tool: &str) -> bool {
    p.require(Permission::ServicesCall).is_ok() && crate::mcp::may_call_tool(p.role, service, tool).is_ok()
}

fn tool_view(t: &rmcp::model::Tool, callable: bool) -> ToolView {
    ToolView {
        name: t.name.to_string(),
        title: t.title.clone(),
        description: t.description.as_ref().map(ToString::to_string),
        input_schema: Value::Object((*t.input_schema).clone()),
        output_schema: t.output_schema.as_ref().map(|s| Value::Object((**s).clone())),
        annotations: t.annotations.as_ref().and_then(|a| serde_json::to_value(a).ok()),
        callable,
    }
}

/// The JSON form of an SDK value (its own serialization: the MCP wire form).
fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn check_call_id(id: Option<&str>) -> Result<(), Problem> {
    let Some(id) = id else { return Ok(()) };
    let ok = (1..=100).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "invalid call_id")
            .with_errors(vec![Problem::field("/call_id", "invalid_call_id", "1–100 letters, digits, - or _")]))
    }
}

#[derive(Default)]
pub struct McpApi;

#[OpenApi(tag = "ApiTags::Services")]
impl McpApi {
    /// List an MCP server's tools
    ///
    /// From Outpost's session with the server (opened if need be); the list is kept for
    /// `mcp.catalog_ttl_s` and listed again when the server says it changed. `callable` says
    /// whether the caller may call each.
    ///
    /// Permission: `services.read`.
    #[oai(path = "/v1/services/:service_id/mcp/tools", method = "get", operation_id = "listMcpTools")]
    async fn tools(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        service_id: Path<String>,
    ) -> Result<Json<ToolList>, McpReadErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesRead).await?;
        let catalog = app.mcp.list(OrgScope::member(&p), &s).await.map_err(problem)?;
        let items = catalog.tools.iter().map(|t| tool_view(&t.tool, callable(&p, &s, &t.tool.name))).collect();
        Ok(Json(ToolList { items }))
    }

    /// Call an MCP server's tool
    ///
    /// The arguments are checked against the tool's input schema before anything is sent
    /// (422 `invalid_arguments`, a pointer per violation). The call is held to the service's
    /// MCP timeout and circuit breaker and audited (`mcp.tool.call`: the tool, the arguments'
    /// SHA-256, the outcome; the arguments themselves only when the service says so). While it
    /// runs, the server's progress reaches the caller's realtime sockets following `user:{id}`
    /// as `signal` frames of kind `mcp.progress` (`data`: `call_id`, `progress`, `total`,
    /// `message`). A tool that ran and failed is a 200 with `is_error`.
    ///
    /// Permission: `services.call` (a role among the service's callers and the tool's).
    #[oai(path = "/v1/services/:service_id/mcp/tools/:tool/call", method = "post", operation_id = "callMcpTool")]
    async fn call(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        tool: Path<String>,
        body: JsonBody<CallBody>,
    ) -> Result<Json<ResultView>, McpCallErrors> {
        let (p, service) = service_for(&app, &auth, &service_id.0, Permission::ServicesCall).await?;
        let CallBody { arguments, call_id } = body.0;
        check_call_id(call_id.as_deref())?;
        let arguments: serde_json::Map<String, Value> = arguments.unwrap_or_default().into_iter().collect();
        let call_id = call_id.unwrap_or_else(|| format!("call_{}", crate::ids::Id::new().0.simple()));
        let called = app
            .mcp
            .call_tool(&super::caller(req, &p), &service, &tool.0, arguments, call_id.clone())
            .await
            .map_err(problem)?;
        let result = called.result;
        Ok(Json(ResultView {
            call_id,
            content: result.content.iter().map(json).collect(),
            structured_content: result.structured_content,
            is_error: result.is_error == Some(true),
            duration_ms: called.duration_ms,
        }))
    }

    /// Cancel one of your MCP tool calls
    ///
    /// The call in flight under `call_id` ends with 409 `call_cancelled`, and the server is
    /// told (`notifications/cancelled`). Only the caller's own calls.
    ///
    /// Permission: `services.call`.
    #[oai(path = "/v1/services/:service_id/mcp/calls/:call_id", method = "delete", operation_id = "cancelMcpCall")]
    async fn cancel(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        service_id: Path<String>,
        call_id: Path<String>,
    ) -> Result<NoContent, McpReadErrors> {
        let (p, _) = service_for(&app, &auth, &service_id.0, Permission::ServicesCall).await?;
        if app.mcp.cancel(p.org, p.user, &call_id.0) {
            Ok(NoContent::Done)
        } else {
            Err(Problem::not_found("call").into())
        }
    }

    /// List an MCP server's resources
    ///
    /// Permission: `services.read`.
    #[oai(path = "/v1/services/:service_id/mcp/resources", method = "get", operation_id = "listMcpResources")]
    async fn resources(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        service_id: Path<String>,
    ) -> Result<Json<ResourceList>, McpReadErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesRead).await?;
        let catalog = app.mcp.list(OrgScope::member(&p), &s).await.map_err(problem)?;
        let items = catalog
            .resources
            .iter()
            .map(|r| ResourceView {
                uri: r.uri.clone(),
                name: r.name.clone(),
                title: r.title.clone(),
                description: r.description.clone(),
                mime_type: r.mime_type.clone(),
                size: r.size,
            })
            .collect();
        Ok(Json(ResourceList { items }))
    }

    /// Read an MCP server's resource
    ///
    /// Permission: `services.call` (a role among the service's callers).
    #[oai(path = "/v1/services/:service_id/mcp/resources/read", method = "post", operation_id = "readMcpResource")]
    async fn read(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        body: JsonBody<ReadBody>,
    ) -> Result<Json<ContentsView>, McpCallErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesCall).await?;
        let r = app.mcp.read_resource(&super::caller(req, &p), &s, &body.0.uri).await.map_err(problem)?;
        Ok(Json(ContentsView { contents: r.contents.iter().map(json).collect() }))
    }

    /// List an MCP server's prompts
    ///
    /// Permission: `services.read`.
    #[oai(path = "/v1/services/:service_id/mcp/prompts", method = "get", operation_id = "listMcpPrompts")]
    async fn prompts(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        service_id: Path<String>,
    ) -> Result<Json<PromptList>, McpReadErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesRead).await?;
        let catalog = app.mcp.list(OrgScope::member(&p), &s).await.map_err(problem)?;
        let items = catalog
            .prompts
            .iter()
            .map(|pr| PromptView {
                name: pr.name.clone(),
                title: pr.title.clone(),
                description: pr.description.clone(),
                arguments: pr
                    .arguments
                    .iter()
                    .flatten()
                    .map(|a| PromptArgumentView {
                        name: a.name.clone(),
                        description: a.description.clone(),
                        required: a.required == Some(true),
                    })
                    .collect(),
            })
            .collect();
        Ok(Json(PromptList { items }))
    }

    /// Get an MCP server's prompt
    ///
    /// The prompt's messages, filled with `arguments` by the server.
    ///
    /// Permission: `services.call` (a role among the service's callers).
    #[oai(path = "/v1/services/:service_id/mcp/prompts/:name/get", method = "post", operation_id = "getMcpPrompt")]
    async fn prompt(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        service_id: Path<String>,
        name: Path<String>,
        body: JsonBody<PromptBody>,
    ) -> Result<Json<PromptMessagesView>, McpCallErrors> {
        let (p, s) = service_for(&app, &auth, &service_id.0, Permission::ServicesCall).await?;
        let arguments = body.0.arguments.unwrap_or_default().into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        let r = app.mcp.get_prompt(&super::caller(req, &p), &s, &name.0, arguments).await.map_err(problem)?;
        Ok(Json(PromptMessagesView {
            description: r.description.clone(),
            messages: r.messages.iter().map(json).collect(),
        }))
    }

    /// Try an MCP server
    ///
    /// Opens a session with the server at `base_url` with the credential given (or one of the
    /// organization's OAuth connections), lists its tools and closes it; nothing is stored.
    /// The URL is held to the egress policy like a registered service's.
    ///
    /// Permission: `services.manage`.
    #[oai(path = "/v1/mcp/test", method = "post", operation_id = "testMcpServer")]
    async fn test(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        body: JsonBody<TestBody>,
    ) -> Result<Json<TestView>, McpCallErrors> {
        let p = auth.require(&app, Permission::ServicesManage).await?;
        let b = body.0;
        super::services::check_stdio(&app, &b.base_url, true)?;
        let given = b.credential.map(credential).transpose()?.map(|c| (c.kind, c.secret));
        let probe = app.mcp.probe(OrgScope::member(&p), &b.base_url, given).await.map_err(|e| match e {
            McpError::Refused(why) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", why.clone())
                .with_errors(vec![Problem::field("/base_url", "address_refused", why)]),
            other => problem(other),
        })?;
        Ok(Json(TestView {
            server_name: probe.server_name,
            server_version: probe.server_version,
            protocol_version: probe.protocol_version,
            instructions: probe.instructions,
            tools: probe.tools.iter().map(|t| tool_view(t, false)).collect(),
        }))
    }
}
