//! Disk usage and garbage collection.
//!
//! Prune is mark and sweep under the exclusive lock. Roots: the manifests of tagged images
//! and (unless [`PruneMode::All`]) the step records. Marking follows JSON blobs: an OCI
//! manifest's `config.digest` and `layers[].digest`, an OCI index's `manifests[].digest`.
//! Step records are opaque to the store: the caller's `refs` callback says which digests a
//! record references (blob digests and layer diffIDs alike; a digest keeps the blob and the
//! layer tree of that name). A record with a reference that is neither a blob nor a layer
//! tree any more is dead and removed.

use super::steps::key_of;
use super::temp::{clean_tmp, remove_counted, tree_bytes};
use super::{Store, StoreError};
use crate::Digest;
use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::Path;

/// A number of entries and their apparent size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub count: u64,
    pub bytes: u64,
}

impl Count {
    pub(super) fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }

    fn plus(self, other: Count) -> Count {
        Count {
            count: self.count + other.count,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// What the store holds (from [`Store::du`]) or what a prune removed. Sizes are apparent
/// sizes (file lengths; hard links within a tree counted once); a layer tree or a context
/// entry counts as one entry. `total` is the sum of the other fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub blobs: Count,
    pub steps: Count,
    pub layers: Count,
    pub context: Count,
    pub tmp: Count,
    /// `RUN --mount=type=cache` directories (one entry per cache id).
    pub cache_mounts: Count,
    pub total: Count,
}

impl Usage {
    fn with_total(mut self) -> Usage {
        self.total = [
            self.blobs,
            self.steps,
            self.layers,
            self.context,
            self.tmp,
            self.cache_mounts,
        ]
        .into_iter()
        .fold(Count::default(), Count::plus);
        self
    }
}

/// What prune keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMode {
    /// Keep tagged images and the build cache (step records, what they reference, context
    /// indexes); remove temp leftovers, unreferenced blobs and layer trees, dead records.
    KeepCache,
    /// Keep only what tagged images need: step records, layer trees, context indexes and
    /// cache mounts go too.
    All,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// What was removed.
    pub removed: Usage,
    /// Problems met that did not stop the prune (a tagged image whose manifest is missing…).
    pub warnings: Vec<String>,
}

/// JSON blobs larger than this are not followed (manifests and indexes are far smaller).
const MAX_JSON: u64 = 16 << 20;

impl Store {
    /// What the store holds, by kind.
    pub fn du(&self) -> Result<Usage, StoreError> {
        let root = self.root();
        let mut usage = Usage::default();
        for_each_entry(&root.join("blobs/sha256"), |name, path| {
            if Digest::parse(name).is_ok() {
                usage.blobs.add(tree_bytes(path));
            }
        })?;
        for_each_entry(&root.join("steps"), |name, path| {
            if key_of(name).is_some() {
                usage.steps.add(tree_bytes(path));
            }
        })?;
        for_each_entry(&root.join("layers"), |name, path| {
            if Digest::parse(name).is_ok() {
                usage.layers.add(tree_bytes(path));
            }
        })?;
        for_each_entry(&root.join("context"), |_, path| {
            usage.context.add(tree_bytes(path))
        })?;
        for_each_entry(&self.tmp_dir(), |_, path| usage.tmp.add(tree_bytes(path)))?;
        for_each_entry(&self.cache_mounts_dir(), |_, path| {
            usage.cache_mounts.add(tree_bytes(path))
        })?;
        Ok(usage.with_total())
    }

