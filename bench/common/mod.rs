//! What the build-engine benchmarks (context, layer, build) share: the binary under test,
//! generated inputs cached under `target/bench-data/`, timing and statistics.
//!
//! Generated data never goes into the repository: it lives beside the build output and is
//! reused by later runs when its stamp (a version string and the layout) still matches.

#![allow(dead_code)] // each bench uses a different part of this module

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The release binary cargo built for this bench run (benches get the `bench` profile, which
/// inherits `release`, so this is `target/release/imgbuild`).
pub fn imgbuild() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_imgbuild"));
    if !exe.exists() {
        // Cargo builds the binary before a bench that names it; this only covers running a
        // bench executable by hand after `cargo clean`.
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "imgbuild"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build --release");
        assert!(status.success(), "cargo build --release failed");
    }
    exe
}

/// `target/` (or `$CARGO_TARGET_DIR`): two levels above the binary.
pub fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_imgbuild"));
    exe.parent()
        .and_then(Path::parent)
        .expect("binary under target/<profile>/")
        .to_owned()
}

/// `target/bench-data/`: generated inputs kept between runs, and scratch stores.
pub fn data_dir() -> PathBuf {
    let d = target_dir().join("bench-data");
    fs::create_dir_all(&d).unwrap();
    d
}

/// A scratch directory (a store root, an output) removed on drop; on the same file system as
/// the generated inputs, not on a tmpfs.
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    let parent = data_dir().join("tmp");
    fs::create_dir_all(&parent).unwrap();
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .unwrap()
}

/// xorshift64*: fast, deterministic filler.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with text-like bytes: random letters from a 64-symbol alphabet with a
    /// newline now and then. About 6 bits of entropy per byte, so gzip and zstd do real work
    /// (and shrink it by about a quarter) instead of storing incompressible blocks or
    /// collapsing runs of zeros.
    pub fn fill_text(&mut self, buf: &mut [u8]) {
        const ALPHABET: &[u8; 64] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n";
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            for (b, r) in chunk.iter_mut().zip(r) {
                *b = ALPHABET[usize::from(r & 63)];
            }
        }
    }
}

/// The 10 000-file, ≈200 MB context: `small/dNN/fNNN` (9 990 files of 1–3 KiB, 2 KiB on
/// average, in 100 directories) and `large/bigN` (10 files of 18 MB). The Dockerfile
/// (`FROM scratch`, `COPY . /ctx`) lives beside the context, not in it.
pub struct Context10k {
    pub dir: PathBuf,
    pub dockerfile: PathBuf,
    /// Relative paths of every file, small ones first, in generation order.
    pub files: Vec<String>,
    pub bytes: u64,
    pub small_bytes: u64,
    pub large_bytes: u64,
}

const SMALL_FILES: usize = 9_990;
const SMALL_DIRS: usize = 100;
const LARGE_FILES: usize = 10;
const LARGE_SIZE: usize = 18_000_000;
const CTX_STAMP: &str = "ctx10k v2: 9990 small 1-3KiB in 100 dirs, 10 x 18000000 text";

/// 1 KiB to 3 KiB, 2 KiB on average.
fn small_size(rng: &mut Rng) -> usize {
    1024 + (rng.next() % 2049) as usize
}

pub fn context_10k() -> Context10k {
    let base = data_dir();
    let dir = base.join("ctx10k");
    let stamp = base.join("ctx10k.stamp");
    let dockerfile = base.join("ctx10k.Dockerfile");
    fs::write(&dockerfile, "FROM scratch\nCOPY . /ctx\n").unwrap();

    let fresh = fs::read_to_string(&stamp).ok().as_deref() != Some(CTX_STAMP);
    if fresh {
        eprintln!("generating {} (once; reused by later runs)", dir.display());
        let _ = fs::remove_file(&stamp);
        let _ = fs::remove_dir_all(&dir);
    }
    let mut files = Vec::with_capacity(SMALL_FILES + LARGE_FILES);
    let (mut small_bytes, mut large_bytes) = (0u64, 0u64);
    // Sizes from their own stream, so they are the same whether or not content is generated.
    let (mut sizes, mut rng) = (Rng::new(1), Rng::new(10_000));
    let mut buf = vec![0u8; LARGE_SIZE];
    for i in 0..SMALL_FILES {
        let rel = format!("small/d{:02}/f{:03}", i % SMALL_DIRS, i / SMALL_DIRS);
        let size = small_size(&mut sizes);
        if fresh {
            rng.fill_text(&mut buf[..size]);
            let path = dir.join(&rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &buf[..size]).unwrap();
        }
        small_bytes += size as u64;
        files.push(rel);
    }
    for i in 0..LARGE_FILES {
        let rel = format!("large/big{i}");
        if fresh {
            rng.fill_text(&mut buf);
            let path = dir.join(&rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &buf).unwrap();
        }
        large_bytes += LARGE_SIZE as u64;
        files.push(rel);
    }
    if fresh {
        fs::write(&stamp, CTX_STAMP).unwrap();
    }
    Context10k {
        dir,
        dockerfile,
        files,
        bytes: small_bytes + large_bytes,
        small_bytes,
        large_bytes,
    }
}

/// Reads every file once so later timings see a warm page cache.
pub fn warm(dir: &Path, files: &[String]) {
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file = File::open(dir.join(f)).unwrap();
        while file.read(&mut buf).unwrap() > 0 {}
    }
}

/// Writes `size` bytes of [`Rng::fill_text`] output to `path` in 1 MiB chunks, unless a file
/// of that size is already there (the stamp beside it records that generation finished).
pub fn ensure_big_file(path: &Path, size: u64) -> io::Result<()> {
    let stamp = path.with_extension("stamp");
    let want = format!("text v1 {size}");
    if fs::metadata(path).map(|m| m.len()).ok() == Some(size)
        && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str())
    {
        return Ok(());
    }
    eprintln!(
        "generating {} ({} MiB, once; reused by later runs)",
        path.display(),
        size >> 20
    );
    let _ = fs::remove_file(&stamp);
    fs::create_dir_all(path.parent().unwrap())?;
    let mut out = File::create(path)?;
    let mut rng = Rng::new(size);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_text(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.sync_all()?;
    fs::write(&stamp, want)
}

/// Runs `cmd` to completion with output captured; panics with its stderr when it fails.
pub fn run(cmd: &mut Command) -> (Duration, Output) {
    cmd.stdin(Stdio::null());
    let t = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let d = t.elapsed();
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (d, out)
}

/// Wall time of running `cmd` to completion.
pub fn time(cmd: &mut Command) -> Duration {
    run(cmd).0
}

/// Best (least disturbed) and median of `times`.
pub fn best_median(times: &[Duration]) -> (Duration, Duration) {
    let mut v = times.to_vec();
    v.sort();
    (v[0], v[v.len() / 2])
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// `imgbuild build --progress=quiet --root ROOT` (context and the rest added by the caller).
pub fn imgbuild_build(root: &Path) -> Command {
    let mut c = Command::new(imgbuild());
    c.arg("build")
        .arg("--progress=quiet")
        .arg("--root")
        .arg(root);
    c
}

/// The machine, for the header of every table.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model})")
}
