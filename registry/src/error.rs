//! What can go wrong talking to a registry, worded for the user: each error names the registry
//! (and the blob or manifest) and, where there is one, the fix.

use crate::auth::AuthFileError;
use crate::reference::ReferenceError;
use imgbuild_cache::Digest;
use imgbuild_cache::store::StoreError;

pub type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    #[error(
        "{registry} requires authentication ({what}): run `imgbuild login {registry}`{hint}",
        hint = if *with_credentials { " (the stored credentials were refused)" } else { "" }
    )]
    Unauthorized {
        registry: String,
        what: String,
        with_credentials: bool,
    },
    #[error("{registry} refused access ({what}): {message}")]
    Denied {
        registry: String,
        what: String,
        message: String,
    },
    #[error("{registry} refused the credentials: {message}")]
    LoginRefused { registry: String, message: String },
    #[error("{what} was not found in {registry}")]
    NotFound { registry: String, what: String },
    #[error(
        "blob {digest} from {registry}: content does not match its digest (found {found}); \
         nothing was stored"
    )]
    DigestMismatch {
        registry: String,
        digest: Digest,
        found: Digest,
    },
    #[error(
        "blob {digest} from {registry}: got {got} bytes, expected {expected} (truncated or \
         oversized); nothing was stored"
    )]
    SizeMismatch {
        registry: String,
        digest: Digest,
        expected: u64,
        got: u64,
    },
    #[error(
        "manifest {what} from {registry} has media type {media_type:?}, which is not an OCI or \
         Docker v2 image manifest or index"
    )]
    UnknownMediaType {
        registry: String,
        what: String,
        media_type: String,
    },
    #[error("{registry}: {what}: {message}")]
    Invalid {
        registry: String,
        what: String,
        message: String,
    },
    #[error("{registry} answered {status} to {what}: {message}")]
    Http {
        registry: String,
        what: String,
        status: u16,
        message: String,
    },
    #[error("cannot reach {registry} ({what}): {message}")]
    Network {
        registry: String,
        what: String,
        message: String,
    },
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The first line of a registry's error body, or its OCI error envelope's messages.
pub(crate) fn body_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
        && let Some(errors) = v.get("errors").and_then(|e| e.as_array())
    {
        let msgs: Vec<String> = errors
            .iter()
            .map(|e| {
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                format!("{code}: {msg}")
            })
            .collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
    }
    let line = body.lines().next().unwrap_or("").trim();
    let mut s: String = line.chars().take(200).collect();
    if s.is_empty() {
        s = "no details".into();
    }
    s
}
