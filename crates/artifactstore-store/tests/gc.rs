//! The collector in the engine: what it deletes and when, what it never
//! deletes, its dry run, its recovery, and the race it must not lose.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use artifactstore_core::event::Event;
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_core::retention::{ClassRule, shipped_classes};
use artifactstore_core::{BlobId, Timestamp};
use artifactstore_store::blob::StagingKind;
use artifactstore_store::clock::ManualClock;
use artifactstore_store::conformance::pattern;
use artifactstore_store::hashing::HashState;
use artifactstore_store::meta::MetadataStore;
use artifactstore_store::testing::{PairKind, TestPair};
use artifactstore_store::{GcSettings, Store, StoreError, StoreOptions};
use bytes::Bytes;
use futures::StreamExt;

const T0: &str = "2026-11-28T11:15:20.123456Z";
const HOUR: Duration = Duration::from_secs(3600);

async fn open(pair: &TestPair, clock: Arc<ManualClock>) -> Store {
    let mut classes = shipped_classes();
    classes.insert("ci-short".into(), ClassRule::Period { seconds: 2 });
    let options = StoreOptions {
        classes,
        clock,
        ..StoreOptions::default()
    };
    pair.open(options).await
}

fn settings(grace: Duration) -> GcSettings {
    GcSettings {
        grace,
        upload_expiry: 24 * HOUR,
    }
}

fn body(data: &[u8]) -> artifactstore_store::blob::ByteStream {
    let b = Bytes::copy_from_slice(data);
    futures::stream::once(async move { Ok(b) }).boxed()
}

async fn upload(store: &Store, data: &[u8]) -> BlobId {
    let id = BlobId::of(data);
    store
        .put_blob(&[id.sha256_digest()], None, body(data), "ci")
        .await
        .unwrap();
    id
}

fn manifest(files: &[(&str, &[u8])]) -> Manifest {
    let entries = files
        .iter()
        .map(|(path, data)| FileEntry {
            path: (*path).into(),
            blob: BlobId::of(data),
            media_type: None,
        })
        .collect();
    Manifest::new("team/app".into(), entries, BTreeMap::new()).unwrap()
}

async fn read_all(store: &Store, blob: &BlobId) -> Result<Vec<u8>, StoreError> {
    let record = store.blob(&blob.sha256_digest()).await?;
    let mut stream = store.read_blob(&record, None).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.map_err(StoreError::BodyRead)?);
    }
    Ok(out)
}

async fn log_types(store: &Store) -> Vec<&'static str> {
    store
        .events_after(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| Event::decode(&e.bytes).unwrap().type_name())
        .collect()
}

/// What the blob backend keeps: blobs, staging objects and trash.
async fn stored(store: &Store) -> (Vec<String>, Vec<String>, usize) {
    let b = store.blob_backend();
    let mut blobs: Vec<String> = Vec::new();
    loop {
        let after = blobs.last().cloned().unwrap_or_default();
        let page = b.list_after(&after, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        blobs.extend(page);
    }
    let mut staging = b.staging_list().await.unwrap();
    staging.sort();
    (blobs, staging, b.trash_list().await.unwrap().len())
}

/// Puts `data` into the blob backend as staging `id` would, with no row:
/// what a crash between the two commits leaves. Returns its location.
async fn commit_without_row(store: &Store, id: &str, data: &[u8]) -> String {
    let b = store.blob_backend();
    b.staging_create(id, StagingKind::Request).await.unwrap();
    let bytes = Bytes::copy_from_slice(data);
    let mut w = b.staging_append(id).await.unwrap();
    w.write(bytes.clone()).await.unwrap();
    w.finish(&HashState::of(&bytes)).await.unwrap();
    let location = b.staging_commit(id, &BlobId::of(data)).await.unwrap();
    b.staging_delete(id).await.unwrap();
    location
}

/// A staging id from long ago (a UUID v7 of 2023).
fn old_id(n: u32) -> String {
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        1_700_000_000,
        n,
    ))
    .to_string()
}