    /// Removes what is not reachable (see the module documentation). Needs a store opened
    /// with [`Store::open_exclusive`]. `refs` reports the digests a step record references.
    pub fn prune(
        &self,
        mode: PruneMode,
        refs: impl Fn(&serde_json::Value) -> Vec<Digest>,
    ) -> Result<PruneReport, StoreError> {
        self.require_exclusive("prune")?;
        let root = self.root();
        let mut removed = Usage::default();
        let mut warnings = Vec::new();

        // Mark from tagged images. A damaged images.json stops the prune before anything is
        // removed (it would otherwise look like a store without images, and everything would
        // go).
        let mut roots: Vec<Digest> = Vec::new();
        for (name, manifest, _) in self.images()? {
            if !self.has_blob(&manifest) {
                warnings.push(format!(
                    "image {name}: manifest {manifest} is missing from the store"
                ));
            }
            roots.push(manifest);
        }

        // Temp entries: under the exclusive lock nobody is writing any.
        removed.tmp = clean_tmp(&self.tmp_dir(), true, &mut warnings)?;

        // Step records: keep the live ones and mark what they reference.
        let mut dead_steps = Vec::new();
        for_each_entry(&root.join("steps"), |name, path| {
            if key_of(name).is_none() {
                return;
            }
            let record = match mode {
                PruneMode::All => None,
                PruneMode::KeepCache => fs::read(path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok()),
            };
            let digests = record.map(|record| refs(&record));
            match digests {
                Some(digests)
                    if digests
                        .iter()
                        .all(|d| self.has_blob(d) || self.layer_path(d).is_dir()) =>
                {
                    roots.extend(digests)
                }
                _ => dead_steps.push(path.to_owned()),
            }
        })?;
        for path in dead_steps {
            remove_counted(&path, &mut removed.steps, &mut warnings);
        }

        let mut keep: HashSet<Digest> = HashSet::new();
        while let Some(digest) = roots.pop() {
            if keep.insert(digest) {
                roots.extend(self.json_refs(&digest, &mut warnings));
            }
        }

        // Sweep.
        let w = &mut warnings;
        sweep(&root.join("blobs/sha256"), &mut removed.blobs, w, |name| {
            Digest::parse(name).is_ok_and(|d| !keep.contains(&d))
        })?;
        sweep(&root.join("layers"), &mut removed.layers, w, |name| {
            Digest::parse(name).is_ok_and(|d| mode == PruneMode::All || !keep.contains(&d))
        })?;
        if mode == PruneMode::All {
            sweep(&self.context_dir(), &mut removed.context, w, |_| true)?;
            // Under the exclusive lock no RUN is using a cache mount.
            sweep(
                &self.cache_mounts_dir(),
                &mut removed.cache_mounts,
                w,
                |_| true,
            )?;
        }
        Ok(PruneReport {
            removed: removed.with_total(),
            warnings,
        })
    }

    /// The digests a JSON blob (OCI manifest or index) references; nothing for other blobs.
    fn json_refs(&self, digest: &Digest, warnings: &mut Vec<String>) -> Vec<Digest> {
        let Some(size) = self.blob_size(digest) else {
            return Vec::new();
        };
        if size > MAX_JSON {
            return Vec::new();
        }
        // Cheap sniff before a verified read: layer blobs (gzip, zstd, tar) do not start
        // with '{'.
        let mut first = [0u8; 1];
        let looks_json = fs::File::open(self.blob_file(digest))
            .and_then(|mut f| f.read_exact(&mut first))
            .is_ok_and(|()| first[0] == b'{');
        if !looks_json {
            return Vec::new();
        }
        // A corrupt blob is reported, and still followed if it parses: marking too much is
        // harmless, marking too little deletes what an image may need.
        let bytes = match self.read_blob(digest) {
            Ok(bytes) => bytes,
            Err(e) => {
                warnings.push(e.to_string());
                match fs::read(self.blob_file(digest)) {
                    Ok(bytes) => bytes,
                    Err(_) => return Vec::new(),
                }
            }
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Vec::new();
        };
        let digest_of = |v: &serde_json::Value| {
            v.get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| Digest::parse(d).ok())
        };
        let mut out = Vec::new();
        out.extend(value.get("config").and_then(digest_of));
        for list in ["layers", "manifests"] {
            if let Some(items) = value.get(list).and_then(|l| l.as_array()) {
                out.extend(items.iter().filter_map(digest_of));
            }
        }
        out
    }
}

/// Calls `f(name, path)` for each entry of `dir` with a UTF-8 name; a missing dir is empty.
fn for_each_entry(dir: &Path, mut f: impl FnMut(&str, &Path)) -> Result<(), StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("read directory", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StoreError::io("read directory", dir))?;
        if let Some(name) = entry.file_name().to_str() {
            f(name, &entry.path());
        }
    }
    Ok(())
}

