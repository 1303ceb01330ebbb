//! The typed instruction layer: every table of derived/instructions_tests.json (BuildKit's
//! instructions/parse_test.go and parse_heredoc_test.go), and our own data cases under
//! tests/data/typed (`<case>.Dockerfile` in, `<case>.expected` diagnostics out; set
//! UPDATE_EXPECT=1 to rewrite the expected files).

use crate::read_shared_json;
use imgbuild_parser::instructions::{
    Instruction, TypedDockerfile, check_all, parse_instruction, typed,
};
use imgbuild_parser::source::line_col;
use imgbuild_parser::{Diagnostic, Node, Span, Word, parse};
use serde_json::Value;
use std::fs;
use std::path::PathBuf;

const TABLES: &str = "conformance/buildkit/derived/instructions_tests.json";

/// Parses `src` (which must parse cleanly, as BuildKit's test requires) and types it.
fn typed_src(src: &str) -> Result<(TypedDockerfile, Vec<Diagnostic>, Vec<Node>), String> {
    let parsed = parse(src, 0);
    if let Some(e) = &parsed.buildkit_error {
        return Err(format!("{src:?}: the syntax layer failed: {e}"));
    }
    let (t, d) = typed(&parsed.ast);
    Ok((t, d, parsed.ast.children))
}

/// The first instruction of `src`, typed on its own (BuildKit's
/// `ParseInstruction(AST.Children[0])`).
fn first_instruction(src: &str) -> Result<(Option<Instruction>, Vec<Diagnostic>, Node), String> {
    let parsed = parse(src, 0);
    if let Some(e) = &parsed.buildkit_error {
        return Err(format!("{src:?}: the syntax layer failed: {e}"));
    }
    let Some(node) = parsed.ast.children.into_iter().next() else {
        return Err(format!("{src:?}: no instruction parsed"));
    };
    let (inst, diags) = parse_instruction(&node);
    Ok((inst, diags, node))
}

fn messages(d: &[Diagnostic]) -> Vec<&str> {
    d.iter().map(|d| d.message.as_str()).collect()
}

