//! Shell-style word expansion with BuildKit's semantics (`frontend/dockerfile/shell`, `Lex`).
//!
//! A Dockerfile word such as `"${HOME:-/root}"/bin` or `$A\ $B` is expanded against an
//! environment the way BuildKit does it: quotes are removed (or kept, with
//! [`Lexer::raw_quotes`]), the escape token escapes the next character, `$NAME` / `${NAME}` and
//! the modifier forms are replaced, and, for [`Lexer::process_words`], the result is split into
//! words on whitespace that did not come from a quoted or escaped part.
//!
//! Supported forms: `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`,
//! `${NAME+word}`, `${NAME:?message}`, `${NAME?message}`, `${NAME#pattern}`,
//! `${NAME##pattern}`, `${NAME%pattern}`, `${NAME%%pattern}`, `${NAME/pattern/replacement}` and
//! `${NAME//pattern/replacement}`. Patterns understand `*`, `?` and the escapes `\*`, `\?`, `\\`
//! (`\}` and `\/` stand for `}` and `/`); like BuildKit there are no bracket expressions, so `[`
//! and `]` are literal. Positional and special parameters (`$1`, `$@`, `$#`, ...) are looked
//! up like any name, so they are unset unless the environment defines them.
//!
//! Besides the result, every expansion reports which variable names it looked up and found
//! (`matched`) and which it looked up and did not find (`unmatched`).
//!
//! The code is pure and never panics. Work is linear in the input plus the size of what is
//! produced, except for pattern matching, which is polynomial (finite automata, never
//! backtracking). Modifier expansions nested more than [`MAX_NESTING_DEPTH`] levels deep are
//! rejected with [`ShellError::NestingTooDeep`].

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use regex::{Regex, RegexBuilder};
use unicode_general_category::{GeneralCategory, get_general_category};

/// How many `${NAME<modifier>...}` expansions may be nested inside each other.
pub const MAX_NESTING_DEPTH: usize = 128;

/// Upper bound on the memory of one compiled `#`/`%`/`/` pattern, in bytes.
const PATTERN_SIZE_LIMIT: usize = 32 << 20;

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

/// A source of variable values. Lookups are exact and case-sensitive (BuildKit on Linux).
///
/// Implemented for `()` (nothing is set), slices and vectors of `(name, value)` pairs (the
/// **last** pair with a name wins, like BuildKit's `EnvsFromSlice`), `HashMap`, `BTreeMap`,
/// references to any of these, and closures through [`env_fn`].
pub trait Env {
    /// The value of `name`, or `None` when it is not set. `Some("")` means set but empty.
    fn get(&self, name: &str) -> Option<&str>;
}

impl Env for () {
    fn get(&self, _name: &str) -> Option<&str> {
        None
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for [(K, V)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for Vec<(K, V)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

impl<K, V, S> Env for HashMap<K, V, S>
where
    K: Borrow<str> + Hash + Eq,
    V: AsRef<str>,
    S: BuildHasher,
{
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(AsRef::as_ref)
    }
}

impl<K: Borrow<str> + Ord, V: AsRef<str>> Env for BTreeMap<K, V> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(AsRef::as_ref)
    }
}

/// An [`Env`] backed by a closure; build it with [`env_fn`].
pub struct EnvFn<'a, F> {
    lookup: F,
    _values: PhantomData<&'a str>,
}

/// Wraps a lookup closure as an [`Env`]:
/// `env_fn(|name| args.get(name).map(String::as_str))`.
pub fn env_fn<'a, F>(lookup: F) -> EnvFn<'a, F>
where
    F: Fn(&str) -> Option<&'a str>,
{
    EnvFn {
        lookup,
        _values: PhantomData,
    }
}

impl<'a, F> Env for EnvFn<'a, F>
where
    F: Fn(&str) -> Option<&'a str>,
{
    fn get(&self, name: &str) -> Option<&str> {
        (self.lookup)(name)
    }
}

/// Builds an environment from `NAME=value` strings the way BuildKit's `EnvsFromSlice` does:
/// split at the first `=`, an entry without `=` is set to `""`, and a later entry for the same
/// name replaces an earlier one.
pub fn parse_env_entries<I, S>(entries: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    entries
        .into_iter()
        .map(|entry| {
            let entry = entry.as_ref();
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Results and errors
// ---------------------------------------------------------------------------------------------

/// The outcome of an expansion: the value (one word or a list of words) and the variable
/// names that were looked up, split by whether the environment had them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expansion<T> {
    /// `String` for [`Lexer::process_word`], `Vec<String>` for [`Lexer::process_words`].
    pub value: T,
    /// Names that were looked up and set (possibly to `""`).
    pub matched: BTreeSet<String>,
    /// Names that were looked up and not set. May contain `""` for forms such as `${/a/b}`,
    /// exactly as BuildKit reports them.
    pub unmatched: BTreeSet<String>,
}

/// Why a `#`, `%` or `/` pattern was rejected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// `\` followed by something other than `*`, `?`, `\`, `}` or `/`.
    #[error("invalid escape '\\{0}'")]
    InvalidEscape(char),
    /// The pattern ends in a lone `\`.
    #[error("invalid escape '\\' at end of pattern")]
    TrailingEscape,
    /// The pattern compiles to more than the matcher's size limit.
    #[error("pattern is too large")]
    TooLarge,
}

/// An expansion error. `offset` is a byte offset into the word that was processed: the
/// opening quote for unterminated quotes, the `$` of the expansion for everything else.
///
/// The messages are BuildKit's. BuildKit itself reports them wrapped as
/// `failed to process "<word>": <message>` (the word in Go `%q` quoting).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ShellError {
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote { offset: usize },
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote { offset: usize },
    /// `${` without its closing `}`.
    #[error("syntax error: missing '}}'")]
    MissingCloseBrace { offset: usize },
    /// `${NAME/pattern` without the `/` that starts the replacement.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash { offset: usize },
    /// `${}`, `${:...}`, `${{...}`.
    #[error("syntax error: bad substitution")]
    BadSubstitution { offset: usize },
    /// `${NAME` followed by an operator that is not supported (`=`, `:=`, `:#`, `.` ...).
    #[error("unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier { modifier: String, offset: usize },
    /// `${NAME?message}` / `${NAME:?message}` on an unset (or empty) variable. `message` is
    /// the expanded message, or BuildKit's default text when none was given.
    #[error("{name}: {message}")]
    MandatoryVariable {
        name: String,
        message: String,
        offset: usize,
    },
    /// A `#`, `%` or `/` pattern that cannot be used. For `%`/`%%` BuildKit matches the
    /// reversed pattern against the reversed value, and `pattern` is that reversed pattern.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        pattern: String,
        reason: PatternError,
        offset: usize,
    },
    /// Our own limit (BuildKit has none): see [`MAX_NESTING_DEPTH`].
    #[error(
        "variable expansions are nested more than {limit} levels deep; split the expression into several variables"
    )]
    NestingTooDeep { limit: usize, offset: usize },
}

