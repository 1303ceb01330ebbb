//! Base images: images exported in each format and read back with `FROM oci-layout://`,
//! `oci-archive://` and `docker-archive://`; tagged images in the store as `FROM` and
//! `COPY --from` sources; missing images; ONBUILD triggers; `--target`; stage indexes.

use crate::{imgbuild_env, scratch, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Output;

const BASE: &str = "FROM scratch\n\
    COPY busybox /bin/busybox\n\
    COPY base.txt /base.txt\n\
    ENV BASEVAR=from-base PATH=/bin\n\
    WORKDIR /srv\n\
    CMD [\"/bin/busybox\", \"echo\", \"base\"]\n";

fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox")
        .expect("/bin/busybox not found: install the Debian package busybox-static")
}

fn base_context() -> tempfile::TempDir {
    let dir = scratch(&[("Dockerfile", BASE.as_bytes()), ("base.txt", b"base layer")]);
    std::fs::write(dir.path().join("busybox"), busybox()).unwrap();
    dir
}

fn build(ctx: &Path, root: &Path, args: &[&str]) -> Output {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    all.push(".");
    imgbuild_env(ctx, &all, &[("IMGBUILD_ROOT", root.to_str().unwrap())])
}

fn digest_of(out: &Output) -> String {
    let s = stdout(out);
    let last = s.lines().last().unwrap_or("").to_owned();
    assert!(
        out.status.success() && last.starts_with("sha256:"),
        "build failed ({:?}):\n{s}\n{}",
        out.status,
        stderr(out)
    );
    last
}

/// A successful build's manifest digest, its image config (read from the store through
/// `--iidfile`) and its root filesystem (`-o type=local`).
struct Built {
    digest: String,
    config: serde_json::Value,
    fs: PathBuf,
}

