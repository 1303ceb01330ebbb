//! The syntax layer: BuildKit's line parser, rule for rule, with spans.
//!
//! What BuildKit does, and so what this does:
//! - parser directives (`# syntax=`, `# escape=`, `# check=`) only at the very top;
//! - a line ending in the escape token continues on the next one; the token and the newline go,
//!   nothing is put in their place, and the continuation's leading whitespace stays;
//! - inside a continuation, comment lines are dropped and blank lines are dropped with a warning;
//! - per instruction, the arguments are split by that instruction's rule (see [`split_args`]);
//! - RUN, COPY and ADD (and ONBUILD of them) in shell form take heredoc bodies from the lines
//!   that follow.
//!
//! Unlike BuildKit, an error does not end the parse: the offending instruction is dropped, a
//! diagnostic recorded, and parsing goes on. [`Parsed::buildkit_error`] still says what BuildKit
//! would have answered.

use crate::ast::{Directive, Dockerfile, FileId, Heredoc, Node, Span, Word};
use crate::diag::Diagnostic;

/// Go's bufio.Scanner refuses lines this long (its 64 KiB buffer must also hold the newline).
pub const MAX_LINE: usize = 65535;

/// How deep `ONBUILD ONBUILD …` may nest in the syntax tree.
pub const MAX_ONBUILD_DEPTH: usize = 4;

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// The result of parsing one file.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub ast: Dockerfile,
    /// Errors and warnings in source order.
    pub diagnostics: Vec<Diagnostic>,
    /// The error BuildKit's parser would return for this file, if any (its exact message).
    pub buildkit_error: Option<String>,
}

impl Parsed {
    pub fn has_errors(&self) -> bool {
        crate::diag::has_errors(&self.diagnostics)
    }
}

/// Parse one Dockerfile. `file` is the id its spans carry.
pub fn parse(src: &str, file: FileId) -> Parsed {
    Parser::new(src, file).run()
}

/// The names of the instructions BuildKit knows, upper-case.
pub const BUILDKIT_INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Whether BuildKit's parser knows the instruction; any other keyword keeps no arguments in
/// its tree.
pub fn is_buildkit_instruction(name: &str) -> bool {
    BUILDKIT_INSTRUCTIONS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(name))
}

/// One physical line: its text without the line terminator, where it starts, and where the
/// next line starts.
#[derive(Clone, Copy)]
struct Line<'a> {
    /// With the trailing `\n` (if any) still attached, as Go's scanner hands it out.
    raw: &'a str,
    start: usize,
}

impl<'a> Line<'a> {
    /// The text without trailing `\r`/`\n` characters (BuildKit's trimNewline).
    fn text(&self) -> &'a str {
        self.raw.trim_end_matches(['\r', '\n'])
    }
    fn end(&self) -> usize {
        self.start + self.raw.len()
    }
}

/// Splits source into physical lines the way Go's bufio.Scanner with BuildKit's scanLines does,
/// including its refusal of over-long lines.
struct Lines<'a> {
    src: &'a str,
    pos: usize,
}

enum Next<'a> {
    Line(Line<'a>),
    TooLong(Line<'a>),
    Eof,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Next<'a> {
        if self.pos >= self.src.len() {
            return Next::Eof;
        }
        let rest = &self.src[self.pos..];
        let len = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = Line {
            raw: &rest[..len],
            start: self.pos,
        };
        self.pos += len;
        let content = len - usize::from(line.raw.ends_with('\n'));
        if content > MAX_LINE {
            // Go stops scanning here for good.
            self.pos = self.src.len();
            return Next::TooLong(line);
        }
        Next::Line(line)
    }
}

/// A logical line being assembled from physical pieces, remembering where each piece came from
/// so any offset in it maps back to the source.
#[derive(Default)]
struct Logical {
    text: String,
    /// (offset in `text`, offset in source), one per piece, ascending.
    pieces: Vec<(usize, usize)>,
}

impl Logical {
    fn push(&mut self, piece: &str, src_offset: usize) {
        if piece.is_empty() {
            return;
        }
        self.pieces.push((self.text.len(), src_offset));
        self.text.push_str(piece);
    }

