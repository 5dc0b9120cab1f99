//! Users of an organization: invitations, accounts, roles, status, profiles.
//!
//! An invitation creates the user (status `invited`) and a one-time token; redeeming it sets
//! the username and password and activates the account. Deleting is soft: the user's content
//! stays, their logins and sessions end, and their email and username become free.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::paging::{self, Page, PageRequest};
use super::{DomainError, FieldError, check};
use crate::domain::policy::{self, Role};
use crate::ids::{self, Id};
use crate::store::tables::{ONE_TIME_TOKENS, USER_LOGINS, USERS, org_bytes_key, org_id_key};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Lookup, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

/// Longest display name, in characters.
pub const DISPLAY_NAME_CHARS_MAX: usize = 100;
/// Longest email address, in characters.
pub const EMAIL_CHARS_MAX: usize = 254;
/// Longest avatar, time zone or locale, in characters.
pub const PROFILE_FIELD_CHARS_MAX: usize = 200;

pub const INVITE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
pub const RESET_TTL_MS: i64 = 24 * 3600 * 1000;
pub const PREFERENCES_BYTES_MAX: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Invited,
    Active,
    Suspended,
    Deleted,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Invited => "invited",
            UserStatus::Active => "active",
            UserStatus::Suspended => "suspended",
            UserStatus::Deleted => "deleted",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub avatar: Option<String>,
    pub time_zone: Option<String>,
    pub locale: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Id,
    pub email: String,
    pub username: Option<String>,
    pub display_name: String,
    pub role: Role,
    pub status: UserStatus,
    pub password_hash: Option<String>,
    pub profile: Profile,
    pub preferences: serde_json::Map<String, serde_json::Value>,
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A one-time token's record (the secret itself is never stored).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OneTimeToken {
    pub kind: TokenKind,
    pub user: Id,
    pub expires_at_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Invite,
    PasswordReset,
}

/// A credential that names its organization: `<prefix>_<org>_<secret>`.
pub struct OrgToken {
    pub org: Id,
    pub secret_sha256: [u8; 32],
}

/// Makes a new token text for `org` with `prefix`, and its stored digest.
pub fn new_org_token(prefix: &str, org: Id) -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    ids::fill_random(&mut secret);
    let text = URL_SAFE_NO_PAD.encode(secret);
    (format!("{prefix}_{}_{text}", org.0.simple()), sha256(text.as_bytes()))
}

/// Parses a token made by `new_org_token` with `prefix`.
pub fn parse_org_token(prefix: &str, token: &str) -> Option<OrgToken> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('_')?;
    let (org, secret) = rest.split_once('_')?;
    let org = Id(uuid::Uuid::try_parse(org).ok()?);
    (secret.len() == 43).then(|| OrgToken { org, secret_sha256: sha256(secret.as_bytes()) })
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

pub(super) fn login_key(org: Id, kind: char, value: &str) -> Vec<u8> {
    org_bytes_key(org, format!("{kind}:{}", value.to_lowercase()).as_bytes())
}

/// Input of an invitation.
pub struct NewInvite {
    pub email: String,
    pub role: Role,
    pub display_name: Option<String>,
}

