//! Pulling an image into the store: the manifest (an index resolved to linux/amd64), then the
//! config and the layers the store lacks, several at once, each verified as it streams in; the
//! manifest is stored last, byte for byte as served, so its digest is the registry's and a
//! manifest in the store always has its blobs beside it.

use crate::client::Registry;
use crate::error::{RegistryError, Result};
use crate::record;
use crate::reference::Reference;
use futures_util::StreamExt;
use imgbuild_cache::Digest;
use imgbuild_cache::oci::{
    Descriptor, ImageConfig, Index, MAX_JSON_SIZE, Manifest, Platform, media_type,
};
use imgbuild_cache::store::{ImageMeta, Store};
use std::io::Write;

/// An image now in the store.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub reference: Reference,
    /// The image manifest (for an index, the linux/amd64 one).
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
    /// Blobs (config and layers) downloaded, and their bytes.
    pub blobs_downloaded: usize,
    pub bytes_downloaded: u64,
    /// Blobs the store already had.
    pub blobs_present: usize,
}

impl Registry {
    /// Resolves `r` to its image manifest (an index to its linux/amd64 entry) without
    /// downloading any blob: the manifest's digest, bytes and media type.
    pub fn resolve_image(&self, r: &Reference) -> Result<crate::FetchedManifest> {
        self.block_on(self.resolve_image_async(r))
    }

    async fn resolve_image_async(&self, r: &Reference) -> Result<crate::FetchedManifest> {
        let top = self.get_manifest_async(r).await?;
        if !media_type::is_index(&top.media_type) {
            return Ok(top);
        }
        let what = format!("index {r}");
        let index: Index =
            serde_json::from_slice(&top.bytes).map_err(|e| RegistryError::Invalid {
                registry: r.registry.clone(),
                what: what.clone(),
                message: e.to_string(),
            })?;
        let wanted = Platform::linux_amd64();
        let entry = index
            .manifests
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| p.satisfies(&wanted)))
            .min_by_key(|d| d.platform.as_ref().is_some_and(|p| !p.variant.is_empty()))
            .ok_or_else(|| {
                let have: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                    .collect();
                RegistryError::NotFound {
                    registry: r.registry.clone(),
                    what: format!(
                        "a linux/amd64 image in {what} (it has: {})",
                        if have.is_empty() {
                            "none".into()
                        } else {
                            have.join(", ")
                        }
                    ),
                }
            })?;
        let m = self
            .get_manifest_async(&r.with_digest(entry.digest))
            .await?;
        if !media_type::is_manifest(&m.media_type) {
            return Err(RegistryError::UnknownMediaType {
                registry: r.registry.clone(),
                what: format!("{} (linux/amd64 entry of {what})", entry.digest),
                media_type: m.media_type,
            });
        }
        Ok(m)
    }

    /// Pulls `r` into the store and, for a tag reference, tags it there as
    /// `registry/repository:tag`. Blobs the store has are not downloaded.
    pub fn pull_image(&self, store: &Store, r: &Reference) -> Result<Pulled> {
        self.block_on(self.pull_image_async(store, r))
    }

    async fn pull_image_async(&self, store: &Store, r: &Reference) -> Result<Pulled> {
        let fetched = self.resolve_image_async(r).await?;
        let what = format!("manifest {} of {r}", fetched.digest);
        let invalid = |message: String| RegistryError::Invalid {
            registry: r.registry.clone(),
            what: what.clone(),
            message,
        };
        let manifest: Manifest =
            serde_json::from_slice(&fetched.bytes).map_err(|e| invalid(e.to_string()))?;
        if !manifest.config.media_type.is_empty()
            && !media_type::is_config(&manifest.config.media_type)
        {
            return Err(invalid(format!(
                "not a container image: its config has media type {:?}",
                manifest.config.media_type
            )));
        }
        if manifest.config.size > MAX_JSON_SIZE {
            return Err(invalid(format!(
                "its config is larger than {MAX_JSON_SIZE} bytes"
            )));
        }
        // The repository of the image (digest form, so an index's entry is fetched by digest).
        let repo = r.with_digest(fetched.digest);
        let mut wanted: Vec<&Descriptor> = Vec::new();
        for d in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
            if !wanted.iter().any(|w| w.digest == d.digest) {
                wanted.push(d);
            }
        }
        let missing: Vec<&Descriptor> = wanted
            .iter()
            .copied()
            .filter(|d| store.blob_size(&d.digest) != Some(d.size))
            .collect();
        let present = wanted.len() - missing.len();
        let results: Vec<Result<u64>> = futures_util::stream::iter(missing.iter().map(|d| {
            let repo = &repo;
            async move { self.pull_blob_async(store, repo, &d.digest, d.size).await }
        }))
        .buffer_unordered(self.options.parallel.max(1))
        .collect()
        .await;
        let mut bytes = 0;
        for res in results {
            bytes += res?;
        }
        let config_bytes = store.read_blob(&manifest.config.digest)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("its config {}: {e}", manifest.config.digest)))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "{} layers but its config lists {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut w = store.blob_writer()?;
        w.write_all(&fetched.bytes).map_err(|e| RegistryError::Io {
            context: format!("storing {what}"),
            source: e,
        })?;
        w.finish_expecting(&fetched.digest)?;

        if r.digest.is_none() {
            let meta = ImageMeta {
                config: manifest.config.digest,
                platform: config.platform().to_string(),
                created: config.created.clone().unwrap_or_default(),
            };
            store.tag(&r.tagged_name(), &fetched.digest, meta)?;
        }
        let name = r.name();
        record::update(store, |rec| {
            if r.digest.is_none() {
                rec.pulled.insert(r.tagged_name(), fetched.digest);
            }
            for d in &wanted {
                rec.add_source(d.digest, &name);
            }
        });
        Ok(Pulled {
            reference: r.clone(),
            manifest_digest: fetched.digest,
            manifest_size: fetched.bytes.len() as u64,
            manifest_media_type: fetched.media_type,
            config_digest: manifest.config.digest,
            config,
            layers: manifest.layers.clone(),
            blobs_downloaded: missing.len(),
            bytes_downloaded: bytes,
            blobs_present: present,
        })
    }
}
