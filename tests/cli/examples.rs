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
    copy_tree(&repo().join("examples").join(name), dir.path());
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            std::fs::create_dir(to.join(e.file_name())).unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else if t.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Debian bookworm (minbase + gcc + libc6-dev) as a rootfs tar, made once with mmdebstrap.
fn debian_rootfs() -> PathBuf {
    // Tests run as threads of one process: the first makes the tar, the others wait for it.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let tar = data_dir().join("debian-bookworm-gcc.tar");
    if !tar.exists() {
        require_tool("mmdebstrap", "mmdebstrap");
        // mmdebstrap picks the output format from the name: keep the .tar ending. The pid keeps
        // two test processes from writing one file.
        let part = data_dir().join(format!(
            "debian-bookworm-gcc.{}.part.tar",
            std::process::id()
        ));
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

/// Builds `ctx` into the store `root`; returns the build's output (plain progress).
fn build(ctx: &Path, root: &Path, args: &[&str]) -> String {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    let ctx_s = ctx.to_str().unwrap();
    all.push(ctx_s);
    let out = imgbuild_env(ctx, &all, &[("IMGBUILD_ROOT", root.to_str().unwrap())]);
    assert!(out.status.success(), "{}", stderr(&out));
    format!("{}{}", stderr(&out), stdout(&out))
}

/// `busybox:latest` (examples/busybox) in the store `root`.
fn busybox_image(root: &Path) {
    let bb = example_copy("busybox");
    assert!(
        Path::new("/bin/busybox").exists(),
        "install the Debian package busybox-static"
    );
    std::fs::copy("/bin/busybox", bb.path().join("busybox")).unwrap();
    build(bb.path(), root, &["-t", "busybox:latest"]);
}

/// `debian:bookworm-build` (examples/debian) in the store `root`.
fn debian_image(root: &Path) {
    let deb = example_copy("debian");
    let rootfs = deb.path().join("rootfs.tar");
    if std::fs::hard_link(debian_rootfs(), &rootfs).is_err() {
        std::fs::copy(debian_rootfs(), &rootfs).unwrap();
    }
    build(deb.path(), root, &["-t", "debian:bookworm-build"]);
}

/// Every regular file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files_under(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
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

    /// The loaded image whose `repository:tag` contains `name`.
    fn image(&self, name: &str) -> String {
        let images = self.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        images
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not loaded: {images}"))
            .to_owned()
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

    busybox_image(root.path());

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

    debian_image(root.path());

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
    let name = |n: &str| podman.image(n);
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

/// The `RUN` output line of examples/cache-mount's build script.
fn compiled_line(log: &str) -> String {
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("compiled ") && l.ends_with(" files"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one \"compiled N of M files\" line expected:\n{log}"
    );
    let l = lines[0];
    l[l.find("compiled ").unwrap()..].to_owned()
}

#[test]
fn cache_mount_example_recompiles_only_the_changed_file() {
    assert!(
        is_root(),
        "the examples RUN commands: run the tests as root"
    );
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    debian_image(root.path());

    // Extract the Debian layers before the timed builds (examples/multistage-c RUNs on them too),
    // so the first build's time is the compiling, not the one-time extraction.
    let warm = example_copy("multistage-c");
    build(warm.path(), root.path(), &[]);

    let ctx = example_copy("cache-mount");
    let sources = std::fs::read_dir(ctx.path().join("src"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("c".as_ref()))
        .count();
    assert_eq!(sources, 20);
    let local = |n: &str| out.path().join(n);
    let build_to = |dir: &Path| {
        let t = std::time::Instant::now();
        let log = build(
            ctx.path(),
            root.path(),
            &[
                "-t",
                "calc",
                "-o",
                &format!("type=local,dest={}", dir.display()),
            ],
        );
        (log, t.elapsed())
    };
    let calc = |dir: &Path, arg: &str| {
        let o = Command::new(dir.join("calc")).arg(arg).output().unwrap();
        assert!(o.status.success());
        stdout(&o)
    };

    let (log, first) = build_to(&local("first"));
    assert_eq!(compiled_line(&log), "compiled 20 of 20 files");
    assert!(calc(&local("first"), "7").contains("square(7) = 49\n"));

    // Changing one source re-runs COPY, hence the RUN; the cache mount still holds the
    // other 19 objects.
    let square = ctx.path().join("src/square.c");
    let text = std::fs::read_to_string(&square).unwrap();
    assert!(text.contains("return n * n;"), "{text}");
    std::fs::write(
        &square,
        text.replace("return n * n;", "return n * n + 1000;"),
    )
    .unwrap();
    let (log, second) = build_to(&local("second"));
    assert_eq!(compiled_line(&log), "compiled 1 of 20 files");
    let said = calc(&local("second"), "7");
    assert!(said.contains("square(7) = 1049\n"), "{said}");
    assert!(said.contains("fib(7) = 13\n"), "{said}");
    println!(
        "cache-mount example: first build {first:.2?}, second build (1 file changed) {second:.2?}"
    );

    // The image runs under podman (the build is all cache hits now: no RUN runs).
    let tar = out.path().join("calc.tar");
    let log = build(
        ctx.path(),
        root.path(),
        &[
            "-t",
            "calc",
            "-o",
            &format!("type=docker,dest={}", tar.display()),
        ],
    );
    assert!(!log.contains("compiled "), "{log}");
    let podman = Podman::new();
    podman.run(&["load", "-i", tar.to_str().unwrap()]);
    let said = podman.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        &podman.image("calc"),
        "7",
    ]);
    assert!(said.contains("square(7) = 1049\n"), "{said}");

    // The objects stay in the cache mount: the image is the one binary.
    for dir in [local("first"), local("second")] {
        let mut files = Vec::new();
        files_under(&dir, &mut files);
        assert_eq!(files, [dir.join("calc")]);
    }
}

/// `bytes`, decompressed when it is a gzip or zstd stream (the store's compressed blobs).
fn plain_bytes(bytes: Vec<u8>) -> Vec<u8> {
    let tool = match bytes.get(..4) {
        Some([0x1f, 0x8b, _, _]) => "gzip",
        Some([0x28, 0xb5, 0x2f, 0xfd]) => "zstd",
        _ => return bytes,
    };
    let mut child = Command::new(tool)
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&bytes);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(o.status.success(), "{tool} -dc failed");
    o.stdout
}

#[test]
fn secret_example_uses_the_secret_and_stores_it_nowhere() {
    use sha2::Digest;
    assert!(
        is_root(),
        "the examples RUN commands: run the tests as root"
    );
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    busybox_image(root.path());

    // A long random marker, kept outside the context.
    let mut random = [0u8; 24];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut random,
    )
    .unwrap();
    let marker: String = std::iter::once("imgbuild-example-secret-".to_owned())
        .chain(random.iter().map(|b| format!("{b:02x}")))
        .collect();
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, &marker).unwrap();

    let ctx = example_copy("secret");
    let log = build(
        ctx.path(),
        root.path(),
        &[
            "--secret",
            &format!("id=token,src={}", token.display()),
            "-t",
            "secret",
            "-o",
            &format!("type=local,dest={}", out.path().join("fs").display()),
            "-o",
            &format!(
                "type=oci,dest={},tar=false,compression=uncompressed",
                out.path().join("oci").display()
            ),
            "-o",
            &format!(
                "type=docker,dest={}",
                out.path().join("secret.tar").display()
            ),
        ],
    );

    // The RUN saw the secret: the image holds its digest.
    let digest = std::fs::read_to_string(out.path().join("fs/token.sha256")).unwrap();
    let want: String = sha2::Sha256::digest(marker.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, format!("{want}\n"));
    let podman = Podman::new();
    podman.run(&[
        "load",
        "-i",
        out.path().join("secret.tar").to_str().unwrap(),
    ]);
    let said = podman.run(&["run", "--rm", "--network", "none", &podman.image("secret")]);
    assert_eq!(said, digest);

    // The value is nowhere: not in the build's output, not in any file of the store (compressed
    // blobs decompressed) or of the outputs.
    assert!(
        !log.contains(&marker),
        "the secret is in the build's output"
    );
    let mut files = Vec::new();
    files_under(root.path(), &mut files);
    files_under(out.path(), &mut files);
    assert!(files.len() > 20, "only {} files to search", files.len());
    let has = |bytes: &[u8], needle: &str| {
        let needle = needle.as_bytes();
        bytes.windows(needle.len()).any(|w| w == needle)
    };
    // What the RUN wrote, the digest, is found the same way: in the store's (compressed)
    // layer, the OCI layout and the Docker archive. The search does reach into layers.
    let mut digest_in = [false; 3];
    for f in &files {
        let bytes = plain_bytes(std::fs::read(f).unwrap());
        assert!(!has(&bytes, &marker), "the secret is in {}", f.display());
        if has(&bytes, &want) {
            let at = [
                f.starts_with(root.path().join("blobs")),
                f.starts_with(out.path().join("oci")),
                f.starts_with(out.path().join("secret.tar")),
            ];
            for (seen, here) in digest_in.iter_mut().zip(at) {
                *seen |= here;
            }
        }
    }
    assert_eq!(
        digest_in, [true; 3],
        "the digest not found in store blobs, OCI, archive"
    );
}
