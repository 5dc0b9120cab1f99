//! Authentication: turning presented credentials into principals.
//!
//! Three kinds of credential. The instance's operators present an operator API key as a bearer
//! token; an `Operator` value is proof that a key was checked, and operator code needs one to
//! make an `OrgScope` for the organization it reaches into. Users present a PASETO access
//! token (`tokens`), checked against the key ring (`keys`) and then against the store: the
//! session must stand, the user and the organization must be active. Apps and service accounts
//! present an API key, checked against its stored hash, expiry and owner. The result is a
//! `Principal`, which the transport turns into the ids and `OrgScope` the domain takes.
//!
//! This layer sits above the domain: it reads the domain's records (sessions, users, keys) to
//! decide, and the domain never sees a credential.
//!
//! Checked operator keys are remembered in a small bounded cache (by the SHA-256 of the
//! presented text, for `KEY_CACHE_TTL`), so a busy client does not cost a store read per
//! request. A user's standing (session, account, organization) is remembered until a row it was
//! read from is written (`Caches`): any revocation, suspension or role change takes
//! effect from the request after the one that made it, as without the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod keys;
pub mod password;
pub mod tokens;

use crate::domain::api_keys::{self, KeyCheck};
use crate::domain::login::{self, Standing};
use crate::domain::operators::{self, KeyRefusal};
use crate::domain::policy::{self, Permission, Role};
use crate::ids::Id;
use crate::store::stamped::Stamped;
use crate::store::{Store, StoreError};
use crate::tenancy::OrgScope;
use tokens::TokenError;

