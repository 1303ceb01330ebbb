//! The store's error type: every message names the path involved and, where there is one, what
//! the user can do about it.

use crate::Digest;
use std::io;
use std::path::PathBuf;

use super::Access;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A system call failed. The message says what was being done to which path.
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    #[error(
        "store at {} was written by a newer imgbuild (VERSION {found}, this imgbuild reads {supported}); \
         use that imgbuild, or choose another store root with IMGBUILD_ROOT",
        root.display()
    )]
    NewerVersion {
        root: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error(
        "store at {} has an unreadable VERSION file ({content:?}); it is damaged or not an imgbuild \
         store: move it away, or choose another store root with IMGBUILD_ROOT",
        root.display()
    )]
    BadVersion { root: PathBuf, content: String },

    #[error(
        "{} is not an imgbuild store (it holds {entry:?} but no VERSION file); choose an empty or \
         new directory for the store with IMGBUILD_ROOT",
        root.display()
    )]
    NotAStore { root: PathBuf, entry: String },

    #[error("{}", locked_message(root, *wanted))]
    Locked { root: PathBuf, wanted: Access },

    #[error(
        "{op} needs the store at {} opened exclusively (Store::open_exclusive), so that no build \
         uses it meanwhile",
        root.display()
    )]
    NotExclusive { op: &'static str, root: PathBuf },

    #[error(
        "no place for the store: set IMGBUILD_ROOT, or HOME for the default \
         ~/.local/share/imgbuild"
    )]
    NoRoot,

    #[error(
        "blob {digest} ({}) is corrupt: its {len} bytes hash to {found}; delete that file and \
         build again to fetch or rebuild it",
        path.display()
    )]
    Corrupt {
        digest: Digest,
        path: PathBuf,
        found: Digest,
        len: u64,
    },

    #[error("content has digest {found}, but {expected} was expected; nothing was stored")]
    DigestMismatch { expected: Digest, found: Digest },

    #[error("blob {digest} is not in the store at {}", root.display())]
    MissingBlob { digest: Digest, root: PathBuf },

    #[error(
        "step record {} is unreadable ({reason}); it counts as a cache miss and is replaced when \
         the step runs again",
        path.display()
    )]
    BadRecord { path: PathBuf, reason: String },

    #[error(
        "{} is damaged ({reason}); move it aside to go on (the image tags it holds are then lost)",
        path.display()
    )]
    Damaged { path: PathBuf, reason: String },

    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },

    #[error("{prefix:?} matches {} images ({}); give more digits", matches.len(), list(matches))]
    AmbiguousPrefix {
        prefix: String,
        matches: Vec<Digest>,
    },

    #[error(
        "{} is outside the store at {}: the store writes only under its root",
        path.display(),
        root.display()
    )]
    OutsideRoot { path: PathBuf, root: PathBuf },
}

fn locked_message(root: &std::path::Path, wanted: Access) -> String {
    match wanted {
        Access::Shared => format!(
            "store at {} is being pruned by another imgbuild; wait for it to finish and retry",
            root.display()
        ),
        Access::Exclusive => format!(
            "store at {} is in use by another imgbuild (a build is running); retry when it has \
             finished",
            root.display()
        ),
    }
}

fn list(digests: &[Digest]) -> String {
    digests
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |error| lift(error, |error| StoreError::Io { op, path, error })
    }
}

/// An `io::Error` that carries a `StoreError` (as `VerifiedReader` and the `Blobs` impl make
/// them) is unwrapped back into it; any other becomes what `otherwise` makes of it.
pub(crate) fn lift(
    error: io::Error,
    otherwise: impl FnOnce(io::Error) -> StoreError,
) -> StoreError {
    if error
        .get_ref()
        .is_some_and(|inner| inner.is::<StoreError>())
    {
        let kind = error.kind();
        match error
            .into_inner()
            .map(|inner| inner.downcast::<StoreError>())
        {
            Some(Ok(store_error)) => *store_error,
            // Unreachable after the `is` check; keep the information anyway.
            Some(Err(inner)) => otherwise(io::Error::new(kind, inner)),
            None => otherwise(io::Error::from(kind)),
        }
    } else {
        otherwise(error)
    }
}

impl From<StoreError> for io::Error {
    fn from(error: StoreError) -> io::Error {
        let kind = match &error {
            StoreError::Io { error, .. } => error.kind(),
            StoreError::Corrupt { .. }
            | StoreError::DigestMismatch { .. }
            | StoreError::BadRecord { .. }
            | StoreError::Damaged { .. }
            | StoreError::BadVersion { .. } => io::ErrorKind::InvalidData,
            StoreError::MissingBlob { .. } => io::ErrorKind::NotFound,
            StoreError::Locked { .. } => io::ErrorKind::WouldBlock,
            StoreError::InvalidReference { .. } | StoreError::AmbiguousPrefix { .. } => {
                io::ErrorKind::InvalidInput
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}
