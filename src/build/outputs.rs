//! Writing a built image out: OCI archive or layout, docker archive, root filesystem.

use crate::cmd::output::{Compression as OutCompression, Output};
use imgbuild_cache::Digest;
use imgbuild_cache::layer::{
    self, Compression, DirOptions, ExtractMode, ExtractOptions, LayerOptions, entries_from_dir,
};
use imgbuild_cache::oci::{
    self, BuiltinDecompressor, Descriptor, ImageRef, Manifest, canonical_digest,
};
use imgbuild_cache::store::Store;
use std::fs;
use std::path::{Path, PathBuf};

/// The stored image with its layers in `compression`, re-compressing the layers that are not
/// (the result is cached in the store: a blob per layer and compression).
pub fn with_compression(
    store: &Store,
    manifest: &Digest,
    compression: Compression,
) -> anyhow::Result<ImageRef> {
    let m: Manifest = serde_json::from_slice(&store.read_blob(manifest)?)?;
    let want = compression.media_type();
    if m.layers.iter().all(|l| l.media_type == want) {
        return Ok(ImageRef {
            manifest: *manifest,
            size: store.blob_size(manifest).unwrap_or(0),
            tag: None,
        });
    }
    let opener = BuiltinDecompressor::new(store);
    let mut layers = Vec::with_capacity(m.layers.len());
    for l in &m.layers {
        if l.media_type == want {
            layers.push(l.clone());
            continue;
        }
        let reader = oci::LayerOpener::open_uncompressed(&opener, l)?;
        let blob = store.blob_writer()?;
        let (info, blob) = layer::recompress(reader, blob, compression)?;
        let (digest, size) = blob.finish()?;
        debug_assert_eq!(digest, info.digest);
        layers.push(Descriptor::new(want, digest, size));
    }
    let config = m.config.clone();
    let out = Manifest::oci(config, layers);
    let (bytes, digest) = canonical_digest(&out);
    store.put_blob_bytes(&bytes)?;
    Ok(ImageRef {
        manifest: digest,
        size: bytes.len() as u64,
        tag: None,
    })
}

fn compression_of(c: OutCompression) -> Compression {
    match c {
        OutCompression::Zstd => Compression::Zstd,
        OutCompression::Gzip => Compression::Gzip,
        OutCompression::Uncompressed => Compression::None,
    }
}

/// Writes one output; returns the manifest digest it holds (it differs from the stored image's
/// when the compression differs).
pub fn write(
    store: &Store,
    manifest: &Digest,
    output: &Output,
    tags: &[String],
) -> anyhow::Result<Digest> {
    match output {
        Output::Oci {
            dest,
            tar,
            compression,
        } => {
            let mut image = with_compression(store, manifest, compression_of(*compression))?;
            image.tag = tags.first().map(|t| tag_of(t));
            if *tar {
                oci::write_oci_archive(dest, store, &image)?;
            } else {
                oci::write_oci_layout(dest, store, &image)?;
            }
            Ok(image.manifest)
        }
        Output::Docker { dest } => {
            let image = ImageRef {
                manifest: *manifest,
                size: store.blob_size(manifest).unwrap_or(0),
                tag: None,
            };
            let opener = BuiltinDecompressor::new(store);
            oci::write_docker_archive(dest, store, &image, tags, &opener)?;
            Ok(*manifest)
        }
        Output::Local { dest } => {
            // Staged beside the destination, so the final rename stays on one filesystem.
            let staged = temp_beside(dest);
            if staged.exists() {
                fs::remove_dir_all(&staged)?;
            }
            fs::create_dir_all(&staged)?;
            if let Err(e) = apply_layers(store, manifest, &staged) {
                let _ = fs::remove_dir_all(&staged);
                return Err(e);
            }
            replace_dir(&staged, dest)?;
            Ok(*manifest)
        }
        Output::Tar { dest } => {
            let tmp = store.temp_dir()?;
            let root = tmp.path().join("rootfs");
            fs::create_dir(&root)?;
            apply_layers(store, manifest, &root)?;
            let entries = entries_from_dir(&root, &DirOptions::default())?;
            let part = temp_beside(dest);
            let file = fs::File::create(&part)?;
            layer::write_layer(
                std::io::BufWriter::new(file),
                LayerOptions {
                    compression: Compression::None,
                    epoch: u64::MAX,
                },
                entries,
            )?;
            fs::rename(&part, dest)?;
            Ok(*manifest)
        }
        Output::Unikernel { .. } => {
            anyhow::bail!("type=unikernel needs a unikernel target stage (FROM unikernel)")
        }
    }
}

