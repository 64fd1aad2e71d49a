//! The metadata backend: the event log and the views derived from it.
//!
//! Writes go through a [`MetaTx`]: the engine reads what it needs to decide,
//! then appends events; the backend assigns each its `seq` under the
//! transaction's lock, chains it, stores it and applies it to the views, and
//! all of it commits or none of it does. How an event changes the views is
//! the backend's `apply` — the same code serves appends and `views rebuild`.

mod conn;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use artifactstore_core::event::{Event, EventDraft, Hash};
use artifactstore_core::manifest::Manifest;
use artifactstore_core::{BlobId, Digest, Timestamp};
use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration {version}: {source}")]
    Migration {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported metadata url {0:?} (expected sqlite://… or postgres://…)")]
    UnsupportedUrl(String),
    #[error("leader lock {role}: {source}")]
    Lock {
        role: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `url` names a metadata backend this build has.
pub fn is_supported_url(url: &str) -> bool {
    is_postgres_url(url) || url.starts_with("sqlite:")
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the metadata store a url names: `sqlite://…` or `postgres://…`.
pub async fn open(url: &str) -> Result<sql::SqlMetadata, MetaError> {
    if is_postgres_url(url) {
        postgres::open(url).await
    } else if url.starts_with("sqlite:") {
        sqlite::open(url).await
    } else {
        Err(MetaError::UnsupportedUrl(url.to_owned()))
    }
}

/// A retrieval tier: which blob backend holds a blob's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// The blob backend every upload goes to.
    Hot,
    /// The cold backend packages move to with age.
    Cold,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Cold => "cold",
        }
    }
}

impl std::str::FromStr for Tier {
    type Err = MetaError;
    fn from_str(s: &str) -> Result<Tier, MetaError> {
        match s {
            "hot" => Ok(Tier::Hot),
            "cold" => Ok(Tier::Cold),
            other => Err(MetaError::Corrupt(format!("unknown tier {other:?}"))),
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row of the `blobs` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub blob: BlobId,
    /// Where the bytes are: `location` in the backend of `tier`.
    pub tier: Tier,
    pub location: String,
    pub stored_seq: u64,
    pub stored_at: Timestamp,
}

impl BlobRecord {
    /// What a collection that deletes this row leaves in the trash of its
    /// tier until it commits: a trashed object is this row's exactly when
    /// it equals this (a later row for the same bytes has another seq).
    pub fn trashed(&self) -> crate::blob::Trashed {
        crate::blob::Trashed {
            location: self.location.clone(),
            stored_seq: self.stored_seq,
        }
    }
}

/// A stored event row as read back: the bytes and hash exactly as stored,
/// so verification can check them rather than trust them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub bytes: Vec<u8>,
    pub hash: Hash,
}

/// A row of the `retention_state` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionState {
    pub class: String,
    /// `None` for a permanent class.
    pub current_expires_at: Option<Timestamp>,
    pub active_holds: u64,
    pub eligible_for_deletion: bool,
    pub last_eligibility_seq: Option<u64>,
    /// Set once the collector deleted the package (`v1.package.deleted`).
    pub deleted: Option<Deletion>,
}

/// How a package was deleted: the `v1.package.deleted` event's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub seq: u64,
    pub at: Timestamp,
    pub reason: String,
    pub bytes_freed: u64,
}

/// A row of the `packages` view with its retention state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRecord {
    pub id: String,
    pub name: String,
    pub manifest_sha256: Hash,
    pub manifest_blake3: Hash,
    pub file_count: u64,
    pub total_size: u64,
    pub retention_class: String,
    pub created_seq: u64,
    pub created_at: Timestamp,
    pub created_by: String,
    /// The tier the package has reached (`v1.package.tier_changed`).
    pub tier: Tier,
    pub retention: RetentionState,
}

/// A manifest as the database keeps it: its canonical bytes under the
/// digests they were stored with (a reader checks them; see
/// [`StoredManifest::verified`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub sha256: Hash,
    pub blake3: Hash,
    pub body: Vec<u8>,
}

impl StoredManifest {
    /// The bytes, if they still hash to both digests they were stored
    /// under; the database is storage like any other, and a manifest is
    /// evidence.
    pub fn verified(self) -> Result<Vec<u8>, MetaError> {
        let id = BlobId::of(&self.body);
        if id.sha256 != self.sha256 || id.blake3 != self.blake3 {
            return Err(MetaError::Corrupt(format!(
                "manifest {} does not hash to its digests",
                Digest::sha256(self.sha256)
            )));
        }
        Ok(self.body)
    }
}

/// A row of the `package_files` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    pub path: String,
    pub blob: BlobId,
    pub media_type: Option<String>,
}

/// A row of the `holds` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: String,
    pub reason: String,
    pub applied_by: String,
    pub applied_at: Timestamp,
    pub released: Option<Release>,
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub by: String,
    pub at: Timestamp,
    pub reason: String,
}

