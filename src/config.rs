//! Configuration: one struct, layered TOML file < `OUTPOST_*` environment < command-line flags.
//!
//! Every field has a default, so no configuration at all works (data in `./outpost-data`,
//! listening on `127.0.0.1:8080`). Unknown keys and invalid values are rejected with the key's
//! path and the reason. Nested keys in the environment join with `__`:
//! `OUTPOST_STORE__QUEUE_LEN_MAX=8192`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store, the admin socket and other state live.
    pub data_dir: PathBuf,
    /// The HTTP listen address.
    pub listen: SocketAddr,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub events: EventsConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub auth: AuthConfig,
    pub vault: VaultConfig,
    pub limits: crate::limits::LimitsConfig,
    pub tls: TlsConfig,
    pub realtime: RealtimeConfig,
    pub docs: DocsConfig,
    pub files: FilesConfig,
    pub media: MediaConfig,
    pub egress: crate::egress::EgressConfig,
    pub webhooks: WebhooksConfig,
    pub services: ServicesConfig,
    pub mcp: McpConfig,
    pub prompts: PromptsConfig,
    pub oauth: OAuthConfig,
}

/// System-prompt templates' sandbox and cache (`src/prompts.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptsConfig {
    /// Work one section's render may do: template instructions and bytes made (minijinja's
    /// fuel; about 64 bytes of memory each at most).
    pub fuel: u64,
    /// A composed prompt's length at most, in bytes.
    pub output_bytes_max: usize,
    /// Compositions kept compiled (name, room and user at a time).
    pub cache_entries_max: usize,
}

impl Default for PromptsConfig {
    fn default() -> Self {
        Self { fuel: 100_000, output_bytes_max: 256 * 1024, cache_entries_max: 10_000 }
    }
}

impl PromptsConfig {
    fn check(&self, bad: &mut impl FnMut(&str, &str)) {
        if !(1_000..=100_000_000).contains(&self.fuel) {
            bad("prompts.fuel", "must be 1000–100000000");
        }
        if !(1_024..=16 * 1024 * 1024).contains(&self.output_bytes_max) {
            bad("prompts.output_bytes_max", "must be 1024–16777216");
        }
        if self.cache_entries_max == 0 {
            bad("prompts.cache_entries_max", "must be at least 1");
        }
    }
}

/// Sessions with the MCP servers organizations register (`src/mcp.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Sessions open at once, over every organization; past it the one idle longest closes.
    pub sessions_max: usize,
    /// A session unused this long closes, in seconds.
    pub idle_close_s: u64,
    /// A server's lists of tools, resources and prompts are kept this long, in seconds (a
    /// server's `list_changed` notification drops them sooner).
    pub catalog_ttl_s: u64,
    /// Opening a session (connecting and the `initialize` exchange) at most, in milliseconds.
    pub open_timeout_ms: u64,
    /// Tool calls in flight at once, over every organization.
    pub calls_in_flight_max: usize,
    /// The local MCP servers (stdio) organizations may use, by name: a service whose base URL
    /// is `stdio:<name>` runs that program. Nothing else is ever started.
    pub commands: Vec<McpCommand>,
}

/// A local MCP server the operator allows: an executable and its arguments, started without a
/// shell, with only `env` as its environment, from `/`, under resource limits, and killed with
/// its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpCommand {
    /// What services name it by (`stdio:<name>`): 1–64 letters, digits, `-` or `_`.
    pub name: String,
    /// An absolute path.
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// Its whole environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Memory at most, in bytes: the data limit (heap and private writable mappings, not
    /// address space merely reserved, so runtimes such as Node.js that reserve far more than
    /// they use still start); 0: no limit of Outpost's.
    #[serde(default = "McpCommand::memory_default")]
    pub memory_max_bytes: u64,
    /// CPU time at most, in seconds (0: no limit of Outpost's).
    #[serde(default = "McpCommand::cpu_default")]
    pub cpu_max_s: u64,
    /// Open files at most (0: no limit of Outpost's).
    #[serde(default = "McpCommand::files_default")]
    pub open_files_max: u64,
}

impl McpCommand {
    fn memory_default() -> u64 {
        2 * 1024 * 1024 * 1024
    }
    fn cpu_default() -> u64 {
        3600
    }
    fn files_default() -> u64 {
        256
    }

