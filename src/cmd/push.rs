//! `imgbuild push NAME [DEST]`: an image from the store to a registry.

use crate::build::inputs::registry_options;
use crate::build::open_store;
use imgbuild_cache::Digest;
use imgbuild_cache::store::{Access, Store};
use imgbuild_registry::{Reference, Registry};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The store (default: $IMGBUILD_ROOT, /var/lib/imgbuild for root, else
    /// ${XDG_DATA_HOME:-~/.local/share}/imgbuild).
    #[arg(long, env = "IMGBUILD_ROOT")]
    pub root: Option<PathBuf>,
    /// Speak plain http to this registry (`HOST` or `HOST:PORT`); loopback always is.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
    /// Print only the manifest digest.
    #[arg(short, long)]
    pub quiet: bool,
    /// The image in the store: `name:tag`, or a manifest digest or prefix.
    pub name: String,
    /// Where to push it (default: NAME): `registry/repository[:tag]`.
    pub dest: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let dest = a.dest.as_deref().unwrap_or(&a.name);
    let dest = match Reference::parse(dest) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let store = open_store(a.root.as_deref(), Access::Shared)?;
    let manifest = match store.resolve(&a.name) {
        Ok(Some((d, _))) => d,
        Ok(None) => {
            eprintln!(
                "error: {} is not in the local image store (build it with -t {0})",
                a.name
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match push(&store, &manifest, &dest, &a.insecure, a.quiet) {
        Ok(()) => {
            println!("{manifest}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Pushes a stored image and reports what moved (also used by `build --push` and
/// `-o type=registry`).
pub fn push(
    store: &Store,
    manifest: &Digest,
    dest: &Reference,
    insecure: &[String],
    quiet: bool,
) -> Result<(), imgbuild_registry::RegistryError> {
    let registry = Registry::new(registry_options(insecure))?;
    let p = registry.push_image(store, manifest, dest)?;
    if !quiet {
        eprintln!(
            "pushed {dest}@{}: {} blobs uploaded ({} bytes), {} skipped (already there), {} mounted",
            p.manifest_digest, p.blobs_uploaded, p.bytes_uploaded, p.blobs_skipped, p.blobs_mounted
        );
    }
    Ok(())
}
