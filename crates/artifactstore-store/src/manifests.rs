//! Manifests: kept in the database since they stopped being blobs, read
//! from their blobs for packages created before (docs/decisions.md,
//! "manifests live in the database"). Every read checks them against the
//! digests their package names.

use std::collections::HashMap;

use artifactstore_core::Digest;
use artifactstore_core::event::Hash;
use futures::{StreamExt as _, TryStreamExt as _};

use crate::engine::Store;
use crate::error::{Result, StoreError};
use crate::meta::{BlobRecord, MetaError, MetaTx, MetadataStore, PackageRecord};

/// Manifests stored as blobs read at once.
const PREFETCH: usize = 16;

impl Store {
    /// A package's manifest as its canonical bytes, re-verified against the
    /// package's digests as it is read.
    pub async fn manifest_bytes(&self, id: &str) -> Result<(PackageRecord, Vec<u8>)> {
        let package = self.package(id).await?;
        let (sha256, blake3) = (package.manifest_sha256, package.manifest_blake3);
        let bodies = self
            .manifest_bodies(&[(sha256, blake3)], &*self.meta, None)
            .await?;
        let bytes = body(&bodies, &sha256)?.to_vec();
        Ok((package, bytes))
    }

    /// The canonical bytes of the manifests with these digest pairs
    /// (SHA-256, BLAKE3), by SHA-256, each checked against both digests.
    /// Manifests are kept in the database; one stored before that is a
    /// blob, found through `meta`'s committed `blobs` view, where its row
    /// says where the bytes are now (a later event may have moved them to
    /// the cold tier), failing that through `tx` when given (a rebuild of a
    /// damaged view, whose rows are being refilled in that transaction),
    /// and read [`PREFETCH`] at a time. A pair found nowhere is an error:
    /// a package names it.
    pub(crate) async fn manifest_bodies(
        &self,
        wanted: &[(Hash, Hash)],
        meta: &dyn MetadataStore,
        tx: Option<&mut Box<dyn MetaTx>>,
    ) -> Result<HashMap<Hash, Vec<u8>>> {
        let pairs: HashMap<Hash, Hash> = wanted.iter().copied().collect();
        let sha256: Vec<Hash> = pairs.keys().copied().collect();
        let mut bodies = HashMap::with_capacity(pairs.len());
        for m in meta.manifests_by_sha256(&sha256).await? {
            let sha256 = m.sha256;
            if pairs.get(&sha256) != Some(&m.blake3) {
                return Err(digests_disagree(sha256));
            }
            bodies.insert(sha256, m.verified()?);
        }
        let absent: Vec<Hash> = sha256
            .into_iter()
            .filter(|h| !bodies.contains_key(h))
            .collect();
        if absent.is_empty() {
            return Ok(bodies);
        }
        let mut rows: HashMap<Hash, BlobRecord> = meta
            .blobs_by_sha256(&absent)
            .await?
            .into_iter()
            .map(|r| (r.blob.sha256, r))
            .collect();
        let unseen: Vec<Hash> = absent
            .iter()
            .filter(|h| !rows.contains_key(*h))
            .copied()
            .collect();
        if let Some(tx) = tx.filter(|_| !unseen.is_empty()) {
            rows.extend(
                tx.blobs_by_sha256(&unseen)
                    .await?
                    .into_iter()
                    .map(|r| (r.blob.sha256, r)),
            );
        }
        let (rows, pairs) = (&rows, &pairs);
        let read: Vec<(Hash, Vec<u8>)> =
            futures::stream::iter(absent.into_iter().map(|sha256| async move {
                let record = rows.get(&sha256).ok_or_else(|| not_stored(&sha256))?;
                if pairs.get(&sha256) != Some(&record.blob.blake3) {
                    return Err(digests_disagree(sha256));
                }
                Ok((sha256, self.read_verified(record).await?))
            }))
            .buffer_unordered(PREFETCH)
            .try_collect()
            .await?;
        bodies.extend(read);
        Ok(bodies)
    }
}

/// One of the bodies [`Store::manifest_bodies`] returned.
pub(crate) fn body<'a>(bodies: &'a HashMap<Hash, Vec<u8>>, sha256: &Hash) -> Result<&'a [u8]> {
    bodies
        .get(sha256)
        .map(Vec::as_slice)
        .ok_or_else(|| not_stored(sha256))
}

fn not_stored(sha256: &Hash) -> StoreError {
    StoreError::Meta(MetaError::Corrupt(format!(
        "manifest {} is not stored",
        Digest::sha256(*sha256)
    )))
}

fn digests_disagree(sha256: Hash) -> StoreError {
    StoreError::Meta(MetaError::Corrupt(format!(
        "manifest {}: stored under another BLAKE3 than its package names",
        Digest::sha256(sha256)
    )))
}
