//! `--cache-from` and `--cache-to`: the specs, and import before / export after a build (the
//! format and the transports are `imgbuild_cache::export`).

use super::Prepared;
use super::cache_registry::RegistryCache;
use imgbuild_cache::export::{
    self, CacheTransport, ExportStep, LocalDir, Sources, Stats, StepEntry,
};
use imgbuild_cache::layer::decompress_detect;
use imgbuild_cache::store::{Lookup, Store};
use imgbuild_cache::{Digest, DigestWriter};
use imgbuild_executor::{CachePolicy, StepRecord};
use imgbuild_parser::instructions::{MountType, parse_mount};
use imgbuild_planner::{Op, Step};
use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

/// Where an exported cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=local`: a directory.
    Local(PathBuf),
    /// `type=registry`: a tag in a registry repository.
    Registry(String),
}

impl CacheLocation {
    pub fn transport(&self, store: &Store) -> Result<Box<dyn CacheTransport>, String> {
        Ok(match self {
            CacheLocation::Local(dir) => Box::new(LocalDir::new(dir.clone())),
            CacheLocation::Registry(r) => Box::new(RegistryCache::new(r, store)?),
        })
    }
}

/// What `--cache-to` exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Only the steps of the final image's chain (and the cache mounts they use).
    Min,
    /// Every step of every stage the build ran or hit (the default).
    Max,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheTo {
    pub location: CacheLocation,
    pub mode: CacheMode,
}

/// `key=value,…` (values may not hold commas; paths with commas are not supported).
fn fields(spec: &str) -> Result<Vec<(&str, &str)>, String> {
    spec.split(',')
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.trim(), v))
                .ok_or_else(|| format!("{f:?} is not key=value"))
        })
        .collect()
}

fn unknown_type(t: &str) -> String {
    format!("unknown cache type {t:?} (supported: type=local, type=registry)")
}

/// The `ref=` of a `type=registry` spec.
fn registry_ref(r: Option<&str>, flag_example: &str) -> Result<CacheLocation, String> {
    r.filter(|r| !r.is_empty())
        .map(|r| CacheLocation::Registry(r.to_owned()))
        .ok_or_else(|| format!("missing ref=NAME:TAG ({flag_example})"))
}

/// `--cache-to type=local,dest=DIR[,mode=min|max]`.
pub fn parse_cache_to(spec: &str) -> Result<CacheTo, String> {
    let mut kind = None;
    let mut dest = None;
    let mut reference = None;
    let mut mode = CacheMode::Max;
    for (k, v) in fields(spec)? {
        match k {
            "type" => kind = Some(v),
            "dest" => dest = Some(v),
            "ref" => reference = Some(v),
            "mode" => {
                mode = match v {
                    "min" => CacheMode::Min,
                    "max" => CacheMode::Max,
                    _ => return Err(format!("mode={v:?}: use mode=min or mode=max")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown key {k:?} (type=local takes dest and mode, type=registry ref and \
                     mode)"
                ));
            }
        }
    }
    match kind {
        Some("local") if reference.is_none() => {}
        Some("registry") if dest.is_none() => {
            return Ok(CacheTo {
                location: registry_ref(reference, "type=registry,ref=HOST/NAME:TAG")?,
                mode,
            });
        }
        Some("local") => return Err("type=local takes dest=DIR, not ref=".into()),
        Some("registry") => return Err("type=registry takes ref=NAME:TAG, not dest=".into()),
        Some(t) => return Err(unknown_type(t)),
        None => return Err("missing type= (use type=local,dest=DIR)".into()),
    }
    let dest = dest
        .filter(|d| !d.is_empty())
        .ok_or("missing dest=DIR (type=local,dest=DIR)")?;
    Ok(CacheTo {
        location: CacheLocation::Local(PathBuf::from(dest)),
        mode,
    })
}

