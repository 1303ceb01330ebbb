//! The executor: runs a [`Plan`] against the store.
//!
//! Each layer step is looked up by its key first; only a miss is executed. A step's result is a
//! layer blob plus a step record (`steps/<key>.json`) naming it, both written atomically by the
//! store, so a build killed at any point leaves a store the next build can trust.
//!
//! Steps run in parallel ([`schedule`]): every lookup is done first, then each step is decided
//! as soon as its inputs are done — a hit when its record is usable, its cache policy allows
//! it and it was built on the very layers this build has below it (see [`StepRecord::base`]),
//! else a run on the pool.
//!
//! Architecture invariant: the only crate that spawns processes or mounts (RUN, from the next
//! milestone). What layers contain depends only on the step's keyed inputs: file contents,
//! modes, the epoch — never the wall clock, the host's user names, or the context's mtimes.

pub mod cancel;
pub mod chmod;
mod copy;
mod image;
mod mounts;
pub mod rootfs;
mod run;
pub mod sandbox;
mod schedule;
pub mod trace;
mod treediff;
pub mod unikernel;
pub mod userdb;
pub mod userns;

pub use schedule::{Outcome, Timing};

pub use image::{ImageOutput, assemble, rfc3339};
pub use mounts::{SecretSource, Session};

use imgbuild_cache::context::ContextSnapshot;
use imgbuild_cache::layer::{
    Compression, Entry, ExtractMode, ExtractOptions, LayerOptions, LayerWriter, decompress_detect,
    extract,
};
use imgbuild_cache::oci::{ImageConfig as OciConfig, Manifest};
use imgbuild_cache::store::{Lookup, Store};
use imgbuild_cache::{Digest, DigestWriter};
use imgbuild_planner::{Op, Plan, Step};
use rayon::prelude::*;
use rootfs::RootFs;
use schedule::{Panicked, Ready};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// A digest of the diffIDs the layer was made on top of: the layers of the step's parent
    /// chain (not for `COPY --link`, whose layer does not depend on them) and of each dep's
    /// chain. The record is reused only when this build has the same layers there: a key
    /// names the inputs, but a step that re-ran under `--cache=never`/`ttl` (or after damage)
    /// can make a different layer under the same key, and everything built on the old one
    /// must then run again. A record without it (older imgbuild) is never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Digest>,
    /// When the result was made: milliseconds since 1970, wall clock (for
    /// `RUN --cache=ttl=…`; it never enters a key, a layer or an image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_ms: Option<u64>,
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
    Step {
        step: String,
        message: String,
        /// The instruction in the Dockerfile, for a diagnostic that points at it.
        span: imgbuild_parser::Span,
    },
    #[error(transparent)]
    Store(#[from] imgbuild_cache::store::StoreError),
    #[error("{0}")]
    Other(String),
    /// More than one step failed (steps that ran at once): each one's error, in step order.
    #[error("{} steps failed:\n{}", .0.len(), list(.0))]
    Failed(Vec<ExecError>),
    /// The build was cancelled ([`cancel::cancel`], on Ctrl-C).
    #[error("the build was cancelled")]
    Cancelled,
}

