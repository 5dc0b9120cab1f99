//! Operator API keys: the instance administrators' credentials.
//!
//! A key reads `opk_<key id>_<secret>`; only the SHA-256 of the secret is stored (the secret is
//! 256 random bits, so a fast hash is as strong as a slow one here). The key is shown once, at
//! creation. Keys live in the instance scope (the nil organization).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::DomainError;
use crate::ids::hex;
use crate::ids::{self, Id};
use crate::store::tables::{OPERATOR_KEYS, org_id_key};
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Store, StoreError, decode, encode};
use crate::tenancy::OrgScope;

pub const KEY_PREFIX: &str = "opk_";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorKey {
    pub id: Id,
    pub name: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub created_at_ms: i64,
    pub revoked: bool,
}

/// A newly made key: the record and the full key text, which is never stored.
pub struct CreatedKey {
    pub key: OperatorKey,
    pub token: String,
}

/// Creates an operator key. `actor` says who asked (the CLI on the machine, usually).
pub async fn create_key(writer: &Writer, actor: &str, name: &str) -> Result<CreatedKey, DomainError> {
    let id = Id::new();
    let mut secret = [0u8; 32];
    ids::fill_random(&mut secret);
    let secret_text = URL_SAFE_NO_PAD.encode(secret);
    let token = format!("{KEY_PREFIX}{}_{secret_text}", id.0.simple());
    let digest = sha256_hex(secret_text.as_bytes());
    let name = if name.trim().is_empty() { "operator".to_owned() } else { name.trim().to_owned() };
    let ctx = MutationCtx { scope: OrgScope::INSTANCE, actor: actor.to_owned(), request_id: None, client_addr: None };
    let key = writer
        .submit(ctx, move |tx| {
            let key = OperatorKey {
                id,
                name: name.clone(),
                secret_sha256: digest.clone(),
                created_at_ms: tx.now_ms(),
                revoked: false,
            };
            tx.put(OPERATOR_KEYS, &org_id_key(Id::NIL, id), &encode(&key))?;
            tx.emit("instance", "operator_key.created", json!({ "id": id, "name": key.name }));
            tx.audit("operator_key.create", format!("operator_key:{id}"), json!({ "name": key.name }));
            Ok::<_, DomainError>(key)
        })
        .await?;
    Ok(CreatedKey { key, token })
}

/// Why a presented operator key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Malformed,
    Unknown,
    Revoked,
}

/// Checks a presented key; the key record when it is valid.
pub async fn verify(store: &Store, token: &str) -> Result<Result<OperatorKey, KeyRefusal>, StoreError> {
    let Some((id, secret)) = parse(token) else {
        return Ok(Err(KeyRefusal::Malformed));
    };
    let presented = sha256_hex(secret.as_bytes());
    store
        .read(move |r| {
            let Some(v) = r.get(OPERATOR_KEYS, &org_id_key(Id::NIL, id))? else {
                return Ok(Err(KeyRefusal::Unknown));
            };
            let key: OperatorKey = decode(OPERATOR_KEYS, &v)?;
            if !constant_time_eq(key.secret_sha256.as_bytes(), presented.as_bytes()) {
                return Ok(Err(KeyRefusal::Unknown));
            }
            if key.revoked {
                return Ok(Err(KeyRefusal::Revoked));
            }
            Ok(Ok(key))
        })
        .await
}

fn parse(token: &str) -> Option<(Id, String)> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id = uuid::Uuid::try_parse(id).ok()?;
    (secret.len() == 43).then(|| (Id(id), secret.to_owned()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_in_their_own_shape() {
        let id = Id::new();
        let secret = "a".repeat(43);
        let token = format!("opk_{}_{secret}", id.0.simple());
        assert_eq!(parse(&token).map(|(i, _)| i), Some(id));
        assert!(parse("opk_nothex_x").is_none());
        assert!(parse(&format!("opk_{}_short", id.0.simple())).is_none());
        assert!(parse("Bearer whatever").is_none());
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
