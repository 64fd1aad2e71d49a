//! Conformance suites for the backend traits. Every implementation runs the
//! same suite from its own test (as the `object_store` crate runs one
//! integration module against every store), so a new backend is correct
//! exactly when it passes here. Each case gets a fresh backend from the
//! factory. Failures panic with the name of the case.

use std::future::Future;
use std::sync::Arc;

use artifactstore_core::event::{ChainVerifier, Event, EventData, EventDraft, GENESIS_PREV};
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_core::{BlobId, Timestamp};
use bytes::Bytes;
use futures::StreamExt;

use crate::blob::{BlobBackend, BlobError, ByteStream, StagingKind};
use crate::hashing::HashState;
use crate::meta::{MetaError, MetadataStore, PackageFilter, StoredManifest, Tier, UploadSession};

async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("stream chunk"));
    }
    out
}

/// Deterministic test bytes (no RNG needed to make them distinct).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Stages `data` as a session's staging object, in `chunk`-byte writes.
async fn stage(b: &dyn BlobBackend, id: &str, data: &[u8], chunk: usize) -> u64 {
    stage_as(b, id, data, chunk, StagingKind::Session).await
}

async fn stage_as(
    b: &dyn BlobBackend,
    id: &str,
    data: &[u8],
    chunk: usize,
    kind: StagingKind,
) -> u64 {
    b.staging_create(id, kind).await.expect("staging_create");
    append(b, id, &HashState::new(), data, chunk).await.len()
}

/// Appends `data` to staging `id`, whose bytes so far `before` covers;
/// returns the state over everything staged.
async fn append(
    b: &dyn BlobBackend,
    id: &str,
    before: &HashState,
    data: &[u8],
    chunk: usize,
) -> HashState {
    let mut hashing = before.clone().start();
    let mut w = b.staging_append(id).await.expect("staging_append");
    for c in data.chunks(chunk.max(1)) {
        let c = Bytes::copy_from_slice(c);
        hashing.feed(c.clone()).await.expect("hash");
        w.write(c).await.expect("write");
    }
    let state = hashing.stop().await.expect("hash");
    let len = w.finish(&state).await.expect("finish");
    assert_eq!(len, state.len(), "{id}: finish reports the staged length");
    state
}

/// The digest state over what is staged, as the engine rebuilds it: from
/// the backend's checkpoint, or by reading the bytes back.
async fn staged_state(b: &dyn BlobBackend, id: &str) -> HashState {
    if let Some(state) = b.staging_resume(id).await.expect("resume") {
        return state;
    }
    let mut hashing = HashState::new().start();
    let mut s = b.staging_read(id).await.expect("read back");
    while let Some(chunk) = s.next().await {
        hashing.feed(chunk.expect("chunk")).await.expect("hash");
    }
    hashing.stop().await.expect("hash")
}

