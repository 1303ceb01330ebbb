//! Planner behaviour on small Dockerfiles with fixed inputs: stages, scoping, keys.

use imgbuild_parser::instructions::typed;
use imgbuild_parser::parse;
use imgbuild_planner::{
    BaseImage, BuildOptions, ContextQuery, ContextSelection, CopySource, ImageConfig, Inputs, Op,
    Plan, RemoteFile, RemoteSource, plan,
};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Context files (path -> content digest), images (name -> config) and remote files (URL ->
/// content digest) the tests control.
#[derive(Default, Clone)]
struct Fixed {
    files: BTreeMap<String, String>,
    images: BTreeMap<String, ImageConfig>,
    remotes: BTreeMap<String, String>,
    /// The `remote` calls made: (url, checksum).
    fetched: RefCell<Vec<(String, Option<String>)>>,
}

impl Inputs for Fixed {
    fn remote(&self, url: &str, checksum: Option<&str>) -> Result<RemoteFile, String> {
        self.fetched
            .borrow_mut()
            .push((url.to_owned(), checksum.map(str::to_owned)));
        let digest = self
            .remotes
            .get(url)
            .cloned()
            .ok_or_else(|| format!("GET {url}: HTTP 404 Not Found"))?;
        match checksum {
            Some(c) if c != digest => Err(format!("checksum mismatch: {c} vs {digest}")),
            _ => Ok(RemoteFile { digest, size: 1 }),
        }
    }

    fn image(&self, reference: &str) -> Result<BaseImage, String> {
        let config = self
            .images
            .get(reference)
            .cloned()
            .ok_or_else(|| "not in the image store".to_string())?;
        Ok(BaseImage {
            reference: reference.into(),
            manifest: format!("sha256:{:0>64}", reference.len()),
            config,
            history: Vec::new(),
        })
    }

    fn context(&self, q: &ContextQuery) -> Result<ContextSelection, String> {
        let mut files = Vec::new();
        for s in &q.sources {
            let s = s.trim_start_matches("./");
            let matched: Vec<_> = self
                .files
                .iter()
                .filter(|(p, _)| s == "." || *p == s || p.starts_with(&format!("{s}/")))
                .collect();
            if matched.is_empty() {
                return Err(format!("{s}: not found"));
            }
            files.extend(matched.into_iter().map(|(p, d)| (p.clone(), d.clone())));
        }
        let digest = files
            .iter()
            .map(|(p, d)| format!("{p}={d}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(ContextSelection {
            digest: format!("{digest};mode={}", q.include_mode),
            files,
        })
    }
}

fn inputs() -> Fixed {
    let mut f = Fixed::default();
    f.files.insert("a.txt".into(), "1".into());
    f.files.insert("src/main.c".into(), "2".into());
    f.files.insert("src/util.c".into(), "3".into());
    let mut alpine = ImageConfig::default();
    alpine.set_env("PATH", "/usr/bin:/bin");
    alpine.cmd = Some(vec!["/bin/sh".into()]);
    f.images.insert("alpine".into(), alpine);
    let onbuild = ImageConfig {
        onbuild: vec!["COPY a.txt /from-trigger".into(), "ENV T=1".into()],
        ..Default::default()
    };
    f.images.insert("with-onbuild".into(), onbuild);
    f
}

fn try_plan(src: &str, opts: &BuildOptions, inputs: &Fixed) -> Result<Plan, String> {
    let parsed = parse(src, 0);
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    let (t, d) = typed(&parsed.ast);
    assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
    let (p, diags) = plan(&t, opts, inputs);
    p.ok_or_else(|| {
        diags
            .iter()
            .map(|d| d.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

fn plan_ok(src: &str) -> Plan {
    try_plan(src, &BuildOptions::default(), &inputs()).unwrap()
}

fn keys(p: &Plan) -> Vec<String> {
    p.steps.iter().map(|s| s.key.hex()).collect()
}

#[test]
fn simple_image_config() {
    let p = plan_ok(
        "FROM alpine\nENV A=1 B=$A\nWORKDIR app\nUSER nobody\nEXPOSE 80 53/udp\nLABEL x=\"y z\"\nCMD [\"run\"]\nENTRYPOINT [\"/e\"]\nCOPY a.txt .\n",
    );
    let c = &p.target_stage().config;
    // Values of one ENV see the environment before it.
    assert_eq!(c.env, ["PATH=/usr/bin:/bin", "A=1", "B="]);
    assert_eq!(c.working_dir, "/app");
    assert_eq!(c.user, "nobody");
    assert_eq!(
        c.exposed_ports.iter().collect::<Vec<_>>(),
        ["53/udp", "80/tcp"]
    );
    assert_eq!(c.labels["x"], "y z");
    // CMD set in this stage survives the ENTRYPOINT that follows it.
    assert_eq!(c.cmd.as_deref(), Some(&["run".to_string()][..]));
    assert_eq!(c.entrypoint.as_deref(), Some(&["/e".to_string()][..]));
    let Op::Copy(copy) = &p.steps.last().unwrap().op else {
        panic!()
    };
    assert_eq!(copy.dest, "/app/");
    assert_eq!(copy.source, CopySource::Context);
    let layers: Vec<_> = p
        .steps
        .iter()
        .filter(|s| s.layer)
        .map(|s| s.created_by.as_str())
        .collect();
    assert_eq!(layers, ["WORKDIR /app", "COPY a.txt ."]);
}

#[test]
fn entrypoint_resets_inherited_cmd() {
    let p = plan_ok("FROM alpine\nENTRYPOINT [\"/e\"]\n");
    assert_eq!(p.target_stage().config.cmd, None);
    let p = plan_ok("FROM alpine\nCMD echo hi\n");
    assert_eq!(
        p.target_stage().config.cmd.as_deref(),
        Some(&["/bin/sh".to_string(), "-c".into(), "echo hi".into()][..])
    );
}

#[test]
fn keys_are_deterministic_and_content_addressed() {
    let src = "FROM alpine\nCOPY src /src\nENV X=1\nCOPY a.txt /\n";
    let a = plan_ok(src);
    assert_eq!(keys(&a), keys(&plan_ok(src)));

    // Changing src/util.c changes the first COPY and everything after it, not the FROM.
    let mut changed = inputs();
    changed.files.insert("src/util.c".into(), "33".into());
    let b = try_plan(src, &BuildOptions::default(), &changed).unwrap();
    assert_eq!(a.steps[0].key, b.steps[0].key);
    for i in 1..a.steps.len() {
        assert_ne!(a.steps[i].key, b.steps[i].key, "step {i}");
    }
    // ...and the explain inputs name the file.
    let old: Vec<_> = a.steps[1].inputs.iter().collect();
    let new: Vec<_> = b.steps[1].inputs.iter().collect();
    let diff: Vec<_> = new.iter().filter(|i| !old.contains(i)).collect();
    assert_eq!(diff.len(), 1);
    assert_eq!(diff[0].0, "file src/util.c");

    // A metadata change re-keys what follows it, not what precedes it.
    let c = plan_ok("FROM alpine\nCOPY src /src\nENV X=2\nCOPY a.txt /\n");
    assert_eq!(a.steps[1].key, c.steps[1].key);
    assert_ne!(a.steps[3].key, c.steps[3].key);
}

#[test]
fn link_layers_do_not_depend_on_their_parent() {
    let a = plan_ok("FROM alpine\nCOPY --link a.txt /\n");
    let b = plan_ok("FROM alpine\nENV Z=1\nCOPY --link a.txt /\n");
    assert_eq!(a.steps.last().unwrap().key, b.steps.last().unwrap().key);
    let c = plan_ok("FROM alpine\nENV Z=1\nCOPY a.txt /\n");
    assert_ne!(b.steps.last().unwrap().key, c.steps.last().unwrap().key);
    // What follows a --link layer still depends on what is below it.
    let d = plan_ok("FROM alpine\nCOPY --link a.txt /\nCOPY src /src\n");
    let e = plan_ok("FROM alpine\nENV Z=1\nCOPY --link a.txt /\nCOPY src /src\n");
    let (dl, el) = (d.steps.len(), e.steps.len());
    assert_eq!(d.steps[dl - 2].key, e.steps[el - 2].key);
    assert_ne!(d.steps[dl - 2].chain, e.steps[el - 2].chain);
    assert_ne!(d.steps[dl - 1].key, e.steps[el - 1].key);
}

#[test]
fn chmod_leaves_source_modes_out_of_the_key() {
    let p = plan_ok("FROM alpine\nCOPY --chmod=755 a.txt /\n");
    let Op::Copy(c) = &p.steps.last().unwrap().op else {
        panic!()
    };
    assert_eq!(c.chmod.as_deref(), Some("755"));
    assert!(
        p.steps
            .last()
            .unwrap()
            .inputs
            .iter()
            .any(|(k, _)| k == "file a.txt")
    );
}

#[test]
fn args_scoping_and_build_args() {
    let src = "ARG TAG=alpine\nARG UNUSED_GLOBAL\nFROM $TAG\nARG TAG\nARG LOCAL=l1\nENV FROM_TAG=$TAG LOCAL=$LOCAL\nRUN echo $LOCAL\n";
    let p = plan_ok(src);
    let c = &p.target_stage().config;
    assert_eq!(c.get_env("FROM_TAG"), Some("alpine"));
    assert_eq!(c.get_env("LOCAL"), Some("l1"));

    let mut opts = BuildOptions::default();
    opts.build_args.insert("LOCAL".into(), "given".into());
    opts.build_args.insert("NOBODY".into(), "x".into());
    opts.build_args
        .insert("HTTP_PROXY".into(), "http://p".into());
    let p = try_plan(src, &opts, &inputs()).unwrap();
    assert_eq!(p.target_stage().config.get_env("LOCAL"), Some("given"));
    // Proxy args are predefined, so only NOBODY was not consumed.
    assert_eq!(p.unused_build_args, ["NOBODY"]);

    // A global ARG is not visible in a stage until it is declared there.
    let p = plan_ok("ARG V=1\nFROM alpine\nENV A=$V\nARG V\nENV B=$V\n");
    let c = &p.target_stage().config;
    assert_eq!((c.get_env("A"), c.get_env("B")), (Some(""), Some("1")));
    // Platform args are there for FROM and when declared in a stage.
    let p = plan_ok("FROM alpine\nARG TARGETARCH\nENV ARCH=$TARGETARCH\n");
    assert_eq!(p.target_stage().config.get_env("ARCH"), Some("amd64"));
}

#[test]
fn run_env_and_keys() {
    let a = plan_ok("FROM alpine\nARG V=1\nRUN make\n");
    let b = plan_ok("FROM alpine\nARG V=2\nRUN make\n");
    assert_ne!(a.steps.last().unwrap().key, b.steps.last().unwrap().key);
    let Op::Run(r) = &a.steps.last().unwrap().op else {
        panic!()
    };
    assert_eq!(r.args, ["/bin/sh", "-c", "make"]);
    assert!(r.env.contains(&"V=1".to_string()));
    assert_eq!(
        a.steps.last().unwrap().created_by,
        "RUN |1 V=1 /bin/sh -c make"
    );
}

#[test]
fn multi_stage_target_and_dependencies() {
    let src = "FROM alpine AS base\nENV B=1\nFROM base AS build\nCOPY src /src\nFROM alpine AS unused\nCOPY a.txt /\nFROM scratch\nCOPY --from=build /src /out\nCOPY --from=0 /etc /etc\n";
    let p = plan_ok(src);
    assert_eq!(p.target, 3);
    assert!(p.stages[2].is_none(), "an unneeded stage is not planned");
    assert!(p.stages[0].is_some() && p.stages[1].is_some());
    let last = p.steps.last().unwrap();
    let Op::Copy(c) = &last.op else { panic!() };
    assert_eq!(c.source, CopySource::Stage(0));
    // FROM base continues base's chain and config.
    let build = p.stages[1].as_ref().unwrap();
    assert_eq!(build.config.get_env("B"), Some("1"));
    let chain = p.chain(build.last);
    assert_eq!(chain[0], p.stages[0].as_ref().unwrap().first);
    // The DAG has the --from edges.
    let g = p.graph();
    assert_eq!(g.node_count(), p.steps.len());
    assert!(petgraph::algo::toposort(&g, None).is_ok());

    let mut opts = BuildOptions {
        target: Some("build".into()),
        ..Default::default()
    };
    let p = try_plan(src, &opts, &inputs()).unwrap();
    assert_eq!(p.target, 1);
    assert!(p.stages[3].is_none());
    opts.target = Some("nope".into());
    let e = try_plan(src, &opts, &inputs()).unwrap_err();
    assert!(
        e.contains("target stage \"nope\" could not be found"),
        "{e}"
    );
}

#[test]
fn onbuild_triggers_run_after_from() {
    let p = plan_ok("FROM with-onbuild\nCOPY src /src\n");
    let created: Vec<_> = p.steps.iter().map(|s| s.created_by.as_str()).collect();
    assert_eq!(
        created,
        [
            "FROM with-onbuild",
            "COPY a.txt /from-trigger",
            "ENV T=1",
            "COPY src /src"
        ]
    );
    assert!(p.target_stage().config.onbuild.is_empty());
}

#[test]
fn errors_are_reported() {
    let e = try_plan("FROM nothere\n", &BuildOptions::default(), &inputs()).unwrap_err();
    assert!(
        e.contains("base image \"nothere\": not in the image store"),
        "{e}"
    );
    let e = try_plan(
        "FROM alpine\nCOPY missing /\n",
        &BuildOptions::default(),
        &inputs(),
    )
    .unwrap_err();
    assert!(e.contains("missing: not found"), "{e}");
    let e = try_plan(
        "FROM alpine\nCOPY --from=5 /x /\n",
        &BuildOptions::default(),
        &inputs(),
    )
    .unwrap_err();
    assert!(
        e.contains("stage \"5\" is not defined before this one"),
        "{e}"
    );
    let e = try_plan(
        "FROM alpine\nEXPOSE $P\n",
        &BuildOptions {
            build_args: [("P".to_string(), "http".to_string())].into(),
            ..Default::default()
        },
        &inputs(),
    );
    // P is not declared, so it expands to nothing: no port, no error.
    assert!(e.is_ok());
}

const URL: &str = "https://example.com/dl/tool-1.0.tar.gz";

fn sha(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn with_remote(url: &str, digest: &str) -> Fixed {
    let mut f = inputs();
    f.remotes.insert(url.into(), digest.into());
    f
}

#[test]
fn add_url_keys_cover_the_url_and_its_content() {
    let src = format!("FROM alpine\nADD {URL} /opt/\nENV DONE=1\n");
    let opts = BuildOptions::default();
    let a = try_plan(&src, &opts, &with_remote(URL, &sha('a'))).unwrap();
    let add = &a.steps[1];
    let Op::Copy(c) = &add.op else { panic!() };
    assert!(c.add);
    assert_eq!(c.sources, [URL]);
    assert_eq!(
        c.remotes,
        [RemoteSource {
            url: URL.into(),
            digest: sha('a'),
            file_name: "tool-1.0.tar.gz".into(),
        }]
    );
    assert_eq!(c.dest, "/opt/");
    // plan --explain names the URL and the content digest.
    assert!(add.inputs.contains(&(format!("url {URL}"), sha('a'))));
    assert_eq!(add.created_by, format!("ADD {URL} /opt/"));

    // Same URL, same content: same keys.
    let same = try_plan(&src, &opts, &with_remote(URL, &sha('a'))).unwrap();
    assert_eq!(keys(&a), keys(&same));
    // Same URL, new content: the ADD and what follows re-key, the FROM does not.
    let changed = try_plan(&src, &opts, &with_remote(URL, &sha('b'))).unwrap();
    assert_eq!(a.steps[0].key, changed.steps[0].key);
    assert_ne!(a.steps[1].key, changed.steps[1].key);
    assert_ne!(a.steps[2].key, changed.steps[2].key);
    // Another URL with the same content: another key (the URL names the file).
    let other = "https://example.com/dl/other.tar.gz";
    let moved = try_plan(
        &src.replace(URL, other),
        &opts,
        &with_remote(other, &sha('a')),
    )
    .unwrap();
    assert_ne!(a.steps[1].key, moved.steps[1].key);
    // --unpack, --chmod and the destination are keyed too.
    for variant in [
        format!("FROM alpine\nADD --unpack=true {URL} /opt/\n"),
        format!("FROM alpine\nADD --chmod=644 {URL} /opt/\n"),
        format!("FROM alpine\nADD {URL} /srv/\n"),
    ] {
        let p = try_plan(&variant, &opts, &with_remote(URL, &sha('a'))).unwrap();
        assert_ne!(a.steps[1].key, p.steps[1].key, "{variant}");
    }
}

#[test]
fn add_url_checksum_is_passed_on_and_mixed_sources_keep_their_order() {
    let sum = sha('c');
    let f = with_remote(URL, &sum);
    let src = format!("FROM alpine\nADD --checksum={sum} {URL} /t.tgz\n");
    let p = try_plan(&src, &BuildOptions::default(), &f).unwrap();
    assert_eq!(
        f.fetched.borrow().as_slice(),
        [(URL.to_owned(), Some(sum.clone()))]
    );
    let Op::Copy(c) = &p.steps[1].op else {
        panic!()
    };
    assert_eq!(c.checksum.as_deref(), Some(sum.as_str()));

    // A local file and a URL in one ADD: the context is asked only about the path.
    let f = with_remote(URL, &sha('a'));
    let p = try_plan(
        &format!("FROM alpine\nADD a.txt {URL} /d/\n"),
        &BuildOptions::default(),
        &f,
    )
    .unwrap();
    let step = p.steps.last().unwrap();
    let Op::Copy(c) = &step.op else { panic!() };
    assert_eq!(c.sources, ["a.txt", URL]);
    assert_eq!(c.remotes.len(), 1);
    assert!(step.inputs.iter().any(|(k, _)| k == "file a.txt"));
    assert!(step.inputs.iter().any(|(k, _)| *k == format!("url {URL}")));
}

#[test]
fn url_source_rules_follow_buildkit() {
    let f = with_remote(URL, &sha('a'));
    let opts = BuildOptions::default();
    let err = |src: &str| try_plan(src, &opts, &f).unwrap_err();
    let e = err(&format!("FROM alpine\nCOPY {URL} /\n"));
    assert!(e.contains("source can't be a URL for COPY"), "{e}");
    let e = err(&format!(
        "FROM alpine\nADD --checksum={} a.txt /\n",
        sha('a')
    ));
    assert!(
        e.contains("checksum can't be specified for non-HTTP(S) sources"),
        "{e}"
    );
    let e = err(&format!(
        "FROM alpine\nADD --checksum={} {URL} a.txt /d/\n",
        sha('a')
    ));
    assert!(
        e.contains("checksum can't be specified for multiple sources"),
        "{e}"
    );
    let e = err(&format!("FROM alpine\nADD --checksum=md5:abc {URL} /\n"));
    assert!(e.contains("invalid checksum \"md5:abc\""), "{e}");
    let e = err("FROM alpine\nADD https://github.com/moby/buildkit.git#v0.12 /src\n");
    assert!(e.contains("git repository"), "{e}");
    // What the outside world says about the URL is the error.
    let e = err("FROM alpine\nADD https://example.com/nothere /x\n");
    assert!(
        e.contains("GET https://example.com/nothere: HTTP 404 Not Found"),
        "{e}"
    );
    let e = err(&format!(
        "FROM alpine\nADD --checksum={} {URL} /x\n",
        sha('b')
    ));
    assert!(e.contains("checksum mismatch"), "{e}");

    // Inputs that do not implement `remote` (the default) refuse URLs with a message.
    struct NoNetwork(Fixed);
    impl Inputs for NoNetwork {
        fn image(&self, r: &str) -> Result<BaseImage, String> {
            self.0.image(r)
        }
        fn context(&self, q: &ContextQuery) -> Result<ContextSelection, String> {
            self.0.context(q)
        }
    }
    let parsed = parse(&format!("FROM alpine\nADD {URL} /x\n"), 0);
    let (t, _) = typed(&parsed.ast);
    let (p, diags) = plan(&t, &opts, &NoNetwork(inputs()));
    assert!(p.is_none());
    assert!(
        diags
            .iter()
            .any(|d| d.message.contains(&format!("cannot fetch {URL}"))),
        "{diags:?}"
    );
}

fn last_run(p: &Plan) -> &imgbuild_planner::RunOp {
    match &p.steps.last().unwrap().op {
        Op::Run(r) => r,
        op => panic!("not a RUN: {op:?}"),
    }
}

fn last_key(p: &Plan) -> String {
    p.steps.last().unwrap().key.hex()
}

#[test]
fn bind_mounts_from_the_context_key_the_bound_files() {
    let src = "FROM alpine\nRUN --mount=type=bind,source=src,target=/s cc /s/main.c\n";
    let a = plan_ok(src);
    let run = last_run(&a);
    assert_eq!(run.mounts, ["type=bind,source=src,target=/s,readonly=true"]);
    assert_eq!(run.mount_from, [Some(CopySource::Context)]);
    // A bound file changed: a new key, and the explain inputs name the file.
    let mut changed = inputs();
    changed.files.insert("src/util.c".into(), "33".into());
    let b = try_plan(src, &BuildOptions::default(), &changed).unwrap();
    assert_ne!(last_key(&a), last_key(&b));
    let step = b.steps.last().unwrap();
    assert!(
        step.inputs
            .contains(&("mount /s: file src/util.c".to_owned(), "33".to_owned())),
        "{:?}",
        step.inputs
    );
    // A file outside the bound source: the same key.
    let mut other = inputs();
    other.files.insert("a.txt".into(), "11".into());
    let c = try_plan(src, &BuildOptions::default(), &other).unwrap();
    assert_eq!(last_key(&a), last_key(&c));
    // A source that is not in the context is a planning error.
    let e = try_plan(
        "FROM alpine\nRUN --mount=source=nothere,target=/s true\n",
        &BuildOptions::default(),
        &inputs(),
    )
    .unwrap_err();
    assert!(e.contains("bind mount source \"nothere\""), "{e}");
}

#[test]
fn cache_mounts_key_the_mount_not_its_content() {
    let a = plan_ok("FROM alpine\nRUN --mount=type=cache,target=/root/.cache go build\n");
    assert_eq!(
        last_run(&a).mounts,
        ["type=cache,target=/root/.cache,id=/root/.cache,sharing=shared,readonly=false"]
    );
    assert_eq!(last_run(&a).mount_from, [None]);
    // Other spellings of the same mount (BuildKit's defaults written out) share the key.
    let b = plan_ok(
        "FROM alpine\nRUN --mount=type=cache,dst=/root/.cache/,id=/root/.cache,sharing=shared,rw go build\n",
    );
    assert_eq!(last_key(&a), last_key(&b));
    // The cache's content is not an input: nothing the context or a stage holds changes it.
    let mut changed = inputs();
    changed.files.insert("src/util.c".into(), "99".into());
    let c = try_plan(
        "FROM alpine\nRUN --mount=type=cache,target=/root/.cache go build\n",
        &BuildOptions::default(),
        &changed,
    )
    .unwrap();
    assert_eq!(last_key(&a), last_key(&c));
    // Its definition is: another id is another key.
    let d = plan_ok("FROM alpine\nRUN --mount=type=cache,target=/root/.cache,id=x go build\n");
    assert_ne!(last_key(&a), last_key(&d));
    // A relative target is under WORKDIR; the default id is the target as written.
    let e = plan_ok("FROM alpine\nWORKDIR /w\nRUN --mount=type=cache,target=cache,uid=1000 make\n");
    assert_eq!(
        last_run(&e).mounts,
        ["type=cache,target=/w/cache,id=cache,sharing=shared,uid=1000,readonly=false"]
    );
    // A cache seeded from a stage waits for that stage but is not keyed by it.
    let seeded = |cmd: &str| {
        plan_ok(&format!(
            "FROM alpine AS seed\nRUN {cmd}\nFROM alpine\nRUN --mount=type=cache,target=/c,from=seed,source=/s true\n"
        ))
    };
    let (s1, s2) = (seeded("make"), seeded("make all"));
    assert_eq!(last_key(&s1), last_key(&s2));
    let seed_last = s1.stages[0].as_ref().unwrap().last;
    assert_eq!(s1.steps.last().unwrap().deps, [seed_last]);
    assert_eq!(last_run(&s1).mount_from, [Some(CopySource::Stage(0))]);
}

#[test]
fn bind_mounts_from_stages_and_images_depend_on_them() {
    let src = |cmd: &str| {
        format!(
            "FROM alpine AS build\nRUN {cmd}\nFROM alpine\n\
             RUN --mount=from=build,source=/out,target=/in --mount=from=0,target=/zero \
             --mount=from=alpine,target=/img cp /in/x /x\n"
        )
    };
    let a = plan_ok(&src("make"));
    let run = last_run(&a);
    assert_eq!(
        run.mount_from,
        [
            Some(CopySource::Stage(0)),
            Some(CopySource::Stage(0)),
            Some(CopySource::Image {
                reference: "alpine".into(),
                manifest: format!("sha256:{:0>64}", 6),
            }),
        ]
    );
    let build_last = a.stages[0].as_ref().unwrap().last;
    assert_eq!(a.steps.last().unwrap().deps, [build_last]);
    // The stage's result is part of the key.
    let b = plan_ok(&src("make all"));
    assert_ne!(last_key(&a), last_key(&b));
    // A stage defined later cannot be mounted.
    let e = try_plan(
        "FROM alpine\nRUN --mount=from=later,target=/l true\nFROM alpine AS later\n",
        &BuildOptions {
            target: Some("0".into()),
            ..Default::default()
        },
        &inputs(),
    );
    assert!(e.is_err());
}

#[test]
fn secret_and_ssh_mounts_key_their_ids_never_values() {
    let a = plan_ok("FROM alpine\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n");
    assert_eq!(
        last_run(&a).mounts,
        ["type=secret,target=/run/secrets/tok,id=tok,required=false,readonly=true"]
    );
    // source= is another name for id=; target alone names the id after its last component.
    let b = plan_ok("FROM alpine\nRUN --mount=type=secret,source=tok cat /run/secrets/tok\n");
    let c = plan_ok(
        "FROM alpine\nRUN --mount=type=secret,target=/run/secrets/tok cat /run/secrets/tok\n",
    );
    assert_eq!(last_key(&a), last_key(&b));
    assert_eq!(last_key(&a), last_key(&c));
    // env= alone: no file.
    let d = plan_ok("FROM alpine\nRUN --mount=type=secret,id=tok,env=TOKEN,required true\n");
    assert_eq!(
        last_run(&d).mounts,
        ["type=secret,id=tok,env=TOKEN,required=true,readonly=true"]
    );
    // ssh: the default id, and sockets numbered in order.
    let e = plan_ok("FROM alpine\nRUN --mount=type=ssh --mount=type=ssh,id=work git pull\n");
    assert_eq!(
        last_run(&e).mounts,
        [
            "type=ssh,target=/run/buildkit/ssh_agent.0,id=default,required=false,readonly=true",
            "type=ssh,target=/run/buildkit/ssh_agent.1,id=work,required=false,readonly=true",
        ]
    );
}

#[test]
fn mount_values_are_expanded_one_by_one() {
    let a = plan_ok(
        "FROM alpine\nARG DIR=/cache\nARG ID=\"a,b\"\nRUN --mount=type=cache,target=$DIR,id=$ID true\n",
    );
    // The expanded comma stays inside its field (quoted in the canonical form).
    assert_eq!(
        last_run(&a).mounts,
        ["type=cache,target=/cache,\"id=a,b\",sharing=shared,readonly=false"]
    );
    let (m, errors) = imgbuild_parser::instructions::parse_mount(
        &last_run(&a).mounts[0],
        Some(&mut |v: &str| Ok(v.to_owned())),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(m.id.as_deref(), Some("a,b"));
    // What expansion makes invalid is an error with BuildKit's words.
    let e = try_plan(
        "FROM alpine\nARG T=bnid\nRUN --mount=type=$T,target=/x true\n",
        &BuildOptions::default(),
        &inputs(),
    )
    .unwrap_err();
    assert!(e.contains("unsupported mount type \"bnid\""), "{e}");
    let e = try_plan(
        "FROM alpine\nRUN --mount=type=tmpfs,target=. true\n",
        &BuildOptions::default(),
        &inputs(),
    )
    .unwrap_err();
    assert!(e.contains("invalid mount target"), "{e}");
}
