//! The retention lifecycle in the engine, with a manual clock: years pass
//! in microseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::Timestamp;
use artifactstore_core::event::{Event, EventData};
use artifactstore_core::manifest::Manifest;
use artifactstore_core::retention::{ClassRule, shipped_classes};
use artifactstore_store::clock::ManualClock;
use artifactstore_store::meta::PackageFilter;
use artifactstore_store::testing::TestPair;
use artifactstore_store::{Store, StoreError, StoreOptions};

const T0: &str = "2026-11-28T11:15:20.123456Z";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

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

async fn package(store: &Store, class: &str) -> String {
    let m = Manifest::new("team/app".into(), vec![], BTreeMap::new()).unwrap();
    store.create_package(&m, class, "ci").await.unwrap().id
}

async fn eligible(store: &Store, id: &str) -> bool {
    store
        .package(id)
        .await
        .unwrap()
        .retention
        .eligible_for_deletion
}

async fn history(store: &Store, id: &str) -> Vec<&'static str> {
    store
        .retention_history(id)
        .await
        .unwrap()
        .iter()
        .map(|e| Event::decode(&e.bytes).unwrap().type_name())
        .collect()
}

/// The seed's lifecycle: extended once, held, expiry passes, still
/// ineligible, released, swept, eligible: once per transition.
async fn the_lifecycle_from_default_to_eligible(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(ts(T0)));
    let store = open(&pair, clock.clone()).await;
    let id = package(&store, "release-evidence").await;
    let created = store.package(&id).await.unwrap();
    let three_years = created.retention.current_expires_at.unwrap();

    let extended = store
        .extend_retention(
            &id,
            three_years.checked_add_micros(86_400_000_000).unwrap(),
            "audit asked for a day more",
            "records",
        )
        .await
        .unwrap();
    assert_eq!(
        extended.retention.current_expires_at,
        Some(three_years.checked_add_micros(86_400_000_000).unwrap())
    );
    let hold = store
        .apply_hold(&id, "quarterly review", "legal")
        .await
        .unwrap();
    assert_eq!(store.retention(&id).await.unwrap().1, vec![hold.clone()]);

    // Four years later the expiry has long passed; the hold keeps it.
    clock.advance(Duration::from_secs(4 * 365 * 86_400));
    assert_eq!(store.sweep().await.unwrap().marked, 0);
    assert!(!eligible(&store, &id).await);

    let released = store
        .release_hold(&id, &hold.hold_id, "review closed", "legal")
        .await
        .unwrap();
    assert_eq!(released.released.unwrap().by, "legal");
    assert!(store.retention(&id).await.unwrap().1.is_empty());
    assert_eq!(store.sweep().await.unwrap().marked, 1);
    let p = store.package(&id).await.unwrap();
    assert!(p.retention.eligible_for_deletion);
    assert!(p.retention.last_eligibility_seq.is_some());
    assert_eq!(
        store.sweep().await.unwrap().marked,
        0,
        "once per transition"
    );

    assert_eq!(
        history(&store, &id).await,
        [
            "v1.retention.default_applied",
            "v1.retention.extended",
            "v1.retention.hold_applied",
            "v1.retention.hold_released",
            "v1.retention.deletion_eligible",
        ]
    );
    let last = Event::decode(
        &store
            .retention_history(&id)
            .await
            .unwrap()
            .last()
            .unwrap()
            .bytes,
    )
    .unwrap();
    assert!(
        matches!(last.data(), EventData::RetentionDeletionEligible { evaluated_at, .. } if *evaluated_at == clock_now(&clock))
    );
    assert!(
        store.verify(false).await.unwrap().is_ok(),
        "the views equal a replay"
    );
}

fn clock_now(clock: &ManualClock) -> Timestamp {
    use artifactstore_store::clock::Clock;
    clock.now()
}

async fn a_hold_or_an_extension_makes_an_eligible_package_ineligible_at_once(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(ts(T0)));
    let store = open(&pair, clock.clone()).await;
    let id = package(&store, "ci-short").await;
    clock.advance(Duration::from_secs(3));
    assert_eq!(store.sweep().await.unwrap().marked, 1);
    assert!(eligible(&store, &id).await);

    let hold = store.apply_hold(&id, "incident 42", "sre").await.unwrap();
    assert!(
        !eligible(&store, &id).await,
        "a hold makes it ineligible in the same transaction"
    );
    store
        .release_hold(&id, &hold.hold_id, "closed", "sre")
        .await
        .unwrap();
    assert_eq!(store.sweep().await.unwrap().marked, 1, "a new transition");

    let far = ts("2030-01-01T00:00:00.000000Z");
    store
        .extend_retention(&id, far, "keep for the audit", "records")
        .await
        .unwrap();
    assert!(
        !eligible(&store, &id).await,
        "an extension makes it ineligible in the same transaction"
    );
    assert_eq!(store.sweep().await.unwrap().marked, 0);
    let only = PackageFilter {
        eligible: Some(true),
        ..Default::default()
    };
    assert!(store.packages(&only, 0, 10).await.unwrap().items.is_empty());
}

