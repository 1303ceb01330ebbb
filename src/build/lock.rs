//! `imgbuild.lock`: what each source of a build resolved to, so later builds get the same
//! inputs (`imgbuild lock` writes it; builds read it when it is there; `--locked` checks it).
//!
//! One JSON object, keys sorted (the same resolutions always make the same bytes):
//! - `images`: a base image reference as the Dockerfile gives it (after ARG expansion) -> the
//!   manifest digest it resolved to (a registry's, or the local store's for a local build);
//!   a pinned reference resolves as `name:tag@digest` would, without asking for the tag;
//! - `urls`: an `ADD <url>` URL -> the sha256 of its content; it must match, as with
//!   `--checksum`;
//! - `git`: an `ADD <git URL>` repository and ref (`URL#REF`, the subdirectory left out) -> the
//!   commit; `git ls-remote` is not asked;
//! - `unpinned`: sources that cannot be pinned -> why.
//!
//! Resolution goes through [`LockState`], which `StoreInputs` consults for every image, URL
//! and git ref the planner asks about and which records what each one resolved to.

use imgbuild_planner::git::is_commit_hash;
use imgbuild_planner::{BaseImage, GitRef, GitTree, RemoteFile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub const FILE_NAME: &str = "imgbuild.lock";
const VERSION: u32 = 1;

/// How this process uses the lockfile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Builds and plans: pins are used when the file is there.
    #[default]
    Use,
    /// `imgbuild lock`: every source is resolved afresh.
    Fresh,
    /// `build --locked`: resolved afresh, then compared with the file.
    Check,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Sets the mode for this process (the first call wins).
pub fn configure(mode: Mode) {
    let _ = MODE.set(mode);
}

fn mode() -> Mode {
    MODE.get().copied().unwrap_or_default()
}

/// The file's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockfile {
    pub version: u32,
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
    #[serde(default)]
    pub git: BTreeMap<String, String>,
    #[serde(default)]
    pub unpinned: BTreeMap<String, String>,
}

impl Lockfile {
    /// Reads and checks a lockfile.
    pub fn read(path: &Path) -> Result<Lockfile, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: Lockfile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a valid lockfile: {e}", path.display()))?;
        if f.version != VERSION {
            return Err(format!(
                "{}: lockfile version {} is not supported (this imgbuild writes version \
                 {VERSION}); run `imgbuild lock` again",
                path.display(),
                f.version
            ));
        }
        let bad_digest = |d: &str| {
            d.strip_prefix("sha256:")
                .is_none_or(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        for (what, map) in [("images", &f.images), ("urls", &f.urls)] {
            if let Some((k, v)) = map.iter().find(|(_, v)| bad_digest(v)) {
                return Err(format!(
                    "{}: {what}[{k:?}] = {v:?} is not a sha256:<hex> digest",
                    path.display()
                ));
            }
        }
        if let Some((k, v)) = f.git.iter().find(|(_, v)| !is_commit_hash(v)) {
            return Err(format!(
                "{}: git[{k:?}] = {v:?} is not a full commit hash",
                path.display()
            ));
        }
        Ok(f)
    }

    /// The file's bytes: pretty JSON, keys sorted, a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a lockfile serialises");
        out.push(b'\n');
        out
    }

    /// Every pinned source: (kind, source, pin).
    fn entries(&self) -> Vec<(&'static str, &String, &String)> {
        let mut out = Vec::new();
        for (kind, map) in [
            ("image", &self.images),
            ("url", &self.urls),
            ("git", &self.git),
        ] {
            out.extend(map.iter().map(|(k, v)| (kind, k, v)));
        }
        out
    }

    fn get(&self, kind: &str, source: &str) -> Option<&String> {
        match kind {
            "image" => self.images.get(source),
            "url" => self.urls.get(source),
            _ => self.git.get(source),
        }
    }
}

/// Where the lockfile of a Dockerfile is: beside it.
pub fn path_for(dockerfile: &Path) -> PathBuf {
    match dockerfile.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(FILE_NAME),
        _ => PathBuf::from(FILE_NAME),
    }
}

/// The pins a build uses and what its sources resolved to.
#[derive(Debug, Default)]
pub struct LockState {
    /// The lockfile, when there is one and the mode uses it.
    pins: Option<Lockfile>,
    resolved: Mutex<Lockfile>,
}

impl LockState {
    /// The state for a build of `dockerfile` in this process's mode.
    pub fn open(dockerfile: &Path) -> Result<LockState, String> {
        let path = path_for(dockerfile);
        let pins = match mode() {
            Mode::Use if path.exists() => Some(Lockfile::read(&path)?),
            _ => None,
        };
        Ok(LockState {
            pins,
            resolved: Mutex::new(Lockfile {
                version: VERSION,
                ..Lockfile::default()
            }),
        })
    }

