//! Cache-mount contents as content-addressed blobs: a manifest of entries (path, type, mode,
//! owner, mtime, and for a file the byte range of a blob holding its content).
//!
//! A file of [`BIG`] bytes or more is a blob of its own (named by its content, so an unchanged
//! file is never sent twice, and equal files share one). Smaller files are packed: walked in
//! path order, their contents are concatenated into packs, and a pack ends after a file whose
//! path hashes to a boundary (about one file in [`PACK_EVERY`]) or once it holds [`PACK_MAX`]
//! bytes. Boundaries depend on paths, not on position, so changing, adding or removing a small
//! file changes only its own pack (rarely the next one): an unchanged cache mount exports no
//! new blob, a slightly changed one a few.

use super::index::{BlobRef, MountEntry};
use super::{CacheTransport, ExportError, Stats};
use crate::store::Store;
use crate::{Digest, DigestWriter};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Files this large or larger are blobs of their own.
pub const BIG: u64 = 64 * 1024;
/// A pack ends after a file whose path hash is 0 modulo this…
pub const PACK_EVERY: u8 = 64;
/// …or once it holds this many bytes.
pub const PACK_MAX: usize = 1 << 20;
/// Blobs up to this size are read into memory on import; larger ones (whole files) stream.
const IN_MEMORY: u64 = 32 << 20;
/// A manifest larger than this is refused (a million entries take about 200 MB).
const MANIFEST_MAX: u64 = 1 << 30;

const FORMAT: &str = "imgbuild-cache-mount/v1";

/// A file name or link target: a JSON string when it is UTF-8, else its bytes in hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Name {
    Utf8(String),
    Bytes { hex: String },
}

impl Name {
    fn from_os(s: &OsStr) -> Name {
        match s.to_str() {
            Some(u) => Name::Utf8(u.to_owned()),
            None => Name::Bytes {
                hex: hex::encode(s.as_bytes()),
            },
        }
    }