    /// Whether `name` may name a command.
    pub fn name_ok(name: &str) -> bool {
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

impl McpConfig {
    fn check(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.sessions_max == 0 {
            bad("mcp.sessions_max", "must be at least 1");
        }
        if self.calls_in_flight_max == 0 {
            bad("mcp.calls_in_flight_max", "must be at least 1");
        }
        if !(100..=120_000).contains(&self.open_timeout_ms) {
            bad("mcp.open_timeout_ms", "must be 100–120000");
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.commands {
            if !McpCommand::name_ok(&c.name) {
                bad("mcp.commands", "a name is 1–64 letters, digits, - or _");
            } else if !names.insert(c.name.as_str()) {
                bad("mcp.commands", "names must differ");
            }
            if !c.program.is_absolute() {
                bad("mcp.commands", "a program is an absolute path");
            }
        }
    }
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            sessions_max: 256,
            idle_close_s: 300,
            catalog_ttl_s: 300,
            open_timeout_ms: 10_000,
            calls_in_flight_max: 256,
            commands: Vec::new(),
        }
    }
}

/// The service registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// Registered services per organization at most.
    pub per_org_max: usize,
    /// Check services' health (each has its own interval); false leaves every status unknown.
    pub health_checks: bool,
    /// Longest time a replaced signing secret may go on signing beside the new one, in seconds.
    pub signing_overlap_max_s: u64,
    /// Gateway calls whose audit records are not yet written, at most; past it calls are
    /// refused with 503 `audit_backlog` until the writer catches up.
    pub gateway_audit_backlog_max: usize,
    /// Memory the gateway may hold for answers being read, in bytes: each call in flight
    /// reserves its service's `response_bytes_max` (at most this), and calls wait for room.
    pub gateway_buffer_bytes_max: u64,
}

impl ServicesConfig {
    fn check(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.gateway_buffer_bytes_max < 1024 * 1024 {
            bad("services.gateway_buffer_bytes_max", "must be at least 1048576 (1 MiB)");
        }
        if self.gateway_audit_backlog_max == 0 {
            bad("services.gateway_audit_backlog_max", "must be at least 1");
        }
        if self.per_org_max == 0 {
            bad("services.per_org_max", "must be at least 1");
        }
    }
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            per_org_max: 200,
            health_checks: true,
            signing_overlap_max_s: 7 * 86_400,
            gateway_audit_backlog_max: 10_000,
            gateway_buffer_bytes_max: 256 * 1024 * 1024,
        }
    }
}

/// OAuth: connections to outside services (Outpost as an OAuth client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// The URL browsers reach this server at (`https://outpost.example.com`); providers send
    /// people back to `<public_url>/v1/oauth/callback`, the redirect URI to register with them.
    /// Unset: `http(s)://<listen address>`.
    pub public_url: Option<String>,
    /// How long an authorization may take, from its start to the provider's callback, in seconds.
    pub pending_ttl_s: u64,
    /// Authorizations in progress per organization at most.
    pub pending_per_org_max: usize,
    /// Providers per organization at most.
    pub providers_per_org_max: usize,
    /// Connections per organization at most.
    pub connections_per_org_max: usize,
    /// An access token this close to its expiry is refreshed before use, in seconds.
    pub refresh_ahead_s: u64,
    /// A request to a provider's token, discovery or revocation endpoint at most, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long an identity provider's discovery document and signing keys are kept, in
    /// seconds (an `id_token` signed by a key not among them fetches them again at once).
    pub discovery_cache_s: u64,
    /// Identity providers (single sign-on) per organization at most.
    pub identity_providers_per_org_max: usize,
    /// OAuth apps (Outpost as their authorization server) per organization at most.
    pub apps_per_org_max: usize,
}

