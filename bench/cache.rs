//! A CI job on a fresh machine with `--cache-from type=local` (and `type=registry`, a
//! docker-registry on 127.0.0.1) against the same build with a warm store, and the bytes each
//! moves.
//!
//! Run with `cargo bench --bench cache` (as root: RUN needs it; Debian's busybox-static gives
//! the base). The Dockerfile (generated in target/bench-data/cache/): a busybox stage built
//! from /bin/busybox; a `deps` stage whose RUN fills a cache mount the first time (40 files of
//! 1 MB and 2 000 small ones, after a 1 s pause standing in for a download) and makes a 20 MB
//! layer from it; a final stage copying a 30 MB payload from the context and the deps, then
//! hashing the payload in a RUN.
//!
//! Scenarios, each `imgbuild build --progress=plain --root R`:
//! - export: a cold build with `--cache-to type=local,dest=DIR` (once, untimed), then an
//!   unchanged rebuild exporting again (what it writes: nothing);
//! - warm: no-op rebuilds in that store;
//! - fresh: a new, empty root each run with `--cache-from type=local,src=DIR`, and again with
//!   `--cache-from type=registry,ref=…` after an export there;
//! - cold: a new root without a cache (for scale);
//! - changed deps on a fresh machine (`--build-arg V=…`, so the deps RUN runs again), with and
//!   without `--cache-from`: with it the cache mount arrives warm and the fill is skipped.
//!
//! Nothing is asserted: the bench prints times, ratios and bytes moved.

mod common;

use common::{best_median, ms};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const RUNS: usize = 5;

const DOCKERFILE: &str = r#"FROM scratch AS busybox
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM busybox AS deps
ARG V=1
RUN --mount=type=cache,target=/cache \
    if [ ! -f /cache/done ]; then \
      sleep 1; i=0; while [ $i -lt 40 ]; do head -c 1000000 /dev/urandom > /cache/pkg$i; i=$((i+1)); done; \
      mkdir -p /cache/small; j=0; while [ $j -lt 2000 ]; do echo "file $j" > /cache/small/f$j; j=$((j+1)); done; \
      touch /cache/done; \
    fi && mkdir /deps && cat /cache/pkg* | head -c 20000000 > /deps/blob && echo "$V" > /deps/v

