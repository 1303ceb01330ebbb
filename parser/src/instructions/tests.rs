//! Unit tests of the typed values (the data cases under tests/data/typed cover diagnostics).

use super::*;
use crate::diag::Diagnostic;
use crate::syntax::parse;

/// Types the first instruction of `src`.
fn one(src: &str) -> (Option<Instruction>, Vec<Diagnostic>) {
    let p = parse(src, 0);
    assert!(
        p.buildkit_error.is_none(),
        "{src:?}: {:?}",
        p.buildkit_error
    );
    parse_instruction(&p.ast.children[0])
}

fn ok(src: &str) -> Instruction {
    let (i, d) = one(src);
    assert!(d.is_empty(), "{src:?}: {d:?}");
    i.unwrap_or_else(|| panic!("{src:?}: nothing built"))
}

/// The source text a span covers.
fn text(src: &str, s: Span) -> &str {
    &src[s.start..s.end]
}

#[test]
fn run_values() {
    let src = "RUN --network=none --mount=type=cache,target=/c --security=insecure --mount=type=tmpfs,target=/t --cache=ttl=1h30m --device=gpu,required echo hi";
    let Instruction::Run(r) = ok(src) else {
        panic!()
    };
    assert_eq!(r.network, Network::None);
    assert_eq!(r.security, Security::Insecure);
    assert_eq!(
        r.mounts.iter().map(|m| m.kind).collect::<Vec<_>>(),
        [MountType::Cache, MountType::Tmpfs]
    );
    assert_eq!(text(src, r.mounts[0].span), "--mount=type=cache,target=/c");
    assert!(matches!(r.cache, Some(RunCache::Ttl { nanos, .. }) if nanos == 5_400_000_000_000));
    assert_eq!(r.devices[0].name, "gpu");
    assert!(r.devices[0].required);
    assert_eq!(
        r.flags_used,
        ["network", "mount", "security", "cache", "device"]
    );
    assert_eq!(r.command.values(), ["echo hi"]);
    assert!(r.command.prepend_shell);

    let Instruction::Run(r) = ok("RUN [\"ls\", \"-l\"]") else {
        panic!()
    };
    assert_eq!(r.command.values(), ["ls", "-l"]);
    assert!(!r.command.prepend_shell);
    assert!(r.flags_used.is_empty());
    assert!(matches!(
        ok("RUN --cache=never x"),
        Instruction::Run(Run {
            cache: Some(RunCache::Never { .. }),
            ..
        })
    ));
}