impl OAuthConfig {
    fn check(&self, bad: &mut impl FnMut(&str, &str)) {
        if let Some(u) = &self.public_url {
            match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && p.query().is_none() && p.fragment().is_none() => {}
                _ => bad("oauth.public_url", "must be an http(s) URL without query or fragment"),
            }
        }
        if !(60..=3600).contains(&self.pending_ttl_s) {
            bad("oauth.pending_ttl_s", "must be 60–3600");
        }
        if self.pending_per_org_max == 0 || self.providers_per_org_max == 0 || self.connections_per_org_max == 0 {
            bad("oauth", "the per-organization maxima must be at least 1");
        }
        if !(100..=120_000).contains(&self.request_timeout_ms) {
            bad("oauth.request_timeout_ms", "must be 100–120000");
        }
        if !(1..=86_400).contains(&self.discovery_cache_s) {
            bad("oauth.discovery_cache_s", "must be 1–86400");
        }
        if self.apps_per_org_max == 0 {
            bad("oauth.apps_per_org_max", "must be at least 1");
        }
        if self.identity_providers_per_org_max == 0 {
            bad("oauth.identity_providers_per_org_max", "must be at least 1");
        }
    }
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            pending_ttl_s: 600,
            pending_per_org_max: 1000,
            providers_per_org_max: 50,
            connections_per_org_max: 10_000,
            refresh_ahead_s: 60,
            request_timeout_ms: 10_000,
            discovery_cache_s: 3600,
            identity_providers_per_org_max: 10,
            apps_per_org_max: 100,
        }
    }
}

/// Outbound webhooks: how deliveries are retried, when a failing endpoint is switched off, and
/// the bounds on endpoints, backlogs and logs. Calls go out under `egress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Deliver at all; false keeps every message queued (and new ones queueing) until it is
    /// true again.
    pub enabled: bool,
    /// Waits before each retry of a failed delivery, in milliseconds; when they run out the
    /// message is given up. The default spreads 10 attempts over about three days.
    pub retry_schedule_ms: Vec<u64>,
    /// Each wait is moved by up to this share of itself, at random, so retries spread out.
    pub retry_jitter_percent: u8,
    /// An endpoint whose every attempt failed for this long is switched off (an event and an
    /// audit record say so), in milliseconds.
    pub disable_after_ms: u64,
    /// Endpoints per organization at most.
    pub endpoints_per_org_max: usize,
    /// Messages waiting for one endpoint at most; an endpoint that reaches it is switched off
    /// (recover replays what it missed, from the log).
    pub backlog_per_endpoint_max: usize,
    /// Delivery attempts each endpoint's log keeps at most (the newest).
    pub attempts_kept_per_endpoint: usize,
    /// Seconds an attempt stays in an endpoint's log at most.
    pub attempts_kept_s: u64,
    /// How often the logs are trimmed to those bounds, in milliseconds.
    pub attempts_trim_interval_ms: u64,
    /// Deliveries in flight at once, overall (each endpoint has one at a time, in order).
    pub in_flight_max: usize,
    /// Seconds the secrets a rotation replaces may go on signing at most.
    pub rotation_overlap_max_s: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retry_schedule_ms: vec![
                5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000, 72_000_000, 86_400_000,
            ],
            retry_jitter_percent: 20,
            disable_after_ms: 5 * 86_400_000,
            endpoints_per_org_max: 100,
            backlog_per_endpoint_max: 100_000,
            attempts_kept_per_endpoint: 1_000,
            attempts_kept_s: 30 * 86_400,
            attempts_trim_interval_ms: 60_000,
            in_flight_max: 64,
            rotation_overlap_max_s: 7 * 86_400,
        }
    }
}

impl WebhooksConfig {
    fn check(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.retry_schedule_ms.len() > 100 {
            bad("webhooks.retry_schedule_ms", "at most 100 retries");
        }
        if self.retry_schedule_ms.iter().any(|&w| w == 0 || w > 30 * 86_400_000) {
            bad("webhooks.retry_schedule_ms", "each wait must be between 1 ms and 30 days");
        }
        if self.retry_jitter_percent > 100 {
            bad("webhooks.retry_jitter_percent", "must be at most 100");
        }
        if self.disable_after_ms == 0 {
            bad("webhooks.disable_after_ms", "must be at least 1");
        }
        if self.endpoints_per_org_max == 0 || self.backlog_per_endpoint_max == 0 {
            bad("webhooks.endpoints_per_org_max", "caps must be at least 1");
        }
        if self.attempts_trim_interval_ms < 100 {
            bad("webhooks.attempts_trim_interval_ms", "must be at least 100");
        }
        if self.attempts_kept_per_endpoint == 0 {
            bad("webhooks.attempts_kept_per_endpoint", "must be at least 1");
        }
        if self.in_flight_max == 0 {
            bad("webhooks.in_flight_max", "must be at least 1");
        }
    }
}

