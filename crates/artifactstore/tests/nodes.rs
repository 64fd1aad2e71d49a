//! Several nodes: two `serve` processes on one PostgreSQL database and one
//! bucket, written to through both at once while both sweep and collect
//! every second. Needs the scale-out servers (`.ci/services`); under
//! `CI=true` their absence fails the test.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_client::reqwest::{self, StatusCode};
use artifactstore_client::{Client, ClientError};
use artifactstore_core::BlobId;
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_store::testing;
use common::{ServerProcess, binary};
use futures::StreamExt;
use serde_json::Value;

const WRITERS: u64 = 4;
const ROUNDS: u64 = 12;

fn config(pg: &str, s3: &artifactstore_store::blob::s3::S3Settings) -> String {
    format!(
        r#"
[metadata]
url = "{pg}"
[blobs]
backend = "s3"
[blobs.s3]
endpoint = "{endpoint}"
bucket = "{bucket}"
region = "{region}"
access_key_id = "{key}"
secret_access_key = "{secret}"
prefix = "{prefix}"
part_size = "5 MiB"
presign_downloads = "60s"
[retention]
sweep_interval = "1s"
[retention.classes.brief]
default = "2s"
[retention.classes.kept]
permanent = true
[gc]
interval = "1s"
grace = "0s"
upload_expiry = "1h"
"#,
        endpoint = s3.endpoint.as_deref().unwrap_or_default(),
        bucket = s3.bucket,
        region = s3.region,
        key = s3.access_key_id.as_deref().unwrap_or_default(),
        secret = s3.secret_access_key.as_deref().unwrap_or_default(),
        prefix = s3.prefix,
    )
}

/// Contents shared between writers: the same bytes arrive through both
/// nodes, and blobs fall out of use as their packages expire.
fn content(n: u64) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.extend(artifactstore_store::conformance::pattern(
        300 + 71 * (n % 11) as usize,
        n as u8,
    ));
    v
}

fn manifest(files: &[(String, Vec<u8>)]) -> Manifest {
    let files = files
        .iter()
        .map(|(path, data)| FileEntry {
            path: path.clone(),
            blob: BlobId::of(data),
            media_type: None,
        })
        .collect();
    Manifest::new("nodes/test".into(), files, BTreeMap::new()).unwrap()
}

/// Uploads `data` through a session that moves between the nodes: created
/// on one, appended on the other, finished on the first.
async fn upload_across(first: &Client, second: &Client, data: &[u8]) {
    let id = first.create_upload().await.unwrap();
    let half = data.len() / 2;
    let offset = second
        .append_upload(&id, 0, data[..half].to_vec())
        .await
        .unwrap();
    let offset = first
        .append_upload(&id, offset, data[half..].to_vec())
        .await
        .unwrap();
    assert_eq!(offset, data.len() as u64);
    let stored = second
        .finish_upload(&id, &[BlobId::of(data).sha256_digest()], None)
        .await
        .unwrap();
    assert_eq!(stored.id, BlobId::of(data));
}