fn build_fs(ctx: &Path, root: &Path, work: &Path, name: &str, extra: &[&str]) -> Built {
    let fs = work.join(format!("fs-{name}"));
    let iid = work.join(format!("iid-{name}"));
    let local = format!("type=local,dest={}", fs.display());
    let mut args = vec!["-o", &local, "--iidfile", iid.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = build(ctx, root, &args);
    let digest = digest_of(&out);
    let config_digest = std::fs::read_to_string(&iid).unwrap();
    let hex = config_digest
        .trim()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let config =
        serde_json::from_slice(&std::fs::read(root.join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    Built { digest, config, fs }
}

/// The base's files, the child's file, and the base's ENV, CMD and WORKDIR.
fn assert_child_of_base(b: &Built, what: &str) {
    assert_eq!(
        std::fs::read(b.fs.join("bin/busybox")).unwrap(),
        busybox(),
        "{what}"
    );
    assert_eq!(
        std::fs::read(b.fs.join("base.txt")).unwrap(),
        b"base layer",
        "{what}"
    );
    assert_eq!(
        std::fs::read(b.fs.join("srv/child.txt")).unwrap(),
        b"child layer",
        "{what}"
    );
    let c = &b.config["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"BASEVAR=from-base"), "{what}: {env:?}");
    assert!(env.contains(&"PATH=/bin"), "{what}: {env:?}");
    assert!(env.contains(&"CHILD=1"), "{what}: {env:?}");
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["/bin/busybox", "echo", "base"]),
        "{what}"
    );
    assert_eq!(c["WorkingDir"], "/srv", "{what}");
    assert_eq!(
        b.config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        4,
        "{what}: two COPY and a WORKDIR below, one COPY on top"
    );
}

const CHILD: &str = "COPY child.txt child.txt\nENV CHILD=1\n";

fn child_context(from: &str) -> tempfile::TempDir {
    scratch(&[
        ("Dockerfile", format!("FROM {from}\n{CHILD}").as_bytes()),
        ("child.txt", b"child layer"),
    ])
}

#[test]
fn exported_images_are_bases_in_a_fresh_root() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let base = base_context();
    let root1 = w.join("root1");
    let layout = w.join("layout");
    let archive = w.join("base.tar");
    let docker = w.join("docker.tar");
    let out = build(
        base.path(),
        &root1,
        &[
            "-t",
            "base:1",
            "-o",
            &format!("type=oci,dest={},tar=false", layout.display()),
            "-o",
            &format!("type=oci,dest={}", archive.display()),
            "-o",
            &format!("type=docker,dest={}", docker.display()),
        ],
    );
    let base_digest = digest_of(&out);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let in_layout = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(in_layout, base_digest);

    // The same child, on the tagged image in the first root ...
    let in_store = build_fs(child_context("base:1").path(), &root1, w, "store", &[]);
    assert_child_of_base(&in_store, "FROM base:1");

    // ... and on each export, in a fresh root each.
    let refs = [
        format!("oci-layout://{}:1", layout.display()),
        format!("oci-layout://{}@{in_layout}", layout.display()),
        format!("oci-layout://{}", layout.display()),
        format!("oci-archive://{}", archive.display()),
        format!("oci-archive://{}:1", archive.display()),
        format!("docker-archive://{}", docker.display()),
    ];
    for (i, r) in refs.iter().enumerate() {
        let root = w.join(format!("fresh{i}"));
        let b = build_fs(child_context(r).path(), &root, w, &i.to_string(), &[]);
        assert_child_of_base(&b, r);
        // The OCI exports carry the stored image unchanged, so the child is the same image.
        // (A docker archive holds uncompressed layers: same files, other layer digests.)
        if !r.starts_with("docker-archive:") {
            assert_eq!(b.digest, in_store.digest, "{r}");
        }
    }

    // References that name nothing fail with exit 1 and say what is missing.
    for (r, says) in [
        (
            format!("oci-layout://{}:2", layout.display()),
            "no image matches \"2\"",
        ),
        (
            format!("oci-archive://{}:2", archive.display()),
            "no image matches \"2\"",
        ),
        (
            format!(
                "oci-layout://{}@sha256:{}",
                layout.display(),
                "0".repeat(64)
            ),
            "no image matches",
        ),
        (
            format!("oci-archive://{}", w.join("none.tar").display()),
            "none.tar: No such file",
        ),
    ] {
        let out = build(child_context(&r).path(), &w.join("fresh-bad"), &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{r}: {err}");
        assert!(err.contains(says), "{r}: {err}");
    }
}

#[test]
fn tagged_images_are_bases_and_copy_sources() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let out = build(base_context().path(), &root, &["-t", "base:1"]);
    digest_of(&out);

    let ctx = scratch(&[(
        "Dockerfile",
        b"FROM scratch\nCOPY --from=base:1 /bin/busybox /b\nCOPY --from=base:1 /base.txt /srv/ /copied/\n",
    )]);
    let b = build_fs(ctx.path(), &root, work.path(), "copy-from", &[]);
    assert_eq!(std::fs::read(b.fs.join("b")).unwrap(), busybox());
    assert_eq!(
        std::fs::read(b.fs.join("copied/base.txt")).unwrap(),
        b"base layer"
    );
    // Nothing of the base's config comes with a COPY --from.
    assert!(b.config["config"]["Cmd"].is_null(), "{}", b.config);

    // An image that is not there: exit 1, naming it.
    for dockerfile in [
        "FROM nothere:1\n",
        "FROM scratch\nCOPY --from=nothere:1 /x /x\n",
    ] {
        let ctx = scratch(&[("Dockerfile", dockerfile.as_bytes())]);
        let out = build(ctx.path(), &root, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{dockerfile}: {err}");
        assert!(
            err.contains("nothere:1") && err.contains("not in the local image store"),
            "{dockerfile}: {err}"
        );
    }
}

#[test]
fn onbuild_triggers_run_in_the_child_only() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let base = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch\nCOPY base.txt /base.txt\nONBUILD COPY a.txt /a.txt\nONBUILD ENV TRIGGERED=yes\n",
        ),
        ("base.txt", b"base"),
        // The base's own a.txt: the trigger must not take it from here.
        ("a.txt", b"from the base's context"),
    ]);
    let b = build_fs(base.path(), &root, work.path(), "base", &["-t", "onb:1"]);
    assert!(!b.fs.join("a.txt").exists());
    assert_eq!(
        b.config["config"]["OnBuild"],
        serde_json::json!(["COPY a.txt /a.txt", "ENV TRIGGERED=yes"])
    );

    let child = scratch(&[
        ("Dockerfile", b"FROM onb:1\nCOPY c.txt /c.txt\n"),
        ("a.txt", b"from the child's context"),
        ("c.txt", b"c"),
    ]);
    let c = build_fs(
        child.path(),
        &root,
        work.path(),
        "child",
        &["-t", "child:1"],
    );
    assert_eq!(
        std::fs::read(c.fs.join("a.txt")).unwrap(),
        b"from the child's context"
    );
    assert_eq!(std::fs::read(c.fs.join("base.txt")).unwrap(), b"base");
    assert_eq!(std::fs::read(c.fs.join("c.txt")).unwrap(), b"c");
    let env = c.config["config"]["Env"].to_string();
    assert!(env.contains("TRIGGERED=yes"), "{env}");
    // Triggers are not inherited further.
    assert!(c.config["config"]["OnBuild"].is_null(), "{}", c.config);

    // A grandchild without a.txt builds: the triggers do not run again.
    let grandchild = scratch(&[("Dockerfile", b"FROM child:1\nLABEL generation=3\n")]);
    let g = build_fs(grandchild.path(), &root, work.path(), "grandchild", &[]);
    assert_eq!(
        std::fs::read(g.fs.join("a.txt")).unwrap(),
        b"from the child's context"
    );
}

