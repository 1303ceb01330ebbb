//! RUN without overlayfs: the image's layers are copied into one directory, the command runs
//! there, and the step's changes are found by comparing the tree with a snapshot taken before.
//!
//! The diff yields what an overlay upper dir would have held: an entry for each added or
//! changed path (a changed directory is its own entry; its unchanged children are not), a
//! whiteout for each deleted path (one for a deleted directory, none for what it held), and a
//! directory that is not the one it was before (removed and made again, or a non-directory
//! turned into one) becomes an opaque directory with all of its content. "Changed" compares
//! the inode and its ctime, which every write, chmod, chown, link or rename updates and which
//! no command can set back.

use crate::rootfs::has_opaque_xattr;
use imgbuild_cache::layer::owner::lchown_or_record;
use imgbuild_cache::layer::{
    DirOptions, Entry, HardlinkTracker, OPAQUE_MARKER, WHITEOUT_PREFIX, entries_from_path,
    owner_of, sort_entries,
};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What identifies one state of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    /// Type and permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    /// Birth time: tells a new file from an old one that had the same inode number.
    born: Option<std::time::SystemTime>,
}

impl Stamp {
    /// Still the same file (not one made anew at the same path, or of another type).
    fn same_file(&self, other: &Stamp) -> bool {
        (self.dev, self.ino, self.born, self.mode & 0o170000)
            == (other.dev, other.ino, other.born, other.mode & 0o170000)
    }

    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            born: m.created().ok(),
        }
    }
}

/// The tree as it was before the command ran.
pub struct Snapshot {
    /// By path relative to the root ("" is the root).
    stamps: HashMap<PathBuf, Stamp>,
    /// The names in each directory.
    children: HashMap<PathBuf, Vec<OsString>>,
}

impl Snapshot {
    pub fn take(root: &Path) -> io::Result<Snapshot> {
        let mut snap = Snapshot {
            stamps: HashMap::new(),
            children: HashMap::new(),
        };
        snap.stamps
            .insert(PathBuf::new(), Stamp::of(&fs::symlink_metadata(root)?));
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let mut names = Vec::new();
            for child in fs::read_dir(root.join(&rel))? {
                let child = child?;
                let path = rel.join(child.file_name());
                let m = fs::symlink_metadata(root.join(&path))?;
                if m.is_dir() {
                    pending.push(path.clone());
                }
                snap.stamps.insert(path, Stamp::of(&m));
                names.push(child.file_name());
            }
            snap.children.insert(rel, names);
        }
        Ok(snap)
    }

    /// Whether `rel` was there before.
    pub fn had(&self, rel: &Path) -> bool {
        self.stamps.contains_key(rel)
    }

    /// The entries that turn the snapshot's tree into the one now at `root`. `stubs` are the
    /// sandbox's mount points (relative): a directory among them that only changed its times
    /// (a mount point made and removed in it) is not a change, as with overlay's upper dir.
    pub fn diff(&self, root: &Path, stubs: &[String]) -> Result<Vec<Entry>, String> {
        let mut out = Vec::new();
        let mut links = HardlinkTracker::new();
        let stubs = crate::mounts::stub_paths(stubs);
        let stubs: HashSet<&Path> = stubs.iter().map(|(s, _)| Path::new(s.as_str())).collect();
        self.diff_dir(root, Path::new(""), &stubs, &mut out, &mut links)
            .map_err(|e| format!("reading the step's changes: {e}"))?;
        sort_entries(&mut out);
        Ok(out)
    }

    fn diff_dir(
        &self,
        root: &Path,
        rel: &Path,
        stubs: &HashSet<&Path>,
        out: &mut Vec<Entry>,
        links: &mut HardlinkTracker,
    ) -> io::Result<()> {
        let mut now: HashSet<OsString> = HashSet::new();
        let mut names: Vec<OsString> = fs::read_dir(root.join(rel))?
            .map(|c| c.map(|c| c.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = rel.join(&name);
            now.insert(name);
            let abs = root.join(&path);
            let m = fs::symlink_metadata(&abs)?;
            let stamp = Stamp::of(&m);
            match self.stamps.get(&path) {
                Some(old) if old.same_file(&stamp) && m.is_dir() => {
                    // Like overlayfs's copy-up: a directory is in the layer when anything under
                    // it is, or it was touched at all (ctime: also a no-op chown, or a file made
                    // and removed in it) — unless it only held a mount point of the sandbox and
                    // kept its mode and owner (what `mounts::remove_stubs` drops).
                    let before = out.len();
                    self.diff_dir(root, &path, stubs, out, links)?;
                    let same_meta =
                        (old.mode, old.uid, old.gid) == (stamp.mode, stamp.uid, stamp.gid);
                    let own = if stubs.contains(path.as_path()) {
                        !same_meta
                    } else {
                        old.ctime != stamp.ctime
                    };
                    if own || out.len() > before {
                        out.extend(entries(&abs, &path, links)?);
                    }
                }
                Some(old) if old.same_file(&stamp) => {
                    if old.ctime != stamp.ctime {
                        out.extend(entries(&abs, &path, links)?);
                    }
                }
                Some(_) if m.is_dir() => {
                    // A different directory where one was: it hides what the old one held.
                    out.push(Entry::opaque_dir(&path).with_mtime(m.mtime().max(0) as u64));
                    out.extend(entries(&abs, &path, links)?);
                    added_tree(root, &path, out, links)?;
                }
                _ => {
                    out.extend(entries(&abs, &path, links)?);
                    if m.is_dir() {
                        added_tree(root, &path, out, links)?;
                    }
                }
            }
        }
        for old in self.children.get(rel).into_iter().flatten() {
            if !now.contains(old) {
                out.push(Entry::whiteout(rel.join(old)));
            }
        }
        Ok(())
    }
}

