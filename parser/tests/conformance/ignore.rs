//! `.dockerignore` conformance: every table of
//! `buildkit/patternmatcher/patternmatcher_tests.json` (moby/patternmatcher's
//! patternmatcher_test.go and ignorefile_test.go, see FORMATS.md section 4), run against
//! `imgbuild_parser::ignore`. Each test runs every case of its table, collects all failures and
//! asserts at the end, and checks that the number of cases run equals the table length.

use std::collections::BTreeSet;

use imgbuild_parser::ignore::{self, IgnoreError, MatchInfo, PatternMatcher};
use serde_json::Value;

const DATA: &str = "conformance/buildkit/patternmatcher/patternmatcher_tests.json";

fn data() -> Value {
    crate::read_shared_json(DATA)
}

/// The array at JSON pointer `ptr`; a missing or non-array table is a harness failure.
fn table<'a>(root: &'a Value, ptr: &str) -> &'a [Value] {
    root.pointer(ptr)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{DATA}: {ptr} is missing or not an array"))
}

fn str_field<'a>(case: &'a Value, key: &str) -> &'a str {
    case.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{DATA}: case {case} has no string field {key:?}"))
}

fn bool_field(case: &Value, key: &str) -> bool {
    case.get(key)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("{DATA}: case {case} has no bool field {key:?}"))
}

fn strings_field(case: &Value, key: &str) -> Vec<String> {
    case.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{DATA}: case {case} has no array field {key:?}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{DATA}: non-string in {key:?} of {case}"))
                .to_owned()
        })
        .collect()
}

/// Failures of one table; `finish` asserts that all cases ran and none failed.
struct Report {
    table: &'static str,
    run: usize,
    failures: Vec<String>,
}

