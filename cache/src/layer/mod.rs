//! The layer format: OCI layers (tar streams, optionally compressed) written byte-for-byte
//! reproducibly, read back from directory trees, and applied safely onto directories.
//!
//! - [`LayerWriter`] turns [`Entry`] values, added in any order, into a layer whose bytes depend
//!   only on the entries and on [`LayerOptions`] (see [`writer`] for every header choice).
//! - [`entries_from_dir`] reads a directory tree (a build context, or the upper dir of an overlay
//!   mount after a `RUN`) into entries, including hard links, xattrs and overlay whiteouts.
//! - [`extract()`] applies an uncompressed layer onto a directory, containing hostile archives
//!   inside the destination (see [`extract`](mod@extract) for the rules); [`decompress()`] finds
//!   the compression of an archive by its magic bytes.
//!
//! Architecture invariants:
//! - the writer reads nothing from the host but the content files it is told to stream: no
//!   clock, user database, umask or readdir order enters a layer;
//! - memory stays flat whatever the layer size: file content is streamed in fixed-size chunks,
//!   both on write and on extract (only per-entry metadata is held);
//! - extraction never creates, changes or removes anything outside the destination: every path
//!   is resolved with the destination as its root (chroot semantics), one component at a time
//!   or by the kernel (`openat2(RESOLVE_IN_ROOT)`), and the final component is never followed.

pub mod decompress;
pub mod entry;
pub mod extract;
mod header;
pub mod owner;
mod resolve;
pub mod walk;
pub mod writer;

#[cfg(test)]
mod tests;

pub use decompress::{CompressionFormat, decompress, decompress_detect, detect_compression};
pub use entry::{
    Content, Entry, EntryKind, OPAQUE_MARKER, WHITEOUT_PREFIX, compare_layer_paths, sort_entries,
};
pub use extract::{
    ExtractMode, ExtractOptions, ExtractReport, Ownership, SkipReason, Skipped, XattrFailure,
    extract,
};
pub use owner::{OWNER_XATTR, owner_of};
pub use walk::{DirOptions, HardlinkTracker, Owner, entries_from_dir, entries_from_path};
pub use writer::{
    Compression, LayerInfo, LayerOptions, LayerWriter, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP,
    MEDIA_TYPE_TAR_ZSTD, recompress, write_layer,
};

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong writing, reading or extracting a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A file-system operation on a named path failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the layer stream (or compressing it) failed.
    #[error("writing the layer stream: {0}")]
    Write(#[source] io::Error),
    /// Reading the tar stream failed or it is malformed.
    #[error("reading the archive: {0}")]
    Archive(#[source] io::Error),
    /// An entry's path (or hard-link target) is not a clean relative layer path.
    #[error("invalid layer path {:?}: {reason}", path.display())]
    InvalidPath { path: PathBuf, reason: &'static str },
    /// An xattr name that a tar PAX record cannot carry.
    #[error("invalid xattr name {name:?} on {}: names must be non-empty and contain no '=' or NUL", path.display())]
    InvalidXattr { path: PathBuf, name: String },
    /// A hard link whose target is missing from the layer or cannot be linked to.
    #[error("hard link {} -> {}: {reason}", path.display(), target.display())]
    Hardlink {
        path: PathBuf,
        target: PathBuf,
        reason: &'static str,
    },
    /// A content file's size changed between its header and the end of its data.
    #[error("{} changed while it was written into the layer (expected {expected} bytes)", path.display())]
    FileChanged { path: PathBuf, expected: u64 },
    /// A value too large for any tar encoding we write (device numbers).
    #[error("{}: {what} does not fit in a tar header", path.display())]
    TooLarge { path: PathBuf, what: &'static str },
    /// An overlay upper dir uses a feature whose data lives outside the upper dir.
    #[error(
        "{}: the overlay upper dir uses {xattr}; mount the overlay with metacopy=off and redirect_dir=off so the upper dir holds complete files and directories",
        path.display()
    )]
    UnsupportedOverlay { path: PathBuf, xattr: String },
    /// A device node in an archive could not be created and the options make that an error.
    #[error("{}: device node not created (needs allow_devices and root)", path.display())]
    DeviceSkipped { path: PathBuf },
}

/// The result type of this module.
pub type Result<T, E = LayerError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LayerError {
    let path = path.into();
    move |source| LayerError::Io { path, source }
}
