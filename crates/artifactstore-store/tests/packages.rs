//! Packages in the engine: creation with its events and views, the
//! reference check, listing with cursors, manifests and files.

use std::collections::BTreeMap;
use std::sync::Arc;

use artifactstore_core::event::{ChainVerifier, EventData};
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_core::retention::ClassRule;
use artifactstore_core::{BlobId, Timestamp};
use artifactstore_store::clock::ManualClock;
use artifactstore_store::conformance::pattern;
use artifactstore_store::meta::{PackageFilter, PackageRecord};
use artifactstore_store::testing::TestPair;
use artifactstore_store::{Store, StoreError, StoreOptions};
use bytes::Bytes;
use futures::StreamExt;

struct Fixture {
    _pair: TestPair,
    store: Arc<Store>,
    clock: Arc<ManualClock>,
}

const T0: &str = "2026-11-28T11:15:20.123456Z";

async fn fixture(pair: TestPair) -> Fixture {
    let clock = Arc::new(ManualClock::new(T0.parse().unwrap()));
    let mut classes = artifactstore_core::retention::shipped_classes();
    classes.insert("ci-short".into(), ClassRule::Period { seconds: 2 });
    let options = StoreOptions {
        classes,
        clock: clock.clone(),
        ..StoreOptions::default()
    };
    let store = Arc::new(pair.open(options).await);
    Fixture {
        _pair: pair,
        store,
        clock,
    }
}

async fn upload(store: &Store, data: &[u8]) -> BlobId {
    let id = BlobId::of(data);
    let body = futures::stream::once({
        let b = Bytes::copy_from_slice(data);
        async move { Ok(b) }
    })
    .boxed();
    store
        .put_blob(&[id.sha256_digest()], None, body, "ci")
        .await
        .unwrap();
    id
}

fn manifest(name: &str, files: &[(&str, &[u8])]) -> Manifest {
    let mut entries: Vec<FileEntry> = files
        .iter()
        .map(|(p, d)| FileEntry {
            path: (*p).into(),
            blob: BlobId::of(d),
            media_type: p.ends_with(".xml").then(|| "application/xml".to_owned()),
        })
        .collect();
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Manifest::new(name.into(), entries, BTreeMap::new()).unwrap()
}

async fn every_package(store: &Store) -> Vec<PackageRecord> {
    store
        .packages(&PackageFilter::default(), 0, 1000)
        .await
        .unwrap()
        .items
}

async fn event_types(store: &Store) -> Vec<&'static str> {
    let mut chain = ChainVerifier::new();
    store
        .events_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| chain.check(e.seq, &e.bytes, &e.hash).unwrap().type_name())
        .collect()
}

async fn creation_writes_both_events_and_the_views(pair: TestPair) {
    let f = fixture(pair).await;
    let log = pattern(5000, 1);
    upload(&f.store, &log).await;
    upload(&f.store, b"<testsuite/>").await;
    let m = manifest(
        "guide-board/runs",
        &[
            ("logs/run.log", &log),
            ("report/junit.xml", b"<testsuite/>"),
        ],
    );
    let p = f
        .store
        .create_package(&m, "release-evidence", "ci-bot")
        .await
        .unwrap();

    assert_eq!(p.name, "guide-board/runs");
    assert_eq!((p.file_count, p.total_size), (2, 5000 + 12));
    assert_eq!(p.created_by, "ci-bot");
    assert_eq!(p.created_at, T0.parse::<Timestamp>().unwrap());
    let three_years = 3 * 31_557_600 * 1_000_000;
    assert_eq!(
        p.retention.current_expires_at,
        Some(p.created_at.checked_add_micros(three_years).unwrap())
    );
    assert!(!p.retention.eligible_for_deletion);
    assert_eq!(p.retention.active_holds, 0);
    let manifest_id = BlobId::of(&m.to_canonical_bytes());
    assert_eq!(
        (p.manifest_sha256, p.manifest_blake3),
        (manifest_id.sha256, manifest_id.blake3)
    );

    // Two file blobs, then the package's two events. The manifest is kept
    // in the database with its package, not as a blob.
    assert_eq!(
        event_types(&f.store).await,
        [
            "v1.blob.stored",
            "v1.blob.stored",
            "v1.package.created",
            "v1.retention.default_applied"
        ]
    );
    assert!(matches!(
        f.store.blob(&manifest_id.sha256_digest()).await,
        Err(StoreError::BlobNotFound(_))
    ));
    let events = f.store.events_after(2, 10).await.unwrap();
    let created = artifactstore_core::event::Event::decode(&events[0].bytes).unwrap();
    assert_eq!(created.subject(), p.id);
    assert_eq!(created.actor(), "ci-bot");
    assert!(
        matches!(created.data(), EventData::PackageCreated { retention_class, .. } if retention_class == "release-evidence")
    );

    let (_, bytes) = f.store.manifest_bytes(&p.id).await.unwrap();
    assert_eq!(bytes, m.to_canonical_bytes());
    let (file, blob) = f
        .store
        .package_file(&p.id, "report/junit.xml")
        .await
        .unwrap();
    assert_eq!(file.media_type.as_deref(), Some("application/xml"));
    assert_eq!(blob.blob, BlobId::of(b"<testsuite/>"));
    assert!(matches!(
        f.store.package_file(&p.id, "report").await,
        Err(StoreError::FileNotFound { .. })
    ));
    assert!(matches!(
        f.store
            .package_file("01936f2e-0000-7000-8000-000000000000", "x")
            .await,
        Err(StoreError::PackageNotFound(_))
    ));
}

