//! Cache export and import (`--cache-to`, `--cache-from`): step results and cache-mount
//! contents copied between the store and an exported cache, so a fresh machine builds with a
//! warm cache.
//!
//! An exported cache is blobs by digest plus one index ([`CacheIndex`]): step keys -> the
//! store's step records and the blobs they need, cache ids -> a manifest of the cache mount's
//! files ([`mounts`]). All I/O on it goes through [`CacheTransport`]; [`LocalDir`] is the
//! local-directory transport.
//!
//! - Import is lazy: only records for the keys asked for (the plan's steps the store lacks),
//!   only the blobs those records need, each verified against its digest while it is copied
//!   into the store (a damaged blob is a warning and a miss, never stored); the record is
//!   written after its blobs, so the executor's usual lookup then hits. A cache mount is
//!   imported only when the store has none with that id (the local one is newer).
//! - Export is incremental: a blob the cache has is not written again, the index is written
//!   last (atomically), then blobs it no longer references are removed, so the cache holds
//!   exactly what its index needs.

pub mod index;
pub mod mounts;
mod sync;
mod transport;

pub use index::{BlobRef, CacheIndex, INDEX_VERSION, MountEntry, StepEntry};
pub use sync::{
    ExportReport, ExportStep, ImportReport, Sources, export, import_mounts, import_steps,
};
pub use transport::{CacheTransport, LocalDir};

use crate::Digest;
use crate::store::StoreError;
use std::io;
use std::path::Path;

/// What import and export count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blobs copied (into the cache on export, into the store on import) and their bytes.
    pub blobs_written: usize,
    pub bytes_written: u64,
    /// Blobs the destination already had.
    pub blobs_present: usize,
    /// Blobs an export removed because the new index no longer references them.
    pub blobs_removed: usize,
    /// Cache-mount entries left out (sockets, fifos, devices).
    pub skipped: usize,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.blobs_written += o.blobs_written;
        self.bytes_written += o.bytes_written;
        self.blobs_present += o.blobs_present;
        self.blobs_removed += o.blobs_removed;
        self.skipped += o.skipped;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The exported cache could not be read or written.
    #[error("{cache}: {error}")]
    Transport { cache: String, error: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Damaged or unusable content.
    #[error("{0}")]
    Invalid(String),
}

impl ExportError {
    fn at(t: &dyn CacheTransport) -> impl FnOnce(io::Error) -> ExportError + '_ {
        move |error| ExportError::Transport {
            cache: t.describe(),
            error,
        }
    }

    fn file(path: &Path, error: io::Error) -> ExportError {
        ExportError::Invalid(format!("{}: {error}", path.display()))
    }

    fn corrupt(t: &dyn CacheTransport, blob: &BlobRef, found: Digest) -> ExportError {
        ExportError::Invalid(format!(
            "{}: blob {} is corrupt (its content hashes to {found}, or is not {} bytes long); \
             it was not used",
            t.describe(),
            blob.digest,
            blob.size
        ))
    }
}
