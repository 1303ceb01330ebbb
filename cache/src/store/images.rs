//! The image store: `<root>/images.json`, local names (`name:tag`) -> manifest digest and
//! metadata. Read without a lock (it is only ever replaced by rename); read-modify-written
//! under an exclusive flock of `<root>/images.lock`.
//!
//! ```json
//! {"version": 1, "images": {"app:latest": {"manifest": "sha256:…", "config": "sha256:…",
//!   "platform": "linux/amd64", "created": "2024-01-01T00:00:00Z"}}}
//! ```

use super::{FileLock, Store, StoreError};
use crate::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;

const IMAGES_VERSION: u32 = 1;

/// Shortest hex prefix of a manifest digest that `resolve` accepts.
pub const MIN_PREFIX: usize = 12;

/// What the image store keeps with a tag besides the manifest digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The image config blob.
    pub config: Digest,
    /// `os/arch[/variant]`, e.g. `linux/amd64`.
    pub platform: String,
    /// The config's `created` time as written there (RFC 3339), or empty.
    pub created: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ImagesFile {
    pub(super) version: u32,
    pub(super) images: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) manifest: Digest,
    #[serde(flatten)]
    pub(super) meta: ImageMeta,
}

fn bad(reference: &str, reason: &'static str) -> StoreError {
    StoreError::InvalidReference {
        reference: reference.to_owned(),
        reason,
    }
}

/// Normalises a local image name like docker does: `name` means `name:latest`; the
/// repository is lower-case path components (`[a-z0-9]+` joined by `.`, `_`, `__` or `-`s)
/// separated by `/`, optionally after a registry host (`host[:port]`, recognised by a `.`,
/// a `:` or `localhost`); the tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn normalize_name(name: &str) -> Result<String, StoreError> {
    if name.is_empty() {
        return Err(bad(name, "the name is empty"));
    }
    if name.contains('@') {
        return Err(bad(
            name,
            "a digest reference (name@sha256:…) cannot be a tag; use name:tag",
        ));
    }
    let (repo, tag) = match name.rfind(':') {
        Some(i) if !name[i + 1..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "latest"),
    };
    if repo.len() > 255 {
        return Err(bad(
            name,
            "the repository name is longer than 255 characters",
        ));
    }
    let tag_ok = tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !tag_ok {
        return Err(bad(
            name,
            "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
        ));
    }
    let mut components = repo.split('/').peekable();
    if let Some(first) = components.peek().copied()
        && repo.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        if !valid_host(first) {
            return Err(bad(name, "the registry host is not host[:port]"));
        }
        components.next();
    }
    for component in components {
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(name, "repository names must be lower-case"));
        }
        if !valid_component(component) {
            return Err(bad(
                name,
                "each part of a repository name is lower-case letters and digits, separated \
                 by '.', '_', '__' or '-'",
            ));
        }
    }
    Ok(format!("{repo}:{tag}"))
}

