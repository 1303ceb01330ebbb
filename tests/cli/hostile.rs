//! Hostile inputs: `ADD` of local archives built to escape (`..`, absolute names, symlinks then
//! files through them, hard links to host files, device nodes), compressed archives, and
//! context paths that try to leave the context or reach ignored files.

use crate::{imgbuild_env, require_tool, scratch, stderr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

/// A ustar archive written by hand, so that it can hold what tar writers refuse to write.
#[derive(Default)]
struct Ustar(Vec<u8>);

const REGULAR: u8 = b'0';
const HARDLINK: u8 = b'1';
const SYMLINK: u8 = b'2';
const CHARDEV: u8 = b'3';
const DIRECTORY: u8 = b'5';

impl Ustar {
    fn entry(&mut self, name: &str, kind: u8, link: &str, data: &[u8]) -> &mut Self {
        let mut h = [0u8; 512];
        let field = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
            assert!(v.len() <= len, "{v:?} too long for a ustar field");
            h[at..at + v.len()].copy_from_slice(v);
        };
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0width$o}\0", width = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        field(&mut h, 0, 100, name.as_bytes());
        let mode = if kind == DIRECTORY { 0o755 } else { 0o644 };
        octal(&mut h, 100, 8, mode);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, 1_000_000);
        h[156] = kind;
        field(&mut h, 157, 100, link.as_bytes());
        field(&mut h, 257, 8, b"ustar\x0000");
        field(&mut h, 265, 32, b"root");
        field(&mut h, 297, 32, b"root");
        if kind == CHARDEV {
            octal(&mut h, 329, 8, 1); // 1:3 is /dev/null
            octal(&mut h, 337, 8, 3);
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, REGULAR, "", data)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

