//! `verify` and `views rebuild` after a mixed workload, and against every
//! kind of tampering with the log, the views and the bytes.

use std::collections::BTreeMap;

use artifactstore_core::BlobId;
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_store::conformance::pattern;
use artifactstore_store::meta::{PackageFile, PackageFilter, PackageRecord};
use artifactstore_store::testing::{PairKind, TestPair};
use artifactstore_store::{Finding, Store, StoreError, StoreOptions};
use bytes::Bytes;
use futures::StreamExt;

struct Workload {
    pair: TestPair,
    store: Store,
    blobs: Vec<BlobId>,
    packages: Vec<String>,
}

fn body(data: Vec<u8>) -> artifactstore_store::blob::ByteStream {
    futures::stream::once(async move { Ok(Bytes::from(data)) }).boxed()
}

/// Blobs (one through a session), three packages of different classes
/// sharing a blob, and a re-upload that dedupes.
async fn workload(pair: TestPair) -> Workload {
    let store = pair.open(StoreOptions::default()).await;
    let mut blobs = Vec::new();
    for i in 0..4u8 {
        let data = pattern(1000 + i as usize * 777, i);
        let id = BlobId::of(&data);
        store
            .put_blob(&[id.sha256_digest()], None, body(data), "ci")
            .await
            .unwrap();
        blobs.push(id);
    }
    let session_data = pattern(300_000, 9);
    let up = store.create_upload("ci").await.unwrap();
    store
        .append_upload(&up, 0, None, body(session_data.clone()))
        .await
        .unwrap();
    let id = BlobId::of(&session_data);
    store
        .finish_upload(&up, &[id.blake3_digest()], None, "ci")
        .await
        .unwrap();
    blobs.push(id);
    store
        .put_blob(
            &[blobs[0].sha256_digest()],
            None,
            body(pattern(1000, 0)),
            "ci",
        )
        .await
        .unwrap();

    let mut packages = Vec::new();
    for (n, (class, picks)) in [
        ("scratch", vec![0, 1]),
        ("release-evidence", vec![1, 2, 4]),
        ("permanent-record", vec![3]),
    ]
    .into_iter()
    .enumerate()
    {
        let files = picks
            .iter()
            .map(|&i| FileEntry {
                path: format!("f/{i}.bin"),
                blob: blobs[i],
                media_type: None,
            })
            .collect();
        let m = Manifest::new(format!("team/app{n}"), files, BTreeMap::new()).unwrap();
        packages.push(store.create_package(&m, class, "ci").await.unwrap().id);
    }
    // Updates right behind the inserts they refer to, in one page of the
    // log: a rebuild that sends a page's rows together must still apply
    // them in order.
    let kept = store.apply_hold(&packages[0], "audit", "ci").await.unwrap();
    let gone = store.apply_hold(&packages[0], "legal", "ci").await.unwrap();
    store
        .release_hold(&packages[0], &gone.hold_id, "settled", "ci")
        .await
        .unwrap();
    let later = store.package(&packages[1]).await.unwrap();
    let later = later
        .retention
        .current_expires_at
        .and_then(|t| t.checked_add_micros(86_400_000_000))
        .unwrap();
    store
        .extend_retention(&packages[1], later, "longer", "ci")
        .await
        .unwrap();
    assert_ne!(kept.hold_id, gone.hold_id);
    Workload {
        pair,
        store,
        blobs,
        packages,
    }
}

/// Everything a client can ask the views.
async fn query_results(
    w: &Workload,
) -> (
    Vec<PackageRecord>,
    Vec<Option<BlobId>>,
    Vec<Vec<u8>>,
    Vec<Option<PackageFile>>,
) {
    let packages = w
        .store
        .packages(&PackageFilter::default(), 0, 1000)
        .await
        .unwrap()
        .items;
    let mut blobs = Vec::new();
    for b in &w.blobs {
        blobs.push(w.store.blob(&b.blake3_digest()).await.ok().map(|r| r.blob));
    }
    let mut manifests = Vec::new();
    let mut files = Vec::new();
    for id in &w.packages {
        manifests.push(w.store.manifest_bytes(id).await.unwrap().1);
        for i in 0..w.blobs.len() {
            files.push(
                w.store
                    .package_file(id, &format!("f/{i}.bin"))
                    .await
                    .ok()
                    .map(|(f, _)| f),
            );
        }
    }
    (packages, blobs, manifests, files)
}

