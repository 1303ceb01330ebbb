//! Writing images out of the store: OCI image layouts (directories), OCI archives (a layout as a
//! tar file) and Docker archives (what `docker load` and `podman load` read).

use super::stream::{copy_verified, digest_stream, read_verified};
use super::tarfile::TarWriter;
use super::types::{
    Compression, Descriptor, DockerManifestEntry, ImageConfig, Index, LayoutHeader, Manifest,
    Platform, annotation, media_type, to_canonical_json,
};
use super::{LAYOUT_VERSION, OciError, Result};
use crate::Blobs;
use crate::digest::Digest;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An image in the store, as the exporters take it: its manifest (or index), and the tag to
/// give it in an OCI layout's index.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Digest of the image manifest, or of an image index for a multi-platform image.
    pub manifest: Digest,
    /// Size of that manifest in bytes.
    pub size: u64,
    /// Written as the `org.opencontainers.image.ref.name` annotation (what `oci:DIR:TAG` and
    /// `umoci --image DIR:TAG` look up). Docker archives use their `repo_tags` instead.
    pub tag: Option<String>,
}

/// Opens the uncompressed tar stream of a layer, for Docker archives: `docker load` before
/// Docker 25 takes only plain or gzip tars, so the exporter writes every layer uncompressed.
///
/// The exporter calls this for every layer whose blob is not already a plain tar; the caller
/// decides how to decompress (the store's layer module knows zstd). The stream must be the
/// layer's diffID content: the exporter checks it against the config's `rootfs.diff_ids` and
/// refuses to finish the archive otherwise.
///
/// Any `Fn(&Descriptor) -> io::Result<Box<dyn Read>>` closure is a `LayerOpener`.
/// [`BuiltinDecompressor`] handles plain, gzip and zstd layers.
pub trait LayerOpener {
    /// The uncompressed tar stream of the layer `layer` describes.
    fn open_uncompressed(&self, layer: &Descriptor) -> io::Result<Box<dyn Read + '_>>;

    /// The uncompressed size, when known without reading the stream. A tar header needs the
    /// size before the content, so without it the exporter reads each layer twice (once to
    /// measure and verify, once to write); memory stays flat either way.
    fn uncompressed_size(&self, _layer: &Descriptor) -> Option<u64> {
        None
    }
}

impl<F> LayerOpener for F
where
    F: Fn(&Descriptor) -> io::Result<Box<dyn Read>>,
{
    fn open_uncompressed(&self, layer: &Descriptor) -> io::Result<Box<dyn Read + '_>> {
        self(layer)
    }
}

/// A [`LayerOpener`] for layers stored as plain, gzip or zstd tars (with the same decoders the
/// layer module uses; layers of other media types are refused).
pub struct BuiltinDecompressor<'a> {
    blobs: &'a dyn Blobs,
}

impl<'a> BuiltinDecompressor<'a> {
    pub fn new(blobs: &'a dyn Blobs) -> Self {
        BuiltinDecompressor { blobs }
    }
}

impl LayerOpener for BuiltinDecompressor<'_> {
    fn open_uncompressed(&self, layer: &Descriptor) -> io::Result<Box<dyn Read + '_>> {
        let path = self.blobs.blob_path(&layer.digest).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("layer {} is not in the store", layer.digest),
            )
        })?;
        let file = io::BufReader::with_capacity(1 << 20, File::open(path)?);
        match media_type::layer_compression(&layer.media_type) {
            Some(Compression::None) => Ok(Box::new(file)),
            Some(Compression::Gzip) => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(file))),
            Some(Compression::Zstd) => {
                Ok(Box::new(zstd::stream::read::Decoder::with_buffer(file)?))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "layer {} has media type {:?}, which this decompressor does not handle",
                    layer.digest, layer.media_type
                ),
            )),
        }
    }
}