/// One `/`-separated part of a repository name (the distribution spec's path component):
/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
pub fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !b.first().is_some_and(|&x| alnum(x)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !b.get(i).is_some_and(|&x| alnum(x)) {
            return false;
        }
    }
    true
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && name.split('.').all(label_ok)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Store {
    fn images_path(&self) -> PathBuf {
        self.root().join("images.json")
    }

    pub(super) fn load_images(&self) -> Result<ImagesFile, StoreError> {
        let path = self.images_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ImagesFile {
                    version: IMAGES_VERSION,
                    images: BTreeMap::new(),
                });
            }
            Err(e) => return Err(StoreError::io("read", path)(e)),
        };
        let file: ImagesFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.version > IMAGES_VERSION {
            return Err(StoreError::NewerVersion {
                root: path,
                found: file.version,
                supported: IMAGES_VERSION,
            });
        }
        Ok(file)
    }

    /// Read-modify-write of images.json under images.lock; written only when `change` says
    /// it changed something.
    fn update_images<R>(
        &self,
        change: impl FnOnce(&mut ImagesFile) -> (bool, R),
    ) -> Result<R, StoreError> {
        let _lock = FileLock::exclusive(&self.root().join("images.lock"), self.root())?;
        let mut file = self.load_images()?;
        let (changed, result) = change(&mut file);
        if changed {
            file.version = IMAGES_VERSION;
            let mut json = serde_json::to_vec_pretty(&file).map_err(|e| {
                StoreError::io("serialise", self.images_path())(io::Error::other(e))
            })?;
            json.push(b'\n');
            self.write_atomic(&self.images_path(), &json)?;
        }
        Ok(result)
    }

    /// Points `name` (`name:tag`, or `name` for `name:latest`) at a manifest blob the store
    /// holds; returns the manifest it pointed at before, if any.
    pub fn tag(
        &self,
        name: &str,
        manifest: &Digest,
        meta: ImageMeta,
    ) -> Result<Option<Digest>, StoreError> {
        let name = normalize_name(name)?;
        if !self.has_blob(manifest) {
            return Err(StoreError::MissingBlob {
                digest: *manifest,
                root: self.root().to_owned(),
            });
        }
        let entry = Entry {
            manifest: *manifest,
            meta,
        };
        self.update_images(|file| {
            let old = file.images.get(&name);
            let changed =
                old.is_none_or(|old| old.manifest != entry.manifest || old.meta != entry.meta);
            let previous = old.map(|old| old.manifest);
            if changed {
                file.images.insert(name, entry);
            }
            (changed, previous)
        })
    }

    /// Removes the tag `name`; returns the manifest it pointed at, or None when there was no
    /// such tag. The blobs stay until prune.
    pub fn untag(&self, name: &str) -> Result<Option<Digest>, StoreError> {
        let name = normalize_name(name)?;
        self.update_images(|file| {
            let old = file.images.remove(&name).map(|e| e.manifest);
            (old.is_some(), old)
        })
    }

    /// Finds a tagged image by `name:tag`, `name` (meaning `name:latest`), `sha256:<hex>`, 64
    /// hex digits, or a unique prefix of at least 12 hex digits of a manifest digest (with or
    /// without `sha256:`). A name wins over a prefix that could also be a name. Ok(None) when
    /// nothing matches; an error for an invalid reference or an ambiguous prefix.
    pub fn resolve(&self, reference: &str) -> Result<Option<(Digest, ImageMeta)>, StoreError> {
        let file = self.load_images()?;
        if let Some(hex_part) = reference.strip_prefix("sha256:") {
            if hex_part.len() < MIN_PREFIX || hex_part.len() > 64 || !is_lower_hex(hex_part) {
                return Err(bad(
                    reference,
                    "a digest is sha256: and 12 to 64 lower-case hex digits",
                ));
            }
            return by_prefix(&file, hex_part, reference);
        }
        let looks_hex =
            reference.len() >= MIN_PREFIX && reference.len() <= 64 && is_lower_hex(reference);
        if reference.len() == 64 && looks_hex {
            return by_prefix(&file, reference, reference);
        }
        match normalize_name(reference) {
            Ok(name) => {
                if let Some(entry) = file.images.get(&name) {
                    return Ok(Some((entry.manifest, entry.meta.clone())));
                }
                if looks_hex {
                    return by_prefix(&file, reference, reference);
                }
                Ok(None)
            }
            Err(_) if looks_hex => by_prefix(&file, reference, reference),
            Err(e) => Err(e),
        }
    }

    /// All tags, sorted by name: (name:tag, manifest digest, metadata).
    pub fn images(&self) -> Result<Vec<(String, Digest, ImageMeta)>, StoreError> {
        Ok(self
            .load_images()?
            .images
            .into_iter()
            .map(|(name, entry)| (name, entry.manifest, entry.meta))
            .collect())
    }
}

