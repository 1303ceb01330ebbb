//! Data-driven conformance tests. The data lives in ../shared (not ours, never copied here);
//! set IMGBUILD_SHARED to point elsewhere. Missing data is a failure, never a silent pass.

mod corpus;
mod ignore;
mod instructions;
mod shell;
mod testfiles;

use std::path::PathBuf;

/// The shared reference-data directory: `$IMGBUILD_SHARED`, else `<workspace>/../shared`.
pub fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("IMGBUILD_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    assert!(
        dir.is_dir(),
        "reference data not found at {} (set IMGBUILD_SHARED to the shared/ directory)",
        dir.display()
    );
    dir
}

/// A file under the shared directory; panics naming the path when it is missing.
pub fn shared_file(rel: &str) -> PathBuf {
    let p = shared_dir().join(rel);
    assert!(p.exists(), "reference data missing: {}", p.display());
    p
}

pub fn read_shared(rel: &str) -> String {
    let p = shared_file(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

pub fn read_shared_json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read_shared(rel)).unwrap_or_else(|e| panic!("bad JSON in {rel}: {e}"))
}
