//! Group commit: writes that queue on the write lock commit together.
//!
//! Every write transaction holds the database-wide write lock, so writers
//! queue on it, and on SQLite each of a transaction's statements is a round
//! trip to the database's thread: the lock, not the work, set the rate
//! (about 600 package creations/s with 8 clients, half the CPU idle; about
//! 0.7 ms of every small upload's 1.1 ms under the lock was its `COMMIT`).
//! So writes that arrive while one transaction runs wait in a queue, and the
//! next caller to take the lock commits all of them in one transaction: one
//! look-up of every blob they name, their rows sent together, one commit and
//! one flush to disk. Two kinds of write are grouped, each in a queue of its
//! own: package creations and the rows of uploaded blobs.
//!
//! Each write is still decided on its own: a package whose blobs are
//! missing gets its own 422 and writes nothing, and the others commit. If
//! the group's transaction fails as a whole (a write error, a full disk),
//! nothing of it is kept and each write is committed again alone, so every
//! caller gets its own outcome. A caller is answered only after the
//! transaction holding its write has committed.
//!
//! The caller that leads a group may be cancelled (its client went away)
//! while others wait on it. Whatever it had not answered goes back to the
//! queue for the next leader, marked as possibly committed. A blob's row is
//! keyed by its digest, so committing it again finds it. A package's id is
//! chosen before it is queued, so a retry first looks, under the lock, for
//! a package with that id, and answers with it instead of creating a second
//! one. (Were that look missed, the package's primary key would refuse the
//! second row, failing the group, and each package's retry alone looks
//! again.)

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Instant;

use artifactstore_core::BlobId;
use artifactstore_core::event::Hash;
use artifactstore_core::manifest::Manifest;
use artifactstore_core::retention::ClassRule;
use futures::TryFutureExt;
use tokio::sync::oneshot;

use super::{References, Store, StoredBlob};
use crate::error::{Result, StoreError};
use crate::meta::{BlobRecord, MetaError, MetaTx, Tier};

/// The most writes one transaction commits: bounds how long the lock is
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
    pub(super) actor: String,
    /// Queued again after a leader was cancelled: it may have committed.
    pub(super) retried: bool,
}

/// An uploaded blob whose bytes are in place, waiting for its row.
#[derive(Debug, Clone)]
pub(super) struct BlobJob {
    /// The staging object the bytes were committed from (and the upload
    /// session's id, if they came through one).
    pub(super) staging: String,
    pub(super) blob: BlobId,
    /// Where the bytes were committed.
    pub(super) location: String,
    pub(super) actor: String,
    /// The bytes came through an upload session, whose row goes in the
    /// same transaction.
    pub(super) session: bool,
}

/// A write that waits in a [`Group`].
pub(super) trait Job {
    /// What its caller is answered with.
    type Done;
    /// What a group of them is called in the log.
    const GROUP: &'static str;
    /// Marks a job that may have committed already, though its caller was
    /// not answered: its leader was cancelled, or its group's `COMMIT`
    /// failed (a connection lost during it may still have committed).
    fn may_have_committed(&mut self);
}

impl Job for PackageJob {
    /// The new package's id.
    type Done = String;
    const GROUP: &'static str = "a group of package creations";
    fn may_have_committed(&mut self) {
        self.retried = true;
    }
}

impl Job for BlobJob {
    type Done = StoredBlob;
    const GROUP: &'static str = "a group of blob records";
    /// Committing a blob again finds its row by digest: nothing to mark.
    fn may_have_committed(&mut self) {}
}

impl std::fmt::Debug for PackageJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageJob")
            .field("manifest_id", &self.manifest_id)
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

type Waiting<J> = (J, oneshot::Sender<Result<<J as Job>::Done>>);

/// Writes of one kind queued on the write lock.
pub(super) struct Group<J: Job> {
    queue: std::sync::Mutex<Vec<Waiting<J>>>,
    /// Held by the caller committing a group; the others queue behind it.
    leader: tokio::sync::Mutex<()>,
}

impl<J: Job> Default for Group<J> {
    fn default() -> Self {
        Group {
            queue: std::sync::Mutex::new(Vec::new()),
            leader: tokio::sync::Mutex::new(()),
        }
    }
}