fn by_prefix(
    file: &ImagesFile,
    prefix: &str,
    reference: &str,
) -> Result<Option<(Digest, ImageMeta)>, StoreError> {
    let mut found: Option<&Entry> = None;
    let mut matches: Vec<Digest> = Vec::new();
    for entry in file.images.values() {
        if entry.manifest.hex().starts_with(prefix) && !matches.contains(&entry.manifest) {
            matches.push(entry.manifest);
            found.get_or_insert(entry);
        }
    }
    match matches.len() {
        0 => Ok(None),
        1 => Ok(found.map(|e| (e.manifest, e.meta.clone()))),
        _ => {
            matches.sort();
            Err(StoreError::AmbiguousPrefix {
                prefix: reference.to_owned(),
                matches,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ok = [
            ("app", "app:latest"),
            ("app:v1", "app:v1"),
            ("my-org/app_x:1.2.3-rc", "my-org/app_x:1.2.3-rc"),
            ("a__b/c.d/e--f", "a__b/c.d/e--f:latest"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost:5000/app:_t", "localhost:5000/app:_t"),
            (
                "Registry.Example.com/team/app:X",
                "Registry.Example.com/team/app:X",
            ),
            ("localhost/app", "localhost/app:latest"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_name(input).unwrap(), want, "{input}");
        }
        let bad = [
            "",
            "App",
            "app:",
            "app:-x",
            "app:.x",
            "app@sha256:abc",
            "app/",
            "/app",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a b",
            "host:port/app",
            "app:t/x",
        ];
        for input in bad {
            assert!(normalize_name(input).is_err(), "{input:?} was accepted");
        }
        assert!(normalize_name(&format!("app:{}", "t".repeat(129))).is_err());
        let msg = normalize_name("App").unwrap_err().to_string();
        assert!(
            msg.contains("lower-case") && msg.contains("\"App\""),
            "{msg}"
        );
    }

    fn meta(n: u8) -> ImageMeta {
        ImageMeta {
            config: Digest::from_bytes([n; 32]),
            platform: "linux/amd64".into(),
            created: "2024-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn tag_untag_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.images().unwrap(), vec![]);
        assert_eq!(store.resolve("app").unwrap(), None);

        // Only manifests the store holds can be tagged.
        let missing = Digest::of(b"no such manifest");
        assert!(matches!(
            store.tag("app", &missing, meta(0)),
            Err(StoreError::MissingBlob { .. })
        ));

        let m1 = store.put_blob_bytes(b"{\"manifest\":1}").unwrap();
        let m2 = store.put_blob_bytes(b"{\"manifest\":2}").unwrap();
        assert_eq!(store.tag("app", &m1, meta(1)).unwrap(), None);
        assert_eq!(store.tag("app:v2", &m2, meta(2)).unwrap(), None);
        assert_eq!(store.tag("other/x:1", &m1, meta(1)).unwrap(), None);
        assert!(store.tag("Bad", &m1, meta(1)).is_err());

        assert_eq!(
            store.images().unwrap(),
            vec![
                ("app:latest".to_owned(), m1, meta(1)),
                ("app:v2".to_owned(), m2, meta(2)),
                ("other/x:1".to_owned(), m1, meta(1)),
            ]
        );
        assert_eq!(store.resolve("app").unwrap(), Some((m1, meta(1))));
        assert_eq!(store.resolve("app:latest").unwrap(), Some((m1, meta(1))));
        assert_eq!(store.resolve("app:v2").unwrap(), Some((m2, meta(2))));
        assert_eq!(store.resolve("app:v3").unwrap(), None);
        assert_eq!(store.resolve(&m2.to_string()).unwrap(), Some((m2, meta(2))));
        assert_eq!(store.resolve(&m2.hex()).unwrap(), Some((m2, meta(2))));
        assert_eq!(store.resolve(&m2.hex()[..12]).unwrap(), Some((m2, meta(2))));
        assert_eq!(
            store
                .resolve(&format!("sha256:{}", &m1.hex()[..20]))
                .unwrap(),
            Some((m1, meta(1)))
        );
        // Too short to be a prefix: it is only a name, and no such name exists.
        assert_eq!(store.resolve(&m2.hex()[..11]).unwrap(), None);
        assert!(
            store
                .resolve(&format!("sha256:{}", &m2.hex()[..11]))
                .is_err()
        );
        assert_eq!(store.resolve(&Digest::of(b"x").to_string()).unwrap(), None);
        assert!(matches!(
            store.resolve("Upper"),
            Err(StoreError::InvalidReference { .. })
        ));

        // Retagging reports what the tag pointed at.
        assert_eq!(store.tag("app", &m2, meta(2)).unwrap(), Some(m1));
        assert_eq!(store.resolve("app").unwrap(), Some((m2, meta(2))));

        assert_eq!(store.untag("app:v2").unwrap(), Some(m2));
        assert_eq!(store.untag("app:v2").unwrap(), None);
        assert_eq!(store.resolve("app:v2").unwrap(), None);
        assert_eq!(store.images().unwrap().len(), 2);

        // The file is what a person can read, and nothing is left in tmp/.
        let text = fs::read_to_string(store.root().join("images.json")).unwrap();
        assert!(
            text.contains("\"other/x:1\"") && text.contains("\"platform\""),
            "{text}"
        );
        assert!(fs::read_dir(store.tmp_dir()).unwrap().next().is_none());
    }

    #[test]
    fn ambiguous_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Find two blobs whose digests share 12 hex digits? Too costly; instead write
        // images.json by hand with digests that share a prefix.
        let a = Digest::parse(&format!("{}{}", "a".repeat(20), "0".repeat(44))).unwrap();
        let b = Digest::parse(&format!("{}{}", "a".repeat(20), "1".repeat(44))).unwrap();
        let json = serde_json::json!({"version": 1, "images": {
            "x:1": {"manifest": a, "config": a, "platform": "linux/amd64", "created": ""},
            "y:1": {"manifest": b, "config": b, "platform": "linux/amd64", "created": ""},
            "z:1": {"manifest": b, "config": b, "platform": "linux/amd64", "created": ""},
        }});
        fs::write(store.root().join("images.json"), json.to_string()).unwrap();
        let err = store.resolve(&"a".repeat(12)).unwrap_err();
        match &err {
            StoreError::AmbiguousPrefix { matches, .. } => assert_eq!(matches, &[a, b]),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("give more digits"));
        // Two names for one manifest are not ambiguous.
        assert_eq!(
            store
                .resolve(&format!("{}1", "a".repeat(20)))
                .unwrap()
                .unwrap()
                .0,
            b
        );
    }

    #[test]
    fn damaged_images_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.root().join("images.json"), b"{\"version\": 1, \"ima").unwrap();
        let err = store.images().unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
        assert!(err.to_string().contains("images.json"));
        let m = store.put_blob_bytes(b"{}").unwrap();
        assert!(store.tag("app", &m, meta(0)).is_err());
        // The damaged file is left for the user to look at.
        assert!(
            fs::read(store.root().join("images.json"))
                .unwrap()
                .ends_with(b"ima")
        );
    }

    #[test]
    fn concurrent_tagging_loses_no_tag() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let m = Store::open(&root).unwrap().put_blob_bytes(b"{}").unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let root = &root;
                s.spawn(move || {
                    // One handle per thread, as separate processes would have.
                    let store = Store::open(root).unwrap();
                    for i in 0..10 {
                        store.tag(&format!("app{t}:v{i}"), &m, meta(0)).unwrap();
                    }
                });
            }
        });
        let store = Store::open(&root).unwrap();
        assert_eq!(store.images().unwrap().len(), 40);
    }
}
