//! The collector: the deletion half of the lifecycle (DESIGN.md §4).
//!
//! It runs online, beside uploads and package creation, and its safety
//! rests on one rule: *every decision to delete is taken inside the write
//! transaction that records the deletion*, from state read under that lock.
//!
//! - A package is deleted only if the core rule
//!   ([`collectable`]) holds for its state read in the deleting transaction,
//!   so a hold or an extension that commits first wins.
//! - A blob is deleted only if, in its deleting transaction, no live
//!   package's files and no package's manifest reference it. Package creation
//!   checks that its blobs exist inside *its* write transaction, so the two
//!   are serialised: a package that commits first protects its blobs; one
//!   that commits after finds them missing and is refused with a 422 naming
//!   them, and the client uploads them again.
//! - The bytes follow the row under the same lock: they are moved to the
//!   backend's trash inside the transaction and purged after it commits. An
//!   upload puts bytes in place under the same lock (see
//!   `Store::commit_staged`), so a re-upload of a blob being collected either
//!   lands after the trash move or sees the row and keeps it. A crash
//!   between the move and the commit leaves trash whose row still exists;
//!   it is put back before anything else happens ([`Store::recover`]).
//!
//! Only one collector runs at a time per database (a leader lock from the
//! metadata backend). A dry run performs the same steps in one transaction
//! that it then rolls back, touching no bytes: it reports exactly what a
//! real run at that moment would delete.

use std::collections::HashSet;
use std::time::Duration;

use artifactstore_core::event::EventData;
use artifactstore_core::retention::collectable;
use artifactstore_core::{BlobId, Timestamp};

use crate::blob::Trashed;
use crate::engine::Store;
use crate::error::{Result, StoreError};
use crate::meta::{MetaTx, Tier};

/// Rows decided per transaction: bounds how long the collector holds the
/// write lock that uploads and package creation also need.
const BATCH: u32 = 500;
/// The actor of the collector's events.
pub(crate) const COLLECTOR: &str = "collector";
/// The `reason` of a `v1.package.deleted` the collector records.
pub(crate) const EXPIRED: &str = "retention expired";

/// How the collector treats what is not referenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSettings {
    /// How long an unreferenced blob is kept after it was stored: time for
    /// the package that will reference it to be created.
    pub grace: Duration,
    /// How long an upload session may stay open before it and its bytes are
    /// removed (counted from its creation).
    pub upload_expiry: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            grace: Duration::from_secs(24 * 3600),
            upload_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// A package the collector deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedPackage {
    pub id: String,
    pub name: String,
    pub bytes_freed: u64,
}

/// What one collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub packages: Vec<DeletedPackage>,
    pub blobs: Vec<BlobId>,
    /// The bytes of the deleted blobs.
    pub bytes_freed: u64,
    /// Expired upload sessions removed with their bytes.
    pub sessions: Vec<String>,
    /// Staging objects no session or upload owned (left by crashes).
    pub orphaned_staging: u64,
    /// Blob bytes no row named (left by a crash during a commit).
    pub orphaned_blobs: u64,
    /// Trash put back because its row still existed (a crashed collection).
    pub restored: u64,
}

/// Appended but unpublished events of the open transaction.
#[derive(Default)]
struct Pending {
    last_seq: u64,
    count: u64,
}

impl Store {
    /// Runs one collection. Fails with [`StoreError::CollectorBusy`] while
    /// another collector holds the database's leader lock.
    pub async fn collect(&self, settings: &GcSettings, dry_run: bool) -> Result<GcReport> {
        let _leader = self
            .meta
            .try_lead("collector")
            .await?
            .ok_or(StoreError::CollectorBusy)?;
        let now = self.clock.now();
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        if !dry_run {
            report.restored = self.recover_trash().await?;
        }
        let mut trashed = Vec::new();
        let mut deleted = HashSet::new();
        let result = self
            .collect_rows(
                settings,
                now,
                dry_run,
                &mut trashed,
                &mut deleted,
                &mut report,
            )
            .await;
        if result.is_err() {
            // Trash of a transaction that did not commit: its rows stand.
            for (tier, t) in &trashed {
                let restored = match self.backend(*tier) {
                    Ok(b) => b.trash_restore(t).await.map_err(StoreError::from),
                    Err(e) => Err(e),
                };
                if let Err(e) = restored {
                    tracing::error!(location = %t.location, error = %e,
                        "could not restore trash; the next collection retries");
                }
            }
        }
        result?;
        self.collect_uploads(settings, now, dry_run, &mut report)
            .await?;
        let young = before(now, settings.upload_expiry);
        self.collect_orphaned_blobs(dry_run, young, &deleted, &mut report)
            .await?;
        if !dry_run {
            use std::sync::atomic::Ordering::Relaxed;
            let c = &self.stats;
            c.collections.fetch_add(1, Relaxed);
            c.packages_deleted
                .fetch_add(report.packages.len() as u64, Relaxed);
            c.blobs_deleted
                .fetch_add(report.blobs.len() as u64, Relaxed);
            c.bytes_deleted.fetch_add(report.bytes_freed, Relaxed);
        }
        Ok(report)
    }

