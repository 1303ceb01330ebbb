//! The store on disk: one root directory that any number of builds share.
//!
//! ```text
//! <root>/VERSION             "1\n"; a root with another version is refused
//! <root>/lock                flock(2): builds hold it shared for their whole run, prune exclusive
//! <root>/tmp/                every write starts here as <pid>-<random>, then is renamed into place
//! <root>/blobs/sha256/<hex>  blobs: layers, configs, manifests
//! <root>/steps/<hex>.json    step records: build-step key (32 bytes) -> JSON record
//! <root>/layers/<hex>/       extracted layer trees named by diffID; a tree is complete when present
//! <root>/context/            context indexes (written by `crate::context` through `write_atomic`)
//! <root>/images.json         image store: name:tag -> manifest digest and metadata
//! <root>/images.lock         flock(2) serialising read-modify-writes of images.json
//! <root>/cache-mounts/<name>/ RUN --mount=type=cache directories (see `cache_mounts`)
//! ```
//!
//! Invariants:
//! - Nothing is ever written under its real name: a temp entry is filled, fsynced and renamed,
//!   so a process killed at any point leaves only `tmp/` garbage, which the next `open` removes
//!   (entries whose pid is dead) or `prune` removes (all of them, under the exclusive lock).
//! - Blob, step-record and layer-tree writes are idempotent renames, so concurrent builds need
//!   no lock beyond the shared one; only images.json is read-modify-written, under images.lock.
//! - Readers verify: a blob is read through [`VerifiedReader`], which fails at EOF when the
//!   content does not hash to the blob's name; an unreadable step record is a cache miss.
//! - A [`Store`] is a cheap handle (`Clone`, `Send`, `Sync`). The lock is held until the last
//!   clone, temp entry and blob writer of an `open` is dropped.
//!
//! Caveat: stale temp entries are recognised by pid, so processes sharing a root must share a
//! pid namespace (a process in another one could have its temp entries removed under it; its
//! write then fails cleanly at the rename, it never corrupts the store).

mod blobs;
mod cache_mounts;
mod error;
mod images;
mod prune;
mod steps;
mod temp;

pub use blobs::{BlobWriter, VerifiedReader};
pub use cache_mounts::{CacheMount, CacheSharing};
pub use error::StoreError;
pub use images::{ImageMeta, normalize_name, valid_component};
pub use prune::{Count, PruneMode, PruneReport, Usage};
pub use steps::Lookup;
pub use temp::{Persisted, TempDir, TempFile, parse_pid, remove_stale_beside};

use crate::Digest;
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The store layout version this code reads and writes.
pub const STORE_VERSION: u32 = 1;

/// Entries a store root may hold; a root without VERSION holding anything else is not a store.
const LAYOUT: &[&str] = &[
    "VERSION",
    "lock",
    "tmp",
    "blobs",
    "steps",
    "layers",
    "context",
    "images.json",
    "images.lock",
    "cache-mounts",
];

/// How a store is locked while a handle is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Builds: any number at once.
    Shared,
    /// Prune: nobody else.
    Exclusive,
}

/// What `open` does when the lock is held in a conflicting way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Block until the lock is free.
    Block,
    /// Fail at once with [`StoreError::Locked`].
    Fail,
}

/// A handle on an open store root. See the module documentation.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    access: Access,
    /// Holds the flock; closing it (when the last handle drops) releases it.
    _lock: File,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .field("access", &self.inner.access)
            .finish()
    }
}

