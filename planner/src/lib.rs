//! The planner: typed Dockerfile + build options -> a DAG of build steps with content-addressed
//! keys.
//!
//! Architecture invariants:
//! - pure: it never reads files or runs anything. What it needs from outside (a base image's
//!   manifest digest and config, the digest of context files a COPY selects) it asks through
//!   [`Inputs`];
//! - a step's key is known before the step runs: it is blake3 over the step's operation (with
//!   every variable expanded) and the keys of what it builds on. COPY keys come from the content
//!   of the selected source files, so an unchanged file set re-uses the cached layer;
//! - deterministic: same Dockerfile, options and inputs, same plan and keys.
//!
//! Only the stages the target needs are planned: planning a stage plans the stages it builds
//! on (FROM another stage, `COPY --from`, `RUN --mount=from`) first.

pub mod config;
pub mod git;
pub mod key;
mod plan;
pub mod render;
pub mod unikernel;

pub use config::{Healthcheck, History, ImageConfig};
pub use git::GitRef;
pub use key::{Key, KeyHasher};
pub use plan::plan;
pub use unikernel::{
    AppCrate, ExposedPort, ModuleChoice, ModuleSpec, ModuleWhy, UnikernelOp, UnikernelRuntime,
};

use imgbuild_parser::Span;
use serde::Serialize;
use std::collections::BTreeMap;

/// The platform images are built for (and the only one we run on): linux/amd64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl Platform {
    /// `linux/amd64` form.
    pub fn spec(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// `--build-arg K=V`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`: the stage to build (default: the last one).
    pub target: Option<String>,
    pub platform: Platform,
    /// The Dockerfile's escape token (from its directive).
    pub escape: char,
}

/// A base image as the outside world resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    /// The reference as the build gave it (after expansion).
    pub reference: String,
    /// `sha256:…` of the image manifest: identifies the image content.
    pub manifest: String,
    pub config: ImageConfig,
    /// History entries the image already has.
    pub history: Vec<History>,
}

/// Which context files a COPY or ADD takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextQuery {
    /// Source paths as written (expanded), relative to the context root; may hold wildcards.
    pub sources: Vec<String>,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// Whether permission bits count (not with `--chmod`, which overrides them).
    pub include_mode: bool,
}

/// What the context holds for a [`ContextQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextSelection {
    /// A digest over the selected entries' paths, types, sizes, contents (and modes).
    pub digest: String,
    /// Per-file digests, for `plan --explain`: (path, digest).
    pub files: Vec<(String, String)>,
}

/// A file `ADD <url>` fetched, as the outside world found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// `sha256:…` of the content.
    pub digest: String,
    pub size: u64,
}

/// The tree an `ADD <git URL>` takes, as the outside world resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitTree {
    /// The commit the ref resolved to (hex object name).
    pub commit: String,
    /// `sha256:…` of the tree as an uncompressed tar the executor can read (made by the
    /// implementation, modes already git's, owners root).
    pub digest: String,
}

/// What the planner asks the outside world. Implemented by the binary over the store and the
/// build context; by fixed tables in tests.
pub trait Inputs {
    /// Resolves a base image reference (a name in the image store, `oci-layout://…`, …).
    fn image(&self, reference: &str) -> Result<BaseImage, String>;
    /// Digests the context files a COPY or ADD selects.
    fn context(&self, query: &ContextQuery) -> Result<ContextSelection, String>;
    /// The content of the `http://` or `https://` file an ADD names (the implementation makes
    /// it available to the executor under its digest). With `checksum` (`sha256:<hex>`), content
    /// of another digest is an error.
    fn remote(&self, url: &str, checksum: Option<&str>) -> Result<RemoteFile, String> {
        let _ = checksum;
        Err(format!(
            "cannot fetch {url}: no remote sources in this build"
        ))
    }
    /// The tree of the git repository an ADD names, at the commit its ref resolves to now
    /// (the implementation makes the tree available to the executor under its digest).
    fn git(&self, source: &GitRef, keep_git_dir: bool) -> Result<GitTree, String> {
        let _ = keep_git_dir;
        Err(format!(
            "cannot fetch the git repository {}: no git sources in this build",
            source.url
        ))
    }
    /// The unikernel runtime this imgbuild links apps with: its module graph, the digest of
    /// its sources and the Rust toolchain's version (asked once per plan).
    fn unikernel_runtime(&self) -> Result<UnikernelRuntime, String> {
        Err("this build has no unikernel runtime".into())
    }
    /// The app crate in the context directory `dir` (relative to the context root): its
    /// manifest's bin name and declared modules, and the digest of its sources.
    fn app(&self, dir: &str) -> Result<AppCrate, String> {
        Err(format!(
            "cannot read the app crate {dir:?}: no context in this build"
        ))
    }
}

