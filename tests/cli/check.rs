//! `imgbuild check`: diagnostics with file:line:col, exit 1 on errors, never a panic.

use crate::{imgbuild, scratch, stderr};

/// Bad input of each kind: (name, Dockerfile bytes, extra files, expected location, message).
/// One bad input: name, Dockerfile bytes, extra files, expected location, expected message.
type BadInput = (
    &'static str,
    Vec<u8>,
    Vec<(&'static str, &'static [u8])>,
    &'static str,
    &'static str,
);

fn bad_inputs() -> Vec<BadInput> {
    let long_line = format!("FROM x\nRUN {}\n", "a".repeat(70_000)).into_bytes();
    vec![
        (
            "non-utf8",
            b"FROM x\nRUN echo \xff\xfe\n".to_vec(),
            vec![],
            "Dockerfile:2:10",
            "not valid UTF-8",
        ),
        (
            "long line",
            long_line,
            vec![],
            "Dockerfile:2:1",
            "dockerfile line greater than max allowed size of 65535",
        ),
        (
            "unterminated heredoc",
            b"FROM x\nRUN <<EOF\necho hi\n".to_vec(),
            vec![],
            "Dockerfile:2:5",
            "unterminated heredoc",
        ),
        (
            "json non-string",
            b"FROM x\nCMD [\"a\", 1]\n".to_vec(),
            vec![],
            "Dockerfile:2:1",
            "arrays must be comprised of strings only",
        ),
        (
            "bad escape directive",
            b"# escape=x\nFROM y\n".to_vec(),
            vec![],
            "Dockerfile:1:10",
            "invalid escape token 'x'",
        ),
        (
            "include cycle",
            b"FROM x\nINCLUDE a.df\n".to_vec(),
            vec![("a.df", b"INCLUDE b.df\n"), ("b.df", b"INCLUDE a.df\n")],
            "b.df:1:9",
            "INCLUDE cycle: a.df -> b.df -> a.df",
        ),
    ]
}

#[test]
fn bad_input_gets_a_located_diagnostic_and_exit_1() {
    for (name, dockerfile, extra, location, message) in bad_inputs() {
        let mut files: Vec<(&str, &[u8])> = vec![("Dockerfile", &dockerfile)];
        files.extend(extra.iter().map(|(p, d)| (*p, *d)));
        let dir = scratch(&files);
        let out = imgbuild(dir.path(), &["check"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            err.contains(&format!("{location}: error")),
            "{name}: no `{location}: error` in\n{err}"
        );
        assert!(err.contains(message), "{name}: no `{message}` in\n{err}");
        assert!(err.contains("help:"), "{name}: no fix suggested in\n{err}");
    }
}

#[test]
fn cycle_diagnostic_names_both_sites() {
    let dir = scratch(&[
        ("Dockerfile", b"FROM x\nINCLUDE a.df\n"),
        ("a.df", b"INCLUDE b.df\n"),
        ("b.df", b"INCLUDE a.df\n"),
    ]);
    let err = stderr(&imgbuild(dir.path(), &["check"]));
    // The closing INCLUDE is the error; the INCLUDEs that entered the cycle are named.
    assert!(
        err.contains("Dockerfile:2:1: a.df is included here"),
        "{err}"
    );
    assert!(err.contains("a.df:1:1: b.df is included here"), "{err}");
}

#[test]
fn valid_dockerfile_exits_0_and_warnings_do_not_fail() {
    let dir = scratch(&[(
        "Dockerfile",
        b"FROM alpine AS build\nRUN echo a \\\n\n  b\nFROM scratch\nCOPY --from=build /x /x\n",
    )]);
    let out = imgbuild(dir.path(), &["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("Empty continuation line found in"), "{err}");
    assert!(err.contains("Dockerfile:2:1: warning"), "{err}");
}

#[test]
fn file_flag_and_context_argument() {
    let dir = scratch(&[("sub/build.Dockerfile", b"FROM x\n")]);
    let out = imgbuild(dir.path(), &["check", "-f", "sub/build.Dockerfile", "sub"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = imgbuild(dir.path(), &["check", "sub"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read sub/Dockerfile"));
}

#[test]
fn usage_error_exits_2() {
    let dir = scratch(&[]);
    assert_eq!(
        imgbuild(dir.path(), &["check", "--bogus"]).status.code(),
        Some(2)
    );
    assert_eq!(imgbuild(dir.path(), &["nonsense"]).status.code(), Some(2));
}

#[test]
fn extensions_and_their_rules() {
    let dir = scratch(&[(
        "Dockerfile",
        b"FROM alpine AS site\nRUN --cache=ttl=1h date > /d\nFROM unikernel AS k\nAPP ./app\nMODULE fs\nCOPY --from=site /d /d\nRUN echo no\n",
    )]);
    let out = imgbuild(dir.path(), &["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "Dockerfile:7:1: error[unikernel-stage]: RUN is not allowed in a unikernel stage"
        ),
        "{err}"
    );
    assert_eq!(err.matches(": error").count(), 1, "{err}");

    // A file that names Docker's frontend is held to plain Dockerfile.
    let dir = scratch(&[(
        "Dockerfile",
        b"# syntax=docker/dockerfile:1\nFROM alpine\nRUN --cache=never date\n",
    )]);
    let out = imgbuild(dir.path(), &["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Dockerfile:3:"), "{err}");
    assert!(err.contains("syntax"), "{err}");
}

#[test]
fn dockerignore_problems_are_located() {
    let dir = scratch(&[
        ("Dockerfile", b"FROM x\n"),
        (".dockerignore", b"# c\nok\n[z-a]\n"),
    ]);
    let out = imgbuild(dir.path(), &["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(".dockerignore:3:1: error[dockerignore]: syntax error in pattern"),
        "{err}"
    );
    let dir = scratch(&[
        ("Dockerfile", b"FROM x\n"),
        ("Dockerfile.dockerignore", b"!\n"),
        (".dockerignore", b"fine\n"),
    ]);
    let err = stderr(&imgbuild(dir.path(), &["check"]));
    assert!(
        err.contains("Dockerfile.dockerignore:1:1: error[dockerignore]: illegal exclusion"),
        "{err}"
    );
}
