//! `OrgScope`: the organization a piece of work is confined to.
//!
//! Tenancy is a type, not a habit. Store access for org data takes an `OrgScope`, and the only
//! ways to get one are from an authenticated principal (`auth`), from operator code that names
//! the organization it reaches into (`OrgScope::operator`), or the instance's own scope for
//! operator-level records. No function takes a bare org id from a request body.

use crate::ids::Id;

/// The organization that keys written or read under this scope must begin with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrgScope {
    org: Id,
}

impl OrgScope {
    /// The instance's own scope (the nil organization): operator keys, instance settings.
    pub const INSTANCE: Self = Self { org: Id::NIL };

    /// An operator reaching into one organization. Only call this with a checked operator
    /// principal in hand; the argument makes that visible at every call site.
    pub fn operator(org: Id, _operator: &crate::auth::Operator) -> Self {
        Self { org }
    }

    /// The organization of an authenticated user.
    pub fn member(principal: &crate::auth::Principal) -> Self {
        Self { org: principal.org }
    }

    /// The organization named inside a credential that is checked against that organization's
    /// own records (invitation, reset and refresh tokens): a forged organization id finds no
    /// matching record there, so it reaches nothing.
    pub(crate) fn from_credential(org: Id) -> Self {
        Self { org }
    }

    /// An organization found by its public slug at login, before anyone is authenticated; the
    /// login then proves the password against that organization's own records.
    pub(crate) fn for_login(org: Id) -> Self {
        Self { org }
    }

    pub fn org(&self) -> Id {
        self.org
    }
}
