//! The unikernel link step: the app crate from the context, the runtime embedded in the binary,
//! the stage's files as a file-system image and its CMD/ENV as a config blob, built with the
//! host's cargo into one ELF, stored as a blob.
//!
//! Layout (under the store root):
//!
//! ```text
//! unikernel/work/<stage>/         W, a cargo workspace kept between builds (locked while used)
//!   Cargo.toml                    [workspace] members = ["app"] and the fixed release profile
//!   imgbuild-unikernel/           the runtime's files (from the binary)
//!   app/                          the APP directory (target/ left out), its runtime dependency
//!                                 rewritten to ../imgbuild-unikernel with the module features
//!   imgbuild/fs.img, config.bin   what the runtime's build script bakes in
//! unikernel/work/<stage>.lock     flock held while W is used
//! unikernel/target/               T, cargo's target dir, shared (cargo locks it itself)
//! ```
//!
//! Files in W are rewritten only when their bytes differ, so cargo's fingerprints (mtimes) hold
//! and an unchanged app is not recompiled. Reproducibility: cargo hashes path packages by
//! their path relative to the workspace root, which is the same in every W, and every absolute
//! path that could reach the ELF (W, T, CARGO_HOME, the sysroot) is remapped.

use crate::rootfs::RootFs;
use imgbuild_planner::UnikernelOp;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The media type a unikernel's step record gives its ELF blob.
pub const ELF_MEDIA_TYPE: &str = "application/vnd.imgbuild.unikernel.elf";

/// The fs image's magic (contract with the runtime's fs module).
const FS_MAGIC: &[u8; 8] = b"IMGBFS1\0";

/// How many of cargo's last output lines a failure shows.
const TAIL_LINES: usize = 25;

/// The runtime's sources: (path relative to the runtime crate, bytes), as embedded in the
/// binary.
pub type RuntimeFiles<'a> = &'a [(&'a str, &'a [u8])];

/// What the link needs besides the op.
pub struct LinkInput<'a> {
    pub store_root: &'a Path,
    /// A name for the work directory (the stage's name, or `stage-N`).
    pub work_name: String,
    pub runtime: RuntimeFiles<'a>,
    /// The build context's root, and the app's files in it (paths relative to the root).
    pub context_root: &'a Path,
    pub app_files: Vec<AppFile>,
    /// The stage's filesystem (its COPY/ADD layers).
    pub rootfs: &'a RootFs,
}

/// One entry of the app directory, relative to it.
pub struct AppFile {
    pub rel: String,
    pub kind: AppKind,
    pub mode: u32,
}

pub enum AppKind {
    Dir,
    /// A regular file: its path relative to the context root.
    File(String),
    Symlink(String),
}

