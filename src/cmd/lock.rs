//! `imgbuild lock`: resolve every source of a build now and write `imgbuild.lock` beside the
//! Dockerfile (see `build::lock` for the format).

use crate::build::{self, Common, lock};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Speak plain http to this registry (`HOST` or `HOST:PORT`); loopback always is.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    lock::configure(lock::Mode::Fresh);
    // Tags are resolved against their registries now, whatever an earlier pull left.
    build::inputs::configure_pull(build::inputs::PullOptions {
        policy: build::inputs::PullPolicy::Always,
        insecure: args.insecure_registry.clone(),
        quiet: false,
    });
    let prep = match build::prepare(&args.common)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let file = prep.resolved;
    let path = lock::path_for(&prep.dockerfile);
    let bytes = file.to_bytes();
    // Nothing changed: leave the file (and its mtime) alone.
    if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
        let tmp = build::outputs::temp_beside(&path);
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                anyhow::anyhow!("writing {}: {e}", path.display())
            })?;
    }
    for (source, digest) in &file.images {
        eprintln!("image {source}: {digest}");
    }
    for (source, digest) in &file.urls {
        eprintln!("url {source}: {digest}");
    }
    for (source, commit) in &file.git {
        eprintln!("git {source}: {commit}");
    }
    for (source, why) in &file.unpinned {
        eprintln!("not pinned: {source}: {why}");
    }
    eprintln!(
        "wrote {} ({} pinned, {} not pinned)",
        path.display(),
        file.images.len() + file.urls.len() + file.git.len(),
        file.unpinned.len()
    );
    Ok(ExitCode::SUCCESS)
}
