//! Import into the store from exported caches, and export from the store to one.

use super::index::{BlobRef, CacheIndex, MountEntry, StepEntry};
use super::mounts::{self, import_mount, read_manifest};
use super::{CacheTransport, ExportError, Stats};
use crate::Digest;
use crate::store::{Lookup, Store};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

/// The caches a build imports from (`--cache-from`, in order), with their indexes read once.
pub struct Sources {
    list: Vec<(Box<dyn CacheTransport>, CacheIndex)>,
    /// Caches that could not be read (each then counts as empty).
    pub warnings: Vec<String>,
}

impl Sources {
    /// Reads each cache's index. A cache without one is empty; an unreadable one is a
    /// warning (a build never fails because its cache source is missing or damaged).
    pub fn load(transports: Vec<Box<dyn CacheTransport>>) -> Sources {
        let mut list = Vec::new();
        let mut warnings = Vec::new();
        for t in transports {
            match t.get_index() {
                Ok(Some(index)) => list.push((t, index)),
                Ok(None) => warnings.push(format!("{} holds no cache yet", t.describe())),
                Err(e) => warnings.push(format!("{}: {e}; not used", t.describe())),
            }
        }
        Sources { list, warnings }
    }

    pub fn none() -> Sources {
        Sources {
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The first cache that has a result for `key`.
    pub fn step(&self, key: &[u8; 32]) -> Option<(&dyn CacheTransport, &StepEntry)> {
        self.list
            .iter()
            .find_map(|(t, i)| i.step(key).map(|e| (t.as_ref(), e)))
    }

    /// The first cache that has the cache mount `id`.
    pub fn mount(&self, id: &str) -> Option<(&dyn CacheTransport, &MountEntry)> {
        self.list
            .iter()
            .find_map(|(t, i)| i.cache_mounts.get(id).map(|e| (t.as_ref(), e)))
    }
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub steps: usize,
    pub mounts: usize,
    pub stats: Stats,
    /// Results that were found but not imported (damaged blobs, …): each a miss.
    pub warnings: Vec<String>,
}

/// Copies `blob` from `source` into the store unless it is there, verifying its digest on
/// the way (a mismatch stores nothing). Returns whether it copied.
fn fetch_blob(
    store: &Store,
    source: &dyn CacheTransport,
    blob: &BlobRef,
) -> Result<bool, ExportError> {
    if store.blob_size(&blob.digest) == Some(blob.size) {
        return Ok(false);
    }
    let mut reader = source
        .get_blob(&blob.digest)
        .map_err(ExportError::at(source))?;
    let mut writer = store.blob_writer()?;
    // One byte more than expected is enough to tell a longer blob.
    io::copy(&mut (&mut reader).take(blob.size + 1), &mut writer)
        .map_err(ExportError::at(source))?;
    if writer.len() != blob.size {
        return Err(ExportError::Invalid(format!(
            "{}: blob {} has {}{} bytes, not {} as indexed; it was not used",
            source.describe(),
            blob.digest,
            if writer.len() > blob.size {
                "more than "
            } else {
                ""
            },
            writer.len().min(blob.size),
            blob.size
        )));
    }
    writer.finish_expecting(&blob.digest).map_err(|e| match e {
        crate::store::StoreError::DigestMismatch { found, .. } => {
            ExportError::corrupt(source, blob, found)
        }
        e => e.into(),
    })?;
    Ok(true)
}

/// Brings in the results for `keys` the store lacks (no record, an unreadable one, or one
/// whose blobs are gone) from the first source that has them: blobs first, each verified,
/// then `check` on the record (the caller's reading of it: does it name these blobs, does
/// its layer have the recorded diffID), then the record. Anything that fails is a warning:
/// the step is then a plain miss.
pub fn import_steps(
    store: &Store,
    sources: &Sources,
    keys: &[[u8; 32]],
    check: &(dyn Fn(&Store, &StepEntry) -> Result<(), String> + Sync),
) -> ImportReport {
    let unique: BTreeSet<[u8; 32]> = keys.iter().copied().collect();
    let results: Vec<(Stats, Result<bool, String>)> = unique
        .par_iter()
        .filter_map(|key| {
            let (source, entry) = sources.step(key)?;
            let present = |b: &BlobRef| store.blob_size(&b.digest) == Some(b.size);
            if matches!(store.get_step::<serde_json::Value>(key), Lookup::Hit(_))
                && entry.blobs.iter().all(present)
            {
                return None;
            }
            let mut stats = Stats::default();
            let done = (|| {
                for b in &entry.blobs {
                    if fetch_blob(store, source, b).map_err(|e| e.to_string())? {
                        stats.blobs_written += 1;
                        stats.bytes_written += b.size;
                    } else {
                        stats.blobs_present += 1;
                    }
                }
                check(store, entry)?;
                store
                    .put_step(key, &entry.record)
                    .map_err(|e| e.to_string())?;
                Ok(true)
            })();
            let done = done.map_err(|e: String| {
                format!(
                    "cached result {}: {e}; the step runs",
                    &hex::encode(key)[..12]
                )
            });
            Some((stats, done))
        })
        .collect();
    let mut report = ImportReport::default();
    for (stats, r) in results {
        report.stats.add(&stats);
        match r {
            Ok(_) => report.steps += 1,
            Err(w) => report.warnings.push(w),
        }
    }
    report
}

/// Brings in the cache mounts `ids` the store has none of, from the first source that has
/// them. A damaged one is a warning: the cache mount then starts empty.
pub fn import_mounts(store: &Store, sources: &Sources, ids: &[String]) -> ImportReport {
    let unique: BTreeSet<&String> = ids.iter().collect();
    let results: Vec<(Stats, Result<bool, String>)> = unique
        .par_iter()
        .filter_map(|id| {
            if store.cache_mount_path(id).join("0").is_dir() {
                return None;
            }
            let (source, entry) = sources.mount(id)?;
            let mut stats = Stats::default();
            let r = import_mount(store, source, id, entry, &mut stats)
                .map_err(|e| format!("cache mount {id:?}: {e}; it starts empty"));
            Some((stats, r))
        })
        .collect();
    let mut report = ImportReport::default();
    for (stats, r) in results {
        report.stats.add(&stats);
        match r {
            Ok(true) => report.mounts += 1,
            Ok(false) => {}
            Err(w) => report.warnings.push(w),
        }
    }
    report
}

/// A step result to export: its key, its record as the store holds it, and the blobs it needs.
#[derive(Clone, Debug)]
pub struct ExportStep {
    pub key: [u8; 32],
    pub record: serde_json::Value,
    pub blobs: Vec<Digest>,
}

/// What an export did.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub steps: usize,
    pub mounts: usize,
    pub stats: Stats,
    pub warnings: Vec<String>,
}

/// Copies a blob from the store to `dest` unless it has it. Verified as it is read: a
/// damaged store blob fails the copy and is not exported.
fn push_blob(
    store: &Store,
    dest: &dyn CacheTransport,
    blob: &BlobRef,
) -> Result<Stats, ExportError> {
    put_unless_present(dest, blob, || Ok(Box::new(store.open_blob(&blob.digest)?)))
}

/// Copies a blob from one cache to another unless the destination has it.
fn relay_blob(
    from: &dyn CacheTransport,
    dest: &dyn CacheTransport,
    blob: &BlobRef,
) -> Result<Stats, ExportError> {
    put_unless_present(dest, blob, || {
        from.get_blob(&blob.digest).map_err(ExportError::at(from))
    })
}

/// Writes `blob` to `dest` from what `open` reads, unless `dest` has it already.
fn put_unless_present<'a>(
    dest: &dyn CacheTransport,
    blob: &BlobRef,
    open: impl FnOnce() -> Result<Box<dyn Read + Send + 'a>, ExportError>,
) -> Result<Stats, ExportError> {
    let mut stats = Stats::default();
    if dest.has_blob(&blob.digest).map_err(ExportError::at(dest))? == Some(blob.size) {
        stats.blobs_present = 1;
        return Ok(stats);
    }
    let mut reader = open()?;
    dest.put_blob(&blob.digest, blob.size, &mut reader)
        .map_err(ExportError::at(dest))?;
    stats.blobs_written = 1;
    stats.bytes_written = blob.size;
    Ok(stats)
}

