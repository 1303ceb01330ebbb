//! COPY, ADD and WORKDIR as layer entries.
//!
//! Docker's rules, as BuildKit applies them:
//! - a directory source copies its contents (not itself) into the destination;
//! - a file source lands at `dest/<name>` when the destination ends in `/`, exists as a
//!   directory, or more than one thing is copied; otherwise it becomes `dest`;
//! - missing parents of the destination are created (0755);
//! - files from the context are owned by 0:0, files from another stage or image keep their
//!   owner; `--chown` overrides both, with names looked up in the destination image;
//! - `--chmod` replaces permission bits; `ADD` unpacks local tar archives (plain, gzip, bzip2,
//!   xz, zstd) into the destination instead of copying them.
//! - `ADD <url>`: the downloaded file is named after the URL (see
//!   [`RemoteSource::file_name`](imgbuild_planner::RemoteSource)) in a directory destination,
//!   gets mode 0600, owner 0:0 and the build epoch as mtime; it is unpacked only with
//!   `--unpack=true`.
//! - `ADD <git URL>`: the repository tree (a tar the planner's inputs made, modes git's) is
//!   copied into the destination like a directory source: owner 0:0 (or `--chown`), mtimes
//!   the build epoch.
//!
//! The destination is resolved in the image below the step (symlinks followed, chroot-style),
//! so a link in the image can never make a layer write outside it.

use crate::chmod::Chmod;
use crate::rootfs::{Found, RootFs};
use crate::userdb::{self, Owner};
use imgbuild_cache::context::{self, ContextSnapshot, EntryKind as CtxKind};
use imgbuild_cache::layer::{
    Content, DirOptions, Entry, EntryKind, ExtractMode, ExtractOptions, Ownership,
    decompress_detect, entries_from_dir, extract,
};
use imgbuild_parser::ignore::PatternMatcher;
use imgbuild_planner::{CopyOp, GitSource, RemoteSource};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub enum Source<'a> {
    Context(&'a ContextSnapshot),
    Fs(RootFs),
}

/// Where the content of an `ADD <url>` source (or the tar of an `ADD <git URL>` tree) is, by
/// its digest (`sha256:…`).
pub type RemoteContent<'a> = &'a dyn Fn(&str) -> Result<PathBuf, String>;

