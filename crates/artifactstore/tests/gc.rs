//! Garbage collection through the binary: `gc --dry-run` and `gc` beside a
//! running server, what a deleted package looks like over HTTP, and a
//! corrupt blob's download failing loudly.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use artifactstore_client::Client;
use artifactstore_client::reqwest::{self, StatusCode};
use artifactstore_core::BlobId;
use artifactstore_core::manifest::{FileEntry, Manifest};
use common::{ServerProcess, binary, temp_dir};
use serde_json::Value;

const CONFIG: &str = r#"
[retention]
sweep_interval = "1h"
[retention.classes.gone]
default = "1s"
[retention.classes.keep]
permanent = true
[gc]
interval = "1h"
grace = "0s"
"#;

fn admin(args: &[&str], config: &Path, data: &Path) -> Output {
    binary()
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn ok_stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
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

async fn problem_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE],
        "application/problem+json"
    );
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_deletes_an_expired_package_and_keeps_its_record() {
    let (tmp, data) = temp_dir();
    let config = tmp.path().join("artifactstore.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let client = Client::new(&server.base);
    let own = b"only the expiring package has this".to_vec();
    let shared = b"both packages have this".to_vec();
    for d in [&own, &shared] {
        client
            .put_blob(&BlobId::of(d).sha256_digest(), d.clone())
            .await
            .unwrap();
    }
    let gone = client
        .create_package(&manifest(&[("own", &own), ("shared", &shared)]), "gone")
        .await
        .unwrap();
    let id = gone["id"].as_str().unwrap().to_owned();
    let keep = client
        .create_package(&manifest(&[("shared", &shared)]), "keep")
        .await
        .unwrap();
    assert!(gone["deleted"].is_null());
    std::thread::sleep(std::time::Duration::from_millis(1200));
    ok_stdout(&admin(&["retention", "sweep"], &config, &data));

    let own_digest = BlobId::of(&own).sha256_digest().to_string();
    let dry = ok_stdout(&admin(&["gc", "--dry-run"], &config, &data));
    assert!(dry.contains(&format!("would delete package {id}")), "{dry}");
    assert!(
        dry.contains(&format!("would delete blob {own_digest}")),
        "{dry}"
    );
    assert!(
        dry.contains("dry run, nothing changed: 1 package(s), 1 blob(s)"),
        "{dry}"
    );
    assert!(client.package(&id).await.unwrap()["deleted"].is_null());

    let real = ok_stdout(&admin(&["gc"], &config, &data));
    assert!(real.contains(&format!("deleted package {id}")), "{real}");
    assert!(
        real.contains(&format!("deleted blob {own_digest}")),
        "{real}"
    );

    let package = client.package(&id).await.unwrap();
    let deleted = &package["deleted"];
    assert_eq!(deleted["reason"], "retention expired");
    assert_eq!(deleted["bytes_freed"], own.len() as u64);
    assert!(deleted["seq"].as_u64().unwrap() > 0 && deleted["at"].is_string());
    assert_eq!(package["manifest"], gone["manifest"], "the record remains");

    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.base);
    let (status, p) = problem_of(
        http.get(url(&format!("/packages/{id}/files/own")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(p["type"], "urn:artifactstore:problem:package-deleted");
    assert_eq!(p["deleted_seq"], deleted["seq"]);
    for (path, body) in [
        ("retention/holds", serde_json::json!({"reason": "too late"})),
        (
            "retention/extensions",
            serde_json::json!({"new_expires_at": "2100-01-01T00:00:00.000000Z", "reason": "too late"}),
        ),
    ] {
        let resp = http
            .post(url(&format!("/packages/{id}/{path}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, p) = problem_of(resp).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}");
        assert_eq!(p["type"], "urn:artifactstore:problem:package-deleted");
    }
    for readable in ["manifest", "retention", "retention/history"] {
        let resp = http
            .get(url(&format!("/packages/{id}/{readable}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{readable}");
    }
    let blob = http
        .get(url(&format!("/blobs/{own_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), StatusCode::NOT_FOUND);
    let keep_id = keep["id"].as_str().unwrap();
    let kept = client.package_file(keep_id, "shared").await.unwrap();
    assert_eq!(kept.bytes().await.unwrap().as_ref(), &shared[..]);

    let events: Vec<String> = client
        .events_page(0, 100)
        .await
        .unwrap()
        .0
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events.iter().filter(|t| *t == "v1.package.deleted").count(),
        1
    );
    assert_eq!(events.last().map(String::as_str), Some("v1.blob.deleted"));
    ok_stdout(&admin(&["verify", "--deep"], &config, &data));
    let ls = |deleted: &str| {
        let out = binary()
            .args(["ls", "--server", &server.base, "--deleted", deleted])
            .output()
            .unwrap();
        ok_stdout(&out)
    };
    let listed = ls("true");
    assert!(
        listed.contains(&id) && listed.contains("deleted 20"),
        "{listed}"
    );
    assert!(!listed.contains(keep_id), "{listed}");
    let listed = ls("false");
    assert!(
        listed.contains(keep_id) && !listed.contains(&id),
        "{listed}"
    );

    // Nothing more to do; a bad flag is a one-line refusal.
    let again = ok_stdout(&admin(&["gc"], &config, &data));
    assert!(again.contains("0 package(s), 0 blob(s)"), "{again}");
    let bad = binary().args(["gc", "--dry"]).output().unwrap();
    assert!(!bad.status.success());
}

/// A whole-blob download of bytes that changed on disk never arrives
/// complete: a large one is cut short, a small one refused with a 500.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_blob_download_is_aborted() {
    let (_tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let client = Client::new(&server.base);
    let bytes = artifactstore_store::conformance::pattern(3 << 20, 5);
    let id = BlobId::of(&bytes);
    client
        .put_blob(&id.sha256_digest(), bytes.clone())
        .await
        .unwrap();
    let path = data.join(artifactstore_store::blob::fs::FsBlobStore::location_of(&id));
    let mut stored = std::fs::read(&path).unwrap();
    stored[2_000_000] ^= 0x40;
    std::fs::write(&path, &stored).unwrap();

    let resp = client.get_blob(&id.sha256_digest(), None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.content_length(), Some(bytes.len() as u64));
    let body = resp.bytes().await;
    assert!(body.is_err(), "the body must not arrive complete");
    // The log arrives through a pipe; give it a moment.
    let logged = || {
        server
            .log()
            .iter()
            .any(|l| l.contains("do not match the blob's digest"))
    };
    for _ in 0..50 {
        if logged() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(logged(), "{:?}", server.log());
    // A range is served as stored: it cannot be checked without the rest.
    let part = client
        .get_blob(&id.sha256_digest(), Some("bytes=0-99"))
        .await
        .unwrap();
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[..100]);

    // A small blob is checked before the response starts: a clean 500.
    let small = b"a small report".to_vec();
    let small_id = BlobId::of(&small);
    client
        .put_blob(&small_id.sha256_digest(), small)
        .await
        .unwrap();
    let path = data.join(artifactstore_store::blob::fs::FsBlobStore::location_of(
        &small_id,
    ));
    std::fs::write(&path, b"a smell report").unwrap();
    let resp = reqwest::get(format!(
        "{}/blobs/{}",
        server.base,
        small_id.sha256_digest()
    ))
    .await
    .unwrap();
    let (status, p) = problem_of(resp).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(p["type"], "urn:artifactstore:problem:blob-corrupt");
}

/// A collection killed between moving a blob to the trash and committing
/// leaves a referenced blob unreadable; `serve` puts it back before it
/// answers its first request.
#[tokio::test(flavor = "multi_thread")]
async fn serve_puts_back_what_an_interrupted_collection_trashed() {
    let (_tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let client = Client::new(&server.base);
    let bytes = b"evidence that must last".to_vec();
    let id = BlobId::of(&bytes);
    client
        .put_blob(&id.sha256_digest(), bytes.clone())
        .await
        .unwrap();
    let package = client
        .create_package(&manifest(&[("report", &bytes)]), "permanent-record")
        .await
        .unwrap();
    server.kill9();

    // What the collector's trash move looks like on disk.
    let store = artifactstore_store::Store::open_embedded(&data, None, Default::default())
        .await
        .unwrap();
    let record = store.blob(&id.sha256_digest()).await.unwrap();
    drop(store);
    let trashed = data.join("trash").join(format!(
        "{}.{}",
        record.stored_seq,
        record.location.replace('/', "+")
    ));
    std::fs::rename(data.join(&record.location), &trashed).unwrap();

    let server = ServerProcess::start(&data, &[]);
    let client = Client::new(&server.base);
    let file = client
        .package_file(package["id"].as_str().unwrap(), "report")
        .await
        .unwrap();
    assert_eq!(file.bytes().await.unwrap().as_ref(), &bytes[..]);
    assert!(!trashed.exists());
    assert!(
        server.log().iter().any(|l| l.contains("restored=1")),
        "{:?}",
        server.log()
    );
}
