//! Sessions with the MCP servers an organization registers (services with MCP settings),
//! through the official SDK (`rmcp`): over Streamable HTTP, or with a local server over stdio
//! (`stdio:<name>`: one of the operator's `mcp.commands`, started without a shell, with only
//! its own environment, under resource limits (data memory, CPU time, open files), and killed
//! with its session).
//!
//! **Lifecycle.** One session per service, opened on first use (connect, `initialize`, the
//! protocol version the SDK and the server agree on), shared by every caller, and closed when
//! unused for `mcp.idle_close_s`, when the service changes (a new version of its settings), or
//! when more than `mcp.sessions_max` are open (the one idle longest goes). A session that fails
//! (its transport closed, the server went away) is dropped and opened again on the next use,
//! after a wait that doubles with each failed opening (250 ms up to 30 s; calls meanwhile get
//! 503 `mcp_reconnecting` with `Retry-After`).
//!
//! **Catalog.** The server's tools (with their input schemas compiled), resources and prompts
//! are kept for `mcp.catalog_ttl_s`; a `notifications/tools/list_changed` (or the resources' or
//! prompts') drops them at once, so the next use lists them again.
//!
//! **A tool call**, in order: the caller's role must be among the service's callers and, when
//! the service names roles for the tool, among those (403 `tool_not_allowed`); the tool must be
//! in the catalog (404 `unknown_tool`); the arguments must satisfy its input schema (422 with a
//! pointer per violation, nothing sent); the service's circuit breaker must let it through (503
//! `circuit_open`); a slot for its audit record must be free. Then the request goes out with the
//! service's timeout; progress notifications reach the caller's own realtime sockets as
//! `signal` frames of kind `mcp.progress` on `user:{id}`; the caller may cancel it (or go away),
//! and the server is then sent `notifications/cancelled`. Every call that reaches for the server
//! has an audit record (`mcp.tool.call`: the tool, the SHA-256 of the arguments, the outcome, the
//! time; the arguments themselves only when the service's `audit_arguments` says so) and counts
//! in `/metrics`.
//!
//! Credentials: the service's (an API key's header, a bearer token, basic, or a fresh token of
//! an OAuth connection) go on every request of the session; they are never answered, logged or
//! audited. Every connection goes through [`crate::egress`]'s address check.

mod sse;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CancelledNotification, CancelledNotificationParam, ClientCapabilities, ClientConfig,
    ClientRequest, GetPromptRequestParams, GetPromptResult, Implementation, ProgressNotificationParam, ProgressToken,
    Prompt, ReadResourceRequestParams, ReadResourceResult, Request, RequestId, Resource, ServerResult, Tool,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::config::McpConfig;
use crate::domain::policy::Role;
use crate::domain::services::{CredentialKind, McpSettings, STDIO_PREFIX, Service, credential_header};
use crate::egress::{Breaker, Egress, EgressError};
use crate::gateway::{Caller, Gateway, breaker_config, breaker_gauge};
use crate::ids::{self, Id};
use crate::metrics::{McpLabels, Metrics, ServiceLabels};
use crate::oauth::{OAuth, OAuthError};
use crate::realtime::Hub;
use crate::tenancy::OrgScope;

/// The wait before opening a failed session again: doubling from this ...
const REOPEN_WAIT_MIN: Duration = Duration::from_millis(250);
/// ... up to this.
const REOPEN_WAIT_MAX: Duration = Duration::from_secs(30);
/// A tool's arguments at most, as JSON bytes.
pub const ARGUMENTS_BYTES_MAX: usize = 1024 * 1024;
/// Schema violations reported for one call at most.
const VIOLATIONS_MAX: usize = 20;
/// Tool calls one user may have in flight at once (each cancellable by its `call_id`).
const CALLS_PER_USER_MAX: usize = 32;

/// What the engine is built from.
pub struct Parts {
    pub egress: Egress,
    pub oauth: OAuth,
    /// Audit records of calls share the gateway's bounded backlog.
    pub gateway: Gateway,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub config: McpConfig,
}

