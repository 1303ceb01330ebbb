//! The build context: hashing throughput against `b3sum`, and builds of a 10 000-file,
//! ≈200 MB context (cold, then no-op rebuilds).
//!
//! Run with `cargo bench --bench context`. Goals (from the issue):
//! - a no-op rebuild of the 10 000-file, 200 MB context in ≤ 150 ms;
//! - context hashing at ≥ 70 % of `b3sum`'s throughput on the same files.
//!
//! Hashing is timed by calling the library's scan directly
//! (`ContextSnapshot::scan` with an empty index, so every file is read and hashed in parallel),
//! against `b3sum` (BLAKE3's own CLI, from crates.io: found on PATH, in ~/.cargo/bin, or
//! installed by this bench into target/bench-tools) over the same file list, in the same run,
//! both with the page cache warm. Builds drive the release binary with `--progress=quiet`.
//! Nothing is asserted: the bench prints measurements next to the goals.
//!
//! `IMGBUILD_BENCH_ONLY=hash` or `=build` runs one half (for profiling one of them with perf).

mod common;

use common::{best_median, mb_per_s, ms};
use imgbuild_cache::context::{ContextIndex, ContextSnapshot};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// The same allocator as the imgbuild binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HASH_RUNS: usize = 7;
const COLD_RUNS: usize = 3;
const NOOP_RUNS: usize = 10;

/// `b3sum` and how it was found.
fn find_b3sum() -> Option<(PathBuf, String)> {
    if let Some(path) = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("b3sum"))
        .find(|p| p.is_file())
    {
        return Some((path, "on PATH".into()));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/b3sum");
        if p.is_file() {
            return Some((p, "in ~/.cargo/bin".into()));
        }
    }
    let root = common::target_dir().join("bench-tools");
    let p = root.join("bin/b3sum");
    if p.is_file() {
        return Some((p, format!("in {} (cargo install)", root.display())));
    }
    eprintln!(
        "b3sum not found: cargo install b3sum --locked --root {}",
        root.display()
    );
    let ok = Command::new(env!("CARGO"))
        .args(["install", "b3sum", "--locked", "--root"])
        .arg(&root)
        .status()
        .is_ok_and(|s| s.success());
    (ok && p.is_file()).then(|| (p, format!("installed by this run into {}", root.display())))
}

struct HashRow {
    name: &'static str,
    files: usize,
    bytes: u64,
    ours: Duration,
    ours_median: Duration,
    b3sum: Option<(Duration, Duration)>,
}

/// Best and median of [`HASH_RUNS`] full scans of `dir` with an empty index (every file read
/// and hashed); checks the scan hashed `files` files of `bytes` bytes.
fn time_scan(dir: &Path, files: usize, bytes: u64) -> (Duration, Duration) {
    let times: Vec<Duration> = (0..HASH_RUNS)
        .map(|_| {
            let mut index = ContextIndex::new();
            let t = Instant::now();
            let snap = ContextSnapshot::scan(dir, None, &mut index).unwrap();
            let d = t.elapsed();
            let stats = snap.stats();
            assert_eq!(stats.files_hashed, files as u64, "{}", dir.display());
            assert_eq!(stats.bytes_hashed, bytes, "{}", dir.display());
            drop((snap, index));
            d
        })
        .collect();
    best_median(&times)
}

fn time_b3sum(b3sum: &Path, dir: &Path, files: &[&String]) -> (Duration, Duration) {
    let times: Vec<Duration> = (0..HASH_RUNS)
        .map(|_| {
            common::time(
                Command::new(b3sum)
                    .current_dir(dir)
                    .args(files.iter().map(|s| s.as_str())),
            )
        })
        .collect();
    best_median(&times)
}

/// Our hash of the first and last file equals b3sum's: both sides hash the same bytes.
fn check_same_hashes(b3sum: &Path, ctx: &common::Context10k) {
    let mut index = ContextIndex::new();
    let snap = ContextSnapshot::scan(&ctx.dir, None, &mut index).unwrap();
    for f in [ctx.files.first().unwrap(), ctx.files.last().unwrap()] {
        let ours = snap
            .iter()
            .find(|e| &e.path == f)
            .and_then(|e| e.hash)
            .unwrap()
            .to_hex();
        let (_, out) = common::run(Command::new(b3sum).current_dir(&ctx.dir).arg(f));
        let theirs = String::from_utf8_lossy(&out.stdout);
        assert!(
            theirs.starts_with(ours.as_str()),
            "{f}: imgbuild {ours}, b3sum {theirs}"
        );
    }
}

fn main() {
    println!("context benchmark — {}", common::machine());
    let ctx = common::context_10k();
    let n_small = ctx.files.iter().filter(|f| f.starts_with("small/")).count();
    println!(
        "context: {} ({} files, {:.1} MB: {} small files {:.1} MB, {} large {:.1} MB)",
        ctx.dir.display(),
        ctx.files.len(),
        ctx.bytes as f64 / 1e6,
        n_small,
        ctx.small_bytes as f64 / 1e6,
        ctx.files.len() - n_small,
        ctx.large_bytes as f64 / 1e6,
    );
    common::warm(&ctx.dir, &ctx.files);
    let only = std::env::var("IMGBUILD_BENCH_ONLY").unwrap_or_default();
    if only != "build" {
        hashing(&ctx);
    }
    if only != "hash" {
        builds(&ctx);
    }
}

