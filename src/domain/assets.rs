//! Assets: the records of stored files. An asset names its bytes by digest (the blob store
//! holds them, once per organization); its record is committed only after the blob is durable.
//!
//! An asset belongs to the user who uploaded it; that user (and the organization's admins)
//! read and delete it, and whoever reads a place it was shared in (attached to a message or a
//! comment there) reads it too. Usage is counted per organization by distinct blob, so a file uploaded
//! twice costs its bytes once, and the quota is checked in the same commit that adds a blob.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::DomainError;
use super::paging::{Page, PageRequest, encode_cursor};
use crate::ids::Id;
use crate::store::tables::{
    ASSET_BLOBS, ASSET_USAGE, ASSETS, ROOM_ASSETS, USER_ASSETS, org_bytes_key, org_id_id_key, org_id_key,
};
use crate::store::writer::{MutationCtx, Tx, Writer};
use crate::store::{Reader, Store, StoreError, decode, encode, prefix_end};
use crate::tenancy::OrgScope;

/// Longest file name, in characters.
pub const NAME_CHARS_MAX: usize = 255;
/// Longest media type, in characters.
pub const TYPE_CHARS_MAX: usize = 127;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Asset {
    pub id: Id,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    /// SHA-256 of the bytes, hexadecimal: the blob's name and the download's strong ETag.
    pub sha256: String,
    pub created_by: Id,
    pub created_at_ms: i64,
    #[serde(default)]
    pub deleted_at_ms: Option<i64>,
    /// Where it was shared (attached to a message or comment there): whoever reads one of
    /// these places reads the file too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_in: Vec<SharedIn>,
}

/// A place a file was shared in.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SharedIn {
    Channel(Id),
    Task(Id),
    Room(Id),
    /// Someone's avatar: every member of the organization reads it.
    Avatar,
}

/// Places one file may be shared in at most.
pub const SHARED_IN_MAX: usize = 1000;

/// Shares the file `id` of `owner` in `place` (in the transaction of the message that carries
/// it): the file must be the owner's own and not deleted (else 422 at `pointer`).
pub fn share(
    tx: &mut Tx<'_, '_>,
    org: Id,
    owner: Id,
    id: Id,
    place: SharedIn,
    pointer: &str,
) -> Result<Asset, DomainError> {
    let key = org_id_key(org, id);
    let mut a: Asset = tx
        .get(ASSETS, &key)?
        .map(|v| decode(ASSETS, &v))
        .transpose()?
        .filter(|a: &Asset| a.deleted_at_ms.is_none() && a.created_by == owner)
        .ok_or_else(|| DomainError::invalid(pointer, "unknown_asset", "no file of yours has this id"))?;
    if !a.shared_in.contains(&place) {
        if a.shared_in.len() >= SHARED_IN_MAX {
            return Err(DomainError::invalid(
                pointer,
                "too_widely_shared",
                format!("a file is shared in {SHARED_IN_MAX} places at most"),
            ));
        }
        a.shared_in.push(place);
        tx.put(ASSETS, &key, &encode(&a))?;
    }
    Ok(a)
}

/// A blob the organization holds: its size and how many live assets name it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRecord {
    pub size: u64,
    pub refs: u64,
    /// When the last asset naming it was deleted (the collector's grace period starts there).
    #[serde(default)]
    pub unreferenced_at_ms: Option<i64>,
}

/// What an upload that reached its end turns into.
#[derive(Clone, Debug)]
pub struct NewAsset {
    pub id: Id,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub created_by: Id,
    /// The organization's storage quota in bytes.
    pub quota: u64,
}