async fn expiry_is_fixed_from_the_class_at_creation(pair: TestPair) {
    let f = fixture(pair).await;
    upload(&f.store, b"x").await;
    let m = manifest("a", &[("x", b"x")]);
    let short = f.store.create_package(&m, "ci-short", "ci").await.unwrap();
    assert_eq!(
        short.retention.current_expires_at,
        Some("2026-11-28T11:15:22.123456Z".parse().unwrap())
    );
    f.clock.advance(std::time::Duration::from_secs(3600));
    let later = f.store.create_package(&m, "ci-short", "ci").await.unwrap();
    assert_eq!(
        later.retention.current_expires_at,
        Some("2026-11-28T12:15:22.123456Z".parse().unwrap())
    );
    let permanent = f
        .store
        .create_package(&m, "permanent-record", "ci")
        .await
        .unwrap();
    assert_eq!(permanent.retention.current_expires_at, None);
    assert!(!permanent.retention.eligible_for_deletion);
    // The same manifest makes distinct packages with one manifest blob.
    assert_ne!(short.id, later.id);
    assert_eq!(short.manifest_sha256, later.manifest_sha256);
}

async fn an_empty_package_is_allowed(pair: TestPair) {
    let f = fixture(pair).await;
    let p = f
        .store
        .create_package(&manifest("empty", &[]), "scratch", "ci")
        .await
        .unwrap();
    assert_eq!((p.file_count, p.total_size), (0, 0));
}

async fn refused_creations_write_nothing(pair: TestPair) {
    let f = fixture(pair).await;
    upload(&f.store, b"present").await;
    let before = event_types(&f.store).await.len();

    let m = manifest(
        "a",
        &[
            ("a", b"present"),
            ("b", b"absent-1"),
            ("c", b"absent-2"),
            ("d", b"absent-1"),
        ],
    );
    match f
        .store
        .create_package(&m, "scratch", "ci")
        .await
        .unwrap_err()
    {
        StoreError::MissingBlobs(missing) => {
            let mut want = vec![
                BlobId::of(b"absent-1").sha256_digest(),
                BlobId::of(b"absent-2").sha256_digest(),
            ];
            want.sort();
            let mut got = missing.clone();
            got.sort();
            assert_eq!(got, want, "each missing blob named once");
        }
        other => panic!("expected missing blobs, got {other:?}"),
    }

    let m = manifest("a", &[("a", b"present")]);
    let err = f
        .store
        .create_package(&m, "forever-ish", "ci")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownClass { known, .. } if known.contains(&"scratch".to_owned())),
        "{err:?}"
    );

    // A manifest that names a stored blob with the wrong size.
    let mut wrong = m.files()[0].clone();
    wrong.blob.size += 1;
    let m = Manifest::new("a".into(), vec![wrong], BTreeMap::new()).unwrap();
    assert!(matches!(
        f.store.create_package(&m, "scratch", "ci").await,
        Err(StoreError::ManifestBlobMismatch(paths)) if paths == ["a"]
    ));
    assert_eq!(
        event_types(&f.store).await.len(),
        before,
        "no event, not even a manifest blob"
    );
}