/// Writes `image` as an OCI image layout directory at `dir`: `oci-layout`, `index.json` (one
/// descriptor, with the tag as `org.opencontainers.image.ref.name` when `image.tag` is set)
/// and `blobs/sha256/…`, hard-linked from the store when on the same filesystem, else copied
/// (and verified on the way).
///
/// The layout is built in a temporary directory beside `dir` and renamed into place. An existing
/// `dir` is replaced (atomically swapped where the filesystem supports `RENAME_EXCHANGE`) only if
/// it is empty or an OCI layout; anything else is refused, never deleted.
///
/// Hard-linked blob files share their inode with the store's copy: edit a layout's blobs in place
/// and you edit the store. (Tools such as umoci and skopeo write new blobs and never modify old
/// ones; the store keeps blobs read-only.)
pub fn write_oci_layout(dir: &Path, blobs: &dyn Blobs, image: &ImageRef) -> Result<()> {
    check_replaceable(dir)?;
    let closure = resolve_export(blobs, image)?;
    let index = Index::oci(vec![closure.root_descriptor(image.tag.as_deref())]);

    let tmp = TempPath::beside(dir)?;
    let io_err = |what: &str, p: &Path, e| OciError::io(format!("{what} {}", p.display()), e);
    let blob_dir = tmp.path.join("blobs").join("sha256");
    for d in [&tmp.path, &tmp.path.join("blobs"), &blob_dir] {
        fs::create_dir_all(d).map_err(|e| io_err("creating", d, e))?;
        set_mode(d, 0o755)?;
    }
    for (digest, blob) in &closure.blobs {
        let dst = blob_dir.join(digest.hex());
        if fs::hard_link(&blob.path, &dst).is_err() {
            copy_blob_file(&blob.path, &dst, digest, blob.size)?;
        }
    }
    let header = LayoutHeader {
        image_layout_version: LAYOUT_VERSION.to_owned(),
    };
    write_file_synced(&tmp.path.join("oci-layout"), &to_canonical_json(&header))?;
    write_file_synced(&tmp.path.join("index.json"), &to_canonical_json(&index))?;
    for d in [&blob_dir, &tmp.path.join("blobs"), &tmp.path] {
        sync_dir(d)?;
    }
    replace_dir(&tmp, dir)
}

/// Writes `image` as an OCI archive: the layout [`write_oci_layout`] writes, as a deterministic
/// tar file (sorted entries, directories 0755 and files 0644, uid/gid 0, mtime 0). Streamed
/// (layers are never in memory), verified on the way, written to a temporary name beside `file`
/// and renamed.
pub fn write_oci_archive(file: &Path, blobs: &dyn Blobs, image: &ImageRef) -> Result<()> {
    let closure = resolve_export(blobs, image)?;
    let index = Index::oci(vec![closure.root_descriptor(image.tag.as_deref())]);
    let mut entries = layout_skeleton(&index);
    for (digest, blob) in &closure.blobs {
        entries.insert(
            blob_name(digest),
            Content::StoreBlob {
                path: blob.path.clone(),
                digest: *digest,
                size: blob.size,
            },
        );
    }
    write_archive(file, entries, None)
}

