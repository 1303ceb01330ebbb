//! Digest-verifying copies: from a reader into memory, into a writer, or into the store.
//!
//! Each copy hashes what passes through and checks it against the digest and size the caller
//! expects; nothing is trusted because of where it came from.

use super::{MAX_JSON_SIZE, OciError, Result};
use crate::Blobs;
use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::{self, Read, Write};

/// A reader that hashes and counts what is read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
    /// Set when the inner reader failed, so a store's complaint can be told from ours.
    inner_failed: bool,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
            inner_failed: false,
        }
    }

    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads to the end, so that [`finish`](Self::finish) covers the whole stream.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_bytes(self.hasher.finalize().into()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.len += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.inner_failed = true;
                }
                Err(e)
            }
        }
    }
}

/// A reader that copies everything read through it into `sink` (for example a decompressor
/// that computes a diffID while the compressed bytes go to the store).
pub(crate) struct TeeReader<R, W> {
    pub inner: R,
    pub sink: W,
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// "N" or, when reading stopped at the limit, "more than N-1".
fn found_size(len: u64, expected: u64) -> String {
    if len > expected {
        format!("more than {expected}")
    } else {
        len.to_string()
    }
}

/// Reads a JSON document of known digest (and size, when the caller has a descriptor) into
/// memory and verifies it. Documents over [`MAX_JSON_SIZE`] are refused.
pub(crate) fn read_verified(
    reader: &mut dyn Read,
    expected: &Digest,
    size: Option<u64>,
    what: &str,
) -> Result<Vec<u8>> {
    if let Some(size) = size
        && size > MAX_JSON_SIZE
    {
        return Err(OciError::Unsupported(format!(
            "{what}: a {size}-byte JSON document is over the limit of {MAX_JSON_SIZE} bytes"
        )));
    }
    let bytes = read_capped(reader, size.unwrap_or(MAX_JSON_SIZE), what)?;
    if let Some(size) = size
        && bytes.len() as u64 != size
    {
        return Err(OciError::SizeMismatch {
            what: what.to_owned(),
            expected: size,
            actual: found_size(bytes.len() as u64, size),
        });
    }
    let actual = Digest::of(&bytes);
    if actual != *expected {
        return Err(OciError::DigestMismatch {
            what: what.to_owned(),
            expected: *expected,
            actual,
        });
    }
    Ok(bytes)
}

/// Reads at most `limit` bytes (and no more than [`MAX_JSON_SIZE`]); one byte more is read to
/// tell "exactly the limit" from "too long" (callers with an expected size compare lengths).
pub(crate) fn read_capped(reader: &mut dyn Read, limit: u64, what: &str) -> Result<Vec<u8>> {
    let limit = limit.min(MAX_JSON_SIZE);
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| OciError::io(format!("reading {what}"), e))?;
    if bytes.len() as u64 > MAX_JSON_SIZE {
        return Err(OciError::Unsupported(format!(
            "{what} is over the limit of {MAX_JSON_SIZE} bytes for a JSON document"
        )));
    }
    Ok(bytes)
}

/// Streams a blob into the store, which keeps it only if it has the `expected` digest; when
/// `size` is given the content must have that length too (and no more than `size + 1` bytes
/// are read, so a lying descriptor cannot make us read forever). Returns the size.
///
/// A blob the store already holds is not read again: content-addressing makes the copy
/// pointless (its size is still checked).
pub(crate) fn put_verified(
    blobs: &dyn Blobs,
    reader: &mut dyn Read,
    expected: &Digest,
    size: Option<u64>,
    what: &str,
) -> Result<u64> {
    if let Some(path) = blobs.blob_path(expected) {
        let have = fs::metadata(&path)
            .map_err(|e| OciError::io(format!("reading the store's {}", path.display()), e))?
            .len();
        return match size {
            Some(size) if size != have => Err(OciError::SizeMismatch {
                what: what.to_owned(),
                expected: size,
                actual: have.to_string(),
            }),
            _ => Ok(have),
        };
    }
    let limit = size.map_or(u64::MAX, |s| s.saturating_add(1));
    let mut hashing = HashingReader::new(reader.take(limit));
    let result = blobs.put_blob(&mut hashing, Some(expected));
    match result {
        Ok((_, len)) => match size {
            Some(size) if size != len => Err(OciError::SizeMismatch {
                what: what.to_owned(),
                expected: size,
                actual: found_size(len, size),
            }),
            _ => Ok(len),
        },
        Err(e) if e.kind() == io::ErrorKind::InvalidData && !hashing.inner_failed => {
            // The store refused the content. Finish reading it to say what it really is.
            hashing
                .drain()
                .map_err(|e| OciError::io(format!("reading {what}"), e))?;
            let (actual, len) = hashing.finish();
            match size {
                Some(size) if size != len => Err(OciError::SizeMismatch {
                    what: what.to_owned(),
                    expected: size,
                    actual: found_size(len, size),
                }),
                _ => Err(OciError::DigestMismatch {
                    what: what.to_owned(),
                    expected: *expected,
                    actual,
                }),
            }
        }
        Err(e) => Err(OciError::io(format!("copying {what} into the store"), e)),
    }
}

/// Copies exactly `size` bytes from `reader` to `writer`, checking that the reader has exactly
/// that many and that they have the `expected` digest. On a mismatch the writer has already
/// received the bytes: callers write to temporary files that are then abandoned.
pub(crate) fn copy_verified(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    expected: &Digest,
    size: u64,
    what: &str,
) -> Result<()> {
    let mut hashing = HashingReader::new(reader.take(size));
    let copied =
        io::copy(&mut hashing, writer).map_err(|e| OciError::io(format!("copying {what}"), e))?;
    let mut probe = [0u8; 1];
    let longer = copied == size
        && hashing
            .inner_mut()
            .get_mut()
            .read(&mut probe)
            .map_err(|e| OciError::io(format!("reading {what}"), e))?
            > 0;
    if copied != size || longer {
        return Err(OciError::SizeMismatch {
            what: what.to_owned(),
            expected: size,
            actual: found_size(if longer { size + 1 } else { copied }, size),
        });
    }
    let (actual, _) = hashing.finish();
    if actual != *expected {
        return Err(OciError::DigestMismatch {
            what: what.to_owned(),
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

/// Hashes and counts a whole stream.
pub(crate) fn digest_stream(reader: &mut dyn Read, what: &str) -> Result<(Digest, u64)> {
    let mut hashing = HashingReader::new(reader);
    hashing
        .drain()
        .map_err(|e| OciError::io(format!("reading {what}"), e))?;
    Ok(hashing.finish())
}
