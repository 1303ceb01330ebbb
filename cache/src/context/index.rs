//! The persistent context index: relative path → stat data → blake3 of the content.
//!
//! # File format (version 1, all integers little-endian)
//!
//! ```text
//! magic    8 bytes  "IMGBCIDX"
//! version  u32      1
//! count    u32      number of records, sorted by path (byte order)
//! record × count:
//!   path_len u32, path (UTF-8, relative, '/'-separated)
//!   size u64, mtime_sec i64, mtime_nsec u32, ctime_sec i64, ctime_nsec u32,
//!   ino u64, dev u64, mode u32 (full st_mode), flags u8 (bit 0: racy), blake3 [u8; 32]
//! trailer  32 bytes blake3 of everything before it
//! ```
//!
//! A file that is missing, truncated, of another version, with a bad trailer or otherwise
//! malformed loads as an empty index ([`LoadStatus`] says why): the index is only a cache, so the
//! worst outcome of losing it is that every file is read once more.

use super::Timestamp;
use std::collections::HashMap;
use std::fs::Metadata;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"IMGBCIDX";
const VERSION: u32 = 1;
/// Bytes of a record after its path.
const RECORD_FIXED: usize = 8 + 8 + 4 + 8 + 4 + 8 + 8 + 4 + 1 + 32;
const FLAG_RACY: u8 = 1;

/// The stat data a record is keyed on: when all of it is unchanged (and the record is not
/// racy), the content is taken to be unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub ino: u64,
    pub dev: u64,
    /// The full `st_mode` (type and permission bits).
    pub mode: u32,
}

impl StatKey {
    pub(crate) fn of(meta: &Metadata) -> StatKey {
        StatKey {
            size: meta.size(),
            mtime: Timestamp::new(meta.mtime(), meta.mtime_nsec()),
            ctime: Timestamp::new(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode(),
        }
    }
}

/// What the index knows about one regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileRecord {
    pub stat: StatKey,
    pub hash: [u8; 32],
    /// The file's mtime was too recent when it was hashed for the stat data to vouch for the
    /// content (see the racy rule in the module docs): the next scan reads it again.
    pub racy: bool,
}

/// How [`ContextIndex::load`] went.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LoadStatus {
    /// Made with [`ContextIndex::new`], not loaded.
    #[default]
    New,
    /// There was no index file (the first build of this context).
    Missing,
    /// The file was read; this many records.
    Loaded(usize),
    /// The file could not be used and the index starts empty; the reason, for logs.
    Discarded(String),
}

/// The persistent per-context index that lets a rescan skip reading files whose stat data is
/// unchanged. Load it with [`ContextIndex::load`], pass it to
/// [`ContextSnapshot::scan`](super::ContextSnapshot::scan) (which replaces its records with what
/// the scan saw), and [`save`](ContextIndex::save) it when [`is_dirty`](ContextIndex::is_dirty).
#[derive(Debug, Clone, Default)]
pub struct ContextIndex {
    records: HashMap<Box<str>, FileRecord>,
    dirty: bool,
    status: LoadStatus,
}

impl ContextIndex {
    /// An empty index.
    pub fn new() -> ContextIndex {
        ContextIndex::default()
    }

