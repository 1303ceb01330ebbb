//! No input makes the parser panic or hang. proptest explores Dockerfile-shaped noise; the
//! hand-written cases are the shapes that break naive parsers (long joined lines, deep nesting,
//! unterminated constructs). Quadratic behaviour shows up here as a test that never finishes.

use imgbuild_parser::ignore::PatternMatcher;
use imgbuild_parser::shell::Lexer;
use imgbuild_parser::{bkformat, instructions, parse};
use proptest::prelude::*;

/// Tokens that exercise every branch of the line parser.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM ".to_string()),
        Just("RUN ".to_string()),
        Just("COPY ".to_string()),
        Just("ADD ".to_string()),
        Just("ENV ".to_string()),
        Just("LABEL ".to_string()),
        Just("ARG ".to_string()),
        Just("ONBUILD ".to_string()),
        Just("HEALTHCHECK ".to_string()),
        Just("CMD ".to_string()),
        Just("INCLUDE ".to_string()),
        Just("--mount=type=cache,target=/x ".to_string()),
        Just("-- ".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-'E O'".to_string()),
        Just("3<<X".to_string()),
        Just("EOF".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\\\n".to_string()),
        Just("`\n".to_string()),
        Just("# escape=`\n".to_string()),
        Just("# syntax=x\n".to_string()),
        Just("#".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("\\".to_string()),
        Just("[\"a\", \"b\"]".to_string()),
        Just("[1]".to_string()),
        Just("a=b ".to_string()),
        Just("${A:-b}".to_string()),
        Just("\t".to_string()),
        Just("\u{feff}".to_string()),
        Just("\u{a0}é☃".to_string()),
        "[ -~]{0,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn structured_noise_never_panics(tokens in proptest::collection::vec(token(), 0..60)) {
        let src: String = tokens.concat();
        let p = parse(&src, 0);
        let _ = bkformat::dump(&p.ast);
        let _ = bkformat::record("f", &p);
        let (_, diags) = instructions::check_all(&p.ast);
        for d in &diags {
            prop_assert!(d.span.end <= src.len() && d.span.start <= d.span.end, "{d:?}");
        }
        for d in &p.diagnostics {
            prop_assert!(d.span.start <= d.span.end && d.span.end <= src.len(), "{d:?}");
        }
        for n in &p.ast.children {
            prop_assert!(n.span.end <= src.len() && n.start_line <= n.end_line);
            for w in n.flags.iter().chain(&n.args) {
                prop_assert!(w.span.start <= w.span.end && w.span.end <= src.len());
                prop_assert!(src.is_char_boundary(w.span.start) && src.is_char_boundary(w.span.end));
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,400}") {
        let p = parse(&src, 0);
        let _ = bkformat::dump(&p.ast);
    }

    #[test]
    fn expansion_never_panics(word in "[-$a-z{}:+?#%/*'\"\\\\ ]{0,60}", raw in any::<bool>(), skip in any::<bool>()) {
        let env = vec![("a".to_string(), "x y".to_string()), ("b".to_string(), String::new())];
        for escape in ['\\', '`'] {
            let lexer = Lexer { escape, raw_quotes: raw, skip_unset_env: skip, ..Lexer::default() };
            let _ = lexer.process_word(&word, &env);
            let _ = lexer.process_words(&word, &env);
        }
    }

    #[test]
    fn ignore_matching_never_panics(
        patterns in proptest::collection::vec("[!*?/.a-c\\[\\]\\\\^-]{0,12}", 0..6),
        path in "[/.a-c*]{0,20}",
    ) {
        if let Ok(m) = PatternMatcher::new(&patterns) {
            let _ = m.matches_or_parent_matches(&path);
            let _ = m.is_excluded(&path);
        }
    }

    #[test]
    fn parsing_is_deterministic(tokens in proptest::collection::vec(token(), 0..40)) {
        let src: String = tokens.concat();
        let (a, b) = (parse(&src, 0), parse(&src, 0));
        prop_assert_eq!(a.ast, b.ast);
        prop_assert_eq!(a.diagnostics, b.diagnostics);
    }
}

#[test]
fn long_joined_line_is_linear() {
    // 1 MiB logical line from 100k continuations, and one with every line a comment.
    let mut src = String::from("FROM x\nRUN a");
    for _ in 0..100_000 {
        src.push_str(" \\\n  bcdefgh");
    }
    src.push('\n');
    let p = parse(&src, 0);
    assert_eq!(p.ast.children.len(), 2);
    assert_eq!(p.ast.children[1].end_line, 100_002);

    let mut src = String::from("FROM x\nRUN a \\\n");
    for _ in 0..100_000 {
        src.push_str("# comment\n");
    }
    src.push_str("b\n");
    assert_eq!(parse(&src, 0).ast.children[1].original, "RUN a b");
}

#[test]
fn deep_onbuild_chain_is_an_error_not_a_stack_overflow() {
    let src = format!("FROM x\n{}RUN y\n", "ONBUILD \\\n".repeat(200_000));
    let p = parse(&src, 0);
    assert!(p.has_errors());
    assert!(p.diagnostics.iter().any(|d| d.message.contains("nested")));
}

#[test]
fn many_heredocs_and_unterminated_ones() {
    let src = format!("FROM x\n{}", "RUN <<A <<B <<C\na\nA\nb\nB\n".repeat(20_000));
    let p = parse(&src, 0);
    assert!(
        p.has_errors(),
        "the C bodies swallow the rest and stay unterminated"
    );
    let src = format!("FROM x\nRUN <<EOF\n{}", "line\n".repeat(200_000));
    let p = parse(&src, 0);
    assert_eq!(p.buildkit_error.as_deref(), Some("unterminated heredoc"));
}

#[test]
fn huge_words_and_flags() {
    let src = format!(
        "FROM x\nCOPY --chown={} \\\n{} /d\nENV {}\nARG {}\n",
        "a".repeat(60_000),
        "b ".repeat(30_000),
        "k=v ".repeat(15_000),
        "\"q\\\" ".repeat(10_000)
    );
    let p = parse(&src, 0);
    assert!(!p.has_errors(), "{:?}", p.diagnostics.first());
    assert_eq!(p.ast.children[2].args.len(), 45_000);
}

#[test]
fn bad_input_gets_spans() {
    // Non-UTF-8 input is decoded lossily by the caller; the parser still sees text.
    let (text, bad) = imgbuild_parser::source::decode(b"FROM x\nRUN \xff\xfe\n");
    assert_eq!(bad, Some(11));
    assert!(!parse(&text, 0).has_errors());
    let long = format!("FROM x\nRUN {}\n", "a".repeat(70_000));
    let p = parse(&long, 0);
    let d = p
        .diagnostics
        .iter()
        .find(|d| d.code == "line-too-long")
        .unwrap();
    assert_eq!((d.span.start, d.span.end), (7, 7 + 4 + 70_000));
    let p = parse("FROM x\nCMD [\"a\", 1]\n", 0);
    let d = &p.diagnostics[0];
    assert_eq!(
        &"FROM x\nCMD [\"a\", 1]\n"[d.span.start..d.span.end],
        "CMD [\"a\", 1]"
    );
    let p = parse("# escape=x\nFROM y\n", 0);
    assert_eq!(
        (p.diagnostics[0].span.start, p.diagnostics[0].span.end),
        (9, 10)
    );
}

#[test]
fn deep_and_long_expansions() {
    let env = vec![("a".to_string(), "v".to_string())];
    let nested = format!("{}x{}", "${a:-".repeat(10_000), "}".repeat(10_000));
    assert!(Lexer::default().process_word(&nested, &env).is_err());
    let long = "$a".repeat(500_000);
    assert_eq!(
        Lexer::default()
            .process_word(&long, &env)
            .unwrap()
            .value
            .len(),
        500_000
    );
    let m = PatternMatcher::new([format!("{}x", "**/".repeat(2_000))]).unwrap();
    let _ = m.matches_or_parent_matches(&"a/".repeat(2_000));
}
