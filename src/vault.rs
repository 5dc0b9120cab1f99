//! The vault: secrets sealed with AES-256-GCM under a master key kept in a file.
//!
//! The master key file is made at first start (32 random bytes, mode 0600) and the server
//! refuses to start when it is readable by others or does not open what the store holds. Each
//! line of the file is `<key id> <base64 key>`, the current key first; `outpost vault rotate`
//! adds a new first line, re-seals every sealed value under it in one transaction, then drops
//! the old lines — a crash in between leaves a file that still opens everything.
//!
//! A sealed value is `key id (8) ‖ nonce (12) ‖ ciphertext ‖ tag`, bound to its purpose by the
//! associated data (e.g. `signing_key:<id>`), so a sealed value cannot be replayed elsewhere.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::ids;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the vault key file {0} is readable by other users; run `chmod 600 {0}`")]
    WorldReadable(String),
    #[error("cannot use the vault key file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("a sealed value was made with vault key {0}, which the key file does not have (wrong key file?)")]
    UnknownKey(String),
    #[error("a sealed value does not open with the vault key (wrong key file, or the value was altered)")]
    Open,
    #[error("a sealed value is malformed")]
    Malformed,
}

/// One master key.
struct MasterKey {
    id: [u8; 8],
    key: LessSafeKey,
    raw: [u8; 32],
}

/// The opened vault: the current master key first, older ones after (only during rotation).
pub struct Vault {
    keys: Vec<MasterKey>,
    path: PathBuf,
}

impl Vault {
    /// Opens the key file at `path`, creating it (mode 0600) when it does not exist.
    pub fn open_or_create(path: &Path) -> Result<Self, VaultError> {
        let file_err = |detail: String| VaultError::File { path: path.display().to_string(), detail };
        if !path.exists() {
            let mut raw = [0u8; 32];
            ids::fill_random(&mut raw);
            write_key_file(path, &[raw]).map_err(|e| file_err(e.to_string()))?;
        }
        let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
        if meta.permissions().mode() & 0o007 != 0 {
            return Err(VaultError::WorldReadable(path.display().to_string()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (_, b64) = line.split_once(' ').ok_or_else(|| file_err("a line is not `<id> <key>`".into()))?;
            let bytes = STANDARD.decode(b64.trim()).map_err(|_| file_err("a key is not base64".into()))?;
            let raw: [u8; 32] = bytes.try_into().map_err(|_| file_err("a key is not 32 bytes".into()))?;
            keys.push(MasterKey::new(raw));
        }
        if keys.is_empty() {
            return Err(file_err("it holds no key".into()));
        }
        Ok(Self { keys, path: path.to_path_buf() })
    }

    /// The current master key's id, as hex.
    pub fn key_id(&self) -> String {
        crate::ids::hex(&self.keys[0].id)
    }

    /// Seals `plain` for `purpose` under the current key.
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> Vec<u8> {
        let k = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        ids::fill_random(&mut nonce);
        let mut buf = plain.to_vec();
        // Sealing fails only for inputs beyond AES-GCM's limit (64 GiB); ours are small.
        k.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut buf)
            .expect("sealing a small value");
        let mut out = Vec::with_capacity(8 + NONCE_LEN + buf.len());
        out.extend_from_slice(&k.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    /// A 32-byte secret for `purpose`, derived from the current master key (HMAC-SHA256): the
    /// same across restarts, new after a rotation.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.keys[0].raw);
        let tag = ring::hmac::sign(&key, format!("derive:{purpose}").as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Opens a value sealed for `purpose`.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < 8 + NONCE_LEN + 16 {
            return Err(VaultError::Malformed);
        }
        let (id, rest) = sealed.split_at(8);
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let k = self.keys.iter().find(|k| k.id == id).ok_or_else(|| VaultError::UnknownKey(crate::ids::hex(id)))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Malformed)?;
        let mut buf = ct.to_vec();
        let plain =
            k.key.open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf).map_err(|_| VaultError::Open)?;
        Ok(plain.to_vec())
    }

    /// A value sealed for `purpose` and written as base64, opened and sealed again under the
    /// current key (a rotation re-seals with this).
    pub fn reseal_base64(&self, purpose: &str, sealed: &str) -> Result<String, VaultError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| VaultError::Malformed)?;
        Ok(STANDARD.encode(self.seal(purpose, &self.open(purpose, &bytes)?)))
    }

    /// Starts a rotation: writes a new current key in front of the old ones and returns the
    /// vault that seals under it (and still opens under the old keys).
    pub fn begin_rotation(&self) -> Result<Self, VaultError> {
        let mut raw = [0u8; 32];
        ids::fill_random(&mut raw);
        let mut all = vec![raw];
        all.extend(self.keys.iter().map(|k| k.raw));
        write_key_file(&self.path, &all)
            .map_err(|e| VaultError::File { path: self.path.display().to_string(), detail: e.to_string() })?;
        Self::open_or_create(&self.path)
    }

    /// Ends a rotation once everything is re-sealed: only the current key stays in the file.
    pub fn finish_rotation(&self) -> Result<(), VaultError> {
        write_key_file(&self.path, &[self.keys[0].raw])
            .map_err(|e| VaultError::File { path: self.path.display().to_string(), detail: e.to_string() })
    }
}

