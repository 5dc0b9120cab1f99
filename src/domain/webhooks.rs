//! Webhook endpoints: where an organization wants its events sent, which ones, and the secrets
//! deliveries are signed with; and the records of delivery — each endpoint's queue of messages
//! still to send, in commit order, and its log of attempts.
//!
//! An endpoint's signing secrets are sealed in the vault and shown once. A rotation puts a new
//! secret first and gives the others an end: until then every one of them signs, so receivers
//! switch over at their own pace.
//!
//! An endpoint receives the events of its organization that any member could follow: the
//! `org` topic, rooms open to the whole organization and their documents, public channels —
//! never a private room, a private or direct channel, or someone's inbox.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::chat::{Channel, ChannelKind};
use super::docs::Document;
use super::paging::{Page, PageRequest, newest_first};
use super::rooms::{Room, Visibility};
use super::{DomainError, FieldError, check};
use crate::egress::{AddressPolicy, check_url};
use crate::ids::{self, Id};
use crate::store::events::Event;
use crate::store::tables::{
    CHANNELS, DOCS, EVENTS, ROOMS, WEBHOOK_ATTEMPTS, WEBHOOK_ENDPOINTS, WEBHOOK_QUEUE, org_id_key, org_id_seq_key,
    org_seq_key,
};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Reader, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;
use crate::vault::Vault;

/// Longest endpoint URL, in bytes.
pub const URL_BYTES_MAX: usize = 2048;
/// Longest description, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 500;
/// Event-type and topic filters per endpoint at most, and the longest one.
pub const FILTERS_MAX: usize = 50;
pub const FILTER_CHARS_MAX: usize = 100;
/// Custom headers per endpoint at most, and the longest value.
pub const HEADERS_MAX: usize = 20;
pub const HEADER_VALUE_BYTES_MAX: usize = 1024;
/// The highest rate limit an endpoint may ask for, in deliveries per second.
pub const RATE_MAX: u32 = 10_000;
/// Headers a delivery sets itself (or the connection does), which an endpoint cannot override.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "user-agent",
];

pub use super::secrets::SealedSecret;

/// Why an endpoint was switched off by the server itself.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// Every attempt failed for `webhooks.disable_after_ms`.
    Failing,
    /// Its backlog reached `webhooks.backlog_per_endpoint_max`.
    BacklogFull,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Failing => "failing",
            DisabledReason::BacklogFull => "backlog_full",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub id: Id,
    pub url: String,
    pub description: String,
    /// Event types it receives (`message.created`, `message.*`, `*`); empty: all.
    pub event_types: Vec<String>,
    /// Topics it receives (`org`, `room:*`, `channel:<id>`); empty: all it may receive.
    pub topics: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<DisabledReason>,
    /// Deliveries per second at most; `None`: as fast as the receiver answers.
    pub rate_per_s: Option<u32>,
    /// Sent with every delivery.
    pub headers: BTreeMap<String, String>,
    /// Newest first.
    pub secrets: Vec<SealedSecret>,
    pub created_by: Id,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
    /// Since when every attempt has failed; `None` after a success.
    pub failing_since_ms: Option<i64>,
}

impl Endpoint {
    /// Whether `event` is one this endpoint takes (its filters; not whether its topic is
    /// shared with the organization, which [`shared_with_org`] decides).
    pub fn wants(&self, event: &Event) -> bool {
        self.enabled && self.filters_take(event)
    }

    /// Whether its filters take `event` (on or off).
    pub fn filters_take(&self, event: &Event) -> bool {
        (self.event_types.is_empty() || self.event_types.iter().any(|p| pattern_matches(p, &event.kind)))
            && (self.topics.is_empty() || self.topics.iter().any(|p| pattern_matches(p, &event.topic)))
    }

    /// The secrets that sign at `now_ms`, newest first, opened.
    pub fn signing_keys(&self, vault: &Vault, org: Id, now_ms: i64) -> Result<Vec<Vec<u8>>, DomainError> {
        super::secrets::in_force(&self.secrets, vault, &purpose(org, self.id), now_ms).ok_or_else(|| damaged(self.id))
    }
}

fn damaged(id: Id) -> DomainError {
    DomainError::Store(StoreError::Corrupt {
        table: "webhook_endpoints".into(),
        detail: format!("endpoint {id}: a signing secret does not open"),
    })
}

/// What a secret is sealed for: its endpoint, so it opens nowhere else.
fn purpose(org: Id, endpoint: Id) -> String {
    format!("webhook_secret:{org}:{endpoint}")
}

/// `*` alone matches everything; `prefix*` (e.g. `message.*`, `room:*`) what starts with the
/// prefix; anything else itself.
pub fn pattern_matches(pattern: &str, s: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => pattern == s,
    }
}

