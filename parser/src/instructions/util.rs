//! Small helpers shared by the instruction parsers: spans inside words, suggestions, Go-style
//! number and duration parsing, and a scan for variable references.

use crate::ast::{Span, Word};

/// The span of `word.value[start..end]`.
///
/// Exact when the word's source text has the same length as its value (nothing was unquoted
/// or joined); otherwise the whole word, which is still the right place to underline.
pub fn sub_span(word: &Word, start: usize, end: usize) -> Span {
    if word.span.len() == word.value.len() && start <= end && end <= word.value.len() {
        Span::new(
            word.span.file,
            word.span.start + start,
            word.span.start + end,
        )
    } else {
        word.span
    }
}

/// A word made of part of another one.
pub fn sub_word(word: &Word, start: usize, end: usize) -> Word {
    Word {
        value: word.value.get(start..end).unwrap_or_default().to_owned(),
        span: sub_span(word, start, end),
    }
}

/// Longer strings are never compared: edit distance is quadratic in length.
const MAX_SUGGEST_LEN: usize = 64;

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest option within an edit distance of 2, as BuildKit's `suggest.Search` picks it
/// (an exact match means there is nothing to suggest). Ties go to the earliest option.
/// Case-insensitive search answers in the case style of `value`.
pub fn suggest<'a, I>(value: &str, options: I, case_sensitive: bool) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    if value.len() > MAX_SUGGEST_LEN {
        return None;
    }
    let norm = |s: &str| {
        if case_sensitive {
            s.to_owned()
        } else {
            s.to_lowercase()
        }
    };
    let v = norm(value);
    let mut best: Option<(usize, String)> = None;
    for opt in options {
        if opt.len() > MAX_SUGGEST_LEN {
            continue;
        }
        let o = norm(opt);
        if o == v {
            return None;
        }
        let d = edit_distance(&v, &o);
        if d < 3 && best.as_ref().is_none_or(|(bd, _)| d < *bd) {
            best = Some((d, o));
        }
    }
    let (_, m) = best?;
    if case_sensitive {
        return Some(m);
    }
    Some(if value == value.to_lowercase() {
        m.to_lowercase()
    } else if value == value.to_uppercase() {
        m.to_uppercase()
    } else {
        m
    })
}

/// `msg (did you mean X?)` when there is a suggestion.
pub fn with_suggestion(msg: String, suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!("{msg} (did you mean {s}?)"),
        None => msg,
    }
}

/// True when the shell lexer would change this word: it holds a variable, a quote or an
/// escape. Such values are checked only after expansion, when the build knows its ARGs.
pub fn needs_expansion(s: &str) -> bool {
    s.contains(['$', '\\', '\'', '"'])
}

/// Go's strconv.ParseBool.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's strconv.ParseUint(s, radix, 32): digits only, no sign, no prefix.
pub fn parse_go_u32(s: &str, radix: u32) -> Option<u32> {
    if s.is_empty() || !s.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(s, radix).ok()
}

/// Go's strconv.ParseInt(s, 10, 32), with its error text.
pub fn parse_go_i32(s: &str) -> Result<i32, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "strconv.ParseInt: parsing {}: invalid syntax",
            crate::golang::quote(s)
        ));
    }
    s.parse::<i32>().map_err(|_| {
        format!(
            "strconv.ParseInt: parsing {}: value out of range",
            crate::golang::quote(s)
        )
    })
}

/// A Go `time.Duration` in nanoseconds.
pub type Nanos = i64;

/// Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, units ns us µs ms s m h;
/// `0` alone needs no unit. Errors carry Go's text.
pub fn parse_go_duration(orig: &str) -> Result<Nanos, String> {
    let invalid = || format!("time: invalid duration {}", crate::golang::quote(orig));
    let mut s = orig;
    let mut neg = false;
    if let Some(r) = s.strip_prefix('-') {
        neg = true;
        s = r;
    } else if let Some(r) = s.strip_prefix('+') {
        s = r;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        // The integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(r) = s.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..n];
            s = &r[n..];
            if int_len == 0 && n == 0 {
                return Err(invalid());
            }
        } else if int_len == 0 {
            return Err(invalid());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        if unit.is_empty() {
            return Err(format!(
                "time: missing unit in duration {}",
                crate::golang::quote(orig)
            ));
        }
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    crate::golang::quote(unit),
                    crate::golang::quote(orig)
                ));
            }
        };
        let mut v: u128 = 0;
        for b in int_part.bytes() {
            v = v * 10 + u128::from(b - b'0');
            if v > 1 << 63 {
                return Err(invalid());
            }
        }
        v *= scale;
        // The fraction, to nanosecond precision (Go truncates the same way).
        let mut f: u128 = 0;
        let mut div: u128 = 1;
        for b in frac_part.bytes() {
            if div > 1 << 63 {
                break;
            }
            f = f * 10 + u128::from(b - b'0');
            div *= 10;
        }
        v += f * scale / div;
        total += v;
        if total > 1 << 63 {
            return Err(invalid());
        }
    }
    if neg {
        Ok(-(total as i128) as i64)
    } else if total > i64::MAX as u128 {
        Err(invalid())
    } else {
        Ok(total as i64)
    }
}