/// Runs every blob-backend case. `part` is the size at which the backend
/// splits uploads into parts, if it does (cases cross it).
pub async fn blob_backend<F, Fut>(make: F, part: Option<usize>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn BlobBackend>>,
{
    staging_round_trip(&*make().await).await;
    staging_appends_across_writers(&*make().await).await;
    if let Some(part) = part {
        parts_and_tails(&*make().await, part).await;
    }
    commit_then_read_whole_and_ranges(&*make().await).await;
    committing_the_same_blob_twice(&*make().await).await;
    empty_blob(&*make().await).await;
    missing_objects(&*make().await).await;
    listing_trash_and_deletion(&*make().await).await;
    putting_at_a_given_location(&*make().await, part).await;
    make().await.ping().await.expect("ping");
}

async fn staging_round_trip(b: &dyn BlobBackend) {
    // Large enough for the fs writer to flush early, more than once.
    let data = pattern(9 << 20 | 12345, 1);
    let len = stage(b, "s-round-trip", &data, 70_001).await;
    assert_eq!(len, data.len() as u64, "staging_round_trip: finish length");
    assert_eq!(b.staging_len("s-round-trip").await.expect("len"), Some(len));
    let state = staged_state(b, "s-round-trip").await;
    assert_eq!(
        state.finish(),
        BlobId::of(&data),
        "staging_round_trip: staged bytes differ"
    );
    b.staging_delete("s-round-trip").await.expect("delete");
    assert_eq!(b.staging_len("s-round-trip").await.expect("len"), None);
}

async fn staging_appends_across_writers(b: &dyn BlobBackend) {
    let data = pattern(100_000, 2);
    stage(b, "s-append", &data[..40_000], 4096).await;
    let before = staged_state(b, "s-append").await;
    assert_eq!(before.len(), 40_000);
    // An aborted append leaves the staging object as it was.
    let mut w = b.staging_append("s-append").await.expect("reopen");
    w.write(Bytes::from_static(b"refused bytes"))
        .await
        .expect("write");
    w.abort().await.expect("abort");
    assert_eq!(b.staging_len("s-append").await.expect("len"), Some(40_000));
    let after = append(
        b,
        "s-append",
        &staged_state(b, "s-append").await,
        &data[40_000..],
        7000,
    )
    .await;
    assert_eq!(after.len(), 100_000, "staging_appends_across_writers");
    assert_eq!(b.staging_len("s-append").await.expect("len"), Some(100_000));
    let blob = BlobId::of(&data);
    assert_eq!(
        staged_state(b, "s-append").await.finish(),
        blob,
        "appends: staged bytes differ"
    );
    let loc = b.staging_commit("s-append", &blob).await.expect("commit");
    assert!(collect(b.read(&loc, None).await.expect("read")).await == data);
}

/// Appends smaller and larger than a part, resumed from the backend's own
/// state each time, and both kinds of staging: the committed blob is the
/// bytes, in order.
async fn parts_and_tails(b: &dyn BlobBackend, part: usize) {
    let data = pattern(2 * part + part / 2 + 17, 5);
    for kind in [StagingKind::Session, StagingKind::Request] {
        let id = format!("s-parts-{kind:?}");
        b.staging_create(&id, kind).await.expect("create");
        let cuts = [0, 1000, part - 10, part + 5, 2 * part + 3, data.len()];
        let mut state = HashState::new();
        for w in cuts.windows(2) {
            if kind == StagingKind::Session {
                state = staged_state(b, &id).await;
                assert_eq!(state.len(), w[0] as u64, "{id}: resumed length");
            }
            state = append(b, &id, &state, &data[w[0]..w[1]], 100_000).await;
        }
        let blob = BlobId::of(&data);
        assert_eq!(state.finish(), blob);
        let loc = b.staging_commit(&id, &blob).await.expect("commit");
        b.staging_delete(&id).await.expect("delete staging");
        assert_eq!(b.stat(&loc).await.expect("stat"), Some(data.len() as u64));
        let back = collect(b.read(&loc, None).await.expect("read")).await;
        assert!(back == data, "{id}: committed bytes differ");
        let r = (part as u64 - 3)..(part as u64 + 3);
        let mid = collect(b.read(&loc, Some(r.clone())).await.expect("range")).await;
        assert!(
            mid == data[r.start as usize..r.end as usize],
            "{id}: range across a part"
        );
    }
}

async fn commit_then_read_whole_and_ranges(b: &dyn BlobBackend) {
    // Large enough for the fs backend to read it whole, and its longest
    // range, on a thread of its own, in growing chunks.
    let data = pattern(17 << 20 | 777, 3);
    let blob = BlobId::of(&data);
    stage(b, "s-commit", &data, 65_536).await;
    let loc = b.staging_commit("s-commit", &blob).await.expect("commit");
    b.staging_delete("s-commit").await.expect("delete staging");
    assert_eq!(b.stat(&loc).await.expect("stat"), Some(data.len() as u64));
    let whole = collect(b.read(&loc, None).await.expect("read")).await;
    assert!(whole == data, "commit: whole read differs");
    for (start, end) in [
        (0u64, 1u64),
        (10, 20),
        (65_535, 65_537),
        (1_000_000, 1 << 20),
        (100_000, 2_500_001),
        (77, 17 << 20 | 700),
        (17 << 20, 17 << 20 | 777),
    ] {
        let part = collect(b.read(&loc, Some(start..end)).await.expect("range")).await;
        assert!(
            part == data[start as usize..end as usize],
            "range {start}..{end} differs"
        );
    }
}

async fn committing_the_same_blob_twice(b: &dyn BlobBackend) {
    let data = pattern(5000, 4);
    let blob = BlobId::of(&data);
    stage(b, "s-dup-1", &data, 1000).await;
    stage(b, "s-dup-2", &data, 1000).await;
    let l1 = b.staging_commit("s-dup-1", &blob).await.expect("commit 1");
    let l2 = b.staging_commit("s-dup-2", &blob).await.expect("commit 2");
    for loc in [&l1, &l2] {
        let back = collect(b.read(loc, None).await.expect("read")).await;
        assert!(back == data, "duplicate commit: bytes differ at {loc}");
    }
    // The staging object stays until it is deleted, and deleting it leaves
    // the blob.
    assert_eq!(b.staging_len("s-dup-2").await.expect("len"), Some(5000));
    b.staging_delete("s-dup-1").await.expect("delete");
    b.staging_delete("s-dup-2").await.expect("delete");
    assert!(collect(b.read(&l2, None).await.expect("read")).await == data);
    if b.fresh_locations() {
        assert_ne!(l1, l2, "fresh locations are distinct");
        return;
    }
    // Committing again after the bytes went away puts them back.
    stage(b, "s-dup-3", &data, 1000).await;
    let l3 = b.staging_commit("s-dup-3", &blob).await.expect("commit 3");
    b.delete(&l3).await.expect("delete blob");
    assert_eq!(b.stat(&l3).await.expect("stat"), None);
    b.staging_commit("s-dup-3", &blob)
        .await
        .expect("commit again");
    assert!(collect(b.read(&l3, None).await.expect("read")).await == data);
    b.staging_delete("s-dup-3").await.expect("delete");
    // Something else at the location (a damaged leftover) is replaced.
    let short = &data[..100];
    stage(b, "s-short", short, 100).await;
    b.delete(&l3).await.expect("delete blob");
    // Commit the short bytes under the full blob's identity: the backend
    // trusts the engine's digests and only checks the size it was given.
    b.staging_commit("s-short", &BlobId { size: 100, ..blob })
        .await
        .expect("commit short");
    stage(b, "s-dup-4", &data, 1000).await;
    let l4 = b
        .staging_commit("s-dup-4", &blob)
        .await
        .expect("commit over it");
    assert!(collect(b.read(&l4, None).await.expect("read")).await == data);
}

async fn empty_blob(b: &dyn BlobBackend) {
    let blob = BlobId::of(b"");
    assert_eq!(stage(b, "s-empty", b"", 1).await, 0);
    let loc = b.staging_commit("s-empty", &blob).await.expect("commit");
    assert_eq!(b.stat(&loc).await.expect("stat"), Some(0));
    assert!(
        collect(b.read(&loc, None).await.expect("read"))
            .await
            .is_empty()
    );
}

async fn missing_objects(b: &dyn BlobBackend) {
    assert_eq!(b.staging_len("s-none").await.expect("len"), None);
    assert!(matches!(
        b.staging_append("s-none").await,
        Err(BlobError::StagingNotFound(_))
    ));
    assert!(matches!(
        b.staging_read("s-none").await,
        Err(BlobError::StagingNotFound(_))
    ));
    assert!(matches!(
        b.staging_commit("s-none", &BlobId::of(b"x")).await,
        Err(BlobError::StagingNotFound(_))
    ));
    b.staging_delete("s-none")
        .await
        .expect("deleting a missing staging object is fine");
    let loc_of_absent = {
        // A location the backend itself would produce for a blob it never stored.
        let data = pattern(10, 9);
        stage(b, "s-probe", &data, 10).await;
        let loc = b
            .staging_commit("s-probe", &BlobId::of(&data))
            .await
            .expect("commit");
        b.staging_delete("s-probe").await.expect("delete staging");
        b.delete(&loc).await.expect("delete blob");
        loc
    };
    assert!(matches!(
        b.read(&loc_of_absent, None).await,
        Err(BlobError::NotFound(_))
    ));
    assert_eq!(b.stat(&loc_of_absent).await.expect("stat"), None);
    assert!(matches!(
        b.read("../../etc/passwd", None).await,
        Err(BlobError::InvalidLocation(_))
    ));
}

async fn commit_bytes(b: &dyn BlobBackend, id: &str, data: &[u8]) -> String {
    stage(b, id, data, 4096).await;
    b.staging_commit(id, &BlobId::of(data))
        .await
        .expect("commit")
}

/// What the collector needs: listing, two-phase deletion, outright deletion.
async fn listing_trash_and_deletion(b: &dyn BlobBackend) {
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(1000 + i, 20 + i as u8)).collect();
    let mut locs = Vec::new();
    for (i, d) in data.iter().enumerate() {
        locs.push(commit_bytes(b, &format!("s-list-{i}"), d).await);
    }
    let mut sorted = locs.clone();
    sorted.sort();
    assert_eq!(b.list_after("", 100).await.expect("list"), sorted);
    assert_eq!(
        b.list_after(&sorted[0], 100).await.expect("list"),
        sorted[1..]
    );
    assert_eq!(b.list_after("", 1).await.expect("list"), sorted[..1]);
    assert!(
        b.list_after(&sorted[2], 100)
            .await
            .expect("list")
            .is_empty()
    );

    stage(b, "s-open-1", b"x", 1).await;
    stage(b, "s-open-2", b"y", 1).await;
    let staged = b.staging_list().await.expect("staging list");
    assert!(staged.contains(&"s-open-1".to_owned()) && staged.contains(&"s-open-2".to_owned()));

    // Trash, then the same bytes committed again, then purge: the new copy stays.
    b.trash(&locs[0], 7).await.expect("trash");
    // Until the purge a backend may still serve the bytes, or not.
    match b.read(&locs[0], None).await {
        Err(BlobError::NotFound(_)) => {}
        Ok(s) => assert!(collect(s).await == data[0], "trashed bytes changed"),
        Err(e) => panic!("reading trashed bytes: {e}"),
    }
    let t0 = crate::blob::Trashed {
        location: locs[0].clone(),
        stored_seq: 7,
    };
    assert_eq!(
        b.trash_list().await.expect("trash list"),
        std::slice::from_ref(&t0)
    );
    let again = commit_bytes(b, "s-list-again", &data[0]).await;
    b.trash_purge(&t0).await.expect("purge");
    assert!(b.trash_list().await.expect("trash list").is_empty());
    assert!(collect(b.read(&again, None).await.expect("read")).await == data[0]);
    if again != locs[0] {
        assert!(matches!(
            b.read(&locs[0], None).await,
            Err(BlobError::NotFound(_))
        ));
    }

    // Trash, then restore: as before.
    b.trash(&locs[1], 9).await.expect("trash");
    let t1 = crate::blob::Trashed {
        location: locs[1].clone(),
        stored_seq: 9,
    };
    b.trash_restore(&t1).await.expect("restore");
    assert!(b.trash_list().await.expect("trash list").is_empty());
    assert!(collect(b.read(&locs[1], None).await.expect("read")).await == data[1]);

    b.delete(&locs[2]).await.expect("delete");
    assert_eq!(b.stat(&locs[2]).await.expect("stat"), None);
    b.delete(&locs[2])
        .await
        .expect("deleting a missing blob is fine");
    b.trash(&locs[2], 1)
        .await
        .expect("trashing a missing blob is fine");
}

