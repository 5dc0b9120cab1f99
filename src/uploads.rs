//! Uploads in progress (the tus 1.0 protocol's state): each upload is two files under
//! `data_dir/uploads/<org>/`, `<id>.json` (what was declared: length, name, type, owner, and
//! once complete the digest) and `<id>.part` (the bytes so far). The offset is the part file's
//! length, so an upload survives a restart or a SIGKILL and the client resumes from it.
//!
//! When the last byte arrives the part is hashed, adopted into the blob store (durable), and
//! only then is the asset's record committed (`domain::assets::create`, with the upload's id
//! as the asset's). Each step can be repeated: a crash anywhere on the way is finished at the
//! next start, and never leaves a record without its bytes.
//!
//! Space is reserved when an upload is created: its declared length counts against the
//! organization's quota and the disk's reserve until it completes, is terminated or expires.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::blobs::{self, Blobs, Sha256};
use crate::config::FilesConfig;
use crate::domain::DomainError;
use crate::domain::assets::{self, Asset, NewAsset};
use crate::ids::{self, Id};
use crate::store::Store;
use crate::store::writer::{MutationCtx, Writer};
use crate::tenancy::OrgScope;

/// What an upload declared when it was created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadInfo {
    pub id: Id,
    pub org: Id,
    pub user: Id,
    pub length: u64,
    pub name: String,
    pub content_type: String,
    /// The client's `Upload-Metadata` header, as sent (tus clients read it back on HEAD).
    pub metadata: String,
    pub created_at_ms: i64,
    /// When bytes last arrived; the upload expires `upload_expiry_s` after it.
    pub touched_at_ms: i64,
    /// Set once every byte is durable, before the part is adopted into the blob store.
    #[serde(default)]
    pub sha256: Option<String>,
}

impl UploadInfo {
    /// A new upload of `length` bytes by `user` of `org`, begun now.
    pub fn new(org: Id, user: Id, length: u64, name: String, content_type: String, metadata: String) -> Self {
        let now = ids::now_ms();
        Self {
            id: Id::new(),
            org,
            user,
            length,
            name,
            content_type,
            metadata,
            created_at_ms: now,
            touched_at_ms: now,
            sha256: None,
        }
    }
}

/// The limits an organization's uploads are held to: the instance's, lowered by the
/// organization's own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgLimits {
    pub file_bytes_max: u64,
    pub quota: u64,
    pub allowed_types: Vec<String>,
}

impl OrgLimits {
    /// `cfg`, lowered (never raised) by `files_max_bytes`, `files_quota_bytes` and narrowed by
    /// `files_allowed_types` in the organization's settings.
    pub fn of(cfg: &FilesConfig, settings: &serde_json::Map<String, serde_json::Value>) -> Self {
        let lower = |key: &str, v: u64| settings.get(key).and_then(serde_json::Value::as_u64).map_or(v, |s| s.min(v));
        let mut allowed_types = cfg.allowed_types.clone();
        if let Some(own) = settings.get("files_allowed_types").and_then(serde_json::Value::as_array) {
            let own: Vec<String> = own
                .iter()
                .filter_map(|v| v.as_str())
                .filter(|t| crate::config::media_type_pattern(t))
                .filter(|t| allowed_types.is_empty() || type_allowed(&allowed_types, t.trim_end_matches("/*")))
                .map(str::to_owned)
                .collect();
            if !own.is_empty() {
                allowed_types = own;
            }
        }
        Self {
            file_bytes_max: lower("files_max_bytes", cfg.file_bytes_max),
            quota: lower("files_quota_bytes", cfg.org_bytes_max),
            allowed_types,
        }
    }
}

/// Whether `content_type` (an essence, lowercased) matches one of `patterns` (empty: any).
pub fn type_allowed(patterns: &[String], content_type: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix("/*") {
            Some(ty) => content_type.split('/').next() == Some(ty),
            None => p == content_type,
        })
}

/// A file the server made, to store as an asset (`Uploads::import`).
pub struct Import<'a> {
    /// Whose file it becomes.
    pub owner: Id,
    pub file: &'a Path,
    pub name: &'a str,
    pub content_type: &'a str,
}

/// Why appending bytes stopped short of what the client sent.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// `Upload-Offset` is not where the upload is (409).
    #[error("the upload is at offset {current}")]
    OffsetMismatch { current: u64 },
    /// The bytes do not match `Upload-Checksum` (460); they were dropped.
    #[error("the bytes do not match Upload-Checksum; they were dropped")]
    ChecksumMismatch,
    /// More bytes than the declared length (413); those within it were kept.
    #[error("the upload is {length} bytes long; the request carried more")]
    TooLong { length: u64 },
    /// The upload was ended by another request for it, or by termination.
    #[error("the upload was taken over by another request")]
    Superseded,
    /// The client stopped sending for longer than allowed, or its connection failed; what
    /// arrived was kept.
    #[error("{0}")]
    Interrupted(String),
    #[error("disk: {0}")]
    Io(#[from] std::io::Error),
}

