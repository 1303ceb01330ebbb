//! `imgbuild parse`: BuildKit's formats from the command line.

use crate::{imgbuild, scratch, shared_dir, stderr, stdout};

#[test]
fn dump_matches_buildkit_result_files() {
    let base = shared_dir().join("conformance/buildkit/testfiles");
    let mut n = 0;
    for entry in std::fs::read_dir(&base).unwrap() {
        let d = entry.unwrap().path();
        let out = imgbuild(&d, &["parse", "--format", "dump", "Dockerfile"]);
        assert_eq!(out.status.code(), Some(0));
        let want = std::fs::read_to_string(d.join("result")).unwrap();
        assert_eq!(stdout(&out), want, "{}", d.display());
        n += 1;
    }
    assert_eq!(n, 33);
}

#[test]
fn buildkit_records_one_line_per_file_and_errors_inline() {
    let dir = scratch(&[
        ("good", b"FROM a\nENV A=1 B=2\nONBUILD RUN x\n"),
        ("bad", b"FROM a\nENV PATH\n"),
    ]);
    let out = imgbuild(dir.path(), &["parse", "good", "bad"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(
        lines[0]["commands"][1]["value"],
        serde_json::json!(["A", "1", "B", "2"])
    );
    assert_eq!(lines[0]["commands"][2]["sub_cmd"], "RUN");
    assert_eq!(lines[1]["ok"], false);
    assert_eq!(lines[1]["error"], "ENV must have two arguments");
}

#[test]
fn unreadable_file_exits_1_and_others_still_print() {
    let dir = scratch(&[("good", b"FROM a\n")]);
    let out = imgbuild(dir.path(), &["parse", "missing", "good"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read missing"));
    assert_eq!(stdout(&out).lines().count(), 1);
}

#[test]
fn json_format_has_spans_and_diagnostics() {
    let dir = scratch(&[("Dockerfile", b"FROM a\nRUN <<EOF\nx\n")]);
    let out = imgbuild(dir.path(), &["parse", "--format", "json", "Dockerfile"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["diagnostics"][0]["code"], "unterminated-heredoc");
    assert_eq!(v["syntax"]["children"][0]["span"]["start"], 0);

    let dir = scratch(&[(
        "Dockerfile",
        b"ARG V=1\nFROM alpine:$V AS build\nRUN --mount=type=cache,target=/c --cache=never make\n",
    )]);
    let out = imgbuild(dir.path(), &["parse", "--format", "json", "Dockerfile"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["typed"]["meta_args"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["typed"]["stages"][0]["name"], "build", "{v}");
}
