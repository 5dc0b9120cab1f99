//! The documented configuration file that the packages install (`packaging/outpost.toml`),
//! generated from the `Config` types: every key, in the order the structs declare them, with
//! its meaning, the value the packages set, and the built-in default where the two differ.
//!
//! The keys and defaults come from `Config` itself (serialized, so optional keys appear too);
//! only the prose lives here, one entry per key. A key without prose, or prose without a key,
//! is an error, so the file cannot drift from the code: `outpost generate config` prints it,
//! and a test compares the committed file with that output.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::config::{Config, LogFormat};

/// The configuration the packaged service runs with: the built-in defaults, except for these.
pub fn packaged() -> Config {
    let mut c = Config { data_dir: PathBuf::from("/var/lib/outpost"), ..Config::default() };
    c.log.format = LogFormat::Json;
    c.media.rtc_listen = Some(SocketAddr::from(([0, 0, 0, 0], 7882)));
    c.media.turn_listen = Some(SocketAddr::from(([0, 0, 0, 0], 3478)));
    c
}

const HEADER: &str = "\
# Outpost configuration for packaged installs (read by outpost.service).
#
# Every key is listed with its meaning. Values are the built-in defaults unless a line says
# \"Built-in default\": those are set for the packaged service. Keys shown commented out are
# unset by default. Unknown keys are rejected at start-up; `outpost config check --config FILE`
# validates a file and prints the effective configuration.
#
# Every key can also be set with an environment variable OUTPOST_<KEY>;
# nested keys join with a double underscore, e.g.
#   OUTPOST_LISTEN=0.0.0.0:8080
#   OUTPOST_STORE__QUEUE_LEN_MAX=8192
# For the service, set them in a drop-in: systemctl edit outpost
#   [Service]
#   Environment=OUTPOST_LOG__LEVEL=debug
#
# Precedence, lowest to highest: this file, environment, command-line flags.
#
# This file is generated (outpost generate config); a test keeps it in step with the code.
";

/// One documented key (or section): its path, its meaning, and for a key that is unset by
/// default, an example value shown commented out.
struct Doc {
    path: &'static str,
    text: &'static str,
    example: Option<&'static str>,
}

const fn doc(path: &'static str, text: &'static str) -> Doc {
    Doc { path, text, example: None }
}

const fn unset(path: &'static str, text: &'static str, example: &'static str) -> Doc {
    Doc { path, text, example: Some(example) }
}