/// Media networking: the media relay (SFU) on one UDP port, and the built-in TURN server (UDP and TCP on one
/// port), which relays for clients behind NATs and firewalls that block direct media; the API hands out
/// time-limited credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// The one UDP port every call's media uses (ICE multiplexing), e.g. `0.0.0.0:7882`; absent:
    /// no calls. The default, `127.0.0.1:0`, takes a free port on loopback, as the HTTP default
    /// serves only this host.
    pub rtc_listen: Option<SocketAddr>,
    /// ICE over TCP on the same port number (TCP), for clients whose networks let no UDP
    /// through.
    pub rtc_tcp: bool,
    /// Media connections (publishing or playing) on this server at most.
    pub sessions_max: usize,
    /// Media connections in one room's call at most.
    pub room_sessions_max: usize,
    /// Published tracks on this server, in one room's call, and from one connection at most.
    pub tracks_max: usize,
    pub room_tracks_max: usize,
    pub connection_tracks_max: usize,
    /// Where the TURN server listens (UDP and TCP), e.g. `0.0.0.0:3478`; absent: no TURN server.
    pub turn_listen: Option<SocketAddr>,
    /// The address clients reach this server at (TURN URLs and relayed addresses): the public
    /// address of an edge box behind 1:1 NAT. Default: the listen address, or 127.0.0.1 when
    /// that is unspecified (0.0.0.0).
    pub public_ip: Option<std::net::IpAddr>,
    /// UDP ports relayed allocations are given, inclusive.
    pub turn_relay_port_min: u16,
    pub turn_relay_port_max: u16,
    /// How long TURN credentials from the API stay valid, in seconds.
    pub turn_credential_ttl_s: u64,
    /// TURN-over-TCP connections open at once at most.
    pub turn_tcp_connections_max: usize,
    /// Let relays reach this host's loopback addresses (tests, everything on one box). Off:
    /// a TURN server must not be a way into the services beside it.
    pub turn_allow_loopback_peers: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            rtc_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            rtc_tcp: true,
            sessions_max: 2000,
            room_sessions_max: 200,
            tracks_max: 4000,
            room_tracks_max: 400,
            connection_tracks_max: 8,
            turn_listen: None,
            public_ip: None,
            turn_relay_port_min: 49_152,
            turn_relay_port_max: 65_535,
            turn_credential_ttl_s: 3600,
            turn_tcp_connections_max: 1024,
            turn_allow_loopback_peers: false,
        }
    }
}

/// Files: the content-addressed blob store under `data_dir/blobs`, resumable (tus) uploads
/// staged under `data_dir/uploads`, and downloads. An organization's `settings` may lower the
/// limits for itself (`files_max_bytes`, `files_quota_bytes`, `files_allowed_types`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// One file at most, in bytes.
    pub file_bytes_max: u64,
    /// All of one organization's stored files at most, in bytes (identical files count once),
    /// uploads in progress included.
    pub org_bytes_max: u64,
    /// Media types accepted, as `type/subtype` or `type/*`; empty accepts any.
    pub allowed_types: Vec<String>,
    /// Seconds an unfinished upload is kept after its last byte arrived; then it is removed.
    pub upload_expiry_s: u64,
    /// Uploads in progress per organization at most.
    pub uploads_per_org_max: usize,
    /// Seconds a signed download URL stays valid at most (the default when none is asked).
    pub signed_url_ttl_s: u64,
    /// Seconds an upload request may wait for its next bytes before it is ended; what arrived
    /// is kept and the client resumes from it.
    pub upload_idle_timeout_s: u64,
    /// Bytes the blob store's disk must keep free: an upload that would go below is refused
    /// (507) before its bytes are written.
    pub disk_reserve_bytes: u64,
    /// Seconds a file's bytes are kept after the last record naming them is deleted (a backup
    /// or a restore in between still finds them); then the collector removes them.
    pub gc_grace_s: u64,
    /// How often, in seconds, the collector looks for bytes to remove.
    pub gc_interval_s: u64,
    /// Bytes of small files kept in memory once downloaded, least recently read out first
    /// (each file at most a sixteenth of this); 0 keeps none.
    pub memory_cache_bytes: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            file_bytes_max: 16 << 30,
            org_bytes_max: 64 << 30,
            allowed_types: Vec::new(),
            upload_expiry_s: 86_400,
            uploads_per_org_max: 1000,
            signed_url_ttl_s: 300,
            upload_idle_timeout_s: 60,
            disk_reserve_bytes: 256 << 20,
            gc_grace_s: 86_400,
            gc_interval_s: 600,
            memory_cache_bytes: 64 << 20,
        }
    }
}

