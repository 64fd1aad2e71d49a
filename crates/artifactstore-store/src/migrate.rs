//! Moving a store to other backends (the embedded pair to PostgreSQL and
//! S3, say): the log is copied event by event, exactly as it is, so the
//! target's chain and views are the source's; the bytes of every blob that
//! is still stored are copied to the same location in the target's blob
//! backend, checked against their digest on the way.
//!
//! The target must be empty or hold a prefix of the source's log (a copy
//! that was interrupted): a run continues where the target ends. Upload
//! sessions are not copied: they are transient, so stop writes to the
//! source (and let uploads finish) before the last run.

use artifactstore_core::event::{ChainVerifier, EventData};
use artifactstore_core::manifest::Manifest;

use crate::engine::Store;
use crate::error::{Result, StoreError};
use crate::meta::MetaError;

/// Events per target transaction.
const PAGE: u32 = 500;

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// The target's head before this run (non-zero: an earlier run's).
    pub resumed_after: u64,
    /// Events copied by this run.
    pub events: u64,
    /// Blobs whose bytes this run copied, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
}

impl Store {
    /// Copies this store's log and bytes into `target` (see the module
    /// documentation).
    pub async fn copy_into(&self, target: &Store) -> Result<CopyReport> {
        let (seq, hash) = target.meta.head().await?;
        if seq > 0 {
            let ours = self.meta.events_after(seq - 1, 1).await?;
            if ours.first().is_none_or(|e| e.hash != hash) {
                return Err(StoreError::Meta(MetaError::Corrupt(format!(
                    "the target's log (up to seq {seq}) is not a prefix of this one"
                ))));
            }
        }
        let mut report = CopyReport {
            resumed_after: seq,
            ..CopyReport::default()
        };
        let mut chain = ChainVerifier::after(seq, hash);
        let mut after = seq;
        loop {
            let page = self.meta.events_after(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let mut batch = Vec::with_capacity(page.len());
            for stored in &page {
                let event = chain
                    .check(stored.seq, &stored.bytes, &stored.hash)
                    .map_err(StoreError::BrokenLog)?;
                if let EventData::BlobStored { blob, .. } = event.data() {
                    // Only bytes still stored under this event's row (a
                    // later event deletes the others' rows), and where the
                    // row has them now (a later event may have moved them
                    // to the cold tier).
                    let record = self.meta.blob(&blob.sha256_digest()).await?;
                    if let Some(record) = record.filter(|r| r.stored_seq == event.seq()) {
                        let bytes = self.read_blob(&record, None).await?;
                        target
                            .backend(record.tier)?
                            .put_at(&record.location, blob, bytes)
                            .await?;
                        report.blobs += 1;
                        report.bytes += blob.size;
                    }
                }
                let manifest: Option<Manifest> =
                    self.manifest_of(&event, &*self.meta, None).await?;
                batch.push((event, manifest));
            }
            let mut tx = target.meta.begin().await?;
            for (event, manifest) in &batch {
                tx.import(event, manifest.as_ref()).await?;
            }
            tx.commit().await?;
            report.events += batch.len() as u64;
        }
        Ok(report)
    }
}
