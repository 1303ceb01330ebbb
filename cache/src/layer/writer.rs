//! The deterministic layer writer.
//!
//! Same entries (in any insertion order) and same [`LayerOptions`] → same bytes, hence the
//! same `diff_id` and `digest`. What the bytes are:
//!
//! - Members in layer order ([`compare_layer_paths`](super::compare_layer_paths)): each directory
//!   before its contents, an opaque marker first among its siblings. Entries added with the same
//!   path: the last one added wins (a whiteout of `a/b` and a file `a/b` share the path
//!   `a/b`; a directory and its [`EntryKind::OpaqueDir`] marker do not).
//! - Hard links: the first member of each link group in layer order carries the content; the
//!   other members are typeflag `1` links to it, whichever member the caller gave the content.
//! - Each member is one POSIX ustar header block: name (directories with a trailing `/`),
//!   split into `prefix`/`name` when longer than 100 bytes and a split at a `/` fits (longest
//!   prefix ≤ 155 bytes); mode = `mode & 0o7777` (no file-type bits); uid, gid, size, mtime
//!   as zero-padded octal + NUL; checksum as 6 octal digits, NUL, space; typeflag `0` file, `1`
//!   hard link, `2` symlink, `3` char, `4` block, `5` dir, `6` fifo; magic `ustar\0`, version
//!   `00`; uname and gname empty; devmajor/devminor hold the device numbers of devices and octal zeros
//!   otherwise (as Go writes them; some readers refuse empty fields);
//!   no atime/ctime anywhere; `mtime = min(entry.mtime, epoch)`.
//! - A PAX extended header (typeflag `x`, name `././@PaxHeader`, mode 0644, owner 0:0, mtime
//!   0) precedes a member when needed, with records in this fixed order: `hdrcharset=BINARY`
//!   (only when the path or link target is not UTF-8), `path` (name not ASCII or no ustar fit;
//!   the ustar field then holds the first 100 bytes), `linkpath` (target not ASCII or longer
//!   than 100 bytes), `size` (≥ 8 GiB), `uid`, `gid` (> 2097151), `mtime` (> 11 octal
//!   digits), then `SCHILY.xattr.<name>` for each xattr in name order, values as raw bytes.
//! - Whiteouts (`<dir>/.wh.<name>`) and opaque markers (`<dir>/.wh..wh..opq`) are empty regular
//!   files, mode 0, owner 0:0, no xattrs, with the entry's clamped mtime.
//! - File data padded with zeros to 512 bytes; the archive ends with two zero blocks and no
//!   further record padding.
//! - Gzip: flate2 (miniz_oxide backend) at level [`GZIP_LEVEL`], header mtime 0, no file name,
//!   OS byte 255 ("unknown", as Go writes it), one member. Zstd: level [`ZSTD_LEVEL`], one frame,
//!   content checksum on, no content size or dictionary id, single-threaded (the crate is built
//!   without `zstdmt`), so thread count cannot change the output. Both outputs can change with
//!   the version of the compression library: Cargo.lock pins it; `diff_id` never depends on it.

use super::entry::{Content, Entry, EntryKind, sort_entries};
use super::header::{BLOCK, Member, write_member_header, write_padding};
use super::{LayerError, Result, io_err};
use crate::digest::{Digest, DigestWriter};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The gzip compression level of layers (flate2's default, as Go's `DefaultCompression`).
pub const GZIP_LEVEL: u32 = 6;
/// The zstd compression level of layers (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;

/// Size of the buffer file content is streamed through.
const CHUNK: usize = 1 << 20;

/// How the tar stream is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_TAR,
            Compression::Gzip => MEDIA_TYPE_TAR_GZIP,
            Compression::Zstd => MEDIA_TYPE_TAR_ZSTD,
        }
    }
}

/// Everything besides the entries that the bytes of a layer depend on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LayerOptions {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: every mtime is clamped to at most this. Default 0, so that by
    /// default every mtime in a layer is 0.
    pub epoch: u64,
}

/// What a finished layer is, for its descriptor and the image config's `rootfs.diff_ids`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// sha256 of the bytes written to the output (equal to `diff_id` when uncompressed).
    pub digest: Digest,
    /// Bytes written to the output.
    pub size: u64,
    /// Bytes of the uncompressed tar stream.
    pub uncompressed_size: u64,
    pub media_type: &'static str,
}

/// Collects entries, then writes them as one layer in [`finish`](LayerWriter::finish).
///
/// Nothing is written to the output before `finish`; only the entries' metadata is held (file
/// content is streamed from its source then).
pub struct LayerWriter<W: Write> {
    out: W,
    options: LayerOptions,
    entries: BTreeMap<Vec<u8>, Entry>,
}

impl<W: Write> LayerWriter<W> {
    pub fn new(out: W, options: LayerOptions) -> LayerWriter<W> {
        LayerWriter {
            out,
            options,
            entries: BTreeMap::new(),
        }
    }

