//! The blob store: files' bytes on disk under `data_dir/blobs`, named by their SHA-256 and kept
//! per organization (`blobs/<org>/<first two hex digits>/<sha256 hex>`).
//!
//! A blob is only ever made by adopting a staged file that is already durable: the file is
//! renamed into place and the directories along the way are fsynced, so once `adopt` returns
//! the blob survives a power cut. Records that name a blob are committed after that, so the
//! store never holds a row whose bytes are missing. Identical content in one organization is
//! one blob; organizations never share a blob, so nothing one does is visible to another.
//!
//! Small blobs once read are kept in memory, within a byte budget, least recently read out
//! first: a blob never changes (its name is its content), so a kept copy is never stale, and a
//! download of a popular avatar or attachment costs no file system call.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::ids::Id;

/// A SHA-256 digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn of(bytes: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        Self(d.as_ref().try_into().expect("32 bytes"))
    }

    pub fn from_digest(d: ring::digest::Digest) -> Self {
        Self(d.as_ref().try_into().expect("32 bytes"))
    }

    pub fn hex(&self) -> String {
        crate::ids::hex(&self.0)
    }

    pub fn parse_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(out))
    }
}

/// The digest of a whole file, read in bounded chunks.
pub fn hash_file(path: &Path) -> io::Result<Sha256> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(Sha256::from_digest(ctx.finish()));
        }
        ctx.update(&buf[..n]);
    }
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` durably and atomically: a temporary file beside it, fsynced,
/// renamed over it, the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    let tmp = dir.join(format!(".{}.tmp", Id::new()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[derive(Clone, Debug)]
pub struct Blobs {
    root: PathBuf,
    hot: Arc<Mutex<Hot>>,
}

/// Small blobs kept in memory: at most `budget` bytes, each at most a sixteenth of it.
#[derive(Debug)]
struct Hot {
    kept: lru::LruCache<(Id, Sha256), Bytes>,
    bytes: u64,
    budget: u64,
}

impl Hot {
    fn file_max(&self) -> u64 {
        self.budget / 16
    }

    fn keep(&mut self, key: (Id, Sha256), bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > self.file_max() {
            return;
        }
        if let Some(old) = self.kept.put(key, bytes) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += len;
        while self.bytes > self.budget {
            let Some((_, out)) = self.kept.pop_lru() else { break };
            self.bytes -= out.len() as u64;
        }
    }
}

impl Blobs {
    /// The blob store under `data_dir`, its directory made if missing; no blob is kept in
    /// memory until `keep_in_memory` says how much.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join("blobs");
        fs::create_dir_all(&root)?;
        let hot = Hot { kept: lru::LruCache::unbounded(), bytes: 0, budget: 0 };
        Ok(Self { root, hot: Arc::new(Mutex::new(hot)) })
    }

    /// Keeps small blobs once read in memory, `budget` bytes of them at most (0: none).
    #[must_use]
    pub fn keep_in_memory(self, budget: u64) -> Self {
        self.hot.lock().expect("hot blobs").budget = budget;
        self
    }

    /// The largest blob kept in memory once read (0 when none is).
    pub fn memory_file_max(&self) -> u64 {
        self.hot.lock().expect("hot blobs").file_max()
    }

    /// Blob `sha` of `org` if it is kept in memory.
    pub fn in_memory(&self, org: Id, sha: &Sha256) -> Option<Bytes> {
        self.hot.lock().expect("hot blobs").kept.get(&(org, *sha)).cloned()
    }

    /// Reads blob `sha` of `org`, which has `size` bytes, whole (blocking), and keeps it in
    /// memory if it is small enough. A file of another length is an error: the blob is damaged.
    pub fn read_whole(&self, org: Id, sha: &Sha256, size: u64) -> io::Result<Bytes> {
        use std::io::Read;
        let mut f = File::open(self.path(org, sha))?;
        let mut buf = Vec::with_capacity(size as usize);
        (&mut f).take(size + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} has {} bytes where its record says {size}", sha.hex(), buf.len()),
            ));
        }
        let bytes = Bytes::from(buf);
        self.hot.lock().expect("hot blobs").keep((org, *sha), bytes.clone());
        Ok(bytes)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn org_dir(&self, org: Id) -> PathBuf {
        self.root.join(org.to_string())
    }

    /// Where the blob `sha` of `org` lives (whether or not it exists).
    pub fn path(&self, org: Id, sha: &Sha256) -> PathBuf {
        let hex = sha.hex();
        self.org_dir(org).join(&hex[..2]).join(hex)
    }

    pub fn exists(&self, org: Id, sha: &Sha256) -> bool {
        self.path(org, sha).is_file()
    }

    /// Makes the durable staged file at `staged` the blob `sha` of `org`: renamed into place,
    /// directories fsynced. When the organization already holds that content the staged file
    /// is removed instead. Returns whether the blob is new. The staged file must be on the
    /// same filesystem (it is: everything lives under `data_dir`).
    pub fn adopt(&self, org: Id, staged: &Path, sha: &Sha256) -> io::Result<bool> {
        let path = self.path(org, sha);
        if path.is_file() {
            fs::remove_file(staged)?;
            return Ok(false);
        }
        let dir = path.parent().expect("a blob has a directory");
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
            sync_dir(&self.root)?;
            sync_dir(&self.org_dir(org))?;
        }
        fs::rename(staged, &path)?;
        sync_dir(dir)?;
        Ok(true)
    }

    /// Removes a blob no record names any more.
    pub fn remove(&self, org: Id, sha: &Sha256) -> io::Result<()> {
        let mut hot = self.hot.lock().expect("hot blobs");
        if let Some(out) = hot.kept.pop(&(org, *sha)) {
            hot.bytes -= out.len() as u64;
        }
        drop(hot);
        match fs::remove_file(self.path(org, sha)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every blob of every organization: (org, digest, bytes), for checks and collection.
    pub fn list(&self) -> io::Result<Vec<(Id, Sha256, u64)>> {
        let mut out = Vec::new();
        for org_dir in fs::read_dir(&self.root)? {
            let org_dir = org_dir?;
            let Some(org) = org_dir.file_name().to_str().and_then(|s| s.parse::<Id>().ok()) else { continue };
            for fan in fs::read_dir(org_dir.path())? {
                for blob in fs::read_dir(fan?.path())? {
                    let blob = blob?;
                    if let Some(sha) = blob.file_name().to_str().and_then(Sha256::parse_hex) {
                        out.push((org, sha, blob.metadata()?.len()));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identical_content_is_one_blob_per_organization() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let (a, b) = (Id::new(), Id::new());
        let sha = Sha256::of(b"hello");
        for (org, new) in [(a, true), (a, false), (b, true)] {
            let staged = dir.path().join(format!("{}", Id::new()));
            fs::write(&staged, b"hello").unwrap();
            assert_eq!(blobs.adopt(org, &staged, &sha).unwrap(), new);
            assert!(!staged.exists());
        }
        assert_eq!(hash_file(&blobs.path(a, &sha)).unwrap(), sha);
        assert_eq!(blobs.list().unwrap().len(), 2);
        assert_eq!(Sha256::parse_hex(&sha.hex()), Some(sha));
    }

    /// Small blobs read once are kept within the budget, least recently read out first; a
    /// removed blob leaves memory too, and a damaged one (another length) is an error.
    #[test]
    fn small_blobs_are_kept_in_memory_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap().keep_in_memory(64);
        assert_eq!(blobs.memory_file_max(), 4);
        let org = Id::new();
        let mut shas = Vec::new();
        for i in 0..20u8 {
            let body = [i; 4];
            let sha = Sha256::of(&body);
            let staged = dir.path().join("staged");
            fs::write(&staged, body).unwrap();
            blobs.adopt(org, &staged, &sha).unwrap();
            assert_eq!(blobs.read_whole(org, &sha, 4).unwrap().as_ref(), &body);
            shas.push(sha);
        }
        // 16 blobs of 4 bytes fit in 64: the first four read went out.
        assert!(shas[..4].iter().all(|s| blobs.in_memory(org, s).is_none()));
        assert!(shas[4..].iter().all(|s| blobs.in_memory(org, s).is_some()));
        assert_eq!(blobs.hot.lock().unwrap().bytes, 64);
        // Another organization's blob of the same content is not this one.
        assert!(blobs.in_memory(Id::new(), &shas[19]).is_none());
        blobs.remove(org, &shas[19]).unwrap();
        assert!(blobs.in_memory(org, &shas[19]).is_none());
        assert_eq!(blobs.hot.lock().unwrap().bytes, 60);
        // A blob over the per-file limit is read but not kept.
        let big = Sha256::of(b"12345");
        let staged = dir.path().join("staged");
        fs::write(&staged, b"12345").unwrap();
        blobs.adopt(org, &staged, &big).unwrap();
        assert_eq!(blobs.read_whole(org, &big, 5).unwrap().as_ref(), b"12345");
        assert!(blobs.in_memory(org, &big).is_none());
        let err = blobs.read_whole(org, &shas[5], 3).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
