//! Every redb table of the store, with its key encoding, in one place.
//!
//! All tables map bytes to bytes; the encodings below are the schema. Org tables have keys that
//! begin with the 16-byte organization id (the writer checks this on every put), so one
//! organization's rows are contiguous and a scope cannot reach another's. The few global tables
//! are named as such. Values are JSON unless said otherwise: tolerant of added fields, readable
//! when debugging a store by hand.

use redb::TableDefinition;

use crate::ids::Id;

/// A table definition: every table maps bytes to bytes.
pub type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Whether a table's keys must begin with the writing scope's organization id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tenancy {
    Org,
    Global,
}

/// A table of the store.
#[derive(Clone, Copy)]
pub struct Table {
    pub def: Def,
    pub tenancy: Tenancy,
    /// Its position in `ALL` (the writer keeps every table open in that order).
    pub idx: usize,
}

const fn org(name: &'static str, idx: usize) -> Table {
    Table { def: TableDefinition::new(name), tenancy: Tenancy::Org, idx }
}

const fn global(name: &'static str, idx: usize) -> Table {
    Table { def: TableDefinition::new(name), tenancy: Tenancy::Global, idx }
}

/// Global. `name` → value: `schema_version` (u32 BE), `epoch` (u64 BE), `created_at` (i64 BE
/// ms), `gseq` (u64 BE, the last global log position handed out).
pub const META: Table = global("meta", 0);

/// org → `Organization` JSON. The instance's own records use the nil org.
pub const ORGS: Table = org("orgs", 1);
/// Global. slug → org (16 bytes). Slugs are unique across the instance (logins name them).
pub const ORG_SLUGS: Table = global("org_slugs", 2);
/// nil org ‖ key id → `OperatorKey` JSON.
pub const OPERATOR_KEYS: Table = org("operator_keys", 3);

/// org ‖ seq (u64 BE) → an `Event`: binary since schema 3, JSON before (`Event::from_stored`
/// reads both). The org's event log, dense in seq.
pub const EVENTS: Table = org("events", 4);
/// org ‖ topic ‖ seq (u64 BE) → empty, the topic as a packed text (`topic_prefix`). "Topic T
/// after seq S" is a range. Before schema 4: org ‖ topic len (u16 BE) ‖ topic ‖ seq.
pub const EVENT_TOPICS: Table = org("event_topics", 5);
/// org → head seq (u64 BE): the last seq handed out in this org.
pub const EVENT_HEADS: Table = org("event_heads", 6);
/// Global. gseq (u64 BE) → org ‖ seq: the commit order across orgs, which followers read.
pub const LOG_ORDER: Table = global("log_order", 7);
/// Global. follower name → checkpoint gseq (u64 BE). Holds back trimming of the log.
pub const FOLLOWERS: Table = global("followers", 8);

/// nil org ‖ key id → `SigningKeyRecord` JSON (secret sealed in the vault).
pub const SIGNING_KEYS: Table = org("signing_keys", 11);

/// org ‖ user → `User` JSON.
pub const USERS: Table = org("users", 12);
/// org ‖ `e:` email or `u:` username (lowercased) → user (16 bytes): unique logins per org.
pub const USER_LOGINS: Table = org("user_logins", 13);
/// org ‖ SHA-256 of the secret → `OneTimeToken` JSON (invitations, password resets).
pub const ONE_TIME_TOKENS: Table = org("one_time_tokens", 14);
/// org ‖ session → `Session` JSON (a login and its refresh-token family).
pub const SESSIONS: Table = org("sessions", 15);
/// org ‖ user ‖ session → created at (i64 BE ms): a user's sessions, for listing and the cap.
pub const USER_SESSIONS: Table = org("user_sessions", 16);
/// org ‖ SHA-256 of a refresh token's secret → `RefreshRecord` JSON.
pub const REFRESH_TOKENS: Table = org("refresh_tokens", 17);

/// org ‖ key id → `ApiKey` JSON (the secret only as a SHA-256).
pub const API_KEYS: Table = org("api_keys", 18);

/// org ‖ room → `Room` JSON.
pub const ROOMS: Table = org("rooms", 19);
/// org ‖ room ‖ user → `Participant` JSON.
pub const ROOM_PARTICIPANTS: Table = org("room_participants", 20);
/// org ‖ user ‖ room → empty: the rooms a user takes part in.
pub const USER_ROOMS: Table = org("user_rooms", 21);

