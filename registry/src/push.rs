//! Pushing an image from the store: each blob is first asked for (HEAD) and skipped when the
//! repository has it, then mounted from another repository of the same registry the store
//! knows holds it, else uploaded; several blobs at once. The manifest goes last, byte for
//! byte as stored, so the registry's digest is the local one.

use crate::client::Registry;
use crate::error::{RegistryError, Result};
use crate::record;
use crate::reference::Reference;
use futures_util::StreamExt;
use imgbuild_cache::Digest;
use imgbuild_cache::oci::{Manifest, media_type};
use imgbuild_cache::store::Store;

/// What happened to one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository had it.
    Skipped,
    /// Mounted from another repository of the registry.
    Mounted,
    /// Uploaded: this many bytes.
    Uploaded(u64),
}

/// The outcome of a push.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub blobs_uploaded: usize,
    pub bytes_uploaded: u64,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
}

impl Registry {
    /// Pushes one stored blob to `r`'s repository (HEAD, mount, upload).
    pub fn push_blob(
        &self,
        store: &Store,
        r: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobPush> {
        let out = self.block_on(self.push_blob_async(store, r, digest, size))?;
        record::update(store, |rec| rec.add_source(*digest, &r.name()));
        Ok(out)
    }

    /// Uploads `size` bytes of `reader` as the blob `digest` to `r`'s repository, without
    /// asking first whether it is there (for callers that just did: the cache transport). The
    /// registry checks the digest and keeps nothing on a mismatch. Returns the bytes sent.
    pub fn upload_blob_from(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn std::io::Read + Send),
    ) -> Result<u64> {
        self.block_on(self.upload_from_async(r, digest, size, reader))
    }

    async fn push_blob_async(
        &self,
        store: &Store,
        r: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobPush> {
        // Push credentials first: a registry that refuses the push should say so, not a HEAD.
        self.auth(r, true).await?;
        if self.blob_exists_async(r, digest).await?.is_some() {
            return Ok(BlobPush::Skipped);
        }
        let name = r.name();
        let sources: Vec<String> = record::load(store)
            .blobs
            .get(digest)
            .map(|s| s.iter().filter(|n| **n != name).cloned().collect())
            .unwrap_or_default();
        for src in sources {
            let Ok(from) = Reference::parse(&src) else {
                continue;
            };
            if from.registry != r.registry {
                continue;
            }
            if self.mount_blob_async(r, &from, digest).await
                && self.blob_exists_async(r, digest).await?.is_some()
            {
                return Ok(BlobPush::Mounted);
            }
        }
        let sent = self.upload_blob_async(store, r, digest, size).await?;
        Ok(BlobPush::Uploaded(sent))
    }

    /// Pushes the stored image `manifest` to `dest` (its tag, or its digest when it has only
    /// one).
    pub fn push_image(&self, store: &Store, manifest: &Digest, dest: &Reference) -> Result<Pushed> {
        let bytes = store.read_blob(manifest)?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
            registry: dest.registry.clone(),
            what: format!("stored manifest {manifest}"),
            message: e.to_string(),
        })?;
        let mt = if m.media_type.is_empty() {
            media_type::OCI_MANIFEST.to_owned()
        } else {
            m.media_type.clone()
        };
        let mut blobs: Vec<(Digest, u64)> = Vec::new();
        for d in std::iter::once(&m.config).chain(m.layers.iter()) {
            if !blobs.iter().any(|(b, _)| *b == d.digest) {
                blobs.push((d.digest, d.size));
            }
        }
        let results: Vec<(Digest, Result<BlobPush>)> = self.block_on(async {
            futures_util::stream::iter(blobs.iter().map(|(d, size)| async move {
                (*d, self.push_blob_async(store, dest, d, *size).await)
            }))
            .buffer_unordered(self.options.parallel.max(1))
            .collect()
            .await
        });
        let mut out = Pushed {
            reference: dest.clone(),
            manifest_digest: *manifest,
            blobs_uploaded: 0,
            bytes_uploaded: 0,
            blobs_skipped: 0,
            blobs_mounted: 0,
        };
        let mut first_err = None;
        let mut done = Vec::new();
        for (d, res) in results {
            match res {
                Ok(BlobPush::Skipped) => out.blobs_skipped += 1,
                Ok(BlobPush::Mounted) => out.blobs_mounted += 1,
                Ok(BlobPush::Uploaded(n)) => {
                    out.blobs_uploaded += 1;
                    out.bytes_uploaded += n;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            }
            done.push(d);
        }
        // Blobs that reached the registry are recorded even when another failed.
        let name = dest.name();
        record::update(store, |rec| {
            for d in &done {
                rec.add_source(*d, &name);
            }
        });
        if let Some(e) = first_err {
            return Err(e);
        }
        self.put_manifest(dest, &bytes, &mt)?;
        Ok(out)
    }
}
