//! The engine: the one place where the store's rules live.
//!
//! Ingest is a single streaming pass: each chunk goes to the backend's
//! staging writer and to the two hasher threads at once; nothing holds the
//! body in memory. A blob becomes visible only after its digests are checked
//! against what the client declared, its bytes are durable and committed,
//! and its `v1.blob.stored` event and `blobs` row are committed together.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use artifactstore_core::event::Hash;
use artifactstore_core::event::{EventData, EventDraft};
use artifactstore_core::manifest::Manifest;
use artifactstore_core::retention::{ClassRule, shipped_classes};
use artifactstore_core::{BlobId, Digest};
use futures::StreamExt;

mod group;

use crate::blob::fs::FsBlobStore;
use crate::blob::{BlobBackend, BlobError, ByteStream, StagingKind};
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StoreError};
use crate::hashing::HashState;
use crate::meta::{
    BlobRecord, MetaError, MetaTx, MetadataStore, PackageFile, PackageFilter, PackageRecord,
    StoredEvent, Tier, UploadSession,
};

/// Operator limits the engine enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest blob accepted, in bytes.
    pub max_blob_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blob_size: 64 << 30,
        }
    }
}

/// How a store behaves: limits, retention classes, and the clock it reads.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub limits: Limits,
    /// The retention classes packages may use, by name.
    pub classes: BTreeMap<String, ClassRule>,
    pub clock: Arc<dyn Clock>,
    /// When set, whole downloads are answered with a link, valid this long,
    /// that fetches the bytes from the blob backend directly (if it can
    /// make one: S3 can, the filesystem cannot).
    pub presign_downloads: Option<std::time::Duration>,
    /// For each class that has one, the age at which a package of it moves
    /// to the cold tier (with [`Store::with_cold_tier`]).
    pub cold_after: BTreeMap<String, std::time::Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            limits: Limits::default(),
            classes: shipped_classes(),
            clock: Arc::new(SystemClock),
            presign_downloads: None,
            cold_after: BTreeMap::new(),
        }
    }
}

/// Where a store keeps its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobsConfig {
    /// Files under the data directory.
    Fs,
    S3(crate::blob::s3::S3Settings),
}

/// Where a store lives: its metadata database and its blob backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends {
    /// The embedded pair's home (the SQLite file and the blob files, by
    /// default).
    pub data_dir: std::path::PathBuf,
    /// `sqlite://…` or `postgres://…`; `None`: `<data_dir>/meta.sqlite`.
    pub metadata_url: Option<String>,
    pub blobs: BlobsConfig,
    /// The cold tier's backend, if any (a filesystem one keeps its files
    /// under `<data_dir>/cold`, unless it is S3).
    pub cold: Option<BlobsConfig>,
}

/// Whole blobs up to this size are read and checked against their digest
/// before the response starts; larger ones are checked as they stream.
const VERIFY_BEFORE_SENDING: u64 = 1 << 20;

/// The largest page a listing returns.
pub const MAX_PAGE: u32 = 1000;

/// One page of a listing and the cursor of the next, if there may be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<u64>,
}

/// The result of storing a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub record: BlobRecord,
    /// False when the blob was already stored and nothing new was written.
    pub created: bool,
}

/// Digest state of an open upload session, kept between requests so each
/// byte is hashed once. `None` means "not known in this process" (after a
/// restart, or after a failed request): it is rebuilt from the staged bytes.
type SessionSlot = Arc<tokio::sync::Mutex<Option<HashState>>>;

#[derive(Debug)]
pub struct Store {
    pub(crate) meta: Arc<dyn MetadataStore>,
    pub(crate) blobs: Arc<dyn BlobBackend>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The cold tier's backend, if one is configured.
    pub(crate) cold: Option<Arc<dyn BlobBackend>>,
    /// How old a package of each class gets before it moves to the cold tier.
    pub(crate) cold_after: BTreeMap<String, std::time::Duration>,
    limits: Limits,
    classes: BTreeMap<String, ClassRule>,
    presign_downloads: Option<std::time::Duration>,
    sessions: Mutex<HashMap<String, SessionSlot>>,
    /// The last seq this process committed, for live followers of the log.
    head: tokio::sync::watch::Sender<u64>,
    pub(crate) stats: Arc<Counters>,
    /// Package creations waiting to be committed together.
    packages: group::Group<group::PackageJob>,
    /// Uploaded blobs waiting for their rows.
    uploads: group::Group<group::BlobJob>,
}

