//! The service gateway: a caller's request forwarded to a registered service through
//! [`crate::egress`], with the service's sealed credential put on at the last moment and the
//! caller's identity in signed headers.
//!
//! Each call, in order: the service must name the caller's role among its callers; its budget
//! (calls a second) must have room; its circuit breaker must let the call through (open → 503
//! `circuit_open` with `Retry-After`, no packet sent); a slot for its audit record must be free.
//! Then the request goes out, bounded by the service's timeout and answer cap, and idempotent
//! methods are tried again (short, jittered waits) when the service could not be reached, timed
//! out or answered 502/503/504. Every try's outcome feeds the breaker.
//!
//! The identity headers: `Outpost-Identity` is a JSON object (organization, user, role, actor,
//! request id, method, path with query, SHA-256 of the body), signed like a Standard Webhooks
//! message: `Outpost-Identity-Id`, `Outpost-Identity-Timestamp` and
//! `Outpost-Identity-Signature` (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{identity}">`,
//! one per signing secret in force). A service verifies them with any Standard Webhooks library
//! by giving it the identity as the payload and those three as `webhook-id`,
//! `webhook-timestamp` and `webhook-signature`.
//!
//! Answers are read whole (up to the service's `response_bytes_max`) before they are handed
//! back, so each call in flight reserves that much of `services.gateway_buffer_bytes_max` for
//! its whole length, and calls wait for room: the memory held for answers is bounded however
//! many callers there are.
//!
//! Each call that reaches for the service (whatever came of it, including a call dropped
//! half-way because the caller went away or the request ran out of time: `cancelled`) has an
//! audit record; calls the gateway refuses first (role, budget, open circuit, path, size) send
//! nothing and have none.
//! The record (method, path without its query, status, attempts, time, outcome;
//! never a body, a query, a header or a secret) is set aside once the call is over; the
//! records set aside within [`RECORD_WINDOW`] go to the store writer together, as one job
//! that joins its next group commit, so calls at any rate cost the writer a commit every few
//! milliseconds at most. The answer does not wait for the disk. The records waiting are bounded
//! (`services.gateway_audit_backlog_max`): past it calls are refused with 503 `audit_backlog`,
//! so no call goes unrecorded beyond what a crash can cut short (the records of the last
//! window, and those waiting for the commit in progress).
//!
//! What a call needs of its service's settings and opens from the vault (the base URL
//! parsed, the credential's header, the signing secrets in force) is kept with the service's
//! live state for the version of its settings it came from, so a change to the service (a new
//! credential, a rotated secret) takes effect on the next call; an OAuth connection's token is
//! asked for on each call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::policy::Role;
use crate::domain::services::{CredentialKind, GatewaySettings, Service};
use crate::egress::{Breaker, BreakerConfig, BreakerState, CallLimits, Egress, EgressError};
use crate::ids::{self, Id};
use crate::limits::{Budget, Limited, Limiter};
use crate::metrics::{Metrics, OutcomeLabels, ServiceLabels};
use crate::oauth::OAuthError;
use crate::store::writer::{MutationCtx, Record, Writer};
use crate::vault::VaultCell;
use crate::webhooks::signing::{self, Secret};

/// Headers of a caller's request that never reach a service: the connection's own, the
/// caller's credentials and cookies for Outpost, forwarding claims, and Outpost's identity
/// headers (which only the gateway writes).
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
    "authorization",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// Headers of a service's answer that never reach the caller: the connection's own, and
/// cookies (which would land on Outpost's origin).
const DROPPED_ANSWER_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "set-cookie",
    "set-cookie2",
    "alt-svc",
];

/// Stale per-service states are dropped once the map holds this many.
const STATES_MAX: usize = 4096;

/// Call records set aside within this long go to the writer together.
pub const RECORD_WINDOW: Duration = Duration::from_millis(10);

/// What the gateway is built from.
pub struct Parts {
    pub egress: Egress,
    /// Fresh tokens for services whose credential is an OAuth connection.
    pub oauth: crate::oauth::OAuth,
    pub vault: VaultCell,
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    pub audit_backlog_max: usize,
    /// Bytes of answers the gateway may hold at once (`services.gateway_buffer_bytes_max`).
    pub buffer_bytes_max: u64,
}

