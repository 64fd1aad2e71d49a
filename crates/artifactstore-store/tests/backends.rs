//! Runs the backend conformance suites against every backend.

use std::sync::Arc;

use artifactstore_store::blob::BlobBackend;
use artifactstore_store::blob::fs::FsBlobStore;
use artifactstore_store::blob::s3::S3BlobStore;
use artifactstore_store::conformance;
use artifactstore_store::meta::MetadataStore;
use artifactstore_store::meta::{postgres, sqlite};
use artifactstore_store::testing;

#[tokio::test]
async fn fs_blob_backend_conforms() {
    let root = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::blob_backend(
        || async {
            let dir = root.path().join(
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    .to_string(),
            );
            Arc::new(FsBlobStore::open(dir).await.unwrap()) as Arc<dyn BlobBackend>
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_metadata_conforms() {
    let root = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::metadata(|| async {
        let path = root.path().join(format!(
            "{}.sqlite",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        Arc::new(sqlite::open_path(&path).await.unwrap()) as Arc<dyn MetadataStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_metadata_conforms() {
    let Some(url) = testing::postgres_url() else {
        return;
    };
    conformance::metadata(|| async {
        let schema = testing::fresh_schema();
        Arc::new(postgres::open_in_schema(&url, &schema).await.unwrap()) as Arc<dyn MetadataStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_blob_backend_conforms() {
    let Some(settings) = testing::s3_settings() else {
        return;
    };
    let part = settings.part_size as usize;
    conformance::blob_backend(
        || async {
            let fresh = testing::s3_settings().expect("settings");
            Arc::new(S3BlobStore::open(&fresh).unwrap()) as Arc<dyn BlobBackend>
        },
        Some(part),
    )
    .await;
}
