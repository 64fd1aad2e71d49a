//! Engine behaviour, on both backend pairs (SQLite + filesystem and
//! PostgreSQL + S3): every case is an `async fn(TestPair)` listed in
//! `on_both_pairs!` at the end.

use std::sync::Arc;

use artifactstore_core::event::{ChainVerifier, Event, EventData};
use artifactstore_core::{BlobId, Digest};
use artifactstore_store::blob::ByteStream;
use artifactstore_store::conformance::pattern;
use artifactstore_store::testing::{TestPair, blob_count, staging_count};
use artifactstore_store::{Limits, Store, StoreError, StoreOptions};
use bytes::Bytes;
use futures::StreamExt;

async fn open(pair: &TestPair) -> Store {
    open_with(pair, Limits::default()).await
}

async fn open_with(pair: &TestPair, limits: Limits) -> Store {
    pair.open(StoreOptions {
        limits,
        ..StoreOptions::default()
    })
    .await
}

fn body(data: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

fn failing_body(data: &[u8]) -> ByteStream {
    let mut items: Vec<std::io::Result<Bytes>> = vec![Ok(Bytes::copy_from_slice(data))];
    items.push(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "client went away",
    )));
    futures::stream::iter(items).boxed()
}

async fn read_all(store: &Store, d: &Digest, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let rec = store.blob(d).await.unwrap();
    let mut s = store.read_blob(&rec, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

async fn events(store: &Store) -> Vec<Event> {
    let mut chain = ChainVerifier::new();
    store
        .events_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| chain.check(e.seq, &e.bytes, &e.hash).unwrap())
        .collect()
}

async fn put_stores_once_and_records_one_event(pair: TestPair) {
    let store = open(&pair).await;
    let data = pattern(300_000, 1);
    let id = BlobId::of(&data);
    let first = store
        .put_blob(
            &[id.sha256_digest()],
            Some(300_000),
            body(&data, 8192),
            "ci",
        )
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.record.blob, id);
    let again = store
        .put_blob(&[id.blake3_digest()], None, body(&data, 100_000), "ci")
        .await
        .unwrap();
    assert!(!again.created, "a blob already present stores nothing new");
    assert_eq!(again.record, first.record);

    let log = events(&store).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].actor(), "ci");
    assert_eq!(log[0].subject(), id.sha256_digest().to_string());
    assert!(matches!(log[0].data(), EventData::BlobStored { blob, .. } if *blob == id));
    assert_eq!(blob_count(&store).await, 1);
    assert_eq!(staging_count(&store).await, 0);

    assert_eq!(read_all(&store, &id.sha256_digest(), None).await, data);
    assert_eq!(
        read_all(&store, &id.blake3_digest(), Some(1000..2000)).await,
        data[1000..2000]
    );
}

async fn digest_mismatch_stores_nothing(pair: TestPair) {
    let store = open(&pair).await;
    let data = pattern(50_000, 2);
    let wrong = BlobId::of(b"something else");
    for declared in [wrong.sha256_digest(), wrong.blake3_digest()] {
        let err = store
            .put_blob(&[declared], None, body(&data, 4096), "ci")
            .await
            .unwrap_err();
        match err {
            StoreError::DigestMismatch {
                declared: d,
                actual,
            } => {
                assert_eq!(d, declared);
                assert_eq!(actual, BlobId::of(&data).digest(declared.algorithm()));
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
    }
    // One right digest and one wrong one: still refused.
    let right = BlobId::of(&data).sha256_digest();
    let err = store
        .put_blob(
            &[right, wrong.blake3_digest()],
            None,
            body(&data, 4096),
            "ci",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "digest-mismatch");
    assert!(events(&store).await.is_empty(), "no event");
    assert!(matches!(
        store.blob(&right).await,
        Err(StoreError::BlobNotFound(_))
    ));
    assert_eq!(
        (blob_count(&store).await, staging_count(&store).await),
        (0, 0),
        "no bytes left behind"
    );
}

async fn oversized_bodies_are_refused_and_leave_nothing(pair: TestPair) {
    let store = open_with(
        &pair,
        Limits {
            max_blob_size: 10_000,
        },
    )
    .await;
    let data = pattern(10_001, 3);
    let d = BlobId::of(&data).sha256_digest();
    // Refused from the declared length before reading, and while streaming.
    for hint in [Some(10_001), None] {
        let err = store
            .put_blob(&[d], hint, body(&data, 1000), "ci")
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { limit: 10_000 }),
            "{err:?}"
        );
    }
    let up = store.create_upload("ci").await.unwrap();
    store
        .append_upload(&up, 0, None, body(&data[..6000], 1000))
        .await
        .unwrap();
    let err = store
        .append_upload(&up, 6000, None, body(&data[6000..], 1000))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }));
    assert_eq!(
        store.upload_offset(&up).await.unwrap(),
        6000,
        "bytes beyond the limit are not kept"
    );
    assert!(events(&store).await.is_empty());
    assert_eq!(blob_count(&store).await, 0);
    // Exactly at the limit is fine.
    let ok = &data[..10_000];
    store
        .put_blob(
            &[BlobId::of(ok).sha256_digest()],
            Some(10_000),
            body(ok, 999),
            "ci",
        )
        .await
        .unwrap();
}

