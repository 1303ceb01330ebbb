//! RUN in the sandbox: isolation, users, heredocs, failures.

use crate::{imgbuild_env, is_root, scratch, stderr, stdout};
use std::path::Path;

/// A context whose Dockerfile starts from a busybox stage built by imgbuild itself.
fn busybox_context(rest: &str) -> tempfile::TempDir {
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox not found: install the Debian package busybox-static"
    );
    let df = format!(
        "FROM scratch AS busybox\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nFROM busybox\n{rest}"
    );
    let dir = scratch(&[("Dockerfile", df.as_bytes())]);
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    dir
}

/// Builds and returns the root filesystem (`-o type=local`), or the failed output.
fn build(ctx: &Path, root: &Path) -> Result<tempfile::TempDir, std::process::Output> {
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("fs");
    let out = imgbuild_env(
        ctx,
        &[
            "build",
            "--progress=plain",
            "-o",
            &format!("type=local,dest={}", dest.display()),
            ".",
        ],
        &[("IMGBUILD_ROOT", root.to_str().unwrap())],
    );
    if out.status.success() {
        Ok(out_dir)
    } else {
        Err(out)
    }
}

fn read(dir: &tempfile::TempDir, path: &str) -> String {
    std::fs::read_to_string(dir.path().join("fs").join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn run_is_isolated_from_the_host() {
    assert!(is_root(), "RUN tests need root (CI runs as root)");
    let sentinel = tempfile::tempdir().unwrap();
    std::fs::write(sentinel.path().join("host-secret"), b"host").unwrap();
    let host_path = sentinel.path().display().to_string();
    let ctx = busybox_context(&format!(
        "RUN (cat {host_path}/host-secret 2>&1 || echo unreadable) > /hostread && \\\n    (echo x > {host_path}/written 2>&1 || true) && \\\n    ls /proc | grep -c '^[0-9]' > /pids && hostname > /hostname.txt && id -u > /uid\n"
    ));
    let root = tempfile::tempdir().unwrap();
    let fs = build(ctx.path(), root.path()).unwrap_or_else(|o| panic!("{}", stderr(&o)));
    assert!(
        read(&fs, "/hostread").contains("unreadable"),
        "{}",
        read(&fs, "/hostread")
    );
    assert!(
        !sentinel.path().join("written").exists(),
        "a RUN wrote to the host"
    );
    // A fresh PID namespace: init, the shell and a few commands, not the host's processes.
    let pids: usize = read(&fs, "/pids").trim().parse().unwrap();
    assert!(pids < 10, "the RUN saw {pids} processes");
    assert_eq!(read(&fs, "/hostname.txt").trim(), "imgbuild");
    assert_eq!(read(&fs, "/uid").trim(), "0");
    // Mount points and the sandbox's /etc files do not end up in the image.
    for p in ["dev", "proc", "sys", "etc/hosts", "etc/resolv.conf"] {
        assert!(
            !fs.path().join("fs").join(p).exists(),
            "{p} leaked into the image"
        );
    }
}

#[test]
fn network_none_has_only_loopback() {
    let port = crate::serve_hello();
    let ctx = busybox_context(&format!(
        "RUN --network=none (wget -q -O - http://127.0.0.1:{port}/ 2>/dev/null || echo unreachable) > /none.txt && ls /sys/class/net > /ifaces\nRUN wget -q -O - http://127.0.0.1:{port}/ > /host.txt\n"
    ));
    let root = tempfile::tempdir().unwrap();
    let fs = build(ctx.path(), root.path()).unwrap_or_else(|o| panic!("{}", stderr(&o)));
    assert_eq!(read(&fs, "/none.txt").trim(), "unreachable");
    assert_eq!(read(&fs, "/ifaces").trim(), "lo");
    // The default network is the host's: the same server answers.
    assert_eq!(read(&fs, "/host.txt"), "hello");
}

#[test]
fn user_workdir_env_and_heredocs() {
    let ctx = busybox_context(
        "RUN printf 'root:x:0:0::/root:/bin/sh\\napp:x:1000:1000::/home/app:/bin/sh\\n' > /etc/passwd && printf 'root:x:0:\\napp:x:1000:\\n' > /etc/group && mkdir -p /home/app && chown 1000:1000 /home/app\nUSER app\nWORKDIR /home/app/work\nENV A=1\nARG B=2\nRUN id -u > uid && id -g > gid && pwd > pwd && echo \"$A$B\" > env && touch mine\nUSER root\nRUN <<EOF\nset -e\necho script > /script.txt\nEOF\nRUN <<EOF\n#!/bin/sh\necho shebang > /shebang.txt\nEOF\nRUN cat > /stdin.txt <<EOF\nfed on stdin\nEOF\n",
    );
    let root = tempfile::tempdir().unwrap();
    let fs = build(ctx.path(), root.path()).unwrap_or_else(|o| panic!("{}", stderr(&o)));
    assert_eq!(read(&fs, "/home/app/work/uid").trim(), "1000");
    assert_eq!(read(&fs, "/home/app/work/gid").trim(), "1000");
    assert_eq!(read(&fs, "/home/app/work/pwd").trim(), "/home/app/work");
    assert_eq!(read(&fs, "/home/app/work/env").trim(), "12");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(fs.path().join("fs/home/app/work/mine")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    assert_eq!(read(&fs, "/script.txt"), "script\n");
    assert_eq!(read(&fs, "/shebang.txt"), "shebang\n");
    assert_eq!(read(&fs, "/stdin.txt"), "fed on stdin\n");
}

#[test]
fn leftover_processes_die_with_the_step() {
    // A sleep of a length no other process uses, started in the background and left running;
    // the RUN proves it started by recording the sleep's pid as seen inside the sandbox.
    let secs = 3000 + std::process::id() % 1000;
    let ctx = busybox_context(&format!(
        "RUN sleep {secs} & echo $! > /leftover-pid && test -d /proc/$(cat /leftover-pid)\n"
    ));
    let root = tempfile::tempdir().unwrap();
    let fs = build(ctx.path(), root.path()).unwrap_or_else(|o| panic!("{}", stderr(&o)));
    assert!(!read(&fs, "/leftover-pid").trim().is_empty());
    let wanted = format!("sleep\0{secs}\0").into_bytes();
    let sleepers = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| c.ends_with(&wanted))
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .collect()
    };
    let survivors = sleepers();
    assert!(
        survivors.is_empty(),
        "a RUN's process outlived its step: {survivors:?}"
    );
    // The check can see such a process: one started on the host right now is found.
    let mut host = std::process::Command::new("/bin/busybox")
        .args(["sleep", &secs.to_string()])
        .spawn()
        .unwrap();
    // (Polled: right after spawn the child may not have exec'd yet.)
    let seen = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !sleepers().is_empty()
    });
    host.kill().unwrap();
    let _ = host.wait();
    assert!(seen, "the /proc scan does not find a running sleep");
}

