//! OCI and Docker image formats: types, export to image layouts and archives, import of bases.
//!
//! ```text
//! types.rs    serde types (ImageConfig, Manifest, Index, Descriptor, ...), media types,
//!             canonical JSON
//! export.rs   write_oci_layout, write_oci_archive, write_docker_archive (+ LayerOpener)
//! import.rs   import_oci_layout, import_oci_archive, import_docker_archive
//! tarfile.rs  deterministic tar writer; random-access index over a tar file (reading)
//! stream.rs   digest-verifying copies between readers, writers and the store
//! ```
//!
//! Everything goes through the [`Blobs`](crate::Blobs) trait, so this module does not know how
//! the store lays blobs out.
//!
//! Invariants:
//! - **Output bytes depend only on the image**: JSON is canonical ([`to_canonical_json`]); tar
//!   entries are sorted, with mode 0644/0755, uid/gid 0, empty owner names and mtime 0.
//! - **Outputs appear whole or not at all**: a layout or archive is written to
//!   `<dest>.tmp-<pid>-<n>` beside its destination and renamed into place (an existing layout is
//!   swapped out atomically with `RENAME_EXCHANGE` where the filesystem has it, then removed).
//! - **Everything read is verified**: every blob copied into or out of the store is hashed on the
//!   way and checked against its digest and size; an output whose content does not check out is
//!   never renamed into place. (Hard-linked blobs are not read, so not re-hashed: the store
//!   verified them when they went in.)
//! - **Streaming**: layers are never held in memory; only JSON documents are, and those are
//!   capped at [`MAX_JSON_SIZE`].
//! - **Imports are safe to abandon**: blobs are content-addressed and each is verified before it
//!   gets its name, so an import that fails half-way leaves only valid, unreferenced blobs
//!   (prune removes them); no image record is written by this module.

mod export;
mod import;
mod stream;
mod tarfile;
mod types;

#[cfg(test)]
mod tests;

pub use export::{
    BuiltinDecompressor, ImageRef, LayerOpener, write_docker_archive, write_oci_archive,
    write_oci_layout,
};
pub use import::{ImportedImage, import_docker_archive, import_oci_archive, import_oci_layout};
pub use types::{
    CanonicalJson, Compression, Descriptor, DockerManifestEntry, Healthcheck, History, ImageConfig,
    Index, LayoutHeader, Manifest, Platform, RootFs, RunConfig, annotation, canonical_digest,
    media_type, to_canonical_json,
};

use crate::digest::Digest;
use std::io;
use std::path::PathBuf;

/// The largest JSON document (manifest, index, config, manifest.json) this module reads.
/// Larger ones are refused rather than loaded into memory.
pub const MAX_JSON_SIZE: u64 = 16 << 20;

/// The `imageLayoutVersion` we write and accept.
pub const LAYOUT_VERSION: &str = "1.0.0";

pub type Result<T> = std::result::Result<T, OciError>;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} is not valid: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: content does not match its digest: expected {expected}, found {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: content is {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        /// The size found, or a lower bound of it ("more than N") when reading stopped early.
        actual: String,
    },
    #[error("{what}: blob {digest} is missing from {location}")]
    MissingBlob {
        what: String,
        digest: Digest,
        location: String,
    },
    #[error("{location}: no image matches {reference:?} (it has: {available})")]
    NoSuchReference {
        location: String,
        reference: String,
        available: String,
    },
    #[error("{location} holds several images; name one by tag or digest (it has: {available})")]
    Ambiguous { location: String, available: String },
    #[error("{what}: no manifest for {wanted} (it has: {available})")]
    NoPlatform {
        what: String,
        /// `os/architecture[/variant]`.
        wanted: String,
        available: String,
    },
    #[error(
        "{location}: entry {path:?} has an unsafe path (absolute, or with `..`); refusing the archive"
    )]
    UnsafePath { location: String, path: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{path} exists and is not an OCI image layout; refusing to replace it")]
    RefuseReplace { path: PathBuf },
}

impl OciError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> OciError {
        OciError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> OciError {
        OciError::Json {
            what: what.into(),
            source,
        }
    }
}
