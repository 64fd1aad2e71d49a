//! Retrieval tiering on both backend pairs: packages move to the cold tier
//! with age, a shared blob moves with the last package that needs it hot,
//! reads do not change, and the log rebuilds the same tiers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::BlobId;
use artifactstore_core::event::EventData;
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_core::retention::{ClassRule, shipped_classes};
use artifactstore_store::clock::ManualClock;
use artifactstore_store::conformance::pattern;
use artifactstore_store::meta::Tier;
use artifactstore_store::testing::TestPair;
use artifactstore_store::{GcSettings, Store, StoreError, StoreOptions};
use bytes::Bytes;
use futures::StreamExt;

const T0: &str = "2026-11-28T11:15:20.123456Z";

fn options(clock: Arc<ManualClock>) -> StoreOptions {
    let mut classes = shipped_classes();
    classes.insert("quick".into(), ClassRule::Period { seconds: 3600 });
    classes.insert(
        "slow".into(),
        ClassRule::Period {
            seconds: 30 * 86_400,
        },
    );
    StoreOptions {
        classes,
        clock,
        cold_after: BTreeMap::from([
            ("quick".to_owned(), Duration::from_secs(60)),
            ("slow".to_owned(), Duration::from_secs(86_400)),
        ]),
        ..StoreOptions::default()
    }
}

async fn upload(store: &Store, data: &[u8]) -> BlobId {
    let id = BlobId::of(data);
    let b = Bytes::copy_from_slice(data);
    let body = futures::stream::once(async move { Ok(b) }).boxed();
    store
        .put_blob(&[id.sha256_digest()], None, body, "ci")
        .await
        .unwrap();
    id
}

fn manifest(name: &str, files: &[(&str, &[u8])]) -> Manifest {
    let files = files
        .iter()
        .map(|(p, d)| FileEntry {
            path: (*p).into(),
            blob: BlobId::of(d),
            media_type: None,
        })
        .collect();
    Manifest::new(name.into(), files, BTreeMap::new()).unwrap()
}

async fn read(store: &Store, id: &str, path: &str) -> Vec<u8> {
    let (_, record) = store.package_file(id, path).await.unwrap();
    let mut s = store.read_blob(&record, None).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

async fn tier_of(store: &Store, blob: &BlobId) -> (Tier, String) {
    let r = store.blob(&blob.sha256_digest()).await.unwrap();
    (r.tier, r.location)
}

async fn packages_move_to_the_cold_tier_with_age(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = pair.open_tiered(options(clock.clone())).await;
    let own = pattern(300_000, 1);
    let shared = pattern(5_000, 2);
    let late = pattern(7_000, 3);
    for d in [&own, &shared, &late] {
        upload(&store, d).await;
    }
    let quick = store
        .create_package(
            &manifest("t/quick", &[("own", &own), ("shared", &shared)]),
            "quick",
            "ci",
        )
        .await
        .unwrap();
    let slow = store
        .create_package(
            &manifest("t/slow", &[("late", &late), ("shared", &shared)]),
            "slow",
            "ci",
        )
        .await
        .unwrap();
    assert_eq!(quick.tier, Tier::Hot);

    // Not due yet: nothing moves.
    assert!(store.tier_run().await.unwrap().packages.is_empty());

    // The quick package is due; the blob it shares with the slow one stays.
    clock.advance(Duration::from_secs(120));
    let first = store.tier_run().await.unwrap();
    assert_eq!(first.packages, std::slice::from_ref(&quick.id));
    assert_eq!(
        first.blobs, 1,
        "its own file (its manifest is in the database)"
    );
    assert_eq!(store.package(&quick.id).await.unwrap().tier, Tier::Cold);
    assert_eq!(store.package(&slow.id).await.unwrap().tier, Tier::Hot);
    let (tier, cold_at) = tier_of(&store, &BlobId::of(&own)).await;
    assert_eq!(tier, Tier::Cold);
    assert_eq!(tier_of(&store, &BlobId::of(&shared)).await.0, Tier::Hot);
    // The bytes are in the cold backend, and no longer in the hot one.
    let cold = store.cold_backend().unwrap();
    assert_eq!(cold.stat(&cold_at).await.unwrap(), Some(own.len() as u64));
    let hot_loc = {
        let hot = store.blob_backend();
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = hot.list_after(&after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.clone();
            all.extend(page);
        }
        all
    };
    assert_eq!(hot_loc.len(), 2, "shared and late stay hot: {hot_loc:?}");
    // Reads are unchanged for clients, from either tier.
    assert!(read(&store, &quick.id, "own").await == own);
    assert!(read(&store, &quick.id, "shared").await == shared);
    store.manifest_bytes(&quick.id).await.unwrap();

    // The event names what moved and where.
    let events = store.events_after(0, 1000).await.unwrap();
    let last = artifactstore_core::event::Event::decode(&events.last().unwrap().bytes).unwrap();
    match last.data() {
        EventData::PackageTierChanged { tier, moved } => {
            assert_eq!(tier, "cold");
            assert!(
                moved
                    .iter()
                    .any(|m| m.blob == BlobId::of(&own) && m.location == cold_at)
            );
        }
        other => panic!("expected a tier change, got {other:?}"),
    }

    // A second run moves nothing; the slow package's turn comes later and
    // takes the shared blob with it.
    assert!(store.tier_run().await.unwrap().packages.is_empty());
    clock.advance(Duration::from_secs(2 * 86_400));
    let second = store.tier_run().await.unwrap();
    assert_eq!(second.packages, std::slice::from_ref(&slow.id));
    assert_eq!(second.blobs, 2, "shared and late");
    for d in [&own, &shared, &late] {
        assert_eq!(tier_of(&store, &BlobId::of(d)).await.0, Tier::Cold);
    }
    assert!(read(&store, &slow.id, "late").await == late);

    // A re-upload of cold bytes stores nothing new.
    let again = upload(&store, &shared).await;
    assert_eq!(tier_of(&store, &again).await.0, Tier::Cold);

    // Everything checks, and the views rebuild to the same tiers.
    let v = store.verify(true).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.findings);
    let before = store.package(&slow.id).await.unwrap();
    store.rebuild_views().await.unwrap();
    assert_eq!(store.package(&slow.id).await.unwrap(), before);
    assert_eq!(tier_of(&store, &BlobId::of(&own)).await.1, cold_at);

    // The collector deletes cold bytes like hot ones.
    clock.advance(Duration::from_secs(2 * 3600));
    store.sweep().await.unwrap();
    let gc = store
        .collect(
            &GcSettings {
                grace: Duration::ZERO,
                upload_expiry: Duration::from_secs(3600),
            },
            false,
        )
        .await
        .unwrap();
    assert!(gc.blobs.contains(&BlobId::of(&own)), "{gc:?}");
    assert_eq!(cold.stat(&cold_at).await.unwrap(), None);
    let v = store.verify(true).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.findings);
}

