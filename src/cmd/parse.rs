//! `imgbuild parse`: the parser's view of Dockerfiles, in BuildKit's formats or ours.

use clap::ValueEnum;
use imgbuild_parser::{bkformat, instructions, parse, source};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// One JSON line per file, in the record layout of BuildKit's parser (buildkit-parse).
    Buildkit,
    /// BuildKit's `Node.Dump()` s-expressions, as its parser testfiles hold them.
    Dump,
    /// imgbuild's own trees: typed stages and instructions, syntax nodes with byte spans, and
    /// every diagnostic.
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "buildkit")]
    format: Format,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Exit 0 unless a file could not be read: a Dockerfile that does not parse is reported in
/// the output, not by the exit status.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut unreadable = false;
    for path in &args.files {
        let name = path.to_string_lossy();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read {name}: {e}");
                unreadable = true;
                continue;
            }
        };
        let (text, _) = source::decode(&bytes);
        let parsed = parse(&text, 0);
        match args.format {
            Format::Buildkit => {
                writeln!(out, "{}", bkformat::record(&name, &parsed))?;
            }
            Format::Dump => match &parsed.buildkit_error {
                None => write!(out, "{}", bkformat::dump(&parsed.ast))?,
                Some(e) => eprintln!("{name}: {e}"),
            },
            Format::Json => {
                let (typed, typed_diags) = instructions::check_all(&parsed.ast);
                let mut diagnostics = parsed.diagnostics.clone();
                diagnostics.extend(typed_diags);
                let v = serde_json::json!({
                    "file": name,
                    "ok": !imgbuild_parser::diag::has_errors(&diagnostics),
                    "diagnostics": diagnostics,
                    "typed": typed,
                    "syntax": parsed.ast,
                });
                writeln!(out, "{v}")?;
            }
        }
    }
    out.flush()?;
    Ok(if unreadable {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