    /// Adds an entry, replacing an earlier one with the same path. Fails if its path, hard-link
    /// target or xattr names are invalid.
    pub fn add(&mut self, entry: Entry) -> Result<()> {
        entry.validate()?;
        self.entries.insert(entry.key(), entry);
        Ok(())
    }

    pub fn extend(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<()> {
        entries.into_iter().try_for_each(|e| self.add(e))
    }

    /// Entries held (after same-path replacement).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the layer and flushes the output. On error the output holds part of a layer:
    /// discard it.
    pub fn finish(self) -> Result<LayerInfo> {
        self.finish_into_inner().map(|(info, _)| info)
    }

    /// Writes the layer, flushes the output and hands it back.
    pub fn finish_into_inner(self) -> Result<(LayerInfo, W)> {
        let entries = normalize_hardlinks(self.entries.into_values().collect())?;
        let compression = self.options.compression;
        let encoder =
            Encoder::new(DigestWriter::new(self.out), compression).map_err(LayerError::Write)?;
        let mut tar = BufWriter::with_capacity(64 * 1024, DigestWriter::new(encoder));
        let mut buf = vec![0u8; CHUNK];
        for entry in &entries {
            write_entry(&mut tar, entry, self.options.epoch, &mut buf)?;
        }
        tar.write_all(&[0u8; 2 * BLOCK])
            .map_err(LayerError::Write)?;
        let tar = tar
            .into_inner()
            .map_err(|e| LayerError::Write(e.into_error()))?;
        let (diff_id, uncompressed_size, encoder) = tar.finish();
        let compressed = encoder.finish().map_err(LayerError::Write)?;
        let (digest, size, mut out) = compressed.finish();
        out.flush().map_err(LayerError::Write)?;
        let info = LayerInfo {
            diff_id,
            digest,
            size,
            uncompressed_size,
            media_type: compression.media_type(),
        };
        Ok((info, out))
    }
}

/// Writes `entries` as one layer to `out`.
pub fn write_layer<W: Write>(
    out: W,
    options: LayerOptions,
    entries: impl IntoIterator<Item = Entry>,
) -> Result<LayerInfo> {
    let mut writer = LayerWriter::new(out, options);
    writer.extend(entries)?;
    writer.finish()
}

/// Re-compresses an uncompressed layer (a tar stream) with the same fixed parameters the
/// writer uses, digesting both sides in one pass: for outputs that want another compression
/// than the store's.
pub fn recompress<R: Read, W: Write>(
    mut tar: R,
    out: W,
    compression: Compression,
) -> Result<(LayerInfo, W)> {
    let encoder = Encoder::new(DigestWriter::new(out), compression).map_err(LayerError::Write)?;
    let mut plain = DigestWriter::new(encoder);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match tar.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LayerError::Write(e)),
        };
        plain.write_all(&buf[..n]).map_err(LayerError::Write)?;
    }
    let (diff_id, uncompressed_size, encoder) = plain.finish();
    let (digest, size, mut out) = encoder.finish().map_err(LayerError::Write)?.finish();
    out.flush().map_err(LayerError::Write)?;
    Ok((
        LayerInfo {
            diff_id,
            digest,
            size,
            uncompressed_size,
            media_type: compression.media_type(),
        },
        out,
    ))
}

/// Sorts entries into layer order and rewrites hard links so that each group's first member
/// in that order holds the content (and the inode's metadata) and the others link to it.
fn normalize_hardlinks(mut entries: Vec<Entry>) -> Result<Vec<Entry>> {
    sort_entries(&mut entries);
    if !entries
        .iter()
        .any(|e| matches!(e.kind, EntryKind::Hardlink { .. }))
    {
        return Ok(entries);
    }
    let index: HashMap<Vec<u8>, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !matches!(e.kind, EntryKind::OpaqueDir))
        .map(|(i, e)| (e.path_bytes().to_vec(), i))
        .collect();
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..entries.len() {
        if !matches!(entries[i].kind, EntryKind::Hardlink { .. }) {
            continue;
        }
        let mut j = i;
        let mut steps = 0;
        while let EntryKind::Hardlink { target } = &entries[j].kind {
            let fail = |reason| LayerError::Hardlink {
                path: entries[i].path.clone(),
                target: target.clone(),
                reason,
            };
            let t = target.as_os_str();
            j = *index
                .get(std::os::unix::ffi::OsStrExt::as_bytes(t))
                .ok_or_else(|| fail("the target is not an entry of this layer"))?;
            steps += 1;
            if steps > entries.len() {
                return Err(fail("the hard links form a cycle"));
            }
            if matches!(
                entries[j].kind,
                EntryKind::Dir | EntryKind::Whiteout | EntryKind::OpaqueDir
            ) {
                return Err(fail("the target is a directory or a whiteout"));
            }
        }
        groups.entry(j).or_default().push(i);
    }
    for (root, members) in groups {
        let first = members.iter().copied().fold(root, usize::min);
        if first != root {
            // The first member takes over the content and the inode's metadata; the old holder
            // becomes a link.
            let (path_first, path_root) = (entries[first].path.clone(), entries[root].path.clone());
            entries.swap(first, root);
            entries[first].path = path_first;
            entries[root].path = path_root;
        }
        let target = entries[first].path.clone();
        for m in members.into_iter().chain([root]).filter(|&m| m != first) {
            entries[m].kind = EntryKind::Hardlink {
                target: target.clone(),
            };
        }
    }
    Ok(entries)
}