/// Whether an event on `topic` is one any member of the organization could follow, and so one
/// its webhooks may carry.
pub fn shared_with_org(r: &impl Lookup, org: Id, topic: &str) -> Result<bool, StoreError> {
    let (kind, rest) = topic.split_once(':').unwrap_or((topic, ""));
    let Ok(id) = rest.parse::<Id>() else { return Ok(kind == "org" && rest.is_empty()) };
    let room_open = |room: Id| -> Result<bool, StoreError> {
        Ok(r.record::<Room>(ROOMS, &org_id_key(org, room))?.is_some_and(|r| r.visibility == Visibility::Org))
    };
    Ok(match kind {
        "room" => room_open(id)?,
        "doc" => match r.record::<Document>(DOCS, &org_id_key(org, id))? {
            Some(d) => room_open(d.room)?,
            None => false,
        },
        "channel" => {
            r.record::<Channel>(CHANNELS, &org_id_key(org, id))?.is_some_and(|c| c.kind == ChannelKind::Public)
        }
        _ => false,
    })
}

/// What a new endpoint is made of.
#[derive(Clone, Debug, Default)]
pub struct NewEndpoint {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub topics: Vec<String>,
    pub enabled: bool,
    pub rate_per_s: Option<u32>,
    pub headers: BTreeMap<String, String>,
}

/// A change to an endpoint: each field present is replaced.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub topics: Option<Vec<String>>,
    pub enabled: Option<bool>,
    /// `Some(None)` removes the limit.
    pub rate_per_s: Option<Option<u32>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub expected_version: Option<u64>,
}

fn check_url_field(policy: &AddressPolicy, url: &str, errors: &mut Vec<FieldError>) {
    if url.len() > URL_BYTES_MAX {
        errors.push(FieldError::new("/url", "invalid_length", format!("at most {URL_BYTES_MAX} bytes")));
        return;
    }
    match reqwest::Url::parse(url) {
        Err(e) => errors.push(FieldError::new("/url", "invalid_url", format!("not a URL: {e}"))),
        Ok(u) => match check_url(policy, &u) {
            Ok(()) => {}
            Err(crate::egress::EgressError::Refused(why)) => {
                errors.push(FieldError::new("/url", "address_refused", why));
            }
            Err(e) => errors.push(FieldError::new("/url", "invalid_url", e.to_string())),
        },
    }
}

fn check_filters(pointer: &str, list: &[String], topics: bool, errors: &mut Vec<FieldError>) {
    if list.len() > FILTERS_MAX {
        errors.push(FieldError::new(pointer, "too_many", format!("at most {FILTERS_MAX}")));
        return;
    }
    for (i, p) in list.iter().enumerate() {
        let body = p.strip_suffix('*').unwrap_or(p);
        let allowed = |c: char| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-') || (topics && c == ':')
        };
        let ok = !p.is_empty()
            && p.chars().count() <= FILTER_CHARS_MAX
            && body.chars().all(allowed)
            && (p == "*" || !body.is_empty());
        if !ok {
            errors.push(FieldError::new(
                &format!("{pointer}/{i}"),
                "invalid_filter",
                format!(
                    "1–{FILTER_CHARS_MAX} of a–z, 0–9, `_.-`{}, optionally ending in `*`",
                    if topics { ":" } else { "" }
                ),
            ));
        }
    }
}

fn check_headers(headers: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    if headers.len() > HEADERS_MAX {
        errors.push(FieldError::new("/headers", "too_many", format!("at most {HEADERS_MAX}")));
        return;
    }
    for (name, value) in headers {
        let pointer = format!("/headers/{name}");
        let lower = name.to_ascii_lowercase();
        let token = !name.is_empty()
            && name.len() <= 100
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            errors.push(FieldError::new(&pointer, "invalid_header", "not a header name"));
        } else if RESERVED_HEADERS.contains(&lower.as_str())
            || lower.starts_with("webhook-")
            || lower.starts_with("proxy-")
        {
            errors.push(FieldError::new(&pointer, "reserved_header", "every delivery sets this header itself"));
        }
        if value.len() > HEADER_VALUE_BYTES_MAX || !value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            errors.push(FieldError::new(
                &pointer,
                "invalid_header",
                format!("a value is at most {HEADER_VALUE_BYTES_MAX} printable ASCII bytes"),
            ));
        }
    }
}

fn check_description(d: &str, errors: &mut Vec<FieldError>) {
    if d.chars().count() > DESCRIPTION_CHARS_MAX {
        errors.push(FieldError::new(
            "/description",
            "invalid_length",
            format!("at most {DESCRIPTION_CHARS_MAX} characters"),
        ));
    }
}