/// Invites a user; returns the user and the invitation token (shown once). `inviter_role` is
/// `None` for an operator, who may invite any role.
pub async fn invite(
    writer: &Writer,
    ctx: MutationCtx,
    inviter_role: Option<Role>,
    new: NewInvite,
) -> Result<(User, String), DomainError> {
    let mut errors = Vec::new();
    validate_email(&new.email, &mut errors);
    if let Some(n) = &new.display_name {
        validate_display_name(n, &mut errors);
    }
    check(errors)?;
    if let Some(r) = inviter_role {
        if !policy::may_assign(r, new.role) {
            return Err(DomainError::Forbidden { detail: format!("your role cannot invite a {}", new.role.as_str()) });
        }
    }
    let org = ctx.scope.org();
    let (token, digest) = new_org_token("inv", org);
    let id = Id::new();
    let user = writer
        .submit(ctx, move |tx| {
            let email_key = login_key(org, 'e', &new.email);
            if tx.get(USER_LOGINS, &email_key)?.is_some() {
                return Err(DomainError::Conflict {
                    code: "email_taken",
                    detail: "a user with this email exists".into(),
                });
            }
            let now = tx.now_ms();
            let user = User {
                id,
                email: new.email.trim().to_owned(),
                username: None,
                display_name: new
                    .display_name
                    .clone()
                    .unwrap_or_else(|| new.email.split('@').next().unwrap_or("").to_owned()),
                role: new.role,
                status: UserStatus::Invited,
                password_hash: None,
                profile: Profile::default(),
                preferences: serde_json::Map::new(),
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
            };
            tx.put(USERS, &org_id_key(org, id), &encode(&user))?;
            tx.put(USER_LOGINS, &email_key, id.as_bytes())?;
            let ott = OneTimeToken { kind: TokenKind::Invite, user: id, expires_at_ms: now + INVITE_TTL_MS };
            tx.put(ONE_TIME_TOKENS, &org_bytes_key(org, &digest), &encode(&ott))?;
            tx.emit("org", "user.invited", json!({ "id": id, "role": user.role }));
            tx.emit(format!("user:{id}"), "invitation", json!({ "role": user.role }));
            tx.audit("user.invite", format!("user:{id}"), json!({ "email": user.email, "role": user.role }));
            Ok(user)
        })
        .await?;
    Ok((user, token))
}

/// Redeems an invitation: sets username and password, activates the account.
pub async fn accept_invite(
    writer: &Writer,
    token: &str,
    username: String,
    password_hash: String,
    display_name: Option<String>,
    request_id: Option<String>,
    client_addr: Option<String>,
) -> Result<User, DomainError> {
    let mut errors = Vec::new();
    validate_username(&username, &mut errors);
    if let Some(n) = &display_name {
        validate_display_name(n, &mut errors);
    }
    check(errors)?;
    let invalid = || DomainError::Unauthorized {
        code: "invalid_token",
        detail: "the invitation is not valid (used, expired or unknown)".into(),
    };
    let t = parse_org_token("inv", token).ok_or_else(invalid)?;
    let org = t.org;
    let ctx = MutationCtx { scope: OrgScope::from_credential(org), actor: "invitee".into(), request_id, client_addr };
    writer
        .submit(ctx, move |tx| {
            let key = org_bytes_key(org, &t.secret_sha256);
            let ott: OneTimeToken =
                tx.get(ONE_TIME_TOKENS, &key)?.map(|v| decode(ONE_TIME_TOKENS, &v)).transpose()?.ok_or_else(invalid)?;
            if ott.kind != TokenKind::Invite || ott.expires_at_ms < tx.now_ms() {
                return Err(invalid());
            }
            let mut user = load(tx, org, ott.user)?.filter(|u| u.status == UserStatus::Invited).ok_or_else(invalid)?;
            let name_key = login_key(org, 'u', &username);
            if tx.get(USER_LOGINS, &name_key)?.is_some() {
                return Err(DomainError::invalid("/username", "username_taken", "this username is taken"));
            }
            tx.delete(ONE_TIME_TOKENS, &key)?;
            tx.put(USER_LOGINS, &name_key, user.id.as_bytes())?;
            user.username = Some(username.clone());
            if let Some(n) = &display_name {
                user.display_name.clone_from(n);
            }
            user.password_hash = Some(password_hash.clone());
            user.status = UserStatus::Active;
            user.version += 1;
            user.updated_at_ms = tx.now_ms();
            tx.put(USERS, &org_id_key(org, user.id), &encode(&user))?;
            tx.emit("org", "user.joined", json!({ "id": user.id, "username": user.username }));
            tx.audit("user.accept_invite", format!("user:{}", user.id), json!({ "username": user.username }));
            Ok(user)
        })
        .await
}

/// Whether `user` exists in `org` and is active.
pub(crate) fn active(r: &impl Lookup, org: Id, user: Id) -> Result<bool, StoreError> {
    Ok(r.record::<User>(USERS, &org_id_key(org, user))?.is_some_and(|u| u.status == UserStatus::Active))
}

pub(crate) fn load(tx: &Tx<'_, '_>, org: Id, user: Id) -> Result<Option<User>, DomainError> {
    Ok(tx.get(USERS, &org_id_key(org, user))?.map(|v| decode(USERS, &v)).transpose()?)
}

