//! Retrieval tiering: a package whose class names a `cold_after` age moves
//! to the cold tier once it is that old, and its blobs' bytes move to the
//! cold backend with it. Reads do not change for clients: a blob's row says
//! which backend holds its bytes.
//!
//! A blob moves with the last live package that still needs it hot: while
//! another live, hot package that is not yet due references it, it stays
//! (that package's own move takes it later). A move is three steps, safe
//! against a crash between any two:
//!
//! 1. The bytes are copied to the same location in the cold backend, read
//!    verified from the hot one. A crash leaves cold bytes no row names:
//!    the collector's orphan scan of the cold tier removes them.
//! 2. Under the write lock the move is checked again (the package still live
//!    and hot, each blob still hot where it was read, still leaving, its
//!    cold copy still there: that orphan scan may have taken it) and
//!    `v1.package.tier_changed` commits with the rows' new tier and
//!    location.
//! 3. The hot copies are deleted. A crash leaves hot bytes no hot row names:
//!    the orphan scan of the hot tier removes them.
//!
//! One tiering run at a time per database (a leader lock), beside uploads,
//! collections and sweeps.

use std::sync::Arc;

use artifactstore_core::Timestamp;
use artifactstore_core::event::{EventData, MovedBlob};

use crate::blob::BlobBackend;
use crate::engine::Store;
use crate::error::{Result, StoreError};
use crate::gc::before;
use crate::meta::{BlobRecord, PackageRecord, Tier};

/// Packages looked at per round.
const BATCH: u32 = 100;
/// The actor of tiering events.
const TIERING: &str = "tiering";

/// What one tiering run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierReport {
    /// Packages that moved to the cold tier.
    pub packages: Vec<String>,
    /// Blobs whose bytes moved, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
}

impl Store {
    /// Moves every package that is due to the cold tier. Fails with
    /// [`StoreError::NoColdTier`] without a cold tier, and with
    /// [`StoreError::TieringBusy`] while another run holds the lock.
    pub async fn tier_run(&self) -> Result<TierReport> {
        let cold = self.cold.clone().ok_or(StoreError::NoColdTier)?;
        let _leader = self
            .meta
            .try_lead("tiering")
            .await?
            .ok_or(StoreError::TieringBusy)?;
        let now = self.clock.now();
        let classes: Vec<(String, Timestamp)> = self
            .cold_after
            .iter()
            .map(|(class, age)| (class.clone(), before(now, *age)))
            .collect();
        let mut report = TierReport::default();
        if classes.is_empty() {
            return Ok(report);
        }
        loop {
            let due = {
                // Read under the lock for a consistent page, then let go.
                let mut tx = self.meta.begin().await?;
                tx.hot_packages_before(&classes, BATCH).await?
            };
            let mut moved_any = false;
            for package in &due {
                moved_any |= self
                    .move_package(package, &classes, &cold, &mut report)
                    .await?;
            }
            if (due.len() as u32) < BATCH || !moved_any {
                break;
            }
        }
        Ok(report)
    }

    /// Moves one package (steps 1–3 of the module documentation); returns
    /// whether it moved.
    async fn move_package(
        &self,
        package: &PackageRecord,
        classes: &[(String, Timestamp)],
        cold: &Arc<dyn BlobBackend>,
        report: &mut TierReport,
    ) -> Result<bool> {
        let leaving = {
            let mut tx = self.meta.begin().await?;
            tx.blobs_leaving_hot(&package.id, classes).await?
        };
        let mut copies = Vec::with_capacity(leaving.len());
        for record in leaving {
            match self.copy_to(cold, &record).await {
                Ok(location) => copies.push((record, location)),
                Err(e) => {
                    self.drop_copies(cold, copies.iter().map(|(_, l)| l)).await;
                    return Err(e);
                }
            }
        }

        let mut tx = self.meta.begin().await?;
        let current = tx.package(&package.id).await?;
        let still_due = current
            .as_ref()
            .is_some_and(|p| p.tier == Tier::Hot && p.retention.deleted.is_none());
        if !still_due {
            drop(tx);
            self.drop_copies(cold, copies.iter().map(|(_, l)| l)).await;
            return Ok(false);
        }
        let leaving_now = tx.blobs_leaving_hot(&package.id, classes).await?;
        let (mut moved, mut stale, mut left) = (Vec::new(), Vec::new(), Vec::new());
        for (record, location) in &copies {
            if !leaving_now.contains(record) {
                stale.push(location.clone());
                continue;
            }
            // The collector removes cold bytes that no cold row names, under
            // this same lock: whatever is still there now stays until the
            // commit makes a row name it. A copy it took already means this
            // package waits for the next run.
            if cold.stat(location).await? != Some(record.blob.size) {
                drop(tx);
                self.drop_copies(cold, copies.iter().map(|(_, l)| l)).await;
                return Ok(false);
            }
            left.push(record.location.clone());
            moved.push((record.clone(), location.clone()));
        }
        let data = EventData::PackageTierChanged {
            tier: Tier::Cold.as_str().to_owned(),
            moved: moved
                .iter()
                .map(|(r, location)| MovedBlob {
                    blob: r.blob,
                    location: location.clone(),
                })
                .collect(),
        };
        let event = tx
            .append(self.draft(&package.id, TIERING, data), None)
            .await?;
        tx.commit().await?;
        self.published(event.seq(), 1);

        self.drop_copies(cold, stale.iter()).await;
        for location in &left {
            if let Err(e) = self.blobs.delete(location).await {
                // No hot row names it now: the next collection removes it.
                tracing::warn!(%location, error = %e, "could not remove a blob's hot copy");
            }
        }
        report.packages.push(package.id.clone());
        report.blobs += moved.len() as u64;
        report.bytes += moved.iter().map(|(r, _)| r.blob.size).sum::<u64>();
        Ok(true)
    }

    /// Copies a hot blob's bytes to the same location in `cold`, read
    /// verified (a corrupt blob fails before its copy is complete); returns
    /// that location.
    async fn copy_to(&self, cold: &Arc<dyn BlobBackend>, record: &BlobRecord) -> Result<String> {
        let bytes = self.read_blob(record, None).await?;
        cold.put_at(&record.location, &record.blob, bytes).await?;
        Ok(record.location.clone())
    }

    async fn drop_copies<'a>(
        &self,
        cold: &Arc<dyn BlobBackend>,
        locations: impl Iterator<Item = &'a String>,
    ) {
        for location in locations {
            if let Err(e) = cold.delete(location).await {
                tracing::warn!(%location, error = %e, "could not remove an unused cold copy");
            }
        }
    }
}