    /// Source offset of a logical offset. An offset at the end of a piece maps to the end of
    /// that piece, not to the start of the next one.
    fn source(&self, off: usize) -> usize {
        let i = self.pieces.partition_point(|&(l, _)| l < off);
        match i {
            0 => self.pieces.first().map_or(0, |&(_, s)| s),
            _ => {
                let (l, s) = self.pieces[i - 1];
                s + (off - l)
            }
        }
    }

    fn span(&self, file: FileId, start: usize, end: usize) -> Span {
        let s = self.source(start);
        let e = self.source(end).max(s);
        Span::new(file, s, e)
    }
}

/// Directive scanning state: directives are only recognised until the first other line.
#[derive(Default)]
struct DirectiveState {
    done: bool,
    seen: Vec<String>,
}

struct Parser<'a> {
    src: &'a str,
    file: FileId,
    lines: Lines<'a>,
    escape: char,
    directives: DirectiveState,
    out_directives: Vec<Directive>,
    children: Vec<Node>,
    diags: Vec<Diagnostic>,
    /// What BuildKit would return: its first error, decided in its order.
    bk_error: Option<String>,
    /// Go's scanner gave up on an over-long line (BuildKit reports it last).
    scanner_failed: bool,
    line_no: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str, file: FileId) -> Parser<'a> {
        Parser {
            src,
            file,
            lines: Lines { src, pos: 0 },
            escape: '\\',
            directives: DirectiveState::default(),
            out_directives: Vec::new(),
            children: Vec::new(),
            diags: Vec::new(),
            bk_error: None,
            scanner_failed: false,
            line_no: 0,
        }
    }

    fn error(&mut self, d: Diagnostic) {
        if self.bk_error.is_none() {
            self.bk_error = Some(d.message.clone());
        }
        self.diags.push(d);
    }

    fn too_long(&mut self, line: &Line) {
        let span = Span::new(self.file, line.start, line.start + line.text().len());
        let msg = format!("dockerfile line greater than max allowed size of {MAX_LINE}");
        self.scanner_failed = true;
        self.diags.push(
            Diagnostic::error("line-too-long", span, msg)
                .with_help("split the line with the escape character at the end of each part"),
        );
    }

    fn run(mut self) -> Parsed {
        let mut comments: Vec<String> = Vec::new();
        loop {
            let line = match self.lines.next() {
                Next::Eof => break,
                Next::TooLong(l) => {
                    self.too_long(&l);
                    break;
                }
                Next::Line(l) => l,
            };
            let mut text = line.text();
            let mut text_start = line.start;
            if self.line_no == 0 && text.starts_with('\u{feff}') {
                text = &text[3..];
                text_start += 3;
            }
            if is_comment(text) {
                // BuildKit drops the first byte of the raw line, not the `#`: an indented
                // comment keeps its `#`.
                let c = text.get(1..).unwrap_or(text.trim_start()).trim();
                if c.is_empty() {
                    comments.clear();
                } else {
                    comments.push(c.to_owned());
                }
            }
            self.line_no += 1;
            let start_line = self.line_no;
            let trimmed = text.trim_start();
            let trimmed_start = text_start + (text.len() - trimmed.len());
            if self.possible_directive(trimmed, trimmed_start) {
                comments.pop();
            }
            let first = if is_comment(trimmed) { "" } else { trimmed };

            let mut logical = Logical::default();
            let (piece, mut end_of_line) = self.trim_continuation(first);
            if end_of_line && piece.is_empty() {
                continue;
            }
            logical.push(piece, trimmed_start);
            let mut last_end = line.end();
            let mut empty_continuation = false;
            while !end_of_line {
                let next = match self.lines.next() {
                    Next::Eof => break,
                    Next::TooLong(l) => {
                        self.too_long(&l);
                        break;
                    }
                    Next::Line(l) => l,
                };
                self.line_no += 1;
                let t = next.text();
                self.possible_directive(t, next.start);
                if is_comment(t) {
                    continue;
                }
                last_end = next.end();
                if t.trim_start().is_empty() {
                    empty_continuation = true;
                    continue;
                }
                let (piece, eol) = self.trim_continuation(t);
                logical.push(piece, next.start);
                end_of_line = eol;
            }

            let node_span_end = trim_newline_end(self.src, last_end);
            if empty_continuation {
                let span = Span::new(self.file, trimmed_start, node_span_end);
                self.diags.push(
                    Diagnostic::warning(
                        "no-empty-continuation",
                        span,
                        format!("Empty continuation line found in: {}", logical.text),
                    )
                    .with_help(
                        "Empty continuation lines will become errors in a future release: \
                         remove the blank lines inside this instruction",
                    ),
                );
            }

            let node = self.node_from_line(&logical, 0, logical.text.len(), comments.clone(), 0);
            comments.clear();
            let mut node = match node {
                Ok(n) => n,
                Err(d) => {
                    self.error(d);
                    continue;
                }
            };
            let mut end = node_span_end;
            if can_contain_heredoc(&node) && logical.text.contains("<<") {
                match self.read_heredocs(&logical, start_line) {
                    Ok((docs, e)) => {
                        node.heredocs = docs;
                        if let Some(e) = e {
                            end = e;
                        }
                    }
                    Err(d) => {
                        self.error(d);
                        continue;
                    }
                }
            }
            node.start_line = start_line;
            node.end_line = self.line_no;
            node.span = Span::new(self.file, trimmed_start, end.max(trimmed_start));
            self.children.push(node);
        }

        // BuildKit returned at its first instruction error already; otherwise it checks for an
        // empty file before it reports the scanner's error.
        if self.bk_error.is_none() {
            if self.children.is_empty() {
                let at = self.src.len();
                self.error(
                    Diagnostic::error(
                        "empty-dockerfile",
                        Span::new(self.file, at, at),
                        "file with no instructions",
                    )
                    .with_help("a Dockerfile needs at least a FROM instruction"),
                );
            } else if self.scanner_failed {
                self.bk_error = Some(format!(
                    "dockerfile line greater than max allowed size of {MAX_LINE}"
                ));
            }
        }
        self.diags.sort_by_key(|d| (d.span.start, d.span.end));
        Parsed {
            ast: Dockerfile {
                file: self.file,
                directives: self.out_directives,
                escape: self.escape,
                children: self.children,
            },
            diagnostics: self.diags,
            buildkit_error: self.bk_error,
        }
    }

    /// BuildKit's DirectiveParser.ParseLine, fed every line it sees until it is done.
    /// Returns true when the line was a directive.
    fn possible_directive(&mut self, text: &str, start: usize) -> bool {
        if self.directives.done {
            return false;
        }
        let Some(body) = text.strip_prefix('#') else {
            self.directives.done = true;
            return false;
        };
        let body_trimmed = body.trim_start();
        let Some((name, value, vstart)) = directive_match(body_trimmed) else {
            self.directives.done = true;
            return false;
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.directives.done = true;
            return false;
        }
        let span = Span::new(self.file, start, start + text.len());
        if self.directives.seen.contains(&name) {
            self.error(
                Diagnostic::error(
                    "duplicate-directive",
                    span,
                    format!("only one {name} parser directive can be used"),
                )
                .with_help("remove the repeated directive line"),
            );
            return false;
        }
        self.directives.seen.push(name.clone());
        let value_offset = start + 1 + (body.len() - body_trimmed.len()) + vstart;
        self.out_directives.push(Directive {
            name: name.clone(),
            value: value.to_owned(),
            line: self.line_no,
            span,
        });
        if name == "escape" {
            match value {
                "\\" => self.escape = '\\',
                "`" => self.escape = '`',
                _ => {
                    let vspan = Span::new(self.file, value_offset, value_offset + value.len());
                    self.error(
                        Diagnostic::error(
                            "invalid-escape",
                            vspan,
                            format!("invalid escape token '{value}' does not match ` or \\"),
                        )
                        .with_help("use `# escape=\\` (the default) or `# escape=`` ` ``"),
                    );
                    return false;
                }
            }
        }
        true
    }

    /// BuildKit's line-continuation rule: the line ends in the escape token (plus spaces or
    /// tabs) and the token is not itself escaped, or the line is only the token.
    /// Returns the line without the token and whether the instruction ends here.
    fn trim_continuation<'s>(&self, line: &'s str) -> (&'s str, bool) {
        let body = line.trim_end_matches([' ', '\t']);
        let Some(before) = body.strip_suffix(self.escape) else {
            return (line, true);
        };
        match before.chars().next_back() {
            None => ("", false),
            Some(c) if c == self.escape => (line, true),
            Some(_) => (before, false),
        }
    }

    /// BuildKit's newNodeFromLine over `logical.text[from..to]`.
    fn node_from_line(
        &self,
        logical: &Logical,
        from: usize,
        to: usize,
        prev_comment: Vec<String>,
        depth: usize,
    ) -> Result<Node, Diagnostic> {
        let full = &logical.text[from..to];
        let t = full.trim();
        let t_off = from + (full.len() - full.trim_start().len());
        let (cmd, after_cmd) = match t.find(is_go_ws) {
            Some(i) => {
                let rest = t[i..].trim_start_matches(is_go_ws);
                (&t[..i], Some((rest, t_off + (t.len() - rest.len()))))
            }
            None => (t, None),
        };
        let keyword_span = logical.span(self.file, t_off, t_off + cmd.len());
        let mut flags = Vec::new();
        let (mut args, mut args_off) = ("", t_off + t.len());
        if let Some((rest, rest_off)) = after_cmd {
            let (remaining, fl) = extract_flags(rest, self.escape);
            for (value, a, b) in fl {
                flags.push(Word {
                    value,
                    span: logical.span(self.file, rest_off + a, rest_off + b),
                });
            }
            let rem_off = rest_off + (rest.len() - remaining.len());
            args = remaining.trim();
            args_off = rem_off + (remaining.len() - remaining.trim_start().len());
        }
        let lower = cmd.to_ascii_lowercase();
        let word = |value: String, a: usize, b: usize| Word {
            value,
            span: logical.span(self.file, args_off + a, args_off + b),
        };
        let whole = || word(args.to_owned(), 0, args.len());
        let err = |msg: String| {
            Diagnostic::error(
                "syntax",
                logical.span(self.file, t_off, t_off + t.len()),
                msg,
            )
        };
        let mut json = false;
        let mut sub = None;
        let values: Vec<Word> = match lower.as_str() {
            "add" | "copy" | "volume" => match parse_json(args) {
                Json::Array(v) => {
                    json = true;
                    v.into_iter().map(|s| word(s, 0, args.len())).collect()
                }
                Json::NotStrings => {
                    return Err(err(NOT_STRING_ARRAY.into())
                        .with_help("write every element of the array as a \"quoted string\""));
                }
                Json::No => split_ws(args)
                    .map(|(s, a, b)| word(s.into(), a, b))
                    .collect(),
            },
            "run" | "cmd" | "entrypoint" | "shell" => {
                if args.is_empty() {
                    Vec::new()
                } else {
                    match parse_json(args) {
                        Json::Array(v) => {
                            json = true;
                            v.into_iter().map(|s| word(s, 0, args.len())).collect()
                        }
                        Json::NotStrings => {
                            return Err(err(NOT_STRING_ARRAY.into()).with_help(
                                "write every element of the array as a \"quoted string\"",
                            ));
                        }
                        Json::No => vec![whole()],
                    }
                }
            }
            "from" | "expose" => split_ws(args)
                .map(|(s, a, b)| word(s.into(), a, b))
                .collect(),
            "maintainer" | "user" | "workdir" | "stopsignal" => {
                if args.is_empty() {
                    Vec::new()
                } else {
                    vec![whole()]
                }
            }
            "arg" => parse_words(args, self.escape)
                .into_iter()
                .map(|(s, a, b)| word(s, a, b))
                .collect(),
            "env" | "label" => {
                let key = if lower == "env" { "ENV" } else { "LABEL" };
                name_values(args, key, self.escape)
                    .map_err(|m| {
                        err(m).with_help(format!(
                            "write `{key} NAME=value` (several pairs may follow on one line)"
                        ))
                    })?
                    .into_iter()
                    .map(|(s, a, b)| word(s, a, b))
                    .collect()
            }
            "healthcheck" => {
                let sep = args.find(char::is_whitespace).unwrap_or(args.len());
                if sep == 0 {
                    Vec::new()
                } else {
                    let rest = args[sep..].trim_start();
                    let rest_off = args.len() - rest.len();
                    let mut v = vec![word(args[..sep].to_owned(), 0, sep)];
                    if !rest.is_empty() {
                        match parse_json(rest) {
                            Json::Array(items) => {
                                json = true;
                                v.extend(items.into_iter().map(|s| word(s, rest_off, args.len())));
                            }
                            Json::NotStrings => {
                                return Err(err(NOT_STRING_ARRAY.into()).with_help(
                                    "write every element of the array as a \"quoted string\"",
                                ));
                            }
                            Json::No => v.push(word(rest.to_owned(), rest_off, args.len())),
                        }
                    }
                    v
                }
            }
            "onbuild" => {
                if depth >= MAX_ONBUILD_DEPTH {
                    // BuildKit would recurse; nothing valid nests this deep (the typed layer
                    // rejects ONBUILD ONBUILD), and a long chain would cost quadratic memory.
                    return Err(err(format!(
                        "ONBUILD nested more than {MAX_ONBUILD_DEPTH} levels deep"
                    ))
                    .with_help("ONBUILD takes one trigger instruction, which cannot be ONBUILD"));
                }
                if !args.is_empty() {
                    sub = Some(Box::new(self.node_from_line(
                        logical,
                        args_off,
                        args_off + args.len(),
                        Vec::new(),
                        depth + 1,
                    )?));
                }
                Vec::new()
            }
            // BuildKit keeps no arguments for words it does not know; we keep them split on
            // whitespace so the typed layer can read our extensions (INCLUDE, APP, MODULE) and
            // explain unknown ones. The BuildKit projections print `""` instead.
            _ => split_ws(args)
                .map(|(s, a, b)| word(s.into(), a, b))
                .collect(),
        };
        Ok(Node {
            keyword: cmd.to_owned(),
            keyword_span,
            flags,
            args: values,
            sub,
            json,
            original: full.to_owned(),
            heredocs: Vec::new(),
            start_line: 0,
            end_line: 0,
            span: logical.span(self.file, t_off, t_off + t.len()),
            prev_comment,
        })
    }

    /// Reads the bodies of the heredocs the logical line opens. Returns them and the source
    /// offset where the last body's terminator line ends.
    fn read_heredocs(
        &mut self,
        logical: &Logical,
        start_line: usize,
    ) -> Result<(Vec<Heredoc>, Option<usize>), Diagnostic> {
        let mut docs = Vec::new();
        let mut end = None;
        for (word, a, b) in heredoc_words(&logical.text) {
            let opened = logical.span(self.file, a, b);
            let Some(mut doc) = parse_heredoc(&word).map_err(|msg| {
                Diagnostic::error("heredoc", opened, msg)
                    .with_help("close the quote in the heredoc word")
            })?
            else {
                continue;
            };
            let mut content = String::new();
            let mut terminated = false;
            let mut last = opened.end;
            loop {
                let line = match self.lines.next() {
                    Next::Eof => break,
                    Next::TooLong(l) => {
                        self.line_no += 1;
                        self.too_long(&l);
                        break;
                    }
                    Next::Line(l) => l,
                };
                self.line_no += 1;
                last = line.end();
                let mut candidate = line.text();
                if doc.chomp {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == doc.name {
                    terminated = true;
                    break;
                }
                content.push_str(line.raw);
            }
            if !terminated {
                let d = Diagnostic::error("unterminated-heredoc", opened, "unterminated heredoc")
                    .with_help(format!(
                        "end the heredoc with a line holding only `{}` (started on line {start_line})",
                        doc.name
                    ));
                return Err(d);
            }
            doc.content = content;
            doc.span = Span::new(self.file, opened.start, trim_newline_end(self.src, last));
            end = Some(doc.span.end);
            docs.push(doc);
        }
        Ok((docs, end))
    }
}

