//! `.dockerignore` semantics, behaviour-compatible with moby/patternmatcher (the matcher BuildKit
//! uses, pinned at v0.6.1 by BuildKit; the reference is its current HEAD) and its
//! `ignorefile.ReadAll` reader, plus the directory-pruning rule of tonistiigi/fsutil, which is
//! what actually walks the build context.
//!
//! Everything here follows the Unix flavour of the Go code: the path separator is `/` and `\` is
//! an escape character in patterns. Paths handed to the matchers are relative to the context root,
//! `/`-separated, and (for [`PatternMatcher::is_excluded`]) cleaned by this module.
//!
//! # How a pattern is evaluated
//!
//! [`PatternMatcher::new`] trims each pattern, drops empty ones, applies [`clean_path`], strips a
//! leading `!` (an *exclusion*, i.e. a re-inclusion exception; a lone `!` is an error) and checks
//! the syntax with Go's `filepath.Match` rules (errors: unterminated or empty `[...]`, `[]a]`,
//! `[-x]`, `[x-]`, trailing `\`, ...). The glob is then classified exactly like patternmatcher
//! does:
//!
//! * exact match — no glob character at all (`.`, `(`, `+`, ... are literal);
//! * prefix match — `dir/**` (`**` at the end, nothing glob-like before);
//! * suffix match — `**` first, nothing glob-like after (`**`, `**/name`, `**file`);
//! * regexp match — everything else, through the regular expression patternmatcher builds
//!   (`*` → `[^/]*`, `?` → `[^/]`, `**/` → `(.*/)?`, trailing `**` → `.*`, `[`/`]` and `\x` are
//!   passed through to the regex engine verbatim).
//!
//! The regex text is Go RE2 syntax, and patternmatcher hands it to Go's `regexp` package, so
//! some glob texts have regex meaning rather than `filepath.Match` meaning (`\d` is a digit
//! class, `[*]` becomes `[[^/]*]`, `\Q` starts a quoted literal, an invalid range like
//! `[Local-Only]` fails). This module reproduces that: the Go regex text is parsed with Go's
//! RE2 rules by a small translator and re-emitted as an equivalent, fully explicit pattern for
//! the `regex` crate (linear time, no backtracking). A pattern whose regex Go would reject is
//! accepted by [`PatternMatcher::new`] and fails with [`IgnoreError::BadPattern`] each time it
//! is *evaluated*, exactly like patternmatcher (patterns that are never evaluated never fail).
//! Note that, as in Go, `[!a]` is **not** a negated class (only `[^a]` is): it is the class
//! `{!, a}`.
//!
//! # Deviations (all outside anything a real `.dockerignore` contains)
//!
//! * Unicode tables: `\pL`-style classes use the `regex` crate's Unicode tables, which may be a
//!   different Unicode version than Go's. `\p{...}` with braces cannot be produced by a glob
//!   (patternmatcher escapes `{`), so it is not supported.
//! * Go's regexp size limits (about 3.3 million instructions / 32 million class runes) are not
//!   emulated; the `regex` crate's compiled-size limit is set to 128 MiB instead. A pattern over
//!   that limit fails like a malformed one.

use crate::gomatch::go_match;
use std::fmt;

use regex::{Regex, RegexBuilder};

/// Errors, with the same messages as the Go code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreError {
    /// Go's `filepath.ErrBadPattern`: the glob is malformed, or the regex patternmatcher derives
    /// from it does not compile. `pattern` is the cleaned pattern (without its `!`).
    #[error("syntax error in pattern")]
    BadPattern { pattern: String },
    /// A pattern that is just `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// [`PatternMatcher::matches_using_parent_results`] got a [`MatchInfo`] from another matcher.
    #[error("wrong number of values in parentMatched")]
    WrongParentMatchCount,
    /// `ignorefile.ReadAll` fails (Go's `bufio.Scanner`) when a line is 64 KiB or longer.
    /// `line` is 1-based.
    #[error("bufio.Scanner: token too long")]
    LineTooLong { line: usize },
}

/// How a compiled pattern is matched (patternmatcher's `matchType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchType {
    /// The pattern could not be compiled (its regex is invalid); every evaluation fails with
    /// [`IgnoreError::BadPattern`].
    Unknown,
    /// `path == pattern`.
    Exact,
    /// `path` starts with the pattern minus its trailing `**`.
    Prefix,
    /// `path` ends with the pattern minus its leading `**` (and `**/x` also matches `x`).
    Suffix,
    /// Regular expression.
    Regexp,
}

impl MatchType {
    /// The Go constant name: `unknownMatch`, `exactMatch`, `prefixMatch`, `suffixMatch`,
    /// `regexpMatch`.
    pub fn go_name(self) -> &'static str {
        match self {
            MatchType::Unknown => "unknownMatch",
            MatchType::Exact => "exactMatch",
            MatchType::Prefix => "prefixMatch",
            MatchType::Suffix => "suffixMatch",
            MatchType::Regexp => "regexpMatch",
        }
    }
}

impl fmt::Display for MatchType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.go_name())
    }
}

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    dirs_len: usize,
    match_type: MatchType,
    go_regex: Option<String>,
    regex: Option<Regex>,
}

impl Pattern {
    fn compile(cleaned: &str, exclusion: bool) -> Pattern {
        let (detected, go_src) = glob_to_go_regex(cleaned, '/');
        let mut pattern = Pattern {
            cleaned: cleaned.to_owned(),
            exclusion,
            dirs_len: cleaned.split('/').count(),
            match_type: detected,
            go_regex: None,
            regex: None,
        };
        if detected == MatchType::Regexp {
            pattern.regex = go_regex_to_rust(&go_src)
                .and_then(|src| RegexBuilder::new(&src).size_limit(128 << 20).build().ok());
            if pattern.regex.is_none() {
                pattern.match_type = MatchType::Unknown;
            }
            pattern.go_regex = Some(go_src);
        }
        pattern
    }

    /// The cleaned pattern without its `!` (Go's `Pattern.String()`).
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether the pattern started with `!` (a re-inclusion exception).
    pub fn exclusion(&self) -> bool {
        self.exclusion
    }

    /// The effective match type; [`MatchType::Unknown`] when the derived regex is invalid.
    pub fn match_type(&self) -> MatchType {
        self.match_type
    }

