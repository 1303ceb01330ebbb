//! `imgbuild build`: real images read by real tools (skopeo, umoci, podman), reproducibility,
//! caching.

use crate::{imgbuild_env, require_tool, scratch, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's busybox-static binary, copied into a context.
fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    assert!(
        p.exists(),
        "/bin/busybox not found: install the Debian package busybox-static"
    );
    p
}

const HELLO: &str = "FROM scratch\nCOPY busybox /bin/busybox\nENV PATH=/bin\nWORKDIR /work\nCMD [\"/bin/busybox\", \"echo\", \"hello from imgbuild\"]\n";

fn hello_context() -> tempfile::TempDir {
    let dir = scratch(&[("Dockerfile", HELLO.as_bytes())]);
    std::fs::copy(busybox(), dir.path().join("busybox")).unwrap();
    dir
}

fn digest_line(out: &std::process::Output) -> String {
    let s = stdout(out);
    let last = s.lines().last().unwrap_or("").to_owned();
    assert!(
        last.starts_with("sha256:"),
        "no digest on stdout:\n{s}\n{}",
        stderr(out)
    );
    last
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn hello_image_is_read_by_skopeo_umoci_and_podman() {
    let ctx = hello_context();
    let root = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("hello.tar");
    let layout = out_dir.path().join("layout");
    let docker = out_dir.path().join("docker.tar");
    let out = imgbuild_env(
        ctx.path(),
        &[
            "build",
            "--progress=plain",
            "-t",
            "hello:1",
            "-o",
            &format!("type=oci,dest={},compression=gzip", archive.display()),
            "-o",
            &format!(
                "type=oci,dest={},tar=false,compression=gzip",
                layout.display()
            ),
            "-o",
            &format!("type=docker,dest={}", docker.display()),
            ".",
        ],
        &[("IMGBUILD_ROOT", root.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    digest_line(&out);

    require_tool("skopeo", "skopeo");
    let inspect = run(
        Command::new("skopeo").args(["inspect", &format!("oci-archive:{}", archive.display())])
    );
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["Env"][0], "PATH=/bin");

    require_tool("umoci", "umoci");
    let bundle = out_dir.path().join("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--rootless",
        "--image",
        &format!("{}:1", layout.display()),
        bundle.to_str().unwrap(),
    ]));
    let unpacked = bundle.join("rootfs/bin/busybox");
    assert_eq!(
        std::fs::read(&unpacked).unwrap(),
        std::fs::read(busybox()).unwrap()
    );
    assert!(bundle.join("rootfs/work").is_dir());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["cwd"], "/work");

    require_tool("podman", "podman");
    let conf = out_dir.path().join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    let proot = out_dir.path().join("proot");
    let prun = out_dir.path().join("prun");
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &conf).args([
            "--root",
            proot.to_str().unwrap(),
            "--runroot",
            prun.to_str().unwrap(),
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
        ]);
        c.args(args);
        c
    };
    let load = run(&mut podman(&["load", "-i", docker.to_str().unwrap()]));
    let loaded = String::from_utf8_lossy(&load.stdout).into_owned();
    // "Loaded image: docker.io/library/hello:1" (podman qualifies docker-archive tags).
    let name = loaded
        .lines()
        .find_map(|l| l.split_once(": ").map(|(_, n)| n.trim().to_owned()))
        .unwrap_or_default();
    assert!(name.ends_with("hello:1"), "{loaded}");
    let ran = run(&mut podman(&["run", "--rm", "--network", "none", &name]));
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).trim(),
        "hello from imgbuild"
    );
    // The OCI archive loads too.
    let load = run(&mut podman(&["load", "-i", archive.to_str().unwrap()]));
    assert!(load.status.success());
}

