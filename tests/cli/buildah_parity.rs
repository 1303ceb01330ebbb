//! Parity with buildah: the files each RUN creates, changes and deletes end up the same as in
//! the image buildah builds from the same Dockerfile on the same base.
//!
//! The base is examples/busybox built by imgbuild, exported as a docker archive and pulled into a
//! private buildah store under the name the Dockerfile uses. Both tools then build the same
//! Dockerfile; imgbuild's root filesystem comes from `-o type=local`, buildah's from
//! `buildah from` + `buildah mount` (we run as root). The two trees are listed — path, type, mode, uid, gid, size, link
//! target, sha256 of content, and which paths are hard links of one another — and compared.
//! Modification times are left out (each tool stamps its own); no file written here embeds a
//! timestamp.

use crate::{imgbuild_env, is_root, require_tool, stderr};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The name both tools resolve: a tag in imgbuild's store and in buildah's.
const BASE: &str = "localhost/parity-busybox:latest";

/// Several RUN steps on the busybox base. The first makes files the later ones change, so
/// deletions, overwrites and opaque directories apply to lower layers, not to the same step.
const DOCKERFILE: &str = r#"FROM localhost/parity-busybox:latest
RUN mkdir -p /srv/base/keep/sub /srv/base/gone /etc \
 && echo one > /srv/base/keep/a && echo deep > /srv/base/keep/sub/x && echo two > /srv/base/gone/b \
 && echo old > /etc/motd && echo cfg > /etc/app.conf && ln -s /etc/motd /etc/motd.link \
 && chmod 0711 /srv/base/keep
RUN mkdir -p /opt/app/bin /opt/empty && printf 'hi\n' > /opt/app/bin/run && chmod 0755 /opt/app/bin/run \
 && chmod 0700 /opt/app && chmod 1777 /opt/empty && echo secret > /opt/app/key && chmod 0400 /opt/app/key \
 && chown 1000:1000 /opt/app/key && chown 12:34 /opt/app/bin && echo suid > /opt/suid && chmod 4755 /opt/suid \
 && echo sgid > /opt/sgid && chmod 2750 /opt/sgid && chown 0:50 /opt/sgid \
 && ln -s bin/run /opt/app/run-link && ln -s /nonexistent /opt/dangling && chown -h 7:8 /opt/dangling \
 && ln /opt/app/bin/run /opt/app/hard
RUN rm /bin/wget /etc/app.conf && rm -rf /srv/base/gone && echo new > /etc/motd \
 && rm /bin/vi && echo 'not a link any more' > /bin/vi && chmod 0644 /bin/vi \
 && rm -rf /srv/base/keep && mkdir /srv/base/keep && echo fresh > /srv/base/keep/c && chmod 0750 /srv/base/keep \
 && mkdir -p /new/deep/dir && echo leaf > /new/deep/dir/file && chown -R 5:6 /new && touch /opt/empty-file \
 && mkfifo /opt/fifo && chmod 0600 /opt/fifo && ln -sf motd /etc/motd.link && mkdir /opt/empty/inner
RUN rm /opt/app/hard && ln /opt/app/key /opt/app/key2 && chmod 0644 /opt/app/bin/run && rmdir /opt/empty/inner \
 && echo appended >> /srv/base/keep/c && mkdir -m 0555 /readonly-dir && rm -rf /opt/empty && mkdir /opt/empty
"#;

/// What buildah's chroot isolation leaves in the image itself: the mount points of its sandbox
/// (empty directories) and the empty files it bind-mounts its own /etc files onto. imgbuild
/// removes mount points the image did not have, so these are buildah's additions; each must be
/// an empty directory or an empty file to be left out.
const BUILDAH_ADDS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
];

/// buildah with a private store and the overlay driver. Not vfs: buildah's vfs driver finds a
/// layer's changes by comparing trees, so a file that only gained a hard link (`ln lower new`)
/// is not in the layer and the new name becomes an unlinked copy; with overlay, as in imgbuild
/// (and BuildKit), the layer is the upper dir, where overlayfs copied the file up and linked it.
struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "overlay"])
            .args(args)
            .output()
            .expect("run buildah");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Buildah {
    /// Leaves no overlay mounted under the temp dir, also when an assertion failed.
    fn drop(&mut self) {
        for args in [&["umount", "--all"][..], &["rm", "--all"]] {
            let _ = Command::new("buildah")
                .arg("--root")
                .arg(&self.root)
                .arg("--runroot")
                .arg(&self.runroot)
                .args(["--storage-driver", "overlay"])
                .args(args)
                .output();
        }
    }
}

fn imgbuild_build(ctx: &Path, root: &Path, args: &[&str]) {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    let ctx_s = ctx.to_str().unwrap();
    all.push(ctx_s);
    let out = imgbuild_env(ctx, &all, &[("IMGBUILD_ROOT", root.to_str().unwrap())]);
    assert!(out.status.success(), "imgbuild {all:?}: {}", stderr(&out));
}