/// Every path under the new directory `rel`, as added.
fn added_tree(
    root: &Path,
    rel: &Path,
    out: &mut Vec<Entry>,
    links: &mut HardlinkTracker,
) -> io::Result<()> {
    for child in fs::read_dir(root.join(rel))? {
        let child = child?;
        let path = rel.join(child.file_name());
        out.extend(entries(&child.path(), &path, links)?);
        if child.file_type()?.is_dir() {
            added_tree(root, &path, out, links)?;
        }
    }
    Ok(())
}

fn entries(abs: &Path, path: &Path, links: &mut HardlinkTracker) -> io::Result<Vec<Entry>> {
    entries_from_path(abs, path, &DirOptions::default(), links).map_err(io::Error::other)
}

/// Removes the mount points the sandbox made that the image did not have (`targets`,
/// relative, and the directories made on the way to them): an empty directory, or an empty
/// file as a target, not in the snapshot. Deepest first, so a made parent whose only content
/// was a stub goes too.
pub fn remove_new_stubs(root: &Path, snap: &Snapshot, targets: &[String]) {
    for (rel, is_target) in crate::mounts::stub_paths(targets) {
        if snap.had(Path::new(&rel)) {
            continue;
        }
        let p = root.join(&rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir(&p); // fails when not empty: then it is content
            }
            Ok(m) if is_target && m.is_file() && m.len() == 0 => {
                let _ = fs::remove_file(&p);
            }
            _ => {}
        }
    }
}

/// Copies the image whose extracted layer dirs are `layers` (bottom first) into `dest` (an
/// empty directory), applying each layer's whiteouts (overlayfs's or marker files) the way an
/// overlay mount would show them.
pub fn materialize(layers: &[PathBuf], dest: &Path) -> io::Result<()> {
    for layer in layers {
        let mut inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
        apply_dir(layer, dest, &mut inodes)?;
        // Directory modes and times last: the copying changed the times.
        finish_dir(layer, dest)?;
    }
    Ok(())
}

fn apply_dir(src: &Path, dest: &Path, inodes: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    if has_opaque_xattr(src) || src.join(OPAQUE_MARKER).exists() {
        clear_dir(dest)?;
    }
    let mut names: Vec<OsString> = fs::read_dir(src)?
        .map(|c| c.map(|c| c.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let from = src.join(&name);
        let bytes = name.as_encoded_bytes();
        if bytes == OPAQUE_MARKER.as_bytes() {
            continue;
        }
        if let Some(hidden) = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            // SAFETY: a suffix of an OsStr's bytes after an ASCII prefix is still valid.
            let hidden = unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(hidden) };
            remove_any(&dest.join(hidden))?;
            continue;
        }
        let to = dest.join(&name);
        let m = fs::symlink_metadata(&from)?;
        let ft = m.file_type();
        if ft.is_char_device() && m.rdev() == 0 {
            remove_any(&to)?;
            continue;
        }
        if ft.is_dir() {
            match fs::symlink_metadata(&to) {
                Ok(t) if t.is_dir() => {}
                Ok(_) => {
                    remove_any(&to)?;
                    fs::create_dir(&to)?;
                }
                Err(_) => fs::create_dir(&to)?,
            }
            apply_dir(&from, &to, inodes)?;
            continue;
        }
        remove_any(&to)?;
        if m.nlink() > 1
            && let Some(first) = inodes.get(&(m.dev(), m.ino()))
        {
            fs::hard_link(first, &to)?;
            continue;
        }
        if ft.is_file() {
            fs::copy(&from, &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_fifo() {
                rustix::fs::FileType::Fifo
            } else if ft.is_char_device() {
                rustix::fs::FileType::CharacterDevice
            } else {
                rustix::fs::FileType::BlockDevice
            };
            // Devices cannot be made in a rootless build: the image simply lacks them there.
            if rustix::fs::mknodat(
                rustix::fs::CWD,
                &to,
                kind,
                rustix::fs::Mode::from_raw_mode(0o600),
                m.rdev(),
            )
            .is_err()
            {
                continue;
            }
        } else {
            continue; // a socket
        }
        copy_meta(&from, &m, &to)?;
        if m.nlink() > 1 {
            inodes.insert((m.dev(), m.ino()), to);
        }
    }
    Ok(())
}