/// One user of `scope`'s org (deleted users are not found).
pub async fn get(store: &Store, scope: OrgScope, id: Id) -> Result<User, DomainError> {
    store
        .read(move |r| {
            r.get(USERS, &org_id_key(scope.org(), id))?
                .map(|v| decode::<User>(USERS, &v))
                .transpose()?
                .filter(|u| u.status != UserStatus::Deleted)
                .ok_or(DomainError::NotFound { what: "user" })
        })
        .await
}

/// Filters of the user list.
#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    pub status: Option<UserStatus>,
    pub role: Option<Role>,
    /// Case-insensitive substring of email, username or display name.
    pub text: Option<String>,
}

pub async fn list(
    store: &Store,
    scope: OrgScope,
    page: PageRequest,
    filter: UserFilter,
) -> Result<Page<User>, DomainError> {
    store
        .read(move |r| {
            let org = scope.org();
            let start = page.start_in(org.as_bytes());
            let rows = r.range(USERS, &start, &prefix_end(org.as_bytes()), false, paging::SCAN_MAX)?;
            let text = filter.text.as_ref().map(|t| t.to_lowercase());
            let mut items = Vec::new();
            let mut last = None;
            for (k, v) in &rows {
                last = Some(k.clone());
                let u: User = decode(USERS, v)?;
                let status_ok = filter.status.map_or(u.status != UserStatus::Deleted, |s| u.status == s);
                let role_ok = filter.role.is_none_or(|r| u.role == r);
                let text_ok = text.as_ref().is_none_or(|t| {
                    u.email.to_lowercase().contains(t)
                        || u.display_name.to_lowercase().contains(t)
                        || u.username.as_ref().is_some_and(|n| n.to_lowercase().contains(t))
                });
                if status_ok && role_ok && text_ok {
                    items.push(u);
                    if items.len() == page.limit {
                        break;
                    }
                }
            }
            let more = rows.len() == paging::SCAN_MAX || items.len() == page.limit;
            Ok(Page { items, next_cursor: if more { last.map(|k| paging::encode_cursor(&k)) } else { None } })
        })
        .await
}

/// Administrative changes to another user.
#[derive(Clone, Copy, Debug)]
pub enum AdminChange {
    Role(Role),
    Suspend,
    Reactivate,
    Delete,
}

/// Applies `change` to user `id`, as someone with role `actor_role` (never to oneself).
pub async fn administer(
    writer: &Writer,
    ctx: MutationCtx,
    actor: Id,
    actor_role: Role,
    id: Id,
    change: AdminChange,
) -> Result<User, DomainError> {
    if actor == id {
        return Err(DomainError::Forbidden { detail: "you cannot change your own role or status".into() });
    }
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut user = load(tx, org, id)?
                .filter(|u| u.status != UserStatus::Deleted)
                .ok_or(DomainError::NotFound { what: "user" })?;
            if !policy::may_assign(actor_role, user.role) {
                return Err(DomainError::Forbidden {
                    detail: format!("your role cannot manage a {}", user.role.as_str()),
                });
            }
            let (kind, action, details) = match change {
                AdminChange::Role(role) => {
                    if !policy::may_assign(actor_role, role) {
                        return Err(DomainError::Forbidden {
                            detail: format!("your role cannot make someone {}", role.as_str()),
                        });
                    }
                    let from = user.role;
                    user.role = role;
                    ("user.role_changed", "user.change_role", json!({ "from": from, "to": role }))
                }
                AdminChange::Suspend => {
                    user.status = UserStatus::Suspended;
                    ("user.suspended", "user.suspend", json!({}))
                }
                AdminChange::Reactivate => {
                    if user.status != UserStatus::Suspended {
                        return Err(DomainError::Conflict {
                            code: "not_suspended",
                            detail: "the user is not suspended".into(),
                        });
                    }
                    user.status = UserStatus::Active;
                    ("user.reactivated", "user.reactivate", json!({}))
                }
                AdminChange::Delete => {
                    user.status = UserStatus::Deleted;
                    tx.delete(USER_LOGINS, &login_key(org, 'e', &user.email))?;
                    if let Some(n) = &user.username {
                        tx.delete(USER_LOGINS, &login_key(org, 'u', n))?;
                    }
                    user.password_hash = None;
                    ("user.deleted", "user.delete", json!({}))
                }
            };
            if matches!(change, AdminChange::Suspend | AdminChange::Delete) {
                super::sessions::revoke_all_in(tx, org, id)?;
            }
            user.version += 1;
            user.updated_at_ms = tx.now_ms();
            tx.put(USERS, &org_id_key(org, id), &encode(&user))?;
            tx.emit("org", kind, json!({ "id": id, "role": user.role, "status": user.status }));
            tx.audit(action, format!("user:{id}"), details);
            Ok(user)
        })
        .await
}

