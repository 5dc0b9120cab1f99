//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): a delivery carries
//! `webhook-id`, `webhook-timestamp` (seconds) and `webhook-signature`, a space-separated list
//! of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret in force, so that
//! while a secret is being replaced both sign and a receiver holding either one verifies.
//!
//! Secrets are written `whsec_<base64 of the key>`, the form receivers' libraries take.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The prefix of a written secret.
pub const PREFIX: &str = "whsec_";

/// Key bytes of a secret made here.
const KEY_BYTES: usize = 32;

/// A signing secret. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut key = vec![0u8; KEY_BYTES];
        crate::ids::fill_random(&mut key);
        Self(key)
    }

    /// A secret of these key bytes (as kept sealed in the vault).
    pub fn from_key(key: Vec<u8>) -> Self {
        Self(key)
    }

    /// Reads a written secret (`whsec_…`); keys of 24 to 64 bytes, as the standard allows.
    pub fn parse(written: &str) -> Result<Self, &'static str> {
        let b64 = written.strip_prefix(PREFIX).ok_or("a signing secret starts with whsec_")?;
        let key = STANDARD.decode(b64).map_err(|_| "a signing secret is whsec_ and base64")?;
        if !(24..=64).contains(&key.len()) {
            return Err("a signing secret's key is 24 to 64 bytes");
        }
        Ok(Self(key))
    }

    /// The secret written out, as shown once to the endpoint's owner.
    pub fn written(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// `v1,<signature>` of one delivery.
    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

/// The three headers of one delivery, signed with every secret in `secrets` (the current one,
/// and the one it replaces while their overlap lasts).
pub fn headers(secrets: &[&Secret], id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 3] {
    let signature = secrets.iter().map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ");
    [("webhook-id", id.to_owned()), ("webhook-timestamp", timestamp.to_string()), ("webhook-signature", signature)]
}

/// Whether `signature` (a header's value) holds a valid `v1` signature of the delivery by
/// `secret`, compared in constant time; the timestamp's freshness is the caller's to judge.
pub fn verify(secret: &Secret, id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.0);
    let message = [id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body].concat();
    signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|tag| ring::hmac::verify(&key, &message, &tag).is_ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_standards_own_example_signs_the_same() {
        // The example in the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let [_, _, (_, sig)] = headers(&[&secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body, &sig));
        assert!(!verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_331, body, &sig));
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let s = Secret::generate();
        assert_eq!(Secret::parse(&s.written()).unwrap(), s);
        assert_eq!(format!("{s:?}"), "Secret(…)");
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_%%%", "whsec_AAAA"] {
            assert!(Secret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn during_a_rotation_both_secrets_sign() {
        let (old, new) = (Secret::generate(), Secret::generate());
        let [_, _, (_, sig)] = headers(&[&new, &old], "msg_1", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(verify(&old, "msg_1", 1, b"{}", &sig) && verify(&new, "msg_1", 1, b"{}", &sig));
        assert!(!verify(&Secret::generate(), "msg_1", 1, b"{}", &sig));
    }
}