/// Why a request to an MCP server was not answered.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("this service is not an MCP server")]
    NotMcp,
    #[error("the {0} role may not call this service")]
    NotACaller(&'static str),
    #[error("the {0} role may not call the tool {1:?}")]
    ToolNotAllowed(&'static str, String),
    #[error("the server has no tool {0:?}")]
    UnknownTool(String),
    /// (JSON pointer into the arguments, what is wrong), at most [`VIOLATIONS_MAX`].
    #[error("the arguments do not satisfy the tool's input schema")]
    InvalidArguments(Vec<(String, String)>),
    #[error("the tool's input schema cannot be used: {0}")]
    BadSchema(String),
    #[error("the arguments are over {ARGUMENTS_BYTES_MAX} bytes")]
    TooLarge,
    #[error("the server's circuit is open after repeated failures")]
    CircuitOpen(Duration),
    #[error("the session with the server failed; it is opened again in {} ms", .0.as_millis())]
    Reconnecting(Duration),
    #[error("too many calls wait for their audit records")]
    AuditBacklog,
    #[error("too many calls in flight")]
    Busy,
    #[error("a call with this call_id is in flight already")]
    DuplicateCall,
    #[error("the server did not answer within {0} ms")]
    Timeout(u64),
    #[error("the call was cancelled")]
    Cancelled,
    #[error("the server could not be reached: {0}")]
    Unreachable(String),
    #[error("refused before connecting: {0}")]
    Refused(String),
    /// The server answered with a JSON-RPC error.
    #[error("the server refused the request: {0}")]
    Server(String),
    #[error("the service's credential cannot be used: {0}")]
    Credential(String),
}

impl McpError {
    fn outcome(&self) -> &'static str {
        match self {
            McpError::NotMcp => "not_mcp",
            McpError::NotACaller(_) | McpError::ToolNotAllowed(..) => "refused_role",
            McpError::UnknownTool(_) => "unknown_tool",
            McpError::InvalidArguments(_) | McpError::TooLarge => "invalid_arguments",
            McpError::BadSchema(_) => "bad_schema",
            McpError::CircuitOpen(_) => "circuit_open",
            McpError::Reconnecting(_) => "reconnecting",
            McpError::AuditBacklog | McpError::Busy | McpError::DuplicateCall => "busy",
            McpError::Timeout(_) => "timeout",
            McpError::Cancelled => "cancelled",
            McpError::Unreachable(_) => "unreachable",
            McpError::Refused(_) => "refused_address",
            McpError::Server(_) => "server_error",
            McpError::Credential(_) => "credential",
        }
    }

    /// Whether the failure says something about the server's health (for its breaker).
    fn counts_against_server(&self) -> bool {
        matches!(self, McpError::Timeout(_) | McpError::Unreachable(_))
    }
}

/// Who the server's notifications are for: progress tokens of calls in flight.
#[derive(Default)]
struct Shared {
    progress: Mutex<HashMap<ProgressToken, ProgressSink>>,
    /// Bumped by every `list_changed`: a catalog of an older generation is listed again.
    generation: AtomicU64,
}

struct ProgressSink {
    org: Id,
    user: Id,
    service: Id,
    tool: String,
    call_id: String,
}

/// Receives the server's notifications for one session.
struct Handler {
    shared: Arc<Shared>,
    hub: Arc<Hub>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new("outpost", env!("CARGO_PKG_VERSION")))
    }

    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        let progress = self.shared.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(sink) = progress.get(&p.progress_token) else { return };
        let data = json!({
            "call_id": sink.call_id,
            "service_id": sink.service,
            "tool": sink.tool,
            "progress": p.progress,
            "total": p.total,
            "message": p.message,
        });
        let key = format!("mcp:{}", sink.call_id);
        self.hub.signal_user(sink.org, sink.user, &key, "mcp.progress", &sink.service.to_string(), data);
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
    }

    async fn on_resource_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
    }

    async fn on_prompt_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// A tool as listed, with its input schema compiled (or why it cannot be).
pub struct CatalogTool {
    pub tool: Tool,
    validator: Result<jsonschema::Validator, String>,
}

/// What a server offers, as listed at one time.
pub struct Catalog {
    pub tools: Vec<CatalogTool>,
    pub resources: Vec<Resource>,
    pub prompts: Vec<Prompt>,
    generation: u64,
    listed: Instant,
}

/// An open session.
struct Session {
    client: RunningService<RoleClient, Handler>,
    shared: Arc<Shared>,
    last_used_ms: AtomicI64,
    catalog: tokio::sync::Mutex<Option<Arc<Catalog>>>,
    _counted: Counted,
}

/// Counts a session among those open for as long as it lives, however it ends (dropped from
/// its slot, its entry replaced, the engine gone) and whoever holds it last.
struct Counted {
    open: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
}

