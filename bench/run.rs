//! imgbuild against buildah on the same Dockerfiles with RUN steps, in the same run.
//!
//! Run with `cargo bench --bench run` (as root: RUN needs it). Needs buildah, Debian's
//! busybox-static, and mmdebstrap the first time (the Debian root filesystem is made once and
//! kept in `target/test-data/`, where the examples test keeps it too).
//!
//! Bases: both tools get the same two images under the same names. imgbuild builds them
//! (examples/busybox as `localhost/bench-busybox:latest`, examples/debian — minbase + gcc +
//! libc6-dev — as `localhost/bench-debian:latest`), exports each as a docker archive, and
//! buildah pulls those archives into its store, where they carry the same tags. A cold build
//! starts from a fresh store of each tool holding only the bases (set up untimed).
//!
//! Dockerfiles:
//! - cproject: a C project of 20 files on the Debian base, one stage per file
//!   (`COPY` the headers and the file, `RUN gcc -O2 -c`), and a final stage that copies the 20
//!   objects and links them (`RUN gcc`, then runs the program);
//! - par4: four independent stages on the busybox base, each spinning a shell loop for about
//!   1.5 s, and a final stage copying one file from each.
//!
//! Scenarios: cold build, no-op rebuild, and (cproject) one changed source file — a line of
//! `src/f07.c` rewritten before each build, so each build really recompiles it.
//!
//! buildah runs as `buildah --root R --runroot RR --storage-driver overlay bud --isolation
//! chroot --layers --jobs N` (N = CPUs, imgbuild's default for `--jobs`); overlay rather than
//! vfs because vfs copies the whole Debian tree for every container and every layer. imgbuild
//! runs as `imgbuild build --progress=quiet --root R`. The tools alternate run by run so load
//! on a shared machine falls on both alike. Nothing is asserted: the bench prints times,
//! imgbuild/buildah ratios and the goals next to them.

mod common;

use common::{best_median, ms};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const COLD_RUNS: usize = 3;
const NOOP_RUNS: usize = 5;
const CHANGE_RUNS: usize = 3;
const C_FILES: usize = 20;
/// Iterations of the busybox shell loop in each par4 stage: about 1.5 s here.
const SPIN: u32 = 800_000;