/// Filters of a package listing; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageFilter {
    pub name: Option<String>,
    pub retention_class: Option<String>,
    pub eligible: Option<bool>,
    /// Deleted by the collector (true) or live (false).
    pub deleted: Option<bool>,
}

/// A digest of every view's contents in a canonical row order, and the seq
/// they reflect: two stores of the same backend whose views hold the same
/// rows give the same digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewsDigest {
    pub applied_seq: u64,
    /// (view, rows, BLAKE3 over the rows)
    pub tables: Vec<(&'static str, u64, Hash)>,
}

/// An upload session: transient data-plane state, not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    pub id: String,
    pub created_at: Timestamp,
    pub actor: String,
}

#[async_trait]
pub trait MetadataStore: Send + Sync + std::fmt::Debug + 'static {
    /// Starts a write transaction. Only one is open at a time per database:
    /// it holds the lock under which `seq` is assigned.
    async fn begin(&self) -> Result<Box<dyn MetaTx>, MetaError>;

    /// Looks a blob up by either of its digests.
    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError>;
    /// The rows of those of these SHA-256 digests that are stored, in no
    /// particular order (a package names thousands of blobs: one lookup
    /// each would be thousands of round trips).
    async fn blobs_by_sha256(&self, sha256: &[Hash]) -> Result<Vec<BlobRecord>, MetaError>;
    /// As [`MetadataStore::blobs_by_sha256`], only the digests and sizes:
    /// what a package's reference check compares, for thousands of files
    /// at a time, without decoding what it does not need.
    async fn stored_blobs(&self, sha256: &[Hash]) -> Result<Vec<BlobId>, MetaError>;
    /// The stored manifests among these SHA-256 digests, in no particular
    /// order. A manifest is stored when the first `v1.package.created`
    /// naming it is appended or imported with it, and never removed.
    /// Manifests stored before that rule are blobs instead.
    async fn manifests_by_sha256(&self, sha256: &[Hash]) -> Result<Vec<StoredManifest>, MetaError>;
    /// Up to `limit` stored manifests whose SHA-256 sorts after `after`, in
    /// that order: every manifest, a page at a time, for `verify`.
    async fn manifests_after(
        &self,
        after: &Hash,
        limit: u32,
    ) -> Result<Vec<StoredManifest>, MetaError>;
    /// Up to `limit` events with `seq > after`, in order.
    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>, MetaError>;
    /// The seq and hash of the last event (0 and zeros for an empty log).
    async fn head(&self) -> Result<(u64, Hash), MetaError>;

    async fn package(&self, id: &str) -> Result<Option<PackageRecord>, MetaError>;
    /// Up to `limit` packages created after `after_seq`, in creation order.
    /// Keyset paging on `created_seq`: pages stay correct while packages are
    /// being added, since new ones always sort last.
    async fn packages(
        &self,
        filter: &PackageFilter,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError>;
    async fn package_file(
        &self,
        package_id: &str,
        path: &str,
    ) -> Result<Option<PackageFile>, MetaError>;
    /// Every hold of a package, active and released, in the order applied.
    async fn holds(&self, package_id: &str) -> Result<Vec<Hold>, MetaError>;
    /// The events whose subject is `subject` and whose type starts with
    /// `type_prefix`, in seq order.
    async fn events_of(
        &self,
        subject: &str,
        type_prefix: &str,
    ) -> Result<Vec<StoredEvent>, MetaError>;

    async fn session_insert(&self, session: &UploadSession) -> Result<(), MetaError>;
    async fn session_get(&self, id: &str) -> Result<Option<UploadSession>, MetaError>;
    /// Deletes a session; returns whether it existed.
    async fn session_delete(&self, id: &str) -> Result<bool, MetaError>;

    /// Up to `limit` blob rows with a SHA-256 greater than `after`, in order.
    async fn blobs_after(&self, after: &Hash, limit: u32) -> Result<Vec<BlobRecord>, MetaError>;

    /// [`ViewsDigest`] of the current views, read in one snapshot.
    async fn views_digest(&self) -> Result<ViewsDigest, MetaError>;

    /// A new, empty store of the same backend (dropped with the value), to
    /// replay the log into and compare.
    async fn scratch(&self) -> Result<Box<dyn MetadataStore>, MetaError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), MetaError>;

    /// Takes the database-wide lock of a leader `role` (the collector) if
    /// no one holds it; `None` if another process or store does. Held until
    /// the guard is dropped, and released by the operating system or the
    /// database if its holder dies, so a crash never leaves it stuck.
    async fn try_lead(&self, role: &str) -> Result<Option<LeaderGuard>, MetaError>;

    /// Up to `limit` upload sessions created before `cutoff`, oldest first.
    async fn sessions_before(
        &self,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<Vec<UploadSession>, MetaError>;
}

