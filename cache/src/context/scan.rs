//! The walker and the hasher behind [`ContextSnapshot::scan`].

use super::index::{FileRecord, StatKey};
use super::{
    ContentHash, ContextError, ContextIndex, ContextSnapshot, Entry, EntryKind, ScanStats,
    StatInfo, Timestamp,
};
use imgbuild_parser::ignore::{MatchInfo, PatternMatcher};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// Files up to this size are read with one `read_to_end`; larger ones are streamed.
const SMALL_FILE: u64 = 1 << 20;
/// Read size when streaming a large file.
const STREAM_CHUNK: usize = 1 << 20;
/// How often a file that changes while it is read is tried.
const READ_TRIES: usize = 3;

pub(super) fn scan(
    dir: &Path,
    ignore: Option<&PatternMatcher>,
    index: &mut ContextIndex,
) -> Result<ContextSnapshot, ContextError> {
    let racy_limit = racy_limit(SystemTime::now());
    let meta = fs::metadata(dir).map_err(|source| ContextError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ContextError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let walker = Walker {
        ignore,
        index,
        racy_limit,
        counters: Counters::default(),
    };
    let children = walker.walk_dir(dir, "", &MatchInfo::default())?;

    let mut out = Flat::default();
    flatten(children, &mut out);
    debug_assert!(
        out.entries
            .windows(2)
            .all(|w| super::path_cmp(&w[0].path, &w[1].path).is_lt())
    );

    let stats = walker.counters.snapshot();
    // Every reused record is the old one under the same path, so equal counts with nothing
    // new means equal record sets.
    let changed =
        out.records.iter().any(|(_, _, reused)| !reused) || out.records.len() != index.len();
    if changed {
        let records = out
            .records
            .into_iter()
            .map(|(i, record, _)| (Box::from(out.entries[i].path.as_str()), record))
            .collect::<HashMap<_, _>>();
        index.replace(records);
    }
    Ok(ContextSnapshot {
        root: dir.to_owned(),
        entries: out.entries,
        excluded: out.excluded,
        stats,
    })
}

/// Records whose mtime is at or after this are racy (see the module docs).
fn racy_limit(now: SystemTime) -> Timestamp {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => {
            let sec = i64::try_from(d.as_secs()).unwrap_or(i64::MAX) - 1;
            Timestamp {
                sec,
                nsec: d.subsec_nanos(),
            }
        }
        // A clock before 1970: trust no stat data.
        Err(_) => Timestamp {
            sec: i64::MIN,
            nsec: 0,
        },
    }
}

#[derive(Default)]
struct Counters {
    stated: AtomicU64,
    dirs: AtomicU64,
    hashed: AtomicU64,
    bytes: AtomicU64,
    hits: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ScanStats {
        ScanStats {
            entries_stated: self.stated.load(Relaxed),
            dirs_read: self.dirs.load(Relaxed),
            files_hashed: self.hashed.load(Relaxed),
            bytes_hashed: self.bytes.load(Relaxed),
            index_hits: self.hits.load(Relaxed),
        }
    }
}

struct Walker<'a> {
    ignore: Option<&'a PatternMatcher>,
    index: &'a ContextIndex,
    racy_limit: Timestamp,
    counters: Counters,
}

/// A kept entry and, for a regular file, its index record (and whether it came unchanged from
/// the old index).
struct Scanned {
    entry: Entry,
    record: Option<(FileRecord, bool)>,
}

/// What one directory entry turned into.
enum Child {
    /// Gone between listing and stat.
    Vanished,
    Excluded(String),
    Leaf(Scanned),
    Dir(Scanned, Vec<Child>),
}

impl Child {
    fn is_kept(&self) -> bool {
        matches!(self, Child::Leaf(_) | Child::Dir(..))
    }
}

#[derive(Default)]
struct Flat {
    entries: Vec<Entry>,
    excluded: Vec<String>,
    /// (entry index, record, reused)
    records: Vec<(usize, FileRecord, bool)>,
}

fn flatten(children: Vec<Child>, out: &mut Flat) {
    for child in children {
        match child {
            Child::Vanished => {}
            Child::Excluded(path) => out.excluded.push(path),
            Child::Leaf(s) => push(s, out),
            Child::Dir(s, below) => {
                push(s, out);
                flatten(below, out);
            }
        }
    }
}

