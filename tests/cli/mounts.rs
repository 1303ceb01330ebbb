//! `RUN --mount`: bind (context, stage, index), cache, tmpfs, secret and ssh mounts, run as
//! root in the sandbox on a busybox image the test builds.

use crate::{imgbuild_env, is_root, scratch, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Output;

/// A context with `files` whose Dockerfile starts from a busybox stage (`busybox`, index 0).
fn context(rest: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    assert!(is_root(), "RUN --mount tests need root (CI runs as root)");
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox not found: install the Debian package busybox-static"
    );
    let df = format!(
        "FROM scratch AS busybox\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nFROM busybox\n{rest}"
    );
    let mut all: Vec<(&str, &[u8])> = vec![("Dockerfile", df.as_bytes())];
    all.extend_from_slice(files);
    let dir = scratch(&all);
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    dir
}

/// Builds `ctx` into `root` with `args` and writes the root filesystem to `<out>/fs`.
fn build(ctx: &Path, root: &Path, args: &[&str]) -> (tempfile::TempDir, Output) {
    let out_dir = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out_dir.path().join("fs").display());
    let mut all = vec!["build", "--progress=plain", "-o", &dest];
    all.extend_from_slice(args);
    all.push(".");
    let out = imgbuild_env(ctx, &all, &[("IMGBUILD_ROOT", root.to_str().unwrap())]);
    (out_dir, out)
}

