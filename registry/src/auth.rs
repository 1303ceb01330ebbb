//! Credentials: the containers auth.json and Docker's config.json (`auths` with base64
//! `user:password`, `credHelpers`, `credsStore`), and `login`/`logout` writing auth.json.
//!
//! Files read, first match wins: `$REGISTRY_AUTH_FILE` alone when set (so a caller can keep
//! the user's files out of it); else `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json`, `~/.docker/config.json`.

use crate::reference::{DOCKER_HUB, normalize_registry};
use base64::Engine as _;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?} }}", self.username)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid credentials file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("credential helper docker-credential-{helper}: {reason}")]
    Helper { helper: String, reason: String },
    #[error("no credentials file location: set REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR or HOME")]
    NoLocation,
}

/// The files credentials are read from, in order.
pub fn auth_files() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut files = Vec::new();
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        files.push(Path::new(&x).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        let home = Path::new(&home);
        files.push(home.join(".config/containers/auth.json"));
        files.push(home.join(".docker/config.json"));
    }
    files
}

/// The file `login` writes and `logout` edits: `$REGISTRY_AUTH_FILE`, else
/// `$XDG_RUNTIME_DIR/containers/auth.json`, else `~/.config/containers/auth.json`.
pub fn login_file() -> Result<PathBuf, AuthFileError> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return Ok(Path::new(&x).join("containers/auth.json"));
    }
    match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        Some(home) => Ok(Path::new(&home).join(".config/containers/auth.json")),
        None => Err(AuthFileError::NoLocation),
    }
}

/// Credentials for `registry` (`host[:port]`) and `repository`, from the files of
/// [`auth_files`]; None means anonymous.
pub fn credentials_for(
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, AuthFileError> {
    for file in auth_files() {
        let Some(doc) = read_json(&file)? else {
            continue;
        };
        if let Some(c) = lookup(&doc, &file, registry, repository, &run_helper)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn read_json(file: &Path) -> Result<Option<Value>, AuthFileError> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AuthFileError::Io {
                path: file.to_owned(),
                source: e,
            });
        }
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| AuthFileError::Invalid {
        path: file.to_owned(),
        reason: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(AuthFileError::Invalid {
            path: file.to_owned(),
            reason: "the top level is not a JSON object".into(),
        });
    }
    Ok(Some(v))
}

/// The registry a key of `auths` names: Docker's `https://index.docker.io/v1/` style URLs are
/// reduced to their host; containers' `host/repo` keys keep their path.
fn key_matches(key: &str, registry: &str, repository: &str) -> Option<usize> {
    let bare = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"));
    let (host, path) = match bare {
        // A URL key names the whole registry (its path is an API version, not a repository).
        Some(rest) => (rest.split('/').next().unwrap_or(""), ""),
        None => match key.split_once('/') {
            Some((h, p)) => (h, p),
            None => (key, ""),
        },
    };
    let host = normalize_registry(host).ok()?;
    if host != registry {
        return None;
    }
    if path.is_empty() {
        return Some(0);
    }
    let path = path.trim_end_matches('/');
    // A repository-scoped key wins over the host key, the longest first.
    (repository == path || repository.starts_with(&format!("{path}/"))).then_some(path.len() + 1)
}

type Helper<'a> = dyn Fn(&str, &str) -> Result<Option<Credentials>, AuthFileError> + 'a;

fn lookup(
    doc: &Value,
    file: &Path,
    registry: &str,
    repository: &str,
    helper: &Helper,
) -> Result<Option<Credentials>, AuthFileError> {
    // credHelpers for this registry come first (Docker's order), then auths, then credsStore.
    if let Some(helpers) = doc.get("credHelpers").and_then(Value::as_object) {
        for (key, name) in helpers {
            if key_matches(key, registry, repository).is_some()
                && let Some(name) = name.as_str()
            {
                return helper(name, &server_url(registry));
            }
        }
    }
    if let Some(auths) = doc.get("auths").and_then(Value::as_object) {
        let best = auths
            .iter()
            .filter_map(|(k, v)| key_matches(k, registry, repository).map(|score| (score, v)))
            .max_by_key(|(score, _)| *score);
        if let Some((_, entry)) = best
            && let Some(c) = decode_entry(entry, file)?
        {
            return Ok(Some(c));
        }
    }
    if let Some(store) = doc.get("credsStore").and_then(Value::as_str)
        && !store.is_empty()
    {
        return helper(store, &server_url(registry));
    }
    Ok(None)
}

/// What Docker's helpers are asked for: Docker Hub under its historical URL, others by host.
fn server_url(registry: &str) -> String {
    if registry == DOCKER_HUB {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_owned()
    }
}

fn decode_entry(entry: &Value, file: &Path) -> Result<Option<Credentials>, AuthFileError> {
    let invalid = |reason: &str| AuthFileError::Invalid {
        path: file.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(auth) = entry.get("auth").and_then(Value::as_str)
        && !auth.is_empty()
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| invalid("an `auth` value is not base64"))?;
        let text = String::from_utf8(bytes).map_err(|_| invalid("an `auth` value is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| invalid("an `auth` value is not base64 of user:password"))?;
        return Ok(Some(Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        }));
    }
    // Older files keep the two apart.
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        return Ok(Some(Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        }));
    }
    Ok(None)
}