/// An expired package is deleted by the collector and stays readable as
/// metadata; its own blob goes once the grace period is over, the blob it
/// shares with a live package and its manifest stay.
async fn an_expired_package_is_deleted_and_its_own_bytes_collected_after_grace(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = open(&pair, clock.clone()).await;
    let own = pattern(10_000, 1);
    let shared = pattern(3_000, 2);
    upload(&store, &own).await;
    upload(&store, &shared).await;
    let short = store
        .create_package(
            &manifest(&[("own", &own), ("shared", &shared)]),
            "ci-short",
            "ci",
        )
        .await
        .unwrap();
    let keep = store
        .create_package(&manifest(&[("shared", &shared)]), "permanent-record", "ci")
        .await
        .unwrap();

    // Not eligible yet: nothing goes.
    let report = store.collect(&settings(HOUR), false).await.unwrap();
    assert!(report.packages.is_empty() && report.blobs.is_empty());

    clock.advance(Duration::from_secs(3));
    assert_eq!(store.sweep().await.unwrap().marked, 1);
    let report = store.collect(&settings(HOUR), false).await.unwrap();
    assert_eq!(report.packages.len(), 1);
    assert_eq!(report.packages[0].id, short.id);
    assert_eq!(
        report.packages[0].bytes_freed,
        own.len() as u64,
        "only its own blob"
    );
    assert!(report.blobs.is_empty(), "within the grace period");

    let deleted = store.package(&short.id).await.unwrap();
    let d = deleted.retention.deleted.clone().expect("shown as deleted");
    assert_eq!(
        (d.reason.as_str(), d.bytes_freed),
        ("retention expired", own.len() as u64)
    );
    assert_eq!(
        deleted.manifest_sha256, short.manifest_sha256,
        "metadata remains"
    );
    store
        .manifest_bytes(&short.id)
        .await
        .expect("the manifest remains");
    assert!(matches!(
        store.package_file(&short.id, "own").await,
        Err(StoreError::PackageGone { seq, .. }) if seq == d.seq
    ));
    let later: Timestamp = "2100-01-01T00:00:00.000000Z".parse().unwrap();
    for refused in [
        store
            .extend_retention(&short.id, later, "too late", "records")
            .await
            .map(drop),
        store
            .apply_hold(&short.id, "too late", "legal")
            .await
            .map(drop),
        store
            .release_hold(&short.id, "h", "too late", "legal")
            .await
            .map(drop),
    ] {
        let e = refused.expect_err("retention calls on a deleted package");
        assert_eq!(
            (e.code(), e.class()),
            ("package-deleted", artifactstore_store::ErrorClass::Conflict)
        );
    }
    assert_eq!(
        store.retention_history(&short.id).await.unwrap().len(),
        2,
        "history stays readable"
    );

    clock.advance(2 * HOUR);
    let report = store.collect(&settings(HOUR), false).await.unwrap();
    assert_eq!(report.blobs, [BlobId::of(&own)]);
    assert_eq!(report.bytes_freed, own.len() as u64);
    assert!(matches!(
        store.blob(&BlobId::of(&own).sha256_digest()).await,
        Err(StoreError::BlobNotFound(_))
    ));
    assert_eq!(
        read_all(&store, &BlobId::of(&shared)).await.unwrap(),
        shared
    );
    assert!(store.package_file(&keep.id, "shared").await.is_ok());
    store.manifest_bytes(&short.id).await.expect("still");

    let types = log_types(&store).await;
    assert_eq!(
        types.iter().filter(|t| **t == "v1.package.deleted").count(),
        1
    );
    assert_eq!(types.last(), Some(&"v1.blob.deleted"));
    assert_eq!(stored(&store).await.2, 0, "no trash left");
    let v = store.verify(true).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.findings);

    // A second run finds nothing more; the views rebuild to the same state.
    let again = store.collect(&settings(HOUR), false).await.unwrap();
    assert!(again.packages.is_empty() && again.blobs.is_empty());
    let before = store.package(&short.id).await.unwrap();
    store.rebuild_views().await.unwrap();
    assert_eq!(store.package(&short.id).await.unwrap(), before);
}