impl ShellError {
    /// Byte offset into the processed word where the offending construct starts.
    pub fn offset(&self) -> usize {
        match self {
            ShellError::UnterminatedSingleQuote { offset }
            | ShellError::UnterminatedDoubleQuote { offset }
            | ShellError::MissingCloseBrace { offset }
            | ShellError::MissingSlash { offset }
            | ShellError::BadSubstitution { offset }
            | ShellError::UnsupportedModifier { offset, .. }
            | ShellError::MandatoryVariable { offset, .. }
            | ShellError::InvalidPattern { offset, .. }
            | ShellError::NestingTooDeep { offset, .. } => *offset,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

/// Expansion settings; the equivalent of BuildKit's `shell.Lex`. Cheap to copy; holds no state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    /// The escape token: `\` by default, or `` ` `` with `# escape=``. Patterns in `#`, `%`
    /// and `/` forms always use `\` for their own escapes, whatever this is (as in BuildKit).
    pub escape: char,
    /// Keep quote characters in the output (`RawQuotes`).
    pub raw_quotes: bool,
    /// Keep escape tokens in the output (`RawEscapes`). Inside `-`/`+`/`?` words escapes are
    /// always processed, inside `#`/`%`/`/` words they are always kept, as in BuildKit.
    pub raw_escapes: bool,
    /// Treat `'` and `"` as ordinary characters (`SkipProcessQuotes`).
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written (`$NAME`, `${NAME}`, and
    /// `${NAME<op><expanded word>}` for the modifier forms) instead of expanding them
    /// (`SkipUnsetEnv`). Unset names are still reported in `unmatched`.
    pub skip_unset_env: bool,
    /// Reproduce a defect of BuildKit's `ProcessWords` (only [`Lexer::process_words`] is
    /// affected): when an expansion with a modifier (`${V:-x}`, `${V#p}`, `${V/p/r}`, ...)
    /// starts, the part of the current word collected so far is dropped, so
    /// `a${X:-b}` gives `["b"]` and `pre"${X:-b}"` gives `["b"]`. BuildKit's EXPOSE and
    /// heredoc-name handling go through this path. `true` by default (BuildKit-exact);
    /// set it to `false` to get the evident intent (`["ab"]`).
    pub buildkit_words_reset: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

impl Lexer {
    /// A lexer with the given escape token and every option off (except
    /// [`Lexer::buildkit_words_reset`]), like BuildKit's `NewLex(escapeToken)`.
    pub const fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
            buildkit_words_reset: true,
        }
    }

    /// Expands `word` into one string, without word splitting (BuildKit's `ProcessWord` /
    /// `ProcessWordWithMatches`).
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<Expansion<String>, ShellError> {
        let mut run = Run::new(self, env, word, false);
        let value = run.until(None, self.raw_escapes)?;
        Ok(Expansion {
            value,
            matched: run.matched,
            unmatched: run.unmatched,
        })
    }

    /// Expands `word` and splits the result into words on whitespace that came from the
    /// word itself or from unquoted expansions (BuildKit's `ProcessWords`). Quoted parts,
    /// escaped characters, and whitespace right after `<<` never split. Empty words are
    /// dropped, so `''` alone gives no word.
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expansion<Vec<String>>, ShellError> {
        let mut run = Run::new(self, env, word, true);
        run.until(None, self.raw_escapes)?;
        let value = run.words.take().map(Splitter::finish).unwrap_or_default();
        Ok(Expansion {
            value,
            matched: run.matched,
            unmatched: run.unmatched,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Word splitting
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Splitter {
    words: Vec<String>,
    current: String,
}

impl Splitter {
    /// A character subject to splitting.
    fn push_char(&mut self, c: char) {
        if c.is_whitespace() {
            self.flush();
        } else {
            self.current.push(c);
        }
    }

    fn push_str(&mut self, s: &str) {
        for c in s.chars() {
            self.push_char(c);
        }
    }

    fn flush(&mut self) {
        if !self.current.is_empty() {
            self.words.push(std::mem::take(&mut self.current));
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.flush();
        self.words
    }
}

// ---------------------------------------------------------------------------------------------
// The expansion of one word
// ---------------------------------------------------------------------------------------------

struct Run<'s> {
    lex: &'s Lexer,
    env: &'s dyn Env,
    src: &'s str,
    pos: usize,
    raw_escapes: bool,
    depth: usize,
    /// `Some` when splitting into words; only the top level writes to it.
    words: Option<Splitter>,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    regexes: HashMap<String, Regex>,
}

/// How a piece of text joins the words being split.
#[derive(Clone, Copy)]
enum Part {
    /// Whitespace in it separates words (unquoted expansion results).
    Split,
    /// Taken as is (quoted text, escaped characters).
    Raw,
}

impl<'s> Run<'s> {
    fn new(lex: &'s Lexer, env: &'s dyn Env, src: &'s str, split: bool) -> Self {
        // Go's text/scanner drops a byte order mark at the very start of its input.
        let pos = if src.starts_with('\u{feff}') { 3 } else { 0 };
        Run {
            lex,
            env,
            src,
            pos,
            raw_escapes: lex.raw_escapes,
            depth: 0,
            words: split.then(Splitter::default),
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            regexes: HashMap::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.src
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    /// Processes text up to `stop` (consumed) or the end of input (`stop == None`: the top
    /// level). Returns the expanded text; at the top level of word splitting the text goes to
    /// the splitter instead and the returned string is empty.
    fn until(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<String, ShellError> {
        if stop.is_some() {
            if self.depth >= MAX_NESTING_DEPTH {
                return Err(ShellError::NestingTooDeep {
                    limit: MAX_NESTING_DEPTH,
                    offset: self.pos,
                });
            }
            if self.lex.buildkit_words_reset
                && let Some(words) = self.words.as_mut()
            {
                words.current.clear();
            }
            self.depth += 1;
        }
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.until_inner(stop);
        self.raw_escapes = saved;
        if stop.is_some() {
            self.depth -= 1;
        }
        result
    }

    fn until_inner(&mut self, stop: Option<char>) -> Result<String, ShellError> {
        let split = stop.is_none() && self.words.is_some();
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += ch.len_utf8();
                return Ok(out);
            }
            match ch {
                '$' => {
                    let text = self.dollar()?;
                    self.emit(split, &mut out, &text, Part::Split);
                }
                '<' => {
                    let text = self.possible_heredoc();
                    self.emit(split, &mut out, text, Part::Raw);
                }
                '\'' if !self.lex.skip_process_quotes => {
                    let text = self.single_quoted()?;
                    self.emit(split, &mut out, text, Part::Raw);
                }
                '"' if !self.lex.skip_process_quotes => {
                    let text = self.double_quoted()?;
                    self.emit(split, &mut out, &text, Part::Raw);
                }
                _ => {
                    self.pos += ch.len_utf8();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            self.emit_char(split, &mut out, ch, Part::Raw);
                        }
                        // An escape token at the very end is dropped.
                        let Some(escaped) = self.bump() else { break };
                        self.emit_char(split, &mut out, escaped, Part::Raw);
                    } else {
                        self.emit_char(split, &mut out, ch, Part::Split);
                    }
                }
            }
        }
        match stop {
            // Callers turn this into the error that fits their construct.
            Some(_) => Err(ShellError::MissingCloseBrace { offset: self.pos }),
            None => Ok(out),
        }
    }

    fn emit(&mut self, split: bool, out: &mut String, text: &str, part: Part) {
        match self.words.as_mut() {
            Some(words) if split => match part {
                Part::Split => words.push_str(text),
                Part::Raw => words.current.push_str(text),
            },
            _ => out.push_str(text),
        }
    }

    fn emit_char(&mut self, split: bool, out: &mut String, c: char, part: Part) {
        match self.words.as_mut() {
            Some(words) if split => match part {
                Part::Split => words.push_char(c),
                Part::Raw => words.current.push(c),
            },
            _ => out.push(c),
        }
    }

    /// At `<`: `<<` plus the blanks after it stay together (a heredoc marker such as
    /// `<< EOF` is one word); a lone `<` is an ordinary character.
    fn possible_heredoc(&mut self) -> &'s str {
        let start = self.pos;
        self.pos += 1;
        if self.peek() == Some('<') {
            self.pos += 1;
            while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
                self.pos += 1;
            }
        }
        &self.src[start..self.pos]
    }

    fn single_quoted(&mut self) -> Result<&'s str, ShellError> {
        let start = self.pos;
        let body = start + 1;
        let Some(len) = self.src[body..].find('\'') else {
            self.pos = self.src.len();
            return Err(ShellError::UnterminatedSingleQuote { offset: start });
        };
        self.pos = body + len + 1;
        Ok(if self.lex.raw_quotes {
            &self.src[start..self.pos]
        } else {
            &self.src[body..body + len]
        })
    }

    fn double_quoted(&mut self) -> Result<String, ShellError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        if self.lex.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote { offset: start }),
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(ch) => {
                    self.pos += ch.len_utf8();
                    if ch != self.lex.escape {
                        out.push(ch);
                        continue;
                    }
                    if self.raw_escapes {
                        out.push(ch);
                    }
                    match self.peek() {
                        // The unterminated quote is reported on the next round.
                        None => {}
                        Some(next) if next == '"' || next == '$' || next == self.lex.escape => {
                            self.pos += next.len_utf8();
                            out.push(next);
                        }
                        // Only `"`, `$` and the escape token can be escaped; otherwise the
                        // escape token is literal (and so appears twice with raw escapes).
                        Some(_) => out.push(ch),
                    }
                }
            }
        }
    }

    /// A name after `$` or `${`: a run of decimal digits, one special-parameter character,
    /// or letters, digits and `_` (Unicode letters and digits, as in Go).
    fn name(&mut self) -> &'s str {
        let start = self.pos;
        let rest = &self.src[start..];
        let len = match rest.chars().next() {
            None => 0,
            Some(c) if is_go_digit(c) => rest
                .char_indices()
                .find(|&(_, c)| !is_go_digit(c))
                .map_or(rest.len(), |(i, _)| i),
            Some(c) if is_special_param(c) => c.len_utf8(),
            Some(_) => rest
                .char_indices()
                .find(|&(_, c)| !(is_go_letter(c) || is_go_digit(c) || c == '_'))
                .map_or(rest.len(), |(i, _)| i),
        };
        self.pos += len;
        &rest[..len]
    }

    fn lookup(&mut self, name: &str) -> Option<&'s str> {
        let env: &'s dyn Env = self.env;
        let value = env.get(name);
        let set = if value.is_some() {
            &mut self.matched
        } else {
            &mut self.unmatched
        };
        if !set.contains(name) {
            set.insert(name.to_owned());
        }
        value
    }

    /// At `$`: expands one parameter reference.
    fn dollar(&mut self) -> Result<Cow<'s, str>, ShellError> {
        let start = self.pos;
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok(Cow::Borrowed("$"));
            }
            return Ok(Cow::Borrowed(match self.lookup(name) {
                Some(value) => value,
                None if self.lex.skip_unset_env => &self.src[start..self.pos],
                None => "",
            }));
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(ShellError::MissingCloseBrace { offset: start }),
            Some('{' | '}' | ':') => return Err(ShellError::BadSubstitution { offset: start }),
            Some(_) => {}
        }
        let name = self.name();
        let Some(op) = self.bump() else {
            return Err(ShellError::MissingCloseBrace { offset: start });
        };
        match op {
            '}' => Ok(Cow::Borrowed(match self.lookup(name) {
                Some(value) => value,
                None if self.lex.skip_unset_env => &self.src[start..self.pos],
                None => "",
            })),
            ':' => {
                let Some(op) = self.bump() else {
                    return Err(ShellError::MissingCloseBrace { offset: start });
                };
                self.modifier(start, name, true, op).map(Cow::Owned)
            }
            '+' | '-' | '?' | '#' | '%' => self.modifier(start, name, false, op).map(Cow::Owned),
            '/' => self.substitute(start, name).map(Cow::Owned),
            other => Err(ShellError::UnsupportedModifier {
                modifier: other.to_string(),
                offset: start,
            }),
        }
    }

    /// Processes the word of a modifier up to `stop`; running out of input inside it is
    /// reported as `at_end` (whatever went wrong inside).
    fn sub_word(
        &mut self,
        stop: char,
        raw_escapes: bool,
        at_end: ShellError,
    ) -> Result<String, ShellError> {
        self.until(Some(stop), raw_escapes).map_err(|err| {
            if self.at_end() && !matches!(err, ShellError::NestingTooDeep { .. }) {
                at_end
            } else {
                err
            }
        })
    }

    /// `${NAME` `[:]op` `word}` for op in `- + ? # %` (anything else after `:` is an error,
    /// reported after the word, as BuildKit does).
    fn modifier(
        &mut self,
        start: usize,
        name: &'s str,
        colon: bool,
        op: char,
    ) -> Result<String, ShellError> {
        let modifier = if colon {
            format!(":{op}")
        } else {
            op.to_string()
        };
        let trim = op == '#' || op == '%';
        if colon && trim {
            return Err(ShellError::UnsupportedModifier {
                modifier,
                offset: start,
            });
        }
        let word = self.sub_word('}', trim, ShellError::MissingCloseBrace { offset: start })?;
        let value = self.lookup(name);
        if value.is_none() && self.lex.skip_unset_env {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        // With `:`, an empty value counts as unset.
        let unset = value.is_none_or(|v| colon && v.is_empty());
        match op {
            '-' => Ok(if unset {
                word
            } else {
                value.unwrap_or_default().to_owned()
            }),
            '+' => Ok(if unset { String::new() } else { word }),
            '?' => match value {
                Some(v) if !unset => Ok(v.to_owned()),
                _ => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_owned()
                    } else {
                        "is not allowed to be empty".to_owned()
                    };
                    Err(ShellError::MandatoryVariable {
                        name: name.to_owned(),
                        message,
                        offset: start,
                    })
                }
            },
            '#' | '%' => self.trim(start, op, &word, value.unwrap_or_default()),
            _ => Err(ShellError::UnsupportedModifier {
                modifier,
                offset: start,
            }),
        }
    }

    /// `${NAME#pattern}` and friends: the shortest (`#`, `%`) or longest (`##`, `%%`) match of
    /// the pattern at the start (`#`) or end (`%`) of the value is removed.
    fn trim(
        &mut self,
        start: usize,
        op: char,
        word: &str,
        value: &str,
    ) -> Result<String, ShellError> {
        let (greedy, pattern) = match word.strip_prefix(op) {
            Some(rest) => (true, rest),
            None => (false, word),
        };
        if op == '#' {
            let matcher = self.matcher(pattern, greedy, true, start)?;
            let end = matcher.find_at(value, 0).map_or(0, |(_, end)| end);
            return Ok(value[end..].to_owned());
        }
        // The rightmost shortest/longest match, found as the leftmost one in reversed text.
        let pattern = reverse_pattern(pattern);
        let reversed: String = value.chars().rev().collect();
        let matcher = self.matcher(&pattern, greedy, true, start)?;
        let end = matcher.find_at(&reversed, 0).map_or(0, |(_, end)| end);
        Ok(reversed[end..].chars().rev().collect())
    }

    /// `${NAME/pattern/replacement}` (first match) and `${NAME//pattern/replacement}` (all).
    fn substitute(&mut self, start: usize, name: &'s str) -> Result<String, ShellError> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let pattern = self.sub_word('/', true, ShellError::MissingSlash { offset: start })?;
        let replacement =
            self.sub_word('}', true, ShellError::MissingCloseBrace { offset: start })?;
        let value = self.lookup(name);
        if value.is_none() && self.lex.skip_unset_env {
            // BuildKit writes a single `/` here even for `//`.
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        let value = value.unwrap_or_default();
        let matcher = self.matcher(&pattern, true, false, start)?;
        if all {
            return Ok(replace_all(value, &matcher, &replacement));
        }
        Ok(match matcher.find_at(value, 0) {
            Some((s, e)) => [&value[..s], replacement.as_str(), &value[e..]].concat(),
            None => value.to_owned(),
        })
    }

    fn matcher(
        &mut self,
        pattern: &str,
        greedy: bool,
        anchored: bool,
        offset: usize,
    ) -> Result<Matcher, ShellError> {
        let invalid = |reason| ShellError::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
            offset,
        };
        let tokens = parse_pattern(pattern).map_err(invalid)?;
        if !tokens.iter().any(|t| matches!(t, Tok::Star | Tok::Any)) {
            let text = tokens
                .iter()
                .filter_map(|t| match t {
                    Tok::Lit(c) => Some(*c),
                    _ => None,
                })
                .collect();
            return Ok(Matcher::Literal { text, anchored });
        }
        let source = render_regex(&tokens, greedy, anchored);
        if let Some(re) = self.regexes.get(&source) {
            return Ok(Matcher::Regex(re.clone()));
        }
        let re = RegexBuilder::new(&source)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|_| invalid(PatternError::TooLarge))?;
        self.regexes.insert(source, re.clone());
        Ok(Matcher::Regex(re))
    }
}