/// Writes `image` as a `docker save` archive that `docker load` and `podman load` read.
///
/// Layout (what Docker ≥ 25 writes, which older Docker and podman also read): `manifest.json`
/// (`[{"Config":"blobs/sha256/<hex>","RepoTags":[…],"Layers":["blobs/sha256/<hex>",…]}]`),
/// `repositories`, and an OCI layout beside them (`oci-layout`, `index.json`, `blobs/sha256/`)
/// whose manifest lists the same uncompressed layers, so the file is a valid OCI archive too.
///
/// Layers are written as uncompressed tars, named by their diffIDs. A layer whose blob is a plain
/// tar is copied from the store; any other is read through `layers` (see [`LayerOpener`]) and
/// checked against its diffID. The config blob is copied byte for byte, so the image ID that
/// `docker load` reports is the config digest of the image in the store.
///
/// `repo_tags` are references like `name:tag` or `registry:5000/team/name:tag` (no tag means
/// `latest`). `image.tag` is not used. A multi-platform index is resolved to linux/amd64.
pub fn write_docker_archive(
    file: &Path,
    blobs: &dyn Blobs,
    image: &ImageRef,
    repo_tags: &[String],
    layers: &dyn LayerOpener,
) -> Result<()> {
    let tags = repo_tags
        .iter()
        .map(|t| RepoTag::parse(t))
        .collect::<Result<Vec<_>>>()?;

    let root = Descriptor::new("", image.manifest, image.size);
    let (manifest_desc, manifest) = resolve_manifest_in_store(blobs, root)?;
    let config_what = format!("config {}", manifest.config.digest);
    let config_path = store_blob_path(blobs, &manifest.config, &config_what)?;
    let config_bytes = read_store_json(blobs, &manifest.config, &config_what)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| OciError::json(config_what.clone(), e))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(OciError::Invalid(format!(
            "manifest {} has {} layers but its config lists {} diff_ids",
            manifest_desc.digest,
            manifest.layers.len(),
            diff_ids.len()
        )));
    }

    let mut layer_blobs: BTreeMap<Digest, Content> = BTreeMap::new();
    let mut oci_layers = Vec::new();
    for (i, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let what = format!("layer {i} ({})", layer.digest);
        let compression = media_type::layer_compression(&layer.media_type).ok_or_else(|| {
            OciError::Unsupported(format!(
                "{what}: media type {:?} is not a layer type Docker archives can hold",
                layer.media_type
            ))
        })?;
        let size = if let Some(Content::StoreBlob { size, .. } | Content::Layer { size, .. }) =
            layer_blobs.get(diff_id)
        {
            *size
        } else if compression == Compression::None && layer.digest == *diff_id {
            let path = store_blob_path(blobs, layer, &what)?;
            layer_blobs.insert(
                *diff_id,
                Content::StoreBlob {
                    path,
                    digest: *diff_id,
                    size: layer.size,
                },
            );
            layer.size
        } else {
            let size = match layers.uncompressed_size(layer) {
                Some(size) => size,
                None => {
                    // Measure (and verify) before writing: the tar header comes first.
                    let mut stream = layers
                        .open_uncompressed(layer)
                        .map_err(|e| OciError::io(format!("decompressing {what}"), e))?;
                    let (actual, size) =
                        digest_stream(&mut stream, &format!("{what}, decompressed"))?;
                    if actual != *diff_id {
                        return Err(OciError::DigestMismatch {
                            what: format!("{what}, decompressed (its diffID)"),
                            expected: *diff_id,
                            actual,
                        });
                    }
                    size
                }
            };
            layer_blobs.insert(
                *diff_id,
                Content::Layer {
                    layer: Box::new(layer.clone()),
                    diff_id: *diff_id,
                    size,
                },
            );
            size
        };
        oci_layers.push(Descriptor::new(media_type::OCI_LAYER_TAR, *diff_id, size));
    }

    let config_desc = Descriptor::new(
        media_type::OCI_CONFIG,
        manifest.config.digest,
        manifest.config.size,
    );
    let oci_manifest = to_canonical_json(&Manifest::oci(config_desc, oci_layers));
    let oci_manifest_digest = Digest::of(&oci_manifest);

    let mut base = Descriptor::new(
        media_type::OCI_MANIFEST,
        oci_manifest_digest,
        oci_manifest.len() as u64,
    );
    base.platform = platform_of(&config);
    let index_entries = if tags.is_empty() {
        vec![base]
    } else {
        tags.iter()
            .map(|t| {
                let mut d = base.clone();
                d.annotations.insert(
                    annotation::CONTAINERD_IMAGE_NAME.to_owned(),
                    format!("{}:{}", t.full_name(), t.tag),
                );
                d.annotations
                    .insert(annotation::REF_NAME.to_owned(), t.tag.clone());
                d
            })
            .collect()
    };
    let mut entries = layout_skeleton(&Index::oci(index_entries));

    let docker_manifest = vec![DockerManifestEntry {
        config: blob_name(&manifest.config.digest),
        repo_tags: tags
            .iter()
            .map(|t| format!("{}:{}", t.name, t.tag))
            .collect(),
        layers: diff_ids.iter().map(blob_name).collect(),
    }];
    entries.insert(
        "manifest.json".to_owned(),
        Content::Bytes(to_canonical_json(&docker_manifest)),
    );
    if let (Some(top), false) = (diff_ids.last(), tags.is_empty()) {
        let mut repositories: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
        for t in &tags {
            repositories
                .entry(&t.name)
                .or_default()
                .insert(&t.tag, top.hex());
        }
        let bytes = serde_json::to_vec(&repositories).expect("string maps serialize");
        entries.insert("repositories".to_owned(), Content::Bytes(bytes));
    }

    entries.insert(
        blob_name(&manifest.config.digest),
        Content::StoreBlob {
            path: config_path,
            digest: manifest.config.digest,
            size: manifest.config.size,
        },
    );
    entries.insert(
        blob_name(&oci_manifest_digest),
        Content::Bytes(oci_manifest),
    );
    for (diff_id, content) in layer_blobs {
        entries.insert(blob_name(&diff_id), content);
    }
    write_archive(file, entries, Some(layers))
}

