//! Online backup and offline restore.
//!
//! A backup is one snapshot read transaction streamed to a file, so it is consistent while
//! writes go on. The file: a magic line, a JSON header (schema version, source epoch, entry
//! count), then `(table, key, value)` entries, then the bytes of every file the snapshot's
//! records name (`blob mark, org, digest, length, bytes`), an end mark, and a SHA-256 of
//! everything before it. A blob is durable before any record names it, so each one the
//! snapshot names is there to copy. Restore checks the digest before it writes anything, loads
//! the entries into a fresh store, writes each blob back after checking its own digest, gives
//! the store a new epoch (so clients holding positions from the old store reset) and verifies
//! the audit chains.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};

use super::tables::{self, META};
use super::{DB_FILE, SCHEMA_VERSION, Store, StoreError};
use crate::ids;

const MAGIC: &[u8] = b"OUTPOST-BACKUP 1\n";
const END: u16 = u16::MAX;
/// Marks a blob's bytes (after the table entries).
const BLOB: u16 = u16::MAX - 1;
/// Entries per write transaction during restore.
const RESTORE_TXN_ENTRIES: u64 = 20_000;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct BackupHeader {
    pub schema_version: u32,
    pub source_epoch: u64,
    pub taken_at_ms: i64,
    pub entries: u64,
    pub tables: Vec<String>,
    /// Files' blobs that follow the entries, and their bytes.
    #[serde(default)]
    pub blobs: u64,
    #[serde(default)]
    pub blob_bytes: u64,
}

/// What a backup or restore did.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct BackupSummary {
    pub entries: u64,
    pub bytes: u64,
    pub epoch: u64,
}