    fn to_path(&self) -> Result<PathBuf, String> {
        match self {
            Name::Utf8(s) => Ok(PathBuf::from(s)),
            Name::Bytes { hex } => hex::decode(hex)
                .map(|b| PathBuf::from(OsStr::from_bytes(&b)))
                .map_err(|e| format!("bad hex name {hex:?}: {e}")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry of a cache mount; `path` is relative to its top (`""` is the top itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: Name,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds and nanoseconds since 1970: tools (cargo, make) decide what to rebuild by them.
    pub mtime: i64,
    #[serde(default)]
    pub mtime_ns: u32,
    /// File: its size; its content is `blob[offset..offset + size]` (no blob when empty).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<Digest>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Symlink: its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Name>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The manifest blob of one cache mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub id: String,
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("bad cache-mount manifest: {e}"))?;
        if m.format != FORMAT {
            return Err(format!(
                "cache-mount manifest format {:?} (this imgbuild reads {FORMAT:?})",
                m.format
            ));
        }
        Ok(m)
    }
}

/// Walks `dir` depth first in byte order of names: (relative path, metadata), the top first.
fn walk(dir: &Path) -> io::Result<Vec<(PathBuf, fs::Metadata)>> {
    let mut out = vec![(PathBuf::new(), fs::symlink_metadata(dir)?)];
    // Pre-order with sorted children: a directory's entries follow it.
    fn visit(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let r = rel.join(&name);
            let meta = fs::symlink_metadata(dir.join(&r))?;
            let is_dir = meta.is_dir();
            out.push((r.clone(), meta));
            if is_dir {
                visit(dir, &r, out)?;
            }
        }
        Ok(())
    }
    visit(dir, Path::new(""), &mut out)?;
    Ok(out)
}

fn entry_of(rel: &Path, meta: &fs::Metadata, kind: Kind) -> Entry {
    Entry {
        path: Name::from_os(rel.as_os_str()),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        mtime_ns: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        size: 0,
        blob: None,
        offset: 0,
        target: None,
    }
}

/// Stores `bytes` as a blob at `dest` unless it has it.
fn put_bytes(
    dest: &dyn CacheTransport,
    bytes: &[u8],
    stats: &mut Stats,
) -> Result<BlobRef, ExportError> {
    let blob = BlobRef {
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
    };
    put_with(dest, &blob, stats, &mut |w| w.write_all(bytes))?;
    Ok(blob)
}

/// Stores `blob` at `dest`, unless it has it, from what `fill` writes.
fn put_with(
    dest: &dyn CacheTransport,
    blob: &BlobRef,
    stats: &mut Stats,
    fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> Result<(), ExportError> {
    if dest.has_blob(&blob.digest).map_err(ExportError::at(dest))? == Some(blob.size) {
        stats.blobs_present += 1;
        return Ok(());
    }
    // put_blob pulls; producing the bytes pushes: buffer a small blob, stream a file.
    let mut bytes = Vec::with_capacity(blob.size.min(PACK_MAX as u64 * 2) as usize);
    fill(&mut bytes).map_err(|e| ExportError::Invalid(format!("reading a cache mount: {e}")))?;
    dest.put_blob(&blob.digest, blob.size, &mut bytes.as_slice())
        .map_err(ExportError::at(dest))?;
    stats.blobs_written += 1;
    stats.bytes_written += blob.size;
    Ok(())
}

/// Streams the file at `path` to `dest` as `blob` (verified by the transport).
fn put_file(
    dest: &dyn CacheTransport,
    blob: &BlobRef,
    path: &Path,
    stats: &mut Stats,
) -> Result<(), ExportError> {
    if dest.has_blob(&blob.digest).map_err(ExportError::at(dest))? == Some(blob.size) {
        stats.blobs_present += 1;
        return Ok(());
    }
    let mut file = File::open(path).map_err(|e| ExportError::file(path, e))?;
    dest.put_blob(&blob.digest, blob.size, &mut file)
        .map_err(|e| {
            ExportError::Invalid(format!(
                "{}: {e} (did a build change the cache mount while it was exported?)",
                path.display()
            ))
        })?;
    stats.blobs_written += 1;
    stats.bytes_written += blob.size;
    Ok(())
}

fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    let mut w = DigestWriter::new(io::sink());
    io::copy(&mut File::open(path)?, &mut w)?;
    let (d, n, _) = w.finish();
    Ok((d, n))
}

/// Whether a pack ends after the file at `rel`.
fn boundary(rel: &Path) -> bool {
    blake3::hash(rel.as_os_str().as_bytes()).as_bytes()[0].is_multiple_of(PACK_EVERY)
}

/// Exports the cache-mount directory `dir` (an instance the caller holds locked) as cache
/// `id` to `dest`. `previous` is the manifest `dest` has for it, if any: a big file whose
/// path, size and mtime it lists is not hashed again (the rule git and make use).
pub fn export_mount(
    dir: &Path,
    id: &str,
    dest: &dyn CacheTransport,
    previous: Option<&Manifest>,
    stats: &mut Stats,
) -> Result<MountEntry, ExportError> {
    let listing = walk(dir).map_err(|e| ExportError::file(dir, e))?;
    let known: HashMap<&Name, &Entry> = previous
        .map(|m| {
            m.entries
                .iter()
                .filter(|e| e.kind == Kind::File && e.offset == 0)
                .map(|e| (&e.path, e))
                .collect()
        })
        .unwrap_or_default();
    let mut entries = Vec::with_capacity(listing.len());
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    // The open pack: its bytes and the entries whose content it holds.
    let mut pack: Vec<u8> = Vec::new();
    let mut members: Vec<usize> = Vec::new();
    let close = |pack: &mut Vec<u8>,
                 members: &mut Vec<usize>,
                 entries: &mut Vec<Entry>,
                 blobs: &mut BTreeMap<Digest, u64>,
                 stats: &mut Stats|
     -> Result<(), ExportError> {
        if members.is_empty() {
            return Ok(());
        }
        let blob = put_bytes(dest, pack, stats)?;
        for &i in members.iter() {
            entries[i] = Entry {
                blob: Some(blob.digest),
                ..entries[i].clone()
            };
        }
        blobs.insert(blob.digest, blob.size);
        pack.clear();
        members.clear();
        Ok(())
    };
    for (rel, meta) in &listing {
        let ft = meta.file_type();
        let full = dir.join(rel);
        if ft.is_dir() {
            entries.push(entry_of(rel, meta, Kind::Dir));
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(|e| ExportError::file(&full, e))?;
            entries.push(Entry {
                target: Some(Name::from_os(target.as_os_str())),
                ..entry_of(rel, meta, Kind::Symlink)
            });
        } else if ft.is_file() {
            let mut e = Entry {
                size: meta.len(),
                ..entry_of(rel, meta, Kind::File)
            };
            if meta.len() >= BIG {
                let cached = known
                    .get(&e.path)
                    .filter(|p| p.size == e.size && p.mtime == e.mtime && p.mtime_ns == e.mtime_ns);
                let digest = match cached.and_then(|p| p.blob) {
                    Some(d) => d,
                    None => {
                        hash_file(&full)
                            .map_err(|err| ExportError::file(&full, err))?
                            .0
                    }
                };
                let blob = BlobRef {
                    digest,
                    size: e.size,
                };
                put_file(dest, &blob, &full, stats)?;
                blobs.insert(digest, e.size);
                e.blob = Some(digest);
                entries.push(e);
            } else if meta.len() == 0 {
                entries.push(e);
            } else {
                let before = pack.len();
                File::open(&full)
                    .and_then(|f| f.take(meta.len()).read_to_end(&mut pack))
                    .map_err(|err| ExportError::file(&full, err))?;
                if (pack.len() - before) as u64 != meta.len() {
                    return Err(ExportError::Invalid(format!(
                        "{}: changed while the cache mount was exported",
                        full.display()
                    )));
                }
                e.offset = before as u64;
                members.push(entries.len());
                entries.push(e);
                if boundary(rel) || pack.len() >= PACK_MAX {
                    close(&mut pack, &mut members, &mut entries, &mut blobs, stats)?;
                }
            }
        } else {
            // Sockets, fifos and devices: a cache holds none worth keeping.
            stats.skipped += 1;
        }
    }
    close(&mut pack, &mut members, &mut entries, &mut blobs, stats)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        id: id.to_owned(),
        entries,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ExportError::Invalid(e.to_string()))?;
    let manifest = put_bytes(dest, &bytes, stats)?;
    Ok(MountEntry {
        manifest,
        blobs: blobs
            .into_iter()
            .map(|(digest, size)| BlobRef { digest, size })
            .collect(),
    })
}

