//! Instruction flags (`--name=value`) with BuildKit's BFlags rules: each instruction declares
//! the flags it knows; a flag is a bool (`--link`, `--link=false`), a string (`--from=x`, given
//! at most once) or a repeatable string (`--mount=…`, `--exclude=…`).
//!
//! Unlike BuildKit, every bad flag is reported, not only the first; a bad flag is skipped and
//! the instruction is still built from the rest.

use crate::ast::{Span, Word};
use crate::diag::Diagnostic;

use super::util::{sub_word, suggest, with_suggestion};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) enum Kind {
    Bool,
    String,
    Strings,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Spec {
    pub name: &'static str,
    pub kind: Kind,
}

pub(crate) const fn flag(name: &'static str, kind: Kind) -> Spec {
    Spec { name, kind }
}

/// One accepted use of a flag.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Use {
    pub name: &'static str,
    /// What follows the first `=` (empty when there is none), with its span when exact.
    pub value: Word,
    /// The whole flag word.
    pub span: Span,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct Flags {
    uses: Vec<Use>,
    used: Vec<&'static str>,
}

impl Flags {
    /// The use of a single-valued flag.
    pub fn get(&self, name: &str) -> Option<&Use> {
        self.uses.iter().find(|u| u.name == name)
    }

    /// A string flag's value.
    pub fn string(&self, name: &str) -> Option<Word> {
        self.get(name).map(|u| u.value.clone())
    }

    /// Every use of a repeatable flag, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Use> + 'a {
        self.uses.iter().filter(move |u| u.name == name)
    }

    /// A bool flag: `None` when not given.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name)
            .map(|u| !u.value.value.eq_ignore_ascii_case("false"))
    }

    /// The names of the flags given, in the order first given (BuildKit's FlagsUsed).
    pub fn used(&self) -> Vec<String> {
        self.used.iter().map(|s| s.to_string()).collect()
    }
}

/// Parses `words` against `specs`. `instr` is the instruction name for help texts.
pub(crate) fn parse(
    instr: &str,
    words: &[Word],
    specs: &[Spec],
    diags: &mut Vec<Diagnostic>,
) -> Flags {
    let mut out = Flags::default();
    for word in words {
        let a = word.value.as_str();
        if a == "--" {
            break;
        }
        let Some(body) = a.strip_prefix("--") else {
            diags.push(
                Diagnostic::error(
                    "invalid-flag",
                    word.span,
                    format!("arg should start with -- : {a}"),
                )
                .with_help("write flags as `--name=value` before the arguments"),
            );
            continue;
        };
        let (name, value, has_value) = match body.split_once('=') {
            Some((n, v)) => (n, v, true),
            None => (body, "", false),
        };
        let flag_name = &a[..2 + name.len()];
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            let s = suggest(name, specs.iter().map(|s| s.name), true);
            let help = if specs.is_empty() {
                format!("remove it: {instr} takes no flags")
            } else if let Some(s) = &s {
                format!("write --{s}, or remove the flag")
            } else {
                let names: Vec<String> = specs.iter().map(|s| format!("--{}", s.name)).collect();
                format!("remove it: {instr} accepts {}", names.join(", "))
            };
            diags.push(
                Diagnostic::error(
                    "unknown-flag",
                    word.span,
                    with_suggestion(format!("unknown flag: {flag_name}"), s.as_deref()),
                )
                .with_help(help),
            );
            continue;
        };
        let seen = out.used.contains(&spec.name);
        if seen && spec.kind != Kind::Strings {
            diags.push(
                Diagnostic::error(
                    "duplicate-flag",
                    word.span,
                    format!("duplicate flag specified: {flag_name}"),
                )
                .with_help(format!("give {flag_name} only once")),
            );
            continue;
        }
        if !seen {
            out.used.push(spec.name);
        }
        let problem = match spec.kind {
            Kind::Bool if has_value && value.is_empty() => {
                Some(format!("missing a value on flag: {flag_name}"))
            }
            Kind::Bool if !matches!(value.to_ascii_lowercase().as_str(), "" | "true" | "false") => {
                Some(format!(
                    "expecting boolean value for flag {flag_name}, not: {value}"
                ))
            }
            Kind::String | Kind::Strings if !has_value => {
                Some(format!("missing a value on flag: {flag_name}"))
            }
            _ => None,
        };
        if let Some(msg) = problem {
            let help = match spec.kind {
                Kind::Bool => format!("write {flag_name}, {flag_name}=true or {flag_name}=false"),
                _ => format!("write {flag_name}=<value>"),
            };
            diags.push(Diagnostic::error("invalid-flag", word.span, msg).with_help(help));
            continue;
        }
        let start = 2 + name.len() + usize::from(has_value);
        out.uses.push(Use {
            name: spec.name,
            value: sub_word(word, start.min(a.len()), a.len()),
            span: word.span,
        });
    }
    out
}

