//! Tests of the OCI module on temporary stores. `tools.rs` checks what we write with the real
//! tools (skopeo, umoci, podman).

mod tools;

use super::*;
use crate::{Blobs, DigestWriter};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A minimal store: `blobs/sha256/<hex>`, written through a temporary file, read-only once named.
pub(super) struct TestStore {
    dir: tempfile::TempDir,
}

impl TestStore {
    pub fn new() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        TestStore { dir }
    }

    pub fn put(&self, bytes: &[u8]) -> Digest {
        self.put_blob(&mut &bytes[..], None).unwrap().0
    }

    pub fn count(&self) -> usize {
        fs::read_dir(self.dir.path().join("blobs/sha256"))
            .unwrap()
            .count()
    }
}

impl Blobs for TestStore {
    fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        let p = self.dir.path().join("blobs/sha256").join(digest.hex());
        p.exists().then_some(p)
    }

    fn put_blob(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> io::Result<(Digest, u64)> {
        let tmp = tempfile::NamedTempFile::new_in(self.dir.path())?;
        let mut w = DigestWriter::new(tmp);
        io::copy(reader, &mut w)?;
        let (digest, len, tmp) = w.finish();
        if expected.is_some_and(|e| *e != digest) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "digest mismatch",
            ));
        }
        let path = self.dir.path().join("blobs/sha256").join(digest.hex());
        tmp.persist(&path).map_err(|e| e.error)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444))?;
        Ok((digest, len))
    }
}

/// A tar built by hand: (name, mode, content); a name ending in `/` is a directory.
pub(super) fn make_tar(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    for (name, mode, content) in entries {
        let mut h = ::tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        if name.ends_with('/') {
            h.set_entry_type(::tar::EntryType::Directory);
            h.set_size(0);
        } else {
            h.set_entry_type(::tar::EntryType::Regular);
            h.set_size(content.len() as u64);
        }
        h.set_cksum();
        b.append(&h, *content).unwrap();
    }
    b.into_inner().unwrap()
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The tiny image most tests use: a plain-tar layer and a gzip layer.
pub(super) struct Fixture {
    pub image: ImageRef,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
}

pub(super) const HELLO: &[u8] = b"hello from layer one\n";
pub(super) const SECOND: &[u8] = b"second layer, gzip-compressed\n";

pub(super) fn fixture(store: &TestStore) -> Fixture {
    let tar1 = make_tar(&[
        ("bin/", 0o755, b""),
        ("bin/tool", 0o755, b"#!/bin/sh\necho tool\n"),
        ("etc/", 0o755, b""),
        ("etc/hello", 0o644, HELLO),
    ]);
    let tar2 = make_tar(&[("etc/", 0o755, b""), ("etc/second", 0o600, SECOND)]);
    let gz2 = gzip(&tar2);
    let d1 = store.put(&tar1);
    let d2 = store.put(&gz2);
    let diff_ids = vec![Digest::of(&tar1), Digest::of(&tar2)];
    let config = ImageConfig {
        created: Some("2024-01-02T03:04:05Z".to_owned()),
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        config: RunConfig {
            env: vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
                "GREETING=hello world".to_owned(),
            ],
            cmd: vec!["/bin/tool".to_owned(), "--flag".to_owned()],
            working_dir: "/etc".to_owned(),
            exposed_ports: BTreeSet::from(["8080/tcp".to_owned()]),
            labels: BTreeMap::from([("org.example.kind".to_owned(), "test".to_owned())]),
            ..RunConfig::default()
        },
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: diff_ids.clone(),
        },
        history: vec![
            History {
                created_by: "COPY tool /bin/tool".to_owned(),
                ..History::default()
            },
            History {
                created_by: "ENV GREETING=hello world".to_owned(),
                empty_layer: true,
                ..History::default()
            },
            History {
                created_by: "COPY second /etc/second".to_owned(),
                ..History::default()
            },
        ],
        ..ImageConfig::default()
    };
    let (config_bytes, config_digest) = canonical_digest(&config);
    store.put(&config_bytes);
    let layers = vec![
        Descriptor::new(media_type::OCI_LAYER_TAR, d1, tar1.len() as u64),
        Descriptor::new(media_type::OCI_LAYER_TAR_GZIP, d2, gz2.len() as u64),
    ];
    let manifest = Manifest::oci(
        Descriptor::new(
            media_type::OCI_CONFIG,
            config_digest,
            config_bytes.len() as u64,
        ),
        layers.clone(),
    );
    let (manifest_bytes, manifest_digest) = canonical_digest(&manifest);
    store.put(&manifest_bytes);
    Fixture {
        image: ImageRef {
            manifest: manifest_digest,
            size: manifest_bytes.len() as u64,
            tag: Some("v1".to_owned()),
        },
        manifest_bytes,
        config_digest,
        config_bytes,
        config,
        layers,
        diff_ids,
    }
}

