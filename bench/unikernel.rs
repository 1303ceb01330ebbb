//! The unikernel example's numbers: image size, guest boot time and the least memory it boots
//! in.
//!
//! Run with `cargo bench --bench unikernel` (needs qemu-system-x86_64 — Debian package
//! qemu-system-x86 — and `strip` from binutils). It builds examples/unikernel/hello with the
//! release imgbuild into a scratch store, plus a twin of it whose runtime dependency enables
//! `bench-exit-at-entry` (the image exits at its first instruction), then:
//! - size: the hello ELF as built and stripped with `strip` (goal ≤ 32 KiB stripped);
//! - boot time: the median wall time of whole qemu runs (`-M microvm`, the command
//!   `imgbuild run` uses) of hello, minus the twin's median: what the guest itself takes from
//!   its first instruction to its exit (goal ≤ 5 ms), under TCG and, when /dev/kvm opens, KVM;
//! - memory: the least `-m` (in 128 KiB steps) the hello image boots in and prints its
//!   greeting and baked file (goal 2 MiB).
//!
//! - the network examples: pong's and static-site's sizes (goals ≤ 256 KiB; ≤ 512 KiB plus the
//!   site's files), the time from starting qemu (TCG, microvm) to pong's first TCP reply
//!   through the forwarded port (goal ≤ 100 ms; connect-and-retry as a client would), and the
//!   requests per second one client on loopback gets for a small file from static-site — side
//!   by side, in the same run, with busybox httpd serving the same files from a container
//!   image built by imgbuild (FROM scratch + busybox + the site) and run with podman (needs
//!   Debian's busybox-static, podman and runc).
//!
//! Nothing is asserted: the bench prints the numbers.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 21;

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = common::imgbuild();
    let work = common::scratch("unikernel-");
    let root = work.path().join("store");
    let hello = work.path().join("hello.elf");
    build(&exe, &root, &repo.join("examples/unikernel/hello"), &hello);

    // The twin: the same app, with the runtime feature that exits at the first instruction.
    let twin_ctx = work.path().join("twin");
    copy_tree(&repo.join("examples/unikernel/hello"), &twin_ctx);
    let manifest = twin_ctx.join("app/Cargo.toml");
    let text = fs::read_to_string(&manifest).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("imgbuild-unikernel") && l.ends_with('}') {
                format!(
                    "{}, features = [\"bench-exit-at-entry\"] }}",
                    l.trim_end_matches('}').trim_end()
                )
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&manifest, text + "\n").unwrap();
    let twin = work.path().join("twin.elf");
    build(&exe, &root, &twin_ctx, &twin);

    let stripped = work.path().join("hello.stripped");
    let st = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&hello)
        .status()
        .expect("strip (Debian package binutils)");
    assert!(st.success());
    let size = |p: &Path| fs::metadata(p).unwrap().len();
    println!(
        "hello image: {} bytes as built, {} bytes ({:.1} KiB) stripped (goal <= 32 KiB)",
        size(&hello),
        size(&stripped),
        size(&stripped) as f64 / 1024.0
    );

    let mut accels = vec!["tcg"];
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        accels.push("kvm");
    }
    for accel in &accels {
        // One untimed run each, so the first timed run does not pay for cold caches.
        qemu(&hello, accel, "8M");
        qemu(&twin, accel, "8M");
        let mut h = Vec::new();
        let mut t = Vec::new();
        // Alternate, so load on this shared machine falls on both alike.
        for _ in 0..RUNS {
            h.push(qemu(&hello, accel, "8M").0);
            t.push(qemu(&twin, accel, "8M").0);
        }
        let (mh, mt) = (median(&mut h), median(&mut t));
        println!(
            "{accel}: whole qemu run {:.1} ms (hello) - {:.1} ms (exit at entry) = guest boot {:.2} ms \
             (goal <= 5 ms), medians of {RUNS}",
            ms(mh),
            ms(mt),
            ms(mh) - ms(mt)
        );
    }

    // TCG: the machine's KVM may be a software one, much slower to reach a hang's timeout.
    let accel = "tcg";
    let mut least = None;
    for kib in (1..=64).map(|n| n * 128) {
        let (_, ok) = qemu(&hello, accel, &format!("{kib}K"));
        if ok {
            least = Some(kib);
            break;
        }
    }
    match least {
        Some(k) => println!(
            "least memory hello boots in ({accel}): {k} KiB ({:.2} MiB; goal 2 MiB)",
            k as f64 / 1024.0
        ),
        None => println!("hello did not boot in 8 MiB or less"),
    }

    network(&exe, &root, &repo, work.path());
}

