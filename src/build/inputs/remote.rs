//! `ADD <url>`: files fetched over HTTP(S) into the store as blobs, named by their sha256.
//!
//! - The body is streamed into a blob writer (memory stays flat whatever the size); a
//!   `--checksum` that does not match stores nothing.
//! - `<root>/remote/<blake3(url)>.json` remembers the URL's validators (ETag, Last-Modified)
//!   and the digest they stood for; the next build revalidates with `If-None-Match` /
//!   `If-Modified-Since`, and a 304 reuses the blob without a download. A record whose blob is
//!   gone (pruned) is not used.
//! - With `--checksum` and its blob already in the store, the network is not used at all.
//! - Each URL is fetched at most once per build.
//!
//! Redirects are followed (10 at most); proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/
//! `ALL_PROXY` and `NO_PROXY`. TLS is rustls with the Mozilla root certificates.

use imgbuild_cache::Digest;
use imgbuild_cache::store::{Store, StoreError};
use imgbuild_planner::RemoteFile;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long connecting, and then each read, may take before the download fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What the store remembers about a URL.
#[derive(Serialize, Deserialize)]
struct Record {
    url: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
}

pub struct Fetcher<'a> {
    store: &'a Store,
    agent: OnceLock<ureq::Agent>,
    /// This build's results by URL.
    fetched: Mutex<HashMap<String, Result<RemoteFile, String>>>,
}

impl<'a> Fetcher<'a> {
    pub fn new(store: &'a Store) -> Self {
        Fetcher {
            store,
            agent: OnceLock::new(),
            fetched: Mutex::new(HashMap::new()),
        }
    }

    /// The content of `url`, in the store under its digest. With `checksum`, content of
    /// another digest is an error.
    pub fn fetch(&self, url: &str, checksum: Option<&str>) -> Result<RemoteFile, String> {
        let expected = checksum
            .map(|c| Digest::parse(c).map_err(|e| format!("--checksum: {e}")))
            .transpose()?;
        let mut fetched = self.fetched.lock().unwrap();
        if let Some(done) = fetched.get(url) {
            let file = done.clone()?;
            return match expected {
                Some(e) if file.digest != e.to_string() => Err(mismatch(url, &e, &file.digest)),
                _ => Ok(file),
            };
        }
        let result = match expected {
            Some(e) if self.store.has_blob(&e) => Ok(RemoteFile {
                digest: e.to_string(),
                size: self.store.blob_size(&e).unwrap_or(0),
            }),
            _ => self.download(url, expected.as_ref()),
        };
        fetched.insert(url.to_owned(), result.clone());
        result
    }

    fn agent(&self) -> &ureq::Agent {
        self.agent.get_or_init(|| {
            ureq::Agent::config_builder()
                // Statuses are ours to report (with the URL).
                .http_status_as_error(false)
                .timeout_resolve(Some(CONNECT_TIMEOUT))
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_per_read(Some(READ_TIMEOUT))
                .max_redirects(10)
                .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        })
    }

    fn record_path(&self, url: &str) -> PathBuf {
        let name = blake3::hash(url.as_bytes()).to_hex();
        self.store
            .root()
            .join("remote")
            .join(format!("{name}.json"))
    }

    /// The record of an earlier download whose blob is still in the store.
    fn record(&self, url: &str) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(url)).ok()?;
        let r: Record = serde_json::from_slice(&bytes).ok()?;
        (r.url == url
            && (r.etag.is_some() || r.last_modified.is_some())
            && self.store.has_blob(&r.digest))
        .then_some(r)
    }

    fn download(&self, url: &str, expected: Option<&Digest>) -> Result<RemoteFile, String> {
        let known = self.record(url);
        let mut req = self.agent().get(url);
        if let Some(r) = &known {
            if let Some(etag) = &r.etag {
                req = req.header("If-None-Match", etag);
            }
            if let Some(lm) = &r.last_modified {
                req = req.header("If-Modified-Since", lm);
            }
        }
        let resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        if status == ureq::http::StatusCode::NOT_MODIFIED {
            let Some(r) = known else {
                return Err(format!(
                    "GET {url}: the server answered 304 Not Modified to a request that was not \
                     conditional"
                ));
            };
            if let Some(e) = expected
                && *e != r.digest
            {
                return Err(mismatch(url, e, &r.digest.to_string()));
            }
            return Ok(RemoteFile {
                digest: r.digest.to_string(),
                size: r.size,
            });
        }
        if !status.is_success() {
            return Err(format!(
                "GET {url}: HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_owned());
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let last_modified = header("last-modified");

        let mut blob = self.store.blob_writer().map_err(|e| e.to_string())?;
        let mut body = resp.into_body().into_reader();
        io::copy(&mut body, &mut blob).map_err(|e| format!("GET {url}: {e}"))?;
        let finished = match expected {
            Some(e) => blob.finish_expecting(e),
            None => blob.finish(),
        };
        let (digest, size) = finished.map_err(|e| match e {
            StoreError::DigestMismatch { expected, found } => format!(
                "{} (nothing was stored)",
                mismatch(url, &expected, &found.to_string())
            ),
            e => format!("GET {url}: {e}"),
        })?;

        let record = Record {
            url: url.to_owned(),
            digest,
            size,
            etag,
            last_modified,
        };
        let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
        if let Err(e) = self.store.write_atomic(&self.record_path(url), &json) {
            // The download is good; only the next build's revalidation is lost.
            eprintln!("warning: cannot remember the validators of {url}: {e}");
        }
        Ok(RemoteFile {
            digest: digest.to_string(),
            size,
        })
    }
}

fn mismatch(url: &str, expected: &Digest, found: &str) -> String {
    format!(
        "checksum mismatch for {url}: --checksum={expected}, but the content has digest {found}"
    )
}
