//! `imgbuild build` (also `imgbuild .`): build an image from a Dockerfile.

use crate::build::{self, Common, controls, progress};
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
    /// Run at most N steps at once (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Write the build's timeline to FILE as Chrome trace-event JSON (Perfetto,
    /// chrome://tracing): one event per step, with its lane, cache outcome and wait.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Grant an entitlement: `security.insecure` lets `RUN --security=insecure` run with
    /// every capability (`network.host` is accepted too).
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// A secret for `RUN --mount=type=secret`: `id=NAME,src=FILE` or `id=NAME,env=VAR`
    /// (docker buildx syntax, also `type=file|env`). Its value never enters the image, the
    /// store, a key or a log.
    #[arg(long = "secret", value_name = "id=NAME,src=FILE|env=VAR")]
    pub secrets: Vec<String>,
    /// An ssh agent for `RUN --mount=type=ssh`: `default` (the agent at $SSH_AUTH_SOCK) or
    /// `ID=SOCKET`.
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// When `FROM name[:tag]` asks its registry: always (resolve each tag, download only
    /// missing blobs), missing (use a copy pulled before), never (no network).
    #[arg(long, value_enum, default_value = "always")]
    pub pull: build::inputs::PullPolicy,
    /// Speak plain http to this registry (`HOST` or `HOST:PORT`); loopback always is.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Push the image to the registry of each `-t` name (like `-o type=registry`).
    #[arg(long)]
    pub push: bool,
    /// Export the build cache after a successful build: `type=local,dest=DIR[,mode=min|max]`
    /// (mode=max, the default: every step the build ran or hit; min: the final image's
    /// steps), with the contents of the `RUN --mount=type=cache` mounts the steps use.
    #[arg(long = "cache-to", value_name = "type=local,dest=DIR[,mode=min|max]")]
    pub cache_to: Vec<String>,
    /// Import build cache exported by --cache-to: `type=local,src=DIR`; may be repeated
    /// (the first that has a step wins).
    #[arg(long = "cache-from", value_name = "type=local,src=DIR")]
    pub cache_from: Vec<String>,
    /// Fail unless every source resolves as imgbuild.lock pins it (`imgbuild lock` writes it).
    #[arg(long)]
    pub locked: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (pushes, other_outputs) =
        match build::outputs::registry_outputs(&args.outputs, &args.tags, args.push) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: --output: {e}");
                return Ok(ExitCode::from(2));
            }
        };
    let outputs: Vec<Output> = match other_outputs
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
    let mut caches = match build::cache_io::CacheIo::parse(&args.cache_from, &args.cache_to) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
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
    let entitlements = match controls::parse_allow(&args.allow) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    controls::handle_signals()?;
    let mut session = imgbuild_executor::Session::default();
    for s in &args.secrets {
        if let Err(e) = session.add_secret(s) {
            eprintln!("error: --secret: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    for s in &args.ssh {
        if let Err(e) = session.add_ssh(s) {
            eprintln!("error: --ssh: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    build::inputs::configure_pull(build::inputs::PullOptions {
        policy: args.pull,
        insecure: args.insecure_registry.clone(),
        quiet: args.progress == progress::Mode::Quiet,
    });
    if args.locked {
        build::lock::configure(build::lock::Mode::Check);
    }
    let prep = match build::prepare(&args.common)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if let Err(e) = controls::check_entitlements(&prep.plan, &entitlements) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(1));
    }
    let unikernel = prep.plan.target_stage().unikernel;
    let mut elf_outputs = Vec::new();
    for o in &outputs {
        match (o, unikernel) {
            (Output::Unikernel { dest }, true) => elf_outputs.push(dest.clone()),
            (Output::Unikernel { .. }, false) => {
                eprintln!(
                    "error: --output type=unikernel: the target stage is a container image; \
                     build a `FROM unikernel` stage (--target) for a unikernel"
                );
                return Ok(ExitCode::from(2));
            }
            (other, true) => {
                eprintln!(
                    "error: --output {other:?}: the target stage is a unikernel, which is an ELF \
                     image, not an OCI image or a filesystem: use -o type=unikernel,dest=FILE"
                );
                return Ok(ExitCode::from(2));
            }
            (_, false) => {}
        }
    }
    if unikernel && !pushes.is_empty() {
        eprintln!(
            "error: a unikernel cannot be pushed to a registry (it is not an OCI image): use \
             -o type=unikernel,dest=FILE"
        );
        return Ok(ExitCode::from(2));
    }
    if unikernel && outputs.is_empty() {
        // The default for a unikernel: ./<stage name>.elf.
        let name = prep
            .plan
            .target_stage()
            .name
            .clone()
            .unwrap_or_else(|| "unikernel".into());
        elf_outputs.push(PathBuf::from(format!("{name}.elf")));
    }
    let mode = match args.progress {
        progress::Mode::Auto if std::io::stderr().is_terminal() => progress::Mode::Tty,
        progress::Mode::Auto => progress::Mode::Plain,
        m => m,
    };
    caches.verbose = mode != progress::Mode::Quiet;
    caches.import(&prep);
    let plain = progress::Plain { plan: &prep.plan };
    let live = progress::Live::new(&prep.plan);
    let quiet = imgbuild_executor::Quiet;
    let sink: &dyn Progress = match mode {
        progress::Mode::Tty => &live,
        progress::Mode::Quiet => &quiet,
        _ => &plain,
    };
    let mut exec = Executor::new(
        &prep.store,
        &prep.plan,
        Some(&prep.snapshot),
        ExecOptions {
            epoch,
            compression: Compression::Zstd,
            jobs: args
                .jobs
                .map_or_else(imgbuild_executor::default_jobs, |j| j as usize),
        },
        sink,
    );
    exec.session = session;
    exec.unikernel_runtime = crate::unikernel::files();
    controls::executing(true);
    let result = exec.run();
    controls::executing(false);
    if let Some(p) = &args.trace
        && let Err(e) = controls::write_trace(p, &exec.trace())
    {
        eprintln!("warning: --trace {}: {e}", p.display());
    }
    let built = match result {
        Ok(b) => b,
        Err(e) => {
            for e in e.errors() {
                match e {
                    // A failed step points at its instruction, with the command's last lines.
                    imgbuild_executor::ExecError::Step { message, span, .. } => {
                        let d = imgbuild_parser::Diagnostic::error("step-failed", *span, message)
                            .with_help("fix the instruction or what it runs, then build again");
                        crate::report::print(&[d], &prep.sources);
                    }
                    other => eprintln!("error: {other}"),
                }
            }
            if matches!(e, imgbuild_executor::ExecError::Cancelled) {
                return Ok(ExitCode::from(controls::interrupted().unwrap_or(130)));
            }
            return Ok(ExitCode::from(1));
        }
    };
    crate::cmd::plan::record_explain(&prep);
    if let Some(elf) = &built.elf {
        return finish_unikernel(
            &prep,
            &args,
            elf,
            &elf_outputs,
            &caches,
            mode,
            epoch,
            &built,
        );
    }

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
    if let Err(e) = caches.export(&prep) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(1));
    }
    for dest in &pushes {
        let quiet = mode == progress::Mode::Quiet;
        if let Err(e) = crate::cmd::push::push(
            &prep.store,
            &built.manifest,
            dest,
            &args.insecure_registry,
            quiet,
        ) {
            eprintln!("error: pushing {dest}: {e}");
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

/// A unikernel target: tags (as unikernel records, for `imgbuild run NAME`), the ELF files, the
/// iid and metadata files; the ELF's digest is the last line on stdout.
#[allow(clippy::too_many_arguments)]
fn finish_unikernel(
    prep: &build::Prepared,
    args: &Args,
    elf: &imgbuild_executor::LayerRecord,
    dests: &[PathBuf],
    caches: &build::cache_io::CacheIo,
    mode: progress::Mode,
    epoch: u64,
    built: &imgbuild_executor::Built,
) -> anyhow::Result<ExitCode> {
    let meta = ImageMeta {
        config: elf.digest,
        platform: crate::cmd::run::UNIKERNEL_PLATFORM.into(),
        created: imgbuild_executor::rfc3339(epoch),
    };
    for t in &args.tags {
        if let Err(e) = prep.store.tag(t, &elf.digest, meta.clone()) {
            eprintln!("error: tag {t}: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    for dest in dests {
        if let Err(e) = build::outputs::write_elf(&prep.store, &elf.digest, dest) {
            eprintln!("error: writing {}: {e:#}", dest.display());
            return Ok(ExitCode::from(1));
        }
    }
    if let Some(p) = &args.iidfile {
        write_file(p, elf.digest.to_string().as_bytes())?;
    }
    if let Some(p) = &args.metadata_file {
        let v = serde_json::json!({
            "unikernel.digest": elf.digest.to_string(),
            "unikernel.size": elf.size,
            "image.name": args.tags.join(","),
            "imgbuild.steps.cached": built.cached,
            "imgbuild.steps.executed": built.executed,
        });
        write_file(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    if let Err(e) = caches.export(prep) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(1));
    }
    if mode != progress::Mode::Quiet {
        let name = prep
            .plan
            .target_stage()
            .name
            .as_deref()
            .unwrap_or("unikernel");
        eprintln!(
            "built unikernel {name} ({} steps run, {} cached): {} bytes",
            built.executed, built.cached, elf.size
        );
        for d in dests {
            eprintln!(
                "wrote {}  (boot it: imgbuild run {})",
                d.display(),
                d.display()
            );
        }
    }
    // The last line on stdout is the ELF's sha256, for scripts.
    println!("{}", elf.digest);
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
    let tmp = build::outputs::temp_beside(path);
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
