//! `outpost fsck`: the files' records against their bytes. Every blob a record names must be
//! on disk with that size and digest; every live asset must name a blob the organization
//! holds. Blobs on disk that no record names are counted (the collector removes them).

use serde::{Deserialize, Serialize};

use super::tables::{ASSET_BLOBS, ASSETS};
use super::{Reader, StoreError, key_org};
use crate::blobs::{Blobs, Sha256, hash_file};
use crate::ids::Id;

/// One thing wrong.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub org: Id,
    /// The blob's digest, or the asset's id.
    pub what: String,
    pub problem: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct FsckReport {
    pub blobs: u64,
    pub bytes: u64,
    pub assets: u64,
    /// Blobs on disk no record names.
    pub unnamed: u64,
    pub findings: Vec<Finding>,
}

#[derive(Deserialize)]
struct BlobSize {
    size: u64,
}

#[derive(Deserialize)]
struct AssetDigest {
    id: Id,
    sha256: String,
    #[serde(default)]
    deleted_at_ms: Option<i64>,
}

/// Checks every blob the snapshot `r` names in `blobs` (reading each whole), then every asset.
pub fn check(r: &Reader, blobs: &Blobs, progress: &mut dyn FnMut(u64, u64)) -> Result<FsckReport, StoreError> {
    let mut named = Vec::new();
    r.for_each(ASSET_BLOBS, |k, v| {
        if let (Some(org), Ok(sha), Ok(rec)) =
            (key_org(k), <[u8; 32]>::try_from(&k[16..]), serde_json::from_slice::<BlobSize>(v))
        {
            named.push((org, Sha256(sha), rec.size));
        }
        Ok(true)
    })?;
    let total: u64 = named.iter().map(|n| n.2).sum();
    let mut report = FsckReport { blobs: named.len() as u64, bytes: total, ..FsckReport::default() };
    let mut done = 0;
    for (org, sha, size) in &named {
        let path = blobs.path(*org, sha);
        let problem = match std::fs::metadata(&path) {
            Err(_) => Some("missing".to_owned()),
            Ok(m) if m.len() != *size => Some(format!("{} bytes where the record says {size}", m.len())),
            Ok(_) => match hash_file(&path) {
                Ok(got) if got == *sha => None,
                Ok(got) => Some(format!("its bytes hash to {}", got.hex())),
                Err(e) => Some(format!("unreadable: {e}")),
            },
        };
        if let Some(problem) = problem {
            report.findings.push(Finding { org: *org, what: sha.hex(), problem });
        }
        done += size;
        progress(done, total);
    }
    let held: std::collections::HashSet<(Id, Sha256)> = named.iter().map(|(o, s, _)| (*o, *s)).collect();
    r.for_each(ASSETS, |k, v| {
        let Some(org) = key_org(k) else { return Ok(true) };
        let Ok(a) = serde_json::from_slice::<AssetDigest>(v) else {
            report.findings.push(Finding { org, what: "asset".into(), problem: "unreadable record".into() });
            return Ok(true);
        };
        if a.deleted_at_ms.is_none() {
            report.assets += 1;
            if !Sha256::parse_hex(&a.sha256).is_some_and(|s| held.contains(&(org, s))) {
                let problem = format!("names blob {} that the organization does not hold", a.sha256);
                report.findings.push(Finding { org, what: a.id.to_string(), problem });
            }
        }
        Ok(true)
    })?;
    report.unnamed = blobs.list()?.iter().filter(|(o, s, _)| !held.contains(&(*o, *s))).count() as u64;
    Ok(report)
}