/// Runs `statement` (with `?` placeholders: the byte strings `binds`,
/// then `seq`) on the store's database behind the engine's back.
async fn sql(pair: &TestPair, statement: &str, binds: Vec<Vec<u8>>, seq: i64) {
    match pair.postgres_schema() {
        None => {
            let pool = sqlx::SqlitePool::connect(&pair.metadata_url())
                .await
                .unwrap();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()));
            for b in binds {
                q = q.bind(b);
            }
            q.bind(seq).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Some(schema) => {
            let mut conn = postgres(pair, schema).await;
            let mut q = sqlx::query(sqlx::AssertSqlSafe(numbered(statement)));
            for b in binds {
                q = q.bind(b);
            }
            q.bind(seq).execute(&mut conn).await.unwrap();
        }
    }
}

async fn event_row(pair: &TestPair, seq: i64) -> (Vec<u8>, Vec<u8>) {
    let statement = "SELECT body, hash FROM events WHERE seq = ?";
    match pair.postgres_schema() {
        None => {
            let pool = sqlx::SqlitePool::connect(&pair.metadata_url())
                .await
                .unwrap();
            let row = sqlx::query_as(statement)
                .bind(seq)
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            row
        }
        Some(schema) => {
            let mut conn = postgres(pair, schema).await;
            sqlx::query_as(sqlx::AssertSqlSafe(numbered(statement)))
                .bind(seq)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    }
}

/// Every table, column, index and constraint of the store's schema, as
/// text, in a stable order.
async fn schema_of(pair: &TestPair) -> Vec<String> {
    match pair.postgres_schema() {
        None => {
            let pool = sqlx::SqlitePool::connect(&pair.metadata_url())
                .await
                .unwrap();
            let rows: Vec<(String, String, Option<String>)> =
                sqlx::query_as("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            rows.into_iter().map(|r| format!("{r:?}")).collect()
        }
        Some(schema) => {
            let mut conn = postgres(pair, schema).await;
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT format('%s.%s %s %s %s', table_name, column_name, data_type, \
                 is_nullable, column_default) FROM information_schema.columns \
                 WHERE table_schema = current_schema() \
                 UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() \
                 UNION ALL SELECT conrelid::regclass || ' ' || pg_get_constraintdef(oid) \
                 FROM pg_constraint WHERE connamespace = current_schema()::regnamespace \
                 ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            rows.into_iter().map(|(r,)| r).collect()
        }
    }
}

async fn postgres(pair: &TestPair, schema: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    let options: sqlx::postgres::PgConnectOptions = pair.metadata_url().parse().unwrap();
    sqlx::PgConnection::connect_with(&options.options([("search_path", schema)]))
        .await
        .unwrap()
}

/// `?` placeholders as PostgreSQL's `$1`, `$2`, ….
fn numbered(statement: &str) -> String {
    let mut n = 0;
    statement
        .split('?')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_owned()
            } else {
                n += 1;
                format!("${n}{part}")
            }
        })
        .collect()
}

fn first_chain_seq(findings: &[Finding]) -> u64 {
    match findings.first() {
        Some(Finding::Chain(e)) => e.seq(),
        other => panic!("expected a chain finding first, got {other:?}"),
    }
}

async fn a_clean_store_verifies_deeply(pair: TestPair) {
    let w = workload(pair).await;
    let report = w.store.verify(false).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.findings);
    let events = w.store.events_after(0, 1000).await.unwrap().len() as u64;
    assert_eq!(report.events_checked, events);
    assert_eq!(report.views_compared_at, Some(events));
    // 5 blobs (the 3 manifests are in the database).
    assert_eq!(report.blobs_checked, 5);
    assert_eq!(report.bytes_rehashed, 0);
    let deep = w.store.verify(true).await.unwrap();
    assert!(deep.is_ok());
    assert!(deep.bytes_rehashed > 300_000);
}