fn push(s: Scanned, out: &mut Flat) {
    if let Some((record, reused)) = s.record {
        out.records.push((out.entries.len(), record, reused));
    }
    out.entries.push(s.entry);
}

impl Walker<'_> {
    /// Lists `abs` (relative path `rel`, "" for the root) and visits its entries in parallel,
    /// returning them in name order. `info` is the directory's own match info.
    fn walk_dir(
        &self,
        abs: &Path,
        rel: &str,
        info: &MatchInfo,
    ) -> Result<Vec<Child>, ContextError> {
        let io_err = |source| ContextError::Io {
            path: abs.to_owned(),
            source,
        };
        let mut list: Vec<(OsString, fs::DirEntry)> = Vec::new();
        for item in fs::read_dir(abs).map_err(io_err)? {
            let item = item.map_err(io_err)?;
            list.push((item.file_name(), item));
        }
        self.counters.dirs.fetch_add(1, Relaxed);
        list.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let results: Vec<Result<Child, ContextError>> = list
            .into_par_iter()
            .map(|(name, item)| self.visit(abs, rel, &name, &item, info))
            .collect();
        // The first error in name order, whatever the thread timing.
        results.into_iter().collect()
    }

    fn visit(
        &self,
        dir_abs: &Path,
        dir_rel: &str,
        name: &OsString,
        item: &fs::DirEntry,
        parent_info: &MatchInfo,
    ) -> Result<Child, ContextError> {
        let abs = dir_abs.join(name);
        let meta = match item.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Child::Vanished),
            Err(source) => return Err(ContextError::Io { path: abs, source }),
        };
        self.counters.stated.fetch_add(1, Relaxed);
        let utf8 = name.to_str();
        let rel = {
            let name = name.to_string_lossy();
            if dir_rel.is_empty() {
                name.into_owned()
            } else {
                format!("{dir_rel}/{name}")
            }
        };
        let is_dir = meta.file_type().is_dir();

        let mut info = MatchInfo::default();
        if let Some(matcher) = self.ignore {
            let (excluded, next) = matcher
                .matches_using_parent_results(&rel, parent_info)
                .map_err(|source| ContextError::Ignore {
                    path: rel.clone(),
                    source,
                })?;
            if excluded {
                if !is_dir || matcher.can_skip_excluded_dir(&rel) {
                    return Ok(Child::Excluded(rel));
                }
                // Something below may be re-included: descend; keep the directory only as the
                // parent of what is kept.
                let below = self.walk_dir(&abs, &rel, &next)?;
                if !below.iter().any(Child::is_kept) {
                    return Ok(Child::Excluded(rel));
                }
                if utf8.is_none() {
                    return Err(ContextError::NonUtf8 { path: abs });
                }
                let entry = make_entry(rel, EntryKind::Dir, &meta, None, None);
                return Ok(Child::Dir(
                    Scanned {
                        entry,
                        record: None,
                    },
                    below,
                ));
            }
            info = next;
        }
        if utf8.is_none() {
            return Err(ContextError::NonUtf8 { path: abs });
        }

        let ft = meta.file_type();
        let leaf = |entry| {
            Ok(Child::Leaf(Scanned {
                entry,
                record: None,
            }))
        };
        if ft.is_dir() {
            let below = self.walk_dir(&abs, &rel, &info)?;
            let entry = make_entry(rel, EntryKind::Dir, &meta, None, None);
            Ok(Child::Dir(
                Scanned {
                    entry,
                    record: None,
                },
                below,
            ))
        } else if ft.is_file() {
            self.file(abs, rel, &meta)
        } else if ft.is_symlink() {
            let target = match fs::read_link(&abs) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Child::Vanished),
                Err(source) => return Err(ContextError::Io { path: abs, source }),
            };
            let Ok(target) = target.into_os_string().into_string() else {
                return Err(ContextError::NonUtf8 { path: abs });
            };
            leaf(make_entry(
                rel,
                EntryKind::Symlink,
                &meta,
                None,
                Some(target),
            ))
        } else {
            let kind = if ft.is_fifo() {
                EntryKind::Fifo
            } else if ft.is_socket() {
                EntryKind::Socket
            } else if ft.is_char_device() {
                EntryKind::CharDevice
            } else if ft.is_block_device() {
                EntryKind::BlockDevice
            } else {
                return Err(ContextError::UnsupportedType { path: abs });
            };
            leaf(make_entry(rel, kind, &meta, None, None))
        }
    }

    /// A regular file: its hash from the index when the stat data vouches for it, else read.
    fn file(&self, abs: PathBuf, rel: String, meta: &Metadata) -> Result<Child, ContextError> {
        let key = StatKey::of(meta);
        if let Some(record) = self.index.get(&rel)
            && !record.racy
            && record.stat == key
        {
            self.counters.hits.fetch_add(1, Relaxed);
            let hash = ContentHash::from_bytes(record.hash);
            let entry = make_entry(rel, EntryKind::File, meta, Some(hash), None);
            return Ok(Child::Leaf(Scanned {
                entry,
                record: Some((*record, true)),
            }));
        }
        let Some((hash, meta)) = self.hash_file(&abs)? else {
            return Ok(Child::Vanished);
        };
        let stat = StatKey::of(&meta);
        let record = FileRecord {
            stat,
            hash: *hash.as_bytes(),
            racy: stat.mtime >= self.racy_limit,
        };
        let entry = make_entry(rel, EntryKind::File, &meta, Some(hash), None);
        Ok(Child::Leaf(Scanned {
            entry,
            record: Some((record, false)),
        }))
    }

    /// Reads and hashes the file at `abs`; `None` when it no longer exists. The returned stat
    /// data is the open file's, taken before and checked again after the read.
    fn hash_file(&self, abs: &Path) -> Result<Option<(ContentHash, Metadata)>, ContextError> {
        let io_err = |source| ContextError::Io {
            path: abs.to_owned(),
            source,
        };
        for _ in 0..READ_TRIES {
            // O_NOFOLLOW: a file replaced by a symlink since the walk is not followed.
            // O_NONBLOCK: a file replaced by a FIFO does not block the open.
            let file = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(abs)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => continue,
                Err(e) => return Err(io_err(e)),
            };
            let before = file.metadata().map_err(io_err)?;
            if !before.file_type().is_file() {
                continue;
            }
            self.counters.hashed.fetch_add(1, Relaxed);
            let (hash, read) = if before.len() <= SMALL_FILE {
                hash_small(&file, before.len())
            } else {
                hash_streamed(&file)
            }
            .map_err(io_err)?;
            self.counters.bytes.fetch_add(read, Relaxed);
            let after = file.metadata().map_err(io_err)?;
            if StatKey::of(&before) == StatKey::of(&after) && read == after.len() {
                return Ok(Some((hash, after)));
            }
        }
        Err(ContextError::Changed {
            path: abs.to_owned(),
        })
    }
}

