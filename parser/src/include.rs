//! `INCLUDE <path>`: splices another Dockerfile fragment in place of the instruction.
//!
//! The path is relative to the directory of the file that includes it. Every file is parsed on
//! its own (its own directives and escape token), its spans carry its own [`FileId`], and the
//! included instructions take the place of the INCLUDE node. Reading files is the caller's
//! business ([`Loader`]), so this stays pure.

use crate::ast::{Dockerfile, FileId, Node, Span};
use crate::diag::Diagnostic;
use crate::source::SourceMap;
use crate::syntax::{Parsed, parse};

/// How many files one build may include in all: stops a fan-out of includes (a file included
/// twice by a file included twice by …) from growing without bound.
pub const MAX_INCLUDES: usize = 1000;

/// Reads included files. `path` is already resolved against the including file.
pub trait Loader {
    fn load(&mut self, path: &str) -> Result<String, String>;
}

impl<F: FnMut(&str) -> Result<String, String>> Loader for F {
    fn load(&mut self, path: &str) -> Result<String, String> {
        self(path)
    }
}

/// A Dockerfile with every INCLUDE spliced in.
#[derive(Debug)]
pub struct Resolved {
    pub sources: SourceMap,
    /// The main file's directives and escape token, and the spliced instruction list.
    pub dockerfile: Dockerfile,
    pub diagnostics: Vec<Diagnostic>,
    /// BuildKit's verdict on the main file alone (for the buildkit output format).
    pub buildkit_error: Option<String>,
}

/// Whether a syntax directive names Docker's own frontend: such a file is held to plain
/// Dockerfile, so INCLUDE is not resolved there (the typed layer reports it instead).
pub fn is_docker_frontend(syntax: &str) -> bool {
    let image = syntax.split([':', '@']).next().unwrap_or("");
    let image = ["docker.io/", "index.docker.io/", "registry-1.docker.io/"]
        .iter()
        .find_map(|p| image.strip_prefix(p))
        .unwrap_or(image);
    image == "docker/dockerfile" || image.starts_with("docker/dockerfile-")
}

/// Parses `name`/`text` and resolves its INCLUDEs through `loader`.
pub fn parse_with_includes(name: &str, text: &str, loader: &mut dyn Loader) -> Resolved {
    let mut sources = SourceMap::default();
    let id = sources.add(name, text);
    let parsed = parse(text, id);
    let mut r = Resolver {
        loader,
        sources,
        diagnostics: Vec::new(),
        stack: Vec::new(),
        count: 0,
    };
    let Parsed {
        ast,
        mut diagnostics,
        buildkit_error,
    } = parsed;
    let plain = ast
        .directive("syntax")
        .is_some_and(|d| is_docker_frontend(&d.value));
    let children = if plain {
        ast.children
    } else {
        r.stack.push((name.to_owned(), None));
        r.splice(ast.children)
    };
    diagnostics.append(&mut r.diagnostics);
    Resolved {
        sources: r.sources,
        dockerfile: Dockerfile { children, ..ast },
        diagnostics,
        buildkit_error,
    }
}

struct Resolver<'l> {
    loader: &'l mut dyn Loader,
    sources: SourceMap,
    diagnostics: Vec<Diagnostic>,
    /// The chain of files being included, each with the INCLUDE that brought it in.
    stack: Vec<(String, Option<Span>)>,
    count: usize,
}

