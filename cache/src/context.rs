//! The build context: a snapshot of the context directory as BuildKit's context transfer would
//! send it, the persistent stat index that makes a rescan cheap, and COPY source selection and
//! digests for the planner and executor.
//!
//! # Scanning ([`ContextSnapshot::scan`])
//!
//! The directory is walked in place (nothing is copied), with the `.dockerignore` semantics of
//! fsutil's walker, which is what BuildKit's context transfer runs:
//!
//! * each path is matched with [`PatternMatcher::matches_using_parent_results`], handing every
//!   directory's [`MatchInfo`](imgbuild_parser::ignore::MatchInfo) to its children;
//! * an excluded directory is skipped without being opened when
//!   [`PatternMatcher::can_skip_excluded_dir`] allows it (no `!` pattern can re-include anything
//!   below it); otherwise it is descended, its entries matched one by one, and it appears in the
//!   snapshot only when something below it is kept (as the parent needed to reach it);
//! * a directory that cannot be read fails the scan, unless it is skipped as above (fsutil
//!   decides exclusion before it looks at the read error);
//! * an entry that disappears between being listed and being looked at is left out, as fsutil
//!   does;
//! * the Dockerfile and `.dockerignore` are ordinary files here.
//!
//! Symlinks are recorded as links (their target text) and never followed, wherever they point.
//! FIFOs, sockets and devices are recorded (never opened) and flagged
//! ([`EntryKind::is_special`]). Every regular file's content is hashed with blake3, in parallel
//! on the current rayon pool; files up to 1 MiB are read at once, larger ones streamed through
//! `Hasher::update_rayon` (no mmap: a file truncated while mapped would kill the process with
//! SIGBUS). A file whose stat data changes while it is read is read again (three tries, then
//! [`ContextError::Changed`]).
//!
//! Names and symlink targets must be UTF-8 ([`ContextError::NonUtf8`] otherwise, unless the
//! path is excluded: exclusion is decided on the lossily decoded name).
//!
//! # The index and the racy rule ([`ContextIndex`])
//!
//! The index maps each regular file's relative path to (size, mtime, ctime, inode, device,
//! st_mode) and the content hash. A rescan does not open a file whose stat data equals the
//! record's, unless the record is *racy*.
//!
//! Racy rule: a record is racy when the file's mtime was not at least one second older than
//! the moment the scan that hashed it began (`mtime >= scan_start - 1s`, nanosecond
//! comparison). Such a file could be rewritten after it was read without its mtime changing
//! (timestamps are coarse: whole seconds on some filesystems, a kernel tick on others), so its
//! stat data cannot vouch for the content and the next scan reads it again. The rule is the
//! one git applies to its index (an entry whose mtime is not older than the index's write time
//! is "racily clean"), with the scan's start as the reference — it precedes every stat and read
//! of the scan and the index write — and one second of margin for clock granularity. A file
//! edited a moment before a build is therefore read on that build and on the next one.
//!
//! ctime is part of the stat key, so content written with the mtime forced back (`touch -d`,
//! `utimes`) is noticed through ctime as well.
//!
//! # What the planner keys on
//!
//! [`ContextSnapshot::digest_of`] covers, for each selected entry: relative path, kind,
//! permission bits (optional, for `COPY --chmod`), size, content hash, symlink target and device
//! number. Never mtime, ctime, owner, inode or link count: those stay in [`StatInfo`] for the
//! executor and the index. Entries are kept sorted by path compared component by component
//! (the order of a depth-first walk with sorted names), so nothing depends on readdir order,
//! thread count or timing.

pub use imgbuild_parser::gomatch as glob;
mod index;
mod scan;
mod select;
#[cfg(test)]
mod tests;

pub use index::{ContextIndex, LoadStatus, index_file_name};
pub use select::{DigestOptions, SelectError, SelectOptions, SelectedItem, Selection};

use imgbuild_parser::ignore::{IgnoreError, PatternMatcher, clean_path};
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// The blake3 hash of a file's content.
pub type ContentHash = blake3::Hash;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl EntryKind {
    /// FIFOs, sockets and devices: recorded, never opened; a COPY of one needs a decision by the
    /// executor.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDevice | EntryKind::BlockDevice
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "character device",
            EntryKind::BlockDevice => "block device",
        }
    }

    /// The byte that stands for the kind in digests (stable: part of the digest format).
    fn code(self) -> u8 {
        match self {
            EntryKind::File => b'f',
            EntryKind::Dir => b'd',
            EntryKind::Symlink => b'l',
            EntryKind::Fifo => b'p',
            EntryKind::Socket => b's',
            EntryKind::CharDevice => b'c',
            EntryKind::BlockDevice => b'b',
        }
    }
}

/// A point in time as stat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    fn new(sec: i64, nsec: i64) -> Timestamp {
        Timestamp {
            sec,
            nsec: u32::try_from(nsec).unwrap_or(0).min(999_999_999),
        }
    }
}

/// Stat data that is deliberately outside every digest (the planner never keys on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatInfo {
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub uid: u32,
    pub gid: u32,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
}

