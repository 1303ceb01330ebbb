//! Where an exported cache lives: the [`CacheTransport`] trait, and [`LocalDir`], its
//! implementation over a local directory (`--cache-to type=local,dest=DIR`).

use super::index::CacheIndex;
use crate::{Digest, DigestWriter};
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// All the I/O import and export do on an exported cache: blobs by digest plus one index.
///
/// Implementations: [`LocalDir`] now; a registry transport (`type=registry,ref=…`) maps blobs
/// to the repository's blobs (HEAD, GET, upload) and the index to a manifest tagged `ref`
/// whose layers list [`CacheIndex::referenced`], so the registry's own garbage collection keeps
/// exactly those (it may then answer `list_blobs` with nothing and make `delete_blob` a no-op).
///
/// Contract: `put_blob` and `put_index` are atomic (a reader sees the whole object or none)
/// and `put_blob` stores nothing unless the content has `digest`. Readers verify what
/// `get_blob` returns themselves; a transport need not.
pub trait CacheTransport: Send + Sync {
    /// The cache as the user named it, for messages (`local cache /ci/cache`).
    fn describe(&self) -> String;

    /// The size of a blob the cache holds, or None.
    fn has_blob(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// The content of a blob; `NotFound` when the cache lacks it.
    fn get_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + Send + '_>>;

    /// Stores `reader`'s content as the blob `digest` (`size` bytes). Content of another
    /// digest is an `InvalidData` error, and nothing is stored.
    fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn Read + Send),
    ) -> io::Result<()>;

    /// The index, or None when the cache holds none yet.
    fn get_index(&self) -> io::Result<Option<CacheIndex>>;

    /// Replaces the index. Export calls it after every blob it references is stored.
    fn put_index(&self, index: &CacheIndex) -> io::Result<()>;

    /// Every blob the cache holds (for removing the ones the index no longer references).
    fn list_blobs(&self) -> io::Result<Vec<Digest>>;

    /// Removes a blob; a missing one is not an error.
    fn delete_blob(&self, digest: &Digest) -> io::Result<()>;

    /// Called once before an export writes anything; the returned guard is dropped when it
    /// is done. [`LocalDir`] takes a lock so two exports to one directory take turns (the
    /// second's clean-up must not remove the first's new blobs).
    fn begin_export(&self) -> io::Result<Box<dyn Send>> {
        Ok(Box::new(()))
    }
}

/// An exported cache in a local directory:
///
/// ```text
/// DIR/index.json            the CacheIndex (JSON)
/// DIR/blobs/sha256/<hex>    blobs: layers, cache-mount manifests, packs and files
/// DIR/lock                  flock: held by an export while it writes
/// ```
///
/// Temp files are `.<pid>-<random>.tmp` beside their final names (the same file system, so
/// the rename is atomic); an export removes those of dead processes.
#[derive(Clone, Debug)]
pub struct LocalDir {
    root: PathBuf,
}

const INDEX: &str = "index.json";

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalDir {
    /// The cache in `root` (it need not exist: importing from it finds nothing, exporting
    /// creates it).
    pub fn new(root: impl Into<PathBuf>) -> LocalDir {
        LocalDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives, present or not.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// A new temp file beside `dest`.
    fn temp_beside(dest: &Path) -> io::Result<(File, PathBuf)> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        for _ in 0..64 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!(
                ".{}-{:016x}.tmp",
                std::process::id(),
                RandomState::new().hash_one(n)
            );
            let path = dir.join(name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "cannot create a temporary file in {}",
            dir.display()
        )))
    }

    /// fsyncs `file` and renames `tmp` to `dest` (then fsyncs the directory); on failure the
    /// temp file is removed.
    fn commit(file: File, tmp: &Path, dest: &Path) -> io::Result<()> {
        let done = file.sync_all().and_then(|()| fs::rename(tmp, dest));
        if done.is_err() {
            let _ = fs::remove_file(tmp);
        }
        done?;
        if let Some(dir) = dest.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes the temp files of dead processes from `dir` (best effort).
    fn clean_stale(dir: &Path) {
        let owner = |name: &str| {
            let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
            crate::store::parse_pid(rest.split_once('-')?.0)
        };
        crate::store::remove_stale_beside(&dir.join("x"), owner);
    }
}