/// What an archive entry holds.
enum Content {
    Dir,
    Bytes(Vec<u8>),
    /// A blob file of the store, copied and verified.
    StoreBlob {
        path: PathBuf,
        digest: Digest,
        size: u64,
    },
    /// A layer's uncompressed stream, from a [`LayerOpener`], verified against its diffID.
    Layer {
        layer: Box<Descriptor>,
        diff_id: Digest,
        size: u64,
    },
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The entries every layout has: its directories, `oci-layout` and `index.json`.
fn layout_skeleton(index: &Index) -> BTreeMap<String, Content> {
    let header = LayoutHeader {
        image_layout_version: LAYOUT_VERSION.to_owned(),
    };
    BTreeMap::from([
        ("blobs/".to_owned(), Content::Dir),
        ("blobs/sha256/".to_owned(), Content::Dir),
        (
            "oci-layout".to_owned(),
            Content::Bytes(to_canonical_json(&header)),
        ),
        (
            "index.json".to_owned(),
            Content::Bytes(to_canonical_json(index)),
        ),
    ])
}

/// Writes `entries` (sorted by name, as the map keeps them) as a tar file at `file`, through a
/// temporary file beside it.
fn write_archive(
    file: &Path,
    entries: BTreeMap<String, Content>,
    layers: Option<&dyn LayerOpener>,
) -> Result<()> {
    let tmp = TempPath::beside(file)?;
    let what = file.display().to_string();
    let out = File::create_new(&tmp.path)
        .map_err(|e| OciError::io(format!("creating {}", tmp.path.display()), e))?;
    let mut tar = TarWriter::new(BufWriter::with_capacity(1 << 20, out), &what);
    for (name, content) in &entries {
        match content {
            Content::Dir => tar.dir(name)?,
            Content::Bytes(bytes) => tar.file(name, bytes.len() as u64, |w| {
                w.write_all(bytes)
                    .map_err(|e| OciError::io(format!("writing {what}"), e))
            })?,
            Content::StoreBlob { path, digest, size } => tar.file(name, *size, |w| {
                let mut src = File::open(path)
                    .map_err(|e| OciError::io(format!("opening {}", path.display()), e))?;
                copy_verified(
                    &mut src,
                    w,
                    digest,
                    *size,
                    &format!("the store's blob {digest}"),
                )
            })?,
            Content::Layer {
                layer,
                diff_id,
                size,
            } => tar.file(name, *size, |w| {
                let what = format!("layer {}, decompressed", layer.digest);
                let opener = layers.expect("layers come with an opener");
                let mut src = opener.open_uncompressed(layer).map_err(|e| {
                    OciError::io(format!("decompressing layer {}", layer.digest), e)
                })?;
                copy_verified(&mut src, w, diff_id, *size, &what)
            })?,
        }
    }
    let out = tar
        .finish()?
        .into_inner()
        .map_err(|e| OciError::io(format!("writing {what}"), e.into_error()))?;
    out.sync_all()
        .map_err(|e| OciError::io(format!("writing {what}"), e))?;
    drop(out);
    set_mode(&tmp.path, 0o644)?;
    fs::rename(&tmp.path, file)
        .map_err(|e| OciError::io(format!("renaming {} to {what}", tmp.path.display()), e))?;
    tmp.keep();
    sync_dir(&parent_of(file))
}

/// A blob of the store that an export includes.
struct ExportBlob {
    path: PathBuf,
    size: u64,
}

/// Everything an image consists of: the root manifest or index and all blobs it reaches.
struct ExportClosure {
    root: Descriptor,
    blobs: BTreeMap<Digest, ExportBlob>,
}

impl ExportClosure {
    /// The root's descriptor for index.json, tagged when `tag` is given.
    fn root_descriptor(&self, tag: Option<&str>) -> Descriptor {
        let mut d = self.root.clone();
        if let Some(tag) = tag {
            d.annotations
                .insert(annotation::REF_NAME.to_owned(), tag.to_owned());
        }
        d
    }
}

/// Nesting of indexes we follow (an index of indexes of manifests is already unusual).
const MAX_DEPTH: usize = 4;

fn resolve_export(blobs: &dyn Blobs, image: &ImageRef) -> Result<ExportClosure> {
    if let Some(tag) = &image.tag
        && (tag.is_empty() || tag.chars().any(|c| c.is_control()))
    {
        return Err(OciError::Invalid(format!("{tag:?} is not a valid tag")));
    }
    let mut closure = ExportClosure {
        root: Descriptor::new("", image.manifest, image.size),
        blobs: BTreeMap::new(),
    };
    let root = closure.root.clone();
    let (media_type, platform) = walk(blobs, &root, 0, &mut closure.blobs)?;
    closure.root.media_type = media_type;
    closure.root.platform = platform;
    Ok(closure)
}

/// Adds `desc` and everything it reaches to `out`; returns its media type and, for an image
/// manifest, the platform its config declares.
fn walk(
    blobs: &dyn Blobs,
    desc: &Descriptor,
    depth: usize,
    out: &mut BTreeMap<Digest, ExportBlob>,
) -> Result<(String, Option<Platform>)> {
    let what = format!("manifest {}", desc.digest);
    if depth > MAX_DEPTH {
        return Err(OciError::Unsupported(format!(
            "{what}: indexes nested more than {MAX_DEPTH} deep"
        )));
    }
    let bytes = read_store_json(blobs, desc, &what)?;
    add_blob(blobs, desc, &what, out)?;
    match classify(&desc.media_type, &bytes) {
        Kind::Index(mt) => {
            let index: Index =
                serde_json::from_slice(&bytes).map_err(|e| OciError::json(what.clone(), e))?;
            for child in &index.manifests {
                if child.media_type.is_empty()
                    || media_type::is_index(&child.media_type)
                    || media_type::is_manifest(&child.media_type)
                {
                    walk(blobs, child, depth + 1, out)?;
                } else {
                    add_blob(
                        blobs,
                        child,
                        &format!("{what}: entry {}", child.digest),
                        out,
                    )?;
                }
            }
            Ok((mt, None))
        }
        Kind::Manifest(mt) => {
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| OciError::json(what.clone(), e))?;
            let config_what = format!("config {}", manifest.config.digest);
            add_blob(blobs, &manifest.config, &config_what, out)?;
            for (i, layer) in manifest.layers.iter().enumerate() {
                add_blob(blobs, layer, &format!("{what}: layer {i}"), out)?;
            }
            let platform = if media_type::is_config(&manifest.config.media_type) {
                let config_bytes = read_store_json(blobs, &manifest.config, &config_what)?;
                let config: ImageConfig = serde_json::from_slice(&config_bytes)
                    .map_err(|e| OciError::json(config_what, e))?;
                platform_of(&config)
            } else {
                None
            };
            Ok((mt, platform))
        }
        Kind::Other(mt) => Err(OciError::Unsupported(format!(
            "{what}: media type {mt:?} is neither an image manifest nor an index"
        ))),
    }
}

