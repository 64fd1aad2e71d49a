//! The artifactstore engine: blob and metadata backends behind small traits,
//! streaming ingest with dual hashing, the event log and its views.
//!
//! Adapters (the HTTP server, the CLI) call [`Store`] and translate its
//! results; no rule lives in them.

pub mod blob;
pub mod clock;
pub mod conformance;
mod engine;
pub mod error;
mod gc;
pub mod hashing;
mod manifests;
pub mod meta;
mod migrate;
mod retention;
pub mod testing;
mod tier;
mod verify;

pub use engine::{
    Backends, BlobsConfig, CreationStats, GroupStats, Limits, MAX_PAGE, Page, Store, StoreOptions,
    StoreStats, StoredBlob,
};
pub use error::{ErrorClass, StoreError};
pub use gc::{DeletedPackage, GcReport, GcSettings};
pub use migrate::CopyReport;
pub use retention::SweepReport;
pub use tier::TierReport;
pub use verify::{Finding, VerifyReport};