/// One entry of a tar file, as read back.
pub(super) struct TarEntry {
    pub name: String,
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub content: Vec<u8>,
}

pub(super) fn tar_entries(path: &Path) -> Vec<TarEntry> {
    let mut ar = ::tar::Archive::new(fs::File::open(path).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            TarEntry {
                name: String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                kind: h.entry_type().as_byte() as char,
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                content,
            }
        })
        .collect()
}

fn assert_same_image(imported: &ImportedImage, f: &Fixture) {
    assert_eq!(imported.config_digest, f.config_digest);
    assert_eq!(imported.config, f.config);
    assert_eq!(imported.config.rootfs.diff_ids, f.diff_ids);
}

#[test]
fn canonical_config_golden_bytes() {
    let config = ImageConfig {
        created: Some("1970-01-01T00:00:00Z".to_owned()),
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        config: RunConfig {
            user: "app".to_owned(),
            exposed_ports: BTreeSet::from(["80/tcp".to_owned(), "443/tcp".to_owned()]),
            env: vec!["PATH=/usr/bin".to_owned()],
            cmd: vec!["sh".to_owned()],
            volumes: BTreeSet::from(["/data".to_owned()]),
            labels: BTreeMap::from([
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ]),
            stop_signal: "SIGTERM".to_owned(),
            healthcheck: Some(Healthcheck {
                test: vec!["CMD-SHELL".to_owned(), "true".to_owned()],
                interval: 30_000_000_000,
                retries: 3,
                ..Healthcheck::default()
            }),
            on_build: vec!["RUN true".to_owned()],
            shell: vec!["/bin/bash".to_owned(), "-c".to_owned()],
            ..RunConfig::default()
        },
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: vec![Digest::of(b"")],
        },
        history: vec![History {
            created_by: "RUN true".to_owned(),
            empty_layer: true,
            ..History::default()
        }],
        ..ImageConfig::default()
    };
    let expected = concat!(
        r#"{"created":"1970-01-01T00:00:00Z","architecture":"amd64","os":"linux","#,
        r#""config":{"User":"app","ExposedPorts":{"443/tcp":{},"80/tcp":{}},"#,
        r#""Env":["PATH=/usr/bin"],"Cmd":["sh"],"Volumes":{"/data":{}},"#,
        r#""Labels":{"a":"1","b":"2"},"StopSignal":"SIGTERM","#,
        r#""Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":30000000000,"Retries":3},"#,
        r#""OnBuild":["RUN true"],"Shell":["/bin/bash","-c"]},"#,
        r#""rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},"#,
        r#""history":[{"created_by":"RUN true","empty_layer":true}]}"#,
    );
    let bytes = to_canonical_json(&config);
    assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);
    // Reading it back gives the same value, and the same bytes again.
    let back: ImageConfig = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, config);
    assert_eq!(to_canonical_json(&back), bytes);
}

#[test]
fn empty_fields_are_omitted_and_nulls_read_as_empty() {
    assert_eq!(
        String::from_utf8(to_canonical_json(&ImageConfig::default())).unwrap(),
        r#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#
    );
    // What Go writes for nil slices and maps, plus fields we do not model.
    let docker =
        br#"{"architecture":"amd64","os":"linux","container":"abc","docker_version":"20.10",
        "config":{"Hostname":"","Env":null,"Cmd":null,"Entrypoint":null,"ExposedPorts":null,
        "Volumes":null,"Labels":null,"OnBuild":null,"ArgsEscaped":null,"Image":"sha256:00"},
        "rootfs":{"type":"layers","diff_ids":null},"history":null}"#;
    let config: ImageConfig = serde_json::from_slice(docker).unwrap();
    assert_eq!(config.config, RunConfig::default());
    assert_eq!(
        String::from_utf8(to_canonical_json(&config)).unwrap(),
        r#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#
    );
}

#[test]
fn manifest_and_index_golden_bytes() {
    let d = Digest::of(b"");
    let mut layer = Descriptor::new(media_type::OCI_LAYER_TAR_GZIP, d, 0);
    layer.annotations.insert("z".to_owned(), "1".to_owned());
    let manifest = Manifest::oci(Descriptor::new(media_type::OCI_CONFIG, d, 0), vec![layer]);
    let h = d.to_string();
    assert_eq!(
        String::from_utf8(to_canonical_json(&manifest)).unwrap(),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{h}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{h}","size":0,"annotations":{{"z":"1"}}}}]}}"#
        )
    );
    let mut entry = Descriptor::new(media_type::OCI_MANIFEST, d, 0);
    entry.platform = Some(Platform::linux_amd64());
    assert_eq!(
        String::from_utf8(to_canonical_json(&Index::oci(vec![entry]))).unwrap(),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{h}","size":0,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        )
    );
    // A manifest without layers still says so.
    let empty = Manifest::oci(Descriptor::new(media_type::OCI_CONFIG, d, 0), vec![]);
    assert!(
        String::from_utf8(to_canonical_json(&empty))
            .unwrap()
            .ends_with(r#""layers":[]}"#)
    );
}

