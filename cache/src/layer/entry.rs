//! The entry model of a layer, and the total order in which entries are written.
//!
//! # Paths
//! An entry's path is relative to the layer root, `/`-separated, with no leading or trailing
//! `/`, no empty, `.` or `..` component and no NUL byte (directories are named without a
//! trailing slash here; the tar name gets one). Paths are byte strings: non-UTF-8 names are
//! allowed and written exactly. A component starting with `.wh.` is reserved for whiteouts
//! and refused on other entries, so that no file can be mistaken for one.
//!
//! # Order
//! Entries are written sorted by their tar path compared component by component (split at
//! `/`), each component compared as bytes, except that the opaque marker `.wh..wh..opq` sorts
//! before every sibling. A path sorts right after its parent and before the parent's next
//! sibling: `a` < `a/b` < `a/b/c` < `a.b` < `b` (plain byte order would put `a.b` before
//! `a/b`, since `.` < `/`). So every directory precedes its contents, and a directory's opaque
//! marker comes before the new contents that the same layer puts in it, which keeps even a
//! naive extractor (clearing the directory when it meets the marker) right.

use super::{LayerError, Result};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The prefix of a whiteout's file name: `.wh.<name>` hides `<name>` of lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The file name that marks its directory opaque: lower layers' contents of it are hidden.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Where a regular file's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Streamed from this file when the layer is written, in fixed-size chunks, never read whole.
    /// Its size is taken from the opened file (a symlink there is refused: `O_NOFOLLOW`); if the
    /// file grows or shrinks before its data is written, writing fails with
    /// [`LayerError::FileChanged`].
    Path(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File(Content),
    Dir,
    /// The target is written as given (any bytes but NUL); it is not resolved.
    Symlink {
        target: PathBuf,
    },
    /// Another entry of the same layer, named by its layer path. Whatever order entries are
    /// added in, the writer makes the first member of each link group (in layer order) the one
    /// that carries the content and metadata, and the others links to it.
    Hardlink {
        target: PathBuf,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// Deletes `path` from the lower layers: written as an empty regular file `<dir>/.wh.<name>`.
    Whiteout,
    /// Makes directory `path` opaque: written as an empty regular file `<path>/.wh..wh..opq`.
    /// It does not describe the directory itself: add a [`EntryKind::Dir`] for the same path too.
    OpaqueDir,
}

/// One member of a layer.
///
/// `mode` holds the permission bits plus setuid, setgid and sticky (`0o7777`); higher bits are
/// ignored. Whiteout and opaque markers are written with mode 0 and owner 0:0 whatever these
/// fields say (only `mtime` is used), and without xattrs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the Unix epoch; the writer clamps it to its `epoch`.
    pub mtime: u64,
    /// Extended attributes, written as `SCHILY.xattr.<name>` PAX records.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Entry {
    /// An entry with owner 0:0, mtime 0, no xattrs, and the usual mode of its kind: 0o755 for
    /// directories, 0o777 for symlinks, 0 for whiteout and opaque markers, 0o644 otherwise.
    pub fn new(path: impl Into<PathBuf>, kind: EntryKind) -> Entry {
        let mode = match kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink { .. } => 0o777,
            EntryKind::Whiteout | EntryKind::OpaqueDir => 0,
            _ => 0o644,
        };
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }

    pub fn file(path: impl Into<PathBuf>, content: Content) -> Entry {
        Entry::new(path, EntryKind::File(content))
    }

    /// A regular file holding `bytes`.
    pub fn file_bytes(path: impl Into<PathBuf>, bytes: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, EntryKind::File(Content::Bytes(bytes.into())))
    }

    /// A regular file whose content is streamed from `source` when the layer is written.
    pub fn file_from(path: impl Into<PathBuf>, source: impl Into<PathBuf>) -> Entry {
        Entry::new(path, EntryKind::File(Content::Path(source.into())))
    }

    pub fn dir(path: impl Into<PathBuf>) -> Entry {
        Entry::new(path, EntryKind::Dir)
    }

    pub fn symlink(path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Entry {
        Entry::new(
            path,
            EntryKind::Symlink {
                target: target.into(),
            },
        )
    }

    pub fn hardlink(path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Entry {
        Entry::new(
            path,
            EntryKind::Hardlink {
                target: target.into(),
            },
        )
    }

    pub fn whiteout(path: impl Into<PathBuf>) -> Entry {
        Entry::new(path, EntryKind::Whiteout)
    }

    pub fn opaque_dir(path: impl Into<PathBuf>) -> Entry {
        Entry::new(path, EntryKind::OpaqueDir)
    }

    pub fn with_mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn with_owner(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn with_mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }

    pub fn with_xattr(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Entry {
        self.xattrs.insert(name.into(), value.into());
        self
    }

    /// The path as bytes.
    pub fn path_bytes(&self) -> &[u8] {
        self.path.as_os_str().as_bytes()
    }

    /// The name of this entry's tar member: directories get a trailing `/`, a whiteout of
    /// `d/x` is `d/.wh.x`, an opaque marker of `d` is `d/.wh..wh..opq`.
    pub fn tar_path(&self) -> Vec<u8> {
        let p = self.path_bytes();
        match self.kind {
            EntryKind::Dir => [p, b"/"].concat(),
            EntryKind::Whiteout => match p.iter().rposition(|&b| b == b'/') {
                Some(i) => [&p[..=i], WHITEOUT_PREFIX.as_bytes(), &p[i + 1..]].concat(),
                None => [WHITEOUT_PREFIX.as_bytes(), p].concat(),
            },
            EntryKind::OpaqueDir => [p, b"/", OPAQUE_MARKER.as_bytes()].concat(),
            _ => p.to_vec(),
        }
    }

    /// The key under which the writer keeps this entry: its path, except for opaque markers,
    /// which live beside the directory entry of the same path.
    pub(crate) fn key(&self) -> Vec<u8> {
        match self.kind {
            EntryKind::OpaqueDir => [self.path_bytes(), b"/", OPAQUE_MARKER.as_bytes()].concat(),
            _ => self.path_bytes().to_vec(),
        }
    }

    /// The bytes that [`compare_layer_paths`] orders entries by: the tar path without a
    /// directory's trailing slash.
    pub(crate) fn sort_path(&self) -> Vec<u8> {
        let mut p = self.tar_path();
        if p.last() == Some(&b'/') {
            p.pop();
        }
        p
    }

    /// Checks the path, the hard-link target and the xattr names.
    pub fn validate(&self) -> Result<()> {
        check_path(&self.path)?;
        match &self.kind {
            EntryKind::Hardlink { target } => check_path(target)?,
            EntryKind::Symlink { target } => {
                let t = target.as_os_str().as_bytes();
                if t.is_empty() || t.contains(&0) {
                    return Err(LayerError::InvalidPath {
                        path: target.clone(),
                        reason: "a symlink target must be non-empty and contain no NUL",
                    });
                }
            }
            _ => {}
        }
        for name in self.xattrs.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(LayerError::InvalidXattr {
                    path: self.path.clone(),
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Checks that `path` is a clean relative layer path (see the module doc).
pub(crate) fn check_path(path: &Path) -> Result<()> {
    let bytes = path.as_os_str().as_bytes();
    let fail = |reason| {
        Err(LayerError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if bytes.is_empty() {
        return fail("the path is empty");
    }
    if bytes.contains(&0) {
        return fail("the path contains a NUL byte");
    }
    if bytes[0] == b'/' {
        return fail("the path must be relative (no leading '/')");
    }
    for c in bytes.split(|&b| b == b'/') {
        match c {
            b"" => return fail("empty component (a doubled or trailing '/')"),
            b"." | b".." => return fail("'.' and '..' components are not allowed"),
            c if c.starts_with(WHITEOUT_PREFIX.as_bytes()) => {
                return fail("names starting with .wh. are reserved for whiteouts");
            }
            _ => {}
        }
    }
    Ok(())
}

/// The layer order of two tar paths (without trailing slash): component by component, each
/// compared as bytes, the opaque marker before any sibling, a prefix before its extensions.
pub fn compare_layer_paths(a: &[u8], b: &[u8]) -> Ordering {
    let marker = OPAQUE_MARKER.as_bytes();
    let mut ai = a.split(|&c| c == b'/');
    let mut bi = b.split(|&c| c == b'/');
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x == y => continue,
            (Some(x), Some(_)) if x == marker => return Ordering::Less,
            (Some(_), Some(y)) if y == marker => return Ordering::Greater,
            (Some(x), Some(y)) => return x.cmp(y),
        }
    }
}

/// Sorts entries into layer order (stable: equal paths keep their relative order).
pub fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by_cached_key(|e| SortKey(e.sort_path()));
}

#[derive(PartialEq, Eq)]
struct SortKey(Vec<u8>);

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_layer_paths(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_order_puts_directories_before_contents() {
        let mut paths: Vec<&[u8]> = vec![
            b"a.b",
            b"a/b",
            b"b",
            b"a",
            b"a/b/c",
            b"a/.wh..wh..opq",
            b"a/-x",
            b"a/.wh.z",
            b"a-",
        ];
        paths.sort_by(|x, y| compare_layer_paths(x, y));
        let expected: Vec<&[u8]> = vec![
            b"a",
            b"a/.wh..wh..opq",
            b"a/-x",
            b"a/.wh.z",
            b"a/b",
            b"a/b/c",
            b"a-",
            b"a.b",
            b"b",
        ];
        assert_eq!(paths, expected);
    }

    #[test]
    fn layer_paths_are_checked() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/../b",
            "a/.wh.x",
            ".wh..wh..opq",
            "a\0b",
        ] {
            assert!(check_path(Path::new(bad)).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b", "a.wh.", "..a", "a/..b/c", "é/ü"] {
            check_path(Path::new(good)).unwrap();
        }
    }

    #[test]
    fn layer_tar_paths() {
        assert_eq!(Entry::dir("a/b").tar_path(), b"a/b/");
        assert_eq!(Entry::whiteout("a/b").tar_path(), b"a/.wh.b");
        assert_eq!(Entry::whiteout("b").tar_path(), b".wh.b");
        assert_eq!(Entry::opaque_dir("a").tar_path(), b"a/.wh..wh..opq");
        assert_eq!(Entry::file_bytes("a", *b"x").tar_path(), b"a");
    }
}
