//! What the planner asks, answered from the store, the build context and (for `ADD <url>`)
//! the network.

mod git;
mod remote;

use imgbuild_cache::Digest;
use imgbuild_cache::context::{ContextSnapshot, DigestOptions};
use imgbuild_cache::oci::{self, ImageConfig as OciConfig, Manifest};
use imgbuild_cache::store::Store;
use imgbuild_parser::ignore::PatternMatcher;
use imgbuild_planner::{
    BaseImage, ContextQuery, ContextSelection, GitRef, GitTree, Healthcheck, History, ImageConfig,
    Inputs, RemoteFile,
};
use imgbuild_registry::{Reference, Registry};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// When `FROM name[:tag]` asks a registry (`--pull`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Resolve every tag against its registry (one manifest request; blobs the store has are
    /// not downloaded), like BuildKit.
    #[default]
    Always,
    /// Use a copy pulled before when there is one.
    Missing,
    /// Never touch the network: only what the store holds.
    Never,
}

/// How this process pulls base images; set once by `build` before planning (`plan` and other
/// callers get the defaults).
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    pub policy: PullPolicy,
    pub insecure: Vec<String>,
    pub quiet: bool,
}

static PULL: OnceLock<PullOptions> = OnceLock::new();

/// Sets the pull options for this process (the first call wins).
pub fn configure_pull(options: PullOptions) {
    let _ = PULL.set(options);
}

fn pull_options() -> PullOptions {
    PULL.get().cloned().unwrap_or_default()
}

/// The registry client options the binary uses (`--insecure-registry`, and
/// `IMGBUILD_REGISTRY_CHUNK_SIZE` to change the upload chunk size).
pub fn registry_options(insecure: &[String]) -> imgbuild_registry::Options {
    let mut o = imgbuild_registry::Options {
        insecure: insecure.to_vec(),
        ..Default::default()
    };
    if let Some(n) = std::env::var("IMGBUILD_REGISTRY_CHUNK_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        o.chunk_size = n;
    }
    o
}

/// [`registry_options`] with this process's `--insecure-registry` list (for the registry
/// cache transport).
pub fn configured_registry_options() -> imgbuild_registry::Options {
    registry_options(&pull_options().insecure)
}

pub struct StoreInputs<'a> {
    pub store: &'a Store,
    pub context: Option<&'a ContextSnapshot>,
    /// Base images resolved in this build, by reference (each import happens once).
    resolved: Mutex<HashMap<String, Result<BaseImage, String>>>,
    /// `ADD <url>` downloads (each URL once per build).
    remote: remote::Fetcher<'a>,
    /// The registry client, made when a base image first needs one.
    registry: OnceLock<Result<Registry, String>>,
    /// `ADD <git URL>` refs and trees.
    git: git::GitFetcher<'a>,
    /// imgbuild.lock: the pins this build uses, and what its sources resolved to.
    pub lock: super::lock::LockState,
}

impl<'a> StoreInputs<'a> {
    pub fn new(store: &'a Store, context: Option<&'a ContextSnapshot>) -> Self {
        StoreInputs {
            store,
            context,
            resolved: Mutex::new(HashMap::new()),
            remote: remote::Fetcher::new(store),
            registry: OnceLock::new(),
            git: git::GitFetcher::new(store),
            lock: Default::default(),
        }
    }

    /// A registry image (`name[:tag|@digest]`) as a manifest in the store. A name the store
    /// has as a local build (tagged by `-t`, not by a pull) is used as it is; a digest the
    /// store has needs no network; otherwise `--pull` decides, and a pull downloads only the
    /// blobs the store lacks.
    fn resolve_registry_image(&self, reference: &str) -> Result<Digest, String> {
        let opts = pull_options();
        let local = self.store.resolve(reference).ok().flatten().map(|(d, _)| d);
        let r = match Reference::parse(reference) {
            Ok(r) => r,
            Err(e) => return local.ok_or_else(|| e.to_string()),
        };
        if let Some(d) = r.digest {
            if self.store.has_blob(&d) {
                return Ok(d);
            }
        } else {
            let pulled = imgbuild_registry::pulled_manifest(self.store, &r.tagged_name());
            if let Some(d) = local
                && pulled != Some(d)
            {
                return Ok(d);
            }
            let copy = self
                .store
                .resolve(&r.tagged_name())
                .ok()
                .flatten()
                .map(|(d, _)| d)
                .filter(|d| pulled == Some(*d) && self.store.has_blob(d));
            if let (PullPolicy::Never | PullPolicy::Missing, Some(d)) = (opts.policy, copy) {
                return Ok(d);
            }
        }
        if opts.policy == PullPolicy::Never {
            return Err(format!(
                "{r} is not in the local image store, and --pull=never forbids pulling it"
            ));
        }
        let registry = self
            .registry
            .get_or_init(|| {
                Registry::new(registry_options(&opts.insecure)).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| e.clone())?;
        let pulled = registry
            .pull_image(self.store, &r)
            .map_err(|e| format!("not in the local image store, and pulling {r} failed: {e}"))?;
        if !opts.quiet && pulled.blobs_downloaded > 0 {
            eprintln!(
                "pulled {r}: {} blobs, {} bytes downloaded ({} already in the store)",
                pulled.blobs_downloaded, pulled.bytes_downloaded, pulled.blobs_present
            );
        }
        Ok(pulled.manifest_digest)
    }

    fn resolve_image(&self, reference: &str) -> Result<BaseImage, String> {
        let imported = |r: oci::Result<oci::ImportedImage>| -> Result<Digest, String> {
            r.map(|i| i.manifest_digest).map_err(|e| e.to_string())
        };
        let manifest = if let Some(rest) = reference.strip_prefix("oci-layout://") {
            let (dir, r) = split_ref(rest);
            imported(oci::import_oci_layout(Path::new(dir), r, self.store))?
        } else if let Some(rest) = reference.strip_prefix("oci-archive://") {
            let (file, r) = split_ref(rest);
            imported(oci::import_oci_archive(Path::new(file), r, self.store))?
        } else if let Some(file) = reference.strip_prefix("docker-archive://") {
            imported(oci::import_docker_archive(
                Path::new(file),
                None,
                self.store,
            ))?
        } else {
            self.resolve_registry_image(reference)?
        };
        load_image(self.store, reference, &manifest)
    }
}

/// `DIR[:tag|@digest]` (a `:` inside the path is taken as a tag only after the last `/`).
fn split_ref(s: &str) -> (&str, Option<&str>) {
    if let Some((p, d)) = s.rsplit_once('@') {
        return (p, Some(d));
    }
    match s.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, Some(t)),
        _ => (s, None),
    }
}

