//! BuildKit shell-lexer conformance: `shell/envVarTest`, `shell/wordsTest` and every table of
//! `derived/shell_tests.json` (formats in FORMATS.md section 2). Each test runs all its cases,
//! collects every failure, and checks how many cases ran.

use std::collections::{BTreeMap, BTreeSet};

use imgbuild_parser::shell::{Lexer, parse_env_entries, shell_pattern_to_regex};
use serde_json::Value;

const SHELL_TESTS: &str = "conformance/buildkit/derived/shell_tests.json";

/// Panics with every failure listed, or when the number of cases run is not `want_cases`.
fn report(table: &str, ran: usize, want_cases: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{table}: {} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(ran, want_cases, "{table}: wrong number of cases run");
}

fn str_field<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("field {key:?} is not a string in {case}"))
}

fn names(value: &Value) -> BTreeSet<String> {
    let list = value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"));
    list.iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn env_map(value: &Value) -> BTreeMap<String, String> {
    let map = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    map.iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn tests_json() -> Value {
    crate::read_shared_json(SHELL_TESTS)
}

/// `PLATFORM | INPUT | EXPECTED` lines through `ProcessWord`, platforms `A` and `U` (Linux).
#[test]
fn shell_env_var_test() {
    let text = crate::read_shared("conformance/buildkit/shell/envVarTest");
    let lex = Lexer::new('\\');
    let env = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ];
    let (mut ran, mut windows_only) = (0, 0);
    let mut failures = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        let [platform, input, expected] = fields[..] else {
            panic!("envVarTest line {number}: not 3 fields: {line:?}");
        };
        match platform {
            "A" | "U" => {}
            "W" => {
                windows_only += 1;
                continue;
            }
            other => panic!("envVarTest line {number}: bad platform {other:?}"),
        }
        ran += 1;
        let got = lex.process_word(input, &env.as_slice());
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(e), want) => want != "error" && e.value == want,
            (Err(_), _) => false,
        };
        if !ok {
            failures.push(format!(
                "line {number}: input {input:?}: got {got:?}, want {expected:?}"
            ));
        }
    }
    assert_eq!(windows_only, 2, "envVarTest: W lines");
    report("envVarTest", ran, 228, &failures);
}

/// `INPUT | W1,W2,...` lines through `ProcessWords`, with `ENV NAME=value` lines building up
/// the environment (last definition wins).
#[test]
fn shell_words_test() {
    let text = crate::read_shared("conformance/buildkit/shell/wordsTest");
    let lex = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let (mut ran, mut env_lines) = (0, 0);
    let mut failures = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        if line.starts_with('#') {
            continue;
        }
        if let Some(entry) = line.strip_prefix("ENV ") {
            let entry = entry.trim_start_matches(' ');
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            env.push((name.to_owned(), value.to_owned()));
            env_lines += 1;
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        let [input, expected] = fields[..] else {
            panic!("wordsTest line {number}: not exactly one '|': {line:?}");
        };
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        ran += 1;
        let got = match lex.process_words(input, &env) {
            Ok(e) => e.value,
            Err(_) => vec!["error".to_owned()],
        };
        if got != expected {
            failures.push(format!(
                "line {number}: input {input:?}: got {got:?}, want {expected:?}"
            ));
        }
    }
    assert_eq!(env_lines, 4, "wordsTest: ENV lines");
    report("wordsTest", ran, 24, &failures);
}

/// `processWithMatches`: value, or an error, plus the matched and unmatched names.
#[test]
fn shell_process_with_matches() {
    let data = tests_json();
    let cases = data["processWithMatches"]["cases"]
        .as_array()
        .expect("processWithMatches.cases");
    let lex = Lexer::new('\\');
    let mut failures = Vec::new();
    for case in cases {
        let input = str_field(case, "input");
        let env = env_map(&case["envs"]);
        let got = lex.process_word(input, &env);
        let want_err = case["expected_err"].as_bool().expect("expected_err");
        match got {
            Err(e) if !want_err => {
                failures.push(format!("input {input:?}: got error {e}, want a value"))
            }
            Err(_) => {}
            Ok(e) if want_err => {
                failures.push(format!("input {input:?}: got {:?}, want an error", e.value))
            }
            Ok(e) => {
                let want = (
                    str_field(case, "expected"),
                    names(&case["matches"]),
                    names(&case["unmatched"]),
                );
                if (e.value.as_str(), &e.matched, &e.unmatched) != (want.0, &want.1, &want.2) {
                    failures.push(format!(
                        "input {input:?}: got ({:?}, matched {:?}, unmatched {:?}), want ({:?}, matched {:?}, unmatched {:?})",
                        e.value, e.matched, e.unmatched, want.0, want.1, want.2
                    ));
                }
            }
        }
    }
    report("processWithMatches", cases.len(), 47, &failures);
}