#[test]
fn oci_layout_round_trip() {
    let store = TestStore::new();
    let f = fixture(&store);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(&dir, &store, &f.image).unwrap();

    assert_eq!(
        fs::read(dir.join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = fs::read_to_string(dir.join("index.json")).unwrap();
    assert_eq!(
        index,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"v1"}},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            f.image.manifest, f.image.size
        )
    );
    let mut names: Vec<String> = fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want = vec![
        f.image.manifest.hex(),
        f.config_digest.hex(),
        f.layers[0].digest.hex(),
        f.layers[1].digest.hex(),
    ];
    want.sort();
    assert_eq!(names, want);
    // Nothing left beside it.
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);

    let fresh = TestStore::new();
    let imported = import_oci_layout(&dir, Some("v1"), &fresh).unwrap();
    assert_eq!(imported.manifest_digest, f.image.manifest);
    assert_eq!(imported.manifest_media_type, media_type::OCI_MANIFEST);
    assert_eq!(imported.layers, f.layers);
    assert_same_image(&imported, &f);
    assert_eq!(fresh.count(), 4);
    assert_eq!(
        fs::read(fresh.blob_path(&f.image.manifest).unwrap()).unwrap(),
        f.manifest_bytes
    );
    // By digest, and as the only image.
    let by_digest = import_oci_layout(&dir, Some(&f.image.manifest.to_string()), &fresh).unwrap();
    assert_eq!(by_digest, imported);
    assert_eq!(import_oci_layout(&dir, None, &fresh).unwrap(), imported);
    // And out again from the fresh store: the same layout.
    let again = out.path().join("again");
    write_oci_layout(&again, &fresh, &imported.image_ref(Some("v1".to_owned()))).unwrap();
    assert_eq!(fs::read_to_string(again.join("index.json")).unwrap(), index);
}

