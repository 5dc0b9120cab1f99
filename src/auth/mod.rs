//! Authentication: turning presented credentials into principals.
//!
//! For now the instance's operators, who authenticate with an operator API key as a bearer
//! token. An `Operator` value is proof that a key was checked; operator code needs one to make
//! an `OrgScope` for the organization it reaches into.

use crate::domain::operators::{self, KeyRefusal};
use crate::ids::Id;
use crate::store::{Store, StoreError};

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

/// Checks an operator key presented as a bearer token.
pub async fn operator(store: &Store, bearer: &str) -> Result<Operator, AuthError> {
    match operators::verify(store, bearer).await? {
        Ok(key) => Ok(Operator { key_id: key.id }),
        Err(KeyRefusal::Revoked) => Err(AuthError::Revoked),
        Err(KeyRefusal::Malformed | KeyRefusal::Unknown) => Err(AuthError::Invalid),
    }
}