/// org ‖ channel → `Channel` JSON.
pub const CHANNELS: Table = org("channels", 22);
/// org ‖ channel ‖ user → `Member` JSON (with the read position).
pub const CHANNEL_MEMBERS: Table = org("channel_members", 23);
/// org ‖ SHA-256 of the sorted member ids → channel: one direct channel per member set.
pub const DIRECT_CHANNELS: Table = org("direct_channels", 24);
/// org ‖ channel ‖ seq (u64 BE) → a `Message`: binary since schema 4 (`Message::to_stored`),
/// JSON before (`Message::from_stored` reads both).
pub const MESSAGES: Table = org("messages", 25);
/// org ‖ message id → channel ‖ seq (the message's key less the org); before schema 4, the
/// whole key (`chat::messages::key_of_entry` reads both).
pub const MESSAGE_IDS: Table = org("message_ids", 26);
/// org ‖ SHA-256 of author ‖ idempotency key → the message's key, as `MESSAGE_IDS` keeps it.
pub const MESSAGE_IDEMPOTENCY: Table = org("message_idempotency", 27);

/// org ‖ task → `Task` JSON (its dependencies inside).
pub const TASKS: Table = org("tasks", 28);

/// org ‖ user ‖ task → empty: the tasks assigned to each user, for the task list's `assignee`
/// filter (schema 2; migration 2 builds it for a store made before).
pub const TASK_ASSIGNEES: Table = org("task_assignees", 42);

/// org ‖ user ‖ device name → seq (u64 BE): how far each of a user's devices has acknowledged
/// the inbox (`user:{id}`).
pub const INBOX_ACKS: Table = org("inbox_acks", 29);

/// org ‖ doc → `Document` JSON (metadata and the counters of its stored state).
pub const DOCS: Table = org("docs", 30);
/// org ‖ room ‖ doc → empty: a room's documents, for listing.
pub const ROOM_DOCS: Table = org("room_docs", 31);
/// org ‖ doc ‖ n (u64 BE) → a Yjs update (binary, v1 encoding): the document's own durable log
/// of updates after its snapshot.
pub const DOC_UPDATES: Table = org("doc_updates", 32);
/// org ‖ doc → the document's state through `Document::snapshot_through` as one Yjs update
/// (binary, v1), written by compaction.
pub const DOC_SNAPSHOTS: Table = org("doc_snapshots", 33);
/// org ‖ doc ‖ version → `DocVersion` JSON: named versions of a document.
pub const DOC_VERSIONS: Table = org("doc_versions", 34);
/// org ‖ version → the version's state as one Yjs update (binary, v1).
pub const DOC_VERSION_STATES: Table = org("doc_version_states", 35);
/// org → bytes (u64 BE): the stored size of all the organization's documents, for its cap.
pub const DOC_USAGE: Table = org("doc_usage", 36);

/// org ‖ asset → `Asset` JSON: a stored file's record (name, type, size, digest, owner).
pub const ASSETS: Table = org("assets", 37);
/// org ‖ user ‖ asset → empty: the files a user uploaded, for listing.
pub const USER_ASSETS: Table = org("user_assets", 38);
/// org ‖ SHA-256 (32 bytes) → `BlobRecord` JSON: a blob the organization holds, its size and
/// how many live assets name it.
pub const ASSET_BLOBS: Table = org("asset_blobs", 39);
/// org → bytes (u64 BE): the organization's stored file bytes (each blob once), for its quota.
pub const ASSET_USAGE: Table = org("asset_usage", 40);

/// org ‖ room ‖ SHA-256 of the name → `RoomAsset` JSON: a room's named file and its versions.
pub const ROOM_ASSETS: Table = org("room_assets", 41);

/// org ‖ endpoint → `Endpoint` JSON: a webhook endpoint (its signing secrets sealed in the vault).
pub const WEBHOOK_ENDPOINTS: Table = org("webhook_endpoints", 43);
/// org ‖ endpoint ‖ gseq (u64 BE) → `Pending` JSON: messages an endpoint has yet to take, in
/// commit order.
pub const WEBHOOK_QUEUE: Table = org("webhook_queue", 44);
/// org ‖ endpoint ‖ attempt (UUIDv7) → `Attempt` JSON: an endpoint's log of delivery attempts.
pub const WEBHOOK_ATTEMPTS: Table = org("webhook_attempts", 45);

/// org ‖ service → `Service` JSON: a registered service (its credential sealed in the vault).
pub const SERVICES: Table = org("services", 46);
/// org ‖ service ‖ change (UUIDv7) → `HealthChange` JSON: a service's health history.
pub const SERVICE_HEALTH: Table = org("service_health", 47);

