//! Authentication: turning presented credentials into principals.
//!
//! For now the instance's operators, who authenticate with an operator API key as a bearer
//! token. An `Operator` value is proof that a key was checked; operator code needs one to make
//! an `OrgScope` for the organization it reaches into.
//!
//! Checked keys are remembered in a small bounded cache (by the SHA-256 of the presented
//! text, for `KEY_CACHE_TTL`), so a busy client does not cost a store read per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::operators::{self, KeyRefusal};
use crate::ids::Id;
use crate::store::{Store, StoreError};

/// How long a checked key is trusted without looking again. Key revocation (when it exists)
/// must also clear the cache.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(10);
/// Most keys remembered; a full cache is emptied rather than grown.
pub const KEY_CACHE_LEN_MAX: usize = 4096;

/// A checked operator.
#[derive(Clone, Debug)]
pub struct Operator {
    key_id: Id,
}

impl Operator {
    /// The actor string of audit records and events.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.key_id)
    }

    pub fn key_id(&self) -> Id {
        self.key_id
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials were presented")]
    Missing,
    #[error("the credentials are not valid")]
    Invalid,
    #[error("the credentials have been revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Recently checked operator keys.
#[derive(Default)]
pub struct KeyCache {
    // A std Mutex: held for a map lookup or insert, never across an await.
    inner: Mutex<HashMap<[u8; 32], (Id, Instant)>>,
}

impl KeyCache {
    fn get(&self, digest: &[u8; 32]) -> Option<Id> {
        let map = self.inner.lock().ok()?;
        map.get(digest).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(id, _)| *id)
    }

    fn put(&self, digest: [u8; 32], id: Id) {
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= KEY_CACHE_LEN_MAX {
                map.clear();
            }
            map.insert(digest, (id, Instant::now()));
        }
    }
}

/// Checks an operator key presented as a bearer token.
pub async fn operator(store: &Store, cache: &KeyCache, bearer: &str) -> Result<Operator, AuthError> {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bearer.as_bytes()).as_ref());
    if let Some(key_id) = cache.get(&digest) {
        return Ok(Operator { key_id });
    }
    match operators::verify(store, bearer).await? {
        Ok(key) => {
            cache.put(digest, key.id);
            Ok(Operator { key_id: key.id })
        }
        Err(KeyRefusal::Revoked) => Err(AuthError::Revoked),
        Err(KeyRefusal::Malformed | KeyRefusal::Unknown) => Err(AuthError::Invalid),
    }
}