async fn rebuilding_gives_identical_query_results(pair: TestPair) {
    let w = workload(pair).await;
    let before = query_results(&w).await;
    let applied = w.store.rebuild_views().await.unwrap();
    assert_eq!(
        applied,
        w.store.events_after(0, 1000).await.unwrap().len() as u64
    );
    assert_eq!(query_results(&w).await, before);

    // Damage the views behind the engine's back: verify names the view,
    // rebuild restores it.
    sql(
        &w.pair,
        "UPDATE packages SET name = 'forged' WHERE created_seq = ?",
        vec![],
        10,
    )
    .await;
    sql(
        &w.pair,
        "DELETE FROM package_files WHERE path = 'f/0.bin' AND ? > 0",
        vec![],
        1,
    )
    .await;
    let report = w.store.verify(false).await.unwrap();
    let views: Vec<&str> = report
        .findings
        .iter()
        .map(|f| match f {
            Finding::View { view, .. } => *view,
            other => panic!("unexpected finding {other}"),
        })
        .collect();
    assert_eq!(views, ["packages", "package_files"]);
    w.store.rebuild_views().await.unwrap();
    assert!(w.store.verify(false).await.unwrap().is_ok());
    assert_eq!(query_results(&w).await, before);
}

/// A rebuild may empty the views by dropping and re-creating their tables;
/// what it creates must be what the migrations made, constraints and
/// indexes included.
async fn rebuilding_keeps_the_schema(pair: TestPair) {
    let w = workload(pair).await;
    let before = schema_of(&w.pair).await;
    assert!(before.iter().any(|r| r.contains("package_files_by_blob")));
    assert!(before.iter().any(|r| r.contains("REFERENCES packages")));
    w.store.rebuild_views().await.unwrap();
    assert_eq!(schema_of(&w.pair).await, before);
    // The foreign keys still hold: a file of no package is refused.
    let orphan = w.pair.metadata_url();
    let refused = match w.pair.postgres_schema() {
        None => {
            let options: sqlx::sqlite::SqliteConnectOptions = orphan.parse().unwrap();
            let pool = sqlx::SqlitePool::connect_with(options.foreign_keys(true))
                .await
                .unwrap();
            let r = sqlx::query(
                "INSERT INTO package_files (package_id, path, sha256, blake3, size) \
                 VALUES ('none', 'a', x'00', x'00', 1)",
            )
            .execute(&pool)
            .await
            .map(drop);
            pool.close().await;
            r
        }
        Some(schema) => {
            let mut conn = postgres(&w.pair, schema).await;
            sqlx::query(
                "INSERT INTO package_files (package_id, path, sha256, blake3, size) \
                 VALUES ('none', 'a', '\\x00', '\\x00', 1)",
            )
            .execute(&mut conn)
            .await
            .map(drop)
        }
    };
    let err = refused.expect_err("a file of no package");
    assert!(
        err.to_string().contains("FOREIGN KEY") || err.to_string().contains("foreign key"),
        "{err}"
    );
}