async fn listing_filters_and_pages_stay_correct_while_packages_are_added(pair: TestPair) {
    let f = fixture(pair).await;
    upload(&f.store, b"x").await;
    let m1 = manifest("team/a", &[("x", b"x")]);
    let m2 = manifest("team/b", &[("x", b"x")]);
    for i in 0..10 {
        let (m, class) = if i % 2 == 0 {
            (&m1, "scratch")
        } else {
            (&m2, "build-output")
        };
        f.store.create_package(m, class, "ci").await.unwrap();
    }
    let only_a = PackageFilter {
        name: Some("team/a".into()),
        ..Default::default()
    };
    let page = f.store.packages(&only_a, 0, 100).await.unwrap();
    assert_eq!(page.items.len(), 5);
    assert!(
        page.items
            .iter()
            .all(|p| p.name == "team/a" && p.retention_class == "scratch")
    );
    let by_class = PackageFilter {
        retention_class: Some("build-output".into()),
        ..Default::default()
    };
    assert_eq!(
        f.store
            .packages(&by_class, 0, 100)
            .await
            .unwrap()
            .items
            .len(),
        5
    );
    let eligible = PackageFilter {
        eligible: Some(true),
        ..Default::default()
    };
    assert!(
        f.store
            .packages(&eligible, 0, 100)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Page through in threes while a writer keeps adding packages.
    let writer = {
        let store = f.store.clone();
        let m = m1.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                store.create_package(&m, "scratch", "ci").await.unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        // Read `finished` first: an empty page taken after it was true
        // means everything the writer added has been seen.
        let finished = writer.is_finished();
        let page = f
            .store
            .packages(&PackageFilter::default(), cursor, 3)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|p| p.created_seq));
        match page.items.last() {
            Some(last) => cursor = last.created_seq,
            None if finished => break,
            None => tokio::task::yield_now().await,
        }
    }
    writer.await.unwrap();
    assert_eq!(seen.len(), 40, "every package exactly once");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in creation order, no duplicates"
    );
}