impl Store {
    /// Opens (creating it if needed) the store at `root` for a build: waits for the shared lock.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Store::open_with(root, Access::Shared, Wait::Block)
    }

    /// Opens the store for prune: waits until no build uses it.
    pub fn open_exclusive(root: &Path) -> Result<Store, StoreError> {
        Store::open_with(root, Access::Exclusive, Wait::Block)
    }

    /// Opens the store for prune, or fails at once with [`StoreError::Locked`] when a build
    /// uses it.
    pub fn try_open_exclusive(root: &Path) -> Result<Store, StoreError> {
        Store::open_with(root, Access::Exclusive, Wait::Fail)
    }

    /// Opens (creating it if needed) the store at `root`: creates the layout (the root
    /// directory with mode 0700), checks VERSION, takes the lock, and removes temp entries
    /// left by dead processes (all temp entries, when exclusive).
    pub fn open_with(root: &Path, access: Access, wait: Wait) -> Result<Store, StoreError> {
        let root = std::path::absolute(root).map_err(StoreError::io("resolve path", root))?;
        if let Some(parent) = root.parent() {
            fs::create_dir_all(parent).map_err(StoreError::io("create directory", parent))?;
        }
        match DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && root.is_dir() => {}
            Err(e) => return Err(StoreError::io("create the store directory", root)(e)),
        }
        initialise(&root)?;

        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(StoreError::io("open", lock_path.clone()))?;
        flock(&lock, &lock_path, &root, access, wait)?;

        let store = Store {
            inner: Arc::new(Inner {
                root,
                access,
                _lock: lock,
            }),
        };
        // Best effort: an entry that cannot be removed now is tried again next time.
        temp::clean_tmp(
            &store.tmp_dir(),
            access == Access::Exclusive,
            &mut Vec::new(),
        )?;
        Ok(store)
    }

    /// Where the store lives when the user does not say: `$IMGBUILD_ROOT`, else
    /// `/var/lib/imgbuild` for root, else `${XDG_DATA_HOME:-~/.local/share}/imgbuild`.
    pub fn default_root() -> Result<PathBuf, StoreError> {
        default_root_from(
            |name| std::env::var_os(name),
            rustix::process::getuid().is_root(),
        )
    }

    /// The absolute root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// How this handle holds the lock.
    pub fn access(&self) -> Access {
        self.inner.access
    }

    fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    /// The directory for context indexes (`<root>/context`).
    pub fn context_dir(&self) -> PathBuf {
        self.inner.root.join("context")
    }

    /// Where the extracted tree of the layer with this diffID lives, present or not.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.inner.root.join("layers").join(diff_id.hex())
    }

    /// The extracted tree of the layer with this diffID, when present (and so complete).
    pub fn layer_dir(&self, diff_id: &Digest) -> Option<PathBuf> {
        let path = self.layer_path(diff_id);
        path.is_dir().then_some(path)
    }

    /// `path` made absolute (relative paths are relative to the root) and checked to lie
    /// under the root.
    fn inside(&self, path: &Path) -> Result<PathBuf, StoreError> {
        let root = &self.inner.root;
        let full = if path.is_absolute() {
            path.to_owned()
        } else {
            root.join(path)
        };
        let clean = full.strip_prefix(root).is_ok_and(|rest| {
            rest.components().next().is_some()
                && rest.components().all(|c| matches!(c, Component::Normal(_)))
        });
        if clean {
            Ok(full)
        } else {
            Err(StoreError::OutsideRoot {
                path: full,
                root: root.clone(),
            })
        }
    }

    fn require_exclusive(&self, op: &'static str) -> Result<(), StoreError> {
        match self.inner.access {
            Access::Exclusive => Ok(()),
            Access::Shared => Err(StoreError::NotExclusive {
                op,
                root: self.inner.root.clone(),
            }),
        }
    }
}

fn default_root_from(
    env: impl Fn(&str) -> Option<OsString>,
    is_root: bool,
) -> Result<PathBuf, StoreError> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(root) = set("IMGBUILD_ROOT") {
        return Ok(root);
    }
    if is_root {
        return Ok(PathBuf::from("/var/lib/imgbuild"));
    }
    // The XDG spec says relative values are to be ignored.
    if let Some(data) = set("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return Ok(data.join("imgbuild"));
    }
    match set("HOME") {
        Some(home) => Ok(home.join(".local/share/imgbuild")),
        None => Err(StoreError::NoRoot),
    }
}

/// Makes `root` a store if it is not one yet. Safe when several processes do it at once:
/// VERSION is written first (atomically), and the rest is idempotent directory creation.
fn initialise(root: &Path) -> Result<(), StoreError> {
    let version = root.join("VERSION");
    if fs::symlink_metadata(&version).is_err() {
        let entries = fs::read_dir(root).map_err(StoreError::io("read directory", root))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("read directory", root))?;
            let name = entry.file_name();
            if !name.to_str().is_some_and(|n| LAYOUT.contains(&n)) {
                return Err(StoreError::NotAStore {
                    root: root.to_owned(),
                    entry: name.to_string_lossy().into_owned(),
                });
            }
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(StoreError::io("create directory", tmp.clone()))?;
        let (mut file, path) = temp::create_temp_file(&tmp)?;
        let written = file
            .write_all(format!("{STORE_VERSION}\n").as_bytes())
            .map_err(StoreError::io("write", path.clone()))
            .and_then(|()| temp::commit_file(&file, &path, &version));
        if written.is_err() {
            let _ = fs::remove_file(&path);
        }
        written?;
    }
    // Before creating anything else: a newer layout is left exactly as it is.
    check_version(root)?;
    for dir in [
        "tmp",
        "blobs/sha256",
        "steps",
        "layers",
        "context",
        "cache-mounts",
    ] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(StoreError::io("create directory", path.clone()))?;
    }
    Ok(())
}