/// A checksum the client sent with a chunk (the tus checksum extension): `sha1` (which tus
/// requires servers to take) or `sha256`.
#[derive(Clone, Debug)]
pub enum ChunkChecksum {
    Sha1(Vec<u8>),
    Sha256(Vec<u8>),
}

impl ChunkChecksum {
    fn context(&self) -> ring::digest::Context {
        match self {
            Self::Sha1(_) => ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
            Self::Sha256(_) => ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    fn expected(&self) -> &[u8] {
        match self {
            Self::Sha1(d) | Self::Sha256(d) => d,
        }
    }
}

/// Where an append's bytes go: the part file (and the offset reached in it), the running digest
/// of the whole upload, and the digest of this request's bytes when the client sent a checksum.
///
/// Whole aligned blocks are written with `O_DIRECT`, from the request's buffer straight to the
/// disk: no copy into the page cache, no page cache filled with bytes nobody reads soon (a 10 GB
/// upload would otherwise push the store's pages out), and no dirty backlog for the closing
/// fsync. The ends that are not whole blocks go through the page cache. A file system that
/// refuses `O_DIRECT` (tmpfs before Linux 6.6, some FUSE) gets every byte through the cache.
struct Sink {
    file: std::fs::File,
    direct: Option<std::fs::File>,
    at: u64,
    whole: Option<ring::digest::Context>,
    chunk: Option<ring::digest::Context>,
}

/// The alignment `O_DIRECT` asks of offsets, lengths and memory (a page: enough for any
/// logical block size up to 4 KiB).
const ALIGN: usize = 4096;

impl Sink {
    fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        let direct_flag = i32::try_from(rustix::fs::OFlags::DIRECT.bits()).expect("a flag");
        let direct = std::fs::OpenOptions::new().write(true).custom_flags(direct_flag).open(path).ok();
        Ok(Sink { file, direct, at: 0, whole: None, chunk: None })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if let Some(h) = self.whole.as_mut() {
            h.update(bytes);
        }
        if let Some(h) = self.chunk.as_mut() {
            h.update(bytes);
        }
        let aligned = self.at % ALIGN as u64 == 0 && bytes.as_ptr().align_offset(ALIGN) == 0;
        let mut done = 0;
        if let (Some(direct), true) = (self.direct.as_ref(), aligned) {
            let blocks = bytes.len() / ALIGN * ALIGN;
            if blocks > 0 {
                match direct.write_all_at(&bytes[..blocks], self.at) {
                    Ok(()) => done = blocks,
                    // The file system or the device wants another alignment: the cache it is.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                        self.direct = None;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.file.write_all_at(&bytes[done..], self.at + done as u64)?;
        self.at += bytes.len() as u64;
        Ok(())
    }
}

/// A buffer of `CHUNK` bytes starting at an `ALIGN`ed address, for `O_DIRECT`.
struct Block {
    bytes: Vec<u8>,
    start: usize,
}

impl Block {
    fn new() -> Self {
        let bytes = vec![0u8; CHUNK + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN).min(ALIGN);
        Block { bytes, start }
    }

    fn space(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + CHUNK]
    }

    fn filled(&self, n: usize) -> &[u8] {
        &self.bytes[self.start..self.start + n]
    }
}

/// A write on the blocking pool: it gives the sink and the buffer back, with its outcome.
type Writing = tokio::task::JoinHandle<(Sink, Block, std::io::Result<()>)>;

/// Reads `body` into `buf` until it is full, the body ends (fewer bytes than the buffer holds),
/// the body fails or falls silent for `idle`, or a newer request for the upload wakes `stop`.
async fn fill(
    body: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
    idle: Duration,
    stop: &tokio::sync::Notify,
) -> (usize, Option<AppendError>) {
    let mut n = 0;
    while n < buf.len() {
        let read = tokio::select! {
            r = tokio::time::timeout(idle, body.read(&mut buf[n..])) => r,
            () = stop.notified() => return (n, Some(AppendError::Superseded)),
        };
        match read {
            Ok(Ok(0)) => break,
            Ok(Ok(got)) => n += got,
            Ok(Err(e)) => return (n, Some(AppendError::Interrupted(format!("reading the request failed: {e}")))),
            Err(_) => {
                return (n, Some(AppendError::Interrupted(format!("no bytes arrived for {} s", idle.as_secs()))));
            }
        }
    }
    (n, None)
}

/// One upload's live state, shared by the requests that touch it.
struct Slot {
    /// Serializes the requests appending to it; a newer request asks the older one to stop.
    busy: tokio::sync::Mutex<Progress>,
    /// Bumped by each request that comes for it; an older one sees it and stops.
    generation: AtomicU64,
    /// Wakes a request waiting for its body's next bytes when a newer one comes.
    stop: tokio::sync::Notify,
}

#[derive(Default)]
struct Progress {
    /// The running digest of bytes `0..offset`, while requests keep arriving in order.
    hasher: Option<(u64, ring::digest::Context)>,
}

type DigestLocks = HashMap<(Id, Sha256), Arc<tokio::sync::Mutex<()>>>;

struct Inner {
    root: PathBuf,
    blobs: Blobs,
    cfg: FilesConfig,
    slots: Mutex<HashMap<Id, Arc<Slot>>>,
    /// Per organization: declared bytes of uploads in progress, and how many.
    reserved: Mutex<HashMap<Id, (u64, usize)>>,
    /// Held while one digest of one organization is adopted and committed (or collected).
    adopting: Mutex<DigestLocks>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Thumbnails to drop with the bytes they were made of.
    thumbs: Option<crate::thumbs::Thumbs>,
}

#[derive(Clone)]
pub struct Uploads {
    inner: Arc<Inner>,
}

/// The bytes gathered from the request body before each write.
const CHUNK: usize = 1 << 20;

impl Uploads {
    /// Opens the upload area under `data_dir`, counting what is in progress there. Returns the
    /// uploads that had every byte but were not committed yet (a crash on the way), for
    /// `finish_pending`.
    pub fn open(
        data_dir: &Path,
        blobs: Blobs,
        cfg: FilesConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<Self> {
        let root = data_dir.join("uploads");
        std::fs::create_dir_all(&root)?;
        let me = Self {
            inner: Arc::new(Inner {
                root,
                blobs,
                cfg,
                slots: Mutex::new(HashMap::new()),
                reserved: Mutex::new(HashMap::new()),
                adopting: Mutex::new(HashMap::new()),
                metrics,
                thumbs: None,
            }),
        };
        for info in me.all_infos()? {
            me.reserve(info.org, info.length);
        }
        Ok(me)
    }

    /// Drops `thumbs`' thumbnails of the bytes the collector removes. Call before sharing.
    #[must_use]
    pub fn with_thumbs(mut self, thumbs: crate::thumbs::Thumbs) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.thumbs = Some(thumbs);
        }
        self
    }

    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    fn dir(&self, org: Id) -> PathBuf {
        self.inner.root.join(org.to_string())
    }

    fn info_path(&self, org: Id, id: Id) -> PathBuf {
        self.dir(org).join(format!("{id}.json"))
    }

    fn part_path(&self, org: Id, id: Id) -> PathBuf {
        self.dir(org).join(format!("{id}.part"))
    }

    fn all_infos(&self) -> std::io::Result<Vec<UploadInfo>> {
        let mut out = Vec::new();
        for org in std::fs::read_dir(&self.inner.root)? {
            let org = org?;
            if !org.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(org.path())? {
                let path = f?.path();
                if path.extension().is_some_and(|e| e == "json") {
                    if let Some(info) =
                        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<UploadInfo>(&b).ok())
                    {
                        out.push(info);
                    } else {
                        tracing::warn!(path = %path.display(), "unreadable upload record skipped");
                    }
                }
            }
        }
        Ok(out)
    }

    fn reserve(&self, org: Id, bytes: u64) {
        let mut r = self.inner.reserved.lock().expect("reserved");
        let e = r.entry(org).or_default();
        e.0 += bytes;
        e.1 += 1;
        self.inner.metrics.uploads_in_progress.inc();
    }

    fn release(&self, org: Id, bytes: u64) {
        let mut r = self.inner.reserved.lock().expect("reserved");
        if let Some(e) = r.get_mut(&org) {
            e.0 = e.0.saturating_sub(bytes);
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                r.remove(&org);
            }
            self.inner.metrics.uploads_in_progress.dec();
        }
    }

