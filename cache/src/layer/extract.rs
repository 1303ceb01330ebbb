//! Applying a layer (an uncompressed tar stream) onto a directory, safely.
//!
//! # Containment
//! Nothing outside `dest` is ever created, changed or removed, whatever the archive holds:
//! - Member names are cleaned lexically as BuildKit and containerd do: a leading `/`, empty and
//!   `.` components are dropped and `..` removes the previous component but never climbs above
//!   the root, so `../../x` and `/x` both land at `dest/x`. Names that held `..` or a leading `/`
//!   are listed in [`ExtractReport::sanitized_paths`]. Hard-link targets are cleaned the same way.
//! - Parent directories are resolved with `dest` as the root (chroot semantics): a symlink met
//!   on the way, absolute or relative, is followed *inside* `dest` (`a -> /etc` then `a/passwd`
//!   writes `dest/etc/passwd`; `a -> ../..` then `a/x` writes `dest/x`). The kernel does it
//!   with `openat2(RESOLVE_IN_ROOT)` where available, a userspace walk otherwise.
//! - The final component is never followed: whatever is there (file, symlink, directory) is
//!   removed first, and the new entry is created with `O_EXCL`/`mkdirat`/`symlinkat`/`mknodat`/
//!   `linkat`, all relative to the resolved parent. The one exception: a directory entry over
//!   an existing directory keeps it (its contents merge, its metadata is updated).
//! - Hard links are made with `linkat` without `AT_SYMLINK_FOLLOW` between two names resolved
//!   inside `dest`; a target missing from `dest` (or a directory) is an error.
//! - Device nodes are made only when [`ExtractOptions::allow_devices`] is set and we are
//!   privileged; otherwise they are skipped and listed in [`ExtractReport::skipped`], an error
//!   only with [`ExtractOptions::fail_on_skipped_device`].
//!
//! # Whiteouts ([`ExtractMode`])
//! - `Apply` (extracting onto the lower layers' content): `.wh.<name>` removes `<name>`, and
//!   `.wh..wh..opq` removes everything in its directory, except what this same layer has
//!   already put there (a layer's own entries are never hidden by its own whiteouts, as the OCI
//!   spec says, whatever the member order). Other `.wh..wh.*` names (AUFS metadata) are skipped.
//! - `Overlay` (extracting one layer as its own tree, for an overlayfs lower dir): a whiteout
//!   becomes a character device 0/0 and an opaque marker sets `trusted.overlay.opaque=y` (or
//!   `user.overlay.opaque` with [`ExtractOptions::overlay_user_xattrs`]) on its directory. When
//!   that is not possible (not privileged), they are listed in [`ExtractReport::whiteouts`] and
//!   [`ExtractReport::opaque_dirs`] instead.
//! - `Plain` (an archive that is not a layer, as `ADD` of a local tarball): `.wh.` names are
//!   ordinary files.
//!
//! # Metadata
//! Ownership is applied (`lchown`) when privileged, per [`Ownership`]; then the mode (so that
//! setuid bits survive the chown), then xattrs (after the chown, which clears
//! `security.capability`), best-effort: a failure is listed in
//! [`ExtractReport::xattr_failures`]. `trusted.overlay.*` and `user.overlay.*` xattrs from the
//! archive are never applied. mtimes (and atimes, set equal) come from the header or a PAX
//! `mtime`. Directories are created `0700` and get their final mode and mtime after all
//! entries, deepest first, so that a read-only directory can still be filled and its mtime
//! is not disturbed by its contents. Parents missing from the archive are created `0755`, owned
//! by the extracting user, mtime 0. File data is written in fixed-size chunks; runs of zeros
//! become holes.

use super::entry::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::owner::{OWNER_XATTR, chownat_or_skip, fchown_or_record};
use super::resolve::{Resolver, Root, lstat_at};
use super::{LayerError, Result, io_err};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How whiteouts are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExtractMode {
    /// Onto lower layers' content: whiteouts delete.
    #[default]
    Apply,
    /// A layer as its own tree, for an overlayfs lower dir: whiteouts become overlay whiteouts.
    Overlay,
    /// Not a layer: `.wh.` names are ordinary files.
    Plain,
}

