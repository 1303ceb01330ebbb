//! Temporary files and directories under `<root>/tmp/`, and the file-system helpers behind every
//! atomic write.
//!
//! A temp entry is named `<pid>-<16 hex>`: the pid says which process may still be writing it, so
//! `Store::open` can remove the leftovers of processes that died. Each temp entry holds a clone
//! of its `Store`, so the store lock is held for as long as any temp entry is alive.

use super::{Store, StoreError};
use rustix::io::Errno;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Count;

/// What `persist` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persisted {
    /// Our content is now under the destination name.
    Stored,
    /// The destination already existed (another build won the race); ours was discarded.
    AlreadyPresent,
}

/// A file in `<root>/tmp/`. Write it, then [`persist`](TempFile::persist) it under its real
/// name; dropped without that, it is removed.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    path: PathBuf,
    store: Store,
    done: bool,
}

/// A directory in `<root>/tmp/` (for extracted layer trees). Fill it, then
/// [`persist`](TempDir::persist) it; dropped without that, it is removed with its content.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    store: Store,
    done: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);
static RANDOM: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// `<pid>-<16 hex>`: the counter makes names unique within the process, the keyed hash makes
/// them unpredictable, and `create_new` settles any remaining collision (a stale entry of an
/// earlier process that had our pid).
fn temp_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{:016x}", std::process::id(), RANDOM.hash_one(n))
}

const ATTEMPTS: usize = 64;

/// Creates a new file in `tmp` (used before a `Store` exists, for VERSION).
pub(super) fn create_temp_file(tmp: &Path) -> Result<(File, PathBuf), StoreError> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let path = tmp.join(temp_name());
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(StoreError::io("create a temporary file in", tmp)(e)),
        }
    }
    Err(StoreError::io("create a temporary file in", tmp)(
        last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)),
    ))
}

fn create_temp_dir(tmp: &Path) -> Result<PathBuf, StoreError> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let path = tmp.join(temp_name());
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(StoreError::io("create a temporary directory in", tmp)(e)),
        }
    }
    Err(StoreError::io("create a temporary directory in", tmp)(
        last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)),
    ))
}

/// fsync the file, rename it to `dest` (replacing what is there), fsync `dest`'s directory.
pub(super) fn commit_file(file: &File, from: &Path, dest: &Path) -> Result<(), StoreError> {
    file.sync_all()
        .map_err(StoreError::io("write (fsync)", from))?;
    fs::rename(from, dest).map_err(StoreError::io("rename a temporary file to", dest))?;
    sync_parent(dest)
}

/// Makes a rename into `path`'s directory durable.
pub(super) fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

impl Store {
    /// A new temporary file in `<root>/tmp/`.
    pub fn temp_file(&self) -> Result<TempFile, StoreError> {
        let (file, path) = create_temp_file(&self.tmp_dir())?;
        Ok(TempFile {
            file,
            path,
            store: self.clone(),
            done: false,
        })
    }

    /// A new, empty temporary directory in `<root>/tmp/`.
    pub fn temp_dir(&self) -> Result<TempDir, StoreError> {
        let path = create_temp_dir(&self.tmp_dir())?;
        Ok(TempDir {
            path,
            store: self.clone(),
            done: false,
        })
    }

    /// Writes `bytes` to `path` (absolute under the root, or relative to it) atomically: a
    /// reader sees the old content or the new, never a part. Missing parent directories under
    /// the root are created.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let mut temp = self.temp_file()?;
        temp.write_all(bytes)
            .map_err(StoreError::io("write", temp.path().to_owned()))?;
        temp.persist(path)
    }
}

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_file(&self) -> &File {
        &self.file
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub fn as_file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Makes the content durable (fsync) and renames the file to `dest` (absolute under the
    /// store root, or relative to it), replacing what is there. Missing parent directories
    /// under the root are created.
    pub fn persist(mut self, dest: &Path) -> Result<(), StoreError> {
        let dest = self.store.inside(dest)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(StoreError::io("create directory", parent))?;
        }
        commit_file(&self.file, &self.path, &dest)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.file.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Read for TempFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for TempFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the tree durable (one `syncfs` of the store's file system rather than an fsync
    /// per file) and renames it to `dest` (absolute under the root, or relative to it) unless
    /// `dest` exists. When it exists, another build stored the same tree first: ours is removed
    /// and the result is [`Persisted::AlreadyPresent`].
    pub fn persist(mut self, dest: &Path) -> Result<Persisted, StoreError> {
        let dest = self.store.inside(dest)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(StoreError::io("create directory", parent))?;
        }
        File::open(&self.path)
            .and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))
            .map_err(StoreError::io("sync the file system of", self.path.clone()))?;
        let renamed = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &self.path,
            rustix::fs::CWD,
            &dest,
            rustix::fs::RenameFlags::NOREPLACE,
        );
        let outcome = match renamed {
            Ok(()) => Persisted::Stored,
            Err(Errno::EXIST | Errno::NOTEMPTY) => Persisted::AlreadyPresent,
            // A file system without RENAME_NOREPLACE: check, then rename. rename(2) only
            // replaces an empty directory, so losing the race to a complete tree still fails
            // with ENOTEMPTY, and replacing an empty tree by an equal one is harmless.
            Err(Errno::INVAL | Errno::NOSYS) => {
                if fs::symlink_metadata(&dest).is_ok() {
                    Persisted::AlreadyPresent
                } else {
                    match fs::rename(&self.path, &dest) {
                        Ok(()) => Persisted::Stored,
                        Err(_) if fs::symlink_metadata(&dest).is_ok() => Persisted::AlreadyPresent,
                        Err(e) => {
                            return Err(StoreError::io("rename a temporary directory to", dest)(e));
                        }
                    }
                }
            }
            Err(e) => {
                return Err(StoreError::io("rename a temporary directory to", dest)(
                    e.into(),
                ));
            }
        };
        match outcome {
            Persisted::Stored => {
                self.done = true;
                sync_parent(&dest)?;
            }
            Persisted::AlreadyPresent => {
                remove_tree(&self.path).map_err(StoreError::io("remove", self.path.clone()))?;
                self.done = true;
            }
        }
        Ok(outcome)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Removes a file, symlink or directory tree; a missing path is not an error. Directories
