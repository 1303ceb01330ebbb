//! The transport. oci-client does authentication (the WWW-Authenticate challenge, bearer
//! tokens, basic auth), manifest requests, blob downloads and mounts. Three things are written
//! here on reqwest (the HTTP client oci-client is built on) because oci-client cannot do them:
//! uploads (its `push_blob` takes the whole blob as one in-memory slice; layers are streamed
//! from the store in chunks here), a HEAD of a blob (it has no such call), and checking
//! credentials at login (with basic auth it never sends them until a real request).

use crate::auth::{self, Credentials};
use crate::error::{RegistryError, Result, body_message};
use crate::reference::{Reference, api_host, is_plain_http};
use base64::Engine as _;
use futures_util::StreamExt;
use imgbuild_cache::Digest;
use imgbuild_cache::oci::{MAX_JSON_SIZE, media_type};
use imgbuild_cache::store::{Store, StoreError};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{RegistryOperation, client::linux_amd64_resolver};
use reqwest::StatusCode;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct Options {
    /// Registries (`host` or `host:port`) spoken to over plain http besides loopback.
    pub insecure: Vec<String>,
    /// Blobs transferred at once.
    pub parallel: usize,
    /// Blobs larger than this are uploaded in chunks of this size (PATCH), smaller ones in
    /// one request.
    pub chunk_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure: Vec::new(),
            parallel: 4,
            chunk_size: 16 << 20,
        }
    }
}

/// The manifest media types we ask for.
pub(crate) const ACCEPT: &[&str] = &[
    media_type::OCI_MANIFEST,
    media_type::OCI_INDEX,
    media_type::DOCKER_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
];

/// A manifest (or index) as the registry served it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// The digest of `bytes` (checked against the registry's Docker-Content-Digest and the
    /// reference's digest).
    pub digest: Digest,
    /// From the document's `mediaType` (or its shape when it has none).
    pub media_type: String,
}

/// What requests for one repository and operation carry.
#[derive(Clone)]
pub(crate) struct Auth {
    pub creds: RegistryAuth,
    /// `Authorization` for the requests written here.
    pub header: Option<String>,
    pub with_credentials: bool,
}

/// A registry client. Cheap to make; holds the runtime the async client runs on.
pub struct Registry {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    pub(crate) options: Options,
    clients: Mutex<HashMap<String, Arc<oci_client::Client>>>,
    auths: Mutex<HashMap<(String, String, bool), Auth>>,
}