/// The vault in force, shared by the parts that seal and open: a rotation swaps it as a whole.
#[derive(Clone)]
pub struct VaultCell(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Vault>>>);

impl VaultCell {
    pub fn new(vault: std::sync::Arc<Vault>) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(vault)))
    }

    pub fn get(&self) -> std::sync::Arc<Vault> {
        self.0.read().map_or_else(|p| p.into_inner().clone(), |v| v.clone())
    }

    pub fn set(&self, vault: std::sync::Arc<Vault>) {
        match self.0.write() {
            Ok(mut g) => *g = vault,
            Err(p) => *p.into_inner() = vault,
        }
    }
}

impl MasterKey {
    fn new(raw: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        // A 32-byte key is always a valid AES-256 key.
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte key"));
        Self { id, key, raw }
    }
}

/// Writes the key file atomically with mode 0600.
fn write_key_file(path: &Path, keys: &[[u8; 32]]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    writeln!(
        f,
        "# Outpost vault master keys: current first. Keep this file secret and backed up apart from the data."
    )?;
    for raw in keys {
        let id = MasterKey::new(*raw).id;
        writeln!(f, "{} {}", crate::ids::hex(&id), STANDARD.encode(raw))?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        std::env::temp_dir().join(format!("outpost-vault-{}", crate::ids::Id::new())).join("master.key")
    }

    #[test]
    fn seals_open_only_for_their_purpose_and_key() {
        let path = temp();
        let v = Vault::open_or_create(&path).expect("vault");
        let sealed = v.seal("signing_key:1", b"secret");
        assert_eq!(v.open("signing_key:1", &sealed).ok(), Some(b"secret".to_vec()));
        assert!(matches!(v.open("signing_key:2", &sealed), Err(VaultError::Open)));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(v.open("signing_key:1", &tampered), Err(VaultError::Open)));
        // Rotation: the new vault opens old values and seals under the new key.
        let rotated = v.begin_rotation().expect("rotate");
        assert_ne!(rotated.key_id(), v.key_id());
        assert_eq!(rotated.open("signing_key:1", &sealed).ok(), Some(b"secret".to_vec()));
        let resealed = rotated.seal("signing_key:1", b"secret");
        rotated.finish_rotation().expect("finish");
        let reopened = Vault::open_or_create(&path).expect("reopen");
        assert!(matches!(reopened.open("signing_key:1", &sealed), Err(VaultError::UnknownKey(_))));
        assert_eq!(reopened.open("signing_key:1", &resealed).ok(), Some(b"secret".to_vec()));
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_world_readable_key_file_is_refused() {
        let path = temp();
        drop(Vault::open_or_create(&path).expect("vault"));
        assert_eq!(std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o600));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(Vault::open_or_create(&path), Err(VaultError::WorldReadable(_))));
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