#[test]
fn oci_layout_replaces_a_layout_but_nothing_else() {
    let store = TestStore::new();
    let f = fixture(&store);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(&dir, &store, &f.image).unwrap();
    let retagged = ImageRef {
        tag: Some("v2".to_owned()),
        ..f.image.clone()
    };
    write_oci_layout(&dir, &store, &retagged).unwrap();
    assert!(
        fs::read_to_string(dir.join("index.json"))
            .unwrap()
            .contains(r#""org.opencontainers.image.ref.name":"v2""#)
    );
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        1,
        "old layout removed"
    );

    // An empty directory is fine to fill.
    let empty = out.path().join("empty");
    fs::create_dir(&empty).unwrap();
    write_oci_layout(&empty, &store, &f.image).unwrap();
    assert!(empty.join("oci-layout").is_file());

    // A directory with other things in it is not ours to replace.
    let precious = out.path().join("precious");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let err = write_oci_layout(&precious, &store, &f.image).unwrap_err();
    assert!(matches!(err, OciError::RefuseReplace { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(precious.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        3,
        "no temporary left"
    );
}

#[test]
fn oci_archive_round_trip_is_deterministic() {
    let store = TestStore::new();
    let f = fixture(&store);
    let out = tempfile::tempdir().unwrap();
    let a = out.path().join("a.tar");
    let b = out.path().join("b.tar");
    write_oci_archive(&a, &store, &f.image).unwrap();
    write_oci_archive(&b, &store, &f.image).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        2,
        "no temporary left"
    );

    let entries = tar_entries(&a);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(names[names.len() - 2..], ["index.json", "oci-layout"]);
    for e in &entries {
        let want_mode = if e.kind == '5' { 0o755 } else { 0o644 };
        assert_eq!(
            (e.mode, e.uid, e.gid, e.mtime),
            (want_mode, 0, 0, 0),
            "{}",
            e.name
        );
    }
    // The manifest is in there byte for byte.
    let manifest_entry = entries
        .iter()
        .find(|e| e.name == format!("blobs/sha256/{}", f.image.manifest.hex()))
        .unwrap();
    assert_eq!(manifest_entry.content, f.manifest_bytes);

    let fresh = TestStore::new();
    let imported = import_oci_archive(&a, Some("v1"), &fresh).unwrap();
    assert_eq!(imported.manifest_digest, f.image.manifest);
    assert_eq!(imported.layers, f.layers);
    assert_same_image(&imported, &f);
}

#[test]
fn docker_archive_round_trip() {
    let store = TestStore::new();
    let f = fixture(&store);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("docker.tar");
    let tags = vec!["example/app:v1".to_owned(), "localhost:5000/app".to_owned()];
    write_docker_archive(
        &file,
        &store,
        &f.image,
        &tags,
        &BuiltinDecompressor::new(&store),
    )
    .unwrap();

    let entries = tar_entries(&file);
    let get = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .content
            .clone()
    };
    let manifest_json = String::from_utf8(get("manifest.json")).unwrap();
    assert_eq!(
        manifest_json,
        format!(
            r#"[{{"Config":"blobs/sha256/{}","RepoTags":["example/app:v1","localhost:5000/app:latest"],"Layers":["blobs/sha256/{}","blobs/sha256/{}"]}}]"#,
            f.config_digest.hex(),
            f.diff_ids[0].hex(),
            f.diff_ids[1].hex()
        )
    );
    assert_eq!(
        String::from_utf8(get("repositories")).unwrap(),
        format!(
            r#"{{"example/app":{{"v1":"{top}"}},"localhost:5000/app":{{"latest":"{top}"}}}}"#,
            top = f.diff_ids[1].hex()
        )
    );
    // Layers are uncompressed: each blob's digest is its diffID.
    for d in &f.diff_ids {
        assert_eq!(Digest::of(&get(&format!("blobs/sha256/{}", d.hex()))), *d);
    }
    assert_eq!(
        get(&format!("blobs/sha256/{}", f.config_digest.hex())),
        f.config_bytes
    );
    let index = String::from_utf8(get("index.json")).unwrap();
    assert!(
        index.contains(r#""io.containerd.image.name":"docker.io/example/app:v1""#),
        "{index}"
    );
    assert!(
        index.contains(r#""io.containerd.image.name":"localhost:5000/app:latest""#),
        "{index}"
    );

    // Deterministic.
    let again = out.path().join("again.tar");
    write_docker_archive(
        &again,
        &store,
        &f.image,
        &tags,
        &BuiltinDecompressor::new(&store),
    )
    .unwrap();
    assert_eq!(fs::read(&file).unwrap(), fs::read(&again).unwrap());

    // Imports as a Docker archive: layers kept as plain tars, named by their diffIDs.
    let fresh = TestStore::new();
    let imported = import_docker_archive(&file, Some("example/app:v1"), &fresh).unwrap();
    assert_same_image(&imported, &f);
    let layer_digests: Vec<Digest> = imported.layers.iter().map(|l| l.digest).collect();
    assert_eq!(layer_digests, f.diff_ids);
    assert!(
        imported
            .layers
            .iter()
            .all(|l| l.media_type == media_type::OCI_LAYER_TAR)
    );
    assert_eq!(
        import_docker_archive(&file, Some("localhost:5000/app:latest"), &fresh).unwrap(),
        imported
    );
    assert_eq!(
        import_docker_archive(&file, Some(&f.config_digest.to_string()), &fresh).unwrap(),
        imported
    );
    // And as an OCI archive (it is one too), to the same manifest.
    let as_oci = import_oci_archive(&file, Some("v1"), &TestStore::new()).unwrap();
    assert_eq!(as_oci.manifest_digest, imported.manifest_digest);
    let by_name = import_oci_archive(&file, Some("docker.io/example/app:v1"), &TestStore::new());
    assert_eq!(by_name.unwrap().manifest_digest, imported.manifest_digest);
}

#[test]
fn docker_archive_uses_the_callers_opener_and_checks_it() {
    let store = TestStore::new();
    let f = fixture(&store);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("docker.tar");
    let path = store.blob_path(&f.layers[1].digest).unwrap();
    let calls = std::cell::Cell::new(0);
    let opener = |layer: &Descriptor| -> io::Result<Box<dyn Read>> {
        assert_eq!(
            layer.digest, f.layers[1].digest,
            "plain layers are copied directly"
        );
        calls.set(calls.get() + 1);
        Ok(Box::new(flate2::read::GzDecoder::new(fs::File::open(
            &path,
        )?)))
    };
    write_docker_archive(&file, &store, &f.image, &[], &opener).unwrap();
    assert_eq!(calls.get(), 2, "measured once, written once");
    let imported = import_docker_archive(&file, None, &TestStore::new()).unwrap();
    assert_same_image(&imported, &f);

    // An opener that yields the wrong bytes is caught, and no archive appears.
    let liar = |_: &Descriptor| -> io::Result<Box<dyn Read>> {
        Ok(Box::new(io::Cursor::new(make_tar(&[(
            "x", 0o644, b"not it",
        )]))))
    };
    let bad = out.path().join("bad.tar");
    let err = write_docker_archive(&bad, &store, &f.image, &[], &liar).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    assert!(!bad.exists());

    // A size hint that is wrong is caught while writing.
    struct Hinted<'a>(&'a Path, u64);
    impl LayerOpener for Hinted<'_> {
        fn open_uncompressed(&self, _: &Descriptor) -> io::Result<Box<dyn Read + '_>> {
            Ok(Box::new(flate2::read::GzDecoder::new(fs::File::open(
                self.0,
            )?)))
        }
        fn uncompressed_size(&self, _: &Descriptor) -> Option<u64> {
            Some(self.1)
        }
    }
    let err = write_docker_archive(&bad, &store, &f.image, &[], &Hinted(&path, 512)).unwrap_err();
    assert!(matches!(err, OciError::SizeMismatch { .. }), "{err}");
    assert!(!bad.exists());
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        1,
        "no temporary left"
    );
}