/// Bytes stored where another store had them (a moved log keeps its
/// locations): the filesystem's digest paths and S3's upload keys alike.
async fn putting_at_a_given_location(b: &dyn BlobBackend, part: Option<usize>) {
    let big = pattern(part.map_or(3 << 20, |p| 2 * p + 5), 30);
    let small = pattern(5000, 31);
    for data in [&small, &big] {
        let blob = BlobId::of(data);
        let hex = hex::encode(blob.blake3);
        for location in [
            format!("blobs/blake3/{}/{}/{hex}", &hex[..2], &hex[2..4]),
            "blobs/01936f2e-0000-7000-8000-000000000001".to_owned(),
        ] {
            let body = futures::stream::iter(
                data.chunks(100_000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            )
            .boxed();
            b.put_at(&location, &blob, body).await.expect("put_at");
            assert_eq!(
                b.stat(&location).await.expect("stat"),
                Some(data.len() as u64)
            );
            assert!(collect(b.read(&location, None).await.expect("read")).await == *data);
            b.delete(&location).await.expect("delete");
        }
    }
    // Bytes that are not the blob's size are refused and leave nothing.
    let blob = BlobId::of(&small);
    let location = "blobs/01936f2e-0000-7000-8000-000000000002";
    let short = futures::stream::iter([Ok(Bytes::copy_from_slice(&small[..10]))]).boxed();
    assert!(b.put_at(location, &blob, short).await.is_err());
    assert_eq!(b.stat(location).await.expect("stat"), None);
}

fn blob_stored(n: u64) -> EventDraft {
    let blob = BlobId::of(&n.to_be_bytes());
    EventDraft {
        id: format!("01936f2e-0000-7000-8000-{n:012x}"),
        subject: blob.sha256_digest().to_string(),
        actor: "conformance".into(),
        at: Timestamp::from_unix_micros(1_800_000_000_000_000 + n as i64).expect("timestamp"),
        data: EventData::BlobStored {
            blob,
            location: format!("loc-{n}"),
        },
    }
}

/// Runs every metadata-backend case.
pub async fn metadata<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MetadataStore>>,
{
    empty_log(&*make().await).await;
    append_updates_log_head_and_views(&*make().await).await;
    dropped_transaction_leaves_nothing(&*make().await).await;
    concurrent_appends_are_gapless_and_chained(make().await).await;
    paging(&*make().await).await;
    package_views(&*make().await).await;
    package_needs_its_own_manifest(&*make().await).await;
    replaying_many_packages_at_once(&*make().await).await;
    sessions(&*make().await).await;
    collection_views(&*make().await).await;
    leader_lock_and_session_ages(&*make().await).await;
    make().await.ping().await.expect("ping");
}

async fn empty_log(m: &dyn MetadataStore) {
    assert_eq!(m.head().await.expect("head"), (0, GENESIS_PREV));
    assert!(m.events_after(0, 10).await.expect("events").is_empty());
}

async fn append_updates_log_head_and_views(m: &dyn MetadataStore) {
    let mut tx = m.begin().await.expect("begin");
    let e1 = tx.append(blob_stored(1), None).await.expect("append 1");
    let e2 = tx.append(blob_stored(2), None).await.expect("append 2");
    // Reads inside the transaction see its own writes.
    let d2 = BlobId::of(&2u64.to_be_bytes());
    assert!(
        tx.blob(&d2.blake3_digest())
            .await
            .expect("tx blob")
            .is_some()
    );
    tx.commit().await.expect("commit");
    assert_eq!((e1.seq(), e2.seq()), (1, 2));
    assert_eq!(e1.prev(), &GENESIS_PREV);
    assert_eq!(e2.prev(), e1.hash());
    assert_eq!(m.head().await.expect("head"), (2, *e2.hash()));
    for digest in [d2.sha256_digest(), d2.blake3_digest()] {
        let rec = m.blob(&digest).await.expect("blob").expect("blob row");
        assert_eq!(rec.blob, d2);
        assert_eq!(rec.location, "loc-2");
        assert_eq!(rec.stored_seq, 2);
    }
    let stored = m.events_after(0, 10).await.expect("events");
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].bytes, e2.canonical_bytes());
    assert_eq!(&stored[1].hash, e2.hash());
}