/// A service's live state at the gateway, for one version of its settings: its breaker and
/// budget, and what its calls need that is the same for each of them.
struct State {
    version: u64,
    breaker: Breaker,
    budget: Budget,
    labels: ServiceLabels,
    /// The base URL, parsed (`None`: it does not parse, every path is refused).
    base: Option<reqwest::Url>,
    /// The credential's header once opened (services whose credential is a stored secret).
    credential: OnceLock<Option<(HeaderName, HeaderValue)>>,
    /// The signing secrets in force, opened, and until when that holds (ms; the first end of
    /// an overlap).
    signing: Mutex<Option<(Arc<Vec<Secret>>, i64)>>,
}

/// Call records set aside, waiting to go to the writer, with their backlog slots.
#[derive(Default)]
struct Held {
    records: Vec<Record>,
    slots: Vec<OwnedSemaphorePermit>,
}

struct Inner {
    parts: Parts,
    states: Mutex<HashMap<(Id, Id), Arc<State>>>,
    audit_slots: Arc<Semaphore>,
    held: Arc<Mutex<Held>>,
    /// Room for answers being read, in KiB.
    buffers: Arc<Semaphore>,
}

/// The gateway (cheap to clone).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// Who is calling: their role, and the audit context of the request.
pub struct Caller {
    pub user: Id,
    pub role: Role,
    pub request_id: String,
    pub ctx: MutationCtx,
}

/// A request to forward.
pub struct Call<'a> {
    pub method: reqwest::Method,
    /// Under the service's base URL, starting with `/`.
    pub path: String,
    pub query: Option<&'a str>,
    /// The caller's, as received (those that go on are picked from them).
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// A service's answer, to hand back as it is.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Tries it took.
    pub attempts: u32,
}

/// Why a call was not answered by the service.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the {0} role may not call this service")]
    NotACaller(&'static str),
    #[error("the path must stay under the service's base URL")]
    BadPath,
    #[error("the request body is over the service's limit of {0} bytes")]
    TooLarge(u64),
    #[error("rate limited")]
    Limited(Limited),
    #[error("the service's circuit is open after repeated failures")]
    CircuitOpen(Duration),
    #[error("too many gateway calls wait for their audit records")]
    AuditBacklog,
    #[error("the service did not answer within {0} ms")]
    Timeout(u64),
    #[error("the service could not be reached: {0}")]
    Unreachable(String),
    #[error("the service's answer is over the limit of {0} bytes")]
    AnswerTooLarge(u64),
    #[error("refused before connecting: {0}")]
    Refused(String),
    #[error("the service's credential cannot be opened")]
    Credential,
    /// The service's OAuth connection gave no token (it needs authorizing again, or its
    /// provider could not be reached).
    #[error("the service's OAuth connection gave no token: {0}")]
    Connection(String),
}

impl GatewayError {
    fn outcome(&self) -> &'static str {
        match self {
            GatewayError::NotACaller(_) => "refused_role",
            GatewayError::BadPath | GatewayError::TooLarge(_) => "bad_request",
            GatewayError::Limited(_) => "rate_limited",
            GatewayError::CircuitOpen(_) => "circuit_open",
            GatewayError::AuditBacklog => "audit_backlog",
            GatewayError::Timeout(_) => "timeout",
            GatewayError::Unreachable(_) | GatewayError::Credential => "unreachable",
            GatewayError::Connection(_) => "connection",
            GatewayError::AnswerTooLarge(_) => "too_large",
            GatewayError::Refused(_) => "refused_address",
        }
    }
}

/// Methods safe to send again.
fn idempotent(m: &reqwest::Method) -> bool {
    matches!(m.as_str(), "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS")
}

pub(crate) fn breaker_config(g: &GatewaySettings) -> BreakerConfig {
    BreakerConfig {
        window: Duration::from_millis(g.breaker_window_ms),
        min_calls: g.breaker_min_calls,
        failure_ratio: f64::from(g.breaker_failure_percent) / 100.0,
        open_for: Duration::from_millis(g.breaker_open_ms),
        probes: g.breaker_probes,
    }
}