#[test]
fn docker_archive_refuses_bad_repo_tags() {
    let store = TestStore::new();
    let f = fixture(&store);
    let out = tempfile::tempdir().unwrap();
    for bad in ["app/Upper:v1", "app:", "app@sha256:00", "app:-x", "a//b"] {
        let err = write_docker_archive(
            &out.path().join("x.tar"),
            &store,
            &f.image,
            &[bad.to_owned()],
            &BuiltinDecompressor::new(&store),
        )
        .unwrap_err();
        assert!(matches!(err, OciError::Invalid(_)), "{bad}: {err}");
    }
}

/// Replaces a file of an exported layout with other content (a new inode: the original may be
/// hard-linked to the store).
fn replace_file(path: &Path, content: &[u8]) {
    fs::remove_file(path).unwrap();
    fs::write(path, content).unwrap();
}

#[test]
fn tampered_blob_is_refused_and_not_stored() {
    let store = TestStore::new();
    let f = fixture(&store);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(&dir, &store, &f.image).unwrap();
    let layer_path = dir.join("blobs/sha256").join(f.layers[0].digest.hex());
    let mut content = fs::read(&layer_path).unwrap();
    content[600] ^= 1; // same size, different bytes
    replace_file(&layer_path, &content);

    let fresh = TestStore::new();
    let err = import_oci_layout(&dir, None, &fresh).unwrap_err();
    match &err {
        OciError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, f.layers[0].digest);
            assert_eq!(*actual, Digest::of(&content));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains("layer 0"), "{err}");
    assert!(fresh.blob_path(&f.layers[0].digest).is_none());
    assert!(fresh.blob_path(&Digest::of(&content)).is_none());
    assert!(
        fresh.blob_path(&f.image.manifest).is_none(),
        "no manifest for a broken image"
    );

    // A longer blob is a size mismatch, found without reading it all.
    content.extend_from_slice(&[0; 4096]);
    replace_file(&layer_path, &content);
    let err = import_oci_layout(&dir, None, &fresh).unwrap_err();
    assert!(matches!(err, OciError::SizeMismatch { .. }), "{err}");

    // A tampered config is caught too.
    replace_file(
        &layer_path,
        &fs::read(store.blob_path(&f.layers[0].digest).unwrap()).unwrap(),
    );
    let config_path = dir.join("blobs/sha256").join(f.config_digest.hex());
    let mut config = f.config_bytes.clone();
    let at = config.len() - 3;
    config[at] = b'X';
    replace_file(&config_path, &config);
    let err = import_oci_layout(&dir, None, &fresh).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
}

#[test]
fn store_corruption_is_caught_on_export() {
    let store = TestStore::new();
    let f = fixture(&store);
    let path = store.blob_path(&f.layers[0].digest).unwrap();
    let mut content = fs::read(&path).unwrap();
    content[700] ^= 0xff;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    replace_file(&path, &content);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.tar");
    let err = write_oci_archive(&file, &store, &f.image).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    assert!(!file.exists());
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        0,
        "no temporary left"
    );
}

#[test]
fn missing_blobs_and_unknown_references() {
    let store = TestStore::new();
    let f = fixture(&store);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(&dir, &store, &f.image).unwrap();

    let err = import_oci_layout(&dir, Some("v2"), &TestStore::new()).unwrap_err();
    assert!(matches!(err, OciError::NoSuchReference { .. }), "{err}");
    assert!(err.to_string().contains("v1"), "lists what there is: {err}");
    let err = import_oci_layout(&dir, Some("sha256:nope"), &TestStore::new()).unwrap_err();
    assert!(matches!(err, OciError::Invalid(_)), "{err}");

    fs::remove_file(dir.join("blobs/sha256").join(f.layers[1].digest.hex())).unwrap();
    let err = import_oci_layout(&dir, None, &TestStore::new()).unwrap_err();
    match err {
        OciError::MissingBlob { digest, .. } => assert_eq!(digest, f.layers[1].digest),
        other => panic!("{other}"),
    }

    let err = import_oci_layout(out.path(), None, &TestStore::new()).unwrap_err();
    assert!(err.to_string().contains("not an OCI image layout"), "{err}");

    // Exporting an image whose blob the store lacks.
    let err = write_oci_layout(
        &out.path().join("other"),
        &store,
        &ImageRef {
            manifest: Digest::of(b"absent"),
            size: 2,
            tag: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, OciError::MissingBlob { .. }), "{err}");
}