#[test]
fn a_failing_run_shows_its_status_and_output() {
    let ctx = busybox_context("RUN echo first line && echo 'the last words' >&2 && exit 3\n");
    let root = tempfile::tempdir().unwrap();
    let out = build(ctx.path(), root.path()).expect_err("the build must fail");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("exited with code 3"), "{err}");
    // The diagnostic points at the RUN line of the Dockerfile (line 5: after the busybox stage).
    assert!(err.contains("Dockerfile:5:1: error[step-failed]"), "{err}");
    assert!(err.contains("the last words"), "{err}");
    assert!(stdout(&out).trim().is_empty());
}

#[test]
fn run_steps_are_cached() {
    let ctx = busybox_context("ARG N=1\nRUN echo $N > /n\n");
    let root = tempfile::tempdir().unwrap();
    let rootp = root.path().to_str().unwrap();
    let first = imgbuild_env(
        ctx.path(),
        &["build", "--progress=plain", "."],
        &[("IMGBUILD_ROOT", rootp)],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let again = imgbuild_env(
        ctx.path(),
        &["build", "--progress=plain", "."],
        &[("IMGBUILD_ROOT", rootp)],
    );
    assert!(
        stderr(&again).contains("built image (0 steps run, 3 cached)"),
        "{}",
        stderr(&again)
    );
    let changed = imgbuild_env(
        ctx.path(),
        &["build", "--progress=plain", "--build-arg", "N=2", "."],
        &[("IMGBUILD_ROOT", rootp)],
    );
    assert!(
        stderr(&changed).contains("built image (1 steps run, 2 cached)"),
        "{}",
        stderr(&changed)
    );
}
