//! Go's `path.Match` / `filepath.Match` on Unix: the rules Docker documents for COPY/ADD
//! sources and .dockerignore patterns, plus the wildcard detection BuildKit applies to a source
//! before deciding to glob. One implementation for the parser (.dockerignore) and the context
//! (COPY sources).
//!
//! Semantics, as in Go: `*` matches any run of non-`/` characters, `?` one non-`/` character,
//! `[...]` a character class (`[^...]` negated, ranges `a-z`, `\` escapes inside), `\x` the
//! literal `x`. A class may match `/` (Go does not forbid it). Matching is on UTF-8 code points;
//! the pattern must match the whole name.
//!
//! [`go_match`] reports a malformed pattern lazily, exactly when Go would (patternmatcher's
//! semantics depend on it); [`path_match`] checks the whole pattern up front ([`validate`]), so
//! a malformed pattern is reported the same way whatever names it is matched against.

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

/// Go's `filepath.Match(pattern, name)` on bytes, with `/` as separator and `\` escaping; a
/// malformed pattern is an error only when Go's matcher reaches the bad part.
pub fn go_match(pattern: &[u8], name: &[u8]) -> Result<bool, BadPattern> {
    let mut pattern = pattern;
    let mut name = name;
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let here = match_chunk(chunk, name);
        if let Ok(Some(t)) = here
            && (t.is_empty() || !pattern.is_empty())
        {
            name = t;
            continue;
        }
        here?;
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'chunks;
                }
                i += 1;
            }
        }
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off the next run of stars and the non-star chunk after it.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut pattern = pattern;
    let mut star = false;
    while let [b'*', rest @ ..] = pattern {
        pattern = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Matches `chunk` against the start of `s`: `Ok(Some(rest))` on a match, `Ok(None)` on a
/// mismatch (the whole chunk is still syntax-checked), `Err` on a malformed chunk.
fn match_chunk<'a>(chunk: &[u8], s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
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
                    let (ch, n) = decode_rune(s);
                    r = ch;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    nrange += 1;
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

/// A possibly escaped character of a `[...]` class; the class must continue after it.
fn get_esc(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        _ => {}
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

/// Go's `utf8.DecodeRune`: `(U+FFFD, 1)` on invalid input, `(U+FFFD, 0)` on empty input.
fn decode_rune(s: &[u8]) -> (u32, usize) {
    let Some(&b0) = s.first() else {
        return (0xFFFD, 0);
    };
    let len = match b0 {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (0xFFFD, 1),
    };
    match s.get(..len).map(std::str::from_utf8) {
        Some(Ok(text)) => match text.chars().next() {
            Some(c) => (c as u32, len),
            None => (0xFFFD, 1),
        },
        _ => (0xFFFD, 1),
    }
}

/// Checks the syntax of every part of `pattern`.
pub fn validate(pattern: &str) -> Result<(), BadPattern> {
    let mut rest = pattern.as_bytes();
    while !rest.is_empty() {
        let (_, chunk, tail) = scan_chunk(rest);
        rest = tail;
        match_chunk(chunk, b"")?;
    }
    Ok(())
}

/// Go's `path.Match(pattern, name)`, with the pattern's syntax checked first.
pub fn path_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    validate(pattern)?;
    Ok(match_validated(pattern.as_bytes(), name.as_bytes()))
}

/// [`path_match`] for a pattern that passed [`validate`].
pub fn match_validated(pattern: &[u8], name: &[u8]) -> bool {
    go_match(pattern, name).unwrap_or(false)
}