impl Counted {
    fn new(open: Arc<AtomicI64>, metrics: Arc<Metrics>) -> Self {
        metrics.mcp_sessions.set(open.fetch_add(1, Ordering::Relaxed) + 1);
        Self { open, metrics }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.mcp_sessions.set(self.open.fetch_sub(1, Ordering::Relaxed) - 1);
    }
}

/// A service's live state: its breaker, its session (opened one at a time), the wait before
/// opening it again.
struct Entry {
    version: u64,
    breaker: Breaker,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    reopen: Mutex<Reopen>,
}

#[derive(Default)]
struct Reopen {
    failures: u32,
    not_before: Option<Instant>,
}

struct Inner {
    parts: Parts,
    entries: Mutex<HashMap<(Id, Id), Arc<Entry>>>,
    open: Arc<AtomicI64>,
    in_flight: Arc<Semaphore>,
    /// Calls in flight that their caller may cancel: (org, user, call id).
    calls: Mutex<HashMap<(Id, Id, String), Arc<Notify>>>,
}

/// The MCP client engine (cheap to clone).
#[derive(Clone)]
pub struct Mcp {
    inner: Arc<Inner>,
}

/// A call's result as the server gave it.
pub struct Called {
    pub result: rmcp::model::CallToolResult,
    pub duration_ms: u64,
}

/// What a server said about itself when a session opened.
pub struct Probe {
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    pub protocol_version: String,
    pub instructions: Option<String>,
    pub tools: Vec<Tool>,
}

impl Mcp {
    pub fn new(parts: Parts) -> Self {
        let in_flight = Arc::new(Semaphore::new(parts.config.calls_in_flight_max));
        Self {
            inner: Arc::new(Inner {
                parts,
                entries: Mutex::default(),
                open: Arc::default(),
                in_flight,
                calls: Mutex::default(),
            }),
        }
    }

