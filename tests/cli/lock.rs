//! `ADD <git URL>` against a real `git daemon` on 127.0.0.1, and `imgbuild lock` /
//! imgbuild.lock / `build --locked` pinning git refs, `FROM` images of the local store and
//! `ADD <url>` files served by a small HTTP server.

use crate::{imgbuild_env, require_tool, scratch, stderr, stdout};
use sha2::Digest as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs git with the host's configuration ignored and a fixed identity and clock, so commits
/// are the same on every run.
fn git(dir: &Path, args: &[&str]) -> String {
    require_tool("git", "git");
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(["-c", "init.defaultBranch=main", "-c", "tag.gpgSign=false"])
        .args(["-c", "commit.gpgSign=false"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository `repo` served by `git daemon` on 127.0.0.1 (killed on drop); commits made in
/// it are what the daemon serves next.
struct Upstream {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Upstream {
    fn start() -> Upstream {
        require_tool("git", "git");
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("git")
            .arg("daemon")
            .arg("--export-all")
            .arg(format!("--base-path={}", dir.path().display()))
            .arg(format!("--port={port}"))
            .args(["--listen=127.0.0.1", "--reuseaddr"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Upstream { dir, child, port }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn url(&self) -> String {
        format!("git://127.0.0.1:{}/repo", self.port)
    }

    /// Writes files (path, content, executable) and commits them; returns the commit.
    fn commit(&self, files: &[(&str, &str, bool)], message: &str) -> String {
        let repo = self.repo();
        for (path, content, exec) in files {
            let p = repo.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", message]);
        git(&repo, &["rev-parse", "HEAD"])
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A store and a build context of their own.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(dockerfile: &str) -> Env {
        let dir = scratch(&[("ctx/Dockerfile", dockerfile.as_bytes())]);
        Env { dir }
    }

    fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn set_dockerfile(&self, text: &str) {
        std::fs::write(self.ctx().join("Dockerfile"), text).unwrap();
    }

    fn lockfile(&self) -> String {
        std::fs::read_to_string(self.ctx().join("imgbuild.lock")).unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let root = self.dir.path().join("store");
        let mut env = vec![
            ("IMGBUILD_ROOT", root.to_str().unwrap()),
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("no_proxy", "127.0.0.1,localhost"),
        ];
        env.extend_from_slice(extra);
        imgbuild_env(&self.ctx(), args, &env)
    }

    /// Builds the context into `out/`; returns the output and the steps (run, cached).
    fn build(&self, extra: &[&str]) -> (Output, (u64, u64)) {
        self.build_env(extra, &[])
    }

    fn build_env(&self, extra: &[&str], env: &[(&str, &str)]) -> (Output, (u64, u64)) {
        let _ = std::fs::remove_dir_all(self.out());
        let meta = self.dir.path().join("meta.json");
        let _ = std::fs::remove_file(&meta);
        let mut args = vec![
            "build".to_owned(),
            "--progress=plain".to_owned(),
            "--metadata-file".to_owned(),
            meta.display().to_string(),
            "-o".to_owned(),
            format!("type=local,dest={}", self.out().display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(".".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run_env(&args, env);
        let counts = std::fs::read(&meta)
            .ok()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                (
                    v["imgbuild.steps.executed"].as_u64().unwrap(),
                    v["imgbuild.steps.cached"].as_u64().unwrap(),
                )
            })
            .unwrap_or_default();
        (out, counts)
    }

    fn lock(&self) -> Output {
        self.run(&["lock", "."])
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out).lines().last().unwrap_or("").to_owned()
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mode(p: PathBuf) -> u32 {
    std::fs::symlink_metadata(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

#[test]
fn add_git_branch_tag_commit_subdir_and_keep_git_dir() {
    let up = Upstream::start();
    let first = up.commit(
        &[
            ("README", "first\n", false),
            ("bin/run.sh", "#!/bin/sh\necho run\n", true),
            ("sub/inner.txt", "inner\n", false),
        ],
        "first",
    );
    std::os::unix::fs::symlink("README", up.repo().join("link")).unwrap();
    git(&up.repo(), &["add", "link"]);
    git(&up.repo(), &["commit", "-q", "-m", "link"]);
    git(&up.repo(), &["tag", "-a", "v1", "-m", "release 1"]);
    let tagged = git(&up.repo(), &["rev-parse", "HEAD"]);
    let head = up.commit(&[("README", "second\n", false)], "second");
    let u = up.url();
    let env = Env::new(&format!(
        "FROM scratch\n\
         ADD {u}#main /branch/\n\
         ADD {u}#v1 /tag/\n\
         ADD {u}#{first} /commit/\n\
         ADD {u}#main:sub /subdir/\n\
         ADD --chown=7:8 {u}#:bin /owned/\n\
         ADD --keep-git-dir=true {u} /kept/\n"
    ));
    let (out, (run, _)) = env.build(&[]);
    ok(&out, "build");
    assert_eq!(run, 6);
    let o = env.out();
    // A branch, an annotated tag and a commit: each its own tree, without .git.
    assert_eq!(read(o.join("branch/README")), "second\n");
    assert_eq!(read(o.join("tag/README")), "first\n");
    assert_eq!(read(o.join("commit/README")), "first\n");
    assert!(!o.join("commit/link").exists(), "the link came later");
    assert!(!o.join("branch/.git").exists());
    assert_eq!(read(o.join("subdir/inner.txt")), "inner\n");
    assert!(!o.join("subdir/sub").exists() && !o.join("subdir/README").exists());
    // Git's modes, root's ownership, the epoch as mtime, symlinks kept.
    assert_eq!(mode(o.join("branch/README")), 0o644);
    assert_eq!(mode(o.join("branch/bin/run.sh")), 0o755);
    assert_eq!(mode(o.join("branch/bin")), 0o755);
    let link = std::fs::read_link(o.join("tag/link")).unwrap();
    assert_eq!(link, Path::new("README"));
    let m = std::fs::metadata(o.join("branch/README")).unwrap();
    assert_eq!(m.mtime(), 0);
    if crate::is_root() {
        assert_eq!((m.uid(), m.gid()), (0, 0));
        let m = std::fs::metadata(o.join("owned/run.sh")).unwrap();
        assert_eq!((m.uid(), m.gid()), (7, 8));
    }
    // --keep-git-dir: a repository at the commit, its files clean.
    assert_eq!(git(&o.join("kept"), &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&o.join("kept"), &["status", "--porcelain"]), "");
    assert_eq!(
        git(&o.join("kept"), &["config", "remote.origin.url"]),
        up.url()
    );
    assert_ne!(tagged, first);

    // Unknown refs and directories are errors at the ADD line, naming the URL and the ref.
    env.set_dockerfile(&format!("FROM scratch\nADD {u}#nope /x/\n"));
    let (out, _) = env.build(&[]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains(&format!("{u} has no branch or tag \"nope\"")),
        "{e}"
    );
    assert!(e.contains("Dockerfile:2"), "{e}");
    env.set_dockerfile(&format!("FROM scratch\nADD {u}#main:nodir /x/\n"));
    let (out, _) = env.build(&[]);
    let e = stderr(&out);
    assert!(
        e.contains(&format!("nodir is not a directory of {u}#main")),
        "{e}"
    );
    let gone = format!("git://127.0.0.1:{}/absent", up.port);
    env.set_dockerfile(&format!("FROM scratch\nADD {gone}#main /x/\n"));
    let (out, _) = env.build(&[]);
    let e = stderr(&out);
    assert!(e.contains(&format!("cannot resolve {gone}#main")), "{e}");
}

#[test]
fn a_new_commit_reruns_the_step_and_an_unchanged_one_hits() {
    let up = Upstream::start();
    up.commit(&[("f.txt", "one\n", false)], "one");
    let env = Env::new(&format!(
        "FROM scratch\nADD {}#main /src/\nENV X=1\n",
        up.url()
    ));
    let (out, counts) = env.build(&[]);
    let d1 = ok(&out, "first build");
    assert_eq!(counts, (1, 0));
    let (out, counts) = env.build(&[]);
    assert_eq!(ok(&out, "second build"), d1);
    assert_eq!(counts, (0, 1), "an unchanged branch is a cache hit");

    up.commit(&[("f.txt", "two\n", false)], "two");
    let (out, counts) = env.build(&[]);
    let d2 = ok(&out, "build after a commit");
    assert_eq!(counts, (1, 0), "a new commit re-runs the step");
    assert_ne!(d1, d2);
    assert_eq!(read(env.out().join("src/f.txt")), "two\n");
}

/// A one-connection-at-a-time HTTP server on 127.0.0.1 serving one body at every path.
struct Http {
    addr: SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Http {
    fn start(body: &[u8]) -> Http {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body.to_vec()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (body.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line.trim_end().is_empty() => break,
                        Ok(_) => {}
                    }
                }
                let body = b.lock().unwrap().clone();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        Http { addr, body, stop }
    }

    fn set(&self, body: &[u8]) {
        *self.body.lock().unwrap() = body.to_vec();
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

#[test]
fn the_lockfile_pins_from_add_url_and_git_refs() {
    let up = Upstream::start();
    let c1 = up.commit(&[("f.txt", "one\n", false)], "one");
    let http = Http::start(b"payload 1\n");
    let env = Env::new("FROM scratch\n");
    // A base image of the local store, and an OCI layout (which cannot be pinned).
    let base = scratch(&[
        ("Dockerfile", b"FROM scratch\nCOPY base.txt /\n"),
        ("base.txt", b"base 1\n"),
    ]);
    let layout = env.dir.path().join("layout");
    let root = env.dir.path().join("store");
    let base_build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress=plain", "-t", "base:1"];
        args.extend_from_slice(extra);
        args.push(".");
        let out = imgbuild_env(
            base.path(),
            &args,
            &[("IMGBUILD_ROOT", root.to_str().unwrap())],
        );
        ok(&out, "base build")
    };
    let base1 = base_build(&[
        "-o",
        &format!("type=oci,dest={},tar=false", layout.display()),
    ]);
    let url = format!("http://{}/payload.txt", http.addr);
    let dockerfile = format!(
        "FROM oci-layout://{} AS other\n\
         FROM base:1\n\
         COPY --from=other /base.txt /other.txt\n\
         ADD {url} /payload.txt\n\
         ADD {}#main:. /src/\n",
        layout.display(),
        up.url()
    );
    env.set_dockerfile(&dockerfile);

    // `imgbuild lock` pins every source; run again with nothing changed, the same bytes.
    let out = env.lock();
    ok(&out, "lock");
    let text = env.lockfile();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["images"]["base:1"], base1.as_str(), "{text}");
    let payload_sha = format!(
        "sha256:{}",
        sha2::Sha256::digest(b"payload 1\n")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(v["urls"][&url], payload_sha.as_str(), "{text}");
    assert_eq!(
        v["git"][format!("{}#main", up.url())],
        c1.as_str(),
        "{text}"
    );
    let unpinned = v["unpinned"].as_object().unwrap();
    assert_eq!(unpinned.len(), 1, "{text}");
    assert!(
        unpinned.keys().next().unwrap().starts_with("oci-layout://"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("not pinned: oci-layout://"),
        "{}",
        stderr(&out)
    );
    ok(&env.lock(), "second lock");
    assert_eq!(
        env.lockfile(),
        text,
        "an unchanged build locks to the same bytes"
    );

    let (out, _) = env.build(&["--locked"]);
    let d1 = ok(&out, "locked build");

    // The branch moves and base:1 is rebuilt: the pinned build does not change.
    up.commit(&[("f.txt", "two\n", false)], "two");
    std::fs::write(base.path().join("base.txt"), "base 2\n").unwrap();
    let base2 = base_build(&[]);
    assert_ne!(base1, base2);
    let (out, _) = env.build(&[]);
    assert_eq!(
        ok(&out, "pinned build"),
        d1,
        "the pins hold the build still"
    );
    assert_eq!(read(env.out().join("src/f.txt")), "one\n");
    assert_eq!(read(env.out().join("base.txt")), "base 1\n");
    // Without the git cache, the pinned commit (no longer the branch's tip) is fetched again;
    // over git's protocol v0 the server refuses a commit by hash, so the branch's history is.
    std::fs::remove_dir_all(root.join("git")).unwrap();
    let v0 = [
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "protocol.version"),
        ("GIT_CONFIG_VALUE_0", "0"),
    ];
    let (out, _) = env.build_env(&[], &v0);
    assert_eq!(ok(&out, "pinned build, empty git cache"), d1);
    assert_eq!(read(env.out().join("src/f.txt")), "one\n");

    // --locked names every source that resolves differently now.
    let (out, _) = env.build(&["--locked"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("--locked: the build's sources differ"), "{e}");
    assert!(
        e.contains(&format!(
            "image base:1: imgbuild.lock has {base1}, it resolves to {base2} now"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!("git {}#main: imgbuild.lock has {c1}", up.url())),
        "{e}"
    );
    assert!(
        !e.contains(&format!("url {url}")),
        "the URL did not change: {e}"
    );

    // The served file changes: the pinned URL must keep its checksum (once the store lacks
    // the pinned content, as on a fresh machine; while it has it, no request is made).
    http.set(b"payload 2\n");
    let (out, _) = env.build(&[]);
    assert_eq!(ok(&out, "pinned build, content in the store"), d1);
    let hex = payload_sha.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(root.join("blobs/sha256").join(hex)).unwrap();
    let (out, _) = env.build(&[]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains(&format!("checksum mismatch for {url}")), "{e}");
    assert!(e.contains("pinned by imgbuild.lock"), "{e}");
    http.set(b"payload 1\n");

    // A FROM or ADD edited in the Dockerfile is not in the lockfile.
    env.set_dockerfile(&dockerfile.replace("FROM base:1", "FROM base:2"));
    let tag2 = imgbuild_env(
        base.path(),
        &["build", "--progress=plain", "-t", "base:2", "."],
        &[("IMGBUILD_ROOT", root.to_str().unwrap())],
    );
    ok(&tag2, "base:2");
    let (out, _) = env.build(&["--locked"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "image base:2: not in imgbuild.lock (resolves to {base2})"
        )),
        "{e}"
    );
    let (out, _) = env.build(&[]);
    ok(&out, "a build with a source the lockfile lacks");
    assert!(
        stderr(&out).contains("warning: imgbuild.lock does not pin image base:2"),
        "{}",
        stderr(&out)
    );

    // Relocking takes the new resolutions; --locked passes again.
    env.set_dockerfile(&dockerfile);
    ok(&env.lock(), "relock");
    assert_ne!(env.lockfile(), text);
    let (out, _) = env.build(&["--locked"]);
    ok(&out, "locked build after relocking");
    assert_eq!(read(env.out().join("src/f.txt")), "two\n");

    // No lockfile: --locked says so.
    std::fs::remove_file(env.ctx().join("imgbuild.lock")).unwrap();
    let (out, _) = env.build(&["--locked"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("run `imgbuild lock` first"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_pinned_from_pulls_the_pinned_digest_into_a_fresh_store() {
    let reg = crate::registry::Registry::start(None);
    let name = format!("{}/lockbase:1", reg.host());
    let pusher = tempfile::tempdir().unwrap();
    let base = scratch(&[
        ("Dockerfile", b"FROM scratch\nCOPY base.txt /\n"),
        ("base.txt", b"pushed 1\n"),
    ]);
    let push = || {
        let out = imgbuild_env(
            base.path(),
            &["build", "--progress=plain", "-t", &name, "--push", "."],
            &[("IMGBUILD_ROOT", pusher.path().to_str().unwrap())],
        );
        ok(&out, "build and push")
    };
    let pushed1 = push();
    let env = Env::new(&format!("FROM {name}\nENV STAGE=app\n"));
    let out = env.lock();
    ok(&out, "lock");
    let v: serde_json::Value = serde_json::from_str(&env.lockfile()).unwrap();
    assert_eq!(v["images"][&name], pushed1.as_str());
    let (out, _) = env.build(&[]);
    let d1 = ok(&out, "build");

    // The tag moves in the registry; a fresh store still builds the pinned image.
    std::fs::write(base.path().join("base.txt"), "pushed 2\n").unwrap();
    let pushed2 = push();
    assert_ne!(pushed1, pushed2);
    std::fs::remove_dir_all(env.dir.path().join("store")).unwrap();
    let (out, _) = env.build(&[]);
    assert_eq!(ok(&out, "pinned build in a fresh store"), d1);
    assert_eq!(read(env.out().join("base.txt")), "pushed 1\n");
    let (out, _) = env.build(&["--locked"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "image {name}: imgbuild.lock has {pushed1}, it resolves to {pushed2} now"
        )),
        "{e}"
    );
}
