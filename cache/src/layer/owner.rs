//! Owners that cannot be applied. In a rootless build's user namespace only some ids exist
//! (just 0 with a single-uid mapping); `chown` to any other fails with `EINVAL`. The file then
//! keeps the extracting user's ids and the owner it should have is recorded in the xattr
//! [`OWNER_XATTR`], which overlayfs copies up with the file and which every reader of trees
//! ([`super::entries_from_dir`], COPY's sources) honours, so layers made from the tree still
//! carry the real owner.
//!
//! The value is `UID:GID@DISKUID:DISKGID`: the owner, and the ids the file had on disk when
//! it was recorded. A record is honoured only while the file still has those disk ids, so a
//! later `chown` inside the sandbox (to an id that exists there) wins over it.
//!
//! `user.*` xattrs exist only on regular files and directories: a symlink or a special file
//! with an unmapped owner keeps the extracting user's.

use rustix::fs::{AtFlags, XattrFlags};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The xattr holding an owner that could not be applied.
pub const OWNER_XATTR: &str = "user.imgbuild.owner";

fn value(uid: u32, gid: u32, disk: (u32, u32)) -> String {
    format!("{uid}:{gid}@{}:{}", disk.0, disk.1)
}

/// Parses a record; `None` when malformed.
fn parse(v: &[u8]) -> Option<((u32, u32), (u32, u32))> {
    let s = std::str::from_utf8(v).ok()?;
    let (owner, disk) = s.split_once('@')?;
    let pair = |p: &str| -> Option<(u32, u32)> {
        let (u, g) = p.split_once(':')?;
        Some((u.parse().ok()?, g.parse().ok()?))
    };
    Some((pair(owner)?, pair(disk)?))
}

/// `fchown`s `fd` (a regular file or a directory) to `uid:gid`; when the ids do not exist in
/// this user namespace, records them instead (see the module doc).
pub fn fchown_or_record(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let ids = (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    );
    match rustix::fs::fchown(fd, ids.0, ids.1) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) => {
            let st = rustix::fs::fstat(fd)?;
            let v = value(uid, gid, (st.st_uid, st.st_gid));
            rustix::fs::fsetxattr(fd, OWNER_XATTR, v.as_bytes(), XattrFlags::empty())?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// [`fchown_or_record`] for a path, not following a final symlink (a symlink or special file
/// with unmapped ids keeps its owner: it cannot hold the record).
pub fn lchown_or_record(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let ids = (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    );
    match rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        ids.0,
        ids.1,
        AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) => {
            let meta = std::fs::symlink_metadata(path)?;
            if !(meta.is_file() || meta.is_dir()) {
                return Ok(());
            }
            let file = std::fs::File::open(path)?;
            fchown_or_record(file.as_fd(), uid, gid)
        }
        Err(e) => Err(e.into()),
    }
}

/// `chownat` relative to `dir`, not following `name`; unmapped ids on a node that cannot hold
/// a record (a symlink, a device, a FIFO) leave it as it is.
pub fn chownat_or_skip(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    match rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(()) | Err(rustix::io::Errno::INVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The owner of a file whose lstat is `meta` and whose xattrs were read into `xattrs`: the
/// recorded one if the record is current, else the disk's. The record is removed from
/// `xattrs` either way (it is bookkeeping, never layer content).
pub fn take_recorded(xattrs: &mut BTreeMap<String, Vec<u8>>, disk: (u32, u32)) -> (u32, u32) {
    match xattrs.remove(OWNER_XATTR).as_deref().and_then(parse) {
        Some((owner, at)) if at == disk => owner,
        _ => disk,
    }
}

/// The owner of the file at `path` (not following a final symlink), honouring a record.
pub fn owner_of(path: &Path, meta: &std::fs::Metadata) -> (u32, u32) {
    let disk = (meta.uid(), meta.gid());
    if !(meta.is_file() || meta.is_dir()) {
        return disk;
    }
    let mut buf = [0u8; 64];
    match rustix::fs::lgetxattr(path, OWNER_XATTR, &mut buf) {
        Ok(n) => match parse(&buf[..n]) {
            Some((owner, at)) if at == disk => owner,
            _ => disk,
        },
        Err(_) => disk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_go_stale() {
        assert_eq!(
            parse(value(100, 101, (0, 0)).as_bytes()),
            Some(((100, 101), (0, 0)))
        );
        assert_eq!(parse(b"100:101"), None);
        assert_eq!(parse(b"x:1@0:0"), None);
        let mut x = BTreeMap::new();
        x.insert(OWNER_XATTR.to_owned(), value(7, 8, (0, 0)).into_bytes());
        x.insert("user.other".to_owned(), b"v".to_vec());
        assert_eq!(take_recorded(&mut x.clone(), (0, 0)), (7, 8));
        // Chowned since: the disk wins.
        assert_eq!(take_recorded(&mut x, (5, 5)), (5, 5));
        assert!(!x.contains_key(OWNER_XATTR) && x.contains_key("user.other"));
    }

    #[test]
    fn a_record_for_other_disk_ids_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        // Rootless builds need user xattrs where the store is; the test's temp dir is assumed
        // to be on such a file system (ext4, xfs, btrfs, tmpfs since Linux 6.6).
        rustix::fs::fsetxattr(&f, OWNER_XATTR, b"9:9@1:1", XattrFlags::empty())
            .expect("user xattrs on the temp dir's file system");
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(owner_of(&p, &meta), (meta.uid(), meta.gid()));
        let current = value(9, 9, (meta.uid(), meta.gid()));
        rustix::fs::fsetxattr(&f, OWNER_XATTR, current.as_bytes(), XattrFlags::empty()).unwrap();
        assert_eq!(owner_of(&p, &meta), (9, 9));
    }
}