/// Holds a leader lock until dropped.
pub struct LeaderGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl LeaderGuard {
    pub fn new(held: impl Send + Sync + 'static) -> LeaderGuard {
        LeaderGuard(Box::new(held))
    }
}

impl std::fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaderGuard")
    }
}

#[async_trait]
pub trait MetaTx: Send {
    async fn blob(&mut self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError>;
    /// As [`MetadataStore::blobs_by_sha256`], under the write lock.
    async fn blobs_by_sha256(&mut self, sha256: &[Hash]) -> Result<Vec<BlobRecord>, MetaError>;
    /// As [`MetadataStore::stored_blobs`], under the write lock.
    async fn stored_blobs(&mut self, sha256: &[Hash]) -> Result<Vec<BlobId>, MetaError>;
    /// Appends an event and applies it to the views. `manifest` is the
    /// manifest a `v1.package.created` names (its files fill
    /// `package_files`, and it is stored in `manifests` unless it is
    /// already); `None` for every other type.
    async fn append(
        &mut self,
        draft: EventDraft,
        manifest: Option<&Manifest>,
    ) -> Result<Event, MetaError>;
    /// Appends an event that was sealed elsewhere (another store's log,
    /// being moved here) exactly as it is, and applies it: it must be the
    /// next one, `seq` one past the head and `prev` the head's hash.
    async fn import(&mut self, event: &Event, manifest: Option<&Manifest>)
    -> Result<(), MetaError>;
    /// A package read under this transaction's lock.
    async fn package(&mut self, id: &str) -> Result<Option<PackageRecord>, MetaError>;
    /// A hold read under this transaction's lock.
    async fn hold(&mut self, package_id: &str, hold_id: &str) -> Result<Option<Hold>, MetaError>;
    /// Up to `limit` packages whose expiry is at or before `now`, with no
    /// active hold and not yet eligible: what a sweep marks. Served by an
    /// index on expiry, so the work follows what changes, not the store size.
    async fn due_for_eligibility(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError>;
    /// Events after `after`, read inside this transaction.
    async fn events_after(&mut self, after: u64, limit: u32)
    -> Result<Vec<StoredEvent>, MetaError>;
    /// Empties every view (the log is untouched), for a rebuild.
    async fn reset_views(&mut self) -> Result<(), MetaError>;
    /// Applies events that are already in the log (or are being copied
    /// into a scratch store) to the views, in order, without appending
    /// them; each `v1.package.created` with its manifest. A page at a time
    /// lets a backend send their rows together.
    async fn replay(&mut self, events: &[(&Event, Option<&Manifest>)]) -> Result<(), MetaError>;
    /// Deletes an upload session as part of this transaction.
    async fn session_delete(&mut self, id: &str) -> Result<(), MetaError>;

    /// Up to `limit` packages the sweeper marked eligible and that are not
    /// deleted yet, whose expiry is at or before `now` and with no active
    /// hold: what the collector deletes next.
    async fn collectable_packages(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError>;
    /// The bytes of a package's distinct blobs that nothing else references
    /// (no other live package's files, no package's manifest): what its
    /// deletion makes collectable.
    async fn exclusive_bytes(&mut self, package_id: &str) -> Result<u64, MetaError>;
    /// Up to `limit` blobs with a SHA-256 after `after`, in order, stored at
    /// or before `cutoff` and referenced by no live package's files and no
    /// package's manifest.
    async fn unreferenced_blobs(
        &mut self,
        cutoff: Timestamp,
        after: &Hash,
        limit: u32,
    ) -> Result<Vec<BlobRecord>, MetaError>;
    /// The blob row at `location` in `tier`, if any.
    async fn blob_at(
        &mut self,
        tier: Tier,
        location: &str,
    ) -> Result<Option<BlobRecord>, MetaError>;
    /// Which of `locations` (at most 1000) a blob row of `tier` names.
    async fn known_locations(
        &mut self,
        tier: Tier,
        locations: &[String],
    ) -> Result<std::collections::HashSet<String>, MetaError>;
    /// Up to `limit` live packages still in the hot tier that were created
    /// at or before `cutoff` and have one of `classes`, oldest first.
    async fn hot_packages_before(
        &mut self,
        classes: &[(String, Timestamp)],
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError>;
    /// The hot blobs `package_id` references (its files and its manifest)
    /// that every other live, hot package referencing them is due to leave
    /// the hot tier too (by `classes`, as in `hot_packages_before`).
    async fn blobs_leaving_hot(
        &mut self,
        package_id: &str,
        classes: &[(String, Timestamp)],
    ) -> Result<Vec<BlobRecord>, MetaError>;
    async fn commit(self: Box<Self>) -> Result<(), MetaError>;
}
