//! The embedded store: one redb file, one writer thread, snapshot reads.
//!
//! `Store` owns the database handle and answers reads on snapshot read transactions run off the
//! async workers. Every change goes through `Writer` (see `writer.rs`), which commits a change's
//! rows, its events and its audit record in one durable transaction. Nothing else writes.

pub mod audit;
pub mod backup;
pub mod events;
pub mod followers;
pub mod fsck;
mod migrations;
pub mod packed;
pub mod space;
pub mod stamped;
pub mod tables;
pub mod writer;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::ids::{self, Id};
use tables::{META, Table};

use migrations::MIGRATIONS;
pub use migrations::SCHEMA_VERSION;

/// Key-value rows as read from a table.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// The page cache of a store opened without saying (redb's own default is 1 GiB, too much for
/// a small box).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// The file name of the database inside the data dir.
pub const DB_FILE: &str = "outpost.redb";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("the store is already open in another process (is a server running on this data dir?)")]
    Locked,
    #[error("the store's schema version {found} is newer than this build supports ({supported}); upgrade outpost")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("corrupt record in {table}: {detail}")]
    Corrupt { table: String, detail: String },
    #[error("key outside the writing organization's scope in table {0}")]
    OutOfScope(String),
    #[error("the store writer is shutting down")]
    Closed,
    #[error("the store writer queue is full")]
    Busy,
    #[error("free disk space is below the configured floor; writes are refused")]
    DiskFull,
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    std::io::Error
);

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Self::Locked,
            other => Self::Storage(other.to_string()),
        }
    }
}

/// The opened store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: redb::Database,
    path: PathBuf,
    epoch: u64,
    /// Row change counters (see `Store::row_changes`).
    changes: Box<[AtomicU64]>,
}

/// Slots of row change counters (fixed: memory does not grow with rows).
const CHANGE_SLOTS: usize = 16_384;

/// The counter slot of the row at `key` in `table` (the writer collects them as it writes).
pub(crate) fn change_slot(table: Table, key: &[u8]) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x006f_7574_706f_7374).build_hasher();
    h.write_usize(table.idx);
    h.write(key);
    (h.finish() % CHANGE_SLOTS as u64) as usize
}

/// The fault hook of the fsync-failure test: with this variable naming a file, the store's
/// next fsync after that file appears fails (and removes it). Nothing else changes.
pub const FSYNC_FAULT_ENV: &str = "FSYNC_FAULT_MARKER";

/// The store file, with one injected fsync failure on demand (`FSYNC_FAULT_ENV`).
#[derive(Debug)]
struct FsyncFault {
    file: redb::backends::FileBackend,
    marker: PathBuf,
}

