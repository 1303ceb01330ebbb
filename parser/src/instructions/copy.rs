//! COPY and ADD: sources (paths and heredoc bodies), destination, and their flags.

use crate::ast::{Span, Word};
use crate::syntax::parse_heredoc;

use super::Cx;
use super::flags::{self, Kind, flag};

/// The files of a COPY or ADD.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourcesAndDest {
    pub dest: Word,
    /// Paths (or URLs, for ADD), raw.
    pub sources: Vec<Word>,
    /// Heredoc sources (`COPY <<EOF /dest`), in order.
    pub contents: Vec<SourceContent>,
}

/// A file whose content is written inline as a heredoc.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceContent {
    /// The heredoc's name, used as the file name.
    pub path: String,
    /// The body; for `<<-` with leading tabs already stripped.
    pub data: String,
    /// Expand variables in `data` (false when the heredoc word was quoted).
    pub expand: bool,
    pub span: Span,
}

/// `COPY [flags] <src>... <dest>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Copy {
    pub span: Span,
    pub files: SourcesAndDest,
    /// `--from`: a stage name or index, an image, or a named context.
    pub from: Option<Word>,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<Word>,
}

/// `ADD [flags] <src>... <dest>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Add {
    pub span: Span,
    pub files: SourcesAndDest,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    /// `--keep-git-dir`; `None` when not given.
    pub keep_git_dir: Option<bool>,
    pub checksum: Option<Word>,
    /// `--unpack`; `None` when not given (then archives from the context are unpacked and
    /// remote ones are not).
    pub unpack: Option<bool>,
    pub excludes: Vec<Word>,
}

const COPY_FLAGS: &[flags::Spec] = &[
    flag("chown", Kind::String),
    flag("from", Kind::String),
    flag("chmod", Kind::String),
    flag("link", Kind::Bool),
    flag("exclude", Kind::Strings),
    flag("parents", Kind::Bool),
];

const ADD_FLAGS: &[flags::Spec] = &[
    flag("chown", Kind::String),
    flag("chmod", Kind::String),
    flag("link", Kind::Bool),
    flag("keep-git-dir", Kind::Bool),
    flag("checksum", Kind::String),
    flag("unpack", Kind::Bool),
    flag("exclude", Kind::Strings),
];

pub(crate) fn parse_copy(cx: &mut Cx) -> Option<Copy> {
    let enough = enough_args(cx);
    let fl = cx.flags(COPY_FLAGS);
    if !enough {
        return None;
    }
    let files = sources_and_dest(cx)?;
    let from = fl.string("from");
    if let Some(f) = from.as_ref().filter(|f| expands(&f.value)) {
        cx.error(
            "from-expansion",
            f.span,
            "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
            "add `FROM ${VAR} AS src` (with a global ARG VAR) and use COPY --from=src",
        );
    }
    Some(Copy {
        span: cx.node.span,
        files,
        from,
        chown: fl.string("chown"),
        chmod: fl.string("chmod"),
        link: fl.bool("link").unwrap_or(false),
        parents: fl.bool("parents").unwrap_or(false),
        excludes: fl.all("exclude").map(|u| u.value.clone()).collect(),
    })
}

pub(crate) fn parse_add(cx: &mut Cx) -> Option<Add> {
    let enough = enough_args(cx);
    let fl = cx.flags(ADD_FLAGS);
    if !enough {
        return None;
    }
    let files = sources_and_dest(cx)?;
    Some(Add {
        span: cx.node.span,
        files,
        chown: fl.string("chown"),
        chmod: fl.string("chmod"),
        link: fl.bool("link").unwrap_or(false),
        keep_git_dir: fl.bool("keep-git-dir"),
        checksum: fl.string("checksum"),
        unpack: fl.bool("unpack"),
        excludes: fl.all("exclude").map(|u| u.value.clone()).collect(),
    })
}

/// Whether the shell lexer would change the word (so it is not a literal stage name).
fn expands(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, c)| match c {
        b'$' => i + 1 < b.len(),
        b'\'' | b'"' | b'\\' => true,
        _ => false,
    })
}

fn enough_args(cx: &mut Cx) -> bool {
    if cx.node.args.len() >= 2 {
        return true;
    }
    let name = cx.name.clone();
    cx.error(
        "missing-destination",
        cx.node.span,
        format!(
            "{name} requires at least two arguments, but only one was provided. Destination could not be determined"
        ),
        format!("write {name} <source>... <destination>"),
    );
    false
}

fn is_heredoc(word: &str) -> Option<crate::ast::Heredoc> {
    parse_heredoc(word).ok().flatten()
}

/// Strips leading tabs from every line (BuildKit's ChompHeredocContent).
fn chomp(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

fn sources_and_dest(cx: &mut Cx) -> Option<SourcesAndDest> {
    let node = cx.node;
    let (dest, srcs) = node.args.split_last()?;
    if !node.json && is_heredoc(&dest.value).is_some() {
        let name = cx.name.clone();
        cx.error(
            "heredoc-destination",
            dest.span,
            format!("{name} cannot accept a heredoc as a destination"),
            "put the heredoc before the destination: COPY <<EOF /path/to/file",
        );
        return None;
    }
    let mut sources = Vec::new();
    let mut contents = Vec::new();
    for src in srcs {
        let doc = if node.json {
            None
        } else {
            is_heredoc(&src.value)
        };
        let Some(doc) = doc else {
            sources.push(src.clone());
            continue;
        };
        // The body, looked up by name as BuildKit does (the last heredoc of that name wins).
        let (data, span) = match node.heredocs.iter().rev().find(|h| h.name == doc.name) {
            Some(h) => (h.content.clone(), h.span),
            None => (String::new(), src.span),
        };
        contents.push(SourceContent {
            path: doc.name,
            data: if doc.chomp { chomp(&data) } else { data },
            expand: doc.expand,
            span,
        });
    }
    Some(SourcesAndDest {
        dest: dest.clone(),
        sources,
        contents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chomps_leading_tabs_per_line() {
        assert_eq!(chomp("\t\ta\n\tb\nc\t\n"), "a\nb\nc\t\n");
        assert!(expands("$A") && expands("'a'") && !expands("a$") && !expands("build"));
    }
}