impl<J: Job> std::fmt::Debug for Group<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

impl<J: Job> Group<J> {
    /// Queues `job` and returns its outcome once a transaction holding it
    /// has committed: while it waits, whoever leads commits what is queued
    /// with `committer`.
    async fn submit(&self, job: J, committer: &impl Committer<J>) -> Result<J::Done> {
        let (reply, mut answer) = oneshot::channel();
        self.queue_lock().push((job, reply));
        loop {
            let _leader = self.leader.lock().await;
            // A leader answers, or queues again, every job it took before it
            // lets go of the lock: with the lock held, this job is either
            // answered or still queued.
            match answer.try_recv() {
                Ok(done) => return done,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Meta(MetaError::Corrupt(
                        "a queued write was dropped unanswered".into(),
                    )));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let mut batch = Batch {
                group: self,
                waiting: self.take(MAX_GROUP),
            };
            batch.commit(committer).await;
        }
    }

    fn take(&self, most: usize) -> Vec<Waiting<J>> {
        let mut queue = self.queue_lock();
        let take = queue.len().min(most);
        queue.drain(..take).collect()
    }

    fn queue_lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<J>>> {
        // A panic while the queue was held left it whole (pushes and
        // drains do not panic part-way), so a poisoned lock is still usable.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Commits the jobs of one kind.
pub(super) trait Committer<J: Job>: Sync {
    /// Every job in one transaction. The outer error fails the whole
    /// group (nothing was committed, or, rarely, the `COMMIT`'s outcome is
    /// unknown); the inner results are each job's own.
    fn together(&self, jobs: &[&J]) -> impl Future<Output = Result<Vec<Result<J::Done>>>> + Send;
    /// One job in a transaction of its own.
    fn alone(&self, job: &J) -> impl Future<Output = Result<J::Done>> + Send;
}

/// Jobs a leader took from the queue and has not answered yet.
pub(super) struct Batch<'a, J: Job> {
    group: &'a Group<J>,
    waiting: Vec<Waiting<J>>,
}

impl<J: Job> Batch<'_, J> {
    /// Commits and answers every job, together if there are several; if
    /// their transaction fails, each alone, so that every caller gets its
    /// own outcome. Jobs leave the batch as they are answered; if this
    /// future is dropped, the rest go back to the queue.
    async fn commit(&mut self, committer: &impl Committer<J>) {
        if self.waiting.len() > 1 {
            let jobs: Vec<&J> = self.waiting.iter().map(|(j, _)| j).collect();
            match committer.together(&jobs).await {
                Ok(outcomes) => {
                    for ((_, reply), outcome) in self.waiting.drain(..).zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, writes = self.waiting.len(),
                        "{} failed; committing each alone", J::GROUP);
                    for (job, _) in &mut self.waiting {
                        job.may_have_committed();
                    }
                }
            }
        }
        while let Some((job, _)) = self.waiting.first() {
            let outcome = committer.alone(job).await;
            let (_, reply) = self.waiting.remove(0);
            let _ = reply.send(outcome);
        }
    }
}

impl<J: Job> Drop for Batch<'_, J> {
    /// Only a cancelled leader leaves jobs here: they go back to the front
    /// of the queue, marked as possibly committed.
    fn drop(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        for (job, _) in &mut self.waiting {
            job.may_have_committed();
        }
        let mut queue = self.group.queue_lock();
        queue.splice(0..0, self.waiting.drain(..));
    }
}

// Package creations.

impl Store {
    /// Commits `job`, in a group with whatever other creations are waiting;
    /// returns the new package's id once it is committed.
    pub(super) async fn commit_grouped(&self, job: PackageJob) -> Result<String> {
        self.packages.submit(job, self).await
    }