fn build_ok(ctx: &Path, root: &Path, args: &[&str]) -> tempfile::TempDir {
    let (dir, out) = build(ctx, root, args);
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

fn read(out: &tempfile::TempDir, path: &str) -> String {
    std::fs::read_to_string(out.path().join("fs").join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn exists(out: &tempfile::TempDir, path: &str) -> bool {
    std::fs::symlink_metadata(out.path().join("fs").join(path.trim_start_matches('/'))).is_ok()
}

/// Hex sha256 of `data`, as `sha256sum` prints it.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn bind_from_the_context_is_read_only_and_respects_dockerignore() {
    let ctx = context(
        "RUN --mount=type=bind,source=src,target=/mnt cat /mnt/a.txt > /a.txt && \\\n\
         (touch /mnt/new 2>/dev/null && echo writable || echo read-only) > /ro.txt && \\\n\
         (test -e /mnt/hidden.txt && echo visible || echo invisible) > /ignored.txt && \\\n\
         ls /mnt > /listing.txt\n\
         RUN --mount=type=bind,source=src/a.txt,target=/etc/one.txt cat /etc/one.txt > /file.txt\n\
         WORKDIR /w\n\
         RUN --mount=type=bind,target=ctx,rw echo scribble > ctx/src/a.txt && touch ctx/made && \\\n\
         cat ctx/src/a.txt > /w/rw.txt\n\
         RUN --mount=type=bind,target=/again cat /again/src/a.txt > /again.txt && \\\n\
         (test -e /again/made && echo kept || echo discarded) > /made.txt\n",
        &[
            ("src/a.txt", b"from the context\n"),
            ("src/hidden.txt", b"ignored\n"),
            ("src/sub/b.txt", b"b\n"),
            (".dockerignore", b"src/hidden.txt\n"),
        ],
    );
    let root = tempfile::tempdir().unwrap();
    let out = build_ok(ctx.path(), root.path(), &[]);
    assert_eq!(read(&out, "/a.txt"), "from the context\n");
    assert_eq!(read(&out, "/ro.txt"), "read-only\n");
    assert_eq!(read(&out, "/ignored.txt"), "invisible\n");
    assert_eq!(read(&out, "/listing.txt"), "a.txt\nsub\n");
    assert_eq!(read(&out, "/file.txt"), "from the context\n");
    // rw: the command can write, but the writes go nowhere.
    assert_eq!(read(&out, "/w/rw.txt"), "scribble\n");
    assert_eq!(read(&out, "/again.txt"), "from the context\n");
    assert_eq!(read(&out, "/made.txt"), "discarded\n");
    assert_eq!(
        std::fs::read_to_string(ctx.path().join("src/a.txt")).unwrap(),
        "from the context\n"
    );
    assert!(!ctx.path().join("made").exists());
    // Mount points the image did not have leave nothing behind; /etc existed only as the
    // parent of one.
    for p in ["/mnt", "/again", "/w/ctx", "/etc/one.txt", "/etc"] {
        assert!(!exists(&out, p), "{p} leaked into the image");
    }
    assert!(exists(&out, "/w"));

    // A changed bound file re-runs the steps that bind it (and only those).
    std::fs::write(ctx.path().join("src/a.txt"), b"changed\n").unwrap();
    let (out, o) = build(ctx.path(), root.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&out, "/a.txt"), "changed\n");
    assert_eq!(read(&out, "/again.txt"), "changed\n");
}

#[test]
fn bind_from_a_stage_by_name_and_by_index() {
    let ctx = context(
        "FROM busybox AS build\nRUN mkdir -p /out && echo built > /out/artifact\n\
         FROM busybox\n\
         RUN --mount=type=bind,from=build,source=/out,target=/in cat /in/artifact > /got.txt\n\
         RUN --mount=type=bind,from=0,target=/zero test -x /zero/bin/busybox && echo yes > /zero.txt\n\
         RUN --mount=type=bind,from=build,source=out/artifact,target=/one,rw echo x >> /one && cat /one > /rw.txt\n",
        &[],
    );
    let root = tempfile::tempdir().unwrap();
    let out = build_ok(ctx.path(), root.path(), &[]);
    assert_eq!(read(&out, "/got.txt"), "built\n");
    assert_eq!(read(&out, "/zero.txt"), "yes\n");
    assert_eq!(read(&out, "/rw.txt"), "built\nx\n");
    for p in ["/in", "/zero", "/one", "/out"] {
        assert!(!exists(&out, p), "{p} leaked into the image");
    }
}

#[test]
fn cache_mounts_persist_across_builds_and_stay_out_of_the_image() {
    let root = tempfile::tempdir().unwrap();
    let first = context(
        "RUN --mount=type=cache,target=/var/cache/app echo first > /var/cache/app/note && \\\n\
         echo run > /ran.txt\n\
         RUN --mount=type=cache,id=shared,target=/a echo one > /a/x\n\
         RUN --mount=type=cache,id=shared,target=/b,mode=0700 cat /b/x > /shared.txt\n\
         RUN --mount=type=cache,id=twice,target=/x,sharing=locked \
         --mount=type=cache,id=twice,target=/y,sharing=locked touch /x/f && test -e /y/f\n",
        &[],
    );
    let out = build_ok(first.path(), root.path(), &[]);
    assert_eq!(read(&out, "/shared.txt"), "one\n");
    assert!(!exists(&out, "/var/cache/app/note") && !exists(&out, "/var"));
    assert!(!exists(&out, "/a") && !exists(&out, "/b") && !exists(&out, "/x"));

    // Another Dockerfile (so the step runs) with the same cache id sees the first's files.
    let second = context(
        "RUN --mount=type=cache,target=/var/cache/app cat /var/cache/app/note > /saw.txt && \\\n\
         echo second >> /var/cache/app/note\n",
        &[],
    );
    let out = build_ok(second.path(), root.path(), &[]);
    assert_eq!(read(&out, "/saw.txt"), "first\n");
    assert!(!exists(&out, "/var"));
    // The content lives in the store under the id's directory, never in a layer.
    let dir = std::fs::read_dir(root.path().join("cache-mounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p.join("id")).unwrap() == "/var/cache/app")
        .expect("a cache-mount directory for /var/cache/app");
    assert_eq!(
        std::fs::read_to_string(dir.join("0/note")).unwrap(),
        "first\nsecond\n"
    );
}

#[test]
fn locked_cache_mounts_are_used_by_one_step_at_a_time() {
    // Two independent stages may run at once; with sharing=locked their steps take turns,
    // so each one finds the marker directory free (mkdir fails if another holds it).
    let step = "RUN --mount=type=cache,id=l,target=/c,sharing=locked \
                mkdir /c/busy && sleep 0.3 && rmdir /c/busy && echo ok > /";
    let ctx = context(
        &format!(
            "FROM busybox AS a\n{step}a\nFROM busybox AS b\n{step}b\nFROM busybox\n\
             COPY --from=a /a /a\nCOPY --from=b /b /b\n"
        ),
        &[],
    );
    let root = tempfile::tempdir().unwrap();
    let out = build_ok(ctx.path(), root.path(), &["--jobs", "2"]);
    assert_eq!(read(&out, "/a"), "ok\n");
    assert_eq!(read(&out, "/b"), "ok\n");
}

#[test]
fn tmpfs_mounts_are_scratch_space() {
    let ctx = context(
        "RUN --mount=type=tmpfs,target=/scratch,size=2m \
         grep -q ' /scratch tmpfs ' /proc/mounts && echo big > /scratch/file && \
         df -k /scratch | tail -n 1 | awk '{print $2}' > /size.txt\n",
        &[],
    );
    let root = tempfile::tempdir().unwrap();
    let out = build_ok(ctx.path(), root.path(), &[]);
    assert_eq!(read(&out, "/size.txt"), "2048\n");
    assert!(!exists(&out, "/scratch"));
}

/// Every file under `dir`, recursively (symlinks not followed).
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_reach_the_run_and_nothing_else() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!(
        "imgbuild-secret-{nanos:x}-{:x}-{}",
        std::process::id(),
        "q7Zr".repeat(12)
    );
    let env_marker = format!("{marker}-from-env");
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("token");
    std::fs::write(&secret_file, &marker).unwrap();

    let ctx = context(
        "RUN --mount=type=secret,id=token sha256sum < /run/secrets/token > /file.sha && \\\n\
         stat -c '%a %u %g' /run/secrets/token > /file.mode\n\
         RUN --mount=type=secret,id=token,target=/opt/tok,mode=0440,uid=7,gid=8 \
         stat -c '%a %u %g' /opt/tok > /custom.mode && sha256sum < /opt/tok > /custom.sha\n\
         RUN --mount=type=secret,id=api,env=API_TOKEN printf %s \"$API_TOKEN\" | sha256sum > /env.sha && \\\n\
         (test -e /run/secrets/api && echo file || echo no-file) > /env.file\n\
         RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && echo absent > /absent.txt\n",
        &[],
    );
    let root = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let local = format!("type=local,dest={}", out_dir.path().join("fs").display());
    let oci = format!(
        "type=oci,dest={},tar=false,compression=uncompressed",
        out_dir.path().join("oci").display()
    );
    let secret_arg = format!("id=token,src={}", secret_file.display());
    let o = imgbuild_env(
        ctx.path(),
        &[
            "build",
            "--progress=plain",
            "--secret",
            &secret_arg,
            "--secret",
            "id=api,env=IMGBUILD_TEST_API_TOKEN",
            "-o",
            &local,
            "-o",
            &oci,
            "-t",
            "secret-test:latest",
            ".",
        ],
        &[
            ("IMGBUILD_ROOT", root.path().to_str().unwrap()),
            ("IMGBUILD_TEST_API_TOKEN", &env_marker),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sha = |p: &str| read(&out_dir, p);
    assert_eq!(
        sha("/file.sha"),
        format!("{}  -\n", sha256_hex(marker.as_bytes()))
    );
    assert_eq!(read(&out_dir, "/file.mode"), "400 0 0\n");
    assert_eq!(read(&out_dir, "/custom.mode"), "440 7 8\n");
    assert_eq!(
        sha("/custom.sha"),
        format!("{}  -\n", sha256_hex(marker.as_bytes()))
    );
    assert_eq!(
        sha("/env.sha"),
        format!("{}  -\n", sha256_hex(env_marker.as_bytes()))
    );
    assert_eq!(read(&out_dir, "/env.file"), "no-file\n");
    assert_eq!(read(&out_dir, "/absent.txt"), "absent\n");
    for p in ["/run", "/opt"] {
        assert!(!exists(&out_dir, p), "{p} leaked into the image");
    }

    // The value appears nowhere: not in the store (records, layers, blobs, explain files,
    // cache), not in the image outputs (the OCI layout holds uncompressed layers), not in
    // the build's output.
    let mut files = Vec::new();
    files_under(root.path(), &mut files);
    files_under(out_dir.path(), &mut files);
    assert!(files.len() > 20, "only {} files to search", files.len());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for m in [&marker, &env_marker] {
            assert!(
                !contains(&bytes, m.as_bytes()),
                "the secret is in {}",
                f.display()
            );
        }
    }
    for m in [&marker, &env_marker] {
        assert!(!stderr(&o).contains(m.as_str()) && !stdout(&o).contains(m.as_str()));
    }
}

#[test]
fn a_required_secret_or_agent_that_was_not_given_fails_clearly() {
    let root = tempfile::tempdir().unwrap();
    let ctx = context(
        "RUN --mount=type=secret,id=deploy_key,required=true cat /run/secrets/deploy_key\n",
        &[],
    );
    let (_, o) = build(ctx.path(), root.path(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("secret \"deploy_key\" is required but was not given"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("--secret id=deploy_key"),
        "{}",
        stderr(&o)
    );

    let ctx = context("RUN --mount=type=ssh,required=true true\n", &[]);
    let (_, o) = build(ctx.path(), root.path(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ssh agent \"default\" is required but was not given"),
        "{}",
        stderr(&o)
    );

    // A --secret whose file is missing is a usage error before anything runs.
    let (_, o) = build(
        ctx.path(),
        root.path(),
        &["--secret", "id=x,src=/nonexistent/secret"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("secret x"), "{}", stderr(&o));
}

#[test]
fn ssh_mounts_forward_the_agent_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // A stand-in agent: answers every connection with a fixed line.
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"agent here\n");
        }
    });
    let ctx = context(
        "RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /sock.txt && \\\n\
         stat -c '%a %u' \"$SSH_AUTH_SOCK\" > /mode.txt\n\
         RUN --mount=type=ssh,id=work,target=/tmp/agent,uid=5,mode=0660 test -S /tmp/agent && \\\n\
         stat -c '%a %u' /tmp/agent > /custom.txt && echo \"$SSH_AUTH_SOCK\" > /custom-env.txt\n",
        &[],
    );
    let root = tempfile::tempdir().unwrap();
    let default = format!("default={}", sock.display());
    let work = format!("work={}", sock.display());
    let out = build_ok(
        ctx.path(),
        root.path(),
        &["--ssh", &default, "--ssh", &work],
    );
    assert_eq!(read(&out, "/sock.txt"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(read(&out, "/mode.txt"), "600 0\n");
    assert_eq!(read(&out, "/custom.txt"), "660 5\n");
    assert_eq!(read(&out, "/custom-env.txt"), "/tmp/agent\n");
    assert!(!exists(&out, "/run") && !exists(&out, "/tmp/agent"));
}