async fn resumable_upload_with_offsets(pair: TestPair) {
    let store = open(&pair).await;
    let data = pattern(2_500_000, 4);
    let id = BlobId::of(&data);
    let up = store.create_upload("ci").await.unwrap();
    assert_eq!(store.upload_offset(&up).await.unwrap(), 0);
    assert_eq!(
        store
            .append_upload(&up, 0, None, body(&data[..1_000_000], 65_536))
            .await
            .unwrap(),
        1_000_000
    );
    let err = store
        .append_upload(&up, 999_999, None, body(&data[1_000_000..], 65_536))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::OffsetMismatch {
            given: 999_999,
            current: 1_000_000
        }
    ));
    assert_eq!(
        store
            .append_upload(
                &up,
                1_000_000,
                None,
                body(&data[1_000_000..2_000_000], 65_536)
            )
            .await
            .unwrap(),
        2_000_000
    );
    let stored = store
        .finish_upload(
            &up,
            &[id.sha256_digest(), id.blake3_digest()],
            Some((None, body(&data[2_000_000..], 65_536))),
            "ci",
        )
        .await
        .unwrap();
    assert_eq!(stored.record.blob, id);
    assert!(
        matches!(
            store.upload_offset(&up).await,
            Err(StoreError::UploadNotFound(_))
        ),
        "finished session is gone"
    );
    assert_eq!(read_all(&store, &id.sha256_digest(), None).await, data);
    assert_eq!(staging_count(&store).await, 0);
}

/// Each append lands on a fresh engine (as on another node, or after a
/// restart), which knows nothing in memory; the appends cross S3's part
/// size, so parts and tails both carry over.
async fn upload_survives_a_restart(pair: TestPair) {
    let data = pattern(11 << 20 | 4321, 5);
    let id = BlobId::of(&data);
    let up = open(&pair).await.create_upload("ci").await.unwrap();
    let cuts = [0, 700_001, 6 << 20, 10 << 20, data.len()];
    for w in cuts.windows(2) {
        let store = open(&pair).await;
        assert_eq!(store.upload_offset(&up).await.unwrap(), w[0] as u64);
        let next = store
            .append_upload(&up, w[0] as u64, None, body(&data[w[0]..w[1]], 64 << 10))
            .await
            .unwrap();
        assert_eq!(next, w[1] as u64);
    }
    let store = open(&pair).await;
    let stored = store
        .finish_upload(&up, &[id.blake3_digest()], None, "ci")
        .await
        .unwrap();
    assert_eq!(stored.record.blob, id);
    assert!(read_all(&store, &id.sha256_digest(), None).await == data);
}

async fn interrupted_append_keeps_what_arrived_and_resumes(pair: TestPair) {
    let store = open(&pair).await;
    let data = pattern(400_000, 6);
    let id = BlobId::of(&data);
    let up = store.create_upload("ci").await.unwrap();
    let err = store
        .append_upload(&up, 0, None, failing_body(&data[..123_456]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BodyRead(_)));
    let offset = store.upload_offset(&up).await.unwrap();
    assert_eq!(
        offset, 123_456,
        "bytes received before the failure are kept"
    );
    store
        .append_upload(&up, offset, None, body(&data[offset as usize..], 50_000))
        .await
        .unwrap();
    let stored = store
        .finish_upload(&up, &[id.sha256_digest()], None, "ci")
        .await
        .unwrap();
    assert_eq!(stored.record.blob, id);
}