/// Whose files the extracted ones are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Ownership {
    /// The archive's uid/gid, when privileged (otherwise left as the extracting user's, and
    /// [`ExtractReport::ownership_skipped`] is set).
    #[default]
    FromArchive,
    /// The extracting user's.
    Ignore,
    /// These, for every entry (needs privilege unless they are the extracting user's).
    Force { uid: u32, gid: u32 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    pub mode: ExtractMode,
    pub ownership: Ownership,
    /// Create device nodes (only ever when privileged). Default: skip them.
    pub allow_devices: bool,
    /// A device node not created is an error rather than a note in the report.
    pub fail_on_skipped_device: bool,
    /// Overlay mode: mark opaque directories with `user.overlay.opaque` (for overlay mounts
    /// with `userxattr`) instead of `trusted.overlay.opaque`.
    pub overlay_user_xattrs: bool,
    /// Whether to act as privileged (chown, mknod of devices and whiteouts). `None`: when the
    /// effective uid is 0.
    pub privileged: Option<bool>,
}

/// Why an archive member was not extracted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// A device node, not allowed or not permitted.
    Device,
    /// A whiteout of a path this same layer created: the layer's own entry stays.
    SameLayerWhiteout,
    /// AUFS metadata (`.wh..wh.*` other than the opaque marker), or a whiteout of no name.
    BadWhiteout,
    /// The destination root itself (`./`, `/`): its metadata is the caller's.
    DestinationRoot,
    /// A member type we do not extract (sockets do not exist in tar; this is e.g. `V`, `M`).
    UnsupportedType(u8),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Skipped {
    /// The cleaned path of the member, relative to the destination.
    pub path: PathBuf,
    pub reason: SkipReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct XattrFailure {
    pub path: PathBuf,
    pub name: String,
    pub error: String,
}

/// What an extraction did besides the obvious.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Archive members processed (extension headers not counted).
    pub entries: u64,
    /// Bytes of regular-file data written.
    pub file_bytes: u64,
    /// Member names (as in the archive) that held `..` or a leading `/` and were cleaned.
    pub sanitized_paths: Vec<PathBuf>,
    pub skipped: Vec<Skipped>,
    /// Overlay mode: whiteouts that could not be made as 0/0 character devices.
    pub whiteouts: Vec<PathBuf>,
    /// Overlay mode: opaque directories whose xattr could not be set.
    pub opaque_dirs: Vec<PathBuf>,
    /// The archive's ownership was not applied because we are not privileged.
    pub ownership_skipped: bool,
    pub xattr_failures: Vec<XattrFailure>,
}

/// Applies the tar stream `reader` (uncompressed: see [`super::decompress()`]) onto `dest`, an
/// existing directory. On error, `dest` may hold part of the layer.
pub fn extract(reader: impl Read, dest: &Path, options: &ExtractOptions) -> Result<ExtractReport> {
    extract_with(reader, dest, options, Resolver::Kernel)
}

pub(crate) fn extract_with(
    reader: impl Read,
    dest: &Path,
    options: &ExtractOptions,
    resolver: Resolver,
) -> Result<ExtractReport> {
    let root = Root::open(dest, resolver).map_err(io_err(dest))?;
    let privileged = options
        .privileged
        .unwrap_or_else(|| rustix::process::geteuid().is_root());
    let mut x = Extractor {
        root,
        dest,
        opts: options,
        privileged,
        report: ExtractReport::default(),
        written: HashSet::new(),
        dirs: BTreeMap::new(),
        buf: vec![0u8; 256 * 1024],
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(LayerError::Archive)? {
        let mut entry = entry.map_err(LayerError::Archive)?;
        x.member(&mut entry)?;
    }
    x.finish_dirs()?;
    Ok(x.report)
}

struct Extractor<'a> {
    root: Root,
    dest: &'a Path,
    opts: &'a ExtractOptions,
    privileged: bool,
    report: ExtractReport,
    /// Cleaned paths this layer has created (entries and implicit parents).
    written: HashSet<Vec<u8>>,
    /// Directories to give their final mode and mtime at the end.
    dirs: BTreeMap<Vec<u8>, (u32, u64)>,
    buf: Vec<u8>,
}

/// One member's metadata.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Cleans a member name lexically; says whether it held `..` or a leading `/`.
fn clean(raw: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut suspicious = raw.first() == Some(&b'/');
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                suspicious = true;
                out.pop();
            }
            c => out.push(c),
        }
    }
    (out, suspicious)
}

fn bytes_path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

fn archive_err(msg: String) -> LayerError {
    LayerError::Archive(io::Error::new(io::ErrorKind::InvalidData, msg))
}

fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Extractor<'_> {
    fn io(&self, rel: &[u8]) -> impl FnOnce(io::Error) -> LayerError + use<> {
        io_err(self.dest.join(OsStr::from_bytes(rel)))
    }

    fn errno(&self, rel: &[u8]) -> impl FnOnce(Errno) -> LayerError + use<> {
        let f = self.io(rel);
        move |e| f(e.into())
    }

    fn member<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions()
            || etype.is_pax_local_extensions()
            || etype.is_gnu_longname()
            || etype.is_gnu_longlink()
        {
            return Ok(());
        }
        self.report.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let (comps, suspicious) = clean(&raw);
        if suspicious {
            self.report.sanitized_paths.push(bytes_path(&raw));
        }
        let rel = comps.join(&b'/');
        let Some((&name, parent)) = comps.split_last() else {
            self.skip(&rel, SkipReason::DestinationRoot);
            return Ok(());
        };
        let meta = self.meta(entry)?;

        if self.opts.mode != ExtractMode::Plain && name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent, name, &meta);
        }
        use tar::EntryType as T;
        match etype {
            T::Regular | T::Continuous | T::GNUSparse if raw.ends_with(b"/") => {
                self.dir(parent, name, &rel, &meta)
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.file(parent, name, &rel, &meta, entry)
            }
            T::Directory => self.dir(parent, name, &rel, &meta),
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| archive_err(format!("symlink {rel:?} has no target")))?
                    .into_owned();
                self.symlink(parent, name, &rel, &meta, &target)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| archive_err(format!("hard link {rel:?} has no target")))?
                    .into_owned();
                self.hardlink(parent, name, &rel, &target)
            }
            T::Char | T::Block => {
                let h = entry.header();
                let major = h.device_major().map_err(LayerError::Archive)?.unwrap_or(0);
                let minor = h.device_minor().map_err(LayerError::Archive)?.unwrap_or(0);
                let ft = if etype == T::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                self.device(parent, name, &rel, &meta, ft, major, minor)
            }
            T::Fifo => self.node(parent, name, &rel, &meta, FileType::Fifo, 0),
            other => {
                self.skip(&rel, SkipReason::UnsupportedType(other.as_byte()));
                Ok(())
            }
        }
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
        let h = entry.header();
        let mode = h.mode().map_err(LayerError::Archive)? & 0o7777;
        // The tar crate has already applied PAX uid/gid to the header.
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| archive_err(format!("{what} {v} is not a valid id")))
        };
        let uid = id(h.uid().map_err(LayerError::Archive)?, "uid")?;
        let gid = id(h.gid().map_err(LayerError::Archive)?, "gid")?;
        let mut mtime = h.mtime().map_err(LayerError::Archive)?;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(LayerError::Archive)? {
            for ext in pax {
                let ext = ext.map_err(LayerError::Archive)?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    // "<seconds>[.<fraction>]"; a negative time counts as 0.
                    let v = ext.value_bytes();
                    let secs = v.split(|&b| b == b'.').next().unwrap_or(b"");
                    mtime = std::str::from_utf8(secs)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .map_or(mtime, |s| u64::try_from(s).unwrap_or(0));
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn skip(&mut self, rel: &[u8], reason: SkipReason) {
        self.report.skipped.push(Skipped {
            path: bytes_path(rel),
            reason,
        });
    }

    /// The parent directory of a new entry, created (0700 now, 0755 at the end) if missing.
    fn parent(&mut self, parent: &[&[u8]]) -> Result<OwnedFd> {
        let (fd, created) = self
            .root
            .dir_create(parent, 0o700)
            .map_err(self.io(&parent.join(&b'/')))?;
        for n in parent.len() - created..parent.len() {
            let rel = parent[..=n].join(&b'/');
            self.dirs.insert(rel.clone(), (0o755, 0));
            self.written.insert(rel);
        }
        Ok(fd)
    }

    /// Makes room for a new entry at `name` in `dir`: returns true when an existing directory
    /// stays (the new entry is a directory too); otherwise removes whatever is there.
    fn make_room(&self, dir: &OwnedFd, name: &[u8], rel: &[u8], new_is_dir: bool) -> Result<bool> {
        let Some(st) = lstat_at(dir, name).map_err(self.io(rel))? else {
            return Ok(false);
        };
        if new_is_dir && FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Ok(true);
        }
        remove_all_at(dir, name).map_err(self.io(rel))?;
        Ok(false)
    }

    fn owner(&mut self, meta: &Meta) -> Option<(Uid, Gid)> {
        match self.opts.ownership {
            Ownership::Ignore => None,
            Ownership::Force { uid, gid } => Some((Uid::from_raw(uid), Gid::from_raw(gid))),
            Ownership::FromArchive if self.privileged => {
                Some((Uid::from_raw(meta.uid), Gid::from_raw(meta.gid)))
            }
            Ownership::FromArchive => {
                self.report.ownership_skipped = true;
                None
            }
        }
    }

    fn file<R: Read>(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
        data: &mut R,
    ) -> Result<()> {
        let dir = self.parent(parent)?;
        self.make_room(&dir, name, rel, false)?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(self.errno(rel))?;
        let mut file = File::from(fd);
        let on_write = self.io(rel);
        let n = copy_sparse(data, &mut file, &mut self.buf).map_err(|e| match e {
            CopyError::Read(e) => LayerError::Archive(e),
            CopyError::Write(e) => on_write(e),
        })?;
        self.report.file_bytes += n;
        if let Some((uid, gid)) = self.owner(meta) {
            fchown_or_record(file.as_fd(), uid.as_raw(), gid.as_raw()).map_err(self.io(rel))?;
        }
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(self.errno(rel))?;
        self.xattrs(XattrTarget::Fd(file.as_fd()), rel, &meta.xattrs);
        rustix::fs::futimens(&file, &timestamps(meta.mtime)).map_err(self.errno(rel))?;
        self.written.insert(rel.to_vec());
        Ok(())
    }

    fn dir(&mut self, parent: &[&[u8]], name: &[u8], rel: &[u8], meta: &Meta) -> Result<()> {
        let dir = self.parent(parent)?;
        if !self.make_room(&dir, name, rel, true)? {
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(self.errno(rel)(e)),
            }
        }
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.errno(rel))?;
        if let Some((uid, gid)) = self.owner(meta) {
            fchown_or_record(fd.as_fd(), uid.as_raw(), gid.as_raw()).map_err(self.io(rel))?;
        }
        self.xattrs(XattrTarget::Fd(fd.as_fd()), rel, &meta.xattrs);
        self.dirs.insert(rel.to_vec(), (meta.mode, meta.mtime));
        self.written.insert(rel.to_vec());
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
        target: &[u8],
    ) -> Result<()> {
        let dir = self.parent(parent)?;
        self.make_room(&dir, name, rel, false)?;
        rustix::fs::symlinkat(target, &dir, name).map_err(self.errno(rel))?;
        self.finish_node(&dir, name, rel, meta, false)
    }

    /// Ownership, mode (unless a symlink), xattrs and times of a node without an open fd.
    fn finish_node(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        if let Some((uid, gid)) = self.owner(meta) {
            chownat_or_skip(
                dir.as_fd(),
                OsStr::from_bytes(name),
                uid.as_raw(),
                gid.as_raw(),
            )
            .map_err(self.io(rel))?;
        }
        if chmod {
            // Not a symlink (we just made it), so fchmodat's following is moot.
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(self.errno(rel))?;
        }
        self.xattrs(XattrTarget::At(dir, name), rel, &meta.xattrs);
        rustix::fs::utimensat(
            dir,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(self.errno(rel))?;
        self.written.insert(rel.to_vec());
        Ok(())
    }

    fn hardlink(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        rel: &[u8],
        target_raw: &[u8],
    ) -> Result<()> {
        let (tcomps, suspicious) = clean(target_raw);
        if suspicious {
            self.report.sanitized_paths.push(bytes_path(target_raw));
        }
        let fail = |reason| LayerError::Hardlink {
            path: bytes_path(rel),
            target: bytes_path(target_raw),
            reason,
        };
        let Some((&tname, tparent)) = tcomps.split_last() else {
            return Err(fail("the target is the destination root"));
        };
        if tcomps.join(&b'/') == rel {
            return Ok(()); // a link to itself: nothing to do
        }
        let tdir = self
            .root
            .dir(tparent)
            .map_err(|_| fail("the target does not exist in the destination"))?;
        match lstat_at(&tdir, tname).map_err(self.io(rel))? {
            None => return Err(fail("the target does not exist in the destination")),
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(fail("the target is a directory"));
            }
            Some(_) => {}
        }
        let dir = self.parent(parent)?;
        self.make_room(&dir, name, rel, false)?;
        rustix::fs::linkat(&tdir, tname, &dir, name, AtFlags::empty()).map_err(self.errno(rel))?;
        self.written.insert(rel.to_vec());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn device(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
        ft: FileType,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        if !(self.opts.allow_devices && self.privileged) {
            return self.skip_device(rel);
        }
        match self.node(
            parent,
            name,
            rel,
            meta,
            ft,
            rustix::fs::makedev(major, minor),
        ) {
            // Privileged but not allowed to (a user namespace, a device cgroup).
            Err(LayerError::Io { source, .. }) if is_errno(&source, Errno::PERM) => {
                self.skip_device(rel)
            }
            other => other,
        }
    }

    fn skip_device(&mut self, rel: &[u8]) -> Result<()> {
        if self.opts.fail_on_skipped_device {
            return Err(LayerError::DeviceSkipped {
                path: bytes_path(rel),
            });
        }
        self.skip(rel, SkipReason::Device);
        Ok(())
    }

    fn node(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
        ft: FileType,
        dev: rustix::fs::Dev,
    ) -> Result<()> {
        let dir = self.parent(parent)?;
        self.make_room(&dir, name, rel, false)?;
        rustix::fs::mknodat(&dir, name, ft, Mode::from_raw_mode(0o600), dev)
            .map_err(self.errno(rel))?;
        self.finish_node(&dir, name, rel, meta, true)
    }

    fn whiteout(&mut self, parent: &[&[u8]], name: &[u8], meta: &Meta) -> Result<()> {
        let parent_rel = parent.join(&b'/');
        if name == OPAQUE_MARKER.as_bytes() {
            return self.opaque(parent, &parent_rel);
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        let target_rel = [parent, &[target]].concat().join(&b'/');
        if target.is_empty()
            || target == b"."
            || target == b".."
            || target.starts_with(WHITEOUT_PREFIX.as_bytes())
        {
            self.skip(
                &[&parent_rel[..], b"/", name].concat(),
                SkipReason::BadWhiteout,
            );
            return Ok(());
        }
        match self.opts.mode {
            ExtractMode::Apply => {
                if self.written.contains(&target_rel) {
                    self.skip(&target_rel, SkipReason::SameLayerWhiteout);
                    return Ok(());
                }
                let dir = match self.root.dir(parent) {
                    Ok(dir) => dir,
                    // No parent, nothing to delete.
                    Err(e) if is_errno(&e, Errno::NOENT) || is_errno(&e, Errno::NOTDIR) => {
                        return Ok(());
                    }
                    Err(e) => return Err(self.io(&parent_rel)(e)),
                };
                remove_all_at(&dir, target).map_err(self.io(&target_rel))
            }
            ExtractMode::Overlay => {
                if self.privileged {
                    let dir = self.parent(parent)?;
                    self.make_room(&dir, target, &target_rel, false)?;
                    let made = rustix::fs::mknodat(
                        &dir,
                        target,
                        FileType::CharacterDevice,
                        Mode::empty(),
                        rustix::fs::makedev(0, 0),
                    );
                    match made {
                        Ok(()) => {
                            let _ = rustix::fs::utimensat(
                                &dir,
                                target,
                                &timestamps(meta.mtime),
                                AtFlags::SYMLINK_NOFOLLOW,
                            );
                            self.written.insert(target_rel);
                            return Ok(());
                        }
                        Err(Errno::PERM) => {}
                        Err(e) => return Err(self.errno(&target_rel)(e)),
                    }
                }
                self.report.whiteouts.push(bytes_path(&target_rel));
                Ok(())
            }
            ExtractMode::Plain => unreachable!("plain mode has no whiteouts"),
        }
    }

    fn opaque(&mut self, parent: &[&[u8]], parent_rel: &[u8]) -> Result<()> {
        let dir = self.parent(parent)?;
        let dir = reopen_dir(&dir).map_err(self.io(parent_rel))?;
        match self.opts.mode {
            ExtractMode::Apply => self
                .clear_opaque(&dir, parent_rel)
                .map_err(self.io(parent_rel)),
            ExtractMode::Overlay => {
                let name = if self.opts.overlay_user_xattrs {
                    "user.overlay.opaque"
                } else {
                    "trusted.overlay.opaque"
                };
                let may = self.privileged || self.opts.overlay_user_xattrs;
                if !may || rustix::fs::fsetxattr(&dir, name, b"y", XattrFlags::empty()).is_err() {
                    self.report.opaque_dirs.push(bytes_path(parent_rel));
                }
                Ok(())
            }
            ExtractMode::Plain => unreachable!("plain mode has no opaque markers"),
        }
    }

    /// Removes from `dir` everything this layer did not create, recursing into the directories
    /// it did (an opaque directory hides the whole lower subtree).
    fn clear_opaque(&self, dir: &OwnedFd, rel: &[u8]) -> io::Result<()> {
        for name in read_names(dir)? {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                [rel, b"/", &name].concat()
            };
            if !self.written.contains(&child) {
                remove_all_at(dir, &name)?;
            } else if lstat_at(dir, &name)?
                .is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            {
                let sub = rustix::fs::openat(
                    dir,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                self.clear_opaque(&sub, &child)?;
            }
        }
        Ok(())
    }

    fn xattrs(&mut self, target: XattrTarget<'_>, rel: &[u8], xattrs: &[(Vec<u8>, Vec<u8>)]) {
        for (name, value) in xattrs {
            if name.starts_with(b"trusted.overlay.")
                || name.starts_with(b"user.overlay.")
                || name == OWNER_XATTR.as_bytes()
            {
                continue;
            }
            let result = match target {
                XattrTarget::Fd(fd) => {
                    rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
                }
                XattrTarget::At(dir, file) => {
                    // The directory is already resolved; the name is not followed (lsetxattr).
                    let path = [
                        format!("/proc/self/fd/{}/", dir.as_raw_fd()).as_bytes(),
                        file,
                    ]
                    .concat();
                    rustix::fs::lsetxattr(path, name.as_slice(), value, XattrFlags::empty())
                }
            };
            if let Err(e) = result {
                self.report.xattr_failures.push(XattrFailure {
                    path: bytes_path(rel),
                    name: String::from_utf8_lossy(name).into_owned(),
                    error: io::Error::from(e).to_string(),
                });
            }
        }
    }

    /// Gives directories their final mode and mtime, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.iter().filter(|&&b| b == b'/').count()));
        for (rel, (mode, mtime)) in dirs {
            let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
            let (name, parent) = comps.split_last().expect("never the root");
            let gone = |e: &io::Error| {
                is_errno(e, Errno::NOENT) || is_errno(e, Errno::NOTDIR) || is_errno(e, Errno::LOOP)
            };
            let dir = match self.root.dir(parent) {
                Ok(dir) => dir,
                Err(e) if gone(&e) => continue, // removed or replaced later in the layer
                Err(e) => return Err(self.io(&rel)(e)),
            };
            let fd = match rustix::fs::openat(
                &dir,
                *name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(e) if gone(&e.into()) => continue,
                Err(e) => return Err(self.errno(&rel)(e)),
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(self.errno(&rel))?;
            rustix::fs::futimens(&fd, &timestamps(mtime)).map_err(self.errno(&rel))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    Fd(std::os::fd::BorrowedFd<'a>),
    At(&'a OwnedFd, &'a [u8]),
}

/// A readable descriptor of the directory an `O_PATH` descriptor names.
fn reopen_dir(fd: &OwnedFd) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in a directory, without `.` and `..`, sorted.
fn read_names(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `name` from `dir` (recursively for a directory), never following a symlink. Missing
/// is fine.
fn remove_all_at(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let open = || {
            rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let sub = match open() {
            Err(Errno::ACCESS) => {
                // Unprivileged, a directory without read permission: it is going anyway.
                rustix::fs::chmodat(dir, name, Mode::from_raw_mode(0o700), AtFlags::empty())?;
                open()?
            }
            other => other?,
        };
        // Without write permission its entries cannot be removed (unprivileged).
        let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
        for child in read_names(&sub)? {
            remove_all_at(&sub, &child)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

enum CopyError {
    /// Reading the archive failed: it is truncated or corrupt.
    Read(io::Error),
    /// Writing the file failed.
    Write(io::Error),
}

/// Copies `src` into `file` in chunks; chunks of zeros become holes. Returns the bytes copied.
fn copy_sparse(src: &mut impl Read, file: &mut File, buf: &mut [u8]) -> Result<u64, CopyError> {
    let mut total: u64 = 0;
    let mut hole_at_end = false;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let chunk = &buf[..n];
        if chunk.iter().all(|&b| b == 0) {
            file.seek(SeekFrom::Current(n as i64))
                .map_err(CopyError::Write)?;
            hole_at_end = true;
        } else {
            file.write_all(chunk).map_err(CopyError::Write)?;
            hole_at_end = false;
        }
        total += n as u64;
    }
    if hole_at_end {
        file.set_len(total).map_err(CopyError::Write)?;
    }
    Ok(total)
}