/// Builds a tar of `entries` (raw names, written without any checks) with an optional link.
fn raw_tar(entries: &[(&[u8], &[u8])], links: &[(&[u8], &[u8], ::tar::EntryType)]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut h = ::tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        h.set_entry_type(::tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *content).unwrap();
    }
    for (name, target, kind) in links {
        let mut h = ::tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_entry_type(*kind);
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_archives_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            raw_tar(
                &[(b"oci-layout", layout), (b"blobs/../../etc/passwd", b"x")],
                &[],
            ),
        ),
        ("absolute", raw_tar(&[(b"/oci-layout", layout)], &[])),
        (
            "symlink out",
            raw_tar(
                &[(b"oci-layout", layout)],
                &[(
                    b"index.json",
                    b"../../index.json",
                    ::tar::EntryType::Symlink,
                )],
            ),
        ),
        (
            "absolute symlink",
            raw_tar(
                &[(b"oci-layout", layout)],
                &[(b"index.json", b"/etc/passwd", ::tar::EntryType::Symlink)],
            ),
        ),
        (
            "hard link out",
            raw_tar(
                &[(b"oci-layout", layout)],
                &[(b"index.json", b"../index.json", ::tar::EntryType::Link)],
            ),
        ),
    ];
    for (what, bytes) in cases {
        let file = out.path().join("x.tar");
        fs::write(&file, bytes).unwrap();
        let err = import_oci_archive(&file, None, &TestStore::new()).unwrap_err();
        assert!(matches!(err, OciError::UnsafePath { .. }), "{what}: {err}");
        let err = import_docker_archive(&file, None, &TestStore::new()).unwrap_err();
        assert!(matches!(err, OciError::UnsafePath { .. }), "{what}: {err}");
    }

    // A manifest.json naming a path outside the archive.
    let list = br#"[{"Config":"../config.json","RepoTags":[],"Layers":[]}]"#;
    let file = out.path().join("x.tar");
    fs::write(&file, raw_tar(&[(b"manifest.json", list)], &[])).unwrap();
    let err = import_docker_archive(&file, None, &TestStore::new()).unwrap_err();
    assert!(matches!(err, OciError::UnsafePath { .. }), "{err}");

    // A link loop.
    fs::write(
        &file,
        raw_tar(
            &[],
            &[
                (b"manifest.json", b"a", ::tar::EntryType::Symlink),
                (b"a", b"manifest.json", ::tar::EntryType::Symlink),
            ],
        ),
    )
    .unwrap();
    let err = import_docker_archive(&file, None, &TestStore::new()).unwrap_err();
    assert!(err.to_string().contains("loop"), "{err}");

    // A compressed archive gets a clear word.
    fs::write(&file, gzip(&raw_tar(&[(b"oci-layout", layout)], &[]))).unwrap();
    let err = import_oci_archive(&file, None, &TestStore::new()).unwrap_err();
    assert!(err.to_string().contains("gzip-compressed"), "{err}");
}