async fn dropped_transaction_leaves_nothing(m: &dyn MetadataStore) {
    {
        let mut tx = m.begin().await.expect("begin");
        tx.append(blob_stored(1), None).await.expect("append");
        // Dropped without commit.
    }
    assert_eq!(
        m.head().await.expect("head").0,
        0,
        "rolled-back append consumed a seq"
    );
    assert!(
        m.blob(&BlobId::of(&1u64.to_be_bytes()).sha256_digest())
            .await
            .expect("blob")
            .is_none()
    );
    let mut tx = m.begin().await.expect("begin");
    assert_eq!(
        tx.append(blob_stored(2), None).await.expect("append").seq(),
        1
    );
    tx.commit().await.expect("commit");
}

async fn concurrent_appends_are_gapless_and_chained(m: Arc<dyn MetadataStore>) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 25;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let m = m.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let mut tx = m.begin().await.expect("begin");
                    tx.append(blob_stored(w * 1000 + i), None)
                        .await
                        .expect("append");
                    tx.commit().await.expect("commit");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
    let events = m.events_after(0, 1000).await.expect("events");
    assert_eq!(events.len() as u64, WRITERS * EACH);
    let mut chain = ChainVerifier::new();
    for e in &events {
        chain.check(e.seq, &e.bytes, &e.hash).expect("chain");
    }
    let (seq, hash) = m.head().await.expect("head");
    chain.finish(seq, &hash).expect("head matches");
}