impl FilesConfig {
    fn check(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.file_bytes_max == 0 || self.file_bytes_max > self.org_bytes_max {
            bad("files.file_bytes_max", "must be at least 1 and at most files.org_bytes_max");
        }
        for (i, t) in self.allowed_types.iter().enumerate() {
            if !media_type_pattern(t) {
                bad(&format!("files.allowed_types.{i}"), "must be a media type like image/png or image/*");
            }
        }
        if !(60..=30 * 86_400).contains(&self.upload_expiry_s) {
            bad("files.upload_expiry_s", "must be between 60 and 2592000");
        }
        if self.uploads_per_org_max == 0 {
            bad("files.uploads_per_org_max", "must be at least 1");
        }
        if !(10..=7 * 86_400).contains(&self.signed_url_ttl_s) {
            bad("files.signed_url_ttl_s", "must be between 10 and 604800");
        }
        if !(5..=3600).contains(&self.upload_idle_timeout_s) {
            bad("files.upload_idle_timeout_s", "must be between 5 and 3600");
        }
        if self.gc_grace_s > 365 * 86_400 {
            bad("files.gc_grace_s", "must be at most 31536000 (a year)");
        }
        if !(1..=86_400).contains(&self.gc_interval_s) {
            bad("files.gc_interval_s", "must be between 1 and 86400");
        }
    }
}

/// `type/subtype` or `type/*`, lowercase letters, digits and `.+-`.
pub fn media_type_pattern(t: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    };
    match t.split_once('/') {
        Some((ty, "*")) => ok(ty),
        Some((ty, sub)) => ok(ty) && ok(sub),
        None => false,
    }
}

/// Shared (Yjs) documents and their sync endpoint (`/v1/yjs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocsConfig {
    /// One update (a sync frame or an applied update) at most, in bytes.
    pub update_bytes_max: usize,
    /// One document's stored state (snapshot and updates after it) at most, in bytes.
    pub document_bytes_max: u64,
    /// All of one organization's documents at most, in bytes.
    pub org_bytes_max: u64,
    /// Stored updates after the snapshot that make the document due for compaction (once they
    /// also add up to a quarter of the snapshot's size).
    pub compact_after_updates: u64,
    /// Documents kept loaded in memory at most.
    pub loaded_max: usize,
    /// Seconds a loaded document with nobody connected stays in memory.
    pub idle_unload_s: u64,
    /// Awareness updates (cursors, selections) one socket may send per second (bursts of
    /// twice this); more are held back and only the latest goes out.
    pub awareness_per_s: u32,
    /// Frames queued for one sync socket at most; a client that lets it fill is closed and
    /// syncs again when it reconnects.
    pub send_queue_len: usize,
}

impl Default for DocsConfig {
    fn default() -> Self {
        Self {
            update_bytes_max: 1 << 20,
            document_bytes_max: 64 << 20,
            org_bytes_max: 4 << 30,
            compact_after_updates: 1000,
            loaded_max: 10_000,
            idle_unload_s: 30,
            awareness_per_s: 30,
            send_queue_len: 4096,
        }
    }
}

impl DocsConfig {
    fn check(&self, bad: &mut impl FnMut(&str, &str)) {
        if !(1024..=64 << 20).contains(&self.update_bytes_max) {
            bad("docs.update_bytes_max", "must be between 1024 and 67108864");
        }
        if self.document_bytes_max < self.update_bytes_max as u64 || self.org_bytes_max < self.document_bytes_max {
            bad("docs.document_bytes_max", "must be at least docs.update_bytes_max and at most docs.org_bytes_max");
        }
        if self.compact_after_updates < 2 {
            bad("docs.compact_after_updates", "must be at least 2");
        }
        if self.loaded_max == 0 || self.awareness_per_s == 0 {
            bad("docs.loaded_max", "docs.loaded_max and docs.awareness_per_s must be at least 1");
        }
        if !(16..=1 << 20).contains(&self.send_queue_len) {
            bad("docs.send_queue_len", "must be between 16 and 1048576");
        }
    }
}

