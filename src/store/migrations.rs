//! Schema migrations: what a store made by an older build needs before this one serves it.
//!
//! A store records its schema version in `meta`. At open, every migration above it runs in
//! order, each in one write transaction together with the version bump, so a crash part-way
//! leaves the store at the previous version and the next start runs that migration again from
//! the beginning. A migration reads and writes tables directly (below the writer: nothing
//! else runs yet, and it adds no events or audit records, since it changes no one's data).
//!
//! To change the schema: add the table or encoding in `tables`, raise `SCHEMA_VERSION`, and add
//! the step that brings an older store there. Never edit a migration that has shipped.

use redb::{ReadableTable, ReadableTableMetadata};
use serde::Deserialize;

use super::StoreError;
use super::tables::{self, EVENT_TOPICS, TASK_ASSIGNEES, TASKS};
use crate::ids::Id;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 5;

/// Upgrades from `version - 1` to `version`.
pub type Migration = fn(&redb::WriteTransaction) -> Result<u64, StoreError>;

/// Every migration: the version it brings a store to, what it does, and the step (which
/// returns how many rows it wrote).
pub const MIGRATIONS: &[(u32, &str, Migration)] = &[
    (2, "index tasks by assignee", index_tasks_by_assignee),
    (3, "audit records and events stored in binary from now on", records_in_binary),
    (4, "messages, event data and audit details stored in binary; topic index keys made short", values_in_binary),
    (5, "audit records and events stored compactly from now on", records_compact),
];

/// Schema 2: `task_assignees` lists each user's tasks, so the task list filtered by assignee
/// reads that user's tasks instead of scanning the organization's.
fn index_tasks_by_assignee(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    /// What the migration reads of a task record.
    #[derive(Deserialize)]
    struct Assigned {
        #[serde(default)]
        assignees: Vec<Id>,
    }
    let tasks = txn.open_table(TASKS.def)?;
    let mut index = txn.open_table(TASK_ASSIGNEES.def)?;
    let mut written = 0;
    for row in tasks.iter()? {
        let (k, v) = row?;
        let key = k.value();
        let (Some(org), Some(task)) = (super::key_org(key), key.get(16..32).and_then(Id::from_slice)) else {
            return Err(StoreError::Corrupt { table: "tasks".into(), detail: "short key".into() });
        };
        let t: Assigned = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Corrupt { table: "tasks".into(), detail: e.to_string() })?;
        for user in t.assignees {
            index.insert(tables::org_id_id_key(org, user, task).as_slice(), [].as_slice())?;
            written += 1;
        }
    }
    Ok(written)
}

/// Schema 3: new audit records and events are stored in binary (`packed`), which builds before
/// it cannot read. What is already stored stays JSON, which this build reads, so nothing is
/// rewritten (a rewrite would be one transaction the size of the whole audit chain, and the
/// event log's JSON leaves with retention anyway); the version is raised so that an older build
/// refuses the store instead of misreading it.
#[allow(clippy::unnecessary_wraps)] // every migration has this signature
fn records_in_binary(_txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    Ok(0)
}

/// Schema 4: new messages are stored in binary (`Message::to_stored`), their id index entries
/// without the organization, and the JSON values inside new events and audit records in binary
/// too (`packed::put_value`); as at schema 3, what is stored of those stays as it is and reads.
/// The topic index is rewritten with its topics packed (`tables::topic_prefix`): it holds only
/// the event log's retained entries, and ranges over it need one form.
fn values_in_binary(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt { table: "event_topics".into(), detail: detail.into() };
    let new: Vec<Vec<u8>> = {
        let t = txn.open_table(EVENT_TOPICS.def)?;
        let mut keys = Vec::with_capacity(usize::try_from(t.len()?).unwrap_or(0));
        for row in t.iter()? {
            let old = row?.0;
            keys.push(
                tables::topic_key_from_schema_3(old.value())
                    .ok_or_else(|| corrupt("a key not in the schema 3 form"))?,
            );
        }
        keys
    };
    txn.delete_table(EVENT_TOPICS.def)?;
    let mut t = txn.open_table(EVENT_TOPICS.def)?;
    for k in &new {
        t.insert(k.as_slice(), [].as_slice())?;
    }
    Ok(new.len() as u64)
}

/// Schema 5: new audit records and events are stored in the compact form (`packed::Compact`:
/// numbers as LEB128, common words as numbers), which builds before it cannot read. As at
/// schema 3, what is stored stays as it is and reads; the version is raised so that an older
/// build refuses the store instead of misreading it.
#[allow(clippy::unnecessary_wraps)] // every migration has this signature
fn records_compact(_txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    Ok(0)
}