    /// Declared bytes and count of `org`'s uploads in progress.
    pub fn reserved(&self, org: Id) -> (u64, usize) {
        self.inner.reserved.lock().expect("reserved").get(&org).copied().unwrap_or_default()
    }

    /// Checks a new file of `length` bytes and `content_type` against `limits`, what the
    /// organization stores and reserves, and the disk's reserve.
    pub async fn admit(
        &self,
        store: &Store,
        org: Id,
        limits: &OrgLimits,
        length: u64,
        content_type: &str,
    ) -> Result<(), DomainError> {
        if length > limits.file_bytes_max {
            return Err(DomainError::TooLarge {
                code: "file_too_large",
                detail: format!("a file may have {} bytes at most", limits.file_bytes_max),
            });
        }
        if !type_allowed(&limits.allowed_types, content_type) {
            return Err(DomainError::invalid(
                "/content_type",
                "type_not_allowed",
                format!("{content_type} is not one of {}", limits.allowed_types.join(", ")),
            ));
        }
        let (reserved, count) = self.reserved(org);
        if count >= self.inner.cfg.uploads_per_org_max {
            return Err(DomainError::Conflict {
                code: "too_many_uploads",
                detail: format!("the organization has {count} uploads in progress; finish or terminate some first"),
            });
        }
        let used = store.read(move |r| assets::usage(r, org)).await?;
        if used.saturating_add(reserved).saturating_add(length) > limits.quota {
            return Err(assets::quota_exceeded(limits.quota, used + reserved));
        }
        self.room_for(length, "the server's disk is too full to take this file")
    }