/// Bytes that no longer match their digest are not carried to the cold
/// tier: the run fails, the package stays hot, and nothing is left cold.
async fn a_corrupt_hot_blob_is_not_moved(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = pair.open_tiered(options(clock.clone())).await;
    let data = pattern(70_000, 9);
    let blob = upload(&store, &data).await;
    let p = store
        .create_package(&manifest("t/bad", &[("f", &data)]), "quick", "ci")
        .await
        .unwrap();
    let mut damaged = data.clone();
    damaged[12_345] ^= 0x10;
    let (_, location) = tier_of(&store, &blob).await;
    pair.overwrite_blob(&location, damaged).await;
    clock.advance(Duration::from_secs(120));
    let err = store.tier_run().await.unwrap_err();
    assert!(
        matches!(err, StoreError::CorruptBlob(d) if d == blob.sha256_digest()),
        "{err:?}"
    );
    assert_eq!(store.package(&p.id).await.unwrap().tier, Tier::Hot);
    assert_eq!(tier_of(&store, &blob).await.0, Tier::Hot);
    let cold = store.cold_backend().unwrap();
    assert!(
        cold.list_after("", 10).await.unwrap().is_empty(),
        "nothing left cold"
    );
    assert!(cold.staging_list().await.unwrap().is_empty());
}

/// Moves racing a collector that removes cold bytes no row names: a move
/// must never record a cold location whose bytes the collector took
/// between the copy and the commit.
async fn moves_racing_a_collector_lose_no_bytes(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = Arc::new(pair.open_tiered(options(clock.clone())).await);
    let mut packages = Vec::new();
    for n in 0..40u8 {
        let data = pattern(2_000 + usize::from(n), n);
        upload(&store, &data).await;
        let p = store
            .create_package(
                &manifest(&format!("t/race{n}"), &[("f", &data)]),
                "quick",
                "ci",
            )
            .await
            .unwrap();
        packages.push((p.id, data));
    }
    clock.advance(Duration::from_secs(120));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let no_grace = GcSettings {
                grace: Duration::ZERO,
                upload_expiry: Duration::from_secs(3600),
            };
            let mut runs = 0u32;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                // On PostgreSQL a leader lock frees a moment after its
                // holder lets go, so a run right after one may find it busy.
                match store.collect(&no_grace, false).await {
                    Ok(_) => runs += 1,
                    Err(StoreError::CollectorBusy) => tokio::task::yield_now().await,
                    Err(e) => panic!("collection failed: {e}"),
                }
            }
            runs
        })
    };
    let mut moved = 0;
    while moved < packages.len() {
        moved += store.tier_run().await.unwrap().packages.len();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(collector.await.unwrap() > 0);
    for (id, data) in &packages {
        assert_eq!(store.package(id).await.unwrap().tier, Tier::Cold);
        assert!(read(&store, id, "f").await == *data, "{id}");
    }
    let v = store.verify(true).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.findings);
}

async fn without_a_cold_tier_a_run_is_refused(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let store = pair.open(options(clock)).await;
    let err = store.tier_run().await.unwrap_err();
    assert!(matches!(err, StoreError::NoColdTier));
    assert_eq!(err.code(), "no-cold-tier");
}

artifactstore_store::on_both_pairs!(
    packages_move_to_the_cold_tier_with_age,
    a_corrupt_hot_blob_is_not_moved,
    moves_racing_a_collector_lose_no_bytes,
    without_a_cold_tier_a_run_is_refused,
);