fn check_version(root: &Path) -> Result<(), StoreError> {
    let path = root.join("VERSION");
    let content = fs::read_to_string(&path).map_err(StoreError::io("read", path.clone()))?;
    match content
        .strip_suffix('\n')
        .unwrap_or(&content)
        .parse::<u32>()
    {
        Ok(STORE_VERSION) => Ok(()),
        Ok(found) if found > STORE_VERSION => Err(StoreError::NewerVersion {
            root: root.to_owned(),
            found,
            supported: STORE_VERSION,
        }),
        _ => Err(StoreError::BadVersion {
            root: root.to_owned(),
            content: content.chars().take(40).collect(),
        }),
    }
}

/// Takes an flock on `file`, retrying on EINTR.
fn flock(
    file: &File,
    path: &Path,
    root: &Path,
    access: Access,
    wait: Wait,
) -> Result<(), StoreError> {
    let op = match (access, wait) {
        (Access::Shared, Wait::Block) => FlockOperation::LockShared,
        (Access::Shared, Wait::Fail) => FlockOperation::NonBlockingLockShared,
        (Access::Exclusive, Wait::Block) => FlockOperation::LockExclusive,
        (Access::Exclusive, Wait::Fail) => FlockOperation::NonBlockingLockExclusive,
    };
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) => {
                return Err(StoreError::Locked {
                    root: root.to_owned(),
                    wanted: access,
                });
            }
            Err(e) => return Err(StoreError::io("lock", path)(e.into())),
        }
    }
}