impl Resolver<'_> {
    fn splice(&mut self, nodes: Vec<Node>) -> Vec<Node> {
        let mut out = Vec::with_capacity(nodes.len());
        for node in nodes {
            if node.name() != "include" {
                out.push(node);
                continue;
            }
            match self.include(&node) {
                Some(mut nodes) => out.append(&mut nodes),
                // Keep the node so later layers still see something was meant here.
                None => out.push(node),
            }
        }
        out
    }

    fn include(&mut self, node: &Node) -> Option<Vec<Node>> {
        let site = node.span;
        let [arg] = node.args.as_slice() else {
            self.diagnostics.push(
                Diagnostic::error(
                    "include",
                    site,
                    format!("INCLUDE takes exactly one path, got {}", node.args.len()),
                )
                .with_help("write `INCLUDE path/to/fragment.Dockerfile`"),
            );
            return None;
        };
        if !node.flags.is_empty() {
            self.diagnostics.push(
                Diagnostic::error("include", node.flags[0].span, "INCLUDE takes no flags")
                    .with_help("remove the flag"),
            );
        }
        let including = &self.stack.last().map(|s| s.0.clone()).unwrap_or_default();
        let path = join(including, &arg.value);
        if let Some(pos) = self.stack.iter().position(|(f, _)| *f == path) {
            let chain: Vec<&str> = self.stack[pos..].iter().map(|(f, _)| f.as_str()).collect();
            let mut d = Diagnostic::error(
                "include-cycle",
                arg.span,
                format!("INCLUDE cycle: {} -> {path}", chain.join(" -> ")),
            )
            .with_help("remove one of the INCLUDE instructions that form the cycle");
            // Every other INCLUDE along the cycle, from where it was entered.
            for (file, at) in &self.stack[pos..] {
                if let Some(at) = at {
                    d = d.with_label(*at, format!("{file} is included here"));
                }
            }
            self.diagnostics.push(d);
            return None;
        }
        self.count += 1;
        if self.count > MAX_INCLUDES {
            self.diagnostics.push(
                Diagnostic::error(
                    "include",
                    arg.span,
                    format!("more than {MAX_INCLUDES} INCLUDEs in one build"),
                )
                .with_help("include each fragment once"),
            );
            return None;
        }
        let text = match self.loader.load(&path) {
            Ok(t) => t,
            Err(e) => {
                self.diagnostics.push(
                    Diagnostic::error(
                        "include",
                        arg.span,
                        format!("cannot read included file {path}: {e}"),
                    )
                    .with_help("the path is relative to the directory of the including file"),
                );
                return None;
            }
        };
        let id: FileId = self.sources.add(path.clone(), text);
        let parsed = parse(&self.sources.get(id).text.clone(), id);
        // An included fragment may legitimately hold no instruction of its own.
        self.diagnostics.extend(
            parsed
                .diagnostics
                .into_iter()
                .filter(|d| d.code != "empty-dockerfile"),
        );
        self.stack.push((path, Some(site)));
        let nodes = self.splice(parsed.ast.children);
        self.stack.pop();
        Some(nodes)
    }
}