// ---------------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------------

enum Tok {
    Lit(char),
    Any,
    Star,
}

fn parse_pattern(pattern: &str) -> Result<Vec<Tok>, PatternError> {
    // BuildKit reads the pattern with a fresh Go text/scanner, which drops a leading BOM.
    let pattern = pattern.strip_prefix('\u{feff}').unwrap_or(pattern);
    let mut tokens = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => Tok::Star,
            '?' => Tok::Any,
            // `\}` and `\/` had to be escaped inside `${...}`; the escape is not part of
            // the pattern, and the character itself comes on the next round.
            '\\' if matches!(chars.peek(), Some('}' | '/')) => continue,
            '\\' => match chars.next() {
                Some(e @ ('*' | '?' | '\\')) => Tok::Lit(e),
                Some(other) => return Err(PatternError::InvalidEscape(other)),
                None => return Err(PatternError::TrailingEscape),
            },
            c => Tok::Lit(c),
        });
    }
    Ok(tokens)
}

fn render_regex(tokens: &[Tok], greedy: bool, anchored: bool) -> String {
    let mut out = String::with_capacity(tokens.len() + 4);
    if anchored {
        out.push('^');
    }
    for token in tokens {
        match token {
            Tok::Star if greedy => out.push_str(".*"),
            Tok::Star => out.push_str(".*?"),
            Tok::Any => out.push('.'),
            Tok::Lit(c) => {
                if "[]{}.+()|^$*?\\".contains(*c) {
                    out.push('\\');
                }
                out.push(*c);
            }
        }
    }
    out
}