#[test]
fn builds_are_reproducible_across_paths_times_and_umask() {
    let build = |ctx: &Path, root: &Path, umask: &str| -> String {
        let script = format!(
            "umask {umask} && exec {} build --progress=quiet {}",
            env!("CARGO_BIN_EXE_imgbuild"),
            ctx.display()
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .env("IMGBUILD_ROOT", root)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        digest_line(&out)
    };
    let a = hello_context();
    let b = hello_context();
    // Different mtimes and permissions of the checkout's directories.
    std::fs::write(b.path().join("Dockerfile"), HELLO).unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(b.path().join("busybox"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
        .unwrap();
    let (r1, r2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d1 = build(a.path(), r1.path(), "022");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let d2 = build(b.path(), r2.path(), "077");
    assert_eq!(d1, d2);
}

#[test]
fn second_build_does_no_work_and_a_change_reruns_only_what_it_touches() {
    let dir = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch AS base\nCOPY a.txt /a.txt\nFROM base\nCOPY src /src\nCOPY b.txt /b.txt\n",
        ),
        ("a.txt", b"a"),
        ("b.txt", b"b"),
        ("src/main.c", b"int main(){}"),
        ("src/util.c", b"void u(){}"),
    ]);
    // Files written within the last second are re-read on purpose (a same-second change could
    // hide behind equal stat data), so date the checkout back as a real one would be.
    backdate(dir.path());
    let root = tempfile::tempdir().unwrap();
    let rootp = root.path().to_str().unwrap();
    let meta_dir = tempfile::tempdir().unwrap();
    let meta = meta_dir.path().join("meta.json");
    let build = || {
        let out = imgbuild_env(
            dir.path(),
            &[
                "build",
                "--progress=plain",
                "--metadata-file",
                meta.to_str().unwrap(),
                ".",
            ],
            &[("IMGBUILD_ROOT", rootp)],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        (
            digest_line(&out),
            m["imgbuild.steps.executed"].as_u64().unwrap(),
            m["imgbuild.steps.cached"].as_u64().unwrap(),
            m["imgbuild.context.files_hashed"].as_u64().unwrap(),
        )
    };
    let (d1, run1, _, hashed1) = build();
    assert_eq!(run1, 3);
    assert!(hashed1 >= 5, "the first build reads every file: {hashed1}");
    // Nothing changed: every step hits and no file is read again (stat data is unchanged).
    let (d2, run2, cached2, hashed2) = build();
    assert_eq!((d1.clone(), run2, cached2, hashed2), (d2, 0, 3, 0));

    std::fs::write(dir.path().join("src/util.c"), b"void u(){ return; }").unwrap();
    backdate(&dir.path().join("src/util.c"));
    let plan = imgbuild_env(
        dir.path(),
        &["plan", "--explain", "."],
        &[("IMGBUILD_ROOT", rootp)],
    );
    let text = stdout(&plan);
    assert!(text.contains("file src/util.c changed"), "{text}");
    assert!(!text.contains("COPY a.txt /a.txt:"), "{text}");
    let (d3, run3, cached3, hashed3) = build();
    // `plan` above already re-read the one changed file and recorded it in the index.
    assert_eq!(hashed3, 0);
    assert_ne!(d1, d3);
    // COPY src and the COPY after it re-run; the base stage's COPY is cached.
    assert_eq!((run3, cached3), (2, 1));
}

#[test]
fn local_and_tar_outputs_hold_the_root_filesystem() {
    let dir = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch AS one\nCOPY --chmod=750 x /x\nCOPY <<EOF /etc/motd\nhi $NAME\nEOF\nFROM scratch\nCOPY --from=one / /copied/\nCOPY --chown=7:8 x /y/\n",
        ),
        ("x", b"x-content"),
    ]);
    let root = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let local = out_dir.path().join("fs");
    let tar = out_dir.path().join("fs.tar");
    let out = imgbuild_env(
        dir.path(),
        &[
            "build",
            "-o",
            &format!("type=local,dest={}", local.display()),
            "-o",
            &format!("type=tar,dest={}", tar.display()),
            ".",
        ],
        &[("IMGBUILD_ROOT", root.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    use std::os::unix::fs::MetadataExt;
    let x = std::fs::metadata(local.join("copied/x")).unwrap();
    assert_eq!(x.mode() & 0o7777, 0o750);
    assert_eq!(
        std::fs::read_to_string(local.join("copied/etc/motd")).unwrap(),
        "hi \n"
    );
    let y = std::fs::metadata(local.join("y/x")).unwrap();
    if crate::is_root() {
        assert_eq!((y.uid(), y.gid()), (7, 8));
    }
    let list = Command::new("tar")
        .args(["-tvf", tar.to_str().unwrap()])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("copied/x"), "{list}");
    assert!(list.contains("7/8"), "{list}");
}

#[test]
fn images_and_du_and_prune() {
    let ctx = hello_context();
    let root = tempfile::tempdir().unwrap();
    let rootp = root.path().to_str().unwrap();
    let env = [("IMGBUILD_ROOT", rootp)];
    let out = imgbuild_env(ctx.path(), &["-t", "hello:2", "."], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let digest = digest_line(&out);
    let images = stdout(&imgbuild_env(ctx.path(), &["images"], &env));
    assert!(
        images.contains("hello:2") && images.contains(&digest),
        "{images}"
    );
    let du = stdout(&imgbuild_env(ctx.path(), &["du"], &env));
    assert!(du.contains("blobs"), "{du}");
    let pruned = imgbuild_env(ctx.path(), &["prune", "--all"], &env);
    assert_eq!(pruned.status.code(), Some(0), "{}", stderr(&pruned));
    // The tagged image survives: it can still be written out.
    let out_dir = tempfile::tempdir().unwrap();
    let out = imgbuild_env(
        ctx.path(),
        &[
            "build",
            "-o",
            &format!("type=oci,dest={}", out_dir.path().join("x.tar").display()),
            ".",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(digest_line(&out), digest);
}

#[test]
fn hostile_context_and_sources_stay_contained() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    let root = tempfile::tempdir().unwrap();
    let env = [("IMGBUILD_ROOT", root.path().to_str().unwrap())];

    // A source that is a link to outside the context is refused, never followed out.
    let dir = scratch(&[("Dockerfile", b"FROM scratch\nCOPY link /link\n")]);
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
    let out = imgbuild_env(dir.path(), &["build", "."], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not lead to anything in the build context"),
        "{err}"
    );

    // Inside a copied directory the same link is kept as a link; `../x` means the context's x.
    let dir = scratch(&[
        ("Dockerfile", b"FROM scratch\nCOPY d /d\nCOPY ../x /x\n"),
        ("x", b"inside"),
        ("d/f", b"f"),
    ]);
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("d/link")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let dest = local.path().join("fs");
    let out = imgbuild_env(
        dir.path(),
        &[
            "build",
            "-o",
            &format!("type=local,dest={}", dest.display()),
            ".",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let l = std::fs::symlink_metadata(dest.join("d/link")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(dest.join("d/link")).unwrap(),
        outside.path().join("secret")
    );
    assert_eq!(std::fs::read(dest.join("x")).unwrap(), b"inside");
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"outside"
    );
}

/// Sets the mtime of `path` (and everything under it) to an hour ago.
fn backdate(path: &Path) {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            backdate(&e.unwrap().path());
        }
    } else {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }
}

#[test]
fn plan_renders_as_text_json_and_graphviz() {
    let dir = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch AS a\nCOPY x /x\nFROM scratch AS b\nCOPY x /y\nFROM scratch\nCOPY --from=a /x /x\nCOPY --from=b /y /y\n",
        ),
        ("x", b"x"),
    ]);
    let root = tempfile::tempdir().unwrap();
    let env = [("IMGBUILD_ROOT", root.path().to_str().unwrap())];
    let text = stdout(&imgbuild_env(dir.path(), &["plan", "."], &env));
    assert_eq!(
        text.lines().filter(|l| l.contains(" build ")).count(),
        4,
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&imgbuild_env(
        dir.path(),
        &["plan", "--format", "json", "."],
        &env,
    )))
    .unwrap();
    let steps = json["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["key"].as_str().unwrap().len() == 64));
    let dot = stdout(&imgbuild_env(
        dir.path(),
        &["plan", "--format", "dot", "."],
        &env,
    ));
    require_tool("dot", "graphviz");
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let svg = child.wait_with_output().unwrap();
    assert!(svg.status.success(), "graphviz rejected:\n{dot}");
    assert!(String::from_utf8_lossy(&svg.stdout).contains("<svg"));
    // After a build every layer step shows as cached.
    assert!(
        imgbuild_env(dir.path(), &["build", "."], &env)
            .status
            .success()
    );
    let text = stdout(&imgbuild_env(dir.path(), &["plan", "."], &env));
    assert_eq!(
        text.lines().filter(|l| l.contains(" cached ")).count(),
        4,
        "{text}"
    );
}
