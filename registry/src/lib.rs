//! Talking to OCI distribution registries: references with Docker's normalisation,
//! credentials (containers auth.json, Docker's config.json, credential helpers), login/logout,
//! pulling images into the store and pushing them from it, and the generic blob and manifest
//! operations those are made of.
//!
//! ```text
//! reference.rs  Reference::parse (docker.io/library/… short names), plain-http rules
//! auth.rs       credentials files: lookup, login's write (temp + rename, 0600), logout
//! client.rs     Registry: the transport (oci-client, plus reqwest where it falls short)
//! pull.rs       pull_image: manifest (index -> linux/amd64), missing blobs in parallel
//! push.rs       push_image: HEAD, cross-repository mount, chunked upload, then the manifest
//! record.rs     <root>/registry.json: which repositories blobs came from / went to
//! error.rs      RegistryError, worded for the user
//! ```
//!
//! Everything is synchronous for callers: the async client runs on a small tokio runtime
//! owned by [`Registry`]. Every blob that enters the store is streamed through the store's
//! blob writer and verified against its digest and size before it gets its name, so a
//! failed or tampered transfer leaves nothing behind.

pub mod auth;
mod client;
pub mod error;
mod pull;
mod push;
mod record;
pub mod reference;

pub use auth::Credentials;
pub use client::{FetchedManifest, Options, Registry};
pub use error::{RegistryError, Result};
pub use pull::Pulled;
pub use push::{BlobPush, Pushed};
pub use reference::{Reference, ReferenceError, is_plain_http, normalize_registry};

/// Checks `creds` against `registry` and stores them in the login file (see
/// [`auth::login_file`]); returns that file.
pub fn login(registry: &str, creds: &Credentials, options: Options) -> Result<std::path::PathBuf> {
    let registry = normalize_registry(registry)?;
    Registry::new(options)?.check_login(&registry, creds)?;
    let file = auth::login_file()?;
    auth::store_credentials(&file, &registry, creds)?;
    Ok(file)
}

/// Removes stored credentials for `registry`; Ok(false) when there were none.
pub fn logout(registry: &str) -> Result<bool> {
    let registry = normalize_registry(registry)?;
    let file = auth::login_file()?;
    Ok(auth::remove_credentials(&file, &registry)?)
}
pub use record::pulled_manifest;
