//! Parse throughput: the real-world corpus, and synthetic 1 MB and 10 MB Dockerfiles.
//!
//! Run with `cargo bench --bench parse`. Prints MB/s, the 10 MB / 1 MB time ratio (linearity),
//! and, when BuildKit's parser is available through ../shared/tools/buildkit-parse's venv, the
//! same files parsed by BuildKit (Go, via the PyPI `dockerfile` package) in the same run.

use imgbuild_parser::parse;

// The same allocator as the imgbuild binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn shared() -> PathBuf {
    std::env::var_os("IMGBUILD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// Best of `runs` timings of `f` (the least disturbed by other load on a shared machine).
/// What `f` returns is dropped after the clock stops: freeing the tree is not parsing.
fn best<T, F: FnMut() -> T>(runs: usize, mut f: F) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let out = std::hint::black_box(f());
            let e = t.elapsed();
            drop(out);
            e
        })
        .min()
        .unwrap()
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// BuildKit's parser over `files`, timed inside Python (no interpreter start-up), best of 3.
fn buildkit_seconds(files: &[PathBuf]) -> Option<f64> {
    let venv = std::env::var_os("IMGBUILD_ORACLE_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/imgbuild-buildkit-parse"))
        })?;
    let py = venv.join("bin/python");
    if !py.exists() {
        return None;
    }
    let script = "import sys,time,dockerfile\nfs=sys.argv[1:]\nb=1e9\nfor _ in range(3):\n t=time.perf_counter()\n for f in fs:\n  dockerfile.parse_file(f)\n b=min(b,time.perf_counter()-t)\nprint(b)";
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// Parses one file in this fresh process and prints the parse time in nanoseconds: how a
/// build meets the parser, with no allocator warmed by earlier runs.
fn one_shot(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let t = Instant::now();
    let p = std::hint::black_box(parse(&text, 0));
    println!("{}", t.elapsed().as_nanos());
    std::mem::forget(p);
}

/// Best of `runs` fresh-process parses of `text`.
fn cold(text: &str, runs: usize) -> Duration {
    let path = std::env::temp_dir().join(format!("imgbuild-parse-bench-{}.Dockerfile", text.len()));
    std::fs::write(&path, text).unwrap();
    let exe = std::env::current_exe().unwrap();
    let d = (0..runs)
        .map(|_| {
            let out = Command::new(&exe)
                .env("PARSE_ONE_SHOT", &path)
                .output()
                .unwrap();
            let ns: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            Duration::from_nanos(ns)
        })
        .min()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    d
}

fn main() {
    if let Some(p) = std::env::var_os("PARSE_ONE_SHOT") {
        return one_shot(Path::new(&p));
    }
    let corpus_dir = shared().join("corpus/realworld");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus_dir)
        .unwrap_or_else(|e| panic!("corpus not found at {}: {e}", corpus_dir.display()))
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let texts: Vec<String> = files
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect();
    let corpus_bytes: usize = texts.iter().map(String::len).sum();
    let t_corpus = best(20, || texts.iter().map(|t| parse(t, 0)).collect::<Vec<_>>());

    // Synthetic files: the corpus concatenated (one FROM-led file after another) to size.
    let mut one = String::new();
    while one.len() < 1_000_000 {
        for t in &texts {
            if !t.ends_with('\n') {
                one.push_str(t);
                one.push('\n');
            } else {
                one.push_str(t);
            }
            if one.len() >= 1_000_000 {
                break;
            }
        }
    }
    let ten = one.repeat(10);
    let t1 = best(10, || parse(&one, 0));
    let t10 = best(5, || parse(&ten, 0));
    let (c1, c10) = (cold(&one, 10), cold(&ten, 10));

    println!("parse benchmark (best of several runs)");
    println!(
        "  corpus   {:>5} files {:>9} bytes  {:>8.2} ms  {:>7.1} MB/s",
        files.len(),
        corpus_bytes,
        t_corpus.as_secs_f64() * 1e3,
        mbps(corpus_bytes, t_corpus)
    );
    println!(
        "  1 MB     {:>21} bytes  {:>8.2} ms  {:>7.1} MB/s",
        one.len(),
        t1.as_secs_f64() * 1e3,
        mbps(one.len(), t1)
    );
    println!(
        "  10 MB    {:>21} bytes  {:>8.2} ms  {:>7.1} MB/s",
        ten.len(),
        t10.as_secs_f64() * 1e3,
        mbps(ten.len(), t10)
    );
    println!(
        "  cold (fresh process each run): 1 MB {:.2} ms, 10 MB {:.2} ms, {:.1} MB/s",
        c1.as_secs_f64() * 1e3,
        c10.as_secs_f64() * 1e3,
        mbps(ten.len(), c10)
    );
    println!(
        "  10 MB / 1 MB time ratio: warm {:.2}, cold {:.2} (goal <= 10)",
        t10.as_secs_f64() / t1.as_secs_f64(),
        c10.as_secs_f64() / c1.as_secs_f64()
    );
    match buildkit_seconds(&files) {
        Some(bk) => println!(
            "  BuildKit v0.12.5 parser on the corpus: {:.2} ms ({:.1} MB/s); imgbuild is {:.1}x faster",
            bk * 1e3,
            corpus_bytes as f64 / 1e6 / bk,
            bk / t_corpus.as_secs_f64()
        ),
        None => println!(
            "  BuildKit parser not available (run ../shared/tools/buildkit-parse once to install it)"
        ),
    }
}
