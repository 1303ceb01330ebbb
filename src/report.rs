//! Renders parser diagnostics with miette: `file:line:col`, the source line with the offending
//! text underlined, and the one-sentence fix.

use imgbuild_parser::{Diagnostic, Severity, SourceMap, Span};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use std::fmt;
use std::io::IsTerminal;

/// One diagnostic bound to its source file, in the shape miette renders.
struct Rendered {
    message: String,
    severity: miette::Severity,
    help: Option<String>,
    source: NamedSource<String>,
    labels: Vec<LabeledSpan>,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

fn source_span(text: &str, span: Span) -> SourceSpan {
    let start = span.start.min(text.len());
    let end = span.end.clamp(start, text.len());
    // An empty span at the very end has nothing to underline; point at the last character.
    if start == end && start == text.len() && start > 0 {
        let prev = text[..start]
            .char_indices()
            .next_back()
            .map_or(0, |(i, _)| i);
        return (prev, start - prev).into();
    }
    (start, end - start).into()
}

/// Renders one diagnostic as text. `color` picks the themed or the plain output.
pub fn render(d: &Diagnostic, sources: &SourceMap, color: bool) -> String {
    let file = sources.get(d.span.file);
    let mut help = d.help.clone();
    let mut labels = vec![LabeledSpan::new_primary_with_span(
        None,
        source_span(&file.text, d.span),
    )];
    for l in &d.labels {
        if l.span.file == d.span.file {
            labels.push(LabeledSpan::new_with_span(
                Some(l.message.clone()),
                source_span(&file.text, l.span),
            ));
        } else {
            // miette draws one source per report: name the other file's location instead.
            let also = format!("{}: {}", sources.location(l.span), l.message);
            help = Some(match help {
                Some(h) => format!("{h}\n{also}"),
                None => also,
            });
        }
    }
    let r = Rendered {
        message: d.message.clone(),
        severity: match d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        },
        help,
        source: NamedSource::new(file.name.clone(), file.text.clone()),
        labels,
    };
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let mut out = String::new();
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    if handler.render_report(&mut out, &r).is_err() {
        out = format!("{}: {}", sources.location(d.span), d.message);
    }
    out
}

/// Prints diagnostics to stderr, each led by its `file:line:col` so it can be grepped and
/// clicked. Returns (errors, warnings).
pub fn print(diags: &[Diagnostic], sources: &SourceMap) -> (usize, usize) {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (mut errors, mut warnings) = (0, 0);
    for d in diags {
        match d.severity {
            Severity::Error => errors += 1,
            Severity::Warning => warnings += 1,
        }
        let kind = if d.is_error() { "error" } else { "warning" };
        // One grep-able line; the full message follows in the rendered report.
        eprintln!(
            "{}: {kind}[{}]: {}",
            sources.location(d.span),
            d.code,
            d.message.lines().next().unwrap_or("")
        );
        eprintln!("{}", render(d, sources, color));
    }
    (errors, warnings)
}