#[test]
fn copy_and_add_values() {
    let src = "COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=a --exclude=b x y /dst/";
    let Instruction::Copy(c) = ok(src) else {
        panic!()
    };
    assert_eq!(c.from.as_ref().unwrap().value, "build");
    assert_eq!(text(src, c.from.unwrap().span), "build");
    assert_eq!(c.chown.unwrap().value, "1:2");
    assert_eq!(c.chmod.unwrap().value, "755");
    assert!(c.link && c.parents);
    assert_eq!(
        c.excludes
            .iter()
            .map(|w| w.value.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        c.files
            .sources
            .iter()
            .map(|w| w.value.as_str())
            .collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(text(src, c.files.dest.span), "/dst/");

    let Instruction::Add(a) =
        ok("ADD --link=false --unpack --keep-git-dir=false --checksum=sha256:ab u /d")
    else {
        panic!()
    };
    assert!(!a.link);
    assert_eq!((a.unpack, a.keep_git_dir), (Some(true), Some(false)));
    assert_eq!(a.checksum.unwrap().value, "sha256:ab");
    let Instruction::Add(a) = ok("ADD u /d") else {
        panic!()
    };
    assert_eq!((a.unpack, a.keep_git_dir), (None, None));

    let Instruction::Copy(c) = ok("COPY [\"a b\", \"/c d/\"]") else {
        panic!()
    };
    assert_eq!(c.files.sources[0].value, "a b");
    assert_eq!(c.files.dest.value, "/c d/");
}

#[test]
fn healthcheck_values() {
    let Instruction::Healthcheck(h) = ok(
        "HEALTHCHECK --interval=30s --timeout=1m --start-period=1.5s --retries=3 CMD [\"curl\", \"-f\", \"x\"]",
    ) else {
        panic!()
    };
    assert_eq!(h.test, ["CMD", "curl", "-f", "x"]);
    assert_eq!(
        (
            h.interval,
            h.timeout,
            h.start_period,
            h.start_interval,
            h.retries
        ),
        (30_000_000_000, 60_000_000_000, 1_500_000_000, 0, 3)
    );
    let Instruction::Healthcheck(h) = ok("HEALTHCHECK none") else {
        panic!()
    };
    assert_eq!(h.test, ["NONE"]);
}

#[test]
fn key_values_and_args() {
    let Instruction::Env(e) = ok("ENV A=1 B=\"two words\"") else {
        panic!()
    };
    let kv: Vec<_> = e
        .vars
        .iter()
        .map(|k| (k.key.value.as_str(), k.value.value.as_str(), k.legacy))
        .collect();
    assert_eq!(kv, [("A", "1", false), ("B", "\"two words\"", false)]);
    let Instruction::Env(e) = ok("ENV PATH /usr/bin:/bin") else {
        panic!()
    };
    assert!(e.vars[0].legacy);
    assert_eq!(e.vars[0].value.value, "/usr/bin:/bin");

    let src = "ARG name=\"a b\" other";
    let Instruction::Arg(a) = ok(src) else {
        panic!()
    };
    assert_eq!(a.args[0].key.value, "name");
    assert_eq!(text(src, a.args[0].key.span), "name");
    assert_eq!(a.args[0].value.as_ref().unwrap().value, "\"a b\"");
    assert_eq!(text(src, a.args[0].value.as_ref().unwrap().span), "\"a b\"");
    assert_eq!(a.args[1].key.value, "other");
    assert!(a.args[1].value.is_none());
    let Instruction::Arg(a) = ok("ARG empty=") else {
        panic!()
    };
    assert_eq!(a.args[0].value.as_ref().unwrap().value, "");
}

#[test]
fn small_instructions() {
    let src = "USER app:staff";
    let Instruction::User(u) = ok(src) else {
        panic!()
    };
    assert_eq!(text(src, u.user.span), "app");
    assert_eq!(text(src, u.group.unwrap().span), "staff");
    let Instruction::StopSignal(s) = ok("STOPSIGNAL sigkill") else {
        panic!()
    };
    assert_eq!(s.number, Some(9));
    let Instruction::StopSignal(s) = ok("STOPSIGNAL SIGRTMIN+3") else {
        panic!()
    };
    assert_eq!(s.number, Some(37));
    let Instruction::StopSignal(s) = ok("STOPSIGNAL $SIG") else {
        panic!()
    };
    assert_eq!(s.number, None);
    let Instruction::Expose(e) = ok("EXPOSE 80/udp $P") else {
        panic!()
    };
    assert_eq!(e.ports[0].spec.as_ref().unwrap().keys(), ["80/udp"]);
    assert!(e.ports[1].spec.is_none());
    let Instruction::Volume(v) = ok("VOLUME [\"/a\", \"/b\"]") else {
        panic!()
    };
    assert_eq!(v.paths.len(), 2);
    let Instruction::Shell(s) = ok("SHELL [\"pwsh\", \"-c\"]") else {
        panic!()
    };
    assert_eq!(s.shell.len(), 2);
    let Instruction::Entrypoint(e) = ok("ENTRYPOINT []") else {
        panic!()
    };
    assert!(e.command.args.is_empty() && !e.command.prepend_shell);
    let Instruction::Module(m) = ok("MODULE net fs") else {
        panic!()
    };
    assert_eq!(m.names.len(), 2);
    let Instruction::Include(i) = ok("INCLUDE common.df") else {
        panic!()
    };
    assert_eq!(i.path.value, "common.df");
}

#[test]
fn onbuild_expression_and_trigger() {
    let Instruction::Onbuild(o) = ok("ONBUILD RUN echo hi") else {
        panic!()
    };
    assert_eq!(o.expression, "RUN echo hi");
    assert!(matches!(o.trigger.as_deref(), Some(Instruction::Run(_))));
    let Instruction::Onbuild(o) = ok("onbuild COPY <<EOF /x\nbody\nEOF\n") else {
        panic!()
    };
    assert_eq!(o.expression, "COPY <<EOF /x\nbody\nEOF");
    let Some(Instruction::Copy(c)) = o.trigger.as_deref() else {
        panic!()
    };
    assert_eq!(c.files.contents[0].data, "body\n");
    // A broken trigger is a warning: it fails only a build that uses the image as a base.
    let (i, d) = one("ONBUILD RUN --network=nope x");
    assert!(i.is_some());
    assert_eq!(d.len(), 1);
    assert!(!d[0].is_error());
}

#[test]
fn stages_and_grouping() {
    let src = "\
# g is the base tag
ARG g=3
# base the base stage
FROM --platform=$BUILDPLATFORM alpine:$g AS Base
RUN x
FROM base AS next
FROM unikernel AS k
APP /a
FROM k AS k2
MODULE net
";
    let p = parse(src, 0);
    let (t, d) = typed(&p.ast);
    let errors: Vec<_> = d.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(t.meta_args.len(), 1);
    assert_eq!(t.meta_args[0].args[0].doc, "is the base tag");
    let names: Vec<_> = t.stages.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(names, [Some("base"), Some("next"), Some("k"), Some("k2")]);
    assert_eq!(t.stages[0].base, "alpine:$g");
    assert_eq!(t.stages[0].doc, "the base stage");
    assert_eq!(
        t.stages[0].platform.as_ref().unwrap().value,
        "$BUILDPLATFORM"
    );
    assert_eq!(t.stages[0].instructions.len(), 1);
    let uni: Vec<_> = t.stages.iter().map(|s| s.unikernel).collect();
    assert_eq!(uni, [false, false, true, true]);
    assert_eq!(t.stage("BASE").map(|(i, _)| i), Some(0));
    // The lint on the upper-case stage name points at the name.
    let w = d.iter().find(|d| d.code == "StageNameCasing").unwrap();
    assert_eq!(text(src, w.span), "Base");
}

#[test]
fn diagnostics_point_at_the_offending_text() {
    let cases: &[(&str, &str, &str)] = &[
        ("FROM a\nCOPY --boo x y", "unknown-flag", "--boo"),
        (
            "FROM a\nRUN --mount=type=nope x",
            "invalid-mount",
            "--mount=type=nope",
        ),
        (
            "FROM unikernel\nMODULE ok Bad",
            "invalid-module-name",
            "Bad",
        ),
        ("FROM a AS 9x", "invalid-stage-name", "9x"),
        ("FROM a\nEXPOSE 80/foo", "invalid-port", "80/foo"),
        ("FROM a\nBOGUS x", "unknown-instruction", "BOGUS"),
        (
            "FROM a\nRUN y\nFROM b\nCOPY --from=c x y\nFROM a AS c",
            "forward-stage-reference",
            "c",
        ),
        ("ARG A\nFROM x:$B", "UndefinedArgInFrom", "$B"),
        (
            "FROM scratch\nCOPY ${NOPE:-x} /",
            "UndefinedVar",
            "${NOPE:-x}",
        ),
        ("FROM unikernel\nRUN x", "unikernel-stage", "RUN"),
        (
            "# syntax=docker/dockerfile:1\nFROM a\nRUN --cache=never x",
            "imgbuild-extension",
            "--cache=never",
        ),
    ];
    for (src, code, want) in cases {
        let p = parse(src, 0);
        let (_, d) = check::check_all(&p.ast);
        let Some(found) = d.iter().find(|d| d.code == *code) else {
            panic!("{src:?}: no {code} in {d:?}")
        };
        assert_eq!(text(src, found.span), *want, "{src:?}");
        assert!(found.help.as_deref().is_some_and(|h| !h.is_empty()));
    }
}

/// Every prefix of every case, and lines of shuffled instruction fragments: nothing panics.
#[test]
fn never_panics() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/typed");
    let mut sources: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "Dockerfile").then(|| std::fs::read_to_string(p).ok())?
        })
        .collect();
    // Deterministic pseudo-random lines built from instruction words and awkward tokens.
    let words = [
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "LABEL",
        "ONBUILD",
        "HEALTHCHECK",
        "CMD",
        "EXPOSE",
        "APP",
        "MODULE",
        "INCLUDE",
        "unikernel",
        "AS",
        "--mount=type=cache,target=",
        "--from=",
        "--from=0",
        "--cache=ttl=",
        "--interval=",
        "$",
        "${",
        "}",
        "=",
        "\"",
        "'",
        "<<EOF",
        "[\"a\"",
        "]",
        "\\",
        "\t",
        "é",
        "-",
        "--",
        "NONE",
        "8000-",
        "x:y:z",
    ];
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let mut s = String::new();
        for _ in 0..(next() % 12) {
            for _ in 0..(next() % 8) {
                s.push_str(words[(next() % words.len() as u64) as usize]);
                s.push(if next() % 3 == 0 { '\n' } else { ' ' });
            }
            s.push('\n');
        }
        sources.push(s);
    }
    for src in &sources {
        let cuts: Vec<usize> = (0..=src.len())
            .filter(|&i| src.is_char_boundary(i))
            .collect();
        for &cut in &cuts {
            let p = parse(&src[..cut], 0);
            let _ = check::check_all(&p.ast);
        }
    }
}

/// Large inputs stay linear: a long chain of stages, each using the previous one's names.
#[test]
fn large_files() {
    let mut src = String::from("FROM scratch AS s0\n");
    for i in 1..3000 {
        src.push_str(&format!(
            "FROM s{} AS s{i}\nENV V{i}=$V{}\nCOPY --from=s{} /a /b\nRUN --mount=from=s0,target=/m x\n",
            i - 1,
            i - 1,
            i - 1
        ));
    }
    // Quadratic work here would take minutes and show as a hung test, not a failed timer.
    let p = parse(&src, 0);
    let (t, d) = check::check_all(&p.ast);
    assert_eq!(t.stages.len(), 3000);
    // Only s1's use of $V0 is undefined.
    let undefined: Vec<_> = d.iter().filter(|d| d.code == "UndefinedVar").collect();
    assert_eq!(undefined.len(), 1, "{undefined:?}");
}
