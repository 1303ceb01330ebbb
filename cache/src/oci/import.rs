//! Importing base images into the store: from OCI image layouts, OCI archives and Docker
//! archives.
//!
//! Every blob is verified against its digest (and size) before the store gives it its name, so a
//! tampered, truncated or mislabelled blob is an error and never enters the store. An import that
//! fails half-way leaves only valid blobs behind, unreferenced (prune collects them): there is no
//! half-imported image, because this module writes no image records; the caller records the
//! [`ImportedImage`] it returns. Layers go in first and the manifest last, so a manifest in the
//! store always has its blobs beside it.
//!
//! Archives are read in place (a random-access index over the tar file), never unpacked.

use super::export::{Kind, choose_platform, classify};
use super::stream::{TeeReader, put_verified, read_capped, read_verified};
use super::tarfile::ArchiveIndex;
use super::types::{
    Descriptor, DockerManifestEntry, ImageConfig, Index, LayoutHeader, Manifest, Platform,
    annotation, canonical_digest, media_type,
};
use super::{LAYOUT_VERSION, OciError, Result};
use crate::Blobs;
use crate::digest::{Digest, DigestWriter};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// An image now in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The image manifest (for a multi-platform source, the linux/amd64 one).
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    /// OCI or Docker v2 schema 2 manifest media type.
    pub manifest_media_type: String,
    pub manifest: Manifest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// The layers as stored, bottom first (also `manifest.layers`).
    pub layers: Vec<Descriptor>,
}

impl ImportedImage {
    /// The reference the exporters take, to write this image out again.
    pub fn image_ref(&self, tag: Option<String>) -> super::ImageRef {
        super::ImageRef {
            manifest: self.manifest_digest,
            size: self.manifest_size,
            tag,
        }
    }
}

/// Imports an image from the OCI image layout directory `dir`.
///
/// `reference` picks the image in index.json: `sha256:…` matches a descriptor's digest, anything
/// else its `org.opencontainers.image.ref.name` (or `io.containerd.image.name`) annotation; with
/// None the layout must hold exactly one image. An index (multi-platform image) is resolved to
/// its linux/amd64 manifest. Every blob the image needs is copied into `blobs`, verified.
pub fn import_oci_layout(
    dir: &Path,
    reference: Option<&str>,
    blobs: &dyn Blobs,
) -> Result<ImportedImage> {
    import_oci(
        &DirSource {
            root: dir.to_owned(),
        },
        reference,
        blobs,
    )
}

/// Imports an image from an OCI archive (a tar file of an OCI image layout, as
/// `skopeo copy … oci-archive:FILE` and `buildah push … oci-archive:FILE` write). Like
/// [`import_oci_layout`]; the archive is read in place.
pub fn import_oci_archive(
    file: &Path,
    reference: Option<&str>,
    blobs: &dyn Blobs,
) -> Result<ImportedImage> {
    import_oci(&ArchiveIndex::open(file)?, reference, blobs)
}

/// Imports an image from a `docker save` archive (either layout: classic `<id>/layer.tar` with
/// `<hex>.json`, containers/image's `<hex>.tar`, or Docker ≥ 25's `blobs/sha256/…`; all are found
/// through manifest.json).
///
/// `reference` is one of the image's RepoTags (`name:tag`; `name` alone means `name:latest`,
/// and Docker's normalisation applies, so `ubuntu` matches `docker.io/library/ubuntu:latest`), or
/// `sha256:…`, the image ID (config digest). With None the archive must hold one image.
///
/// Layers are stored as they are in the archive: a plain tar as
/// `application/vnd.oci.image.layer.v1.tar` (its digest is its diffID), a gzip tar as
/// `…tar+gzip`. Not recompressing is the simplest correct choice: the bytes Docker wrote are the
/// bytes we keep, and each layer is checked against the config's diffIDs on the way in (gzip
/// layers are decompressed in the same pass, to compute them). zstd layers are refused. The
/// returned manifest is a new OCI manifest for these blobs, stored like any other.
pub fn import_docker_archive(
    file: &Path,
    reference: Option<&str>,
    blobs: &dyn Blobs,
) -> Result<ImportedImage> {
    import_docker(&ArchiveIndex::open(file)?, reference, blobs)
}

