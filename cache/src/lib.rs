//! The on-disk content store, and the formats of what it holds.
//!
//! Architecture invariants:
//! - only this crate writes under the store root;
//! - every write goes to a temporary name in the store's `tmp/` and is renamed into place, so a
//!   crash never leaves a half-written entry under a real name;
//! - readers verify digests: a blob whose content does not match its name is an error, never
//!   silently used.

pub mod context;
pub mod digest;
pub mod export;
pub mod layer;
pub mod oci;
pub mod store;

pub use digest::{Digest, DigestError, DigestWriter};

use std::io::{self, Read};
use std::path::PathBuf;

/// Where blobs come from and go to. The [`store::Store`] implements it; the OCI import and
/// export code is written against it so it can be tested on a temporary store.
pub trait Blobs {
    /// The path of a blob the store holds, or None.
    fn blob_path(&self, digest: &Digest) -> Option<PathBuf>;

    /// Streams `reader` into the store. When `expected` is given, the content must have that
    /// digest (else an `InvalidData` error and nothing is stored). Returns digest and size.
    fn put_blob(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> io::Result<(Digest, u64)>;
}