impl redb::StorageBackend for FsyncFault {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        if std::fs::remove_file(&self.marker).is_ok() {
            return Err(std::io::Error::other("fsync failed (injected)"));
        }
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// What opening the store found and did, for the start-up log.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub created: bool,
    pub migrated_from: Option<u32>,
    pub epoch: u64,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` with the default page cache, running
    /// pending migrations. `progress` receives one line per migration step.
    pub fn open(data_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<(Self, OpenReport), StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES, progress)
    }

    /// As `open`, with a page cache of at most `cache_bytes`.
    pub fn open_with_cache(
        data_dir: &Path,
        cache_bytes: usize,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(Self, OpenReport), StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let mut builder = redb::Database::builder();
        builder.set_cache_size(cache_bytes);
        let db = match std::env::var_os(FSYNC_FAULT_ENV) {
            Some(marker) => {
                let file =
                    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
                let file = redb::backends::FileBackend::new(file)?;
                builder.create_with_backend(FsyncFault { file, marker: marker.into() })?
            }
            None => builder.create(&path)?,
        };
        let report = init_or_migrate(&db, progress)?;
        let changes = (0..CHANGE_SLOTS).map(|_| AtomicU64::new(0)).collect();
        let store = Self { inner: Arc::new(Inner { db, path, epoch: report.epoch, changes }) };
        Ok((store, report))
    }

    /// The store's epoch: random at creation, changed by every restore. Clients that resume from
    /// a position of another epoch are told to reset.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A number that changes whenever the row at `key` of `table` is written or deleted (and,
    /// now and then, when a row sharing its slot is). The writer moves it after the commit and
    /// before it answers, so: read this, then read the row, and what is built from that read
    /// is current for as long as the number stays the same.
    pub fn row_changes(&self, table: Table, key: &[u8]) -> u64 {
        self.inner.changes[change_slot(table, key)].load(Ordering::Acquire)
    }

    /// Moves the counters of committed rows' slots.
    pub(crate) fn rows_changed(&self, slots: &[usize]) {
        for &slot in slots {
            self.inner.changes[slot].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Live handles on this store (the database closes when the last one goes).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    pub(crate) fn db(&self) -> &redb::Database {
        &self.inner.db
    }

    /// Runs `f` on a snapshot read transaction on the blocking pool.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Reader) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let reader = store.reader()?;
            f(&reader)
        })
        .await
        .map_err(|e| E::from(StoreError::Storage(format!("read task failed: {e}"))))?
    }

    /// Runs `f` on a snapshot read transaction right here, without a hop to the blocking pool.
    /// Only for a handful of point reads (the per-request checks): their pages are hot and the
    /// work is bounded, so a thread switch would cost more than the read. Scans use `read`.
    pub fn peek<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Reader) -> Result<T, E>,
        E: From<StoreError>,
    {
        f(&self.reader()?)
    }

    /// The first `max` JSON records of an organization-keyed table (`org ‖ …`), decoded, read
    /// on the blocking pool.
    pub async fn org_records<T>(&self, table: Table, org: Id, max: usize) -> Result<Vec<T>, StoreError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.read(move |r| {
            r.range(table, org.as_bytes(), &prefix_end(org.as_bytes()), false, max)?
                .iter()
                .map(|(_, v)| decode(table, v))
                .collect()
        })
        .await
    }

    /// A snapshot reader for synchronous callers (CLI, writer-side checks, tests).
    pub fn reader(&self) -> Result<Reader, StoreError> {
        Ok(Reader { txn: self.inner.db.begin_read()? })
    }
}

/// Point reads, the same on a snapshot (`Reader`) and inside a write (`Tx`): domain checks
/// that run in both places are written once against this.
pub trait Lookup {
    fn row(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The JSON record at `key`, decoded.
    fn record<T: serde::de::DeserializeOwned>(&self, table: Table, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.row(table, key)?.map(|v| decode(table, &v)).transpose()
    }
}

impl Lookup for Reader {
    fn row(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(table, key)
    }
}

/// A snapshot of the whole store.
pub struct Reader {
    txn: ReadTransaction,
}

impl Reader {
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.txn.open_table(table.def) {
            Ok(t) => Ok(t.get(key)?.map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Entries with keys in `[start, end)`, ascending (or descending with `rev`), at most `limit`.
    pub fn range(&self, table: Table, start: &[u8], end: &[u8], rev: bool, limit: usize) -> Result<Rows, StoreError> {
        let t = match self.txn.open_table(table.def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let iter = t.range::<&[u8]>(start..end)?;
        let items: Box<dyn Iterator<Item = _>> = if rev { Box::new(iter.rev()) } else { Box::new(iter) };
        let mut out = Vec::new();
        for item in items.take(limit) {
            let (k, v) = item?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Visits entries with keys in `[start, end)` in order (descending with `rev`), reading
    /// lazily; `f` returns false to stop.
    pub fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        rev: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        if start >= end {
            return Ok(());
        }
        let t = match self.txn.open_table(table.def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let iter = t.range::<&[u8]>(start..end)?;
        let items: Box<dyn Iterator<Item = _>> = if rev { Box::new(iter.rev()) } else { Box::new(iter) };
        for item in items {
            let (k, v) = item?;
            if !f(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }

    /// Visits every entry of `table` in key order; `f` returns false to stop.
    pub fn for_each(
        &self,
        table: Table,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let t = match self.txn.open_table(table.def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for item in t.iter()? {
            let (k, v) = item?;
            if !f(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }

    /// Number of entries in `table`.
    pub fn len(&self, table: Table) -> Result<u64, StoreError> {
        match self.txn.open_table(table.def) {
            Ok(t) => Ok(t.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    pub fn meta_u64(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.get(META, name.as_bytes())?.and_then(|v| tables::u64_be(&v)))
    }
}

/// Free bytes for unprivileged users on the file system holding `path`.
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Decodes a JSON record, naming the table when it is corrupt.
pub fn decode<T: serde::de::DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table: redb::TableHandle::name(&table.def).to_owned(),
        detail: e.to_string(),
    })
}

/// Encodes a record as JSON. Our records always serialize.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize to JSON")
}

fn init_or_migrate(db: &redb::Database, progress: &mut dyn FnMut(&str)) -> Result<OpenReport, StoreError> {
    let txn = db.begin_write()?;
    let report;
    {
        let mut meta = txn.open_table(META.def)?;
        let version = meta.get(b"schema_version".as_slice())?.map(|v| {
            let b = v.value();
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        });
        match version {
            None => {
                let epoch = ids::random_u64();
                meta.insert(b"schema_version".as_slice(), SCHEMA_VERSION.to_be_bytes().as_slice())?;
                meta.insert(b"epoch".as_slice(), epoch.to_be_bytes().as_slice())?;
                meta.insert(b"created_at".as_slice(), ids::now_ms().to_be_bytes().as_slice())?;
                meta.insert(b"gseq".as_slice(), 0u64.to_be_bytes().as_slice())?;
                progress(&format!("created a new store (schema version {SCHEMA_VERSION})"));
                report = OpenReport { created: true, migrated_from: None, epoch };
            }
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
            }
            Some(found) => {
                let epoch = meta
                    .get(b"epoch".as_slice())?
                    .and_then(|v| tables::u64_be(v.value()))
                    .ok_or(StoreError::Corrupt { table: "meta".into(), detail: "no epoch".into() })?;
                report = OpenReport { created: false, migrated_from: (found < SCHEMA_VERSION).then_some(found), epoch };
            }
        }
    }
    // Every table exists from the start, so readers never meet a missing one.
    for t in tables::ALL {
        txn.open_table(t.def)?;
    }
    txn.commit()?;
    if let Some(from) = report.migrated_from {
        for (to, what, migrate) in MIGRATIONS.iter().filter(|(to, _, _)| *to > from) {
            progress(&format!("migrating store schema {} → {to}: {what}", to - 1));
            let txn = db.begin_write()?;
            let rows = migrate(&txn)?;
            txn.open_table(META.def)?.insert(b"schema_version".as_slice(), to.to_be_bytes().as_slice())?;
            txn.commit()?;
            progress(&format!("migrated store schema to {to} ({rows} rows written)"));
        }
        progress(&format!("store schema is now version {SCHEMA_VERSION}"));
    }
    Ok(report)
}

/// A fresh 16-byte prefix upper bound: the smallest key greater than every key starting with
/// `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// The org id at the start of an org-table key.
pub fn key_org(key: &[u8]) -> Option<Id> {
    Id::from_slice(key.get(..16)?)
}