/// `--cache-from type=local,src=DIR` (or a path alone: `/…`, `./…`, `../…`).
pub fn parse_cache_from(spec: &str) -> Result<CacheLocation, String> {
    if !spec.contains('=')
        && (spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../"))
    {
        return Ok(CacheLocation::Local(PathBuf::from(spec)));
    }
    let mut kind = None;
    let mut src = None;
    let mut reference = None;
    for (k, v) in fields(spec)? {
        match k {
            "type" => kind = Some(v),
            "src" => src = Some(v),
            "ref" => reference = Some(v),
            _ => {
                return Err(format!(
                    "unknown key {k:?} (type=local takes src, type=registry ref)"
                ));
            }
        }
    }
    match kind {
        Some("local") if reference.is_none() => {}
        Some("registry") if src.is_none() => {
            return registry_ref(reference, "type=registry,ref=HOST/NAME:TAG");
        }
        Some("local") => return Err("type=local takes src=DIR, not ref=".into()),
        Some("registry") => return Err("type=registry takes ref=NAME:TAG, not src=".into()),
        Some(t) => return Err(unknown_type(t)),
        None => return Err("missing type= (use type=local,src=DIR)".into()),
    }
    let src = src
        .filter(|s| !s.is_empty())
        .ok_or("missing src=DIR (type=local,src=DIR)")?;
    Ok(CacheLocation::Local(PathBuf::from(src)))
}

/// A build's cache sources and destinations.
pub struct CacheIo {
    from: Vec<CacheLocation>,
    to: Vec<CacheTo>,
    sources: Sources,
    /// Print what was moved (not with --progress=quiet).
    pub verbose: bool,
}

impl CacheIo {
    /// Parses `--cache-from` and `--cache-to`; the error names the flag and the spec.
    pub fn parse(from: &[String], to: &[String]) -> Result<CacheIo, String> {
        let from = from
            .iter()
            .map(|s| parse_cache_from(s).map_err(|e| format!("--cache-from {s}: {e}")))
            .collect::<Result<_, _>>()?;
        let to = to
            .iter()
            .map(|s| parse_cache_to(s).map_err(|e| format!("--cache-to {s}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(CacheIo {
            from,
            to,
            sources: Sources::none(),
            verbose: true,
        })
    }

    /// Before the build runs: the results the plan needs that the store lacks, and the cache
    /// mounts of the RUN steps that will (probably) run. Problems are warnings: the build
    /// then runs with what it has.
    pub fn import(&mut self, prep: &Prepared) {
        if self.from.is_empty() {
            return;
        }
        let mut transports = Vec::new();
        for l in &self.from {
            match l.transport(&prep.store) {
                Ok(t) => transports.push(t),
                Err(e) => eprintln!("warning: --cache-from: {e}"),
            }
        }
        self.sources = Sources::load(transports);
        for w in &self.sources.warnings {
            eprintln!("warning: --cache-from: {w}");
        }
        let plan = &prep.plan;
        let keys: Vec<[u8; 32]> = plan
            .steps
            .iter()
            .filter(|s| s.layer)
            .map(|s| s.key.0)
            .collect();
        let steps = export::import_steps(&prep.store, &self.sources, &keys, &check_record);
        // Lazily: a cache mount only matters to a step that runs, and a step with a usable
        // record will not (a later export carries the mount over from the source).
        let will_run = |s: &Step| {
            CachePolicy::of(s) != CachePolicy::Reuse
                || !matches!(prep.store.get_step::<StepRecord>(&s.key.0), Lookup::Hit(_))
        };
        let ids = cache_ids(plan.steps.iter().filter(|s| will_run(s)));
        let mounts = export::import_mounts(&prep.store, &self.sources, &ids);
        for w in steps.warnings.iter().chain(&mounts.warnings) {
            eprintln!("warning: --cache-from: {w}");
        }
        if self.verbose && (steps.steps > 0 || mounts.mounts > 0) {
            let mut stats = steps.stats;
            stats.blobs_written += mounts.stats.blobs_written;
            stats.bytes_written += mounts.stats.bytes_written;
            eprintln!(
                "cache: imported {} step results and {} cache mounts ({} blobs, {} bytes)",
                steps.steps, mounts.mounts, stats.blobs_written, stats.bytes_written
            );
        }
    }

    /// After a successful build: each `--cache-to` gets the build's results (per its mode)
    /// and the cache mounts their RUN steps use.
    pub fn export(&self, prep: &Prepared) -> Result<(), String> {
        for to in &self.to {
            let transport = to
                .location
                .transport(&prep.store)
                .map_err(|e| format!("--cache-to: {e}"))?;
            let plan = &prep.plan;
            let chosen: Vec<&Step> = match to.mode {
                CacheMode::Max => plan.steps.iter().collect(),
                CacheMode::Min => plan
                    .chain(plan.target_stage().last)
                    .into_iter()
                    .map(|id| &plan.steps[id])
                    .collect(),
            };
            let mut steps = Vec::new();
            let mut seen = BTreeSet::new();
            for s in chosen.iter().filter(|s| s.layer) {
                if !seen.insert(s.key.0) {
                    continue;
                }
                if let Lookup::Hit(record) = prep.store.get_step::<serde_json::Value>(&s.key.0)
                    && let Ok(parsed) = serde_json::from_value::<StepRecord>(record.clone())
                {
                    steps.push(ExportStep {
                        key: s.key.0,
                        record,
                        blobs: vec![parsed.layer.digest],
                    });
                }
            }
            let ids = cache_ids(chosen.iter().copied());
            let report =
                export::export(&prep.store, transport.as_ref(), &steps, &ids, &self.sources)
                    .map_err(|e| format!("--cache-to: {e}"))?;
            for w in &report.warnings {
                eprintln!("warning: --cache-to: {w}");
            }
            if self.verbose {
                let Stats {
                    blobs_written,
                    bytes_written,
                    blobs_present,
                    blobs_removed,
                    ..
                } = report.stats;
                eprintln!(
                    "cache: exported {} step results and {} cache mounts to {}: {blobs_written} \
                     blobs written ({bytes_written} bytes), {blobs_present} already there, \
                     {blobs_removed} removed",
                    report.steps,
                    report.mounts,
                    transport.describe()
                );
            }
        }
        Ok(())
    }
}

/// The cache ids (`RUN --mount=type=cache`) of `steps`.
fn cache_ids<'a>(steps: impl Iterator<Item = &'a Step>) -> Vec<String> {
    let mut ids = BTreeSet::new();
    for s in steps {
        if let Op::Run(r) = &s.op {
            for raw in &r.mounts {
                let mut identity = |v: &str| -> Result<String, String> { Ok(v.to_owned()) };
                let (m, errors) = parse_mount(raw, Some(&mut identity));
                if errors.is_empty()
                    && m.kind == MountType::Cache
                    && let Some(id) = m.id
                {
                    ids.insert(id);
                }
            }
        }
    }
    ids.into_iter().collect()
}

/// An imported record must be one this imgbuild reads, name the blob imported with it, and
/// its layer must have the recorded diffID: a cache whose index lies would otherwise put a
/// wrong diffID into an image built from cache hits (which never extracts the layer).
fn check_record(store: &Store, entry: &StepEntry) -> Result<(), String> {
    let r: StepRecord = serde_json::from_value(entry.record.clone())
        .map_err(|e| format!("unreadable step record: {e}"))?;
    if !entry
        .blobs
        .iter()
        .any(|b| b.digest == r.layer.digest && b.size == r.layer.size)
    {
        return Err(format!(
            "the record's layer {} is not among its blobs",
            r.layer.digest
        ));
    }
    let blob = store
        .open_blob(&r.layer.digest)
        .map_err(|e| e.to_string())?;
    let (_, mut reader) = decompress_detect(blob).map_err(|e| e.to_string())?;
    let mut w = DigestWriter::new(io::sink());
    io::copy(&mut reader, &mut w).map_err(|e| format!("layer {}: {e}", r.layer.digest))?;
    let diff_id: Digest = w.finish().0;
    if diff_id != r.layer.diff_id {
        return Err(format!(
            "layer {} has diffID {diff_id}, not {} as recorded",
            r.layer.digest, r.layer.diff_id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_to_specs() {
        assert_eq!(
            parse_cache_to("type=local,dest=/c").unwrap(),
            CacheTo {
                location: CacheLocation::Local("/c".into()),
                mode: CacheMode::Max
            }
        );
        assert_eq!(
            parse_cache_to("mode=min,type=local,dest=rel/dir").unwrap(),
            CacheTo {
                location: CacheLocation::Local("rel/dir".into()),
                mode: CacheMode::Min
            }
        );
        for (bad, says) in [
            ("type=s3,dest=/c", "unknown cache type \"s3\""),
            ("type=local", "missing dest"),
            ("type=local,dest=", "missing dest"),
            ("dest=/c", "missing type"),
            ("type=local,dest=/c,mode=all", "mode=min or mode=max"),
            ("type=local,dest=/c,colour=red", "unknown key \"colour\""),
            ("type=local,/c", "not key=value"),
        ] {
            let err = parse_cache_to(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn cache_from_specs() {
        assert_eq!(
            parse_cache_from("type=local,src=/c").unwrap(),
            CacheLocation::Local("/c".into())
        );
        assert_eq!(
            parse_cache_from("./cache").unwrap(),
            CacheLocation::Local("./cache".into())
        );
        for (bad, says) in [
            ("type=s3,bucket=x", "unknown key"),
            ("type=s3", "unknown cache type"),
            ("type=local", "missing src"),
            ("type=local,dest=/c", "unknown key \"dest\""),
            ("cache", "not key=value"),
        ] {
            let err = parse_cache_from(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = CacheIo::parse(&["type=nope".into()], &[]).err().unwrap();
        assert!(err.starts_with("--cache-from type=nope: "), "{err}");
        let err = CacheIo::parse(&[], &["type=local".into()]).err().unwrap();
        assert!(err.starts_with("--cache-to type=local: "), "{err}");
    }
}
