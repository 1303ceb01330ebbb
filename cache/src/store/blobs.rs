//! Blobs by digest: `<root>/blobs/sha256/<hex>`.

use super::error::lift;
use super::{Store, StoreError, TempFile};
use crate::{Blobs, Digest, DigestWriter};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// A writer that stores what is written to it as a blob, named by its digest when
/// [`finish`](BlobWriter::finish)ed. Dropped unfinished, it leaves nothing behind.
pub struct BlobWriter {
    inner: DigestWriter<BufWriter<TempFile>>,
}

impl Store {
    /// Where the blob with this digest lives, present or not.
    pub fn blob_file(&self, digest: &Digest) -> PathBuf {
        self.root().join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_file(digest).is_file()
    }

    /// The size of a stored blob.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_file(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// A writer for producers that stream (the layer compressor writes into one).
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        Ok(BlobWriter {
            inner: DigestWriter::new(BufWriter::with_capacity(128 * 1024, self.temp_file()?)),
        })
    }

    /// Stores `bytes` as a blob (manifests, configs) and returns its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(StoreError::io("write", writer.path().to_owned()))?;
        Ok(writer.finish()?.0)
    }

    /// Opens a blob for reading; the reader fails at EOF when the content does not match.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifiedReader<File>, StoreError> {
        let path = self.blob_file(digest);
        match File::open(&path) {
            Ok(file) => Ok(VerifiedReader::new(file, *digest, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingBlob {
                digest: *digest,
                root: self.root().to_owned(),
            }),
            Err(e) => Err(StoreError::io("open", path)(e)),
        }
    }

    /// Reads a whole blob, verified (for small JSON blobs).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut reader = self.open_blob(digest)?;
        let mut bytes = Vec::with_capacity(self.blob_size(digest).unwrap_or(0) as usize);
        reader
            .read_to_end(&mut bytes)
            .map_err(StoreError::io("read", self.blob_file(digest)))?;
        Ok(bytes)
    }

    /// Reads a whole stored blob to check it: the content must hash to its name. Returns its
    /// size. A cache hit is checked so before it is used: a damaged blob is a miss, never a
    /// layer handed on.
    pub fn verify_blob(&self, digest: &Digest) -> Result<u64, StoreError> {
        self.open_blob(digest)?.finish()
    }

    /// Renames a finished (so verified) temp file to the blob's name, replacing whatever is
    /// there. Usually that is an equal blob from a concurrent build (replacing it is harmless:
    /// the rename is atomic and readers keep the file they opened); but it may be a damaged
    /// one, same size or not, which this heals. Keeping a blob because it has the right size
    /// would keep a flipped byte forever.
    fn commit_blob(&self, temp: TempFile, digest: &Digest) -> Result<(), StoreError> {
        temp.persist(&self.blob_file(digest))
    }

    fn put_blob_from(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        let mut writer = self.blob_writer()?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The source's error, not the store's: keep it as it is.
                Err(e) => {
                    return Err(lift(e, |e| {
                        StoreError::io("read the blob source for", writer.path().to_owned())(e)
                    }));
                }
            };
            writer
                .write_all(&buf[..n])
                .map_err(StoreError::io("write", writer.path().to_owned()))?;
        }
        match expected {
            Some(expected) => writer.finish_expecting(expected),
            None => writer.finish(),
        }
    }
}

impl Blobs for Store {
    fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.blob_file(digest);
        path.is_file().then_some(path)
    }

    /// Streams `reader` into a temp file, hashing on the way; with `expected`, a mismatch is
    /// an `InvalidData` error (carrying [`StoreError::DigestMismatch`]) and nothing is stored.
    fn put_blob(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> io::Result<(Digest, u64)> {
        self.put_blob_from(reader, expected)
            .map_err(io::Error::from)
    }
}