/// Exports `steps` and the cache mounts `mounts` to `dest`, replacing its index; then removes
/// the blobs the new index does not reference. A cache mount the store does not have (it was
/// not imported because no step that uses it ran) keeps the entry `dest` or a source has for
/// it, so the cache does not lose it.
pub fn export(
    store: &Store,
    dest: &dyn CacheTransport,
    steps: &[ExportStep],
    mounts: &[String],
    sources: &Sources,
) -> Result<ExportReport, ExportError> {
    let _guard = dest.begin_export().map_err(ExportError::at(dest))?;
    let mut report = ExportReport::default();
    let old = match dest.get_index() {
        Ok(i) => i,
        // A damaged index is replaced; one of another version is not ours to overwrite.
        Err(e)
            if e.kind() == io::ErrorKind::InvalidData
                && !e.to_string().contains("cache index version") =>
        {
            report
                .warnings
                .push(format!("{}: {e}; writing a new one", dest.describe()));
            None
        }
        Err(e) => return Err(ExportError::at(dest)(e)),
    };
    let mut index = CacheIndex::default();

    // Step results, their blobs copied in parallel.
    let mut entries: BTreeMap<[u8; 32], StepEntry> = BTreeMap::new();
    for s in steps {
        let mut blobs = Vec::with_capacity(s.blobs.len());
        for d in &s.blobs {
            match store.blob_size(d) {
                Some(size) => blobs.push(BlobRef { digest: *d, size }),
                None => {
                    report.warnings.push(format!(
                        "step {}: blob {d} is not in the store; not exported",
                        &hex::encode(s.key)[..12]
                    ));
                    break;
                }
            }
        }
        if blobs.len() == s.blobs.len() {
            entries.insert(
                s.key,
                StepEntry {
                    record: s.record.clone(),
                    blobs,
                },
            );
        }
    }
    let wanted: BTreeSet<BlobRef> = entries.values().flat_map(|e| e.blobs.clone()).collect();
    let copied: Vec<Stats> = wanted
        .par_iter()
        .map(|b| push_blob(store, dest, b))
        .collect::<Result<_, _>>()?;
    for s in &copied {
        report.stats.add(s);
    }
    report.steps = entries.len();
    for (key, e) in entries {
        index.put_step(&key, e);
    }

    // Cache mounts.
    let unique: BTreeSet<&String> = mounts.iter().collect();
    for id in unique {
        let previous = old
            .as_ref()
            .and_then(|o| o.cache_mounts.get(id.as_str()))
            .and_then(|e| read_manifest(dest, e).ok());
        let entry = match store.existing_cache_mount(id)? {
            Some(held) => {
                mounts::export_mount(held.path(), id, dest, previous.as_ref(), &mut report.stats)?
            }
            None => {
                let kept = old.as_ref().and_then(|o| o.cache_mounts.get(id.as_str()));
                match (kept, sources.mount(id)) {
                    (Some(e), _) if all_present(dest, e)? => e.clone(),
                    (_, Some((from, e))) => {
                        for b in std::iter::once(&e.manifest).chain(&e.blobs) {
                            report.stats.add(&relay_blob(from, dest, b)?);
                        }
                        e.clone()
                    }
                    _ => continue,
                }
            }
        };
        index.cache_mounts.insert(id.clone(), entry);
        report.mounts += 1;
    }

    dest.put_index(&index).map_err(ExportError::at(dest))?;

    // Only now, with the new index in place, what it does not reference can go.
    let keep = index.referenced();
    for d in dest.list_blobs().map_err(ExportError::at(dest))? {
        if !keep.contains_key(&d) {
            dest.delete_blob(&d).map_err(ExportError::at(dest))?;
            report.stats.blobs_removed += 1;
        }
    }
    Ok(report)
}

