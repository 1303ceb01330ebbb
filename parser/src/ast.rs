//! The syntax tree: what BuildKit's parser builds (`parser.Node`), plus exact source spans.
//!
//! One [`Node`] per instruction. Arguments are kept exactly as BuildKit's node chain holds them
//! (for ENV and LABEL that includes the separator nodes of current BuildKit: `""` for the legacy
//! `KEY value` form, `"="` for `KEY=value`), so the dump and buildkit formats are lossless
//! projections of this tree.

use serde::Serialize;

/// Index of a source file in a [`crate::SourceMap`]; INCLUDE brings in more than one.
pub type FileId = u32;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span { file, start, end }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The smallest span covering both (same file assumed).
    pub fn join(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// A string value together with where it was written.
///
/// For values that do not map onto one contiguous piece of source (a JSON string with escapes,
/// a word spread over a line continuation) the span covers the whole source text they came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Word {
    pub value: String,
    pub span: Span,
}

/// A heredoc attached to RUN, COPY or ADD (or ONBUILD of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The terminator word, quotes removed.
    pub name: String,
    /// The body, raw: every line with its newline, leading tabs kept even for `<<-`.
    pub content: String,
    /// False when any part of the word was quoted: the body is then not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body when it is used.
    pub chomp: bool,
    /// The file descriptor prefix (`3<<EOF`), 0 when none.
    pub fd: u32,
    /// From the `<<` to the terminator line, inclusive.
    pub span: Span,
}

/// One instruction, as BuildKit's parser sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instruction keyword as written (`from`, `RUN`, or an unknown word).
    pub keyword: String,
    pub keyword_span: Span,
    /// Leading `--name=value` words, quotes removed.
    pub flags: Vec<Word>,
    /// The argument node chain's values.
    pub args: Vec<Word>,
    /// ONBUILD: the trigger instruction.
    pub sub: Option<Box<Node>>,
    /// The arguments were written as a JSON array (exec form).
    pub json: bool,
    /// The logical line: continuations joined, comments inside them dropped.
    pub original: String,
    pub heredocs: Vec<Heredoc>,
    /// 1-based, inclusive; the end counts continuation and heredoc lines.
    pub start_line: usize,
    pub end_line: usize,
    /// From the keyword to the end of the last physical line the instruction took.
    pub span: Span,
    /// The comment lines directly above the instruction (`#` and surrounding space removed).
    pub prev_comment: Vec<String>,
}

impl Node {
    /// The instruction keyword in lower case, which is how instructions are matched.
    pub fn name(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }

    /// The instruction that carries arguments and heredocs: ONBUILD's trigger, or this node.
    pub fn effective(&self) -> &Node {
        self.sub.as_deref().unwrap_or(self)
    }
}

/// A parser directive at the top of a file (`# syntax=…`, `# escape=…`, `# check=…`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Directive {
    /// Lower-cased name.
    pub name: String,
    pub value: String,
    pub line: usize,
    pub span: Span,
}

/// A parsed Dockerfile (one source file; INCLUDE is resolved by [`crate::include`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    pub file: FileId,
    pub directives: Vec<Directive>,
    /// The escape token in force: `\` or `` ` ``.
    pub escape: char,
    pub children: Vec<Node>,
}

impl Dockerfile {
    pub fn directive(&self, name: &str) -> Option<&Directive> {
        self.directives.iter().find(|d| d.name == name)
    }
}