/// One line per entry under `dir` (the root itself left out), keyed by absolute path.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    let mut first_of_inode: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = format!("/{}", p.strip_prefix(dir).unwrap().display());
            let m = std::fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let mut line = format!(
                "{} mode={:o} uid={} gid={}",
                match () {
                    _ if t.is_dir() => "dir",
                    _ if t.is_symlink() => "symlink",
                    _ if t.is_file() => "file",
                    _ if t.is_fifo() => "fifo",
                    _ if t.is_char_device() => "chardev",
                    _ if t.is_block_device() => "blockdev",
                    _ => "socket",
                },
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            );
            if t.is_dir() {
                stack.push(p.clone());
            } else if t.is_symlink() {
                write!(line, " -> {}", std::fs::read_link(&p).unwrap().display()).unwrap();
            } else if t.is_file() {
                let hash = Sha256::digest(std::fs::read(&p).unwrap());
                write!(line, " size={} sha256={hash:x}", m.len()).unwrap();
            } else if t.is_char_device() || t.is_block_device() {
                write!(line, " rdev={:x}", m.rdev()).unwrap();
            }
            if !t.is_dir() && m.nlink() > 1 {
                // Hard links: name the group by its first path in sorted order (below).
                first_of_inode
                    .entry((m.dev(), m.ino()))
                    .and_modify(|f| {
                        if rel < *f {
                            *f = rel.clone()
                        }
                    })
                    .or_insert_with(|| rel.clone());
                write!(line, " inode=({},{})", m.dev(), m.ino()).unwrap();
            }
            entries.insert(rel, line);
        }
    }
    // Replace inode numbers (which differ between trees) by the group's first path.
    for line in entries.values_mut() {
        if let Some(at) = line.find(" inode=(") {
            let inode = &line[at + 8..line.len() - 1];
            let (dev, ino) = inode.split_once(',').unwrap();
            let key = (dev.parse().unwrap(), ino.parse().unwrap());
            let first = first_of_inode[&key].clone();
            line.truncate(at);
            write!(line, " hardlink-group={first}").unwrap();
        }
    }
    entries
}

fn render(entries: &BTreeMap<String, String>) -> String {
    entries.iter().map(|(p, l)| format!("{p} {l}\n")).collect()
}

#[test]
fn run_layers_match_buildah() {
    require_tool("buildah", "buildah");
    assert!(
        is_root(),
        "RUN and `buildah mount` need root (CI runs as root)"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox not found: install the Debian package busybox-static"
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let root = w.join("imgbuild-root");
    let buildah = Buildah {
        root: w.join("buildah-root"),
        runroot: w.join("buildah-runroot"),
    };

    // The base: examples/busybox, built by imgbuild, tagged with BASE in both stores.
    let base_ctx = w.join("base");
    std::fs::create_dir(&base_ctx).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/busybox/Dockerfile");
    std::fs::copy(example, base_ctx.join("Dockerfile")).unwrap();
    std::fs::copy("/bin/busybox", base_ctx.join("busybox")).unwrap();
    // A docker archive: `buildah pull oci:DIR` would name the image after the directory's
    // path, which a temp dir's capitals make an invalid reference.
    let archive = w.join("base.tar");
    imgbuild_build(
        &base_ctx,
        &root,
        &[
            "-t",
            BASE,
            "-o",
            &format!("type=docker,dest={}", archive.display()),
        ],
    );
    let id = buildah.run(&[
        "pull",
        "--quiet",
        &format!("docker-archive:{}", archive.display()),
    ]);
    buildah.run(&["tag", &id, BASE]);

    let ctx = w.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();

    let ours = w.join("imgbuild-fs");
    imgbuild_build(
        &ctx,
        &root,
        &[
            "-t",
            "parity",
            "-o",
            &format!("type=local,dest={}", ours.display()),
        ],
    );
    buildah.run(&[
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--quiet",
        "-t",
        "localhost/parity:latest",
        ctx.to_str().unwrap(),
    ]);
    let container = buildah.run(&["from", "--quiet", "localhost/parity:latest"]);
    let theirs = PathBuf::from(buildah.run(&["mount", &container]));

    let mine = listing(&ours);
    let mut peer = listing(&theirs);
    for path in BUILDAH_ADDS {
        if let Some(line) = peer.remove(*path) {
            assert!(
                line.starts_with("dir ")
                    && !peer.keys().any(|p| p.starts_with(&format!("{path}/")))
                    || line.contains(" size=0 "),
                "buildah's {path} is not an empty stub: {line}"
            );
        }
    }
    // The comparison is meaningful only if the tree holds what the Dockerfile made.
    for expected in [
        "/opt/app/key2",
        "/new/deep/dir/file",
        "/srv/base/keep/c",
        "/opt/fifo",
    ] {
        assert!(
            mine.contains_key(expected),
            "{expected} missing:\n{}",
            render(&mine)
        );
    }
    let (mine, peer) = (render(&mine), render(&peer));
    if mine != peer {
        let only = |a: &str, b: &str| -> String {
            let other: std::collections::BTreeSet<&str> = b.lines().collect();
            a.lines()
                .filter(|l| !other.contains(l))
                .map(|l| format!("  {l}\n"))
                .collect()
        };
        panic!(
            "root filesystems differ\nonly imgbuild:\n{}only buildah:\n{}",
            only(&mine, &peer),
            only(&peer, &mine)
        );
    }
}