/// What a context-side source of a COPY/ADD selected, in the order of the sources.
enum Selected<'a> {
    Context(context::SelectedItem<'a>),
    Remote(&'a RemoteSource),
    Git(&'a GitSource),
}

/// One file to put in the layer, before ownership and mode rules are applied.
struct Item {
    /// Absolute destination path.
    dest: String,
    kind: EntryKind,
    mode: u32,
    owner: Option<Owner>,
    mtime: u64,
}

/// The entries a COPY/ADD adds on top of `below`. `scratch` is a directory that lives until the
/// layer is written (archives are unpacked there).
pub fn entries(
    op: &CopyOp,
    source: &Source,
    below: &RootFs,
    epoch: u64,
    scratch: &Path,
    remote: RemoteContent,
) -> Result<Vec<Entry>, String> {
    let chown = match &op.chown {
        Some(spec) => Some(userdb::resolve(spec, below, false)?),
        None => None,
    };
    let chmod = op.chmod.as_deref().map(Chmod::parse).transpose()?;
    let excludes = if op.excludes.is_empty() {
        None
    } else {
        Some(
            PatternMatcher::new(&op.excludes)
                .map_err(|e| format!("invalid --exclude pattern: {e}"))?,
        )
    };

    let dest_dir_mark = op.dest.ends_with('/');
    let dest = op.dest.trim_end_matches('/');
    let dest = if dest.is_empty() { "/" } else { dest };
    // The destination as it is in the image below (symlinks in it followed).
    let dest_resolved = below
        .resolve(dest, true)
        .map_err(|e| format!("cannot resolve {dest}: {e}"))?
        .unwrap_or_else(|| dest.to_owned());
    let dest_exists_dir = below
        .stat(&dest_resolved)
        .ok()
        .flatten()
        .is_some_and(|f| f.is_dir());

    let mut items: Vec<Item> = Vec::new();
    let mut count = 0usize;
    match source {
        Source::Context(snap) => {
            let mut selected = Vec::new();
            for src in &op.sources {
                if let Some(r) = op.remotes.iter().find(|r| r.url == *src) {
                    count += 1;
                    selected.push(Selected::Remote(r));
                    continue;
                }
                if let Some(g) = op.git.iter().find(|g| g.source == *src) {
                    count += 1;
                    selected.push(Selected::Git(g));
                    continue;
                }
                let sel = snap.select(src).map_err(|e| e.to_string())?;
                for it in sel.items() {
                    count += 1;
                    selected.push(Selected::Context(it.clone()));
                }
            }
            let into_dir = dest_dir_mark || dest_exists_dir || count > 1;
            for s in &selected {
                match s {
                    Selected::Context(it) => context_item(
                        op,
                        snap,
                        it,
                        &dest_resolved,
                        into_dir,
                        excludes.as_ref(),
                        epoch,
                        scratch,
                        &mut items,
                    )?,
                    Selected::Remote(r) => remote_item(
                        op,
                        r,
                        &remote(&r.digest)?,
                        &dest_resolved,
                        into_dir,
                        epoch,
                        scratch,
                        &mut items,
                    )?,
                    Selected::Git(g) => {
                        let first = items.len();
                        unpack_archive(&remote(&g.digest)?, &dest_resolved, scratch, &mut items)
                            .map_err(|e| format!("the tree of {}: {e}", g.source))?;
                        for it in &mut items[first..] {
                            it.owner = Some(Owner { uid: 0, gid: 0 });
                            it.mtime = epoch;
                        }
                    }
                }
            }
        }
        Source::Fs(fs) => {
            let mut found = Vec::new();
            for src in &op.sources {
                let matches = fs_select(fs, src)?;
                count += matches.len();
                found.extend(matches);
            }
            let into_dir = dest_dir_mark || dest_exists_dir || count > 1;
            for f in &found {
                fs_item(
                    op,
                    fs,
                    f,
                    &dest_resolved,
                    into_dir,
                    excludes.as_ref(),
                    &mut items,
                )?;
            }
        }
    }
    for (name, data) in &op.contents {
        let target = if dest_dir_mark || dest_exists_dir || op.contents.len() + count > 1 {
            join(&dest_resolved, name)
        } else {
            dest_resolved.clone()
        };
        items.push(Item {
            dest: target,
            kind: EntryKind::File(Content::Bytes(data.clone().into_bytes())),
            mode: 0o644,
            owner: Some(Owner { uid: 0, gid: 0 }),
            mtime: epoch,
        });
    }

    // Ownership and modes, then the parent directories that do not exist below.
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    for it in items {
        let is_dir = matches!(it.kind, EntryKind::Dir);
        let mode = match (&chmod, &it.kind) {
            (Some(c), EntryKind::File(_) | EntryKind::Dir) => c.apply(it.mode, is_dir),
            _ => it.mode,
        };
        let owner = chown.or(it.owner).unwrap_or(Owner { uid: 0, gid: 0 });
        let rel = it.dest.trim_start_matches('/').to_owned();
        if rel.is_empty() {
            continue; // the root directory itself keeps its metadata
        }
        let mut e = Entry::new(rel.clone(), it.kind);
        e.mode = mode;
        e.uid = owner.uid;
        e.gid = owner.gid;
        e.mtime = it.mtime;
        out.insert(rel, e);
    }
    let parent_owner = chown.unwrap_or(Owner { uid: 0, gid: 0 });
    let paths: Vec<String> = out.keys().cloned().collect();
    for p in paths {
        let mut cur = String::new();
        let comps: Vec<&str> = p.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            cur = if cur.is_empty() {
                (*c).to_owned()
            } else {
                format!("{cur}/{c}")
            };
            if out.contains_key(&cur) {
                continue;
            }
            let exists = below
                .stat(&format!("/{cur}"))
                .map_err(|e| e.to_string())?
                .is_some_and(|f| f.is_dir());
            if !exists {
                let mut e = Entry::new(cur.clone(), EntryKind::Dir);
                e.uid = parent_owner.uid;
                e.gid = parent_owner.gid;
                e.mtime = epoch;
                out.insert(cur.clone(), e);
            }
        }
    }
    Ok(out.into_values().collect())
}

/// The directories WORKDIR creates: each missing component of `path`, owned by `user`.
pub fn mkdir_entries(
    path: &str,
    user: &str,
    below: &RootFs,
    epoch: u64,
) -> Result<Vec<Entry>, String> {
    let owner = if user.is_empty() {
        Owner { uid: 0, gid: 0 }
    } else {
        userdb::resolve(user, below, true)?
    };
    let resolved = below
        .resolve(path, true)
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| path.to_owned());
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in resolved.split('/').filter(|c| !c.is_empty()) {
        cur = if cur.is_empty() {
            c.to_owned()
        } else {
            format!("{cur}/{c}")
        };
        let found = below.stat(&format!("/{cur}")).map_err(|e| e.to_string())?;
        match found {
            Some(f) if f.is_dir() => {}
            Some(_) => {
                return Err(format!(
                    "cannot create directory /{cur}: a file is in the way"
                ));
            }
            None => {
                let mut e = Entry::new(cur.clone(), EntryKind::Dir);
                e.uid = owner.uid;
                e.gid = owner.gid;
                e.mtime = epoch;
                out.push(e);
            }
        }
    }
    Ok(out)
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn last_component(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A context item: a file (or link) to `dest`, or a directory's contents into `dest`.
#[allow(clippy::too_many_arguments)]
fn context_item(
    op: &CopyOp,
    snap: &ContextSnapshot,
    it: &context::SelectedItem,
    dest: &str,
    into_dir: bool,
    excludes: Option<&PatternMatcher>,
    epoch: u64,
    scratch: &Path,
    items: &mut Vec<Item>,
) -> Result<(), String> {
    let excluded =
        |rel: &str| -> bool { excludes.is_some_and(|m| m.is_excluded(rel).unwrap_or(false)) };
    let root_owner = Some(Owner { uid: 0, gid: 0 });
    let is_dir = it.resolved.is_none_or(|e| e.kind == CtxKind::Dir);
    if is_dir {
        let base = it.resolved.map(|e| e.path.clone()).unwrap_or_default();
        // With --parents the source's own path is kept under the destination.
        let target_dir = if op.parents && !it.path.is_empty() {
            join(dest, &it.path)
        } else {
            dest.to_owned()
        };
        for e in it.entries {
            let rel = if base.is_empty() {
                e.path.as_str()
            } else if e.path == base {
                ""
            } else {
                &e.path[base.len() + 1..]
            };
            if !rel.is_empty() && excluded(rel) {
                continue;
            }
            let target = if rel.is_empty() {
                target_dir.clone()
            } else {
                join(&target_dir, rel)
            };
            if let Some(kind) = context_kind(snap, e)? {
                items.push(Item {
                    dest: target,
                    kind,
                    mode: e.mode,
                    owner: root_owner,
                    mtime: epoch,
                });
            }
        }
        return Ok(());
    }
    let e = it.resolved.expect("non-root items resolve");
    let name = last_component(&it.path);
    if excluded(&it.path) {
        return Ok(());
    }
    let target = if op.parents {
        join(dest, &it.path)
    } else if into_dir {
        join(dest, name)
    } else {
        dest.to_owned()
    };
    // ADD unpacks local archives (unless --unpack=false).
    if op.add && op.unpack != Some(false) && e.kind == CtxKind::File {
        let path = snap.root().join(&e.path);
        if is_archive(&path)? {
            // An archive always unpacks into the destination as a directory.
            return unpack_archive(&path, dest, scratch, items);
        }
    }
    if let Some(kind) = context_kind(snap, e)? {
        items.push(Item {
            dest: target,
            kind,
            mode: e.mode,
            owner: root_owner,
            mtime: epoch,
        });
    }
    Ok(())
}

/// A downloaded file: to `dest` (or `dest/<file name>`), 0600, owned by root, mtime the
/// epoch (BuildKit takes Last-Modified; the epoch keeps the layer a function of the key). With
/// `--unpack=true` an archive is unpacked into `dest` instead, like a local one.
#[allow(clippy::too_many_arguments)]
fn remote_item(
    op: &CopyOp,
    r: &RemoteSource,
    content: &Path,
    dest: &str,
    into_dir: bool,
    epoch: u64,
    scratch: &Path,
    items: &mut Vec<Item>,
) -> Result<(), String> {
    if op.unpack == Some(true) && is_archive(content)? {
        return unpack_archive(content, dest, scratch, items)
            .map_err(|e| e.replace(&content.display().to_string(), &r.url));
    }
    items.push(Item {
        dest: if into_dir {
            join(dest, &r.file_name)
        } else {
            dest.to_owned()
        },
        kind: EntryKind::File(Content::Path(content.to_path_buf())),
        mode: 0o600,
        owner: Some(Owner { uid: 0, gid: 0 }),
        mtime: epoch,
    });
    Ok(())
}

fn context_kind(snap: &ContextSnapshot, e: &context::Entry) -> Result<Option<EntryKind>, String> {
    Ok(match e.kind {
        CtxKind::File => Some(EntryKind::File(Content::Path(snap.root().join(&e.path)))),
        CtxKind::Dir => Some(EntryKind::Dir),
        CtxKind::Symlink => Some(EntryKind::Symlink {
            target: e.link_target.clone().unwrap_or_default().into(),
        }),
        CtxKind::Fifo => Some(EntryKind::Fifo),
        // Sockets and device nodes are not copied from a build context (BuildKit skips them).
        _ => None,
    })
}

/// Whether a file is a tar archive, possibly compressed.
fn is_archive(path: &Path) -> Result<bool, String> {
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let Ok((_, mut r)) = decompress_detect(f) else {
        return Ok(false);
    };
    let mut block = [0u8; 512];
    let mut n = 0;
    while n < 512 {
        match r.read(&mut block[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return Ok(false),
        }
    }
    // A ustar or GNU tar header: "ustar" magic at 257, and a valid header checksum.
    if n < 512 || &block[257..262] != b"ustar" {
        return Ok(false);
    }
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok());
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    Ok(stored == Some(sum))
}

/// Unpacks an archive under `scratch`, then lists it as entries below `dest`. The extraction is
/// contained in the scratch directory whatever the archive holds (`..`, absolute paths,
/// symlinks pointing out, device nodes).
fn unpack_archive(
    path: &Path,
    dest: &str,
    scratch: &Path,
    items: &mut Vec<Item>,
) -> Result<(), String> {
    let dir = scratch.join(format!("unpack-{}", items.len()));
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, r) = decompress_detect(f).map_err(|e| format!("{}: {e}", path.display()))?;
    let options = ExtractOptions {
        mode: ExtractMode::Plain,
        ownership: Ownership::FromArchive,
        ..ExtractOptions::default()
    };
    extract(r, &dir, &options).map_err(|e| format!("unpacking {}: {e}", path.display()))?;
    let entries = entries_from_dir(&dir, &DirOptions::default())
        .map_err(|e| format!("unpacking {}: {e}", path.display()))?;
    for e in entries {
        let rel = e.path.to_string_lossy().into_owned();
        // A hard link names another entry of the archive, which moves under `dest` with it.
        let kind = match e.kind {
            EntryKind::Hardlink { target } => EntryKind::Hardlink {
                target: join(dest, &target.to_string_lossy())
                    .trim_start_matches('/')
                    .into(),
            },
            kind => kind,
        };
        items.push(Item {
            dest: join(dest, &rel),
            kind,
            mode: e.mode,
            owner: Some(Owner {
                uid: e.uid,
                gid: e.gid,
            }),
            mtime: e.mtime,
        });
    }
    Ok(())
}

/// Sources in another image's filesystem: a path, or a wildcard in its last component.
fn fs_select(fs: &RootFs, src: &str) -> Result<Vec<Found>, String> {
    let abs = format!("/{}", src.trim_start_matches('/'));
    if !context::glob::has_wildcards(last_component(&abs)) {
        let unescaped = context::glob::unescape(&abs);
        return match fs.stat(&unescaped).map_err(|e| e.to_string())? {
            Some(f) => Ok(vec![Found {
                path: unescaped,
                ..f
            }]),
            None => Err(format!("{src}: not found in the source image")),
        };
    }
    let (dir, pattern) = abs.rsplit_once('/').unwrap_or(("", &abs));
    let dir = if dir.is_empty() { "/" } else { dir };
    let resolved = fs
        .resolve(dir, true)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{dir}: not found in the source image"))?;
    let mut out = Vec::new();
    for (name, f) in fs.read_dir(&resolved).map_err(|e| e.to_string())? {
        let m = context::glob::path_match(pattern, &name)
            .map_err(|_| format!("invalid pattern {src:?}"))?;
        if m {
            let followed = fs.stat(&f.path).map_err(|e| e.to_string())?.unwrap_or(f);
            out.push(Found {
                path: join(dir, &name),
                ..followed
            });
        }
    }
    Ok(out)
}

/// An item from another image's filesystem (owners and modes kept).
fn fs_item(
    op: &CopyOp,
    fs: &RootFs,
    f: &Found,
    dest: &str,
    into_dir: bool,
    excludes: Option<&PatternMatcher>,
    items: &mut Vec<Item>,
) -> Result<(), String> {
    let excluded = |rel: &str| excludes.is_some_and(|m| m.is_excluded(rel).unwrap_or(false));
    let src_rel = f.path.trim_start_matches('/');
    if f.is_dir() {
        let target_dir = if op.parents {
            join(dest, src_rel)
        } else {
            dest.to_owned()
        };
        items.push(fs_entry(&f.meta, &f.real, target_dir.clone())?);
        for (rel, e) in fs.walk(&f.path).map_err(|e| e.to_string())? {
            if excluded(&rel) {
                continue;
            }
            items.push(fs_entry(&e.meta, &e.real, join(&target_dir, &rel))?);
        }
        return Ok(());
    }
    if excluded(src_rel) {
        return Ok(());
    }
    let target = if op.parents {
        join(dest, src_rel)
    } else if into_dir {
        join(dest, last_component(&f.path))
    } else {
        dest.to_owned()
    };
    items.push(fs_entry(&f.meta, &f.real, target)?);
    Ok(())
}

fn fs_entry(meta: &fs::Metadata, real: &Path, dest: String) -> Result<Item, String> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink {
            target: fs::read_link(real).map_err(|e| e.to_string())?,
        }
    } else if ft.is_file() {
        EntryKind::File(Content::Path(real.to_path_buf()))
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_char_device() || ft.is_block_device() {
        let rdev = meta.rdev();
        let (major, minor) = (
            ((rdev >> 8) & 0xfff) as u32 | ((rdev >> 32) & !0xfff) as u32,
            (rdev & 0xff) as u32 | ((rdev >> 12) & !0xff) as u32,
        );
        if ft.is_char_device() {
            EntryKind::CharDevice { major, minor }
        } else {
            EntryKind::BlockDevice { major, minor }
        }
    } else {
        return Err(format!("{dest}: a socket cannot be copied"));
    };
    Ok(Item {
        dest,
        kind,
        mode: meta.mode() & 0o7777,
        owner: Some(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        }),
        mtime: meta.mtime().max(0) as u64,
    })
}