/// Where a span ending at `end` should stop so that it does not include the line terminator.
fn trim_newline_end(src: &str, end: usize) -> usize {
    let bytes = src.as_bytes();
    let mut e = end.min(bytes.len());
    while e > 0 && matches!(bytes[e - 1], b'\n' | b'\r') {
        e -= 1;
    }
    e
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// The whitespace of BuildKit's `[\t\v\f\r ]+` splitting regex.
fn is_go_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Go `\s` (RE2): `[\t\n\f\r ]`.
fn is_re2_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

/// Matches `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`; returns name, value and the value's
/// byte offset in `s`.
fn directive_match(s: &str) -> Option<(&str, &str, usize)> {
    let first = s.chars().next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_end = s
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(s.len());
    let after = s[name_end..].trim_start_matches(is_re2_space);
    let after = after.strip_prefix('=')?;
    let value = after.trim_start_matches(is_re2_space);
    let vstart = s.len() - value.len();
    if value.contains('\n') {
        return None;
    }
    let value = value.trim_end_matches(is_re2_space);
    if value.is_empty() {
        return None;
    }
    Some((&s[..name_end], value, vstart))
}

/// Whitespace-delimited words of an already trimmed string, with their byte ranges.
fn split_ws(s: &str) -> impl Iterator<Item = (&str, usize, usize)> {
    let base = s.as_ptr() as usize;
    s.split(is_go_ws).filter(|w| !w.is_empty()).map(move |w| {
        let a = w.as_ptr() as usize - base;
        (w, a, a + w.len())
    })
}

enum Json {
    Array(Vec<String>),
    NotStrings,
    No,
}

/// BuildKit's parseJSON: the rest must be exactly one JSON array; an array holding anything
/// but strings is an error, anything else is not JSON form.
fn parse_json(rest: &str) -> Json {
    let t = rest.trim_start();
    if !t.starts_with('[') {
        return Json::No;
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(t) {
        Ok(items) => {
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                match it {
                    serde_json::Value::String(s) => out.push(s),
                    _ => return Json::NotStrings,
                }
            }
            Json::Array(out)
        }
        Err(_) => Json::No,
    }
}

/// BuildKit's extractBuilderFlags: leading words that start with `--`, quote-aware, quotes
/// removed, the escape token escaping the next character. A bare `--` ends the flags.
/// Returns the rest of the line and each flag with its byte range in `line`.
fn extract_flags(line: &str, escape: char) -> (&str, Vec<(String, usize, usize)>) {
    let mut flags = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        // Skip spaces; stop unless the next word starts with `--`.
        let start = loop {
            match chars.peek() {
                None => return ("", flags),
                Some(&(_, c)) if c.is_whitespace() => {
                    chars.next();
                }
                Some(&(i, _)) => break i,
            }
        };
        if !line[start..].starts_with("--") {
            return (&line[start..], flags);
        }
        let mut word = String::new();
        let mut blank_ok = false;
        let mut quote: Option<char> = None;
        let mut end = line.len();
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    blank_ok = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == escape => match chars.next() {
                    Some((_, n)) => word.push(n),
                    None => quote = None,
                },
                _ => word.push(c),
            }
        }
        if word == "--" {
            let rest = &line[end..];
            return (if end == line.len() { "" } else { rest }, flags);
        }
        if blank_ok || !word.is_empty() {
            flags.push((word, start, end));
        }
    }
}