fn build_local(ctx: &Path, root: &Path, dest: &Path) -> Output {
    imgbuild_env(
        ctx,
        &[
            "build",
            "--progress=plain",
            "-o",
            &format!("type=local,dest={}", dest.display()),
            ".",
        ],
        &[("IMGBUILD_ROOT", root.to_str().unwrap())],
    )
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A fingerprint of a host file that must not change: content, inode, link count, mtime.
fn fingerprint(p: &Path) -> (Vec<u8>, u64, u64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (std::fs::read(p).unwrap(), m.ino(), m.nlink(), m.mtime())
}

#[test]
fn escaping_archive_members_stay_inside_the_image() {
    let sandbox = tempfile::tempdir().unwrap();
    let s = sandbox.path();
    // The build's directories sit three levels deep, so that `../../..` from inside them lands
    // in the sandbox, where a sentinel directory watches for anything written.
    let ctx = s.join("a/b/ctx");
    let root = s.join("a/b/root");
    let out = s.join("a/b/out");
    let sentinel = s.join("sentinel");
    for d in [&ctx, &out, &sentinel] {
        std::fs::create_dir_all(d).unwrap();
    }
    let outside = s.join("outside.txt");
    std::fs::write(&outside, b"outside").unwrap();
    let sentinel_rel = sentinel.strip_prefix("/").unwrap().display().to_string();
    let passwd = fingerprint(Path::new("/etc/passwd"));

    let archive = Ustar::default()
        // The sentinel's path exists inside the archive too, so that links to it resolve there.
        .entry(&format!("{sentinel_rel}/"), DIRECTORY, "", b"")
        .file("../evil", b"dotdot")
        .file("../../../../../../../../evil2", b"deep dotdot")
        .file("/abs", b"absolute")
        .entry("to-sentinel", SYMLINK, sentinel.to_str().unwrap(), b"")
        .file("to-sentinel/pwned", b"through an absolute link")
        .entry("a", SYMLINK, "/", b"")
        .file(&format!("a/{sentinel_rel}/pwned-via-root"), b"through /")
        .entry("b", SYMLINK, "../../..", b"")
        .file("b/x", b"through ../../..")
        .entry("c", SYMLINK, "../outside.txt", b"")
        .file("c", b"replaces the link, not its target")
        .file("etc/passwd", b"the archive's own passwd\n")
        .entry("passwd-link", HARDLINK, "/etc/passwd", b"")
        .entry("dev/null2", CHARDEV, "", b"")
        .entry("d/", DIRECTORY, "", b"")
        .file("d/../d/../inside", b"cleaned")
        .finish();
    std::fs::write(ctx.join("hostile.tar"), &archive).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nADD hostile.tar /dst/\n",
    )
    .unwrap();

    let fs = out.join("fs");
    let o = build_local(&ctx, &root, &fs);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Nothing outside: the sentinel is empty, the files beside the build are untouched, and
    // /etc/passwd is as it was (same content, same inode, no new link).
    assert_eq!(tree(&sentinel), Vec::<String>::new());
    assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
    assert_eq!(fingerprint(Path::new("/etc/passwd")), passwd);
    let mut around: Vec<String> = std::fs::read_dir(s)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    around.sort();
    assert_eq!(around, ["a", "outside.txt", "sentinel"]);
    let mut beside: Vec<String> = std::fs::read_dir(s.join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    beside.sort();
    assert_eq!(beside, ["ctx", "out", "root"]);
    assert_eq!(tree(&out).first().map(String::as_str), Some("fs"));
    assert!(
        tree(&out).iter().all(|p| p.starts_with("fs")),
        "{:?}",
        tree(&out)
    );
    crate::robust::assert_store_sound(&root, "after ADD of a hostile archive");

    // Everything landed inside /dst, names cleaned as BuildKit cleans them.
    let dst = fs.join("dst");
    let read = |p: &str| std::fs::read(dst.join(p)).unwrap_or_else(|e| panic!("/dst/{p}: {e}"));
    assert_eq!(read("evil"), b"dotdot");
    assert_eq!(read("evil2"), b"deep dotdot");
    assert_eq!(read("abs"), b"absolute");
    assert_eq!(read("inside"), b"cleaned");
    // Links are resolved inside the archive's own tree while unpacking (chroot-style).
    assert_eq!(
        read(&format!("{sentinel_rel}/pwned")),
        b"through an absolute link"
    );
    assert_eq!(
        read(&format!("{sentinel_rel}/pwned-via-root")),
        b"through /"
    );
    assert_eq!(read("x"), b"through ../../..");
    assert_eq!(read("c"), b"replaces the link, not its target");
    // The hard link names the archive's own /etc/passwd.
    assert_eq!(read("passwd-link"), b"the archive's own passwd\n");
    assert_eq!(
        std::fs::metadata(dst.join("passwd-link")).unwrap().ino(),
        std::fs::metadata(dst.join("etc/passwd")).unwrap().ino()
    );
    // The links are in the image as links (harmless there: they point inside it).
    assert_eq!(
        std::fs::read_link(dst.join("b")).unwrap(),
        Path::new("../../..")
    );
    assert_eq!(std::fs::read_link(dst.join("a")).unwrap(), Path::new("/"));
    // Device nodes are not created from a build context's archive, root or not.
    assert!(!dst.join("dev/null2").exists(), "{:?}", tree(&dst));
}

#[test]
fn an_archive_writing_through_a_dangling_link_fails_without_writing_outside() {
    // `l -> /somewhere` then `l/f`: /somewhere is not in the archive's tree. Extraction does not
    // create directories through a dangling link (BuildKit would create /somewhere inside the
    // image); it fails, naming the link, and writes nothing anywhere.
    let sentinel = tempfile::tempdir().unwrap();
    let archive = Ustar::default()
        .entry("l", SYMLINK, sentinel.path().to_str().unwrap(), b"")
        .file("l/f", b"through a dangling link")
        .finish();
    let ctx = scratch(&[
        ("Dockerfile", b"FROM scratch\nADD a.tar /dst/\n"),
        ("a.tar", &archive),
    ]);
    let work = tempfile::tempdir().unwrap();
    let fs = work.path().join("fs");
    let o = build_local(ctx.path(), &work.path().join("root"), &fs);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("a.tar") && err.contains("/l:"), "{err}");
    assert_eq!(tree(sentinel.path()), Vec::<String>::new());
    assert!(!fs.exists());
    crate::robust::assert_store_sound(&work.path().join("root"), "after a failed ADD");
}

#[test]
fn an_archive_hard_link_to_a_host_file_fails_clearly() {
    let passwd = fingerprint(Path::new("/etc/passwd"));
    let archive = Ustar::default()
        .file("ok", b"ok")
        .entry("steal", HARDLINK, "/etc/passwd", b"")
        .finish();
    let ctx = scratch(&[
        ("Dockerfile", b"FROM scratch\nADD a.tar /dst/\n"),
        ("a.tar", &archive),
    ]);
    let work = tempfile::tempdir().unwrap();
    let fs = work.path().join("fs");
    let o = build_local(ctx.path(), &work.path().join("root"), &fs);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a.tar") && err.contains("steal") && err.contains("etc/passwd"),
        "{err}"
    );
    assert!(!fs.exists());
    assert_eq!(fingerprint(Path::new("/etc/passwd")), passwd);
    crate::robust::assert_store_sound(&work.path().join("root"), "after a failed ADD");
}