    /// Reads the index at `path`. Never fails: a missing, unreadable, corrupt or
    /// unknown-version file gives an empty index, and [`Self::load_status`] tells which.
    pub fn load(path: &Path) -> ContextIndex {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return ContextIndex {
                    status: LoadStatus::Missing,
                    ..ContextIndex::default()
                };
            }
            Err(e) => return ContextIndex::discarded(format!("cannot read: {e}")),
        };
        match decode(&bytes) {
            Ok(records) => ContextIndex {
                status: LoadStatus::Loaded(records.len()),
                records,
                dirty: false,
            },
            Err(reason) => ContextIndex::discarded(reason.to_owned()),
        }
    }

    fn discarded(reason: String) -> ContextIndex {
        ContextIndex {
            status: LoadStatus::Discarded(reason),
            // An existing file that is not usable should be rewritten.
            dirty: true,
            ..ContextIndex::default()
        }
    }

    /// Writes the index to `path` atomically: a temporary file in `tmp_dir` (which must be on
    /// the same filesystem as `path`) is written, fsynced and renamed over `path`. The output
    /// bytes depend only on the records (they are sorted by path).
    pub fn save(&self, path: &Path, tmp_dir: &Path) -> io::Result<()> {
        let bytes = self.encode();
        let mut tmp = tempfile::Builder::new()
            .prefix(".context-index-")
            .tempfile_in(tmp_dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Whether the records differ from what was loaded (or the loaded file was unusable): a
    /// caller that saves only then writes nothing on a no-op rebuild.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// How [`Self::load`] went.
    pub fn load_status(&self) -> &LoadStatus {
        &self.status
    }

    /// The number of files the index knows.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(crate) fn get(&self, path: &str) -> Option<&FileRecord> {
        self.records.get(path)
    }

    /// Replaces the records with those of a scan that found a difference.
    pub(crate) fn replace(&mut self, records: HashMap<Box<str>, FileRecord>) {
        self.records = records;
        self.dirty = true;
    }

    #[cfg(test)]
    pub(crate) fn records_mut(&mut self) -> &mut HashMap<Box<str>, FileRecord> {
        &mut self.records
    }

    fn encode(&self) -> Vec<u8> {
        let mut sorted: Vec<(&str, &FileRecord)> =
            self.records.iter().map(|(k, v)| (&**k, v)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let payload: usize = sorted.iter().map(|(p, _)| 4 + p.len() + RECORD_FIXED).sum();
        let mut out = Vec::with_capacity(16 + payload + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
        for (path, r) in sorted {
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(&r.stat.size.to_le_bytes());
            out.extend_from_slice(&r.stat.mtime.sec.to_le_bytes());
            out.extend_from_slice(&r.stat.mtime.nsec.to_le_bytes());
            out.extend_from_slice(&r.stat.ctime.sec.to_le_bytes());
            out.extend_from_slice(&r.stat.ctime.nsec.to_le_bytes());
            out.extend_from_slice(&r.stat.ino.to_le_bytes());
            out.extend_from_slice(&r.stat.dev.to_le_bytes());
            out.extend_from_slice(&r.stat.mode.to_le_bytes());
            out.push(if r.racy { FLAG_RACY } else { 0 });
            out.extend_from_slice(&r.hash);
        }
        let trailer = blake3::hash(&out);
        out.extend_from_slice(trailer.as_bytes());
        out
    }
}

/// The index file name for a context directory: the blake3 of the path's bytes, in hex, plus
/// `.idx`. Pass the canonical absolute path (`std::fs::canonicalize`), so that every spelling
/// of the same directory shares one index.
pub fn index_file_name(context_abs_path: &Path) -> String {
    let hash = blake3::hash(context_abs_path.as_os_str().as_bytes());
    format!("{}.idx", hash.to_hex())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.bytes.len() < n {
            return Err("truncated");
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, &'static str> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn timestamp(&mut self) -> Result<Timestamp, &'static str> {
        let sec = self.i64()?;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return Err("bad timestamp");
        }
        Ok(Timestamp { sec, nsec })
    }
}

fn decode(bytes: &[u8]) -> Result<HashMap<Box<str>, FileRecord>, &'static str> {
    if bytes.len() < 16 + 32 || &bytes[..8] != MAGIC {
        return Err("not an imgbuild context index");
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 32);
    let mut r = Reader { bytes: &body[8..] };
    if r.u32()? != VERSION {
        return Err("unknown index version");
    }
    if blake3::hash(body).as_bytes() != trailer {
        return Err("checksum mismatch");
    }
    let count = r.u32()? as usize;
    // Each record takes at least RECORD_FIXED + 5 bytes: a count beyond that is corrupt (and
    // must not drive a huge allocation).
    if count > r.bytes.len() / (RECORD_FIXED + 5) {
        return Err("record count exceeds the file size");
    }
    let mut records = HashMap::with_capacity(count);
    for _ in 0..count {
        let len = r.u32()? as usize;
        let path = std::str::from_utf8(r.take(len)?).map_err(|_| "path is not UTF-8")?;
        if path.is_empty() || path.starts_with('/') {
            return Err("bad path");
        }
        let size = r.u64()?;
        let mtime = r.timestamp()?;
        let ctime = r.timestamp()?;
        let ino = r.u64()?;
        let dev = r.u64()?;
        let mode = r.u32()?;
        let flags = r.take(1)?[0];
        if flags & !FLAG_RACY != 0 {
            return Err("unknown record flags");
        }
        let hash = r.array::<32>()?;
        let record = FileRecord {
            stat: StatKey {
                size,
                mtime,
                ctime,
                ino,
                dev,
                mode,
            },
            hash,
            racy: flags & FLAG_RACY != 0,
        };
        if records.insert(Box::from(path), record).is_some() {
            return Err("duplicate path");
        }
    }
    if !r.bytes.is_empty() {
        return Err("trailing bytes");
    }
    Ok(records)
}