/// What this process has done since it started, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) ingested_bytes: AtomicU64,
    pub(crate) events_appended: AtomicU64,
    pub(crate) collections: AtomicU64,
    pub(crate) packages_deleted: AtomicU64,
    pub(crate) blobs_deleted: AtomicU64,
    pub(crate) bytes_deleted: AtomicU64,
    /// Whole-blob reads aborted because the stored bytes failed their digest.
    pub(crate) corrupt_reads: AtomicU64,
    pub(crate) creations: Creations,
    /// The group commits of uploaded blobs' rows.
    pub(crate) blob_groups: GroupCounters,
}

/// The transactions of one kind of group commit: how many ran, the writes
/// they committed, and their time from `BEGIN` to the end of `COMMIT`.
#[derive(Debug, Default)]
pub(crate) struct GroupCounters {
    transactions: AtomicU64,
    writes: AtomicU64,
    micros: AtomicU64,
}

impl GroupCounters {
    /// Counts a transaction that began at `began`, committed `writes`.
    pub(crate) fn committed(&self, writes: usize, began: Instant) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        add_elapsed(&self.micros, began);
    }

    fn read(&self) -> GroupStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GroupStats {
            transactions: load(&self.transactions),
            writes: load(&self.writes),
            micros: load(&self.micros),
        }
    }
}

/// A reading of one kind of group commit's counters: transactions, the
/// writes they committed, and their time from `BEGIN` to the end of
/// `COMMIT` (summed, in microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    pub transactions: u64,
    pub writes: u64,
    pub micros: u64,
}

/// Where package creations spend their time, in microseconds summed over
/// the creations that got as far as each phase: what an operator (and the
/// benchmark) reads to see whether the write lock, the disk or the checks
/// set the rate.
#[derive(Debug, Default)]
pub(crate) struct Creations {
    pub(crate) created: AtomicU64,
    /// Looking up the blobs a manifest names, outside the lock.
    pub(crate) check_micros: AtomicU64,
    /// From queueing for a group commit to the commit of its transaction.
    pub(crate) commit_micros: AtomicU64,
    /// The transactions that committed them.
    pub(crate) groups: GroupCounters,
}

/// Adds the microseconds since `since` to `counter`.
fn add_elapsed(counter: &AtomicU64, since: Instant) {
    let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
    counter.fetch_add(micros, Ordering::Relaxed);
}

impl Creations {
    fn read(&self) -> CreationStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CreationStats {
            created: load(&self.created),
            check_micros: load(&self.check_micros),
            commit_micros: load(&self.commit_micros),
            groups: self.groups.read(),
        }
    }
}

/// A reading of [`Creations`]: packages this process created, the time
/// their creations spent checking and being committed (summed, in
/// microseconds), and the transactions that committed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationStats {
    pub created: u64,
    pub check_micros: u64,
    pub commit_micros: u64,
    pub groups: GroupStats,
}

/// A reading of [`Store::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Blob bytes received by uploads (before deduplication).
    pub ingested_bytes: u64,
    /// Events this process appended to the log.
    pub events_appended: u64,
    /// Collections this process completed (dry runs not counted).
    pub collections: u64,
    /// Packages, blobs and blob bytes those collections deleted.
    pub packages_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    /// Whole-blob reads cut off because the stored bytes did not match.
    pub corrupt_reads: u64,
    /// Package creations and where their time went.
    pub creations: CreationStats,
    /// The transactions that committed uploaded blobs' rows (the blobs
    /// already stored count among their writes).
    pub blob_groups: GroupStats,
}