/// `docker-credential-NAME get`, the server URL on stdin, JSON on stdout. A helper that is not
/// installed, or has nothing for the server, means anonymous.
fn run_helper(name: &str, server: &str) -> Result<Option<Credentials>, AuthFileError> {
    let fail = |reason: String| AuthFileError::Helper {
        helper: name.to_owned(),
        reason,
    };
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(fail("not a valid helper name".into()));
    }
    let child = Command::new(format!("docker-credential-{name}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // Docker's helpers say "credentials not found in native keychain" for an unknown server.
        if msg.contains("not found") || msg.is_empty() {
            return Ok(None);
        }
        return Err(fail(msg));
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("unreadable answer: {e}")))?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (username, password) = (field("Username"), field("Secret"));
    if username.is_empty() && password.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials { username, password }))
}

/// Stores credentials for `registry` in `file` (other entries and fields kept).
pub fn store_credentials(
    file: &Path,
    registry: &str,
    creds: &Credentials,
) -> Result<(), AuthFileError> {
    let mut doc = read_json(file)?.unwrap_or_else(|| Value::Object(Map::new()));
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    let obj = doc.as_object_mut().ok_or_else(|| AuthFileError::Invalid {
        path: file.to_owned(),
        reason: "the top level is not a JSON object".into(),
    })?;
    let auths = obj
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(auths) = auths.as_object_mut() else {
        return Err(AuthFileError::Invalid {
            path: file.to_owned(),
            reason: "`auths` is not an object".into(),
        });
    };
    auths.insert(registry.to_owned(), serde_json::json!({ "auth": auth }));
    write_private(file, &doc)
}

/// Removes the credentials for `registry` from `file`; false when it had none.
pub fn remove_credentials(file: &Path, registry: &str) -> Result<bool, AuthFileError> {
    let Some(mut doc) = read_json(file)? else {
        return Ok(false);
    };
    let Some(auths) = doc.get_mut("auths").and_then(Value::as_object_mut) else {
        return Ok(false);
    };
    let keys: Vec<String> = auths
        .keys()
        .filter(|k| key_matches(k, registry, "").is_some_and(|s| s == 0))
        .cloned()
        .collect();
    if keys.is_empty() {
        return Ok(false);
    }
    for k in keys {
        auths.remove(&k);
    }
    write_private(file, &doc)?;
    Ok(true)
}

/// Writes `doc` to a temp name beside `file` (mode 0600) and renames it into place.
fn write_private(file: &Path, doc: &Value) -> Result<(), AuthFileError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| AuthFileError::Io { path, source }
    };
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "auth.json".into());
    let tmp = file.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(doc).map_err(|e| AuthFileError::Invalid {
        path: file.to_owned(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(file)(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_helper(_: &str, _: &str) -> Result<Option<Credentials>, AuthFileError> {
        Ok(None)
    }

    fn creds(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_config_and_containers_auth_formats() {
        let doc = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:secret")},
                "127.0.0.1:5000": {"auth": b64("me:pa:ss")},
                "quay.io/team": {"auth": b64("team:t")},
                "quay.io": {"auth": b64("all:a")},
                "old.example": {"username": "u", "password": "p"},
            }
        });
        let f = Path::new("auth.json");
        let get = |r: &str, repo: &str| lookup(&doc, f, r, repo, &no_helper).unwrap();
        assert_eq!(get("docker.io", "library/busybox"), creds("hub", "secret"));
        // The password keeps its colons.
        assert_eq!(get("127.0.0.1:5000", "x"), creds("me", "pa:ss"));
        assert_eq!(get("quay.io", "team/app"), creds("team", "t"));
        assert_eq!(get("quay.io", "other/app"), creds("all", "a"));
        assert_eq!(get("old.example", "x"), creds("u", "p"));
        assert_eq!(get("127.0.0.1:5001", "x"), None);
    }

    #[test]
    fn helpers_are_asked_in_docker_order() {
        let doc = serde_json::json!({
            "auths": {"a.example": {"auth": b64("file:f")}},
            "credHelpers": {"a.example": "one"},
            "credsStore": "store",
        });
        let helper = |name: &str, server: &str| -> Result<Option<Credentials>, AuthFileError> {
            Ok(creds(name, server))
        };
        let f = Path::new("config.json");
        assert_eq!(
            lookup(&doc, f, "a.example", "x", &helper).unwrap(),
            creds("one", "a.example")
        );
        assert_eq!(
            lookup(&doc, f, "docker.io", "x", &helper).unwrap(),
            creds("store", "https://index.docker.io/v1/")
        );
    }

    #[test]
    fn bad_auth_values_are_errors() {
        let f = Path::new("auth.json");
        for v in ["%%%", &b64("no-colon")] {
            let doc = serde_json::json!({"auths": {"h.example": {"auth": v}}});
            let e = lookup(&doc, f, "h.example", "x", &no_helper).unwrap_err();
            assert!(e.to_string().contains("auth.json"), "{e}");
        }
    }

    #[test]
    fn store_and_remove_keep_other_entries() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/auth.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            r#"{"auths":{"other.example":{"auth":"eDp5"}},"extra":1}"#,
        )
        .unwrap();
        store_credentials(&file, "127.0.0.1:5000", &creds("u", "p").unwrap()).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let doc = read_json(&file).unwrap().unwrap();
        assert_eq!(doc["extra"], 1);
        assert_eq!(
            lookup(&doc, &file, "127.0.0.1:5000", "x", &no_helper).unwrap(),
            creds("u", "p")
        );
        assert!(remove_credentials(&file, "127.0.0.1:5000").unwrap());
        assert!(!remove_credentials(&file, "127.0.0.1:5000").unwrap());
        let doc = read_json(&file).unwrap().unwrap();
        assert!(doc["auths"].get("other.example").is_some());
        // No temp file is left beside it.
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