    /// A base image: pinned, it resolves as `reference@digest` (no tag lookup).
    pub fn image(
        &self,
        reference: &str,
        resolve: impl FnOnce(&str) -> Result<BaseImage, String>,
    ) -> Result<BaseImage, String> {
        if let Some(why) = unpinnable_image(reference) {
            self.resolved
                .lock()
                .unwrap()
                .unpinned
                .insert(reference.to_owned(), why.to_owned());
            return resolve(reference);
        }
        let pin = self.pins.as_ref().and_then(|p| p.images.get(reference));
        let result = match pin {
            Some(d) if !reference.contains('@') => resolve(&format!("{reference}@{d}"))
                .map(|mut b| {
                    b.reference = reference.to_owned();
                    b
                })
                .map_err(|e| format!("{e} (imgbuild.lock pins {reference} to {d})")),
            _ => resolve(reference),
        };
        if let Ok(b) = &result {
            self.resolved
                .lock()
                .unwrap()
                .images
                .insert(reference.to_owned(), b.manifest.clone());
        }
        result
    }

    /// An `ADD <url>`: pinned, its content must have the pinned digest (a `--checksum` in the
    /// Dockerfile wins).
    pub fn remote(
        &self,
        url: &str,
        checksum: Option<&str>,
        fetch: impl FnOnce(Option<&str>) -> Result<RemoteFile, String>,
    ) -> Result<RemoteFile, String> {
        let pin = self.pins.as_ref().and_then(|p| p.urls.get(url));
        let result = match (checksum, pin) {
            (None, Some(p)) => fetch(Some(p)).map_err(|e| {
                format!(
                    "{} (the checksum is pinned by imgbuild.lock; run `imgbuild lock` if the \
                     new content is expected)",
                    e.replace("--checksum=", "")
                )
            }),
            _ => fetch(checksum),
        };
        if let Ok(f) = &result {
            self.resolved
                .lock()
                .unwrap()
                .urls
                .insert(url.to_owned(), f.digest.clone());
        }
        result
    }

    /// An `ADD <git URL>`: pinned, the ref is not looked up.
    pub fn git(
        &self,
        g: &GitRef,
        resolve: impl FnOnce() -> Result<String, String>,
        tree: impl FnOnce(&str) -> Result<GitTree, String>,
    ) -> Result<GitTree, String> {
        let key = g.repo_ref();
        let commit = match self.pins.as_ref().and_then(|p| p.git.get(&key)) {
            Some(c) => c.clone(),
            None => resolve()?,
        };
        self.resolved
            .lock()
            .unwrap()
            .git
            .insert(key, commit.clone());
        tree(&commit)
    }

    /// What the build resolved, after planning. With a lockfile in use, sources it does not
    /// pin get a warning.
    pub fn finish(&self) -> Lockfile {
        let resolved = self.resolved.lock().unwrap().clone();
        if let Some(pins) = &self.pins {
            for (kind, source, _) in resolved.entries() {
                if pins.get(kind, source).is_none() {
                    eprintln!(
                        "warning: imgbuild.lock does not pin {kind} {source} (run `imgbuild lock`)"
                    );
                }
            }
        }
        resolved
    }
}

/// Why a base image reference cannot be pinned, if it cannot: a local file is whatever it
/// holds when the build reads it.
fn unpinnable_image(reference: &str) -> Option<&'static str> {
    if reference.starts_with("oci-layout://") {
        Some("an OCI layout directory on this machine: its content is not named by a digest")
    } else if reference.starts_with("oci-archive://") || reference.starts_with("docker-archive://")
    {
        Some("an archive file on this machine: its content is not named by a digest")
    } else {
        None
    }
}

/// For `build --locked`: every source whose resolution differs from the lockfile or that it
/// lacks, one line each; empty when the build matches the file. Outside `--locked`, nothing.
pub fn check(dockerfile: &Path, resolved: &Lockfile) -> Result<(), String> {
    if mode() != Mode::Check {
        return Ok(());
    }
    let path = path_for(dockerfile);
    if !path.exists() {
        return Err(format!(
            "--locked: there is no {} (run `imgbuild lock` first)",
            path.display()
        ));
    }
    let file = Lockfile::read(&path)?;
    let mut problems = Vec::new();
    for (kind, source, now) in resolved.entries() {
        match file.get(kind, source) {
            None => problems.push(format!(
                "  {kind} {source}: not in {FILE_NAME} (resolves to {now})"
            )),
            Some(pinned) if pinned != now => problems.push(format!(
                "  {kind} {source}: {FILE_NAME} has {pinned}, it resolves to {now} now"
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "--locked: the build's sources differ from {} (run `imgbuild lock` to update it):\n{}",
        path.display(),
        problems.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_sorted_and_stable() {
        let mut f = Lockfile {
            version: 1,
            ..Lockfile::default()
        };
        f.images
            .insert("z:1".into(), format!("sha256:{}", "a".repeat(64)));
        f.images
            .insert("a:1".into(), format!("sha256:{}", "b".repeat(64)));
        f.git.insert("git://h/r#main".into(), "c".repeat(40));
        let text = String::from_utf8(f.to_bytes()).unwrap();
        assert!(text.find("\"a:1\"").unwrap() < text.find("\"z:1\"").unwrap());
        assert!(text.ends_with("}\n"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        std::fs::write(&p, &text).unwrap();
        assert_eq!(Lockfile::read(&p).unwrap(), f);
        assert_eq!(Lockfile::read(&p).unwrap().to_bytes(), text.as_bytes());
        std::fs::write(&p, text.replace(&"c".repeat(40), "main")).unwrap();
        assert!(
            Lockfile::read(&p)
                .unwrap_err()
                .contains("not a full commit hash")
        );
    }
}