    /// The Go regex source patternmatcher builds for this pattern (separator `/`), for regexp
    /// patterns (also when that regex turned out to be invalid).
    pub fn regex_source(&self) -> Option<&str> {
        self.go_regex.as_deref()
    }

    /// patternmatcher's `compile(sl)` for another separator: the pattern's `/` are replaced by
    /// `sep` first (as the Go test does for `\`). Returns the *detected* match type (before any
    /// regex validation) and, for [`MatchType::Regexp`], the Go regex source.
    pub fn compile_for_separator(&self, sep: char) -> (MatchType, Option<String>) {
        let text: String = self
            .cleaned
            .chars()
            .map(|c| if c == '/' { sep } else { c })
            .collect();
        let (detected, src) = glob_to_go_regex(&text, sep);
        (detected, (detected == MatchType::Regexp).then_some(src))
    }

    /// patternmatcher's `Pattern.match`.
    fn matches(&self, path: &str) -> Result<bool, IgnoreError> {
        let pat = self.cleaned.as_bytes();
        let path_b = path.as_bytes();
        match self.match_type {
            MatchType::Exact => Ok(path_b == pat),
            MatchType::Prefix => {
                let prefix = pat.get(..pat.len().saturating_sub(2)).unwrap_or(&[]);
                Ok(path_b.starts_with(prefix))
            }
            MatchType::Suffix => {
                let suffix = pat.get(2..).unwrap_or(&[]);
                if path_b.ends_with(suffix) {
                    return Ok(true);
                }
                Ok(suffix.first() == Some(&b'/') && path_b == &suffix[1..])
            }
            MatchType::Regexp => match &self.regex {
                Some(re) => Ok(re.is_match(path)),
                None => Err(self.bad()),
            },
            MatchType::Unknown => Err(self.bad()),
        }
    }

    fn bad(&self) -> IgnoreError {
        IgnoreError::BadPattern {
            pattern: self.cleaned.clone(),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cleaned)
    }
}

/// Per-pattern results for a directory, handed down to its children
/// ([`PatternMatcher::matches_using_parent_results`]). The default value means "no information"
/// (the path's parents are then matched from scratch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

impl MatchInfo {
    /// For each pattern, whether it matched (the path this info was computed for).
    pub fn parent_matched(&self) -> &[bool] {
        &self.parent_matched
    }
}

/// A list of `.dockerignore` patterns (patternmatcher's `PatternMatcher`).
#[derive(Debug, Clone)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
    prefix_only_exclusions: bool,
}