const BUSYBOX: &str = "localhost/bench-busybox:latest";
const DEBIAN: &str = "localhost/bench-debian:latest";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bench_dir() -> PathBuf {
    let d = common::data_dir().join("run");
    fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `bytes` to `path` unless it already holds them (stat data stays put between runs).
fn put(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    if fs::read(path).ok().as_deref() != Some(bytes) {
        fs::write(path, bytes).unwrap();
    }
}

/// Debian bookworm (minbase + gcc + libc6-dev) as a rootfs tar, made once with mmdebstrap
/// into `target/test-data/` (the file `tests/cli/examples.rs` makes and reuses).
fn debian_rootfs() -> PathBuf {
    let dir = common::target_dir().join("test-data");
    fs::create_dir_all(&dir).unwrap();
    let tar = dir.join("debian-bookworm-gcc.tar");
    if !tar.exists() {
        eprintln!("making {} with mmdebstrap (once)", tar.display());
        let part = dir.join("debian-bookworm-gcc.part.tar");
        common::run(
            Command::new("mmdebstrap")
                .args([
                    "--variant=minbase",
                    "--include=gcc,libc6-dev",
                    "--quiet",
                    "bookworm",
                ])
                .arg(&part),
        );
        fs::rename(&part, &tar).unwrap();
    }
    tar
}

/// The two base contexts: examples/busybox and examples/debian with their inputs.
fn base_contexts() -> [(&'static str, PathBuf); 2] {
    let d = bench_dir();
    let bb = d.join("base-busybox");
    put(
        &bb.join("Dockerfile"),
        &fs::read(repo().join("examples/busybox/Dockerfile")).unwrap(),
    );
    put(
        &bb.join("busybox"),
        &fs::read("/bin/busybox").expect("/bin/busybox: apt-get install busybox-static"),
    );
    fs::set_permissions(
        bb.join("busybox"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let deb = d.join("base-debian");
    put(
        &deb.join("Dockerfile"),
        &fs::read(repo().join("examples/debian/Dockerfile")).unwrap(),
    );
    let rootfs = deb.join("rootfs.tar");
    if !rootfs.exists() {
        let src = debian_rootfs();
        if fs::hard_link(&src, &rootfs).is_err() {
            fs::copy(&src, &rootfs).unwrap();
        }
    }
    [(BUSYBOX, bb), (DEBIAN, deb)]
}

/// The C project: `src/f00.c` (main) … `src/f19.c`, `include/proj.h`, and the Dockerfile.
fn cproject() -> PathBuf {
    let dir = bench_dir().join("cproject");
    let mut header = String::from("#pragma once\n");
    for i in 0..C_FILES {
        writeln!(header, "unsigned long f{i:02}(unsigned long x);").unwrap();
    }
    put(&dir.join("include/proj.h"), header.as_bytes());
    for i in 0..C_FILES {
        put(&dir.join(format!("src/f{i:02}.c")), c_file(i, 0).as_bytes());
    }
    let mut df = String::new();
    for i in 0..C_FILES {
        writeln!(
            df,
            "FROM {DEBIAN} AS f{i:02}\nWORKDIR /src\nCOPY include/ include/\nCOPY src/f{i:02}.c src/\n\
             RUN gcc -O2 -Iinclude -c src/f{i:02}.c -o f{i:02}.o\n"
        )
        .unwrap();
    }
    writeln!(df, "FROM {DEBIAN}\nWORKDIR /app").unwrap();
    for i in 0..C_FILES {
        writeln!(df, "COPY --from=f{i:02} /src/f{i:02}.o obj/").unwrap();
    }
    writeln!(df, "RUN gcc obj/*.o -o app && ./app > result.txt").unwrap();
    put(&dir.join("Dockerfile"), df.as_bytes());
    dir
}

/// One source file: a few functions with loops, so gcc -O2 has some work. `version` changes
/// one constant (the changed-file scenario).
fn c_file(i: usize, version: u64) -> String {
    let mut s = format!("#include \"proj.h\"\nstatic const unsigned long version = {version};\n");
    if i == 0 {
        s.push_str("#include <stdio.h>\n");
    }
    for k in 0..12 {
        writeln!(
            s,
            "static unsigned long g{k}(unsigned long x) {{\n  unsigned long a = x ^ {k};\n  \
             for (int j = 0; j < 64; j++) {{ a = a * 6364136223846793005UL + {k}; \
             if (a & 1) a ^= a >> 13; else a += j; }}\n  return a;\n}}"
        )
        .unwrap();
    }
    writeln!(s, "unsigned long f{i:02}(unsigned long x) {{").unwrap();
    for k in 0..12 {
        writeln!(s, "  x = g{k}(x + version);").unwrap();
    }
    s.push_str("  return x;\n}\n");
    if i == 0 {
        s.push_str("int main(void) {\n  unsigned long x = 1;\n");
        for j in 0..C_FILES {
            writeln!(s, "  x = f{j:02}(x);").unwrap();
        }
        s.push_str("  printf(\"%lu\\n\", x);\n  return 0;\n}\n");
    }
    s
}

/// Four independent busybox stages of about 1.5 s each, and a final stage copying from all.
fn par4() -> PathBuf {
    let dir = bench_dir().join("par4");
    let mut df = String::new();
    for s in ["a", "b", "c", "d"] {
        writeln!(
            df,
            "FROM {BUSYBOX} AS {s}\nRUN i=0; while [ $i -lt {SPIN} ]; do i=$((i+1)); done; \
             echo {s} $i > /{s}.txt\n"
        )
        .unwrap();
    }
    writeln!(df, "FROM {BUSYBOX}").unwrap();
    for s in ["a", "b", "c", "d"] {
        writeln!(df, "COPY --from={s} /{s}.txt /out/").unwrap();
    }
    put(&dir.join("Dockerfile"), df.as_bytes());
    dir
}

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Imgbuild,
    Buildah,
}

const TOOLS: [Tool; 2] = [Tool::Imgbuild, Tool::Buildah];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Imgbuild => "imgbuild",
            Tool::Buildah => "buildah",
        }
    }
}

fn jobs() -> String {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string()
}

fn buildah(store: &Path) -> Command {
    let mut c = Command::new("buildah");
    c.arg("--root").arg(store.join("root"));
    c.arg("--runroot").arg(store.join("runroot"));
    c.args(["--storage-driver", "overlay"]);
    c
}

/// The build of the Dockerfile in `ctx` by `tool` into `store`, tagged `tag`.
fn build(tool: Tool, store: &Path, ctx: &Path, tag: &str) -> Command {
    match tool {
        Tool::Imgbuild => {
            let mut c = common::imgbuild_build(&store.join("root"));
            c.arg("-t").arg(tag).arg(ctx);
            c
        }
        Tool::Buildah => {
            let mut c = buildah(store);
            c.args(["bud", "--isolation", "chroot", "--layers", "--quiet"]);
            c.args(["--jobs", &jobs(), "-t", tag]).arg(ctx);
            c
        }
    }
}

/// A store per tool holding only the bases, set up untimed. buildah's gets the archives
/// imgbuild exported from `bases`' store; imgbuild's is built from the same contexts (the
/// same layers: builds are reproducible).
struct Stores {
    dirs: Vec<tempfile::TempDir>,
}

impl Stores {
    fn fresh(bases: &[(&str, PathBuf)], archives: &[PathBuf]) -> Stores {
        let mut dirs = Vec::new();
        for tool in TOOLS {
            let dir = common::scratch(&format!("run-{}-", tool.name()));
            match tool {
                Tool::Imgbuild => {
                    for (name, ctx) in bases {
                        common::run(&mut build(tool, dir.path(), ctx, name));
                    }
                }
                Tool::Buildah => {
                    for a in archives {
                        common::run(buildah(dir.path()).args([
                            "pull",
                            "--quiet",
                            &format!("docker-archive:{}", a.display()),
                        ]));
                    }
                }
            }
            dirs.push(dir);
        }
        Stores { dirs }
    }

