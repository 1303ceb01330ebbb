//! BuildKit's parser golden files: testfiles/*/result (Node.Dump), the negative files, the
//! line-number file, and the parser-level tables of derived/parser_tests.json.

use crate::{read_shared, read_shared_json, shared_file};
use imgbuild_parser::bkformat::dump;
use imgbuild_parser::parse;
use std::fs;

fn dirs(rel: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(shared_file(rel))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn parse_file(path: &std::path::Path) -> imgbuild_parser::Parsed {
    let src = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse(&src, 0)
}

#[test]
fn testfiles_dump_byte_exact() {
    let mut failures = Vec::new();
    let cases = dirs("conformance/buildkit/testfiles");
    assert_eq!(cases.len(), 33, "expected the 33 BuildKit testfiles");
    for d in &cases {
        let parsed = parse_file(&d.join("Dockerfile"));
        let want = fs::read_to_string(d.join("result")).unwrap();
        if let Some(e) = &parsed.buildkit_error {
            failures.push(format!("{}: unexpected error {e}", d.display()));
            continue;
        }
        let got = dump(&parsed.ast);
        if got != want {
            failures.push(format!("{}:\n--- want\n{want}--- got\n{got}", d.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn negative_testfiles_fail_with_buildkit_messages() {
    let doc = read_shared_json("conformance/buildkit/derived/testfiles_ast.json");
    let negative = doc["negative"].as_array().unwrap();
    assert_eq!(negative.len(), 4);
    for case in negative {
        let path = shared_file(&format!(
            "conformance/buildkit/{}",
            case["dockerfile_path"].as_str().unwrap()
        ));
        let parsed = parse_file(&path);
        assert_eq!(
            parsed.buildkit_error.as_deref(),
            case["error_from_code_reading"].as_str(),
            "{}",
            path.display()
        );
        assert!(parsed.has_errors(), "{}", path.display());
    }
}

#[test]
fn line_numbers() {
    let t = &read_shared_json("conformance/buildkit/derived/parser_tests.json")["lineNumbers"];
    let parsed = parse_file(&shared_file(&format!(
        "conformance/buildkit/{}",
        t["file"].as_str().unwrap()
    )));
    let got: Vec<[usize; 2]> = parsed
        .ast
        .children
        .iter()
        .map(|n| [n.start_line, n.end_line])
        .collect();
    let want: Vec<[usize; 2]> = serde_json::from_value(t["children"].clone()).unwrap();
    assert_eq!(got, want);
    let root: [usize; 2] = serde_json::from_value(t["root"].clone()).unwrap();
    assert_eq!([got[0][0], got.last().unwrap()[1]], root);
}

#[test]
fn empty_continuation_warnings() {
    let t = &read_shared_json("conformance/buildkit/derived/parser_tests.json")["emptyContinuationWarnings"];
    let parsed = parse(t["dockerfile"].as_str().unwrap(), 0);
    assert!(!parsed.has_errors());
    let warnings: Vec<_> = parsed
        .diagnostics
        .iter()
        .filter(|d| !d.is_error())
        .collect();
    let want = t["warnings_contain"].as_array().unwrap();
    assert_eq!(warnings.len(), want.len(), "{warnings:#?}");
    for (w, subs) in warnings.iter().zip(want) {
        for s in subs.as_array().unwrap() {
            assert!(w.message.contains(s.as_str().unwrap()), "{w:?} lacks {s}");
        }
        let detail = t["detail0_contains"].as_str().unwrap();
        assert!(w.help.as_deref().unwrap_or("").contains(detail));
    }
}

#[test]
fn scanner_error_on_long_line() {
    let t = &read_shared_json("conformance/buildkit/derived/parser_tests.json")["scannerError"];
    let src = format!("\n\t\tFROM image\n\t\tLABEL test={}\n", "a".repeat(65536));
    let parsed = parse(&src, 0);
    assert_eq!(parsed.buildkit_error.as_deref(), t["error"].as_str());
    // One byte shorter is accepted.
    let ok = format!("FROM image\nLABEL t={}\n", "a".repeat(65535 - 8));
    assert_eq!(parse(&ok, 0).buildkit_error, None);
}

#[test]
fn heredocs_table() {
    let t = &read_shared_json("conformance/buildkit/derived/parser_tests.json")["heredocs"];
    let parsed = parse(t["dockerfile"].as_str().unwrap(), 0);
    assert_eq!(parsed.buildkit_error, None, "{:?}", parsed.diagnostics);
    let expected = t["expected"].as_array().unwrap();
    let mut failures = Vec::new();
    for (i, want) in expected.iter().enumerate() {
        let Some(node) = parsed.ast.children.get(i + 1) else {
            failures.push(format!("child {} missing", i + 1));
            continue;
        };
        let got: Vec<serde_json::Value> = node
            .heredocs
            .iter()
            .map(|h| {
                serde_json::json!({"Name": h.name, "Content": h.content, "Expand": h.expand,
                    "Chomp": h.chomp, "FileDescriptor": h.fd})
            })
            .collect();
        let want_list: Vec<serde_json::Value> = match want {
            serde_json::Value::Null => vec![],
            w => w
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    serde_json::json!({"Name": h["Name"], "Content": h["Content"],
                        "Expand": h["Expand"],
                        "Chomp": h.get("Chomp").cloned().unwrap_or(false.into()),
                        "FileDescriptor": h.get("FileDescriptor").cloned().unwrap_or(0.into())})
                })
                .collect(),
        };
        if got != want_list {
            failures.push(format!(
                "child {} ({}): got {got:?} want {want_list:?}",
                i + 1,
                node.original
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_form_never_has_heredocs() {
    let t =
        &read_shared_json("conformance/buildkit/derived/parser_tests.json")["jsonFormNoHeredoc"];
    let parsed = parse(t["dockerfile"].as_str().unwrap(), 0);
    assert_eq!(parsed.ast.children.len(), 4);
    for n in &parsed.ast.children[1..] {
        assert!(n.json && n.heredocs.is_empty(), "{n:?}");
    }
}

#[test]
fn heredoc_words() {
    let t = &read_shared_json("conformance/buildkit/derived/parser_tests.json")["parseHeredocWord"];
    use imgbuild_parser::syntax::parse_heredoc;
    for w in t["valid"].as_array().unwrap() {
        let w = w.as_str().unwrap();
        let h = parse_heredoc(w).unwrap_or_else(|e| panic!("{w}: {e}"));
        assert_eq!(h.map(|h| h.name).as_deref(), Some("EOF"), "{w}");
    }
    for w in t["invalid"].as_array().unwrap() {
        assert!(parse_heredoc(w.as_str().unwrap()).is_err(), "{w}");
    }
    for w in t["not_heredoc"].as_array().unwrap() {
        assert_eq!(parse_heredoc(w.as_str().unwrap()), Ok(None), "{w}");
    }
}

#[test]
fn heredocs_from_line() {
    let t = &read_shared_json("conformance/buildkit/derived/parser_tests.json")["heredocsFromLine"];
    let cases = t["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for c in cases {
        let line = c["line"].as_str().unwrap();
        let parsed = parse(&format!("FROM x\n{line}\nEOF\nEOF2\n-EOF\n"), 0);
        let got: Vec<&str> = parsed.ast.children[1]
            .heredocs
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        let want: Vec<&str> = match &c["names"] {
            serde_json::Value::Null => vec![],
            n => n
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect(),
        };
        // BuildKit's test compares only the names its result has (FORMATS.md notes this), and
        // by its lexer `RUN <<- EOF` opens no heredoc: `<<-` and `EOF` are two words.
        assert!(got.len() <= want.len(), "{line}: {got:?}");
        assert_eq!(got, want[..got.len()], "{line}");
        if line != "RUN <<- EOF" {
            assert_eq!(got.len(), want.len(), "{line}: {got:?}");
        }
    }
}

#[test]
fn parse_words_and_name_values() {
    let t = read_shared_json("conformance/buildkit/derived/parser_tests.json");
    // parseWords through ARG, whose arguments are exactly parseWords' words.
    let cases = t["parseWords"]["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let input = c["input"].as_str().unwrap();
        let parsed = parse(&format!("ARG {input}\n"), 0);
        let got: Vec<&str> = parsed.ast.children[0]
            .args
            .iter()
            .map(|w| w.value.as_str())
            .collect();
        let want: Vec<&str> = c["expect"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{input:?}");
    }
    for c in t["nameVal"]["cases"].as_array().unwrap() {
        let input = format!(
            "{} {}\n",
            c["key"].as_str().unwrap(),
            c["input"].as_str().unwrap()
        );
        let parsed = parse(&input, 0);
        if let Some(err) = c.get("error") {
            assert_eq!(parsed.buildkit_error.as_deref(), err.as_str(), "{input}");
        } else {
            let got: Vec<&str> = parsed.ast.children[0]
                .args
                .iter()
                .map(|w| w.value.as_str())
                .collect();
            let want: Vec<&str> = c["chain"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(got, want, "{input}");
        }
    }
}

#[test]
fn json_arrays() {
    let t = &read_shared_json("conformance/buildkit/derived/parser_tests.json")["jsonArrays"];
    for c in t["valid"].as_array().unwrap() {
        let input = c["input"].as_str().unwrap();
        let parsed = parse(&format!("CMD {input}\n"), 0);
        let node = &parsed.ast.children[0];
        assert!(node.json, "{input:?} should be JSON form");
        let got: Vec<&str> = node.args.iter().map(|w| w.value.as_str()).collect();
        let want: Vec<&str> = c["expect"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{input:?}");
    }
    let invalid = t["invalid_not_string_array"].as_array().unwrap();
    assert_eq!(invalid.len(), 8);
    for c in invalid {
        let input = c.as_str().unwrap();
        let parsed = parse(&format!("FROM x\nCMD {input}\n"), 0);
        assert_eq!(
            parsed.buildkit_error.as_deref(),
            Some("when using JSON array syntax, arrays must be comprised of strings only"),
            "{input:?}"
        );
    }
}

#[test]
fn testfiles_ast_structure() {
    // The structured form of every result, compared as data (independent of Dump formatting).
    let doc = read_shared_json("conformance/buildkit/derived/testfiles_ast.json");
    let positive = doc["positive"].as_array().unwrap();
    assert_eq!(positive.len(), 33);
    fn to_json(n: &imgbuild_parser::Node) -> serde_json::Value {
        let mut args: Vec<serde_json::Value> = Vec::new();
        if let Some(sub) = &n.sub {
            args.push(to_json(sub));
        }
        if imgbuild_parser::syntax::is_buildkit_instruction(&n.keyword) {
            args.extend(n.args.iter().map(|w| w.value.clone().into()));
        } else {
            args.push("".into());
        }
        let flags = if n.flags.is_empty() {
            serde_json::Value::Null
        } else {
            n.flags.iter().map(|f| f.value.clone()).collect()
        };
        serde_json::json!({"name": n.keyword.to_lowercase(), "flags": flags, "args": args})
    }
    for case in positive {
        let rel = format!(
            "conformance/buildkit/{}",
            case["dockerfile_path"].as_str().unwrap()
        );
        let parsed = parse(&read_shared(&rel), 0);
        let got: Vec<_> = parsed.ast.children.iter().map(to_json).collect();
        assert_eq!(serde_json::Value::Array(got), case["expected"], "{rel}");
    }
}