const DOCS: &[Doc] = &[
    doc("data_dir", "Directory holding the store and all other persistent state."),
    doc(
        "listen",
        "Socket address the HTTP server listens on; loopback only, use \"0.0.0.0:8080\" to accept remote clients.",
    ),
    doc("http", "HTTP requests."),
    doc("http.body_limit_bytes", "Largest accepted request body, in bytes (1 MiB); larger ones get 413."),
    doc(
        "http.request_timeout_ms",
        "Time allowed to handle one HTTP request, in milliseconds; then 503 request_timeout.",
    ),
    doc(
        "http.cors_allowed_origins",
        "Browser origins allowed to call the API (CORS), e.g. [\"https://app.example.org\"]; empty: none.",
    ),
    doc(
        "http.connections_max",
        "Connections held open at once, at most; one more is answered 503 overloaded (Retry-After: 1) and closed.",
    ),
    doc(
        "http.connections_per_addr_max",
        "Connections held open at once from one client address, at most (many users behind one NAT share it); beyond it, the same 503.",
    ),
    doc(
        "http.header_read_timeout_ms",
        "Time a client has to send a request's headers (on a kept-alive connection: from the previous answer), in milliseconds; then it is disconnected.",
    ),
    doc(
        "http.pace_after_429",
        "After a 429 on an HTTP/1 connection, read nothing more from it until its Retry-After has passed, so a client that ignores it is slowed to its budget; turn off behind a reverse proxy that carries many users' requests on one connection.",
    ),
    doc("store", "The embedded store and its one writer."),
    doc(
        "store.queue_len_max",
        "Most writes that may wait for the store writer; callers beyond this wait up to 5 s, then get 503.",
    ),
    doc("store.batch_len_max", "Most queued writes committed together in one transaction."),
    doc(
        "store.min_free_disk_bytes",
        "Free disk space (bytes) to keep in data_dir; below it writes are refused (507) and the server reports not ready. 0 disables the check.",
    ),
    doc("store.cache_bytes", "Memory (bytes) for the store's page cache at most (64 MiB)."),
    doc("events", "The per-organization event log."),
    doc(
        "events.retention_age_s",
        "Events older than this many seconds are pruned (7 days), unless a follower still needs them.",
    ),
    doc("events.retention_count_max", "Most events kept per organization; the oldest beyond this are pruned."),
    doc("events.bus_capacity", "Events buffered in memory for live subscribers that fall behind."),
    doc("log", "Logging (standard output; the journal under systemd)."),
    doc("log.format", "Log output format: \"json\", \"text\", or \"auto\" (text on a terminal, JSON otherwise)."),
    doc("log.level", "Log filter in tracing syntax, e.g. \"info\" or \"info,outpost=debug\"."),
    doc("shutdown", "Graceful stop."),
    doc(
        "shutdown.drain_timeout_ms",
        "On SIGTERM, time allowed for in-flight work to finish, in ms; keep below TimeoutStopSec (30s).",
    ),
    doc("auth", "Tokens and sessions."),
    doc("auth.access_ttl_s", "Lifetime of access tokens, in seconds (15 minutes)."),
    doc("auth.refresh_ttl_s", "Lifetime of a refresh token, in seconds (7 days); each refresh starts a new one."),
    doc("auth.sessions_per_user_max", "Concurrent login sessions per user; a new login ends the oldest beyond this."),
    doc("vault", "The vault that seals signing keys and other secrets."),
    unset(
        "vault.master_key_file",
        "The master key file (default: master.key in data_dir). Created at first start with mode 0600; keep a copy apart from the backups.",
        "\"/var/lib/outpost/master.key\"",
    ),
    doc("limits", "Rate limits; a refusal is 429 with Retry-After."),
    doc("limits.login_per_addr_per_min", "Login attempts per client address per minute."),
    doc(
        "limits.login_failures_per_account_per_min",
        "Failed logins per account per minute before the account is locked out for a while.",
    ),
    doc("limits.login_lockout_s", "First lock-out in seconds; it doubles each time the limit trips again."),
    doc("limits.login_lockout_max_s", "Longest lock-out in seconds."),
    doc("limits.user_requests_per_s", "Requests per second per user (bursts of twice this)."),
    doc("limits.org_requests_per_s", "Requests per second per organization (bursts of twice this)."),
    doc(
        "tls",
        "HTTPS: a PEM certificate chain and its PEM private key (both or neither). Renewed files are picked up without a restart. Without them the server speaks plain HTTP (e.g. behind a proxy).",
    ),
    unset("tls.cert_file", "PEM certificate chain.", "\"/etc/outpost/tls/fullchain.pem\""),
    unset("tls.key_file", "PEM private key.", "\"/etc/outpost/tls/privkey.pem\""),
    doc("tls.reload_interval_s", "How often (seconds) the files are checked for a renewed certificate."),
    doc("realtime", "The realtime WebSocket (/v1/realtime)."),
    doc(
        "realtime.send_queue_len",
        "Frames queued for one WebSocket at most; a client that lets it fill is cut off (close 4008) and resumes from where it was.",
    ),
    doc("realtime.auth_timeout_s", "Seconds a new WebSocket has to authenticate."),
    doc(
        "realtime.idle_timeout_s",
        "Seconds without any frame from a client before its socket is closed (clients ping).",
    ),
    doc("realtime.recheck_s", "How often, in seconds, each socket's session and user are checked again."),
    doc("realtime.connections_per_user_max", "Open sockets per user at most."),
    doc("realtime.connections_per_org_max", "Open sockets per organization at most."),
    doc("realtime.subscriptions_per_connection_max", "Topics one socket may subscribe to at most."),
    doc(
        "realtime.signals_per_s",
        "Presence updates and signals (typing, cursors) one socket may send per second; bursts of twice this.",
    ),
    doc(
        "realtime.write_coalesce_ms",
        "A socket that wrote within this many milliseconds holds further frames until they have passed, then writes them together (document sockets too); a quiet socket writes at once. The hold scales with how busy the server is: all of it once its workers are nearly always busy, none while they are idle half the time. 0: every frame as it comes.",
    ),
    doc("docs", "Shared (Yjs) documents."),
    doc("docs.update_bytes_max", "One Yjs update (a sync frame, or a body applied by REST) at most, in bytes."),
    doc(
        "docs.document_bytes_max",
        "One document's stored state (snapshot plus the updates after it) at most, in bytes.",
    ),
    doc("docs.org_bytes_max", "All of one organization's documents at most, in bytes."),
    doc(
        "docs.compact_after_updates",
        "Stored updates after the snapshot that make a document due for compaction (merged into one snapshot in the background), once they also add up to a quarter of the snapshot's size.",
    ),
    doc("docs.loaded_max", "Documents kept loaded in memory at most; idle ones are unloaded first."),
    doc("docs.idle_unload_s", "Seconds a loaded document with nobody connected stays in memory."),
    doc(
        "docs.awareness_per_s",
        "Awareness updates (cursors, selections) one socket may send per second; bursts of twice this, beyond that only the latest is sent.",
    ),
    doc(
        "docs.send_queue_len",
        "Frames queued for one sync socket at most; a client that lets it fill is closed and syncs again when it reconnects.",
    ),
    doc(
        "files",
        "Files: stored once per organization by content (SHA-256) under data_dir/blobs; resumable uploads (tus 1.0) staged under data_dir/uploads. An organization's settings may lower the limits for itself: files_max_bytes, files_quota_bytes, files_allowed_types.",
    ),
    doc("files.file_bytes_max", "One file at most, in bytes."),
    doc(
        "files.org_bytes_max",
        "All of one organization's stored files at most, in bytes (identical files count once), uploads in progress included.",
    ),
    doc("files.allowed_types", "Media types accepted, as type/subtype or type/*; an empty list accepts any."),
    doc(
        "files.upload_expiry_s",
        "Seconds an unfinished upload is kept after its last bytes arrived; then it is removed.",
    ),
    doc("files.uploads_per_org_max", "Uploads in progress per organization at most."),
    doc("files.signed_url_ttl_s", "Seconds a signed download URL stays valid at most."),
    doc(
        "files.upload_idle_timeout_s",
        "Seconds an upload request may wait for its next bytes before it is ended; what arrived is kept and the client resumes from there.",
    ),
    doc(
        "files.gc_grace_s",
        "Seconds a file's bytes are kept after the last record naming them is deleted; then the collector removes them.",
    ),
    doc("files.gc_interval_s", "How often, in seconds, the collector looks for file bytes to remove."),
    doc(
        "files.memory_cache_bytes",
        "Bytes of small files kept in memory once downloaded, least recently read out first (each file at most a sixteenth of this); 0 keeps none.",
    ),
    doc(
        "files.disk_reserve_bytes",
        "Bytes the disk under data_dir must keep free: an upload that would go below is refused (507) before its bytes are written.",
    ),
    doc("media", "Calls: the media relay (SFU) and the built-in TURN server."),
    doc(
        "media.rtc_listen",
        "Every call's media on this one UDP port; open it (UDP) in the firewall. Remove the line for a free port on loopback only (the built-in default).",
    ),
    doc(
        "media.rtc_tcp",
        "ICE over TCP on the same port number, for clients whose networks let no UDP through: open that port for TCP too.",
    ),
    doc("media.sessions_max", "Media connections (publishing or playing) on this server at most."),
    doc("media.room_sessions_max", "Media connections in one room's call at most."),
    doc("media.tracks_max", "Published tracks on this server at most."),
    doc("media.room_tracks_max", "Published tracks in one call at most."),
    doc("media.connection_tracks_max", "Published tracks from one connection at most."),
    doc(
        "media.turn_listen",
        "The built-in TURN server (UDP and TCP on this port) for clients whose networks block direct media; the API hands out credentials valid for turn_credential_ttl_s. Open this port (UDP and TCP) and the UDP relay port range in the firewall. Remove the line to run without TURN (the built-in default).",
    ),
    unset(
        "media.public_ip",
        "The address clients reach this box at (an edge box behind 1:1 NAT gives its public address). Default: the listen address, or 127.0.0.1 when that is 0.0.0.0.",
        "\"203.0.113.10\"",
    ),
    doc("media.turn_relay_port_min", "Lowest UDP port given to relayed allocations."),
    doc("media.turn_relay_port_max", "Highest UDP port given to relayed allocations."),
    doc("media.turn_credential_ttl_s", "How long TURN credentials from the API stay valid, in seconds."),
    doc("media.turn_tcp_connections_max", "TURN-over-TCP connections open at once at most."),
    doc(
        "media.turn_allow_loopback_peers",
        "Relays never reach this host's loopback addresses unless this is true (tests, one-box setups).",
    ),
    doc(
        "egress",
        "Calls Outpost makes to the outside (webhooks, health checks, the service gateway, identity providers).",
    ),
    doc(
        "egress.allow_cidrs",
        "Non-public address ranges calls may reach, as CIDRs, e.g. [\"10.20.0.0/16\", \"127.0.0.1/32\"]. Loopback, private, link-local (cloud metadata) and other non-public addresses are refused before any connection unless listed here.",
    ),
    doc(
        "egress.allowed_only",
        "Reach only the ranges in allow_cidrs: public addresses are refused too, and host names other than \
         localhost before any lookup (an offline box, or a test run that must send nothing off the machine).",
    ),
    doc("egress.connect_timeout_ms", "How long opening a connection may take, in milliseconds."),
    doc("egress.timeout_ms", "How long a whole call may take, in milliseconds."),
    doc("egress.response_bytes_max", "An answer's body is read up to this many bytes."),
    doc("egress.redirects_max", "Redirects followed at most, each target checked again; 0 follows none."),
    doc("egress.concurrency_max", "Calls in flight at once, overall."),
    doc("egress.per_host_concurrency_max", "Calls in flight at once to one host."),
    doc(
        "webhooks",
        "Outbound webhooks: retries, switching off failing endpoints, and the bounds on endpoints, backlogs and logs.",
    ),
    doc("webhooks.enabled", "Deliver at all; false keeps every message queued until it is true again."),
    doc(
        "webhooks.retry_schedule_ms",
        "Waits before each retry of a failed delivery, in milliseconds; when they run out the message is given up. The default makes 10 attempts over about three days.",
    ),
    doc("webhooks.retry_jitter_percent", "Each wait is moved by up to this share of itself, at random."),
    doc(
        "webhooks.disable_after_ms",
        "An endpoint whose every attempt failed for this long is switched off, with an event and an audit record, in milliseconds.",
    ),
    doc("webhooks.endpoints_per_org_max", "Webhook endpoints per organization at most."),
    doc(
        "webhooks.backlog_per_endpoint_max",
        "Messages waiting for one endpoint at most; one that reaches it is switched off (recover replays what it missed).",
    ),
    doc("webhooks.attempts_kept_per_endpoint", "Delivery attempts each endpoint's log keeps at most (the newest)."),
    doc("webhooks.attempts_kept_s", "Seconds an attempt stays in an endpoint's log at most."),
    doc(
        "webhooks.attempts_trim_interval_ms",
        "How often the logs of attempts are trimmed to those bounds, in milliseconds.",
    ),
    doc("webhooks.in_flight_max", "Deliveries in flight at once, overall; each endpoint has one at a time, in order."),
    doc("webhooks.rotation_overlap_max_s", "Seconds the secrets a rotation replaces may go on signing at most."),
    doc("services", "The service registry: services organizations register, their credentials and health checks."),
    doc("services.per_org_max", "Registered services per organization at most."),
    doc(
        "services.health_checks",
        "Check services' health (each on its own interval); false leaves every status unknown.",
    ),
    doc(
        "services.signing_overlap_max_s",
        "Seconds the secrets a rotation replaces may go on signing gateway calls at most.",
    ),
    doc(
        "services.gateway_buffer_bytes_max",
        "Memory the gateway may hold for answers being read, in bytes: each call in flight reserves its \
         service's response_bytes_max (at most this), and calls wait for room.",
    ),
    doc(
        "services.gateway_audit_backlog_max",
        "Gateway calls whose audit records wait for the writer, at most; past it calls are refused \
         with 503 audit_backlog.",
    ),
    doc("mcp", "Sessions with the MCP servers organizations register as services."),
    doc("mcp.sessions_max", "Sessions open at once, over every organization; past it the one idle longest closes."),
    doc("mcp.idle_close_s", "A session unused this long closes, in seconds."),
    doc(
        "mcp.catalog_ttl_s",
        "A server's lists of tools, resources and prompts are kept this long, in seconds (its list_changed \
         notification drops them sooner).",
    ),
    doc("mcp.open_timeout_ms", "Opening a session (connecting and the initialize exchange) at most, in milliseconds."),
    doc("mcp.calls_in_flight_max", "Tool calls in flight at once, over every organization."),
    doc(
        "mcp.commands",
        "The local MCP servers (stdio) organizations may use: a service whose base URL is stdio:<name> runs \
         that program, without a shell, with only env as its environment, from /, under the limits, killed \
         with its session; nothing else is ever started. For example: \
         [[mcp.commands]] name = \"files\", program = \"/usr/bin/python3\", args = [\"/opt/mcp/files.py\"], \
         env = { LANG = \"C.UTF-8\" }, memory_max_bytes = 2147483648, cpu_max_s = 3600, open_files_max = 256",
    ),
    doc("prompts", "System-prompt templates: the sandbox they render in and the cache of compiled ones."),
    doc(
        "prompts.fuel",
        "Work one section's render may do: template instructions and bytes made (about 64 bytes of memory \
         each at most); a template that runs out is refused on save and fails its render.",
    ),
    doc("prompts.output_bytes_max", "A composed prompt's length at most, in bytes."),
    doc("prompts.cache_entries_max", "Compositions (a name for a room and a user) kept compiled at most."),
    doc("oauth", "OAuth: connections to outside services, with Outpost as the OAuth client."),
    unset(
        "oauth.public_url",
        "The URL browsers reach this server at; providers send people back to <public_url>/v1/oauth/callback, \
         the redirect URI to register with them. Unset: http(s)://<listen address> (127.0.0.1 for 0.0.0.0).",
        "\"https://outpost.example.com\"",
    ),
    doc("oauth.pending_ttl_s", "How long an authorization may take, from its start to the callback, in seconds."),
    doc("oauth.pending_per_org_max", "Authorizations in progress per organization at most."),
    doc("oauth.providers_per_org_max", "OAuth providers per organization at most."),
    doc("oauth.connections_per_org_max", "Connections per organization at most."),
    doc("oauth.refresh_ahead_s", "An access token this close to its expiry is refreshed before use, in seconds."),
    doc(
        "oauth.request_timeout_ms",
        "A request to a provider's token, discovery or revocation endpoint at most, in ms.",
    ),
    doc(
        "oauth.discovery_cache_s",
        "How long an identity provider's discovery document and signing keys are kept, in seconds \
         (an id_token signed by a key not among them fetches them again at once).",
    ),
    doc("oauth.identity_providers_per_org_max", "Identity providers (single sign-on) per organization at most."),
    doc("oauth.apps_per_org_max", "OAuth apps (Outpost as their authorization server) per organization at most."),
];

