//! The policy: who may do what. Every operation names the `Permission` it needs; this module
//! alone decides which roles hold it.
//!
//! Organization roles are ordered (guest < member < admin < owner). Room roles are a second
//! axis decided here too: a check names the room it is about (a viewer in one room, a host in
//! another), and handlers ask this module, never comparing roles themselves.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Guest,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Guest, Role::Member, Role::Admin, Role::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read one's own profile, sessions and permissions; change one's own password.
    SelfManage,
    /// Read the organization's member directory.
    UsersRead,
    /// Invite users (as member or guest; admins and owners only by an owner).
    UsersInvite,
    /// Change roles, suspend, reactivate, delete users, revoke their sessions, reset passwords.
    UsersManage,
    /// Read and export the organization's audit records.
    AuditRead,
    /// See rooms (organization-wide ones, and private ones one takes part in) and join them.
    RoomsRead,
    /// Create rooms.
    RoomsCreate,
    /// Read and post in the channels one may see or belongs to.
    ChatUse,
    /// Create channels, public, private or direct.
    ChannelsCreate,
    /// Read the organization's tasks.
    TasksRead,
    /// Create, change and delete tasks.
    TasksWrite,
    /// Search what one may see.
    SearchUse,
    /// Download one's own files (and those shared with one).
    FilesRead,
    /// Upload files and delete one's own (guests too: a file is shared the way a message is).
    FilesWrite,
    /// Register webhook endpoints, see their deliveries, resend and recover messages.
    WebhooksManage,
    /// See the registered services and their health.
    ServicesRead,
    /// Register, change and remove services and their credentials.
    ServicesManage,
    /// Call services through the gateway (each service also names the roles that may).
    ServicesCall,
    /// Connect one's own accounts at the organization's OAuth providers, and see the providers.
    ConnectionsUse,
    /// Add and change OAuth providers; make, refresh and remove the organization's connections.
    ConnectionsManage,
    /// Add and change the organization's identity providers and its single sign-on policy.
    SsoManage,
    /// Register and change the organization's OAuth apps, and its policy for them.
    AppsManage,
    /// Write the organization's and its rooms' system-prompt templates, and anyone's own;
    /// render prompts for others.
    PromptsManage,
}

impl Permission {
    pub const ALL: [Permission; 23] = [
        Permission::SelfManage,
        Permission::UsersRead,
        Permission::UsersInvite,
        Permission::UsersManage,
        Permission::AuditRead,
        Permission::RoomsRead,
        Permission::RoomsCreate,
        Permission::ChatUse,
        Permission::ChannelsCreate,
        Permission::TasksRead,
        Permission::TasksWrite,
        Permission::SearchUse,
        Permission::FilesRead,
        Permission::FilesWrite,
        Permission::WebhooksManage,
        Permission::ServicesRead,
        Permission::ServicesManage,
        Permission::ServicesCall,
        Permission::ConnectionsUse,
        Permission::ConnectionsManage,
        Permission::SsoManage,
        Permission::AppsManage,
        Permission::PromptsManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SelfManage => "self.manage",
            Permission::UsersRead => "users.read",
            Permission::UsersInvite => "users.invite",
            Permission::UsersManage => "users.manage",
            Permission::AuditRead => "audit.read",
            Permission::RoomsRead => "rooms.read",
            Permission::RoomsCreate => "rooms.create",
            Permission::ChatUse => "chat.use",
            Permission::ChannelsCreate => "channels.create",
            Permission::TasksRead => "tasks.read",
            Permission::TasksWrite => "tasks.write",
            Permission::SearchUse => "search.use",
            Permission::FilesRead => "files.read",
            Permission::FilesWrite => "files.write",
            Permission::WebhooksManage => "webhooks.manage",
            Permission::ServicesRead => "services.read",
            Permission::ServicesManage => "services.manage",
            Permission::ServicesCall => "services.call",
            Permission::ConnectionsUse => "connections.use",
            Permission::ConnectionsManage => "connections.manage",
            Permission::SsoManage => "sso.manage",
            Permission::AppsManage => "apps.manage",
            Permission::PromptsManage => "prompts.manage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The lowest organization role that holds this permission.
    fn min_role(self) -> Role {
        match self {
            Permission::SelfManage
            | Permission::RoomsRead
            | Permission::ChatUse
            | Permission::TasksRead
            | Permission::SearchUse
            | Permission::FilesRead
            | Permission::FilesWrite
            | Permission::ServicesCall => Role::Guest,
            Permission::UsersRead
            | Permission::RoomsCreate
            | Permission::ChannelsCreate
            | Permission::TasksWrite
            | Permission::ServicesRead
            | Permission::ConnectionsUse => Role::Member,
            Permission::UsersInvite
            | Permission::UsersManage
            | Permission::AuditRead
            | Permission::WebhooksManage
            | Permission::ServicesManage
            | Permission::ConnectionsManage
            | Permission::SsoManage
            | Permission::AppsManage
            | Permission::PromptsManage => Role::Admin,
        }
    }
}

/// A role inside one room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomRole {
    Viewer,
    Member,
    Moderator,
    Host,
}