/// Builds the ELF; returns its path (inside T, valid until the next build of that bin).
pub fn link(
    op: &UnikernelOp,
    input: &LinkInput<'_>,
    output: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf, String> {
    if input.runtime.is_empty() {
        return Err(
            "this imgbuild was built without its unikernel runtime (unikernel/ was missing)".into(),
        );
    }
    let base = input.store_root.join("unikernel");
    let work_root = base.join("work");
    fs::create_dir_all(&work_root).map_err(|e| format!("{}: {e}", work_root.display()))?;
    let w = work_root.join(&input.work_name);
    // Two builds of the same stage take turns in W (cargo itself locks T).
    let lock_path = work_root.join(format!("{}.lock", input.work_name));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let target = base.join("target");

    // The runtime copy.
    let runtime_dir = w.join("imgbuild-unikernel");
    let wanted: BTreeMap<String, Want> = runtime_tree(input.runtime);
    sync_tree(&runtime_dir, &wanted)?;

    // The app, with its runtime dependency pointed at the copy.
    let mut app: BTreeMap<String, Want> = BTreeMap::new();
    for f in &input.app_files {
        let want = match &f.kind {
            AppKind::Dir => Want::Dir,
            AppKind::Symlink(t) => Want::Symlink(t.clone()),
            AppKind::File(p) => {
                let data = fs::read(input.context_root.join(p))
                    .map_err(|e| format!("reading {p} from the context: {e}"))?;
                Want::File(data, f.mode)
            }
        };
        app.insert(f.rel.clone(), want);
    }
    let manifest = match app.get("Cargo.toml") {
        Some(Want::File(d, _)) => d.clone(),
        _ => return Err("the app has no Cargo.toml".into()),
    };
    let rewritten = rewrite_manifest(&manifest, &op.features())?;
    app.insert(
        "Cargo.toml".into(),
        Want::File(rewritten.into_bytes(), 0o644),
    );
    // The runtime's lock file pins smoltcp and its dependencies, so builds do not drift with
    // the registry; an app's own lock file adds the pins of its other dependencies.
    let app_lock = match app.remove("Cargo.lock") {
        Some(Want::File(d, _)) => Some(d),
        _ => None,
    };
    let runtime_lock = input
        .runtime
        .iter()
        .find(|(p, _)| *p == "Cargo.lock")
        .map(|(_, d)| d.to_vec());
    let lockfile = match (runtime_lock, app_lock) {
        (Some(r), Some(a)) => Some(merge_locks(&r, &a)?),
        (r, a) => r.or(a),
    };
    sync_tree(&w.join("app"), &app)?;

    let mut top: BTreeMap<String, Want> = BTreeMap::new();
    top.insert("Cargo.toml".into(), Want::File(WORKSPACE.into(), 0o644));
    top.insert("imgbuild".into(), Want::Dir);
    top.insert(
        "imgbuild/fs.img".into(),
        Want::File(fs_image(input.rootfs)?, 0o644),
    );
    top.insert("imgbuild/config.bin".into(), Want::File(config(op), 0o644));
    for (rel, want) in &top {
        write_if_changed(&w.join(rel), want)?;
    }
    if let Some(l) = lockfile {
        write_if_changed(&w.join("Cargo.lock"), &Want::File(l, 0o644))?;
    }

    let host = host_triple(&op.toolchain)?;
    let rustflags = rustflags(input.runtime, &w, &runtime_dir, &target)?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // The calling environment must not change the build: cargo settings that a surrounding
    // `cargo` (or the user's shell) exported are dropped, except where cargo keeps its home.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTFLAGS")
            || k == "RUSTC_WRAPPER"
            || k == "RUSTC_WORKSPACE_WRAPPER"
            || k == "RUSTDOCFLAGS"
        {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(w.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .arg("--target")
        .arg(&host)
        .current_dir(&w)
        // RUSTFLAGS in cargo's encoded form (0x1f between flags), so a path with a space
        // stays one flag.
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\u{1f}"))
        .env("CARGO_TERM_COLOR", "never")
        .env("IMGBUILD_UNIKERNEL_FS", w.join("imgbuild/fs.img"))
        .env("IMGBUILD_UNIKERNEL_CONFIG", w.join("imgbuild/config.bin"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        format!("cannot run cargo: {e} (a Rust toolchain must be installed: https://rustup.rs)")
    })?;
    let stdout = child.stdout.take();
    let tail = std::sync::Mutex::new(std::collections::VecDeque::new());
    let keep = |line: &str| {
        output(line);
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line.to_owned());
    };
    std::thread::scope(|s| {
        if let Some(out) = stdout {
            s.spawn(|| {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    keep(&line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                keep(&line);
            }
        }
    });
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo: {e}"))?;
    if !status.success() {
        let t = tail.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<&str> = t.iter().map(String::as_str).collect();
        return Err(format!(
            "cargo build of the app failed ({status}):\n{}",
            lines.join("\n")
        ));
    }
    drop(lock);
    let elf = target.join(&host).join("release").join(&op.bin);
    if !elf.is_file() {
        return Err(format!(
            "cargo succeeded but wrote no {} (is {:?} the app's binary?)",
            elf.display(),
            op.bin
        ));
    }
    Ok(elf)
}

/// W/Cargo.toml: the contract's fixed workspace and release profile (the profile is part of
/// what makes the ELF reproducible and small).
const WORKSPACE: &str = "[workspace]\nmembers = [\"app\"]\nresolver = \"3\"\n[profile.release]\npanic = \"abort\"\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\ndebug = false\nincremental = false\n";

/// What a path in W should be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want {
    Dir,
    File(Vec<u8>, u32),
    Symlink(String),
}

fn runtime_tree(files: RuntimeFiles<'_>) -> BTreeMap<String, Want> {
    let mut out = BTreeMap::new();
    for (path, data) in files {
        let mut dir = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(p);
            out.insert(dir.clone(), Want::Dir);
        }
        out.insert((*path).to_owned(), Want::File(data.to_vec(), 0o644));
    }
    out
}

/// Makes `root` hold exactly `wanted` (paths relative to it): what differs is rewritten, what
/// is not wanted is removed, what is equal is left alone (its mtime too).
fn sync_tree(root: &Path, wanted: &BTreeMap<String, Want>) -> Result<(), String> {
    let err = |p: &Path, e: io::Error| format!("{}: {e}", p.display());
    fs::create_dir_all(root).map_err(|e| err(root, e))?;
    // Remove what is not wanted (deepest first, so directories are empty by then).
    let mut existing = Vec::new();
    list(root, "", &mut existing).map_err(|e| err(root, e))?;
    existing.sort_by(|a, b| b.cmp(a));
    for rel in existing {
        let p = root.join(&rel);
        let keep = match (wanted.get(&rel), fs::symlink_metadata(&p)) {
            (Some(Want::Dir), Ok(m)) => m.is_dir(),
            (Some(Want::File(..)), Ok(m)) => m.is_file(),
            (Some(Want::Symlink(_)), Ok(m)) => m.file_type().is_symlink(),
            _ => false,
        };
        if !keep {
            remove(&p).map_err(|e| err(&p, e))?;
        }
    }
    for (rel, want) in wanted {
        write_if_changed(&root.join(rel), want)?;
    }
    Ok(())
}

fn list(root: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type()?.is_dir() {
            list(root, &r, out)?;
        }
        out.push(r);
    }
    Ok(())
}

fn remove(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes one path when it differs from `want` (a file through a temp name and a rename).
fn write_if_changed(p: &Path, want: &Want) -> Result<(), String> {
    let err = |e: io::Error| format!("{}: {e}", p.display());
    let meta = fs::symlink_metadata(p).ok();
    match want {
        Want::Dir => {
            if !meta.is_some_and(|m| m.is_dir()) {
                remove(p).map_err(err)?;
                fs::create_dir_all(p).map_err(err)?;
            }
        }
        Want::Symlink(t) => {
            if fs::read_link(p).ok().as_deref() != Some(Path::new(t)) {
                remove(p).map_err(err)?;
                std::os::unix::fs::symlink(t, p).map_err(err)?;
            }
        }
        Want::File(data, mode) => {
            let same =
                meta.as_ref().is_some_and(|m| m.is_file()) && fs::read(p).is_ok_and(|d| d == *data);
            if !same {
                if meta.as_ref().is_some_and(|m| m.is_dir()) {
                    remove(p).map_err(err)?;
                }
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(err)?;
                }
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                let tmp = p.with_file_name(format!(
                    ".{}.{}.tmp",
                    name.unwrap_or_default(),
                    std::process::id()
                ));
                fs::write(&tmp, data).map_err(err)?;
                fs::rename(&tmp, p).map_err(err)?;
            }
            let m = fs::metadata(p).map_err(err)?;
            if m.mode() & 0o777 != mode & 0o777 {
                fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o777)).map_err(err)?;
            }
        }
    }
    Ok(())
}