async fn editing_deleting_reordering_or_truncating_the_log_names_the_first_bad_seq(pair: TestPair) {
    // Each case tampers with a store of its own.
    let kind: PairKind = pair.kind();
    let fresh = || TestPair::new(kind).expect("the pair was available");
    // Edited: one byte of event 5's body changes (its stored hash kept).
    let w = workload(pair).await;
    let (mut bytes, _) = event_row(&w.pair, 5).await;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    sql(
        &w.pair,
        "UPDATE events SET body = ? WHERE seq = ?",
        vec![bytes.clone()],
        5,
    )
    .await;
    assert_eq!(
        first_chain_seq(&w.store.verify(false).await.unwrap().findings),
        5
    );
    // ... and with the stored hash rewritten to match the forged bytes.
    sql(
        &w.pair,
        "UPDATE events SET hash = ? WHERE seq = ?",
        vec![blake3::hash(&bytes).as_bytes().to_vec()],
        5,
    )
    .await;
    assert_eq!(
        first_chain_seq(&w.store.verify(false).await.unwrap().findings),
        5
    );
    assert!(
        matches!(w.store.rebuild_views().await, Err(StoreError::BrokenLog(_))),
        "rebuild refuses a broken log"
    );

    // Deleted.
    let w = workload(fresh()).await;
    sql(&w.pair, "DELETE FROM events WHERE seq = ?", vec![], 7).await;
    assert_eq!(
        first_chain_seq(&w.store.verify(false).await.unwrap().findings),
        7
    );

    // Reordered: events 3 and 4 swap places.
    let w = workload(fresh()).await;
    let (b3, h3) = event_row(&w.pair, 3).await;
    let (b4, h4) = event_row(&w.pair, 4).await;
    sql(
        &w.pair,
        "UPDATE events SET body = ?, hash = ? WHERE seq = ?",
        vec![b4, h4],
        3,
    )
    .await;
    sql(
        &w.pair,
        "UPDATE events SET body = ?, hash = ? WHERE seq = ?",
        vec![b3, h3],
        4,
    )
    .await;
    assert_eq!(
        first_chain_seq(&w.store.verify(false).await.unwrap().findings),
        3
    );

    // Truncated: the last event removed.
    let w = workload(fresh()).await;
    let head = w.store.events_after(0, 1000).await.unwrap().len() as i64;
    sql(&w.pair, "DELETE FROM events WHERE seq = ?", vec![], head).await;
    assert_eq!(
        first_chain_seq(&w.store.verify(false).await.unwrap().findings),
        head as u64
    );
}

async fn missing_and_corrupted_bytes_are_named(pair: TestPair) {
    let w = workload(pair).await;
    let missing = w.blobs[2];
    let missing_at = w
        .store
        .blob(&missing.sha256_digest())
        .await
        .unwrap()
        .location;
    w.store.blob_backend().delete(&missing_at).await.unwrap();
    let corrupt = w.blobs[3];
    let corrupt_at = w
        .store
        .blob(&corrupt.sha256_digest())
        .await
        .unwrap()
        .location;
    let mut bytes = pattern(1000 + 3 * 777, 3);
    bytes[10] ^= 0x40;
    w.pair.overwrite_blob(&corrupt_at, bytes).await;

    let shallow = w.store.verify(false).await.unwrap();
    assert_eq!(
        shallow.findings,
        [Finding::MissingBlob {
            digest: missing.sha256_digest(),
            location: missing_at
        }]
    );
    let deep = w.store.verify(true).await.unwrap();
    assert_eq!(deep.findings.len(), 2);
    assert!(deep.findings.iter().any(
        |f| matches!(f, Finding::CorruptBlob { digest, .. } if *digest == corrupt.sha256_digest())
    ));
    let text = deep
        .findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains(&corrupt.sha256_digest().to_string()),
        "{text}"
    );
}

/// A manifest changed in the database is named (not a failure of
/// `verify` itself), and the views, whose replay would read it, are left
/// uncompared.
async fn a_changed_manifest_is_named(pair: TestPair) {
    let w = workload(pair).await;
    let clean = w.store.verify(false).await.unwrap();
    assert_eq!(clean.manifests_checked, 3);
    let package = w.store.package(&w.packages[1]).await.unwrap();
    let (_, mut bytes) = w.store.manifest_bytes(&package.id).await.unwrap();
    bytes[5] ^= 0x01;
    sql(
        &w.pair,
        "UPDATE manifests SET body = ? WHERE sha256 = ? AND length(body) > ?",
        vec![bytes, package.manifest_sha256.to_vec()],
        0,
    )
    .await;

    let report = w.store.verify(false).await.unwrap();
    let digest = artifactstore_core::Digest::sha256(package.manifest_sha256);
    assert_eq!(report.findings, [Finding::CorruptManifest { digest }]);
    assert_eq!(report.views_compared_at, None);
    assert_eq!(report.manifests_checked, 3);
    assert!(w.store.manifest_bytes(&package.id).await.is_err());
}

artifactstore_store::on_both_pairs!(
    a_changed_manifest_is_named,
    a_clean_store_verifies_deeply,
    rebuilding_gives_identical_query_results,
    rebuilding_keeps_the_schema,
    editing_deleting_reordering_or_truncating_the_log_names_the_first_bad_seq,
    missing_and_corrupted_bytes_are_named,
);