/// Maps a missing path to `NotFound` with the path in the message.
fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl CacheTransport for LocalDir {
    fn describe(&self) -> String {
        format!("local cache {}", self.root.display())
    }

    fn has_blob(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(at(&self.blob_path(digest))(e)),
        }
    }

    fn get_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + Send + '_>> {
        let path = self.blob_path(digest);
        Ok(Box::new(File::open(&path).map_err(at(&path))?))
    }

    fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn Read + Send),
    ) -> io::Result<()> {
        let dest = self.blob_path(digest);
        let (file, tmp) = Self::temp_beside(&dest).map_err(at(&dest))?;
        let mut w = DigestWriter::new(BufWriter::with_capacity(256 * 1024, file));
        let copied = io::copy(reader, &mut w).and_then(|_| w.flush());
        let (found, len, buffered) = w.finish();
        let file = match (copied, buffered.into_inner()) {
            (Ok(()), Ok(file)) => file,
            (Err(e), _) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            (_, Err(e)) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into_error());
            }
        };
        if found != *digest || len != size {
            drop(file);
            let _ = fs::remove_file(&tmp);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {digest}: the content written has digest {found} and {len} bytes \
                     (expected {size}); nothing was stored"
                ),
            ));
        }
        Self::commit(file, &tmp, &dest).map_err(at(&dest))
    }

    fn get_index(&self) -> io::Result<Option<CacheIndex>> {
        let path = self.root.join(INDEX);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(at(&path)(e)),
        };
        CacheIndex::from_json(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    fn put_index(&self, index: &CacheIndex) -> io::Result<()> {
        let dest = self.root.join(INDEX);
        let (mut file, tmp) = Self::temp_beside(&dest).map_err(at(&dest))?;
        if let Err(e) = file.write_all(&index.to_json()) {
            let _ = fs::remove_file(&tmp);
            return Err(at(&tmp)(e));
        }
        Self::commit(file, &tmp, &dest).map_err(at(&dest))
    }

    fn list_blobs(&self) -> io::Result<Vec<Digest>> {
        let dir = self.blobs_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(at(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(at(&dir))?;
            let name = entry.file_name();
            // Only names that are digests: temp files and strangers are not blobs.
            if let Some(d) = name
                .to_str()
                .filter(|n| n.len() == 64)
                .and_then(|n| Digest::parse(n).ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete_blob(&self, digest: &Digest) -> io::Result<()> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(at(&path)(e)),
        }
    }

    fn begin_export(&self) -> io::Result<Box<dyn Send>> {
        fs::create_dir_all(self.blobs_dir()).map_err(at(&self.root))?;
        let path = self.root.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(at(&path))?;
        loop {
            match rustix::fs::flock(&lock, FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(at(&path)(e.into())),
            }
        }
        Self::clean_stale(&self.blobs_dir());
        Self::clean_stale(&self.root);
        Ok(Box::new(lock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalDir::new(dir.path().join("cache"));
        let data = b"some layer".repeat(1000);
        let d = Digest::of(&data);
        assert_eq!(t.has_blob(&d).unwrap(), None);
        assert!(t.get_index().unwrap().is_none());
        assert!(t.list_blobs().unwrap().is_empty());
        let _guard = t.begin_export().unwrap();

        t.put_blob(&d, data.len() as u64, &mut data.as_slice())
            .unwrap();
        assert_eq!(t.has_blob(&d).unwrap(), Some(data.len() as u64));
        let mut back = Vec::new();
        t.get_blob(&d).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(t.list_blobs().unwrap(), vec![d]);

        // Wrong content under a name: refused, nothing left behind.
        let wrong = Digest::of(b"other");
        let err = t.put_blob(&wrong, 5, &mut &b"other!"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(t.has_blob(&wrong).unwrap(), None);
        let names: Vec<_> = fs::read_dir(t.blobs_dir()).unwrap().collect();
        assert_eq!(names.len(), 1);

        t.delete_blob(&d).unwrap();
        t.delete_blob(&d).unwrap();
        assert!(t.list_blobs().unwrap().is_empty());
        let err = t.get_blob(&d).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn index_round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalDir::new(dir.path());
        let index = CacheIndex::default();
        t.put_index(&index).unwrap();
        assert_eq!(t.get_index().unwrap(), Some(index));
        fs::write(dir.path().join(INDEX), b"{not json").unwrap();
        let err = t.get_index().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("index.json"), "{err}");
        // Stale temp files of dead processes go when an export starts.
        fs::create_dir_all(t.blobs_dir()).unwrap();
        fs::write(t.blobs_dir().join(".999999999-00.tmp"), b"x").unwrap();
        drop(t.begin_export().unwrap());
        assert!(!t.blobs_dir().join(".999999999-00.tmp").exists());
    }
}