    /// Puts back or purges what a crashed collection left in the trash.
    /// Needs the collector's leader lock; `serve` calls it at start-up so
    /// that a crash never leaves a blob unreadable until the next run.
    /// Returns how many blobs were put back, or `None` if another collector
    /// holds the lock (it recovers on its own next run).
    pub async fn recover(&self) -> Result<Option<u64>> {
        let Some(_leader) = self.meta.try_lead("collector").await? else {
            return Ok(None);
        };
        self.recover_trash().await.map(Some)
    }

    async fn recover_trash(&self) -> Result<u64> {
        let mut restored = 0;
        for (tier, backend) in self.tiers() {
            let trashed = backend.trash_list().await?;
            if trashed.is_empty() {
                continue;
            }
            // Under the write lock, so no collection is between its trash
            // move and its commit, and every row read here is final.
            let mut tx = self.meta.begin().await?;
            for t in &trashed {
                let row = tx.blob_at(tier, &t.location).await?;
                if row.is_some_and(|r| r.trashed() == *t) {
                    backend.trash_restore(t).await?;
                    restored += 1;
                } else {
                    backend.trash_purge(t).await?;
                }
            }
            tx.commit().await?;
        }
        if restored > 0 {
            tracing::warn!(restored, "put back blobs a crashed collection had trashed");
        }
        Ok(restored)
    }

    /// Deletes collectable packages, then unreferenced blobs past the grace
    /// period, in batches: each batch decided and recorded in one
    /// transaction (a dry run: all in one transaction, rolled back).
    async fn collect_rows(
        &self,
        settings: &GcSettings,
        now: Timestamp,
        dry_run: bool,
        trashed: &mut Vec<(Tier, Trashed)>,
        // Filled in a dry run only: what the rolled-back run deleted.
        deleted_locations: &mut HashSet<(Tier, String)>,
        report: &mut GcReport,
    ) -> Result<()> {
        let cutoff = before(now, settings.grace);
        let mut tx = self.meta.begin().await?;
        let mut pending = Pending::default();
        loop {
            let due = tx.collectable_packages(now, BATCH).await?;
            let mut deleted = 0;
            for p in &due {
                let r = &p.retention;
                if !collectable(
                    r.current_expires_at,
                    r.active_holds,
                    r.eligible_for_deletion,
                    now,
                ) {
                    continue;
                }
                let bytes_freed = tx.exclusive_bytes(&p.id).await?;
                let data = EventData::PackageDeleted {
                    reason: EXPIRED.to_owned(),
                    bytes_freed,
                };
                self.record(&mut tx, &mut pending, &p.id, data).await?;
                report.packages.push(DeletedPackage {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    bytes_freed,
                });
                deleted += 1;
            }
            if !dry_run {
                tx = self.checkpoint(tx, &mut pending, trashed).await?;
            }
            if (due.len() as u32) < BATCH || deleted == 0 {
                break;
            }
        }
        let mut after = [0u8; 32];
        loop {
            let batch = tx.unreferenced_blobs(cutoff, &after, BATCH).await?;
            for record in &batch {
                after = record.blob.sha256;
                if !dry_run {
                    self.backend(record.tier)?
                        .trash(&record.location, record.stored_seq)
                        .await?;
                    trashed.push((record.tier, record.trashed()));
                }
                if dry_run {
                    deleted_locations.insert((record.tier, record.location.clone()));
                }
                let subject = record.blob.sha256_digest().to_string();
                let data = EventData::BlobDeleted { blob: record.blob };
                self.record(&mut tx, &mut pending, &subject, data).await?;
                report.blobs.push(record.blob);
                report.bytes_freed += record.blob.size;
            }
            if !dry_run {
                tx = self.checkpoint(tx, &mut pending, trashed).await?;
            }
            if (batch.len() as u32) < BATCH {
                break;
            }
        }
        if !dry_run {
            tx.commit().await?;
        }
        // A dry run's transaction is dropped here: rolled back.
        Ok(())
    }

    async fn record(
        &self,
        tx: &mut Box<dyn MetaTx>,
        pending: &mut Pending,
        subject: &str,
        data: EventData,
    ) -> Result<()> {
        let event = tx
            .append(self.draft(subject, COLLECTOR, data), None)
            .await?;
        pending.last_seq = event.seq();
        pending.count += 1;
        Ok(())
    }