fn list(errors: &[ExecError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    lines.join("\n")
}

impl ExecError {
    fn step(step: &Step, message: impl Into<String>) -> ExecError {
        ExecError::Step {
            step: step.created_by.clone(),
            message: message.into(),
            span: step.span,
        }
    }

    /// The failures this error stands for: each failed step's error, or itself.
    pub fn errors(&self) -> Vec<&ExecError> {
        match self {
            ExecError::Failed(all) => all.iter().collect(),
            e => vec![e],
        }
    }
}

impl From<Panicked> for ExecError {
    fn from(p: Panicked) -> ExecError {
        ExecError::Other(p.0)
    }
}

/// Build-wide settings: what changes layer bytes, and how many steps run at once.
#[derive(Clone, Copy, Debug)]
pub struct ExecOptions {
    /// `SOURCE_DATE_EPOCH`, default 0: mtimes in layers are clamped to it, and it is the
    /// image's `created` time.
    pub epoch: u64,
    pub compression: Compression,
    /// At most this many steps run at once (`--jobs`; at least 1). Never changes a result.
    pub jobs: usize,
}

impl Default for ExecOptions {
    fn default() -> ExecOptions {
        ExecOptions {
            epoch: 0,
            compression: Compression::Zstd,
            jobs: default_jobs(),
        }
    }
}

/// The default `--jobs`: the number of CPUs this process may use.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How a step went, for progress output and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepState {
    Cached,
    Done,
    Failed,
    /// It was running when the build was cancelled.
    Cancelled,
}

/// A RUN's `--cache=` policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// Reuse a usable record (the default).
    Reuse,
    /// `--cache=never`: always run; the new result is still recorded.
    Never,
    /// `--cache=ttl=…`: reuse a record only while it is younger than this.
    Ttl(Duration),
}

impl CachePolicy {
    /// The policy of a step (`RunOp::cache` is `never` or `ttl=<nanos>ns`).
    pub fn of(step: &Step) -> CachePolicy {
        match &step.op {
            Op::Run(r) => CachePolicy::parse(r.cache.as_deref()),
            _ => CachePolicy::Reuse,
        }
    }

    /// `RunOp::cache`'s form: `never`, `ttl=<nanos>ns`, or none.
    pub fn parse(cache: Option<&str>) -> CachePolicy {
        match cache {
            None => CachePolicy::Reuse,
            Some(c) => c
                .strip_prefix("ttl=")
                .and_then(|t| t.strip_suffix("ns"))
                .and_then(|n| n.parse().ok())
                .map(|n| CachePolicy::Ttl(Duration::from_nanos(n)))
                // `never`, and anything we cannot read: running again is always correct.
                .unwrap_or(CachePolicy::Never),
        }
    }

    /// Whether a record made at `made_ms` may be reused at `now`; `None` when it may, else
    /// why not. A missing time, or one in the future, counts as expired.
    pub fn refuses(self, made_ms: Option<u64>, now: SystemTime) -> Option<&'static str> {
        match self {
            CachePolicy::Reuse => None,
            CachePolicy::Never => Some("never"),
            CachePolicy::Ttl(ttl) => {
                let now_ms = now.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
                match made_ms {
                    Some(m) if m <= now_ms && Duration::from_millis(now_ms - m) < ttl => None,
                    _ => Some("expired"),
                }
            }
        }
    }
}

/// Progress reporting; implemented by the CLI (plain lines, a live TTY view, or nothing).
/// Called from the threads steps run on, so from several at once.
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
    /// For a unikernel target: its ELF (a blob in the store). `manifest` and `config` are
    /// then the ELF's digest too: there is no image.
    pub elf: Option<LayerRecord>,
}