/// For instructions whose flags BuildKit never reads (ARG, STOPSIGNAL, HEALTHCHECK NONE): they
/// are accepted and dropped, so we only warn.
pub(crate) fn ignored(instr: &str, words: &[Word], diags: &mut Vec<Diagnostic>) {
    for word in words.iter().take_while(|w| w.value != "--") {
        let name = word.value.split('=').next().unwrap_or_default();
        diags.push(
            Diagnostic::warning(
                "ignored-flag",
                word.span,
                format!("flag {name} is ignored: {instr} takes no flags"),
            )
            .with_help("remove the flag"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<Word> {
        list.iter()
            .map(|s| Word {
                value: s.to_string(),
                span: Span::default(),
            })
            .collect()
    }

    const SPECS: &[Spec] = &[
        flag("from", Kind::String),
        flag("link", Kind::Bool),
        flag("exclude", Kind::Strings),
    ];

    fn messages(d: &[Diagnostic]) -> Vec<&str> {
        d.iter().map(|d| d.message.as_str()).collect()
    }

    #[test]
    fn buildkit_flag_rules() {
        let mut d = Vec::new();
        let f = parse(
            "COPY",
            &words(&[
                "--from=a",
                "--link",
                "--exclude=x",
                "--exclude=y",
                "--boo",
                "--from=b",
                "--frm=c",
            ]),
            SPECS,
            &mut d,
        );
        assert_eq!(f.string("from").unwrap().value, "a");
        assert_eq!(f.bool("link"), Some(true));
        let ex: Vec<_> = f.all("exclude").map(|u| u.value.value.clone()).collect();
        assert_eq!(ex, ["x", "y"]);
        assert_eq!(f.used(), ["from", "link", "exclude"]);
        assert_eq!(
            messages(&d),
            [
                "unknown flag: --boo",
                "duplicate flag specified: --from",
                "unknown flag: --frm (did you mean from?)"
            ]
        );
    }

    #[test]
    fn values() {
        let mut d = Vec::new();
        let f = parse(
            "COPY",
            &words(&["--link=FALSE", "--from", "--exclude"]),
            SPECS,
            &mut d,
        );
        assert_eq!(f.bool("link"), Some(false));
        assert_eq!(
            messages(&d),
            [
                "missing a value on flag: --from",
                "missing a value on flag: --exclude"
            ]
        );
        let mut d = Vec::new();
        parse("COPY", &words(&["--link=", "--link=yes"]), SPECS, &mut d);
        assert_eq!(messages(&d)[0], "missing a value on flag: --link");
        let mut d = Vec::new();
        parse("COPY", &words(&["--link=yes"]), SPECS, &mut d);
        assert_eq!(
            messages(&d),
            ["expecting boolean value for flag --link, not: yes"]
        );
        // `--` ends the flags.
        let mut d = Vec::new();
        let f = parse("COPY", &words(&["--", "--boo"]), SPECS, &mut d);
        assert!(d.is_empty() && f.used().is_empty());
    }
}
