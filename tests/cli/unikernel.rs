//! Unikernel stages end to end: build examples/unikernel/hello, boot it with `imgbuild run`
//! under qemu (KVM when /dev/kvm works, else TCG), check only the needed modules are linked
//! (`nm`), that two checkouts and stores give the same ELF, and that bad input is explained.
//! The network examples (pong, static-site) are booted under TCG with their EXPOSEd ports
//! forwarded to 127.0.0.1 and talked to over TCP.

use super::*;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One store for the tests that do not need their own: unikernel builds share its cargo
/// target dir, so the runtime is compiled once, not once per test.
fn shared_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let d = repo().join("target/test-data/unikernel-store");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
    .clone()
}

fn tools() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    require_tool("nm", "binutils");
    require_tool("cargo", "cargo (or rustup)");
}

/// `imgbuild build` that must succeed; returns stdout.
fn build_ok(dir: &Path, args: &[&str]) -> String {
    let o = imgbuild(dir, args);
    assert!(
        o.status.success(),
        "imgbuild {args:?} failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds examples/unikernel/hello into `out` (the README's command, with -o and --root).
fn build_hello(root: &Path, out: &Path) -> String {
    build_example(root, &repo().join("examples/unikernel/hello"), out)
}

fn hello_elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let out = shared_root().join("hello.elf");
        let printed = build_hello(&shared_root(), &out);
        // The last line on stdout is the ELF's sha256.
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(
            printed.trim().lines().last().unwrap(),
            format!("sha256:{}", sha256_hex(&bytes))
        );
        assert_eq!(&bytes[..4], b"\x7fELF");
        out
    })
    .clone()
}

fn run(elf: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", elf.to_str().unwrap()];
    args.extend(extra);
    imgbuild(&repo(), &args)
}

