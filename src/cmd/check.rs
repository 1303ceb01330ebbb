//! `imgbuild check`: parse and validate a Dockerfile without building it.

use crate::report;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The build context directory.
    #[arg(default_value = ".")]
    context: PathBuf,
}

/// Exit 1 when there are errors; warnings alone exit 0.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = args.file.unwrap_or_else(|| args.context.join("Dockerfile"));
    let resolved = match super::load_dockerfile(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
    let diags = resolved.diagnostics.clone();
    let (errors, warnings) = report::print(&diags, &resolved.sources);
    let name = path.display();
    if errors > 0 {
        eprintln!("{name}: {errors} error(s), {warnings} warning(s)");
        Ok(ExitCode::from(1))
    } else {
        eprintln!("{name}: ok, {warnings} warning(s)");
        Ok(ExitCode::SUCCESS)
    }
}