async fn paging(m: &dyn MetadataStore) {
    let mut tx = m.begin().await.expect("begin");
    for n in 1..=7 {
        tx.append(blob_stored(n), None).await.expect("append");
    }
    tx.commit().await.expect("commit");
    let page = m.events_after(2, 3).await.expect("page");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(m.events_after(7, 3).await.expect("end").is_empty());
}

fn sample_manifest(name: &str) -> Manifest {
    let files = ["a/one.txt", "b.xml"]
        .iter()
        .map(|p| FileEntry {
            path: (*p).into(),
            blob: BlobId::of(p.as_bytes()),
            media_type: p.ends_with(".xml").then(|| "application/xml".into()),
        })
        .collect();
    Manifest::new(name.into(), files, Default::default()).expect("manifest")
}

fn package_events(
    id: &str,
    m: &Manifest,
    class: &str,
    expires: Option<Timestamp>,
) -> [EventDraft; 2] {
    let base = id
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b))
        & 0x7f;
    let digest = BlobId::of(&m.to_canonical_bytes());
    let at = Timestamp::from_unix_micros(1_800_000_000_000_000).expect("ts");
    let draft = |n: u8, data| EventDraft {
        id: format!("01936f2e-0000-7000-8000-00000000{base:02x}{n:02x}"),
        subject: id.into(),
        actor: "ci".into(),
        at,
        data,
    };
    [
        draft(
            1,
            EventData::PackageCreated {
                name: m.name().into(),
                manifest_sha256: digest.sha256,
                manifest_blake3: digest.blake3,
                file_count: m.files().len() as u64,
                total_size: m.total_size(),
                retention_class: class.into(),
            },
        ),
        draft(
            2,
            EventData::RetentionDefaultApplied {
                class: class.into(),
                expires_at: expires,
            },
        ),
    ]
}

async fn package_views(m: &dyn MetadataStore) {
    let manifest = sample_manifest("team/app");
    let expires = Timestamp::from_unix_micros(1_900_000_000_000_000).expect("ts");
    let mut tx = m.begin().await.expect("begin");
    for (id, class, exp) in [
        ("pkg-1", "scratch", Some(expires)),
        ("pkg-2", "forever", None),
    ] {
        let [created, default] = package_events(id, &manifest, class, exp);
        tx.append(created, Some(&manifest)).await.expect("created");
        tx.append(default, None).await.expect("default");
    }
    tx.commit().await.expect("commit");

    let p = m.package("pkg-1").await.expect("package").expect("row");
    assert_eq!(
        (p.name.as_str(), p.file_count, p.total_size),
        ("team/app", 2, manifest.total_size())
    );
    assert_eq!((p.created_seq, p.created_by.as_str()), (1, "ci"));
    assert_eq!(p.retention.current_expires_at, Some(expires));
    assert_eq!(
        (p.retention.active_holds, p.retention.eligible_for_deletion),
        (0, false)
    );
    let p2 = m.package("pkg-2").await.expect("package").expect("row");
    assert_eq!(p2.retention.current_expires_at, None);
    assert!(m.package("pkg-3").await.expect("package").is_none());

    let f = m
        .package_file("pkg-1", "b.xml")
        .await
        .expect("file")
        .expect("row");
    assert_eq!(
        (f.blob, f.media_type.as_deref()),
        (BlobId::of(b"b.xml"), Some("application/xml"))
    );
    assert!(m.package_file("pkg-1", "a").await.expect("file").is_none());

    let all = m
        .packages(&PackageFilter::default(), 0, 10)
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["pkg-1", "pkg-2"]
    );
    let after_first = m
        .packages(&PackageFilter::default(), all[0].created_seq, 10)
        .await
        .expect("list");
    assert_eq!(after_first.len(), 1);
    let scratch = PackageFilter {
        retention_class: Some("scratch".into()),
        ..Default::default()
    };
    assert_eq!(m.packages(&scratch, 0, 10).await.expect("list").len(), 1);
    let other_name = PackageFilter {
        name: Some("team/other".into()),
        ..Default::default()
    };
    assert!(
        m.packages(&other_name, 0, 10)
            .await
            .expect("list")
            .is_empty()
    );
    let eligible = PackageFilter {
        eligible: Some(true),
        ..Default::default()
    };
    assert!(m.packages(&eligible, 0, 10).await.expect("list").is_empty());
    assert_eq!(
        m.packages(&PackageFilter::default(), 0, 1)
            .await
            .expect("list")
            .len(),
        1,
        "limit"
    );

    // The manifest both packages name is stored once, and stays when the
    // views are emptied: a rebuild reads it back.
    let bytes = manifest.to_canonical_bytes();
    let id = BlobId::of(&bytes);
    let absent = BlobId::of(b"no manifest").sha256;
    let stored = StoredManifest {
        sha256: id.sha256,
        blake3: id.blake3,
        body: bytes,
    };
    let found = m
        .manifests_by_sha256(&[absent, id.sha256])
        .await
        .expect("manifests");
    assert_eq!(found, std::slice::from_ref(&stored));
    let mut tx = m.begin().await.expect("begin");
    tx.reset_views().await.expect("reset");
    tx.commit().await.expect("commit");
    assert!(m.package("pkg-1").await.expect("package").is_none());
    let found = m
        .manifests_by_sha256(&[id.sha256])
        .await
        .expect("manifests");
    assert_eq!(found, std::slice::from_ref(&stored));
    let paged = m.manifests_after(&[0; 32], 10).await.expect("page");
    assert_eq!(paged, [stored]);
    let paged = m.manifests_after(&id.sha256, 10).await.expect("page");
    assert!(paged.is_empty(), "none after the last");
}

