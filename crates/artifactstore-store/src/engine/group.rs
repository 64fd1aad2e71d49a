//! Group commit of package creations.
//!
//! Every write transaction holds the database-wide write lock, so
//! creations queue on it, and on SQLite each of a transaction's statements
//! is a round trip to the database's thread: the lock, not the work, set
//! the rate (about 600 packages/s with 8 clients, half the CPU idle). So
//! creations that arrive while one transaction runs wait in a queue, and the
//! next caller to take the lock commits all of them in one transaction: one
//! look-up of every blob they reference, their rows sent together, one
//! commit and one flush to disk.
//!
//! Each package is still decided on its own: a package whose blobs are
//! missing gets its own 422 and writes nothing, and the others commit. If
//! the group's transaction fails as a whole (a write error, a full disk),
//! nothing of it is kept and each package is committed again alone, so
//! every caller gets its own outcome. A caller is answered only after the
//! transaction holding its package has committed.
//!
//! The caller that leads a group may be cancelled (its client went away)
//! while others wait on it. Whatever it had not answered goes back to the
//! queue for the next leader, marked as possibly committed: each package's
//! id is chosen before it is queued, so a retry first looks, under the
//! lock, for a package with that id, and answers with it instead of
//! creating a second one. (Were that look missed, the package's primary key
//! would refuse the second row, failing the group, and each package's retry
//! alone looks again.)

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;
use std::time::Instant;

use artifactstore_core::BlobId;
use artifactstore_core::event::Hash;
use artifactstore_core::manifest::Manifest;
use artifactstore_core::retention::ClassRule;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Creations, References, Store};
use crate::error::{Result, StoreError};
use crate::meta::{BlobRecord, MetaError};

/// The most packages one transaction commits: bounds how long the lock is
/// held and how long the first caller of a group waits.
const MAX_GROUP: usize = 64;

/// A package creation whose checks outside the lock have passed.
#[derive(Clone)]
pub(super) struct PackageJob {
    /// The new package's id, chosen before the job is queued.
    pub(super) id: String,
    pub(super) manifest: Manifest,
    pub(super) manifest_id: BlobId,
    pub(super) class: String,
    pub(super) rule: ClassRule,
    /// The manifest's canonical bytes.
    pub(super) bytes: Bytes,
    /// The manifest's staging object and location, if its bytes were
    /// staged (it was not stored when looked at outside the lock).
    pub(super) staged: Option<(String, String)>,
    pub(super) actor: String,
    /// Queued again after a leader was cancelled: it may have committed.
    pub(super) retried: bool,
}

type Waiting = (PackageJob, oneshot::Sender<Result<String>>);

#[derive(Debug, Default)]
pub(super) struct Group {
    queue: std::sync::Mutex<Vec<Waiting>>,
    /// Held by the caller committing a group; the others queue behind it.
    leader: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PackageJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageJob")
            .field("manifest_id", &self.manifest_id)
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Commits `job`, in a group with whatever other creations are waiting;
    /// returns the new package's id once it is committed.
    pub(super) async fn commit_grouped(&self, job: PackageJob) -> Result<String> {
        let (reply, mut answer) = oneshot::channel();
        self.packages.queue_lock().push((job, reply));
        loop {
            let _leader = self.packages.leader.lock().await;
            // A leader answers, or queues again, every job it took before it
            // lets go of the lock: with the lock held, this job is either
            // answered or still queued.
            match answer.try_recv() {
                Ok(done) => return done,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Meta(MetaError::Corrupt(
                        "a queued package creation was dropped unanswered".into(),
                    )));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let mut batch = Batch {
                group: &self.packages,
                waiting: self.packages.take(MAX_GROUP),
            };
            self.commit_batch(&mut batch).await;
        }
    }