/// A key the code has and this file does not document, or the other way round.
#[derive(Debug, thiserror::Error)]
#[error("configuration documentation out of step with the code: {0}")]
pub struct DocDrift(pub String);

/// The packaged configuration file, documented.
pub fn render_packaged() -> Result<String, DocDrift> {
    render(&packaged(), &Config::default())
}

/// Renders `config` as a commented TOML file, noting where it differs from `defaults`.
pub fn render(config: &Config, defaults: &Config) -> Result<String, DocDrift> {
    let value = json(config)?;
    let base = json(defaults)?;
    let mut out = String::from(HEADER);
    let mut used = Vec::new();
    let Value::Object(top) = &value else { return Err(DocDrift("not a table".into())) };
    // Plain keys first (TOML puts them before the first table), then one table per section.
    for (key, v) in top.iter().filter(|(_, v)| !v.is_object()) {
        out.push('\n');
        entry(&mut out, key, key, v, base.get(key), &mut used)?;
    }
    for (section, v) in top.iter().filter(|(_, v)| v.is_object()) {
        let Value::Object(fields) = v else { continue };
        out.push('\n');
        comment(&mut out, lookup(section, &mut used)?.text);
        let _ = writeln!(out, "[{section}]");
        for (key, v) in fields {
            if v.is_object() {
                return Err(DocDrift(format!("{section}.{key}: nested tables are not supported")));
            }
            let path = format!("{section}.{key}");
            entry(&mut out, &path, key, v, base.get(section).and_then(|s| s.get(key)), &mut used)?;
        }
    }
    let stale: Vec<&str> = DOCS.iter().map(|d| d.path).filter(|p| !used.contains(p)).collect();
    if !stale.is_empty() {
        return Err(DocDrift(format!("documented but not in Config: {}", stale.join(", "))));
    }
    Ok(out)
}