/// The views of a package come from the manifest its event names, so
/// applying it without that manifest, or with another, must fail.
async fn package_needs_its_own_manifest(m: &dyn MetadataStore) {
    let manifest = sample_manifest("team/app");
    let other = sample_manifest("team/other");
    for given in [None, Some(&other)] {
        let mut tx = m.begin().await.expect("begin");
        let [created, _] = package_events("pkg-x", &manifest, "scratch", None);
        let err = tx.append(created, given).await.expect_err("must refuse");
        assert!(matches!(err, MetaError::Corrupt(_)), "{err:?}");
    }
    assert_eq!(m.head().await.expect("head").0, 0, "nothing was appended");
}

/// A rebuild replays a page of the log at once. A backend that sends the
/// rows of many events together must still put every row after the row
/// it refers to, wherever its batches happen to end.
async fn replaying_many_packages_at_once(m: &dyn MetadataStore) {
    // One, two and three files in turn, so that batches end at every
    // kind of row, not only between packages.
    let manifests: Vec<Manifest> = (1..=3)
        .map(|n| {
            let files = (0..n)
                .map(|f| FileEntry {
                    path: format!("f{f}"),
                    blob: BlobId::of(&[f]),
                    media_type: None,
                })
                .collect();
            Manifest::new("team/app".into(), files, Default::default()).expect("manifest")
        })
        .collect();
    let (mut seq, mut prev) = (0, GENESIS_PREV);
    let mut events: Vec<(Event, Option<&Manifest>)> = Vec::new();
    for i in 0..300 {
        let manifest = &manifests[i % 3];
        let [created, default] = package_events(&format!("pkg-{i:03}"), manifest, "scratch", None);
        for (draft, m) in [(created, Some(manifest)), (default, None)] {
            seq += 1;
            let event = draft.seal(seq, prev);
            prev = *event.hash();
            events.push((event, m));
        }
    }
    let page: Vec<(&Event, Option<&Manifest>)> = events.iter().map(|(e, m)| (e, *m)).collect();
    let mut tx = m.begin().await.expect("begin");
    tx.replay(&page).await.expect("replay a page");
    tx.commit().await.expect("commit");
    for i in [0, 17, 150, 299] {
        let p = m
            .package(&format!("pkg-{i:03}"))
            .await
            .expect("package")
            .expect("replayed");
        assert_eq!(p.file_count, (i % 3 + 1) as u64);
        assert_eq!(p.retention.class, "scratch");
    }
}

async fn sessions(m: &dyn MetadataStore) {
    let s = UploadSession {
        id: "0193-session".into(),
        created_at: Timestamp::from_unix_micros(1_800_000_000_000_000).expect("ts"),
        actor: "ci".into(),
    };
    assert_eq!(m.session_get(&s.id).await.expect("get"), None);
    m.session_insert(&s).await.expect("insert");
    assert_eq!(m.session_get(&s.id).await.expect("get"), Some(s.clone()));
    assert!(m.session_delete(&s.id).await.expect("delete"));
    assert!(!m.session_delete(&s.id).await.expect("delete again"));
    m.session_insert(&s).await.expect("insert");
    let mut tx = m.begin().await.expect("begin");
    tx.session_delete(&s.id).await.expect("tx delete");
    tx.commit().await.expect("commit");
    assert_eq!(m.session_get(&s.id).await.expect("get"), None);
}

fn event(n: u8, subject: &str, at: Timestamp, data: EventData) -> EventDraft {
    EventDraft {
        id: format!("01936f2e-0000-7000-8001-0000000000{n:02x}"),
        subject: subject.into(),
        actor: "conformance".into(),
        at,
        data,
    }
}