pub struct Executor<'a> {
    pub store: &'a Store,
    pub plan: &'a Plan,
    /// The build context (needed when a step copies from it).
    pub context: Option<&'a ContextSnapshot>,
    pub options: ExecOptions,
    pub progress: &'a dyn Progress,
    /// `--secret`s and `--ssh` agents for `RUN --mount=type=secret|ssh` (empty by default).
    pub session: Session,
    /// The unikernel runtime's sources, for unikernel stages (the binary embeds them).
    pub unikernel_runtime: unikernel::RuntimeFiles<'a>,
    /// Layer steps' results by step id.
    results: Mutex<HashMap<usize, LayerRecord>>,
    /// Base images' layers by manifest digest (read once).
    images: Mutex<HashMap<String, Vec<LayerRecord>>>,
    /// One lock per layer being extracted, so two steps needing it extract it once.
    extracting: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// What the last `run` did, for `--trace`.
    timeline: Mutex<Vec<Timing>>,
    /// Per layer step, why it was or was not a cache hit (for the trace).
    cache_notes: Mutex<HashMap<usize, &'static str>>,
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
            session: Session::default(),
            unikernel_runtime: &[],
            results: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            extracting: Mutex::new(HashMap::new()),
            timeline: Mutex::new(Vec::new()),
            cache_notes: Mutex::new(HashMap::new()),
        }
    }

    /// When each step of the last [`run`](Executor::run) was ready, started and ended.
    pub fn timeline(&self) -> Vec<Timing> {
        self.timeline.lock().unwrap().clone()
    }

    /// The last run's timeline as Chrome trace-event JSON ([`trace::chrome`]).
    pub fn trace(&self) -> serde_json::Value {
        trace::chrome(
            self.plan,
            &self.timeline.lock().unwrap(),
            &self.cache_notes.lock().unwrap(),
        )
    }

    fn note_cache(&self, id: usize, why: &'static str) {
        self.cache_notes.lock().unwrap().insert(id, why);
    }

    /// Runs every step (cache hits are not re-run), at most `jobs` at once, and assembles
    /// the target's image. Every failed step is reported ([`ExecError::Failed`] when more
    /// than one failed).
    pub fn run(&self) -> Result<Built, ExecError> {
        let jobs = self.options.jobs.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .thread_name(|i| format!("imgbuild-job-{i}"))
            .build()
            .map_err(|e| ExecError::Other(format!("cannot start the build's threads: {e}")))?;
        if cancel::is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        // Every lookup first, in parallel, before anything runs: a lookup never waits behind
        // a running step.
        let now = SystemTime::now();
        let found: HashMap<usize, StepRecord> = pool.install(|| {
            self.plan
                .steps
                .par_iter()
                .filter(|s| s.layer)
                .filter_map(|s| self.lookup(s, now).map(|r| (s.id, r)))
                .collect()
        });
        let mut inputs: Vec<Vec<usize>> = self
            .plan
            .steps
            .iter()
            .map(|s| s.parent.iter().chain(&s.deps).copied().collect())
            .collect();
        // A step with the key of an earlier one (identical stages) waits for it and takes its
        // result when it is built on the same layers, as BuildKit merges equal vertices.
        let mut first: HashMap<imgbuild_planner::Key, usize> = HashMap::new();
        let mut twin: HashMap<usize, usize> = HashMap::new();
        for s in self.plan.steps.iter().filter(|s| s.layer) {
            let earlier = *first.entry(s.key).or_insert(s.id);
            if earlier != s.id {
                twin.insert(s.id, earlier);
                inputs[s.id].push(earlier);
            }
        }
        let mut cached = 0;
        let mut ready = |id: usize| -> Result<Ready, ExecError> {
            let step = &self.plan.steps[id];
            if !step.layer {
                return Ok(Ready::Nothing);
            }
            let start = Instant::now();
            let mut hit = |layer: LayerRecord, why: &'static str| {
                self.results.lock().unwrap().insert(id, layer);
                self.note_cache(id, why);
                cached += 1;
                self.progress
                    .finished(step, StepState::Cached, start.elapsed());
                Ok(Ready::Cached)
            };
            if let Some(&t) = twin.get(&id) {
                let done = self.results.lock().unwrap().get(&t).cloned();
                if let Some(layer) = done
                    && self.base(step)? == self.base(&self.plan.steps[t])?
                {
                    return hit(layer, "same step earlier in this build");
                }
            }
            let Some(record) = found.get(&id) else {
                return Ok(Ready::Run);
            };
            if record.base != Some(self.base(step)?) {
                self.note_cache(id, "inputs changed");
                return Ok(Ready::Run);
            }
            hit(record.layer.clone(), "hit")
        };
        let work = |id: usize| -> Result<(), ExecError> {
            let step = &self.plan.steps[id];
            let start = Instant::now();
            self.progress.started(step);
            let result = self.execute(step).and_then(|layer| {
                let record = StepRecord {
                    layer: layer.clone(),
                    inputs: step.inputs.clone(),
                    base: Some(self.base(step)?),
                    made_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_millis() as u64),
                };
                self.store.put_step(&step.key.0, &record)?;
                self.results.lock().unwrap().insert(id, layer);
                Ok(())
            });
            let state = match &result {
                Ok(()) => StepState::Done,
                Err(_) if cancel::is_cancelled() => StepState::Cancelled,
                Err(_) => StepState::Failed,
            };
            self.progress.finished(step, state, start.elapsed());
            result
        };
        let report = schedule::run(
            &inputs,
            &pool,
            jobs,
            &mut ready,
            &work,
            &cancel::is_cancelled,
        );
        let executed = report
            .timeline
            .iter()
            .filter(|t| t.outcome == Outcome::Done)
            .count();
        *self.timeline.lock().unwrap() = report.timeline;
        if report.cancelled {
            return Err(ExecError::Cancelled);
        }
        let mut failures: Vec<ExecError> = report.failures.into_iter().map(|(_, e)| e).collect();
        match failures.len() {
            0 => {}
            1 => return Err(failures.remove(0)),
            _ => return Err(ExecError::Failed(failures)),
        }
        let target = self.plan.target_stage();
        if target.unikernel {
            let elf = self.results.lock().unwrap().get(&target.last).cloned();
            let elf = elf.ok_or_else(|| {
                ExecError::Other("internal error: the unikernel was not linked".into())
            })?;
            return Ok(Built {
                manifest: elf.digest,
                manifest_size: elf.size,
                config: elf.digest,
                layers: Vec::new(),
                cached,
                executed,
                elf: Some(elf),
            });
        }
        let layers = self.chain_layers(target.last)?;
        let out = image::assemble(self.store, self.plan, target, &layers, self.options.epoch)?;
        Ok(Built {
            manifest: out.manifest,
            manifest_size: out.manifest_size,
            config: out.config,
            layers,
            cached,
            executed,
            elf: None,
        })
    }

    /// The digest of the layers `step` builds on ([`StepRecord::base`]); its inputs are done.
    fn base(&self, step: &Step) -> Result<Digest, ExecError> {
        let mut w = DigestWriter::new(io::sink());
        let link = matches!(&step.op, Op::Copy(c) if c.link);
        let below = step.parent.filter(|_| !link).map(|p| ("parent", p));
        for (what, id) in below
            .into_iter()
            .chain(step.deps.iter().map(|&d| ("dep", d)))
        {
            let layers = self.chain_layers(id)?;
            let _ = writeln!(w, "{what} {}", layers.len());
            for l in layers {
                let _ = writeln!(w, "{}", l.diff_id);
            }
        }
        Ok(w.finish().0)
    }

    /// A usable cached result: the record parses, its cache policy allows it, and its blob
    /// is in the store with the recorded size and content. A damaged layer must be a miss (the
    /// step runs again and its new blob replaces the damaged one), never a layer handed on to
    /// the image. Whether it was built on this build's layers is checked once its inputs are
    /// done ([`StepRecord::base`]).
    fn lookup(&self, step: &Step, now: SystemTime) -> Option<StepRecord> {
        use imgbuild_cache::store::StoreError;
        let found = match self.store.get_step::<StepRecord>(&step.key.0) {
            Lookup::Hit(r) => r,
            Lookup::Unusable(e) => {
                self.progress
                    .note(&format!("ignoring a damaged cache record: {e}"));
                self.note_cache(step.id, "damaged record");
                return None;
            }
            Lookup::Miss => return None,
        };
        if let Some(why) = CachePolicy::of(step).refuses(found.made_ms, now) {
            self.note_cache(step.id, why);
            return None;
        }
        if found.base.is_none() {
            self.note_cache(step.id, "old record");
            return None;
        }
        let record = &found.layer;
        let digest = record.digest;
        let damaged = |why: String| {
            self.note_cache(step.id, "damaged layer");
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
            return Some(found);
        }
        match self.store.verify_blob(&digest) {
            Ok(_) => Some(found),
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
                    imgbuild_planner::CopySource::Image { manifest, .. } => {
                        let layers = self.image_layers(step, manifest)?;
                        copy::Source::Fs(RootFs::new(self.layer_dirs(&layers)?))
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
                let dirs = self.layer_dirs(&self.chain_layers(parent)?)?;
                let below = RootFs::new(dirs.clone());
                let scratch = self.store.temp_dir()?;
                let out = |line: &str| self.progress.output(step, line);
                let entries = run::run(self, step, r, &dirs, &below, scratch.path(), &out)
                    .map_err(|e| ExecError::step(step, e))?;
                let layer = self.write_layer(step, entries);
                drop(scratch);
                layer?
            }
            Op::Unikernel(u) => self.link_unikernel(step, u, parent)?,
            Op::Scratch | Op::Image { .. } | Op::Stage(_) | Op::Meta => {
                unreachable!("only layer steps are executed")
            }
        };
        Ok(entries)
    }

    /// Links a unikernel stage's app over the stage's files; its result is the ELF blob.
    fn link_unikernel(
        &self,
        step: &Step,
        op: &imgbuild_planner::UnikernelOp,
        parent: usize,
    ) -> Result<LayerRecord, ExecError> {
        let context = self
            .context
            .ok_or_else(|| ExecError::step(step, "no build context"))?;
        let prefix = if op.app.is_empty() {
            String::new()
        } else {
            format!("{}/", op.app)
        };
        // The app's directory as the context holds it (.dockerignore applied), without the
        // build output of a local `cargo build`.
        let mut app_files = Vec::new();
        for e in context.entries() {
            let Some(rel) = e.path.strip_prefix(&prefix) else {
                continue;
            };
            if rel.is_empty() || rel == "target" || rel.starts_with("target/") {
                continue;
            }
            use imgbuild_cache::context::EntryKind;
            let kind = match e.kind {
                EntryKind::Dir => unikernel::AppKind::Dir,
                EntryKind::File => unikernel::AppKind::File(e.path.clone()),
                EntryKind::Symlink => {
                    unikernel::AppKind::Symlink(e.link_target.clone().unwrap_or_default())
                }
                _ => continue,
            };
            app_files.push(unikernel::AppFile {
                rel: rel.to_owned(),
                kind,
                mode: e.mode,
            });
        }
        let rootfs = self.rootfs(parent)?;
        let stage = &self.plan.stages[step.stage];
        let work_name = stage
            .as_ref()
            .and_then(|s| s.name.clone())
            .filter(|n| {
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
            .unwrap_or_else(|| format!("stage-{}", step.stage));
        let input = unikernel::LinkInput {
            store_root: self.store.root(),
            work_name,
            runtime: self.unikernel_runtime,
            context_root: context.root(),
            app_files,
            rootfs: &rootfs,
        };
        let out = |line: &str| self.progress.output(step, line);
        let elf = unikernel::link(op, &input, &out).map_err(|e| ExecError::step(step, e))?;
        let mut data = std::fs::read(&elf)
            .map_err(|e| ExecError::step(step, format!("{}: {e}", elf.display())))?;
        // The EXPOSEd ports travel inside the ELF (cargo's own output in the target dir is
        // left as it is, so a relink-free rebuild does not add the section twice).
        if !op.ports.is_empty() {
            data = unikernel::add_ports_section(&data, &op.ports)
                .map_err(|e| ExecError::step(step, e))?;
        }
        let mut blob = self.store.blob_writer()?;
        io::Write::write_all(&mut blob, &data)
            .map_err(|e| ExecError::step(step, format!("storing the ELF: {e}")))?;
        let (digest, size) = blob.finish()?;
        Ok(LayerRecord {
            diff_id: digest,
            digest,
            size,
            media_type: unikernel::ELF_MEDIA_TYPE.to_owned(),
        })
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
                Op::Image { manifest, .. } => {
                    let known = self.images.lock().unwrap().get(manifest).cloned();
                    let layers = match known {
                        Some(l) => l,
                        None => {
                            let l = self.image_layers(step, manifest)?;
                            self.images
                                .lock()
                                .unwrap()
                                .insert(manifest.clone(), l.clone());
                            l
                        }
                    };
                    out.extend(layers)
                }
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

    /// The extracted directories of `layers`, bottom first (extracting what is not yet).
    fn layer_dirs(&self, layers: &[LayerRecord]) -> Result<Vec<PathBuf>, ExecError> {
        layers.iter().map(|l| self.extracted(l)).collect()
    }

    /// The filesystem after step `last`, over extracted layers.
    fn rootfs(&self, last: usize) -> Result<RootFs, ExecError> {
        Ok(RootFs::new(self.layer_dirs(&self.chain_layers(last)?)?))
    }

    /// The directory a layer is extracted in, extracting it once (whiteouts kept as marker
    /// files: [`RootFs`] applies them when reading). Steps of this build that need the same
    /// layer at once wait for one extraction; against another process, the store's
    /// no-replace rename settles it (the loser's tree is discarded, the path is the same).
    fn extracted(&self, layer: &LayerRecord) -> Result<PathBuf, ExecError> {
        if let Some(d) = self.store.layer_dir(&layer.diff_id) {
            return Ok(d);
        }
        let lock = Arc::clone(
            self.extracting
                .lock()
                .unwrap()
                .entry(layer.diff_id)
                .or_default(),
        );
        let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
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
        // As root (also in a rootless build's user namespace), layers are extracted with
        // overlayfs's own whiteouts and `user.overlay.opaque` marks, so the same trees are RUN's
        // overlay lower dirs (mounted with `userxattr`, which works with and without root);
        // without privileges, whiteouts stay marker files.
        let options = ExtractOptions {
            mode: if rustix::process::geteuid().is_root() {
                ExtractMode::Overlay
            } else {
                ExtractMode::Plain
            },
            overlay_user_xattrs: true,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_policies() {
        assert_eq!(CachePolicy::parse(None), CachePolicy::Reuse);
        assert_eq!(CachePolicy::parse(Some("never")), CachePolicy::Never);
        assert_eq!(
            CachePolicy::parse(Some("ttl=3600000000000ns")),
            CachePolicy::Ttl(Duration::from_secs(3600))
        );
        assert_eq!(CachePolicy::parse(Some("ttl=1h")), CachePolicy::Never);

        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |secs: u64| Some(secs * 1000);
        assert_eq!(CachePolicy::Reuse.refuses(None, now), None);
        assert_eq!(CachePolicy::Never.refuses(ms(999_999), now), Some("never"));
        let hour = CachePolicy::Ttl(Duration::from_secs(3600));
        assert_eq!(hour.refuses(ms(1_000_000 - 3599), now), None);
        assert_eq!(hour.refuses(ms(1_000_000 - 3600), now), Some("expired"));
        // No time, or one in the future: expired.
        assert_eq!(hour.refuses(None, now), Some("expired"));
        assert_eq!(hour.refuses(ms(1_000_001), now), Some("expired"));
    }

    #[test]
    fn errors_list_every_failure() {
        let one = ExecError::Other("a".into());
        assert_eq!(one.errors().len(), 1);
        let all = ExecError::Failed(vec![
            ExecError::Other("a".into()),
            ExecError::Other("b".into()),
        ]);
        assert_eq!(all.errors().len(), 2);
        assert_eq!(all.to_string(), "2 steps failed:\na\nb");
    }
}