pub(crate) fn breaker_gauge(s: BreakerState) -> i64 {
    match s {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}

/// The URL of `path` (decoded text: a `%`, `?` or `#` in it is a character of the path) and
/// `query` under `base`, or `None` when it would leave the base's path (dot segments, a
/// backslash).
pub fn target_url(base: &str, path: &str, query: Option<&str>) -> Option<reqwest::Url> {
    target_under(&reqwest::Url::parse(base).ok()?, base, path, query)
}

/// [`target_url`] with the base already parsed (`base_url` is `base`).
fn target_under(base_url: &reqwest::Url, base: &str, path: &str, query: Option<&str>) -> Option<reqwest::Url> {
    let path = path.replace('%', "%25").replace('?', "%3F").replace('#', "%23");
    let mut url = reqwest::Url::parse(&format!("{base}{path}")).ok()?;
    let root = base_url.path().trim_end_matches('/');
    let under = url.path() == root || url.path().strip_prefix(root).is_some_and(|rest| rest.starts_with('/'));
    let same_place = url.scheme() == base_url.scheme()
        && url.host_str() == base_url.host_str()
        && url.port_or_known_default() == base_url.port_or_known_default();
    if !under || !same_place || path.contains('\\') || url.fragment().is_some() {
        return None;
    }
    url.set_query(query.filter(|q| !q.is_empty()));
    Some(url)
}

/// The caller's identity as a service receives it (`Outpost-Identity`), its fields in this order.
#[derive(serde::Serialize)]
struct Identity<'a> {
    org: Id,
    user: Id,
    role: &'a str,
    actor: &'a str,
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    body_sha256: &'a str,
}

/// What a try came to: an answer to hand back, or a failure, and whether trying again may help.
enum Try {
    Answered(crate::egress::Answer),
    Failed { error: GatewayError, again: bool },
}

impl Gateway {
    pub fn new(parts: Parts) -> Self {
        let slots = Arc::new(Semaphore::new(parts.audit_backlog_max));
        let kib = usize::try_from(parts.buffer_bytes_max / 1024).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let buffers = Arc::new(Semaphore::new(kib));
        Self {
            inner: Arc::new(Inner {
                parts,
                states: Mutex::default(),
                audit_slots: slots,
                held: Arc::default(),
                buffers,
            }),
        }
    }