/// A classic `docker save` archive, written by hand: `<id>/layer.tar` (one a symlink to another,
/// as Docker writes repeated layers), `<hex>.json`, gzip for one layer.
#[test]
fn classic_docker_archive_with_gzip_and_symlinked_layers() {
    let tar1 = make_tar(&[("a", 0o644, b"one")]);
    let tar2 = make_tar(&[("b", 0o644, b"two")]);
    let gz2 = gzip(&tar2);
    let diff_ids = vec![Digest::of(&tar1), Digest::of(&tar2), Digest::of(&tar1)];
    let config = ImageConfig {
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: diff_ids.clone(),
        },
        ..ImageConfig::default()
    };
    let config_bytes = to_canonical_json(&config);
    let config_name = format!("{}.json", Digest::of(&config_bytes).hex());
    let list = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["busybox:latest"],"Layers":["l1/layer.tar","l2/layer.tar","l3/layer.tar"]}}]"#
    );
    let archive = raw_tar(
        &[
            (config_name.as_bytes(), &config_bytes),
            (b"./l1/layer.tar", &tar1),
            (b"l2/layer.tar", &gz2),
            (b"manifest.json", list.as_bytes()),
        ],
        &[(
            b"l3/layer.tar",
            b"../l1/layer.tar",
            ::tar::EntryType::Symlink,
        )],
    );
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("classic.tar");
    fs::write(&file, &archive).unwrap();

    let store = TestStore::new();
    let imported = import_docker_archive(&file, Some("busybox"), &store).unwrap();
    assert_eq!(imported.config.rootfs.diff_ids, diff_ids);
    assert_eq!(imported.config_digest, Digest::of(&config_bytes));
    let got: Vec<(&str, Digest, u64)> = imported
        .layers
        .iter()
        .map(|l| (l.media_type.as_str(), l.digest, l.size))
        .collect();
    assert_eq!(
        got,
        vec![
            (media_type::OCI_LAYER_TAR, diff_ids[0], tar1.len() as u64),
            (
                media_type::OCI_LAYER_TAR_GZIP,
                Digest::of(&gz2),
                gz2.len() as u64
            ),
            (media_type::OCI_LAYER_TAR, diff_ids[0], tar1.len() as u64),
        ]
    );
    // The new manifest is in the store and describes exactly this.
    let manifest_bytes = fs::read(store.blob_path(&imported.manifest_digest).unwrap()).unwrap();
    assert_eq!(manifest_bytes, to_canonical_json(&imported.manifest));

    // Round trip through our own Docker archive writer: gzip layer decompressed on the way.
    let again = out.path().join("again.tar");
    write_docker_archive(
        &again,
        &store,
        &imported.image_ref(None),
        &["busybox:latest".to_owned()],
        &BuiltinDecompressor::new(&store),
    )
    .unwrap();
    let back = import_docker_archive(&again, None, &TestStore::new()).unwrap();
    assert_eq!(back.config_digest, imported.config_digest);
    assert!(
        back.layers
            .iter()
            .all(|l| l.media_type == media_type::OCI_LAYER_TAR)
    );

    // A layer that does not match its diffID.
    let bad_list = list.replace("l2/layer.tar", "l1/layer.tar");
    let archive = raw_tar(
        &[
            (config_name.as_bytes(), &config_bytes),
            (b"l1/layer.tar", &tar1),
            (b"manifest.json", bad_list.as_bytes()),
        ],
        &[(
            b"l3/layer.tar",
            b"../l1/layer.tar",
            ::tar::EntryType::Symlink,
        )],
    );
    fs::write(&file, &archive).unwrap();
    let err = import_docker_archive(&file, None, &TestStore::new()).unwrap_err();
    match err {
        OciError::DigestMismatch {
            expected, actual, ..
        } => assert_eq!((expected, actual), (diff_ids[1], diff_ids[0])),
        other => panic!("{other}"),
    }

    // A config whose name claims another digest.
    let archive = raw_tar(
        &[
            (config_name.as_bytes(), b"{}"),
            (b"manifest.json", list.as_bytes()),
        ],
        &[],
    );
    fs::write(&file, &archive).unwrap();
    let err = import_docker_archive(&file, None, &TestStore::new()).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
}

/// An index of two platforms: export keeps both; import picks linux/amd64.
#[test]
fn multi_platform_index_resolves_to_linux_amd64() {
    let store = TestStore::new();
    let f = fixture(&store);
    let mut arm_config = f.config.clone();
    arm_config.architecture = "arm64".to_owned();
    arm_config.variant = "v8".to_owned();
    let (arm_config_bytes, arm_config_digest) = canonical_digest(&arm_config);
    store.put(&arm_config_bytes);
    let arm_manifest = Manifest::oci(
        Descriptor::new(
            media_type::OCI_CONFIG,
            arm_config_digest,
            arm_config_bytes.len() as u64,
        ),
        f.layers.clone(),
    );
    let (arm_bytes, arm_digest) = canonical_digest(&arm_manifest);
    store.put(&arm_bytes);
    let mut arm = Descriptor::new(media_type::OCI_MANIFEST, arm_digest, arm_bytes.len() as u64);
    arm.platform = Some(arm_config.platform());
    let mut amd = Descriptor::new(media_type::OCI_MANIFEST, f.image.manifest, f.image.size);
    amd.platform = Some(Platform::linux_amd64());
    let (index_bytes, index_digest) = canonical_digest(&Index::oci(vec![arm, amd]));
    store.put(&index_bytes);
    let image = ImageRef {
        manifest: index_digest,
        size: index_bytes.len() as u64,
        tag: Some("multi".to_owned()),
    };

    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(&dir, &store, &image).unwrap();
    assert_eq!(fs::read_dir(dir.join("blobs/sha256")).unwrap().count(), 7);
    let index = fs::read_to_string(dir.join("index.json")).unwrap();
    assert!(
        index.contains(media_type::OCI_INDEX) && !index.contains("platform"),
        "{index}"
    );

    let imported = import_oci_layout(&dir, Some("multi"), &TestStore::new()).unwrap();
    assert_eq!(imported.manifest_digest, f.image.manifest);
    assert_same_image(&imported, &f);

    // Per-platform entries under one tag in index.json, as some tools write: amd64 is chosen.
    let mut arm_entry =
        Descriptor::new(media_type::OCI_MANIFEST, arm_digest, arm_bytes.len() as u64);
    arm_entry.platform = Some(arm_config.platform());
    let mut amd_entry = Descriptor::new(media_type::OCI_MANIFEST, f.image.manifest, f.image.size);
    amd_entry.platform = Some(Platform::linux_amd64());
    for d in [&mut arm_entry, &mut amd_entry] {
        d.annotations
            .insert(annotation::REF_NAME.to_owned(), "both".to_owned());
    }
    replace_file(
        &dir.join("index.json"),
        &to_canonical_json(&Index::oci(vec![arm_entry, amd_entry])),
    );
    let imported = import_oci_layout(&dir, Some("both"), &TestStore::new()).unwrap();
    assert_eq!(imported.manifest_digest, f.image.manifest);
    let err = import_oci_layout(&dir, Some("multi"), &TestStore::new()).unwrap_err();
    assert!(matches!(err, OciError::NoSuchReference { .. }), "{err}");

    // A Docker archive of the index is the amd64 image.
    let file = out.path().join("docker.tar");
    write_docker_archive(
        &file,
        &store,
        &image,
        &[],
        &BuiltinDecompressor::new(&store),
    )
    .unwrap();
    let back = import_docker_archive(&file, None, &TestStore::new()).unwrap();
    assert_eq!(back.config_digest, f.config_digest);
}

