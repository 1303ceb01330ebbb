//! The unikernel runtime embedded in the binary (build.rs makes the table from `unikernel/`),
//! its module graph, and what the planner asks about apps and the toolchain.

use imgbuild_cache::context::{ContextSnapshot, EntryKind};
use imgbuild_planner::{AppCrate, ModuleSpec, UnikernelRuntime};
use std::sync::OnceLock;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/unikernel_files.rs"));
}

/// The runtime's files: (path relative to the runtime crate, bytes), sorted by path.
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    embedded::FILES
}

/// A digest of the runtime's files (paths and contents): part of every unikernel's key.
pub fn digest() -> String {
    let mut h = blake3::Hasher::new();
    for (path, data) in files() {
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().to_hex().to_string()
}

/// The module graph from the embedded `modules.toml`.
pub fn modules() -> Result<Vec<ModuleSpec>, String> {
    let text = files()
        .iter()
        .find(|(p, _)| *p == "modules.toml")
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .ok_or("this imgbuild was built without its unikernel runtime (unikernel/modules.toml)")?;
    parse_modules(&text)
}

fn parse_modules(text: &str) -> Result<Vec<ModuleSpec>, String> {
    let doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("the runtime's modules.toml does not parse: {e}"))?;
    let list = doc
        .get("module")
        .and_then(|m| m.as_array_of_tables())
        .ok_or("the runtime's modules.toml has no [[module]] entries")?;
    let mut out = Vec::new();
    for t in list.iter() {
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let name = s("name").ok_or("modules.toml: a [[module]] without a name")?;
        let depends_on = t
            .get("depends_on")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        out.push(ModuleSpec {
            feature: s("feature").unwrap_or_else(|| name.clone()),
            description: s("description").unwrap_or_default(),
            name,
            depends_on,
        });
    }
    Ok(out)
}

/// `rustc -vV` of the toolchain cargo will use, asked once per process.
pub fn toolchain() -> Result<String, String> {
    static V: OnceLock<Result<String, String>> = OnceLock::new();
    V.get_or_init(|| {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let out = std::process::Command::new(rustc)
            .arg("-vV")
            .output()
            .map_err(|e| {
                format!("cannot run rustc -vV: {e} (a Rust toolchain is needed: https://rustup.rs)")
            })?;
        if !out.status.success() {
            return Err(format!(
                "rustc -vV failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })
    .clone()
}

/// The runtime as the planner sees it.
pub fn runtime() -> Result<UnikernelRuntime, String> {
    Ok(UnikernelRuntime {
        modules: modules()?,
        digest: digest(),
        toolchain: toolchain()?,
    })
}

/// The app crate in the context directory `dir` ("" for the context root).
pub fn app(snap: &ContextSnapshot, dir: &str) -> Result<AppCrate, String> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    if !dir.is_empty()
        && !snap
            .entries()
            .iter()
            .any(|e| e.path == dir && e.kind == EntryKind::Dir)
    {
        return Err("not a directory in the build context".into());
    }
    let manifest_path = format!("{prefix}Cargo.toml");
    if !snap
        .entries()
        .iter()
        .any(|e| e.path == manifest_path && e.kind == EntryKind::File)
    {
        return Err(
            "not a crate directory: it has no Cargo.toml (or .dockerignore leaves it out)".into(),
        );
    }
    let text = std::fs::read(snap.root().join(&manifest_path))
        .map_err(|e| format!("reading {manifest_path}: {e}"))?;
    let (package, bin, modules, features) = read_manifest(&String::from_utf8_lossy(&text))
        .map_err(|e| format!("{manifest_path}: {e}"))?;
    // The sources' digest: every entry of the directory but `target/`, by path relative to it.
    let mut h = blake3::Hasher::new();
    for e in snap.entries() {
        let Some(rel) = e.path.strip_prefix(&prefix) else {
            continue;
        };
        if rel == "target" || rel.starts_with("target/") {
            continue;
        }
        h.update(&(rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update(e.kind.as_str().as_bytes());
        h.update(&e.mode.to_le_bytes());
        h.update(&e.size.to_le_bytes());
        if let Some(c) = &e.hash {
            h.update(c.as_bytes());
        }
        if let Some(t) = &e.link_target {
            h.update(t.as_bytes());
        }
    }
    Ok(AppCrate {
        package,
        bin,
        modules,
        features,
        digest: h.finalize().to_hex().to_string(),
    })
}

/// (package name, the single bin's name, declared modules, the features its runtime
/// dependency asks for) from an app's Cargo.toml.
type Manifest = (String, String, Vec<String>, Vec<String>);

fn read_manifest(text: &str) -> Result<Manifest, String> {
    let doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("does not parse: {e}"))?;
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or("no [package] name: APP must be a package, not a workspace")?
        .to_owned();
    let Some(dep) = doc
        .get("dependencies")
        .and_then(|d| d.get("imgbuild-unikernel"))
    else {
        return Err(
            "the app does not depend on imgbuild-unikernel (add it under [dependencies])".into(),
        );
    };
    let features: Vec<String> = dep
        .get("features")
        .and_then(|f| f.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let bins: Vec<String> = doc
        .get("bin")
        .and_then(|b| b.as_array_of_tables())
        .map(|a| {
            a.iter()
                .map(|t| {
                    t.get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or(&package)
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    let bin = match bins.as_slice() {
        [] => package.clone(),
        [one] => one.clone(),
        _ => {
            return Err(format!(
                "it has {} [[bin]] targets; a unikernel app has exactly one",
                bins.len()
            ));
        }
    };
    let modules = match doc
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("imgbuild"))
        .and_then(|m| m.get("modules"))
    {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or("[package.metadata.imgbuild] modules must be a list of module names")?,
    };
    Ok((package, bin, modules, features))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests() {
        let (p, b, m, f) = read_manifest(
            "[package]\nname = \"hello\"\n[dependencies]\nimgbuild-unikernel = { path = \"x\", features = [\"bench-exit-at-entry\"] }\n[package.metadata.imgbuild]\nmodules = [\"args\", \"fs\"]\n",
        )
        .unwrap();
        assert_eq!((p.as_str(), b.as_str()), ("hello", "hello"));
        assert_eq!(m, ["args", "fs"]);
        assert_eq!(f, ["bench-exit-at-entry"]);
        let (_, b, m, _) = read_manifest(
            "[package]\nname = \"h\"\n[dependencies]\nimgbuild-unikernel = \"0.1\"\n[[bin]]\nname = \"kernel\"\npath = \"src/main.rs\"\n",
        )
        .unwrap();
        assert_eq!(b, "kernel");
        assert!(m.is_empty());
        assert!(
            read_manifest("[package]\nname = \"h\"\n")
                .unwrap_err()
                .contains("imgbuild-unikernel")
        );
        assert!(
            read_manifest("[workspace]\n")
                .unwrap_err()
                .contains("package")
        );
    }

    #[test]
    fn module_graph() {
        let g = parse_modules(
            "[[module]]\nname = \"boot\"\nfeature = \"boot\"\ndepends_on = []\ndescription = \"entry\"\n\n[[module]]\nname = \"fs\"\nfeature = \"fs\"\ndepends_on = [\"boot\"]\ndescription = \"files\"\n",
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].depends_on, ["boot"]);
        assert!(parse_modules("x = 1").is_err());
    }
}