/// Our scan against b3sum: all files, the small ones, the large ones.
fn hashing(ctx: &common::Context10k) {
    let b3 = find_b3sum();
    match &b3 {
        Some((p, how)) => {
            let v = common::run(Command::new(p).arg("--version")).1.stdout;
            println!(
                "b3sum: {} {how} ({})",
                p.display(),
                String::from_utf8_lossy(&v).trim()
            );
            check_same_hashes(p, ctx);
        }
        None => println!("b3sum: not available; hashing ratios skipped"),
    }
    let groups: [(&'static str, PathBuf, &str, u64); 3] = [
        ("all files", ctx.dir.clone(), "", ctx.bytes),
        (
            "small (1-3 KiB)",
            ctx.dir.join("small"),
            "small/",
            ctx.small_bytes,
        ),
        (
            "large (18 MB)",
            ctx.dir.join("large"),
            "large/",
            ctx.large_bytes,
        ),
    ];
    let mut rows = Vec::new();
    for (name, dir, prefix, bytes) in groups {
        let files: Vec<&String> = ctx.files.iter().filter(|f| f.starts_with(prefix)).collect();
        let (ours, ours_median) = time_scan(&dir, files.len(), bytes);
        let b3sum = b3.as_ref().map(|(p, _)| time_b3sum(p, &ctx.dir, &files));
        rows.push(HashRow {
            name,
            files: files.len(),
            bytes,
            ours,
            ours_median,
            b3sum,
        });
    }

    println!();
    println!(
        "context hashing, page cache warm: imgbuild = ContextSnapshot::scan with an empty index \
         ({HASH_RUNS} runs); b3sum FILE... (default threads, {HASH_RUNS} runs)"
    );
    println!(
        "  {:<16} {:>6} {:>9} | {:>10} {:>10} {:>8} | {:>10} {:>10} {:>8} | {:>7}",
        "files",
        "count",
        "MB",
        "ours best",
        "median",
        "MB/s",
        "b3sum best",
        "median",
        "MB/s",
        "ratio"
    );
    for r in &rows {
        let ours_tp = mb_per_s(r.bytes, r.ours);
        let (b_best, b_med, b_tp, ratio) = match r.b3sum {
            Some((b, m)) => {
                let tp = mb_per_s(r.bytes, b);
                (
                    format!("{:.1} ms", ms(b)),
                    format!("{:.1} ms", ms(m)),
                    format!("{tp:.0}"),
                    format!("{:.0} %", 100.0 * ours_tp / tp),
                )
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "  {:<16} {:>6} {:>9.1} | {:>7.1} ms {:>7.1} ms {:>8.0} | {:>10} {:>10} {:>8} | {:>7}",
            r.name,
            r.files,
            r.bytes as f64 / 1e6,
            ms(r.ours),
            ms(r.ours_median),
            ours_tp,
            b_best,
            b_med,
            b_tp,
            ratio
        );
    }
    if let Some(r) = rows.first()
        && let Some((b, _)) = r.b3sum
    {
        let ratio = b.as_secs_f64() / r.ours.as_secs_f64();
        println!(
            "  goal: imgbuild >= 70 % of b3sum's throughput (all files, best runs): {:.0} % — {}",
            100.0 * ratio,
            if ratio >= 0.7 { "met" } else { "MISSED" }
        );
    }
}

/// Cold builds in fresh stores, then no-op rebuilds in the last one.
fn builds(ctx: &common::Context10k) {
    let build = |root: &Path| {
        let mut c = common::imgbuild_build(root);
        c.arg("-f").arg(&ctx.dockerfile).arg(&ctx.dir);
        c
    };
    let mut cold = Vec::new();
    let mut keep = None;
    for _ in 0..COLD_RUNS {
        let root = common::scratch("ctx-root-");
        cold.push(common::time(&mut build(root.path())));
        keep = Some(root); // the previous root is removed here, outside the timing
    }
    let root = keep.unwrap();
    // The first rebuild also rewrites index records that were racy (mtime too close to the
    // scan) in the cold build; with a context generated long ago there are none.
    let first = common::time(&mut build(root.path()));
    let noop: Vec<Duration> = (0..NOOP_RUNS)
        .map(|_| common::time(&mut build(root.path())))
        .collect();
    let (cold_best, cold_median) = best_median(&cold);
    let (noop_best, noop_median) = best_median(&noop);

    println!();
    println!(
        "build of FROM scratch + COPY . /ctx over the context (--progress=quiet, page cache warm)"
    );
    println!(
        "  cold build (fresh store), best of {COLD_RUNS}: {:.0} ms, {:.0} MB/s (median {:.0} ms)",
        ms(cold_best),
        mb_per_s(ctx.bytes, cold_best),
        ms(cold_median)
    );
    println!("  first rebuild after it:            {:.1} ms", ms(first));
    println!(
        "  no-op rebuild, {NOOP_RUNS} runs:              best {:.1} ms, median {:.1} ms",
        ms(noop_best),
        ms(noop_median)
    );
    println!(
        "  goal: no-op rebuild <= 150 ms: {}",
        if noop_median <= Duration::from_millis(150) {
            "met (median)"
        } else if noop_best <= Duration::from_millis(150) {
            "met by the best run only"
        } else {
            "MISSED"
        }
    );
}