    /// Every job in one transaction: the one place where packages are
    /// committed. The outer error fails the whole group (nothing was
    /// committed); the inner results are each job's own. The blobs the
    /// packages name are looked up again here, under the lock, since a
    /// collector may have deleted one since their callers looked.
    async fn commit_group(&self, jobs: &[&PackageJob]) -> Result<Vec<Result<String>>> {
        let refs: Vec<References<'_>> = jobs.iter().map(|j| References::of(&j.manifest)).collect();
        let mut wanted: Vec<Hash> = refs.iter().flat_map(References::sha256).collect();
        wanted.sort_unstable();
        wanted.dedup();

        let began = Instant::now();
        let mut tx = self.meta.begin().await?;
        let known: HashMap<Hash, BlobId> = tx
            .stored_blobs(&wanted)
            .await?
            .into_iter()
            .map(|b| (b.sha256, b))
            .collect();

        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut appended = 0;
        let mut last = None;
        for (job, refs) in jobs.iter().zip(&refs) {
            if job.retried && tx.package(&job.id).await?.is_some() {
                outcomes.push(Ok(job.id.clone()));
                continue;
            }
            if let Err(e) = refs.verdict(&known) {
                outcomes.push(Err(e));
                continue;
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
            outcomes.push(Ok(job.id.clone()));
        }
        tx.commit().await?;
        let committed = outcomes.iter().filter(|o| o.is_ok()).count();
        self.stats.creations.groups.committed(committed, began);
        if let Some(last) = last {
            self.published(last, appended);
        }
        Ok(outcomes)
    }
}

impl Committer<PackageJob> for Store {
    async fn together(&self, jobs: &[&PackageJob]) -> Result<Vec<Result<String>>> {
        self.commit_group(jobs).await
    }

    async fn alone(&self, job: &PackageJob) -> Result<String> {
        self.commit_group(&[job]).await?.pop().ok_or_else(|| {
            StoreError::Meta(MetaError::Corrupt(
                "a package creation went unanswered".into(),
            ))
        })?
    }
}

// Uploaded blobs' rows.

impl Store {
    /// Records `job`'s blob, in a group with whatever other uploads are
    /// waiting, once its bytes are in place.
    pub(super) async fn commit_blob_grouped(&self, job: BlobJob) -> Result<StoredBlob> {
        self.uploads.submit(job, self).await
    }

    /// Every job's blob in one transaction: bytes already committed to
    /// their location (outside the lock, so uploads place their bytes in
    /// parallel) recorded with `v1.blob.stored`, unless the blob is stored
    /// already (a concurrent upload of the same bytes committed first; its
    /// row and event stand, and a copy at a location of its own, which no
    /// row will name, is removed once the transaction has committed). The
    /// callers discard their staging objects afterwards.
    ///
    /// Whether the bytes are at their location is decided here, under the
    /// write lock, because the collector removes bytes under that lock too:
    /// on the filesystem a blob's path is fixed by its digest, and a
    /// collector may have trashed an earlier copy of these bytes, or taken
    /// freshly linked ones for orphans, since the commit. Then they are
    /// committed again from the staging object, which still holds them. So
    /// a row is only ever written for bytes that exist when it commits, and
    /// the collector deletes bytes only after seeing their row gone under
    /// the same lock. A crash before the commit leaves bytes no row names,
    /// which the next collection removes. A backend with fresh locations
    /// (S3) needs no check: no one else writes or collects a location that
    /// young.
    async fn commit_blobs(&self, jobs: &[&BlobJob]) -> Result<Vec<StoredBlob>> {
        let mut wanted: Vec<Hash> = jobs.iter().map(|j| j.blob.sha256).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let began = Instant::now();
        let mut tx = self.meta.begin().await?;
        let (mut known, present) = self
            .rows_and_placed(
                &mut *tx,
                &wanted,
                jobs.iter().map(|j| (j.location.as_str(), j.blob.size)),
            )
            .await?;

        let mut stored = Vec::with_capacity(jobs.len());
        let mut copies = Vec::new();
        let mut last = None;
        for (job, present) in jobs.iter().zip(present) {
            if job.session {
                tx.session_delete(&job.staging).await?;
            }
            match known.entry(job.blob.sha256) {
                Entry::Occupied(row) => {
                    let record = row.get().clone();
                    if record.tier != Tier::Hot || record.location != job.location {
                        copies.push(job.location.clone());
                    }
                    stored.push(StoredBlob {
                        record,
                        created: false,
                    });
                }
                Entry::Vacant(slot) => {
                    let new = self
                        .record_new_blob(
                            &mut tx,
                            &job.staging,
                            job.blob,
                            job.location.clone(),
                            present,
                            &job.actor,
                        )
                        .await?;
                    last = Some(new.record.stored_seq);
                    slot.insert(new.record.clone());
                    stored.push(new);
                }
            }
        }
        tx.commit().await?;
        self.stats.blob_groups.committed(stored.len(), began);
        let appended = stored.iter().filter(|s| s.created).count();
        if let Some(last) = last {
            self.published(last, appended as u64);
        }
        for location in copies {
            if let Err(e) = self.blobs.delete(&location).await {
                tracing::warn!(%location, error = %e, "could not remove a duplicate upload");
            }
        }
        Ok(stored)
    }
}

impl Committer<BlobJob> for Store {
    async fn together(&self, jobs: &[&BlobJob]) -> Result<Vec<Result<StoredBlob>>> {
        Ok(self.commit_blobs(jobs).await?.into_iter().map(Ok).collect())
    }