fn platform_of(config: &ImageConfig) -> Option<Platform> {
    (!config.architecture.is_empty() && !config.os.is_empty()).then(|| config.platform())
}

fn add_blob(
    blobs: &dyn Blobs,
    desc: &Descriptor,
    what: &str,
    out: &mut BTreeMap<Digest, ExportBlob>,
) -> Result<()> {
    if out.contains_key(&desc.digest) {
        return Ok(());
    }
    let path = store_blob_path(blobs, desc, what)?;
    let len = fs::metadata(&path)
        .map_err(|e| OciError::io(format!("reading {}", path.display()), e))?
        .len();
    if len != desc.size {
        return Err(OciError::SizeMismatch {
            what: format!("{what} (the store's copy)"),
            expected: desc.size,
            actual: len.to_string(),
        });
    }
    out.insert(
        desc.digest,
        ExportBlob {
            path,
            size: desc.size,
        },
    );
    Ok(())
}

fn store_blob_path(blobs: &dyn Blobs, desc: &Descriptor, what: &str) -> Result<PathBuf> {
    blobs
        .blob_path(&desc.digest)
        .ok_or_else(|| OciError::MissingBlob {
            what: what.to_owned(),
            digest: desc.digest,
            location: "the store".to_owned(),
        })
}

/// A JSON blob of the store, verified against `desc`.
pub(crate) fn read_store_json(blobs: &dyn Blobs, desc: &Descriptor, what: &str) -> Result<Vec<u8>> {
    let path = store_blob_path(blobs, desc, what)?;
    let mut file =
        File::open(&path).map_err(|e| OciError::io(format!("opening {}", path.display()), e))?;
    read_verified(&mut file, &desc.digest, Some(desc.size), what)
}

