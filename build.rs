//! Embeds the unikernel runtime's sources (`unikernel/`) into the binary, so an installed
//! imgbuild links unikernels without a source checkout: `$OUT_DIR/unikernel_files.rs` is a
//! table of (relative path, `include_bytes!`) for every file under `unikernel/`, sorted by path,
//! leaving out build output (`target/`) and hidden files. `Cargo.lock` is in: it pins the
//! runtime's crates.io dependencies (smoltcp) for every app build.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    // IMGBUILD_UNIKERNEL_SRC embeds another copy of the runtime (one being worked on).
    println!("cargo:rerun-if-env-changed=IMGBUILD_UNIKERNEL_SRC");
    let root = std::env::var_os("IMGBUILD_UNIKERNEL_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("unikernel"));
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    if root.is_dir() {
        walk(&root, "", &mut files, &mut dirs);
    }
    files.sort();
    // A changed file, and a file added to a directory below the root (directories' own
    // mtimes), rebuild the table. The root itself is not watched as a directory: cargo would
    // scan everything under it, a `target/` of the runtime's own builds included.
    let r = root.display();
    println!("cargo:rerun-if-changed={r}/Cargo.toml");
    println!("cargo:rerun-if-changed={r}/modules.toml");
    println!("cargo:rerun-if-changed={r}/Cargo.lock");
    for (rel, _) in &files {
        println!("cargo:rerun-if-changed={r}/{rel}");
    }
    for d in &dirs {
        println!("cargo:rerun-if-changed={r}/{d}");
    }
    let mut out = String::from("pub static FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        let _ = writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("unikernel_files.rs");
    // Rewritten only when different, so an unchanged table does not recompile the binary.
    if std::fs::read(&dest).ok().as_deref() != Some(out.as_bytes()) {
        std::fs::write(&dest, out).expect("write unikernel_files.rs");
    }
}

fn walk(dir: &Path, rel: &str, files: &mut Vec<(String, PathBuf)>, dirs: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // A Cargo.lock below the root would be some nested crate's; only the runtime's counts.
        if name.starts_with('.') || name == "target" || (name == "Cargo.lock" && !rel.is_empty()) {
            continue;
        }
        let path = e.path();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            dirs.push(child.clone());
            walk(&path, &child, files, dirs);
        } else if ft.is_file() {
            files.push((child, path));
        }
    }
}