    /// Starts an upload (already admitted): its record and an empty part, both durable.
    pub async fn create(&self, info: UploadInfo) -> Result<UploadInfo, DomainError> {
        let me = self.clone();
        let made = info.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = me.dir(info.org);
            if !dir.is_dir() {
                std::fs::create_dir_all(&dir)?;
                blobs::sync_dir(&me.inner.root)?;
            }
            std::fs::File::create(me.part_path(info.org, info.id))?.sync_all()?;
            blobs::write_atomic(&me.info_path(info.org, info.id), &serde_json::to_vec(&info).expect("json"))
        })
        .await
        .map_err(io_error)?
        .map_err(io_error)?;
        self.reserve(made.org, made.length);
        Ok(made)
    }

    /// Upload `id` of `org` started by `user`, and its offset; None when there is none (or it
    /// is someone else's, or it expired).
    pub async fn find(&self, org: Id, user: Id, id: Id) -> Option<(UploadInfo, u64)> {
        let info_path = self.info_path(org, id);
        let part_path = self.part_path(org, id);
        let expiry = self.expiry_ms();
        tokio::task::spawn_blocking(move || {
            let info: UploadInfo = serde_json::from_slice(&std::fs::read(&info_path).ok()?).ok()?;
            if info.user != user || info.org != org || info.touched_at_ms + expiry <= ids::now_ms() {
                return None;
            }
            let offset = match std::fs::metadata(&part_path) {
                Ok(m) => m.len(),
                // Adopted into the blob store already: every byte is there.
                Err(_) if info.sha256.is_some() => info.length,
                Err(_) => return None,
            };
            Some((info, offset))
        })
        .await
        .ok()
        .flatten()
    }

    fn expiry_ms(&self) -> i64 {
        (self.inner.cfg.upload_expiry_s as i64) * 1000
    }

    /// When `info` expires, in ms.
    pub fn expires_at_ms(&self, info: &UploadInfo) -> i64 {
        self.expiry_from(info.touched_at_ms)
    }

    /// When an upload that last received bytes at `touched_at_ms` expires.
    pub fn expiry_from(&self, touched_at_ms: i64) -> i64 {
        touched_at_ms + self.expiry_ms()
    }

    fn slot(&self, id: Id) -> Arc<Slot> {
        self.inner
            .slots
            .lock()
            .expect("slots")
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Slot {
                    busy: tokio::sync::Mutex::new(Progress::default()),
                    generation: AtomicU64::new(0),
                    stop: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    /// Whether the disk keeps its reserve after `length` more bytes. An upload is admitted
    /// with its whole length; each request for it asks again with none, since the disk may have
    /// filled since (from outside, or by others): its bytes then wait until there is room, as
    /// the store's writes do.
    fn room_for(&self, length: u64, detail: &str) -> Result<(), DomainError> {
        let free = crate::store::free_disk_bytes(&self.inner.root).unwrap_or(u64::MAX);
        if free.saturating_sub(length) < self.inner.cfg.disk_reserve_bytes {
            return Err(DomainError::NoRoom { code: "insufficient_storage", detail: detail.into() });
        }
        Ok(())
    }

    /// Appends the bytes of `body` to upload `info` at `offset` (which must be where it is),
    /// up to its length, durably; returns the new offset. A request already appending to it
    /// is asked to stop first (its client has most likely gone and come back).
    pub async fn append(
        &self,
        info: &UploadInfo,
        offset: u64,
        mut body: impl AsyncRead + Unpin + Send,
        checksum: Option<ChunkChecksum>,
    ) -> Result<u64, AppendError> {
        self.room_for(0, "the server's disk is too full to take more bytes now; resume once space is freed")?;
        let slot = self.slot(info.id);
        let generation = slot.generation.fetch_add(1, Ordering::SeqCst) + 1;
        // A request still appending (its client most likely gone) stops at once.
        slot.stop.notify_waiters();
        let Ok(mut progress) = tokio::time::timeout(Duration::from_secs(10), slot.busy.lock()).await else {
            return Err(AppendError::Interrupted("another request for this upload did not stop".into()));
        };
        let (mut sink, start) = self.open_part(info, offset).await?;
        // The digest of the whole file goes on from where the last request left it, if it did.
        let whole = match progress.hasher.take() {
            Some((at, ctx)) if at == start => Some(ctx),
            _ if start == 0 => Some(ring::digest::Context::new(&ring::digest::SHA256)),
            _ => None,
        };
        let before = whole.clone();
        sink.whole = whole;
        sink.chunk = checksum.as_ref().map(ChunkChecksum::context);
        let idle = Duration::from_secs(self.inner.cfg.upload_idle_timeout_s);
        // The request's bytes are gathered into one buffer while the one before is hashed and
        // written on the blocking pool: the network, the digest and the disk work side by side.
        let mut sink = Some(sink);
        let mut writing: Option<Writing> = None;
        let mut at = start;
        let mut buf = Block::new();
        let mut spare = Some(Block::new());
        let mut outcome: Result<(), AppendError> = Ok(());
        let mut ended = false;
        while !ended {
            if slot.generation.load(Ordering::SeqCst) != generation {
                outcome = Err(AppendError::Superseded);
                break;
            }
            // Fill the buffer (the body comes in small frames), so the disk and the digest see
            // large writes; whatever arrived before the body ended or failed is kept. The first
            // buffer of a request resuming mid-block ends on a block boundary, so the ones after
            // start on one.
            let want = CHUNK - (at % ALIGN as u64) as usize;
            let (n, failed) = fill(&mut body, &mut buf.space()[..want], idle, &slot.stop).await;
            if let Some(e) = failed {
                outcome = Err(e);
                ended = true;
            } else if n < want {
                ended = true;
            }
            // The write before must be done before this one starts (they share the file and
            // the digests).
            if let Some(w) = writing.take() {
                let (back, used, result) = w.await.map_err(std::io::Error::other)?;
                sink = Some(back);
                spare = Some(used);
                if let Err(e) = result {
                    outcome = Err(e.into());
                    break;
                }
            }
            let room = info.length - at;
            let take = (n as u64).min(room) as usize;
            if take > 0 {
                let mut s = sink.take().expect("the sink is back");
                let next = spare.take().unwrap_or_else(Block::new);
                let full = std::mem::replace(&mut buf, next);
                writing = Some(tokio::task::spawn_blocking(move || {
                    let result = s.write(full.filled(take));
                    (s, full, result)
                }));
                at += take as u64;
                self.inner.metrics.file_bytes_in.inc_by(take as u64);
            }
            if take < n {
                outcome = Err(AppendError::TooLong { length: info.length });
                break;
            }
        }
        if let Some(w) = writing.take() {
            let (back, _, result) = w.await.map_err(std::io::Error::other)?;
            sink = Some(back);
            if let Err(e) = result {
                if outcome.is_ok() {
                    outcome = Err(e.into());
                }
            }
        }
        let Sink { file, whole, chunk, .. } = sink.expect("the sink is back");
        // A failed write leaves the file's length, not `at`, as the offset to resume from.
        let written_ok = !matches!(outcome, Err(AppendError::Io(_)));
        let mismatch = match (&checksum, chunk) {
            (Some(want), Some(got)) if outcome.is_ok() => got.finish().as_ref() != want.expected(),
            _ => false,
        };
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if mismatch {
                file.set_len(start)?;
            }
            file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)??;
        if mismatch {
            progress.hasher = before.map(|c| (start, c));
            return Err(AppendError::ChecksumMismatch);
        }
        progress.hasher = if written_ok { whole.map(|c| (at, c)) } else { None };
        if at > start {
            self.touch(info).await;
        }
        outcome.map(|()| at)
    }

    /// Ends an upload whose declared length was only a bound (a form's file, whose size the
    /// request does not say) at `length`, where its bytes ended, named and typed as the form
    /// said at its end; the rest of its reservation is given back.
    pub async fn settle(
        &self,
        info: &UploadInfo,
        length: u64,
        name: String,
        content_type: String,
    ) -> Result<UploadInfo, DomainError> {
        debug_assert!(length <= info.length);
        let mut settled = info.clone();
        settled.length = length.min(info.length);
        settled.name = name;
        settled.content_type = content_type;
        let path = self.info_path(info.org, info.id);
        let bytes = serde_json::to_vec(&settled).expect("json");
        tokio::task::spawn_blocking(move || blobs::write_atomic(&path, &bytes))
            .await
            .map_err(io_error)?
            .map_err(io_error)?;
        if let Some(e) = self.inner.reserved.lock().expect("reserved").get_mut(&info.org) {
            e.0 = e.0.saturating_sub(info.length - settled.length);
        }
        Ok(settled)
    }

    /// The upload's part file, open for writing at its end, and its length, which must be
    /// `offset`.
    async fn open_part(&self, info: &UploadInfo, offset: u64) -> Result<(Sink, u64), AppendError> {
        let part_path = self.part_path(info.org, info.id);
        let opened =
            tokio::task::spawn_blocking(move || Sink::open(&part_path)).await.map_err(std::io::Error::other)?;
        let mut sink = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DomainError::NotFound { what: "upload" }.into());
            }
            Err(e) => return Err(e.into()),
        };
        let start = sink.file.metadata()?.len();
        if start != offset {
            return Err(AppendError::OffsetMismatch { current: start });
        }
        sink.at = start;
        Ok((sink, start))
    }

    /// Moves the upload's expiry on: bytes arrived.
    async fn touch(&self, info: &UploadInfo) {
        let mut info = info.clone();
        info.touched_at_ms = ids::now_ms();
        let path = self.info_path(info.org, info.id);
        let _ =
            tokio::task::spawn_blocking(move || blobs::write_atomic(&path, &serde_json::to_vec(&info).expect("json")))
                .await;
    }

    /// Turns a complete upload into its asset: digest, blob, record. Safe to repeat.
    pub async fn finish(
        &self,
        writer: &Writer,
        ctx: MutationCtx,
        quota: u64,
        info: &UploadInfo,
    ) -> Result<Asset, DomainError> {
        let org = info.org;
        let id = info.id;
        // 1. The digest, recorded before the part moves (so a crash after can still commit).
        let mut info = self.load(org, id).await.unwrap_or_else(|| info.clone());
        let sha = self.digest(&mut info).await?;
        // 2. The blob, then 3. the record, under this digest's lock (a collector or another
        // upload of the same bytes waits).
        let lock = self.adopting(org, sha);
        let _held = lock.lock().await;
        let part = self.part_path(org, id);
        if part.exists() {
            let blobs = self.inner.blobs.clone();
            tokio::task::spawn_blocking(move || blobs.adopt(org, &part, &sha))
                .await
                .map_err(io_error)?
                .map_err(io_error)?;
        }
        let new = NewAsset {
            id,
            name: info.name.clone(),
            content_type: info.content_type.clone(),
            size: info.length,
            sha256: sha.0,
            created_by: info.user,
            quota,
        };
        let asset = assets::create(writer, ctx, new).await?;
        // 4. The upload is done (whoever removes its record releases its reservation).
        if tokio::fs::remove_file(self.info_path(org, id)).await.is_ok() {
            self.forget(org, id, info.length);
        }
        Ok(asset)
    }

    /// The upload's digest: recorded already, or finished from the running one the appends
    /// kept, or read off the part; recorded (durably) before it is returned.
    async fn digest(&self, info: &mut UploadInfo) -> Result<Sha256, DomainError> {
        if let Some(s) = info.sha256.as_deref().and_then(Sha256::parse_hex) {
            return Ok(s);
        }
        let (org, id) = (info.org, info.id);
        let running = self.slot(id).busy.lock().await.hasher.take();
        let sha = match running {
            Some((at, ctx)) if at == info.length => Sha256::from_digest(ctx.finish()),
            _ => {
                let part = self.part_path(org, id);
                tokio::task::spawn_blocking(move || blobs::hash_file(&part))
                    .await
                    .map_err(io_error)?
                    .map_err(io_error)?
            }
        };
        info.sha256 = Some(sha.hex());
        let path = self.info_path(org, id);
        let bytes = serde_json::to_vec(&info).expect("json");
        tokio::task::spawn_blocking(move || blobs::write_atomic(&path, &bytes))
            .await
            .map_err(io_error)?
            .map_err(io_error)?;
        Ok(sha)
    }

    fn adopting(&self, org: Id, sha: Sha256) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.inner.adopting.lock().expect("adopting");
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry((org, sha)).or_default().clone()
    }

    async fn load(&self, org: Id, id: Id) -> Option<UploadInfo> {
        let bytes = tokio::fs::read(self.info_path(org, id)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Drops a finished or ended upload's live state and its reservation.
    fn forget(&self, org: Id, id: Id, length: u64) {
        self.inner.slots.lock().expect("slots").remove(&id);
        self.release(org, length);
    }

    /// Stores a file the server itself made (a call recording) as an asset of `owner`, without
    /// copying its bytes: the file is hard-linked as an upload's part and finished like one,
    /// so the blob and the original are the same bytes on disk. Admitted against `limits` like
    /// any upload.
    pub async fn import(
        &self,
        store: &Store,
        writer: &Writer,
        ctx: MutationCtx,
        what: Import<'_>,
        limits: &OrgLimits,
    ) -> Result<Asset, DomainError> {
        let Import { owner, file, name, content_type } = what;
        let org = ctx.scope.org();
        let length = tokio::fs::metadata(file).await.map_err(io_error)?.len();
        self.admit(store, org, limits, length, content_type).await?;
        let info = UploadInfo::new(org, owner, length, name.to_owned(), content_type.to_owned(), String::new());
        let (me, made, from) = (self.clone(), info.clone(), file.to_owned());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = me.dir(made.org);
            std::fs::create_dir_all(&dir)?;
            let part = me.part_path(made.org, made.id);
            if std::fs::hard_link(&from, &part).is_err() {
                // Another filesystem: a copy, made durable.
                std::fs::copy(&from, &part)?;
                std::fs::File::open(&part)?.sync_all()?;
            }
            blobs::write_atomic(&me.info_path(made.org, made.id), &serde_json::to_vec(&made).expect("json"))
        })
        .await
        .map_err(io_error)?
        .map_err(io_error)?;
        self.reserve(org, length);
        self.finish(writer, ctx, limits.quota, &info).await
    }

    /// Ends an upload in progress and removes its bytes (the tus termination extension).
    pub async fn terminate(&self, info: &UploadInfo) -> Result<(), DomainError> {
        let slot = self.slot(info.id);
        slot.generation.fetch_add(1, Ordering::SeqCst);
        slot.stop.notify_waiters();
        let held = slot.busy.lock().await;
        let removed = tokio::fs::remove_file(self.info_path(info.org, info.id)).await.is_ok();
        let _ = tokio::fs::remove_file(self.part_path(info.org, info.id)).await;
        drop(held);
        if removed {
            self.forget(info.org, info.id, info.length);
        }
        Ok(())
    }

    /// Uploads whose bytes were all durable when the server stopped, to be finished now.
    pub fn pending(&self) -> Vec<UploadInfo> {
        self.all_infos().unwrap_or_default().into_iter().filter(|i| i.sha256.is_some()).collect()
    }

    /// Removes uploads that received nothing for `upload_expiry_s`. Returns how many.
    pub async fn sweep(&self) -> usize {
        let now = ids::now_ms();
        let expiry = self.expiry_ms();
        let stale: Vec<UploadInfo> = self
            .all_infos()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.sha256.is_none() && i.touched_at_ms + expiry <= now)
            .collect();
        for info in &stale {
            let _ = self.terminate(info).await;
            tracing::info!(upload = %info.id, org = %info.org, "an unfinished upload expired and was removed");
        }
        stale.len()
    }

    /// Removes the bytes no record has named for `files.gc_grace_s`: blobs whose last asset was
    /// deleted that long ago, and blobs on disk that no record names at all (left by a commit
    /// that never happened) once they are that old. Each goes under its digest's lock, so an
    /// upload of the same bytes finishing meanwhile either keeps the blob or makes it anew.
    /// Returns how many blobs were removed.
    pub async fn collect(&self, store: &Store, writer: &Writer) -> Result<usize, DomainError> {
        let grace_ms = (self.inner.cfg.gc_grace_s as i64) * 1000;
        let now = ids::now_ms();
        let due = store.read(move |r| assets::collectable(r, now, grace_ms)).await?;
        let mut removed = 0;
        for (org, sha) in due {
            let sha = Sha256(sha);
            let lock = self.adopting(org, sha);
            let _held = lock.lock().await;
            if assets::forget_blob(writer, org, sha.0, now, grace_ms).await? {
                self.remove_blob(org, sha).await;
                removed += 1;
            }
        }
        // Bytes on disk no record names, older than the grace period, that no interrupted
        // upload is about to commit.
        let blobs = self.inner.blobs.clone();
        let on_disk = tokio::task::spawn_blocking(move || blobs.list()).await.map_err(io_error)?.map_err(io_error)?;
        let pending: std::collections::HashSet<(Id, String)> =
            self.pending().into_iter().filter_map(|i| i.sha256.map(|s| (i.org, s))).collect();
        for (org, sha, _) in on_disk {
            if pending.contains(&(org, sha.hex())) || !self.older_than(org, &sha, grace_ms) {
                continue;
            }
            let lock = self.adopting(org, sha);
            let _held = lock.lock().await;
            if !store.read(move |r| assets::blob_named(r, org, &sha.0)).await? {
                tracing::info!(org = %org, blob = %sha.hex(), "removing file bytes no record names");
                self.remove_blob(org, sha).await;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn older_than(&self, org: Id, sha: &Sha256, grace_ms: i64) -> bool {
        std::fs::metadata(self.inner.blobs.path(org, sha))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_millis() as i64 >= grace_ms)
    }

    async fn remove_blob(&self, org: Id, sha: Sha256) {
        let blobs = self.inner.blobs.clone();
        match tokio::task::spawn_blocking(move || blobs.remove(org, &sha)).await {
            Ok(Ok(())) => {
                self.inner.metrics.file_blobs_collected.inc();
                if let Some(t) = &self.inner.thumbs {
                    t.forget(org, &sha);
                }
            }
            Ok(Err(e)) => tracing::warn!(org = %org, blob = %sha.hex(), error = %e, "could not remove file bytes"),
            Err(e) => tracing::warn!(error = %e, "the collector's task failed"),
        }
    }

    /// Sets `/metrics`' bytes stored per organization from the store.
    async fn report_usage(&self, store: &Store) {
        if let Ok(all) = store.read(assets::usage_all).await {
            for (org, bytes) in all {
                let labels = crate::metrics::OrgLabels { org: org.to_string() };
                self.inner.metrics.file_bytes_stored.get_or_create(&labels).set(bytes as i64);
            }
        }
    }

    /// Finishes what a crash interrupted, then sweeps expired uploads every minute and collects
    /// unnamed bytes every `files.gc_interval_s` (until the server stops the task).
    pub async fn run(self, store: Store, writer: Writer) {
        for info in self.pending() {
            let ctx = MutationCtx::system(OrgScope::from_own_record(info.org));
            // Its length was admitted against the quota when it began.
            match self.finish(&writer, ctx, u64::MAX, &info).await {
                Ok(a) => tracing::info!(asset = %a.id, "an upload interrupted by a stop was finished"),
                Err(e) => tracing::warn!(upload = %info.id, error = %e, "an interrupted upload could not be finished"),
            }
        }
        self.report_usage(&store).await;
        let sweep_every = Duration::from_secs(60);
        let collect_every = Duration::from_secs(self.inner.cfg.gc_interval_s);
        let (mut swept, mut collected) = (std::time::Instant::now(), std::time::Instant::now());
        self.sweep().await;
        loop {
            tokio::time::sleep(sweep_every.min(collect_every)).await;
            if swept.elapsed() >= sweep_every {
                self.sweep().await;
                self.report_usage(&store).await;
                swept = std::time::Instant::now();
            }
            if collected.elapsed() >= collect_every {
                if let Err(e) = self.collect(&store, &writer).await {
                    tracing::warn!(error = %e, "collecting unnamed file bytes failed; trying again later");
                }
                collected = std::time::Instant::now();
            }
        }
    }
}

fn io_error(e: impl std::fmt::Display) -> DomainError {
    DomainError::Store(crate::store::StoreError::Storage(format!("files: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(org: Id, user: Id, touched_at_ms: i64) -> UploadInfo {
        UploadInfo {
            id: Id::new(),
            org,
            user,
            length: 100,
            name: "f".into(),
            content_type: "application/octet-stream".into(),
            metadata: String::new(),
            created_at_ms: touched_at_ms,
            touched_at_ms,
            sha256: None,
        }
    }

    /// Requests that start and end anywhere (mid-block, across buffers) leave exactly the bytes
    /// sent, whether they went to the disk directly or through the cache, and the running
    /// digest is theirs.
    #[tokio::test]
    async fn appends_at_any_offset_keep_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let uploads = Uploads::open(dir.path(), blobs, FilesConfig::default(), metrics).unwrap();
        let bytes: Vec<u8> = (0..3 * CHUNK + 5_000).map(|i| (i * 7 + i / 4099) as u8).collect();
        let (org, user) = (Id::new(), Id::new());
        let mut declared = info(org, user, ids::now_ms());
        declared.length = bytes.len() as u64;
        let up = uploads.create(declared).await.unwrap();
        let mut offset = 0;
        for piece in [777, CHUNK + 123, ALIGN - 900, CHUNK, ALIGN, 1] {
            let got = uploads.append(&up, offset, &bytes[offset as usize..][..piece], None).await.unwrap();
            assert_eq!(got, offset + piece as u64);
            offset = got;
        }
        let got = uploads.append(&up, offset, &bytes[offset as usize..], None).await.unwrap();
        assert_eq!(got, bytes.len() as u64);
        assert!(std::fs::read(uploads.part_path(org, up.id)).unwrap() == bytes, "the part holds the bytes sent");
        let mut stored = uploads.load(org, up.id).await.unwrap();
        let sha = uploads.digest(&mut stored).await.unwrap();
        assert_eq!(sha, Sha256::from_digest(ring::digest::digest(&ring::digest::SHA256, &bytes)));
    }

    #[tokio::test]
    async fn unfinished_uploads_expire_and_give_back_their_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FilesConfig { upload_expiry_s: 60, ..FilesConfig::default() };
        let open = || {
            let blobs = Blobs::open(dir.path()).unwrap();
            Uploads::open(dir.path(), blobs, cfg.clone(), Arc::new(crate::metrics::Metrics::new())).unwrap()
        };
        let uploads = open();
        let (org, user) = (Id::new(), Id::new());
        let stale = uploads.create(info(org, user, ids::now_ms() - 61_000)).await.unwrap();
        let fresh = uploads.create(info(org, user, ids::now_ms())).await.unwrap();
        assert_eq!(uploads.reserved(org), (200, 2));
        // An expired upload is not found even before the sweep removes it.
        assert!(uploads.find(org, user, stale.id).await.is_none());
        assert_eq!(uploads.find(org, user, fresh.id).await.map(|(_, o)| o), Some(0));
        // Someone else does not find it.
        assert!(uploads.find(org, Id::new(), fresh.id).await.is_none());
        // What is in progress is counted again after a restart.
        assert_eq!(open().reserved(org), (200, 2));
        assert_eq!(uploads.sweep().await, 1);
        assert_eq!(uploads.reserved(org), (100, 1));
        assert!(!dir.path().join("uploads").join(org.to_string()).join(format!("{}.part", stale.id)).exists());
    }
}
