//! `verify` and `views rebuild`: checking the store against its log, and
//! deriving the views from the log again.

use std::collections::HashSet;
use std::fmt;

use artifactstore_core::event::{ChainError, ChainVerifier, Event, EventData, Hash};
use artifactstore_core::manifest::Manifest;
use artifactstore_core::{BlobId, Digest};

use crate::blob::Trashed;
use crate::engine::{Store, hash_stream};
use crate::error::Result;
use crate::manifests::body;
use crate::meta::{BlobRecord, MetaTx, MetadataStore, Tier};

const PAGE: u32 = 1000;
/// Manifests `verify` reads at once.
const MANIFEST_PAGE: u32 = 100;

/// One thing `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The hash chain breaks; `ChainError::seq` names the first bad event.
    Chain(ChainError),
    /// A view differs from a replay of the log.
    View {
        view: &'static str,
        rows: u64,
        replayed_rows: u64,
    },
    /// A blob row whose bytes are absent.
    MissingBlob { digest: Digest, location: String },
    /// Bytes present with another size than the row says.
    WrongSize {
        digest: Digest,
        expected: u64,
        found: u64,
    },
    /// Bytes whose digests differ from the row's (`--deep`).
    CorruptBlob { digest: Digest, actual: BlobId },
    /// A manifest kept in the database that no longer hashes to the
    /// digests it is stored under.
    CorruptManifest { digest: Digest },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Chain(e) => write!(f, "event log: first bad seq {}: {e}", e.seq()),
            Finding::View {
                view,
                rows,
                replayed_rows,
            } => write!(
                f,
                "view {view} differs from a replay of the log ({rows} rows stored, {replayed_rows} replayed); \
                 `artifactstore views rebuild` restores it"
            ),
            Finding::MissingBlob { digest, location } => {
                write!(f, "blob {digest}: bytes missing at {location}")
            }
            Finding::WrongSize {
                digest,
                expected,
                found,
            } => write!(
                f,
                "blob {digest}: {found} bytes stored, {expected} expected"
            ),
            Finding::CorruptManifest { digest } => write!(
                f,
                "manifest {digest}: its stored bytes do not hash to its digests"
            ),
            Finding::CorruptBlob { digest, actual } => write!(
                f,
                "blob {digest}: stored bytes hash to {} / {}",
                actual.sha256_digest(),
                actual.blake3_digest()
            ),
        }
    }
}

/// What `verify` checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub events_checked: u64,
    /// The seq the views were compared at (none if the chain was broken
    /// or a manifest corrupt: the replay would read it).
    pub views_compared_at: Option<u64>,
    /// Manifests kept in the database, each checked against its digests.
    pub manifests_checked: u64,
    pub blobs_checked: u64,
    pub bytes_rehashed: u64,
    /// Blobs whose bytes a collection has moved to the trash without
    /// committing the deletion of their rows: one still running, or one
    /// that died, whose trash a read or the next collection puts back.
    /// Not a finding, since the bytes are there; not rehashed either.
    pub blobs_in_trash: u64,
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }
}

impl Store {
    /// Checks the hash chain up to the current head, every manifest kept
    /// in the database against its digests, that the views equal a replay
    /// of the log, and that every stored blob's bytes are present (`deep`:
    /// and still hash to its digests). Takes no write lock: safe beside a
    /// running server, whose later appends it ignores.
    pub async fn verify(&self, deep: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let chain_ok = self.verify_chain(&mut report).await?;
        // Always, not only when deep: the replay reads every manifest
        // anyway, and would stop at a corrupt one instead of naming it.
        let manifests_ok = self.verify_manifests(&mut report).await?;
        if chain_ok && manifests_ok {
            self.verify_views(&mut report).await?;
        }
        self.verify_blobs(deep, &mut report).await?;
        Ok(report)
    }