/// BuildKit's parseWords: whitespace-separated words, quotes and escapes kept as written.
fn parse_words(rest: &str, escape: char) -> Vec<(String, usize, usize)> {
    let mut words = Vec::new();
    let mut chars = rest.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        let mut blank_ok = false;
        let mut quote: Option<char> = None;
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match quote {
                None => {
                    if c.is_whitespace() {
                        end = i;
                        break;
                    }
                    if c == '\'' || c == '"' {
                        quote = Some(c);
                        blank_ok = true;
                    }
                    if c == escape {
                        // An escape token at the end of the line is dropped.
                        if let Some((_, n)) = chars.next() {
                            word.push(c);
                            word.push(n);
                        }
                        continue;
                    }
                    word.push(c);
                }
                Some(q) => {
                    if c == q {
                        quote = None;
                    }
                    if c == escape && q != '\'' {
                        match chars.next() {
                            Some((_, n)) => {
                                word.push(c);
                                word.push(n);
                            }
                            None => quote = None,
                        }
                        continue;
                    }
                    word.push(c);
                }
            }
        }
        if blank_ok || !word.is_empty() {
            words.push((word, start, end));
        }
    }
    words
}

/// BuildKit's parseNameVal: `KEY value…` (legacy) or `k=v k2=v2…`, as the node chain of
/// current BuildKit: key, value, separator (`""` legacy, `"="` otherwise) per pair.
#[allow(clippy::type_complexity)]
fn name_values(rest: &str, key: &str, escape: char) -> Result<Vec<(String, usize, usize)>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if !first.0.contains('=') {
        let Some(i) = rest.find(is_go_ws) else {
            return Err(format!("{key} must have two arguments"));
        };
        let value = rest[i..].trim_start_matches(is_go_ws);
        let vstart = rest.len() - value.len();
        out.push((rest[..i].to_owned(), 0, i));
        out.push((value.to_owned(), vstart, rest.len()));
        out.push((String::new(), i, vstart));
        return Ok(out);
    }
    for (w, a, b) in words {
        let Some(eq) = w.find('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                go_quote(&w)
            ));
        };
        out.push((w[..eq].to_owned(), a, a + eq));
        out.push((w[eq + 1..].to_owned(), a + eq + 1, b));
        out.push(("=".to_owned(), a + eq, a + eq + 1));
    }
    Ok(out)
}