/// The collector's reads and the views of deletion events.
async fn collection_views(m: &dyn MetadataStore) {
    let manifest = sample_manifest("team/app");
    let manifest_blob = BlobId::of(&manifest.to_canonical_bytes());
    let (one, xml, loose) = (
        BlobId::of(b"a/one.txt"),
        BlobId::of(b"b.xml"),
        BlobId::of(b"loose"),
    );
    let t =
        |s: i64| Timestamp::from_unix_micros(1_800_000_000_000_000 + s * 1_000_000).expect("ts");
    let expires = t(100);
    let mut tx = m.begin().await.expect("begin");
    let mut n = 0u8;
    let mut next = |subject: &str, at, data| {
        n += 1;
        event(n, subject, at, data)
    };
    for (b, loc) in [
        (one, "l-one"),
        (xml, "l-xml"),
        (manifest_blob, "l-man"),
        (loose, "l-loose"),
    ] {
        let data = EventData::BlobStored {
            blob: b,
            location: loc.into(),
        };
        tx.append(next("blob", t(0), data), None)
            .await
            .expect("blob");
    }
    for id in ["pkg-1", "pkg-2"] {
        let [created, default] = package_events(id, &manifest, "scratch", Some(expires));
        tx.append(created, Some(&manifest)).await.expect("created");
        tx.append(default, None).await.expect("default");
    }
    assert!(
        tx.collectable_packages(t(200), 10)
            .await
            .expect("q")
            .is_empty(),
        "not marked"
    );
    let eligible = |n| EventData::RetentionDeletionEligible {
        expires_at: expires,
        evaluated_at: t(n),
    };
    tx.append(next("pkg-1", t(150), eligible(150)), None)
        .await
        .expect("eligible");
    assert!(
        tx.collectable_packages(t(50), 10)
            .await
            .expect("q")
            .is_empty(),
        "not expired at 50"
    );
    let due = tx.collectable_packages(t(200), 10).await.expect("q");
    assert_eq!(
        due.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["pkg-1"]
    );
    assert_eq!(
        tx.exclusive_bytes("pkg-1").await.expect("bytes"),
        0,
        "pkg-2 shares every file"
    );

    let unreferenced =
        |v: Vec<crate::meta::BlobRecord>| v.into_iter().map(|r| r.blob).collect::<Vec<_>>();
    let all = tx.unreferenced_blobs(t(10), &[0; 32], 10).await.expect("q");
    assert_eq!(
        unreferenced(all),
        [loose],
        "files and manifests are referenced"
    );
    assert!(
        tx.unreferenced_blobs(t(-1), &[0; 32], 10)
            .await
            .expect("q")
            .is_empty(),
        "within grace"
    );
    assert!(
        tx.unreferenced_blobs(t(10), &loose.sha256, 10)
            .await
            .expect("q")
            .is_empty(),
        "after the last"
    );

    let deleted = |bytes| EventData::PackageDeleted {
        reason: "retention expired".into(),
        bytes_freed: bytes,
    };
    let e = tx
        .append(next("pkg-1", t(300), deleted(0)), None)
        .await
        .expect("deleted");
    tx.commit().await.expect("commit");
    // A failed write leaves nothing behind: its transaction refuses to go
    // on or to commit, and rolls back when dropped.
    let mut tx = m.begin().await.expect("begin");
    let err = tx
        .append(next("pkg-1", t(301), deleted(0)), None)
        .await
        .expect_err("twice");
    assert!(matches!(err, MetaError::Corrupt(_)), "{err:?}");
    // Refused as such, not failing on what the first write left behind.
    let after = tx
        .append(next("pkg-2", t(302), eligible(302)), None)
        .await
        .expect_err("a write after a failed one");
    assert!(matches!(after, MetaError::Corrupt(_)), "{after:?}");
    tx.commit().await.expect_err("commit after a failed write");
    assert_eq!(m.head().await.expect("head").0, e.seq(), "nothing appended");
    let mut tx = m.begin().await.expect("begin");
    tx.append(next("pkg-2", t(302), eligible(302)), None)
        .await
        .expect("eligible");
    assert_eq!(
        tx.exclusive_bytes("pkg-2").await.expect("bytes"),
        one.size + xml.size
    );
    tx.append(next("pkg-2", t(303), deleted(one.size + xml.size)), None)
        .await
        .expect("deleted");
    let mut all = unreferenced(tx.unreferenced_blobs(t(10), &[0; 32], 10).await.expect("q"));
    all.sort_by_key(|b| b.sha256);
    let mut want = vec![one, xml, loose];
    want.sort_by_key(|b| b.sha256);
    assert_eq!(
        all, want,
        "the manifest of a deleted package stays referenced"
    );

    assert_eq!(
        tx.blob_at(Tier::Hot, "l-loose")
            .await
            .expect("q")
            .map(|r| r.blob),
        Some(loose)
    );
    assert!(tx.blob_at(Tier::Hot, "l-none").await.expect("q").is_none());
    let mut found: Vec<BlobId> = tx
        .blobs_by_sha256(&[xml.sha256, [7; 32], one.sha256])
        .await
        .expect("q")
        .into_iter()
        .map(|r| r.blob)
        .collect();
    found.sort_by_key(|b| b.sha256);
    let mut want = vec![one, xml];
    want.sort_by_key(|b| b.sha256);
    assert_eq!(found, want, "the stored ones among those asked");
    let asked = [xml.sha256, [7; 32], one.sha256];
    for mut ids in [
        m.stored_blobs(&asked).await.expect("q"),
        tx.stored_blobs(&asked).await.expect("q"),
    ] {
        ids.sort_by_key(|b| b.sha256);
        assert_eq!(ids, want, "the same, digests and sizes only");
    }
    let many: Vec<[u8; 32]> = (0..1200u32)
        .map(|i| BlobId::of(&i.to_be_bytes()).sha256)
        .chain([loose.sha256])
        .collect();
    for found in [
        m.blobs_by_sha256(&many).await.expect("q"),
        tx.blobs_by_sha256(&many).await.expect("q"),
    ] {
        let found: Vec<BlobId> = found.into_iter().map(|r| r.blob).collect();
        assert_eq!(found, [loose], "more digests than one statement takes");
    }
    for found in [
        m.stored_blobs(&many).await.expect("q"),
        tx.stored_blobs(&many).await.expect("q"),
    ] {
        assert_eq!(found, [loose], "more digests than one statement takes");
    }
    let asked = [
        "l-one".to_owned(),
        "l-none".to_owned(),
        "l-loose".to_owned(),
    ];
    let known = tx.known_locations(Tier::Hot, &asked).await.expect("q");
    assert_eq!(
        known,
        ["l-one".to_owned(), "l-loose".to_owned()]
            .into_iter()
            .collect()
    );
    assert!(
        tx.known_locations(Tier::Hot, &[])
            .await
            .expect("q")
            .is_empty()
    );
    tx.append(
        next(
            &loose.sha256_digest().to_string(),
            t(400),
            EventData::BlobDeleted { blob: loose },
        ),
        None,
    )
    .await
    .expect("blob deleted");
    assert!(tx.blob_at(Tier::Hot, "l-loose").await.expect("q").is_none());
    tx.commit().await.expect("commit");
    let mut tx = m.begin().await.expect("begin");
    let err = tx
        .append(
            next("x", t(401), EventData::BlobDeleted { blob: loose }),
            None,
        )
        .await
        .expect_err("a blob that is not stored");
    assert!(matches!(err, MetaError::Corrupt(_)), "{err:?}");
    drop(tx);

    let p = m.package("pkg-1").await.expect("package").expect("row");
    let d = p.retention.deleted.expect("deleted");
    assert_eq!(
        (d.seq, d.at, d.reason.as_str(), d.bytes_freed),
        (e.seq(), t(300), "retention expired", 0)
    );
    assert_eq!(p.manifest_sha256, manifest_blob.sha256, "metadata remains");
    assert!(
        m.package_file("pkg-1", "b.xml")
            .await
            .expect("file")
            .is_none()
    );
    assert_eq!(m.holds("pkg-1").await.expect("holds"), []);
    let filter = |deleted| PackageFilter {
        deleted: Some(deleted),
        ..PackageFilter::default()
    };
    let deleted = m.packages(&filter(true), 0, 10).await.expect("list");
    assert_eq!(deleted.len(), 2);
    assert!(
        m.packages(&filter(false), 0, 10)
            .await
            .expect("list")
            .is_empty()
    );
    let mut tx = m.begin().await.expect("begin");
    assert!(
        tx.collectable_packages(t(1000), 10)
            .await
            .expect("q")
            .is_empty()
    );
}