async fn finishing_with_a_wrong_digest_ends_the_session(pair: TestPair) {
    let store = open(&pair).await;
    let up = store.create_upload("ci").await.unwrap();
    store
        .append_upload(&up, 0, None, body(b"hello", 2))
        .await
        .unwrap();
    let err = store
        .finish_upload(&up, &[BlobId::of(b"bye").sha256_digest()], None, "ci")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "digest-mismatch");
    assert!(matches!(
        store.upload_offset(&up).await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert!(events(&store).await.is_empty());
    assert_eq!(
        (blob_count(&store).await, staging_count(&store).await),
        (0, 0)
    );
}

async fn finish_requires_a_digest_and_unknown_ids_are_not_found(pair: TestPair) {
    let store = open(&pair).await;
    let up = store.create_upload("ci").await.unwrap();
    assert!(matches!(
        store.finish_upload(&up, &[], None, "ci").await,
        Err(StoreError::DigestRequired)
    ));
    assert_eq!(
        store.upload_offset(&up).await.unwrap(),
        0,
        "a refused finish leaves the session usable"
    );
    let d = BlobId::of(b"").sha256_digest();
    let missing = "01936f2e-0000-7000-8000-000000000000";
    assert!(matches!(
        store.upload_offset(missing).await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert!(matches!(
        store.append_upload(missing, 0, None, body(b"x", 1)).await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert!(matches!(
        store.finish_upload(missing, &[d], None, "ci").await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert!(matches!(
        store.abort_upload(missing).await,
        Err(StoreError::UploadNotFound(_))
    ));
    store.abort_upload(&up).await.unwrap();
    assert!(matches!(
        store.upload_offset(&up).await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert_eq!(staging_count(&store).await, 0);
}

async fn concurrent_uploads_of_the_same_bytes_record_one_event(pair: TestPair) {
    let store = Arc::new(open(&pair).await);
    let data = Arc::new(pattern(200_000, 7));
    let d = BlobId::of(&data).sha256_digest();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, data) = (store.clone(), data.clone());
            tokio::spawn(async move {
                store
                    .put_blob(&[d], None, body(&data, 1000 + i * 777), "ci")
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap().created);
    }
    assert_eq!(created, 1);
    assert_eq!(events(&store).await.len(), 1);
    assert_eq!(read_all(&store, &d, None).await, *data);
    assert_eq!(staging_count(&store).await, 0);
}

async fn empty_blob_and_out_of_range_reads(pair: TestPair) {
    let store = open(&pair).await;
    let id = BlobId::of(b"");
    store
        .put_blob(&[id.sha256_digest()], Some(0), body(b"", 1), "ci")
        .await
        .unwrap();
    assert!(read_all(&store, &id.blake3_digest(), None).await.is_empty());
    let data = pattern(100, 8);
    let d = BlobId::of(&data).sha256_digest();
    store
        .put_blob(&[d], None, body(&data, 7), "ci")
        .await
        .unwrap();
    let rec = store.blob(&d).await.unwrap();
    assert!(matches!(
        store.read_blob(&rec, Some(100..101)).await,
        Err(StoreError::RangeNotSatisfiable {
            start: 100,
            size: 100
        })
    ));
}

artifactstore_store::on_both_pairs!(
    put_stores_once_and_records_one_event,
    digest_mismatch_stores_nothing,
    oversized_bodies_are_refused_and_leave_nothing,
    resumable_upload_with_offsets,
    upload_survives_a_restart,
    interrupted_append_keeps_what_arrived_and_resumes,
    finishing_with_a_wrong_digest_ends_the_session,
    finish_requires_a_digest_and_unknown_ids_are_not_found,
    concurrent_uploads_of_the_same_bytes_record_one_event,
    empty_blob_and_out_of_range_reads,
);
