//! `imgbuild build` (also `imgbuild .`): build an image from a Dockerfile.

use crate::build::{self, Common, progress};
use crate::cmd::output::{self, Output};
use imgbuild_cache::layer::Compression;
use imgbuild_cache::store::ImageMeta;
use imgbuild_executor::{ExecOptions, Executor, Progress};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Name the image in the local store (`name:tag`); may be given several times.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Where to write the result, in docker buildx syntax: type=oci,dest=FILE[,tar=false]
    /// [,compression=zstd|gzip|uncompressed], type=docker,dest=FILE, type=local,dest=DIR,
    /// type=tar,dest=FILE.
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Write the image ID (its config digest) to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Write the build's digests as JSON to this file.
    #[arg(long = "metadata-file")]
    pub metadata_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: progress::Mode,
    /// `now` puts the current time in the image instead of SOURCE_DATE_EPOCH (default 0),
    /// which makes the build not reproducible.
    #[arg(long)]
    pub timestamp: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let outputs: Vec<Output> = match args
        .outputs
        .iter()
        .map(|o| output::parse(o))
        .collect::<Result<_, _>>()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: --output: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let epoch = match epoch(args.timestamp.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let prep = match build::prepare(&args.common)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let mode = match args.progress {
        progress::Mode::Auto if std::io::stderr().is_terminal() => progress::Mode::Tty,
        progress::Mode::Auto => progress::Mode::Plain,
        m => m,
    };
    let plain = progress::Plain { plan: &prep.plan };
    let live = progress::Live::new(&prep.plan);
    let quiet = imgbuild_executor::Quiet;
    let sink: &dyn Progress = match mode {
        progress::Mode::Tty => &live,
        progress::Mode::Quiet => &quiet,
        _ => &plain,
    };
    let exec = Executor::new(
        &prep.store,
        &prep.plan,
        Some(&prep.snapshot),
        ExecOptions {
            epoch,
            compression: Compression::Zstd,
        },
        sink,
    );
    let built = match exec.run() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    crate::cmd::plan::record_explain(&prep);

    let meta = ImageMeta {
        config: built.config,
        platform: prep.plan.platform.spec(),
        created: imgbuild_executor::rfc3339(epoch),
    };
    for t in &args.tags {
        if let Err(e) = prep.store.tag(t, &built.manifest, meta.clone()) {
            eprintln!("error: tag {t}: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    for o in &outputs {
        if let Err(e) = build::outputs::write(&prep.store, &built.manifest, o, &args.tags) {
            eprintln!("error: writing output {o:?}: {e:#}");
            return Ok(ExitCode::from(1));
        }
    }
    if let Some(p) = &args.iidfile {
        write_file(p, built.config.to_string().as_bytes())?;
    }
    if let Some(p) = &args.metadata_file {
        let v = serde_json::json!({
            "containerimage.digest": built.manifest.to_string(),
            "containerimage.config.digest": built.config.to_string(),
            "image.name": args.tags.join(","),
            "imgbuild.steps.cached": built.cached,
            "imgbuild.steps.executed": built.executed,
            "imgbuild.context.files_hashed": prep.snapshot.stats().files_hashed,
            "imgbuild.context.bytes_hashed": prep.snapshot.stats().bytes_hashed,
        });
        write_file(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    if mode != progress::Mode::Quiet {
        eprintln!(
            "built {} ({} steps run, {} cached)",
            prep.plan.target_stage().name.as_deref().unwrap_or("image"),
            built.executed,
            built.cached
        );
    }
    // The last line on stdout is the manifest digest, for scripts.
    println!("{}", built.manifest);
    Ok(ExitCode::SUCCESS)
}

/// The build's timestamp: SOURCE_DATE_EPOCH when set, else 0; `--timestamp now` opts out.
fn epoch(timestamp: Option<&str>) -> Result<u64, String> {
    match timestamp {
        Some("now") => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)),
        Some(t) => t
            .parse()
            .map_err(|_| format!("--timestamp {t:?}: use `now` or seconds since 1970")),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => v
                .parse()
                .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
            _ => Ok(0),
        },
    }
}

/// Writes a small file atomically (temp name beside it, then rename).
fn write_file(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