/// Reads the manifest of `entry` from `source`, verified.
pub fn read_manifest(
    source: &dyn CacheTransport,
    entry: &MountEntry,
) -> Result<Manifest, ExportError> {
    if entry.manifest.size > MANIFEST_MAX {
        return Err(ExportError::Invalid(format!(
            "cache-mount manifest {} is {} bytes, more than this imgbuild reads",
            entry.manifest.digest, entry.manifest.size
        )));
    }
    let bytes = read_blob(source, &entry.manifest)?;
    Manifest::from_json(&bytes).map_err(ExportError::Invalid)
}

/// A whole blob, checked against its digest and size.
pub(super) fn read_blob(
    source: &dyn CacheTransport,
    blob: &BlobRef,
) -> Result<Vec<u8>, ExportError> {
    let mut bytes = Vec::with_capacity(blob.size.min(IN_MEMORY) as usize);
    source
        .get_blob(&blob.digest)
        .and_then(|r| r.take(blob.size + 1).read_to_end(&mut bytes))
        .map_err(ExportError::at(source))?;
    let found = Digest::of(&bytes);
    if found != blob.digest || bytes.len() as u64 != blob.size {
        return Err(ExportError::corrupt(source, blob, found));
    }
    Ok(bytes)
}

/// `path` as a relative path of normal components (the top is empty); anything else (`..`,
/// absolute, `.`) is refused so an entry cannot point outside the tree.
fn clean(name: &Name) -> Result<PathBuf, String> {
    let p = name.to_path()?;
    if p.as_os_str().is_empty() {
        return Ok(p);
    }
    if p.components().all(|c| matches!(c, Component::Normal(_)))
        && !p.as_os_str().as_bytes().ends_with(b"/")
        && !p.as_os_str().as_bytes().contains(&0)
    {
        Ok(p)
    } else {
        Err(format!("unsafe path {p:?} in a cache-mount manifest"))
    }
}