fn check_rate(rate: Option<u32>, errors: &mut Vec<FieldError>) {
    if rate.is_some_and(|r| r == 0 || r > RATE_MAX) {
        errors.push(FieldError::new("/rate_limit_per_s", "out_of_range", format!("1–{RATE_MAX}")));
    }
}

/// A fresh secret's key bytes, and the record holding them sealed.
fn new_secret(vault: &Vault, org: Id, endpoint: Id, now_ms: i64) -> (Vec<u8>, SealedSecret) {
    super::secrets::generate(vault, &purpose(org, endpoint), now_ms)
}

/// The part of an endpoint its events and audit records show (never a secret or a header's
/// value: those may hold credentials).
fn summary(e: &Endpoint) -> serde_json::Value {
    json!({
        "id": e.id,
        "url": e.url,
        "event_types": e.event_types,
        "topics": e.topics,
        "enabled": e.enabled,
        "headers": e.headers.keys().collect::<Vec<_>>(),
    })
}

/// Registers an endpoint; returns it and its signing secret's key bytes (shown once).
pub async fn create(
    writer: &Writer,
    vault: &Vault,
    policy: &AddressPolicy,
    ctx: MutationCtx,
    caller: Id,
    new: NewEndpoint,
    per_org_max: usize,
) -> Result<(Endpoint, Vec<u8>), DomainError> {
    let mut errors = Vec::new();
    check_url_field(policy, &new.url, &mut errors);
    check_description(&new.description, &mut errors);
    check_filters("/event_types", &new.event_types, false, &mut errors);
    check_filters("/topics", &new.topics, true, &mut errors);
    check_headers(&new.headers, &mut errors);
    check_rate(new.rate_per_s, &mut errors);
    check(errors)?;
    let org = ctx.scope.org();
    let id = Id::new();
    let now = ids::now_ms();
    let (key, sealed) = new_secret(vault, org, id, now);
    let endpoint = writer
        .submit(ctx, move |tx| {
            let existing =
                tx.range(WEBHOOK_ENDPOINTS, org.as_bytes(), &prefix_end(org.as_bytes()), per_org_max + 1)?.len();
            if existing >= per_org_max {
                return Err(DomainError::Conflict {
                    code: "quota_exceeded",
                    detail: format!("at most {per_org_max} webhook endpoints per organization"),
                });
            }
            let e = Endpoint {
                id,
                url: new.url.clone(),
                description: new.description.clone(),
                event_types: new.event_types.clone(),
                topics: new.topics.clone(),
                enabled: new.enabled,
                disabled_reason: None,
                rate_per_s: new.rate_per_s,
                headers: new.headers.clone(),
                secrets: vec![sealed.clone()],
                created_by: caller,
                created_at_ms: tx.now_ms(),
                updated_at_ms: tx.now_ms(),
                version: 1,
                failing_since_ms: None,
            };
            tx.put(WEBHOOK_ENDPOINTS, &org_id_key(org, id), &encode(&e))?;
            tx.emit("org", "webhook.endpoint_created", summary(&e));
            tx.audit("webhook.endpoint.create", format!("webhook_endpoint:{id}"), summary(&e));
            Ok(e)
        })
        .await?;
    Ok((endpoint, key))
}

fn load(tx: &Tx<'_, '_>, org: Id, id: Id) -> Result<Endpoint, DomainError> {
    tx.record::<Endpoint>(WEBHOOK_ENDPOINTS, &org_id_key(org, id))?
        .ok_or(DomainError::NotFound { what: "webhook endpoint" })
}

/// Changes an endpoint. Turning a disabled endpoint on clears why it was off and its failure
/// streak; its backlog is delivered from where it stopped, the first message at once.
pub async fn update(
    writer: &Writer,
    policy: &AddressPolicy,
    ctx: MutationCtx,
    id: Id,
    patch: EndpointPatch,
) -> Result<Endpoint, DomainError> {
    let mut errors = Vec::new();
    if let Some(u) = &patch.url {
        check_url_field(policy, u, &mut errors);
    }
    if let Some(d) = &patch.description {
        check_description(d, &mut errors);
    }
    if let Some(t) = &patch.event_types {
        check_filters("/event_types", t, false, &mut errors);
    }
    if let Some(t) = &patch.topics {
        check_filters("/topics", t, true, &mut errors);
    }
    if let Some(h) = &patch.headers {
        check_headers(h, &mut errors);
    }
    if let Some(r) = patch.rate_per_s {
        check_rate(r, &mut errors);
    }
    check(errors)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut e = load(tx, org, id)?;
            super::paging::check_version(patch.expected_version, e.version)?;
            let was_enabled = e.enabled;
            if let Some(u) = &patch.url {
                e.url.clone_from(u);
            }
            if let Some(d) = &patch.description {
                e.description.clone_from(d);
            }
            if let Some(t) = &patch.event_types {
                e.event_types.clone_from(t);
            }
            if let Some(t) = &patch.topics {
                e.topics.clone_from(t);
            }
            if let Some(h) = &patch.headers {
                e.headers.clone_from(h);
            }
            if let Some(r) = patch.rate_per_s {
                e.rate_per_s = r;
            }
            if let Some(on) = patch.enabled {
                e.enabled = on;
                if on && !was_enabled {
                    e.disabled_reason = None;
                    e.failing_since_ms = None;
                    // The first message (the only one tried: delivery is in order) is due now.
                    let prefix = org_id_key(org, id);
                    if let Some((k, v)) = tx.range(WEBHOOK_QUEUE, &prefix, &prefix_end(&prefix), 1)?.pop() {
                        let mut p: Pending = decode(WEBHOOK_QUEUE, &v)?;
                        p.next_at_ms = tx.now_ms();
                        tx.put(WEBHOOK_QUEUE, &k, &encode(&p))?;
                    }
                }
            }
            e.version += 1;
            e.updated_at_ms = tx.now_ms();
            tx.put(WEBHOOK_ENDPOINTS, &org_id_key(org, id), &encode(&e))?;
            tx.emit("org", "webhook.endpoint_updated", summary(&e));
            tx.audit("webhook.endpoint.update", format!("webhook_endpoint:{id}"), summary(&e));
            Ok(e)
        })
        .await
}

