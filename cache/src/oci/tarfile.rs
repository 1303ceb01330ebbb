//! Tar, both ways: a deterministic writer for the archives we produce, and a random-access index
//! over a tar file for the archives we import.
//!
//! Writing: ustar headers with every field set by us (mode 0644 for files and 0755 for
//! directories, uid/gid 0, no owner names, mtime 0, device numbers 0), entries in strictly
//! increasing name order (enforced), two zero blocks at the end. Sizes of 8 GiB and more use the
//! base-256 size encoding every current reader (Go's archive/tar included) accepts.
//!
//! Reading: the `tar` crate parses headers (GNU long names, PAX records); we record where each
//! regular file's bytes are and read them later with positioned reads, so an archive's entries
//! can be used in any order without unpacking it. Names are normalised (`./` and `//` dropped);
//! an absolute name or a name with a `..` component makes the whole archive refused. Hard links
//! and symbolic links (which `docker save` writes for repeated layers) are followed inside the
//! archive only.

use super::{OciError, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const BLOCK: u64 = 512;

/// Hostile archives could list millions of entries; images have a few dozen.
const MAX_ENTRIES: usize = 1_000_000;

/// Links followed in a row before giving up (a loop, or an absurd chain).
const MAX_LINK_HOPS: usize = 16;

/// Counts what passes through, so entry sizes can be checked.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a deterministic tar stream.
pub(crate) struct TarWriter<W: Write> {
    out: Counting<W>,
    last_name: Option<String>,
    /// The output, for error messages.
    what: String,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, what: &str) -> Self {
        TarWriter {
            out: Counting {
                inner: out,
                count: 0,
            },
            last_name: None,
            what: what.to_owned(),
        }
    }

    fn io_err(&self, e: io::Error) -> OciError {
        OciError::io(format!("writing {}", self.what), e)
    }

    fn header(&mut self, name: &str, kind: ::tar::EntryType, mode: u32, size: u64) -> Result<()> {
        if self.last_name.as_deref().is_some_and(|last| last >= name) {
            return Err(OciError::Invalid(format!(
                "internal error: tar entry {name:?} written out of order in {}",
                self.what
            )));
        }
        if name.len() > 100 {
            return Err(OciError::Unsupported(format!(
                "tar entry name {name:?} is longer than 100 bytes"
            )));
        }
        let mut header = ::tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(size);
        header.set_entry_type(kind);
        let fields = header.as_ustar_mut().expect("a ustar header");
        fields.uname = [0; 32];
        fields.gname = [0; 32];
        fields.prefix = [0; 155];
        header
            .set_device_major(0)
            .and_then(|()| header.set_device_minor(0))
            .map_err(|e| self.io_err(e))?;
        header.set_cksum();
        self.out
            .write_all(header.as_bytes())
            .map_err(|e| self.io_err(e))?;
        self.last_name = Some(name.to_owned());
        Ok(())
    }

    /// A directory entry; by convention `name` ends in `/`.
    pub fn dir(&mut self, name: &str) -> Result<()> {
        self.header(name, ::tar::EntryType::Directory, 0o755, 0)
    }

    /// A regular file of `size` bytes, which `write` must write, no more and no fewer.
    pub fn file(
        &mut self,
        name: &str,
        size: u64,
        write: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        self.header(name, ::tar::EntryType::Regular, 0o644, size)?;
        let start = self.out.count;
        write(&mut self.out)?;
        let written = self.out.count - start;
        if written != size {
            return Err(OciError::Invalid(format!(
                "internal error: {written} bytes written for tar entry {name:?} of {size} bytes"
            )));
        }
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        self.out
            .write_all(&[0u8; BLOCK as usize][..pad as usize])
            .map_err(|e| self.io_err(e))
    }

    /// Writes the end-of-archive marker and returns the inner writer, flushed.
    pub fn finish(mut self) -> Result<W> {
        self.out
            .write_all(&[0u8; 2 * BLOCK as usize])
            .and_then(|()| self.out.flush())
            .map_err(|e| self.io_err(e))?;
        Ok(self.out.inner)
    }
}

/// What an archive entry is.
#[derive(Debug, Clone)]
enum Entry {
    File {
        offset: u64,
        size: u64,
    },
    /// A hard or symbolic link, with its target resolved to an archive name.
    Link(String),
    Dir,
    Other,
}

/// The entries of a tar file, by normalised name, readable in any order.
pub(crate) struct ArchiveIndex {
    path: PathBuf,
    file: File,
    entries: BTreeMap<String, Entry>,
}

