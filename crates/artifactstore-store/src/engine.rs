//! The engine: the one place where data-plane rules live.
//!
//! Ingest is a single streaming pass: each chunk goes to the backend's
//! staging writer and to the two hasher threads at once; nothing holds the
//! body in memory. A blob becomes visible only after its digests are checked
//! against what the client declared, its bytes are durable and committed,
//! and its `v1.blob.stored` event and `blobs` row are committed together.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use artifactstore_core::Digest;
use artifactstore_core::event::{EventData, EventDraft};
use futures::StreamExt;

use crate::blob::fs::FsBlobStore;
use crate::blob::{BlobBackend, ByteStream};
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StoreError};
use crate::hashing::HashState;
use crate::meta::sqlite::SqliteMetadata;
use crate::meta::{BlobRecord, MetaError, MetadataStore, StoredEvent, UploadSession};

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
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobBackend>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    sessions: Mutex<HashMap<String, SessionSlot>>,
}

impl Store {
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobBackend>,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Store {
        Store {
            meta,
            blobs,
            clock,
            limits,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The embedded default: SQLite metadata (at `metadata_url`, or
    /// `<data_dir>/meta.sqlite`) and blobs on the local filesystem under
    /// `data_dir`.
    pub async fn open_embedded(
        data_dir: &Path,
        metadata_url: Option<&str>,
        limits: Limits,
    ) -> Result<Store> {
        let blobs = FsBlobStore::open(data_dir).await?;
        let meta = match metadata_url {
            Some(url) => SqliteMetadata::open(url).await?,
            None => SqliteMetadata::open_path(&data_dir.join("meta.sqlite")).await?,
        };
        Ok(Store::new(
            Arc::new(meta),
            Arc::new(blobs),
            Arc::new(SystemClock),
            limits,
        ))
    }

    fn new_id(&self) -> String {
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
        self.blobs.staging_create(&id).await?;
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
        self.blobs.staging_create(&id).await?;
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
        let next = self.append_session(id, resumed, body).await?;
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
            state = self.append_session(id, state, body).await?;
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

    /// Looks a blob up by either digest.
    pub async fn blob(&self, digest: &Digest) -> Result<BlobRecord> {
        self.meta
            .blob(digest)
            .await?
            .ok_or(StoreError::BlobNotFound(*digest))
    }

    /// Streams a stored blob, or a non-empty `range` within it.
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
        Ok(self.blobs.read(&record.location, range).await?)
    }

    /// Upload sessions this process holds digest state for.
    pub fn sessions_in_memory(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A page of the event log.
    pub async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        Ok(self.meta.events_after(after, limit).await?)
    }

    /// Whether both backends answer.
    pub async fn check_ready(&self) -> Result<()> {
        self.meta.ping().await?;
        self.blobs.ping().await?;
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

    fn forget_slot(&self, id: &str) {
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
        let mut hashing = HashState::new().start();
        let mut staged = self.blobs.staging_read(id).await?;
        while let Some(chunk) = staged.next().await {
            let chunk = chunk.map_err(|source| crate::blob::BlobError::Io {
                context: format!("reading back staging {id}"),
                source,
            })?;
            hashing.feed(chunk).await.map_err(hasher_failed)?;
        }
        let state = hashing.stop().await.map_err(hasher_failed)?;
        if state.len() != current {
            return Err(StoreError::Meta(MetaError::Corrupt(format!(
                "staging {id} changed while being read back"
            ))));
        }
        Ok(state)
    }

    /// Appends a request body to a session. A body the client broke off
    /// keeps what arrived (the client resumes from the offset `HEAD`
    /// reports); any other failure (too large, a backend error) undoes the
    /// append, so a refused request changes nothing.
    async fn append_session(
        &self,
        id: &str,
        state: HashState,
        body: ByteStream,
    ) -> Result<HashState> {
        let start = state.len();
        let result = self.ingest(id, state, body).await;
        if let Err(e) = &result
            && !matches!(e, StoreError::BodyRead(_))
        {
            self.blobs.staging_truncate(id, start).await?;
        }
        result
    }

    /// Streams `body` onto the staging object and through the hashers.
    /// On success the returned state covers exactly the staged bytes.
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
                hashing.feed(chunk.clone()).await.map_err(hasher_failed)?;
                writer.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        // Always finish the writer: it makes what was written durable, so
        // the offset reported after a failed request is true.
        let written = writer.finish().await;
        let state = hashing.stop().await.map_err(hasher_failed);
        streamed?;
        let (written, state) = (written?, state?);
        if written != state.len() {
            return Err(StoreError::Meta(MetaError::Corrupt(format!(
                "staging {id} holds {written} bytes but {} were hashed",
                state.len()
            ))));
        }
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
            self.discard_staging(id).await;
            if session {
                self.meta.session_delete(id).await?;
            }
            return Err(StoreError::DigestMismatch {
                declared: *d,
                actual: blob.digest(d.algorithm()),
            });
        }
        if let Some(record) = self.meta.blob(&blob.sha256_digest()).await? {
            self.discard_staging(id).await;
            if session {
                self.meta.session_delete(id).await?;
            }
            return Ok(StoredBlob {
                record,
                created: false,
            });
        }
        let location = self.blobs.staging_commit(id, &blob).await?;
        let mut tx = self.meta.begin().await?;
        if session {
            tx.session_delete(id).await?;
        }
        // Re-checked under the write lock: a concurrent upload of the same
        // bytes may have committed first; its row and event stand.
        if let Some(record) = tx.blob(&blob.sha256_digest()).await? {
            tx.commit().await?;
            return Ok(StoredBlob {
                record,
                created: false,
            });
        }
        let event = tx
            .append(self.draft(
                &blob.sha256_digest().to_string(),
                actor,
                EventData::BlobStored {
                    blob,
                    location: location.clone(),
                },
            ))
            .await?;
        tx.commit().await?;
        Ok(StoredBlob {
            record: BlobRecord {
                blob,
                location,
                stored_seq: event.seq(),
                stored_at: event.at(),
            },
            created: true,
        })
    }

    fn draft(&self, subject: &str, actor: &str, data: EventData) -> EventDraft {
        EventDraft {
            id: self.new_id(),
            subject: subject.to_owned(),
            actor: actor.to_owned(),
            at: self.clock.now(),
            data,
        }
    }

    async fn discard_staging(&self, id: &str) {
        if let Err(e) = self.blobs.staging_delete(id).await {
            // Left for the collector; the request's own outcome stands.
            tracing::warn!(staging = id, error = %e, "could not discard staged bytes");
        }
    }
}

fn hasher_failed(_: crate::hashing::HasherGone) -> StoreError {
    StoreError::Blob(crate::blob::BlobError::Io {
        context: "hashing".into(),
        source: std::io::Error::other("hasher thread unavailable"),
    })
}