/// Where a COPY takes its files from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CopySource {
    /// The build context.
    Context,
    /// The final filesystem of another stage (by index).
    Stage(usize),
    /// An image's filesystem.
    Image { reference: String, manifest: String },
}

/// An `ADD <url>` source: the URL and the content it had when the build was planned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteSource {
    pub url: String,
    /// `sha256:…` of the content.
    pub digest: String,
    /// The name the file gets in a directory destination: the last segment of the URL's path,
    /// percent-decoded, or `__unnamed__` (BuildKit's rule; Content-Disposition is not used).
    pub file_name: String,
}

/// An `ADD <git URL>` source: the repository tree at the commit the build resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GitSource {
    /// The source as written (expanded): an entry of [`CopyOp::sources`].
    pub source: String,
    /// The repository URL, without the fragment.
    pub url: String,
    pub commit: String,
    /// The directory of the tree taken (`None`: all of it).
    pub subdir: Option<String>,
    /// `--keep-git-dir=true`: the tree holds a `.git` checked out at `commit`.
    pub keep_git_dir: bool,
    /// `sha256:…` of the tree as an uncompressed tar in the store.
    pub digest: String,
}

/// A COPY or ADD with every variable expanded and the destination made absolute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopyOp {
    pub add: bool,
    pub source: CopySource,
    /// The sources in order: paths in `source`, and for ADD also URLs (each described in
    /// `remotes`).
    pub sources: Vec<String>,
    /// What the URLs among `sources` hold (ADD only).
    pub remotes: Vec<RemoteSource>,
    /// What the git repositories among `sources` hold (ADD only).
    pub git: Vec<GitSource>,
    /// Heredoc sources: (file name, content).
    pub contents: Vec<(String, String)>,
    /// Absolute; a trailing `/` (meaning "a directory") is kept.
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    pub checksum: Option<String>,
    pub unpack: Option<bool>,
    pub keep_git_dir: Option<bool>,
}

/// A RUN with everything that determines its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunOp {
    /// The argv: exec form as written, shell form as SHELL + the command line.
    pub args: Vec<String>,
    /// A heredoc script to mount at /dev/pipes/NAME (`RUN <<EOF` with a `#!` body):
    /// (name, content, chomp).
    pub files: Vec<(String, String, bool)>,
    /// `KEY=value`: the image's ENV plus the ARGs in scope.
    pub env: Vec<String>,
    /// Proxy build args given to the build (`HTTP_PROXY`, …): in the command's environment,
    /// but like BuildKit never in the key or the history.
    pub proxy_env: Vec<String>,
    pub user: String,
    pub workdir: String,
    /// The `--mount` values, each expanded and rewritten in a canonical form with BuildKit's
    /// defaults filled in (absolute targets, cache/secret/ssh ids, secret and ssh targets), so
    /// equivalent spellings share a key. Parse one with `parse_mount` and an identity expander.
    pub mounts: Vec<String>,
    /// Where each mount's files come from (parallel to `mounts`): the context for a bind
    /// without `from`, the stage or image `from` names for a bind or a cache seed; `None` for
    /// tmpfs, secret and ssh mounts and a cache without `from`.
    pub mount_from: Vec<Option<CopySource>>,
    pub network: String,
    pub security: String,
    /// `--cache=never` / `--cache=ttl=…`, as written.
    pub cache: Option<String>,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    /// `FROM scratch`: no layers.
    Scratch,
    /// `FROM image`: the image's layers.
    Image {
        reference: String,
        manifest: String,
    },
    /// `FROM stage`: continues another stage's result.
    Stage(usize),
    Copy(CopyOp),
    /// WORKDIR: creates the directory (and parents), owned by the USER in effect.
    Mkdir {
        path: String,
        user: String,
    },
    Run(RunOp),
    /// A metadata instruction: changes only the image config.
    Meta,
    /// The last step of a unikernel stage: links the APP with the runtime's modules and the
    /// stage's files into one ELF (its result is that ELF, not a layer).
    Unikernel(UnikernelOp),
}