/// `rel` resolved against the directory of `including`, lexically (`.` and `..` folded).
/// An absolute `rel` stays absolute.
pub fn join(including: &str, rel: &str) -> String {
    let base = if rel.starts_with('/') {
        ""
    } else {
        including.rsplit_once('/').map_or("", |(d, _)| d)
    };
    let absolute = rel.starts_with('/') || (rel.is_empty() && including.starts_with('/'));
    let absolute = absolute || (!rel.starts_with('/') && base.starts_with('/'));
    let mut parts: Vec<&str> = Vec::new();
    for p in base.split('/').chain(rel.split('/')) {
        match p {
            "" | "." => {}
            ".." => {
                if matches!(parts.last(), Some(&l) if l != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn files(list: &[(&str, &str)]) -> impl FnMut(&str) -> Result<String, String> {
        let map: HashMap<String, String> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |p: &str| {
            map.get(p)
                .cloned()
                .ok_or_else(|| "no such file".to_string())
        }
    }

    #[test]
    fn joins_relative_to_including_file() {
        assert_eq!(join("Dockerfile", "a.df"), "a.df");
        assert_eq!(join("dir/Dockerfile", "a.df"), "dir/a.df");
        assert_eq!(join("dir/sub/Dockerfile", "../x/./a.df"), "dir/x/a.df");
        assert_eq!(join("Dockerfile", "../a.df"), "../a.df");
        assert_eq!(join("/ctx/Dockerfile", "../../a"), "/a");
        assert_eq!(join("/ctx/Dockerfile", "/etc/x"), "/etc/x");
    }

    #[test]
    fn splices_in_place_with_file_spans() {
        let mut l = files(&[
            ("inc/common.df", "ENV A=1\nINCLUDE more.df\n"),
            ("inc/more.df", "ENV B=2\n"),
        ]);
        let r = parse_with_includes(
            "Dockerfile",
            "FROM x\nINCLUDE inc/common.df\nRUN y\n",
            &mut l,
        );
        assert!(r.diagnostics.is_empty(), "{:?}", r.diagnostics);
        let names: Vec<_> = r
            .dockerfile
            .children
            .iter()
            .map(|n| n.original.as_str())
            .collect();
        assert_eq!(names, ["FROM x", "ENV A=1", "ENV B=2", "RUN y"]);
        let files: Vec<_> = r
            .dockerfile
            .children
            .iter()
            .map(|n| r.sources.get(n.span.file).name.as_str())
            .collect();
        assert_eq!(
            files,
            ["Dockerfile", "inc/common.df", "inc/more.df", "Dockerfile"]
        );
    }

    #[test]
    fn cycle_points_at_both_sites() {
        let mut l = files(&[("a.df", "INCLUDE b.df\n"), ("b.df", "INCLUDE a.df\n")]);
        let r = parse_with_includes("Dockerfile", "FROM x\nINCLUDE a.df\n", &mut l);
        let d: Vec<_> = r
            .diagnostics
            .iter()
            .filter(|d| d.code == "include-cycle")
            .collect();
        assert_eq!(d.len(), 1, "{:?}", r.diagnostics);
        assert_eq!(r.sources.get(d[0].span.file).name, "b.df");
        assert_eq!(d[0].labels.len(), 2, "{:?}", d[0]);
        // Including the main file is a cycle too.
        let mut l = files(&[("Dockerfile", "FROM x\n")]);
        let r = parse_with_includes("Dockerfile", "FROM x\nINCLUDE Dockerfile\n", &mut l);
        let d: Vec<_> = r
            .diagnostics
            .iter()
            .filter(|d| d.code == "include-cycle")
            .collect();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].message, "INCLUDE cycle: Dockerfile -> Dockerfile");
    }

    #[test]
    fn missing_file_and_docker_syntax() {
        let mut l = files(&[]);
        let r = parse_with_includes("Dockerfile", "FROM x\nINCLUDE nope\n", &mut l);
        assert!(
            r.diagnostics
                .iter()
                .any(|d| d.message.contains("cannot read included file nope"))
        );
        let src = "# syntax=docker/dockerfile:1\nFROM x\nINCLUDE nope\n";
        let r = parse_with_includes("Dockerfile", src, &mut l);
        assert!(r.diagnostics.is_empty());
        assert_eq!(r.dockerfile.children[1].name(), "include");
        assert!(is_docker_frontend("docker.io/docker/dockerfile:1.7-labs"));
        assert!(is_docker_frontend("docker/dockerfile-upstream:master"));
        assert!(is_docker_frontend("index.docker.io/docker/dockerfile:1"));
        assert!(is_docker_frontend(
            "registry-1.docker.io/docker/dockerfile@sha256:00"
        ));
        assert!(!is_docker_frontend("example.com/my/frontend"));
    }

    #[test]
    fn fan_out_is_bounded() {
        let mut l = files(&[
            ("a", "INCLUDE b\nINCLUDE b\nINCLUDE b\nINCLUDE b\n"),
            ("b", "INCLUDE c\nINCLUDE c\nINCLUDE c\nINCLUDE c\n"),
            ("c", "INCLUDE d\nINCLUDE d\nINCLUDE d\nINCLUDE d\n"),
            ("d", "INCLUDE e\nINCLUDE e\nINCLUDE e\nINCLUDE e\n"),
            ("e", "INCLUDE f\nINCLUDE f\nINCLUDE f\nINCLUDE f\n"),
            ("f", "ENV X=1\n"),
        ]);
        let r = parse_with_includes("Dockerfile", "FROM x\nINCLUDE a\n", &mut l);
        assert!(
            r.diagnostics
                .iter()
                .any(|d| d.message.contains("more than"))
        );
    }
}