fn json(c: &Config) -> Result<Value, DocDrift> {
    serde_json::to_value(c).map_err(|e| DocDrift(e.to_string()))
}

fn lookup(path: &str, used: &mut Vec<&'static str>) -> Result<&'static Doc, DocDrift> {
    let d = DOCS.iter().find(|d| d.path == path).ok_or_else(|| DocDrift(format!("{path} is not documented")))?;
    used.push(d.path);
    Ok(d)
}

fn entry(
    out: &mut String,
    path: &str,
    key: &str,
    v: &Value,
    default: Option<&Value>,
    used: &mut Vec<&'static str>,
) -> Result<(), DocDrift> {
    let d = lookup(path, used)?;
    comment(out, d.text);
    if v.is_null() {
        let example = d.example.ok_or_else(|| DocDrift(format!("{path} is unset by default: give an example")))?;
        let _ = writeln!(out, "# {key} = {example}");
        return Ok(());
    }
    if let Some(default) = default.filter(|&dv| dv != v) {
        let shown = if default.is_null() { "unset".to_owned() } else { toml_value(path, default)? };
        comment(out, &format!("Built-in default: {shown}."));
    }
    let _ = writeln!(out, "{key} = {}", toml_value(path, v)?);
    Ok(())
}

fn toml_value(path: &str, v: &Value) -> Result<String, DocDrift> {
    toml::Value::try_from(v).map(|t| t.to_string()).map_err(|e| DocDrift(format!("{path}: {e}")))
}

/// Writes `text` as `#` comment lines of at most 100 columns.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 100 && line.len() > 1 {
            let _ = writeln!(out, "{line}");
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented_and_the_file_loads_back() {
        let text = render_packaged().unwrap_or_else(|e| panic!("{e}"));
        let back = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, packaged());
    }

    #[test]
    fn commented_examples_are_valid_keys() {
        let text = render_packaged().unwrap_or_else(|e| panic!("{e}"));
        // Uncommenting every example still gives a valid file.
        let examples: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if DOCS
                        .iter()
                        .any(|d| d.example.is_some() && rest.starts_with(&format!("{} = ", leaf(d.path)))) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let with = Config::from_toml(&examples).unwrap_or_else(|e| panic!("{e}"));
        assert!(with.tls.cert_file.is_some() && with.media.public_ip.is_some() && with.vault.master_key_file.is_some());
    }

    fn leaf(path: &str) -> &str {
        path.rsplit('.').next().unwrap_or(path)
    }
}