/// A hold or an extension that commits before the collector's transaction
/// keeps the package, even though the sweeper had marked it.
async fn a_hold_or_extension_that_lands_first_wins(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = open(&pair, clock.clone()).await;
    let id = store
        .create_package(&manifest(&[]), "ci-short", "ci")
        .await
        .unwrap()
        .id;
    clock.advance(Duration::from_secs(3));
    store.sweep().await.unwrap();
    let hold = store.apply_hold(&id, "litigation", "legal").await.unwrap();
    assert!(
        store
            .collect(&settings(HOUR), false)
            .await
            .unwrap()
            .packages
            .is_empty()
    );

    store
        .release_hold(&id, &hold.hold_id, "settled", "legal")
        .await
        .unwrap();
    store.sweep().await.unwrap();
    let later = artifactstore_store::clock::Clock::now(&*clock)
        .checked_add_micros(10_000_000)
        .unwrap();
    store
        .extend_retention(&id, later, "auditor", "records")
        .await
        .unwrap();
    assert!(
        store
            .collect(&settings(HOUR), false)
            .await
            .unwrap()
            .packages
            .is_empty()
    );
    assert!(
        store
            .package(&id)
            .await
            .unwrap()
            .retention
            .deleted
            .is_none()
    );

    clock.advance(Duration::from_secs(11));
    store.sweep().await.unwrap();
    assert_eq!(
        store
            .collect(&settings(HOUR), false)
            .await
            .unwrap()
            .packages
            .len(),
        1
    );
}