    async fn alone(&self, job: &BlobJob) -> Result<StoredBlob> {
        self.commit_blobs(&[job]).await?.pop().ok_or_else(|| {
            StoreError::Meta(MetaError::Corrupt("a blob record went unanswered".into()))
        })
    }
}

impl Store {
    /// Under the write lock of `tx`: the rows of the blobs `wanted`, by
    /// SHA-256, and for each write's bytes (`(location, size)`) whether
    /// they are still in place (see [`Store::still_placed`]). The two are
    /// asked at once, since each waits on a thread of its own (the
    /// database's, the blocking pool) and the lock is held meanwhile. Bytes
    /// whose row turns out to stand already are looked at for nothing,
    /// which is rare (two writes of one blob in flight) and cheaper than a
    /// second wait.
    async fn rows_and_placed<'a>(
        &self,
        tx: &mut dyn MetaTx,
        wanted: &[Hash],
        placed: impl Iterator<Item = (&'a str, u64)>,
    ) -> Result<(HashMap<Hash, BlobRecord>, Vec<bool>)> {
        let rows = tx.blobs_by_sha256(wanted).err_into::<StoreError>();
        let (rows, present) = futures::future::try_join(rows, self.still_placed(placed)).await?;
        let known = rows.into_iter().map(|r| (r.blob.sha256, r)).collect();
        Ok((known, present))
    }