/// A hand-built node, as BuildKit's tests build `parser.Node` chains.
fn node(keyword: &str, chain: &[&str]) -> Node {
    let span = Span::new(0, 0, keyword.len());
    Node {
        keyword: keyword.into(),
        keyword_span: span,
        flags: vec![],
        args: chain
            .iter()
            .map(|s| Word {
                value: s.to_string(),
                span,
            })
            .collect(),
        sub: None,
        json: false,
        original: String::new(),
        heredocs: vec![],
        start_line: 1,
        end_line: 1,
        span,
        prev_comment: vec![],
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// An error with this exact message, whose span lies inside the instruction.
fn has_error(diags: &[Diagnostic], node_span: Span, want: &str, equal: bool) -> Result<(), String> {
    let found = diags.iter().find(|d| {
        d.is_error()
            && if equal {
                d.message == want
            } else {
                d.message.contains(want)
            }
    });
    match found {
        None => Err(format!("want error {want:?}, got {:?}", messages(diags))),
        Some(d) if d.span.start < node_span.start || d.span.end > node_span.end => Err(format!(
            "error {want:?} points at {:?}, outside the instruction {node_span:?}",
            d.span
        )),
        Some(d) if d.help.as_deref().unwrap_or("").is_empty() => {
            Err(format!("error {want:?} has no help"))
        }
        Some(_) => Ok(()),
    }
}

#[test]
fn buildkit_instruction_tables() {
    let doc = read_shared_json(TABLES);
    let obj = doc.as_object().unwrap();
    let mut failures: Vec<String> = Vec::new();
    let mut ran = 0usize;
    let mut expected = 0usize;
    let mut tables_seen = Vec::new();
    let mut fail = |name: &str, case: &str, r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(format!("[{name}] {case}: {e}"));
        }
    };

    for (table, v) in obj {
        match table.as_str() {
            "source" | "doc" => continue,
            _ => tables_seen.push(table.clone()),
        }
        match table.as_str() {
            "exactly_one_argument" | "at_least_one_argument" | "no_destination" => {
                let inputs = strs(&v["inputs"]);
                let tmpl = v["error_template"].as_str().unwrap();
                assert_eq!(v["match"], "equal");
                expected += inputs.len();
                for input in &inputs {
                    ran += 1;
                    let cmd = input.split_whitespace().next().unwrap();
                    let want = tmpl.replace("{CMD}", cmd);
                    let r = first_instruction(input)
                        .and_then(|(_, d, n)| has_error(&d, n.span, &want, true));
                    fail(table, input, r);
                }
            }
            "too_many_arguments_synthetic_ast" | "blank_names_synthetic_ast" => {
                let chain: &[&str] = if table.starts_with("too_many") {
                    &["arg1", "arg2", "arg3", ""]
                } else {
                    &["", "arg2", "="]
                };
                let cmds = strs(&v["commands"]);
                expected += cmds.len();
                for cmd in &cmds {
                    ran += 1;
                    let want = v["error_template"].as_str().unwrap().replace("{CMD}", cmd);
                    let n = node(&cmd.to_lowercase(), chain);
                    let (inst, d) = parse_instruction(&n);
                    let mut r = has_error(&d, n.span, &want, true);
                    if r.is_ok() && table.starts_with("too_many") && inst.is_some() {
                        r = Err("built an instruction from a broken chain".into());
                    }
                    fail(table, cmd, r);
                }
            }
            "healthcheck_cmd_synthetic_ast" => {
                expected += 1;
                ran += 1;
                let chain = strs(&v["chain"]);
                let chain: Vec<&str> = chain.iter().map(String::as_str).collect();
                let want = strs(&v["expect_test"]);
                let (inst, d) = parse_instruction(&node("healthcheck", &chain));
                let r = match inst {
                    Some(Instruction::Healthcheck(h)) if h.test == want && d.is_empty() => Ok(()),
                    other => Err(format!(
                        "want test {want:?}, got {other:?} {:?}",
                        messages(&d)
                    )),
                };
                fail(table, "CMD hello world", r);
            }
            "interval_option" => {
                let cases = v.as_array().unwrap();
                expected += cases.len();
                for c in cases {
                    ran += 1;
                    let value = c["value"].as_str().unwrap();
                    let src = format!("HEALTHCHECK --interval={value} CMD true");
                    let r = first_instruction(&src).and_then(|(inst, d, n)| {
                        if c["ok"].as_bool() == Some(true) {
                            match inst {
                                Some(Instruction::Healthcheck(_)) if d.is_empty() => Ok(()),
                                _ => Err(format!("want ok, got {:?}", messages(&d))),
                            }
                        } else {
                            has_error(&d, n.span, c["error_contains"].as_str().unwrap(), false)
                        }
                    });
                    fail(table, value, r);
                }
            }
            "error_cases" | "heredoc_error_cases" => {
                assert_eq!(v["match"], "contains");
                let cases = v["cases"].as_array().unwrap();
                expected += cases.len();
                for c in cases {
                    ran += 1;
                    let src = c["dockerfile"].as_str().unwrap();
                    let want = c["error_contains"].as_str().unwrap();
                    let r = first_instruction(src)
                        .and_then(|(_, d, n)| has_error(&d, n.span, want, false));
                    fail(table, c["name"].as_str().unwrap(), r);
                }
            }
            "copy_heredoc" => {
                let cases = v.as_array().unwrap();
                expected += cases.len();
                for c in cases {
                    ran += 1;
                    let src = c["dockerfile"].as_str().unwrap();
                    let r = first_instruction(src).and_then(|(inst, d, _)| {
                        let Some(Instruction::Copy(cp)) = inst else {
                            return Err(format!("not a COPY: {:?}", messages(&d)));
                        };
                        let got_dest = cp.files.dest.value.clone();
                        let got_paths: Vec<String> =
                            cp.files.sources.iter().map(|w| w.value.clone()).collect();
                        let got_contents: Vec<(String, String, bool)> = cp
                            .files
                            .contents
                            .iter()
                            .map(|c| (c.path.clone(), c.data.clone(), c.expand))
                            .collect();
                        let want_contents: Vec<(String, String, bool)> = c["source_contents"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| {
                                        (
                                            x["path"].as_str().unwrap().to_owned(),
                                            x["data"].as_str().unwrap().to_owned(),
                                            x["expand"].as_bool().unwrap(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let want = (
                            c["dest"].as_str().unwrap().to_owned(),
                            strs(&c["source_paths"]),
                            want_contents,
                        );
                        let got = (got_dest, got_paths, got_contents);
                        if got == want && d.is_empty() {
                            Ok(())
                        } else {
                            Err(format!("want {want:?}\n got {got:?} {:?}", messages(&d)))
                        }
                    });
                    fail(table, src, r);
                }
            }
            "run_heredoc" => {
                let cases = v.as_array().unwrap();
                expected += cases.len();
                for c in cases {
                    ran += 1;
                    let src = c["dockerfile"].as_str().unwrap();
                    let r = first_instruction(src).and_then(|(inst, d, _)| {
                        let Some(Instruction::Run(run)) = inst else {
                            return Err(format!("not a RUN: {:?}", messages(&d)));
                        };
                        let got_files: Vec<(String, String, bool)> = run
                            .command
                            .files
                            .iter()
                            .map(|f| (f.name.clone(), f.data.clone(), f.chomp))
                            .collect();
                        let want_files: Vec<(String, String, bool)> = c["files"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| {
                                        (
                                            x["name"].as_str().unwrap().to_owned(),
                                            x["data"].as_str().unwrap().to_owned(),
                                            x["chomp"].as_bool().unwrap(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let got = (run.command.prepend_shell, run.command.values(), got_files);
                        let want = (
                            c["prepend_shell"].as_bool().unwrap(),
                            strs(&c["cmdline"]),
                            want_files,
                        );
                        if got == want && d.is_empty() {
                            Ok(())
                        } else {
                            Err(format!("want {want:?}\n got {got:?} {:?}", messages(&d)))
                        }
                    });
                    fail(table, src, r);
                }
            }
            "run_flags_used" => {
                expected += 1;
                ran += 1;
                let src = v["dockerfile"].as_str().unwrap();
                let want = strs(&v["flags_used"]);
                let r = first_instruction(src).and_then(|(inst, d, _)| match inst {
                    Some(Instruction::Run(r)) if r.flags_used == want && d.is_empty() => Ok(()),
                    other => Err(format!("want {want:?}, got {other:?} {:?}", messages(&d))),
                });
                fail(table, src, r);
            }
            "comments_detection" => {
                let exp = &v["expect"];
                expected += exp.as_object().unwrap().len();
                let src = v["dockerfile"].as_str().unwrap();
                let (t, d, _) = match typed_src(src) {
                    Ok(x) => x,
                    Err(e) => {
                        fail(table, "parse", Err(e));
                        continue;
                    }
                };
                if d.iter().any(Diagnostic::is_error) {
                    fail(table, "typed", Err(format!("errors: {:?}", messages(&d))));
                }
                let arg = |st: usize, cmd: usize| -> Option<&imgbuild_parser::instructions::Arg> {
                    match t.stages.get(st)?.instructions.get(cmd)? {
                        Instruction::Arg(a) => Some(a),
                        _ => None,
                    }
                };
                let pairs =
                    |a: Option<&imgbuild_parser::instructions::Arg>| -> Vec<(String, String)> {
                        a.map(|a| {
                            a.args
                                .iter()
                                .map(|x| (x.key.value.clone(), x.doc.clone()))
                                .collect()
                        })
                        .unwrap_or_default()
                    };
                let want_pair = |x: &Value| -> (String, String) {
                    (
                        x["Key"].as_str().unwrap().to_owned(),
                        x["DocComment"].as_str().unwrap().to_owned(),
                    )
                };
                for (key, want) in exp.as_object().unwrap() {
                    ran += 1;
                    let r = match key.as_str() {
                        "stage0.DocComment" => {
                            let got = t.stages.first().map(|s| s.doc.clone());
                            (got.as_deref() == want.as_str())
                                .then_some(())
                                .ok_or(format!("want {want}, got {got:?}"))
                        }
                        "meta.Args[0]" => {
                            let got = t
                                .meta_args
                                .first()
                                .and_then(|a| a.args.first())
                                .map(|x| (x.key.value.clone(), x.doc.clone()));
                            (got == Some(want_pair(want)))
                                .then_some(())
                                .ok_or(format!("want {want}, got {got:?}"))
                        }
                        "stage0.Commands[0].Args[0]" => {
                            let got = pairs(arg(0, 0)).into_iter().next();
                            (got == Some(want_pair(want)))
                                .then_some(())
                                .ok_or(format!("want {want}, got {got:?}"))
                        }
                        "stage0.Commands[1].Args" => {
                            let got = pairs(arg(0, 1));
                            let w: Vec<_> =
                                want.as_array().unwrap().iter().map(want_pair).collect();
                            (got == w)
                                .then_some(())
                                .ok_or(format!("want {w:?}, got {got:?}"))
                        }
                        other => Err(format!("no check for expectation {other}")),
                    };
                    fail(table, key, r);
                }
            }
            other => {
                fail(other, "-", Err("this table has no test: add one".into()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(ran, expected, "cases run vs cases in the tables");
    assert_eq!(tables_seen.len(), 13, "tables: {tables_seen:?}");
    assert!(ran >= 40, "only {ran} cases ran");
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/typed")
}

/// All diagnostics for a file (syntax, typed, check) as `line:col: severity code: message`
/// lines, in source order.
fn render(src: &str) -> (String, Vec<String>) {
    let parsed = parse(src, 0);
    let (_, checked) = check_all(&parsed.ast);
    let mut all: Vec<Diagnostic> = parsed.diagnostics;
    all.extend(checked);
    all.sort_by_key(|d| (d.span.start, d.span.end));
    let mut out = String::new();
    let mut problems = Vec::new();
    for d in &all {
        let (l, c) = line_col(src, d.span.start);
        let sev = if d.is_error() { "error" } else { "warning" };
        out.push_str(&format!("{l}:{c}: {sev} {}: {}\n", d.code, d.message));
        if d.help.as_deref().unwrap_or("").trim().is_empty() {
            problems.push(format!("{l}:{c}: {} has no help", d.code));
        }
        if d.span.end > src.len() || d.span.start > d.span.end {
            problems.push(format!("{l}:{c}: {} has a bad span {:?}", d.code, d.span));
        }
    }
    (out, problems)
}

/// A line diff good enough to read a failure.
fn diff(want: &str, got: &str) -> String {
    let w: Vec<&str> = want.lines().collect();
    let g: Vec<&str> = got.lines().collect();
    let mut out = String::new();
    for l in &w {
        if !g.contains(l) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for l in &g {
        if !w.contains(l) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(same lines, different order)\n");
    }
    out
}

#[test]
fn typed_data_cases() {
    let dir = data_dir();
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "only {} cases in {}",
        cases.len(),
        dir.display()
    );
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let src = fs::read_to_string(case).unwrap();
        let (got, problems) = render(&src);
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        for p in problems {
            failures.push(format!("{name}: {p}"));
        }
        let exp_path = case.with_extension("expected");
        if update {
            fs::write(&exp_path, &got).unwrap();
            continue;
        }
        let want = fs::read_to_string(&exp_path).unwrap_or_else(|_| {
            failures.push(format!("{name}: missing {}", exp_path.display()));
            String::new()
        });
        if want != got {
            failures.push(format!("{name}:\n{}", diff(&want, &got)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases (UPDATE_EXPECT=1 rewrites the expected files):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Corpus files that BuildKit rejects too (buildah's own test fixtures: deliberately bad files,
/// and buildah-only syntax such as the SELinux mount option `z`), with the error we give.
const CORPUS_REJECTED: &[(&str, &str)] = &[
    ("tests__bud__add-chmod__Dockerfile.bad", "invalid-flag"),
    ("tests__bud__add-chown__Dockerfile.bad", "invalid-flag"),
    ("tests__bud__buildkit-mount__Dockerfile", "invalid-mount"),
    ("tests__bud__buildkit-mount__Dockerfile2", "invalid-mount"),
    ("tests__bud__buildkit-mount__Dockerfile3", "invalid-mount"),
    ("tests__bud__buildkit-mount__Dockerfile4", "invalid-mount"),
    ("tests__bud__buildkit-mount__Dockerfile6", "invalid-mount"),
    (
        "tests__bud__buildkit-mount__Dockerfilecacheread",
        "invalid-mount",
    ),
    (
        "tests__bud__buildkit-mount__Dockerfilecachewrite",
        "invalid-mount",
    ),
    (
        "tests__bud__buildkit-mount__Dockerfilecachewritesharing",
        "invalid-mount",
    ),
    (
        "tests__bud__buildkit-mount__Dockerfilemultiplemounts",
        "invalid-mount",
    ),
    (
        "tests__bud__buildkit-mount__Dockerfiletmpfscopyup",
        "invalid-mount",
    ),
    ("tests__bud__copy-chmod__Dockerfile.bad", "invalid-flag"),
    ("tests__bud__copy-chown__Dockerfile.bad", "invalid-flag"),
    ("tests__bud__copy-from__Dockerfile.bad", "invalid-flag"),
    (
        "tests__bud__copy-multistage-paths__Dockerfile.invalid_from",
        "invalid-flag",
    ),
    (
        "tests__bud__from-multiple-files__Dockerfile2.nofrom",
        "no-stage",
    ),
    ("tests__bud__inline-network__Dockerfile3", "invalid-network"),
    (
        "tests__bud__multi-stage-builds__Dockerfile.arg_in_copy",
        "from-expansion",
    ),
    (
        "tests__bud__save-stages__Dockerfile.arg-build-stages-and-chained-build-stages",
        "invalid-stage-name",
    ),
    (
        "tests__bud__unrecognized__Dockerfile",
        "unknown-instruction",
    ),
    ("tests__bud__verify-cleanup__Dockerfile", "invalid-mount"),
];

/// The real-world corpus (all accepted by BuildKit's parser) types without errors, except the
/// files BuildKit rejects later too ([`CORPUS_REJECTED`]).
#[test]
fn realworld_corpus_types_cleanly() {
    let manifest = read_shared_json("corpus/realworld/manifest.json");
    let mut failures = Vec::new();
    let mut rejected: Vec<(String, &str)> = Vec::new();
    let mut n = 0;
    for entry in manifest.as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let src = crate::read_shared(&format!("corpus/realworld/{file}"));
        let parsed = parse(&src, 0);
        if parsed.buildkit_error.is_some() {
            continue;
        }
        n += 1;
        let (_, d) = typed(&parsed.ast);
        let base = file.rsplit('/').next().unwrap();
        for d in d.iter().filter(|d| d.is_error()) {
            if CORPUS_REJECTED.contains(&(base, d.code)) {
                rejected.push((base.to_owned(), d.code));
                continue;
            }
            let (l, c) = line_col(&src, d.span.start);
            failures.push(format!("{file}:{l}:{c}: {}: {}", d.code, d.message));
        }
    }
    for (f, code) in CORPUS_REJECTED {
        if !rejected.iter().any(|(rf, rc)| rf == f && rc == code) {
            failures.push(format!("{f}: expected a {code} error, got none"));
        }
    }
    assert!(n > 500, "only {n} corpus files parsed");
    assert!(
        failures.is_empty(),
        "{} errors:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