/// One step of the build.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub id: usize,
    /// What the step's result is cached under.
    pub key: Key,
    /// The identity of the image after this step, which what follows is keyed on: equal to
    /// `key`, except for `COPY --link`, whose key leaves out the layers below it.
    pub chain: Key,
    pub op: Op,
    /// The step this one builds on (the previous one in its stage).
    pub parent: Option<usize>,
    /// Other steps whose results this one reads (a `COPY --from` stage's last step).
    pub deps: Vec<usize>,
    /// Index of the stage in the Dockerfile.
    pub stage: usize,
    /// The instruction.
    pub span: Span,
    /// The history text (`COPY a /b`).
    pub created_by: String,
    /// Whether the step adds a layer.
    pub layer: bool,
    /// The inputs its key was computed from, for `plan --explain`: (what, value).
    pub inputs: Vec<(String, String)>,
}

/// A planned stage: its steps are in [`Plan::steps`].
#[derive(Clone, Debug, Serialize)]
pub struct PlannedStage {
    pub index: usize,
    pub name: Option<String>,
    /// The stage's first step (its FROM).
    pub first: usize,
    /// Its last step: the stage's result.
    pub last: usize,
    /// The image config when the stage ends.
    pub config: ImageConfig,
    /// The base image's history followed by this stage's.
    pub history: Vec<History>,
    pub unikernel: bool,
}

/// The build DAG.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Indexed by the stage's position in the Dockerfile; `None` for stages the target does
    /// not need.
    pub stages: Vec<Option<PlannedStage>>,
    /// The stage being built.
    pub target: usize,
    pub platform: Platform,
    /// Build args given but never declared (BuildKit warns about them).
    pub unused_build_args: Vec<String>,
}

impl Plan {
    pub fn target_stage(&self) -> &PlannedStage {
        self.stages[self.target]
            .as_ref()
            .expect("the target stage is always planned")
    }

    /// The chain of steps from a stage's FROM to `last`, following parents (FROM another stage
    /// continues into that stage's chain).
    pub fn chain(&self, last: usize) -> Vec<usize> {
        let mut out = vec![last];
        let mut cur = last;
        while let Some(p) = self.steps[cur].parent {
            out.push(p);
            cur = p;
        }
        out.reverse();
        out
    }

    /// Step ids in an order where every step comes after what it builds on.
    pub fn order(&self) -> Vec<usize> {
        // Steps are created depth-first with dependencies planned first, so ids already are
        // a topological order; keep that a checked fact.
        debug_assert!(
            self.steps
                .iter()
                .all(|s| s.parent.is_none_or(|p| p < s.id) && s.deps.iter().all(|&d| d < s.id))
        );
        (0..self.steps.len()).collect()
    }

    /// The DAG as a petgraph graph (node weight = step id; edges from inputs to users).
    pub fn graph(&self) -> petgraph::graph::DiGraph<usize, ()> {
        let mut g = petgraph::graph::DiGraph::new();
        let nodes: Vec<_> = self.steps.iter().map(|s| g.add_node(s.id)).collect();
        for s in &self.steps {
            for from in s.parent.iter().chain(&s.deps) {
                g.add_edge(nodes[*from], nodes[s.id], ());
            }
        }
        g
    }
}