/// An flock held on a file until dropped (images.lock).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn exclusive(path: &Path, root: &Path) -> Result<FileLock, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        flock(&file, path, root, Access::Exclusive, Wait::Block)?;
        Ok(FileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc;

    #[test]
    fn open_creates_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/store");
        let store = Store::open(&root).unwrap();
        assert_eq!(store.root(), root);
        assert_eq!(store.access(), Access::Shared);
        assert_eq!(fs::read_to_string(root.join("VERSION")).unwrap(), "1\n");
        for d in ["tmp", "blobs/sha256", "steps", "layers", "context"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        assert!(root.join("lock").is_file());
        let mode = fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(store);
        // Reopening an existing store works, relative paths become absolute.
        let again = Store::open(&root).unwrap();
        assert!(again.root().is_absolute());
    }

    #[test]
    fn open_refuses_other_versions_and_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        drop(Store::open(&root).unwrap());

        fs::write(root.join("VERSION"), "2\n").unwrap();
        fs::remove_dir(root.join("steps")).unwrap();
        let err = Store::open(&root).unwrap_err();
        assert!(!root.join("steps").exists(), "a newer store was changed");
        assert!(
            matches!(err, StoreError::NewerVersion { found: 2, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&root.display().to_string()) && msg.contains("VERSION 2"),
            "{msg}"
        );

        fs::write(root.join("VERSION"), "banana").unwrap();
        let err = Store::open(&root).unwrap_err();
        assert!(matches!(err, StoreError::BadVersion { .. }), "{err:?}");

        let foreign = dir.path().join("home");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), "mine").unwrap();
        let err = Store::open(&foreign).unwrap_err();
        assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
        assert!(err.to_string().contains("notes.txt"));
        // Nothing was created in it.
        assert_eq!(fs::read_dir(&foreign).unwrap().count(), 1);

        // A file where the root should be.
        let err = Store::open(&foreign.join("notes.txt")).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    }

    #[test]
    fn a_half_initialised_root_is_completed() {
        // A process killed during the first open leaves tmp/ (maybe with garbage) but no VERSION.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("tmp/999999999-dead"), "1").unwrap();
        let store = Store::open(&root).unwrap();
        assert_eq!(fs::read_to_string(root.join("VERSION")).unwrap(), "1\n");
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn many_first_opens_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| Store::open(&root).unwrap());
            }
        });
        assert_eq!(fs::read_to_string(root.join("VERSION")).unwrap(), "1\n");
    }

    #[test]
    fn four_builds_at_once() {
        use crate::Blobs;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let shared_layer = b"a layer every build produces".repeat(10_000);
        let diff_id = Digest::of(b"the tree of that layer");
        std::thread::scope(|s| {
            for b in 0..4u8 {
                let (root, shared_layer) = (&root, &shared_layer);
                s.spawn(move || {
                    // Each build opens its own handle (its own lock), as a process would.
                    let store = Store::open(root).unwrap();
                    let (layer, _) = store.put_blob(&mut shared_layer.as_slice(), None).unwrap();
                    let own = store.put_blob_bytes(&[b; 1000]).unwrap();
                    let tree = store.temp_dir().unwrap();
                    fs::write(tree.path().join("file"), b"same").unwrap();
                    tree.persist(&store.layer_path(&diff_id)).unwrap();
                    store.put_step(&[b; 32], &[layer, own]).unwrap();
                    store.put_step(&[0xff; 32], &[layer]).unwrap();
                    let meta = ImageMeta {
                        config: own,
                        platform: "linux/amd64".into(),
                        created: String::new(),
                    };
                    store.tag(&format!("build{b}"), &own, meta.clone()).unwrap();
                    store.tag("shared", &layer, meta).unwrap();
                });
            }
        });
        let store = Store::open(&root).unwrap();
        assert_eq!(store.step_keys().unwrap().len(), 5);
        assert_eq!(store.images().unwrap().len(), 5);
        assert_eq!(store.du().unwrap().blobs.count, 5);
        assert_eq!(
            fs::read(store.layer_path(&diff_id).join("file")).unwrap(),
            b"same"
        );
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        assert!(
            store
                .get_step::<Vec<Digest>>(&[0xff; 32])
                .hit()
                .is_some_and(|r| r.len() == 1)
        );
    }

    const CHILD_ROOT: &str = "IMGBUILD_STORE_TEST_CHILD_ROOT";
    const CHILD_MODE: &str = "IMGBUILD_STORE_TEST_CHILD_MODE";

    /// Runs `child_process` below in a new process of this test binary.
    fn child(root: &Path, mode: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "store::tests::child_process", "--test-threads=1"])
            .env(CHILD_ROOT, root)
            .env(CHILD_MODE, mode)
            // Its harness output is not ours to print (nor a test result for whoever reads ours).
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }

    /// Does nothing as a test of its own; in a child started by `child`, it is a process
    /// using the store.
    #[test]
    fn child_process() {
        let Some(root) = std::env::var_os(CHILD_ROOT) else {
            return;
        };
        let root = PathBuf::from(root);
        let mode = std::env::var(CHILD_MODE).unwrap_or_default();
        if mode == "try_exclusive" {
            std::process::exit(match Store::try_open_exclusive(&root) {
                Ok(_) => 0,
                Err(StoreError::Locked { .. }) => 3,
                Err(_) => 4,
            });
        }
        let store = Store::open(&root).unwrap();
        match mode.as_str() {
            "crash" => {
                // Killed while writing: a temp file and a temp dir are left behind.
                let mut file = store.temp_file().unwrap();
                file.write_all(b"half a blob").unwrap();
                let tree = store.temp_dir().unwrap();
                fs::write(tree.path().join("f"), b"half a tree").unwrap();
                std::process::abort();
            }
            _ => {
                let content = b"built by every process".repeat(10_000);
                let d = store.put_blob_bytes(&content).unwrap();
                store.put_step(&[7; 32], &d).unwrap();
                let meta = ImageMeta {
                    config: d,
                    platform: "linux/amd64".into(),
                    created: String::new(),
                };
                store
                    .tag(&format!("p{}", std::process::id()), &d, meta)
                    .unwrap();
            }
        }
    }

    #[test]
    fn processes_share_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let children: Vec<_> = (0..4)
            .map(|_| child(&root, "build").spawn().unwrap())
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let store = Store::open(&root).unwrap();
        assert_eq!(store.images().unwrap().len(), 4);
        assert_eq!(store.step_keys().unwrap(), vec![[7; 32]]);

        // Across processes, shared excludes exclusive.
        let out = child(&root, "try_exclusive").output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        drop(store);
        let out = child(&root, "try_exclusive").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }

    #[test]
    fn a_killed_process_leaves_only_tmp_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let out = child(&root, "crash").output().unwrap();
        assert!(!out.status.success());
        let tmp = root.join("tmp");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 2);
        for d in ["blobs/sha256", "steps", "layers"] {
            assert_eq!(fs::read_dir(root.join(d)).unwrap().count(), 0, "{d}");
        }
        // Its pid is dead now (the child was reaped): the next open cleans up.
        drop(Store::open(&root).unwrap());
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn lock_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let a = Store::open(&root).unwrap();
        let b = Store::open(&root).unwrap(); // shared + shared

        let err = Store::try_open_exclusive(&root).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Locked {
                    wanted: Access::Exclusive,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("in use by another imgbuild"),
            "{err}"
        );

        // A clone keeps the lock: dropping `a` alone is not enough.
        let a2 = a.clone();
        drop(a);
        drop(b);
        assert!(Store::try_open_exclusive(&root).is_err());
        drop(a2);

        let x = Store::try_open_exclusive(&root).unwrap();
        assert_eq!(x.access(), Access::Exclusive);
        let err = Store::open_with(&root, Access::Shared, Wait::Fail).unwrap_err();
        assert!(matches!(
            err,
            StoreError::Locked {
                wanted: Access::Shared,
                ..
            }
        ));
        assert!(err.to_string().contains("being pruned"), "{err}");
        drop(x);

        // A blocking exclusive open waits for the shared holder to go.
        let shared = Store::open(&root).unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn({
            let root = root.clone();
            move || {
                let store = Store::open_exclusive(&root).unwrap();
                tx.send(()).unwrap();
                drop(store);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "exclusive open did not wait");
        drop(shared);
        rx.recv().unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn stale_temp_entries_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let keep_open = Store::open(&root).unwrap();
        let tmp = root.join("tmp");
        // pid_max is at most 2^22, so this pid cannot be alive.
        fs::write(tmp.join("999999999-x"), "dead file").unwrap();
        fs::create_dir_all(tmp.join("999999998-y/sub")).unwrap();
        fs::write(tmp.join("999999998-y/sub/f"), "dead tree").unwrap();
        fs::write(tmp.join("not-ours"), "garbage").unwrap();
        let mine = format!("{}-z", std::process::id());
        fs::write(tmp.join(&mine), "live").unwrap();

        let store = Store::open(&root).unwrap();
        let mut left: Vec<_> = fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [mine]);
        drop((store, keep_open));

        // Under the exclusive lock every temp entry is stale, ours included.
        drop(Store::open_exclusive(&root).unwrap());
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn default_root_rules() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = &[
            ("IMGBUILD_ROOT", "/r"),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(default_root_from(env(all), false).unwrap(), Path::new("/r"));
        assert_eq!(default_root_from(env(all), true).unwrap(), Path::new("/r"));
        let no_override = &[
            ("IMGBUILD_ROOT", ""),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            default_root_from(env(no_override), true).unwrap(),
            Path::new("/var/lib/imgbuild")
        );
        assert_eq!(
            default_root_from(env(no_override), false).unwrap(),
            Path::new("/x/imgbuild")
        );
        let relative_xdg = &[("XDG_DATA_HOME", "rel"), ("HOME", "/h")];
        assert_eq!(
            default_root_from(env(relative_xdg), false).unwrap(),
            Path::new("/h/.local/share/imgbuild")
        );
        assert!(matches!(
            default_root_from(env(&[]), false),
            Err(StoreError::NoRoot)
        ));
        assert!(Store::default_root().is_ok() || std::env::var_os("HOME").is_none());
    }

    #[test]
    fn temp_file_persist_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tmp = store.tmp_dir();

        let mut t = store.temp_file().unwrap();
        t.write_all(b"hello").unwrap();
        assert!(t.path().starts_with(&tmp));
        drop(t);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);

        let mut t = store.temp_file().unwrap();
        t.write_all(b"hello").unwrap();
        t.persist(Path::new("context/sub/x")).unwrap();
        assert_eq!(
            fs::read(store.context_dir().join("sub/x")).unwrap(),
            b"hello"
        );
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);

        store
            .write_atomic(&store.context_dir().join("sub/x"), b"again")
            .unwrap();
        assert_eq!(
            fs::read(store.context_dir().join("sub/x")).unwrap(),
            b"again"
        );

        for bad in [
            Path::new("/etc/passwd"),
            Path::new("context/../../escape"),
            Path::new(""),
        ] {
            let err = store.write_atomic(bad, b"no").unwrap_err();
            assert!(
                matches!(err, StoreError::OutsideRoot { .. }),
                "{bad:?}: {err:?}"
            );
        }
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn temp_dir_persist_races() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let diff_id = Digest::of(b"tree");
        assert_eq!(store.layer_dir(&diff_id), None);

        let first = store.temp_dir().unwrap();
        fs::write(first.path().join("f"), "1").unwrap();
        let second = store.temp_dir().unwrap();
        fs::create_dir(second.path().join("d")).unwrap();
        fs::set_permissions(second.path().join("d"), fs::Permissions::from_mode(0o500)).unwrap();

        let dest = store.layer_path(&diff_id);
        assert_eq!(first.persist(&dest).unwrap(), Persisted::Stored);
        assert_eq!(second.persist(&dest).unwrap(), Persisted::AlreadyPresent);
        assert_eq!(store.layer_dir(&diff_id), Some(dest.clone()));
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"1");
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        let dropped = store.temp_dir().unwrap();
        fs::write(dropped.path().join("f"), "x").unwrap();
        drop(dropped);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