/// Removes an endpoint with its backlog and its log of attempts.
pub async fn delete(writer: &Writer, ctx: MutationCtx, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let e = load(tx, org, id)?;
            let prefix = org_id_key(org, id);
            let mut dropped = 0u64;
            for table in [WEBHOOK_QUEUE, WEBHOOK_ATTEMPTS] {
                for (k, _) in tx.range(table, &prefix, &prefix_end(&prefix), usize::MAX)? {
                    tx.delete(table, &k)?;
                    dropped += u64::from(table.idx == WEBHOOK_QUEUE.idx);
                }
            }
            tx.delete(WEBHOOK_ENDPOINTS, &prefix)?;
            tx.emit("org", "webhook.endpoint_deleted", json!({ "id": id, "url": e.url }));
            tx.audit(
                "webhook.endpoint.delete",
                format!("webhook_endpoint:{id}"),
                json!({ "url": e.url, "undelivered": dropped }),
            );
            Ok(())
        })
        .await
}

/// Puts a new signing secret first; those before it sign on for `overlap_ms`, then stop.
/// Returns the endpoint and the new secret's key bytes (shown once).
pub async fn rotate_secret(
    writer: &Writer,
    vault: &Vault,
    ctx: MutationCtx,
    id: Id,
    overlap_ms: i64,
) -> Result<(Endpoint, Vec<u8>), DomainError> {
    let org = ctx.scope.org();
    let (key, sealed) = new_secret(vault, org, id, ids::now_ms());
    let e = writer
        .submit(ctx, move |tx| {
            let mut e = load(tx, org, id)?;
            let now = tx.now_ms();
            let ends = super::secrets::rotate(&mut e.secrets, sealed.clone(), now, overlap_ms);
            e.version += 1;
            e.updated_at_ms = now;
            tx.put(WEBHOOK_ENDPOINTS, &org_id_key(org, id), &encode(&e))?;
            let details = json!({ "id": id, "secret_id": sealed.id, "previous_until": ids::rfc3339(ends) });
            tx.emit("org", "webhook.secret_rotated", details.clone());
            tx.audit("webhook.secret.rotate", format!("webhook_endpoint:{id}"), details);
            Ok::<_, DomainError>(e)
        })
        .await?;
    Ok((e, key))
}

/// Every endpoint of the organization, oldest first.
pub async fn list(store: &Store, scope: OrgScope, max: usize) -> Result<Vec<Endpoint>, DomainError> {
    store.read(move |r| Ok(endpoints_of(r, scope.org(), max)?)).await
}

/// The endpoints of `org` on one snapshot.
pub fn endpoints_of(r: &Reader, org: Id, max: usize) -> Result<Vec<Endpoint>, StoreError> {
    r.range(WEBHOOK_ENDPOINTS, org.as_bytes(), &prefix_end(org.as_bytes()), false, max)?
        .iter()
        .map(|(_, v)| decode(WEBHOOK_ENDPOINTS, v))
        .collect()
}

pub fn get(store: &Store, scope: OrgScope, id: Id) -> Result<Endpoint, DomainError> {
    store
        .peek(|r| r.record::<Endpoint>(WEBHOOK_ENDPOINTS, &org_id_key(scope.org(), id)))?
        .ok_or(DomainError::NotFound { what: "webhook endpoint" })
}

/// What started a delivery.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The event log.
    Event,
    /// Someone asked for one message again.
    Resend,
    /// Someone asked for everything since a time again.
    Recover,
    /// A test message.
    Test,
}