/// Builds the tree `manifest` describes in `top` (an empty directory), fetching content from
/// `source`; every blob is checked against its digest before its bytes are used, so a
/// damaged cache fails here and the caller discards the half-made tree.
pub fn materialise(
    top: &Path,
    manifest: &Manifest,
    entry: &MountEntry,
    source: &dyn CacheTransport,
    stats: &mut Stats,
) -> Result<(), ExportError> {
    let invalid = |m: String| ExportError::Invalid(format!("cache mount {:?}: {m}", manifest.id));
    let sizes: HashMap<Digest, u64> = entry.blobs.iter().map(|b| (b.digest, b.size)).collect();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut paths = Vec::with_capacity(manifest.entries.len());
    let mut by_blob: BTreeMap<Digest, Vec<usize>> = BTreeMap::new();
    // Structure first: directories, symlinks and empty files, each under a directory made
    // here (never under a symlink), each path once.
    for (i, e) in manifest.entries.iter().enumerate() {
        let rel = clean(&e.path).map_err(invalid)?;
        let full = top.join(&rel);
        if rel.as_os_str().is_empty() {
            if i != 0 || e.kind != Kind::Dir {
                return Err(invalid(
                    "the top entry must come first, as a directory".into(),
                ));
            }
            dirs.insert(rel.clone());
            paths.push(full);
            continue;
        }
        if i == 0 {
            return Err(invalid(
                "the manifest does not start with its top entry".into(),
            ));
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !dirs.contains(parent) {
            return Err(invalid(format!(
                "{rel:?} comes before its directory, or under something not a directory"
            )));
        }
        let made = match e.kind {
            Kind::Dir => {
                if !dirs.insert(rel.clone()) {
                    return Err(invalid(format!("{rel:?} is listed twice")));
                }
                fs::DirBuilder::new().mode(0o700).create(&full)
            }
            Kind::Symlink => {
                let target = e
                    .target
                    .as_ref()
                    .ok_or_else(|| invalid(format!("symlink {rel:?} has no target")))?
                    .to_path()
                    .map_err(invalid)?;
                std::os::unix::fs::symlink(target, &full)
            }
            Kind::File => {
                if e.size > 0 {
                    let d = e
                        .blob
                        .ok_or_else(|| invalid(format!("{rel:?} has content but no blob")))?;
                    let blob_size = *sizes.get(&d).ok_or_else(|| {
                        invalid(format!(
                            "{rel:?} names blob {d}, which the index does not list"
                        ))
                    })?;
                    if e.offset
                        .checked_add(e.size)
                        .is_none_or(|end| end > blob_size)
                    {
                        return Err(invalid(format!("{rel:?} lies outside its blob {d}")));
                    }
                    by_blob.entry(d).or_default().push(i);
                }
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&full)
                    .map(drop)
            }
        };
        // AlreadyExists: a duplicate path; refused like any other failure here.
        made.map_err(|err| invalid(format!("{rel:?}: {err}")))?;
        paths.push(full);
    }
    // Content, one blob at a time.
    let open = |i: usize| {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&paths[i])
            .map_err(|e| ExportError::file(&paths[i], e))
    };
    for (digest, users) in &by_blob {
        let blob = BlobRef {
            digest: *digest,
            size: sizes[digest],
        };
        if blob.size <= IN_MEMORY {
            let bytes = read_blob(source, &blob)?;
            for &i in users {
                let e = &manifest.entries[i];
                let range = e.offset as usize..(e.offset + e.size) as usize;
                open(i)?
                    .write_all(&bytes[range])
                    .map_err(|err| ExportError::file(&paths[i], err))?;
            }
        } else {
            // A big file's own blob: streamed into its first user, checked, then copied.
            if users.iter().any(|&i| {
                let e = &manifest.entries[i];
                e.offset != 0 || e.size != blob.size
            }) {
                return Err(invalid(format!("blob {digest} is too big to be a pack")));
            }
            let first = users[0];
            let mut w = DigestWriter::new(open(first)?);
            source
                .get_blob(digest)
                .and_then(|r| io::copy(&mut r.take(blob.size + 1), &mut w))
                .map_err(ExportError::at(source))?;
            let (found, len, _) = w.finish();
            if found != *digest || len != blob.size {
                return Err(ExportError::corrupt(source, &blob, found));
            }
            for &i in &users[1..] {
                fs::copy(&paths[first], &paths[i]).map_err(|e| ExportError::file(&paths[i], e))?;
            }
        }
        stats.blobs_written += 1;
        stats.bytes_written += blob.size;
    }
    // Metadata last, deepest first, so a directory's mtime and mode hold once its entries
    // are in. Owners only as root (anyone else can give files away to no one).
    let root = rustix::process::geteuid().is_root();
    for (i, e) in manifest.entries.iter().enumerate().rev() {
        let p = &paths[i];
        let err = |err: io::Error| ExportError::file(p, err);
        if root {
            std::os::unix::fs::lchown(p, Some(e.uid), Some(e.gid)).map_err(err)?;
        }
        if e.kind != Kind::Symlink {
            fs::set_permissions(p, fs::Permissions::from_mode(e.mode & 0o7777)).map_err(err)?;
        }
        let t = rustix::fs::Timespec {
            tv_sec: e.mtime,
            tv_nsec: e.mtime_ns.min(999_999_999) as _,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|x| err(x.into()))?;
    }
    Ok(())
}