fn can_contain_heredoc(node: &Node) -> bool {
    let n = node.effective();
    matches!(n.name().as_str(), "run" | "copy" | "add") && !n.json
}

/// The words of a logical line as BuildKit's heredoc scan sees them (its shell lexer with raw
/// quotes, raw escapes and unset variables left alone, escape always `\`): split on unquoted
/// whitespace, nothing removed, and `<<` followed by whitespace kept together with the next word.
fn heredoc_words(line: &str) -> Vec<(String, usize, usize)> {
    let b = line.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] as char).is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        let mut braces = 0usize;
        while i < b.len() {
            match b[i] {
                c if braces == 0 && (c as char).is_ascii_whitespace() => break,
                b'\\' => i += 2,
                q @ (b'\'' | b'"') => {
                    i += 1;
                    while i < b.len() && b[i] != q {
                        i += if q == b'"' && b[i] == b'\\' { 2 } else { 1 };
                    }
                    if i >= b.len() {
                        return Vec::new(); // unterminated quote: the lexer fails, no heredocs
                    }
                    i += 1;
                }
                b'$' if b.get(i + 1) == Some(&b'{') => {
                    braces += 1;
                    i += 2;
                }
                b'}' if braces > 0 => {
                    braces -= 1;
                    i += 1;
                }
                b'<' if b.get(i + 1) == Some(&b'<') => {
                    i += 2;
                    while i < b.len() && matches!(b[i], b' ' | b'\t') {
                        i += 1;
                    }
                }
                _ => i += 1,
            }
        }
        let end = i.min(b.len());
        // Byte positions always land on ASCII characters or the end, so this slice is valid;
        // `get` keeps a stray multi-byte case from panicking.
        if let Some(w) = line.get(start..end) {
            words.push((w.to_owned(), start, end));
        }
    }
    words
}

