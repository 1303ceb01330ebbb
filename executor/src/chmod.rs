//! `--chmod`: an octal mode, or a symbolic one like chmod(1)'s (`u+x,g-w`, `a=rX`).

/// A parsed `--chmod` value, applied per file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// Bits of u, g, o the clause applies to (as a mask of 0o700/0o070/0o007, plus special).
    who: u32,
    op: char,
    perms: Vec<char>,
}

impl Chmod {
    pub fn parse(s: &str) -> Result<Chmod, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(s, 8) {
                Ok(m) if m <= 0o7777 => Ok(Chmod::Octal(m)),
                _ => Err(format!(
                    "invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777"
                )),
            };
        }
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let who_end = part
                .find(|c: char| !matches!(c, 'u' | 'g' | 'o' | 'a'))
                .unwrap_or(part.len());
            let who_s = &part[..who_end];
            let mut who = 0;
            for c in who_s.chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o0007,
                    _ => 0o7777,
                };
            }
            let rest = &part[who_end..];
            let mut chars = rest.chars();
            let op = chars
                .next()
                .filter(|c| matches!(c, '+' | '-' | '='))
                .ok_or_else(|| {
                    format!("invalid chmod parameter: '{s}': expected + - or = in {part:?}")
                })?;
            let perms: Vec<char> = chars.collect();
            if let Some(bad) = perms.iter().find(|c| !"rwxXstugo".contains(**c)) {
                return Err(format!(
                    "invalid chmod parameter: '{s}': unknown permission {bad:?}"
                ));
            }
            clauses.push(Clause {
                // No `who` means "all" (without umask: we have none).
                who: if who_s.is_empty() { 0o7777 } else { who },
                op,
                perms,
            });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The new permission bits of a file with mode `mode` (`is_dir` for `X`).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => {
                let mut m = mode & 0o7777;
                for c in clauses {
                    let mut bits = 0;
                    for p in &c.perms {
                        bits |= match p {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || m & 0o111 != 0 => 0o111,
                            'X' => 0,
                            's' => 0o6000,
                            't' => 0o1000,
                            // Copy another class's bits to every class.
                            'u' => ((m >> 6) & 7) * 0o111,
                            'g' => ((m >> 3) & 7) * 0o111,
                            'o' => (m & 7) * 0o111,
                            _ => 0,
                        };
                    }
                    let mask = c.who;
                    match c.op {
                        '+' => m |= bits & mask,
                        '-' => m &= !(bits & mask),
                        _ => m = (m & !(mask & 0o777 | mask & 0o7000)) | (bits & mask),
                    }
                }
                m
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_symbolic() {
        assert_eq!(Chmod::parse("755").unwrap().apply(0o600, false), 0o755);
        assert!(Chmod::parse("8").is_err());
        assert!(Chmod::parse("17777").is_err());
        let c = Chmod::parse("u+x,g-w").unwrap();
        assert_eq!(c.apply(0o664, false), 0o744);
        assert_eq!(Chmod::parse("a=rX").unwrap().apply(0o640, false), 0o444);
        assert_eq!(Chmod::parse("a=rX").unwrap().apply(0o640, true), 0o555);
        assert_eq!(Chmod::parse("go=u").unwrap().apply(0o750, false), 0o777);
        assert_eq!(Chmod::parse("+x").unwrap().apply(0o644, false), 0o755);
        assert_eq!(Chmod::parse("u+s").unwrap().apply(0o755, false), 0o4755);
        assert!(Chmod::parse("u*x").is_err());
        assert!(Chmod::parse("u+q").is_err());
    }
}
