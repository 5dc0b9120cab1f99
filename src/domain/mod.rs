//! Domain services: validate input, check rules, build Mutations, read views.
//!
//! Domain code sees neither HTTP nor redb: it talks to the store through `Store::read` and
//! `Writer::submit`, and reports failures as `DomainError`, which `http::problem` maps to
//! status codes and stable error codes in one table.

pub mod api_keys;
pub mod apps;
pub mod assets;
pub mod audit;
pub mod chat;
pub mod connections;
pub mod docs;
pub mod inbox;
pub mod login;
pub mod operators;
pub mod orgs;
pub mod paging;
pub mod policy;
pub mod prompts;
pub mod rooms;
pub mod secrets;
pub mod services;
pub mod sessions;
pub mod sso;
pub mod tasks;
pub mod users;
pub mod webhooks;

use crate::store::StoreError;

/// One invalid input field, located by a JSON pointer into the request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub pointer: String,
    pub code: &'static str,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: &str, code: &'static str, detail: impl Into<String>) -> Self {
        Self { pointer: pointer.to_owned(), code, detail: detail.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("the request has invalid fields")]
    Invalid(Vec<FieldError>),
    #[error("version mismatch: the current version is {current}")]
    VersionConflict { current: u64 },
    #[error("{detail}")]
    Forbidden { detail: String },
    #[error("{detail}")]
    Unauthorized { code: &'static str, detail: String },
    /// A size or quota cap: the thing is too large to take (413).
    #[error("{detail}")]
    TooLarge { code: &'static str, detail: String },
    /// Storage the organization or the disk has left would be exceeded (507).
    #[error("{detail}")]
    NoRoom { code: &'static str, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError {
    pub fn invalid(pointer: &str, code: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(pointer, code, detail)])
    }
}

/// Checks collected field errors: Ok when there are none.
pub fn check(errors: Vec<FieldError>) -> Result<(), DomainError> {
    if errors.is_empty() { Ok(()) } else { Err(DomainError::Invalid(errors)) }
}
