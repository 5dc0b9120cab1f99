//! Online backup and offline restore.
//!
//! A backup is one snapshot read transaction streamed to a file, so it is consistent while
//! writes go on. The file: a magic line, a JSON header (schema version, source epoch, entry
//! count), then `(table, key, value)` entries, an end mark, and a SHA-256 of everything before
//! it. Restore checks the digest before it writes anything, loads the entries into a fresh
//! store, gives it a new epoch (so clients holding positions from the old store reset) and
//! verifies the audit chains.

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
/// Entries per write transaction during restore.
const RESTORE_TXN_ENTRIES: u64 = 20_000;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct BackupHeader {
    pub schema_version: u32,
    pub source_epoch: u64,
    pub taken_at_ms: i64,
    pub entries: u64,
    pub tables: Vec<String>,
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
    let tmp = out.with_extension("partial");
    let file = File::create(&tmp)?;
    let mut w = HashingWriter::new(BufWriter::new(file));
    w.write_all(MAGIC)?;
    let header = BackupHeader {
        schema_version: SCHEMA_VERSION,
        source_epoch: store.epoch(),
        taken_at_ms: ids::now_ms(),
        entries: total,
        tables: tables::ALL.iter().map(|t| redb::TableHandle::name(&t.def).to_owned()).collect(),
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
    w.write_all(&END.to_be_bytes())?;
    let (mut inner, digest, bytes) = w.finish();
    inner.write_all(&digest)?;
    let file = inner.into_inner().map_err(|e| StoreError::Storage(e.to_string()))?;
    file.sync_all()?;
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
    loop {
        let idx = read_u16(&mut r)?;
        if idx == END {
            break;
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