/// The app's Cargo.toml with its `imgbuild-unikernel` dependency pointed at the runtime copy,
/// with exactly the module set's features; everything else kept as written.
pub fn rewrite_manifest(text: &[u8], features: &[String]) -> Result<String, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the app's Cargo.toml is not UTF-8")?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("the app's Cargo.toml does not parse: {e}"))?;
    let deps = doc
        .get_mut("dependencies")
        .and_then(|d| d.as_table_like_mut())
        .ok_or(
            "the app's Cargo.toml has no [dependencies]: it must depend on imgbuild-unikernel",
        )?;
    if deps.get("imgbuild-unikernel").is_none() {
        return Err("the app's Cargo.toml does not depend on imgbuild-unikernel".into());
    }
    let mut dep = toml_edit::InlineTable::new();
    dep.insert("path", "../imgbuild-unikernel".into());
    dep.insert("default-features", false.into());
    let mut f = toml_edit::Array::new();
    for feature in features {
        f.push(feature.as_str());
    }
    dep.insert("features", toml_edit::Value::Array(f));
    deps.insert(
        "imgbuild-unikernel",
        toml_edit::Item::Value(toml_edit::Value::InlineTable(dep)),
    );
    Ok(doc.to_string())
}

/// The stage's files in the runtime's fs image format: magic, count, sorted entries (path,
/// st_mode, data offset, size), then the data.
pub fn fs_image(root: &RootFs) -> Result<Vec<u8>, String> {
    let mut entries: Vec<(String, u32, Vec<u8>)> = Vec::new();
    if !root.is_empty() {
        for (rel, f) in root
            .walk("/")
            .map_err(|e| format!("reading the stage's files: {e}"))?
        {
            let ft = f.meta.file_type();
            let (kind, data) = if ft.is_dir() {
                (0o040000, Vec::new())
            } else if ft.is_symlink() {
                let t = fs::read_link(&f.real).map_err(|e| format!("/{rel}: {e}"))?;
                (0o120000, t.as_os_str().as_encoded_bytes().to_vec())
            } else if ft.is_file() {
                let mut d = Vec::new();
                fs::File::open(&f.real)
                    .and_then(|mut h| h.read_to_end(&mut d))
                    .map_err(|e| format!("/{rel}: {e}"))?;
                (0o100000, d)
            } else {
                // Devices, fifos and sockets mean nothing to the runtime.
                continue;
            };
            entries.push((rel, kind | f.mode(), data));
        }
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let header: usize = 12
        + entries
            .iter()
            .map(|(p, _, _)| 4 + p.len() + 4 + 8 + 8)
            .sum::<usize>();
    let mut out = Vec::with_capacity(header + entries.iter().map(|e| e.2.len()).sum::<usize>());
    out.extend_from_slice(FS_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut offset = header as u64;
    for (path, mode, data) in &entries {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&mode.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        offset += data.len() as u64;
    }
    for (_, _, data) in &entries {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// The config blob: the CMD's arguments and the ENV, each as a length-prefixed string.
pub fn config(op: &UnikernelOp) -> Vec<u8> {
    let mut out = Vec::new();
    for list in [&op.cmd, &op.env] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for s in list {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// `host: …` of `rustc -vV`.
fn host_triple(toolchain: &str) -> Result<String, String> {
    toolchain
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .ok_or_else(|| format!("cannot tell the host target from `rustc -vV`: {toolchain:?}"))
}

/// RUSTFLAGS: the runtime's rustflags.txt (one per line, `{RUNTIME}` filled in) and the path
/// remaps that keep the machine's paths out of the ELF.
fn rustflags(
    runtime: RuntimeFiles<'_>,
    w: &Path,
    runtime_dir: &Path,
    target: &Path,
) -> Result<Vec<String>, String> {
    let text = runtime
        .iter()
        .find(|(p, _)| *p == "rustflags.txt")
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .ok_or("the runtime has no rustflags.txt")?;
    let rt = runtime_dir.display().to_string();
    let mut flags: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("{RUNTIME}", &rt))
        .collect();
    let mut remap = vec![
        (w.to_path_buf(), "/imgbuild/build".to_owned()),
        (target.to_path_buf(), "/imgbuild/target".to_owned()),
    ];
    if let Some(home) = cargo_home() {
        remap.push((home.clone(), "/cargo".into()));
        // Registry crates (smoltcp) put their source paths into panic locations. rustc lets
        // the last matching remap win, so this one comes after the CARGO_HOME one.
        remap.push((home.join("registry/src"), "/cargo-registry".into()));
    }
    if let Some(home) = rustup_home() {
        remap.push((home, "/rustup".into()));
    }
    for (from, to) in remap {
        flags.push(format!("--remap-path-prefix={}={to}", from.display()));
    }
    Ok(flags)
}

/// The runtime's Cargo.lock with the app's pins added: every `[[package]]` of the app's lock
/// that the runtime's does not have (by name and version). cargo drops what is unused.
fn merge_locks(runtime: &[u8], app: &[u8]) -> Result<Vec<u8>, String> {
    let parse = |d: &[u8], what: &str| -> Result<toml_edit::DocumentMut, String> {
        std::str::from_utf8(d)
            .map_err(|_| format!("{what} is not UTF-8"))?
            .parse()
            .map_err(|e| format!("{what} does not parse: {e}"))
    };
    let mut doc = parse(runtime, "the runtime's Cargo.lock")?;
    let app = parse(app, "the app's Cargo.lock")?;
    let id = |t: &toml_edit::Table| {
        (
            t.get("name").and_then(|v| v.as_str()).map(str::to_owned),
            t.get("version").and_then(|v| v.as_str()).map(str::to_owned),
        )
    };
    let Some(extra) = app.get("package").and_then(|p| p.as_array_of_tables()) else {
        return Ok(runtime.to_vec());
    };
    let packages = doc
        .get_mut("package")
        .and_then(|p| p.as_array_of_tables_mut())
        .ok_or("the runtime's Cargo.lock has no [[package]]")?;
    let have: std::collections::BTreeSet<_> = packages.iter().map(id).collect();
    for t in extra.iter() {
        if !have.contains(&id(t)) {
            packages.push(t.clone());
        }
    }
    Ok(doc.to_string().into_bytes())
}

/// The name of the ELF section that lists a unikernel's EXPOSEd ports. `imgbuild run` reads
/// it from the file it boots, so the ports travel with the ELF (`imgbuild run FILE.elf` needs
/// no store). Contents: u32 LE count, then per port u16 LE port and u16 LE IP protocol
/// number (6 TCP, 17 UDP). A section that is not loaded: the guest never sees it.
pub const PORTS_SECTION: &str = ".imgbuild.ports";

const SHT_PROGBITS: u32 = 1;

/// The fields of an ELF64 little-endian file that adding a section touches.
struct ElfShape {
    shoff: usize,
    shnum: usize,
    shstrndx: usize,
}

fn rd<const N: usize>(d: &[u8], at: usize) -> Result<[u8; N], String> {
    d.get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "the ELF is truncated".to_owned())
}

fn elf_shape(elf: &[u8]) -> Result<ElfShape, String> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at| rd::<2>(elf, at).map(u16::from_le_bytes);
    if u16_at(58)? != 64 {
        return Err("unexpected ELF section header size".into());
    }
    let shape = ElfShape {
        shoff: u64::from_le_bytes(rd::<8>(elf, 40)?) as usize,
        shnum: u16_at(60)? as usize,
        shstrndx: u16_at(62)? as usize,
    };
    // Extended section numbering (more than 0xff00 sections) never comes out of our link.
    if shape.shnum == 0 || shape.shstrndx >= shape.shnum {
        return Err("the ELF has no usable section header table".into());
    }
    if shape
        .shoff
        .checked_add(shape.shnum * 64)
        .is_none_or(|e| e > elf.len())
    {
        return Err("the ELF's section header table is truncated".into());
    }
    Ok(shape)
}

/// (name offset, type, offset, size) of section `i`.
fn section(elf: &[u8], s: &ElfShape, i: usize) -> Result<(usize, u32, usize, usize), String> {
    let h = s.shoff + i * 64;
    Ok((
        u32::from_le_bytes(rd::<4>(elf, h)?) as usize,
        u32::from_le_bytes(rd::<4>(elf, h + 4)?),
        u64::from_le_bytes(rd::<8>(elf, h + 24)?) as usize,
        u64::from_le_bytes(rd::<8>(elf, h + 32)?) as usize,
    ))
}

fn section_bytes<'e>(elf: &'e [u8], s: &ElfShape, name: &str) -> Result<Option<&'e [u8]>, String> {
    let (_, _, stroff, strsize) = section(elf, s, s.shstrndx)?;
    let strtab = elf
        .get(stroff..stroff.saturating_add(strsize))
        .ok_or("the ELF's section name table is truncated")?;
    for i in 0..s.shnum {
        let (n, _, off, size) = section(elf, s, i)?;
        let Some(rest) = strtab.get(n..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return elf
                .get(off..off.saturating_add(size))
                .map(Some)
                .ok_or_else(|| format!("the ELF's {name} section is truncated"));
        }
    }
    Ok(None)
}

/// The ELF with a `.imgbuild.ports` section listing `ports` appended: the new section's data,
/// a new section name table and a new section header table go at the end of the file (the
/// old ones stay as unreferenced bytes); what is loaded is not touched.
pub fn add_ports_section(
    elf: &[u8],
    ports: &[imgbuild_planner::ExposedPort],
) -> Result<Vec<u8>, String> {
    let s = elf_shape(elf)?;
    if section_bytes(elf, &s, PORTS_SECTION)?.is_some() {
        return Err(format!(
            "the app's ELF already has a {PORTS_SECTION} section"
        ));
    }
    let (_, _, stroff, strsize) = section(elf, &s, s.shstrndx)?;
    let mut out = elf.to_vec();
    let pad = |out: &mut Vec<u8>, to: usize| out.resize(out.len().div_ceil(to) * to, 0);
    // The section name table, with the new name.
    let name_at = strsize;
    let new_strtab_at = out.len();
    out.extend_from_slice(&elf[stroff..stroff + strsize]);
    out.extend_from_slice(PORTS_SECTION.as_bytes());
    out.push(0);
    let new_strsize = out.len() - new_strtab_at;
    // The port list.
    pad(&mut out, 4);
    let data_at = out.len();
    out.extend_from_slice(&(ports.len() as u32).to_le_bytes());
    for p in ports {
        out.extend_from_slice(&p.port.to_le_bytes());
        out.extend_from_slice(&(if p.udp { 17u16 } else { 6 }).to_le_bytes());
    }
    let data_size = out.len() - data_at;
    // The section headers: the old ones (the name table's moved), then the new one.
    pad(&mut out, 8);
    let shoff = out.len();
    out.extend_from_slice(&elf[s.shoff..s.shoff + s.shnum * 64]);
    let str_h = shoff + s.shstrndx * 64;
    out[str_h + 24..str_h + 32].copy_from_slice(&(new_strtab_at as u64).to_le_bytes());
    out[str_h + 32..str_h + 40].copy_from_slice(&(new_strsize as u64).to_le_bytes());
    let mut h = [0u8; 64];
    h[0..4].copy_from_slice(&(name_at as u32).to_le_bytes());
    h[4..8].copy_from_slice(&SHT_PROGBITS.to_le_bytes());
    // flags 0 (not allocated), address 0.
    h[24..32].copy_from_slice(&(data_at as u64).to_le_bytes());
    h[32..40].copy_from_slice(&(data_size as u64).to_le_bytes());
    h[48..56].copy_from_slice(&4u64.to_le_bytes());
    out.extend_from_slice(&h);
    let shnum = u16::try_from(s.shnum + 1).map_err(|_| "the ELF has too many sections")?;
    out[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
    out[60..62].copy_from_slice(&shnum.to_le_bytes());
    Ok(out)
}

/// The ports a unikernel ELF lists in its `.imgbuild.ports` section (none without one).
pub fn read_ports(elf: &[u8]) -> Result<Vec<imgbuild_planner::ExposedPort>, String> {
    let s = elf_shape(elf)?;
    let Some(d) = section_bytes(elf, &s, PORTS_SECTION)? else {
        return Ok(Vec::new());
    };
    let bad = || format!("the ELF's {PORTS_SECTION} section is malformed");
    let count = u32::from_le_bytes(rd::<4>(d, 0).map_err(|_| bad())?) as usize;
    if d.len() != 4 + count.saturating_mul(4) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 4;
        let port = u16::from_le_bytes([d[at], d[at + 1]]);
        let udp = match u16::from_le_bytes([d[at + 2], d[at + 3]]) {
            6 => false,
            17 => true,
            _ => return Err(bad()),
        };
        out.push(imgbuild_planner::ExposedPort { port, udp });
    }
    Ok(out)
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cargo")))
}

fn rustup_home() -> Option<PathBuf> {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".rustup")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_rewrite_keeps_the_rest() {
        let m = b"[package]\nname = \"hello\" # the app\nversion = \"0.1.0\"\n\n[dependencies]\nimgbuild-unikernel = { path = \"../../../unikernel\", features = [\"fs\"] }\nother = \"1\"\n\n[package.metadata.imgbuild]\nmodules = [\"args\"]\n";
        let out = rewrite_manifest(m, &["boot".into(), "console".into()]).unwrap();
        assert!(out.contains("name = \"hello\" # the app"), "{out}");
        assert!(out.contains("other = \"1\""), "{out}");
        assert!(
            out.contains(
                "imgbuild-unikernel = { path = \"../imgbuild-unikernel\", default-features = false, features = [\"boot\", \"console\"] }"
            ),
            "{out}"
        );
        assert!(rewrite_manifest(b"[package]\nname='x'\n", &[]).is_err());
        assert!(rewrite_manifest(b"[dependencies]\nx = '1'\n", &[]).is_err());
    }

    #[test]
    fn fs_image_layout() {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("layer");
        fs::create_dir_all(l.join("etc")).unwrap();
        fs::write(l.join("etc/greeting"), b"hi\n").unwrap();
        fs::set_permissions(l.join("etc/greeting"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(l.join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("greeting", l.join("etc/link")).unwrap();
        let img = fs_image(&RootFs::new(vec![l])).unwrap();
        assert_eq!(&img[..8], FS_MAGIC);
        assert_eq!(u32::from_le_bytes(img[8..12].try_into().unwrap()), 3);
        let mut at = 12;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let n = u32::from_le_bytes(img[at..at + 4].try_into().unwrap()) as usize;
            let path = String::from_utf8(img[at + 4..at + 4 + n].to_vec()).unwrap();
            at += 4 + n;
            let mode = u32::from_le_bytes(img[at..at + 4].try_into().unwrap());
            let off = u64::from_le_bytes(img[at + 4..at + 12].try_into().unwrap()) as usize;
            let size = u64::from_le_bytes(img[at + 12..at + 20].try_into().unwrap()) as usize;
            at += 20;
            seen.push((path, mode, img[off..off + size].to_vec()));
        }
        assert_eq!(
            seen,
            [
                ("etc".to_string(), 0o040755, vec![]),
                ("etc/greeting".to_string(), 0o100644, b"hi\n".to_vec()),
                ("etc/link".to_string(), 0o120777, b"greeting".to_vec()),
            ]
        );
        assert_eq!(fs_image(&RootFs::default()).unwrap(), b"IMGBFS1\0\0\0\0\0");
    }

    /// A minimal ELF64: header, one loaded byte, a section-name table, two section headers.
    fn tiny_elf() -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        e[58..60].copy_from_slice(&64u16.to_le_bytes());
        e.push(0x90);
        let strtab_at = e.len();
        e.extend_from_slice(b"\0.shstrtab\0");
        let strtab_len = e.len() - strtab_at;
        let shoff = e.len();
        e.extend_from_slice(&[0u8; 64]);
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&1u32.to_le_bytes());
        h[4..8].copy_from_slice(&3u32.to_le_bytes());
        h[24..32].copy_from_slice(&(strtab_at as u64).to_le_bytes());
        h[32..40].copy_from_slice(&(strtab_len as u64).to_le_bytes());
        e.extend_from_slice(&h);
        e[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        e[60..62].copy_from_slice(&2u16.to_le_bytes());
        e[62..64].copy_from_slice(&1u16.to_le_bytes());
        e
    }

    #[test]
    fn ports_section_round_trip() {
        use imgbuild_planner::ExposedPort;
        let elf = tiny_elf();
        assert_eq!(read_ports(&elf).unwrap(), []);
        let ports = [
            ExposedPort {
                port: 53,
                udp: true,
            },
            ExposedPort {
                port: 12345,
                udp: false,
            },
        ];
        let with = add_ports_section(&elf, &ports).unwrap();
        // What was there stays byte for byte (only the header's shoff/shnum change).
        assert_eq!(with[64..elf.len()], elf[64..]);
        assert_eq!(read_ports(&with).unwrap(), ports);
        let s = elf_shape(&with).unwrap();
        assert_eq!(s.shnum, 3);
        assert_eq!(
            section_bytes(&with, &s, ".shstrtab").unwrap().unwrap(),
            b"\0.shstrtab\0.imgbuild.ports\0"
        );
        assert!(add_ports_section(&with, &ports).is_err());
        assert!(read_ports(b"not an elf").is_err());
        assert!(read_ports(&elf[..70]).is_err());
    }

    #[test]
    fn runtime_lock_gets_the_apps_pins() {
        let rt = b"version = 4\n\n[[package]]\nname = \"smoltcp\"\nversion = \"0.12.0\"\n";
        let app = b"version = 4\n\n[[package]]\nname = \"smoltcp\"\nversion = \"0.12.0\"\n\n[[package]]\nname = \"itoa\"\nversion = \"1.0.0\"\n";
        let merged = String::from_utf8(merge_locks(rt, app).unwrap()).unwrap();
        assert_eq!(merged.matches("name = \"smoltcp\"").count(), 1, "{merged}");
        assert!(merged.contains("name = \"itoa\""), "{merged}");
    }

    #[test]
    fn config_layout() {
        let op = UnikernelOp {
            app: String::new(),
            package: "p".into(),
            bin: "p".into(),
            modules: Vec::new(),
            extra_features: Vec::new(),
            cmd: vec!["world".into()],
            ports: Vec::new(),
            env: vec!["A=1".into()],
            app_digest: String::new(),
            runtime_digest: String::new(),
            toolchain: String::new(),
        };
        assert_eq!(
            config(&op),
            [
                &1u32.to_le_bytes()[..],
                &5u32.to_le_bytes(),
                b"world",
                &1u32.to_le_bytes(),
                &3u32.to_le_bytes(),
                b"A=1"
            ]
            .concat()
        );
    }
}
