//! `--cache-to type=registry,ref=REF` and `--cache-from type=registry,ref=REF`: an exported
//! cache kept in a registry repository.
//!
//! Blobs are the repository's blobs; the cache index is the config blob of an OCI manifest
//! tagged `REF`, whose layers list every blob the index references. The registry then keeps
//! exactly those (its own garbage collection follows manifests), so there is nothing for an
//! export to delete, and the repository never grows without bound when old manifests are
//! collected.

use imgbuild_cache::Digest;
use imgbuild_cache::export::{CacheIndex, CacheTransport};
use imgbuild_cache::oci::{Descriptor, Manifest, to_canonical_json};
use imgbuild_cache::store::Store;
use imgbuild_registry::{Reference, Registry, RegistryError};
use std::io::{self, Read, Seek, SeekFrom};

/// The config media type of a cache manifest: our index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.imgbuild.cache.index.v1+json";
/// The media type the manifest gives the blobs it keeps (layers, packs, cache-mount files).
pub const BLOB_MEDIA_TYPE: &str = "application/vnd.imgbuild.cache.blob.v1";

pub struct RegistryCache {
    registry: Registry,
    reference: Reference,
    /// Downloads land in the store's temp dir (same file system, removed when dropped).
    store: Store,
}

impl RegistryCache {
    pub fn new(reference: &str, store: &Store) -> Result<RegistryCache, String> {
        let reference = Reference::parse(reference).map_err(|e| format!("ref={reference}: {e}"))?;
        if reference.digest.is_some() {
            return Err(format!(
                "ref={reference}: a cache reference is a tag (it is rewritten by every export)"
            ));
        }
        let registry = Registry::new(super::inputs::configured_registry_options())
            .map_err(|e| e.to_string())?;
        Ok(RegistryCache {
            registry,
            reference,
            store: store.clone(),
        })
    }
}

fn io_err(e: RegistryError) -> io::Error {
    match e {
        RegistryError::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        e => io::Error::other(e.to_string()),
    }
}

impl CacheTransport for RegistryCache {
    fn describe(&self) -> String {
        format!("registry cache {}", self.reference)
    }

    fn has_blob(&self, digest: &Digest) -> io::Result<Option<u64>> {
        self.registry
            .blob_exists(&self.reference, digest)
            .map_err(io_err)
    }

    fn get_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + Send + '_>> {
        let size = self.has_blob(digest)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no blob {digest}", self.describe()),
            )
        })?;
        let mut tmp = self.store.temp_file().map_err(io::Error::other)?;
        self.registry
            .pull_blob_to(&self.reference, digest, size, tmp.as_file_mut())
            .map_err(io_err)?;
        tmp.as_file_mut().seek(SeekFrom::Start(0))?;
        Ok(Box::new(Downloaded(tmp)))
    }

    /// Export asked `has_blob` just before, so this uploads at once, streaming `reader`.
    fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn Read + Send),
    ) -> io::Result<()> {
        self.registry
            .upload_blob_from(&self.reference, digest, size, reader)
            .map(|_| ())
            .map_err(io_err)
    }

    fn get_index(&self) -> io::Result<Option<CacheIndex>> {
        let fetched = match self.registry.get_manifest(&self.reference) {
            Ok(f) => f,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let manifest: Manifest = serde_json::from_slice(&fetched.bytes).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("cache manifest: {e}"))
        })?;
        if manifest.config.media_type != INDEX_MEDIA_TYPE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not an imgbuild cache (its config is {:?})",
                    self.reference, manifest.config.media_type
                ),
            ));
        }
        let mut bytes = Vec::new();
        self.registry
            .pull_blob_to(
                &self.reference,
                &manifest.config.digest,
                manifest.config.size,
                &mut bytes,
            )
            .map_err(io_err)?;
        CacheIndex::from_json(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn put_index(&self, index: &CacheIndex) -> io::Result<()> {
        let json = index.to_json();
        let digest = Digest::of(&json);
        if self.has_blob(&digest)?.is_none() {
            self.put_blob(&digest, json.len() as u64, &mut json.as_slice())?;
        }
        let layers = index
            .referenced()
            .into_iter()
            .map(|(d, size)| Descriptor::new(BLOB_MEDIA_TYPE, d, size))
            .collect();
        let manifest = Manifest::oci(
            Descriptor::new(INDEX_MEDIA_TYPE, digest, json.len() as u64),
            layers,
        );
        self.registry
            .put_manifest(
                &self.reference,
                &to_canonical_json(&manifest),
                imgbuild_cache::oci::media_type::OCI_MANIFEST,
            )
            .map(|_| ())
            .map_err(io_err)
    }

    /// The manifest keeps what the index references; the registry collects the rest.
    fn list_blobs(&self) -> io::Result<Vec<Digest>> {
        Ok(Vec::new())
    }

    fn delete_blob(&self, _digest: &Digest) -> io::Result<()> {
        Ok(())
    }
}

/// A downloaded blob, read from its temp file (removed when the reader is dropped).
struct Downloaded(imgbuild_cache::store::TempFile);

impl Read for Downloaded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.as_file_mut().read(buf)
    }
}
