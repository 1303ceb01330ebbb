//! `imgbuild check`: parse and validate a Dockerfile (and the context's .dockerignore)
//! without building it.

use crate::report;
use imgbuild_parser::ignore::{self, MatchType, PatternMatcher};
use imgbuild_parser::{Diagnostic, SourceMap, Span, instructions};
use std::path::{Path, PathBuf};
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
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let mut resolved = match super::load_dockerfile(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
    let mut diags = std::mem::take(&mut resolved.diagnostics);
    let (_, typed_diags) = instructions::check_all(&resolved.dockerfile);
    diags.extend(typed_diags);
    if let Some(ignore_file) = dockerignore_path(&path, &args.context) {
        diags.extend(check_dockerignore(&ignore_file, &mut resolved.sources));
    }
    diags.sort_by_key(|d| (d.span.file, d.span.start, d.span.end));
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

/// The ignore file BuildKit would use: `<Dockerfile>.dockerignore` beside the Dockerfile, else
/// the context's `.dockerignore`.
pub fn dockerignore_path(dockerfile: &Path, context: &Path) -> Option<PathBuf> {
    let specific = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    [specific, context.join(".dockerignore")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Reads and compiles an ignore file; every problem is a diagnostic on its line.
fn check_dockerignore(path: &Path, sources: &mut SourceMap) -> Vec<Diagnostic> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            eprintln!("warning: cannot read {}: {e}", path.display());
            return Vec::new();
        }
    };
    let id = sources.add(path.display().to_string(), text.clone());
    let file_span = Span::new(id, 0, 0);
    let patterns = match ignore::read_ignore_file(&text) {
        Ok(p) => p,
        Err(e) => {
            return vec![
                Diagnostic::error("dockerignore", file_span, e.to_string())
                    .with_help("keep each .dockerignore line under 64 KiB"),
            ];
        }
    };
    // A pattern's line for the span: the one that reads exactly so, else one that holds it
    // (the reader cleans paths, so `./a/` is read as `a`).
    let line_span = |pattern: &str| -> Span {
        let mut exact = None;
        let mut containing = None;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let t = line.trim_end_matches(['\n', '\r']);
            let span = Span::new(id, offset, offset + t.len());
            if !t.starts_with('#') {
                if t.trim() == pattern && exact.is_none() {
                    exact = Some(span);
                } else if containing.is_none() && t.contains(pattern.trim_start_matches('!')) {
                    containing = Some(span);
                }
            }
            offset += line.len();
        }
        exact.or(containing).unwrap_or(file_span)
    };
    let mut diags = Vec::new();
    match PatternMatcher::new(&patterns) {
        Err(e) => diags.push(
            Diagnostic::error("dockerignore", line_span("!"), e.to_string())
                .with_help("a `!` needs a pattern after it, e.g. `!keep.txt`"),
        ),
        Ok(m) => {
            for p in m.patterns() {
                if p.match_type() == MatchType::Unknown {
                    diags.push(
                        Diagnostic::error(
                            "dockerignore",
                            line_span(p.as_str()),
                            format!("syntax error in pattern `{}`", p.as_str()),
                        )
                        .with_help("escape literal `[`, `]` and `\\` with a backslash"),
                    );
                }
            }
        }
    }
    diags
}