impl Report {
    fn new(table: &'static str) -> Report {
        Report {
            table,
            run: 0,
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    fn finish(self, expected_cases: usize) {
        assert_eq!(
            self.run, expected_cases,
            "{}: ran {} cases, table has {}",
            self.table, self.run, expected_cases
        );
        assert!(expected_cases > 0, "{}: empty table", self.table);
        assert!(
            self.failures.is_empty(),
            "{}: {} failure(s) in {} cases:\n  {}",
            self.table,
            self.failures.len(),
            self.run,
            self.failures.join("\n  ")
        );
    }
}

/// `filepath.Dir(text)` split on `/` and re-joined prefix by prefix, as the Go test walks
/// parents; empty when the parent is `.`.
fn parent_walk(text: &str) -> Vec<String> {
    let parent = match text.rfind('/') {
        Some(i) => ignore::clean_path(&text[..=i]),
        None => return Vec::new(),
    };
    if parent == "." {
        return Vec::new();
    }
    let dirs: Vec<&str> = parent.split('/').collect();
    (0..dirs.len()).map(|i| dirs[..=i].join("/")).collect()
}

fn show<T: std::fmt::Debug>(r: &Result<T, IgnoreError>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("error {e:?}"),
    }
}

/// The matching functions the Go test exercises.
#[derive(Clone, Copy, Debug)]
enum Func {
    OrParentMatches,
    UsingParentResultWalk,
    UsingParentResultsWalk,
    UsingParentResultsNoContext,
}

fn run_func(pm: &PatternMatcher, text: &str, func: Func) -> Result<bool, IgnoreError> {
    match func {
        Func::OrParentMatches => pm.matches_or_parent_matches(text),
        Func::UsingParentResultWalk => {
            let mut parent_matched = false;
            for dir in parent_walk(text) {
                // The Go test ignores errors along the walk.
                parent_matched = pm
                    .matches_using_parent_result(&dir, parent_matched)
                    .unwrap_or(false);
            }
            pm.matches_using_parent_result(text, parent_matched)
        }
        Func::UsingParentResultsWalk => {
            let mut info = MatchInfo::default();
            for dir in parent_walk(text) {
                info = pm
                    .matches_using_parent_results(&dir, &info)
                    .map(|(_, next)| next)
                    .unwrap_or_default();
            }
            pm.matches_using_parent_results(text, &info).map(|(m, _)| m)
        }
        Func::UsingParentResultsNoContext => pm
            .matches_using_parent_results(text, &MatchInfo::default())
            .map(|(m, _)| m),
    }
}

fn check_matching(
    report: &mut Report,
    patterns: &[String],
    text: &str,
    pass: bool,
    funcs: &[Func],
) {
    report.run += 1;
    let pm = match PatternMatcher::new(patterns) {
        Ok(pm) => pm,
        Err(e) => {
            report.fail(format!(
                "patterns={patterns:?} text={text:?}: New failed: {e:?}"
            ));
            return;
        }
    };
    for &func in funcs {
        let got = run_func(&pm, text, func);
        if got != Ok(pass) {
            report.fail(format!(
                "patterns={patterns:?} text={text:?} {func:?}: got {}, want {pass}",
                show(&got)
            ));
        }
    }
}

const ALL_FUNCS: [Func; 4] = [
    Func::OrParentMatches,
    Func::UsingParentResultWalk,
    Func::UsingParentResultsWalk,
    Func::UsingParentResultsNoContext,
];

#[test]
fn ignore_tables_are_all_covered() {
    let root = data();
    let top: BTreeSet<&str> = root
        .as_object()
        .expect("top level is an object")
        .keys()
        .map(String::as_str)
        .collect();
    let known: BTreeSet<&str> = [
        "source",
        "simple_matches",
        "matches",
        "filepath_match",
        "compile",
        "clean_patterns",
        "malformed_repeat",
        "ignorefile_readall",
    ]
    .into_iter()
    .collect();
    assert_eq!(top, known, "tables in {DATA} changed: cover the new ones");
    let sub: BTreeSet<&str> = root["matches"]
        .as_object()
        .expect("matches is an object")
        .keys()
        .map(String::as_str)
        .collect();
    let known_sub: BTreeSet<&str> = ["doc", "single", "unix_only", "multi"]
        .into_iter()
        .collect();
    assert_eq!(
        sub, known_sub,
        "matches.* tables changed: cover the new ones"
    );
    // The sizes FORMATS.md documents, so that truncated data cannot pass.
    assert_eq!(table(&root, "/matches/single").len(), 67);
    assert_eq!(table(&root, "/matches/unix_only").len(), 1);
    assert_eq!(table(&root, "/matches/multi").len(), 4);
    assert_eq!(table(&root, "/filepath_match/cases").len(), 54);
    assert_eq!(table(&root, "/compile/cases").len(), 21);
}

/// `matches.single` and `matches.unix_only` (we implement the Unix flavour): each of the four
/// matching functions must give `pass`.
#[test]
fn ignore_matches_single() {
    let root = data();
    let single = table(&root, "/matches/single");
    let unix_only = table(&root, "/matches/unix_only");
    let mut report = Report::new("matches.single+unix_only");
    for case in single.iter().chain(unix_only) {
        let pattern = str_field(case, "pattern").to_owned();
        check_matching(
            &mut report,
            &[pattern],
            str_field(case, "text"),
            bool_field(case, "pass"),
            &ALL_FUNCS,
        );
    }
    report.finish(single.len() + unix_only.len());
}

/// `matches.multi`. As in patternmatcher_test.go, the deprecated `MatchesUsingParentResult` is
/// not checked on these: it is known to get exclusions wrong (buildx#850) and gives `true` for
/// the first case in Go too.
#[test]
fn ignore_matches_multi() {
    let root = data();
    let multi = table(&root, "/matches/multi");
    let mut report = Report::new("matches.multi");
    for case in multi {
        check_matching(
            &mut report,
            &strings_field(case, "patterns"),
            str_field(case, "text"),
            bool_field(case, "pass"),
            &[
                Func::OrParentMatches,
                Func::UsingParentResultsWalk,
                Func::UsingParentResultsNoContext,
            ],
        );
    }
    report.finish(multi.len());
}

/// Go's `filepath.Match` table through the top-level `Matches(s, [pattern])`.
#[test]
fn ignore_filepath_match() {
    let root = data();
    let cases = table(&root, "/filepath_match/cases");
    let mut report = Report::new("filepath_match");
    for case in cases {
        report.run += 1;
        let pattern = str_field(case, "pattern");
        let text = str_field(case, "text");
        let want_match = bool_field(case, "match");
        let want_err = match case.get("error") {
            Some(Value::Null) => None,
            Some(Value::String(e)) => Some(e.as_str()),
            other => panic!("{DATA}: bad error field {other:?} in {case}"),
        };
        let got = ignore::matches(text, [pattern]);
        let ok = match (&got, want_err) {
            (Ok(m), None) => *m == want_match,
            (Err(IgnoreError::BadPattern { .. }), Some("ErrBadPattern")) => !want_match,
            _ => false,
        };
        if !ok {
            report.fail(format!(
                "Match({pattern:?}, {text:?}): got {}, want ({want_match}, {want_err:?})",
                show(&got)
            ));
        }
    }
    report.finish(cases.len());
}

/// patternmatcher's `compile()`: the match type, and the regex built for `/` and for `\`.
#[test]
fn ignore_compile() {
    let root = data();
    let cases = table(&root, "/compile/cases");
    let mut report = Report::new("compile");
    for case in cases {
        report.run += 1;
        let pattern = str_field(case, "pattern");
        let want_type = str_field(case, "matchType");
        let want_re = str_field(case, "regexp");
        let want_win = str_field(case, "windows_regexp");
        let pm = match PatternMatcher::new([pattern]) {
            Ok(pm) => pm,
            Err(e) => {
                report.fail(format!("{pattern:?}: New failed: {e:?}"));
                continue;
            }
        };
        let Some(p) = pm.patterns().first() else {
            report.fail(format!("{pattern:?}: no pattern compiled"));
            continue;
        };
        if p.match_type().go_name() != want_type {
            report.fail(format!(
                "{pattern:?}: match_type() = {}, want {want_type}",
                p.match_type()
            ));
        }
        let is_regexp = want_type == "regexpMatch";
        if !is_regexp && (!want_re.is_empty() || !want_win.is_empty()) {
            report.fail(format!("{pattern:?}: table gives a regexp for {want_type}"));
        }
        let want_slash = is_regexp.then(|| want_re.to_owned());
        if p.regex_source().map(str::to_owned) != want_slash {
            report.fail(format!(
                "{pattern:?}: regex_source() = {:?}, want {want_slash:?}",
                p.regex_source()
            ));
        }
        for (sep, want) in [('/', want_re), ('\\', want_win)] {
            let (got_type, got_re) = p.compile_for_separator(sep);
            let want = is_regexp.then(|| want.to_owned());
            if got_type.go_name() != want_type || got_re != want {
                report.fail(format!(
                    "{pattern:?} sep {sep:?}: got ({got_type}, {got_re:?}), want ({want_type}, {want:?})"
                ));
            }
        }
    }
    report.finish(cases.len());
}

/// The deprecated top-level `Matches(file, patterns)` tests.
#[test]
fn ignore_simple_matches() {
    let root = data();
    let cases = table(&root, "/simple_matches/cases");
    let mut report = Report::new("simple_matches");
    for case in cases {
        report.run += 1;
        let text = str_field(case, "text");
        let patterns = strings_field(case, "patterns");
        let want_err = case.get("error").and_then(Value::as_bool).unwrap_or(false);
        let want_match = case.get("match").and_then(Value::as_bool);
        if want_match.is_none() && !want_err {
            panic!("{DATA}: simple_matches case without match or error: {case}");
        }
        let got = ignore::matches(text, &patterns);
        let ok = match &got {
            Ok(m) => !want_err && want_match == Some(*m),
            // Go returns false with the error.
            Err(_) => want_err && want_match.is_none_or(|m| !m),
        };
        if !ok {
            report.fail(format!(
                "Matches({text:?}, {patterns:?}): got {}, want match={want_match:?} error={want_err}",
                show(&got)
            ));
        }
    }
    report.finish(cases.len());
}

/// `New` cleaning: empty patterns dropped, trimming, the exclusion flag, a lone `!`.
#[test]
fn ignore_clean_patterns() {
    let root = data();
    let cases = table(&root, "/clean_patterns");
    let mut report = Report::new("clean_patterns");
    for case in cases {
        report.run += 1;
        let patterns = strings_field(case, "patterns");
        let got = PatternMatcher::new(&patterns);
        let problem = if let Some(n) = case.get("cleaned_len") {
            let n = n.as_u64().expect("cleaned_len is a number") as usize;
            match &got {
                Ok(pm) if pm.patterns().len() == n => None,
                Ok(pm) => Some(format!("{} patterns, want {n}", pm.patterns().len())),
                Err(e) => Some(format!("error {e:?}, want {n} patterns")),
            }
        } else if let Some(x) = case.get("exclusions") {
            let x = x.as_bool().expect("exclusions is a bool");
            match &got {
                Ok(pm) if pm.exclusions() == x => None,
                Ok(pm) => Some(format!("exclusions() = {}, want {x}", pm.exclusions())),
                Err(e) => Some(format!("error {e:?}, want exclusions() = {x}")),
            }
        } else if bool_field(case, "error") {
            match &got {
                Err(IgnoreError::IllegalExclusion) => None,
                Err(e) => Some(format!("error {e:?}, want the illegal-exclusion error")),
                Ok(_) => Some("no error, want one".to_owned()),
            }
        } else {
            panic!("{DATA}: clean_patterns case with nothing to check: {case}");
        };
        if let Some(problem) = problem {
            report.fail(format!("New({patterns:?}): {problem}"));
        }
    }
    report.finish(cases.len());
}

/// A pattern whose regex does not compile: `New` succeeds, and every evaluation (not only the
/// first) fails with ErrBadPattern, through every matching function.
#[test]
fn ignore_malformed_repeat() {
    let root = data();
    let case = root
        .get("malformed_repeat")
        .expect("malformed_repeat table");
    let patterns = strings_field(case, "patterns");
    let text = str_field(case, "text");
    assert_eq!(str_field(case, "error_each_call"), "ErrBadPattern");
    let mut report = Report::new("malformed_repeat");
    report.run += 1;
    let new_ok = bool_field(case, "new_ok");
    match PatternMatcher::new(&patterns) {
        Err(e) => report.fail(format!("New({patterns:?}) failed: {e:?}, new_ok={new_ok}")),
        Ok(_) if !new_ok => report.fail(format!("New({patterns:?}) succeeded, new_ok=false")),
        Ok(pm) => {
            for call in 1..=2 {
                let results = [
                    ("MatchesOrParentMatches", pm.matches_or_parent_matches(text)),
                    ("Matches", pm.matches(text)),
                    (
                        "MatchesUsingParentResult",
                        pm.matches_using_parent_result(text, false),
                    ),
                    (
                        "MatchesUsingParentResults",
                        pm.matches_using_parent_results(text, &MatchInfo::default())
                            .map(|(m, _)| m),
                    ),
                ];
                for (name, got) in results {
                    if !matches!(got, Err(IgnoreError::BadPattern { .. })) {
                        report.fail(format!(
                            "{name}({text:?}) call {call}: got {}, want ErrBadPattern",
                            show(&got)
                        ));
                    }
                }
            }
        }
    }
    report.finish(1);
}

/// `ignorefile.ReadAll`; a lone `!` it yields is then rejected by `New`.
#[test]
fn ignore_ignorefile_readall() {
    let root = data();
    let case = root
        .get("ignorefile_readall")
        .expect("ignorefile_readall table");
    let input = str_field(case, "input");
    let expect = strings_field(case, "expect");
    let mut report = Report::new("ignorefile_readall");
    report.run += 1;
    match ignore::read_ignore_file(input) {
        Ok(got) if got == expect => {}
        got => report.fail(format!("ReadAll({input:?}): got {got:?}, want {expect:?}")),
    }
    if !matches!(
        PatternMatcher::new(&expect),
        Err(IgnoreError::IllegalExclusion)
    ) {
        report.fail(format!("New({expect:?}) did not fail on the lone \"!\""));
    }
    report.finish(1);
}