/// A message waiting in an endpoint's queue (keyed by the event's global position).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// The `webhook-id`: the same for every attempt, so receivers can drop repeats.
    pub msg_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The JSON body sent.
    pub body: String,
    pub event_at_ms: i64,
    pub enqueued_at_ms: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this.
    pub next_at_ms: i64,
    pub trigger: Trigger,
}

/// The message id of an event: stable, so repeats are recognizable.
pub fn msg_id(event: &Event) -> String {
    format!("msg_{}_{}", event.org.0.simple(), event.seq)
}

/// The Standard Webhooks body of an event: `{type, timestamp, data}`, with the event's place
/// in the log beside its own data.
pub fn body_of(event: &Event) -> String {
    json!({
        "type": event.kind,
        "timestamp": ids::rfc3339(event.at_ms),
        "data": {
            "org_id": event.org,
            "topic": event.topic,
            "seq": event.seq,
            "actor": event.actor,
            "data": event.data,
        },
    })
    .to_string()
}

/// A pending message for `event`.
pub fn pending_for(event: &Event, trigger: Trigger, now_ms: i64) -> Pending {
    Pending {
        msg_id: msg_id(event),
        kind: event.kind.clone(),
        body: body_of(event),
        event_at_ms: event.at_ms,
        enqueued_at_ms: now_ms,
        attempts: 0,
        next_at_ms: now_ms,
        trigger,
    }
}

/// Queues `pending` for an endpoint at the event's position; a message already queued there
/// stays as it is. Whether it was added.
pub fn enqueue(tx: &mut Tx<'_, '_>, org: Id, endpoint: Id, gseq: u64, pending: &Pending) -> Result<bool, StoreError> {
    let key = org_id_seq_key(org, endpoint, gseq);
    if tx.get(WEBHOOK_QUEUE, &key)?.is_some() {
        return Ok(false);
    }
    tx.put(WEBHOOK_QUEUE, &key, &encode(pending))?;
    Ok(true)
}

/// A pending message as stored.
pub fn encode_pending(p: &Pending) -> Vec<u8> {
    encode(p)
}

/// Queues an already encoded message for an endpoint at the event's position (the follower's
/// way: a message already there, from a recovery that ran ahead of it, is the same message).
pub fn enqueue_new(tx: &mut Tx<'_, '_>, org: Id, endpoint: Id, gseq: u64, encoded: &[u8]) -> Result<(), StoreError> {
    tx.put(WEBHOOK_QUEUE, &org_id_seq_key(org, endpoint, gseq), encoded)
}

/// The first message in an endpoint's queue and its position.
pub fn head(r: &Reader, org: Id, endpoint: Id) -> Result<Option<(u64, Pending)>, StoreError> {
    let prefix = org_id_key(org, endpoint);
    let rows = r.range(WEBHOOK_QUEUE, &prefix, &prefix_end(&prefix), false, 1)?;
    rows.first()
        .map(|(k, v)| {
            let gseq = k.get(32..40).and_then(crate::store::tables::u64_be).unwrap_or(0);
            Ok((gseq, decode(WEBHOOK_QUEUE, v)?))
        })
        .transpose()
}

/// The event a message id names, if the log still holds it.
fn event_of(r: &Reader, org: Id, msg_id: &str) -> Result<Option<Event>, StoreError> {
    let Some((o, seq)) = msg_id.strip_prefix("msg_").and_then(|rest| rest.split_once('_')) else { return Ok(None) };
    if o != org.0.simple().to_string() {
        return Ok(None);
    }
    let Ok(seq) = seq.parse::<u64>() else { return Ok(None) };
    let at = org_seq_key(org, seq);
    r.get(EVENTS, &at)?.map(|v| Event::from_stored(&at, &v)).transpose()
}

/// Queues one message for an endpoint again, by its `webhook-id`, from the event log (its
/// filters aside: it was asked for by name).
pub async fn resend(
    store: &Store,
    writer: &Writer,
    ctx: MutationCtx,
    id: Id,
    msg_id: String,
) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    let id_text = msg_id.clone();
    let event = store
        .read(move |r| event_of(r, org, &id_text))
        .await?
        .ok_or(DomainError::NotFound { what: "message (the event log no longer holds it)" })?;
    writer
        .submit(ctx, move |tx| {
            load(tx, org, id)?;
            let now = tx.now_ms();
            let queued = enqueue(tx, org, id, event.gseq, &pending_for(&event, Trigger::Resend, now))?;
            tx.audit(
                "webhook.message.resend",
                format!("webhook_endpoint:{id}"),
                json!({ "msg_id": msg_id, "type": event.kind, "already_queued": !queued }),
            );
            Ok(())
        })
        .await
}

