//! Prometheus metrics: one registry per server, handles shared by the parts that count.
//!
//! A registry per `run` (not a process-global one) keeps in-process test servers apart.
//! Gauges that describe state elsewhere (queue depths, log head, follower lag) are refreshed
//! when `/metrics` is rendered.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Log lines the process could not write (its output gone, or on a full disk). The one
/// process-wide count: logging itself is process-wide. Each server's `log_lines_dropped`
/// catches up with it when `/metrics` is rendered.
static LOG_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Counts a log line that could not be written.
pub fn log_line_dropped() {
    LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// Log lines dropped so far in this process.
pub fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED.load(Ordering::Relaxed)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The operationId, or `other` for routes outside the API document.
    pub route: &'static str,
    /// The method (`other` for an extension method).
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    pub follower: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RouteLabels, Counter>,
    pub http_latency_seconds: HistogramFamily<RouteOnly>,
    pub writer_batch_len: Histogram,
    pub writer_commit_seconds: Histogram,
    pub writer_commits: Counter,
    pub writer_queue_len: Gauge,
    pub event_log_head_gseq: Gauge,
    pub follower_lag: Family<FollowerLabels, Gauge>,
    pub events_trimmed: Counter,
    pub rate_limited: Family<LimiterLabels, Counter>,
    pub connections_open: Gauge,
    pub connections_shed: Counter,
    pub realtime_connections: Gauge,
    pub realtime_subscriptions: Gauge,
    pub realtime_events_sent: Counter,
    pub realtime_replayed: Counter,
    pub realtime_cut_off_slow: Counter,
    pub realtime_fanout_seconds: Histogram,
    pub realtime_send_queue_deepest: Gauge,
    pub runtime_workers_busy_permille: Gauge,
    pub docs_loaded: Gauge,
    pub uploads_in_progress: Gauge,
    pub file_bytes_in: Counter,
    pub file_bytes_out: Counter,
    pub file_reads_from_memory: Counter,
    pub file_blobs_collected: Counter,
    pub file_bytes_stored: Family<OrgLabels, Gauge>,
    pub thumbnails_made: Counter,
    pub thumbnails_served_cached: Counter,
    pub docs_loaded_bytes: Gauge,
    pub docs_connections: Gauge,
    pub docs_updates: Counter,
    pub docs_relayed: Counter,
    pub docs_refused: Counter,
    pub docs_compactions: Counter,
    pub docs_sync_seconds: Histogram,
    pub turn_allocations: Gauge,
    pub media_sessions: Gauge,
    pub media_tracks: Gauge,
    pub media_packets_in: Counter,
    pub media_packets_out: Counter,
    pub media_bytes_out: Counter,
    pub media_packets_dropped: Counter,
    pub media_keyframe_requests: Counter,
    pub media_keyframe_requests_received: Counter,
    pub media_nacks: Counter,
    pub media_bandwidth_estimates: Counter,
    pub media_layer_switches: Counter,
    pub media_datagrams_unrouted: Counter,
    pub media_datagrams_dropped: Counter,
    pub log_lines_dropped: Counter,
    pub webhook_deliveries: Family<OutcomeLabels, Counter>,
    pub webhook_delivery_seconds: Histogram,
    pub webhook_backlog: Family<EndpointLabels, Gauge>,
    pub webhook_lag_seconds: Family<EndpointLabels, Gauge>,
    pub webhook_endpoints_disabled: Counter,
    pub service_health: Family<ServiceLabels, Gauge>,
    pub service_health_checks: Family<OutcomeLabels, Counter>,
    pub service_health_check_seconds: Histogram,
    pub gateway_calls: Family<OutcomeLabels, Counter>,
    pub gateway_seconds: Histogram,
    pub gateway_upstream_seconds: Histogram,
    pub gateway_breaker: Family<ServiceLabels, Gauge>,
    pub mcp_requests: Family<McpLabels, Counter>,
    pub mcp_request_seconds: Histogram,
    pub mcp_sessions: Gauge,
    pub mcp_breaker: Family<ServiceLabels, Gauge>,
    pub oauth_token_requests: Family<OAuthLabels, Counter>,
    pub oauth_token_seconds: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OAuthLabels {
    /// `authorization_code`, `refresh_token`, `client_credentials`, `revocation`.
    pub grant: String,
    /// `ok`, `refused` (the provider answered an OAuth error), `failed` (no usable answer).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub org: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct McpLabels {
    /// `tools/call`, `tools/list`, `resources/read`, …
    pub method: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub org: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgLabels {
    pub org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabels {
    pub limiter: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Metrics {
    #[allow(clippy::too_many_lines)] // one registration per metric, in one place
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("outpost");
        let http_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_latency_seconds: HistogramFamily<RouteOnly> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_latency_seconds.clone(),
        );
        let writer_batch_len = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]);
        registry.register("writer_batch_mutations", "Mutations per group commit", writer_batch_len.clone());
        let writer_commit_seconds = latency_histogram();
        registry.register(
            "writer_commit_duration_seconds",
            "Time to apply and durably commit one batch",
            writer_commit_seconds.clone(),
        );
        let writer_commits = Counter::default();
        registry.register("writer_commits", "Group commits", writer_commits.clone());
        let writer_queue_len = Gauge::default();
        registry.register("writer_queue_mutations", "Mutations waiting for the writer", writer_queue_len.clone());
        let event_log_head_gseq = Gauge::default();
        registry.register("event_log_head", "The last global event log position", event_log_head_gseq.clone());
        let follower_lag = Family::<FollowerLabels, Gauge>::default();
        registry.register("follower_lag_events", "Events a durable follower has yet to apply", follower_lag.clone());
        let events_trimmed = Counter::default();
        registry.register("events_trimmed", "Events removed by retention", events_trimmed.clone());
        let rate_limited = Family::<LimiterLabels, Counter>::default();
        registry.register("rate_limited", "Requests refused by a rate limit, by limiter", rate_limited.clone());
        let realtime_connections = Gauge::default();
        registry.register(
            "realtime_connections",
            "Open realtime sockets (authenticated)",
            realtime_connections.clone(),
        );
        let realtime_subscriptions = Gauge::default();
        registry.register("realtime_subscriptions", "Live topic subscriptions", realtime_subscriptions.clone());
        let realtime_events_sent = Counter::default();
        registry.register("realtime_events_sent", "Events written to realtime sockets", realtime_events_sent.clone());
        let realtime_replayed = Counter::default();
        registry.register("realtime_replayed", "Events replayed from the log on resume", realtime_replayed.clone());
        let realtime_cut_off_slow = Counter::default();
        registry.register(
            "realtime_cut_off_slow",
            "Sockets closed because their send queue filled (4008)",
            realtime_cut_off_slow.clone(),
        );
        let realtime_fanout_seconds = latency_histogram();
        registry.register(
            "realtime_fanout_seconds",
            "From an event's commit to its hand-off to every subscriber's queue",
            realtime_fanout_seconds.clone(),
        );
        let runtime_workers_busy_permille = Gauge::default();
        registry.register(
            "runtime_workers_busy_permille",
            "Share of the time the async runtime's workers were busy lately, per mille (write pacing follows it)",
            runtime_workers_busy_permille.clone(),
        );
        let realtime_send_queue_deepest = Gauge::default();
        registry.register(
            "realtime_send_queue_deepest",
            "The fullest subscriber send queue at the last event fanned out (frames)",
            realtime_send_queue_deepest.clone(),
        );
        let connections_open = Gauge::default();
        registry.register("connections_open", "HTTP connections open and served", connections_open.clone());
        let connections_shed = Counter::default();
        registry.register(
            "connections_shed",
            "Connections answered 503 overloaded and closed: over http.connections_max or http.connections_per_addr_max",
            connections_shed.clone(),
        );
        let uploads_in_progress = Gauge::default();
        registry.register(
            "uploads_in_progress",
            "Resumable uploads begun and not yet finished",
            uploads_in_progress.clone(),
        );
        let file_bytes_in = Counter::default();
        registry.register("file_bytes_in", "File bytes received by uploads", file_bytes_in.clone());
        let file_bytes_out = Counter::default();
        registry.register("file_bytes_out", "File bytes sent by downloads", file_bytes_out.clone());
        let file_reads_from_memory = Counter::default();
        registry.register(
            "file_reads_from_memory",
            "Downloads of small files answered from memory (files.memory_cache_bytes), not from disk",
            file_reads_from_memory.clone(),
        );
        let file_blobs_collected = Counter::default();
        registry.register(
            "file_blobs_collected",
            "Files' bytes removed by the collector (no record named them for the grace period)",
            file_blobs_collected.clone(),
        );
        let file_bytes_stored = Family::<OrgLabels, Gauge>::default();
        registry.register(
            "file_bytes_stored",
            "Bytes of files each organization stores (identical files once), as its quota counts them",
            file_bytes_stored.clone(),
        );
        let thumbnails_made = Counter::default();
        registry.register("thumbnails_made", "Thumbnails decoded and encoded", thumbnails_made.clone());
        let thumbnails_served_cached = Counter::default();
        registry.register(
            "thumbnails_served_cached",
            "Thumbnails served from the cache on disk",
            thumbnails_served_cached.clone(),
        );
        let docs_loaded = Gauge::default();
        registry.register("docs_loaded", "Shared documents loaded in memory", docs_loaded.clone());
        let docs_loaded_bytes = Gauge::default();
        registry.register(
            "docs_loaded_bytes",
            "Encoded size of the loaded documents' state (an estimate of their memory)",
            docs_loaded_bytes.clone(),
        );
        let docs_connections = Gauge::default();
        registry.register("docs_connections", "Open document sync sockets", docs_connections.clone());
        let docs_updates = Counter::default();
        registry.register("docs_updates", "Document updates stored (durable) and applied", docs_updates.clone());
        let docs_relayed = Counter::default();
        registry.register("docs_relayed", "Document updates relayed to sync sockets", docs_relayed.clone());
        let docs_refused = Counter::default();
        registry.register(
            "docs_refused",
            "Document updates refused (undecodable, read-only, over a cap)",
            docs_refused.clone(),
        );
        let docs_compactions = Counter::default();
        registry.register("docs_compactions", "Document compactions committed", docs_compactions.clone());
        let docs_sync_seconds = latency_histogram();
        registry.register(
            "docs_sync_seconds",
            "From an update's arrival to its durable commit and relay to the document's sockets",
            docs_sync_seconds.clone(),
        );
        let turn_allocations = Gauge::default();
        registry.register("turn_allocations", "Open allocations on the built-in TURN server", turn_allocations.clone());
        let media_sessions = Gauge::default();
        registry.register("media_sessions", "Media (WebRTC) connections open", media_sessions.clone());
        let media_tracks = Gauge::default();
        registry.register("media_tracks", "Tracks published into calls", media_tracks.clone());
        let media_packets_in = Counter::default();
        registry.register("media_packets_in", "RTP packets received from publishers", media_packets_in.clone());
        let media_packets_out = Counter::default();
        registry.register("media_packets_out", "RTP packets forwarded to players", media_packets_out.clone());
        let media_bytes_out = Counter::default();
        registry.register("media_bytes_out", "RTP payload bytes forwarded to players", media_bytes_out.clone());
        let media_packets_dropped = Counter::default();
        registry.register(
            "media_packets_dropped",
            "RTP packets not forwarded because a player's queue was full",
            media_packets_dropped.clone(),
        );
        let media_keyframe_requests = Counter::default();
        registry.register(
            "media_keyframe_requests",
            "Keyframe requests (PLI) sent to publishers",
            media_keyframe_requests.clone(),
        );
        let media_keyframe_requests_received = Counter::default();
        registry.register(
            "media_keyframe_requests_received",
            "Keyframe requests (PLI, FIR) from receivers, relayed to publishers at most twice a second per track",
            media_keyframe_requests_received.clone(),
        );
        let media_layer_switches = Counter::default();
        registry.register(
            "media_layer_switches",
            "Simulcast layer switches made for receivers (at keyframes)",
            media_layer_switches.clone(),
        );
        let media_nacks = Counter::default();
        registry.register(
            "media_nacks",
            "Retransmission requests (NACK) from receivers, answered from the send buffer",
            media_nacks.clone(),
        );
        let media_bandwidth_estimates = Counter::default();
        registry.register(
            "media_bandwidth_estimates",
            "Bandwidth estimates (REMB) from receivers, which cap the simulcast layer each gets",
            media_bandwidth_estimates.clone(),
        );
        let media_datagrams_unrouted = Counter::default();
        registry.register(
            "media_datagrams_unrouted",
            "Datagrams on the media port that belonged to no connection",
            media_datagrams_unrouted.clone(),
        );
        let media_datagrams_dropped = Counter::default();
        registry.register(
            "media_datagrams_dropped",
            "Datagrams on the media port dropped because their connection's queue was full",
            media_datagrams_dropped.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines that could not be written (output closed or disk full) and were dropped",
            log_lines_dropped.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, failed, exhausted)",
            webhook_deliveries.clone(),
        );
        let webhook_delivery_seconds = latency_histogram();
        registry.register(
            "webhook_delivery_duration_seconds",
            "Time from sending a webhook to its answer",
            webhook_delivery_seconds.clone(),
        );
        let webhook_backlog = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "webhook_backlog_messages",
            "Messages waiting for a webhook endpoint",
            webhook_backlog.clone(),
        );
        let webhook_lag_seconds = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "webhook_lag_seconds",
            "Age of the oldest message waiting for a webhook endpoint",
            webhook_lag_seconds.clone(),
        );
        let webhook_endpoints_disabled = Counter::default();
        registry.register(
            "webhook_endpoints_disabled",
            "Webhook endpoints the server switched off (failing, or backlog full)",
            webhook_endpoints_disabled.clone(),
        );
        let service_health = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "service_health",
            "A registered service's health: 0 unknown, 1 up, 2 degraded, 3 down",
            service_health.clone(),
        );
        let service_health_checks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "service_health_checks",
            "Health checks of registered services, by outcome (ok, slow, failed)",
            service_health_checks.clone(),
        );
        let service_health_check_seconds = latency_histogram();
        registry.register(
            "service_health_check_duration_seconds",
            "Time a registered service's health check took",
            service_health_check_seconds.clone(),
        );
        let gateway_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "gateway_calls",
            "Calls through the service gateway, by outcome (answered, refused_role, rate_limited, \
             circuit_open, audit_backlog, timeout, unreachable, too_large, refused_address)",
            gateway_calls.clone(),
        );
        let oauth_token_requests = Family::<OAuthLabels, Counter>::default();
        registry.register(
            "oauth_token_requests",
            "Requests to OAuth providers' token and revocation endpoints, by grant and outcome",
            oauth_token_requests.clone(),
        );
        let oauth_token_seconds = latency_histogram();
        registry.register(
            "oauth_token_request_duration_seconds",
            "Time a request to an OAuth provider's token or revocation endpoint took",
            oauth_token_seconds.clone(),
        );
        let gateway_seconds = latency_histogram();
        registry.register(
            "gateway_call_duration_seconds",
            "Time a gateway call took, from the request to the answer (retries included)",
            gateway_seconds.clone(),
        );
        let gateway_upstream_seconds = latency_histogram();
        registry.register(
            "gateway_upstream_duration_seconds",
            "Time each try of a gateway call waited for the service",
            gateway_upstream_seconds.clone(),
        );
        let gateway_breaker = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "gateway_breaker_state",
            "A service's circuit breaker at its last call: 0 closed, 1 half-open, 2 open",
            gateway_breaker.clone(),
        );
        let mcp_requests = Family::<McpLabels, Counter>::default();
        registry.register(
            "mcp_requests",
            "Requests to MCP servers, by method and outcome (ok, tool_error, invalid_arguments, \
             refused_role, circuit_open, timeout, cancelled, unreachable, protocol_error, …)",
            mcp_requests.clone(),
        );
        let mcp_request_seconds = latency_histogram();
        registry.register(
            "mcp_request_duration_seconds",
            "Time a request to an MCP server took, from the call to its result",
            mcp_request_seconds.clone(),
        );
        let mcp_sessions = Gauge::default();
        registry.register("mcp_sessions", "Sessions open with MCP servers", mcp_sessions.clone());
        let mcp_breaker = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "mcp_breaker_state",
            "An MCP server's circuit breaker at its last request: 0 closed, 1 half-open, 2 open",
            mcp_breaker.clone(),
        );
        Self {
            registry,
            http_requests,
            http_latency_seconds,
            writer_batch_len,
            writer_commit_seconds,
            writer_commits,
            writer_queue_len,
            event_log_head_gseq,
            follower_lag,
            events_trimmed,
            rate_limited,
            connections_open,
            connections_shed,
            realtime_connections,
            realtime_subscriptions,
            realtime_events_sent,
            realtime_replayed,
            realtime_cut_off_slow,
            realtime_fanout_seconds,
            realtime_send_queue_deepest,
            runtime_workers_busy_permille,
            docs_loaded,
            uploads_in_progress,
            file_bytes_in,
            file_bytes_out,
            file_reads_from_memory,
            file_blobs_collected,
            file_bytes_stored,
            thumbnails_made,
            thumbnails_served_cached,
            docs_loaded_bytes,
            docs_connections,
            docs_updates,
            docs_relayed,
            docs_refused,
            docs_compactions,
            docs_sync_seconds,
            turn_allocations,
            media_sessions,
            media_tracks,
            media_packets_in,
            media_packets_out,
            media_bytes_out,
            media_packets_dropped,
            media_keyframe_requests,
            media_keyframe_requests_received,
            media_nacks,
            media_bandwidth_estimates,
            media_layer_switches,
            media_datagrams_unrouted,
            media_datagrams_dropped,
            log_lines_dropped,
            webhook_deliveries,
            webhook_delivery_seconds,
            webhook_backlog,
            webhook_lag_seconds,
            webhook_endpoints_disabled,
            service_health,
            service_health_checks,
            service_health_check_seconds,
            gateway_calls,
            gateway_seconds,
            gateway_upstream_seconds,
            gateway_breaker,
            mcp_requests,
            mcp_request_seconds,
            mcp_sessions,
            mcp_breaker,
            oauth_token_requests,
            oauth_token_seconds,
        }
    }

    /// Brings the process-wide counts (dropped log lines) up to date.
    pub fn catch_up(&self) {
        let behind = log_lines_dropped().saturating_sub(self.log_lines_dropped.get());
        if behind > 0 {
            self.log_lines_dropped.inc_by(behind);
        }
    }

    /// The registry in the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