/// A file name fit to store and to send back in `Content-Disposition`: 1–255 characters, not
/// only spaces, no control characters. It is a label: the bytes live under their digest, never
/// under this name.
pub fn check_name(name: &str) -> Result<(), DomainError> {
    let n = name.chars().count();
    if n == 0 || n > NAME_CHARS_MAX || name.trim().is_empty() {
        return Err(DomainError::invalid(
            "/name",
            "invalid_length",
            format!("1–{NAME_CHARS_MAX} characters, not only spaces"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(DomainError::invalid("/name", "invalid_name", "a file name without control characters"));
    }
    Ok(())
}

/// A media type, `type/subtype` without parameters, each side a letter or digit and then
/// token characters; lowercased.
pub fn check_type(t: &str) -> Result<String, DomainError> {
    let token = |s: &str| {
        s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match t.split_once('/') {
        Some((ty, sub)) if t.chars().count() <= TYPE_CHARS_MAX && token(ty) && token(sub) => Ok(t.to_ascii_lowercase()),
        _ => Err(DomainError::invalid("/content_type", "invalid_content_type", "a media type like image/png")),
    }
}

/// The stored bytes of `org`.
pub fn usage(r: &Reader, org: Id) -> Result<u64, StoreError> {
    Ok(r.get(ASSET_USAGE, org.as_bytes())?.map_or(0, |v| u64_of(&v)))
}

/// Every organization's stored file bytes (those that store any).
pub fn usage_all(r: &Reader) -> Result<Vec<(Id, u64)>, StoreError> {
    let mut out = Vec::new();
    r.for_each(ASSET_USAGE, |k, v| {
        if let Some(org) = Id::from_slice(k) {
            out.push((org, u64_of(v)));
        }
        Ok(true)
    })?;
    Ok(out)
}

fn u64_of(v: &[u8]) -> u64 {
    v.try_into().map_or(0, u64::from_be_bytes)
}

/// Commits the record of a durable blob as asset `new.id`. Committing the same id again (a
/// retry after a lost answer) returns the asset already stored.
pub async fn create(writer: &Writer, ctx: MutationCtx, new: NewAsset) -> Result<Asset, DomainError> {
    check_name(&new.name)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let key = org_id_key(org, new.id);
            if let Some(v) = tx.get(ASSETS, &key)? {
                return Ok(decode(ASSETS, &v)?);
            }
            let added = take_blob(tx, org, &new.sha256, new.size, new.quota)?;
            let asset = Asset {
                id: new.id,
                name: new.name.clone(),
                content_type: new.content_type.clone(),
                size: new.size,
                sha256: crate::ids::hex(&new.sha256),
                created_by: new.created_by,
                created_at_ms: tx.now_ms(),
                deleted_at_ms: None,
                shared_in: Vec::new(),
            };
            tx.put(ASSETS, &key, &encode(&asset))?;
            tx.put(USER_ASSETS, &org_id_id_key(org, asset.created_by, asset.id), &[])?;
            tx.emit(
                format!("user:{}", asset.created_by),
                "asset.created",
                json!({ "id": asset.id, "name": asset.name, "content_type": asset.content_type, "size": asset.size }),
            );
            tx.audit(
                "asset.create",
                format!("asset:{}", asset.id),
                json!({ "name": asset.name, "size": asset.size, "sha256": asset.sha256, "new_blob": added }),
            );
            Ok(asset)
        })
        .await
}

/// Counts one more reference to blob `sha` (adding it, and its bytes to the usage, if it is
/// new to the organization). Returns whether it was new.
fn take_blob(tx: &mut Tx<'_, '_>, org: Id, sha: &[u8; 32], size: u64, quota: u64) -> Result<bool, DomainError> {
    let key = org_bytes_key(org, sha);
    let mut rec: BlobRecord = tx
        .get(ASSET_BLOBS, &key)?
        .map(|v| decode(ASSET_BLOBS, &v))
        .transpose()?
        .unwrap_or(BlobRecord { size, refs: 0, unreferenced_at_ms: None });
    // Usage counts the blobs live assets name; one that lost its last asset and was not
    // collected yet counts again.
    let counted = rec.refs > 0;
    if !counted {
        let used = tx.get(ASSET_USAGE, org.as_bytes())?.map_or(0, |v| u64_of(&v));
        if used.saturating_add(size) > quota {
            return Err(quota_exceeded(quota, used));
        }
        tx.put(ASSET_USAGE, org.as_bytes(), &(used + size).to_be_bytes())?;
    }
    rec.refs += 1;
    rec.unreferenced_at_ms = None;
    tx.put(ASSET_BLOBS, &key, &encode(&rec))?;
    Ok(!counted)
}

/// 507 `storage_quota_exceeded`.
pub fn quota_exceeded(quota: u64, used: u64) -> DomainError {
    DomainError::NoRoom {
        code: "storage_quota_exceeded",
        detail: format!("the organization's files may take {quota} bytes and {used} are in use or reserved"),
    }
}

/// The stored asset `id`, whoever uploaded it (for an upload that finished, and for signed
/// URLs, which were checked when they were made).
pub fn find(r: &Reader, scope: OrgScope, id: Id) -> Result<Option<Asset>, StoreError> {
    r.get(ASSETS, &org_id_key(scope.org(), id))?.map(|v| decode::<Asset>(ASSETS, &v)).transpose()
}

/// The caller's own files, newest first.
pub async fn list(store: &Store, scope: OrgScope, caller: Id, page: PageRequest) -> Result<Page<Asset>, DomainError> {
    store
        .read(move |r| {
            let prefix = org_id_key(scope.org(), caller);
            // Newest first: a page goes on strictly before the last key the previous one gave.
            let end = page.end_in(&prefix);
            let rows = r.range(USER_ASSETS, &prefix, &end, true, page.limit + 1)?;
            let more = rows.len() > page.limit;
            let mut items = Vec::new();
            let mut last_key = None;
            for (k, _) in rows.into_iter().take(page.limit) {
                let id = k
                    .get(32..48)
                    .and_then(Id::from_slice)
                    .ok_or(StoreError::Corrupt { table: "user_assets".into(), detail: "short key".into() })?;
                if let Some(a) = find(r, scope, id)?.filter(|a| a.deleted_at_ms.is_none()) {
                    items.push(a);
                }
                last_key = Some(k);
            }
            let next_cursor = if more { last_key.map(|k| encode_cursor(&k)) } else { None };
            Ok(Page { items, next_cursor })
        })
        .await
}

/// Deletes an asset (the caller's own, or any with `manager`). The record is kept, marked
/// deleted; when no live asset names its blob any more, the blob's bytes leave the usage (the
/// blob itself is removed by the collector after its grace period).
pub async fn delete(writer: &Writer, ctx: MutationCtx, caller: Id, manager: bool, id: Id) -> Result<(), DomainError> {
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let key = org_id_key(org, id);
            let mut a: Asset = tx
                .get(ASSETS, &key)?
                .map(|v| decode(ASSETS, &v))
                .transpose()?
                .filter(|a: &Asset| a.deleted_at_ms.is_none() && (manager || a.created_by == caller))
                .ok_or(DomainError::NotFound { what: "asset" })?;
            a.deleted_at_ms = Some(tx.now_ms());
            tx.put(ASSETS, &key, &encode(&a))?;
            tx.delete(USER_ASSETS, &org_id_id_key(org, a.created_by, id))?;
            let sha = crate::blobs::Sha256::parse_hex(&a.sha256)
                .ok_or(StoreError::Corrupt { table: "assets".into(), detail: "digest".into() })?;
            let bkey = org_bytes_key(org, &sha.0);
            if let Some(v) = tx.get(ASSET_BLOBS, &bkey)? {
                let mut rec: BlobRecord = decode(ASSET_BLOBS, &v)?;
                rec.refs = rec.refs.saturating_sub(1);
                if rec.refs == 0 {
                    rec.unreferenced_at_ms = Some(tx.now_ms());
                    let used = tx.get(ASSET_USAGE, org.as_bytes())?.map_or(0, |v| u64_of(&v));
                    tx.put(ASSET_USAGE, org.as_bytes(), &used.saturating_sub(rec.size).to_be_bytes())?;
                }
                tx.put(ASSET_BLOBS, &bkey, &encode(&rec))?;
            }
            tx.emit(format!("user:{}", a.created_by), "asset.deleted", json!({ "id": id }));
            tx.audit("asset.delete", format!("asset:{id}"), json!({ "name": a.name }));
            Ok(())
        })
        .await
}