    /// Forwards `call` to `service` for `caller` (see the module's documentation).
    pub async fn forward(&self, caller: Caller, service: &Service, call: Call<'_>) -> Result<Reply, GatewayError> {
        let started = Instant::now();
        let m = &self.inner.parts.metrics;
        let result = self.forward_inner(&caller, service, &call).await;
        let outcome = match &result {
            Ok(_) => "answered",
            Err(e) => e.outcome(),
        };
        m.gateway_calls.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
        m.gateway_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn forward_inner(&self, caller: &Caller, service: &Service, call: &Call<'_>) -> Result<Reply, GatewayError> {
        if !service.callers.contains(&caller.role) {
            return Err(GatewayError::NotACaller(caller.role.as_str()));
        }
        let g = &service.gateway;
        if call.body.len() as u64 > g.request_bytes_max {
            return Err(GatewayError::TooLarge(g.request_bytes_max));
        }
        let org = caller.ctx.scope.org();
        let state = self.state(org, service);
        let url = state
            .base
            .as_ref()
            .and_then(|base| target_under(base, &service.base_url, &call.path, call.query))
            .ok_or(GatewayError::BadPath)?;
        state.budget.check().map_err(GatewayError::Limited)?;
        let labels = &state.labels;
        let headers = self.outgoing_headers(caller, service, &state, call, &url).await?;
        let details = json!({"name": service.name, "method": call.method.as_str(), "path": call.path, "status": null, "attempts": 0});
        let mut record = self
            .record(caller.ctx.clone(), "service.call", format!("service:{}", service.id), details)
            .ok_or(GatewayError::AuditBacklog)?;
        // Room for the answer, reserved for the whole call (waited for: the edge's request
        // timeout bounds the wait).
        let kib = g.response_bytes_max.div_ceil(1024).min(self.inner.parts.buffer_bytes_max / 1024);
        let _room = self
            .inner
            .buffers
            .clone()
            .acquire_many_owned(u32::try_from(kib).unwrap_or(u32::MAX))
            .await
            .expect("never closed");
        let tries = if idempotent(&call.method) { g.retries + 1 } else { 1 };
        let limits = CallLimits { timeout_ms: g.timeout_ms, response_bytes_max: g.response_bytes_max };
        let mut attempts = 0;
        let result = loop {
            let pass = match state.breaker.admit() {
                Ok(pass) => pass,
                Err(wait) => {
                    self.inner
                        .parts
                        .metrics
                        .gateway_breaker
                        .get_or_create(labels)
                        .set(breaker_gauge(BreakerState::Open));
                    break Err(GatewayError::CircuitOpen(wait));
                }
            };
            attempts += 1;
            record.note("attempts", json!(attempts));
            let outcome = self.attempt(call, &url, &headers, limits).await;
            let (ok_for_breaker, done) = match outcome {
                Try::Answered(a) => {
                    let failed = a.status >= 500;
                    let again = matches!(a.status, 502..=504) && attempts < tries;
                    (!failed, if again { None } else { Some(Ok(a)) })
                }
                Try::Failed { error, again } => {
                    let counts = !matches!(error, GatewayError::Refused(_));
                    (!counts, if again && attempts < tries { None } else { Some(Err(error)) })
                }
            };
            state.breaker.record(pass, ok_for_breaker);
            self.inner.parts.metrics.gateway_breaker.get_or_create(labels).set(breaker_gauge(state.breaker.state()));
            if let Some(done) = done {
                break done;
            }
            // A short wait, doubling, with jitter, before trying again.
            let base = 25u64 << (attempts - 1).min(5);
            let mut r = [0u8; 1];
            ids::fill_random(&mut r);
            tokio::time::sleep(Duration::from_millis(base + base * u64::from(r[0]) / 255)).await;
        };
        let status = match &result {
            Ok(a) if a.truncated => None,
            Ok(a) => Some(a.status),
            Err(_) => None,
        };
        let outcome = match &result {
            Ok(a) if a.truncated => "too_large",
            Ok(_) => "answered",
            Err(e) => e.outcome(),
        };
        record.finish(outcome, [("status", json!(status))]);
        let a = result?;
        if a.truncated {
            return Err(GatewayError::AnswerTooLarge(g.response_bytes_max));
        }
        let mut headers = a.headers;
        for h in DROPPED_ANSWER_HEADERS {
            headers.remove(*h);
        }
        Ok(Reply { status: a.status, headers, body: a.body, attempts })
    }

    /// One try through egress.
    async fn attempt(&self, call: &Call<'_>, url: &reqwest::Url, headers: &HeaderMap, limits: CallLimits) -> Try {
        let mut req = reqwest::Request::new(call.method.clone(), url.clone());
        *req.headers_mut() = headers.clone();
        if !call.body.is_empty() {
            *req.body_mut() = Some(call.body.clone().into());
        }
        let started = Instant::now();
        let sent = self.inner.parts.egress.send_within(req, limits).await;
        self.inner.parts.metrics.gateway_upstream_seconds.observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(a) => Try::Answered(a),
            Err(EgressError::Timeout(ms)) => Try::Failed { error: GatewayError::Timeout(ms), again: true },
            Err(EgressError::Refused(why) | EgressError::BadUrl(why)) => {
                Try::Failed { error: GatewayError::Refused(why), again: false }
            }
            Err(e @ (EgressError::Connect(_) | EgressError::Failed(_))) => {
                Try::Failed { error: GatewayError::Unreachable(e.to_string()), again: true }
            }
            Err(e @ EgressError::TooManyRedirects(_)) => {
                Try::Failed { error: GatewayError::Unreachable(e.to_string()), again: false }
            }
        }
    }