/// BuildKit's ParseHeredoc on one word: `^(\d*)<<(-?)\s*([^<]*)$`. `Ok(None)` when the word
/// is not a heredoc; `Err` when it is one with a broken terminator word.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    let digits = word.bytes().take_while(u8::is_ascii_digit).count();
    let Some(rest) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(is_re2_space);
    if rest.is_empty() || rest.contains('<') || rest.contains('\n') {
        return Ok(None);
    }
    let fd = if digits == 0 {
        0
    } else {
        word[..digits].parse::<u32>().unwrap_or(0)
    };
    let Some((name, quoted)) = heredoc_name(rest)? else {
        return Ok(None);
    };
    Ok(Some(Heredoc {
        name,
        content: String::new(),
        expand: !quoted,
        chomp,
        fd,
        span: Span::default(),
    }))
}

/// The terminator word of a heredoc with quotes and escapes removed, and whether any part of it
/// was quoted: BuildKit lexes it with and without raw quotes and compares the quote counts.
/// `None` when it is more than one word.
fn heredoc_name(rest: &str) -> Result<Option<(String, bool)>, String> {
    use crate::shell::Lexer;
    let lex = |raw_quotes: bool| {
        let lexer = Lexer {
            raw_quotes,
            skip_unset_env: true,
            ..Lexer::default()
        };
        lexer
            .process_words(rest, &())
            .map(|e| e.value)
            .map_err(|e| e.to_string())
    };
    let words = lex(false)?;
    let [word] = words.as_slice() else {
        return Ok(None);
    };
    let raw = lex(true)?;
    let [raw] = raw.as_slice() else {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    };
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    Ok(Some((word.clone(), quotes(word) != quotes(raw))))
}

use crate::golang::quote as go_quote;
