//! The executor: runs a [`Plan`] against the store.
//!
//! Each layer step is looked up by its key first; only a miss is executed. A step's result is a
//! layer blob plus a step record (`steps/<key>.json`) naming it, both written atomically by the
//! store, so a build killed at any point leaves a store the next build can trust.
//!
//! Architecture invariant: the only crate that spawns processes or mounts (RUN, from the next
//! milestone). What layers contain depends only on the step's keyed inputs: file contents,
//! modes, the epoch — never the wall clock, the host's user names, or the context's mtimes.

pub mod chmod;
mod copy;
mod image;
pub mod rootfs;
mod run;
pub mod sandbox;
pub mod userdb;

pub use image::{ImageOutput, assemble, rfc3339};

use imgbuild_cache::context::ContextSnapshot;
use imgbuild_cache::layer::{
    Compression, Entry, ExtractMode, ExtractOptions, LayerOptions, LayerWriter, decompress_detect,
    extract,
};
use imgbuild_cache::oci::{ImageConfig as OciConfig, Manifest};
use imgbuild_cache::store::{Lookup, Store};
use imgbuild_cache::{Digest, DigestWriter};
use imgbuild_planner::{Op, Plan, Step};
use rootfs::RootFs;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A layer as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// What `steps/<key>.json` holds for a layer step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub layer: LayerRecord,
    /// What the key was computed from (for `plan --explain`).
    #[serde(default)]
    pub inputs: Vec<(String, String)>,
}

/// The digests a step record keeps alive (for prune).
pub fn record_refs(record: &serde_json::Value) -> Vec<Digest> {
    let layer = &record["layer"];
    ["digest", "diff_id"]
        .iter()
        .filter_map(|k| layer[k].as_str().and_then(|s| Digest::parse(s).ok()))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{step}: {message}")]
    Step { step: String, message: String },
    #[error(transparent)]
    Store(#[from] imgbuild_cache::store::StoreError),
    #[error("{0}")]
    Other(String),
}

impl ExecError {
    fn step(step: &Step, message: impl Into<String>) -> ExecError {
        ExecError::Step {
            step: step.created_by.clone(),
            message: message.into(),
        }
    }
}

/// Build-wide settings that change layer bytes.
#[derive(Clone, Copy, Debug)]
pub struct ExecOptions {
    /// `SOURCE_DATE_EPOCH`, default 0: mtimes in layers are clamped to it, and it is the
    /// image's `created` time.
    pub epoch: u64,
    pub compression: Compression,
}

impl Default for ExecOptions {
    fn default() -> ExecOptions {
        ExecOptions {
            epoch: 0,
            compression: Compression::Zstd,
        }
    }
}

/// How a step went, for progress output and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepState {
    Cached,
    Done,
}

/// Progress reporting; implemented by the CLI (plain lines, a live TTY view, or nothing).
pub trait Progress: Sync {
    fn started(&self, step: &Step);
    fn finished(&self, step: &Step, state: StepState, took: Duration);
    fn note(&self, message: &str);
    /// A line a RUN printed.
    fn output(&self, _step: &Step, _line: &str) {}
}

/// A progress sink that prints nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn started(&self, _: &Step) {}
    fn finished(&self, _: &Step, _: StepState, _: Duration) {}
    fn note(&self, _: &str) {}
}

/// The result of a build.
#[derive(Clone, Debug)]
pub struct Built {
    pub manifest: Digest,
    pub manifest_size: u64,
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    pub cached: usize,
    pub executed: usize,
}

pub struct Executor<'a> {
    pub store: &'a Store,
    pub plan: &'a Plan,
    /// The build context (needed when a step copies from it).
    pub context: Option<&'a ContextSnapshot>,
    pub options: ExecOptions,
    pub progress: &'a dyn Progress,
    /// Layer steps' results by step id.
    results: Mutex<HashMap<usize, LayerRecord>>,
}

