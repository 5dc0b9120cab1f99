//! Password hashing: argon2id at OWASP's current minimum (19 MiB, 2 passes, 1 lane).
//!
//! Hashes are stored as `argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>` (base64 without padding),
//! so parameters can be raised later without breaking old hashes. Hashing is slow and
//! memory-hungry on purpose: it runs on the blocking pool, at most `HASHES_AT_ONCE` at a time.
//! A login for an unknown user verifies against a dummy hash, so it costs the same time.

use std::sync::{Arc, OnceLock};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use tokio::sync::Semaphore;

use crate::ids;

pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;
pub const PASSWORD_CHARS_MIN: usize = 10;
pub const PASSWORD_CHARS_MAX: usize = 1024;
/// Concurrent hash computations at most (each takes `M_COST_KIB` of memory).
pub const HASHES_AT_ONCE: usize = 2;

/// Bounds concurrent hashing.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        Self { permits: Arc::new(Semaphore::new(HASHES_AT_ONCE)) }
    }
}

impl Hasher {
    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> String {
        let _permit = self.permits.acquire().await;
        tokio::task::spawn_blocking(move || hash_sync(&password)).await.unwrap_or_default()
    }

    /// Checks `password` against `stored`, or against a dummy hash when there is no user, so
    /// both cost the same.
    pub async fn verify(&self, password: String, stored: Option<String>) -> bool {
        let _permit = self.permits.acquire().await;
        tokio::task::spawn_blocking(move || {
            let target = stored.as_deref().unwrap_or_else(|| dummy_hash());
            verify_sync(&password, target) && stored.is_some()
        })
        .await
        .unwrap_or(false)
    }
}

fn argon(m: u32, t: u32, p: u32) -> Option<Argon2<'static>> {
    Params::new(m, t, p, Some(32)).ok().map(|params| Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

pub fn hash_sync(password: &str) -> String {
    let mut salt = [0u8; 16];
    ids::fill_random(&mut salt);
    let mut out = [0u8; 32];
    // Our parameters are valid constants.
    let a = argon(M_COST_KIB, T_COST, P_COST).expect("valid argon2 parameters");
    a.hash_password_into(password.as_bytes(), &salt, &mut out).expect("argon2 accepts our sizes");
    format!(
        "argon2id$v=19$m={M_COST_KIB},t={T_COST},p={P_COST}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    )
}

pub fn verify_sync(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [alg, "v=19", params, salt, hash] = parts.as_slice() else { return false };
    if *alg != "argon2id" {
        return false;
    }
    let mut m = 0;
    let mut t = 0;
    let mut p = 0;
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("m", v)) => m = v.parse().unwrap_or(0),
            Some(("t", v)) => t = v.parse().unwrap_or(0),
            Some(("p", v)) => p = v.parse().unwrap_or(0),
            _ => return false,
        }
    }
    let (Ok(salt), Ok(expected), Some(a)) =
        (STANDARD_NO_PAD.decode(salt), STANDARD_NO_PAD.decode(hash), argon(m, t, p))
    else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    if a.hash_password_into(password.as_bytes(), &salt, &mut out).is_err() {
        return false;
    }
    out.len() == expected.len() && out.iter().zip(&expected).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_sync("an unused password for unknown users"))
}

/// Why a new password is refused, if it is.
pub fn check_new(password: &str) -> Option<String> {
    if password.chars().count() < PASSWORD_CHARS_MIN {
        return Some(format!("at least {PASSWORD_CHARS_MIN} characters"));
    }
    if password.chars().count() > PASSWORD_CHARS_MAX {
        return Some(format!("at most {PASSWORD_CHARS_MAX} characters"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let h = hash_sync("correct horse battery");
        assert!(h.starts_with("argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_sync("correct horse battery", &h));
        assert!(!verify_sync("correct horse batterz", &h));
        assert!(!verify_sync("x", "garbage"));
        assert_ne!(hash_sync("same"), hash_sync("same"), "salted");
    }
}
