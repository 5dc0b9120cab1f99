//! Token signing keys: Ed25519 (PASETO v4.public), created at first start, sealed in the vault,
//! rotated with `outpost keys rotate`.
//!
//! Rotation adds a new current key and retires the others; a retired key keeps verifying
//! until every token it signed has expired (its retirement time plus the access-token
//! lifetime). The public keys are published as PASERK at `GET /v1/auth/keys`, so other
//! services can verify tokens offline.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id as Pid};
use pasetors::version4::V4;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ids::Id;
use crate::store::tables::{SIGNING_KEYS, org_id_key};
use crate::store::writer::{MutationCtx, Writer};
use crate::store::{Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;
use crate::vault::{Vault, VaultError};

/// A signing key as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    pub id: Id,
    /// PASERK `k4.pid.…`: the key id in token footers.
    pub kid: String,
    /// PASERK `k4.public.…`.
    pub public: String,
    /// The secret key (PASERK `k4.secret.…`), sealed in the vault; base64.
    pub sealed_secret: String,
    pub created_at_ms: i64,
    pub retired_at_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("signing key {0} is damaged")]
    Damaged(String),
}

/// A public key that verifies tokens, and until when.
pub struct Verifier {
    pub key: AsymmetricPublicKey<V4>,
    pub record: SigningKeyRecord,
}

/// The keys in force: the one that signs, and every one that still verifies.
pub struct KeyRing {
    pub signing: Option<Signer>,
    pub verifiers: HashMap<String, Verifier>,
}

/// The key that signs new tokens.
pub struct Signer {
    pub kid: String,
    pub pid: Pid,
    pub secret: AsymmetricSecretKey<V4>,
}

/// The shared, swappable key ring.
#[derive(Clone)]
pub struct Keys {
    ring: Arc<RwLock<Arc<KeyRing>>>,
}

impl Keys {
    pub fn empty() -> Self {
        Self { ring: Arc::new(RwLock::new(Arc::new(KeyRing { signing: None, verifiers: HashMap::new() }))) }
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().map_or_else(|p| p.into_inner().clone(), |r| r.clone())
    }

    /// Loads every key from the store, opening the sealed ones with `vault` (which fails on a
    /// wrong master key).
    pub fn reload(&self, store: &Store, vault: &Vault) -> Result<(), KeyError> {
        let records = list(store)?;
        let mut verifiers = HashMap::new();
        let mut signing = None;
        for r in records {
            let sealed = STANDARD.decode(&r.sealed_secret).map_err(|_| KeyError::Damaged(r.kid.clone()))?;
            let secret_text = vault.open(&purpose(r.id), &sealed)?;
            let secret = std::str::from_utf8(&secret_text)
                .ok()
                .and_then(|s| AsymmetricSecretKey::<V4>::try_from(s).ok())
                .ok_or_else(|| KeyError::Damaged(r.kid.clone()))?;
            let public =
                AsymmetricPublicKey::<V4>::try_from(r.public.as_str()).map_err(|_| KeyError::Damaged(r.kid.clone()))?;
            if r.retired_at_ms.is_none() {
                // The newest unretired key signs (records come in creation order).
                signing = Some(Signer { kid: r.kid.clone(), pid: Pid::from(&public), secret });
            }
            verifiers.insert(r.kid.clone(), Verifier { key: public, record: r });
        }
        let ring = Arc::new(KeyRing { signing, verifiers });
        match self.ring.write() {
            Ok(mut g) => *g = ring,
            Err(p) => *p.into_inner() = ring,
        }
        Ok(())
    }
}

/// Every signing key record, oldest first.
pub fn list(store: &Store) -> Result<Vec<SigningKeyRecord>, StoreError> {
    let r = store.reader()?;
    let nil = Id::NIL;
    r.range(SIGNING_KEYS, nil.as_bytes(), &prefix_end(nil.as_bytes()), false, 10_000)?
        .iter()
        .map(|(_, v)| decode(SIGNING_KEYS, v))
        .collect()
}

fn purpose(id: Id) -> String {
    format!("signing_key:{id}")
}

/// Adds a new current signing key and retires the others. `actor` names who asked.
pub async fn rotate(writer: &Writer, vault: &Vault, actor: &str) -> Result<SigningKeyRecord, KeyError> {
    let id = Id::new();
    let pair = AsymmetricKeyPair::<V4>::generate().map_err(|_| KeyError::Damaged("new key".into()))?;
    let mut secret = String::new();
    let mut public = String::new();
    let mut kid = String::new();
    pair.secret.fmt(&mut secret).map_err(|_| KeyError::Damaged("new key".into()))?;
    pair.public.fmt(&mut public).map_err(|_| KeyError::Damaged("new key".into()))?;
    Pid::from(&pair.public).fmt(&mut kid).map_err(|_| KeyError::Damaged("new key".into()))?;
    let sealed_secret = STANDARD.encode(vault.seal(&purpose(id), secret.as_bytes()));
    let ctx = MutationCtx { scope: OrgScope::INSTANCE, actor: actor.to_owned(), request_id: None, client_addr: None };
    let record = writer
        .submit(ctx, move |tx| {
            let nil = Id::NIL;
            let now = tx.now_ms();
            let mut retired = Vec::new();
            for (k, v) in tx.range(SIGNING_KEYS, nil.as_bytes(), &prefix_end(nil.as_bytes()), 10_000)? {
                let mut old: SigningKeyRecord = decode(SIGNING_KEYS, &v)?;
                if old.retired_at_ms.is_none() {
                    old.retired_at_ms = Some(now);
                    retired.push(old.kid.clone());
                    tx.put(SIGNING_KEYS, &k, &encode(&old))?;
                }
            }
            let record = SigningKeyRecord {
                id,
                kid: kid.clone(),
                public: public.clone(),
                sealed_secret: sealed_secret.clone(),
                created_at_ms: now,
                retired_at_ms: None,
            };
            tx.put(SIGNING_KEYS, &org_id_key(nil, id), &encode(&record))?;
            tx.emit("instance", "signing_key.rotated", json!({ "kid": record.kid, "retired": retired }));
            tx.audit("signing_key.create", format!("signing_key:{}", record.kid), json!({ "retired": retired }));
            Ok::<_, StoreError>(record)
        })
        .await?;
    Ok(record)
}

/// Re-seals every signing key under the vault's current key (during a vault rotation).
pub async fn reseal_all(writer: &Writer, vault: Arc<Vault>, actor: &str) -> Result<usize, KeyError> {
    let ctx = MutationCtx { scope: OrgScope::INSTANCE, actor: actor.to_owned(), request_id: None, client_addr: None };
    let key_id = vault.key_id();
    let n = writer
        .submit(ctx, move |tx| {
            let nil = Id::NIL;
            let mut n = 0usize;
            for (k, v) in tx.range(SIGNING_KEYS, nil.as_bytes(), &prefix_end(nil.as_bytes()), 10_000)? {
                let mut rec: SigningKeyRecord = decode(SIGNING_KEYS, &v)?;
                let sealed = STANDARD.decode(&rec.sealed_secret).map_err(|_| KeyError::Damaged(rec.kid.clone()))?;
                let plain = vault.open(&purpose(rec.id), &sealed)?;
                rec.sealed_secret = STANDARD.encode(vault.seal(&purpose(rec.id), &plain));
                tx.put(SIGNING_KEYS, &k, &encode(&rec))?;
                n += 1;
            }
            tx.audit("vault.rotate", "vault", json!({ "key_id": key_id, "resealed": n }));
            Ok::<_, KeyError>(n)
        })
        .await?;
    Ok(n)
}