impl ArchiveIndex {
    pub fn open(path: &Path) -> Result<ArchiveIndex> {
        let file =
            File::open(path).map_err(|e| OciError::io(format!("opening {}", path.display()), e))?;
        let location = format!("archive {}", path.display());
        let mut magic = [0u8; 6];
        let n = file
            .read_at(&mut magic, 0)
            .map_err(|e| OciError::io(format!("reading {}", path.display()), e))?;
        let compression = match &magic[..n] {
            [0x1f, 0x8b, ..] => Some("gzip"),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
            [b'B', b'Z', b'h', ..] => Some("bzip2"),
            [0xfd, b'7', b'z', b'X', b'Z', 0] => Some("xz"),
            _ => None,
        };
        if let Some(c) = compression {
            return Err(OciError::Unsupported(format!(
                "{location} is {c}-compressed; decompress it first (images are read from plain tar files)"
            )));
        }
        let mut entries = BTreeMap::new();
        let mut archive = ::tar::Archive::new(&file);
        let read_err = |e| OciError::io(format!("reading tar {}", path.display()), e);
        for entry in archive.entries_with_seek().map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let raw_name = entry.path_bytes();
            let Some(name) = normalize_name(&raw_name, &location)? else {
                continue;
            };
            let header = entry.header();
            let kind = header.entry_type();
            let value = match kind {
                ::tar::EntryType::Regular | ::tar::EntryType::Continuous => Entry::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                ::tar::EntryType::Link | ::tar::EntryType::Symlink => {
                    let target = entry.link_name_bytes().ok_or_else(|| {
                        OciError::Invalid(format!("{location}: link {name:?} has no target"))
                    })?;
                    let target = if kind == ::tar::EntryType::Link {
                        normalize_name(&target, &location)?.ok_or_else(|| {
                            OciError::Invalid(format!("{location}: link {name:?} has no target"))
                        })?
                    } else {
                        resolve_symlink(&name, &target, &location)?
                    };
                    Entry::Link(target)
                }
                ::tar::EntryType::Directory => Entry::Dir,
                ::tar::EntryType::XGlobalHeader => continue,
                _ => Entry::Other,
            };
            entries.insert(name, value);
            if entries.len() > MAX_ENTRIES {
                return Err(OciError::Unsupported(format!(
                    "{location} has more than {MAX_ENTRIES} entries"
                )));
            }
        }
        Ok(ArchiveIndex {
            path: path.to_owned(),
            file,
            entries,
        })
    }

    pub fn location(&self) -> String {
        format!("archive {}", self.path.display())
    }

    /// The regular file `name` (normalised; links followed) and its size, or None when the
    /// archive has no such entry.
    pub fn open_entry(&self, name: &str) -> Result<Option<(SectionReader<'_>, u64)>> {
        let location = self.location();
        let Some(mut name) = normalize_name(name.as_bytes(), &location)? else {
            return Ok(None);
        };
        for _ in 0..MAX_LINK_HOPS {
            match self.entries.get(&name) {
                None => return Ok(None),
                Some(Entry::File { offset, size }) => {
                    return Ok(Some((
                        SectionReader {
                            file: &self.file,
                            pos: *offset,
                            end: offset + size,
                        },
                        *size,
                    )));
                }
                Some(Entry::Link(target)) => name = target.clone(),
                Some(Entry::Dir | Entry::Other) => {
                    return Err(OciError::Invalid(format!(
                        "{location}: {name:?} is not a regular file"
                    )));
                }
            }
        }
        Err(OciError::Invalid(format!(
            "{location}: {name:?} is a link chain of more than {MAX_LINK_HOPS} links (a loop?)"
        )))
    }
}

/// Reads one entry's bytes from the archive file with positioned reads.
pub(crate) struct SectionReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SectionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar file ends inside an entry",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn unsafe_path(location: &str, path: String) -> OciError {
    OciError::UnsafePath {
        location: location.to_owned(),
        path,
    }
}

/// An entry name as a relative path without `.` or empty components; None for the archive's
/// root (`./`). Absolute names and names with `..` are errors: an archive that has them is
/// hostile or broken, and nothing of it is used.
pub(crate) fn normalize_name(raw: &[u8], location: &str) -> Result<Option<String>> {
    let name = std::str::from_utf8(raw).map_err(|_| {
        OciError::Invalid(format!(
            "{location}: entry name {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    if name.starts_with('/') {
        return Err(unsafe_path(location, name.to_owned()));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_path(location, name.to_owned())),
            _ => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// The archive name a symbolic link at `name` points to. `..` may climb within the archive
/// (`docker save` links `<id>/layer.tar` to `../<other>/layer.tar`), never out of it.
fn resolve_symlink(name: &str, target: &[u8], location: &str) -> Result<String> {
    let shown = || format!("{name} -> {}", String::from_utf8_lossy(target));
    let target = std::str::from_utf8(target).map_err(|_| unsafe_path(location, shown()))?;
    if target.starts_with('/') {
        return Err(unsafe_path(location, shown()));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(unsafe_path(location, shown()));
                }
            }
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(OciError::Invalid(format!(
            "{location}: link {} points at the archive root",
            shown()
        )));
    }
    Ok(parts.join("/"))
}