/// Removes the entries of `dir` whose name `doomed` selects, counting them; an entry that
/// cannot be removed is a warning, not the end of the prune.
fn sweep(
    dir: &Path,
    count: &mut Count,
    warnings: &mut Vec<String>,
    doomed: impl Fn(&str) -> bool,
) -> Result<(), StoreError> {
    let mut victims = Vec::new();
    for_each_entry(dir, |name, path| {
        if doomed(name) {
            victims.push(path.to_owned());
        }
    })?;
    for path in victims {
        remove_counted(&path, count, warnings);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ImageMeta;
    use super::*;
    use serde_json::json;

    /// The record format of these tests: {"refs": ["sha256:…", …]}.
    fn refs(record: &serde_json::Value) -> Vec<Digest> {
        record["refs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().and_then(|d| Digest::parse(d).ok()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn layer_tree(store: &Store, diff_id: &Digest, content: &[u8]) {
        let t = store.temp_dir().unwrap();
        fs::write(t.path().join("file"), content).unwrap();
        t.persist(&store.layer_path(diff_id)).unwrap();
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: std::path::PathBuf,
        // The tagged image: index -> manifest -> config + layer.
        index: Digest,
        manifest: Digest,
        config: Digest,
        layer: Digest,
        // Cached by a step record: a layer blob and its tree.
        cached_layer: Digest,
        cached_tree: Digest,
        // Referenced by nothing.
        orphan: Digest,
        orphan_tree: Digest,
        // A record whose blob is gone.
        dead_key: [u8; 32],
        live_key: [u8; 32],
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::open(&root).unwrap();
        let layer = store.put_blob_bytes(&[0x1f, 0x8b, 1, 2, 3]).unwrap();
        let config = store
            .put_blob_bytes(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#)
            .unwrap();
        let manifest = store
            .put_blob_bytes(
                json!({"schemaVersion": 2,
                       "config": {"digest": config, "size": 1},
                       "layers": [{"digest": layer, "size": 5}]})
                .to_string()
                .as_bytes(),
            )
            .unwrap();
        let index = store
            .put_blob_bytes(
                json!({"schemaVersion": 2, "manifests": [{"digest": manifest, "size": 1}]})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        let meta = ImageMeta {
            config,
            platform: "linux/amd64".into(),
            created: String::new(),
        };
        store.tag("app", &index, meta).unwrap();

        let cached_layer = store.put_blob_bytes(b"cached layer blob").unwrap();
        let cached_tree = Digest::of(b"cached tree");
        layer_tree(&store, &cached_tree, b"cached");
        let live_key = [1u8; 32];
        store
            .put_step(&live_key, &json!({"refs": [cached_layer, cached_tree]}))
            .unwrap();

        let orphan = store.put_blob_bytes(b"orphan").unwrap();
        let orphan_tree = Digest::of(b"orphan tree");
        layer_tree(&store, &orphan_tree, b"orphan");
        let dead_key = [2u8; 32];
        store
            .put_step(
                &dead_key,
                &json!({"refs": [Digest::of(b"gone"), cached_tree]}),
            )
            .unwrap();
        // Garbage record and a stale temp file of our own (prune removes all temp entries).
        fs::write(store.step_path(&[3u8; 32]), b"not json").unwrap();
        fs::write(
            root.join("tmp")
                .join(format!("{}-leftover", std::process::id())),
            b"12345",
        )
        .unwrap();
        fs::write(store.context_dir().join("ctx-index"), b"ctx").unwrap();
        Fixture {
            _dir: dir,
            root,
            index,
            manifest,
            config,
            layer,
            cached_layer,
            cached_tree,
            orphan,
            orphan_tree,
            dead_key,
            live_key,
        }
    }

    #[test]
    fn du_adds_up() {
        let f = fixture();
        let store = Store::open(&f.root).unwrap();
        let usage = store.du().unwrap();
        let blob_bytes: u64 = [
            f.index,
            f.manifest,
            f.config,
            f.layer,
            f.cached_layer,
            f.orphan,
        ]
        .iter()
        .map(|d| store.blob_size(d).unwrap())
        .sum();
        assert_eq!(
            usage.blobs,
            Count {
                count: 6,
                bytes: blob_bytes
            }
        );
        let step_bytes: u64 = [f.live_key, f.dead_key, [3u8; 32]]
            .iter()
            .map(|k| fs::metadata(store.step_path(k)).unwrap().len())
            .sum();
        assert_eq!(
            usage.steps,
            Count {
                count: 3,
                bytes: step_bytes
            }
        );
        assert_eq!(
            usage.layers,
            Count {
                count: 2,
                bytes: 12
            }
        );
        assert_eq!(usage.context, Count { count: 1, bytes: 3 });
        assert_eq!(usage.tmp, Count { count: 1, bytes: 5 });
        assert_eq!(usage.total.count, 6 + 3 + 2 + 1 + 1);
        assert_eq!(usage.total.bytes, blob_bytes + step_bytes + 12 + 3 + 5);
    }

    #[test]
    fn prune_needs_the_exclusive_lock() {
        let f = fixture();
        let store = Store::open(&f.root).unwrap();
        let err = store.prune(PruneMode::KeepCache, refs).unwrap_err();
        assert!(matches!(err, StoreError::NotExclusive { .. }), "{err:?}");
        assert!(err.to_string().contains("open_exclusive"));
    }

    #[test]
    fn prune_keeping_the_cache() {
        let f = fixture();
        let store = Store::open_exclusive(&f.root).unwrap();
        let before = store.du().unwrap();
        let report = store.prune(PruneMode::KeepCache, refs).unwrap();
        assert_eq!(report.warnings, Vec::<String>::new());
        let after = store.du().unwrap();

        for kept in [f.index, f.manifest, f.config, f.layer, f.cached_layer] {
            assert!(store.has_blob(&kept), "{kept}");
        }
        assert!(!store.has_blob(&f.orphan));
        assert!(store.layer_dir(&f.cached_tree).is_some());
        assert!(store.layer_dir(&f.orphan_tree).is_none());
        assert_eq!(store.step_keys().unwrap(), vec![f.live_key]);
        assert!(store.get_step::<serde_json::Value>(&f.live_key).is_hit());
        assert_eq!(after.context.count, 1);
        assert_eq!(after.tmp.count, 0);

        assert_eq!(report.removed.blobs.count, 1);
        assert_eq!(report.removed.steps.count, 2); // dead + garbage
        assert_eq!(report.removed.layers, Count { count: 1, bytes: 6 });
        // The temp leftover went already when the store was opened exclusively.
        assert_eq!(
            (before.tmp, report.removed.tmp),
            (Count::default(), Count::default())
        );
        assert_eq!(report.removed.context, Count::default());
        // Freed + left = before.
        assert_eq!(
            report.removed.total.bytes + after.total.bytes,
            before.total.bytes
        );
        assert_eq!(
            report.removed.total.count + after.total.count,
            before.total.count
        );

        // A second prune finds nothing to do.
        let again = store.prune(PruneMode::KeepCache, refs).unwrap();
        assert_eq!(again.removed, Usage::default());
    }

    #[test]
    fn prune_all_keeps_only_tagged_images() {
        let f = fixture();
        let store = Store::open_exclusive(&f.root).unwrap();
        let report = store.prune(PruneMode::All, refs).unwrap();
        for kept in [f.index, f.manifest, f.config, f.layer] {
            assert!(store.has_blob(&kept), "{kept}");
            store.read_blob(&kept).unwrap();
        }
        assert!(!store.has_blob(&f.cached_layer));
        assert!(!store.has_blob(&f.orphan));
        assert_eq!(store.step_keys().unwrap(), Vec::<[u8; 32]>::new());
        let after = store.du().unwrap();
        assert_eq!(after.layers, Count::default());
        assert_eq!(after.context, Count::default());
        assert_eq!(after.blobs.count, 4);
        assert_eq!(report.removed.blobs.count, 2);
        assert_eq!(report.removed.steps.count, 3);
        assert_eq!(report.removed.layers.count, 2);
        assert_eq!(report.removed.context.count, 1);
        assert_eq!(store.resolve("app").unwrap().unwrap().0, f.index);

        // Untag: the next prune removes the image's blobs too.
        store.untag("app").unwrap();
        let report = store.prune(PruneMode::All, refs).unwrap();
        assert_eq!(report.removed.blobs.count, 4);
        assert_eq!(store.du().unwrap().total, Count::default());
    }

    #[test]
    fn prune_survives_damage() {
        let f = fixture();
        let store = Store::open_exclusive(&f.root).unwrap();
        // A corrupt manifest that still parses: reported, and still followed (keeping too
        // much is harmless, keeping too little is not).
        let path = store.blob_file(&f.manifest);
        let mut bytes = fs::read(&path).unwrap();
        bytes.push(b' ');
        fs::write(&path, &bytes).unwrap();
        // A tag whose manifest is gone.
        let meta = ImageMeta {
            config: f.config,
            platform: "linux/amd64".into(),
            created: String::new(),
        };
        store.tag("gone", &f.orphan, meta).unwrap();
        fs::remove_file(store.blob_file(&f.orphan)).unwrap();

        let report = store.prune(PruneMode::KeepCache, refs).unwrap();
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        assert!(report.warnings.iter().any(|w| w.contains("corrupt")));
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("image gone:latest"))
        );
        for kept in [f.index, f.manifest, f.config, f.layer] {
            assert!(store.has_blob(&kept), "{kept}");
        }

        // A damaged images.json stops prune before it removes anything.
        fs::write(store.root().join("images.json"), b"{").unwrap();
        let before = store.du().unwrap();
        assert!(matches!(
            store.prune(PruneMode::All, refs),
            Err(StoreError::Damaged { .. })
        ));
        assert_eq!(store.du().unwrap(), before);
    }
}