#[test]
fn hello_boots_with_its_args_and_baked_file() {
    tools();
    let elf = hello_elf();
    let o = run(&elf, &[]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(out.contains("Hello from an imgbuild unikernel!"), "{out}");
    assert!(out.contains("args: world from imgbuild\n"), "{out}");
    let greeting =
        std::fs::read_to_string(repo().join("examples/unikernel/hello/greeting.txt")).unwrap();
    assert!(!greeting.trim().is_empty());
    assert!(out.contains(greeting.trim()), "{out}");
    // Arguments after -- replace the CMD.
    let o = run(&elf, &["--", "a", "b"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("args: a b\n"), "{}", stdout(&o));
    // A --memory that is not a size is a usage error naming the flag.
    let o = run(&elf, &["--memory", "nonsense"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--memory"), "{}", stderr(&o));
}

#[test]
fn default_output_tags_and_plan() {
    tools();
    let work = tempfile::tempdir().unwrap();
    let root = shared_root();
    let example = repo().join("examples/unikernel/hello");
    // Without -o: ./hello.elf in the current directory; -t keeps it in the store for run NAME.
    let printed = build_ok(
        work.path(),
        &[
            "build",
            "--root",
            root.to_str().unwrap(),
            "-t",
            "hello-uk:test",
            example.to_str().unwrap(),
        ],
    );
    let elf = std::fs::read(work.path().join("hello.elf")).unwrap();
    assert!(printed.trim().ends_with(&sha256_hex(&elf)), "{printed}");
    let o = imgbuild(
        work.path(),
        &["run", "--root", root.to_str().unwrap(), "hello-uk:test"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("args: world from imgbuild"));
    // OCI outputs make no sense for a unikernel.
    let o = imgbuild(
        work.path(),
        &[
            "build",
            "--root",
            root.to_str().unwrap(),
            "-o",
            "type=oci,dest=x.tar",
            example.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("type=unikernel"), "{}", stderr(&o));
    // The plan says which modules are linked and why.
    let o = imgbuild(
        work.path(),
        &[
            "plan",
            "--root",
            root.to_str().unwrap(),
            example.to_str().unwrap(),
        ],
    );
    let plan = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for line in [
        "boot       every unikernel has it",
        "args       declared by the app",
        "fs         declared by the app",
        "alloc      dependency of",
    ] {
        assert!(plan.contains(line), "{line:?} in:\n{plan}");
    }
    assert!(plan.contains("cached"), "{plan}");
}

/// A tiny app in a temp context: `Dockerfile` with `extra` lines, app printing `text`.
fn tiny_app(name: &str, extra: &str, body: &str) -> tempfile::TempDir {
    let runtime = repo().join("unikernel");
    scratch(&[
        (
            "Dockerfile",
            format!("FROM unikernel AS {name}\nAPP app\n{extra}").as_bytes(),
        ),
        (
            "app/Cargo.toml",
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
                 [dependencies]\nimgbuild-unikernel = {{ path = \"{}\" }}\n",
                runtime.display()
            )
            .as_bytes(),
        ),
        (
            "app/src/main.rs",
            format!(
                "#![no_std]\n#![no_main]\nuse imgbuild_unikernel::{{println, Runtime}};\n\
                 imgbuild_unikernel::main!(app_main);\n\
                 fn app_main(_rt: &mut Runtime) -> i32 {{\n{body}\n}}\n"
            )
            .as_bytes(),
        ),
    ])
}

fn build_tiny(ctx: &Path) -> PathBuf {
    let out = ctx.join("out.elf");
    build_ok(
        ctx,
        &[
            "build",
            "--root",
            shared_root().to_str().unwrap(),
            "-o",
            &format!("type=unikernel,dest={}", out.display()),
            ".",
        ],
    );
    out
}

fn fs_symbols(elf: &Path) -> Vec<String> {
    let o = Command::new("nm").arg("-C").arg(elf).output().unwrap();
    assert!(o.status.success(), "nm: {}", stderr(&o));
    stdout(&o)
        .lines()
        .filter(|l| l.contains("imgbuild_unikernel::fs::"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn only_the_needed_modules_are_linked() {
    tools();
    let body = "println!(\"tiny\");\n0";
    let without = tiny_app("tinynofs", "", body);
    let elf = build_tiny(without.path());
    assert!(
        fs_symbols(&elf).is_empty(),
        "fs symbols without fs: {:?}",
        fs_symbols(&elf)
    );
    let o = run(&elf, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("tiny"));
    let with = tiny_app("tinyfs", "MODULE fs\n", body);
    let elf_fs = build_tiny(with.path());
    let syms = fs_symbols(&elf_fs);
    assert!(!syms.is_empty(), "MODULE fs linked no fs symbols");
    let o = run(&elf_fs, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn two_checkouts_and_stores_give_the_same_elf() {
    tools();
    // hello has no crates.io code; pong brings smoltcp from cargo's registry, whose paths
    // (panic locations) must not reach the image either.
    for example in ["hello", "pong"] {
        let mut elfs = Vec::new();
        for depth in ["a", "b/c/d"] {
            let checkout = tempfile::tempdir().unwrap();
            let ctx = checkout.path().join(depth).join(example);
            copy_tree(&repo().join("examples/unikernel").join(example), &ctx);
            let root = tempfile::tempdir().unwrap();
            let out = checkout.path().join("k.elf");
            build_example(root.path(), &ctx, &out);
            let elf = std::fs::read(&out).unwrap();
            for path in [checkout.path(), root.path(), &cargo_home()] {
                let p = path.to_str().unwrap().as_bytes();
                assert!(
                    !elf.windows(p.len()).any(|w| w == p),
                    "{example}: {} is in the ELF",
                    path.display()
                );
            }
            elfs.push(elf);
        }
        assert!(elfs[0] == elfs[1], "the two builds of {example} differ");
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"))
}

/// Builds the example in `ctx` into `out` with the store `root`.
fn build_example(root: &Path, ctx: &Path, out: &Path) -> String {
    build_ok(
        &repo(),
        &[
            "build",
            "--progress",
            "plain",
            "--root",
            root.to_str().unwrap(),
            "-o",
            &format!("type=unikernel,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    )
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        let t = to.join(&name);
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

#[test]
fn a_panicking_app_fails_with_its_message() {
    tools();
    let ctx = tiny_app("panicky", "", "panic!(\"the app gave up\");");
    let elf = build_tiny(ctx.path());
    let o = run(&elf, &[]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(o.status.code(), Some(0), "{all}");
    assert_eq!(o.status.code(), Some(101), "{all}");
    assert!(all.contains("the app gave up"), "{all}");
}

/// A bad Dockerfile fails with exit 1 and a message holding each of `want`.
fn fails_with(files: &[(&str, &[u8])], want: &[&str]) {
    let ctx = scratch(files);
    let o = imgbuild(
        ctx.path(),
        &[
            "build",
            "--root",
            shared_root().to_str().unwrap(),
            "-o",
            "type=unikernel,dest=x.elf",
            ".",
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} not in:\n{err}");
    }
    assert!(!ctx.path().join("x.elf").exists());
}

#[test]
fn bad_input_is_explained() {
    let cargo = b"[package]\nname = \"x\"\nversion = \"0.1.0\"\n[dependencies]\nimgbuild-unikernel = \"0.1\"\n" as &[u8];
    fails_with(
        &[
            (
                "Dockerfile",
                b"FROM unikernel AS k\nAPP app\nMODULE fs networking\n",
            ),
            ("app/Cargo.toml", cargo),
        ],
        &[
            "unknown module \"networking\"",
            "the modules are: ",
            "boot",
            "console",
            "fs",
            "Dockerfile:3",
        ],
    );
    fails_with(
        &[
            ("Dockerfile", b"FROM unikernel AS k\nAPP src\n"),
            ("src/main.rs", b"fn main() {}\n"),
        ],
        &["APP src: not a crate directory", "Cargo.toml"],
    );
    fails_with(
        &[
            (
                "Dockerfile",
                b"FROM unikernel AS k\nAPP app\nEXPOSE 132/sctp\n",
            ),
            ("app/Cargo.toml", cargo),
        ],
        &["EXPOSE 132/sctp", "no SCTP", "Dockerfile:3"],
    );
    fails_with(
        &[
            ("Dockerfile", b"FROM unikernel AS k\nAPP app\nRUN echo hi\n"),
            ("app/Cargo.toml", cargo),
        ],
        &[
            "RUN is not allowed in a unikernel stage",
            "no shell",
            "COPY --from",
        ],
    );
    // A container stage cannot take a unikernel output, and the reverse.
    let ctx = scratch(&[("Dockerfile", b"FROM scratch\nCOPY Dockerfile /\n")]);
    let o = imgbuild(
        ctx.path(),
        &[
            "build",
            "--root",
            shared_root().to_str().unwrap(),
            "-o",
            "type=unikernel,dest=x.elf",
            ".",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("FROM unikernel"), "{}", stderr(&o));
}

#[test]
fn app_compile_errors_point_at_the_app() {
    tools();
    let ctx = tiny_app("broken", "", "this is not rust");
    let o = imgbuild(
        ctx.path(),
        &[
            "build",
            "--progress",
            "plain",
            "--root",
            shared_root().to_str().unwrap(),
            "-o",
            "type=unikernel,dest=x.elf",
            ".",
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cargo build of the app failed"), "{err}");
    assert!(err.contains("error"), "{err}");
    // The APP line is underlined.
    assert!(err.contains("APP app"), "{err}");
}

#[test]
fn run_explains_what_it_cannot_boot() {
    let dir = tempfile::tempdir().unwrap();
    let o = imgbuild(
        dir.path(),
        &[
            "run",
            "--root",
            dir.path().to_str().unwrap(),
            "./missing.elf",
        ],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

// ---- networking: pong and static-site ----

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long a guest may take to answer its first connection (~60 ms here under TCG; CI
/// machines are slower and shared).
const BOOT_DEADLINE: Duration = Duration::from_secs(60);

fn pong_elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let out = shared_root().join("pong.elf");
        build_example(
            &shared_root(),
            &repo().join("examples/unikernel/pong"),
            &out,
        );
        out
    })
    .clone()
}

/// A 1 MB file no compressor or run-length trick could fake: an xorshift stream.
fn big_file() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// static-site built from a copy of the example with a generated 1 MB file added to its site.
fn static_site_elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let ctx = shared_root().join("static-site-ctx");
        let _ = std::fs::remove_dir_all(&ctx);
        copy_tree(&repo().join("examples/unikernel/static-site"), &ctx);
        std::fs::write(ctx.join("site/big.bin"), big_file()).unwrap();
        let out = shared_root().join("web.elf");
        build_example(&shared_root(), &ctx, &out);
        out
    })
    .clone()
}

/// A free port on 127.0.0.1 (for `-p`, so parallel tests do not race for the same one).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `imgbuild run` in the background; stopped with SIGTERM (which stops its qemu) on drop.
struct Guest {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Guest {
    fn start(elf: &Path, extra: &[&str]) -> Guest {
        let log = tempfile::NamedTempFile::new().unwrap();
        // One open file for both streams (a shared offset), so neither overwrites the other.
        let out = log.reopen().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .args(["run", "--accel", "tcg", "--memory", "64M"])
            .args(extra)
            .arg(elf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Guest { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SIGTERM (imgbuild run then stops its qemu); SIGKILL would leave that to the
        // parent-death signal.
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects and sends `request` until an answer comes, retrying until the deadline. slirp
/// accepts a host connection before the guest listens, and retries the guest's SYN only
/// seconds later, so an attempt that gets nothing quickly is abandoned for a new one.
fn first_answer(guest: &Guest, port: u16, request: &[u8]) -> Vec<u8> {
    let start = Instant::now();
    while start.elapsed() < BOOT_DEADLINE {
        if let Ok(mut s) =
            TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))
        {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            if s.write_all(request).is_ok() {
                let mut buf = [0u8; 512];
                if let Ok(n @ 1..) = s.read(&mut buf) {
                    let mut got = buf[..n].to_vec();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let _ = s.read_to_end(&mut got);
                    return got;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "no answer on 127.0.0.1:{port} within {BOOT_DEADLINE:?}; the guest said:\n{}",
        guest.output()
    );
}

/// One HTTP/1.1 exchange on a fresh connection: (status line, headers, body).
fn http(port: u16, request: &str) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&all)));
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (
        status.to_owned(),
        headers.to_owned(),
        all[split + 4..].to_vec(),
    )
}

fn get(port: u16, path: &str) -> (String, Vec<u8>) {
    let (status, _, body) = http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    );
    (status, body)
}

fn symbols(elf: &Path) -> String {
    let o = Command::new("nm").arg("-C").arg(elf).output().unwrap();
    assert!(o.status.success(), "nm: {}", stderr(&o));
    stdout(&o)
}

/// Asserts `nm` shows each of `present` and none of `absent`.
fn assert_symbols(elf: &Path, present: &[&str], absent: &[&str]) {
    let syms = symbols(elf);
    for p in present {
        assert!(syms.contains(p), "{}: no {p} symbol", elf.display());
    }
    for a in absent {
        let found: Vec<&str> = syms.lines().filter(|l| l.contains(a)).take(5).collect();
        assert!(
            found.is_empty(),
            "{}: {a} symbols: {found:?}",
            elf.display()
        );
    }
}

#[test]
fn pong_answers_on_its_exposed_port() {
    tools();
    let elf = pong_elf();
    // The plan says EXPOSE brought the network in.
    let o = imgbuild(
        &repo(),
        &[
            "plan",
            "--root",
            shared_root().to_str().unwrap(),
            repo().join("examples/unikernel/pong").to_str().unwrap(),
        ],
    );
    let plan = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        plan.contains("net        implied by EXPOSE 12345 (line 4)"),
        "{plan}"
    );
    assert!(plan.contains("12345/tcp"), "{plan}");
    let port = free_port();
    let guest = Guest::start(&elf, &["-p", &format!("{port}:12345")]);
    let answer = first_answer(&guest, port, b"");
    assert_eq!(answer, b"pong\n", "{}", guest.output());
    // Every connection gets its pong.
    for _ in 0..3 {
        assert_eq!(first_answer(&guest, port, b""), b"pong\n");
    }
    let out = guest.output();
    assert!(
        out.contains(&format!(
            "pong: serving on 127.0.0.1:{port} (guest port 12345)"
        )),
        "{out}"
    );
    assert!(out.contains("net: 10.0.2.15/24 via dhcp"), "{out}");
}

#[test]
fn pong_forwards_the_same_port_or_a_free_one() {
    tools();
    let elf = pong_elf();
    // Hold 12345 so the default cannot be used; run picks a free port and says which.
    let _held = TcpListener::bind((Ipv4Addr::LOCALHOST, 12345));
    let guest = Guest::start(&elf, &[]);
    let start = Instant::now();
    let port = loop {
        let out = guest.output();
        if let Some(rest) = out.split("pong: serving on 127.0.0.1:").nth(1) {
            break rest
                .split(' ')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("{out}"));
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{out}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(first_answer(&guest, port, b""), b"pong\n");
}

#[test]
fn static_site_serves_its_files() {
    tools();
    let elf = static_site_elf();
    let port = free_port();
    let guest = Guest::start(&elf, &["-p", &format!("{port}:80")]);
    let first = first_answer(
        &guest,
        port,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", guest.output());
    let site = repo().join("examples/unikernel/static-site/site");
    let (status, body) = get(port, "/index.html");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, std::fs::read(site.join("index.html")).unwrap());
    let big = big_file();
    let (status, body) = get(port, "/big.bin");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        body == big,
        "the 1 MB file differs ({} bytes came)",
        body.len()
    );
    let (status, _) = get(port, "/missing.html");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    // A malformed request gets 400, and the server goes on.
    let (status, _, _) = http(port, "NONSENSE\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let (status, _, _) = http(port, "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let (status, body) = get(port, "/index.html");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(!body.is_empty());

    // Clients leaving in the middle of the 1 MB file stop only their own transfer.
    for _ in 0..3 {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut part = [0u8; 16 * 1024];
        let mut n = 0;
        while n < part.len() {
            match s.read(&mut part[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        assert!(n > 0, "nothing came before the disconnect");
        drop(s);
    }
    let (status, body) = get(port, "/big.bin");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body == big, "after disconnects: {} bytes", body.len());
    let (status, _) = get(port, "/about.html");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

#[test]
fn only_the_used_network_modules_are_linked() {
    tools();
    let udp = [
        "imgbuild_unikernel::udp::",
        "smoltcp::socket::udp",
        "imgbuild_unikernel::dns::",
    ];
    let mut absent = vec!["imgbuild_unikernel::http::"];
    absent.extend(udp);
    assert_symbols(
        &pong_elf(),
        &["imgbuild_unikernel::tcp::", "smoltcp::socket::tcp"],
        &absent,
    );
    assert_symbols(
        &static_site_elf(),
        &["imgbuild_unikernel::http::serve"],
        &udp,
    );
    assert_symbols(
        &hello_elf(),
        &[],
        &[
            "imgbuild_unikernel::net",
            "imgbuild_unikernel::virtio",
            "smoltcp",
        ],
    );
    // hello exposes nothing: no ports section, and run adds no network device.
    let o = run(&hello_elf(), &["--verbose"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("-netdev"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("serving on"), "{}", stderr(&o));
}

#[test]
fn no_dhcp_lease_fails_clearly_in_bounded_time() {
    tools();
    let elf = pong_elf();
    // A network device on a hub with nothing else on it: no DHCP server answers.
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
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
        .arg(&elf)
        .args(["-netdev", "hubport,id=n0,hubid=0"])
        .args(["-device", "virtio-net-device,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the guest did not give up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = start.elapsed();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    // Exit code 104: qemu's status 2n+1.
    assert_eq!(status.code(), Some(209), "{out}");
    assert!(
        out.contains("net: no DHCP lease within 5 s and no static address"),
        "{out}"
    );
    assert!(out.contains("ip=A.B.C.D/N"), "{out}");
    assert!(took >= Duration::from_secs(5), "gave up after {took:?}");
}