/// A dry run reports what a real run at the same moment deletes, item for
/// item, and changes nothing.
async fn a_dry_run_reports_exactly_what_a_real_run_deletes(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = open(&pair, clock.clone()).await;
    for i in 0..6u8 {
        let a = pattern(1000 + usize::from(i), i);
        let b = pattern(500, 100 + i % 2); // shared by pairs
        upload(&store, &a).await;
        upload(&store, &b).await;
        let class = if i % 3 == 0 {
            "permanent-record"
        } else {
            "ci-short"
        };
        store
            .create_package(&manifest(&[("a", &a), ("b", &b)]), class, "ci")
            .await
            .unwrap();
    }
    upload(&store, &pattern(777, 200)).await; // never referenced
    let session = store.create_upload("ci").await.unwrap();
    store
        .append_upload(&session, 0, None, body(b"partial"))
        .await
        .unwrap();
    clock.advance(25 * HOUR);
    store.sweep().await.unwrap();

    let head = store.events_after(0, 1000).await.unwrap().len();
    let files = stored(&store).await;
    let dry = store.collect(&settings(HOUR), true).await.unwrap();
    assert_eq!(
        store.events_after(0, 1000).await.unwrap().len(),
        head,
        "no event"
    );
    assert_eq!(stored(&store).await, files, "no byte");
    assert_eq!(store.upload_offset(&session).await.unwrap(), 7);

    let real = store.collect(&settings(HOUR), false).await.unwrap();
    assert_eq!(dry.packages.len(), 4);
    assert!(dry.blobs.len() >= 5, "{:?}", dry.blobs);
    assert_eq!(dry.sessions, std::slice::from_ref(&session));
    assert_eq!(
        (&dry.packages, &dry.blobs, dry.bytes_freed, &dry.sessions),
        (
            &real.packages,
            &real.blobs,
            real.bytes_freed,
            &real.sessions
        )
    );
    assert!(dry.dry_run && !real.dry_run);
    assert!(matches!(
        store.upload_offset(&session).await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert!(stored(&store).await.1.is_empty(), "no staging left");
    let v = store.verify(true).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.findings);
}

/// What crashes leave behind: staging without a session, bytes without a
/// row, trash of a collection that never committed (put back) and of one
/// that did (purged).
async fn crash_leftovers_are_recovered_or_removed(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = open(&pair, clock.clone()).await;
    let kept = pattern(4096, 7);
    let kept_id = upload(&store, &kept).await;
    store
        .create_package(&manifest(&[("kept", &kept)]), "permanent-record", "ci")
        .await
        .unwrap();
    let record = store.blob(&kept_id.sha256_digest()).await.unwrap();
    let blobs = store.blob_backend();

    // A collection that trashed a referenced blob and died before its commit.
    blobs
        .trash(&record.location, record.stored_seq)
        .await
        .unwrap();
    if pair.kind() == PairKind::Embedded {
        // Moved aside, not lost: verify says so without failing.
        let v = store.verify(true).await.unwrap();
        assert!(v.is_ok(), "{:?}", v.findings);
        assert_eq!(v.blobs_in_trash, 1);
        // While a collection runs, its trash is its own: the blob counts
        // as being collected.
        let other = pair.metadata().await;
        let held = other.try_lead("collector").await.unwrap().expect("free");
        let err = read_all(&store, &kept_id).await.unwrap_err();
        assert_eq!(err.code(), "blob-not-found");
        drop(held);
        // Once none runs, a read puts the bytes back instead of waiting for
        // the next collection.
        assert_eq!(read_all(&store, &kept_id).await.unwrap(), kept);
        assert_eq!(store.recover().await.unwrap(), Some(0));
        assert_eq!(store.verify(false).await.unwrap().blobs_in_trash, 0);
    } else {
        // S3's trash is a marker; the bytes stay readable until the purge.
        assert_eq!(read_all(&store, &kept_id).await.unwrap(), kept);
        assert_eq!(store.recover().await.unwrap(), Some(1));
    }
    assert_eq!(read_all(&store, &kept_id).await.unwrap(), kept);

    // Trash whose row is gone, bytes no row names, staging nobody owns.
    let gone = commit_without_row(&store, &old_id(1), b"old").await;
    blobs.trash(&gone, 3).await.unwrap();
    let orphan = commit_without_row(&store, &old_id(2), b"orphan").await;
    let old_staging = old_id(3);
    blobs
        .staging_create(&old_staging, StagingKind::Session)
        .await
        .unwrap();
    let mut orphaned_staging = 1;
    if pair.kind() == PairKind::Embedded {
        // The second name a filesystem commit uses to replace damaged bytes.
        let staging = pair.dir().join("staging");
        std::fs::write(staging.join(format!("{old_staging}-replace")), b"half").unwrap();
        orphaned_staging += 1;
    }
    let fresh = store.create_upload("ci").await.unwrap();

    let report = store.collect(&settings(HOUR), false).await.unwrap();
    assert_eq!(
        (
            report.orphaned_blobs,
            report.orphaned_staging,
            report.restored
        ),
        (1, orphaned_staging, 0)
    );
    let (_, staging, trash) = stored(&store).await;
    assert_eq!(trash, 0);
    assert_eq!(blobs.stat(&orphan).await.unwrap(), None);
    assert_eq!(blobs.stat(&gone).await.unwrap(), None);
    assert_eq!(staging, [fresh], "a live session's bytes stay");
    let v = store.verify(true).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.findings);
}

async fn only_one_collector_runs_at_a_time(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = open(&pair, clock).await;
    let other = pair.metadata().await;
    let held = other.try_lead("collector").await.unwrap().expect("free");
    let err = store.collect(&settings(HOUR), false).await.unwrap_err();
    assert_eq!(err.code(), "collector-busy");
    assert_eq!(store.recover().await.unwrap(), None);
    drop(held);
    // Released when the holder's connection ends, which PostgreSQL notices
    // a moment later: the lock frees, not necessarily at once.
    let mut tries = 0;
    loop {
        match store.collect(&settings(HOUR), false).await {
            Ok(_) => break,
            Err(StoreError::CollectorBusy) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("collect after the holder let go: {e}"),
        }
    }
}