/// The regular expression BuildKit builds for a shell pattern (`*` → `.*`, or `.*?` when not
/// `greedy`; `?` → `.`; regex metacharacters escaped; `^` in front when `anchored`). The
/// expression has Go RE2 syntax, which the `regex` crate reads with the same meaning.
pub fn shell_pattern_to_regex(
    pattern: &str,
    greedy: bool,
    anchored: bool,
) -> Result<String, PatternError> {
    Ok(render_regex(&parse_pattern(pattern)?, greedy, anchored))
}

/// Reverses a pattern keeping each `\x` pair in order (`a\*c` → `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let len = if chars[i] == '\\' && i + 1 < chars.len() {
            2
        } else {
            1
        };
        tokens.push(&chars[i..i + len]);
        i += len;
    }
    tokens.iter().rev().flat_map(|t| t.iter()).collect()
}

enum Matcher {
    Literal { text: String, anchored: bool },
    Regex(Regex),
}

impl Matcher {
    /// The leftmost match starting at or after `start` (a char boundary), as byte offsets.
    fn find_at(&self, haystack: &str, start: usize) -> Option<(usize, usize)> {
        match self {
            Matcher::Literal {
                text,
                anchored: true,
            } => (start == 0 && haystack.starts_with(text.as_str())).then_some((0, text.len())),
            Matcher::Literal {
                text,
                anchored: false,
            } => haystack
                .get(start..)?
                .find(text.as_str())
                .map(|i| (start + i, start + i + text.len())),
            Matcher::Regex(re) => re.find_at(haystack, start).map(|m| (m.start(), m.end())),
        }
    }
}

