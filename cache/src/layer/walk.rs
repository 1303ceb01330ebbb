//! Reading a directory tree into layer entries.
//!
//! The walk never follows symlinks (they become symlink entries) and does not include the root
//! itself. File content is not read: regular files become [`Content::Path`] entries that the
//! writer streams later. Sockets are skipped (tar cannot hold them). Each entry's metadata is
//! the `lstat` of its path: `mode & 0o7777`, uid, gid (see [`Owner`]), mtime in whole seconds
//! (before 1970 counts as 0), device numbers, and xattrs — except `security.selinux` (a label
//! of this host, not of the content) and `trusted.overlay.*` (overlayfs bookkeeping), which are
//! never read into a layer.
//!
//! Hard links: non-directories sharing `(st_dev, st_ino)` with a link count above 1 form a
//! group; the first member in layer order is the file, the others [`EntryKind::Hardlink`]s to
//! it (hard links to paths outside the tree cannot be seen and are plain files).
//!
//! Overlay mode ([`DirOptions::overlay`]) reads the upper dir of an overlay mount: a character
//! device 0/0 is a whiteout (overlayfs may make all whiteouts links to one inode: they are
//! never hard links here), a directory with `trusted.overlay.opaque=y` or
//! `user.overlay.opaque=y` is a directory plus an [`EntryKind::OpaqueDir`] marker, and
//! `user.overlay.*` xattrs are dropped too. An upper dir whose files or directories hold
//! `overlay.metacopy` or `overlay.redirect` xattrs is refused: their data or contents live in a
//! lower dir, so the upper dir alone does not describe the change.

use super::entry::{Content, Entry, EntryKind, check_path, sort_entries};
use super::{LayerError, Result, io_err};
use rustix::io::Errno;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whose files the entries are.
#[derive(Clone, Default)]
pub enum Owner {
    /// The uid and gid on disk.
    #[default]
    Keep,
    /// These, for every entry (`COPY --chown`, or a context owned by whoever checked it out).
    Force { uid: u32, gid: u32 },
    /// A function of the on-disk `(uid, gid)` (an upper dir written through an id mapping).
    Map(Arc<dyn Fn(u32, u32) -> (u32, u32) + Send + Sync>),
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Keep => f.write_str("Keep"),
            Owner::Force { uid, gid } => write!(f, "Force {{ uid: {uid}, gid: {gid} }}"),
            Owner::Map(_) => f.write_str("Map(..)"),
        }
    }
}