/// One leader per role and database, free again once dropped.
async fn leader_lock_and_session_ages(m: &dyn MetadataStore) {
    let first = m.try_lead("collector").await.expect("lead");
    assert!(first.is_some());
    assert!(
        m.try_lead("collector").await.expect("lead").is_none(),
        "held"
    );
    assert!(
        m.try_lead("other-role").await.expect("lead").is_some(),
        "roles are independent"
    );
    drop(first);
    // Released by the database when the holder's connection ends, which a
    // server notices a moment after the client drops it.
    let mut released = false;
    for _ in 0..100 {
        if m.try_lead("collector").await.expect("lead").is_some() {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(released, "released");

    let at =
        |s: i64| Timestamp::from_unix_micros(1_800_000_000_000_000 + s * 1_000_000).expect("ts");
    for (id, s) in [("old", 0), ("new", 10)] {
        let session = UploadSession {
            id: id.into(),
            created_at: at(s),
            actor: "ci".into(),
        };
        m.session_insert(&session).await.expect("insert");
    }
    let ids = |v: Vec<UploadSession>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(m.sessions_before(at(5), 10).await.expect("q")), ["old"]);
    assert_eq!(
        ids(m.sessions_before(at(11), 10).await.expect("q")),
        ["old", "new"]
    );
    assert_eq!(ids(m.sessions_before(at(11), 1).await.expect("q")), ["old"]);
}
