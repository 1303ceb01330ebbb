//! imgbuild against buildah on the same COPY-only Dockerfiles, in the same run: cold builds
//! (fresh stores) and no-op rebuilds.
//!
//! Run with `cargo bench --bench build`. Inputs:
//! - hello: examples/hello (scratch, COPY busybox, ENV, WORKDIR, CMD) with Debian's static
//!   /bin/busybox (package busybox-static) copied in;
//! - ctx10k: the 10 000-file, ≈200 MB context of `bench/context.rs`, `FROM scratch` +
//!   `COPY . /ctx`.
//!
//! buildah runs as `buildah --root R --runroot RR --storage-driver vfs bud --isolation chroot
//! --layers -t NAME` with a private store per cold build (../shared/CONTAINERS.md);
//! imgbuild as `imgbuild build --progress=quiet --root R -t NAME`. The two tools alternate run
//! by run so load on this shared machine falls on both alike. Each no-op series starts after
//! one untimed rebuild. Nothing is asserted: the bench prints times and imgbuild/buildah ratios.

mod common;

use common::{best_median, ms};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const COLD_RUNS: usize = 3;
const NOOP_RUNS: usize = 7;

struct Case {
    name: &'static str,
    context: PathBuf,
    dockerfile: PathBuf,
}

#[derive(Clone, Copy)]
enum Tool {
    Imgbuild,
    Buildah,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Imgbuild => "imgbuild",
            Tool::Buildah => "buildah",
        }
    }

    /// The build command of `case` into the store under `store`.
    fn command(self, case: &Case, store: &Path) -> Command {
        let tag = format!("bench-{}", case.name);
        match self {
            Tool::Imgbuild => {
                let mut c = common::imgbuild_build(&store.join("root"));
                c.arg("-t").arg(&tag);
                c.arg("-f").arg(&case.dockerfile).arg(&case.context);
                c
            }
            Tool::Buildah => {
                let mut c = Command::new("buildah");
                c.arg("--root").arg(store.join("root"));
                c.arg("--runroot").arg(store.join("runroot"));
                c.args(["--storage-driver", "vfs", "bud", "--isolation", "chroot"]);
                c.args(["--layers", "--quiet", "-t", &tag]);
                c.arg("-f").arg(&case.dockerfile).arg(&case.context);
                c
            }
        }
    }
}

/// examples/hello with /bin/busybox, in target/bench-data/hello (files rewritten only when
/// they differ, so their stat data stays put between runs).
fn hello() -> Case {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/Dockerfile");
    let dir = common::data_dir().join("hello");
    fs::create_dir_all(&dir).unwrap();
    let busybox = fs::read("/bin/busybox")
        .expect("/bin/busybox is needed for the hello example: apt-get install busybox-static");
    for (name, bytes) in [
        ("Dockerfile", fs::read(&src).unwrap()),
        ("busybox", busybox),
    ] {
        let path = dir.join(name);
        if fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            fs::write(&path, &bytes).unwrap();
        }
    }
    fs::set_permissions(
        dir.join("busybox"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    Case {
        name: "hello",
        dockerfile: dir.join("Dockerfile"),
        context: dir,
    }
}

/// Per tool: cold times and no-op times.
#[derive(Default)]
struct Times {
    cold: Vec<Duration>,
    noop: Vec<Duration>,
}

fn measure(case: &Case, tools: &[Tool]) -> Vec<Times> {
    let mut times: Vec<Times> = tools.iter().map(|_| Times::default()).collect();
    let mut stores: Vec<Option<tempfile::TempDir>> = tools.iter().map(|_| None).collect();
    for _ in 0..COLD_RUNS {
        for (i, tool) in tools.iter().enumerate() {
            let store = common::scratch(&format!("build-{}-{}-", case.name, tool.name()));
            times[i]
                .cold
                .push(common::time(&mut tool.command(case, store.path())));
            stores[i] = Some(store); // the previous store goes here, outside the timing
        }
    }
    for (i, tool) in tools.iter().enumerate() {
        let store = stores[i].as_ref().unwrap().path();
        common::time(&mut tool.command(case, store));
    }
    for _ in 0..NOOP_RUNS {
        for (i, tool) in tools.iter().enumerate() {
            let store = stores[i].as_ref().unwrap().path();
            times[i]
                .noop
                .push(common::time(&mut tool.command(case, store)));
        }
    }
    times
}

fn buildah_version() -> Option<String> {
    let out = Command::new("buildah").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("build benchmark — {}", common::machine());
    let ctx = common::context_10k();
    common::warm(&ctx.dir, &ctx.files);
    let cases = [
        hello(),
        Case {
            name: "ctx10k",
            context: ctx.dir.clone(),
            dockerfile: ctx.dockerfile.clone(),
        },
    ];
    let mut tools = vec![Tool::Imgbuild];
    match buildah_version() {
        Some(v) => {
            println!("peer: {v}, storage driver vfs, isolation chroot");
            tools.push(Tool::Buildah);
        }
        None => println!("peer: buildah not found (apt-get install buildah); imgbuild alone"),
    }
    println!(
        "ctx10k: {} files, {:.1} MB, page cache warm",
        ctx.files.len(),
        ctx.bytes as f64 / 1e6
    );

    let results: Vec<(&Case, Vec<Times>)> = cases
        .iter()
        .map(|case| {
            eprintln!("measuring {} ...", case.name);
            (case, measure(case, &tools))
        })
        .collect();

    println!();
    println!(
        "cold build = fresh store, best (median) of {COLD_RUNS}; no-op rebuild = same store, \
         best (median) of {NOOP_RUNS}; ratio = imgbuild / buildah, best against best"
    );
    println!(
        "  {:<8} {:<9} {:>22} {:>22}",
        "case", "tool", "cold build", "no-op rebuild"
    );
    for (case, times) in &results {
        let mut bests = Vec::new();
        for (tool, t) in tools.iter().zip(times) {
            let (cb, cm) = best_median(&t.cold);
            let (nb, nm) = best_median(&t.noop);
            bests.push((cb, nb));
            println!(
                "  {:<8} {:<9} {:>9.1} ms ({:>7.1}) {:>9.1} ms ({:>7.1})",
                case.name,
                tool.name(),
                ms(cb),
                ms(cm),
                ms(nb),
                ms(nm)
            );
        }
        if let [(ic, inoop), (bc, bnoop)] = bests[..] {
            println!(
                "  {:<8} {:<9} {:>22} {:>22}",
                case.name,
                "ratio",
                format!(
                    "{:.2} ({:.1}x faster)",
                    ic.as_secs_f64() / bc.as_secs_f64(),
                    bc.as_secs_f64() / ic.as_secs_f64()
                ),
                format!(
                    "{:.3} ({:.0}x faster)",
                    inoop.as_secs_f64() / bnoop.as_secs_f64(),
                    bnoop.as_secs_f64() / inoop.as_secs_f64()
                ),
            );
        }
    }
}