/// A user's changes to their own profile; absent fields stay.
#[derive(Clone, Debug, Default)]
pub struct ProfilePatch {
    pub display_name: Option<String>,
    pub avatar: Option<String>,
    pub time_zone: Option<String>,
    pub locale: Option<String>,
    pub preferences: Option<serde_json::Map<String, serde_json::Value>>,
    pub expected_version: Option<u64>,
}

pub async fn update_profile(
    writer: &Writer,
    ctx: MutationCtx,
    id: Id,
    patch: ProfilePatch,
) -> Result<User, DomainError> {
    let mut errors = Vec::new();
    if let Some(n) = &patch.display_name {
        validate_display_name(n, &mut errors);
    }
    for (ptr, v) in [("/avatar", &patch.avatar), ("/time_zone", &patch.time_zone), ("/locale", &patch.locale)] {
        if v.as_ref().is_some_and(|v| v.chars().count() > PROFILE_FIELD_CHARS_MAX) {
            errors.push(FieldError::new(ptr, "too_long", format!("at most {PROFILE_FIELD_CHARS_MAX} characters")));
        }
    }
    if patch
        .preferences
        .as_ref()
        .is_some_and(|p| serde_json::to_vec(p).map_or(usize::MAX, |v| v.len()) > PREFERENCES_BYTES_MAX)
    {
        errors.push(FieldError::new(
            "/preferences",
            "too_large",
            format!("at most {PREFERENCES_BYTES_MAX} bytes of JSON"),
        ));
    }
    check(errors)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut user = load(tx, org, id)?.ok_or(DomainError::NotFound { what: "user" })?;
            paging::check_version(patch.expected_version, user.version)?;
            if let Some(n) = &patch.display_name {
                user.display_name.clone_from(n);
            }
            if patch.avatar.is_some() {
                // An avatar that names a file: the user's own image, which every member of the
                // organization may then read.
                if let Some(file) = patch.avatar.as_deref().and_then(|a| a.parse::<Id>().ok()) {
                    let a = crate::domain::assets::share(
                        tx,
                        org,
                        id,
                        file,
                        crate::domain::assets::SharedIn::Avatar,
                        "/avatar",
                    )?;
                    if !a.content_type.starts_with("image/") {
                        return Err(DomainError::invalid("/avatar", "not_an_image", "an avatar is an image file"));
                    }
                }
                user.profile.avatar.clone_from(&patch.avatar);
            }
            if patch.time_zone.is_some() {
                user.profile.time_zone.clone_from(&patch.time_zone);
            }
            if patch.locale.is_some() {
                user.profile.locale.clone_from(&patch.locale);
            }
            if let Some(p) = &patch.preferences {
                user.preferences.clone_from(p);
            }
            user.version += 1;
            user.updated_at_ms = tx.now_ms();
            tx.put(USERS, &org_id_key(org, id), &encode(&user))?;
            tx.emit(format!("user:{id}"), "user.profile_updated", json!({ "id": id, "version": user.version }));
            tx.audit("user.update_profile", format!("user:{id}"), json!({ "version": user.version }));
            Ok(user)
        })
        .await
}

/// Sets a new password hash for `id` and ends all of the user's sessions but `keep`.
pub async fn set_password(
    writer: &Writer,
    ctx: MutationCtx,
    id: Id,
    password_hash: String,
    keep: Option<Id>,
) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let mut user = load(tx, org, id)?
                .filter(|u| u.status == UserStatus::Active)
                .ok_or(DomainError::NotFound { what: "user" })?;
            user.password_hash = Some(password_hash.clone());
            user.version += 1;
            user.updated_at_ms = tx.now_ms();
            tx.put(USERS, &org_id_key(org, id), &encode(&user))?;
            let ended = super::sessions::revoke_all_except(tx, org, id, keep)?;
            tx.audit("user.change_password", format!("user:{id}"), json!({ "sessions_ended": ended }));
            Ok(())
        })
        .await
}