impl Store {
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobBackend>,
        options: StoreOptions,
    ) -> Store {
        Store {
            meta,
            blobs,
            clock: options.clock,
            cold: None,
            cold_after: options.cold_after,
            limits: options.limits,
            classes: options.classes,
            presign_downloads: options.presign_downloads,
            sessions: Mutex::new(HashMap::new()),
            head: tokio::sync::watch::Sender::new(0),
            stats: Arc::default(),
            packages: group::Group::default(),
            uploads: group::Group::default(),
        }
    }

    /// Opens the store `backends` name, creating what is missing (the data
    /// directory, the database schema; an S3 bucket must exist).
    pub async fn open(backends: &Backends, options: StoreOptions) -> Result<Store> {
        let blobs: Arc<dyn BlobBackend> = match &backends.blobs {
            BlobsConfig::Fs => Arc::new(FsBlobStore::open(&backends.data_dir).await?),
            BlobsConfig::S3(s3) => Arc::new(crate::blob::s3::S3BlobStore::open(s3)?),
        };
        let meta = match &backends.metadata_url {
            Some(url) => crate::meta::open(url).await?,
            None => crate::meta::sqlite::open_path(&backends.data_dir.join("meta.sqlite")).await?,
        };
        let store = Store::new(Arc::new(meta), blobs, options);
        Ok(match &backends.cold {
            None => store,
            Some(BlobsConfig::Fs) => {
                let cold = FsBlobStore::open(backends.data_dir.join("cold")).await?;
                store.with_cold_tier(Arc::new(cold))
            }
            Some(BlobsConfig::S3(s3)) => {
                store.with_cold_tier(Arc::new(crate::blob::s3::S3BlobStore::open(s3)?))
            }
        })
    }

    /// Adds a cold tier: a second blob backend packages move to with age
    /// ([`StoreOptions::cold_after`], [`Store::tier_run`]).
    pub fn with_cold_tier(mut self, cold: Arc<dyn BlobBackend>) -> Store {
        self.cold = Some(cold);
        self
    }

    /// The backend that holds the bytes of `tier`.
    pub(crate) fn backend(&self, tier: Tier) -> Result<&Arc<dyn BlobBackend>> {
        match tier {
            Tier::Hot => Ok(&self.blobs),
            Tier::Cold => self.cold.as_ref().ok_or_else(|| {
                StoreError::Blob(BlobError::Unsupported(
                    "a blob is in the cold tier, and no cold tier is configured".into(),
                ))
            }),
        }
    }

    /// Every configured tier and its backend.
    pub(crate) fn tiers(&self) -> impl Iterator<Item = (Tier, &Arc<dyn BlobBackend>)> {
        std::iter::once((Tier::Hot, &self.blobs)).chain(self.cold.iter().map(|c| (Tier::Cold, c)))
    }

    /// A link to the bytes of `record` that bypasses this server, if
    /// downloads are configured to redirect and the backend can sign one.
    pub async fn download_link(&self, record: &BlobRecord) -> Result<Option<String>> {
        let Some(valid) = self.presign_downloads else {
            return Ok(None);
        };
        Ok(self
            .backend(record.tier)?
            .presign_get(&record.location, valid)
            .await?)
    }

    /// The embedded default: SQLite metadata (at `metadata_url`, or
    /// `<data_dir>/meta.sqlite`) and blobs on the local filesystem under
    /// `data_dir`.
    pub async fn open_embedded(
        data_dir: &Path,
        metadata_url: Option<&str>,
        options: StoreOptions,
    ) -> Result<Store> {
        let backends = Backends {
            data_dir: data_dir.to_owned(),
            metadata_url: metadata_url.map(str::to_owned),
            blobs: BlobsConfig::Fs,
            cold: None,
        };
        Store::open(&backends, options).await
    }

    /// The blob backend, for tools and tests that look at stored bytes
    /// directly (`verify`, conformance checks).
    pub fn blob_backend(&self) -> &Arc<dyn BlobBackend> {
        &self.blobs
    }

    /// The cold tier's blob backend, if one is configured.
    pub fn cold_backend(&self) -> Option<&Arc<dyn BlobBackend>> {
        self.cold.as_ref()
    }

    /// The configured retention classes.
    pub fn classes(&self) -> &BTreeMap<String, ClassRule> {
        &self.classes
    }

    pub(crate) fn new_id(&self) -> String {
        let micros = self.clock.now().unix_micros().max(0) as u64;
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            micros / 1_000_000,
            (micros % 1_000_000) as u32 * 1000,
        );
        uuid::Uuid::new_v7(ts).hyphenated().to_string()
    }

    fn check_declared_size(&self, size: Option<u64>) -> Result<()> {
        match size {
            Some(n) if n > self.limits.max_blob_size => Err(StoreError::TooLarge {
                limit: self.limits.max_blob_size,
            }),
            _ => Ok(()),
        }
    }

    /// Stores a blob sent in one request. `declared` must name it (at least
    /// one digest); `size_hint` (a Content-Length) lets an oversized body be
    /// refused before any byte is read.
    pub async fn put_blob(
        &self,
        declared: &[Digest],
        size_hint: Option<u64>,
        body: ByteStream,
        actor: &str,
    ) -> Result<StoredBlob> {
        if declared.is_empty() {
            return Err(StoreError::DigestRequired);
        }
        self.check_declared_size(size_hint)?;
        let id = self.new_id();
        self.blobs.staging_create(&id, StagingKind::Request).await?;
        let result = async {
            let state = self.ingest(&id, HashState::new(), body).await?;
            self.commit_staged(&id, state, declared, actor, false).await
        }
        .await;
        if result.is_err() {
            self.discard_staging(&id).await;
        }
        result
    }

    /// Starts a resumable upload; returns its id.
    pub async fn create_upload(&self, actor: &str) -> Result<String> {
        let id = self.new_id();
        // Staging first: a crash in between leaves an orphaned staging
        // object (collected later), never a session without bytes.
        self.blobs.staging_create(&id, StagingKind::Session).await?;
        let session = UploadSession {
            id: id.clone(),
            created_at: self.clock.now(),
            actor: actor.to_owned(),
        };
        self.meta.session_insert(&session).await?;
        Ok(id)
    }

    /// The number of bytes durably received for an upload.
    pub async fn upload_offset(&self, id: &str) -> Result<u64> {
        self.require_session(id).await?;
        self.blobs
            .staging_len(id)
            .await?
            .ok_or_else(|| StoreError::UploadNotFound(id.to_owned()))
    }

    /// Appends `body` at `offset`, which must equal the current offset.
    /// Returns the new offset once the bytes are durable.
    pub async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        size_hint: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let slot = self.session_slot(id).await?;
        let mut state = slot.lock().await;
        let current = self.locked_offset(id).await?;
        if offset != current {
            return Err(StoreError::OffsetMismatch {
                given: offset,
                current,
            });
        }
        self.check_declared_size(size_hint.map(|n| n.saturating_add(current)))?;
        let resumed = self.resume_state(id, state.take(), current).await?;
        let next = self.ingest(id, resumed, body).await?;
        let len = next.len();
        *state = Some(next);
        Ok(len)
    }

    /// Finishes an upload: appends the optional last chunk, verifies the
    /// declared digests and stores the blob. A digest mismatch ends the
    /// session and discards its bytes.
    pub async fn finish_upload(
        &self,
        id: &str,
        declared: &[Digest],
        last_chunk: Option<(Option<u64>, ByteStream)>,
        actor: &str,
    ) -> Result<StoredBlob> {
        if declared.is_empty() {
            return Err(StoreError::DigestRequired);
        }
        let slot = self.session_slot(id).await?;
        let mut guard = slot.lock().await;
        let current = self.locked_offset(id).await?;
        let mut state = self.resume_state(id, guard.take(), current).await?;
        if let Some((size_hint, body)) = last_chunk {
            self.check_declared_size(size_hint.map(|n| n.saturating_add(current)))?;
            state = self.ingest(id, state, body).await?;
        }
        let result = self.commit_staged(id, state, declared, actor, true).await;
        self.forget_slot(id);
        result
    }

    /// Abandons an upload and its bytes.
    pub async fn abort_upload(&self, id: &str) -> Result<()> {
        let slot = self.session_slot(id).await?;
        let _guard = slot.lock().await;
        let existed = self.meta.session_delete(id).await?;
        self.forget_slot(id);
        if !existed {
            return Err(StoreError::UploadNotFound(id.to_owned()));
        }
        self.blobs.staging_delete(id).await?;
        Ok(())
    }

    /// Creates a package from a validated manifest. Every file's blob must
    /// be stored already, with the digests and size the manifest gives.
    /// `v1.package.created` (which stores the manifest's canonical bytes in
    /// the database, if they are not there yet) and
    /// `v1.retention.default_applied` (its `expires_at` fixed from the
    /// class now) commit together with their views. The reference check is
    /// repeated inside that transaction, so a blob cannot disappear between
    /// the check and the commit. Creations that arrive together share one
    /// transaction, each decided on its own (see `engine/group.rs`).
    pub async fn create_package(
        &self,
        manifest: &Manifest,
        class: &str,
        actor: &str,
    ) -> Result<PackageRecord> {
        let rule = *self
            .classes
            .get(class)
            .ok_or_else(|| StoreError::UnknownClass {
                class: class.to_owned(),
                known: self.classes.keys().cloned().collect(),
            })?;
        let timing = &self.stats.creations;
        let started = Instant::now();
        let refs = References::of(manifest);
        // Checked first on the read pool, so that a request naming missing
        // blobs never waits for the write lock.
        let found = self.meta.stored_blobs(&refs.sha256()).await?;
        refs.verdict(&found.into_iter().map(|b| (b.sha256, b)).collect())?;
        add_elapsed(&timing.check_micros, started);

        let job = group::PackageJob {
            id: self.new_id(),
            manifest: manifest.clone(),
            manifest_id: BlobId::of(&manifest.to_canonical_bytes()),
            class: class.to_owned(),
            rule,
            actor: actor.to_owned(),
            retried: false,
        };
        let queued = Instant::now();
        let id = self.commit_grouped(job).await?;
        add_elapsed(&timing.commit_micros, queued);
        timing.created.fetch_add(1, Ordering::Relaxed);
        self.package(&id).await
    }

    /// Package `id`'s two events: `v1.package.created` and
    /// `v1.retention.default_applied`, its expiry fixed from the class now.
    fn package_events(
        &self,
        id: &str,
        manifest: &Manifest,
        manifest_id: &BlobId,
        class: &str,
        rule: &ClassRule,
        actor: &str,
    ) -> Result<(EventDraft, EventDraft)> {
        let created = self.draft(
            id,
            actor,
            EventData::PackageCreated {
                name: manifest.name().to_owned(),
                manifest_sha256: manifest_id.sha256,
                manifest_blake3: manifest_id.blake3,
                file_count: manifest.files().len() as u64,
                total_size: manifest.total_size(),
                retention_class: class.to_owned(),
            },
        );
        let expires_at = rule
            .expiry(created.at)
            .map_err(|_| StoreError::ExpiryOutOfRange)?;
        let default = EventDraft {
            data: EventData::RetentionDefaultApplied {
                class: class.to_owned(),
                expires_at,
            },
            id: self.new_id(),
            ..created.clone()
        };
        Ok((created, default))
    }

    pub async fn package(&self, id: &str) -> Result<PackageRecord> {
        self.meta
            .package(id)
            .await?
            .ok_or_else(|| StoreError::PackageNotFound(id.to_owned()))
    }

    /// A page of packages in creation order, after the cursor `after`.
    pub async fn packages(
        &self,
        filter: &PackageFilter,
        after: u64,
        limit: u32,
    ) -> Result<Page<PackageRecord>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let items = self.meta.packages(filter, after, limit).await?;
        let next = (items.len() == limit as usize)
            .then(|| items.last().map(|p| p.created_seq))
            .flatten();
        Ok(Page { items, next })
    }

    /// A whole blob in memory (a manifest stored as a blob, before
    /// manifests moved to the database). The read verifies it (see
    /// [`Store::read_blob`]): bytes that changed on disk are an error.
    pub(crate) async fn read_verified(&self, record: &BlobRecord) -> Result<Vec<u8>> {
        let mut stream = self.read_blob(record, None).await?;
        let mut bytes = Vec::with_capacity(record.blob.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| crate::blob::BlobError::Io {
                context: format!("reading {}", record.location),
                source,
            })?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// A file of a package and the blob holding its bytes.
    pub async fn package_file(&self, id: &str, path: &str) -> Result<(PackageFile, BlobRecord)> {
        let file = match self.meta.package_file(id, path).await? {
            Some(f) => f,
            None => {
                let package = self.package(id).await?;
                if let Some(d) = package.retention.deleted {
                    return Err(StoreError::PackageGone {
                        package: id.to_owned(),
                        at: d.at,
                        seq: d.seq,
                    });
                }
                return Err(StoreError::FileNotFound {
                    package: id.to_owned(),
                    path: path.to_owned(),
                });
            }
        };
        let blob = self.blob(&file.blob.sha256_digest()).await?;
        Ok((file, blob))
    }

    /// Looks a blob up by either digest.
    pub async fn blob(&self, digest: &Digest) -> Result<BlobRecord> {
        self.meta
            .blob(digest)
            .await?
            .ok_or(StoreError::BlobNotFound(*digest))
    }

    /// Streams a stored blob, or a non-empty `range` within it. A whole
    /// blob is verified against the row's BLAKE3 digest: a small one before
    /// its first byte is returned ([`StoreError::CorruptBlob`]), a large one
    /// as it streams, where a mismatch ends the stream with an error before
    /// its last chunk. Either way a reader never gets a complete wrong body.
    /// (A range cannot be checked without reading the whole blob.)
    pub async fn read_blob(
        &self,
        record: &BlobRecord,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream> {
        if let Some(r) = range
            .as_ref()
            .filter(|r| r.start >= r.end || r.end > record.blob.size)
        {
            return Err(StoreError::RangeNotSatisfiable {
                start: r.start,
                size: record.blob.size,
            });
        }
        let whole = range.is_none();
        let backend = self.backend(record.tier)?;
        let stream = match backend.read(&record.location, range.clone()).await {
            Ok(s) => s,
            Err(BlobError::NotFound(_)) => {
                self.find_missing_bytes(record).await?;
                backend.read(&record.location, range).await?
            }
            Err(e) => return Err(e.into()),
        };
        if !whole {
            return Ok(stream);
        }
        if record.blob.size > VERIFY_BEFORE_SENDING {
            return Ok(crate::hashing::verified(
                stream,
                record.blob,
                self.stats.clone(),
            ));
        }
        // Small enough to check before anything is sent: a corrupt one gets
        // a clean error response instead of a cut-off body.
        let mut stream = stream;
        let mut bytes = bytes::BytesMut::with_capacity(record.blob.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(BlobError::io(format!("reading {}", record.location)))?;
            bytes.extend_from_slice(&chunk);
        }
        let bytes = bytes.freeze();
        if bytes.len() as u64 != record.blob.size
            || *blake3::hash(&bytes).as_bytes() != record.blob.blake3
        {
            self.stats
                .corrupt_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let digest = record.blob.sha256_digest();
            tracing::error!(blob = %digest, location = %record.location,
                "stored bytes do not match the blob's digest; read refused");
            return Err(StoreError::CorruptBlob(digest));
        }
        Ok(futures::stream::once(std::future::ready(Ok(bytes))).boxed())
    }

    /// A row's bytes were not at its location when read. Either a collector
    /// deleted them since the row was read (the row is gone now: not
    /// found), or a collection moved them to the trash and has not
    /// committed. If that collection died (a killed `gc`), its trash is put
    /// back here, as `serve` does at start, so that the bytes are readable
    /// again at once rather than after the next collection, and `Ok` says
    /// to read again. While a collection runs, its trash is its own to purge
    /// or restore: the blob is being collected, so it is not found either.
    /// Bytes in no trash are lost, which is an internal error.
    async fn find_missing_bytes(&self, record: &BlobRecord) -> Result<()> {
        let digest = record.blob.sha256_digest();
        if self.meta.blob(&digest).await?.is_none() {
            return Err(StoreError::BlobNotFound(digest));
        }
        if self.recover().await?.is_some() {
            return Ok(());
        }
        let trashed = self.backend(record.tier)?.trash_list().await?;
        if trashed.contains(&record.trashed()) {
            return Err(StoreError::BlobNotFound(digest));
        }
        Err(BlobError::NotFound(record.location.clone()).into())
    }

    /// Upload sessions this process holds digest state for.
    pub fn sessions_in_memory(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Counts `count` events committed up to `seq` and wakes followers.
    pub(crate) fn published(&self, seq: u64, count: u64) {
        self.stats
            .events_appended
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        self.head.send_if_modified(|h| {
            let newer = seq > *h;
            if newer {
                *h = seq;
            }
            newer
        });
    }

    pub fn stats(&self) -> StoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.stats;
        StoreStats {
            ingested_bytes: c.ingested_bytes.load(Relaxed),
            events_appended: c.events_appended.load(Relaxed),
            collections: c.collections.load(Relaxed),
            packages_deleted: c.packages_deleted.load(Relaxed),
            blobs_deleted: c.blobs_deleted.load(Relaxed),
            bytes_deleted: c.bytes_deleted.load(Relaxed),
            corrupt_reads: c.corrupt_reads.load(Relaxed),
            creations: c.creations.read(),
            blob_groups: c.blob_groups.read(),
        }
    }

    /// Changes whenever this process commits events. Followers must also
    /// poll: other processes (admin commands, other nodes) append too.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// A page of the event log.
    pub async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        Ok(self.meta.events_after(after, limit).await?)
    }

    /// Whether both backends answer.
    pub async fn check_ready(&self) -> Result<()> {
        self.meta.ping().await?;
        for (_, backend) in self.tiers() {
            backend.ping().await?;
        }
        Ok(())
    }

    async fn require_session(&self, id: &str) -> Result<UploadSession> {
        self.meta
            .session_get(id)
            .await?
            .ok_or_else(|| StoreError::UploadNotFound(id.to_owned()))
    }

    /// The in-process slot of a known session. Unknown ids get none, so
    /// requests naming random ids cannot grow the map.
    async fn session_slot(&self, id: &str) -> Result<SessionSlot> {
        self.require_session(id).await?;
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(id.to_owned()).or_default().clone())
    }

    /// The offset, read under the session's lock. The session may have
    /// ended while this request waited for the lock; then its slot goes too.
    async fn locked_offset(&self, id: &str) -> Result<u64> {
        let offset = self.upload_offset(id).await;
        if matches!(offset, Err(StoreError::UploadNotFound(_))) {
            self.forget_slot(id);
        }
        offset
    }

    pub(crate) fn forget_slot(&self, id: &str) {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }

    /// The digest state for `current` staged bytes: the one kept in memory
    /// if it covers exactly those bytes, else rebuilt by reading them back
    /// (the only time a byte is hashed twice: after a restart or a failure).
    async fn resume_state(
        &self,
        id: &str,
        kept: Option<HashState>,
        current: u64,
    ) -> Result<HashState> {
        if let Some(state) = kept.filter(|s| s.len() == current) {
            return Ok(state);
        }
        if let Some(state) = self.blobs.staging_resume(id).await?
            && state.len() == current
        {
            return Ok(state);
        }
        let staged = self.blobs.staging_read(id).await?;
        let state = hash_stream(staged, &format!("reading back staging {id}")).await?;
        if state.len() != current {
            return Err(StoreError::Meta(MetaError::Corrupt(format!(
                "staging {id} changed while being read back"
            ))));
        }
        Ok(state)
    }

    /// Streams `body` onto the staging object and through the hashers.
    /// On success the returned state covers exactly the staged bytes. A
    /// body the client broke off keeps what arrived (a session resumes from
    /// the offset `HEAD` reports); any other failure (too large, a backend
    /// error) undoes the append, so a refused request changes nothing.
    async fn ingest(&self, id: &str, state: HashState, mut body: ByteStream) -> Result<HashState> {
        let limit = self.limits.max_blob_size;
        let mut hashing = state.start();
        let mut writer = self.blobs.staging_append(id).await?;
        let streamed: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StoreError::BodyRead)?;
                if hashing.len() + chunk.len() as u64 > limit {
                    return Err(StoreError::TooLarge { limit });
                }
                self.stats
                    .ingested_bytes
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                hashing.feed(chunk.clone()).await.map_err(hasher_failed)?;
                writer.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        let hashed = hashing.stop().await.map_err(hasher_failed);
        let state = match (streamed, hashed) {
            (Err(e), _) | (_, Err(e)) if !matches!(e, StoreError::BodyRead(_)) => {
                if let Err(undo) = writer.abort().await {
                    tracing::warn!(staging = id, error = %undo, "could not undo a refused append");
                }
                return Err(e);
            }
            (streamed, hashed) => {
                let state = hashed?;
                let written = writer.finish(&state).await?;
                streamed?;
                if written != state.len() {
                    return Err(StoreError::Meta(MetaError::Corrupt(format!(
                        "staging {id} holds {written} bytes but {} were hashed",
                        state.len()
                    ))));
                }
                state
            }
        };
        Ok(state)
    }

    /// Verifies and publishes a staged blob. On a digest mismatch the staged
    /// bytes (and the session, if any) are discarded: nothing is stored.
    async fn commit_staged(
        &self,
        id: &str,
        state: HashState,
        declared: &[Digest],
        actor: &str,
        session: bool,
    ) -> Result<StoredBlob> {
        let blob = state.finish();
        if let Some(d) = declared.iter().find(|d| !blob.matches(d)) {
            self.end_staging(id, session).await?;
            return Err(StoreError::DigestMismatch {
                declared: *d,
                actual: blob.digest(d.algorithm()),
            });
        }
        if let Some(record) = self.meta.blob(&blob.sha256_digest()).await? {
            self.end_staging(id, session).await?;
            return Ok(StoredBlob {
                record,
                created: false,
            });
        }
        let location = self.blobs.staging_commit(id, &blob).await?;
        let job = group::BlobJob {
            staging: id.to_owned(),
            blob,
            location,
            actor: actor.to_owned(),
            session,
        };
        let stored = self.commit_blob_grouped(job).await?;
        self.discard_staging(id).await;
        Ok(stored)
    }

    /// Inside `tx`: records a blob known to have no row. `present` tells
    /// whether its bytes were found at `location` under the lock (if not, a
    /// collector took them since they were committed, and they are
    /// committed again from the staging object; see
    /// [`Store::commit_blobs`]).
    async fn record_new_blob(
        &self,
        tx: &mut Box<dyn MetaTx>,
        id: &str,
        blob: BlobId,
        mut location: String,
        present: bool,
        actor: &str,
    ) -> Result<StoredBlob> {
        if !present {
            location = self.blobs.staging_commit(id, &blob).await?;
        }
        let data = EventData::BlobStored {
            blob,
            location: location.clone(),
        };
        let subject = blob.sha256_digest().to_string();
        let event = tx.append(self.draft(&subject, actor, data), None).await?;
        Ok(StoredBlob {
            record: BlobRecord {
                blob,
                tier: Tier::Hot,
                location,
                stored_seq: event.seq(),
                stored_at: event.at(),
            },
            created: true,
        })
    }

    pub(crate) fn draft(&self, subject: &str, actor: &str, data: EventData) -> EventDraft {
        EventDraft {
            id: self.new_id(),
            subject: subject.to_owned(),
            actor: actor.to_owned(),
            at: self.clock.now(),
            data,
        }
    }

    /// Drops staged bytes that will not become a blob, and the upload
    /// session they belonged to, if any.
    async fn end_staging(&self, id: &str, session: bool) -> Result<()> {
        self.discard_staging(id).await;
        if session {
            self.meta.session_delete(id).await?;
        }
        Ok(())
    }

    async fn discard_staging(&self, id: &str) {
        if let Err(e) = self.blobs.staging_delete(id).await {
            // Left for the collector; the request's own outcome stands.
            tracing::warn!(staging = id, error = %e, "could not discard staged bytes");
        }
    }
}