/// Writes a unikernel's ELF (a blob, read verified) to `dest`: a temp file beside it, mode
/// 0755, renamed into place.
pub fn write_elf(store: &Store, elf: &Digest, dest: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let part = temp_beside(dest);
    let result = (|| -> anyhow::Result<()> {
        let mut blob = store.open_blob(elf)?;
        let mut file = fs::File::create(&part)?;
        std::io::copy(&mut blob, &mut file)?;
        file.set_permissions(fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
        fs::rename(&part, dest)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result
}

/// Splits the registry pushes out of `-o` specs: `type=registry,name=REF[,push=true]` (also
/// `type=image,name=…,push=true`; a comma-separated `name` pushes to each), and with `--push`
/// each `-t` name. Returns the destinations and the other specs.
pub fn registry_outputs(
    specs: &[String],
    tags: &[String],
    push: bool,
) -> Result<(Vec<imgbuild_registry::Reference>, Vec<String>), String> {
    let mut dests = Vec::new();
    let mut rest = Vec::new();
    let add = |name: &str, dests: &mut Vec<imgbuild_registry::Reference>| {
        let r = imgbuild_registry::Reference::parse(name).map_err(|e| e.to_string())?;
        if !dests.contains(&r) {
            dests.push(r);
        }
        Ok::<(), String>(())
    };
    for spec in specs {
        let fields: Vec<(&str, &str)> = spec
            .split(',')
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.trim(), v))
            .collect();
        let kind = fields.iter().find(|(k, _)| *k == "type").map(|(_, v)| *v);
        let wants_push = match kind {
            Some("registry") => true,
            Some("image") => fields.iter().any(|(k, v)| *k == "push" && *v == "true"),
            _ => {
                rest.push(spec.clone());
                continue;
            }
        };
        let names: Vec<&str> = fields
            .iter()
            .filter(|(k, _)| *k == "name")
            .flat_map(|(_, v)| v.split(','))
            .collect();
        // `name=a,b` splits into a field `b` without `=`: take those as names too.
        let extra: Vec<&str> = spec.split(',').filter(|f| !f.contains('=')).collect();
        let names: Vec<&str> = names.into_iter().chain(extra).collect();
        let names: Vec<&str> = if names.is_empty() {
            tags.iter().map(String::as_str).collect()
        } else {
            names
        };
        if names.is_empty() {
            return Err(format!(
                "type={} needs name=REGISTRY/REPOSITORY[:TAG] (or -t)",
                kind.unwrap_or_default()
            ));
        }
        if wants_push {
            for n in names {
                add(n, &mut dests)?;
            }
        }
    }
    if push {
        if tags.is_empty() {
            return Err("--push needs -t REGISTRY/REPOSITORY[:TAG]".into());
        }
        for t in tags {
            add(t, &mut dests)?;
        }
    }
    Ok((dests, rest))
}

/// The tag part of `name:tag` for an OCI layout's ref name.
fn tag_of(name: &str) -> String {
    match name.rsplit_once(':') {
        Some((_, t)) if !t.contains('/') => t.to_owned(),
        _ => "latest".to_owned(),
    }
}

/// Applies every layer of an image onto `root` (whiteouts delete, ownership kept when root).
fn apply_layers(store: &Store, manifest: &Digest, root: &Path) -> anyhow::Result<()> {
    let m: Manifest = serde_json::from_slice(&store.read_blob(manifest)?)?;
    let opener = BuiltinDecompressor::new(store);
    for l in &m.layers {
        let reader = oci::LayerOpener::open_uncompressed(&opener, l)?;
        layer::extract(
            reader,
            root,
            &ExtractOptions {
                mode: ExtractMode::Apply,
                ..ExtractOptions::default()
            },
        )?;
    }
    Ok(())
}

/// `.<name>.tmp-<pid>` beside `dest`, after removing what killed builds left there (their
/// staged trees and archives, and trees they were replacing).
pub fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let (tmp, old) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    imgbuild_cache::store::remove_stale_beside(dest, |n| {
        let pid = n.strip_prefix(&tmp).or_else(|| n.strip_prefix(&old))?;
        imgbuild_cache::store::parse_pid(pid)
    });
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Puts the staged tree `staged` at `dest`, replacing what is there (the old tree is removed
/// only after the new one is in place).
fn replace_dir(staged: &Path, dest: &Path) -> anyhow::Result<()> {
    if dest.exists() {
        let old = dest.with_file_name(format!(
            ".{}.old-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        fs::rename(dest, &old)?;
        fs::rename(staged, dest)?;
        fs::remove_dir_all(&old)?;
    } else {
        fs::rename(staged, dest)?;
    }
    Ok(())
}