FROM busybox
COPY payload/ /payload/
COPY --from=deps /deps /deps
RUN sha256sum /payload/* > /sums
"#;

/// The context in target/bench-data/cache (files rewritten only when they differ).
fn context() -> PathBuf {
    let dir = common::data_dir().join("cache");
    fs::create_dir_all(dir.join("payload")).unwrap();
    let busybox =
        fs::read("/bin/busybox").expect("/bin/busybox is needed: apt-get install busybox-static");
    for (name, bytes) in [
        ("Dockerfile", DOCKERFILE.as_bytes().to_vec()),
        ("busybox", busybox),
    ] {
        let path = dir.join(name);
        if fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            fs::write(&path, &bytes).unwrap();
        }
    }
    // COPY keeps the mode: the base's RUN executes it.
    fs::set_permissions(dir.join("busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    for i in 0..3 {
        common::ensure_big_file(&dir.join(format!("payload/big{i}")), 10 << 20).unwrap();
    }
    // ensure_big_file leaves its stamps beside the files: keep them out of the context.
    fs::write(dir.join(".dockerignore"), "payload/*.stamp\n").unwrap();
    dir
}

fn build(ctx: &Path, root: &Path, args: &[&str]) -> (Duration, String) {
    let mut c = Command::new(common::imgbuild());
    c.arg("build")
        .arg("--progress=plain")
        .arg("--root")
        .arg(root)
        .args(args)
        .arg(ctx);
    let (d, out) = common::run(&mut c);
    (d, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The number before `word` on the line starting with `prefix` (`… (3 blobs, 1234 bytes)`).
fn number(log: &str, prefix: &str, word: &str) -> u64 {
    log.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| {
            let words: Vec<&str> = l
                .split([' ', '(', ')', ','])
                .filter(|w| !w.is_empty())
                .collect();
            words
                .windows(2)
                .find(|w| w[1] == word)
                .and_then(|w| w[0].parse().ok())
        })
        .unwrap_or(0)
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn main() {
    println!("cache export/import benchmark — {}", common::machine());
    let ctx = context();
    let work = common::scratch("cache-");
    let dir = work.path().join("ci-cache");
    let to = format!("type=local,dest={}", dir.display());
    let from = format!("type=local,src={}", dir.display());
    let warm_root = work.path().join("warm");

    eprintln!("cold build with --cache-to ...");
    let (cold_export, log) = build(&ctx, &warm_root, &["--cache-to", &to]);
    let exported = number(&log, "cache: exported", "bytes");
    let (_, log) = build(&ctx, &warm_root, &["--cache-to", &to]);
    let re_exported = number(&log, "cache: exported", "bytes");
    let present = number(&log, "cache: exported", "already");

    let mut warm = Vec::new();
    let mut fresh = Vec::new();
    let mut imported = 0;
    for round in 0..RUNS {
        eprintln!("round {} ...", round + 1);
        warm.push(build(&ctx, &warm_root, &[]).0);
        let root = work.path().join(format!("fresh{round}"));
        let (d, log) = build(&ctx, &root, &["--cache-from", &from]);
        assert!(log.contains("0 steps run"), "not every step hit:\n{log}");
        imported = number(&log, "cache: imported", "bytes");
        fresh.push(d);
        fs::remove_dir_all(&root).unwrap();
    }
    let cold_root = work.path().join("cold");
    let (cold, _) = build(&ctx, &cold_root, &[]);
    fs::remove_dir_all(&cold_root).unwrap();

    // The deps RUN changed on a fresh machine: its cache mount comes warm from the cache.
    let mut changed_from = Vec::new();
    let mut changed_cold = Vec::new();
    let mut mount_bytes = 0;
    for round in 0..3 {
        let arg = format!("V={}", round + 2);
        let root = work.path().join("changed");
        let (d, log) = build(&ctx, &root, &["--build-arg", &arg, "--cache-from", &from]);
        mount_bytes = number(&log, "cache: imported", "bytes");
        changed_from.push(d);
        fs::remove_dir_all(&root).unwrap();
        let (d, _) = build(&ctx, &root, &["--build-arg", &arg]);
        changed_cold.push(d);
        fs::remove_dir_all(&root).unwrap();
    }

    // The same through a registry on 127.0.0.1 (`type=registry,ref=…`).
    let registry = LocalRegistry::start(work.path());
    let reg_ref = format!("{}/ci/cache:main", registry.host);
    let reg_to = format!("type=registry,ref={reg_ref}");
    let reg_from = reg_to.clone();
    eprintln!("export to the registry ...");
    let (_, log) = build(&ctx, &warm_root, &["--cache-to", &reg_to]);
    let reg_exported = number(&log, "cache: exported", "bytes");
    let mut reg_fresh = Vec::new();
    let mut reg_imported = 0;
    for round in 0..RUNS {
        let root = work.path().join(format!("regfresh{round}"));
        let (d, log) = build(&ctx, &root, &["--cache-from", &reg_from]);
        assert!(log.contains("0 steps run"), "not every step hit:\n{log}");
        reg_imported = number(&log, "cache: imported", "bytes");
        reg_fresh.push(d);
        fs::remove_dir_all(&root).unwrap();
    }
    drop(registry);

    let (wb, wm) = best_median(&warm);
    let (rb, rm) = best_median(&reg_fresh);
    let (fb, fm) = best_median(&fresh);
    let (cfb, cfm) = best_median(&changed_from);
    let (ccb, ccm) = best_median(&changed_cold);
    println!();
    println!("{:<44} {:>10} {:>10}", "scenario (ms)", "best", "median");
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "warm store, no-op rebuild",
        ms(wb),
        ms(wm)
    );
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "fresh root + --cache-from type=local",
        ms(fb),
        ms(fm)
    );
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "fresh root + --cache-from type=registry",
        ms(rb),
        ms(rm)
    );
    println!(
        "{:<44} {:>10.0}",
        "fresh root, no cache (cold build)",
        ms(cold)
    );
    println!(
        "{:<44} {:>10.0}",
        "cold build + --cache-to (first export)",
        ms(cold_export)
    );
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "deps changed, fresh root + --cache-from",
        ms(cfb),
        ms(cfm)
    );
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "deps changed, fresh root, no cache",
        ms(ccb),
        ms(ccm)
    );
    println!();
    println!(
        "fresh/warm (median): {:.2}x   cold/fresh: {:.2}x   deps changed, cold/warm mount: {:.2}x",
        fm.as_secs_f64() / wm.as_secs_f64(),
        cold.as_secs_f64() / fm.as_secs_f64(),
        ccm.as_secs_f64() / cfm.as_secs_f64()
    );
    println!(
        "registry: fresh/warm (median): {:.2}x   cold/fresh: {:.2}x   export {:.1} MB, fresh \
         import {:.1} MB",
        rm.as_secs_f64() / wm.as_secs_f64(),
        cold.as_secs_f64() / rm.as_secs_f64(),
        mb(reg_exported),
        mb(reg_imported)
    );
    println!(
        "bytes: first export {:.1} MB (cache dir {:.1} MB); unchanged re-export {re_exported} B \
         ({present} blobs already there); fresh import {:.1} MB; deps-changed import {:.1} MB \
         (layers + the cache mount)",
        mb(exported),
        mb(du(&dir)),
        mb(imported),
        mb(mount_bytes)
    );
}

/// Debian's docker-registry on a free 127.0.0.1 port with its storage under `work`; killed on
/// drop.
struct LocalRegistry {
    child: std::process::Child,
    host: String,
}

impl LocalRegistry {
    fn start(work: &Path) -> LocalRegistry {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "docker-registry not found: install the Debian package docker-registry"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = work.join("registry.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                work.join("registry-data").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let host = format!("127.0.0.1:{port}");
        for _ in 0..400 {
            if std::net::TcpStream::connect(&host).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        LocalRegistry { child, host }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