impl BlobWriter {
    /// The temp file being written.
    pub fn path(&self) -> &Path {
        self.inner.get_ref().get_ref().path()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Stores what was written under its digest; returns digest and size.
    pub fn finish(self) -> Result<(Digest, u64), StoreError> {
        self.finish_inner(None)
    }

    /// Like [`finish`](BlobWriter::finish), but stores nothing and fails with
    /// [`StoreError::DigestMismatch`] unless the content has digest `expected`.
    pub fn finish_expecting(self, expected: &Digest) -> Result<(Digest, u64), StoreError> {
        self.finish_inner(Some(expected))
    }

    fn finish_inner(self, expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        let (digest, len, buffered) = self.inner.finish();
        let path = buffered.get_ref().path().to_owned();
        let temp = buffered
            .into_inner()
            .map_err(|e| StoreError::io("write", path)(e.into_error()))?;
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                found: digest,
            });
        }
        let store = temp.store().clone();
        store.commit_blob(temp, &digest)?;
        Ok((digest, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it and, at EOF, fails with an `InvalidData`
/// error (carrying [`StoreError::Corrupt`]) when the content does not have the expected
/// digest. Verification happens only at EOF: a consumer that may stop early (a tar or gzip
/// reader does) should call [`finish`](VerifiedReader::finish) when done.
pub struct VerifiedReader<R = File> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
    path: PathBuf,
    len: u64,
    state: State,
}

#[derive(Clone, Copy)]
enum State {
    Reading,
    Verified,
    Failed(Digest),
}

impl<R: Read> VerifiedReader<R> {
    /// Wraps `inner`, which should yield content with digest `expected`; `path` names the
    /// content in error messages.
    pub fn new(inner: R, expected: Digest, path: PathBuf) -> VerifiedReader<R> {
        VerifiedReader {
            inner,
            hasher: Sha256::new(),
            expected,
            path,
            len: 0,
            state: State::Reading,
        }
    }

    /// The digest the content must have.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Reads the rest and verifies; returns the total size.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        io::copy(&mut self, &mut io::sink()).map_err(StoreError::io("read", self.path.clone()))?;
        Ok(self.len)
    }

    fn corrupt(&self, found: Digest) -> io::Error {
        StoreError::Corrupt {
            digest: self.expected,
            path: self.path.clone(),
            found,
            len: self.len,
        }
        .into()
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Verified => return Ok(0),
            State::Failed(found) => return Err(self.corrupt(found)),
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.len += n as u64;
            return Ok(n);
        }
        let found = Digest::from_bytes(self.hasher.finalize_reset().into());
        if found == self.expected {
            self.state = State::Verified;
            Ok(0)
        } else {
            self.state = State::Failed(found);
            Err(self.corrupt(found))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        (dir, store)
    }

    fn tmp_is_empty(store: &Store) -> bool {
        fs::read_dir(store.tmp_dir()).unwrap().next().is_none()
    }

    #[test]
    fn round_trip() {
        let (_dir, store) = store();
        let data = b"hello blob".repeat(100_000);
        let want = Digest::of(&data);
        assert!(!store.has_blob(&want));
        assert_eq!(store.blob_path(&want), None);

        let (d, n) = store.put_blob(&mut Cursor::new(&data), None).unwrap();
        assert_eq!((d, n), (want, data.len() as u64));
        assert!(store.has_blob(&d));
        assert_eq!(store.blob_size(&d), Some(n));
        assert_eq!(store.blob_path(&d), Some(store.blob_file(&d)));
        assert_eq!(store.read_blob(&d).unwrap(), data);
        // Again, with the expected digest: idempotent.
        assert_eq!(
            store
                .put_blob(&mut Cursor::new(&data), Some(&want))
                .unwrap(),
            (d, n)
        );
        assert!(tmp_is_empty(&store));

        let small = store.put_blob_bytes(b"{}").unwrap();
        assert_eq!(small, Digest::of(b"{}"));
        assert_eq!(store.read_blob(&small).unwrap(), b"{}");

        let empty = store.put_blob_bytes(b"").unwrap();
        assert_eq!(store.read_blob(&empty).unwrap(), b"");
    }

    #[test]
    fn blob_writer_streams() {
        let (_dir, store) = store();
        let mut w = store.blob_writer().unwrap();
        for i in 0..1000u32 {
            w.write_all(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(w.len(), 4000);
        let (d, n) = w.finish().unwrap();
        let want: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!((d, n), (Digest::of(&want), 4000));
        assert_eq!(store.read_blob(&d).unwrap(), want);

        let mut w = store.blob_writer().unwrap();
        w.write_all(b"abandoned").unwrap();
        drop(w);
        assert!(tmp_is_empty(&store));
        assert!(!store.has_blob(&Digest::of(b"abandoned")));
    }

    #[test]
    fn wrong_expected_digest_stores_nothing() {
        let (_dir, store) = store();
        let wrong = Digest::of(b"something else");
        let err = store
            .put_blob(&mut Cursor::new(b"content"), Some(&wrong))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&wrong.to_string()), "{err}");
        let inner = lift(err, |e| panic!("not a store error: {e}"));
        assert!(matches!(inner, StoreError::DigestMismatch { .. }));
        assert!(!store.has_blob(&Digest::of(b"content")));
        assert!(!store.has_blob(&wrong));
        assert!(tmp_is_empty(&store));
        assert_eq!(
            fs::read_dir(store.root().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn verified_reads_catch_corruption() {
        let (_dir, store) = store();
        let data = b"0123456789".repeat(1000);
        let d = store.put_blob_bytes(&data).unwrap();
        let path = store.blob_file(&d);

        // Flip one byte on disk.
        let mut bytes = fs::read(&path).unwrap();
        bytes[5000] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let err = store.read_blob(&d).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { digest, .. } if digest == d),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("corrupt"),
            "{msg}"
        );

        // Streaming readers see it as InvalidData at EOF, and keep failing after.
        let mut r = store.open_blob(&d).unwrap();
        let mut sink = Vec::new();
        let err = r.read_to_end(&mut sink).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(r.read(&mut [0u8; 8]).is_err());

        // A consumer that stops early catches it with finish().
        let mut r = store.open_blob(&d).unwrap();
        r.read_exact(&mut [0u8; 10]).unwrap();
        assert!(matches!(r.finish(), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            store.verify_blob(&d),
            Err(StoreError::Corrupt { .. })
        ));

        // Same size, so only hashing tells: a new put of the right content heals it.
        store.put_blob_bytes(&data).unwrap();
        assert_eq!(store.verify_blob(&d).unwrap(), data.len() as u64);

        // Truncated: detected too; a new put of the right content heals it.
        fs::write(&path, &data[..100]).unwrap();
        assert!(matches!(
            store.read_blob(&d),
            Err(StoreError::Corrupt { len: 100, .. })
        ));
        store.put_blob(&mut Cursor::new(&data), Some(&d)).unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), data);
        assert_eq!(
            store.open_blob(&d).unwrap().finish().unwrap(),
            data.len() as u64
        );
    }

    #[test]
    fn missing_blob() {
        let (_dir, store) = store();
        let d = Digest::of(b"nope");
        assert!(matches!(
            store.open_blob(&d),
            Err(StoreError::MissingBlob { .. })
        ));
        assert!(matches!(
            store.read_blob(&d),
            Err(StoreError::MissingBlob { .. })
        ));
        assert_eq!(store.blob_size(&d), None);
    }

    #[test]
    fn failing_source_stores_nothing() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "peer went away",
                    ));
                }
                self.0 -= 1;
                buf[0] = b'x';
                Ok(1)
            }
        }
        let (_dir, store) = store();
        let err = store.put_blob(&mut Failing(3), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(tmp_is_empty(&store));
    }

    #[test]
    fn concurrent_puts_of_one_blob() {
        let (_dir, store) = store();
        let data = b"same content from everyone".repeat(50_000);
        let want = Digest::of(&data);
        std::thread::scope(|s| {
            for i in 0..8 {
                let store = store.clone();
                let data = &data;
                s.spawn(move || {
                    let got = if i % 2 == 0 {
                        store
                            .put_blob(&mut Cursor::new(data), Some(&want))
                            .unwrap()
                            .0
                    } else {
                        let mut w = store.blob_writer().unwrap();
                        for chunk in data.chunks(7777) {
                            w.write_all(chunk).unwrap();
                        }
                        w.finish().unwrap().0
                    };
                    assert_eq!(got, want);
                });
            }
        });
        assert_eq!(store.read_blob(&want).unwrap(), data);
        assert!(tmp_is_empty(&store));
    }
}