    /// The caller's headers that may go on, the service's credential and the signed identity.
    async fn outgoing_headers(
        &self,
        caller: &Caller,
        service: &Service,
        state: &State,
        call: &Call<'_>,
        url: &reqwest::Url,
    ) -> Result<HeaderMap, GatewayError> {
        let mut headers = HeaderMap::with_capacity(call.headers.len() + 6);
        for (name, value) in call.headers {
            let n = name.as_str();
            // `*/*` is what generated clients send for "any type": no type at all.
            let any_type = name == reqwest::header::CONTENT_TYPE && value.as_bytes() == b"*/*";
            if DROPPED_REQUEST_HEADERS.contains(&n) || n.starts_with("outpost-") || any_type {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        let org = caller.ctx.scope.org();
        let credential = self.credential(caller, service, state).await?;
        if let Some((name, value)) = credential {
            // The caller's own value of the credential's header never goes on beside it.
            headers.insert(name, value);
        }
        let body_sha256 = ids::hex(ring::digest::digest(&ring::digest::SHA256, &call.body).as_ref());
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let identity = serde_json::to_string(&Identity {
            org,
            user: caller.user,
            role: caller.role.as_str(),
            actor: &caller.ctx.actor,
            request_id: &caller.request_id,
            method: call.method.as_str(),
            path: &path,
            body_sha256: &body_sha256,
        })
        .expect("an identity serializes");
        let secrets = self.signing_secrets(org, service, state)?;
        let id = format!("call_{}", Id::new().0.simple());
        let [(_, id), (_, timestamp), (_, signature)] =
            signing::headers(&secrets.iter().collect::<Vec<_>>(), &id, ids::now_ms() / 1000, identity.as_bytes());
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        put("outpost-identity", identity);
        put("outpost-identity-id", id);
        put("outpost-identity-timestamp", timestamp);
        if !secrets.is_empty() {
            put("outpost-identity-signature", signature);
        }
        Ok(headers)
    }

    /// The header that carries the service's credential: kept per version of the service for a
    /// stored secret, asked for each time for an OAuth connection.
    async fn credential(
        &self,
        caller: &Caller,
        service: &Service,
        state: &State,
    ) -> Result<Option<(HeaderName, HeaderValue)>, GatewayError> {
        let fresh = || async {
            self.inner.parts.oauth.service_header(caller.ctx.scope, service).await.map_err(|e| match e {
                OAuthError::Domain(_) | OAuthError::Unsupported(_) => GatewayError::Credential,
                other => GatewayError::Connection(other.to_string()),
            })
        };
        let keepable =
            service.credential.as_ref().is_none_or(|c| !matches!(c.kind, CredentialKind::OAuthConnection { .. }));
        if !keepable {
            return fresh().await;
        }
        if let Some(kept) = state.credential.get() {
            return Ok(kept.clone());
        }
        // Kept only once it opened: a failure is tried again on the next call.
        let opened = fresh().await?;
        Ok(state.credential.get_or_init(|| opened).clone())
    }

    /// The secrets that sign the service's calls now, opened once per version of the service
    /// and again when one of them stops signing.
    fn signing_secrets(&self, org: Id, service: &Service, state: &State) -> Result<Arc<Vec<Secret>>, GatewayError> {
        let now = ids::now_ms();
        let mut kept = state.signing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((secrets, until)) = kept.as_ref() {
            if now < *until {
                return Ok(secrets.clone());
            }
        }
        let vault = self.inner.parts.vault.get();
        let keys = service.signing_keys(&vault, org, now).map_err(|_| GatewayError::Credential)?;
        let secrets = Arc::new(keys.into_iter().map(Secret::from_key).collect::<Vec<_>>());
        let until =
            service.signing.iter().filter_map(|s| s.expires_at_ms).filter(|e| *e > now).min().unwrap_or(i64::MAX);
        *kept = Some((secrets.clone(), until));
        Ok(secrets)
    }

    /// An audit record for a call about to reach for a service, with a slot in the bounded
    /// backlog (`None`: the backlog is full, refuse the call).
    pub fn record(
        &self,
        ctx: MutationCtx,
        action: &'static str,
        target: String,
        details: serde_json::Value,
    ) -> Option<CallRecord> {
        let slot = self.inner.audit_slots.clone().try_acquire_owned().ok()?;
        Some(CallRecord {
            writer: self.inner.parts.writer.clone(),
            held: self.inner.held.clone(),
            pending: Some((slot, ctx)),
            action,
            target,
            details,
            started: Instant::now(),
        })
    }

    /// The service's live state, made anew when its settings changed.
    fn state(&self, org: Id, service: &Service) -> Arc<State> {
        let mut states = self.inner.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = states.get(&(org, service.id)) {
            if s.version == service.version {
                return s.clone();
            }
        }
        if states.len() >= STATES_MAX {
            // Only the states of services called right now are kept; the others start afresh.
            states.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let s = Arc::new(State {
            version: service.version,
            breaker: Breaker::new(breaker_config(&service.gateway)),
            budget: Budget::per_second(service.gateway.rate_per_s, Limiter::Service),
            labels: ServiceLabels { org: org.to_string(), service: service.id.to_string() },
            base: reqwest::Url::parse(&service.base_url).ok(),
            credential: OnceLock::new(),
            signing: Mutex::new(None),
        });
        states.insert((org, service.id), s.clone());
        s
    }
}

/// A call's audit record (a gateway call's, an MCP request's), set aside when the call ends
/// however it ends: finished, or dropped half-way (the caller went away, or the request ran
/// out of time at the edge), as `cancelled`; it goes to the writer with the others of its
/// [`RECORD_WINDOW`]. Its backlog slot is free once the record is committed.
pub struct CallRecord {
    writer: Writer,
    held: Arc<Mutex<Held>>,
    /// Its backlog slot and audit context, until it is handed over.
    pending: Option<(tokio::sync::OwnedSemaphorePermit, MutationCtx)>,
    action: &'static str,
    target: String,
    /// What the record says besides its outcome and duration (a JSON object).
    details: serde_json::Value,
    started: Instant,
}

impl CallRecord {
    /// Sets a detail now, so that the record has it however the call ends.
    pub fn note(&mut self, key: &'static str, value: serde_json::Value) {
        if let Some(d) = self.details.as_object_mut() {
            d.insert(key.to_owned(), value);
        }
    }

    /// Sets the record aside with `outcome`, the time since it began and `more` details.
    pub fn finish<const N: usize>(&mut self, outcome: &'static str, more: [(&'static str, serde_json::Value); N]) {
        let Some((slot, ctx)) = self.pending.take() else { return };
        // Dropped outside the runtime (it is shutting down), there is nothing left to write with.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (action, target) = (self.action, std::mem::take(&mut self.target));
        let mut details = std::mem::take(&mut self.details);
        if let Some(d) = details.as_object_mut() {
            for (k, v) in more {
                d.insert(k.to_owned(), v);
            }
            d.insert(
                "duration_ms".into(),
                json!(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)),
            );
            d.insert("outcome".into(), json!(outcome));
        }
        let first = {
            let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            held.records.push(Record { ctx, action, target, details });
            held.slots.push(slot);
            held.records.len() == 1
        };
        if !first {
            return;
        }
        // The first record of a window sends the window's records once it is over.
        let (writer, held) = (self.writer.clone(), self.held.clone());
        runtime.spawn(async move {
            tokio::time::sleep(RECORD_WINDOW).await;
            let Held { records, slots } =
                std::mem::take(&mut *held.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            let n = records.len();
            if let Err(e) = writer.append_records(records).await {
                tracing::warn!(error = %e, records = n, "calls' audit records were not written");
            }
            drop(slots);
        });
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish("cancelled", []);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_base_url() {
        let base = "https://api.example.org/v2";
        let ok = |p: &str, q: Option<&str>| target_url(base, p, q).map(|u| u.to_string());
        assert_eq!(ok("/tickets", None).as_deref(), Some("https://api.example.org/v2/tickets"));
        assert_eq!(ok("/tickets/7", Some("a=1")).as_deref(), Some("https://api.example.org/v2/tickets/7?a=1"));
        assert_eq!(ok("/", None).as_deref(), Some("https://api.example.org/v2/"));
        for bad in ["/../v1/admin", "/a/../../v1", "/..", "/\\..\\v1", "@evil.example/x", ".evil.example/x"] {
            assert_eq!(ok(bad, None), None, "{bad} must be refused");
        }
        // Decoded text: what looks like an escape, a query or a fragment is part of the path.
        assert_eq!(ok("/%2e%2e/v1", None).as_deref(), Some("https://api.example.org/v2/%252e%252e/v1"));
        assert_eq!(ok("/x?y#z", Some("q=1")).as_deref(), Some("https://api.example.org/v2/x%3Fy%23z?q=1"));
        // A base at the root: everything under it.
        assert!(target_url("http://127.0.0.1:9", "/x/y", None).is_some());
    }

    #[test]
    fn only_idempotent_methods_are_tried_again() {
        for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
            assert!(idempotent(&m.parse().unwrap()));
        }
        for m in ["POST", "PATCH"] {
            assert!(!idempotent(&m.parse().unwrap()));
        }
    }
}
