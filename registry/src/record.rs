//! `<root>/registry.json`: where blobs were pulled from or pushed to (so a push can ask the
//! registry to mount a blob from a repository it already holds it in), and which manifest each
//! pulled tag resolved to (so a locally built image is told apart from a pulled one).
//!
//! Best-effort by design: it only saves uploads. It is read-modify-written without a lock (two
//! processes racing may drop an entry, costing a later upload, never correctness), written
//! through the store's temp-then-rename, and a damaged file reads as empty.

use imgbuild_cache::Digest;
use imgbuild_cache::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const FILE: &str = "registry.json";
/// Repositories remembered per blob: enough to find one to mount from.
const MAX_SOURCES: usize = 8;

#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Record {
    #[serde(default)]
    pub pulled: BTreeMap<String, Digest>,
    /// Blob -> `registry/repository` names holding it.
    #[serde(default)]
    pub blobs: BTreeMap<Digest, BTreeSet<String>>,
}

pub(crate) fn load(store: &Store) -> Record {
    std::fs::read(store.root().join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Applies `change` and writes the record back; failures only cost a later optimisation.
pub(crate) fn update(store: &Store, change: impl FnOnce(&mut Record)) {
    let mut r = load(store);
    change(&mut r);
    if let Ok(bytes) = serde_json::to_vec(&r) {
        let _ = store.write_atomic(&store.root().join(FILE), &bytes);
    }
}

impl Record {
    pub fn add_source(&mut self, digest: Digest, repo: &str) {
        let set = self.blobs.entry(digest).or_default();
        if set.len() < MAX_SOURCES || set.contains(repo) {
            set.insert(repo.to_owned());
        }
    }
}

/// The manifest a pulled tag (`registry/repo:tag`) last resolved to.
pub fn pulled_manifest(store: &Store, tagged_name: &str) -> Option<Digest> {
    load(store).pulled.get(tagged_name).copied()
}