/// Blobs that no live asset has named for at least `grace_ms`: (org, digest), for the
/// collector.
pub fn collectable(r: &Reader, now_ms: i64, grace_ms: i64) -> Result<Vec<(Id, [u8; 32])>, StoreError> {
    let mut out = Vec::new();
    r.for_each(ASSET_BLOBS, |k, v| {
        let rec: BlobRecord = decode(ASSET_BLOBS, v)?;
        let due = rec.refs == 0 && rec.unreferenced_at_ms.is_some_and(|t| t + grace_ms <= now_ms);
        if let (true, Some(org), Ok(sha)) = (due, crate::store::key_org(k), <[u8; 32]>::try_from(&k[16..])) {
            out.push((org, sha));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Drops the record of blob `sha` of `org` if no live asset names it still; returns whether it
/// did (then its bytes may go). Bookkeeping: no event, no audit record (the deletion that
/// left it unnamed was audited).
pub async fn forget_blob(
    writer: &Writer,
    org: Id,
    sha: [u8; 32],
    now_ms: i64,
    grace_ms: i64,
) -> Result<bool, StoreError> {
    writer
        .maintain(move |tx| {
            let key = org_bytes_key(org, &sha);
            let Some(v) = tx.get(ASSET_BLOBS, &key)? else { return Ok(false) };
            let rec: BlobRecord = decode(ASSET_BLOBS, &v)?;
            if rec.refs > 0 || rec.unreferenced_at_ms.is_none_or(|t| t + grace_ms > now_ms) {
                return Ok(false);
            }
            tx.delete(ASSET_BLOBS, &key)?;
            Ok(true)
        })
        .await
}

/// Whether the organization holds a record of blob `sha`.
pub fn blob_named(r: &Reader, org: Id, sha: &[u8; 32]) -> Result<bool, StoreError> {
    Ok(r.get(ASSET_BLOBS, &org_bytes_key(org, sha))?.is_some())
}

/// Versions one named room file keeps at most.
pub const ROOM_VERSIONS_MAX: usize = 1000;
/// Named files one room lists at most.
pub const ROOM_ASSETS_MAX: usize = 500;

/// A room's named file (a scene's model, a texture) and every version of it, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomAsset {
    pub room: Id,
    pub name: String,
    pub versions: Vec<RoomAssetVersion>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomAssetVersion {
    pub version: u32,
    pub asset: Id,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub added_by: Id,
    pub added_at_ms: i64,
}

fn room_asset_key(org: Id, room: Id, name: &str) -> Vec<u8> {
    let mut k = org_id_key(org, room).to_vec();
    k.extend_from_slice(&crate::blobs::Sha256::of(name.as_bytes()).0);
    k
}

/// Makes the caller's file `asset` the newest version of the room's file `name` (the older
/// versions stay); whoever reads the room reads every version. The caller's room role was
/// checked by the caller.
pub async fn add_room_version(
    writer: &Writer,
    ctx: MutationCtx,
    owner: Id,
    room: Id,
    name: String,
    asset: Id,
) -> Result<RoomAsset, DomainError> {
    check_name(&name)?;
    let org = ctx.scope.org();
    writer
        .submit(ctx, move |tx| {
            let key = room_asset_key(org, room, &name);
            let mut ra: RoomAsset = if let Some(v) = tx.get(ROOM_ASSETS, &key)? {
                decode(ROOM_ASSETS, &v)?
            } else {
                let base = org_id_key(org, room);
                if tx.range(ROOM_ASSETS, &base, &prefix_end(&base), ROOM_ASSETS_MAX)?.len() >= ROOM_ASSETS_MAX {
                    return Err(DomainError::Conflict {
                        code: "too_many_room_assets",
                        detail: format!("a room has {ROOM_ASSETS_MAX} named files at most"),
                    });
                }
                RoomAsset { room, name: name.clone(), versions: Vec::new() }
            };
            if ra.versions.len() >= ROOM_VERSIONS_MAX {
                return Err(DomainError::Conflict {
                    code: "too_many_versions",
                    detail: format!("a room's file keeps {ROOM_VERSIONS_MAX} versions at most"),
                });
            }
            let a = share(tx, org, owner, asset, SharedIn::Room(room), "/asset_id")?;
            let version = ra.versions.last().map_or(1, |v| v.version + 1);
            ra.versions.push(RoomAssetVersion {
                version,
                asset: a.id,
                content_type: a.content_type.clone(),
                size: a.size,
                sha256: a.sha256.clone(),
                added_by: owner,
                added_at_ms: tx.now_ms(),
            });
            tx.put(ROOM_ASSETS, &key, &encode(&ra))?;
            let data = json!({ "room": room, "name": ra.name, "version": version, "asset": a.id });
            tx.emit(format!("room:{room}"), "room_asset.added", data.clone());
            tx.audit("room_asset.add", format!("room:{room}"), data);
            Ok(ra)
        })
        .await
}

/// The room's named files, each with its versions.
pub async fn room_assets(store: &Store, scope: OrgScope, room: Id) -> Result<Vec<RoomAsset>, DomainError> {
    store
        .read(move |r| {
            let base = org_id_key(scope.org(), room);
            let mut out: Vec<RoomAsset> = Vec::new();
            for (_, v) in r.range(ROOM_ASSETS, &base, &prefix_end(&base), false, ROOM_ASSETS_MAX)? {
                out.push(decode(ROOM_ASSETS, &v)?);
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
}
