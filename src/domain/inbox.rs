//! The inbox: a user's own topic (`user:{id}`) of mentions, invitations, assignments and
//! channels added to, acknowledged per device, so a device that was offline gets exactly
//! what it has not acknowledged when it comes back, with an unread count.

use serde_json::json;

use super::DomainError;
use crate::ids::Id;
use crate::store::tables::{self, EVENT_HEADS, EVENT_TOPICS, INBOX_ACKS, org_id_key};
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Reader, StoreError, prefix_end};

/// Device names: 1–64 bytes.
pub const DEVICE_BYTES_MAX: usize = 64;
/// Unread counts stop at this.
pub const UNREAD_COUNT_MAX: usize = 10_000;

/// The inbox topic of `user`.
pub fn topic(user: Id) -> String {
    format!("user:{user}")
}

fn key(org: Id, user: Id, device: &str) -> Vec<u8> {
    let mut k = org_id_key(org, user).to_vec();
    k.extend_from_slice(device.as_bytes());
    k
}

pub fn check_device(device: &str) -> Result<(), DomainError> {
    if device.is_empty() || device.len() > DEVICE_BYTES_MAX {
        return Err(DomainError::invalid("/device", "invalid_length", format!("1–{DEVICE_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// Where `device` of `user` has acknowledged the inbox up to, if it ever did.
pub fn position(r: &Reader, org: Id, user: Id, device: &str) -> Result<Option<u64>, StoreError> {
    Ok(r.get(INBOX_ACKS, &key(org, user, device))?.and_then(|v| tables::u64_be(&v)))
}

/// Inbox events after `seq`, counted up to `UNREAD_COUNT_MAX`.
pub fn unread(r: &Reader, org: Id, user: Id, seq: u64) -> Result<u64, StoreError> {
    let t = topic(user);
    let start = tables::topic_key(org, &t, seq.saturating_add(1));
    let end = prefix_end(&tables::topic_prefix(org, &t));
    Ok(r.range(EVENT_TOPICS, &start, &end, false, UNREAD_COUNT_MAX)?.len() as u64)
}

/// Records that `device` has seen the inbox up to `seq` (never backwards); answers the
/// position kept.
pub async fn ack(writer: &Writer, ctx: MutationCtx, user: Id, device: String, seq: u64) -> Result<u64, DomainError> {
    check_device(&device)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let k = key(org, user, &device);
            let had = tx.get(INBOX_ACKS, &k)?.and_then(|v| tables::u64_be(&v)).unwrap_or(0);
            // Never past what the log has handed out: a future position would skip real events.
            let head = tx.get(EVENT_HEADS, org.as_bytes())?.and_then(|v| tables::u64_be(&v)).unwrap_or(0);
            let to = had.max(seq.min(head));
            tx.put(INBOX_ACKS, &k, &to.to_be_bytes())?;
            tx.audit("inbox.ack", format!("user:{user}"), json!({ "device": device, "seq": to }));
            Ok(to)
        })
        .await
}
