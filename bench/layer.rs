//! Peak memory building one 2 GiB layer: `FROM scratch` + `COPY big /big`.
//!
//! Run with `cargo bench --bench layer`. Goal (from the issue): peak RSS ≤ 100 MiB.
//!
//! The input is one 2 GiB file of text-like pseudo-random bytes (about 6 bits of entropy per
//! byte, so both compressors do real work), generated once into target/bench-data/ and reused.
//! Each build runs the release binary as a child process; its peak RSS is the kernel's
//! `ru_maxrss` for that child, read through GNU time (`/usr/bin/time -f %M`, Debian package
//! `time`), which gets it from `wait4` — exact, and for that one process tree. Without GNU
//! time the bench polls `VmHWM` in /proc/<pid>/status every 5 ms instead (it can miss a peak
//! in the last few milliseconds; the table says which method was used).
//!
//! Rows: a cold build into a fresh store (the layer is written zstd-compressed, the default),
//! then no-op rebuilds of it that export an OCI archive re-compressed to gzip, and in zstd
//! (the stored blob as it is). For scale, GNU gzip -6 and zstd -3 (the levels we use) over
//! the first 256 MiB of the same file, in the same run. Nothing is asserted: the bench prints
//! measurements and the goal.

mod common;

use common::mb_per_s;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIZE: u64 = 2 << 30;
const GOAL_MIB: f64 = 100.0;
/// How much of the input the stand-alone compressors get (for their MB/s only).
const PEER_SLICE: u64 = 256 << 20;

/// Time of `TOOL FLAGS -c` over the first [`PEER_SLICE`] bytes of `input`, output discarded:
/// what the compressor costs on this data, next to the export rows. `None` if not installed.
fn peer(tool: &str, flags: &str, input: &Path) -> Option<Duration> {
    let script = format!(
        "head -c {PEER_SLICE} '{}' | {tool} {flags} -c > /dev/null",
        input.display()
    );
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| common::time(Command::new("sh").args(["-ec", &script])))
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    GnuTime,
    PollVmHwm,
}

impl Method {
    fn detect() -> Method {
        let ok = Command::new("/usr/bin/time")
            .args(["-f", "%M", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Method::GnuTime
        } else {
            Method::PollVmHwm
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Method::GnuTime => "ru_maxrss of the child via /usr/bin/time -f %M (wait4)",
            Method::PollVmHwm => "VmHWM of the child polled every 5 ms (/usr/bin/time missing)",
        }
    }
}

/// Runs `imgbuild ARGS` and returns (wall time, peak RSS in KiB).
fn measure(method: Method, args: &[&std::ffi::OsStr], scratch: &Path) -> (Duration, u64) {
    let exe = common::imgbuild();
    match method {
        Method::GnuTime => {
            let report = scratch.join("time.out");
            let mut cmd = Command::new("/usr/bin/time");
            cmd.arg("-f").arg("%M").arg("-o").arg(&report);
            cmd.arg(&exe).args(args);
            let (wall, _) = common::run(&mut cmd);
            let text = fs::read_to_string(&report).unwrap();
            // The last line: GNU time puts "Command exited with…" lines before it.
            let kib = text
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("unexpected /usr/bin/time output: {text:?}"));
            (wall, kib)
        }
        Method::PollVmHwm => {
            let t = Instant::now();
            let mut child = Command::new(&exe)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let status_path = format!("/proc/{}/status", child.id());
            let mut peak = 0u64;
            loop {
                if let Ok(s) = fs::read_to_string(&status_path)
                    && let Some(kib) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                {
                    peak = peak.max(kib);
                }
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "imgbuild {args:?} failed: {status}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (t.elapsed(), peak)
        }
    }
}

struct Row {
    name: String,
    wall: Duration,
    rss_kib: u64,
}

fn main() {
    println!("layer benchmark — {}", common::machine());
    let dir = common::data_dir().join("big2g");
    let big = dir.join("big");
    common::ensure_big_file(&big, SIZE).unwrap();
    let dockerfile = common::data_dir().join("big2g.Dockerfile");
    fs::write(&dockerfile, "FROM scratch\nCOPY big /big\n").unwrap();
    common::warm(&dir, &["big".to_owned()]);
    let method = Method::detect();
    println!(
        "input: {} ({} MiB of text-like pseudo-random bytes), page cache warm",
        big.display(),
        SIZE >> 20
    );
    println!("peak RSS: {}", method.describe());

    let out_dir = common::scratch("layer-out-");
    let oci =
        |compression: &str| -> PathBuf { out_dir.path().join(format!("image-{compression}.tar")) };
    let build_args = |root: &Path, output: Option<(&Path, &str)>| -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "build".into(),
            "--progress=quiet".into(),
            "--root".into(),
            root.into(),
            "-f".into(),
            dockerfile.clone().into(),
        ];
        if let Some((dest, compression)) = output {
            a.push("-o".into());
            a.push(format!("type=oci,dest={},compression={compression}", dest.display()).into());
        }
        a.push(dir.clone().into());
        a
    };
    let run = |name: &str, args: Vec<std::ffi::OsString>, rows: &mut Vec<Row>| {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (wall, rss_kib) = measure(method, &refs, out_dir.path());
        eprintln!("  {name}: {:.1} s, {} KiB", wall.as_secs_f64(), rss_kib);
        rows.push(Row {
            name: name.to_owned(),
            wall,
            rss_kib,
        });
    };

    let mut rows = Vec::new();
    {
        let root = common::scratch("layer-root-");
        run(
            "cold build, layer stored zstd",
            build_args(root.path(), None),
            &mut rows,
        );
        let gz = oci("gzip");
        run(
            "no-op rebuild + export oci gzip",
            build_args(root.path(), Some((&gz, "gzip"))),
            &mut rows,
        );
        let _ = fs::remove_file(&gz);
        let zst = oci("zstd");
        run(
            "no-op rebuild + export oci zstd",
            build_args(root.path(), Some((&zst, "zstd"))),
            &mut rows,
        );
        let _ = fs::remove_file(&zst);
    }
    let peers = [("gzip", "-6"), ("zstd", "-3 -T1")]
        .into_iter()
        .filter_map(|(tool, flags)| peer(tool, flags, &big).map(|d| (tool, flags, d)))
        .collect::<Vec<_>>();

    println!();
    println!("one {} MiB layer (COPY big /big)", SIZE >> 20);
    println!(
        "  {:<34} {:>9} {:>9} {:>13}  goal <= {GOAL_MIB:.0} MiB",
        "run", "wall", "MB/s", "peak RSS"
    );
    for r in &rows {
        let mib = r.rss_kib as f64 / 1024.0;
        println!(
            "  {:<34} {:>7.2} s {:>9.0} {:>9.1} MiB  {}",
            r.name,
            r.wall.as_secs_f64(),
            mb_per_s(SIZE, r.wall),
            mib,
            if mib <= GOAL_MIB { "met" } else { "MISSED" }
        );
    }
    println!(
        "  the compressors alone on the first {} MiB, same run (single-threaded, as ours):",
        PEER_SLICE >> 20
    );
    for (tool, flags, d) in peers {
        println!(
            "  {:<34} {:>7.2} s {:>9.0}",
            format!("{tool} {flags}"),
            d.as_secs_f64(),
            mb_per_s(PEER_SLICE, d)
        );
    }
}
