//! Persistent directories for `RUN --mount=type=cache`.
//!
//! ```text
//! <root>/cache-mounts/<name>/     one cache mount; <name> = hex blake3 of its id
//!     id                           the id as the Dockerfile gave it (UTF-8), written first
//!     0/  1/ …                     instances: the directories a RUN sees at its target
//!     0.lock  1.lock …             an flock per instance
//! ```
//!
//! Each `<name>/` is self-contained (it names its id and holds every instance), so it can be
//! exported or imported as a unit. Instance `0` is the one shared and locked users see; further
//! instances exist only for `sharing=private` users that found the lower ones busy. An instance
//! is created in `tmp/`, seeded and given its mode and owner there, then renamed into place, so
//! a half-made instance is never seen. Content of a cache mount is never part of a key, a layer
//! or an image; `prune` keeps cache mounts, `prune --all` removes them.
//!
//! Locks (held for the whole RUN by the returned [`CacheMount`]):
//! - `shared` (BuildKit's default): `LOCK_SH` on `0.lock`; any number of users at once;
//! - `locked`: `LOCK_EX` on `0.lock`, waiting for every other user of instance 0;
//! - `private`: `LOCK_EX | LOCK_NB` on `0.lock`, `1.lock`, … and the first instance that is
//!   free; a new instance when all are in use.

use super::{Store, StoreError};
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How a cache mount is shared between RUNs that use it at the same time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// A cache mount instance in use; its lock is released when this is dropped.
#[derive(Debug)]
pub struct CacheMount {
    path: PathBuf,
    /// Whether this use created the instance (and so ran the seeding callback).
    pub created: bool,
    _lock: File,
}

impl CacheMount {
    /// The directory to mount.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Private users try this many instances before giving up (a runaway would otherwise create
/// directories without bound).
const MAX_INSTANCES: u32 = 1024;

impl Store {
    /// `<root>/cache-mounts`.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.root().join("cache-mounts")
    }

    /// The directory of the cache mount with this id, present or not.
    pub fn cache_mount_path(&self, id: &str) -> PathBuf {
        self.cache_mounts_dir()
            .join(blake3::hash(id.as_bytes()).to_hex().as_str())
    }

    /// Takes an instance of the cache mount `id` as `sharing` says (see the module docs),
    /// creating it when missing: `init` fills the new directory (a seed; nothing for an empty
    /// cache) and sets its mode and owner before it is renamed into place. `waiting` is called
    /// once before blocking on a lock another build holds.
    pub fn cache_mount(
        &self,
        id: &str,
        sharing: CacheSharing,
        waiting: &dyn Fn(),
        init: &mut dyn FnMut(&Path) -> io::Result<()>,
    ) -> Result<CacheMount, StoreError> {
        let dir = self.cache_mount_path(id);
        if !dir.join("id").is_file() {
            let tmp = self.temp_dir()?;
            let id_file = tmp.path().join("id");
            fs::write(&id_file, id).map_err(StoreError::io("write", id_file))?;
            // Losing the race to another build is fine: its entry has the same id.
            let _ = fs::remove_dir(&dir);
            tmp.persist(&dir)?;
        }
        let (n, lock) = match sharing {
            CacheSharing::Shared | CacheSharing::Locked => {
                let exclusive = sharing == CacheSharing::Locked;
                (
                    0,
                    lock_instance(&dir, 0, exclusive, Some(waiting))?.expect("blocking"),
                )
            }
            CacheSharing::Private => {
                let mut found = None;
                for n in 0..MAX_INSTANCES {
                    if let Some(lock) = lock_instance(&dir, n, true, None)? {
                        found = Some((n, lock));
                        break;
                    }
                }
                found.ok_or_else(|| {
                    StoreError::io("find a free instance of the cache mount", dir.clone())(
                        io::Error::other(format!("all {MAX_INSTANCES} instances are in use")),
                    )
                })?
            }
        };
        let path = dir.join(n.to_string());
        let mut created = false;
        if !path.is_dir() {
            let tmp = self.temp_dir()?;
            init(tmp.path()).map_err(StoreError::io("seed the cache mount", path.clone()))?;
            created = tmp.persist(&path)? == super::Persisted::Stored;
        }
        Ok(CacheMount {
            path,
            created,
            _lock: lock,
        })
    }
}

impl Store {
    /// Instance 0 of the cache mount `id`, held with a shared lock (so no `sharing=locked`
    /// user writes it meanwhile), or None when the store has none. Nothing is created: this
    /// is for reading it (cache export).
    pub fn existing_cache_mount(&self, id: &str) -> Result<Option<CacheMount>, StoreError> {
        let dir = self.cache_mount_path(id);
        let path = dir.join("0");
        if !path.is_dir() || !dir.join("id").is_file() {
            return Ok(None);
        }
        let lock = lock_instance(&dir, 0, false, Some(&|| {}))?.expect("blocking");
        Ok(Some(CacheMount {
            path,
            created: false,
            _lock: lock,
        }))
    }