/// Imports cache mount `id` from `source` into `store` when the store has none yet; returns
/// whether it did. A damaged cache leaves the store as it was.
pub fn import_mount(
    store: &Store,
    source: &dyn CacheTransport,
    id: &str,
    entry: &MountEntry,
    stats: &mut Stats,
) -> Result<bool, ExportError> {
    let manifest = read_manifest(source, entry)?;
    if manifest.id != id {
        return Err(ExportError::Invalid(format!(
            "the manifest for cache mount {id:?} is for {:?}",
            manifest.id
        )));
    }
    let tmp = store.temp_dir()?;
    materialise(tmp.path(), &manifest, entry, source, stats)?;
    Ok(store.install_cache_mount(id, tmp)?)
}

#[cfg(test)]
mod tests {
    use super::super::LocalDir;
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        fs::write(dir.join("small.txt"), b"small").unwrap();
        fs::write(dir.join("empty"), b"").unwrap();
        fs::write(dir.join("sub/big.bin"), vec![7u8; BIG as usize + 10]).unwrap();
        fs::write(dir.join("sub/big-copy.bin"), vec![7u8; BIG as usize + 10]).unwrap();
        for i in 0..300 {
            fs::write(
                dir.join(format!("sub/deeper/f{i:03}")),
                format!("file {i}\n").repeat(i + 1),
            )
            .unwrap();
        }
        fs::write(dir.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o751)).unwrap();
        symlink("sub/big.bin", dir.join("link")).unwrap();
        symlink("/nowhere", dir.join("dangling")).unwrap();
        let odd = OsStr::from_bytes(b"caf\xe9");
        fs::write(dir.join(odd), b"latin-1 name").unwrap();
        let t = rustix::fs::Timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 123_456_789,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        for p in ["small.txt", "sub", "link"] {
            rustix::fs::utimensat(
                rustix::fs::CWD,
                dir.join(p),
                &times,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }

    /// (path, kind, mode, size, mtime, content or target) of every entry.
    fn describe(dir: &Path) -> Vec<String> {
        walk(dir)
            .unwrap()
            .into_iter()
            .skip(1)
            .map(|(rel, m)| {
                let full = dir.join(&rel);
                let what = if m.is_symlink() {
                    format!("-> {:?}", fs::read_link(&full).unwrap())
                } else if m.is_file() {
                    hex::encode(Digest::of(&fs::read(&full).unwrap()).bytes())
                } else {
                    "dir".into()
                };
                let mode = if m.is_symlink() { 0 } else { m.mode() };
                format!(
                    "{rel:?} {mode:o} {} {}.{} {what}",
                    m.len() * u64::from(!m.is_dir()),
                    m.mtime(),
                    m.mtime_nsec()
                )
            })
            .collect()
    }

    #[test]
    fn round_trip_keeps_content_modes_links_and_mtimes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        tree(&src);
        let dest = LocalDir::new(d.path().join("cache"));
        let mut stats = Stats::default();
        let entry = export_mount(&src, "/root/.cache", &dest, None, &mut stats).unwrap();
        // The two equal big files share one blob; small files are packed.
        let big = entry.blobs.iter().filter(|b| b.size == BIG + 10).count();
        assert_eq!(big, 1, "{entry:?}");
        assert!(entry.blobs.len() < 30, "{} blobs", entry.blobs.len());
        assert_eq!(stats.blobs_written, entry.blobs.len() + 1);

        let store = Store::open(&d.path().join("store")).unwrap();
        let mut stats = Stats::default();
        assert!(import_mount(&store, &dest, "/root/.cache", &entry, &mut stats).unwrap());
        let got = store.cache_mount_path("/root/.cache").join("0");
        assert_eq!(describe(&got), describe(&src));
        assert_eq!(
            fs::metadata(&got).unwrap().mode(),
            fs::metadata(&src).unwrap().mode()
        );
        // Present now: not imported again.
        assert!(!import_mount(&store, &dest, "/root/.cache", &entry, &mut stats).unwrap());

        // Unchanged: the same manifest, no new blob. One small file changed: one new pack
        // and a new manifest.
        let previous = read_manifest(&dest, &entry).unwrap();
        let mut again = Stats::default();
        let same = export_mount(&src, "/root/.cache", &dest, Some(&previous), &mut again).unwrap();
        assert_eq!(same, entry);
        assert_eq!(again.blobs_written, 0);
        fs::write(src.join("sub/deeper/f150"), b"changed").unwrap();
        let mut changed = Stats::default();
        export_mount(&src, "/root/.cache", &dest, Some(&previous), &mut changed).unwrap();
        assert_eq!(changed.blobs_written, 2, "{changed:?}");
    }

    #[test]
    fn damaged_or_hostile_caches_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        tree(&src);
        let dest = LocalDir::new(d.path().join("cache"));
        let entry = export_mount(&src, "c", &dest, None, &mut Stats::default()).unwrap();
        let store = Store::open(&d.path().join("store")).unwrap();
        let tmp_empty = || fs::read_dir(store.root().join("tmp")).unwrap().count() == 0;

        // A flipped byte in a pack.
        let pack = entry.blobs.iter().find(|b| b.size < BIG).unwrap();
        let path = dest.blob_path(&pack.digest);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = import_mount(&store, &dest, "c", &entry, &mut Stats::default()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(!store.cache_mount_path("c").join("0").exists());
        assert!(tmp_empty());

        // Manifests that escape, repeat or skip their directory.
        let base = read_manifest(&dest, &entry).unwrap();
        for (i, bad) in ["../escape", "/abs", "sub/../x", "missing/x", "small.txt"]
            .iter()
            .enumerate()
        {
            let mut m = base.clone();
            let mut e = m.entries[1].clone();
            e.path = Name::Utf8((*bad).into());
            e.kind = Kind::File;
            e.size = 0;
            m.entries.insert(2 + i % 2, e);
            let top = tempfile::tempdir().unwrap();
            let err = materialise(top.path(), &m, &entry, &dest, &mut Stats::default());
            assert!(err.is_err(), "{bad} was accepted");
        }
        // A file under a symlink.
        let mut m = base.clone();
        let mut e = m.entries[1].clone();
        e.path = Name::Utf8("link/x".into());
        e.kind = Kind::File;
        e.size = 0;
        m.entries.push(e);
        let top = tempfile::tempdir().unwrap();
        assert!(materialise(top.path(), &m, &entry, &dest, &mut Stats::default()).is_err());
    }
}
