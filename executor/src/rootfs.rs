//! A read-only view of an image's root filesystem over its extracted layers, without merging
//! them on disk.
//!
//! Each layer is a directory holding exactly what its tar held. Whiteouts come in either of two
//! forms: marker files (`.wh.<name>` hides `<name>` of lower layers; `.wh..wh..opq` in a
//! directory hides all of its lower content), as extracted without privileges, or overlayfs's own
//! (a 0/0 character device named `<name>`; `trusted.overlay.opaque=y` on a directory), as
//! extracted by root so the same trees serve as overlay lower dirs for RUN. Lookups walk the
//! layers from the top, the way overlayfs would. Symlinks resolve as if the view were `/` (chroot semantics): a link can
//! never lead a lookup outside the image.

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Symlink hops allowed in one lookup, like Linux's ELOOP limit.
const MAX_LINKS: usize = 40;

/// An image filesystem as a stack of extracted layer directories.
#[derive(Clone, Debug, Default)]
pub struct RootFs {
    /// Bottom first.
    layers: Vec<PathBuf>,
}

/// A file found in the view: where its bytes are, and its metadata.
#[derive(Debug)]
pub struct Found {
    /// The path of the file in the view, normalised (`/a/b`).
    pub path: String,
    /// The real file in one of the layer directories.
    pub real: PathBuf,
    pub meta: Metadata,
}

impl Found {
    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
    pub fn is_symlink(&self) -> bool {
        self.meta.file_type().is_symlink()
    }
    pub fn mode(&self) -> u32 {
        self.meta.mode() & 0o7777
    }
}

impl RootFs {
    /// `layers` bottom first.
    pub fn new(layers: Vec<PathBuf>) -> RootFs {
        RootFs { layers }
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The entry at `path` without following a final symlink (intermediate ones are followed).
    pub fn lstat(&self, path: &str) -> io::Result<Option<Found>> {
        let Some(resolved) = self.resolve_parent(path)? else {
            return Ok(None);
        };
        self.lookup_exact(&resolved)
    }

    /// The entry at `path`, following symlinks all the way.
    pub fn stat(&self, path: &str) -> io::Result<Option<Found>> {
        let Some(resolved) = self.resolve(path, true)? else {
            return Ok(None);
        };
        self.lookup_exact(&resolved)
    }

    /// Reads a whole file (following symlinks), or None when absent.
    pub fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.stat(path)? {
            Some(f) if f.meta.is_file() => fs::read(&f.real).map(Some),
            _ => Ok(None),
        }
    }

