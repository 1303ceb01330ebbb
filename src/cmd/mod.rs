//! One module per subcommand.

pub mod build;
pub mod check;
pub mod lock;
pub mod login;
pub mod output;
pub mod parse;
pub mod plan;
pub mod push;
pub mod run;
pub mod store;

use imgbuild_parser::include::{self, Resolved};
use std::path::Path;

/// Reads a Dockerfile and resolves its INCLUDEs from the file system. Paths in diagnostics are
/// as the user gave them.
pub fn load_dockerfile(path: &Path) -> std::io::Result<Resolved> {
    let bytes = std::fs::read(path)?;
    let name = path.to_string_lossy().into_owned();
    let (text, bad_utf8) = imgbuild_parser::source::decode(&bytes);
    let mut loader = |p: &str| -> Result<String, String> {
        let b = std::fs::read(p).map_err(|e| e.to_string())?;
        String::from_utf8(b)
            .map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
    };
    let mut resolved = include::parse_with_includes(&name, &text, &mut loader);
    if let Some(at) = bad_utf8 {
        let span = imgbuild_parser::Span::new(0, at, at + 1);
        resolved.diagnostics.insert(
            0,
            imgbuild_parser::Diagnostic::error(
                "not-utf8",
                span,
                "the Dockerfile is not valid UTF-8",
            )
            .with_help("save the file as UTF-8 (the marked byte is the first invalid one)"),
        );
    }
    Ok(resolved)
}