/// Where a layout's files come from: a directory or an archive.
trait Source {
    fn location(&self) -> String;
    /// The file at `path` (relative, `/`-separated) and its size, or None if absent.
    fn open(&self, path: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>>;
}

struct DirSource {
    root: PathBuf,
}

impl Source for DirSource {
    fn location(&self) -> String {
        format!("OCI layout {}", self.root.display())
    }

    fn open(&self, path: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        let full = self.root.join(path);
        let err = |e| OciError::io(format!("opening {}", full.display()), e);
        match File::open(&full) {
            Ok(f) => {
                let meta = f.metadata().map_err(err)?;
                if !meta.is_file() {
                    return Err(OciError::Invalid(format!(
                        "{} is not a regular file",
                        full.display()
                    )));
                }
                Ok(Some((
                    Box::new(io::BufReader::with_capacity(1 << 20, f)),
                    meta.len(),
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }
}

impl Source for ArchiveIndex {
    fn location(&self) -> String {
        ArchiveIndex::location(self)
    }

    fn open(&self, path: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        Ok(self
            .open_entry(path)?
            .map(|(r, size)| (Box::new(r) as Box<dyn Read>, size)))
    }
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Opens the blob `desc` names, checking its size up front.
fn open_blob<'a>(src: &'a dyn Source, desc: &Descriptor, what: &str) -> Result<Box<dyn Read + 'a>> {
    let (reader, len) =
        src.open(&blob_path(&desc.digest))?
            .ok_or_else(|| OciError::MissingBlob {
                what: what.to_owned(),
                digest: desc.digest,
                location: src.location(),
            })?;
    if len != desc.size {
        return Err(OciError::SizeMismatch {
            what: what.to_owned(),
            expected: desc.size,
            actual: len.to_string(),
        });
    }
    Ok(reader)
}

/// A JSON blob of the source, verified.
fn read_blob_json(src: &dyn Source, desc: &Descriptor, what: &str) -> Result<Vec<u8>> {
    let mut reader = open_blob(src, desc, what)?;
    read_verified(&mut reader, &desc.digest, Some(desc.size), what)
}

/// A small file of the source that has no digest (oci-layout, index.json, manifest.json).
fn read_plain_json(src: &dyn Source, path: &str, missing: &str) -> Result<Vec<u8>> {
    let (mut reader, _) = src
        .open(path)?
        .ok_or_else(|| OciError::Invalid(format!("{}: {missing}", src.location())))?;
    read_capped(
        &mut reader,
        super::MAX_JSON_SIZE,
        &format!("{path} of {}", src.location()),
    )
}

fn import_oci(
    src: &dyn Source,
    reference: Option<&str>,
    blobs: &dyn Blobs,
) -> Result<ImportedImage> {
    let location = src.location();
    let header = read_plain_json(
        src,
        "oci-layout",
        "not an OCI image layout (it has no oci-layout file)",
    )?;
    let header: LayoutHeader = serde_json::from_slice(&header)
        .map_err(|e| OciError::json(format!("oci-layout of {location}"), e))?;
    if header.image_layout_version != LAYOUT_VERSION {
        return Err(OciError::Unsupported(format!(
            "{location}: image layout version {:?} (only {LAYOUT_VERSION} is known)",
            header.image_layout_version
        )));
    }
    let index = read_plain_json(src, "index.json", "the OCI layout has no index.json")?;
    let index: Index = serde_json::from_slice(&index)
        .map_err(|e| OciError::json(format!("index.json of {location}"), e))?;
    let root = select_in_index(&index, reference, &location)?;

    // Resolve indexes down to the linux/amd64 manifest.
    let mut desc = root.clone();
    let mut resolved = None;
    for _ in 0..=4 {
        let what = format!("manifest {}", desc.digest);
        let bytes = read_blob_json(src, &desc, &what)?;
        match classify(&desc.media_type, &bytes) {
            Kind::Manifest(mt) => {
                resolved = Some((mt, bytes));
                break;
            }
            Kind::Index(_) => {
                let nested: Index =
                    serde_json::from_slice(&bytes).map_err(|e| OciError::json(what.clone(), e))?;
                desc = choose_platform(&nested.manifests, &Platform::linux_amd64(), &what)?.clone();
            }
            Kind::Other(mt) => {
                return Err(OciError::Unsupported(format!(
                    "{what} in {location}: media type {mt:?} is neither an image manifest nor an index"
                )));
            }
        }
    }
    let (manifest_media_type, manifest_bytes) = resolved
        .ok_or_else(|| OciError::Unsupported(format!("{location}: indexes nested too deep")))?;
    let what = format!("manifest {}", desc.digest);
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| OciError::json(what.clone(), e))?;
    if !manifest.config.media_type.is_empty() && !media_type::is_config(&manifest.config.media_type)
    {
        return Err(OciError::Unsupported(format!(
            "{what} in {location} is not a container image: its config has media type {:?}",
            manifest.config.media_type
        )));
    }
    let config_what = format!("config {}", manifest.config.digest);
    let config_bytes = read_blob_json(src, &manifest.config, &config_what)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| OciError::json(config_what.clone(), e))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(OciError::Invalid(format!(
            "{what} in {location} has {} layers but its config lists {} diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }

    for (i, layer) in manifest.layers.iter().enumerate() {
        let layer_what = format!("{what}: layer {i}");
        // A layer the store already has is not read from the source (only its size checked).
        let mut reader: Box<dyn Read> = if blobs.blob_path(&layer.digest).is_some() {
            Box::new(io::empty())
        } else {
            open_blob(src, layer, &layer_what)?
        };
        put_verified(
            blobs,
            &mut reader,
            &layer.digest,
            Some(layer.size),
            &layer_what,
        )?;
    }
    put_verified(
        blobs,
        &mut config_bytes.as_slice(),
        &manifest.config.digest,
        Some(manifest.config.size),
        &config_what,
    )?;
    put_verified(
        blobs,
        &mut manifest_bytes.as_slice(),
        &desc.digest,
        Some(desc.size),
        &what,
    )?;
    Ok(ImportedImage {
        manifest_digest: desc.digest,
        manifest_size: desc.size,
        manifest_media_type,
        config_digest: manifest.config.digest,
        config,
        layers: manifest.layers.clone(),
        manifest,
    })
}

/// The names index.json gives an entry, for messages.
fn entry_name(d: &Descriptor) -> String {
    d.annotations
        .get(annotation::REF_NAME)
        .or_else(|| d.annotations.get(annotation::CONTAINERD_IMAGE_NAME))
        .cloned()
        .unwrap_or_else(|| d.digest.to_string())
}

fn available(names: impl Iterator<Item = String>) -> String {
    let list: Vec<String> = names.collect();
    if list.is_empty() {
        "nothing".to_owned()
    } else {
        list.join(", ")
    }
}

fn select_in_index<'a>(
    index: &'a Index,
    reference: Option<&str>,
    location: &str,
) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = match reference {
        None => index.manifests.iter().collect(),
        Some(r) if r.starts_with("sha256:") => {
            let digest = Digest::parse(r)
                .map_err(|e| OciError::Invalid(format!("{r:?} is not a valid reference: {e}")))?;
            index
                .manifests
                .iter()
                .filter(|d| d.digest == digest)
                .collect()
        }
        Some(r) => index
            .manifests
            .iter()
            .filter(|d| {
                d.annotations.get(annotation::REF_NAME).map(String::as_str) == Some(r)
                    || d.annotations
                        .get(annotation::CONTAINERD_IMAGE_NAME)
                        .map(String::as_str)
                        == Some(r)
            })
            .collect(),
    };
    let list = || available(index.manifests.iter().map(entry_name));
    let Some(first) = candidates.first() else {
        return Err(match reference {
            Some(r) => OciError::NoSuchReference {
                location: location.to_owned(),
                reference: r.to_owned(),
                available: list(),
            },
            None => OciError::Invalid(format!("{location}: index.json lists no images")),
        });
    };
    if candidates.iter().all(|d| d.digest == first.digest) {
        return Ok(first);
    }
    // Several images under one name: per-platform entries of one image, as some tools write.
    // Pick the linux/amd64 one, if exactly one image is that.
    let wanted = Platform::linux_amd64();
    let for_platform: Vec<&Descriptor> = candidates
        .iter()
        .copied()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.satisfies(&wanted)))
        .collect();
    if let Some(chosen) = for_platform.first()
        && for_platform.iter().all(|d| d.digest == chosen.digest)
    {
        return Ok(chosen);
    }
    Err(OciError::Ambiguous {
        location: location.to_owned(),
        available: list(),
    })
}

/// The digest a Docker archive's file name claims: `blobs/sha256/<hex>` or `<hex>.json`.
fn claimed_digest(path: &str) -> Option<Digest> {
    let path = path.trim_start_matches("./");
    if let Some(hex) = path.strip_prefix("blobs/sha256/") {
        return Digest::parse(hex).ok();
    }
    path.strip_suffix(".json")
        .filter(|p| !p.contains('/'))
        .and_then(|hex| Digest::parse(hex).ok())
}

/// Docker's normal form of a reference: `ubuntu` → `docker.io/library/ubuntu:latest`.
fn normalize_reference(r: &str) -> String {
    let last_slash = r.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match r[last_slash..].rfind(':') {
        Some(i) => (&r[..last_slash + i], &r[last_slash + i + 1..]),
        None => (r, "latest"),
    };
    let full = match name.split_once('/') {
        Some((domain, rest))
            if domain == "localhost"
                || domain.contains(['.', ':'])
                || domain.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            if domain == "index.docker.io" {
                format!("docker.io/{rest}")
            } else {
                name.to_owned()
            }
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    format!("{full}:{tag}")
}

fn import_docker(
    src: &ArchiveIndex,
    reference: Option<&str>,
    blobs: &dyn Blobs,
) -> Result<ImportedImage> {
    let location = src.location();
    let list = read_plain_json(
        src,
        "manifest.json",
        "not a Docker archive (it has no manifest.json)",
    )?;
    let list: Vec<DockerManifestEntry> = serde_json::from_slice(&list)
        .map_err(|e| OciError::json(format!("manifest.json of {location}"), e))?;
    let names = || {
        available(list.iter().map(|e| {
            if e.repo_tags.is_empty() {
                e.config.clone()
            } else {
                e.repo_tags.join(", ")
            }
        }))
    };

    // The config of each candidate, read (and checked against its file name) once.
    let read_config = |entry: &DockerManifestEntry| -> Result<(Vec<u8>, Digest)> {
        let what = format!("config {} of {location}", entry.config);
        let bytes = read_plain_json(
            src,
            &entry.config,
            &format!(
                "manifest.json names config {:?}, which is missing",
                entry.config
            ),
        )?;
        let digest = Digest::of(&bytes);
        if let Some(claimed) = claimed_digest(&entry.config)
            && claimed != digest
        {
            return Err(OciError::DigestMismatch {
                what,
                expected: claimed,
                actual: digest,
            });
        }
        Ok((bytes, digest))
    };

    let (entry, (config_bytes, config_digest)) = match reference {
        None => match list.as_slice() {
            [only] => (only, read_config(only)?),
            [] => {
                return Err(OciError::Invalid(format!(
                    "{location}: manifest.json lists no images"
                )));
            }
            _ => {
                return Err(OciError::Ambiguous {
                    location,
                    available: names(),
                });
            }
        },
        Some(r) if r.starts_with("sha256:") => {
            let wanted = Digest::parse(r)
                .map_err(|e| OciError::Invalid(format!("{r:?} is not a valid reference: {e}")))?;
            let mut found = None;
            for entry in &list {
                let (bytes, digest) = read_config(entry)?;
                if digest == wanted {
                    found = Some((entry, (bytes, digest)));
                    break;
                }
            }
            found.ok_or_else(|| OciError::NoSuchReference {
                location: location.clone(),
                reference: r.to_owned(),
                available: names(),
            })?
        }
        Some(r) => {
            let wanted = normalize_reference(r);
            let entry = list
                .iter()
                .find(|e| e.repo_tags.iter().any(|t| normalize_reference(t) == wanted))
                .ok_or_else(|| OciError::NoSuchReference {
                    location: location.clone(),
                    reference: r.to_owned(),
                    available: names(),
                })?;
            (entry, read_config(entry)?)
        }
    };

    let config_what = format!("config {} of {location}", entry.config);
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| OciError::json(config_what.clone(), e))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != entry.layers.len() {
        return Err(OciError::Invalid(format!(
            "{location}: manifest.json lists {} layers but the config lists {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }

    let mut layers = Vec::new();
    for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
        layers.push(import_docker_layer(src, path, diff_id, blobs)?);
    }
    let config_size = put_verified(
        blobs,
        &mut config_bytes.as_slice(),
        &config_digest,
        Some(config_bytes.len() as u64),
        &config_what,
    )?;
    let manifest = Manifest::oci(
        Descriptor::new(media_type::OCI_CONFIG, config_digest, config_size),
        layers.clone(),
    );
    let (manifest_bytes, manifest_digest) = canonical_digest(&manifest);
    put_verified(
        blobs,
        &mut manifest_bytes.as_slice(),
        &manifest_digest,
        Some(manifest_bytes.len() as u64),
        "the new manifest",
    )?;
    Ok(ImportedImage {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        manifest_media_type: media_type::OCI_MANIFEST.to_owned(),
        manifest,
        config_digest,
        config,
        layers,
    })
}

/// Stores one layer of a Docker archive as it is, checking it against its diffID.
fn import_docker_layer(
    src: &ArchiveIndex,
    path: &str,
    diff_id: &Digest,
    blobs: &dyn Blobs,
) -> Result<Descriptor> {
    let location = src.location();
    let what = format!("layer {path} of {location}");
    let (mut reader, len) = src.open_entry(path)?.ok_or_else(|| {
        OciError::Invalid(format!(
            "{location}: manifest.json names layer {path:?}, which is missing"
        ))
    })?;
    let mut head = Vec::with_capacity(512);
    (&mut reader)
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| OciError::io(format!("reading {what}"), e))?;
    let claimed = claimed_digest(path);
    match head.as_slice() {
        [0x1f, 0x8b, ..] => {
            let mut tee = TeeReader {
                inner: head.as_slice().chain(reader),
                sink: flate2::write::MultiGzDecoder::new(DigestWriter::new(io::sink())),
            };
            let (digest, size) = blobs
                .put_blob(&mut tee, claimed.as_ref())
                .map_err(|e| match (e.kind(), claimed) {
                    (io::ErrorKind::InvalidData, Some(claimed)) => OciError::Invalid(format!(
                        "{what}: not valid gzip, or its content does not match the digest {claimed} its name claims ({e})"
                    )),
                    _ => OciError::io(format!("reading {what} (gzip)"), e),
                })?;
            let decoded = tee
                .sink
                .finish()
                .map_err(|e| OciError::io(format!("decompressing {what}"), e))?;
            let (actual, _, _) = decoded.finish();
            if actual != *diff_id {
                return Err(OciError::DigestMismatch {
                    what: format!("{what}, decompressed (its diffID)"),
                    expected: *diff_id,
                    actual,
                });
            }
            Ok(Descriptor::new(
                media_type::OCI_LAYER_TAR_GZIP,
                digest,
                size,
            ))
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Err(OciError::Unsupported(format!(
            "{what} is zstd-compressed; Docker archives hold plain or gzip layers"
        ))),
        _ => {
            if let Some(claimed) = claimed
                && claimed != *diff_id
            {
                return Err(OciError::Invalid(format!(
                    "{what}: its name claims digest {claimed} but the config's diffID is {diff_id}"
                )));
            }
            let size = put_verified(
                blobs,
                &mut head.as_slice().chain(reader),
                diff_id,
                Some(len),
                &format!("{what} (against its diffID)"),
            )?;
            Ok(Descriptor::new(media_type::OCI_LAYER_TAR, *diff_id, size))
        }
    }
}
