//! Where blob bytes live. A backend stores two kinds of object: *staging*
//! objects (the bytes of an upload in progress, named by an id, appendable,
//! durable after each append) and *blobs* (immutable, found by a location
//! string recorded in the metadata). Committing a staging object makes its
//! bytes readable as a blob without copying them.
//!
//! Every upload, monolithic or resumable, goes through staging: the
//! monolithic `PUT /blobs` is one append followed by a commit.
//!
//! Deletion is two-phase so that it can be decided in one metadata
//! transaction: the collector *trashes* a blob (sets it aside, so that a
//! later commit of the same bytes is unaffected: the filesystem moves it,
//! S3, whose keys are never reused, marks it) inside the transaction that
//! deletes its row, and
//! *purges* it after the commit. A trashed blob whose row is still there
//! after a crash is *restored*. Each trashed object carries the `stored_seq`
//! of the row it belonged to, so a later row for the same bytes is never
//! confused with it.

pub mod fs;
pub mod s3;

use std::ops::Range;

use artifactstore_core::BlobId;
use async_trait::async_trait;

use crate::hashing::HashState;
use bytes::Bytes;
use futures::stream::BoxStream;

/// A stream of blob bytes.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no staging object {0}")]
    StagingNotFound(String),
    #[error("no blob at {0}")]
    NotFound(String),
    #[error("invalid location {0:?}")]
    InvalidLocation(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl BlobError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BlobError {
        let context = context.into();
        move |source| BlobError::Io { context, source }
    }
}

/// How long a staging object must last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagingKind {
    /// An upload session's: durable after each append, and readable by
    /// every process that shares the backend (a `PATCH` may arrive at any
    /// node).
    Session,
    /// One request's (a monolithic `PUT`): used only by the process that
    /// created it, until the request ends, so a backend may keep it close.
    Request,
}

#[async_trait]
pub trait BlobBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Creates an empty staging object.
    async fn staging_create(&self, id: &str, kind: StagingKind) -> Result<(), BlobError>;
    /// The number of bytes staged so far, or `None` if there is no such object.
    async fn staging_len(&self, id: &str) -> Result<Option<u64>, BlobError>;
    /// Opens the staging object for appending at its end.
    async fn staging_append(&self, id: &str) -> Result<Box<dyn StagingWriter>, BlobError>;
    /// The digest state over everything staged, if the backend keeps one
    /// (see [`StagingWriter::finish`]); `None` means: read the bytes back.
    async fn staging_resume(&self, id: &str) -> Result<Option<HashState>, BlobError>;
    /// Reads back everything staged (to rebuild digest state after a
    /// restart, where [`BlobBackend::staging_resume`] has none).
    async fn staging_read(&self, id: &str) -> Result<ByteStream, BlobError>;
    /// Makes the staged bytes readable as the blob `blob`, durably, without
    /// copying them, and returns its location. The staging object stays
    /// until [`BlobBackend::staging_delete`]. If the location already holds
    /// the blob's bytes (as far as a size check tells), they are left as
    /// they are; anything else there is replaced. Unless
    /// [`BlobBackend::fresh_locations`], it may be called again for the
    /// same staging object (when the bytes at the location went away in
    /// between).
    async fn staging_commit(&self, id: &str, blob: &BlobId) -> Result<String, BlobError>;
    /// Whether every commit places its bytes at a location of its own,
    /// named by the staging id (a UUID v7), rather than at one fixed by the
    /// digest: then no other upload or collection touches them before their
    /// row is written, since the collector spares locations younger than
    /// the upload expiry.
    fn fresh_locations(&self) -> bool;
    /// Removes a staging object; removing a missing one is not an error.
    async fn staging_delete(&self, id: &str) -> Result<(), BlobError>;

    /// Stores `blob`'s bytes at `location`, a location this kind of backend
    /// or another gave them (a log being moved from one store to another
    /// keeps its locations). The bytes are durable when it returns.
    async fn put_at(
        &self,
        location: &str,
        blob: &BlobId,
        body: ByteStream,
    ) -> Result<(), BlobError>;
    /// Reads a blob, or a byte range of it.
    async fn read(
        &self,
        location: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, BlobError>;
    /// The stored size of a blob, or `None` if it is absent.
    async fn stat(&self, location: &str) -> Result<Option<u64>, BlobError>;
    /// A URL that lets its holder `GET` the blob at `location` without
    /// credentials until `expires` from now, if the backend can make one.
    async fn presign_get(
        &self,
        location: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, BlobError>;
    /// Checks that the backend can serve requests.
    async fn ping(&self) -> Result<(), BlobError>;

    /// The ids of every staging object.
    async fn staging_list(&self) -> Result<Vec<String>, BlobError>;
    /// Up to `limit` blob locations after `after` ("" for the first), in
    /// order: to find bytes that no row names.
    async fn list_after(&self, after: &str, limit: usize) -> Result<Vec<String>, BlobError>;
    /// Removes a blob's bytes outright; removing missing ones is not an error.
    async fn delete(&self, location: &str) -> Result<(), BlobError>;
    /// Sets a blob aside, durably, for deletion once the transaction that
    /// deletes its row commits: a later commit of the same bytes is
    /// unaffected by what happens to it. Trashing a missing blob is not an
    /// error.
    async fn trash(&self, location: &str, stored_seq: u64) -> Result<(), BlobError>;
    /// Everything trashed and not yet purged or restored.
    async fn trash_list(&self) -> Result<Vec<Trashed>, BlobError>;
    /// Puts a trashed blob back where it was.
    async fn trash_restore(&self, trashed: &Trashed) -> Result<(), BlobError>;
    /// Deletes a trashed blob for good.
    async fn trash_purge(&self, trashed: &Trashed) -> Result<(), BlobError>;
}

/// A blob moved aside by [`BlobBackend::trash`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Trashed {
    pub location: String,
    /// The `stored_seq` of the row the bytes belonged to.
    pub stored_seq: u64,
}

/// Appends to a staging object. Bytes are durable only once [`finish`]
/// returns; [`abort`] undoes every write of this writer instead.
///
/// [`finish`]: StagingWriter::finish
/// [`abort`]: StagingWriter::abort
#[async_trait]
pub trait StagingWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError>;
    /// Makes everything written durable and returns the staged length.
    /// `hashed` is the digest state over the staged bytes so far, which a
    /// backend may keep for [`BlobBackend::staging_resume`].
    async fn finish(self: Box<Self>, hashed: &HashState) -> Result<u64, BlobError>;
    /// Leaves the staging object as it was before this writer.
    async fn abort(self: Box<Self>) -> Result<(), BlobError>;
}
