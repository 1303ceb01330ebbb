//! Unikernel stages end to end: build examples/unikernel/hello, boot it with `imgbuild run`
//! under qemu (KVM when /dev/kvm works, else TCG), check only the needed modules are linked
//! (`nm`), that two checkouts and stores give the same ELF, and that bad input is explained.

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
    let example = repo().join("examples/unikernel/hello");
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
            example.to_str().unwrap(),
        ],
    )
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
    // Too little memory is a clear failure, not a hang or a success.
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
    let mut elfs = Vec::new();
    for depth in ["a", "b/c/d"] {
        let checkout = tempfile::tempdir().unwrap();
        let ctx = checkout.path().join(depth).join("hello");
        copy_tree(&repo().join("examples/unikernel/hello"), &ctx);
        let root = tempfile::tempdir().unwrap();
        let out = checkout.path().join("hello.elf");
        build_hello(root.path(), &out);
        elfs.push(std::fs::read(&out).unwrap());
    }
    assert!(elfs[0] == elfs[1], "the two builds differ");
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
            ("Dockerfile", b"FROM unikernel AS k\nAPP app\nEXPOSE 8080\n"),
            ("app/Cargo.toml", cargo),
        ],
        &["EXPOSE in a unikernel stage", "networking", "Dockerfile:3"],
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
