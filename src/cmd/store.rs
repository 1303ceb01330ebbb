//! `imgbuild images`, `imgbuild prune`, `imgbuild du`: looking after the store.

use crate::build::open_store;
use imgbuild_cache::store::{Access, Count, PruneMode};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RootArg {
    /// The store (default: $IMGBUILD_ROOT, /var/lib/imgbuild for root, else
    /// ${XDG_DATA_HOME:-~/.local/share}/imgbuild).
    #[arg(long, env = "IMGBUILD_ROOT")]
    pub root: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub root: RootArg,
    /// Also remove the build cache (step results and extracted layers), keeping only what
    /// tagged images need.
    #[arg(long)]
    pub all: bool,
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn images(a: RootArg) -> anyhow::Result<ExitCode> {
    let store = open_store(a.root.as_deref(), Access::Shared)?;
    println!("{:<40} {:<20} {:<22} DIGEST", "NAME", "ID", "CREATED");
    for (name, digest, meta) in store.images()? {
        println!(
            "{:<40} {:<20} {:<22} {}",
            name,
            &meta.config.hex()[..12],
            meta.created,
            digest
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn du(a: RootArg) -> anyhow::Result<ExitCode> {
    let store = open_store(a.root.as_deref(), Access::Shared)?;
    let u = store.du()?;
    let row = |what: &str, c: &Count| println!("{what:<10} {:>8} {:>12}", c.count, human(c.bytes));
    println!("{:<10} {:>8} {:>12}", "", "ENTRIES", "SIZE");
    row("blobs", &u.blobs);
    row("steps", &u.steps);
    row("layers", &u.layers);
    row("context", &u.context);
    row("tmp", &u.tmp);
    row("cache", &u.cache_mounts);
    row("total", &u.total);
    Ok(ExitCode::SUCCESS)
}

pub fn prune(a: PruneArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(a.root.root.as_deref(), Access::Exclusive)?;
    let mode = if a.all {
        PruneMode::All
    } else {
        PruneMode::KeepCache
    };
    let report = store.prune(mode, imgbuild_executor::record_refs)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "removed {} blobs, {} cache records, {} extracted layers: {} freed",
        report.removed.blobs.count,
        report.removed.steps.count,
        report.removed.layers.count,
        human(report.removed.total.bytes)
    );
    Ok(ExitCode::SUCCESS)
}