    /// Commits and answers every job of `batch`, together if there are
    /// several. Jobs leave the batch as they are answered; if this future
    /// is dropped, the rest go back to the queue.
    async fn commit_batch(&self, batch: &mut Batch<'_>) {
        if batch.waiting.len() > 1 {
            let jobs: Vec<&PackageJob> = batch.waiting.iter().map(|(j, _)| j).collect();
            match self.commit_together(&jobs).await {
                Ok(outcomes) => {
                    for ((_, reply), outcome) in batch.waiting.drain(..).zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, packages = batch.waiting.len(),
                        "a group of package creations failed; committing each alone");
                    // A failed commit may, rarely, have committed (a
                    // connection lost during COMMIT): look before creating.
                    for (job, _) in &mut batch.waiting {
                        job.retried = true;
                    }
                }
            }
        }
        while let Some((job, _)) = batch.waiting.first() {
            let outcome = self.commit_alone(job).await;
            let (_, reply) = batch.waiting.remove(0);
            let _ = reply.send(outcome);
        }
    }

    /// One package in a transaction of its own. If its manifest is
    /// neither stored nor staged (collected since its caller looked), its
    /// bytes are staged and the transaction taken again; those bytes are
    /// this attempt's own to discard.
    async fn commit_alone(&self, job: &PackageJob) -> Result<String> {
        if let Some(outcome) = self.commit_group(&[job]).await?.pop().flatten() {
            return outcome;
        }
        let (staging, location) = self
            .stage_bytes(job.bytes.clone(), &job.manifest_id)
            .await?;
        let again = PackageJob {
            staged: Some((staging.clone(), location)),
            ..job.clone()
        };
        let outcome = self.commit_group(&[&again]).await.and_then(|mut o| {
            o.pop().flatten().ok_or_else(|| {
                StoreError::Meta(MetaError::Corrupt(
                    "a staged manifest was left out of its transaction".into(),
                ))
            })?
        });
        self.discard_staging(&staging).await;
        outcome
    }

    /// Every job in one transaction, as [`Store::commit_group`]; a job
    /// left out there is committed alone afterwards.
    async fn commit_together(&self, jobs: &[&PackageJob]) -> Result<Vec<Result<String>>> {
        let outcomes = self.commit_group(jobs).await?;
        let mut answers = Vec::with_capacity(jobs.len());
        for (job, outcome) in jobs.iter().zip(outcomes) {
            answers.push(match outcome {
                Some(outcome) => outcome,
                None => self.commit_alone(job).await,
            });
        }
        Ok(answers)
    }

    /// Every job in one transaction: the one place where packages are
    /// committed. The outer error fails the whole group (nothing was
    /// committed); the inner results are each job's own. A job whose
    /// manifest is neither stored nor staged (collected since its caller
    /// looked) is left out (`None`), since staging bytes under the lock
    /// would hold up the whole group.
    async fn commit_group(&self, jobs: &[&PackageJob]) -> Result<Vec<Option<Result<String>>>> {
        let refs: Vec<References<'_>> = jobs.iter().map(|j| References::of(&j.manifest)).collect();
        let mut wanted: Vec<Hash> = refs.iter().flat_map(References::sha256).collect();
        wanted.extend(jobs.iter().map(|j| j.manifest_id.sha256));
        wanted.sort_unstable();
        wanted.dedup();

        let began = Instant::now();
        let mut tx = self.meta.begin().await?;
        let mut known: HashMap<Hash, BlobRecord> = tx
            .blobs_by_sha256(&wanted)
            .await?
            .into_iter()
            .map(|r| (r.blob.sha256, r))
            .collect();
        // Whether each staged manifest's bytes are still in place, asked
        // for all at once: a collector may have taken them since they were
        // committed, and now, under the lock, none can.
        let present = futures::future::try_join_all(jobs.iter().map(|j| async {
            match &j.staged {
                Some((_, location))
                    if !known.contains_key(&j.manifest_id.sha256)
                        && !self.blobs.fresh_locations() =>
                {
                    Ok(self.blobs.stat(location).await? == Some(j.manifest_id.size))
                }
                _ => Ok::<_, crate::error::StoreError>(true),
            }
        }))
        .await?;

        let mut outcomes: Vec<Option<Result<String>>> = Vec::with_capacity(jobs.len());
        let mut appended = 0;
        let mut last = None;
        for ((job, refs), present) in jobs.iter().zip(&refs).zip(present) {
            if job.retried && tx.package(&job.id).await?.is_some() {
                outcomes.push(Some(Ok(job.id.clone())));
                continue;
            }
            let rows: Vec<BlobRecord> = refs
                .wanted
                .iter()
                .filter_map(|(b, _)| known.get(&b.sha256).cloned())
                .collect();
            if let Err(e) = refs.verdict(&rows) {
                outcomes.push(Some(Err(e)));
                continue;
            }
            if let Entry::Vacant(slot) = known.entry(job.manifest_id.sha256) {
                let Some((staging, location)) = &job.staged else {
                    outcomes.push(None);
                    continue;
                };
                let stored = self
                    .record_new_blob(
                        &mut tx,
                        staging,
                        job.manifest_id,
                        location.clone(),
                        present,
                        &job.actor,
                    )
                    .await?;
                slot.insert(stored.record);
                appended += 1;
            }
            let (created, default) = self.package_events(
                &job.id,
                &job.manifest,
                &job.manifest_id,
                &job.class,
                &job.rule,
                &job.actor,
            )?;
            tx.append(created, Some(&job.manifest)).await?;
            last = Some(tx.append(default, None).await?.seq());
            appended += 2;
            outcomes.push(Some(Ok(job.id.clone())));
        }
        tx.commit().await?;
        let timing = &self.stats.creations;
        Creations::add(&timing.group_micros, began);
        timing.groups.fetch_add(1, Ordering::Relaxed);
        let committed = outcomes.iter().filter(|o| matches!(o, Some(Ok(_)))).count();
        timing
            .grouped
            .fetch_add(committed as u64, Ordering::Relaxed);
        if let Some(last) = last {
            self.published(last, appended);
        }
        Ok(outcomes)
    }
}