impl Owner {
    fn apply(&self, uid: u32, gid: u32) -> (u32, u32) {
        match self {
            Owner::Keep => (uid, gid),
            Owner::Force { uid, gid } => (*uid, *gid),
            Owner::Map(f) => f(uid, gid),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DirOptions {
    pub owner: Owner,
    /// The directory is the upper dir of an overlay mount (see the module doc).
    pub overlay: bool,
    /// Put every entry under this layer path (e.g. the destination of a `COPY`). Entries for
    /// the prefix's own directories are not made.
    pub prefix: Option<PathBuf>,
    /// Do not read xattrs at all.
    pub skip_xattrs: bool,
}

/// The entries of the tree under `root`, in layer order (see [`super::compare_layer_paths`]).
pub fn entries_from_dir(root: &Path, options: &DirOptions) -> Result<Vec<Entry>> {
    let meta = fs::symlink_metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(LayerError::Io {
            path: root.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let prefix = options.prefix.clone().unwrap_or_default();
    if !prefix.as_os_str().is_empty() {
        check_path(&prefix)?;
    }
    let mut found: Vec<Found> = Vec::new();
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel_dir) = pending.pop() {
        let abs_dir = root.join(&rel_dir);
        let mut names = Vec::new();
        for child in fs::read_dir(&abs_dir).map_err(io_err(&abs_dir))? {
            names.push(child.map_err(io_err(&abs_dir))?.file_name());
        }
        names.sort();
        for name in names {
            let rel = rel_dir.join(&name);
            let Some(one) = read_one(&abs_dir.join(&name), prefix.join(&rel), options)? else {
                continue; // a socket
            };
            if one.is_dir {
                pending.push(rel);
            }
            found.push(one);
        }
    }

    // Into layer order, then hard links: the first of each (dev, ino) group keeps the content.
    let inodes: HashMap<PathBuf, (u64, u64)> = found
        .iter()
        .filter_map(|f| f.inode.map(|i| (f.entries.last().unwrap().path.clone(), i)))
        .collect();
    let mut entries: Vec<Entry> = found.into_iter().flat_map(|f| f.entries).collect();
    sort_entries(&mut entries);
    let mut links = HardlinkTracker::new();
    for e in &mut entries {
        if let Some(&inode) = inodes.get(&e.path)
            && !matches!(e.kind, EntryKind::OpaqueDir)
        {
            links.track_inode(e, inode);
        }
    }
    Ok(entries)
}

/// The entries for one path (not recursing into a directory): none for a socket, a directory
/// and its opaque marker for an opaque directory in overlay mode, else one. `source` is read
/// as the walk reads (see the module doc); `path` is the layer path (`options.prefix` is not
/// applied). `links` turns later paths of an inode already seen into hard links to the first
/// one; the writer then makes the first in layer order hold the content, so the order of calls
/// does not change the layer.
pub fn entries_from_path(
    source: &Path,
    path: impl Into<PathBuf>,
    options: &DirOptions,
    links: &mut HardlinkTracker,
) -> Result<Vec<Entry>> {
    let Some(mut one) = read_one(source, path.into(), options)? else {
        return Ok(Vec::new());
    };
    if let (Some(inode), Some(entry)) = (one.inode, one.entries.last_mut()) {
        links.track_inode(entry, inode);
    }
    Ok(one.entries)
}

/// Hard-link detection for entries made one at a time: remembers the first layer path of each
/// multiply-linked inode.
#[derive(Debug, Default)]
pub struct HardlinkTracker {
    first: HashMap<(u64, u64), PathBuf>,
}

impl HardlinkTracker {
    pub fn new() -> HardlinkTracker {
        HardlinkTracker::default()
    }

    /// Given `entry` made from a file whose `lstat` is `meta`: when that is a non-directory
    /// with more than one link and its inode was seen before, turns `entry` into a hard link to
    /// the path seen first; otherwise remembers it.
    pub fn track(&mut self, entry: &mut Entry, meta: &fs::Metadata) {
        if !meta.is_dir() && meta.nlink() > 1 && !matches!(entry.kind, EntryKind::Whiteout) {
            self.track_inode(entry, (meta.dev(), meta.ino()));
        }
    }

    fn track_inode(&mut self, entry: &mut Entry, inode: (u64, u64)) {
        match self.first.get(&inode) {
            Some(target) => {
                entry.kind = EntryKind::Hardlink {
                    target: target.clone(),
                }
            }
            None => {
                self.first.insert(inode, entry.path.clone());
            }
        }
    }
}

/// What [`read_one`] found at a path.
struct Found {
    /// The entry, preceded by its opaque marker for an opaque directory.
    entries: Vec<Entry>,
    /// `(dev, ino)` when the entry may be one of several hard links.
    inode: Option<(u64, u64)>,
    is_dir: bool,
}

fn read_one(abs: &Path, path: PathBuf, options: &DirOptions) -> Result<Option<Found>> {
    let m = fs::symlink_metadata(abs).map_err(io_err(abs))?;
    let ft = m.file_type();
    let mut xattrs = if options.skip_xattrs {
        BTreeMap::new()
    } else {
        read_xattrs(abs)?
    };
    let opaque = overlay_xattrs(abs, &mut xattrs, options.overlay, ft.is_dir())?;
    let mut may_link = !ft.is_dir() && m.nlink() > 1;
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File(Content::Path(abs.to_owned()))
    } else if ft.is_symlink() {
        EntryKind::Symlink {
            target: fs::read_link(abs).map_err(io_err(abs))?,
        }
    } else if ft.is_char_device() && options.overlay && m.rdev() == 0 {
        // overlayfs may make all whiteouts links to one inode: never hard links here.
        may_link = false;
        EntryKind::Whiteout
    } else if ft.is_char_device() || ft.is_block_device() {
        let (major, minor) = (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()));
        if ft.is_char_device() {
            EntryKind::CharDevice { major, minor }
        } else {
            EntryKind::BlockDevice { major, minor }
        }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else {
        return Ok(None); // a socket
    };
    let disk = super::owner::take_recorded(&mut xattrs, (m.uid(), m.gid()));
    let (uid, gid) = options.owner.apply(disk.0, disk.1);
    let mtime = u64::try_from(m.mtime()).unwrap_or(0);
    let entry = Entry {
        path,
        kind,
        mode: m.mode() & 0o7777,
        uid,
        gid,
        mtime,
        xattrs,
    };
    entry.validate()?;
    let mut entries = Vec::with_capacity(2);
    if opaque {
        entries.push(Entry::opaque_dir(entry.path.clone()).with_mtime(mtime));
    }
    entries.push(entry);
    Ok(Some(Found {
        entries,
        inode: may_link.then(|| (m.dev(), m.ino())),
        is_dir: ft.is_dir(),
    }))
}

/// Drops the xattrs that never go into a layer, and in overlay mode interprets overlayfs's.
/// Returns whether the entry is an opaque directory.
fn overlay_xattrs(
    path: &Path,
    xattrs: &mut BTreeMap<String, Vec<u8>>,
    overlay: bool,
    is_dir: bool,
) -> Result<bool> {
    let mut opaque = false;
    for (name, value) in xattrs.iter() {
        let key = match name
            .strip_prefix("trusted.overlay.")
            .or_else(|| name.strip_prefix("user.overlay.").filter(|_| overlay))
        {
            Some(key) => key,
            None => continue,
        };
        if !overlay {
            continue;
        }
        match key {
            "metacopy" | "redirect" => {
                return Err(LayerError::UnsupportedOverlay {
                    path: path.to_owned(),
                    xattr: name.clone(),
                });
            }
            "opaque" if is_dir && value == b"y" => opaque = true,
            _ => {}
        }
    }
    xattrs.retain(|name, _| {
        name != "security.selinux"
            && !name.starts_with("trusted.overlay.")
            && !(overlay && name.starts_with("user.overlay."))
    });
    Ok(opaque)
}

/// The xattrs of `path` itself (not following a symlink). A file system without xattr support
/// has none.
fn read_xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let fail = |e: Errno| LayerError::Io {
        path: path.to_owned(),
        source: e.into(),
    };
    let mut list = vec![0u8; 256];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path).map_err(fail)?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(BTreeMap::new()),
            Err(e) => return Err(fail(e)),
        }
    };
    let mut out = BTreeMap::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(len) => break Some(len),
                Err(Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr_query(path, name).map_err(fail)?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                Err(Errno::NODATA) => break None, // removed meanwhile
                Err(e) => return Err(fail(e)),
            }
        };
        let Some(len) = len else { continue };
        value.truncate(len);
        let name = String::from_utf8(name.to_vec()).map_err(|_| LayerError::InvalidXattr {
            path: path.to_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
        })?;
        out.insert(name, value);
    }
    Ok(out)
}
