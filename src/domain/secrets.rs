//! Signing secrets that rotate with an overlap: kept newest first, each sealed in the vault for
//! what it signs (a webhook endpoint, a service's gateway identity). A rotation puts a new one
//! first; the ones before it sign on until the overlap ends, so a receiver can switch keys
//! without missing a message.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::ids::{self, Id};
use crate::vault::Vault;

/// Key bytes of a secret made here.
pub const KEY_BYTES: usize = 32;

/// A secret as stored: sealed in the vault for its owner.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedSecret {
    pub id: Id,
    /// Base64 of the sealed key bytes.
    pub sealed: String,
    pub created_at_ms: i64,
    /// After this it no longer signs (set when a newer secret replaces it).
    pub expires_at_ms: Option<i64>,
}

/// A fresh secret's key bytes, and the record holding them sealed for `purpose`.
pub fn generate(vault: &Vault, purpose: &str, now_ms: i64) -> (Vec<u8>, SealedSecret) {
    let mut key = vec![0u8; KEY_BYTES];
    ids::fill_random(&mut key);
    let sealed = SealedSecret {
        id: Id::new(),
        sealed: STANDARD.encode(vault.seal(purpose, &key)),
        created_at_ms: now_ms,
        expires_at_ms: None,
    };
    (key, sealed)
}

/// The secrets that sign at `now_ms`, newest first, opened; `None` if one does not open.
pub fn in_force(secrets: &[SealedSecret], vault: &Vault, purpose: &str, now_ms: i64) -> Option<Vec<Vec<u8>>> {
    secrets
        .iter()
        .filter(|s| s.expires_at_ms.is_none_or(|e| e > now_ms))
        .map(|s| STANDARD.decode(&s.sealed).ok().and_then(|b| vault.open(purpose, &b).ok()))
        .collect()
}

/// Puts `new` first; the secrets before it sign on until `now_ms + overlap_ms` (those already
/// past their end are dropped). When the overlap ends.
pub fn rotate(secrets: &mut Vec<SealedSecret>, new: SealedSecret, now_ms: i64, overlap_ms: i64) -> i64 {
    let ends = now_ms + overlap_ms;
    secrets.retain(|s| s.expires_at_ms.is_none_or(|x| x > now_ms));
    for s in secrets.iter_mut() {
        s.expires_at_ms = Some(s.expires_at_ms.map_or(ends, |x| x.min(ends)));
    }
    secrets.insert(0, new);
    ends
}

/// Re-seals each of `secrets` under the vault's current key; how many, or `None` if one does
/// not open.
pub fn reseal(secrets: &mut [SealedSecret], vault: &Vault, purpose: &str) -> Option<usize> {
    for s in secrets.iter_mut() {
        s.sealed = vault.reseal_base64(purpose, &s.sealed).ok()?;
    }
    Some(secrets.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_keeps_the_old_secret_only_for_the_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open_or_create(&dir.path().join("key")).unwrap();
        let (k1, s1) = generate(&vault, "p", 0);
        let mut all = vec![s1];
        let (k2, s2) = generate(&vault, "p", 1_000);
        assert_eq!(rotate(&mut all, s2, 1_000, 500), 1_500);
        assert_eq!(in_force(&all, &vault, "p", 1_200).unwrap(), vec![k2.clone(), k1]);
        assert_eq!(in_force(&all, &vault, "p", 1_500).unwrap(), vec![k2.clone()]);
        // Sealed for one purpose, it opens for no other.
        assert!(in_force(&all, &vault, "q", 1_200).is_none());
        let (_, s3) = generate(&vault, "p", 2_000);
        rotate(&mut all, s3, 2_000, 500);
        assert_eq!(all.len(), 2, "the expired first secret is dropped");
        assert_eq!(reseal(&mut all, &vault, "p"), Some(2));
        assert_eq!(in_force(&all, &vault, "p", 2_100).unwrap()[1], k2);
    }
}
