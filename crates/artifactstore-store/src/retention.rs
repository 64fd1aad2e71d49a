//! The retention lifecycle (DESIGN.md §4): extensions, holds, the
//! eligibility sweep, and the audit reads. Each change is decided inside the
//! write transaction that records it, from state read under that lock, by
//! the pure rules of `artifactstore_core::retention`.

use artifactstore_core::Timestamp;
use artifactstore_core::event::EventData;
use artifactstore_core::retention::{becomes_eligible, check_extension, check_reason};

use crate::engine::Store;
use crate::error::{Result, StoreError};
use crate::meta::{Hold, MetaTx, PackageRecord, Release, StoredEvent};

/// Packages marked per sweep transaction: bounds how long one transaction
/// holds the write lock.
const SWEEP_BATCH: u32 = 500;

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub evaluated_at: Timestamp,
    /// Packages that became eligible for deletion.
    pub marked: u64,
}

impl Store {
    /// A package read under the write lock, for changing its retention:
    /// a deleted package's retention can no longer change.
    async fn locked_package(&self, tx: &mut Box<dyn MetaTx>, id: &str) -> Result<PackageRecord> {
        let package = tx
            .package(id)
            .await?
            .ok_or_else(|| StoreError::PackageNotFound(id.to_owned()))?;
        if let Some(d) = &package.retention.deleted {
            return Err(StoreError::PackageDeleted {
                package: id.to_owned(),
                at: d.at,
                seq: d.seq,
            });
        }
        Ok(package)
    }

    /// Moves a package's expiry strictly later. An eligible package becomes
    /// ineligible in the same transaction (a later sweep may mark it again).
    pub async fn extend_retention(
        &self,
        id: &str,
        new_expires_at: Timestamp,
        reason: &str,
        actor: &str,
    ) -> Result<PackageRecord> {
        check_reason(reason)?;
        let mut tx = self.meta.begin().await?;
        let package = self.locked_package(&mut tx, id).await?;
        let current = package.retention.current_expires_at;
        check_extension(current, new_expires_at, reason)?;
        let data = EventData::RetentionExtended {
            // check_extension refused a permanent package (no expiry).
            previous_expires_at: current.unwrap_or(new_expires_at),
            new_expires_at,
            reason: reason.to_owned(),
        };
        let event = tx.append(self.draft(id, actor, data), None).await?;
        tx.commit().await?;
        self.published(event.seq(), 1);
        self.package(id).await
    }

    /// Applies a new named hold; while any hold is active the package is
    /// never eligible, and an eligible one stops being so at once.
    pub async fn apply_hold(&self, id: &str, reason: &str, actor: &str) -> Result<Hold> {
        check_reason(reason)?;
        let mut tx = self.meta.begin().await?;
        self.locked_package(&mut tx, id).await?;
        let hold_id = self.new_id();
        let data = EventData::RetentionHoldApplied {
            hold_id: hold_id.clone(),
            reason: reason.to_owned(),
        };
        let event = tx.append(self.draft(id, actor, data), None).await?;
        tx.commit().await?;
        self.published(event.seq(), 1);
        Ok(Hold {
            hold_id,
            reason: reason.to_owned(),
            applied_by: actor.to_owned(),
            applied_at: event.at(),
            released: None,
        })
    }

    /// Releases one hold; the package's other holds stay.
    pub async fn release_hold(
        &self,
        id: &str,
        hold_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<Hold> {
        check_reason(reason)?;
        let mut tx = self.meta.begin().await?;
        self.locked_package(&mut tx, id).await?;
        let hold = tx
            .hold(id, hold_id)
            .await?
            .ok_or_else(|| StoreError::HoldNotFound {
                package: id.to_owned(),
                hold: hold_id.to_owned(),
            })?;
        if hold.released.is_some() {
            return Err(StoreError::HoldReleased(hold_id.to_owned()));
        }
        let data = EventData::RetentionHoldReleased {
            hold_id: hold_id.to_owned(),
            reason: reason.to_owned(),
        };
        let event = tx.append(self.draft(id, actor, data), None).await?;
        tx.commit().await?;
        self.published(event.seq(), 1);
        Ok(Hold {
            released: Some(Release {
                by: actor.to_owned(),
                at: event.at(),
                reason: reason.to_owned(),
            }),
            ..hold
        })
    }

    /// The package's retention state and its active holds.
    pub async fn retention(&self, id: &str) -> Result<(PackageRecord, Vec<Hold>)> {
        let package = self.package(id).await?;
        let mut holds = self.meta.holds(id).await?;
        holds.retain(|h| h.released.is_none());
        Ok((package, holds))
    }

    /// The package's retention events, in order: its audit trail.
    pub async fn retention_history(&self, id: &str) -> Result<Vec<StoredEvent>> {
        self.package(id).await?;
        Ok(self.meta.events_of(id, "v1.retention.").await?)
    }

    /// Marks every package whose expiry has passed and that has no active
    /// hold as eligible for deletion, once per transition. Safe to run from
    /// several processes at once: each batch is chosen and recorded under
    /// the database's write lock, so a package another sweeper just marked
    /// is no longer due.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let now = self.clock.now();
        let mut marked = 0;
        loop {
            let mut tx = self.meta.begin().await?;
            let due = tx.due_for_eligibility(now, SWEEP_BATCH).await?;
            let mut last = None;
            let mut in_batch = 0;
            for p in &due {
                let r = &p.retention;
                let Some(expires_at) = r.current_expires_at else {
                    continue;
                };
                if !becomes_eligible(
                    r.current_expires_at,
                    r.active_holds,
                    r.eligible_for_deletion,
                    now,
                ) {
                    continue;
                }
                let data = EventData::RetentionDeletionEligible {
                    expires_at,
                    evaluated_at: now,
                };
                last = Some(
                    tx.append(self.draft(&p.id, "sweeper", data), None)
                        .await?
                        .seq(),
                );
                in_batch += 1;
            }
            tx.commit().await?;
            if let Some(seq) = last {
                self.published(seq, in_batch);
            }
            marked += in_batch;
            // A short batch was the last; an empty one cannot repeat forever.
            if (due.len() as u32) < SWEEP_BATCH || in_batch == 0 {
                return Ok(SweepReport {
                    evaluated_at: now,
                    marked,
                });
            }
        }
    }
}