/// Writes a consistent snapshot of `store` to `out` (atomically: a temp file renamed into place).
pub fn backup(store: &Store, out: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<BackupSummary, StoreError> {
    let txn = store.db().begin_read()?;
    let reader = super::Reader { txn };
    let mut total = 0;
    for t in tables::ALL {
        total += reader.len(*t)?;
    }
    // The blobs the snapshot names: every organization's, with their sizes.
    let mut blobs = Vec::new();
    reader.for_each(tables::ASSET_BLOBS, |k, v| {
        let rec: BlobSize = serde_json::from_slice(v).unwrap_or_default();
        if let (Some(org), Ok(sha)) = (super::key_org(k), <[u8; 32]>::try_from(&k[16..])) {
            blobs.push((org, crate::blobs::Sha256(sha), rec.size));
        }
        Ok(true)
    })?;
    let blob_store = data_dir_of(store).map(|d| crate::blobs::Blobs::open(&d)).transpose()?;
    let tmp = out.with_extension("partial");
    // What was written of a backup that fails goes: a partial file is never left to be
    // mistaken for a backup, or to fill the disk.
    let written = (|| -> Result<(u64, u64), StoreError> {
        let file = File::create(&tmp)?;
        let mut w = HashingWriter::new(BufWriter::new(file));
        w.write_all(MAGIC)?;
        let header = BackupHeader {
            schema_version: SCHEMA_VERSION,
            source_epoch: store.epoch(),
            taken_at_ms: ids::now_ms(),
            entries: total,
            tables: tables::ALL.iter().map(|t| redb::TableHandle::name(&t.def).to_owned()).collect(),
            blobs: blobs.len() as u64,
            blob_bytes: blobs.iter().map(|b| b.2).sum(),
        };
        let header_bytes = super::encode(&header);
        w.write_all(&(header_bytes.len() as u32).to_be_bytes())?;
        w.write_all(&header_bytes)?;
        let mut done = 0u64;
        for (i, t) in tables::ALL.iter().enumerate() {
            let mut io_err = None;
            reader.for_each(*t, |k, v| {
                let r = (|| -> std::io::Result<()> {
                    w.write_all(&(i as u16).to_be_bytes())?;
                    w.write_all(&(k.len() as u32).to_be_bytes())?;
                    w.write_all(k)?;
                    w.write_all(&(v.len() as u32).to_be_bytes())?;
                    w.write_all(v)
                })();
                if let Err(e) = r {
                    io_err = Some(e);
                    return Ok(false);
                }
                done += 1;
                if done % 10_000 == 0 {
                    progress(done, total);
                }
                Ok(true)
            })?;
            if let Some(e) = io_err {
                return Err(e.into());
            }
        }
        if let Some(blob_store) = &blob_store {
            write_blobs(&mut w, blob_store, &blobs)?;
        }
        w.write_all(&END.to_be_bytes())?;
        let (mut inner, digest, bytes) = w.finish();
        inner.write_all(&digest)?;
        let file = inner.into_inner().map_err(|e| StoreError::Storage(e.to_string()))?;
        file.sync_all()?;
        Ok((done, bytes))
    })();
    let (done, bytes) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    progress(done, total);
    Ok(BackupSummary { entries: done, bytes: bytes + 32, epoch: store.epoch() })
}

/// Restores the backup `from` into the data dir `data_dir`, which must hold no store.
pub fn restore(from: &Path, data_dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<BackupSummary, StoreError> {
    let header = check_file(from)?;
    if header.schema_version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found: header.schema_version, supported: SCHEMA_VERSION });
    }
    std::fs::create_dir_all(data_dir)?;
    let db_path = data_dir.join(DB_FILE);
    if db_path.exists() {
        std::fs::remove_file(&db_path)?;
    }
    let db = redb::Database::builder().create(&db_path)?;
    let mut r = BufReader::new(File::open(from)?);
    skip_header(&mut r)?;
    let table_of = |i: u16| -> Result<tables::Table, StoreError> {
        header
            .tables
            .get(i as usize)
            .and_then(|n| tables::by_name(n))
            .ok_or_else(|| corrupt(format!("unknown table index {i}")))
    };
    let mut done = 0u64;
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::None).map_err(|e| StoreError::Storage(e.to_string()))?;
    let blob_store = crate::blobs::Blobs::open(data_dir)?;
    loop {
        let idx = read_u16(&mut r)?;
        if idx == END {
            break;
        }
        if idx == BLOB {
            restore_blob(&mut r, &blob_store)?;
            continue;
        }
        let table = table_of(idx)?;
        let key = read_chunk(&mut r)?;
        let value = read_chunk(&mut r)?;
        txn.open_table(table.def)?.insert(key.as_slice(), value.as_slice())?;
        done += 1;
        if done % RESTORE_TXN_ENTRIES == 0 {
            txn.commit()?;
            progress(done, header.entries);
            txn = db.begin_write()?;
            txn.set_durability(redb::Durability::None).map_err(|e| StoreError::Storage(e.to_string()))?;
        }
    }
    if done != header.entries {
        return Err(corrupt(format!("header promises {} entries, file has {done}", header.entries)));
    }
    // A restored store is a new timeline: clients holding positions must reset.
    let epoch = loop {
        let e = ids::random_u64();
        if e != header.source_epoch {
            break e;
        }
    };
    txn.set_durability(redb::Durability::Immediate).map_err(|e| StoreError::Storage(e.to_string()))?;
    {
        let mut meta = txn.open_table(META.def)?;
        meta.insert(b"epoch".as_slice(), epoch.to_be_bytes().as_slice())?;
    }
    txn.commit()?;
    drop(db);
    progress(done, header.entries);
    Ok(BackupSummary { entries: done, bytes: std::fs::metadata(from)?.len(), epoch })
}