impl Registry {
    pub fn new(options: Options) -> Result<Registry> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imgbuild-registry")
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Io {
                context: "starting the registry client".into(),
                source: e,
            })?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| RegistryError::Io {
                context: "starting the HTTP client".into(),
                source: std::io::Error::other(e),
            })?;
        Ok(Registry {
            rt,
            http,
            options,
            clients: Mutex::new(HashMap::new()),
            auths: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn scheme(&self, registry: &str) -> &'static str {
        if is_plain_http(registry, &self.options.insecure) {
            "http"
        } else {
            "https"
        }
    }

    /// `scheme://host/v2/repository`.
    pub(crate) fn repo_url(&self, r: &Reference) -> String {
        format!(
            "{}://{}/v2/{}",
            self.scheme(&r.registry),
            r.api_host(),
            r.repository
        )
    }

    /// One oci-client per registry: its protocol (http or https) is fixed per client.
    fn oci(&self, registry: &str) -> Arc<oci_client::Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(registry.to_owned())
            .or_insert_with(|| {
                let protocol = if self.scheme(registry) == "http" {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                Arc::new(oci_client::Client::new(ClientConfig {
                    protocol,
                    platform_resolver: Some(Box::new(linux_amd64_resolver)),
                    connect_timeout: Some(std::time::Duration::from_secs(30)),
                    ..ClientConfig::default()
                }))
            })
            .clone()
    }

    pub(crate) fn oci_ref(r: &Reference) -> oci_client::Reference {
        // oci-client maps docker.io to its API host itself.
        match (&r.digest, &r.tag) {
            (Some(d), _) => oci_client::Reference::with_digest(
                r.registry.clone(),
                r.repository.clone(),
                d.to_string(),
            ),
            (None, t) => oci_client::Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }

    /// Authenticates for `r`'s repository (once per repository and operation).
    pub(crate) async fn auth(&self, r: &Reference, push: bool) -> Result<Auth> {
        let key = (r.registry.clone(), r.repository.clone(), push);
        if let Some(a) = self
            .auths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(a.clone());
        }
        let creds = auth::credentials_for(&r.registry, &r.repository)?;
        let with_credentials = creds.is_some();
        let ra = match &creds {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let op = if push {
            RegistryOperation::Push
        } else {
            RegistryOperation::Pull
        };
        let what = format!("authenticating for {}", r.name());
        let token = self
            .oci(&r.registry)
            .auth(&Self::oci_ref(r), &ra, op)
            .await
            .map_err(|e| self.map_oci(r, &what, e, with_credentials))?;
        let header = match (token, &creds) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some(c)) => Some(basic(c)),
            (None, None) => None,
        };
        let a = Auth {
            creds: ra,
            header,
            with_credentials,
        };
        self.auths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, a.clone());
        Ok(a)
    }

    pub(crate) fn status_error(
        &self,
        r: &Reference,
        what: &str,
        status: u16,
        body: &str,
        with_credentials: bool,
    ) -> RegistryError {
        let registry = r.registry.clone();
        let what = what.to_owned();
        match status {
            401 => RegistryError::Unauthorized {
                registry,
                what,
                with_credentials,
            },
            403 => RegistryError::Denied {
                registry,
                what,
                message: body_message(body),
            },
            404 => RegistryError::NotFound { registry, what },
            _ => RegistryError::Http {
                registry,
                what,
                status,
                message: body_message(body),
            },
        }
    }

    pub(crate) fn network_error(
        &self,
        r: &Reference,
        what: &str,
        e: &reqwest::Error,
    ) -> RegistryError {
        if let Some(s) = e.status() {
            return self.status_error(r, what, s.as_u16(), "", false);
        }
        RegistryError::Network {
            registry: r.registry.clone(),
            what: what.to_owned(),
            message: error_chain(e),
        }
    }

    pub(crate) fn map_oci(
        &self,
        r: &Reference,
        what: &str,
        e: OciDistributionError,
        with_credentials: bool,
    ) -> RegistryError {
        use OciDistributionError as E;
        match e {
            E::UnauthorizedError { .. } => self.status_error(r, what, 401, "", with_credentials),
            E::AuthenticationFailure(m) => {
                if with_credentials {
                    RegistryError::LoginRefused {
                        registry: r.registry.clone(),
                        message: body_message(&m),
                    }
                } else {
                    self.status_error(r, what, 401, &m, false)
                }
            }
            E::RegistryError { envelope, .. } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}", e.code).to_ascii_uppercase())
                    .collect();
                let status = if codes.iter().any(|c| c.contains("UNAUTHORIZED")) {
                    401
                } else if codes.iter().any(|c| c.contains("DENIED")) {
                    403
                } else if codes.iter().any(|c| c.contains("UNKNOWN")) {
                    404
                } else {
                    400
                };
                let message = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                self.status_error(r, what, status, &message, with_credentials)
            }
            E::ServerError { code, message, .. } => {
                self.status_error(r, what, code, &message, with_credentials)
            }
            E::RequestError(re) => self.network_error(r, what, &re),
            other => RegistryError::Invalid {
                registry: r.registry.clone(),
                what: what.to_owned(),
                message: other.to_string(),
            },
        }
    }

    /// Fetches the manifest or index `r` names.
    pub fn get_manifest(&self, r: &Reference) -> Result<FetchedManifest> {
        self.block_on(self.get_manifest_async(r))
    }

    pub(crate) async fn get_manifest_async(&self, r: &Reference) -> Result<FetchedManifest> {
        let auth = self.auth(r, false).await?;
        let what = format!("manifest {r}");
        let (bytes, digest) = self
            .oci(&r.registry)
            .pull_manifest_raw(&Self::oci_ref(r), &auth.creds, ACCEPT)
            .await
            .map_err(|e| self.map_oci(r, &what, e, auth.with_credentials))?;
        let invalid = |message: String| RegistryError::Invalid {
            registry: r.registry.clone(),
            what: what.clone(),
            message,
        };
        if bytes.len() as u64 > MAX_JSON_SIZE {
            return Err(invalid(format!("larger than {MAX_JSON_SIZE} bytes")));
        }
        let digest = Digest::parse(&digest)
            .map_err(|_| invalid(format!("unsupported digest {digest:?} (only sha256)")))?;
        let media_type = detect_media_type(&bytes).map_err(invalid)?;
        if !media_type::is_index(&media_type) && !media_type::is_manifest(&media_type) {
            return Err(RegistryError::UnknownMediaType {
                registry: r.registry.clone(),
                what: r.to_string(),
                media_type,
            });
        }
        Ok(FetchedManifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// Puts a manifest (or index) under `r`'s tag (or digest); returns its digest.
    pub fn put_manifest(&self, r: &Reference, bytes: &[u8], media_type: &str) -> Result<Digest> {
        self.block_on(self.put_manifest_async(r, bytes, media_type))
    }

    pub(crate) async fn put_manifest_async(
        &self,
        r: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest> {
        let auth = self.auth(r, true).await?;
        let what = format!("putting manifest {r}");
        let ct = reqwest::header::HeaderValue::from_str(media_type).map_err(|_| {
            RegistryError::Invalid {
                registry: r.registry.clone(),
                what: what.clone(),
                message: format!("media type {media_type:?} is not a header value"),
            }
        })?;
        self.oci(&r.registry)
            .store_auth_if_needed(Self::oci_ref(r).resolve_registry(), &auth.creds)
            .await;
        self.oci(&r.registry)
            .push_manifest_raw(&Self::oci_ref(r), bytes.to_vec(), ct)
            .await
            .map_err(|e| self.map_oci(r, &what, e, auth.with_credentials))?;
        Ok(Digest::of(bytes))
    }

    /// The size of a blob the repository holds, or None.
    pub fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<Option<u64>> {
        self.block_on(self.blob_exists_async(r, digest))
    }

    pub(crate) async fn blob_exists_async(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let auth = self.auth(r, false).await?;
        let what = format!("checking blob {digest}");
        let url = format!("{}/blobs/{digest}", self.repo_url(r));
        let mut req = self.http.head(&url);
        if let Some(h) = &auth.header {
            req = req.header(reqwest::header::AUTHORIZATION, h);
        }
        let res = req
            .send()
            .await
            .map_err(|e| self.network_error(r, &what, &e))?;
        match res.status() {
            // The header itself: a HEAD response has no body, so the body's length is 0.
            StatusCode::OK => Ok(Some(
                res.headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(self.status_error(r, &what, s.as_u16(), "", auth.with_credentials)),
        }
    }

    /// Downloads a blob of `r`'s repository into the store, verified by digest and size while
    /// it streams; returns the bytes downloaded. On any failure nothing is stored.
    pub fn pull_blob(
        &self,
        store: &Store,
        r: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<u64> {
        self.block_on(self.pull_blob_async(store, r, digest, size))
    }

    pub(crate) async fn pull_blob_async(
        &self,
        store: &Store,
        r: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<u64> {
        let mut writer = store.blob_writer()?;
        self.stream_blob(r, digest, size, &mut writer).await?;
        // Dropping the writer on an error above removes its temp file: nothing half-written
        // stays.
        match writer.finish_expecting(digest) {
            Ok(_) => Ok(size),
            Err(StoreError::DigestMismatch { found, .. }) => Err(RegistryError::DigestMismatch {
                registry: r.registry.clone(),
                digest: *digest,
                found,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Downloads a blob of `r`'s repository into `out` (not the store: a cache's own blobs),
    /// checking its size and digest; on an error, `out` holds part of it and the caller
    /// discards it.
    pub fn pull_blob_to(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64> {
        self.block_on(async {
            let mut hashing = imgbuild_cache::DigestWriter::new(out);
            self.stream_blob(r, digest, size, &mut hashing).await?;
            let (found, _, _) = hashing.finish();
            if found != *digest {
                return Err(RegistryError::DigestMismatch {
                    registry: r.registry.clone(),
                    digest: *digest,
                    found,
                });
            }
            Ok(size)
        })
    }

    /// Streams a blob into `out`, failing when it is not exactly `size` bytes.
    async fn stream_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<()> {
        let auth = self.auth(r, false).await?;
        let what = format!("blob {digest}");
        let d = digest.to_string();
        let sized = self
            .oci(&r.registry)
            .pull_blob_stream(&Self::oci_ref(r), d.as_str())
            .await
            .map_err(|e| self.map_oci(r, &what, e, auth.with_credentials))?;
        let mut stream = sized.stream;
        let mut got = 0u64;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    got += chunk.len() as u64;
                    if got > size {
                        break;
                    }
                    out.write_all(&chunk).map_err(|e| RegistryError::Io {
                        context: format!("writing blob {digest}"),
                        source: e,
                    })?;
                }
                // The size check below reports a body that broke off; a digest error of
                // oci-client's own check comes after the full size, and ours reports it.
                Err(_) => break,
            }
        }
        // A stream that broke off early (a truncated body) is a size mismatch. A stream error
        // after the full size is oci-client's own digest check: the caller's reports it with
        // both digests.
        if got != size {
            return Err(RegistryError::SizeMismatch {
                registry: r.registry.clone(),
                digest: *digest,
                expected: size,
                got,
            });
        }
        Ok(())
    }

    /// Asks the registry to mount `digest` from `from` (same registry) into `r`'s repository.
    pub(crate) async fn mount_blob_async(
        &self,
        r: &Reference,
        from: &Reference,
        digest: &Digest,
    ) -> bool {
        let Ok(auth) = self.auth(r, true).await else {
            return false;
        };
        let client = self.oci(&r.registry);
        client
            .store_auth_if_needed(Self::oci_ref(r).resolve_registry(), &auth.creds)
            .await;
        client
            .mount_blob(&Self::oci_ref(r), &Self::oci_ref(from), &digest.to_string())
            .await
            .is_ok()
    }

    /// Uploads a stored blob to `r`'s repository (one request, or PATCH chunks when larger than
    /// the chunk size); the store verifies it while it is read. Returns the bytes sent.
    pub(crate) async fn upload_blob_async(
        &self,
        store: &Store,
        r: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<u64> {
        // The store verifies the blob while it is read.
        let mut reader = store.open_blob(digest)?;
        self.upload_from_async(r, digest, size, &mut reader).await
    }

    /// Uploads `size` bytes of `reader` as the blob `digest` to `r`'s repository (the registry
    /// checks the digest and keeps nothing on a mismatch). Returns the bytes sent.
    pub(crate) async fn upload_from_async(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn Read + Send),
    ) -> Result<u64> {
        let auth = self.auth(r, true).await?;
        let what = format!("uploading blob {digest}");
        let start_url = format!("{}/blobs/uploads/", self.repo_url(r));
        let res = self
            .request(reqwest::Method::POST, &start_url, &auth)
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| self.network_error(r, &what, &e))?;
        let mut location = self
            .location(r, &what, res, StatusCode::ACCEPTED, &auth)
            .await?;
        let result = self
            .send_chunks(reader, r, digest, size, &auth, &what, &mut location)
            .await;
        if result.is_err() {
            // Cancel the session so the registry drops what it got (best effort).
            let _ = self
                .request(reqwest::Method::DELETE, &location, &auth)
                .send()
                .await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_chunks(
        &self,
        mut reader: &mut (dyn Read + Send),
        r: &Reference,
        digest: &Digest,
        size: u64,
        auth: &Auth,
        what: &str,
        location: &mut String,
    ) -> Result<u64> {
        let read_err = |e: std::io::Error| RegistryError::Io {
            context: format!("reading blob {digest}"),
            source: e,
        };
        let chunk = self.options.chunk_size.max(1);
        let mut sent = 0u64;
        if size as usize > chunk {
            loop {
                let mut buf = Vec::with_capacity(chunk);
                (&mut reader)
                    .take(chunk as u64)
                    .read_to_end(&mut buf)
                    .map_err(read_err)?;
                if buf.is_empty() {
                    break;
                }
                let end = sent + buf.len() as u64 - 1;
                let len = buf.len() as u64;
                let res = self
                    .request(reqwest::Method::PATCH, location, auth)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_RANGE, format!("{sent}-{end}"))
                    .header(reqwest::header::CONTENT_LENGTH, len.to_string())
                    .body(buf)
                    .send()
                    .await
                    .map_err(|e| self.network_error(r, what, &e))?;
                *location = self
                    .location(r, what, res, StatusCode::ACCEPTED, auth)
                    .await?;
                sent += len;
            }
            let mut url = self.url(r, what, location)?;
            url.query_pairs_mut()
                .append_pair("digest", &digest.to_string());
            let res = self
                .request(reqwest::Method::PUT, url.as_str(), auth)
                .header(reqwest::header::CONTENT_LENGTH, "0")
                .send()
                .await
                .map_err(|e| self.network_error(r, what, &e))?;
            self.location(r, what, res, StatusCode::CREATED, auth)
                .await?;
        } else {
            let mut buf = Vec::with_capacity(size as usize);
            reader.read_to_end(&mut buf).map_err(read_err)?;
            sent = buf.len() as u64;
            let mut url = self.url(r, what, location)?;
            url.query_pairs_mut()
                .append_pair("digest", &digest.to_string());
            let res = self
                .request(reqwest::Method::PUT, url.as_str(), auth)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, sent.to_string())
                .body(buf)
                .send()
                .await
                .map_err(|e| self.network_error(r, what, &e))?;
            self.location(r, what, res, StatusCode::CREATED, auth)
                .await?;
        }
        Ok(sent)
    }

    fn request(&self, method: reqwest::Method, url: &str, auth: &Auth) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url);
        if let Some(h) = &auth.header {
            req = req.header(reqwest::header::AUTHORIZATION, h);
        }
        req
    }

    /// A Location header, resolved against the registry (it may be relative).
    fn url(&self, r: &Reference, what: &str, location: &str) -> Result<reqwest::Url> {
        let base = format!("{}://{}/", self.scheme(&r.registry), r.api_host());
        reqwest::Url::parse(&base)
            .and_then(|b| b.join(location))
            .map_err(|e| RegistryError::Invalid {
                registry: r.registry.clone(),
                what: what.to_owned(),
                message: format!("bad upload location {location:?}: {e}"),
            })
    }

    /// Checks the status and returns the absolute Location of an upload step.
    async fn location(
        &self,
        r: &Reference,
        what: &str,
        res: reqwest::Response,
        want: StatusCode,
        auth: &Auth,
    ) -> Result<String> {
        let status = res.status();
        if status != want {
            let body = res.text().await.unwrap_or_default();
            return Err(self.status_error(r, what, status.as_u16(), &body, auth.with_credentials));
        }
        let loc = res
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if loc.is_empty() {
            if want == StatusCode::CREATED {
                return Ok(String::new());
            }
            return Err(RegistryError::Invalid {
                registry: r.registry.clone(),
                what: what.to_owned(),
                message: "the registry sent no Location for the upload".into(),
            });
        }
        Ok(self.url(r, what, &loc)?.to_string())
    }

    /// Checks credentials against a registry: its `/v2/` with them (basic auth), or a token
    /// from the realm its challenge names (bearer).
    pub fn check_login(&self, registry: &str, creds: &Credentials) -> Result<()> {
        self.block_on(self.check_login_async(registry, creds))
    }

    async fn check_login_async(&self, registry: &str, creds: &Credentials) -> Result<()> {
        let r = Reference {
            registry: registry.to_owned(),
            repository: String::new(),
            tag: None,
            digest: None,
        };
        let what = "logging in";
        let url = format!("{}://{}/v2/", self.scheme(registry), api_host(registry));
        let net = |e: reqwest::Error| RegistryError::Network {
            registry: registry.to_owned(),
            what: what.to_owned(),
            message: error_chain(&e),
        };
        let res = self.http.get(&url).send().await.map_err(net)?;
        if res.status().is_success() {
            return Ok(());
        }
        if res.status() != StatusCode::UNAUTHORIZED {
            let s = res.status().as_u16();
            let body = res.text().await.unwrap_or_default();
            return Err(self.status_error(&r, what, s, &body, true));
        }
        let challenge = res
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let refused = |message: String| RegistryError::LoginRefused {
            registry: registry.to_owned(),
            message,
        };
        let res = if challenge.to_ascii_lowercase().starts_with("bearer") {
            let params = challenge_params(&challenge);
            let realm = params
                .get("realm")
                .ok_or_else(|| refused("its Bearer challenge names no realm".into()))?;
            let mut query = vec![("account", creds.username.as_str())];
            if let Some(s) = params.get("service") {
                query.push(("service", s.as_str()));
            }
            self.http
                .get(realm)
                .query(&query)
                .header(reqwest::header::AUTHORIZATION, basic(creds))
                .send()
                .await
                .map_err(net)?
        } else {
            self.http
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, basic(creds))
                .send()
                .await
                .map_err(net)?
        };
        if res.status().is_success() {
            return Ok(());
        }
        let s = res.status();
        let body = res.text().await.unwrap_or_default();
        Err(refused(format!("{s}: {}", body_message(&body))))
    }
}

fn basic(c: &Credentials) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
    )
}

/// `Bearer realm="…",service="…"` -> its parameters.
fn challenge_params(h: &str) -> HashMap<String, String> {
    let rest = h.split_once(' ').map_or("", |(_, r)| r);
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, v)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, rest) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        out.insert(k, value.to_owned());
        s = rest.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The media type a manifest document declares, or what its shape says when it declares none.
fn detect_media_type(bytes: &[u8]) -> std::result::Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str())
        && !mt.is_empty()
    {
        return Ok(mt.to_owned());
    }
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Ok("application/vnd.docker.distribution.manifest.v1+json".into());
    }
    if v.get("manifests").is_some() {
        return Ok(media_type::OCI_INDEX.into());
    }
    if v.get("config").is_some() && v.get("layers").is_some() {
        return Ok(media_type::OCI_MANIFEST.into());
    }
    Err("neither an image manifest nor an index".into())
}

/// An error with its sources, for network failures ("connection refused" is in a source).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let p = challenge_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a:pull");
        assert_eq!(challenge_params(r#"Basic realm="x""#)["realm"], "x");
    }

    #[test]
    fn media_types() {
        assert_eq!(
            detect_media_type(br#"{"schemaVersion":2,"mediaType":"x/y"}"#).unwrap(),
            "x/y"
        );
        assert_eq!(
            detect_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            media_type::OCI_INDEX
        );
        assert_eq!(
            detect_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            media_type::OCI_MANIFEST
        );
        assert!(detect_media_type(b"nope").is_err());
    }
}