    /// Closes idle sessions every few seconds, until `stop`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let idle_ms = i64::try_from(self.inner.parts.config.idle_close_s.saturating_mul(1000)).unwrap_or(i64::MAX);
            self.close_idle(ids::now_ms().saturating_sub(idle_ms));
        }
        self.close_idle(i64::MAX);
    }

    /// Closes the sessions last used before `before_ms`.
    fn close_idle(&self, before_ms: i64) {
        let entries: Vec<Arc<Entry>> = self.entries().values().cloned().collect();
        for e in entries {
            let Ok(mut slot) = e.session.try_lock() else { continue };
            if slot.as_ref().is_some_and(|s| s.last_used_ms.load(Ordering::Relaxed) < before_ms) {
                close(&mut slot);
            }
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(Id, Id), Arc<Entry>>> {
        self.inner.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The service's live state, made anew when its settings changed.
    fn entry(&self, org: Id, service: &Service) -> Arc<Entry> {
        let mut entries = self.entries();
        if let Some(e) = entries.get(&(org, service.id)) {
            if e.version == service.version {
                return e.clone();
            }
            // Its settings changed: the old session closes once nobody uses it.
            if let Ok(mut slot) = e.session.try_lock() {
                close(&mut slot);
            }
        }
        let e = Arc::new(Entry {
            version: service.version,
            breaker: Breaker::new(breaker_config(&service.gateway)),
            session: tokio::sync::Mutex::new(None),
            reopen: Mutex::default(),
        });
        entries.insert((org, service.id), e.clone());
        e
    }

    /// The header with the service's credential, if it has one.
    async fn credential(&self, scope: OrgScope, service: &Service) -> Result<HeaderPair, McpError> {
        self.inner.parts.oauth.service_header(scope, service).await.map_err(|e| match e {
            OAuthError::Domain(_) | OAuthError::Unsupported(_) => McpError::Credential("it cannot be opened".into()),
            other => McpError::Credential(other.to_string()),
        })
    }

    /// Opens a session with the server at `url` (not kept): over Streamable HTTP, or with a
    /// local server the operator allows (`stdio:<name>`).
    async fn connect(
        &self,
        url: &str,
        header: HeaderPair,
    ) -> Result<(RunningService<RoleClient, Handler>, Arc<Shared>), McpError> {
        let shared = Arc::new(Shared::default());
        let handler = Handler { shared: shared.clone(), hub: self.inner.parts.hub.clone() };
        let wait = Duration::from_millis(self.inner.parts.config.open_timeout_ms);
        let opened = if let Some(name) = url.strip_prefix(STDIO_PREFIX) {
            let transport = self.spawn(name)?;
            tokio::time::timeout(wait, handler.serve(transport)).await
        } else {
            let transport = self.http_transport(url, header.clone()).await?;
            match tokio::time::timeout(wait, handler.serve(transport)).await {
                // The specification's backwards compatibility: a server whose URL answers a
                // GET with an event stream speaks the 2024-11-05 HTTP+SSE transport.
                Ok(Err(e)) => {
                    match tokio::time::timeout(wait, sse::open(self.inner.parts.egress.mcp_client(), url, header)).await
                    {
                        Ok(Ok(Some(transport))) => {
                            let handler = Handler { shared: shared.clone(), hub: self.inner.parts.hub.clone() };
                            tokio::time::timeout(wait, handler.serve(transport)).await
                        }
                        _ => Ok(Err(e)),
                    }
                }
                other => other,
            }
        };
        match opened {
            Ok(Ok(client)) => Ok((client, shared)),
            Ok(Err(e)) => Err(McpError::Unreachable(opening_error(&e.to_string()))),
            Err(_) => Err(McpError::Timeout(self.inner.parts.config.open_timeout_ms)),
        }
    }

    /// Starts the operator's command `name`: no shell, only its own environment, from `/`,
    /// under its resource limits; killed when the session's transport is dropped.
    fn spawn(&self, name: &str) -> Result<TokioChildProcess, McpError> {
        let c = self
            .inner
            .parts
            .config
            .commands
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| McpError::Refused(format!("{name} is not one of the operator's mcp.commands")))?;
        let mut command = tokio::process::Command::new(&c.program);
        command.args(&c.args).env_clear().envs(&c.env).current_dir("/").kill_on_drop(true);
        let (child, _) = TokioChildProcess::builder(command)
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| McpError::Unreachable(format!("{} could not start: {e}", c.program.display())))?;
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw) {
            use rustix::process::{Resource, Rlimit, prlimit};
            for (resource, max) in [
                (Resource::Data, c.memory_max_bytes),
                (Resource::Cpu, c.cpu_max_s),
                (Resource::Nofile, c.open_files_max),
            ] {
                if max == 0 {
                    continue;
                }
                if let Err(e) = prlimit(Some(pid), resource, Rlimit { current: Some(max), maximum: Some(max) }) {
                    tracing::warn!(command = name, ?resource, error = %e, "a local MCP server's limit was not set");
                }
            }
        }
        Ok(child)
    }

    /// A Streamable HTTP transport to `url`, its address checked first.
    async fn http_transport(
        &self,
        url: &str,
        header: HeaderPair,
    ) -> Result<StreamableHttpClientTransport<reqwest_mcp::Client>, McpError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| McpError::Refused(e.to_string()))?;
        self.inner.parts.egress.check_resolved(&parsed).await.map_err(|e| match e {
            EgressError::Refused(why) | EgressError::BadUrl(why) => McpError::Refused(why),
            other => McpError::Unreachable(other.to_string()),
        })?;
        let mut headers = HashMap::new();
        if let Some((name, value)) = header {
            headers.insert(name, value);
        }
        let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).custom_headers(headers);
        Ok(StreamableHttpClientTransport::with_client(self.inner.parts.egress.mcp_client(), config))
    }

    /// The service's session, opened if it has none.
    async fn session(&self, scope: OrgScope, service: &Service, entry: &Entry) -> Result<Arc<Session>, McpError> {
        let mut slot = entry.session.lock().await;
        if let Some(s) = slot.as_ref() {
            if !s.client.is_transport_closed() && !s.client.is_closed() {
                s.last_used_ms.store(ids::now_ms(), Ordering::Relaxed);
                return Ok(s.clone());
            }
            close(&mut slot);
        }
        {
            let r = entry.reopen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(at) = r.not_before {
                let now = Instant::now();
                if at > now {
                    return Err(McpError::Reconnecting(at - now));
                }
            }
        }
        let opened = match self.credential(scope, service).await {
            Ok(h) => self.connect(&service.base_url, h).await,
            Err(e) => Err(e),
        };
        let mut r = entry.reopen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (client, shared) = match opened {
            Ok(c) => {
                *r = Reopen::default();
                c
            }
            Err(e) => {
                r.failures = r.failures.saturating_add(1);
                let wait = REOPEN_WAIT_MIN.saturating_mul(1 << (r.failures - 1).min(7)).min(REOPEN_WAIT_MAX);
                r.not_before = Some(Instant::now() + jitter(wait));
                return Err(e);
            }
        };
        drop(r);
        self.make_room();
        let s = Arc::new(Session {
            client,
            shared,
            last_used_ms: AtomicI64::new(ids::now_ms()),
            catalog: tokio::sync::Mutex::new(None),
            _counted: Counted::new(self.inner.open.clone(), self.inner.parts.metrics.clone()),
        });
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Closes the session idle longest when `mcp.sessions_max` are open.
    fn make_room(&self) {
        let max = i64::try_from(self.inner.parts.config.sessions_max).unwrap_or(i64::MAX);
        if self.inner.open.load(Ordering::Relaxed) < max {
            return;
        }
        let entries: Vec<Arc<Entry>> = self.entries().values().cloned().collect();
        let mut oldest: Option<(i64, tokio::sync::MutexGuard<'_, Option<Arc<Session>>>)> = None;
        let mut guards = Vec::new();
        for e in &entries {
            if let Ok(g) = e.session.try_lock() {
                guards.push(g);
            }
        }
        for g in guards {
            let Some(used) = g.as_ref().map(|s| s.last_used_ms.load(Ordering::Relaxed)) else { continue };
            if oldest.as_ref().is_none_or(|(u, _)| used < *u) {
                oldest = Some((used, g));
            }
        }
        if let Some((_, mut g)) = oldest {
            close(&mut g);
        }
    }

    /// The server's catalog, listed again when it is older than `mcp.catalog_ttl_s` or a
    /// `list_changed` came since.
    async fn catalog(&self, session: &Session, settings: &McpSettings) -> Result<Arc<Catalog>, McpError> {
        let mut cached = session.catalog.lock().await;
        let generation = session.shared.generation.load(Ordering::Relaxed);
        let ttl = Duration::from_secs(self.inner.parts.config.catalog_ttl_s);
        if let Some(c) = cached.as_ref() {
            if c.generation == generation && c.listed.elapsed() < ttl {
                return Ok(c.clone());
            }
        }
        let timeout = Duration::from_millis(settings.timeout_ms);
        let peer = session.client.peer();
        let caps = peer.peer_info().map(|i| i.capabilities.clone()).unwrap_or_default();
        let tools = if caps.tools.is_some() { within(timeout, peer.list_all_tools()).await? } else { Vec::new() };
        let resources =
            if caps.resources.is_some() { within(timeout, peer.list_all_resources()).await? } else { Vec::new() };
        let prompts = if caps.prompts.is_some() { within(timeout, peer.list_all_prompts()).await? } else { Vec::new() };
        let tools = tools
            .into_iter()
            .map(|tool| {
                let schema = Value::Object((*tool.input_schema).clone());
                let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string());
                CatalogTool { tool, validator }
            })
            .collect();
        let c = Arc::new(Catalog { tools, resources, prompts, generation, listed: Instant::now() });
        *cached = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on the service's session, counting it in the metrics and feeding the breaker;
    /// a session that turns out dead is dropped, so the next use opens a new one.
    async fn with_session<T, F, Fut>(
        &self,
        scope: OrgScope,
        service: &Service,
        method: &'static str,
        f: F,
    ) -> Result<T, McpError>
    where
        F: FnOnce(Arc<Session>, McpSettings) -> Fut,
        Fut: std::future::Future<Output = Result<T, McpError>>,
    {
        let started = Instant::now();
        let result = async {
            let settings = service.mcp.clone().ok_or(McpError::NotMcp)?;
            let org = scope.org();
            let entry = self.entry(org, service);
            let labels = ServiceLabels { org: org.to_string(), service: service.id.to_string() };
            let pass = entry.breaker.admit().map_err(McpError::CircuitOpen)?;
            let session = match self.session(scope, service, &entry).await {
                Ok(s) => s,
                Err(e) => {
                    entry.breaker.record(pass, !e.counts_against_server() && !matches!(e, McpError::Reconnecting(_)));
                    self.inner
                        .parts
                        .metrics
                        .mcp_breaker
                        .get_or_create(&labels)
                        .set(breaker_gauge(entry.breaker.state()));
                    return Err(e);
                }
            };
            let result = f(session.clone(), settings).await;
            let failed = result.as_ref().err().is_some_and(McpError::counts_against_server);
            entry.breaker.record(pass, !failed);
            self.inner.parts.metrics.mcp_breaker.get_or_create(&labels).set(breaker_gauge(entry.breaker.state()));
            // A session whose transport failed, or that no longer answers a ping after a
            // request timed out (the server went away, or came back without it), is dropped:
            // the next use opens a new one. A slow tool on a live session keeps it.
            let dead = match &result {
                Err(McpError::Unreachable(_)) => true,
                Err(McpError::Timeout(_)) => !alive(&session).await,
                _ => false,
            };
            if dead {
                let mut slot = entry.session.lock().await;
                if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session)) {
                    close(&mut slot);
                }
            }
            result
        }
        .await;
        self.count(method, &result, started);
        result
    }

    /// A request's outcome and duration in `/metrics`.
    fn count<T>(&self, method: &'static str, result: &Result<T, McpError>, started: Instant) {
        let m = &self.inner.parts.metrics;
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        m.mcp_requests.get_or_create(&McpLabels { method: method.into(), outcome: outcome.into() }).inc();
        m.mcp_request_seconds.observe(started.elapsed().as_secs_f64());
    }

    /// The server's catalog (for a caller among the service's callers or readers: the caller's
    /// permission is checked at the edge).
    pub async fn list(&self, scope: OrgScope, service: &Service) -> Result<Arc<Catalog>, McpError> {
        self.with_session(scope, service, "list", |s, settings| async move { self.catalog(&s, &settings).await }).await
    }

    /// Reads one of the server's resources.
    pub async fn read_resource(
        &self,
        caller: &Caller,
        service: &Service,
        uri: &str,
    ) -> Result<ReadResourceResult, McpError> {
        may_call(caller, service)?;
        let uri = uri.to_owned();
        self.with_session(caller.ctx.scope, service, "resources/read", |s, settings| async move {
            let timeout = Duration::from_millis(settings.timeout_ms);
            within(timeout, s.client.peer().read_resource(ReadResourceRequestParams::new(uri))).await
        })
        .await
    }

    /// One of the server's prompts, filled with `arguments`.
    pub async fn get_prompt(
        &self,
        caller: &Caller,
        service: &Service,
        name: &str,
        arguments: Map<String, Value>,
    ) -> Result<GetPromptResult, McpError> {
        may_call(caller, service)?;
        let name = name.to_owned();
        self.with_session(caller.ctx.scope, service, "prompts/get", |s, settings| async move {
            let timeout = Duration::from_millis(settings.timeout_ms);
            let mut params = GetPromptRequestParams::new(name);
            if !arguments.is_empty() {
                params = params.with_arguments(arguments);
            }
            within(timeout, s.client.peer().get_prompt(params)).await
        })
        .await
    }

    /// Calls a tool for `caller` (see the module's documentation for the checks, in order).
    /// `call_id` names the call so its caller can cancel it ([`Mcp::cancel`]) and match its
    /// progress signals. Refusals before the session count in `/metrics` like the rest.
    pub async fn call_tool(
        &self,
        caller: &Caller,
        service: &Service,
        tool: &str,
        arguments: Map<String, Value>,
        call_id: String,
    ) -> Result<Called, McpError> {
        let started = Instant::now();
        let encoded = serde_json::to_vec(&arguments).unwrap_or_default();
        let size = if encoded.len() > ARGUMENTS_BYTES_MAX { Err(McpError::TooLarge) } else { Ok(()) };
        let checked = may_call_tool(caller.role, service, tool).and(size);
        if let Err(e) = checked {
            let refused = Err(e);
            self.count("tools/call", &refused, started);
            return refused;
        }
        let _permit = self.inner.in_flight.clone().try_acquire_owned().map_err(|_| McpError::Busy)?;
        let settings = service.mcp.as_ref().ok_or(McpError::NotMcp)?;
        let (org, user) = (caller.ctx.scope.org(), caller.user);
        let cancel = self.register_call(org, user, &call_id)?;
        let _registered = Registered { mcp: self, key: (org, user, call_id.clone()) };
        let arguments_sha256 = ids::hex(ring::digest::digest(&ring::digest::SHA256, &encoded).as_ref());
        let mut details = json!({
            "name": service.name,
            "tool": tool,
            "call_id": call_id,
            "arguments_sha256": arguments_sha256,
        });
        if settings.audit_arguments {
            details["arguments"] = Value::Object(arguments.clone());
        }
        let tool = tool.to_owned();
        let sink = ProgressSink { org, user, service: service.id, tool: tool.clone(), call_id: call_id.clone() };
        let gateway = &self.inner.parts.gateway;
        self.with_session(caller.ctx.scope, service, "tools/call", |s, settings| async move {
            let catalog = self.catalog(&s, &settings).await?;
            let found =
                catalog.tools.iter().find(|t| t.tool.name == tool).ok_or(McpError::UnknownTool(tool.clone()))?;
            let validator = found.validator.as_ref().map_err(|e| McpError::BadSchema(e.clone()))?;
            let instance = Value::Object(arguments.clone());
            let violations: Vec<(String, String)> = validator
                .iter_errors(&instance)
                .take(VIOLATIONS_MAX)
                .map(|e| (e.instance_path().to_string(), e.to_string()))
                .collect();
            if !violations.is_empty() {
                return Err(McpError::InvalidArguments(violations));
            }
            let mut record = gateway
                .record(caller.ctx.clone(), "mcp.tool.call", format!("service:{}", service.id), details)
                .ok_or(McpError::AuditBacklog)?;
            let started = Instant::now();
            let result = call(&s, &settings, tool, arguments, sink, &cancel).await;
            let outcome = match &result {
                Ok(r) if r.is_error == Some(true) => "tool_error",
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            };
            record.finish(outcome, []);
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            result.map(|result| Called { result, duration_ms })
        })
        .await
    }

    fn register_call(&self, org: Id, user: Id, call_id: &str) -> Result<Arc<Notify>, McpError> {
        let mut calls = self.inner.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (org, user, call_id.to_owned());
        if calls.contains_key(&key) {
            return Err(McpError::DuplicateCall);
        }
        if calls.keys().filter(|(o, u, _)| *o == org && *u == user).count() >= CALLS_PER_USER_MAX {
            return Err(McpError::Busy);
        }
        let n = Arc::new(Notify::new());
        calls.insert(key, n.clone());
        Ok(n)
    }

    /// Cancels `user`'s call `call_id`; false when no such call is in flight.
    pub fn cancel(&self, org: Id, user: Id, call_id: &str) -> bool {
        let calls = self.inner.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match calls.get(&(org, user, call_id.to_owned())) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Opens a session with a server that is not registered yet (`url`, a credential given in
    /// the clear, or one of the organization's OAuth connections), lists its tools and closes it.
    pub async fn probe(
        &self,
        scope: OrgScope,
        url: &str,
        credential: Option<(CredentialKind, String)>,
    ) -> Result<Probe, McpError> {
        let header = match credential {
            None => None,
            Some((CredentialKind::OAuthConnection { connection }, _)) => {
                let token = self
                    .inner
                    .parts
                    .oauth
                    .access_token(scope, connection)
                    .await
                    .map_err(|e| McpError::Credential(e.to_string()))?;
                Some(
                    credential_header(&CredentialKind::Bearer, &token)
                        .ok_or(McpError::Credential("not a header".into()))?,
                )
            }
            Some((kind, secret)) => {
                Some(credential_header(&kind, &secret).ok_or(McpError::Credential("not a header".into()))?)
            }
        };
        let started = Instant::now();
        let result: Result<Probe, McpError> = async {
            let (client, _) = self.connect(url, header).await?;
            let timeout = Duration::from_millis(self.inner.parts.config.open_timeout_ms);
            let info = client.peer().peer_info();
            let has_tools = info.as_ref().is_some_and(|i| i.capabilities.tools.is_some());
            let tools = if has_tools { within(timeout, client.peer().list_all_tools()).await } else { Ok(Vec::new()) };
            client.cancellation_token().cancel();
            let info = info.ok_or_else(|| McpError::Unreachable("the server did not introduce itself".into()))?;
            Ok(Probe {
                server_name: info.server_info.as_ref().map(|i| i.name.clone()),
                server_version: info.server_info.as_ref().map(|i| i.version.clone()),
                protocol_version: info.protocol_version.to_string(),
                instructions: info.instructions.clone(),
                tools: tools?,
            })
        }
        .await;
        self.count("probe", &result, started);
        result
    }

    /// Closes the service's session (it was changed or removed).
    pub fn forget(&self, org: Id, service: Id) {
        if let Some(e) = self.entries().remove(&(org, service)) {
            if let Ok(mut slot) = e.session.try_lock() {
                close(&mut slot);
            }
        }
    }
}

type HeaderPair = Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>;

/// Removes a call from those its caller may cancel when it ends, however it ends.
struct Registered<'a> {
    mcp: &'a Mcp,
    key: (Id, Id, String),
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.mcp.inner.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}