/// Queues again, in commit order, every message the endpoint's filters take from the events
/// since `since_ms` the log still holds, up to `limit`. How many were queued, and whether more
/// would have been.
pub async fn recover(
    store: &Store,
    writer: &Writer,
    ctx: MutationCtx,
    id: Id,
    since_ms: i64,
    limit: usize,
) -> Result<(usize, bool), DomainError> {
    let org = ctx.scope.org();
    let (events, more) = store
        .read(move |r| {
            let e = r
                .record::<Endpoint>(WEBHOOK_ENDPOINTS, &org_id_key(org, id))?
                .ok_or(DomainError::NotFound { what: "webhook endpoint" })?;
            let mut out = Vec::new();
            let mut more = false;
            let mut shared: BTreeMap<String, bool> = BTreeMap::new();
            let mut failed = None;
            r.scan(EVENTS, &org_seq_key(org, 0), &prefix_end(org.as_bytes()), false, |k, v| {
                let event = Event::from_stored(k, v)?;
                if event.at_ms < since_ms || !e.filters_take(&event) {
                    return Ok(true);
                }
                let open = match shared.get(&event.topic) {
                    Some(o) => *o,
                    None => match shared_with_org(r, org, &event.topic) {
                        Ok(o) => *shared.entry(event.topic.clone()).or_insert(o),
                        Err(err) => {
                            failed = Some(err);
                            return Ok(false);
                        }
                    },
                };
                if open {
                    if out.len() == limit {
                        more = true;
                        return Ok(false);
                    }
                    out.push(event);
                }
                Ok(true)
            })?;
            if let Some(err) = failed {
                return Err(err.into());
            }
            Ok::<_, DomainError>((out, more))
        })
        .await?;
    let events = std::sync::Arc::new(events);
    writer
        .submit(ctx, move |tx| {
            load(tx, org, id)?;
            let now = tx.now_ms();
            let mut queued = 0;
            for event in events.iter() {
                queued += usize::from(enqueue(tx, org, id, event.gseq, &pending_for(event, Trigger::Recover, now))?);
            }
            tx.audit(
                "webhook.recover",
                format!("webhook_endpoint:{id}"),
                json!({ "since": ids::rfc3339(since_ms), "queued": queued, "truncated": more }),
            );
            Ok((queued, more))
        })
        .await
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It did not; another attempt is scheduled.
    Failed,
    /// It did not, and that was the last attempt the schedule allows.
    Exhausted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Exhausted => "exhausted",
        }
    }
}

/// One delivery attempt, as the endpoint's log keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub id: Id,
    pub msg_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's global position (0 for a test message).
    pub gseq: u64,
    pub trigger: Trigger,
    /// 1 for the first attempt at a message.
    pub attempt: u32,
    pub at_ms: i64,
    pub outcome: Outcome,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// Why there was no answer (refused, timeout, connection failed).
    pub error: Option<String>,
    pub latency_ms: u64,
    /// The start of the receiver's answer.
    pub response: String,
    pub next_at_ms: Option<i64>,
}

/// What recording an attempt left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The queued message is gone (delivered or exhausted).
    pub removed: bool,
    /// Since when the endpoint has been failing (after this attempt).
    pub failing_since_ms: Option<i64>,
}

/// Writes down an attempt at the queued message at `gseq`: the log entry, the queue (the
/// message removed, or its next attempt set), the endpoint's failure streak. Bookkeeping: no
/// event, no audit record.
pub async fn record_attempt(
    writer: &Writer,
    org: Id,
    endpoint: Id,
    gseq: u64,
    attempt: Attempt,
) -> Result<Recorded, StoreError> {
    writer
        .maintain(move |tx| {
            let qkey = org_id_seq_key(org, endpoint, gseq);
            let removed = attempt.outcome != Outcome::Failed;
            if let Some(v) = tx.get(WEBHOOK_QUEUE, &qkey)? {
                if removed {
                    tx.delete(WEBHOOK_QUEUE, &qkey)?;
                } else {
                    let mut p: Pending = decode(WEBHOOK_QUEUE, &v)?;
                    p.attempts = attempt.attempt;
                    p.next_at_ms = attempt.next_at_ms.unwrap_or(tx.now_ms());
                    tx.put(WEBHOOK_QUEUE, &qkey, &encode(&p))?;
                }
            }
            let ekey = org_id_key(org, endpoint);
            let Some(mut e) = tx.record::<Endpoint>(WEBHOOK_ENDPOINTS, &ekey)? else {
                // Deleted meanwhile: nothing of it stays.
                return Ok(Recorded { removed, failing_since_ms: None });
            };
            tx.put(
                WEBHOOK_ATTEMPTS,
                &crate::store::tables::org_id_id_key(org, endpoint, attempt.id),
                &encode(&attempt),
            )?;
            let failing =
                if attempt.outcome == Outcome::Delivered { None } else { e.failing_since_ms.or(Some(attempt.at_ms)) };
            if failing != e.failing_since_ms {
                e.failing_since_ms = failing;
                tx.put(WEBHOOK_ENDPOINTS, &ekey, &encode(&e))?;
            }
            Ok(Recorded { removed, failing_since_ms: failing })
        })
        .await
}