/// One file, directory, symlink or special file of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context root, `/`-separated, no leading or trailing slash, never empty.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Content length for files, target length for symlinks, 0 for everything else (a
    /// directory's `st_size` is filesystem noise).
    pub size: u64,
    /// blake3 of the content, for regular files only.
    pub hash: Option<ContentHash>,
    /// The symlink's target text, exactly as stored (not resolved, not checked).
    pub link_target: Option<String>,
    /// Device number, for character and block devices (0 otherwise).
    pub rdev: u64,
    /// Not part of any digest.
    pub stat: StatInfo,
}

/// Counters of one scan, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanStats {
    /// Entries whose stat data was read (every listed entry, kept or excluded; entries of a
    /// skipped directory are not listed at all).
    pub entries_stated: u64,
    /// Directories opened and listed (the root included).
    pub dirs_read: u64,
    /// Regular files opened and read (a re-read after a concurrent change counts again).
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Regular files whose hash came from the index without reading them.
    pub index_hits: u64,
}

/// Why a scan failed. A scan that fails leaves the index as it was.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the build context {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot read {} in the build context: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to match .dockerignore patterns against {path:?}: {source}")]
    Ignore {
        path: String,
        #[source]
        source: IgnoreError,
    },
    #[error(
        "the name of {} in the build context is not valid UTF-8; rename it or exclude it in .dockerignore",
        path.display()
    )]
    NonUtf8 { path: PathBuf },
    #[error(
        "{} changed each time it was read; build again once nothing is writing to the build context",
        path.display()
    )]
    Changed { path: PathBuf },
    #[error("{} is of an unsupported file type", path.display())]
    UnsupportedType { path: PathBuf },
}

/// The scanned build context. Immutable; entries sorted by [`path_cmp`] order.
#[derive(Debug, Clone)]
pub struct ContextSnapshot {
    root: PathBuf,
    entries: Vec<Entry>,
    excluded: Vec<String>,
    stats: ScanStats,
}

impl ContextSnapshot {
    /// Walks `dir` (see the module docs), reusing `index` for files whose stat data is
    /// unchanged, and replaces `index`'s records with what it saw (it then reports
    /// [`ContextIndex::is_dirty`] when they differ).
    pub fn scan(
        dir: &Path,
        ignore: Option<&PatternMatcher>,
        index: &mut ContextIndex,
    ) -> Result<ContextSnapshot, ContextError> {
        scan::scan(dir, ignore, index)
    }

    /// The context directory, as given to [`Self::scan`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All entries, sorted (parents before children; siblings by name bytes).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `path` (cleaned lexically first: `/a/./b/` is `a/b`; `..` stops at the
    /// root). Symlinks are not followed.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        let cleaned = clean_rel(path);
        self.find(&cleaned).map(|i| &self.entries[i])
    }

    /// FIFOs, sockets and devices in the context.
    pub fn specials(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind.is_special())
    }

    /// The topmost paths the `.dockerignore` left out (a skipped directory stands for
    /// everything below it), in walk order.
    pub fn excluded(&self) -> &[String] {
        &self.excluded
    }

    /// Whether `path` (relative, cleaned) is, or is below, a path the `.dockerignore` left
    /// out.
    pub fn is_excluded(&self, path: &str) -> bool {
        let cleaned = clean_rel(path);
        self.excluded
            .iter()
            .any(|x| cleaned == *x || is_below(&cleaned, x))
    }

    /// The scan's counters.
    pub fn stats(&self) -> &ScanStats {
        &self.stats
    }

    /// The entries a COPY/ADD source names, with BuildKit's defaults ([`SelectOptions`]). See
    /// [`Selection`] for the rules.
    pub fn select(&self, source: &str) -> Result<Selection<'_>, SelectError> {
        select::select(self, source, &SelectOptions::default())
    }

    pub fn select_with(
        &self,
        source: &str,
        options: &SelectOptions,
    ) -> Result<Selection<'_>, SelectError> {
        select::select(self, source, options)
    }

    /// A stable digest of what `selection` selected (see the module docs for what it covers).
    pub fn digest_of(&self, selection: &Selection<'_>, options: DigestOptions) -> ContentHash {
        select::digest(selection, options)
    }

    fn find(&self, rel: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|e| path_cmp(&e.path, rel))
            .ok()
    }

    /// The index range of the entry at `index` and everything below it.
    fn subtree(&self, index: usize) -> std::ops::Range<usize> {
        let dir = &self.entries[index].path;
        let after = &self.entries[index + 1..];
        let below = after.partition_point(|e| is_below(&e.path, dir));
        index..index + 1 + below
    }
}

/// The order of entries: byte order with `/` sorting before every other byte, i.e. component
/// by component, which is the order of a depth-first walk with sorted names (parents first).
pub fn path_cmp(a: &str, b: &str) -> Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// Whether `path` is strictly below directory `dir` (`dir` empty: the root).
fn is_below(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// A source or lookup path made relative to the context root: cleaned as if rooted, so `..`
/// cannot climb above the root and `/x` is `x`. The root itself is "".
fn clean_rel(path: &str) -> String {
    let cleaned = clean_path(&format!("/{path}"));
    cleaned.trim_start_matches('/').to_owned()
}