#[test]
fn compressed_archives_unpack() {
    let tar = Ustar::default()
        .entry("top/", DIRECTORY, "", b"")
        .file("top/file.txt", b"payload")
        .entry("top/link", SYMLINK, "file.txt", b"")
        .entry("top/hard", HARDLINK, "top/file.txt", b"")
        .finish();
    let ctx = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch\n\
              ADD plain.tar /plain/\n\
              ADD a.tar.gz /gz/\n\
              ADD a.tar.bz2 /bz2/\n\
              ADD a.tar.xz /xz/\n\
              ADD a.tar.zst /zst/\n\
              ADD notatar.gz /copied/\n\
              COPY a.tar.gz /not-unpacked/\n",
        ),
        ("plain.tar", &tar),
    ]);
    let compress = |tool: &str, package: &str, input: &[u8]| -> Vec<u8> {
        require_tool(tool, package);
        let mut child = Command::new(tool)
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            std::io::Write::write_all(&mut stdin, &input).unwrap();
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        assert!(out.status.success(), "{tool} failed");
        out.stdout
    };
    for (name, tool, package) in [
        ("a.tar.gz", "gzip", "gzip"),
        ("a.tar.bz2", "bzip2", "bzip2"),
        ("a.tar.xz", "xz", "xz-utils"),
        ("a.tar.zst", "zstd", "zstd"),
    ] {
        std::fs::write(ctx.path().join(name), compress(tool, package, &tar)).unwrap();
    }
    let not_a_tar = compress("gzip", "gzip", b"just text, compressed");
    std::fs::write(ctx.path().join("notatar.gz"), &not_a_tar).unwrap();

    let work = tempfile::tempdir().unwrap();
    let fs = work.path().join("fs");
    let o = build_local(ctx.path(), &work.path().join("root"), &fs);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for d in ["plain", "gz", "bz2", "xz", "zst"] {
        assert_eq!(
            std::fs::read(fs.join(d).join("top/file.txt")).unwrap(),
            b"payload",
            "{d}"
        );
        assert_eq!(
            std::fs::read_link(fs.join(d).join("top/link")).unwrap(),
            Path::new("file.txt")
        );
        // Hard links move under the destination with what they link to.
        let ino = |p: &str| std::fs::metadata(fs.join(d).join(p)).unwrap().ino();
        assert_eq!(ino("top/hard"), ino("top/file.txt"), "{d}");
    }
    // A compressed file that is not an archive is copied as it is; COPY never unpacks.
    assert_eq!(
        std::fs::read(fs.join("copied/notatar.gz")).unwrap(),
        not_a_tar
    );
    assert_eq!(
        std::fs::read(fs.join("not-unpacked/a.tar.gz")).unwrap(),
        std::fs::read(ctx.path().join("a.tar.gz")).unwrap()
    );
}

#[test]
fn context_paths_stay_inside_the_context_and_ignored_files_stay_out() {
    let sandbox = tempfile::tempdir().unwrap();
    let ctx = sandbox.path().join("a/b/ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // What `../../x` would name if it were taken literally.
    std::fs::write(sandbox.path().join("a/x"), b"outside").unwrap();
    std::fs::write(ctx.join("x"), b"inside").unwrap();
    std::fs::write(ctx.join("secret.txt"), b"secret").unwrap();
    std::fs::create_dir(ctx.join("keys")).unwrap();
    std::fs::write(ctx.join("keys/id"), b"key").unwrap();
    std::fs::write(ctx.join("public.txt"), b"public").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "secret.txt\nkeys\n").unwrap();
    let root = sandbox.path().join("root");
    let fs = sandbox.path().join("fs");

    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY ../../x /x\nCOPY ../../../../x /y\nCOPY /x /z\nCOPY . /all/\n",
    )
    .unwrap();
    let o = build_local(&ctx, &root, &fs);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for p in ["x", "y", "z", "all/x"] {
        assert_eq!(std::fs::read(fs.join(p)).unwrap(), b"inside", "{p}");
    }
    assert_eq!(std::fs::read(fs.join("all/public.txt")).unwrap(), b"public");
    assert!(!fs.join("all/secret.txt").exists());
    assert!(!fs.join("all/keys").exists());

    // A wildcard matching only ignored files matches nothing, which (as in BuildKit) is not an
    // error: nothing is copied.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY secret.* keys* /s/\nCOPY public.txt /s/\n",
    )
    .unwrap();
    let o = build_local(&ctx, &root, &fs);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(tree(&fs.join("s")), ["public.txt"]);

    // Naming an ignored file, directly or under an ignored directory, finds nothing to copy:
    // the build fails and names the source.
    for (line, names) in [
        ("COPY secret.txt /s", "secret.txt"),
        ("ADD secret.txt /s", "secret.txt"),
        ("COPY keys/id /k", "keys/id"),
        ("COPY keys /k", "keys"),
        ("COPY ./keys/../secret.txt /s", "secret.txt"),
    ] {
        std::fs::write(ctx.join("Dockerfile"), format!("FROM scratch\n{line}\n")).unwrap();
        let o = build_local(&ctx, &root, &sandbox.path().join("never"));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{line}: {err}");
        assert!(err.contains(names), "{line}: {err}");
        assert!(!sandbox.path().join("never").exists());
    }
}