    /// `path` with every symlink resolved inside the view (the final one too when `follow`).
    /// A missing final component is fine (it may be about to be created); a missing
    /// intermediate one gives None. Paths are absolute and clean.
    pub fn resolve(&self, path: &str, follow: bool) -> io::Result<Option<String>> {
        let mut pending: Vec<String> = components(path).into_iter().rev().collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            let candidate = format!("/{}", join(&done, &c));
            let last = pending.is_empty();
            match self.lookup_exact(&candidate)? {
                None if last => done.push(c),
                None => return Ok(None),
                Some(f) if f.is_symlink() && (!last || follow) => {
                    hops += 1;
                    if hops > MAX_LINKS {
                        return Err(io::Error::other(format!(
                            "too many levels of symbolic links at {candidate}"
                        )));
                    }
                    let target = fs::read_link(&f.real)?.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        done.clear();
                    }
                    pending.extend(components(&target).into_iter().rev());
                }
                Some(_) => done.push(c),
            }
        }
        Ok(Some(format!("/{}", done.join("/"))))
    }

    /// `resolve` of the parent, with the final component appended unresolved.
    fn resolve_parent(&self, path: &str) -> io::Result<Option<String>> {
        let mut comps = components(path);
        let Some(last) = comps.pop() else {
            return Ok(Some("/".into()));
        };
        let parent = format!("/{}", comps.join("/"));
        let Some(p) = self.resolve(&parent, true)? else {
            return Ok(None);
        };
        if last == ".." {
            let mut c = components(&p);
            c.pop();
            return Ok(Some(format!("/{}", c.join("/"))));
        }
        Ok(Some(if p == "/" {
            format!("/{last}")
        } else {
            format!("{p}/{last}")
        }))
    }

    /// The entry at an already resolved path: the topmost layer that has it, unless a layer
    /// above hides it (a whiteout of it or of an ancestor, an opaque ancestor, or a
    /// non-directory where an ancestor should be).
    fn lookup_exact(&self, path: &str) -> io::Result<Option<Found>> {
        let comps = components(path);
        if comps.is_empty() {
            // The root always exists.
            let real = self.layers.last().cloned().unwrap_or_else(|| "/".into());
            let meta = fs::symlink_metadata(&real)?;
            return Ok(Some(Found {
                path: "/".into(),
                real,
                meta,
            }));
        }
        for layer in self.layers.iter().rev() {
            let real = comps.iter().fold(layer.clone(), |p, c| p.join(c));
            match fs::symlink_metadata(&real) {
                Ok(meta) if is_overlay_whiteout(&meta) => return Ok(None),
                Ok(meta) => {
                    return Ok(Some(Found {
                        path: path.to_owned(),
                        real,
                        meta,
                    }));
                }
                // ENOTDIR: an ancestor is a file in this layer, which hides lower ones.
                Err(e) if e.raw_os_error() == Some(20) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let mut dir = layer.clone();
            for c in &comps {
                if dir.join(format!("{WHITEOUT}{c}")).exists() || is_opaque(&dir) {
                    return Ok(None);
                }
                dir.push(c);
                if !dir.exists() {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// The entries directly in directory `path` (resolved), merged over the layers, sorted.
    pub fn read_dir(&self, path: &str) -> io::Result<BTreeMap<String, Found>> {
        let comps = components(path);
        let mut out: BTreeMap<String, Found> = BTreeMap::new();
        let mut hidden: Vec<String> = Vec::new();
        for layer in self.layers.iter().rev() {
            let dir = comps.iter().fold(layer.clone(), |p, c| p.join(c));
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(20) => break, // a file hides lower dirs
                Err(e) => return Err(e),
            };
            let mut opaque = is_opaque(&dir);
            for entry in rd {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == OPAQUE {
                    opaque = true;
                    continue;
                }
                if let Some(h) = name.strip_prefix(WHITEOUT) {
                    hidden.push(h.to_owned());
                    continue;
                }
                if out.contains_key(&name) || hidden.contains(&name) {
                    continue;
                }
                let meta = fs::symlink_metadata(entry.path())?;
                if is_overlay_whiteout(&meta) {
                    hidden.push(name);
                    continue;
                }
                let p = if comps.is_empty() {
                    format!("/{name}")
                } else {
                    format!("/{}/{name}", comps.join("/"))
                };
                out.insert(
                    name,
                    Found {
                        path: p,
                        real: entry.path(),
                        meta,
                    },
                );
            }
            if opaque {
                break;
            }
            // A layer where this directory is not a directory hides everything below.
            if !fs::symlink_metadata(&dir)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                break;
            }
        }
        Ok(out)
    }

    /// Every entry under directory `path` (not following symlinks), depth first, sorted, paths
    /// relative to `path`.
    pub fn walk(&self, path: &str) -> io::Result<Vec<(String, Found)>> {
        let mut out = Vec::new();
        self.walk_into(path, "", &mut out)?;
        Ok(out)
    }

    fn walk_into(&self, dir: &str, rel: &str, out: &mut Vec<(String, Found)>) -> io::Result<()> {
        for (name, f) in self.read_dir(dir)? {
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let is_dir = f.is_dir();
            let sub = f.path.clone();
            out.push((r.clone(), f));
            if is_dir {
                self.walk_into(&sub, &r, out)?;
            }
        }
        Ok(())
    }
}

/// overlayfs's whiteout: a character device with device number 0/0.
fn is_overlay_whiteout(meta: &Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// A directory that hides lower layers' contents: the marker file, or overlayfs's xattr.
fn is_opaque(dir: &std::path::Path) -> bool {
    dir.join(OPAQUE).exists() || has_opaque_xattr(dir)
}

/// overlayfs's opaque mark on a directory, in either namespace: `user.overlay.opaque` (the
/// trees we extract and mount with `userxattr`) or `trusted.overlay.opaque`.
pub(crate) fn has_opaque_xattr(dir: &std::path::Path) -> bool {
    ["user.overlay.opaque", "trusted.overlay.opaque"]
        .iter()
        .any(|name| {
            let mut buf = [0u8; 4];
            matches!(rustix::fs::lgetxattr(dir, *name, &mut buf), Ok(1) if buf[0] == b'y')
        })
}

/// The components of a path, `.` and empty ones dropped (`..` kept: resolution handles it).
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .collect()
}

fn join(done: &[String], c: &str) -> String {
    if done.is_empty() {
        c.to_owned()
    } else {
        format!("{}/{c}", done.join("/"))
    }
}