fn all_present(dest: &dyn CacheTransport, e: &MountEntry) -> Result<bool, ExportError> {
    for b in std::iter::once(&e.manifest).chain(&e.blobs) {
        if dest.has_blob(&b.digest).map_err(ExportError::at(dest))? != Some(b.size) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::LocalDir;
    use super::*;
    use std::fs;

    fn step(store: &Store, key: u8, content: &[u8]) -> ExportStep {
        let d = store.put_blob_bytes(content).unwrap();
        let record = serde_json::json!({"layer": {"digest": d.to_string()}, "n": key});
        store.put_step(&[key; 32], &record).unwrap();
        ExportStep {
            key: [key; 32],
            record,
            blobs: vec![d],
        }
    }

    fn ok(_: &Store, _: &StepEntry) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn export_then_import_on_a_fresh_store() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("a")).unwrap();
        let steps = vec![step(&store, 1, b"one"), step(&store, 2, b"two")];
        let mut init = |p: &std::path::Path| fs::write(p.join("warm"), b"from a");
        drop(
            store
                .cache_mount("/c", crate::store::CacheSharing::Shared, &|| {}, &mut init)
                .unwrap(),
        );
        let cache = LocalDir::new(d.path().join("cache"));
        let r = export(&store, &cache, &steps, &["/c".into()], &Sources::none()).unwrap();
        assert_eq!((r.steps, r.mounts), (2, 1));
        // Two layers, the manifest and one pack.
        assert_eq!(r.stats.blobs_written, 4);

        // Again, unchanged: nothing written, nothing removed.
        let r = export(&store, &cache, &steps, &["/c".into()], &Sources::none()).unwrap();
        assert_eq!((r.stats.blobs_written, r.stats.blobs_removed), (0, 0));
        assert_eq!(r.stats.blobs_present, 4);

        let fresh = Store::open(&d.path().join("b")).unwrap();
        let sources = Sources::load(vec![Box::new(cache.clone())]);
        assert!(sources.warnings.is_empty());
        let r = import_steps(&fresh, &sources, &[[1; 32], [2; 32], [3; 32]], &ok);
        assert_eq!((r.steps, r.stats.blobs_written), (2, 2));
        assert_eq!(
            fresh.get_step::<serde_json::Value>(&[1; 32]).hit(),
            Some(steps[0].record.clone())
        );
        assert_eq!(fresh.read_blob(&steps[1].blobs[0]).unwrap(), b"two");
        // Present now: nothing to do.
        let r = import_steps(&fresh, &sources, &[[1; 32]], &ok);
        assert_eq!(r.steps, 0);
        let r = import_mounts(&fresh, &sources, &["/c".into(), "/other".into()]);
        assert_eq!(r.mounts, 1);
        assert_eq!(
            fs::read(fresh.cache_mount_path("/c").join("0/warm")).unwrap(),
            b"from a"
        );

        // Only step 1 now: step 2's blob goes. The cache mount `fresh` did not use (not in
        // its store) is carried over from the index.
        let empty = Store::open(&d.path().join("c")).unwrap();
        let one = vec![step(&empty, 1, b"one")];
        let r = export(&empty, &cache, &one, &["/c".into()], &Sources::none()).unwrap();
        assert_eq!((r.steps, r.mounts, r.stats.blobs_removed), (1, 1, 1));
        assert!(!cache.blob_path(&steps[1].blobs[0]).exists());
        let index = cache.get_index().unwrap().unwrap();
        assert_eq!(index.steps.len(), 1);
        assert_eq!(index.referenced().len(), cache.list_blobs().unwrap().len());
    }

    #[test]
    fn damaged_blobs_are_misses_and_nothing_is_stored() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("a")).unwrap();
        let steps = vec![
            step(&store, 1, b"good layer"),
            step(&store, 2, b"bad layer"),
        ];
        let cache = LocalDir::new(d.path().join("cache"));
        export(&store, &cache, &steps, &[], &Sources::none()).unwrap();
        let bad = cache.blob_path(&steps[1].blobs[0]);
        fs::write(&bad, b"bad layeR").unwrap();

        let fresh = Store::open(&d.path().join("b")).unwrap();
        let sources = Sources::load(vec![Box::new(cache.clone())]);
        let r = import_steps(&fresh, &sources, &[[1; 32], [2; 32]], &ok);
        assert_eq!(r.steps, 1);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("corrupt"), "{:?}", r.warnings);
        assert!(matches!(
            fresh.get_step::<serde_json::Value>(&[2; 32]),
            Lookup::Miss
        ));
        assert!(!fresh.has_blob(&steps[1].blobs[0]));
        assert_eq!(fs::read_dir(fresh.root().join("tmp")).unwrap().count(), 0);

        // Truncated, and longer than indexed: the same.
        for content in [&b"bad"[..], b"bad layer and more"] {
            fs::write(&bad, content).unwrap();
            let r = import_steps(&fresh, &sources, &[[2; 32]], &ok);
            assert_eq!((r.steps, r.warnings.len()), (0, 1), "{:?}", r.warnings);
        }
        // A check that refuses the record: a miss, too.
        fs::write(&bad, b"bad layer").unwrap();
        let refuse = |_: &Store, _: &StepEntry| Err("no".to_string());
        let r = import_steps(&fresh, &sources, &[[2; 32]], &refuse);
        assert_eq!(r.steps, 0);
        assert!(matches!(
            fresh.get_step::<serde_json::Value>(&[2; 32]),
            Lookup::Miss
        ));

        // A missing or damaged index is a warning, not an error.
        let nowhere = Sources::load(vec![Box::new(LocalDir::new(d.path().join("none")))]);
        assert_eq!(nowhere.warnings.len(), 1);
        fs::write(d.path().join("cache/index.json"), b"{").unwrap();
        let damaged = Sources::load(vec![Box::new(cache.clone())]);
        assert!(damaged.step(&[1; 32]).is_none());
        assert_eq!(damaged.warnings.len(), 1);
        // …and an export replaces it.
        let r = export(&store, &cache, &steps, &[], &Sources::none()).unwrap();
        assert_eq!(r.warnings.len(), 1);
        assert!(cache.get_index().unwrap().is_some());
    }
}
