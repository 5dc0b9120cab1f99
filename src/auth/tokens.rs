//! Access tokens: PASETO v4.public, signed with the current key, its PASERK id in the footer.
//!
//! Claims: `org`, `sub` (the user), `role`, `sid` (the login session), `iat`, `nbf`, `exp`.
//! Verification tells apart every way a token can be wrong, each with its own error, so a
//! client can tell "log in again" (expired) from "this was never ours" (bad signature).

use std::time::Duration;

use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::footer::Footer;
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{Public, public};

use super::keys::KeyRing;
use crate::ids::Id;

/// What an access token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessClaims {
    pub org: Id,
    pub user: Id,
    pub role: String,
    pub session: Id,
    /// Unix seconds.
    pub exp_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a PASETO token")]
    Malformed,
    #[error("the token is not a v4.public access token")]
    WrongPurpose,
    #[error("the token names a signing key this server does not have")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's claims are incomplete")]
    BadClaims,
    #[error("no signing key is available")]
    NoSigningKey,
}

/// Verified tokens, by the SHA-256 of their text, until they expire: checking a token twice
/// costs a hash and a lookup instead of an Ed25519 verification. Bounded: a full cache is
/// emptied rather than grown. (A cached token still needs its session to stand; that check is
/// remembered only until a row it read changes: `auth::Caches`.)
#[derive(Default)]
pub struct VerifiedCache {
    // A std Mutex: held for a lookup or an insert, never across an await.
    inner: std::sync::Mutex<std::collections::HashMap<[u8; 32], AccessClaims>>,
}

/// Most verified tokens remembered.
pub const VERIFIED_CACHE_LEN_MAX: usize = 16_384;

impl VerifiedCache {
    /// As `verify`, remembering what verified.
    pub fn verify(&self, ring: &KeyRing, token: &str, access_ttl: Duration) -> Result<AccessClaims, TokenError> {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        let now_s = crate::ids::now_ms() / 1000;
        if let Some(c) = self.inner.lock().ok().and_then(|m| m.get(&digest).cloned()) {
            if c.exp_s > now_s {
                return Ok(c);
            }
            return Err(TokenError::Expired);
        }
        let claims = verify(ring, token, access_ttl)?;
        if let Ok(mut m) = self.inner.lock() {
            if m.len() >= VERIFIED_CACHE_LEN_MAX {
                m.clear();
            }
            m.insert(digest, claims.clone());
        }
        Ok(claims)
    }
}

/// Signs an access token for `claims` valid for `ttl`.
pub fn issue(ring: &KeyRing, claims: &AccessClaims, ttl: Duration) -> Result<String, TokenError> {
    let signer = ring.signing.as_ref().ok_or(TokenError::NoSigningKey)?;
    let mut c = Claims::new_expires_in(&ttl).map_err(|_| TokenError::BadClaims)?;
    c.subject(&claims.user.to_string()).map_err(|_| TokenError::BadClaims)?;
    c.add_additional("org", claims.org.to_string()).map_err(|_| TokenError::BadClaims)?;
    c.add_additional("role", claims.role.clone()).map_err(|_| TokenError::BadClaims)?;
    c.add_additional("sid", claims.session.to_string()).map_err(|_| TokenError::BadClaims)?;
    let mut footer = Footer::new();
    footer.key_id(&signer.pid);
    public::sign(&signer.secret, &c, Some(&footer), None).map_err(|_| TokenError::BadClaims)
}

/// Verifies `token` against the ring, at the current time.
pub fn verify(ring: &KeyRing, token: &str, access_ttl: Duration) -> Result<AccessClaims, TokenError> {
    if !token.starts_with("v4.public.") {
        // Another PASETO version or purpose (v4.local, v2.public, …) is not an access token.
        let paseto_like = token.starts_with('v') && token.split('.').count() >= 3;
        return Err(if paseto_like { TokenError::WrongPurpose } else { TokenError::Malformed });
    }
    let untrusted = UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
    let mut footer = Footer::new();
    footer.parse_bytes(untrusted.untrusted_footer()).map_err(|_| TokenError::Malformed)?;
    let kid = footer.get_claim("kid").and_then(|v| v.as_str()).ok_or(TokenError::UnknownKey)?;
    let verifier = ring.verifiers.get(kid).ok_or(TokenError::UnknownKey)?;
    // A retired key verifies only tokens that could still be alive.
    if let Some(retired) = verifier.record.retired_at_ms {
        if crate::ids::now_ms() > retired + access_ttl.as_millis() as i64 {
            return Err(TokenError::UnknownKey);
        }
    }
    let rules = ClaimsValidationRules::new();
    let trusted = public::verify(&verifier.key, &untrusted, &rules, Some(&footer), None).map_err(classify)?;
    let c = trusted.payload_claims().ok_or(TokenError::BadClaims)?;
    let text = |k: &str| c.get_claim(k).and_then(|v| v.as_str()).ok_or(TokenError::BadClaims);
    let id = |k: &str| text(k)?.parse::<Id>().map_err(|_| TokenError::BadClaims);
    let exp = text("exp")?;
    let exp_s = time::OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339)
        .map_err(|_| TokenError::BadClaims)?
        .unix_timestamp();
    Ok(AccessClaims { org: id("org")?, user: id("sub")?, role: text("role")?.to_owned(), session: id("sid")?, exp_s })
}

#[allow(clippy::needless_pass_by_value)] // used as a map_err function
fn classify(e: pasetors::errors::Error) -> TokenError {
    use pasetors::errors::{ClaimValidationError as C, Error as E};
    match e {
        E::ClaimValidation(C::Exp) => TokenError::Expired,
        E::ClaimValidation(C::Nbf | C::Iat) => TokenError::NotYetValid,
        E::ClaimValidation(_) | E::InvalidClaim | E::ClaimInvalidJson | E::ClaimInvalidUtf8 => TokenError::BadClaims,
        E::TokenFormat | E::Base64 | E::FooterParsing | E::PayloadInvalidUtf8 => TokenError::Malformed,
        _ => TokenError::BadSignature,
    }
}