/// Records a test message's attempt in the endpoint's log.
pub async fn record_test(writer: &Writer, org: Id, endpoint: Id, attempt: Attempt) -> Result<(), StoreError> {
    writer
        .maintain(move |tx| {
            if tx.get(WEBHOOK_ENDPOINTS, &org_id_key(org, endpoint))?.is_some() {
                let key = crate::store::tables::org_id_id_key(org, endpoint, attempt.id);
                tx.put(WEBHOOK_ATTEMPTS, &key, &encode(&attempt))?;
            }
            Ok(())
        })
        .await
}

/// The server switches an endpoint off (it kept failing, or its backlog is full): an event and
/// an audit record say so. Nothing happens if it was turned off or changed meanwhile in a way
/// that makes this moot (back to delivering, for `Failing`).
pub async fn disable(writer: &Writer, ctx: MutationCtx, id: Id, reason: DisabledReason) -> Result<bool, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let Some(mut e) = tx.record::<Endpoint>(WEBHOOK_ENDPOINTS, &org_id_key(org, id))? else { return Ok(false) };
            if !e.enabled || (reason == DisabledReason::Failing && e.failing_since_ms.is_none()) {
                return Ok(false);
            }
            e.enabled = false;
            e.disabled_reason = Some(reason);
            e.version += 1;
            e.updated_at_ms = tx.now_ms();
            tx.put(WEBHOOK_ENDPOINTS, &org_id_key(org, id), &encode(&e))?;
            let details = json!({
                "id": id,
                "url": e.url,
                "reason": reason.as_str(),
                "failing_since": e.failing_since_ms.map(ids::rfc3339),
            });
            tx.emit("org", "webhook.endpoint_disabled", details.clone());
            tx.audit("webhook.endpoint.disable", format!("webhook_endpoint:{id}"), details);
            Ok(true)
        })
        .await
}

/// An endpoint's attempts, newest first.
pub async fn attempts(store: &Store, scope: OrgScope, id: Id, page: PageRequest) -> Result<Page<Attempt>, DomainError> {
    let org = scope.org();
    store
        .read(move |r| {
            if r.get(WEBHOOK_ENDPOINTS, &org_id_key(org, id))?.is_none() {
                return Err(DomainError::NotFound { what: "webhook endpoint" });
            }
            Ok(newest_first(r, WEBHOOK_ATTEMPTS, &org_id_key(org, id), &page)?)
        })
        .await
}

/// Whether an endpoint's log holds more than `keep` attempts or one from before `cutoff_ms`
/// (read on a snapshot, so only the logs that need it are trimmed through the writer).
pub fn attempts_to_trim(r: &Reader, org: Id, endpoint: Id, keep: usize, cutoff_ms: i64) -> Result<bool, StoreError> {
    let prefix = org_id_key(org, endpoint);
    let end = prefix_end(&prefix);
    let mut oldest_too_old = false;
    r.scan(WEBHOOK_ATTEMPTS, &prefix, &end, false, |_, v| {
        oldest_too_old = decode::<Attempt>(WEBHOOK_ATTEMPTS, v).map_or(true, |a| a.at_ms < cutoff_ms);
        Ok(false)
    })?;
    if oldest_too_old {
        return Ok(true);
    }
    let mut n = 0usize;
    r.scan(WEBHOOK_ATTEMPTS, &prefix, &end, true, |_, _| {
        n += 1;
        Ok(n <= keep)
    })?;
    Ok(n > keep)
}

/// Trims an endpoint's log to its newest `keep` attempts and those after `cutoff_ms`; how many
/// were removed (at most `batch_max` per call).
pub async fn trim_attempts(
    writer: &Writer,
    org: Id,
    endpoint: Id,
    keep: usize,
    cutoff_ms: i64,
    batch_max: usize,
) -> Result<usize, StoreError> {
    writer
        .maintain(move |tx| {
            let prefix = org_id_key(org, endpoint);
            let end = prefix_end(&prefix);
            // Oldest first: everything before the newest `keep`, and anything too old.
            let total = tx.range(WEBHOOK_ATTEMPTS, &prefix, &end, usize::MAX)?;
            let over = total.len().saturating_sub(keep);
            let mut removed = 0;
            for (i, (k, v)) in total.iter().enumerate() {
                if removed >= batch_max {
                    break;
                }
                let old = decode::<Attempt>(WEBHOOK_ATTEMPTS, v).map_or(true, |a| a.at_ms < cutoff_ms);
                if i < over || old {
                    tx.delete(WEBHOOK_ATTEMPTS, k)?;
                    removed += 1;
                } else {
                    break;
                }
            }
            Ok(removed)
        })
        .await
}

