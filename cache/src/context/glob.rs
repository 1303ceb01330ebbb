//! Go's `path.Match` (the rules Docker documents for COPY/ADD sources), and the wildcard
//! detection BuildKit applies to a source before deciding to glob.
//!
//! Semantics, as in Go: `*` matches any run of non-`/` characters, `?` one non-`/` character,
//! `[...]` a character class (`[^...]` negated, ranges `a-z`, `\` escapes inside), `\x` the
//! literal `x`. A class may match `/` (Go does not forbid it). Matching is on UTF-8 code points;
//! the pattern must match the whole name.
//!
//! Unlike Go, the whole pattern is checked for syntax up front ([`validate`]), so a malformed
//! pattern is reported the same way whatever names it is matched against.

/// The pattern is malformed (Go's `path.ErrBadPattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPattern;

/// Whether `s` contains an unescaped `*`, `?` or `[` (BuildKit's `containsWildcards` on Unix:
/// a `\` hides the byte after it).
pub fn has_wildcards(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Removes `\` escapes (`\x` → `x`; a trailing lone `\` is kept): the literal name a
/// wildcard-free pattern matches.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) => out.push(n),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks the syntax of every part of `pattern`.
pub(crate) fn validate(pattern: &str) -> Result<(), BadPattern> {
    let mut rest = pattern.as_bytes();
    while !rest.is_empty() {
        let (_, chunk, tail) = scan_chunk(rest);
        rest = tail;
        match_chunk(chunk, b"")?;
    }
    Ok(())
}

/// Go's `path.Match(pattern, name)`.
pub fn path_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    validate(pattern)?;
    Ok(match_validated(pattern.as_bytes(), name.as_bytes()))
}

/// [`path_match`] for a pattern that passed [`validate`].
pub(crate) fn match_validated(pattern: &[u8], name: &[u8]) -> bool {
    let mut pattern = pattern;
    let mut name = name;
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing star matches the rest of the name unless it holds a separator.
            return !name.contains(&b'/');
        }
        if let Ok(Some(t)) = match_chunk(chunk, name)
            && (t.is_empty() || !pattern.is_empty())
        {
            name = t;
            continue;
        }
        if star {
            // Try the chunk after skipping 1, 2, ... bytes; a star never skips a '/'.
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Ok(Some(t)) = match_chunk(chunk, &name[i + 1..]) {
                    // The last chunk must use up the name.
                    if !pattern.is_empty() || t.is_empty() {
                        name = t;
                        continue 'chunks;
                    }
                }
                i += 1;
            }
        }
        return false;
    }
    name.is_empty()
}

/// Splits off the leading stars and the chunk (up to the next star outside a class).
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut p = pattern;
    let mut star = false;
    while let [b'*', rest @ ..] = p {
        p = rest;
        star = true;
    }
    let mut in_class = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' if i + 1 < p.len() => i += 1,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'*' if !in_class => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

/// Matches `chunk` (no stars outside classes) at the start of `s`: `Ok(Some(rest))` on a match,
/// `Ok(None)` on a mismatch (the chunk is still checked to the end), `Err` on bad syntax.
fn match_chunk<'s>(chunk: &[u8], s: &'s [u8]) -> Result<Option<&'s [u8]>, BadPattern> {
    let mut chunk = chunk;
    let mut s = s;
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = 0u32;
                if !failed {
                    let (rune, n) = decode_rune(s);
                    r = rune;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = class_char(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                if !failed {
                    if chunk[0] != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// One (possibly escaped) character of a class; the class must go on after it.
fn class_char(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        Some(_) => {}
    }
    let (r, n) = decode_rune(chunk);
    if r == 0xFFFD && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

/// Go's `utf8.DecodeRune`: (U+FFFD, 1) on an invalid sequence, (U+FFFD, 0) on empty input.
fn decode_rune(s: &[u8]) -> (u32, usize) {
    let Some(&first) = s.first() else {
        return (0xFFFD, 0);
    };
    if first < 0x80 {
        return (u32::from(first), 1);
    }
    let len = match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (0xFFFD, 1),
    };
    match s.get(..len).map(std::str::from_utf8) {
        Some(Ok(text)) => (text.chars().next().map_or(0xFFFD, u32::from), len),
        _ => (0xFFFD, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_detection_honours_escapes() {
        assert!(has_wildcards("*.txt"));
        assert!(has_wildcards("a?c"));
        assert!(has_wildcards("[ab]x"));
        assert!(!has_wildcards(r"a\*b"));
        assert!(!has_wildcards("plain/path"));
        assert!(has_wildcards(r"a\\*"));
        assert_eq!(unescape(r"a\*b\[c\\d"), r"a*b[c\d");
    }

    #[test]
    fn go_path_match_basics() {
        let cases: &[(&str, &str, Result<bool, BadPattern>)] = &[
            ("*.txt", "a.txt", Ok(true)),
            ("*.txt", "dir/a.txt", Ok(false)),
            ("dir/*", "dir/x", Ok(true)),
            ("dir/*", "dir/x/y", Ok(false)),
            ("a?c", "abc", Ok(true)),
            ("a?c", "a/c", Ok(false)),
            ("[ab]*", "bcd", Ok(true)),
            ("[ab]*", "cd", Ok(false)),
            (r"\*", "*", Ok(true)),
            (r"\*", "x", Ok(false)),
            ("a[/]b", "a/b", Ok(true)),
            ("[", "x", Err(BadPattern)),
            ("ok*[", "nomatch", Err(BadPattern)),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(path_match(pattern, name), *want, "{pattern} vs {name}");
        }
    }
}