/// org ‖ provider → `Provider` JSON: an OAuth provider (its client secret sealed in the vault).
pub const OAUTH_PROVIDERS: Table = org("oauth_providers", 48);
/// org ‖ connection → `Connection` JSON: an account at a provider (its tokens sealed).
pub const OAUTH_CONNECTIONS: Table = org("oauth_connections", 49);
/// org ‖ SHA-256 of the state's nonce → `Pending` JSON: an authorization in progress.
pub const OAUTH_PENDING: Table = org("oauth_pending", 50);

/// org ‖ provider → `IdentityProvider` JSON: an SSO identity provider (its secret sealed).
pub const SSO_PROVIDERS: Table = org("sso_providers", 51);
/// org ‖ SHA-256 of the state's nonce → `Pending` JSON: a sign-in in progress.
pub const SSO_PENDING: Table = org("sso_pending", 52);
/// org ‖ provider ‖ subject → user id: the account an identity signs in to.
pub const SSO_LINKS: Table = org("sso_links", 53);

/// org ‖ app → `OAuthApp` JSON: an app of Outpost's authorization server (its secret a digest).
pub const OAUTH_APPS: Table = org("oauth_apps", 54);
/// org ‖ SHA-256 of the code's random part → `Code` JSON: an authorization code, taken once.
pub const OAUTH_CODES: Table = org("oauth_codes", 55);

/// org ‖ template → `Template` JSON: a system-prompt template at its current version (global
/// ones under the nil organization).
pub const PROMPT_TEMPLATES: Table = org("prompt_templates", 56);
/// org ‖ template ‖ version (u64 BE) → `Version` JSON: a template's history.
pub const PROMPT_VERSIONS: Table = org("prompt_versions", 57);
/// org ‖ name ‖ 0 ‖ level ‖ owner → template id: the template of a name at each layer.
pub const PROMPT_NAMES: Table = org("prompt_names", 58);

/// org ‖ n (u64 BE) → an audit record, hash-chained per org: binary since schema 3, JSON
/// before (`audit::AuditRecord::from_stored` reads both).
pub const AUDIT: Table = org("audit", 9);
/// org → n (u64 BE) ‖ hash (32 bytes): the chain's last link, so removing the tail is detected.
pub const AUDIT_HEADS: Table = org("audit_heads", 10);

/// Every table, for backup, restore and integrity checks.
pub const ALL: &[Table] = &[
    META,
    ORGS,
    ORG_SLUGS,
    OPERATOR_KEYS,
    EVENTS,
    EVENT_TOPICS,
    EVENT_HEADS,
    LOG_ORDER,
    FOLLOWERS,
    AUDIT,
    AUDIT_HEADS,
    SIGNING_KEYS,
    USERS,
    USER_LOGINS,
    ONE_TIME_TOKENS,
    SESSIONS,
    USER_SESSIONS,
    REFRESH_TOKENS,
    API_KEYS,
    ROOMS,
    ROOM_PARTICIPANTS,
    USER_ROOMS,
    CHANNELS,
    CHANNEL_MEMBERS,
    DIRECT_CHANNELS,
    MESSAGES,
    MESSAGE_IDS,
    MESSAGE_IDEMPOTENCY,
    TASKS,
    INBOX_ACKS,
    DOCS,
    ROOM_DOCS,
    DOC_UPDATES,
    DOC_SNAPSHOTS,
    DOC_VERSIONS,
    DOC_VERSION_STATES,
    DOC_USAGE,
    ASSETS,
    USER_ASSETS,
    ASSET_BLOBS,
    ASSET_USAGE,
    ROOM_ASSETS,
    TASK_ASSIGNEES,
    WEBHOOK_ENDPOINTS,
    WEBHOOK_QUEUE,
    WEBHOOK_ATTEMPTS,
    SERVICES,
    SERVICE_HEALTH,
    OAUTH_PROVIDERS,
    OAUTH_CONNECTIONS,
    OAUTH_PENDING,
    SSO_PROVIDERS,
    SSO_PENDING,
    SSO_LINKS,
    OAUTH_APPS,
    OAUTH_CODES,
    PROMPT_TEMPLATES,
    PROMPT_VERSIONS,
    PROMPT_NAMES,
];

/// `org ‖ a ‖ b`.
pub fn org_id_id_key(org: Id, a: Id, b: Id) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(org.as_bytes());
    k[16..32].copy_from_slice(a.as_bytes());
    k[32..].copy_from_slice(b.as_bytes());
    k
}

/// `org ‖ id ‖ n`: an entry of a per-document sequence.
pub fn org_id_seq_key(org: Id, id: Id, n: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(org.as_bytes());
    k[16..32].copy_from_slice(id.as_bytes());
    k[32..].copy_from_slice(&n.to_be_bytes());
    k
}