/// Both digests of a stream of bytes, computed on the hasher threads.
pub(crate) async fn hash_stream(mut stream: ByteStream, context: &str) -> Result<HashState> {
    let mut hashing = HashState::new().start();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| crate::blob::BlobError::Io {
            context: context.to_owned(),
            source,
        })?;
        hashing.feed(chunk).await.map_err(hasher_failed)?;
    }
    hashing.stop().await.map_err(hasher_failed)
}

pub(crate) fn hasher_failed(_: crate::hashing::HasherGone) -> StoreError {
    StoreError::Blob(crate::blob::BlobError::Io {
        context: "hashing".into(),
        source: std::io::Error::other("hasher thread unavailable"),
    })
}

/// What a manifest needs from the blob store: each distinct blob once.
/// The lookups happen at the call site (the read pool for an early answer,
/// the open transaction for the decisive one); [`References::verdict`]
/// judges what they found.
#[derive(Debug)]
struct References<'a> {
    wanted: Vec<(BlobId, &'a str)>,
    /// Paths whose entry disagrees with an earlier entry for the same SHA-256.
    inconsistent: Vec<String>,
}

impl<'a> References<'a> {
    fn of(manifest: &'a Manifest) -> References<'a> {
        let mut first: BTreeMap<[u8; 32], BlobId> = BTreeMap::new();
        let mut wanted = Vec::new();
        let mut inconsistent = Vec::new();
        for f in manifest.files() {
            match first.get(&f.blob.sha256) {
                Some(b) if *b != f.blob => inconsistent.push(f.path.clone()),
                Some(_) => {}
                None => {
                    first.insert(f.blob.sha256, f.blob);
                    wanted.push((f.blob, f.path.as_str()));
                }
            }
        }
        References {
            wanted,
            inconsistent,
        }
    }

    fn sha256(&self) -> Vec<Hash> {
        self.wanted.iter().map(|(b, _)| b.sha256).collect()
    }

    /// `found` holds the stored blobs among the wanted SHA-256 digests.
    fn verdict(&self, found: &HashMap<Hash, BlobId>) -> Result<()> {
        let mut missing = Vec::new();
        let mut mismatched = self.inconsistent.clone();
        for (blob, path) in &self.wanted {
            match found.get(&blob.sha256) {
                None => missing.push(blob.sha256_digest()),
                Some(stored) if stored != blob => mismatched.push((*path).to_owned()),
                Some(_) => {}
            }
        }
        if !missing.is_empty() {
            return Err(StoreError::MissingBlobs(missing));
        }
        if !mismatched.is_empty() {
            mismatched.sort();
            return Err(StoreError::ManifestBlobMismatch(mismatched));
        }
        Ok(())
    }
}