async fn holds_are_independent(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(ts(T0)));
    let store = open(&pair, clock.clone()).await;
    let id = package(&store, "ci-short").await;
    let a = store.apply_hold(&id, "legal", "l").await.unwrap();
    let b = store.apply_hold(&id, "finance", "f").await.unwrap();
    assert_ne!(a.hold_id, b.hold_id);
    assert_eq!(store.package(&id).await.unwrap().retention.active_holds, 2);
    clock.advance(Duration::from_secs(10));
    store
        .release_hold(&id, &a.hold_id, "done", "l")
        .await
        .unwrap();
    assert_eq!(
        store.sweep().await.unwrap().marked,
        0,
        "the other hold still stands"
    );
    assert_eq!(
        store
            .retention(&id)
            .await
            .unwrap()
            .1
            .iter()
            .map(|h| &h.hold_id)
            .collect::<Vec<_>>(),
        [&b.hold_id]
    );
    store
        .release_hold(&id, &b.hold_id, "done", "f")
        .await
        .unwrap();
    assert_eq!(store.sweep().await.unwrap().marked, 1);
}

async fn refused_changes_write_nothing(pair: TestPair) {
    let clock = Arc::new(ManualClock::new(ts(T0)));
    let store = open(&pair, clock).await;
    let id = package(&store, "scratch").await;
    let forever = package(&store, "permanent-record").await;
    let current = store
        .package(&id)
        .await
        .unwrap()
        .retention
        .current_expires_at
        .unwrap();
    let later = current.checked_add_micros(1).unwrap();
    let before = store.events_after(0, 1000).await.unwrap().len();
    let missing = "01936f2e-0000-7000-8000-000000000000";

    let cases: Vec<(StoreError, &str)> = vec![
        (
            store
                .extend_retention(&id, current, "r", "x")
                .await
                .unwrap_err(),
            "extension-not-later",
        ),
        (
            store
                .extend_retention(&id, ts(T0), "r", "x")
                .await
                .unwrap_err(),
            "extension-not-later",
        ),
        (
            store
                .extend_retention(&id, later, "  ", "x")
                .await
                .unwrap_err(),
            "reason-required",
        ),
        (
            store
                .extend_retention(&forever, later, "r", "x")
                .await
                .unwrap_err(),
            "retention-permanent",
        ),
        (
            store
                .extend_retention(missing, later, "r", "x")
                .await
                .unwrap_err(),
            "package-not-found",
        ),
        (
            store.apply_hold(&id, "", "x").await.unwrap_err(),
            "reason-required",
        ),
        (
            store.apply_hold(missing, "r", "x").await.unwrap_err(),
            "package-not-found",
        ),
        (
            store
                .release_hold(&id, "no-such-hold", "r", "x")
                .await
                .unwrap_err(),
            "hold-not-found",
        ),
    ];
    for (err, code) in &cases {
        assert_eq!(err.code(), *code, "{err}");
    }
    let hold = store.apply_hold(&id, "r", "x").await.unwrap();
    store
        .release_hold(&id, &hold.hold_id, "r", "x")
        .await
        .unwrap();
    let twice = store
        .release_hold(&id, &hold.hold_id, "r", "x")
        .await
        .unwrap_err();
    assert_eq!(twice.code(), "hold-already-released");
    assert_eq!(
        store.events_after(0, 1000).await.unwrap().len(),
        before + 2,
        "only the hold and its release"
    );
}

/// Several processes sweeping the same database at the same moment: each
/// transition is recorded exactly once.
async fn concurrent_sweepers_record_each_transition_once(pair: TestPair) {
    const PACKAGES: usize = 1200;
    let clock = Arc::new(ManualClock::new(ts(T0)));
    let first = Arc::new(open(&pair, clock.clone()).await);
    // Several packages per transaction would be faster; one each is what
    // clients do.
    for _ in 0..PACKAGES {
        package(&first, "ci-short").await;
    }
    let kept = package(&first, "scratch").await;
    clock.advance(Duration::from_secs(60));
    // A second engine on the same files stands in for a second process.
    let second = Arc::new(open(&pair, clock.clone()).await);
    let sweepers: Vec<_> = (0..6)
        .map(|i| {
            let store = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move { store.sweep().await.unwrap().marked })
        })
        .collect();
    let mut marked = 0;
    for s in sweepers {
        marked += s.await.unwrap();
    }
    assert_eq!(marked as usize, PACKAGES);
    let eligible_events = first
        .events_after(0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            Event::decode(&e.bytes).unwrap().type_name() == "v1.retention.deletion_eligible"
        })
        .count();
    assert_eq!(eligible_events, PACKAGES, "exactly one event per package");
    assert!(!eligible(&first, &kept).await);
    println!("6 concurrent sweepers on 2 engines marked {marked} packages once each");
}

artifactstore_store::on_both_pairs!(
    the_lifecycle_from_default_to_eligible,
    a_hold_or_an_extension_makes_an_eligible_package_ineligible_at_once,
    holds_are_independent,
    refused_changes_write_nothing,
    concurrent_sweepers_record_each_transition_once,
);
