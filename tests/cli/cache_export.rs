//! `--cache-to` / `--cache-from` with `type=local`: a fresh machine (a fresh store root) gets
//! every step from the exported cache, cache mounts travel with it, exports are incremental,
//! and a damaged cache is a miss, never a wrong image.

use crate::{imgbuild_env, is_root, scratch, stderr, stdout};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

/// Runs `imgbuild build --progress=plain ARGS .` in `ctx` with the store at `root`.
fn build(ctx: &Path, root: &Path, args: &[&str]) -> Output {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    all.push(".");
    imgbuild_env(ctx, &all, &[("IMGBUILD_ROOT", root.to_str().unwrap())])
}

fn build_ok(ctx: &Path, root: &Path, args: &[&str]) -> Output {
    let out = build(ctx, root, args);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// The manifest digest: the last line on stdout.
fn digest(out: &Output) -> String {
    stdout(out).lines().last().unwrap_or_default().to_owned()
}

fn to(dir: &Path) -> String {
    format!("type=local,dest={}", dir.display())
}

fn from(dir: &Path) -> String {
    format!("type=local,src={}", dir.display())
}

fn blobs(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn index(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
}

/// Hex digests of every blob the index references.
fn referenced(dir: &Path) -> BTreeSet<String> {
    let index = index(dir);
    let mut out = BTreeSet::new();
    let mut add = |b: &serde_json::Value| {
        let d = b["digest"].as_str().unwrap();
        out.insert(d.trim_start_matches("sha256:").to_owned());
    };
    for s in index["steps"].as_object().unwrap().values() {
        s["blobs"].as_array().unwrap().iter().for_each(&mut add);
    }
    for m in index["cache_mounts"].as_object().unwrap().values() {
        add(&m["manifest"]);
        m["blobs"].as_array().unwrap().iter().for_each(&mut add);
    }
    out
}

/// Every blob in the store at `root` hashes to its name, and no temp entry is left.
fn store_is_clean(root: &Path) {
    use sha2::Digest;
    for e in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let hex: String = sha2::Sha256::digest(std::fs::read(e.path()).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            e.file_name().into_string().unwrap(),
            hex,
            "a damaged blob was stored"
        );
    }
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

/// A context whose Dockerfile starts from a busybox stage (built here, no registry needed).
fn busybox_context(rest: &str) -> tempfile::TempDir {
    assert!(is_root(), "RUN tests need root (CI runs as root)");
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox not found: install the Debian package busybox-static"
    );
    let df = format!(
        "FROM scratch AS busybox\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         FROM busybox AS tool\nRUN echo tool > /tool\n\
         FROM busybox\n{rest}"
    );
    let dir = scratch(&[("Dockerfile", df.as_bytes()), ("app.txt", b"app\n")]);
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    dir
}

#[test]
fn a_fresh_machine_hits_every_step_and_cache_mounts_start_warm() {
    let run = |what: &str| {
        format!(
            "COPY app.txt /app.txt\nCOPY --from=tool /tool /tool\n\
             RUN --mount=type=cache,target=/var/cache/app \
             (cat /var/cache/app/note 2>/dev/null || echo cold) > /saw.txt && \
             echo {what} > /var/cache/app/note && mkdir -p /var/cache/app/d && \
             ln -sf ../note /var/cache/app/d/link\n"
        )
    };
    let ctx = busybox_context(&run("first"));
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("ci-cache");

    let first_root = tempfile::tempdir().unwrap();
    let first = build_ok(ctx.path(), first_root.path(), &["--cache-to", &to(&dir)]);
    assert!(
        stderr(&first).contains("cache: exported 6 step results and 1 cache mounts"),
        "{}",
        stderr(&first)
    );
    assert_eq!(blobs(&dir), referenced(&dir));

    let log = fresh_machine_hits_every_step(ctx.path(), &from(&dir), 6, &digest(&first));
    assert_eq!(log.matches(" CACHED").count(), 6, "{log}");

    // Another fresh machine with the RUN changed: it runs, and finds the first build's file
    // (and symlink) in its cache mount.
    let third_root = changed_run_starts_warm(ctx.path(), &from(&dir), 5);
    let mount = std::fs::read_dir(third_root.path().join("cache-mounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p.join("id")).unwrap() == "/var/cache/app")
        .expect("the imported cache mount");
    assert_eq!(
        std::fs::read_link(mount.join("0/d/link")).unwrap(),
        Path::new("../note")
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("0/note")).unwrap(),
        "second\n"
    );
}

/// `FROM scratch` stages with COPY only (no RUN, so no root needed).
fn copy_context() -> tempfile::TempDir {
    scratch(&[
        (
            "Dockerfile",
            b"FROM scratch AS a\nCOPY a.txt /a.txt\n\
              FROM scratch\nCOPY --from=a /a.txt /x.txt\nCOPY b.txt /b.txt\n",
        ),
        ("a.txt", b"a\n"),
        ("b.txt", &b"b".repeat(100_000)),
    ])
}

#[test]
fn exports_are_incremental_and_drop_what_is_no_longer_referenced() {
    let ctx = copy_context();
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("c");
    let first = build_ok(ctx.path(), root.path(), &["--cache-to", &to(&dir)]);
    assert!(
        stderr(&first).contains("3 blobs written"),
        "{}",
        stderr(&first)
    );
    let before = blobs(&dir);
    assert_eq!(before, referenced(&dir));
    assert_eq!(before.len(), 3);

    // Unchanged: no blob written, none removed.
    let again = build_ok(ctx.path(), root.path(), &["--cache-to", &to(&dir)]);
    assert!(
        stderr(&again).contains("0 blobs written (0 bytes), 3 already there, 0 removed"),
        "{}",
        stderr(&again)
    );
    assert_eq!(blobs(&dir), before);

    // b.txt changed: its new layer is written, the old one removed.
    std::fs::write(ctx.path().join("b.txt"), b"changed").unwrap();
    let changed = build_ok(ctx.path(), root.path(), &["--cache-to", &to(&dir)]);
    assert!(
        stderr(&changed).contains("1 blobs written") && stderr(&changed).contains("1 removed"),
        "{}",
        stderr(&changed)
    );
    let after = blobs(&dir);
    assert_eq!(after, referenced(&dir));
    assert_eq!(after.len(), 3);
    assert_eq!(before.intersection(&after).count(), 2);
    // No temp files left beside the blobs or the index.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

    // mode=min: only the final image's chain (stage a's COPY is left out).
    let min = cache.path().join("min");
    build_ok(
        ctx.path(),
        root.path(),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=min", min.display()),
        ],
    );
    assert_eq!(index(&min)["steps"].as_object().unwrap().len(), 2);
    assert_eq!(index(&dir)["steps"].as_object().unwrap().len(), 3);
}

#[test]
fn a_damaged_cache_is_a_miss_and_stores_nothing() {
    let ctx = copy_context();
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("c");
    let root = tempfile::tempdir().unwrap();
    let good = build_ok(ctx.path(), root.path(), &["--cache-to", &to(&dir)]);

    // One blob with a flipped byte, one truncated.
    let names: Vec<String> = blobs(&dir).into_iter().collect();
    let path = |n: &str| dir.join("blobs/sha256").join(n);
    let mut bytes = std::fs::read(path(&names[0])).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(path(&names[0]), &bytes).unwrap();
    let bytes = std::fs::read(path(&names[1])).unwrap();
    std::fs::write(path(&names[1]), &bytes[..bytes.len() / 2]).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let out = build_ok(ctx.path(), fresh.path(), &["--cache-from", &from(&dir)]);
    let log = stderr(&out);
    assert_eq!(digest(&out), digest(&good));
    assert!(log.contains("warning: --cache-from:"), "{log}");
    assert!(
        log.contains("corrupt") && log.contains("the step runs"),
        "{log}"
    );
    assert!(log.contains("(2 steps run, 1 cached)"), "{log}");
    store_is_clean(fresh.path());

    // A damaged index: a warning, and a cold build.
    std::fs::write(dir.join("index.json"), b"{\"version\": 1, \"steps\": 7}").unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = build_ok(ctx.path(), fresh.path(), &["--cache-from", &from(&dir)]);
    assert!(
        stderr(&out).contains("damaged cache index"),
        "{}",
        stderr(&out)
    );
    assert_eq!(digest(&out), digest(&good));

    // A missing directory: a warning too.
    let out = build_ok(
        ctx.path(),
        fresh.path(),
        &["--cache-from", &from(&cache.path().join("nowhere"))],
    );
    assert!(
        stderr(&out).contains("holds no cache yet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_cache_specs_are_usage_errors_naming_the_flag() {
    let ctx = copy_context();
    let root = tempfile::tempdir().unwrap();
    for (args, says) in [
        (
            ["--cache-to", "type=s3,dest=/x"],
            "error: --cache-to type=s3,dest=/x: unknown cache type \"s3\"",
        ),
        (
            ["--cache-to", "type=local"],
            "--cache-to type=local: missing dest",
        ),
        (
            ["--cache-to", "type=local,dest=/x,mode=most"],
            "use mode=min or mode=max",
        ),
        (
            ["--cache-from", "type=local"],
            "--cache-from type=local: missing src",
        ),
        (
            ["--cache-from", "cache"],
            "--cache-from cache: \"cache\" is not key=value",
        ),
    ] {
        let out = build(ctx.path(), root.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

/// The same fresh-machine story through a registry (`type=registry,ref=…`): the cache is an
/// OCI manifest whose config is the index, skopeo can read it, a second export of the same
/// build uploads no blob, and a fresh store hits every step with the cache mount warm.
#[test]
fn a_registry_cache_carries_steps_and_cache_mounts() {
    let registry = crate::registry::Registry::start(None);
    let cache_ref = format!("{}/ci/cache:main", registry.host());
    let run = |what: &str| {
        format!(
            "COPY app.txt /app.txt\n\
             RUN --mount=type=cache,target=/var/cache/app \
             (cat /var/cache/app/note 2>/dev/null || echo cold) > /saw.txt && \
             echo {what} > /var/cache/app/note\n"
        )
    };
    let ctx = busybox_context(&run("first"));
    let to = format!("type=registry,ref={cache_ref}");
    let from = format!("type=registry,ref={cache_ref}");

    let first_root = tempfile::tempdir().unwrap();
    let first = build_ok(ctx.path(), first_root.path(), &["--cache-to", &to]);
    assert!(
        stderr(&first).contains("cache: exported 4 step results and 1 cache mounts"),
        "{}",
        stderr(&first)
    );
    // The cache is an OCI manifest a standard tool reads; its config is our index.
    crate::require_tool("skopeo", "skopeo");
    let raw = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache_ref}"),
        ])
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", stderr(&raw));
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.imgbuild.cache.index.v1+json"
    );
    assert!(
        manifest["layers"].as_array().unwrap().len() >= 4,
        "{manifest}"
    );

    // The same build exported again from the same store uploads nothing new.
    let again = build_ok(ctx.path(), first_root.path(), &["--cache-to", &to]);
    assert!(
        stderr(&again).contains(": 0 blobs written (0 bytes)"),
        "{}",
        stderr(&again)
    );

    fresh_machine_hits_every_step(ctx.path(), &from, 4, &digest(&first));
    // The RUN changed on another fresh machine: it runs with the first build's cache mount.
    changed_run_starts_warm(ctx.path(), &from, 3);
}

/// A build on a fresh store with `--cache-from FROM`: every one of `steps` steps is a hit, the
/// image digest is `expected`, and the store holds nothing half-written. Returns the log.
fn fresh_machine_hits_every_step(ctx: &Path, from: &str, steps: usize, expected: &str) -> String {
    let fresh = tempfile::tempdir().unwrap();
    let out = build_ok(ctx, fresh.path(), &["--cache-from", from]);
    let log = stderr(&out);
    assert!(
        log.contains(&format!("(0 steps run, {steps} cached)")),
        "{log}"
    );
    assert_eq!(digest(&out), expected);
    store_is_clean(fresh.path());
    log
}

/// Changes the cache-mount RUN (`echo first` → `echo second`) and builds on a fresh store with
/// `--cache-from FROM`: only that step runs, and it saw the first build's cache-mount content.
/// Returns the store, for a closer look at the imported mount.
fn changed_run_starts_warm(ctx: &Path, from: &str, cached: usize) -> tempfile::TempDir {
    let dockerfile = ctx.join("Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    std::fs::write(&dockerfile, text.replace("echo first", "echo second")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let fs = out.path().join("fs");
    let root = tempfile::tempdir().unwrap();
    let built = build_ok(
        ctx,
        root.path(),
        &[
            "--cache-from",
            from,
            "-o",
            &format!("type=local,dest={}", fs.display()),
        ],
    );
    let log = stderr(&built);
    assert!(
        log.contains(&format!("(1 steps run, {cached} cached)")),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(fs.join("saw.txt")).unwrap(),
        "first\n"
    );
    root
}