/// A whole blob whose bytes changed on disk is never served complete: a
/// small one is refused before its first byte, a large one's stream fails
/// before its last chunk. Ranges are served as stored.
async fn a_corrupt_blob_read_fails_before_the_end(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = open(&pair, clock).await;
    // Checked before sending, and while streaming.
    for (size, flip) in [(1 << 20, 700_000), (5 << 20, (5 << 20) - 1)] {
        let data = pattern(size, 3);
        let id = upload(&store, &data).await;
        let record = store.blob(&id.sha256_digest()).await.unwrap();
        assert_eq!(read_all(&store, &id).await.unwrap(), data, "intact");
        let mut bytes = data.clone();
        bytes[flip] ^= 0x01;
        pair.overwrite_blob(&record.location, bytes).await;

        if size <= 1 << 20 {
            // Small: checked before the first byte, refused cleanly.
            let err = store.read_blob(&record, None).await.map(drop).unwrap_err();
            assert!(matches!(err, StoreError::CorruptBlob(d) if d == id.sha256_digest()));
            assert_eq!(err.code(), "blob-corrupt");
            continue;
        }
        // Large: checked as it streams, cut off before the end.
        let mut stream = store.read_blob(&record, None).await.unwrap();
        let mut received = 0;
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => received += c.len(),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                    failed = true;
                }
            }
        }
        assert!(failed, "the read of {size} bytes must fail");
        assert!(received < data.len(), "the body was cut short: {received}");
        let range = store.read_blob(&record, Some(0..10)).await.unwrap();
        assert_eq!(range.count().await, 1);
    }
}