/// Issues a password reset token for `id` (an admin hands it over; an offline box may have no
/// mail).
pub async fn issue_reset(writer: &Writer, ctx: MutationCtx, actor_role: Role, id: Id) -> Result<String, DomainError> {
    let org = ctx.scope.org();
    let (token, digest) = new_org_token("pwr", org);
    writer
        .submit(ctx, move |tx| {
            let user = load(tx, org, id)?
                .filter(|u| u.status == UserStatus::Active)
                .ok_or(DomainError::NotFound { what: "user" })?;
            if !policy::may_assign(actor_role, user.role) {
                return Err(DomainError::Forbidden {
                    detail: format!("your role cannot manage a {}", user.role.as_str()),
                });
            }
            let ott =
                OneTimeToken { kind: TokenKind::PasswordReset, user: id, expires_at_ms: tx.now_ms() + RESET_TTL_MS };
            tx.put(ONE_TIME_TOKENS, &org_bytes_key(org, &digest), &encode(&ott))?;
            tx.audit("user.issue_password_reset", format!("user:{id}"), json!({}));
            Ok(())
        })
        .await?;
    Ok(token)
}

/// Redeems a reset token: sets the password, ends every session of the user.
pub async fn redeem_reset(
    writer: &Writer,
    token: &str,
    password_hash: String,
    request_id: Option<String>,
    client_addr: Option<String>,
) -> Result<(), DomainError> {
    let invalid = || DomainError::Unauthorized {
        code: "invalid_token",
        detail: "the reset token is not valid (used, expired or unknown)".into(),
    };
    let t = parse_org_token("pwr", token).ok_or_else(invalid)?;
    let org = t.org;
    let ctx =
        MutationCtx { scope: OrgScope::from_credential(org), actor: "reset-token".into(), request_id, client_addr };
    writer
        .submit(ctx, move |tx| {
            let key = org_bytes_key(org, &t.secret_sha256);
            let ott: OneTimeToken =
                tx.get(ONE_TIME_TOKENS, &key)?.map(|v| decode(ONE_TIME_TOKENS, &v)).transpose()?.ok_or_else(invalid)?;
            if ott.kind != TokenKind::PasswordReset || ott.expires_at_ms < tx.now_ms() {
                return Err(invalid());
            }
            let mut user = load(tx, org, ott.user)?.filter(|u| u.status == UserStatus::Active).ok_or_else(invalid)?;
            tx.delete(ONE_TIME_TOKENS, &key)?;
            user.password_hash = Some(password_hash.clone());
            user.version += 1;
            user.updated_at_ms = tx.now_ms();
            tx.put(USERS, &org_id_key(org, user.id), &encode(&user))?;
            let ended = super::sessions::revoke_all_except(tx, org, user.id, None)?;
            tx.audit("user.reset_password", format!("user:{}", user.id), json!({ "sessions_ended": ended }));
            Ok(())
        })
        .await
}

fn validate_email(email: &str, errors: &mut Vec<FieldError>) {
    let e = email.trim();
    let ok = e.chars().count() <= EMAIL_CHARS_MAX
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        && !e.contains(char::is_whitespace);
    if !ok {
        errors.push(FieldError::new("/email", "invalid_email", "an email address like name@example.org"));
    }
}

fn validate_username(name: &str, errors: &mut Vec<FieldError>) {
    let ok = (2..=40).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !ok {
        errors.push(FieldError::new(
            "/username",
            "invalid_username",
            "2–40 of a-z, A-Z, 0-9, '-', '_', '.', starting with a letter or digit",
        ));
    }
}

fn validate_display_name(name: &str, errors: &mut Vec<FieldError>) {
    let n = name.trim().chars().count();
    if n == 0 || name.chars().count() > DISPLAY_NAME_CHARS_MAX {
        errors.push(FieldError::new(
            "/display_name",
            "invalid_length",
            format!("1–{DISPLAY_NAME_CHARS_MAX} characters"),
        ));
    }
}