/// Go's `Regexp.ReplaceAllString`: every non-overlapping match is replaced, an empty match
/// right after a previous match is skipped, and `$` in the replacement is a template
/// (see [`expand_template`]).
fn replace_all(value: &str, matcher: &Matcher, replacement: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut last_end = 0;
    let mut search = 0;
    while search <= value.len() {
        let Some((start, end)) = matcher.find_at(value, search) else {
            break;
        };
        out.push_str(&value[last_end..start]);
        if end > last_end || start == 0 {
            expand_template(&mut out, replacement, &value[start..end]);
        }
        last_end = end;
        let width = value[search..].chars().next().map_or(1, char::len_utf8);
        search = if search + width > end {
            search + width
        } else {
            end
        };
    }
    out.push_str(&value[last_end..]);
    out
}

/// Go's `Regexp.Expand` for an expression without capture groups: `$$` is `$`, `$0` and
/// `${0}` are the match, any other `$name`/`${name}` is empty, and a `$` that starts no valid
/// reference stays as it is.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(body) => (true, body),
            None => (false, rest),
        };
        let len = body
            .char_indices()
            .find(|&(_, c)| !(is_go_letter(c) || is_go_digit(c) || c == '_'))
            .map_or(body.len(), |(i, _)| i);
        if len == 0 || (braced && !body[len..].starts_with('}')) {
            out.push('$');
            continue;
        }
        if &body[..len] == "0" {
            out.push_str(matched);
        }
        rest = &body[len + usize::from(braced)..];
    }
    out.push_str(rest);
}