/// Tiny deterministic generator: the stress test's schedule comes from the
/// interleaving of tasks; this only varies what each client asks for.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The registry race, on two engines over one store. Clients push packages
/// whose blobs come from a small shared window of contents, which slides
/// as collections complete, while collectors with no grace
/// period run in a loop, deleting packages as they expire and every blob
/// the moment nothing references it. Every package that was acknowledged
/// and not deleted by the collector must then read back byte for byte.
async fn collection_never_deletes_what_a_package_references(pair: TestPair) {
    const CLIENTS: u64 = 6;
    // Clients push until the collectors have completed this many runs
    // (fewer on the scale-out pair, whose test S3 server lists slowly).
    let collections_wanted: u64 = match pair.kind() {
        PairKind::Embedded => 300,
        PairKind::ScaleOut => 100,
    };
    /// Clients draw each file from this many contents, starting at twice
    /// the number of completed collections: blobs fall out of use, their
    /// packages expire and they are collected while newer packages still
    /// pick them.
    const WINDOW: u64 = 16;
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let a = Arc::new(open(&pair, clock.clone()).await);
    let b = Arc::new(open(&pair, clock.clone()).await);
    let content = |n: u64| {
        let mut v = n.to_le_bytes().to_vec();
        v.extend(pattern(512 + 97 * (n % 13) as usize, n as u8));
        v
    };
    let no_grace = GcSettings {
        grace: Duration::ZERO,
        upload_expiry: HOUR,
    };
    let done = Arc::new(AtomicBool::new(false));
    let (collections, busy, blobs_deleted, packages_deleted) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut collectors = Vec::new();
    for store in [a.clone(), b.clone()] {
        let (clock, done) = (clock.clone(), done.clone());
        let (collections, busy) = (collections.clone(), busy.clone());
        let (blobs_deleted, packages_deleted) = (blobs_deleted.clone(), packages_deleted.clone());
        collectors.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                store.sweep().await.unwrap();
                match store.collect(&no_grace, false).await {
                    Ok(r) => {
                        clock.advance(Duration::from_secs(1));
                        collections.fetch_add(1, Ordering::SeqCst);
                        blobs_deleted.fetch_add(r.blobs.len() as u64, Ordering::SeqCst);
                        packages_deleted.fetch_add(r.packages.len() as u64, Ordering::SeqCst);
                    }
                    Err(StoreError::CollectorBusy) => {
                        busy.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("collection failed: {e}"),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let refused = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let store = if c % 2 == 0 { a.clone() } else { b.clone() };
        let (refused, collections) = (refused.clone(), collections.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (c + 1));
            let mut acknowledged = Vec::new();
            while collections.load(Ordering::SeqCst) < collections_wanted {
                // Paced to the collectors: about one package per client per
                // collection, so every collection races fresh creations.
                while acknowledged.len() as u64 > collections.load(Ordering::SeqCst) + 2 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let base = 2 * collections.load(Ordering::SeqCst);
                let files: Vec<(String, Vec<u8>)> = (0..3)
                    .map(|k| {
                        let n = base + rng.next(WINDOW);
                        (format!("f{k}-{n}"), content(n))
                    })
                    .collect();
                let refs: Vec<(&str, &[u8])> = files
                    .iter()
                    .map(|(p, d)| (p.as_str(), d.as_slice()))
                    .collect();
                let m = manifest(&refs);
                let class = if rng.next(4) == 0 {
                    "permanent-record"
                } else {
                    "ci-short"
                };
                for (_, data) in &files {
                    upload(&store, data).await;
                }
                // The client's side of the contract: a 422 naming missing
                // blobs means "upload them again".
                let package = loop {
                    match store.create_package(&m, class, "ci").await {
                        Ok(p) => break p,
                        Err(StoreError::MissingBlobs(missing)) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            for d in missing {
                                let (_, data) = files
                                    .iter()
                                    .find(|(_, data)| BlobId::of(data).sha256_digest() == d)
                                    .expect("a blob the manifest names");
                                upload(&store, data).await;
                            }
                        }
                        Err(e) => panic!("create failed: {e}"),
                    }
                };
                acknowledged.push((package.id, class, files));
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for c in clients {
        acknowledged.extend(c.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    for c in collectors {
        c.await.unwrap();
    }

    let (mut live, mut deleted) = (0, 0);
    for (id, class, files) in &acknowledged {
        let p = a.package(id).await.unwrap();
        if p.retention.deleted.is_some() {
            assert_eq!(*class, "ci-short", "only expired packages are deleted");
            deleted += 1;
            continue;
        }
        live += 1;
        for (path, data) in files {
            let (_, blob) = a.package_file(id, path).await.unwrap();
            assert_eq!(
                &read_all(&a, &blob.blob).await.unwrap(),
                data,
                "{id} {path}"
            );
        }
    }
    let v = a.verify(true).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.findings);
    report(format_args!(
        "gc stress: {} collections ran ({} found the other collector busy) while {} packages \
         were created; {} creations were refused for blobs collected under them and retried; \
         collectors deleted {} packages and {} blobs; checked {} live packages byte for byte \
         and {} deleted ones",
        collections.load(Ordering::SeqCst),
        busy.load(Ordering::SeqCst),
        acknowledged.len(),
        refused.load(Ordering::SeqCst),
        packages_deleted.load(Ordering::SeqCst),
        blobs_deleted.load(Ordering::SeqCst),
        live,
        deleted,
    ));
    assert!(collections.load(Ordering::SeqCst) >= collections_wanted);
    assert!(
        blobs_deleted.load(Ordering::SeqCst) > 0 && deleted > 0,
        "the collector did work"
    );
}

/// A session whose staged bytes are gone (collected after it expired)
/// answers "no such upload", not an internal error. (The narrower race, bytes
/// going while a request is under way, is mapped the same way by
/// `From<BlobError> for StoreError` but has no deterministic trigger.)
async fn an_upload_whose_bytes_were_collected_is_not_found(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = open(&pair, clock).await;
    let id = store.create_upload("ci").await.unwrap();
    store
        .append_upload(&id, 0, None, body(b"abc"))
        .await
        .unwrap();
    store.blob_backend().staging_delete(&id).await.unwrap();
    let digest = BlobId::of(b"abc").sha256_digest();
    let finish = store.finish_upload(&id, &[digest], None, "ci").await;
    assert!(
        matches!(finish, Err(StoreError::UploadNotFound(_))),
        "{finish:?}"
    );
}

/// Writes straight to stderr, past the test harness's capture (which takes
/// only `print!`-family output), so the counts show in every CI log.
fn report(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

artifactstore_store::on_both_pairs!(
    an_expired_package_is_deleted_and_its_own_bytes_collected_after_grace,
    a_hold_or_extension_that_lands_first_wins,
    a_dry_run_reports_exactly_what_a_real_run_deletes,
    crash_leftovers_are_recovered_or_removed,
    only_one_collector_runs_at_a_time,
    a_corrupt_blob_read_fails_before_the_end,
    collection_never_deletes_what_a_package_references,
    an_upload_whose_bytes_were_collected_is_not_found,
);
