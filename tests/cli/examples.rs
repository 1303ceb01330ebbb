//! The examples build as the README says, and run under podman.

use crate::{imgbuild_env, is_root, require_tool, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Test data that is expensive to make, kept between runs under target/.
fn data_dir() -> PathBuf {
    let d = repo().join("target/test-data");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of `examples/NAME` in a scratch dir on the same filesystem as the test data.
fn example_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(data_dir()).unwrap();
    for e in std::fs::read_dir(repo().join("examples").join(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    dir
}

/// Debian bookworm (minbase + gcc + libc6-dev) as a rootfs tar, made once with mmdebstrap.
fn debian_rootfs() -> PathBuf {
    let tar = data_dir().join("debian-bookworm-gcc.tar");
    if !tar.exists() {
        require_tool("mmdebstrap", "mmdebstrap");
        // mmdebstrap picks the output format from the name: keep the .tar ending.
        let part = data_dir().join("debian-bookworm-gcc.part.tar");
        let out = Command::new("mmdebstrap")
            .args([
                "--variant=minbase",
                "--include=gcc,libc6-dev",
                "--quiet",
                "bookworm",
            ])
            .arg(&part)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mmdebstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&part, &tar).unwrap();
    }
    tar
}

fn build(ctx: &Path, root: &Path, args: &[&str]) -> String {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    let ctx_s = ctx.to_str().unwrap();
    all.push(ctx_s);
    let out = imgbuild_env(ctx, &all, &[("IMGBUILD_ROOT", root.to_str().unwrap())]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().last().unwrap_or_default().to_owned()
}

/// podman with a private store, runc and the rlimit fix this machine needs.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        require_tool("podman", "podman");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Podman { dir }
    }

    fn run(&self, args: &[&str]) -> String {
        let d = self.dir.path();
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn busybox_heredoc_debian_and_multistage_c_examples() {
    assert!(
        is_root(),
        "the examples RUN commands: run the tests as root"
    );
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();

    let bb = example_copy("busybox");
    assert!(
        Path::new("/bin/busybox").exists(),
        "install the Debian package busybox-static"
    );
    std::fs::copy("/bin/busybox", bb.path().join("busybox")).unwrap();
    build(bb.path(), root.path(), &["-t", "busybox:latest"]);

    let hd = example_copy("heredoc");
    let heredoc_tar = out.path().join("heredoc.tar");
    build(
        hd.path(),
        root.path(),
        &[
            "-t",
            "heredoc",
            "-o",
            &format!("type=docker,dest={}", heredoc_tar.display()),
        ],
    );

    let deb = example_copy("debian");
    let rootfs = deb.path().join("rootfs.tar");
    if std::fs::hard_link(debian_rootfs(), &rootfs).is_err() {
        std::fs::copy(debian_rootfs(), &rootfs).unwrap();
    }
    build(deb.path(), root.path(), &["-t", "debian:bookworm-build"]);

    let c = example_copy("multistage-c");
    let c_tar = out.path().join("hello-c.tar");
    let local = out.path().join("hello-fs");
    build(
        c.path(),
        root.path(),
        &[
            "-t",
            "hello-c",
            "-o",
            &format!("type=docker,dest={}", c_tar.display()),
            "-o",
            &format!("type=local,dest={}", local.display()),
        ],
    );
    // Only the binary ships: the final image holds one file.
    let files: Vec<_> = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["hello"]);

    let podman = Podman::new();
    for tar in [&heredoc_tar, &c_tar] {
        podman.run(&["load", "-i", tar.to_str().unwrap()]);
    }
    let images = podman.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let name = |n: &str| {
        images
            .lines()
            .find(|l| l.contains(n))
            .unwrap_or_else(|| panic!("{n} not loaded: {images}"))
            .to_owned()
    };
    let said = podman.run(&["run", "--rm", "--network", "none", &name("hello-c"), "x"]);
    assert_eq!(
        said,
        "hello from a static C binary built by imgbuild\narg: x\n"
    );
    let said = podman.run(&["run", "--rm", "--network", "none", &name("heredoc")]);
    assert_eq!(
        said,
        "built by a heredoc script\n[server]\nport = 8080\nwelcome\n"
    );
}