/// Owner, mode, xattrs and mtime of `from` onto `to` (the owner first, so setuid bits stay).
fn copy_meta(from: &Path, m: &fs::Metadata, to: &Path) -> io::Result<()> {
    let (uid, gid) = owner_of(from, m);
    lchown_or_record(to, uid, gid)?;
    let is_link = m.file_type().is_symlink();
    if !is_link {
        fs::set_permissions(to, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        copy_xattrs(from, to);
    }
    let t = rustix::fs::Timespec {
        tv_sec: m.mtime(),
        tv_nsec: m.mtime_nsec() as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        to,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// The xattrs that are content (not overlayfs's bookkeeping, not an owner record, which
/// [`copy_meta`] remakes for the copy).
fn copy_xattrs(from: &Path, to: &Path) {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(from, &mut names[..]) else {
        return;
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.")
            || name.starts_with(b"user.overlay.")
            || name == imgbuild_cache::layer::OWNER_XATTR.as_bytes()
        {
            continue;
        }
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(from, name, &mut value[..]) {
            let _ = rustix::fs::lsetxattr(to, name, &value[..len], rustix::fs::XattrFlags::empty());
        }
    }
}

/// Gives the directories of `dest` that `src` holds their mode, owner, xattrs and mtime,
/// deepest first.
fn finish_dir(src: &Path, dest: &Path) -> io::Result<()> {
    for child in fs::read_dir(src)? {
        let child = child?;
        if child.file_type()?.is_dir() {
            finish_dir(&child.path(), &dest.join(child.file_name()))?;
        }
    }
    let m = fs::symlink_metadata(src)?;
    copy_meta(src, &m, dest)
}

fn clear_dir(dir: &Path) -> io::Result<()> {
    for child in fs::read_dir(dir)? {
        remove_any(&child?.path())?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgbuild_cache::layer::EntryKind;

    fn names(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                let kind = match &e.kind {
                    EntryKind::Whiteout => "wh",
                    EntryKind::OpaqueDir => "opq",
                    EntryKind::Dir => "dir",
                    EntryKind::File(_) => "file",
                    EntryKind::Symlink { .. } => "link",
                    EntryKind::Hardlink { .. } => "hard",
                    _ => "other",
                };
                format!("{kind} {}", e.path.display())
            })
            .collect()
    }

    #[test]
    fn diff_finds_what_changed_and_only_that() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("keep/sub")).unwrap();
        fs::write(r.join("keep/sub/same"), b"1").unwrap();
        fs::write(r.join("keep/edit"), b"1").unwrap();
        fs::write(r.join("keep/chmod"), b"1").unwrap();
        fs::write(r.join("gone"), b"1").unwrap();
        fs::create_dir_all(r.join("olddir/deep")).unwrap();
        fs::write(r.join("olddir/deep/f"), b"1").unwrap();
        fs::create_dir_all(r.join("remade/x")).unwrap();
        let snap = Snapshot::take(r).unwrap();

        fs::write(r.join("keep/edit"), b"2").unwrap();
        fs::set_permissions(r.join("keep/chmod"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(r.join("gone")).unwrap();
        fs::remove_dir_all(r.join("olddir")).unwrap();
        fs::remove_dir_all(r.join("remade")).unwrap();
        fs::create_dir_all(r.join("remade/y")).unwrap();
        fs::write(r.join("new"), b"n").unwrap();
        fs::hard_link(r.join("new"), r.join("new2")).unwrap();

        let got = names(&snap.diff(r, &[]).unwrap());
        // `keep` holds changes, so it is in the layer; keep/sub does not. Layer order: a
        // directory's whiteouts first, a directory before its opaque marker.
        assert_eq!(
            got,
            [
                "wh gone",
                "wh olddir",
                "dir keep",
                "file keep/chmod",
                "file keep/edit",
                "file new",
                "hard new2",
                "dir remade",
                "opq remade",
                "dir remade/y",
            ],
            "{got:#?}"
        );
    }

    #[test]
    fn materialize_applies_whiteouts_of_both_kinds() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, out) = (
            t.path().join("l1"),
            t.path().join("l2"),
            t.path().join("out"),
        );
        fs::create_dir_all(l1.join("d/inner")).unwrap();
        fs::write(l1.join("d/inner/f"), b"1").unwrap();
        fs::write(l1.join("a"), b"a").unwrap();
        fs::write(l1.join("b"), b"b").unwrap();
        fs::create_dir_all(l2.join("d")).unwrap();
        fs::write(l2.join("d").join(OPAQUE_MARKER), b"").unwrap();
        fs::write(l2.join("d/new"), b"2").unwrap();
        fs::write(l2.join(format!("{WHITEOUT_PREFIX}a")), b"").unwrap();
        fs::write(l2.join("b"), b"B").unwrap();
        fs::create_dir(&out).unwrap();
        materialize(&[l1, l2], &out).unwrap();
        assert!(!out.join("a").exists());
        assert_eq!(fs::read(out.join("b")).unwrap(), b"B");
        assert!(!out.join("d/inner").exists());
        assert_eq!(fs::read(out.join("d/new")).unwrap(), b"2");
        assert!(!out.join("d").join(OPAQUE_MARKER).exists());
    }
}