/// Go's `Duration.String()` for the values we print in messages (`1ms`, `1h30m0s`, …).
pub fn format_go_duration(d: Nanos) -> String {
    if d == 0 {
        return "0s".into();
    }
    let neg = d < 0;
    let u = d.unsigned_abs();
    let mut out = if u < 1_000_000_000 {
        let (unit, scale) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        format!("{}{unit}", fraction(u, scale))
    } else {
        let secs = u / 1_000_000_000;
        let sub = u % 1_000_000_000;
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        let sec = fraction(s * 1_000_000_000 + sub, 1_000_000_000);
        if h > 0 {
            format!("{h}h{m}m{sec}s")
        } else if m > 0 {
            format!("{m}m{sec}s")
        } else {
            format!("{sec}s")
        }
    };
    if neg {
        out.insert(0, '-');
    }
    out
}

fn fraction(v: u64, scale: u64) -> String {
    let whole = v / scale;
    let rest = v % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let width = scale.to_string().len() - 1;
    let frac = format!("{rest:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A `$NAME` or `${NAME…}` reference in a word: the name and its byte range (from the `$`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VarRef {
    pub name: String,
    pub start: usize,
    pub end: usize,
}

/// The variables a word refers to, as the shell lexer would look them up: not inside single
/// quotes, not after an escape token. Positional and special parameters (`$1`, `$@`) are not
/// names and are skipped. Names inside `${A:-$B}` defaults count too (the lexer evaluates them).
pub fn var_refs(s: &str, escape: char) -> Vec<VarRef> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    // The matching `}` of every `{`, found in one pass.
    let mut close: Vec<Option<usize>> = vec![None; chars.len()];
    let mut open: Vec<usize> = Vec::new();
    for (k, (_, c)) in chars.iter().enumerate() {
        match c {
            '{' => open.push(k),
            '}' => {
                if let Some(o) = open.pop() {
                    close[o] = Some(k);
                }
            }
            _ => {}
        }
    }
    let mut i = 0;
    let mut in_double = false;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if c == escape {
            i += 2;
            continue;
        }
        match c {
            '\'' if !in_double => {
                i += 1;
                while i < chars.len() && chars[i].1 != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                in_double = !in_double;
                i += 1;
            }
            '$' => {
                let braced = chars.get(i + 1).is_some_and(|(_, c)| *c == '{');
                let first = i + 1 + usize::from(braced);
                let mut j = first;
                if chars
                    .get(j)
                    .is_some_and(|(_, c)| c.is_ascii_alphabetic() || *c == '_')
                {
                    while chars
                        .get(j)
                        .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
                    {
                        j += 1;
                    }
                    let name_start = chars[first].0;
                    let name_end = chars.get(j).map_or(s.len(), |(p, _)| *p);
                    let end = if braced {
                        // The reference runs to its closing brace.
                        close[i + 1]
                            .and_then(|k| chars.get(k + 1))
                            .map_or(s.len(), |(p, _)| *p)
                    } else {
                        name_end
                    };
                    out.push(VarRef {
                        name: s[name_start..name_end].to_owned(),
                        start: pos,
                        end,
                    });
                }
                // Continue right after the name so `${A:-$B}` finds B too.
                i = j.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_follow_buildkit() {
        let opts = ["FROM", "RUN", "COPY"];
        assert_eq!(suggest("FOO", opts, false).as_deref(), Some("FROM"));
        assert_eq!(suggest("foo", opts, false).as_deref(), Some("from"));
        assert_eq!(suggest("RUN", opts, false), None);
        assert_eq!(suggest("xyzzy", opts, false), None);
        assert_eq!(
            suggest("bnid", ["bind", "cache"], true).as_deref(),
            Some("bind")
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("10s"), Ok(10_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration(".5ms"), Ok(500_000));
        assert_eq!(parse_go_duration("50ns"), Ok(50));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("-2m"), Ok(-120_000_000_000));
        assert_eq!(parse_go_duration("3µs"), Ok(3_000));
        assert_eq!(
            parse_go_duration("1"),
            Err("time: missing unit in duration \"1\"".into())
        );
        assert_eq!(
            parse_go_duration("1x"),
            Err("time: unknown unit \"x\" in duration \"1x\"".into())
        );
        assert_eq!(
            parse_go_duration(""),
            Err("time: invalid duration \"\"".into())
        );
        assert_eq!(
            parse_go_duration("h"),
            Err("time: invalid duration \"h\"".into())
        );
        assert!(parse_go_duration("9999999999999999999h").is_err());
        assert_eq!(format_go_duration(1_000_000), "1ms");
        assert_eq!(format_go_duration(5_400_000_000_000), "1h30m0s");
        assert_eq!(format_go_duration(1_500_000_000), "1.5s");
    }

    #[test]
    fn variable_references() {
        let names =
            |s: &str| -> Vec<String> { var_refs(s, '\\').into_iter().map(|r| r.name).collect() };
        assert_eq!(names("$A/${B}/${C:-$D}"), ["A", "B", "C", "D"]);
        assert_eq!(names("'$A' \"$B\" \\$C $1 $@"), ["B"]);
        let r = &var_refs("x${AB:-y}z", '\\')[0];
        assert_eq!((r.start, r.end), (1, 9));
        assert_eq!(var_refs("`$A \\$B", '`')[0].name, "B");
    }

    #[test]
    fn go_numbers() {
        assert_eq!(parse_go_u32("0755", 8), Some(0o755));
        assert_eq!(parse_go_u32("8", 8), None);
        assert_eq!(parse_go_u32("-1", 10), None);
        assert_eq!(parse_go_i32("-3"), Ok(-3));
        assert!(parse_go_i32("x").unwrap_err().contains("invalid syntax"));
        assert!(
            parse_go_i32("99999999999")
                .unwrap_err()
                .contains("out of range")
        );
    }
}