#[test]
fn several_images_need_a_reference() {
    let store = TestStore::new();
    let f = fixture(&store);
    let other_config = ImageConfig {
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        ..ImageConfig::default()
    };
    let (cb, cd) = canonical_digest(&other_config);
    store.put(&cb);
    let (mb, md) = canonical_digest(&Manifest::oci(
        Descriptor::new(media_type::OCI_CONFIG, cd, cb.len() as u64),
        vec![],
    ));
    store.put(&mb);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(&dir, &store, &f.image).unwrap();
    // Add a second image to index.json by hand, as a tool might.
    let other = out.path().join("other");
    write_oci_layout(
        &other,
        &store,
        &ImageRef {
            manifest: md,
            size: mb.len() as u64,
            tag: Some("empty".to_owned()),
        },
    )
    .unwrap();
    let mut index: Index =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let other_index: Index =
        serde_json::from_slice(&fs::read(other.join("index.json")).unwrap()).unwrap();
    index.manifests.extend(other_index.manifests);
    replace_file(&dir.join("index.json"), &to_canonical_json(&index));
    for name in [md.hex(), cd.hex()] {
        fs::copy(
            other.join("blobs/sha256").join(&name),
            dir.join("blobs/sha256").join(&name),
        )
        .unwrap();
    }

    let err = import_oci_layout(&dir, None, &TestStore::new()).unwrap_err();
    assert!(matches!(err, OciError::Ambiguous { .. }), "{err}");
    assert!(err.to_string().contains("v1, empty"), "{err}");
    let empty = import_oci_layout(&dir, Some("empty"), &TestStore::new()).unwrap();
    assert_eq!(empty.manifest_digest, md);
    assert!(empty.layers.is_empty());
}

/// A zstd layer (what our store keeps) goes into a Docker archive uncompressed.
#[test]
fn docker_archive_of_a_zstd_layer() {
    let store = TestStore::new();
    let tar = make_tar(&[("z", 0o644, b"zstd content")]);
    let compressed = zstd::encode_all(tar.as_slice(), 3).unwrap();
    let layer = store.put(&compressed);
    let config = ImageConfig {
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: vec![Digest::of(&tar)],
        },
        ..ImageConfig::default()
    };
    let (cb, cd) = canonical_digest(&config);
    store.put(&cb);
    let (mb, md) = canonical_digest(&Manifest::oci(
        Descriptor::new(media_type::OCI_CONFIG, cd, cb.len() as u64),
        vec![Descriptor::new(
            media_type::OCI_LAYER_TAR_ZSTD,
            layer,
            compressed.len() as u64,
        )],
    ));
    store.put(&mb);
    let image = ImageRef {
        manifest: md,
        size: mb.len() as u64,
        tag: None,
    };
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("docker.tar");
    write_docker_archive(
        &file,
        &store,
        &image,
        &[],
        &BuiltinDecompressor::new(&store),
    )
    .unwrap();
    let imported = import_docker_archive(&file, None, &TestStore::new()).unwrap();
    assert_eq!(imported.config_digest, cd);
    assert_eq!(imported.layers[0].digest, Digest::of(&tar));
    assert_eq!(imported.layers[0].size, tar.len() as u64);
}
