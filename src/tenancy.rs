//! `OrgScope`: the organization a piece of work is confined to.
//!
//! Tenancy is a type, not a habit. Store access for org data takes an `OrgScope`, and the only
//! ways to get one are from an authenticated principal (`OrgScope::member`, defined beside
//! `Principal` in `auth`), from operator code that names the organization it reaches into
//! (`OrgScope::operator`, beside `Operator`), from a credential checked against the
//! organization's own records, from a record the server wrote after such a check, or the
//! instance's own scope for operator-level records. This
//! module sits at the bottom of the layers (the store checks every key against a scope), so it
//! knows no principal type itself. No function takes a bare org id from a request body.

use crate::ids::Id;

/// The organization that keys written or read under this scope must begin with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrgScope {
    org: Id,
}

impl OrgScope {
    /// The instance's own scope (the nil organization): operator keys, instance settings.
    pub const INSTANCE: Self = Self { org: Id::NIL };

    /// A scope for an organization whose authority was checked by the caller. Only the
    /// principals' own constructors use it (`OrgScope::operator` and `OrgScope::member`, beside
    /// `Operator` and `Principal` in `auth`); the layer test holds every call site to that.
    pub(crate) fn vouched(org: Id) -> Self {
        Self { org }
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

    /// The organization named in a record this server itself wrote under its data directory
    /// after checking the caller's principal (an upload interrupted by a stop, finished at the
    /// next start on behalf of the user who began it).
    pub(crate) fn from_own_record(org: Id) -> Self {
        Self { org }
    }

    pub fn org(&self) -> Id {
        self.org
    }
}
