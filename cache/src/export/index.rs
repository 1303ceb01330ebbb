//! The index of an exported cache: step keys -> step records and their blobs, cache-mount ids
//! -> manifests and their blobs.

use crate::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The index format this code reads and writes.
pub const INDEX_VERSION: u32 = 1;

/// A blob and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// One step result: the store's record, as it is (the executor's `StepRecord`; this crate does
/// not interpret it), and the blobs it needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepEntry {
    pub record: serde_json::Value,
    pub blobs: Vec<BlobRef>,
}

/// One cache mount: its manifest blob (see `mounts`) and every blob the manifest references.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MountEntry {
    pub manifest: BlobRef,
    pub blobs: Vec<BlobRef>,
}

/// `index.json`. Maps are ordered, so the same content serialises to the same bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheIndex {
    pub version: u32,
    /// By the step key's 64 hex digits.
    #[serde(default)]
    pub steps: BTreeMap<String, StepEntry>,
    /// By cache id (`RUN --mount=type=cache,id=…`, the target when no id is given).
    #[serde(default)]
    pub cache_mounts: BTreeMap<String, MountEntry>,
}

impl Default for CacheIndex {
    fn default() -> CacheIndex {
        CacheIndex {
            version: INDEX_VERSION,
            steps: BTreeMap::new(),
            cache_mounts: BTreeMap::new(),
        }
    }
}

impl CacheIndex {
    pub fn from_json(bytes: &[u8]) -> Result<CacheIndex, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| format!("not an imgbuild cache index: {e}"))?;
        if v.version != INDEX_VERSION {
            return Err(format!(
                "cache index version {} (this imgbuild reads version {INDEX_VERSION})",
                v.version
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("damaged cache index: {e}"))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The entry for a step key.
    pub fn step(&self, key: &[u8; 32]) -> Option<&StepEntry> {
        self.steps.get(&hex::encode(key))
    }

    pub fn put_step(&mut self, key: &[u8; 32], entry: StepEntry) {
        self.steps.insert(hex::encode(key), entry);
    }

    /// Every blob the index references (step blobs, cache-mount manifests and content), by
    /// digest: what a cache must keep.
    pub fn referenced(&self) -> BTreeMap<Digest, u64> {
        let mut out = BTreeMap::new();
        for s in self.steps.values() {
            out.extend(s.blobs.iter().map(|b| (b.digest, b.size)));
        }
        for m in self.cache_mounts.values() {
            out.insert(m.manifest.digest, m.manifest.size);
            out.extend(m.blobs.iter().map(|b| (b.digest, b.size)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_is_stable() {
        let mut index = CacheIndex::default();
        let blob = BlobRef {
            digest: Digest::of(b"layer"),
            size: 5,
        };
        index.put_step(
            &[7; 32],
            StepEntry {
                record: serde_json::json!({"layer": {"digest": blob.digest.to_string()}}),
                blobs: vec![blob],
            },
        );
        let manifest = BlobRef {
            digest: Digest::of(b"m"),
            size: 1,
        };
        index.cache_mounts.insert(
            "/root/.cache".into(),
            MountEntry {
                manifest,
                blobs: vec![blob],
            },
        );
        let json = index.to_json();
        let back = CacheIndex::from_json(&json).unwrap();
        assert_eq!(back, index);
        assert_eq!(back.to_json(), json);
        assert_eq!(back.step(&[7; 32]).unwrap().blobs, vec![blob]);
        assert!(back.step(&[8; 32]).is_none());
        let refs = back.referenced();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[&manifest.digest], 1);
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        let err = CacheIndex::from_json(br#"{"version": 2, "steps": {}}"#).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
        assert!(CacheIndex::from_json(b"[]").is_err());
        assert!(CacheIndex::from_json(b"").is_err());
        let err = CacheIndex::from_json(br#"{"version": 1, "steps": {"k": 3}}"#).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
        // A minimal index reads.
        let index = CacheIndex::from_json(br#"{"version": 1}"#).unwrap();
        assert!(index.steps.is_empty() && index.cache_mounts.is_empty());
    }
}