    /// For each write's bytes, whether they are still at their location. A
    /// backend with fresh locations needs no look (see
    /// [`Store::commit_blobs`]). Asking for all of them in one blocking
    /// call instead of one each measured no gain (BENCHMARKS.md).
    async fn still_placed<'a>(
        &self,
        placed: impl Iterator<Item = (&'a str, u64)>,
    ) -> Result<Vec<bool>> {
        let fresh = self.blobs.fresh_locations();
        futures::future::try_join_all(placed.map(|(location, size)| async move {
            Ok(fresh || self.blobs.stat(location).await? == Some(size))
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use artifactstore_core::event::Event;
    use artifactstore_core::manifest::FileEntry;
    use bytes::Bytes;

    use crate::blob::StagingKind;
    use crate::hashing::HashState;
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
        PackageJob {
            id: store.new_id(),
            manifest_id: BlobId::of(&manifest.to_canonical_bytes()),
            manifest,
            class: "scratch".into(),
            rule: ClassRule::Period { seconds: 60 },
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
            let outcomes = store.commit_group(&jobs).await.unwrap();
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

    /// A group whose transaction fails as a whole is committed again job by
    /// job, each marked as possibly committed, so each looks for its id
    /// first. Two jobs given one id fail their group (the primary key);
    /// alone, the first creates the package and the second finds it.
    #[tokio::test]
    async fn a_failed_group_is_committed_again_each_alone_looking_first() {
        let (_pair, store, blob) = store_with_blob().await;
        let first = job(&store, "team/a", blob);
        let second = PackageJob {
            id: first.id.clone(),
            ..job(&store, "team/b", blob)
        };
        let (reply_a, a) = oneshot::channel();
        let (reply_b, b) = oneshot::channel();
        let mut batch = Batch {
            group: &store.packages,
            waiting: vec![(first, reply_a), (second, reply_b)],
        };
        batch.commit(&store).await;
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_eq!(a, b);
        assert_eq!(names(&store).await, ["team/a"]);
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

    /// Bytes staged and placed as an upload places them, ready for their
    /// row.
    async fn placed(store: &Store, data: &'static [u8]) -> BlobJob {
        let bytes = Bytes::from_static(data);
        let blob = BlobId::of(&bytes);
        let staging = store.new_id();
        let b = &store.blobs;
        b.staging_create(&staging, StagingKind::Request)
            .await
            .unwrap();
        let mut w = b.staging_append(&staging).await.unwrap();
        w.write(bytes.clone()).await.unwrap();
        w.finish(&HashState::of(&bytes)).await.unwrap();
        let location = b.staging_commit(&staging, &blob).await.unwrap();
        BlobJob {
            staging,
            blob,
            location,
            actor: "ci".into(),
            session: false,
        }
    }

    fn queue_blob(store: &Store, job: BlobJob) -> oneshot::Receiver<Result<StoredBlob>> {
        let (reply, answer) = oneshot::channel();
        store.uploads.queue_lock().push((job, reply));
        answer
    }

    async fn blob_events(store: &Store) -> usize {
        let events = store.events_after(0, 100).await.unwrap();
        events
            .iter()
            .filter(|e| Event::decode(&e.bytes).unwrap().type_name() == "v1.blob.stored")
            .count()
    }

    /// Uploads that wait together are recorded in one transaction, each
    /// blob once: the same bytes twice in a group, or bytes stored before,
    /// are answered with the row that stands.
    #[tokio::test]
    async fn blob_records_waiting_together_share_one_transaction() {
        let (_pair, store, stored) = store_with_blob().await;
        let before = store.stats().blob_groups;
        let a = placed(&store, b"blob a").await;
        let b = placed(&store, b"blob b").await;
        let a_again = placed(&store, b"blob a").await;
        let old = placed(&store, b"the one file").await;
        assert_eq!(old.blob, stored);
        let answers = [
            queue_blob(&store, a.clone()),
            queue_blob(&store, b.clone()),
            queue_blob(&store, a_again),
        ];
        let last = store.commit_blob_grouped(old).await.unwrap();
        assert!(!last.created);
        let mut created = Vec::new();
        for answer in answers {
            let s = answer.await.unwrap().unwrap();
            created.push((s.record.blob, s.created));
        }
        assert_eq!(created, [(a.blob, true), (b.blob, true), (a.blob, false)]);
        let after = store.stats().blob_groups;
        assert_eq!(after.transactions - before.transactions, 1);
        assert_eq!(after.writes - before.writes, 4);
        // The one stored by `store_with_blob`, then a and b.
        assert_eq!(blob_events(&store).await, 3);
        for job in [&a, &b] {
            let row = store.blob(&job.blob.sha256_digest()).await.unwrap();
            assert_eq!(row.location, job.location);
        }
    }

    /// A leader cancelled after its group committed: the uploads go back to
    /// the queue, and the next leader answers them with the rows already
    /// written, recording nothing twice.
    #[tokio::test]
    async fn blob_records_of_a_cancelled_leader_are_recorded_once() {
        let (_pair, store, _) = store_with_blob().await;
        let a = placed(&store, b"blob a").await;
        let mut answer = queue_blob(&store, a.clone());
        {
            let batch = Batch {
                group: &store.uploads,
                waiting: store.uploads.take(MAX_GROUP),
            };
            let jobs: Vec<&BlobJob> = batch.waiting.iter().map(|(j, _)| j).collect();
            let stored = store.commit_blobs(&jobs).await.unwrap();
            assert!(stored[0].created);
            // Dropped here unanswered, as a cancelled leader's batch is.
        }
        assert!(answer.try_recv().is_err());
        let b = placed(&store, b"blob b").await;
        assert!(store.commit_blob_grouped(b).await.unwrap().created);
        let again = answer.await.unwrap().unwrap();
        assert!(!again.created);
        assert_eq!(again.record.blob, a.blob);
        assert_eq!(blob_events(&store).await, 3);
    }
}