/// What a JSON document is, with its effective media type.
pub(crate) enum Kind {
    Index(String),
    Manifest(String),
    Other(String),
}

/// Classifies a manifest-like document by its declared media type, else by its own
/// `mediaType`, else by its shape (`manifests` makes an index, `config` a manifest).
pub(crate) fn classify(declared: &str, bytes: &[u8]) -> Kind {
    fn by_type(mt: &str) -> Option<Kind> {
        if media_type::is_index(mt) {
            Some(Kind::Index(mt.to_owned()))
        } else if media_type::is_manifest(mt) {
            Some(Kind::Manifest(mt.to_owned()))
        } else if mt.is_empty() {
            None
        } else {
            Some(Kind::Other(mt.to_owned()))
        }
    }
    if let Some(kind) = by_type(declared) {
        return kind;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => by_type(&p.media_type).unwrap_or(if p.manifests.is_some() {
            Kind::Index(media_type::OCI_INDEX.to_owned())
        } else if p.config.is_some() {
            Kind::Manifest(media_type::OCI_MANIFEST.to_owned())
        } else {
            Kind::Other("(none)".to_owned())
        }),
        Err(_) => Kind::Other("(not JSON)".to_owned()),
    }
}

/// The image manifest `root` names in the store, resolving indexes to linux/amd64.
fn resolve_manifest_in_store(
    blobs: &dyn Blobs,
    root: Descriptor,
) -> Result<(Descriptor, Manifest)> {
    let mut desc = root;
    for _ in 0..=MAX_DEPTH {
        let what = format!("manifest {}", desc.digest);
        let bytes = read_store_json(blobs, &desc, &what)?;
        match classify(&desc.media_type, &bytes) {
            Kind::Manifest(mt) => {
                let manifest: Manifest =
                    serde_json::from_slice(&bytes).map_err(|e| OciError::json(what, e))?;
                desc.media_type = mt;
                return Ok((desc, manifest));
            }
            Kind::Index(_) => {
                let index: Index =
                    serde_json::from_slice(&bytes).map_err(|e| OciError::json(what.clone(), e))?;
                desc = choose_platform(&index.manifests, &Platform::linux_amd64(), &what)?.clone();
            }
            Kind::Other(mt) => {
                return Err(OciError::Unsupported(format!(
                    "{what}: media type {mt:?} is neither an image manifest nor an index"
                )));
            }
        }
    }
    Err(OciError::Unsupported(format!(
        "image {}: indexes nested more than {MAX_DEPTH} deep",
        desc.digest
    )))
}