/// `org ‖ bytes`.
pub fn org_bytes_key(org: Id, bytes: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + bytes.len());
    k.extend_from_slice(org.as_bytes());
    k.extend_from_slice(bytes);
    k
}

/// The table with this name, if it is one of ours.
pub fn by_name(name: &str) -> Option<Table> {
    ALL.iter().copied().find(|t| redb::TableHandle::name(&t.def) == name)
}

// ----- key encodings -----

/// `org ‖ id`.
pub fn org_id_key(org: Id, id: Id) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(org.as_bytes());
    k[16..].copy_from_slice(id.as_bytes());
    k
}

/// `org ‖ n` for sequence-keyed tables (events, audit).
pub fn org_seq_key(org: Id, n: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(org.as_bytes());
    k[16..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Splits an `org ‖ n` key.
pub fn split_org_seq(key: &[u8]) -> Option<(Id, u64)> {
    if key.len() != 24 {
        return None;
    }
    let org = Id::from_slice(&key[..16])?;
    let n = u64::from_be_bytes(key[16..].try_into().ok()?);
    Some((org, n))
}

/// `org ‖ topic ‖ seq` for the topic index.
pub fn topic_key(org: Id, topic: &str, seq: u64) -> Vec<u8> {
    let mut k = topic_prefix(org, topic);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `org ‖ topic`: the prefix every entry of one topic shares. The topic goes as a packed text
/// (`packed::put_text`: its length, then it; a `kind:<uuid>` topic as its kind and the id's 16
/// bytes), which says where it ends, so no topic's prefix is a prefix of another's.
pub fn topic_prefix(org: Id, topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + 3 + topic.len() + 8);
    k.extend_from_slice(org.as_bytes());
    super::packed::put_text(&mut k, topic);
    k
}

/// A topic index key as schema 3 wrote it (`org ‖ len (u16 BE) ‖ topic ‖ seq`), as it is now.
pub(crate) fn topic_key_from_schema_3(key: &[u8]) -> Option<Vec<u8>> {
    let org = Id::from_slice(key.get(..16)?)?;
    let len = usize::from(u16::from_be_bytes(key.get(16..18)?.try_into().ok()?));
    let topic = std::str::from_utf8(key.get(18..18 + len)?).ok()?;
    let seq = key.get(18 + len..).filter(|s| s.len() == 8).and_then(u64_be)?;
    Some(topic_key(org, topic, seq))
}

pub fn u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_keys_sort_by_seq_within_a_topic() {
        let org = Id::new();
        let a = topic_key(org, "room:1", 2);
        let b = topic_key(org, "room:1", 10);
        let c = topic_key(org, "room:10", 1);
        assert!(a < b);
        // A longer topic never interleaves with a shorter one that is its prefix.
        assert!(!c.starts_with(&topic_prefix(org, "room:1")));
        let id = "0193aabb-cc00-7d11-8e22-f33344455566";
        for (topic, other) in [
            (format!("channel:{id}"), format!("channel:{id}x")),
            (format!("channel:{id}"), format!("channel{id}")),
            ("org".to_owned(), "org:".to_owned()),
            (String::new(), "a".to_owned()),
        ] {
            let (a, b) = (topic_prefix(org, &topic), topic_prefix(org, &other));
            assert!(!a.starts_with(&b) && !b.starts_with(&a), "{topic:?} {other:?}");
        }
        // An id's topic takes its kind and 16 bytes.
        assert_eq!(topic_key(org, &format!("channel:{id}"), 1).len(), 16 + 1 + 7 + 16 + 8);
    }

    #[test]
    fn a_schema_3_topic_key_becomes_todays() {
        let org = Id::new();
        for topic in ["channel:0193aabb-cc00-7d11-8e22-f33344455566", "org", "", "é:x"] {
            let mut old = org.as_bytes().to_vec();
            old.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            old.extend_from_slice(topic.as_bytes());
            old.extend_from_slice(&7u64.to_be_bytes());
            assert_eq!(topic_key_from_schema_3(&old), Some(topic_key(org, topic, 7)), "{topic:?}");
            for cut in 0..old.len() {
                assert_eq!(topic_key_from_schema_3(&old[..cut]), None, "{topic:?} cut at {cut}");
            }
            old.push(0);
            assert_eq!(topic_key_from_schema_3(&old), None, "{topic:?} a byte too many");
        }
    }

    #[test]
    fn every_table_knows_its_position() {
        for (i, t) in ALL.iter().enumerate() {
            assert_eq!(t.idx, i);
        }
    }

    #[test]
    fn every_table_has_a_distinct_name() {
        let mut names: Vec<_> = ALL.iter().map(|t| redb::TableHandle::name(&t.def)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