// ---------------------------------------------------------------------------------------------
// Character classes (Go's `unicode` package)
// ---------------------------------------------------------------------------------------------

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Go `unicode.IsLetter`: general category L.
fn is_go_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(c),
        GeneralCategory::UppercaseLetter
            | GeneralCategory::LowercaseLetter
            | GeneralCategory::TitlecaseLetter
            | GeneralCategory::ModifierLetter
            | GeneralCategory::OtherLetter
    )
}

/// Go `unicode.IsDigit`: general category Nd.
fn is_go_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    get_general_category(c) == GeneralCategory::DecimalNumber
}

// ---------------------------------------------------------------------------------------------
// Tests (the data-driven conformance tests are in tests/conformance/shell.rs)
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn word(lex: &Lexer, input: &str, env: &[(&str, &str)]) -> Result<String, ShellError> {
        lex.process_word(input, &env).map(|e| e.value)
    }

    fn words(lex: &Lexer, input: &str, env: &[(&str, &str)]) -> Result<Vec<String>, ShellError> {
        lex.process_words(input, &env).map(|e| e.value)
    }

    fn w(input: &str, env: &[(&str, &str)]) -> String {
        word(&Lexer::default(), input, env).unwrap_or_else(|e| panic!("{input:?}: {e}"))
    }

    fn ws(input: &str, env: &[(&str, &str)]) -> Vec<String> {
        words(&Lexer::default(), input, env).unwrap_or_else(|e| panic!("{input:?}: {e}"))
    }

    /// Runs a large-input case. No timer: the machine is shared, so quadratic work shows up
    /// as a test that does not finish rather than as a flaky time limit.
    fn assert_fast<T>(f: impl FnOnce() -> T) -> T {
        f()
    }

    #[test]
    fn shell_basic_forms() {
        let env = [("A", "x"), ("E", "")];
        assert_eq!(
            w("$A-${A}-${A:-d}-${B:-d}-${E:-d}-${E-d}", &env),
            "x-x-x-d-d-"
        );
        assert_eq!(w("${A:+p}${B:+p}${E:+p}${E+p}", &env), "pp");
        assert_eq!(w("'$A' \"$A\" \\$A", &env), "$A x $A");
        assert_eq!(w("$", &env), "$");
        assert_eq!(w("$.$A", &env), "$.x");
    }

    #[test]
    fn shell_errors_carry_offsets() {
        let lex = Lexer::default();
        let err = word(&lex, "ab'cd", &[]).unwrap_err();
        assert_eq!(err, ShellError::UnterminatedSingleQuote { offset: 2 });
        let err = word(&lex, "x\"y", &[]).unwrap_err();
        assert_eq!(err, ShellError::UnterminatedDoubleQuote { offset: 1 });
        let err = word(&lex, "ab${A:-${B}", &[]).unwrap_err();
        assert_eq!(err, ShellError::MissingCloseBrace { offset: 2 });
        let err = word(&lex, "a${}", &[]).unwrap_err();
        assert_eq!(err, ShellError::BadSubstitution { offset: 1 });
        let err = word(&lex, "${A/x", &[]).unwrap_err();
        assert_eq!(err, ShellError::MissingSlash { offset: 0 });
        let err = word(&lex, "--${A:=x}", &[]).unwrap_err();
        assert_eq!(err.to_string(), "unsupported modifier (:=) in substitution");
        assert_eq!(err.offset(), 2);
        let err = word(&lex, "${A:?}", &[]).unwrap_err();
        assert_eq!(err.to_string(), "A: is not allowed to be unset");
        let err = word(&lex, "${A:?}", &[("A", "")]).unwrap_err();
        assert_eq!(err.to_string(), "A: is not allowed to be empty");
        let err = word(&lex, "${A#\\x}", &[("A", "")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pattern (\\x) in substitution: invalid escape '\\x'"
        );
        // `%` works on the reversed pattern, and so does its message (as in BuildKit).
        let err = word(&lex, "${A%$P}", &[("A", ""), ("P", "\\x*")]).unwrap_err();
        assert!(matches!(err, ShellError::InvalidPattern { ref pattern, .. } if pattern == "*\\x"));
        // BuildKit prints garbage for these; we say what is missing.
        let err = word(&lex, "${abc", &[]).unwrap_err();
        assert_eq!(err, ShellError::MissingCloseBrace { offset: 0 });
    }

    #[test]
    fn shell_reports_matched_and_unmatched() {
        let lex = Lexer::default();
        let env = [("A", "1"), ("E", "")];
        let e = lex
            .process_word("$A ${E:-$B} ${C#x} $1 $@", &env.as_slice())
            .unwrap();
        assert_eq!(e.value, "1    ");
        assert_eq!(e.matched, BTreeSet::from(["A".into(), "E".into()]));
        let unmatched = ["B", "C", "1", "@"].map(String::from);
        assert_eq!(e.unmatched, BTreeSet::from(unmatched));
        // As in BuildKit, an empty name is looked up (and reported) by these forms.
        let e = lex.process_word("${+x}${/a/b}", &()).unwrap();
        assert_eq!(e.unmatched, BTreeSet::from([String::new()]));
        let e = lex.process_words("$A x${B}", &env.as_slice()).unwrap();
        assert_eq!(e.value, ["1", "x"]);
        assert_eq!(e.matched.len(), 1);
        assert_eq!(e.unmatched.len(), 1);
    }

    #[test]
    fn shell_env_implementations() {
        let lex = Lexer::default();
        let pairs = vec![("A".to_string(), "1".to_string()), ("A".into(), "2".into())];
        assert_eq!(lex.process_word("$A", &pairs).unwrap().value, "2");
        let hash: HashMap<&str, String> = HashMap::from([("A", "h".to_string())]);
        assert_eq!(lex.process_word("$A", &hash).unwrap().value, "h");
        let tree = parse_env_entries(["A=1", "B", "A=t=u"]);
        assert_eq!(tree.get("B").map(String::as_str), Some(""));
        assert_eq!(
            lex.process_word("$A${B-unset}", &tree).unwrap().value,
            "t=u"
        );
        let source = BTreeMap::from([("A".to_string(), "c".to_string())]);
        let closure = env_fn(|name| source.get(name).map(String::as_str));
        assert_eq!(lex.process_word("$A$a", &closure).unwrap().value, "c");
        assert_eq!(lex.process_word("$A", &()).unwrap().value, "");
    }

    #[test]
    fn shell_word_splitting() {
        let env = [("S", " a  b "), ("T", "x")];
        assert_eq!(ws("p$S q", &env), ["p", "a", "b", "q"]);
        assert_eq!(ws("p\"$S\"q", &env), ["p a  b q"]);
        assert_eq!(ws("a\\ b 'c d' \"\" ''", &env), ["a b", "c d"]);
        assert_eq!(ws("cat << EOF x <y", &env), ["cat", "<< EOF", "x", "<y"]);
        assert_eq!(ws("  ", &env), Vec::<String>::new());
        assert_eq!(ws("a\u{a0}b\u{3000}c", &env), ["a", "b", "c"]);
    }

    #[test]
    fn shell_buildkit_words_reset_quirk() {
        let env = [("V", "val")];
        assert_eq!(ws("hello${x:-abc}", &env), ["abc"]);
        assert_eq!(ws("pre\"a${x:-b}c\"post", &env), ["abcpost"]);
        assert_eq!(ws("a ${x:-b} c${V#v}", &env), ["a", "b", "al"]);
        assert_eq!(ws("a$V${V}", &env), ["avalval"]);
        let fixed = Lexer {
            buildkit_words_reset: false,
            ..Lexer::default()
        };
        assert_eq!(words(&fixed, "hello${x:-abc}", &env).unwrap(), ["helloabc"]);
        assert_eq!(
            words(&fixed, "pre\"a${x:-b}c\"post", &env).unwrap(),
            ["preabcpost"]
        );
        // process_word is not affected.
        assert_eq!(w("hello${x:-abc}", &env), "helloabc");
    }

    #[test]
    fn shell_options() {
        let raw = Lexer {
            raw_quotes: true,
            ..Lexer::default()
        };
        assert_eq!(word(&raw, "'a'\"$A\"", &[("A", "1")]).unwrap(), "'a'\"1\"");
        let skip = Lexer {
            raw_quotes: true,
            skip_unset_env: true,
            ..Lexer::default()
        };
        let env = [("A", "1")];
        assert_eq!(word(&skip, "$A$B${B}${A}", &env).unwrap(), "1$B${B}1");
        assert_eq!(
            word(&skip, "${B:-$A}${B#\\*x}", &env).unwrap(),
            "${B:-1}${B#\\*x}"
        );
        // Like BuildKit: `//` comes back as `/`, and bad modifiers pass through.
        assert_eq!(
            word(&skip, "${B//x/y}${B:YY}", &env).unwrap(),
            "${B/x/y}${B:YY}"
        );
        assert_eq!(word(&skip, "${A:YY}", &env).unwrap_err().offset(), 0);
        let esc = Lexer {
            raw_escapes: true,
            ..Lexer::default()
        };
        assert_eq!(word(&esc, "a\\ b\\$A", &env).unwrap(), "a\\ b\\$A");
        assert_eq!(word(&esc, "\"\\a\\$A\"", &env).unwrap(), "\\\\a\\$A");
        assert_eq!(word(&esc, "${B:-\\$A}", &env).unwrap(), "$A");
        let quotes = Lexer {
            skip_process_quotes: true,
            ..Lexer::default()
        };
        assert_eq!(
            word(&quotes, "'$A' \"$A\" \\'", &env).unwrap(),
            "'1' \"1\" '"
        );
    }

    #[test]
    fn shell_backtick_escape() {
        let lex = Lexer::new('`');
        let env = [("A", "1"), ("P", "a*b")];
        assert_eq!(
            word(&lex, "C:\\dir\\$A `$A `\"", &env).unwrap(),
            "C:\\dir\\1 $A \""
        );
        assert_eq!(word(&lex, "\"x`\"y\\z`$A\"", &env).unwrap(), "x\"y\\z$A");
        // Patterns keep `\` as their escape.
        assert_eq!(word(&lex, "${P#a\\*}", &env).unwrap(), "b");
        assert_eq!(word(&lex, "${P#a*}", &env).unwrap(), "*b");
    }

    #[test]
    fn shell_patterns() {
        let env = [("V", "a.b.c.d"), ("N", "line1\nline2"), ("S", "xyxyx")];
        assert_eq!(
            w("${V#*.}|${V##*.}|${V%.*}|${V%%.*}", &env),
            "b.c.d|d|a.b.c|a"
        );
        assert_eq!(w("${V#[a]}|${V#?.}|${V%?}", &env), "a.b.c.d|b.c.d|a.b.c.");
        // `*` and `?` do not match a newline (Go regexp `.`).
        assert_eq!(
            w("${N#*1}|${N##*e}|${N%%?*}", &env),
            "\nline2|1\nline2|line1\n"
        );
        assert_eq!(
            w("${S/x/-}|${S//x/-}|${S//*/-}|${S///}", &env),
            "-yxyx|-y-y-|-|xyxyx"
        );
        assert_eq!(
            w("${S//y*/[$R]}", &[("S", "xyz"), ("R", "$0$$${0}$1$")]),
            "x[yz$yz$]"
        );
        assert_eq!(w("${S/y/$R}", &[("S", "xyz"), ("R", "$0")]), "x$0z");
        assert_eq!(w("${S//?/<&>}", &[("S", "한국")]), "<&><&>");
        assert_eq!(w("${S%한}", &[("S", "한한")]), "한");
        assert_eq!(w("${V#\\}}${V%\\/}", &[("V", "}/")]), "/}");
        // A trailing `\` is only valid reversed, as in BuildKit.
        assert_eq!(w("${V%$P}", &[("V", "ab*"), ("P", "*\\")]), "ab");
        // A leading BOM in a pattern is ignored (Go's text/scanner drops it).
        assert_eq!(w("-${B/\u{feff}/#}|${V%x\u{feff}}", &[("V", "ax")]), "-#|a");
        assert!(word(&Lexer::default(), "${V#$P}", &[("V", "ab*"), ("P", "*\\")]).is_err());
    }

    #[test]
    fn shell_pattern_to_regex_output() {
        assert_eq!(
            shell_pattern_to_regex("a*b?", false, true).unwrap(),
            "^a.*?b."
        );
        assert_eq!(
            shell_pattern_to_regex("[x]+", true, false).unwrap(),
            "\\[x\\]\\+"
        );
        assert_eq!(
            shell_pattern_to_regex("a\\", true, true),
            Err(PatternError::TrailingEscape)
        );
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("👽\\🚀🖖"), "🖖\\🚀👽");
    }

    #[test]
    fn shell_unicode_names_follow_go() {
        let env = [("FOO", "f"), ("٣٤", "digits"), ("été", "summer")];
        // `²` is No and U+0947 is Mc: neither continues a name in Go.
        assert_eq!(
            w("$FOO²|$FOO\u{947}x|$٣٤x|$été.", &env),
            "f²|f\u{947}x|digitsx|summer."
        );
        assert_eq!(w("\u{feff}$FOO\u{feff}", &env), "f\u{feff}");
    }

    #[test]
    fn shell_megabyte_inputs_are_linear() {
        let lex = Lexer::default();
        let env = [("a", "xy")];
        let input = "$a".repeat(1 << 19);
        let out = assert_fast(|| word(&lex, &input, &env).unwrap());
        assert_eq!(out.len(), 1 << 20);
        let out = assert_fast(|| words(&lex, &input, &[("a", "x ")]).unwrap());
        assert_eq!(out.len(), 1 << 19);
        let input = "\\".repeat(1 << 20);
        assert_eq!(
            assert_fast(|| word(&lex, &input, &env).unwrap()).len(),
            1 << 19
        );
        let input = format!("\"{}\"", "\\\\$a".repeat(1 << 18));
        assert_fast(|| word(&lex, &input, &env).unwrap());
        let input = "'x'${a:-y}".repeat(1 << 17);
        assert_fast(|| words(&lex, &input, &env).unwrap());
        let input = "${a#x}${a%y}${a/x/z}".repeat(1 << 15);
        assert_fast(|| word(&lex, &input, &env).unwrap());
        let input = "'".repeat(1 << 20) + "'";
        assert!(assert_fast(|| word(&lex, &input, &env)).is_err());
    }

    #[test]
    fn shell_patterns_are_not_exponential() {
        let lex = Lexer::default();
        let value = "a".repeat(20_000);
        let pattern = "*a".repeat(30) + "b";
        let env = [("V", value.as_str()), ("P", pattern.as_str())];
        let out = assert_fast(|| word(&lex, "${V##$P}${V%%$P}${V//$P/x}", &env).unwrap());
        assert_eq!(out.len(), 60_000);
        let big = "x".repeat(1 << 20);
        let env = [("V", big.as_str()), ("P", "*x?")];
        assert_fast(|| word(&lex, "${V#$P}${V%$P}${V//?/y}", &env).unwrap());
    }

    #[test]
    fn shell_deep_nesting_is_bounded() {
        let lex = Lexer::default();
        let nest = |n: usize| "${a:-".repeat(n) + "x" + &"}".repeat(n);
        assert_eq!(word(&lex, &nest(MAX_NESTING_DEPTH), &[]).unwrap(), "x");
        let err = word(&lex, &nest(MAX_NESTING_DEPTH + 1), &[]).unwrap_err();
        assert!(matches!(err, ShellError::NestingTooDeep { .. }), "{err}");
        let err = word(&lex, &nest(100_000), &[]).unwrap_err();
        assert!(matches!(err, ShellError::NestingTooDeep { .. }), "{err}");
        let unterminated = "\"${a:-".repeat(100_000);
        assert!(words(&lex, &unterminated, &[]).is_err());
    }

    #[test]
    fn shell_odd_inputs_do_not_panic() {
        let lex = Lexer::default();
        let samples = [
            "",
            "$",
            "${",
            "${a",
            "${a:",
            "${a:}",
            "${a/",
            "${a//",
            "${a/b",
            "${a/b/",
            "\\",
            "\"\\",
            "'",
            "${a#\\",
            "${a%\\}",
            "$\u{0}",
            "${\u{10ffff}}",
            "<",
            "<<",
            "<< \t",
            "${a:-'}'",
            "${a:-\"}\"",
            "${#}",
            "${##}",
            "${%%}",
            "${a?",
            "$1234567890123",
        ];
        for raw_quotes in [false, true] {
            for skip_unset_env in [false, true] {
                let lex = Lexer {
                    raw_quotes,
                    skip_unset_env,
                    ..lex
                };
                for s in samples {
                    let _ = lex.process_word(s, &());
                    let _ = lex.process_words(s, &[("a", "\\")].as_slice());
                }
            }
        }
    }
}