/// Tells the server a request is cancelled, unless disarmed first (the request ended): covers
/// a caller who goes away half-way.
struct CancelOnDrop {
    peer: Option<rmcp::service::Peer<RoleClient>>,
    id: RequestId,
}

impl CancelOnDrop {
    fn send(&mut self, reason: &str) {
        let Some(peer) = self.peer.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let notification =
            CancelledNotification::new(CancelledNotificationParam::new(Some(self.id.clone()), Some(reason.into())));
        runtime.spawn(async move {
            let _ = peer.send_notification(notification.into()).await;
        });
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.send("the caller went away");
    }
}

/// One tool call on an open session.
async fn call(
    s: &Session,
    settings: &McpSettings,
    tool: String,
    arguments: Map<String, Value>,
    sink: ProgressSink,
    cancel: &Notify,
) -> Result<rmcp::model::CallToolResult, McpError> {
    let timeout = Duration::from_millis(settings.timeout_ms);
    let mut params = CallToolRequestParams::new(tool);
    params.arguments = Some(arguments);
    let request = ClientRequest::CallToolRequest(Request::new(params));
    let peer = s.client.peer();
    let handle = peer
        .send_cancellable_request(request, PeerRequestOptions::with_timeout(timeout))
        .await
        .map_err(|e| service_error(&e, settings.timeout_ms))?;
    let token = handle.progress_token.clone();
    s.shared.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(token.clone(), sink);
    let mut guard = CancelOnDrop { peer: Some(peer.clone()), id: handle.id.clone() };
    let result = tokio::select! {
        r = handle.await_response() => Some(r),
        () = cancel.notified() => None,
    };
    s.shared.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&token);
    match result {
        None => {
            guard.send("cancelled by the caller");
            Err(McpError::Cancelled)
        }
        Some(r) => {
            // The request ended on its own (a timeout already told the server).
            guard.peer = None;
            match r.map_err(|e| service_error(&e, settings.timeout_ms))? {
                ServerResult::CallToolResult(r) => Ok(r),
                _ => Err(McpError::Server("an answer of another kind than a tool's result".into())),
            }
        }
    }
}