impl MediaConfig {
    fn check(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.turn_relay_port_min == 0 || self.turn_relay_port_min > self.turn_relay_port_max {
            bad("media.turn_relay_port_min", "must be at least 1 and at most media.turn_relay_port_max");
        }
        if self.sessions_max == 0 || self.room_sessions_max == 0 {
            bad("media.sessions_max", "media.sessions_max and media.room_sessions_max must be at least 1");
        }
        if self.tracks_max == 0 || self.room_tracks_max == 0 || self.connection_tracks_max == 0 {
            bad("media.tracks_max", "media.tracks_max, room_tracks_max and connection_tracks_max must be at least 1");
        }
        if self.turn_tcp_connections_max == 0 {
            bad("media.turn_tcp_connections_max", "must be at least 1");
        }
        if !(60..=86_400).contains(&self.turn_credential_ttl_s) {
            bad("media.turn_credential_ttl_s", "must be between 60 and 86400");
        }
    }
}

/// The realtime WebSocket (`/v1/realtime`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeConfig {
    /// Frames queued for one socket at most; a client that lets it fill is cut off (4008).
    pub send_queue_len: usize,
    /// Seconds a new socket has to authenticate.
    pub auth_timeout_s: u64,
    /// Seconds without any frame from the client before it is closed (clients ping).
    pub idle_timeout_s: u64,
    /// How often, in seconds, each socket's session and user are checked again.
    pub recheck_s: u64,
    /// Open sockets per user at most.
    pub connections_per_user_max: usize,
    /// Open sockets per organization at most.
    pub connections_per_org_max: usize,
    /// Topics one socket may subscribe to at most.
    pub subscriptions_per_connection_max: usize,
    /// Presence updates and signals one socket may send per second (bursts of twice this).
    pub signals_per_s: u32,
    /// A socket that wrote within this many milliseconds holds further frames until they have
    /// passed, then writes them together (also on document sockets); a quiet socket writes at
    /// once. The hold scales with how busy the server is: all of it once the workers are nearly
    /// always busy, none while they are idle half the time. 0 writes every frame as it comes.
    pub write_coalesce_ms: u64,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            send_queue_len: 1024,
            auth_timeout_s: 10,
            idle_timeout_s: 90,
            recheck_s: 5,
            connections_per_user_max: 32,
            connections_per_org_max: 20_000,
            subscriptions_per_connection_max: 256,
            signals_per_s: 60,
            write_coalesce_ms: 20,
        }
    }
}

/// HTTPS: both files, or neither (plain HTTP, e.g. behind a proxy that terminates TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
    /// How often the files are checked for a renewed certificate.
    pub reload_interval_s: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { cert_file: None, key_file: None, reload_interval_s: 30 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of access tokens.
    pub access_ttl_s: u64,
    /// Lifetime of a refresh token (each refresh starts a new one).
    pub refresh_ttl_s: u64,
    /// Concurrent sessions per user; a new login ends the oldest beyond this.
    pub sessions_per_user_max: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// The master key file (default: `master.key` in the data dir). Created at first start
    /// with mode 0600; the server refuses to start if others can read it.
    pub master_key_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { access_ttl_s: 900, refresh_ttl_s: 7 * 24 * 3600, sessions_per_user_max: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted; larger ones get 413.
    pub body_limit_bytes: u64,
    /// Longest a request may take before it is answered with 503 `request_timeout`.
    pub request_timeout_ms: u64,
    /// Browser origins allowed to call the API (CORS), e.g. `https://app.example.org`.
    /// Empty: no cross-origin access.
    pub cors_allowed_origins: Vec<String>,
    /// Connections held open at once, at most; a connection beyond it is answered 503
    /// `overloaded` (with `Retry-After`) and closed.
    pub connections_max: usize,
    /// Connections held open at once from one client address, at most; beyond it, the same.
    pub connections_per_addr_max: usize,
    /// Longest a client may take to send a request's headers, in milliseconds (a slow sender
    /// holds a connection); on a kept-alive connection, counted from the previous answer.
    pub header_read_timeout_ms: u64,
    /// After a 429 on an HTTP/1 connection, read nothing more from it until its `Retry-After`
    /// has passed, so a client that ignores it is slowed to its budget. Turn off behind a
    /// reverse proxy that carries many users' requests on one connection.
    pub pace_after_429: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Mutations waiting for the writer at most; callers wait for room, then get 503.
    pub queue_len_max: usize,
    /// Mutations committed together in one transaction at most.
    pub batch_len_max: usize,
    /// Below this much free space on the data dir's disk, writes are refused (507) and the
    /// server reports not ready. 0 disables the check.
    pub min_free_disk_bytes: u64,
    /// Memory for the store's page cache at most.
    pub cache_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events older than this are trimmed (unless a follower still needs them).
    pub retention_age_s: u64,
    /// Events kept per organization at most.
    pub retention_count_max: u64,
    /// Events the in-process bus holds for slow receivers before they must resume from the log.
    pub bus_capacity: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json`, `text`, or `auto` (text on a terminal, JSON otherwise).
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `outpost=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight requests may run after a stop signal before they are cut off.
    pub drain_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./outpost-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            events: EventsConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            auth: AuthConfig::default(),
            vault: VaultConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            tls: TlsConfig::default(),
            realtime: RealtimeConfig::default(),
            docs: DocsConfig::default(),
            files: FilesConfig::default(),
            media: MediaConfig::default(),
            egress: crate::egress::EgressConfig::default(),
            webhooks: WebhooksConfig::default(),
            services: ServicesConfig::default(),
            mcp: McpConfig::default(),
            prompts: PromptsConfig::default(),
            oauth: OAuthConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1 << 20,
            request_timeout_ms: 30_000,
            cors_allowed_origins: Vec::new(),
            connections_max: 10_000,
            connections_per_addr_max: 1_000,
            header_read_timeout_ms: 30_000,
            pace_after_429: true,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { queue_len_max: 4096, batch_len_max: 256, min_free_disk_bytes: 256 << 20, cache_bytes: 64 << 20 }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { retention_age_s: 7 * 24 * 3600, retention_count_max: 1_000_000, bus_capacity: 4096 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Auto, level: "info".into() }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_timeout_ms: 10_000 }
    }
}