    async fn verify_chain(&self, report: &mut VerifyReport) -> Result<bool> {
        let (head_seq, head_hash) = self.meta.head().await?;
        let mut chain = ChainVerifier::new();
        let mut after = 0;
        while after < head_seq {
            let page = self.meta.events_after(after, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for e in page.iter().take_while(|e| e.seq <= head_seq) {
                if let Err(err) = chain.check(e.seq, &e.bytes, &e.hash) {
                    report.findings.push(Finding::Chain(err));
                    return Ok(false);
                }
                report.events_checked += 1;
                after = e.seq;
            }
            if page.last().is_some_and(|e| e.seq > head_seq) {
                break;
            }
        }
        if let Err(err) = chain.finish(head_seq, &head_hash) {
            report.findings.push(Finding::Chain(err));
            return Ok(false);
        }
        Ok(true)
    }

    async fn verify_views(&self, report: &mut VerifyReport) -> Result<()> {
        let live = self.meta.views_digest().await?;
        let scratch = self.meta.scratch().await?;
        let mut tx = scratch.begin().await?;
        let mut after = 0;
        'replay: loop {
            let page = self.meta.events_after(after, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for e in page {
                if e.seq > live.applied_seq {
                    break 'replay;
                }
                let event = Event::decode(&e.bytes)
                    .map_err(|source| ChainError::Malformed { seq: e.seq, source })?;
                let manifest = self.manifest_of(&event, &*self.meta, None).await?;
                tx.replay(&[(&event, manifest.as_ref())]).await?;
                after = e.seq;
            }
        }
        tx.commit().await?;
        let replayed = scratch.views_digest().await?;
        for ((view, rows, hash), (_, replayed_rows, replayed_hash)) in
            live.tables.iter().zip(&replayed.tables)
        {
            if hash != replayed_hash {
                report.findings.push(Finding::View {
                    view,
                    rows: *rows,
                    replayed_rows: *replayed_rows,
                });
            }
        }
        report.views_compared_at = Some(live.applied_seq);
        Ok(())
    }

    /// Whether every manifest kept in the database hashes to its digests;
    /// each one that does not is a finding. A page at a time, a small one,
    /// since a manifest may be megabytes.
    async fn verify_manifests(&self, report: &mut VerifyReport) -> Result<bool> {
        let mut after: Hash = [0; 32];
        let mut ok = true;
        loop {
            let page = self.meta.manifests_after(&after, MANIFEST_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.sha256;
            for m in page {
                report.manifests_checked += 1;
                let digest = Digest::sha256(m.sha256);
                if m.verified().is_err() {
                    report.findings.push(Finding::CorruptManifest { digest });
                    ok = false;
                }
            }
        }
        Ok(ok)
    }

    async fn verify_blobs(&self, deep: bool, report: &mut VerifyReport) -> Result<()> {
        let mut after: Hash = [0; 32];
        // Listed only once bytes are found missing, which is rare.
        let mut trash: Option<HashSet<(Tier, Trashed)>> = None;
        loop {
            let page = self.meta.blobs_after(&after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.blob.sha256;
            for record in page {
                report.blobs_checked += 1;
                let digest = record.blob.sha256_digest();
                match self.backend(record.tier)?.stat(&record.location).await? {
                    None => {
                        if trash.is_none() {
                            trash = Some(self.trash_contents().await?);
                        }
                        let key = (record.tier, record.trashed());
                        if trash.as_ref().is_some_and(|t| t.contains(&key)) {
                            report.blobs_in_trash += 1;
                            continue;
                        }
                        report.findings.push(Finding::MissingBlob {
                            digest,
                            location: record.location.clone(),
                        });
                        continue;
                    }
                    Some(found) if found != record.blob.size => {
                        report.findings.push(Finding::WrongSize {
                            digest,
                            expected: record.blob.size,
                            found,
                        });
                        continue;
                    }
                    Some(_) => {}
                }
                if deep {
                    let actual = self.rehash(&record).await?;
                    report.bytes_rehashed += actual.size;
                    if actual != record.blob {
                        report
                            .findings
                            .push(Finding::CorruptBlob { digest, actual });
                    }
                }
            }
        }
        Ok(())
    }

    /// Every trashed object of every tier, with the `stored_seq` it was
    /// trashed under.
    async fn trash_contents(&self) -> Result<HashSet<(Tier, Trashed)>> {
        let mut out = HashSet::new();
        for (tier, backend) in self.tiers() {
            out.extend(backend.trash_list().await?.into_iter().map(|t| (tier, t)));
        }
        Ok(out)
    }

    /// Both digests of stored bytes, on the hasher threads.
    async fn rehash(&self, record: &BlobRecord) -> Result<BlobId> {
        let location = &record.location;
        let stream = self.backend(record.tier)?.read(location, None).await?;
        Ok(hash_stream(stream, &format!("reading {location}"))
            .await?
            .finish())
    }

    /// The manifest a `v1.package.created` names, checked against the
    /// event's digests (see [`Store::manifest_bodies`]); `None` for other
    /// events.
    pub(crate) async fn manifest_of(
        &self,
        event: &Event,
        meta: &dyn MetadataStore,
        tx: Option<&mut Box<dyn MetaTx>>,
    ) -> Result<Option<Manifest>> {
        let Some(digests) = manifest_digests(event) else {
            return Ok(None);
        };
        let bodies = self.manifest_bodies(&[digests], meta, tx).await?;
        Ok(Some(Manifest::decode(body(&bodies, &digests.0)?)?))
    }

    /// [`Store::manifest_of`] for a page of events at once, in their order.
    /// A rebuild is bound by round trips, not by work: one at a time, each
    /// manifest cost a lookup or more in turn.
    async fn manifests_of_page(
        &self,
        events: &[Event],
        tx: &mut Box<dyn MetaTx>,
    ) -> Result<Vec<Option<Manifest>>> {
        let wanted: Vec<(Hash, Hash)> = events.iter().filter_map(manifest_digests).collect();
        let bodies = self.manifest_bodies(&wanted, &*self.meta, Some(tx)).await?;
        events
            .iter()
            .map(|e| match manifest_digests(e) {
                Some((sha256, _)) => Ok(Some(Manifest::decode(body(&bodies, &sha256)?)?)),
                None => Ok(None),
            })
            .collect()
    }

    /// Empties the views and applies every event of the log again, in one
    /// transaction: readers see the old views until it commits, writers wait
    /// for it. Refuses a log whose chain is broken. Returns the events applied.
    pub async fn rebuild_views(&self) -> Result<u64> {
        let mut tx = self.meta.begin().await?;
        tx.reset_views().await?;
        let mut chain = ChainVerifier::new();
        let mut after = 0;
        loop {
            let page = tx.events_after(after, PAGE).await?;
            if page.is_empty() {
                break;
            }
            let events = page
                .iter()
                .map(|e| chain.check(e.seq, &e.bytes, &e.hash))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let manifests = self.manifests_of_page(&events, &mut tx).await?;
            let page: Vec<(&Event, Option<&Manifest>)> = events
                .iter()
                .zip(manifests.iter().map(Option::as_ref))
                .collect();
            tx.replay(&page).await?;
            after = events.last().map_or(after, Event::seq);
        }
        // Nobody can append while this transaction holds the write lock, so
        // the committed head is the one the log must end at.
        let (head_seq, head_hash) = self.meta.head().await?;
        chain.finish(head_seq, &head_hash)?;
        tx.commit().await?;
        Ok(after)
    }
}

/// The digest pair of the manifest a `v1.package.created` names.
fn manifest_digests(event: &Event) -> Option<(Hash, Hash)> {
    match event.data() {
        EventData::PackageCreated {
            manifest_sha256,
            manifest_blake3,
            ..
        } => Some((*manifest_sha256, *manifest_blake3)),
        _ => None,
    }
}