    /// Commits a batch, publishes its events, purges the bytes it trashed,
    /// and opens the next transaction.
    async fn checkpoint(
        &self,
        tx: Box<dyn MetaTx>,
        pending: &mut Pending,
        trashed: &mut Vec<(Tier, Trashed)>,
    ) -> Result<Box<dyn MetaTx>> {
        tx.commit().await?;
        if pending.count > 0 {
            self.published(pending.last_seq, pending.count);
        }
        *pending = Pending::default();
        for (tier, t) in trashed.drain(..) {
            let purged = match self.backend(tier) {
                Ok(b) => b.trash_purge(&t).await.map_err(StoreError::from),
                Err(e) => Err(e),
            };
            if let Err(e) = purged {
                // The row is gone; the next collection purges it.
                tracing::warn!(location = %t.location, error = %e, "could not purge trash");
            }
        }
        Ok(self.meta.begin().await?)
    }

    /// Removes upload sessions older than the expiry with their bytes, and
    /// staging objects that belong to no session and are as old (a crash
    /// between creating the bytes and the session, or during a one-request
    /// upload). A staging object's age is read from its id, a UUID v7.
    async fn collect_uploads(
        &self,
        settings: &GcSettings,
        now: Timestamp,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        let cutoff = before(now, settings.upload_expiry);
        let limit = if dry_run { u32::MAX } else { BATCH };
        loop {
            let expired = self.meta.sessions_before(cutoff, limit).await?;
            for s in &expired {
                if !dry_run {
                    self.meta.session_delete(&s.id).await?;
                    self.blobs.staging_delete(&s.id).await?;
                    self.forget_slot(&s.id);
                }
                report.sessions.push(s.id.clone());
            }
            if dry_run || (expired.len() as u32) < limit {
                break;
            }
        }
        let expired: HashSet<String> = report.sessions.iter().cloned().collect();
        // Sessions stage in the hot tier; a tier move stages in the cold one.
        for (_, backend) in self.tiers() {
            self.collect_staging(&**backend, cutoff, &expired, dry_run, report)
                .await?;
        }
        Ok(())
    }

    /// Removes staging objects of `backend` older than `cutoff` that no
    /// live session owns.
    async fn collect_staging(
        &self,
        backend: &dyn crate::blob::BlobBackend,
        cutoff: Timestamp,
        expired: &HashSet<String>,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        for id in backend.staging_list().await? {
            let Some(created) = id_time(&id) else {
                tracing::warn!(staging = %id, "ignoring a staging object not named by a UUID v7");
                continue;
            };
            if created >= cutoff
                || expired.contains(&id)
                || self.meta.session_get(&id).await?.is_some()
            {
                continue;
            }
            if !dry_run {
                backend.staging_delete(&id).await?;
            }
            report.orphaned_staging += 1;
        }
        Ok(())
    }

    /// Removes blob bytes that no row names: what a crash between an
    /// upload's commit of its bytes and of its row leaves. Each page is
    /// judged under the write lock, where uploads put bytes in place, so
    /// bytes whose row is about to commit are never taken for orphans. At a
    /// fresh location (named by its upload's UUID v7, as on S3) the upload
    /// cannot put its bytes back, so such bytes are left until the upload
    /// would have expired (`young` is that cutoff).
    async fn collect_orphaned_blobs(
        &self,
        dry_run: bool,
        young: Timestamp,
        deleted: &HashSet<(Tier, String)>,
        report: &mut GcReport,
    ) -> Result<()> {
        for (tier, backend) in self.tiers() {
            let mut after = String::new();
            loop {
                let page = backend.list_after(&after, BATCH as usize).await?;
                let Some(last) = page.last() else { break };
                after = last.clone();
                let mut tx = self.meta.begin().await?;
                let known = tx.known_locations(tier, &page).await?;
                let orphaned = page.iter().filter(|l| {
                    let upload = l.rsplit('/').next().and_then(id_time);
                    !known.contains(*l) && upload.is_none_or(|t| t < young)
                });
                for location in orphaned {
                    if dry_run {
                        // Its row was deleted by the rolled-back run, its
                        // bytes are still here: it is counted once, as a
                        // deleted blob.
                        if deleted.contains(&(tier, location.clone())) {
                            continue;
                        }
                    } else {
                        backend.delete(location).await?;
                    }
                    report.orphaned_blobs += 1;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// The creation time the UUID v7 at the start of a staging name carries
/// (a name may have a suffix, as the filesystem's `<id>-replace`).
fn id_time(id: &str) -> Option<Timestamp> {
    let uuid = uuid::Uuid::parse_str(id.get(..36)?).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Timestamp::from_unix_micros(i64::try_from(secs).ok()? * 1_000_000 + i64::from(nanos / 1000))
}

/// `now - age`, clamped to the epoch.
pub(crate) fn before(now: Timestamp, age: Duration) -> Timestamp {
    let micros = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
    now.checked_add_micros(-micros)
        .filter(|t| *t >= Timestamp::UNIX_EPOCH)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}