/// Values given as command-line flags: the top layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// One rejected key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key's path, e.g. `store.queue_len_max`.
    pub key: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  {}: {}", i.key, i.reason)).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<ConfigIssue>);

/// Environment variables that configure the command line, not the server.
const ENV_NOT_KEYS: &[&str] = &["config"];

impl Config {
    /// Loads file < environment < overrides, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // `Path::exists` says "no" for a file this user may not read, too: tell them apart.
            if let Err(e) = std::fs::metadata(path).and_then(|_| std::fs::File::open(path)) {
                let reason = match e.kind() {
                    std::io::ErrorKind::NotFound => format!("file {} does not exist", path.display()),
                    _ => format!("cannot read {}: {e}", path.display()),
                };
                return Err(ConfigError(vec![ConfigIssue { key: "--config".into(), reason }]));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(Env::prefixed("OUTPOST_").split("__").ignore(ENV_NOT_KEYS))
            .merge(Serialized::defaults(overrides));
        let config: Config = fig.extract().map_err(|e| ConfigError(e.into_iter().map(|e| issue(&e)).collect()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks relations and ranges that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        let mut bad = |key: &str, reason: &str| {
            issues.push(ConfigIssue { key: key.into(), reason: reason.into() });
        };
        if self.data_dir.as_os_str().is_empty() {
            bad("data_dir", "must not be empty");
        }
        if self.http.body_limit_bytes < 1024 {
            bad("http.body_limit_bytes", "must be at least 1024");
        }
        for (i, o) in self.http.cors_allowed_origins.iter().enumerate() {
            let ok = (o.starts_with("https://") || o.starts_with("http://")) && !o.ends_with('/') && !o.contains('*');
            if !ok {
                bad(
                    &format!("http.cors_allowed_origins.{i}"),
                    "must be an origin like https://app.example.org (no path, no wildcard)",
                );
            }
        }
        if self.http.request_timeout_ms < 100 {
            bad("http.request_timeout_ms", "must be at least 100");
        }
        if self.http.connections_max == 0 {
            bad("http.connections_max", "must be at least 1");
        }
        if self.http.connections_per_addr_max == 0 {
            bad("http.connections_per_addr_max", "must be at least 1");
        }
        if self.http.header_read_timeout_ms < 100 {
            bad("http.header_read_timeout_ms", "must be at least 100");
        }
        if self.store.queue_len_max == 0 {
            bad("store.queue_len_max", "must be at least 1");
        }
        if !(1..=100_000).contains(&self.store.batch_len_max) {
            bad("store.batch_len_max", "must be between 1 and 100000");
        }
        if self.store.cache_bytes < 1 << 20 {
            bad("store.cache_bytes", "must be at least 1048576 (1 MiB)");
        }
        if !(10..=86_400).contains(&self.auth.access_ttl_s) {
            bad("auth.access_ttl_s", "must be between 10 and 86400");
        }
        if self.auth.refresh_ttl_s < self.auth.access_ttl_s {
            bad("auth.refresh_ttl_s", "must be at least auth.access_ttl_s");
        }
        if self.auth.sessions_per_user_max == 0 {
            bad("auth.sessions_per_user_max", "must be at least 1");
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            bad("tls", "set both cert_file and key_file, or neither");
        }
        if self.events.retention_count_max == 0 {
            bad("events.retention_count_max", "must be at least 1");
        }
        if !(16..=1 << 20).contains(&self.events.bus_capacity) {
            bad("events.bus_capacity", "must be between 16 and 1048576");
        }
        let rt = &self.realtime;
        if !(16..=1 << 20).contains(&rt.send_queue_len) {
            bad("realtime.send_queue_len", "must be between 16 and 1048576");
        }
        if !(1..=600).contains(&rt.auth_timeout_s) {
            bad("realtime.auth_timeout_s", "must be between 1 and 600");
        }
        if !(5..=86_400).contains(&rt.idle_timeout_s) {
            bad("realtime.idle_timeout_s", "must be between 5 and 86400");
        }
        if !(1..=3600).contains(&rt.recheck_s) {
            bad("realtime.recheck_s", "must be between 1 and 3600");
        }
        if rt.connections_per_user_max == 0 || rt.connections_per_org_max == 0 {
            bad("realtime.connections_per_user_max", "caps must be at least 1");
        }
        if rt.write_coalesce_ms > 1000 {
            bad("realtime.write_coalesce_ms", "must be at most 1000");
        }
        if rt.signals_per_s == 0 {
            bad("realtime.signals_per_s", "must be at least 1");
        }
        if rt.subscriptions_per_connection_max == 0 {
            bad("realtime.subscriptions_per_connection_max", "must be at least 1");
        }
        self.docs.check(&mut bad);
        self.files.check(&mut bad);
        self.media.check(&mut bad);
        self.webhooks.check(&mut bad);
        self.services.check(&mut bad);
        self.mcp.check(&mut bad);
        self.prompts.check(&mut bad);
        self.oauth.check(&mut bad);
        for (key, reason) in self.egress.issues() {
            bad(&key, &reason);
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad("log.level", "is not a valid filter (try `info` or `outpost=debug,info`)");
        }
        if issues.is_empty() { Ok(()) } else { Err(ConfigError(issues)) }
    }

    /// Reads a configuration file's text over the defaults and validates it (no environment,
    /// no overrides): what `load` does with the file alone.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        let config: Config = fig.extract().map_err(|e| ConfigError(e.into_iter().map(|e| issue(&e)).collect()))?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The vault's master key file.
    pub fn master_key_file(&self) -> PathBuf {
        self.vault.master_key_file.clone().unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// The admin socket path of this data dir.
    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }
}

fn issue(e: &figment::Error) -> ConfigIssue {
    use figment::error::Kind;
    // For an unknown field the path already ends with the field's name.
    let path = &e.path;
    let reason = match &e.kind {
        Kind::UnknownField(..) => "unknown key".to_owned(),
        other => other.to_string(),
    };
    let source = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(s) => format!(" (from {s})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    ConfigIssue {
        key: if path.is_empty() { "(top level)".into() } else { path.join(".") },
        reason: format!("{reason}{source}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn unknown_and_invalid_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("outpost-cfg-{}", crate::ids::Id::new()));
        std::fs::create_dir_all(&dir).ok();
        let file = dir.join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9\"\n[store]\nqueue_len_mx = 3\n").ok();
        let err = Config::load(Some(&file), &Overrides::default()).err().map(|e| e.0);
        assert_eq!(err.as_ref().map(|e| e[0].key.as_str()), Some("store.queue_len_mx"));
        std::fs::write(&file, "[http]\nbody_limit_bytes = \"big\"\n").ok();
        let err = Config::load(Some(&file), &Overrides::default()).err().map(|e| e.0);
        assert_eq!(err.as_ref().map(|e| e[0].key.as_str()), Some("http.body_limit_bytes"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