fn write_entry(tar: &mut impl Write, e: &Entry, epoch: u64, buf: &mut [u8]) -> Result<()> {
    let name = e.tar_path();
    let no_xattrs = BTreeMap::new();
    let mut member = Member {
        name: &name,
        mode: e.mode,
        uid: u64::from(e.uid),
        gid: u64::from(e.gid),
        size: 0,
        mtime: e.mtime.min(epoch),
        typeflag: b'0',
        linkname: b"",
        device: None,
        xattrs: &e.xattrs,
    };
    let header = |tar: &mut _, member: &Member<'_>| {
        write_member_header(tar, member).map_err(|err| match err.kind() {
            io::ErrorKind::InvalidInput => LayerError::TooLarge {
                path: e.path.clone(),
                what: "a device number",
            },
            _ => LayerError::Write(err),
        })
    };
    let link_bytes;
    match &e.kind {
        EntryKind::File(Content::Bytes(bytes)) => {
            member.size = bytes.len() as u64;
            header(tar, &member)?;
            tar.write_all(bytes).map_err(LayerError::Write)?;
            write_padding(tar, member.size).map_err(LayerError::Write)?;
            return Ok(());
        }
        EntryKind::File(Content::Path(source)) => {
            let mut file = open_source(source)?;
            member.size = file.metadata().map_err(io_err(source))?.len();
            header(tar, &member)?;
            copy_exact(&mut file, source, member.size, tar, buf)?;
            write_padding(tar, member.size).map_err(LayerError::Write)?;
            return Ok(());
        }
        EntryKind::Dir => member.typeflag = b'5',
        EntryKind::Symlink { target } | EntryKind::Hardlink { target } => {
            link_bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
            member.linkname = link_bytes;
            member.typeflag = if matches!(e.kind, EntryKind::Symlink { .. }) {
                b'2'
            } else {
                b'1'
            };
        }
        EntryKind::CharDevice { major, minor } => {
            member.typeflag = b'3';
            member.device = Some((*major, *minor));
        }
        EntryKind::BlockDevice { major, minor } => {
            member.typeflag = b'4';
            member.device = Some((*major, *minor));
        }
        EntryKind::Fifo => member.typeflag = b'6',
        EntryKind::Whiteout | EntryKind::OpaqueDir => {
            member.mode = 0;
            member.uid = 0;
            member.gid = 0;
            member.xattrs = &no_xattrs;
        }
    }
    header(tar, &member)
}

/// Opens a content file without following a symlink, and checks it is a regular file.
fn open_source(source: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32)
        .open(source)
        .map_err(io_err(source))?;
    let meta = file.metadata().map_err(io_err(source))?;
    if !meta.is_file() {
        return Err(LayerError::Io {
            path: source.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    Ok(file)
}

/// Copies exactly `size` bytes of `file` to `out` through `buf`, failing if the file holds
/// fewer or more.
fn copy_exact(
    file: &mut File,
    source: &Path,
    size: u64,
    out: &mut impl Write,
    buf: &mut [u8],
) -> Result<()> {
    let changed = || LayerError::FileChanged {
        path: source.to_owned(),
        expected: size,
    };
    let mut left = size;
    while left > 0 {
        // Whole chunks (short reads are completed), so that what the compressor is fed, and
        // how, never depends on how the kernel splits reads.
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = read_full(file, &mut buf[..want]).map_err(io_err(source))?;
        if n < want {
            return Err(changed());
        }
        out.write_all(&buf[..n]).map_err(LayerError::Write)?;
        left -= n as u64;
    }
    if read_retrying(file, &mut buf[..1]).map_err(io_err(source))? != 0 {
        return Err(changed());
    }
    Ok(())
}

fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_retrying(r, &mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The compression stage, between the tar digest and the output digest.
enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(out: W, compression: Compression) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(out, flate2::Compression::new(GZIP_LEVEL)),
            ),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                e.include_checksum(true)?;
                e.include_contentsize(false)?;
                e.include_dictid(false)?;
                e.long_distance_matching(false)?;
                Encoder::Zstd(e)
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}