/// Writes the bytes of every blob in `blobs` (organization, digest, size) after its header.
fn write_blobs(
    w: &mut impl Write,
    blob_store: &crate::blobs::Blobs,
    blobs: &[(ids::Id, crate::blobs::Sha256, u64)],
) -> Result<(), StoreError> {
    let mut buf = vec![0u8; 1 << 20];
    for (org, sha, size) in blobs {
        let mut f = File::open(blob_store.path(*org, sha)).map_err(|e| {
            StoreError::Storage(format!("the bytes of file {} of organization {org} are missing: {e}", sha.hex()))
        })?;
        w.write_all(&BLOB.to_be_bytes())?;
        w.write_all(org.as_bytes())?;
        w.write_all(&sha.0)?;
        w.write_all(&size.to_be_bytes())?;
        let mut left = *size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                return Err(StoreError::Storage(format!("file {} is shorter than its record says", sha.hex())));
            }
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    Ok(())
}

/// What a backup reads of an `asset_blobs` record: the blob's size.
#[derive(Deserialize, Default)]
struct BlobSize {
    size: u64,
}

/// The data directory a store lives in.
fn data_dir_of(store: &Store) -> Option<std::path::PathBuf> {
    store.path().parent().map(Path::to_path_buf)
}

/// Writes one blob of a backup back into the blob store, checking its digest first.
fn restore_blob(r: &mut impl Read, blobs: &crate::blobs::Blobs) -> Result<(), StoreError> {
    let mut head = [0u8; 16 + 32 + 8];
    r.read_exact(&mut head)?;
    let org = ids::Id::from_slice(&head[..16]).ok_or_else(|| corrupt("blob without organization".into()))?;
    let sha = crate::blobs::Sha256(head[16..48].try_into().expect("32 bytes"));
    let size = u64::from_be_bytes(head[48..].try_into().expect("8 bytes"));
    let staged = blobs.root().join(format!(".restore-{}", ids::Id::new()));
    let mut out = File::create(&staged)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(corrupt("a file's bytes end early".into()));
        }
        ctx.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.sync_all()?;
    if ctx.finish().as_ref() != sha.0 {
        let _ = std::fs::remove_file(&staged);
        return Err(corrupt(format!("file {} does not match its digest", sha.hex())));
    }
    blobs.adopt(org, &staged, &sha)?;
    Ok(())
}

/// Reads the header and checks the whole file's digest, before anything is written.
pub fn check_file(path: &Path) -> Result<BackupHeader, StoreError> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len < (MAGIC.len() + 4 + 2 + 32) as u64 {
        return Err(corrupt("file is too short to be a backup".into()));
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut remaining = len - 32;
    let mut buf = vec![0u8; 1 << 16];
    while remaining > 0 {
        let n = f.read(&mut buf[..remaining.min(1 << 16) as usize])?;
        if n == 0 {
            return Err(corrupt("file ended early".into()));
        }
        ctx.update(&buf[..n]);
        remaining -= n as u64;
    }
    let mut stored = [0u8; 32];
    f.read_exact(&mut stored)?;
    if ctx.finish().as_ref() != stored {
        return Err(corrupt("checksum mismatch: the file is damaged or incomplete".into()));
    }
    let mut r = BufReader::new(File::open(path)?);
    skip_header(&mut r)
}

fn skip_header(r: &mut impl Read) -> Result<BackupHeader, StoreError> {
    let mut magic = vec![0u8; MAGIC.len()];
    r.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(corrupt("not an outpost backup file".into()));
    }
    let header = read_chunk(r)?;
    serde_json::from_slice(&header).map_err(|e| corrupt(format!("bad header: {e}")))
}

fn read_u16(r: &mut impl Read) -> Result<u16, StoreError> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_chunk(r: &mut impl Read) -> Result<Vec<u8>, StoreError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    let len = u32::from_be_bytes(b) as usize;
    // Keys and values are small; a huge length is damage, not data.
    if len > 64 << 20 {
        return Err(corrupt(format!("entry of {len} bytes")));
    }
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt { table: "backup file".into(), detail }
}

struct HashingWriter<W: Write> {
    inner: W,
    ctx: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, ctx: ring::digest::Context::new(&ring::digest::SHA256), bytes: 0 }
    }
    fn finish(self) -> (W, [u8; 32], u64) {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.ctx.finish().as_ref());
        (self.inner, d, self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