/// How long a checked key is trusted without looking again. Operator keys are created and never
/// revoked by any command; one that did revoke them would have to clear this cache too.
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
    Token(#[from] TokenError),
    #[error("the session has ended (logged out, revoked or replaced)")]
    SessionRevoked,
    #[error("the account is suspended or deleted")]
    UserInactive,
    #[error("the organization is suspended or deleted")]
    OrgInactive,
    #[error("the API key has expired")]
    KeyExpired,
    #[error("this needs the {0} permission")]
    Forbidden(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An authenticated user of an organization.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub org: Id,
    /// The user acting (for a service account key: the key's id).
    pub user: Id,
    pub role: Role,
    /// The login session (for an API key: the key's id).
    pub session: Id,
    /// Set when the caller presented an API key: its id and the permissions it is limited to.
    pub api_key: Option<(Id, Vec<Permission>)>,
    /// The user's account as read while checking the token (absent for API keys).
    pub account: Option<Arc<crate::domain::users::User>>,
    /// Set when the token was granted to an app: its id and the permissions granted.
    pub app: Option<(Id, Vec<Permission>)>,
}

impl Principal {
    /// The actor string of audit records and events.
    pub fn actor(&self) -> String {
        match &self.api_key {
            Some((id, _)) => format!("api_key:{id}"),
            None => format!("user:{}", self.user),
        }
    }

    /// Refuses unless the principal's role holds `permission` (and, for an API key or an app's
    /// token, the scopes include it).
    pub fn require(&self, permission: Permission) -> Result<(), AuthError> {
        let scoped = self.api_key.as_ref().is_none_or(|(_, scopes)| scopes.contains(&permission))
            && self.app.as_ref().is_none_or(|(_, scopes)| scopes.contains(&permission));
        if policy::allows(self.role, permission) && scoped {
            Ok(())
        } else {
            Err(AuthError::Forbidden(permission.as_str()))
        }
    }
}

// The scopes a principal may mint. They are `OrgScope`'s constructors, written here because
// only this module knows the principals; `tenancy` sits below the store and knows none.
impl OrgScope {
    /// An operator reaching into one organization. Only call this with a checked operator
    /// principal in hand; the argument makes that visible at every call site.
    pub fn operator(org: Id, _operator: &Operator) -> Self {
        Self::vouched(org)
    }

    /// The organization of an authenticated user.
    pub fn member(principal: &Principal) -> Self {
        Self::vouched(principal.org)
    }
}

/// What the per-request checks remember: verified tokens, and the standings they led to.
pub struct Caches {
    pub tokens: tokens::VerifiedCache,
    /// Standings that held, by (organization, user, session), each kept while the store's
    /// change counters of the rows it was read from stay where they were: a hit costs three
    /// counter loads and a lookup instead of three row reads and decodes. Refusals are read
    /// every time.
    standing: Stamped<(Id, Id, Id), Stood>,
}

impl Default for Caches {
    fn default() -> Self {
        Self { tokens: tokens::VerifiedCache::default(), standing: Stamped::new(STANDING_CACHE_LEN_MAX) }
    }
}

/// Most standings remembered; a full cache is emptied rather than grown.
pub const STANDING_CACHE_LEN_MAX: usize = 16_384;

/// Checks an access token and that its session, user and organization still stand.
pub async fn user(
    store: &Store,
    caches: &Caches,
    ring: &keys::KeyRing,
    bearer: &str,
    access_ttl: Duration,
) -> Result<Principal, AuthError> {
    let proof = prove(caches, ring, bearer, access_ttl)?;
    stand(store, caches, &proof).await
}

/// What checking a bearer credential proved, which a socket keeps for its re-checks instead of
/// the credential: an access token's claims (its signature and signing key were checked once;
/// what can change afterwards is whether it expired and whether its session, user and
/// organization still stand), or which API key it was with the digest of its secret (checked
/// against the key's record every time).
#[derive(Clone, Debug)]
pub enum Proof {
    Access(tokens::AccessClaims),
    ApiKey { org: Id, id: Id, digest: String },
}

impl Proof {
    /// When the credential expires (ms): an access token's expiry; API keys are checked against
    /// their record instead.
    pub fn expires_ms(&self) -> Option<i64> {
        match self {
            Proof::Access(claims) => Some(claims.exp_s * 1000),
            Proof::ApiKey { .. } => None,
        }
    }
}

/// Checks what a bearer credential says of itself (an access token's signature, signing key
/// and expiry; an API key's form), not yet whether its holder still stands ([`stand`]).
pub fn prove(caches: &Caches, ring: &keys::KeyRing, bearer: &str, access_ttl: Duration) -> Result<Proof, AuthError> {
    if bearer.starts_with(api_keys::PREFIX) {
        let (org, id, digest) = api_keys::parse(bearer).ok_or(AuthError::Invalid)?;
        return Ok(Proof::ApiKey { org, id, digest });
    }
    Ok(Proof::Access(caches.tokens.verify(ring, bearer, access_ttl)?))
}

/// The caller a proof stands for, as they stand now: an access token not yet expired whose
/// session, user and organization are still active; an API key whose record still takes it.
pub async fn stand(store: &Store, caches: &Caches, proof: &Proof) -> Result<Principal, AuthError> {
    let claims = match proof {
        Proof::ApiKey { org, id, digest } => return api_key(store, *org, *id, digest.clone()).await,
        Proof::Access(claims) => claims,
    };
    if claims.exp_s <= crate::ids::now_ms() / 1000 {
        return Err(TokenError::Expired.into());
    }
    let (org, user, session) = (claims.org, claims.user, claims.session);
    // The stamp before the read: a write landing between the two only makes the entry stale.
    let stamp = login::standing_stamp(store, org, user, session);
    let stood = match caches.standing.get(&(org, user, session), stamp) {
        Some(stood) => stood,
        None => match store.peek(|r| login::standing(r, org, user, session))? {
            Standing::Ok(account, app) => {
                let stood = Stood {
                    account: Arc::from(account),
                    app: app.map(|m| (m.app, m.scopes.iter().filter_map(|s| Permission::parse(s)).collect())),
                };
                caches.standing.put((org, user, session), stamp, stood.clone());
                stood
            }
            Standing::SessionRevoked => return Err(AuthError::SessionRevoked),
            Standing::UserInactive => return Err(AuthError::UserInactive),
            Standing::OrgInactive => return Err(AuthError::OrgInactive),
        },
    };
    Ok(Principal {
        org,
        user,
        role: stood.account.role,
        session,
        api_key: None,
        account: Some(stood.account),
        app: stood.app,
    })
}

/// A standing that held: the account as read, and the app the session was granted to.
#[derive(Clone)]
struct Stood {
    account: Arc<crate::domain::users::User>,
    app: Option<(Id, Vec<Permission>)>,
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

/// Checks an API key: the key must stand, its organization too, and a user key's user.
async fn api_key(store: &Store, org: Id, id: Id, digest: String) -> Result<Principal, AuthError> {
    let checked = store
        .read(move |r| {
            let org_ok = r
                .get(crate::store::tables::ORGS, org.as_bytes())?
                .map(|v| crate::store::decode::<crate::domain::orgs::Organization>(crate::store::tables::ORGS, &v))
                .transpose()?
                .is_some_and(|o| o.status == crate::domain::orgs::OrgStatus::Active);
            if !org_ok {
                return Ok::<_, StoreError>(None);
            }
            api_keys::check_key(r, org, id, &digest).map(Some)
        })
        .await?;
    match checked {
        None => Err(AuthError::OrgInactive),
        Some(KeyCheck::Valid { key, role }) => {
            let scopes = key.permissions();
            Ok(Principal {
                org,
                user: key.user.unwrap_or(key.id),
                role,
                session: key.id,
                api_key: Some((key.id, scopes)),
                account: None,
                app: None,
            })
        }
        Some(KeyCheck::Invalid) => Err(AuthError::Invalid),
        Some(KeyCheck::Revoked) => Err(AuthError::Revoked),
        Some(KeyCheck::Expired) => Err(AuthError::KeyExpired),
        Some(KeyCheck::OwnerInactive) => Err(AuthError::UserInactive),
    }
}
