//! The part of `build` and `plan` they share: read the Dockerfile, open the store, scan the
//! context, and plan.

pub mod cache_io;
mod cache_registry;
pub mod controls;
pub mod inputs;
pub mod lock;
pub mod outputs;
pub mod progress;

use crate::report;
use imgbuild_cache::context::{ContextIndex, ContextSnapshot, index_file_name};
use imgbuild_cache::store::{Access, Store, StoreError, Wait};
use imgbuild_parser::ignore::{PatternMatcher, read_ignore_file};
use imgbuild_parser::instructions;
use imgbuild_planner::{BuildOptions, Plan};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options every command that plans a build takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// `--build-arg NAME=VALUE` (or `NAME`, taking the value from the environment).
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last one).
    #[arg(long)]
    pub target: Option<String>,
    /// The store (default: $IMGBUILD_ROOT, /var/lib/imgbuild for root, else
    /// ${XDG_DATA_HOME:-~/.local/share}/imgbuild).
    #[arg(long, env = "IMGBUILD_ROOT")]
    pub root: Option<PathBuf>,
    /// The build context directory.
    #[arg(default_value = ".")]
    pub context: PathBuf,
}

pub struct Prepared {
    pub store: Store,
    /// The Dockerfile and what it INCLUDEs, for diagnostics that point into them.
    pub sources: imgbuild_parser::SourceMap,
    pub plan: Plan,
    pub snapshot: ContextSnapshot,
    pub dockerfile: PathBuf,
    /// What each image, URL and git ref the plan uses resolved to (for imgbuild.lock).
    pub resolved: lock::Lockfile,
}

/// Opens the store, waiting (with a note) while a prune holds it.
pub fn open_store(root: Option<&Path>, access: Access) -> anyhow::Result<Store> {
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => Store::default_root()?,
    };
    match Store::open_with(&root, access, Wait::Fail) {
        Err(StoreError::Locked { .. }) => {
            eprintln!("waiting for the lock on {} …", root.display());
            Ok(Store::open_with(&root, access, Wait::Block)?)
        }
        other => Ok(other?),
    }
}

/// Reads, checks and plans. On a bad Dockerfile, prints the diagnostics and returns the exit
/// status to end with (1; 2 for a context directory that does not exist).
pub fn prepare(c: &Common) -> anyhow::Result<Result<Prepared, ExitCode>> {
    if !c.context.is_dir() {
        eprintln!(
            "error: the build context {} is not a directory (usage: imgbuild [build] [OPTIONS] CONTEXT)",
            c.context.display()
        );
        return Ok(Err(ExitCode::from(2)));
    }
    let dockerfile = c
        .file
        .clone()
        .unwrap_or_else(|| c.context.join("Dockerfile"));
    let resolved = match crate::cmd::load_dockerfile(&dockerfile) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", dockerfile.display());
            return Ok(Err(ExitCode::from(1)));
        }
    };
    let mut diags = resolved.diagnostics.clone();
    let (typed, typed_diags) = instructions::check_all(&resolved.dockerfile);
    diags.extend(typed_diags);
    let (errors, _) = report::print(
        &diags
            .iter()
            .filter(|d| d.is_error())
            .cloned()
            .collect::<Vec<_>>(),
        &resolved.sources,
    );
    if errors > 0 {
        eprintln!("{}: {errors} error(s)", dockerfile.display());
        return Ok(Err(ExitCode::from(1)));
    }

    let store = open_store(c.root.as_deref(), Access::Shared)?;
    let snapshot = scan_context(&store, &c.context, &dockerfile)?;
    let mut opts = BuildOptions {
        escape: resolved.dockerfile.escape,
        target: c.target.clone(),
        ..BuildOptions::default()
    };
    opts.build_args = parse_build_args(&c.build_args);
    let mut inputs = inputs::StoreInputs::new(&store, Some(&snapshot));
    inputs.lock = match lock::LockState::open(&dockerfile) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Err(ExitCode::from(1)));
        }
    };
    let (plan, plan_diags) = imgbuild_planner::plan(&typed, &opts, &inputs);
    let (errors, _) = report::print(&plan_diags, &resolved.sources);
    let Some(plan) = plan.filter(|_| errors == 0) else {
        eprintln!("{}: the build cannot be planned", dockerfile.display());
        return Ok(Err(ExitCode::from(1)));
    };
    let pins = inputs.lock.finish();
    if let Err(e) = lock::check(&dockerfile, &pins) {
        eprintln!("error: {e}");
        return Ok(Err(ExitCode::from(1)));
    }
    if !plan.unused_build_args.is_empty() {
        eprintln!(
            "warning: build-args not consumed by the build: {}",
            plan.unused_build_args.join(", ")
        );
    }
    Ok(Ok(Prepared {
        store,
        sources: resolved.sources,
        plan,
        snapshot,
        dockerfile,
        resolved: pins,
    }))
}

/// `NAME=VALUE`, or `NAME` alone taking the value from the environment (like docker).
fn parse_build_args(args: &[String]) -> BTreeMap<String, String> {
    args.iter()
        .filter_map(|a| match a.split_once('=') {
            Some((k, v)) => Some((k.to_owned(), v.to_owned())),
            None => std::env::var(a).ok().map(|v| (a.clone(), v)),
        })
        .collect()
}

/// Scans the context with the store's persistent index (unchanged files are not re-read) and
/// the Dockerfile's ignore file.
fn scan_context(
    store: &Store,
    context: &Path,
    dockerfile: &Path,
) -> anyhow::Result<ContextSnapshot> {
    let abs = std::fs::canonicalize(context)
        .map_err(|e| anyhow::anyhow!("build context {}: {e}", context.display()))?;
    let matcher = match crate::cmd::check::dockerignore_path(dockerfile, context) {
        Some(p) => {
            let text = String::from_utf8_lossy(&std::fs::read(&p)?).into_owned();
            let patterns =
                read_ignore_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            Some(
                PatternMatcher::new(&patterns)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let index_path = store.context_dir().join(index_file_name(&abs));
    let mut index = ContextIndex::load(&index_path);
    let snap = ContextSnapshot::scan(&abs, matcher.as_ref(), &mut index)?;
    if index.is_dirty() {
        let tmp = store.root().join("tmp");
        if let Err(e) = index.save(&index_path, &tmp) {
            eprintln!("warning: cannot save the context index: {e}");
        }
    }
    Ok(snap)
}