thread_local! {
    /// Reused read buffer for small files (one per rayon worker).
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn hash_small(mut file: &File, size: u64) -> io::Result<(ContentHash, u64)> {
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        // One byte more than expected, so growth shows as a length mismatch, not a realloc.
        buf.reserve(usize::try_from(size).unwrap_or(0).saturating_add(1));
        file.read_to_end(buf)?;
        let out = (blake3::hash(buf), buf.len() as u64);
        if buf.capacity() > 2 * SMALL_FILE as usize {
            *buf = Vec::new();
        }
        Ok(out)
    })
}

fn hash_streamed(mut file: &File) -> io::Result<(ContentHash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut total = 0u64;
    loop {
        // Fill the buffer (short reads are legal) so most updates are large enough to split.
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        // update_rayon pays off from about 128 KiB; the result is the same either way.
        if filled >= 128 * 1024 {
            hasher.update_rayon(&buf[..filled]);
        } else {
            hasher.update(&buf[..filled]);
        }
        total += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok((hasher.finalize(), total))
}

fn make_entry(
    path: String,
    kind: EntryKind,
    meta: &Metadata,
    hash: Option<ContentHash>,
    link_target: Option<String>,
) -> Entry {
    let size = match kind {
        EntryKind::File | EntryKind::Symlink => meta.size(),
        _ => 0,
    };
    let rdev = match kind {
        EntryKind::CharDevice | EntryKind::BlockDevice => meta.rdev(),
        _ => 0,
    };
    Entry {
        path,
        kind,
        mode: meta.mode() & 0o7777,
        size,
        hash,
        link_target,
        rdev,
        stat: StatInfo {
            mtime: Timestamp::new(meta.mtime(), meta.mtime_nsec()),
            ctime: Timestamp::new(meta.ctime(), meta.ctime_nsec()),
            uid: meta.uid(),
            gid: meta.gid(),
            ino: meta.ino(),
            dev: meta.dev(),
            nlink: meta.nlink(),
        },
    }
}