/// The entry of an index for `wanted`: one without a variant if there are several.
pub(crate) fn choose_platform<'a>(
    entries: &'a [Descriptor],
    wanted: &Platform,
    what: &str,
) -> Result<&'a Descriptor> {
    let mut matching = entries
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.satisfies(wanted)));
    let first = matching.next();
    let plain = first
        .into_iter()
        .chain(matching)
        .find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_empty()));
    plain.or(first).ok_or_else(|| OciError::NoPlatform {
        what: what.to_owned(),
        wanted: wanted.to_string(),
        available: {
            let list: Vec<String> = entries
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map_or_else(|| "(no platform)".to_owned(), |p| p.to_string())
                })
                .collect();
            if list.is_empty() {
                "nothing".to_owned()
            } else {
                list.join(", ")
            }
        },
    })
}

/// A `name:tag` reference for a Docker archive.
struct RepoTag {
    /// As given (Docker's familiar form: `ubuntu`, `team/app`, `registry:5000/app`).
    name: String,
    tag: String,
}

impl RepoTag {
    fn parse(s: &str) -> Result<RepoTag> {
        let bad =
            |why: &str| OciError::Invalid(format!("{s:?} is not a valid repository tag: {why}"));
        if s.contains('@') {
            return Err(bad("digests cannot be repository tags"));
        }
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => (s, "latest"),
        };
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !tag_ok {
            return Err(bad(
                "a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let parts: Vec<&str> = name.split('/').collect();
        let has_domain = parts.len() > 1 && is_domain(parts[0]);
        let path = if has_domain { &parts[1..] } else { &parts[..] };
        let path_ok = path.iter().all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        });
        if !path_ok {
            return Err(bad(
                "path components are lowercase letters, digits and separators (. _ -)",
            ));
        }
        Ok(RepoTag {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The fully qualified name, as Docker normalises it (`ubuntu` → `docker.io/library/ubuntu`).
    fn full_name(&self) -> String {
        match self.name.split_once('/') {
            Some((domain, rest)) if is_domain(domain) => {
                if domain == "index.docker.io" {
                    format!("docker.io/{rest}")
                } else {
                    self.name.clone()
                }
            }
            Some(_) => format!("docker.io/{}", self.name),
            None => format!("docker.io/library/{}", self.name),
        }
    }
}

/// Whether the first component of a reference is a registry (Docker's rule).
fn is_domain(component: &str) -> bool {
    component == "localhost"
        || component.contains(['.', ':'])
        || component.bytes().any(|b| b.is_ascii_uppercase())
}

/// A path that is removed when dropped, unless kept.
struct TempPath {
    path: PathBuf,
    kept: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempPath {
    /// `<dest>.tmp-<pid>-<n>`: beside the destination, so on its filesystem and the final
    /// rename is atomic; the counter keeps concurrent exports in one process apart.
    fn beside(dest: &Path) -> Result<TempPath> {
        let name = dest.file_name().ok_or_else(|| {
            OciError::Invalid(format!(
                "{} does not name a file or directory",
                dest.display()
            ))
        })?;
        // What exports killed before their rename left here is garbage: remove it first.
        let prefix = format!("{}.tmp-", name.to_string_lossy());
        crate::store::remove_stale_beside(dest, |n| {
            let (pid, _) = n.strip_prefix(&prefix)?.split_once('-')?;
            crate::store::parse_pid(pid)
        });
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = name.to_owned();
        tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
        Ok(TempPath {
            path: parent_of(dest).join(tmp_name),
            kept: false,
        })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.kept {
            match fs::symlink_metadata(&self.path) {
                Ok(m) if m.is_dir() => {
                    let _ = fs::remove_dir_all(&self.path);
                }
                Ok(_) => {
                    let _ = fs::remove_file(&self.path);
                }
                Err(_) => {}
            }
        }
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| OciError::io(format!("setting the mode of {}", path.display()), e))
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |e| OciError::io(format!("writing {}", path.display()), e);
    let mut f = File::create_new(path).map_err(err)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    set_mode(path, 0o644)
}

fn copy_blob_file(src: &Path, dst: &Path, digest: &Digest, size: u64) -> Result<()> {
    let mut from =
        File::open(src).map_err(|e| OciError::io(format!("opening {}", src.display()), e))?;
    let err = |e| OciError::io(format!("writing {}", dst.display()), e);
    let to = File::create_new(dst).map_err(err)?;
    let mut out = BufWriter::with_capacity(1 << 20, to);
    copy_verified(
        &mut from,
        &mut out,
        digest,
        size,
        &format!("the store's blob {digest}"),
    )?;
    let to = out.into_inner().map_err(|e| err(e.into_error()))?;
    to.sync_all().map_err(err)?;
    set_mode(dst, 0o644)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OciError::io(format!("syncing {}", dir.display()), e))
}

/// An existing `dir` may be replaced only if it is an empty directory or an OCI layout.
fn check_replaceable(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OciError::io(format!("inspecting {}", dir.display()), e)),
        Ok(m) if m.is_dir() => {
            let is_layout = dir.join("oci-layout").is_file();
            let is_empty = fs::read_dir(dir)
                .map_err(|e| OciError::io(format!("reading {}", dir.display()), e))?
                .next()
                .is_none();
            if is_layout || is_empty {
                Ok(())
            } else {
                Err(OciError::RefuseReplace {
                    path: dir.to_owned(),
                })
            }
        }
        Ok(_) => Err(OciError::RefuseReplace {
            path: dir.to_owned(),
        }),
    }
}

/// Moves the finished layout `tmp` to `dir`. An existing `dir` is swapped out in one step with
/// `RENAME_EXCHANGE`; where the filesystem lacks it, the old one is renamed away first (a reader
/// could then find `dir` missing for a moment, never half-written).
fn replace_dir(tmp: &TempPath, dir: &Path) -> Result<()> {
    let rename_err = |e| {
        OciError::io(
            format!("renaming {} to {}", tmp.path.display(), dir.display()),
            e,
        )
    };
    check_replaceable(dir)?;
    if fs::symlink_metadata(dir).is_err() {
        fs::rename(&tmp.path, dir).map_err(rename_err)?;
    } else {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, &tmp.path, CWD, dir, RenameFlags::EXCHANGE) {
            // `tmp` now holds the old layout; its guard removes it.
            Ok(()) => {}
            Err(_) => {
                let old = TempPath::beside(dir)?;
                fs::rename(dir, &old.path).map_err(|e| {
                    OciError::io(format!("renaming {} out of the way", dir.display()), e)
                })?;
                if let Err(e) = fs::rename(&tmp.path, dir) {
                    let _ = fs::rename(&old.path, dir);
                    old.keep();
                    return Err(rename_err(e));
                }
            }
        }
    }
    sync_dir(&parent_of(dir))
}