/// Jobs a leader took from the queue and has not answered yet.
struct Batch<'a> {
    group: &'a Group,
    waiting: Vec<Waiting>,
}

impl Drop for Batch<'_> {
    /// Only a cancelled leader leaves jobs here: they go back to the front
    /// of the queue, marked as possibly committed.
    fn drop(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        for (job, _) in &mut self.waiting {
            job.retried = true;
        }
        let mut queue = self.group.queue_lock();
        queue.splice(0..0, self.waiting.drain(..));
    }
}

impl Group {
    fn take(&self, most: usize) -> Vec<Waiting> {
        let mut queue = self.queue_lock();
        let take = queue.len().min(most);
        queue.drain(..take).collect()
    }

    fn queue_lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // A panic while the queue was held left it whole (pushes and
        // drains do not panic part-way), so a poisoned lock is still usable.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use artifactstore_core::manifest::FileEntry;
    use futures::StreamExt;

    use super::*;
    use crate::StoreOptions;
    use crate::meta::PackageFilter;
    use crate::testing::{PairKind, TestPair};

    async fn store_with_blob() -> (TestPair, Store, BlobId) {
        let pair = TestPair::new(PairKind::Embedded).expect("the embedded pair");
        let store = pair.open(StoreOptions::default()).await;
        let data = Bytes::from_static(b"the one file");
        let blob = BlobId::of(&data);
        let body = futures::stream::once(async move { Ok(data) }).boxed();
        store
            .put_blob(&[blob.sha256_digest()], None, body, "ci")
            .await
            .unwrap();
        (pair, store, blob)
    }

    fn job(store: &Store, name: &str, blob: BlobId) -> PackageJob {
        let file = FileEntry {
            path: "f.bin".into(),
            blob,
            media_type: None,
        };
        let manifest = Manifest::new(name.into(), vec![file], BTreeMap::new()).unwrap();
        let bytes = Bytes::from(manifest.to_canonical_bytes());
        PackageJob {
            id: store.new_id(),
            manifest_id: BlobId::of(&bytes),
            manifest,
            class: "scratch".into(),
            rule: ClassRule::Period { seconds: 60 },
            bytes,
            staged: None,
            actor: "ci".into(),
            retried: false,
        }
    }

    /// Queues a job as a waiting caller does; its answer arrives on the
    /// receiver.
    fn queue(store: &Store, name: &str, blob: BlobId) -> oneshot::Receiver<Result<String>> {
        let (reply, answer) = oneshot::channel();
        store
            .packages
            .queue_lock()
            .push((job(store, name, blob), reply));
        answer
    }

    async fn names(store: &Store) -> Vec<String> {
        let page = store
            .packages(&PackageFilter::default(), 0, 100)
            .await
            .unwrap();
        let mut names: Vec<String> = page.items.into_iter().map(|p| p.name).collect();
        names.sort();
        names
    }

    /// A leader cancelled after its group committed, before it answered:
    /// the jobs go back to the queue, and the next leader answers them with
    /// the packages already made instead of making them again.
    #[tokio::test]
    async fn jobs_of_a_leader_cancelled_after_commit_are_answered_once() {
        let (_pair, store, blob) = store_with_blob().await;
        let mut a = queue(&store, "team/a", blob);
        let mut b = queue(&store, "team/b", blob);
        {
            let batch = Batch {
                group: &store.packages,
                waiting: store.packages.take(MAX_GROUP),
            };
            let jobs: Vec<&PackageJob> = batch.waiting.iter().map(|(j, _)| j).collect();
            let outcomes = store.commit_together(&jobs).await.unwrap();
            assert!(outcomes.iter().all(Result::is_ok));
            // Dropped here unanswered, as a cancelled leader's batch is.
        }
        assert!(a.try_recv().is_err() && b.try_recv().is_err());
        assert_eq!(names(&store).await, ["team/a", "team/b"]);

        let c = store
            .commit_grouped(job(&store, "team/c", blob))
            .await
            .unwrap();
        assert_eq!(store.package(&c).await.unwrap().name, "team/c");
        assert!(a.await.unwrap().is_ok() && b.await.unwrap().is_ok());
        assert_eq!(names(&store).await, ["team/a", "team/b", "team/c"]);
    }

    /// A leader cancelled before its group committed: nothing was kept, and
    /// the next leader makes every package once.
    #[tokio::test]
    async fn jobs_of_a_leader_cancelled_before_commit_are_made_once() {
        let (_pair, store, blob) = store_with_blob().await;
        let a = queue(&store, "team/a", blob);
        drop(Batch {
            group: &store.packages,
            waiting: store.packages.take(MAX_GROUP),
        });
        store
            .commit_grouped(job(&store, "team/b", blob))
            .await
            .unwrap();
        assert!(a.await.unwrap().is_ok());
        assert_eq!(names(&store).await, ["team/a", "team/b"]);
    }
}
