//! `/metrics` after known traffic.

mod common;

use std::collections::BTreeMap;

use artifactstore_client::Client;
use artifactstore_core::BlobId;
use artifactstore_core::manifest::{FileEntry, Manifest};

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn counts_requests_latency_bytes_and_events() {
    let server = common::TestServer::start().await;
    let base = server.client.base().to_owned();
    let client = Client::new(&base);

    let data = vec![7u8; 100_000];
    let id = BlobId::of(&data);
    client
        .put_blob(&id.sha256_digest(), data.clone())
        .await
        .unwrap();
    client
        .put_blob(&id.sha256_digest(), data.clone())
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            client
                .get_blob_bytes(&id.blake3_digest())
                .await
                .unwrap()
                .len(),
            100_000
        );
    }
    let missing = BlobId::of(b"nope").sha256_digest();
    assert!(client.head_blob(&missing).await.unwrap().is_none());

    let resp = reqwest_get(&format!("{base}/metrics")).await;
    assert!(resp.0.starts_with("text/plain; version=0.0.4"));
    let text = resp.1;
    assert_eq!(
        value(
            &text,
            r#"artifactstore_http_requests_total{method="PUT",route="/blobs/{digest}",status="201"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"artifactstore_http_requests_total{method="PUT",route="/blobs/{digest}",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"artifactstore_http_requests_total{method="GET",route="/blobs/{digest}",status="200"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            r#"artifactstore_http_requests_total{method="HEAD",route="/blobs/{digest}",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"artifactstore_http_request_duration_seconds_count{route="/blobs/{digest}"}"#
        ),
        6.0
    );
    assert_eq!(
        value(
            &text,
            r#"artifactstore_http_request_duration_seconds_bucket{route="/blobs/{digest}",le="+Inf"}"#
        ),
        6.0
    );
    assert!(value(&text, "artifactstore_http_response_bytes_total") >= 300_000.0);
    assert_eq!(
        value(&text, "artifactstore_ingested_bytes_total"),
        200_000.0
    );
    assert_eq!(value(&text, "artifactstore_events_appended_total"), 1.0);
    assert_eq!(value(&text, "artifactstore_corrupt_reads_total"), 0.0);
    assert_eq!(value(&text, "artifactstore_gc_runs_total"), 0.0);

    // A collection with no grace deletes the unreferenced blob; a corrupt
    // blob's download is cut off and counted.
    let settings = artifactstore_store::GcSettings {
        grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    let report = server.store.collect(&settings, false).await.unwrap();
    assert_eq!(report.blobs.len(), 1);
    let corrupt = vec![9u8; 50_000];
    let corrupt_id = BlobId::of(&corrupt);
    client
        .put_blob(&corrupt_id.sha256_digest(), corrupt)
        .await
        .unwrap();
    let record = server
        .store
        .blob(&corrupt_id.sha256_digest())
        .await
        .unwrap();
    std::fs::write(server.dir.path().join(&record.location), vec![8u8; 50_000]).unwrap();
    assert!(
        client
            .get_blob_bytes(&corrupt_id.sha256_digest())
            .await
            .is_err()
    );
    let text = reqwest_get(&format!("{base}/metrics")).await.1;
    assert_eq!(value(&text, "artifactstore_gc_runs_total"), 1.0);
    assert_eq!(value(&text, "artifactstore_gc_deleted_blobs_total"), 1.0);
    assert_eq!(
        value(&text, "artifactstore_gc_deleted_bytes_total"),
        100_000.0
    );
    assert_eq!(value(&text, "artifactstore_gc_deleted_packages_total"), 0.0);
    assert_eq!(value(&text, "artifactstore_corrupt_reads_total"), 1.0);
}

/// Where package creations spend their time, and how they were grouped.
#[tokio::test]
async fn counts_package_creations_by_phase_and_group_commit() {
    let server = common::TestServer::start().await;
    let base = server.client.base().to_owned();
    let client = Client::new(&base);
    let data = b"one file".to_vec();
    let blob = BlobId::of(&data);
    client.put_blob(&blob.sha256_digest(), data).await.unwrap();
    let creations = (0..6).map(|i| {
        let manifest = Manifest::new(
            format!("metrics/run-{i}"),
            vec![FileEntry {
                path: "file".into(),
                blob,
                media_type: None,
            }],
            BTreeMap::new(),
        )
        .unwrap();
        let client = client.clone();
        async move { client.create_package(&manifest, "scratch").await }
    });
    for created in futures::future::join_all(creations).await {
        created.unwrap();
    }
    // Refused: a blob that was never uploaded. It counts nowhere.
    let missing = Manifest::new(
        "metrics/missing".into(),
        vec![FileEntry {
            path: "file".into(),
            blob: BlobId::of(b"never uploaded"),
            media_type: None,
        }],
        BTreeMap::new(),
    )
    .unwrap();
    assert!(client.create_package(&missing, "scratch").await.is_err());

    let text = reqwest_get(&format!("{base}/metrics")).await.1;
    assert_eq!(value(&text, "artifactstore_packages_created_total"), 6.0);
    assert_eq!(
        value(&text, "artifactstore_package_commit_group_packages_total"),
        6.0
    );
    let groups = value(&text, "artifactstore_package_commit_groups_total");
    assert!((1.0..=6.0).contains(&groups), "{groups} groups");
    let phase = |p: &str| {
        value(
            &text,
            &format!(r#"artifactstore_package_creation_seconds_total{{phase="{p}"}}"#),
        )
    };
    let (check, commit) = (phase("check"), phase("commit"));
    assert!(check > 0.0 && commit > 0.0, "{check} {commit}");
    let group = value(&text, "artifactstore_package_commit_group_seconds_total");
    // Each creation waits at least for its own group's transaction.
    assert!(group > 0.0 && group <= commit, "{group} against {commit}");
}

/// How uploaded blobs' rows were grouped: every upload that reached its
/// commit counts once; one answered from the row that stands, before its
/// bytes were placed, does not.
#[tokio::test]
async fn counts_blob_commit_groups() {
    let server = common::TestServer::start().await;
    let base = server.client.base().to_owned();
    let client = Client::new(&base);
    let blobs: Vec<Vec<u8>> = (0..5).map(|i| format!("blob {i}").into_bytes()).collect();
    let uploads = blobs.iter().map(|data| {
        let client = client.clone();
        async move {
            let digest = BlobId::of(data).sha256_digest();
            client.put_blob(&digest, data.clone()).await
        }
    });
    for uploaded in futures::future::join_all(uploads).await {
        uploaded.unwrap();
    }
    let again = &blobs[0];
    client
        .put_blob(&BlobId::of(again).sha256_digest(), again.clone())
        .await
        .unwrap();

    let text = reqwest_get(&format!("{base}/metrics")).await.1;
    assert_eq!(
        value(&text, "artifactstore_blob_commit_group_blobs_total"),
        5.0
    );
    let groups = value(&text, "artifactstore_blob_commit_groups_total");
    assert!((1.0..=5.0).contains(&groups), "{groups} groups");
    assert!(value(&text, "artifactstore_blob_commit_group_seconds_total") > 0.0);
}

async fn reqwest_get(url: &str) -> (String, String) {
    let resp = artifactstore_client::reqwest::get(url).await.unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, resp.text().await.unwrap())
}