impl RoomRole {
    pub const ALL: [RoomRole; 4] = [RoomRole::Viewer, RoomRole::Member, RoomRole::Moderator, RoomRole::Host];

    pub fn as_str(self) -> &'static str {
        match self {
            RoomRole::Viewer => "viewer",
            RoomRole::Member => "member",
            RoomRole::Moderator => "moderator",
            RoomRole::Host => "host",
        }
    }
}

/// What someone does in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomAction {
    /// Leave, see the participants: anyone taking part.
    Participate,
    /// Invite others and remove participants of a lower role.
    Moderate,
    /// Edit the room, change roles, archive, restore, delete.
    Host,
}

impl RoomAction {
    /// The lowest room role that may do this.
    pub fn min_role(self) -> RoomRole {
        match self {
            RoomAction::Participate => RoomRole::Viewer,
            RoomAction::Moderate => RoomRole::Moderator,
            RoomAction::Host => RoomRole::Host,
        }
    }
}

/// Whether someone with room role `role` (`None`: not taking part) may do `action`.
pub fn room_allows(role: Option<RoomRole>, action: RoomAction) -> bool {
    role.is_some_and(|r| r >= action.min_role())
}

/// Whether `role` holds `permission` in its organization.
pub fn allows(role: Role, permission: Permission) -> bool {
    role >= permission.min_role()
}

/// Whether `actor` may give `target_role` to someone, or act on someone who has it: only an
/// owner makes or manages owners and admins.
pub fn may_assign(actor: Role, target_role: Role) -> bool {
    match target_role {
        Role::Owner | Role::Admin => actor == Role::Owner,
        Role::Member | Role::Guest => actor >= Role::Admin,
    }
}

/// Refuses (403) unless `actor` may manage a user who holds `target_role` (revoke their
/// sessions, change them): `may_assign` as a domain error.
pub fn require_may_manage(actor: Role, target_role: Role) -> Result<(), super::DomainError> {
    if may_assign(actor, target_role) {
        Ok(())
    } else {
        Err(super::DomainError::Forbidden { detail: format!("your role cannot manage a {}", target_role.as_str()) })
    }
}

/// Organization admins (and owners) moderate the channels they can see: archive them, remove
/// members, change others' messages.
pub fn moderates_channels(role: Role) -> bool {
    allows(role, Permission::UsersManage) && role >= Role::Admin
}

/// Every permission `role` holds.
pub fn permissions(role: Role) -> Vec<Permission> {
    Permission::ALL.into_iter().filter(|p| allows(role, *p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix() {
        assert!(allows(Role::Guest, Permission::SelfManage));
        assert!(!allows(Role::Guest, Permission::UsersRead));
        assert!(allows(Role::Member, Permission::UsersRead));
        assert!(!allows(Role::Member, Permission::UsersInvite));
        assert!(allows(Role::Admin, Permission::UsersManage));
        assert!(allows(Role::Owner, Permission::AuditRead));
        assert!(may_assign(Role::Owner, Role::Admin));
        assert!(!may_assign(Role::Admin, Role::Admin));
        assert!(may_assign(Role::Admin, Role::Member));
        assert!(!may_assign(Role::Member, Role::Guest));
    }
}