/// Every endpoint with messages queued, with how many (for the deliverer's start).
pub fn backlogs(r: &Reader) -> Result<BTreeMap<(Id, Id), usize>, StoreError> {
    let mut out = BTreeMap::new();
    r.for_each(WEBHOOK_QUEUE, |k, _| {
        if let (Some(org), Some(ep)) = (k.get(..16).and_then(Id::from_slice), k.get(16..32).and_then(Id::from_slice)) {
            *out.entry((org, ep)).or_insert(0) += 1;
        }
        Ok(true)
    })?;
    Ok(out)
}

/// How many messages wait for one endpoint.
pub fn backlog_of(r: &Reader, org: Id, endpoint: Id) -> Result<usize, StoreError> {
    let prefix = org_id_key(org, endpoint);
    let mut n = 0;
    r.scan(WEBHOOK_QUEUE, &prefix, &prefix_end(&prefix), false, |_, _| {
        n += 1;
        Ok(true)
    })?;
    Ok(n)
}

/// Every endpoint of the instance, as (org, endpoint).
pub fn all_endpoints(r: &Reader) -> Result<Vec<(Id, Id)>, StoreError> {
    let mut out = Vec::new();
    r.for_each(WEBHOOK_ENDPOINTS, |k, _| {
        if let (Some(org), Some(ep)) = (k.get(..16).and_then(Id::from_slice), k.get(16..32).and_then(Id::from_slice)) {
            out.push((org, ep));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// The organizations that have endpoints.
pub fn orgs_with_endpoints(r: &Reader) -> Result<Vec<Id>, StoreError> {
    let mut orgs: Vec<Id> = all_endpoints(r)?.into_iter().map(|(o, _)| o).collect();
    orgs.dedup();
    Ok(orgs)
}

/// Re-seals every endpoint's secrets of `org` under the vault's current key (a vault
/// rotation); how many.
pub async fn reseal(writer: &Writer, vault: std::sync::Arc<Vault>, ctx: MutationCtx) -> Result<usize, DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut n = 0;
            for (k, v) in tx.range(WEBHOOK_ENDPOINTS, org.as_bytes(), &prefix_end(org.as_bytes()), usize::MAX)? {
                let mut e: Endpoint = decode(WEBHOOK_ENDPOINTS, &v)?;
                n +=
                    super::secrets::reseal(&mut e.secrets, &vault, &purpose(org, e.id)).ok_or_else(|| damaged(e.id))?;
                tx.put(WEBHOOK_ENDPOINTS, &k, &encode(&e))?;
            }
            if n > 0 {
                tx.audit(
                    "webhook.secrets.reseal",
                    "webhook_endpoints",
                    json!({ "key_id": vault.key_id(), "resealed": n }),
                );
            }
            Ok(n)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_prefixes_and_whole_names() {
        assert!(pattern_matches("*", "message.created"));
        assert!(pattern_matches("message.*", "message.created"));
        assert!(!pattern_matches("message.*", "messages.created"));
        assert!(pattern_matches("room:*", "room:0193"));
        assert!(pattern_matches("task.created", "task.created"));
        assert!(!pattern_matches("task.created", "task.created2"));
    }

    #[test]
    fn filters_and_headers_are_checked() {
        let mut errors = Vec::new();
        check_filters(
            "/event_types",
            &["message.*".into(), "*".into(), "Bad".into(), "a*b".into()],
            false,
            &mut errors,
        );
        check_filters("/topics", &["room:*".into(), "org".into()], true, &mut errors);
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/event_types/2", "/event_types/3"]);
        let mut errors = Vec::new();
        let headers: BTreeMap<String, String> = [
            ("X-Team".to_owned(), "ops".to_owned()),
            ("Webhook-Id".to_owned(), "x".to_owned()),
            ("Host".to_owned(), "x".to_owned()),
            ("X-Bad".to_owned(), "a\r\nb".to_owned()),
            ("bad name".to_owned(), "x".to_owned()),
        ]
        .into();
        check_headers(&headers, &mut errors);
        let codes: Vec<(&str, &str)> = errors.iter().map(|e| (e.pointer.as_str(), e.code)).collect();
        assert_eq!(
            codes,
            [
                ("/headers/Host", "reserved_header"),
                ("/headers/Webhook-Id", "reserved_header"),
                ("/headers/X-Bad", "invalid_header"),
                ("/headers/bad name", "invalid_header"),
            ]
        );
    }
}