impl PatternMatcher {
    /// Compiles `patterns` (patternmatcher's `New`): each is trimmed, empty ones are dropped,
    /// [`clean_path`] is applied and a leading `!` marks an exclusion. Fails on a lone `!` and on
    /// a glob `filepath.Match` rejects; a glob whose derived regex is invalid is accepted here
    /// and fails when evaluated.
    pub fn new<I>(patterns: I) -> Result<PatternMatcher, IgnoreError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut compiled = Vec::new();
        let mut exclusions = false;
        for raw in patterns {
            let trimmed = raw.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = clean_path(trimmed);
            let (exclusion, body) = match cleaned.strip_prefix('!') {
                Some("") => return Err(IgnoreError::IllegalExclusion),
                Some(rest) => (true, rest),
                None => (false, cleaned.as_str()),
            };
            exclusions |= exclusion;
            if go_match(body.as_bytes(), b".").is_err() {
                return Err(IgnoreError::BadPattern {
                    pattern: body.to_owned(),
                });
            }
            compiled.push(Pattern::compile(body, exclusion));
        }
        let prefix_only_exclusions = !compiled.iter().any(|p| {
            p.exclusion
                && pattern_without_trailing_glob(p).contains(['*', '[', ']', '?', '^', '\\'])
        });
        Ok(PatternMatcher {
            patterns: compiled,
            exclusions,
            prefix_only_exclusions,
        })
    }

    /// The compiled patterns, in order (empty ones dropped).
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is an exclusion (`!`).
    pub fn exclusions(&self) -> bool {
        self.exclusions
    }

    /// The deprecated `PatternMatcher.Matches`: like [`Self::matches_or_parent_matches`] but
    /// only the parent directory with as many components as the pattern is tried. Kept because
    /// the top-level [`matches`] (and its conformance tables) use it.
    pub fn matches(&self, file: &str) -> Result<bool, IgnoreError> {
        let parent = go_dir(file);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(file)?;
            if !hit && parent != "." && pattern.dirs_len <= parent_dirs.len() {
                let ancestor = parent_dirs[..pattern.dirs_len].join("/");
                hit = pattern.matches(&ancestor).unwrap_or(false);
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// `MatchesOrParentMatches`: whether `file` (or one of its parent directories) is matched by
    /// the patterns, the last applicable pattern winning. `file` is `/`-separated and relative.
    pub fn matches_or_parent_matches(&self, file: &str) -> Result<bool, IgnoreError> {
        let parent = go_dir(file);
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(file)?;
            if !hit && parent != "." {
                hit = ancestors_of_dir(&parent).any(|a| pattern.matches(a).unwrap_or(false));
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// The deprecated `MatchesUsingParentResult`: the caller passes whether the parent directory
    /// matched, and only `file` itself is tested. Known to be wrong with exclusions (buildx#850);
    /// prefer [`Self::matches_using_parent_results`].
    pub fn matches_using_parent_result(
        &self,
        file: &str,
        parent_matched: bool,
    ) -> Result<bool, IgnoreError> {
        let mut matched = parent_matched;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches(file)? {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// `MatchesUsingParentResults`: the walker's form. `parent` is the [`MatchInfo`] returned for
    /// `file`'s parent directory (or the default value at the context root, or when unknown, in
    /// which case the parents are matched from scratch). Returns the verdict and the info to hand
    /// to `file`'s children.
    pub fn matches_using_parent_results(
        &self,
        file: &str,
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), IgnoreError> {
        let parent_matched = &parent.parent_matched;
        if !parent_matched.is_empty() && parent_matched.len() != self.patterns.len() {
            return Err(IgnoreError::WrongParentMatchCount);
        }
        let mut matched = false;
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent_matched.get(i).copied().unwrap_or(false);
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(file)?;
                if !hit && parent_matched.is_empty() {
                    let dir = go_dir(file);
                    if dir != "." {
                        hit = ancestors_of_dir(&dir).any(|a| pattern.matches(a).unwrap_or(false));
                    }
                }
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok((matched, info))
    }

    /// fsutil's `onlyPrefixExcludeExceptions`: true when no exclusion (`!`) pattern, after
    /// removing one trailing `/**` and then one trailing `/*`, contains any of `*[]?^\`.
    pub fn exclusions_are_prefix_only(&self) -> bool {
        self.prefix_only_exclusions
    }

    /// fsutil's directory-pruning rule, for a directory `dir` that has just been found excluded:
    /// the walker may skip the whole directory (never open it) when
    /// [`Self::exclusions_are_prefix_only`] holds and either there is no exclusion pattern or no
    /// exclusion pattern `p` has `trim_trailing_glob(p) + "/"` starting with `dir + "/"`.
    /// Otherwise it must descend (the directory itself stays excluded; its entries are matched
    /// one by one). Returns false when `dir` is not excluded-and-prunable by that rule; it does
    /// not check that `dir` is excluded.
    pub fn can_skip_excluded_dir(&self, dir: &str) -> bool {
        if !self.prefix_only_exclusions {
            return false;
        }
        if !self.exclusions {
            return true;
        }
        let dir_slash = format!("{dir}/");
        !self.patterns.iter().any(|p| {
            p.exclusion && format!("{}/", pattern_without_trailing_glob(p)).starts_with(&dir_slash)
        })
    }

    /// The final verdict BuildKit's context sender (fsutil's walk) reaches for `rel_path`: the
    /// path is cleaned (a leading `/` is dropped, the context root itself is never excluded), then
    /// matched with [`Self::matches_using_parent_results`] chained from the top directory down,
    /// and it is excluded outright if an ancestor directory is excluded and prunable
    /// ([`Self::can_skip_excluded_dir`]).
    ///
    /// This chained verdict can differ from [`Self::matches_or_parent_matches`] (what fsutil uses
    /// to *open* a single file): with `["*/b", "!a"]`, `a/b` is excluded by the walk but not by
    /// `matches_or_parent_matches`. The error is the one BuildKit fails the build with.
    pub fn is_excluded(&self, rel_path: &str) -> Result<bool, IgnoreError> {
        let cleaned = clean_path(rel_path);
        let path = cleaned.trim_start_matches('/');
        if path.is_empty() || path == "." {
            return Ok(false);
        }
        let mut info = MatchInfo::default();
        for (idx, _) in path.match_indices('/') {
            let dir = &path[..idx];
            let (hit, next) = self.matches_using_parent_results(dir, &info)?;
            if hit && self.can_skip_excluded_dir(dir) {
                return Ok(true);
            }
            info = next;
        }
        Ok(self.matches_using_parent_results(path, &info)?.0)
    }
}

/// patternmatcher's top-level `Matches(file, patterns)` (deprecated in Go, still what its tests
/// use): compiles `patterns`, cleans `file` (`.` never matches) and applies
/// [`PatternMatcher::matches`].
pub fn matches<I>(file: &str, patterns: I) -> Result<bool, IgnoreError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let pm = PatternMatcher::new(patterns)?;
    let file = clean_path(file);
    if file == "." {
        return Ok(false);
    }
    pm.matches(&file)
}

/// patternmatcher's top-level `MatchesOrParentMatches(file, patterns)`.
pub fn matches_or_parent_matches<I>(file: &str, patterns: I) -> Result<bool, IgnoreError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let pm = PatternMatcher::new(patterns)?;
    let file = clean_path(file);
    if file == "." {
        return Ok(false);
    }
    pm.matches_or_parent_matches(&file)
}

/// `ignorefile.ReadAll`: the patterns of a `.dockerignore` file, in order. A UTF-8 BOM is
/// stripped from the first line; lines are split on `\n` (one trailing `\r` dropped); lines
/// starting with `#` (column 0 only) are comments; the rest are trimmed, blank ones skipped; a
/// leading `!` is kept and the text after it trimmed; the pattern is [`clean_path`]ed and one
/// leading `/` removed (`/a` → `a`, `! /x` → `!x`; a bare `!` stays `!`, which
/// [`PatternMatcher::new`] later rejects). Fails like Go on a line of 64 KiB or more.
pub fn read_ignore_file(content: &str) -> Result<Vec<String>, IgnoreError> {
    // bufio.Scanner's default maximum token size: a line (without its '\n') must be shorter.
    const MAX_LINE: usize = 64 * 1024;
    let mut out = Vec::new();
    if content.is_empty() {
        return Ok(out);
    }
    let body = content.strip_suffix('\n').unwrap_or(content);
    for (index, raw) in body.split('\n').enumerate() {
        if raw.len() >= MAX_LINE {
            return Err(IgnoreError::LineTooLong { line: index + 1 });
        }
        let mut line = raw.strip_suffix('\r').unwrap_or(raw);
        if index == 0 {
            line = line.strip_prefix('\u{FEFF}').unwrap_or(line);
        }
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut result = String::new();
        if invert {
            result.push('!');
        }
        if !pattern.is_empty() {
            let cleaned = clean_path(pattern);
            match cleaned.strip_prefix('/') {
                Some(rest) if !rest.is_empty() => result.push_str(rest),
                _ => result.push_str(&cleaned),
            }
        }
        out.push(result);
    }
    Ok(out)
}

/// Go's `filepath.Clean` (Unix): the shortest equivalent path, by purely lexical processing —
/// repeated `/` collapsed, `.` elements removed, `name/..` pairs removed, `..` at the start of a
/// rooted path removed, trailing `/` removed; an empty result becomes `.`.
pub fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let p = path.as_bytes();
    let n = p.len();
    let rooted = p[0] == b'/';
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let (mut r, mut dotdot) = (0usize, 0usize);
    if rooted {
        out.push(b'/');
        r = 1;
        dotdot = 1;
    }
    while r < n {
        // An empty element ("//") or a "." element: skip it.
        if p[r] == b'/' || (p[r] == b'.' && (r + 1 == n || p[r + 1] == b'/')) {
            r += 1;
        } else if p[r] == b'.' && p[r + 1] == b'.' && (r + 2 == n || p[r + 2] == b'/') {
            r += 2;
            if out.len() > dotdot {
                let mut w = out.len() - 1;
                while w > dotdot && out[w] != b'/' {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while r < n && p[r] != b'/' {
                out.push(p[r]);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        out.push(b'.');
    }
    // Only whole ASCII-delimited elements were copied, so the bytes are still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Go's `filepath.Dir` (Unix).
fn go_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => clean_path(&path[..=i]),
        None => ".".to_owned(),
    }
}

/// The prefixes of `dir` ending before each `/` and `dir` itself, shortest first: exactly the
/// `strings.Join(strings.Split(dir, "/")[:i+1], "/")` sequence of the Go code.
fn ancestors_of_dir(dir: &str) -> impl Iterator<Item = &str> {
    dir.match_indices('/')
        .map(move |(i, _)| &dir[..i])
        .chain(std::iter::once(dir))
}

/// fsutil's `patternWithoutTrailingGlob`.
fn pattern_without_trailing_glob(p: &Pattern) -> &str {
    let s = p.cleaned.as_str();
    let s = s.strip_suffix("/**").unwrap_or(s);
    s.strip_suffix("/*").unwrap_or(s)
}

// ---------------------------------------------------------------------------------------------
// patternmatcher's compile(): glob -> Go regex text and match type.
// ---------------------------------------------------------------------------------------------

/// The regex text patternmatcher builds for `pattern` with separator `sep` (`/`, or `\` for the
/// Windows flavour) and the detected match type. The text is only meaningful for
/// [`MatchType::Regexp`].
fn glob_to_go_regex(pattern: &str, sep: char) -> (MatchType, String) {
    let esc_sep = if sep == '\\' {
        "\\\\".to_owned()
    } else {
        sep.to_string()
    };
    let mut re = String::from("^");
    let mut kind = MatchType::Exact;
    let mut chars = pattern.chars().peekable();
    // Go's text/scanner silently skips a byte-order mark at the very start.
    if chars.peek() == Some(&'\u{FEFF}') {
        chars.next();
    }
    let mut i = 0usize;
    while let Some(ch) = chars.next() {
        match ch {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // "**/" is treated as "**".
                if chars.peek() == Some(&sep) {
                    chars.next();
                }
                if chars.peek().is_none() {
                    if kind == MatchType::Exact {
                        kind = MatchType::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = MatchType::Regexp;
                    }
                } else {
                    re.push_str("(.*");
                    re.push_str(&esc_sep);
                    re.push_str(")?");
                    kind = MatchType::Regexp;
                }
                if i == 0 {
                    kind = MatchType::Suffix;
                }
            }
            '*' => {
                re.push_str("[^");
                re.push_str(&esc_sep);
                re.push_str("]*");
                kind = MatchType::Regexp;
            }
            '?' => {
                re.push_str("[^");
                re.push_str(&esc_sep);
                re.push(']');
                kind = MatchType::Regexp;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                if sep == '\\' {
                    // Windows: a backslash is the separator, never an escape.
                    re.push_str(&esc_sep);
                } else if let Some(next) = chars.next() {
                    re.push('\\');
                    re.push(next);
                    kind = MatchType::Regexp;
                } else {
                    re.push('\\');
                }
            }
            '[' | ']' => {
                re.push(ch);
                kind = MatchType::Regexp;
            }
            _ => re.push(ch),
        }
        i += 1;
    }
    if kind == MatchType::Regexp {
        re.push('$');
    }
    (kind, re)
}

// ---------------------------------------------------------------------------------------------
// Go RE2 syntax (regexp.Compile, i.e. Perl flags) -> equivalent explicit `regex` crate syntax.
// ---------------------------------------------------------------------------------------------

/// The never-matching class.
const NOTHING: &str = r"[^\x{0}-\x{10FFFF}]";
/// The class of every character.
const ANYTHING: &str = r"[\x{0}-\x{10FFFF}]";
const MAX_RUNE: u32 = 0x10FFFF;

#[derive(Default)]
struct Frame {
    alternatives: Vec<String>,
    items: Vec<String>,
}

impl Frame {
    fn finish(self) -> String {
        let last = self.items.concat();
        if self.alternatives.is_empty() {
            return last;
        }
        let mut all = self.alternatives;
        all.push(last);
        all.join("|")
    }
}

/// Parses `src` with the rules of Go's `regexp/syntax` (flags `syntax.Perl`: `^`/`$` match at
/// text boundaries only, `.` excludes `\n`, negated classes include `\n`, ASCII `\d\s\w\b`,
/// non-greedy `*?`, no nested repetition `**`) and returns an equivalent pattern for the `regex`
/// crate, or `None` where Go's `regexp.Compile` fails.
fn go_regex_to_rust(src: &str) -> Option<String> {
    let mut stack: Vec<Frame> = vec![Frame::default()];
    let mut last_repeat = false;
    let mut t = src;
    while let Some(&b) = t.as_bytes().first() {
        let mut repeat = false;
        match b {
            b'(' => {
                // `(?` (flags, named or non-capturing groups) cannot come out of a glob: a `(`
                // from the glob is always escaped and the generated ones are `(.*`.
                if t.as_bytes().get(1) == Some(&b'?') {
                    return None;
                }
                stack.push(Frame::default());
                t = &t[1..];
            }
            b'|' => {
                let frame = stack.last_mut()?;
                let done = std::mem::take(&mut frame.items).concat();
                frame.alternatives.push(done);
                t = &t[1..];
            }
            b')' => {
                if stack.len() < 2 {
                    return None;
                }
                let body = stack.pop()?.finish();
                stack.last_mut()?.items.push(format!("(?:{body})"));
                t = &t[1..];
            }
            b'^' => {
                stack.last_mut()?.items.push(r"\A".to_owned());
                t = &t[1..];
            }
            b'$' => {
                stack.last_mut()?.items.push(r"\z".to_owned());
                t = &t[1..];
            }
            b'.' => {
                stack.last_mut()?.items.push(r"[^\n]".to_owned());
                t = &t[1..];
            }
            b'[' => {
                let (class, rest) = parse_class(t)?;
                stack.last_mut()?.items.push(class);
                t = rest;
            }
            b'*' | b'+' | b'?' => {
                let mut after = &t[1..];
                let lazy = after.starts_with('?');
                if lazy {
                    after = &after[1..];
                }
                apply_repeat(&mut stack, last_repeat, &(b as char).to_string(), lazy)?;
                repeat = true;
                t = after;
            }
            b'{' => match parse_repeat(t) {
                None => {
                    stack.last_mut()?.items.push(literal('{' as u32));
                    t = &t[1..];
                }
                Some((min, max, rest)) => {
                    if !(0..=1000).contains(&min) || max > 1000 || (max >= 0 && min > max) {
                        return None;
                    }
                    let mut after = rest;
                    let lazy = after.starts_with('?');
                    if lazy {
                        after = &after[1..];
                    }
                    let op = match max {
                        -1 => format!("{{{min},}}"),
                        m if m == min => format!("{{{min}}}"),
                        m => format!("{{{min},{m}}}"),
                    };
                    apply_repeat(&mut stack, last_repeat, &op, lazy)?;
                    repeat = true;
                    t = after;
                }
            },
            b'\\' => {
                let item;
                (item, t) = parse_backslash(t)?;
                let frame = stack.last_mut()?;
                frame.items.extend(item);
            }
            _ => {
                let c = t.chars().next()?;
                stack.last_mut()?.items.push(literal(c as u32));
                t = &t[c.len_utf8()..];
            }
        }
        last_repeat = repeat;
    }
    if stack.len() != 1 {
        return None;
    }
    Some(stack.pop()?.finish())
}

/// Applies a repetition operator to the last item of the current frame, failing like Go on a
/// missing operand or a repeated repetition.
fn apply_repeat(stack: &mut [Frame], last_repeat: bool, op: &str, lazy: bool) -> Option<()> {
    if last_repeat {
        return None;
    }
    let frame = stack.last_mut()?;
    let operand = frame.items.pop()?;
    let lazy = if lazy { "?" } else { "" };
    frame.items.push(format!("(?:{operand}){op}{lazy}"));
    Some(())
}

/// Go's `parseRepeat`: `{n}`, `{n,}` or `{n,m}`; `None` when `t` is not of that form (the `{` is
/// then a literal). Too large numbers yield `min == -1`.
fn parse_repeat(t: &str) -> Option<(i64, i64, &str)> {
    let s = t.strip_prefix('{')?;
    let (min, s) = parse_int(s)?;
    let (max, s) = if let Some(s) = s.strip_prefix(',') {
        if s.starts_with('}') {
            (-1, s)
        } else {
            let (max, s) = parse_int(s)?;
            (max, s)
        }
    } else {
        (min, s)
    };
    let s = s.strip_prefix('}')?;
    let min = if max < -1 { -1 } else { min };
    Some((min, max, s))
}

/// Go's `parseInt` (no leading zeros; values of 1e8 and more become -2 here, "too big").
fn parse_int(s: &str) -> Option<(i64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || (digits >= 2 && s.starts_with('0')) {
        return None;
    }
    let mut n: i64 = 0;
    for d in s[..digits].bytes() {
        if n >= 100_000_000 {
            n = -2;
            break;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some((n, &s[digits..]))
}

/// A `\` sequence outside a class: assertions, `\Q...\E`, Unicode and Perl classes, escapes.
/// Returns the items to append (several for `\Q`) and the rest of the text.
fn parse_backslash(t: &str) -> Option<(Vec<String>, &str)> {
    if let Some(&next) = t.as_bytes().get(1) {
        let simple = match next {
            b'A' => Some(r"\A"),
            b'b' => Some(r"(?-u:\b)"),
            b'B' => Some(r"(?-u:\B)"),
            b'z' => Some(r"\z"),
            b'C' => return None,
            _ => None,
        };
        if let Some(item) = simple {
            return Some((vec![item.to_owned()], &t[2..]));
        }
        if next == b'Q' {
            let rest = &t[2..];
            let (quoted, after) = match rest.find(r"\E") {
                Some(i) => (&rest[..i], &rest[i + 2..]),
                None => (rest, ""),
            };
            let items = quoted.chars().map(|c| literal(c as u32)).collect();
            return Some((items, after));
        }
    }
    if let Some(parsed) = parse_unicode_class(t) {
        let (class, rest) = parsed?;
        return Some((vec![format!("[{class}]")], rest));
    }
    if let Some((ranges, rest)) = parse_perl_class(t) {
        return Some((vec![emit_class(false, &ranges, &[])], rest));
    }
    let (c, rest) = parse_escape(t)?;
    Some((vec![literal(c)], rest))
}

/// Go's `parseEscape` for `t` starting with `\`: the escaped code point and the rest.
fn parse_escape(t: &str) -> Option<(u32, &str)> {
    let after = &t[1..];
    let c = after.chars().next()?;
    let mut rest = &after[c.len_utf8()..];
    let octal = |b: Option<&u8>| matches!(b, Some(b'0'..=b'7'));
    match c {
        '1'..='7' | '0' => {
            // A lone non-zero digit would be a backreference: unsupported.
            if c != '0' && !octal(rest.as_bytes().first()) {
                return None;
            }
            let mut r = c as u32 - '0' as u32;
            for _ in 1..3 {
                let Some(&d) = rest.as_bytes().first().filter(|d| octal(Some(d))) else {
                    break;
                };
                r = r * 8 + u32::from(d - b'0');
                rest = &rest[1..];
            }
            Some((r, rest))
        }
        'x' => {
            let c1 = rest.chars().next()?;
            rest = &rest[c1.len_utf8()..];
            if c1 == '{' {
                let mut r: u32 = 0;
                let mut digits = 0;
                loop {
                    let d = rest.chars().next()?;
                    rest = &rest[d.len_utf8()..];
                    if d == '}' {
                        break;
                    }
                    r = r * 16 + d.to_digit(16)?;
                    if r > MAX_RUNE {
                        return None;
                    }
                    digits += 1;
                }
                return (digits > 0).then_some((r, rest));
            }
            let c2 = rest.chars().next()?;
            rest = &rest[c2.len_utf8()..];
            Some((c1.to_digit(16)? * 16 + c2.to_digit(16)?, rest))
        }
        'a' => Some((0x07, rest)),
        'f' => Some((0x0C, rest)),
        'n' => Some((0x0A, rest)),
        'r' => Some((0x0D, rest)),
        't' => Some((0x09, rest)),
        'v' => Some((0x0B, rest)),
        c if c.is_ascii() && !c.is_ascii_alphanumeric() => Some((c as u32, rest)),
        _ => None,
    }
}

/// `\pX` / `\PX` (and `\p^X`): `None` when `t` does not start with `\p`/`\P`, `Some(None)` when
/// it does but is invalid (Go is then committed and fails), else the class body for a `[...]`
/// and the rest. Only the single-letter general categories exist as one-letter names in Go.
#[allow(clippy::type_complexity)]
fn parse_unicode_class(t: &str) -> Option<Option<(String, &str)>> {
    let bytes = t.as_bytes();
    if bytes.len() < 2 || bytes[0] != b'\\' || (bytes[1] != b'p' && bytes[1] != b'P') {
        return None;
    }
    let negated = bytes[1] == b'P';
    let after = &t[2..];
    let Some(c) = after.chars().next() else {
        return Some(None);
    };
    if c == '{' {
        // `{` is always escaped by patternmatcher, so braces never reach the regex.
        return Some(None);
    }
    let rest = &after[c.len_utf8()..];
    // Go's name lookup capitalises the first letter. `\p^` (a negation with an empty name),
    // `\p_` and the like name nothing.
    let name = c.to_ascii_uppercase();
    // Go's unicode.C is Cc|Cf|Co|Cs (no unassigned code points), unlike the Unicode `C` group.
    let body = match name {
        'C' => r"\p{Cc}\p{Cf}\p{Co}".to_owned(),
        'L' | 'M' | 'N' | 'P' | 'S' | 'Z' => format!(r"\p{{{name}}}"),
        _ => return Some(None),
    };
    let class = if negated {
        format!("[^{body}]")
    } else {
        format!("[{body}]")
    };
    Some(Some((class, rest)))
}

/// `\d \D \s \S \w \W` (ASCII, as in Go): the ranges and the rest.
fn parse_perl_class(t: &str) -> Option<(Vec<(u32, u32)>, &str)> {
    let bytes = t.as_bytes();
    if bytes.len() < 2 || bytes[0] != b'\\' {
        return None;
    }
    let base: &[(u32, u32)] = match bytes[1].to_ascii_lowercase() {
        b'd' => &[(0x30, 0x39)],
        b's' => &[(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
        b'w' => &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
        _ => return None,
    };
    let ranges = if bytes[1].is_ascii_uppercase() {
        complement(base)
    } else {
        base.to_vec()
    };
    Some((ranges, &t[2..]))
}

/// POSIX `[:name:]` / `[:^name:]` inside a class (ASCII, as in Go).
fn posix_class(name: &str) -> Option<Vec<(u32, u32)>> {
    let (negated, inner) = match name.strip_prefix("[:^") {
        Some(rest) => (true, rest),
        None => (false, name.strip_prefix("[:")?),
    };
    let base: &[(u32, u32)] = match inner.strip_suffix(":]")? {
        "alnum" => &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
        "alpha" => &[(0x41, 0x5A), (0x61, 0x7A)],
        "ascii" => &[(0x00, 0x7F)],
        "blank" => &[(0x09, 0x09), (0x20, 0x20)],
        "cntrl" => &[(0x00, 0x1F), (0x7F, 0x7F)],
        "digit" => &[(0x30, 0x39)],
        "graph" => &[(0x21, 0x7E)],
        "lower" => &[(0x61, 0x7A)],
        "print" => &[(0x20, 0x7E)],
        "punct" => &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
        "space" => &[(0x09, 0x0D), (0x20, 0x20)],
        "upper" => &[(0x41, 0x5A)],
        "word" => &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
        "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    };
    Some(if negated {
        complement(base)
    } else {
        base.to_vec()
    })
}

/// The complement of sorted, disjoint ranges within `0..=U+10FFFF`.
fn complement(ranges: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut next = 0u32;
    for &(lo, hi) in ranges {
        if lo > next {
            out.push((next, lo - 1));
        }
        next = hi + 1;
    }
    if next <= MAX_RUNE {
        out.push((next, MAX_RUNE));
    }
    out
}

/// Go's `parseClass` for `t` starting with `[`: the class in `regex` syntax and the rest.
fn parse_class(t: &str) -> Option<(String, &str)> {
    let mut t = &t[1..];
    let negated = t.starts_with('^');
    if negated {
        t = &t[1..];
    }
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let mut extras: Vec<String> = Vec::new();
    let mut first = true;
    while t.is_empty() || !t.starts_with(']') || first {
        first = false;
        if t.len() > 2 && t.starts_with("[:") {
            // Go looks for the closing ":]" anywhere further on; an unknown name is an error.
            if let Some(i) = t[2..].find(":]") {
                let name = &t[..i + 4];
                ranges.extend(posix_class(name)?);
                t = &t[i + 4..];
                continue;
            }
        }
        if let Some(parsed) = parse_unicode_class(t) {
            let (class, rest) = parsed?;
            extras.push(class);
            t = rest;
            continue;
        }
        if let Some((perl, rest)) = parse_perl_class(t) {
            ranges.extend(perl);
            t = rest;
            continue;
        }
        let (lo, rest) = parse_class_char(t)?;
        t = rest;
        let mut hi = lo;
        let b = t.as_bytes();
        if b.len() >= 2 && b[0] == b'-' && b[1] != b']' {
            let (h, rest) = parse_class_char(&t[1..])?;
            t = rest;
            hi = h;
            if hi < lo {
                return None;
            }
        }
        ranges.push((lo, hi));
    }
    Some((emit_class(negated, &ranges, &extras), &t[1..]))
}

/// One class character: an escape or a literal; `None` at the end of the text (missing `]`).
fn parse_class_char(t: &str) -> Option<(u32, &str)> {
    if t.starts_with('\\') {
        return parse_escape(t);
    }
    let c = t.chars().next()?;
    Some((c as u32, &t[c.len_utf8()..]))
}

/// A class in `regex` syntax; code points that are not Unicode scalar values (surrogates, only
/// reachable through `\x{...}`) match nothing, as in Go.
fn emit_class(negated: bool, ranges: &[(u32, u32)], extras: &[String]) -> String {
    let mut body = String::new();
    for &(lo, hi) in ranges {
        for (lo, hi) in [(lo, hi.min(0xD7FF)), (lo.max(0xE000), hi)] {
            if lo <= hi {
                body.push_str(&format!(r"\x{{{lo:X}}}-\x{{{hi:X}}}"));
            }
        }
    }
    for extra in extras {
        body.push_str(extra);
    }
    match (body.is_empty(), negated) {
        (true, false) => NOTHING.to_owned(),
        (true, true) => ANYTHING.to_owned(),
        (false, false) => format!("[{body}]"),
        (false, true) => format!("[^{body}]"),
    }
}

/// A literal code point in `regex` syntax.
fn literal(c: u32) -> String {
    match char::from_u32(c) {
        Some(ch) if ch.is_ascii_alphanumeric() => ch.to_string(),
        Some(_) => format!(r"\x{{{c:X}}}"),
        None => NOTHING.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(patterns: &[&str]) -> PatternMatcher {
        PatternMatcher::new(patterns).expect("patterns compile")
    }

    #[test]
    fn ignore_clean_path_matches_go() {
        let cases = [
            ("", "."),
            (".", "."),
            ("..", ".."),
            ("/", "/"),
            ("//", "/"),
            ("abc", "abc"),
            ("abc/", "abc"),
            ("a//b", "a/b"),
            ("a/./b", "a/b"),
            ("a/../b", "b"),
            ("a/..", "."),
            ("../../a", "../../a"),
            ("/../a", "/a"),
            ("/..", "/"),
            ("a/b/../../..", ".."),
            ("./a/", "a"),
            ("abc/def/../../..", ".."),
            ("!./x", "!./x"),
            ("! /x", "! /x"),
            ("/é/./ü/", "/é/ü"),
        ];
        for (input, want) in cases {
            assert_eq!(clean_path(input), want, "clean_path({input:?})");
        }
    }

    #[test]
    fn ignore_go_match_validation() {
        for bad in [
            "[", "[^", "[^bc", "a[", "\\", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "a\\", "*[",
            "[]",
        ] {
            assert!(go_match(bad.as_bytes(), b".").is_err(), "{bad:?}");
        }
        for good in [
            "*", "a*b", "[ab]", "[\\]a]", "[\\-x]", "a\\*b", "[^a]", "[!a]", "**",
        ] {
            assert!(go_match(good.as_bytes(), b".").is_ok(), "{good:?}");
        }
        assert!(go_match(b"a*/b", b"abc/b").unwrap());
        assert!(!go_match(b"a*/b", b"a/c/b").unwrap());
        assert!(go_match("[a-ζ]*".as_bytes(), "α".as_bytes()).unwrap());
    }

    #[test]
    fn ignore_regex_quirks_follow_go_regexp() {
        // `[!a]` is the class {!, a}, not a negation.
        let m = pm(&["[!a]b"]);
        assert!(m.matches_or_parent_matches("ab").unwrap());
        assert!(m.matches_or_parent_matches("!b").unwrap());
        assert!(!m.matches_or_parent_matches("cb").unwrap());
        // `\d` reaches the regex engine as a digit class.
        let m = pm(&["a\\d"]);
        assert!(m.matches_or_parent_matches("a7").unwrap());
        assert!(!m.matches_or_parent_matches("ad").unwrap());
        // `[*]` becomes `[[^/]*]`: Go reads the class {[, ^, /} repeated, then a literal `]`.
        let m = pm(&["[*]"]);
        assert!(m.matches_or_parent_matches("]").unwrap());
        assert!(m.matches_or_parent_matches("[^/]").is_ok());
        assert!(!m.matches_or_parent_matches("*").unwrap());
        // `\Q` quotes the rest of the generated regex.
        let m = pm(&["a\\Q*"]);
        assert!(m.matches_or_parent_matches("a[^/]*$").unwrap());
        assert!(!m.matches_or_parent_matches("ab").unwrap());
        // POSIX classes and Unicode categories.
        let m = pm(&["[[:alpha:]]"]);
        assert!(m.matches_or_parent_matches("q").unwrap());
        assert!(!m.matches_or_parent_matches("[").unwrap());
        let m = pm(&["a\\pL"]);
        assert!(m.matches_or_parent_matches("aé").unwrap());
        assert!(!m.matches_or_parent_matches("a1").unwrap());
        // `^` inside the glob is a begin-of-text anchor in the regex (only when regexp).
        let m = pm(&["^a*"]);
        assert!(m.matches_or_parent_matches("abc").unwrap());
        assert!(!m.matches_or_parent_matches("^abc").unwrap());
        let m = pm(&["^a"]);
        assert_eq!(m.patterns()[0].match_type(), MatchType::Exact);
        assert!(m.matches_or_parent_matches("^a").unwrap());
        // `.` of the generated regex does not match a newline.
        let m = pm(&["a/**/b"]);
        assert!(m.matches_or_parent_matches("a/x/y/b").unwrap());
        assert!(!m.matches_or_parent_matches("a/x\ny/b").unwrap());
        // Invalid regexes: accepted by `new`, failing on every evaluation.
        for bad in [
            "[Local-Only]",
            "a\\8",
            "a\\é",
            "[z-a]x",
            "x\\C",
            "[[:foo:]]",
            "\\pX",
            "[\\p^]",
        ] {
            let m = PatternMatcher::new([bad]).unwrap_or_else(|e| panic!("{bad:?}: {e}"));
            assert_eq!(m.patterns()[0].match_type(), MatchType::Unknown, "{bad:?}");
            for _ in 0..2 {
                assert!(matches!(
                    m.matches_or_parent_matches("x"),
                    Err(IgnoreError::BadPattern { .. })
                ));
            }
        }
        // A leading byte-order mark is skipped by Go's scanner in the regex only.
        let m = pm(&["\u{FEFF}a*"]);
        assert!(m.matches_or_parent_matches("abc").unwrap());
    }

    #[test]
    fn ignore_bad_pattern_only_fails_when_evaluated() {
        // The second pattern is an inclusion that is skipped once `**` matched.
        let m = pm(&["**", "[Local-Only]"]);
        assert!(m.matches_or_parent_matches("x").unwrap());
        let m = pm(&["[Local-Only]", "**"]);
        assert!(m.matches_or_parent_matches("x").is_err());
        assert_eq!(
            m.is_excluded("x").unwrap_err().to_string(),
            "syntax error in pattern"
        );
    }

    #[test]
    fn ignore_errors_and_accessors() {
        assert_eq!(
            PatternMatcher::new(["a", "  !  "]).unwrap_err(),
            IgnoreError::IllegalExclusion
        );
        assert_eq!(
            PatternMatcher::new(["a["]).unwrap_err().to_string(),
            "syntax error in pattern"
        );
        let m = pm(&["", " docs/ ", "!docs/README.md", "  "]);
        assert_eq!(m.patterns().len(), 2);
        assert!(m.exclusions());
        assert_eq!(m.patterns()[0].as_str(), "docs");
        assert_eq!(m.patterns()[1].to_string(), "docs/README.md");
        assert!(m.patterns()[1].exclusion());
        let wrong = MatchInfo {
            parent_matched: vec![true],
        };
        assert_eq!(
            m.matches_using_parent_results("x", &wrong).unwrap_err(),
            IgnoreError::WrongParentMatchCount
        );
    }

    #[test]
    fn ignore_read_ignore_file_rules() {
        let got =
            read_ignore_file("\u{FEFF}# c\r\n a \r\n\t#not comment\n!\t/x/../y/\n/\n!/\n").unwrap();
        assert_eq!(got, ["a", "#not comment", "!y", "/", "!/"]);
        assert!(read_ignore_file("").unwrap().is_empty());
        assert_eq!(
            read_ignore_file("x\n\u{FEFF}y").unwrap(),
            ["x", "\u{FEFF}y"]
        );
        let long = "a".repeat(64 * 1024);
        assert_eq!(
            read_ignore_file(&format!("ok\n{long}\n")).unwrap_err(),
            IgnoreError::LineTooLong { line: 2 }
        );
        assert_eq!(read_ignore_file(&long[1..]).unwrap().len(), 1);
    }

    #[test]
    fn ignore_walk_pruning_rule() {
        let m = pm(&["node_modules", "build", "!build/keep"]);
        assert!(m.exclusions_are_prefix_only());
        assert!(m.can_skip_excluded_dir("node_modules"));
        assert!(!m.can_skip_excluded_dir("build"));
        assert!(m.is_excluded("build/other").unwrap());
        assert!(!m.is_excluded("build/keep").unwrap());
        assert!(!m.is_excluded("build/keep/deep").unwrap());
        assert!(m.is_excluded("node_modules/x/y").unwrap());
        assert!(!m.is_excluded("src/main.rs").unwrap());
        assert!(!m.is_excluded(".").unwrap());
        assert!(m.is_excluded("/node_modules/").unwrap());
        // A glob in an exception disables pruning everywhere.
        let m = pm(&["a", "!**/keep"]);
        assert!(!m.exclusions_are_prefix_only());
        assert!(!m.can_skip_excluded_dir("a"));
        assert!(!m.is_excluded("a/keep").unwrap());
        // Trailing `/**` and `/*` do not count as globs.
        let m = pm(&["a", "!a/b/**", "!c/*"]);
        assert!(m.exclusions_are_prefix_only());
        assert!(!m.can_skip_excluded_dir("a"));
        assert!(!m.can_skip_excluded_dir("a/b"));
        assert!(m.can_skip_excluded_dir("a/c"));
        // Without exceptions every excluded directory is prunable.
        assert!(pm(&["x"]).can_skip_excluded_dir("anything"));
    }

    #[test]
    fn ignore_walk_verdict_differs_from_open_verdict() {
        let m = pm(&["*/b", "!a"]);
        assert!(m.is_excluded("a/b").unwrap());
        assert!(!m.matches_or_parent_matches("a/b").unwrap());
    }

    /// xorshift64*: deterministic pseudo-random numbers without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    const ALPHABET: &[&str] = &[
        "*",
        "**",
        "?",
        "[",
        "]",
        "^",
        "!",
        "-",
        "\\",
        "/",
        ".",
        "..",
        "a",
        "b",
        "z",
        "0",
        "7",
        "{",
        "}",
        "(",
        ")",
        "|",
        "$",
        "+",
        ":",
        "[:alpha:]",
        "\\Q",
        "\\E",
        "\\p",
        "\\d",
        "\\x",
        "é",
        "\u{FEFF}",
        "\n",
        " ",
        "P",
        "L",
        "x{",
        "\u{10FFFF}",
    ];

    fn random_text(rng: &mut Rng, max: u64) -> String {
        let len = rng.next() % max;
        (0..len).map(|_| rng.pick(ALPHABET)).collect()
    }

    #[test]
    fn ignore_random_patterns_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..6_000 {
            let pattern = random_text(&mut rng, 12);
            let path = random_text(&mut rng, 10);
            let Ok(m) = PatternMatcher::new([pattern.as_str(), "!x*", pattern.as_str()]) else {
                continue;
            };
            let _ = m.matches(&path);
            let _ = m.matches_or_parent_matches(&path);
            let _ = m.matches_using_parent_result(&path, true);
            let _ = m.matches_using_parent_results(&path, &MatchInfo::default());
            let _ = m.is_excluded(&path);
            let _ = m.can_skip_excluded_dir(&path);
            for p in m.patterns() {
                let _ = p.compile_for_separator('\\');
            }
        }
        for _ in 0..5_000 {
            let text = random_text(&mut rng, 30);
            let _ = read_ignore_file(&text);
            let _ = clean_path(&text);
            let _ = go_regex_to_rust(&text);
            let _ = go_match(text.as_bytes(), b"a/b.c");
        }
    }

    #[test]
    fn ignore_random_bytes_never_panic() {
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let len = (rng.next() % 16) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = go_match(&bytes, &bytes);
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(m) = PatternMatcher::new([text.as_ref()]) {
                let _ = m.is_excluded(&text);
                let _ = m.matches(&text);
            }
        }
    }

    #[test]
    /// No timer (the machine is shared): exponential or quadratic work shows as a hung test.
    fn ignore_huge_patterns_stay_fast() {
        let huge = "**/".repeat(2_000) + "x";
        let m = pm(&[huge.as_str()]);
        assert_eq!(m.patterns()[0].match_type(), MatchType::Regexp);
        let path = "a/".repeat(200) + "x";
        assert!(m.matches_or_parent_matches(&path).unwrap());
        let huge = "a/".to_owned() + &"**/".repeat(1_000) + "*.txt";
        let m = pm(&[huge.as_str()]);
        assert_eq!(m.patterns()[0].match_type(), MatchType::Regexp);
        let deep = "a/".to_owned() + &"d/".repeat(40) + "f.txt";
        assert!(m.matches_or_parent_matches(&deep).unwrap());
        assert!(!m.matches_or_parent_matches(&(deep.clone() + "2")).unwrap());
        assert!(m.is_excluded(&deep).unwrap());
        let stars = "*a".repeat(2_000);
        let m = pm(&[stars.as_str()]);
        assert!(!m.matches_or_parent_matches(&"a".repeat(1_999)).unwrap());
        let brackets = "[".repeat(10_000);
        assert!(PatternMatcher::new([brackets.as_str()]).is_err());
        let escapes = "\\".repeat(10_001);
        assert!(PatternMatcher::new([escapes.as_str()]).is_err());
    }
}