/// without write or search permission (extracted layers can have them) are opened up first.
pub(super) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return ignore_not_found(fs::remove_file(path));
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_up(path);
            ignore_not_found(fs::remove_dir_all(path))
        }
        other => ignore_not_found(other),
    }
}

fn ignore_not_found(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Gives the owner rwx on every directory of a tree (best effort), so it can be removed.
fn open_up(root: &Path) {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

/// Apparent size of a file or tree: file and symlink lengths, hard links counted once.
/// Entries that vanish during the walk (concurrent removal) are skipped.
pub(super) fn tree_bytes(path: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())) {
            bytes += meta.len();
        }
    }
    bytes
}

/// Removes what killed processes left beside an output outside the store (a staged tree, a
/// half-written archive): the entries of `dest`'s directory for which `owner` gives the pid of
/// a dead process. Best effort: what cannot be removed stays. As for the store's own temp
/// entries, writers sharing that directory must share our pid namespace.
pub fn remove_stale_beside(dest: &Path, owner: impl Fn(&str) -> Option<i32>) {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(pid) = name.to_str().and_then(&owner)
            && !pid_alive(pid)
        {
            let _ = remove_tree(&entry.path());
        }
    }
}

/// `rest` as a pid when it is all digits (`str::parse` alone would take `+12`).
pub fn parse_pid(rest: &str) -> Option<i32> {
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// Whether the process `pid` may still be alive (and so still writing its temp entries).
fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if pid as u32 == std::process::id() {
        return true;
    }
    match rustix::process::Pid::from_raw(pid) {
        None => false,
        // EPERM means it exists but belongs to someone else: alive.
        Some(pid) => !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH)),
    }
}

/// The pid a temp entry name starts with, if it has our form.
fn owner_pid(name: &str) -> Option<i32> {
    let (pid, rest) = name.split_once('-')?;
    if rest.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes temp entries: with `everything` all of them (only safe under the exclusive lock),
/// otherwise those whose process is dead or whose name is not ours. An entry that cannot be
/// removed is skipped with a warning; only an unreadable `tmp/` is an error.
pub(super) fn clean_tmp(
    tmp: &Path,
    everything: bool,
    warnings: &mut Vec<String>,
) -> Result<Count, StoreError> {
    let mut removed = Count::default();
    let entries = fs::read_dir(tmp).map_err(StoreError::io("read directory", tmp))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("read directory", tmp))?;
        let name = entry.file_name();
        let stale = everything
            || match name.to_str().and_then(owner_pid) {
                Some(pid) => !pid_alive(pid),
                None => true,
            };
        if stale {
            remove_counted(&entry.path(), &mut removed, warnings);
        }
    }
    Ok(removed)
}

/// Removes a file or tree, adding it to `count`, or adds a warning when it cannot.
pub(super) fn remove_counted(path: &Path, count: &mut Count, warnings: &mut Vec<String>) {
    let bytes = tree_bytes(path);
    match remove_tree(path) {
        Ok(()) => count.add(bytes),
        Err(e) => warnings.push(StoreError::io("remove", path)(e).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_beside_an_output_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ours = std::process::id();
        // pid_max is at most 2^22, so 999999999 cannot be alive.
        for name in [
            "out.tmp-999999999",
            "out.tmp-+9",
            "out",
            "other.tmp-999999999",
        ] {
            fs::write(d.join(name), b"x").unwrap();
        }
        fs::create_dir_all(d.join("out.tmp-999999998/sub")).unwrap();
        fs::write(d.join(format!("out.tmp-{ours}")), b"live").unwrap();
        remove_stale_beside(&d.join("out"), |n| parse_pid(n.strip_prefix("out.tmp-")?));
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let live = format!("out.tmp-{ours}");
        assert_eq!(
            left,
            ["other.tmp-999999999", "out", "out.tmp-+9", live.as_str()]
        );
    }

    #[test]
    fn temp_names_carry_our_pid() {
        let name = temp_name();
        assert_eq!(owner_pid(&name), Some(std::process::id() as i32));
        assert_ne!(temp_name(), name);
        assert_eq!(owner_pid("12-x"), Some(12));
        assert_eq!(owner_pid("12"), None);
        assert_eq!(owner_pid("x-12"), None);
        assert_eq!(owner_pid("-12-x"), None);
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(pid_alive(1)); // init: alive, maybe not ours to signal (EPERM)
        assert!(!pid_alive(0));
        assert!(!pid_alive(-5));
        // A child that has exited and been reaped is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn remove_tree_opens_up_read_only_directories() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", tree.join("a/link")).unwrap();
        fs::set_permissions(tree.join("a/b"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(tree.join("a"), fs::Permissions::from_mode(0o500)).unwrap();
        assert_eq!(tree_bytes(&tree), 1 + "/nonexistent".len() as u64);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        remove_tree(&tree).unwrap(); // missing: fine
    }
}