/// Closes the session in `slot`, if any (it stops counting as open once its last holder, a
/// call in flight, lets go).
fn close(slot: &mut Option<Arc<Session>>) {
    if let Some(s) = slot.take() {
        s.client.cancellation_token().cancel();
    }
}

/// Whether the session's server still answers a ping (within a second).
async fn alive(session: &Session) -> bool {
    let ping = ClientRequest::PingRequest(rmcp::model::PingRequest::default());
    within(Duration::from_secs(1), session.client.peer().send_request(ping)).await.is_ok()
}

/// The caller's role must be among the service's callers.
fn may_call(caller: &Caller, service: &Service) -> Result<(), McpError> {
    if service.callers.contains(&caller.role) { Ok(()) } else { Err(McpError::NotACaller(caller.role.as_str())) }
}

/// Whether `role` may call `tool` of `service`: among the service's callers, and among the
/// tool's roles when the service names some.
pub fn may_call_tool(role: Role, service: &Service, tool: &str) -> Result<(), McpError> {
    let settings = service.mcp.as_ref().ok_or(McpError::NotMcp)?;
    if !service.callers.contains(&role) {
        return Err(McpError::NotACaller(role.as_str()));
    }
    match settings.tool_roles.get(tool) {
        Some(roles) if !roles.contains(&role) => Err(McpError::ToolNotAllowed(role.as_str(), tool.to_owned())),
        _ => Ok(()),
    }
}

async fn within<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, ServiceError>>,
) -> Result<T, McpError> {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|e| service_error(&e, ms)),
        Err(_) => Err(McpError::Timeout(ms)),
    }
}

fn service_error(e: &ServiceError, timeout_ms: u64) -> McpError {
    match e {
        ServiceError::McpError(e) => McpError::Server(e.message.to_string()),
        ServiceError::Timeout { .. } => McpError::Timeout(timeout_ms),
        ServiceError::Cancelled { .. } => McpError::Cancelled,
        ServiceError::TransportClosed => McpError::Unreachable("the session closed".into()),
        other => McpError::Unreachable(opening_error(&other.to_string())),
    }
}

/// An error's text, at most a line of it (the SDK's errors can carry a response body).
fn opening_error(e: &str) -> String {
    let line = e.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

/// `d` plus up to half of it again, at random.
fn jitter(d: Duration) -> Duration {
    let mut r = [0u8; 1];
    ids::fill_random(&mut r);
    d + d.mul_f64(f64::from(r[0]) / 510.0)
}