    /// Installs `tree` (filled by the caller: content, modes, owners) as instance 0 of the
    /// cache mount `id` unless it has one already; returns whether it did (cache import).
    pub fn install_cache_mount(&self, id: &str, tree: super::TempDir) -> Result<bool, StoreError> {
        let dir = self.cache_mount_path(id);
        if !dir.join("id").is_file() {
            let tmp = self.temp_dir()?;
            let id_file = tmp.path().join("id");
            fs::write(&id_file, id).map_err(StoreError::io("write", id_file))?;
            // Losing the race to another build is fine: its entry has the same id.
            let _ = fs::remove_dir(&dir);
            tmp.persist(&dir)?;
        }
        // As a locked user would: no RUN is creating instance 0 meanwhile.
        let _lock = lock_instance(&dir, 0, true, Some(&|| {}))?;
        Ok(tree.persist(&dir.join("0"))? == super::Persisted::Stored)
    }
}

/// Locks `<dir>/<n>.lock`: shared or exclusive; with `waiting`, blocking (calling it first when
/// the lock is busy), else non-blocking (None when busy).
fn lock_instance(
    dir: &Path,
    n: u32,
    exclusive: bool,
    waiting: Option<&dyn Fn()>,
) -> Result<Option<File>, StoreError> {
    let path = dir.join(format!("{n}.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(StoreError::io("open", path.clone()))?;
    let (try_op, block_op) = if exclusive {
        (
            FlockOperation::NonBlockingLockExclusive,
            FlockOperation::LockExclusive,
        )
    } else {
        (
            FlockOperation::NonBlockingLockShared,
            FlockOperation::LockShared,
        )
    };
    let mut op = try_op;
    loop {
        match rustix::fs::flock(&file, op) {
            Ok(()) => return Ok(Some(file)),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) if op == try_op => match waiting {
                Some(w) => {
                    w();
                    op = block_op;
                }
                None => return Ok(None),
            },
            Err(e) => return Err(StoreError::io("lock", path)(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        (dir, store)
    }

    #[test]
    fn created_once_then_reused() {
        let (_d, s) = store();
        let mut calls = 0;
        let mut init = |p: &Path| {
            calls += 1;
            fs::write(p.join("seed"), b"x")
        };
        let a = s
            .cache_mount("/root/.cache", CacheSharing::Shared, &|| {}, &mut init)
            .unwrap();
        assert!(a.created);
        fs::write(a.path().join("kept"), b"y").unwrap();
        drop(a);
        let b = s
            .cache_mount("/root/.cache", CacheSharing::Shared, &|| {}, &mut init)
            .unwrap();
        assert!(!b.created);
        assert!(b.path().join("kept").is_file() && b.path().join("seed").is_file());
        assert_eq!(calls, 1);
        let entry = s.cache_mount_path("/root/.cache");
        assert_eq!(
            fs::read_to_string(entry.join("id")).unwrap(),
            "/root/.cache"
        );
        assert_eq!(b.path(), entry.join("0"));
    }

    #[test]
    fn private_users_get_their_own_instance_while_one_is_busy() {
        let (_d, s) = store();
        let mut init = |_: &Path| Ok(());
        let shared = s
            .cache_mount("c", CacheSharing::Shared, &|| {}, &mut init)
            .unwrap();
        let p1 = s
            .cache_mount("c", CacheSharing::Private, &|| {}, &mut init)
            .unwrap();
        let p2 = s
            .cache_mount("c", CacheSharing::Private, &|| {}, &mut init)
            .unwrap();
        assert_eq!(shared.path().file_name().unwrap(), "0");
        assert_eq!(p1.path().file_name().unwrap(), "1");
        assert_eq!(p2.path().file_name().unwrap(), "2");
        drop((shared, p1));
        let p3 = s
            .cache_mount("c", CacheSharing::Private, &|| {}, &mut init)
            .unwrap();
        assert_eq!(p3.path().file_name().unwrap(), "0");
    }

    #[test]
    fn locked_waits_for_other_users() {
        let (_d, s) = store();
        let mut init = |_: &Path| Ok(());
        let held = s
            .cache_mount("c", CacheSharing::Shared, &|| {}, &mut init)
            .unwrap();
        let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let m = s2
                .cache_mount(
                    "c",
                    CacheSharing::Locked,
                    &|| waiting_tx.send(()).unwrap(),
                    &mut |_| Ok(()),
                )
                .unwrap();
            m.path().to_owned()
        });
        // The locked user found the instance busy and waits; it gets in once it is released.
        waiting_rx.recv().unwrap();
        drop(held);
        assert_eq!(t.join().unwrap().file_name().unwrap(), "0");
    }
}