#[test]
fn target_builds_only_the_stages_it_needs_and_stages_are_named_by_index() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch AS broken\n\
              COPY does-not-exist /x\n\
              FROM scratch AS good\n\
              COPY ok.txt /ok.txt\n\
              FROM scratch AS uses-index\n\
              COPY --from=1 /ok.txt /via-index.txt\n\
              COPY --from=good /ok.txt /via-name.txt\n\
              FROM good AS final\n\
              COPY --from=broken /x /x\n",
        ),
        ("ok.txt", b"ok"),
    ]);

    // The whole file fails: the broken stage is needed by the last one.
    let out = build(ctx.path(), &root, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does-not-exist"), "{err}");

    // --target good never plans the broken stage; --target uses-index reaches stage 1 by index.
    let meta = work.path().join("meta.json");
    let meta_arg = meta.to_str().unwrap();
    let good = build_fs(
        ctx.path(),
        &root,
        work.path(),
        "good",
        &["--target", "good", "--metadata-file", meta_arg],
    );
    assert_eq!(std::fs::read(good.fs.join("ok.txt")).unwrap(), b"ok");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(
        m["imgbuild.steps.executed"].as_u64().unwrap()
            + m["imgbuild.steps.cached"].as_u64().unwrap(),
        1
    );
    let plan = imgbuild_env(
        ctx.path(),
        &["plan", "--target", "good", "."],
        &[("IMGBUILD_ROOT", root.to_str().unwrap())],
    );
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(
        !stdout(&plan).contains("does-not-exist"),
        "{}",
        stdout(&plan)
    );

    let idx = build_fs(
        ctx.path(),
        &root,
        work.path(),
        "index",
        &["--target", "uses-index"],
    );
    assert_eq!(std::fs::read(idx.fs.join("via-index.txt")).unwrap(), b"ok");
    assert_eq!(std::fs::read(idx.fs.join("via-name.txt")).unwrap(), b"ok");
    assert!(!idx.fs.join("ok.txt").exists());

    // An index that names no earlier stage is an error.
    let bad = scratch(&[("Dockerfile", b"FROM scratch\nCOPY --from=5 /x /x\n")]);
    let out = build(bad.path(), &root, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