    fn path(&self, tool: Tool) -> &Path {
        self.dirs[TOOLS.iter().position(|t| *t == tool).unwrap()].path()
    }
}

impl Drop for Stores {
    /// buildah's overlay store may have mounts left (a build container, a layer): undo them
    /// before the directory goes.
    fn drop(&mut self) {
        let store = self.path(Tool::Buildah).to_owned();
        let _ = buildah(&store).args(["rm", "--all"]).output();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                store.display()
            ))
            .output();
    }
}

/// The bases built once in a store of their own, exported as docker archives for buildah.
fn export_bases(bases: &[(&str, PathBuf)]) -> Vec<PathBuf> {
    let store = common::scratch("run-bases-");
    bases
        .iter()
        .map(|(name, ctx)| {
            let short = name.trim_start_matches("localhost/").replace(':', "-");
            let archive = bench_dir().join(format!("{short}.docker.tar"));
            common::run(
                build(Tool::Imgbuild, store.path(), ctx, name)
                    .arg("-o")
                    .arg(format!("type=docker,dest={}", archive.display())),
            );
            archive
        })
        .collect()
}

#[derive(Default)]
struct Series {
    times: [Vec<Duration>; 2],
}

impl Series {
    fn push(&mut self, tool: Tool, d: Duration) {
        self.times[TOOLS.iter().position(|t| *t == tool).unwrap()].push(d);
    }
}

/// Tools in alternating order: imgbuild first on even rounds, buildah on odd ones.
fn order(round: usize) -> [Tool; 2] {
    if round.is_multiple_of(2) {
        TOOLS
    } else {
        [Tool::Buildah, Tool::Imgbuild]
    }
}

fn main() {
    println!("RUN build benchmark — {}", common::machine());
    let version = Command::new("buildah").arg("--version").output();
    let version = match version {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => panic!("buildah not found: apt-get install buildah"),
    };
    println!(
        "peer: {version}, storage driver overlay, isolation chroot, --layers --jobs {}",
        jobs()
    );

    let bases = base_contexts();
    eprintln!("building the bases and exporting them for buildah ...");
    let archives = export_bases(&bases);
    let cproj = cproject();
    let par = par4();
    let f07 = cproj.join("src/f07.c");

    let mut cold_c = Series::default();
    let mut cold_p = Series::default();
    let mut last = None;
    for round in 0..COLD_RUNS {
        eprintln!("cold round {} ...", round + 1);
        let stores = Stores::fresh(&bases, &archives);
        for tool in order(round) {
            let store = stores.path(tool);
            cold_c.push(
                tool,
                common::time(&mut build(tool, store, &cproj, "bench-cproject")),
            );
            cold_p.push(
                tool,
                common::time(&mut build(tool, store, &par, "bench-par4")),
            );
        }
        last = Some(stores);
    }
    let stores = last.unwrap();

    eprintln!("no-op rebuilds ...");
    let (mut noop_c, mut noop_p) = (Series::default(), Series::default());
    for round in 0..NOOP_RUNS {
        for tool in order(round) {
            let store = stores.path(tool);
            noop_c.push(
                tool,
                common::time(&mut build(tool, store, &cproj, "bench-cproject")),
            );
            noop_p.push(
                tool,
                common::time(&mut build(tool, store, &par, "bench-par4")),
            );
        }
    }

    eprintln!("one changed file ...");
    let mut changed = Series::default();
    for round in 0..CHANGE_RUNS {
        fs::write(&f07, c_file(7, round as u64 + 1)).unwrap();
        for tool in order(round) {
            let store = stores.path(tool);
            changed.push(
                tool,
                common::time(&mut build(tool, store, &cproj, "bench-cproject")),
            );
        }
    }
    fs::write(&f07, c_file(7, 0)).unwrap();

    println!();
    println!(
        "best (median) of {COLD_RUNS} cold builds (fresh stores holding the bases), \
         {NOOP_RUNS} no-op rebuilds, {CHANGE_RUNS} one-file changes; ratio = imgbuild / buildah, \
         best against best"
    );
    println!(
        "  {:<28} {:>20} {:>20} {:>7}  goal",
        "scenario", "imgbuild", "buildah", "ratio"
    );
    let rows: [(&str, &Series, f64); 5] = [
        ("cold, C project (20 files)", &cold_c, 0.5),
        ("cold, 4 parallel stages", &cold_p, 0.5),
        ("no-op, C project", &noop_c, 0.05),
        ("no-op, 4 parallel stages", &noop_p, 0.05),
        ("one changed .c, C project", &changed, 0.2),
    ];
    for (name, series, goal) in rows {
        let [(ib, im), (bb, bm)] = series.times.clone().map(|t| best_median(&t));
        let ratio = ib.as_secs_f64() / bb.as_secs_f64();
        println!(
            "  {name:<28} {:>9.0} ms ({:>6.0}) {:>9.0} ms ({:>6.0}) {ratio:>7.3}  <= {goal} {}",
            ms(ib),
            ms(im),
            ms(bb),
            ms(bm),
            if ratio <= goal { "met" } else { "MISSED" }
        );
    }
}
