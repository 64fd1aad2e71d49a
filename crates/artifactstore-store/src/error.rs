//! The engine's error type. Every variant has a stable machine code and a
//! class; adapters (HTTP, CLI) map the class to a status and show the code,
//! and never need to know the variants.

use artifactstore_core::Digest;
use artifactstore_core::retention::ChangeError;

/// How an adapter should present an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or its content is wrong (HTTP 400).
    Invalid,
    /// The thing asked for does not exist (404).
    NotFound,
    /// The request conflicts with current state (409).
    Conflict,
    /// The body is larger than the configured limit (413).
    TooLarge,
    /// Well-formed, but refers to things that do not exist or do not fit (422).
    Unprocessable,
    /// The thing existed and was deleted for good (410).
    Gone,
    /// The requested range lies outside the blob (416).
    RangeNotSatisfiable,
    /// Not the client's fault; details are logged, not shown (500).
    Internal,
    /// Stored data failed its own check (500, with the problem's code: the
    /// client should know the server's copy is damaged, not retry).
    Corrupt,
    /// A dependency is unavailable (503).
    Unavailable,
    /// The disk or database is full (507): nothing of the request was
    /// kept; it can succeed once the operator makes room.
    InsufficientStorage,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("declared digest {declared} does not match the received bytes ({actual})")]
    DigestMismatch { declared: Digest, actual: Digest },
    #[error("at least one expected digest is required to finish an upload")]
    DigestRequired,
    #[error("no upload session {0}")]
    UploadNotFound(String),
    #[error("upload offset {given} does not match the current offset {current}")]
    OffsetMismatch { given: u64, current: u64 },
    #[error("blob exceeds the configured maximum of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no blob {0}")]
    BlobNotFound(Digest),
    #[error("range starts at {start}, beyond the blob's {size} bytes")]
    RangeNotSatisfiable { start: u64, size: u64 },
    #[error("invalid manifest: {0}")]
    InvalidManifest(#[from] artifactstore_core::manifest::ManifestError),
    #[error("unknown retention class {class:?} (configured: {})", known.join(", "))]
    UnknownClass { class: String, known: Vec<String> },
    #[error("{} referenced blob(s) are not stored; upload them first", .0.len())]
    MissingBlobs(Vec<Digest>),
    #[error("the manifest's digests or sizes disagree with the stored blobs for: {}", .0.join(", "))]
    ManifestBlobMismatch(Vec<String>),
    #[error("the class's default period puts expiry beyond year 9999")]
    ExpiryOutOfRange,
    #[error("no package {0}")]
    PackageNotFound(String),
    #[error(transparent)]
    RetentionChange(#[from] artifactstore_core::retention::ChangeError),
    #[error("package {package} has no hold {hold}")]
    HoldNotFound { package: String, hold: String },
    #[error("hold {0} was already released")]
    HoldReleased(String),
    #[error("package {package} was deleted at {at} (event {seq}); its metadata and history remain")]
    PackageDeleted {
        package: String,
        at: artifactstore_core::Timestamp,
        seq: u64,
    },
    #[error("package {package} was deleted at {at} (event {seq}); its files are gone")]
    PackageGone {
        package: String,
        at: artifactstore_core::Timestamp,
        seq: u64,
    },
    #[error("another collector is running on this database")]
    CollectorBusy,
    #[error("another tiering run holds the database's tiering lock; try again later")]
    TieringBusy,
    #[error("no cold tier is configured")]
    NoColdTier,
    #[error(
        "the stored bytes of {0} do not match its digest; the server's operator must restore it (see the server log)"
    )]
    CorruptBlob(Digest),
    #[error("package {package} has no file {path:?}")]
    FileNotFound { package: String, path: String },
    #[error("reading the request body failed: {0}")]
    BodyRead(std::io::Error),
    #[error("the event log is broken: {0}")]
    BrokenLog(#[from] artifactstore_core::event::ChainError),
    #[error("blob backend: {0}")]
    Blob(crate::blob::BlobError),
    #[error("metadata backend: {0}")]
    Meta(#[from] crate::meta::MetaError),
}

impl StoreError {
    /// Stable machine code, used as the problem `type` suffix over HTTP.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::DigestMismatch { .. } => "digest-mismatch",
            StoreError::DigestRequired => "digest-required",
            StoreError::UploadNotFound(_) => "upload-not-found",
            StoreError::OffsetMismatch { .. } => "upload-offset-mismatch",
            StoreError::TooLarge { .. } => "blob-too-large",
            StoreError::BlobNotFound(_) => "blob-not-found",
            StoreError::RangeNotSatisfiable { .. } => "range-not-satisfiable",
            StoreError::BodyRead(_) => "body-read-failed",
            StoreError::InvalidManifest(e) => e.code(),
            StoreError::UnknownClass { .. } => "unknown-retention-class",
            StoreError::MissingBlobs(_) => "missing-blobs",
            StoreError::ManifestBlobMismatch(_) => "manifest-blob-mismatch",
            StoreError::ExpiryOutOfRange => "expiry-out-of-range",
            StoreError::PackageNotFound(_) => "package-not-found",
            StoreError::RetentionChange(e) => match e {
                ChangeError::ReasonRequired => "reason-required",
                ChangeError::Permanent => "retention-permanent",
                ChangeError::NotLater { .. } => "extension-not-later",
            },
            StoreError::HoldNotFound { .. } => "hold-not-found",
            StoreError::HoldReleased(_) => "hold-already-released",
            StoreError::FileNotFound { .. } => "file-not-found",
            StoreError::PackageDeleted { .. } | StoreError::PackageGone { .. } => "package-deleted",
            StoreError::CollectorBusy => "collector-busy",
            StoreError::TieringBusy => "tiering-busy",
            StoreError::NoColdTier => "no-cold-tier",
            StoreError::CorruptBlob(_) => "blob-corrupt",
            StoreError::BrokenLog(_) => "log-broken",
            StoreError::Blob(_) | StoreError::Meta(_) if self.storage_full() => {
                "insufficient-storage"
            }
            StoreError::Blob(_) | StoreError::Meta(_) => "internal",
        }
    }

    /// Whether a backend failed for want of space: the filesystem's
    /// `ENOSPC` or `EDQUOT`, SQLite's `SQLITE_FULL` (13), PostgreSQL's
    /// `disk_full` (53100).
    fn storage_full(&self) -> bool {
        let io_full = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        };
        let db_full = |e: &sqlx::Error| match e {
            sqlx::Error::Io(e) => io_full(e),
            sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("13" | "53100")),
            _ => false,
        };
        match self {
            StoreError::Blob(crate::blob::BlobError::Io { source, .. }) => io_full(source),
            StoreError::Meta(crate::meta::MetaError::Db(e)) => db_full(e),
            _ => false,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::DigestMismatch { .. }
            | StoreError::DigestRequired
            | StoreError::BodyRead(_)
            | StoreError::InvalidManifest(_)
            | StoreError::RetentionChange(ChangeError::ReasonRequired) => ErrorClass::Invalid,
            StoreError::RetentionChange(_)
            | StoreError::HoldReleased(_)
            | StoreError::PackageDeleted { .. }
            | StoreError::CollectorBusy
            | StoreError::TieringBusy
            | StoreError::NoColdTier => ErrorClass::Conflict,
            StoreError::PackageGone { .. } => ErrorClass::Gone,
            StoreError::UnknownClass { .. }
            | StoreError::MissingBlobs(_)
            | StoreError::ManifestBlobMismatch(_)
            | StoreError::ExpiryOutOfRange => ErrorClass::Unprocessable,
            StoreError::UploadNotFound(_)
            | StoreError::BlobNotFound(_)
            | StoreError::PackageNotFound(_)
            | StoreError::FileNotFound { .. }
            | StoreError::HoldNotFound { .. } => ErrorClass::NotFound,
            StoreError::OffsetMismatch { .. } => ErrorClass::Conflict,
            StoreError::TooLarge { .. } => ErrorClass::TooLarge,
            StoreError::RangeNotSatisfiable { .. } => ErrorClass::RangeNotSatisfiable,
            StoreError::Blob(_) | StoreError::Meta(_) if self.storage_full() => {
                ErrorClass::InsufficientStorage
            }
            StoreError::BrokenLog(_) | StoreError::Blob(_) | StoreError::Meta(_) => {
                ErrorClass::Internal
            }
            StoreError::CorruptBlob(_) => ErrorClass::Corrupt,
        }
    }
}

impl From<crate::blob::BlobError> for StoreError {
    /// A staging object is only ever missing because its upload ended: it
    /// was finished, aborted, or expired and collected meanwhile.
    fn from(e: crate::blob::BlobError) -> StoreError {
        match e {
            crate::blob::BlobError::StagingNotFound(id) => StoreError::UploadNotFound(id),
            other => StoreError::Blob(other),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobError;

    #[test]
    fn a_full_disk_is_insufficient_storage_and_other_io_errors_are_internal() {
        let io = |kind| {
            StoreError::Blob(BlobError::Io {
                context: "writing staging x".into(),
                source: std::io::Error::from(kind),
            })
        };
        let full = io(std::io::ErrorKind::StorageFull);
        assert_eq!(full.class(), ErrorClass::InsufficientStorage);
        assert_eq!(full.code(), "insufficient-storage");
        let other = io(std::io::ErrorKind::PermissionDenied);
        assert_eq!(other.class(), ErrorClass::Internal);
        assert_eq!(other.code(), "internal");
    }
}