type Acknowledged = (String, &'static str, Vec<(String, Vec<u8>)>);

async fn writer(w: u64, nodes: [Client; 2]) -> Vec<Acknowledged> {
    let mut out = Vec::new();
    for round in 0..ROUNDS {
        let (up, create) = (
            &nodes[(w + round) as usize % 2],
            &nodes[(w + round + 1) as usize % 2],
        );
        let files: Vec<(String, Vec<u8>)> = (0..3)
            .map(|k| {
                let n = round + (w * 7 + k * 3) % 5;
                (format!("f{k}"), content(n))
            })
            .collect();
        for (k, (_, data)) in files.iter().enumerate() {
            if k == 0 {
                upload_across(up, create, data).await;
            } else {
                up.put_blob(&BlobId::of(data).sha256_digest(), data.clone())
                    .await
                    .unwrap();
            }
        }
        let class = if (w + round).is_multiple_of(4) {
            "kept"
        } else {
            "brief"
        };
        out.push(create_package(create, up, files, class).await);
    }
    out
}

/// Creates a package of `files` on `create`. A collector on either node
/// may take a blob between its upload and the package: the 422 names it,
/// and it goes up again (through `up`).
async fn create_package(
    create: &Client,
    up: &Client,
    files: Vec<(String, Vec<u8>)>,
    class: &'static str,
) -> Acknowledged {
    let m = manifest(&files);
    loop {
        match create.create_package(&m, class).await {
            Ok(p) => return (p["id"].as_str().unwrap().to_owned(), class, files),
            Err(ClientError::Problem(p)) if p.code() == "missing-blobs" => {
                for (_, data) in &files {
                    up.put_blob(&BlobId::of(data).sha256_digest(), data.clone())
                        .await
                        .unwrap();
                }
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

async fn all_events(c: &Client) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let (page, next) = c.events_page(after, 1000).await.unwrap();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
        after = next;
    }
}

async fn count_deleted(c: &Client) -> usize {
    let filter = [("deleted", "true".to_owned())];
    let (mut n, mut cursor) = (0, None);
    loop {
        let (items, next) = c.packages(&filter, cursor.as_deref()).await.unwrap();
        n += items.len();
        match next {
            Some(next) => cursor = Some(next),
            None => return n,
        }
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_one_store() {
    let Some(pg) = testing::fresh_postgres_database().await else {
        return;
    };
    let s3 = testing::s3_settings().expect("S3 is configured with PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("artifactstore.toml");
    std::fs::write(&cfg, config(&pg, &s3)).unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    // Each node has a data directory of its own: nothing in it is shared.
    let a = ServerProcess::start(&dir.path().join("a"), &["--config", cfg_arg]);
    let b = ServerProcess::start(&dir.path().join("b"), &["--config", cfg_arg]);
    let (ca, cb) = (Client::new(&a.base), Client::new(&b.base));

    // A follower on node A, from the start of the log.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, Value)>::new()));
    let follower = {
        let (ca, seen) = (ca.clone(), seen.clone());
        tokio::spawn(async move {
            let mut stream = Box::pin(ca.follow_events(0).await.unwrap());
            while let Some(e) = stream.next().await {
                let (seq, text) = e.unwrap();
                seen.lock()
                    .unwrap()
                    .push((seq, serde_json::from_str(&text).unwrap()));
            }
        })
    };

    // A blob larger than a part, through a session that crosses nodes
    // twice: parts go up from both.
    let big = artifactstore_store::conformance::pattern(11 << 20 | 777, 42);
    upload_across(&ca, &cb, &big).await;
    let big_package = create_package(&cb, &ca, vec![("big".into(), big.clone())], "kept").await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, [ca.clone(), cb.clone()])))
        .collect();
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    acknowledged.push(big_package);

    // Let both nodes sweep and collect what expired (the brief class lasts
    // 2s; both loops run every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let deleted = count_deleted(&cb).await;
        let brief = acknowledged.iter().filter(|p| p.1 == "brief").count();
        if deleted == brief {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the collectors deleted {deleted} of {brief} expired packages"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // One gapless order, the same through either node.
    let events = all_events(&ca).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless");
    assert_eq!(all_events(&cb).await, events, "both nodes serve one log");

    // Exactly one event per transition: each brief package became eligible
    // once and was deleted once; a kept one never; a blob's events
    // alternate stored, deleted, stored, ….
    let mut by_subject: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in &events {
        by_subject
            .entry(e["subject"].as_str().unwrap())
            .or_default()
            .push(e["type"].as_str().unwrap());
    }
    for (id, class, _) in &acknowledged {
        let types = &by_subject[id.as_str()];
        let count = |t: &str| types.iter().filter(|x| **x == t).count();
        let expected = usize::from(*class == "brief");
        assert_eq!(
            count("v1.retention.deletion_eligible"),
            expected,
            "{id}: {types:?}"
        );
        assert_eq!(count("v1.package.deleted"), expected, "{id}: {types:?}");
    }
    for (subject, types) in &by_subject {
        if !subject.starts_with("sha256:") {
            continue;
        }
        for pair in types.windows(2) {
            assert_ne!(pair[0], pair[1], "{subject}: {types:?}");
        }
        assert_eq!(types[0], "v1.blob.stored", "{subject}: {types:?}");
    }

    // Every package that is still live reads back through either node.
    let mut checked = 0;
    for (id, class, files) in &acknowledged {
        if *class == "brief" {
            continue;
        }
        for node in [&ca, &cb] {
            for (path, data) in files {
                let got = node
                    .package_file(id, path)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                assert!(
                    got == data.as_slice(),
                    "{id} {path} through {}",
                    node.base()
                );
                checked += 1;
            }
        }
    }

    // Downloads redirect to a link the bucket signed; the bytes come from
    // there, with the digests in the server's answer.
    let direct = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let d = BlobId::of(&big).sha256_digest();
    let r = direct
        .get(format!("{}/blobs/{d}", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers()["artifactstore-sha256"], d.to_string().as_str());
    let link = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(link.starts_with(s3.endpoint.as_deref().unwrap()), "{link}");
    let fetched = reqwest::get(&link).await.unwrap().bytes().await.unwrap();
    assert!(fetched == big.as_slice(), "the signed link serves the blob");

    // The follower on A saw every event, those written through B too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < events.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower fell behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follower.abort();
    let followed: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        followed[..events.len()],
        events[..],
        "SSE on A is the whole log"
    );

    // Leader work ran on the nodes, one at a time.
    let mut runs = Vec::new();
    for node in [&a, &b] {
        let text = reqwest::get(format!("{}/metrics", node.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        runs.push(metric(&text, "artifactstore_gc_runs_total"));
    }
    assert!(runs.iter().sum::<u64>() > 0, "collections ran: {runs:?}");

    // The store as a whole: chain, views against a replay, every byte.
    drop((a, b));
    let verify = binary()
        .args(["verify", "--deep", "--config", cfg_arg, "--data-dir"])
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    eprintln!(
        "two nodes: {} packages through both nodes ({} live files read through each), {} events, \
         collections per node {runs:?}",
        acknowledged.len(),
        checked / 2,
        events.len()
    );
}