/// Creations that arrive together are committed together (group commit);
/// each still gets its own outcome: a package with a missing blob is
/// refused alone, identical manifests make two packages over one stored
/// manifest, and every package is in the log exactly once.
async fn concurrent_creations_each_get_their_own_outcome(pair: TestPair) {
    let f = fixture(pair).await;
    let mut blobs = Vec::new();
    for i in 0..8u8 {
        let data = pattern(100 + usize::from(i), i);
        upload(&f.store, &data).await;
        blobs.push(data);
    }
    let mut tasks = Vec::new();
    for i in 0..48usize {
        let store = f.store.clone();
        let data = blobs[i % blobs.len()].clone();
        tasks.push(tokio::spawn(async move {
            // Every sixth refers to bytes never uploaded; pairs i, i + 24
            // of the same kind share a manifest.
            let name = format!("team/app{}", i % 24);
            let m = if i % 6 == 5 {
                manifest(&name, &[("f.bin", b"never uploaded")])
            } else {
                manifest(&name, &[("f.bin", &data)])
            };
            (i, store.create_package(&m, "scratch", "ci").await)
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        match outcome {
            Ok(p) if i % 6 != 5 => created.push(p),
            Err(StoreError::MissingBlobs(missing)) if i % 6 == 5 => {
                assert_eq!(missing, [BlobId::of(b"never uploaded").sha256_digest()]);
            }
            other => panic!("creation {i}: {other:?}"),
        }
    }
    assert_eq!(created.len(), 40);
    let listed = every_package(&f.store).await;
    let mut ids: Vec<&str> = listed.iter().map(|p| p.id.as_str()).collect();
    ids.sort_unstable();
    let mut answered: Vec<&str> = created.iter().map(|p| p.id.as_str()).collect();
    answered.sort_unstable();
    assert_eq!(ids, answered, "the log holds exactly the answered packages");
    // 8 file blobs, two events per package (20 distinct manifests, which
    // are not blobs).
    let types = event_types(&f.store).await;
    let count = |t: &str| types.iter().filter(|x| **x == t).count();
    assert_eq!(count("v1.blob.stored"), 8);
    assert_eq!(count("v1.package.created"), 40);
    assert_eq!(count("v1.retention.default_applied"), 40);
}

/// A creation whose caller goes away may be leading a group that others
/// wait on: they are still answered, and no package is created twice.
async fn a_cancelled_creation_leaves_the_others_whole(pair: TestPair) {
    let f = fixture(pair).await;
    let data = pattern(300, 9);
    upload(&f.store, &data).await;
    let mut cancelled = Vec::new();
    let mut answered = Vec::new();
    for round in 0..24usize {
        let mut tasks = Vec::new();
        for i in 0..6usize {
            let store = f.store.clone();
            let m = manifest(&format!("team/r{round}-{i}"), &[("f.bin", &data)]);
            tasks.push(tokio::spawn(async move {
                store.create_package(&m, "scratch", "ci").await
            }));
        }
        // Cut one short after a varying time: sometimes before it queued,
        // sometimes while it leads a group, sometimes after it committed.
        let m = manifest(&format!("team/r{round}-cut"), &[("f.bin", &data)]);
        let after = std::time::Duration::from_micros(250 * round as u64);
        let _ = tokio::time::timeout(after, f.store.create_package(&m, "scratch", "ci")).await;
        cancelled.push(format!("team/r{round}-cut"));
        for task in tasks {
            answered.push(
                task.await
                    .unwrap()
                    .expect("a creation beside a cancelled one")
                    .name,
            );
        }
    }
    // A later creation drains anything left queued.
    let last = manifest("team/last", &[("f.bin", &data)]);
    answered.push(
        f.store
            .create_package(&last, "scratch", "ci")
            .await
            .unwrap()
            .name,
    );
    let listed = every_package(&f.store).await;
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    for name in &answered {
        assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name}");
    }
    for name in &cancelled {
        assert!(
            names.iter().filter(|n| *n == name).count() <= 1,
            "{name} twice"
        );
    }
    assert_eq!(
        names.len(),
        answered.len()
            + cancelled
                .iter()
                .filter(|c| names.contains(&c.as_str()))
                .count()
    );
}

/// A store made before manifests were kept in the database holds each as
/// a blob. Such a package still serves its manifest, verifies and
/// rebuilds, and the rebuild copies its manifest into the database.
#[tokio::test]
async fn a_manifest_stored_as_a_blob_is_still_read() {
    use sqlx::Connection as _;
    let pair = TestPair::new(artifactstore_store::testing::PairKind::Embedded).unwrap();
    let url = pair.metadata_url();
    let f = fixture(pair).await;
    let data = pattern(300, 1);
    upload(&f.store, &data).await;
    let m = manifest("team/old", &[("f.bin", &data)]);
    let bytes = m.to_canonical_bytes();
    // Stored as a blob first, as creation did then; its row taken out of
    // the database afterwards.
    upload(&f.store, &bytes).await;
    let p = f.store.create_package(&m, "scratch", "ci").await.unwrap();
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let manifests = async |db: &mut sqlx::SqliteConnection| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM manifests")
            .fetch_one(db)
            .await
            .unwrap()
    };
    sqlx::query("DELETE FROM manifests")
        .execute(&mut db)
        .await
        .unwrap();

    assert_eq!(f.store.manifest_bytes(&p.id).await.unwrap().1, bytes);
    let v = f.store.verify(true).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.findings);
    assert_eq!(manifests(&mut db).await, 0);
    f.store.rebuild_views().await.unwrap();
    assert_eq!(manifests(&mut db).await, 1);
    assert_eq!(f.store.manifest_bytes(&p.id).await.unwrap().1, bytes);
}

artifactstore_store::on_both_pairs!(
    concurrent_creations_each_get_their_own_outcome,
    a_cancelled_creation_leaves_the_others_whole,
    creation_writes_both_events_and_the_views,
    expiry_is_fixed_from_the_class_at_creation,
    an_empty_package_is_allowed,
    refused_creations_write_nothing,
    listing_filters_and_pages_stay_correct_while_packages_are_added,
);