/// How many qemu starts the first-reply median is over.
const REPLY_RUNS: usize = 11;
/// How long each requests-per-second measurement runs.
const RPS_TIME: Duration = Duration::from_secs(3);

fn network(exe: &Path, root: &Path, repo: &Path, work: &Path) {
    let pong = work.join("pong.elf");
    build(exe, root, &repo.join("examples/unikernel/pong"), &pong);
    let site_ctx = work.join("static-site");
    copy_tree(&repo.join("examples/unikernel/static-site"), &site_ctx);
    let web = work.join("web.elf");
    build(exe, root, &site_ctx, &web);
    let site_bytes: u64 = fs::read_dir(site_ctx.join("site"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let (pong_built, pong_stripped) = (fs::metadata(&pong).unwrap().len(), stripped_size(&pong));
    println!(
        "pong image: {pong_built} bytes as built, {pong_stripped} bytes ({:.1} KiB) stripped \
         (goal <= 256 KiB)",
        pong_stripped as f64 / 1024.0
    );
    let (web_built, web_stripped) = (fs::metadata(&web).unwrap().len(), stripped_size(&web));
    println!(
        "static-site image: {web_built} bytes as built, {web_stripped} bytes stripped, of which \
         {site_bytes} are the site's files: {:.1} KiB without them (goal <= 512 KiB plus files)",
        (web_stripped - site_bytes) as f64 / 1024.0
    );

    // qemu start -> first "pong" through the forwarded port.
    qemu_net(&pong, free_port(), 12345).stop();
    let mut times = Vec::new();
    for _ in 0..REPLY_RUNS {
        let port = free_port();
        let start = Instant::now();
        let q = qemu_net(&pong, port, 12345);
        let t = first_reply(port, start);
        q.stop();
        if let Some(t) = t {
            times.push(t);
        }
    }
    if times.is_empty() {
        println!("pong: no reply within 30 s in any run");
    } else {
        let n = times.len();
        let mut sorted = times.clone();
        sorted.sort();
        println!(
            "pong, qemu start to first TCP reply (tcg, microvm): median {:.1} ms, min {:.1}, max \
             {:.1} over {n} runs (goal <= 100 ms)",
            ms(median(&mut times)),
            ms(sorted[0]),
            ms(sorted[n - 1])
        );
    }

    // static-site and busybox httpd under podman, the same files, the same client.
    let port = free_port();
    let q = qemu_net(&web, port, 80);
    let uk = first_reply(port, Instant::now()).map(|_| {
        (
            rps(port, "/index.html", false),
            rps(port, "/index.html", true),
        )
    });
    q.stop();
    let bb = busybox_httpd(exe, root, &site_ctx.join("site"), work);
    match (uk, bb) {
        (Some((close, keep)), Ok(bb)) => {
            println!(
                "small file (index.html), one client on loopback, a connection per request: \
                 static-site unikernel {close:.0} req/s, busybox httpd in podman {bb:.0} req/s: \
                 {:.2}x",
                close / bb
            );
            println!(
                "static-site with keep-alive (busybox httpd closes every connection): {keep:.0} \
                 req/s"
            );
        }
        (uk, bb) => {
            println!("requests per second: unikernel {uk:?}, busybox httpd in podman {bb:?}")
        }
    }
}

fn stripped_size(elf: &Path) -> u64 {
    let out = elf.with_extension("stripped");
    let st = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(elf)
        .status()
        .expect("strip (Debian package binutils)");
    assert!(st.success());
    fs::metadata(&out).unwrap().len()
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// qemu as `imgbuild run` starts it for an image exposing `guest` (TCG: this machine's KVM is
/// a slow software one).
struct Qemu(Child);

impl Qemu {
    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_net(elf: &Path, host: u16, guest: u16) -> Qemu {
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ])
        .args(["-serial", "stdio", "-accel", "tcg", "-m", "64M"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(elf)
        .arg("-netdev")
        .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
        .args(["-device", "virtio-net-device,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (Debian package qemu-system-x86)");
    Qemu(child)
}

/// The time from `start` to the first byte of an answer on `port`. Connections are retried:
/// slirp accepts the host side before the guest listens, and its retry of the guest's SYN
/// comes seconds later, so an attempt silent for 30 ms is abandoned for a new one. The
/// request is an HTTP GET (pong ignores what it is sent).
fn first_reply(port: u16, start: Instant) -> Option<Duration> {
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(30)));
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut b = [0u8; 1];
            if let Ok(1) = s.read(&mut b) {
                return Some(start.elapsed());
            }
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    None
}

/// Requests per second for `path` from one client for RPS_TIME: a new connection per request
/// (read to the server's close), or one keep-alive connection (bodies by Content-Length).
fn rps(port: u16, path: &str, keep_alive: bool) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    let mut conn: Option<TcpStream> = None;
    while start.elapsed() < RPS_TIME {
        if keep_alive {
            let s = conn
                .get_or_insert_with(|| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap());
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            if s.write_all(req.as_bytes()).is_err() || !read_response(s) {
                conn = None;
                continue;
            }
        } else {
            let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
                continue;
            };
            let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut all = Vec::new();
            if s.write_all(req.as_bytes()).is_err()
                || s.read_to_end(&mut all).is_err()
                || !all.starts_with(b"HTTP/1.")
            {
                continue;
            }
        }
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Reads one response with a Content-Length body; false if the connection ended first.
fn read_response(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return false,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).is_ok()
}

/// busybox httpd serving `site` from an image imgbuild builds (FROM scratch + busybox + the
/// files), exported as a docker archive and run with podman (private store, runc, and the
/// containers.conf this machine's rlimits need): its requests per second.
fn busybox_httpd(exe: &Path, root: &Path, site: &Path, work: &Path) -> Result<f64, String> {
    let ctx = work.join("bb-httpd");
    copy_tree(site, &ctx.join("site"));
    fs::copy("/bin/busybox", ctx.join("busybox"))
        .map_err(|e| format!("/bin/busybox (Debian package busybox-static): {e}"))?;
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY site/ /www/\n\
         CMD [\"/bin/busybox\",\"httpd\",\"-f\",\"-p\",\"8080\",\"-h\",\"/www\"]\n",
    )
    .unwrap();
    let tar = work.join("bb-httpd.tar");
    let o = Command::new(exe)
        .args(["build", "--progress", "quiet", "--root"])
        .arg(root)
        .args(["-t", "bb-httpd:bench", "-o"])
        .arg(format!("type=docker,dest={}", tar.display()))
        .arg(&ctx)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "building the busybox httpd image: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    // podman refuses a runroot longer than 50 characters: a short temp dir, not `work`.
    let pd_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pd = pd_dir.path();
    fs::write(
        pd.join("containers.conf"),
        "[containers]\ndefault_ulimits = []\n",
    )
    .unwrap();
    let podman = |args: &[&str]| -> Result<String, String> {
        let o = Command::new("podman")
            .env("CONTAINERS_CONF", pd.join("containers.conf"))
            .arg("--root")
            .arg(pd.join("root"))
            .arg("--runroot")
            .arg(pd.join("run"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(args)
            .output()
            .map_err(|e| format!("podman: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "podman {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    podman(&["load", "-i", tar.to_str().unwrap()])?;
    let images = podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
    let image = images
        .lines()
        .find(|l| l.contains("bb-httpd"))
        .ok_or("the loaded image is not listed")?
        .to_owned();
    let port = free_port();
    let name = format!("imgbuild-bench-httpd-{}", std::process::id());
    podman(&[
        "run",
        "-d",
        "--rm",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        &image,
    ])?;
    let r = match first_reply(port, Instant::now()) {
        Some(_) => Ok(rps(port, "/index.html", false)),
        None => Err("busybox httpd did not answer".to_owned()),
    };
    let _ = podman(&["rm", "-f", "-t", "0", &name]);
    r
}

fn build(exe: &Path, root: &Path, ctx: &Path, out: &Path) {
    let o = Command::new(exe)
        .args(["build", "--progress", "quiet", "--root"])
        .arg(root)
        .arg("-o")
        .arg(format!("type=unikernel,dest={}", out.display()))
        .arg(ctx)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "building {}: {}",
        ctx.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// One whole qemu run: its wall time, and whether the guest exited 0 having printed the
/// greeting.
fn qemu(elf: &Path, accel: &str, mem: &str) -> (Duration, bool) {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
    ])
    .args(["-serial", "stdio"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .arg("-kernel")
    .arg(elf)
    .args(["-m", mem, "-accel", accel]);
    if accel == "kvm" {
        c.args(["-cpu", "host"]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = c
        .spawn()
        .expect("qemu-system-x86_64 (Debian package qemu-system-x86)");
    // Too little memory can hang the firmware: a run over 10 s counts as a failed boot.
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let took = start.elapsed();
    let stdout = reader.join().unwrap_or_default();
    let ok = status.and_then(|s| s.code()) == Some(1)
        && stdout.contains("Hello from an imgbuild unikernel!");
    (took, ok)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "target" {
            continue;
        }
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            fs::copy(e.path(), &t).unwrap();
        }
    }
}