impl<'a> Executor<'a> {
    pub fn new(
        store: &'a Store,
        plan: &'a Plan,
        context: Option<&'a ContextSnapshot>,
        options: ExecOptions,
        progress: &'a dyn Progress,
    ) -> Executor<'a> {
        Executor {
            store,
            plan,
            context,
            options,
            progress,
            results: Mutex::new(HashMap::new()),
        }
    }

    /// Runs every step (cache hits are not re-run) and assembles the target's image.
    pub fn run(&self) -> Result<Built, ExecError> {
        let (mut cached, mut executed) = (0, 0);
        for id in self.plan.order() {
            let step = &self.plan.steps[id];
            if !step.layer {
                continue;
            }
            let start = Instant::now();
            if let Some(rec) = self.lookup(step) {
                self.results.lock().unwrap().insert(id, rec);
                cached += 1;
                self.progress
                    .finished(step, StepState::Cached, start.elapsed());
                continue;
            }
            self.progress.started(step);
            let layer = self.execute(step)?;
            self.store.put_step(
                &step.key.0,
                &StepRecord {
                    layer: layer.clone(),
                    inputs: step.inputs.clone(),
                },
            )?;
            self.results.lock().unwrap().insert(id, layer);
            executed += 1;
            self.progress
                .finished(step, StepState::Done, start.elapsed());
        }
        let target = self.plan.target_stage();
        let layers = self.chain_layers(target.last)?;
        let out = image::assemble(self.store, self.plan, target, &layers, self.options.epoch)?;
        Ok(Built {
            manifest: out.manifest,
            manifest_size: out.manifest_size,
            config: out.config,
            layers,
            cached,
            executed,
        })
    }

    /// A usable cached result: the record parses, and its blob is in the store with the
    /// recorded size and content. The blob is read and hashed in full: a size check alone
    /// misses a flipped byte, and a damaged layer must be a miss (the step runs again and its
    /// new blob replaces the damaged one), never a layer handed on to the image.
    fn lookup(&self, step: &Step) -> Option<LayerRecord> {
        use imgbuild_cache::store::StoreError;
        let record = match self.store.get_step::<StepRecord>(&step.key.0) {
            Lookup::Hit(r) => r.layer,
            Lookup::Unusable(e) => {
                self.progress
                    .note(&format!("ignoring a damaged cache record: {e}"));
                return None;
            }
            Lookup::Miss => return None,
        };
        let digest = record.digest;
        let damaged = |why: String| {
            let what = step.created_by.lines().next().unwrap_or_default();
            self.progress.note(&format!(
                "ignoring the cached result of `{what}`: its layer blob {digest} {why}; \
                 running the step again"
            ));
            None
        };
        match self.store.blob_size(&digest) {
            // Pruned, or never stored: a plain miss.
            None => return None,
            Some(n) if n != record.size => {
                return damaged(format!("has {n} bytes, not {} as recorded", record.size));
            }
            Some(_) => {}
        }
        // Hashing every cached layer on every build would make a no-op rebuild cost as much
        // as reading all its layers; a blob written or modified after its record is the one
        // that needs it (damage on disk that keeps the mtime is caught when the blob is read:
        // every read verifies).
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let blob_changed = match (
            modified(&self.store.blob_file(&digest)),
            modified(&self.store.step_path(&step.key.0)),
        ) {
            (Some(b), Some(r)) => b > r,
            _ => true,
        };
        if !blob_changed {
            return Some(record);
        }
        match self.store.verify_blob(&digest) {
            Ok(_) => Some(record),
            Err(StoreError::MissingBlob { .. }) => None,
            Err(StoreError::Corrupt { path, found, .. }) => damaged(format!(
                "({}) is corrupt: its content hashes to {found}",
                path.display()
            )),
            Err(e) => damaged(format!("cannot be read ({e})")),
        }
    }

    fn execute(&self, step: &Step) -> Result<LayerRecord, ExecError> {
        let parent = step.parent.expect("layer steps have a parent");
        let entries = match &step.op {
            Op::Copy(c) => {
                let below = if c.link {
                    RootFs::default()
                } else {
                    self.rootfs(parent)?
                };
                let source = match &c.source {
                    imgbuild_planner::CopySource::Context => copy::Source::Context(
                        self.context
                            .ok_or_else(|| ExecError::step(step, "no build context"))?,
                    ),
                    imgbuild_planner::CopySource::Stage(si) => {
                        let last = self.plan.stages[*si]
                            .as_ref()
                            .map(|s| s.last)
                            .ok_or_else(|| ExecError::step(step, "source stage not planned"))?;
                        copy::Source::Fs(self.rootfs(last)?)
                    }
                    imgbuild_planner::CopySource::Image { .. } => {
                        let last = *step.deps.first().unwrap_or(&parent);
                        copy::Source::Fs(self.image_rootfs(step, last)?)
                    }
                };
                let scratch = self.store.temp_dir()?;
                let remote = |digest: &str| self.remote_content(digest);
                copy::entries(
                    c,
                    &source,
                    &below,
                    self.options.epoch,
                    scratch.path(),
                    &remote,
                )
                .map_err(|e| ExecError::step(step, e))
                .and_then(|entries| {
                    let layer = self.write_layer(step, entries);
                    drop(scratch);
                    layer
                })?
            }
            Op::Mkdir { path, user } => {
                let below = self.rootfs(parent)?;
                let entries = copy::mkdir_entries(path, user, &below, self.options.epoch)
                    .map_err(|e| ExecError::step(step, e))?;
                self.write_layer(step, entries)?
            }
            Op::Run(r) => {
                let layers = self.chain_layers(parent)?;
                let mut dirs = Vec::with_capacity(layers.len());
                for l in &layers {
                    dirs.push(self.extracted(l)?);
                }
                let below = RootFs::new(dirs.clone());
                let scratch = self.store.temp_dir()?;
                let out = |line: &str| self.progress.output(step, line);
                let entries = run::run(step, r, &dirs, &below, scratch.path(), &out)
                    .map_err(|e| ExecError::step(step, e))?;
                let layer = self.write_layer(step, entries);
                drop(scratch);
                layer?
            }
            Op::Scratch | Op::Image { .. } | Op::Stage(_) | Op::Meta => {
                unreachable!("only layer steps are executed")
            }
        };
        Ok(entries)
    }

    fn write_layer(&self, step: &Step, entries: Vec<Entry>) -> Result<LayerRecord, ExecError> {
        let blob = self.store.blob_writer()?;
        let mut w = LayerWriter::new(
            blob,
            LayerOptions {
                compression: self.options.compression,
                epoch: self.options.epoch,
            },
        );
        w.extend(entries)
            .map_err(|e| ExecError::step(step, e.to_string()))?;
        let (info, blob) = w
            .finish_into_inner()
            .map_err(|e| ExecError::step(step, e.to_string()))?;
        let (digest, size) = blob.finish()?;
        debug_assert_eq!(digest, info.digest);
        Ok(LayerRecord {
            diff_id: info.diff_id,
            digest,
            size,
            media_type: info.media_type.to_owned(),
        })
    }

    /// The blob an `ADD <url>` downloaded while the build was planned, checked against its
    /// digest before its bytes go into a layer.
    fn remote_content(&self, digest: &str) -> Result<PathBuf, String> {
        let d = Digest::parse(digest).map_err(|e| e.to_string())?;
        let mut blob = self.store.open_blob(&d).map_err(|e| e.to_string())?;
        io::copy(&mut blob, &mut io::sink())
            .map_err(|e| format!("the downloaded file {d}: {e}"))?;
        Ok(self.store.blob_file(&d))
    }

    /// The layers of the image a step's chain has built, bottom first.
    pub fn chain_layers(&self, last: usize) -> Result<Vec<LayerRecord>, ExecError> {
        let mut out = Vec::new();
        for id in self.plan.chain(last) {
            let step = &self.plan.steps[id];
            match &step.op {
                Op::Image { manifest, .. } => out.extend(self.image_layers(step, manifest)?),
                _ if step.layer => {
                    let rec = self.results.lock().unwrap().get(&id).cloned();
                    out.push(rec.ok_or_else(|| {
                        ExecError::step(
                            step,
                            "internal error: a layer was used before it was built",
                        )
                    })?);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// A base image's layers from its manifest and config in the store.
    fn image_layers(&self, step: &Step, manifest: &str) -> Result<Vec<LayerRecord>, ExecError> {
        let md = Digest::parse(manifest).map_err(|e| ExecError::step(step, e.to_string()))?;
        let m: Manifest = serde_json::from_slice(&self.store.read_blob(&md)?)
            .map_err(|e| ExecError::step(step, format!("bad manifest {md}: {e}")))?;
        let c: OciConfig = serde_json::from_slice(&self.store.read_blob(&m.config.digest)?)
            .map_err(|e| ExecError::step(step, format!("bad image config: {e}")))?;
        if c.rootfs.diff_ids.len() != m.layers.len() {
            return Err(ExecError::step(
                step,
                format!(
                    "image {md} is inconsistent: {} layers but {} diff_ids",
                    m.layers.len(),
                    c.rootfs.diff_ids.len()
                ),
            ));
        }
        Ok(m.layers
            .iter()
            .zip(&c.rootfs.diff_ids)
            .map(|(l, d)| LayerRecord {
                diff_id: *d,
                digest: l.digest,
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect())
    }

    /// The filesystem after step `last`, over extracted layers.
    fn rootfs(&self, last: usize) -> Result<RootFs, ExecError> {
        let layers = self.chain_layers(last)?;
        let mut dirs = Vec::with_capacity(layers.len());
        for l in &layers {
            dirs.push(self.extracted(l)?);
        }
        Ok(RootFs::new(dirs))
    }

    /// The filesystem of the image a `COPY --from=image` names.
    fn image_rootfs(&self, step: &Step, _: usize) -> Result<RootFs, ExecError> {
        let Op::Copy(c) = &step.op else {
            unreachable!()
        };
        let imgbuild_planner::CopySource::Image { manifest, .. } = &c.source else {
            unreachable!()
        };
        let mut dirs = Vec::new();
        for l in self.image_layers(step, manifest)? {
            dirs.push(self.extracted(&l)?);
        }
        Ok(RootFs::new(dirs))
    }

    /// The directory a layer is extracted in, extracting it once (whiteouts kept as marker
    /// files: [`RootFs`] applies them when reading).
    fn extracted(&self, layer: &LayerRecord) -> Result<PathBuf, ExecError> {
        if let Some(d) = self.store.layer_dir(&layer.diff_id) {
            return Ok(d);
        }
        let tmp = self.store.temp_dir()?;
        let blob = self.store.open_blob(&layer.digest)?;
        let (_, reader) = decompress_detect(blob).map_err(|e| {
            ExecError::Other(format!("layer {}: cannot decompress: {e}", layer.digest))
        })?;
        // Check the uncompressed stream against the diffID while extracting.
        let mut hashing = HashingReader {
            inner: reader,
            digest: DigestWriter::new(io::sink()),
        };
        // As root, layers are extracted with overlayfs's own whiteouts, so the same trees are
        // RUN's overlay lower dirs; without privileges, whiteouts stay marker files.
        let options = ExtractOptions {
            mode: if rustix::process::geteuid().is_root() {
                ExtractMode::Overlay
            } else {
                ExtractMode::Plain
            },
            ..ExtractOptions::default()
        };
        extract(&mut hashing, tmp.path(), &options)
            .map_err(|e| ExecError::Other(format!("layer {}: {e}", layer.digest)))?;
        io::copy(&mut hashing, &mut io::sink())
            .map_err(|e| ExecError::Other(format!("layer {}: {e}", layer.digest)))?;
        let (got, _, _) = hashing.digest.finish();
        if got != layer.diff_id {
            return Err(ExecError::Other(format!(
                "layer {}: its content has diffID {got}, not {} as recorded",
                layer.digest, layer.diff_id
            )));
        }
        tmp.persist(&self.store.layer_path(&layer.diff_id))?;
        Ok(self.store.layer_path(&layer.diff_id))
    }
}

/// Digests what is read through it.
struct HashingReader<R> {
    inner: R,
    digest: DigestWriter<io::Sink>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        io::Write::write_all(&mut self.digest, &buf[..n])?;
        Ok(n)
    }
}