/// A stored image as the planner sees it.
pub fn load_image(store: &Store, reference: &str, manifest: &Digest) -> Result<BaseImage, String> {
    let m: Manifest =
        serde_json::from_slice(&store.read_blob(manifest).map_err(|e| e.to_string())?)
            .map_err(|e| format!("manifest {manifest}: {e}"))?;
    let c: OciConfig = serde_json::from_slice(
        &store
            .read_blob(&m.config.digest)
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("image config {}: {e}", m.config.digest))?;
    if !c.os.is_empty() && (c.os != "linux" || c.architecture != "amd64") {
        return Err(format!(
            "the image is for {}/{}, and this build makes linux/amd64",
            c.os, c.architecture
        ));
    }
    let r = &c.config;
    let config = ImageConfig {
        user: r.user.clone(),
        exposed_ports: r.exposed_ports.clone(),
        env: r.env.clone(),
        entrypoint: (!r.entrypoint.is_empty()).then(|| r.entrypoint.clone()),
        cmd: (!r.cmd.is_empty()).then(|| r.cmd.clone()),
        volumes: r.volumes.clone(),
        working_dir: r.working_dir.clone(),
        labels: r.labels.clone(),
        stop_signal: r.stop_signal.clone(),
        healthcheck: r.healthcheck.as_ref().map(|h| Healthcheck {
            test: h.test.clone(),
            interval: h.interval,
            timeout: h.timeout,
            start_period: h.start_period,
            start_interval: h.start_interval,
            retries: h.retries as i32,
        }),
        onbuild: r.on_build.clone(),
        shell: (!r.shell.is_empty()).then(|| r.shell.clone()),
        author: c.author.clone(),
    };
    let mut history: Vec<History> = c
        .history
        .iter()
        .map(|h| History {
            created_by: h.created_by.clone(),
            empty_layer: h.empty_layer,
            comment: h.comment.clone(),
        })
        .collect();
    // An image without history still needs one entry per layer for ours to line up.
    let with_layers = history.iter().filter(|h| !h.empty_layer).count();
    for _ in with_layers..m.layers.len() {
        history.push(History {
            created_by: String::new(),
            empty_layer: false,
            comment: String::new(),
        });
    }
    Ok(BaseImage {
        reference: reference.to_owned(),
        manifest: manifest.to_string(),
        config,
        history,
    })
}

impl Inputs for StoreInputs<'_> {
    fn image(&self, reference: &str) -> Result<BaseImage, String> {
        let mut cache = self.resolved.lock().unwrap();
        cache
            .entry(reference.to_owned())
            .or_insert_with(|| self.lock.image(reference, |r| self.resolve_image(r)))
            .clone()
    }

    fn remote(&self, url: &str, checksum: Option<&str>) -> Result<RemoteFile, String> {
        self.lock
            .remote(url, checksum, |c| self.remote.fetch(url, c))
    }

    fn git(&self, source: &GitRef, keep_git_dir: bool) -> Result<GitTree, String> {
        self.lock.git(
            source,
            || self.git.resolve(source),
            |commit| self.git.tree(source, commit, keep_git_dir),
        )
    }

    fn unikernel_runtime(&self) -> Result<imgbuild_planner::UnikernelRuntime, String> {
        crate::unikernel::runtime()
    }

    fn app(&self, dir: &str) -> Result<imgbuild_planner::AppCrate, String> {
        let snap = self
            .context
            .ok_or("the build has no context directory to take the app from")?;
        crate::unikernel::app(snap, dir)
    }

    fn context(&self, q: &ContextQuery) -> Result<ContextSelection, String> {
        let snap = self
            .context
            .ok_or("the build has no context directory to copy from")?;
        let excludes = if q.excludes.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&q.excludes).map_err(|e| format!("--exclude: {e}"))?)
        };
        let mut h = blake3::Hasher::new();
        let mut files = Vec::new();
        for src in &q.sources {
            let sel = snap.select(src).map_err(|e| e.to_string())?;
            let d = snap.digest_of(
                &sel,
                DigestOptions {
                    include_mode: q.include_mode,
                },
            );
            h.update(&(src.len() as u64).to_le_bytes());
            h.update(src.as_bytes());
            h.update(d.as_bytes());
            for e in sel.entries() {
                if excludes
                    .as_ref()
                    .is_some_and(|m| m.is_excluded(&e.path).unwrap_or(false))
                {
                    continue;
                }
                let what = match &e.hash {
                    Some(hash) => hash.to_hex().to_string(),
                    None => e.kind.as_str().to_owned(),
                };
                files.push((e.path.clone(), what));
            }
        }
        for p in &q.excludes {
            h.update(b"exclude");
            h.update(p.as_bytes());
        }
        Ok(ContextSelection {
            digest: h.finalize().to_hex().to_string(),
            files,
        })
    }
}