/// `mandatoryEnvVars`: `${VAR?msg}` / `${VAR:?msg}` with the message expanded into the error.
#[test]
fn shell_mandatory_env_vars() {
    let data = tests_json();
    let cases = data["mandatoryEnvVars"]
        .as_array()
        .expect("mandatoryEnvVars");
    let lex = Lexer::new('\\');
    let mut failures = Vec::new();
    for case in cases {
        let input = str_field(case, "input");
        let entries = case["envs"].as_array().expect("envs");
        let env = parse_env_entries(entries.iter().map(|v| v.as_str().unwrap()));
        let got = lex.process_word(input, &env);
        let ok = match (&got, case.get("error_contains")) {
            (Err(e), Some(want)) => e.to_string().contains(want.as_str().unwrap()),
            (Ok(e), None) => e.value == str_field(case, "expected"),
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "input {input:?} env {entries:?}: got {got:?}, want {case}"
            ));
        }
    }
    report("mandatoryEnvVars", cases.len(), 6, &failures);
}

/// `platformTemplate`: the release-file-name template with and without a variant.
#[test]
fn shell_platform_template() {
    let data = tests_json();
    let table = &data["platformTemplate"];
    let input = str_field(table, "input");
    let cases = table["cases"].as_array().expect("platformTemplate.cases");
    let lex = Lexer::new('\\');
    let mut failures = Vec::new();
    for case in cases {
        let env = env_map(&case["envs"]);
        let want = str_field(case, "expected");
        match lex.process_word(input, &env) {
            Ok(e) if e.value == want => {}
            got => failures.push(format!("env {env:?}: got {got:?}, want {want:?}")),
        }
    }
    report("platformTemplate", cases.len(), 3, &failures);
}

/// `getEnv_last_wins`: `NAME=value` entries, the last one for a name wins.
#[test]
fn shell_get_env_last_wins() {
    let data = tests_json();
    let table = &data["getEnv_last_wins"];
    let entries: Vec<&str> = table["envs"]
        .as_array()
        .expect("getEnv_last_wins.envs")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(entries.len(), 3);
    let want = str_field(table, "car");
    let lex = Lexer::new('\\');
    let env = parse_env_entries(&entries);
    assert_eq!(env.get("car").map(String::as_str), Some(want));
    assert_eq!(lex.process_word("$car", &env).unwrap().value, want);
    // The same through a list of pairs, which is searched from the end.
    let pairs: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| e.split_once('=').unwrap_or((e, "")))
        .collect();
    assert_eq!(lex.process_word("${car}", &pairs).unwrap().value, want);
}

/// `shellPatternToRegex`: the regex built for a pattern (greedy, anchored), and the invalid
/// patterns.
#[test]
fn shell_pattern_to_regex_table() {
    let data = tests_json();
    let table = &data["shellPatternToRegex"];
    let valid = table["valid"]
        .as_object()
        .expect("shellPatternToRegex.valid");
    let invalid = table["invalid"]
        .as_array()
        .expect("shellPatternToRegex.invalid");
    let mut failures = Vec::new();
    for (pattern, want) in valid {
        let want = want.as_str().unwrap();
        match shell_pattern_to_regex(pattern, true, true) {
            Ok(got) if got == want => {}
            got => failures.push(format!("pattern {pattern:?}: got {got:?}, want {want:?}")),
        }
    }
    for pattern in invalid {
        let pattern = pattern.as_str().unwrap();
        if let Ok(got) = shell_pattern_to_regex(pattern, true, true) {
            failures.push(format!("pattern {pattern:?}: got {got:?}, want an error"));
        }
    }
    report(
        "shellPatternToRegex",
        valid.len() + invalid.len(),
        4 + 3,
        &failures,
    );
}

/// Guards against a new table appearing in the data file without a test here.
#[test]
fn shell_tests_json_tables_are_all_covered() {
    let data = tests_json();
    let keys: BTreeSet<&str> = data
        .as_object()
        .expect("top-level object")
        .keys()
        .map(String::as_str)
        .collect();
    let covered = BTreeSet::from([
        "source",
        "processWithMatches",
        "mandatoryEnvVars",
        "platformTemplate",
        "getEnv_last_wins",
        "shellPatternToRegex",
    ]);
    assert_eq!(keys, covered, "tables in {SHELL_TESTS}");
}
