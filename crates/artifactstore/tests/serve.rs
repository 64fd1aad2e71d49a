//! Black-box tests of `artifactstore serve`: the real binary on a random
//! loopback port with a temp data dir, spoken to over HTTP.

mod common;

use std::process::Command;

use artifactstore_client::Client;
use artifactstore_core::BlobId;
use artifactstore_store::conformance::pattern;
use bytes::Bytes;
use common::{ServerProcess, binary, require_tool, temp_dir};
use sha2::Digest as _;

/// The README's walkthrough: upload with curl, compare with sha256sum and b3sum.
#[test]
fn newcomer_uploads_with_curl_and_gets_both_digests() {
    if !["curl", "sha256sum", "b3sum"]
        .iter()
        .all(|t| require_tool(t))
    {
        return;
    }
    let (_tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let file = _tmp.path().join("report.xml");
    std::fs::write(&file, b"<testsuite name=\"guide-board\" tests=\"3\"/>\n").unwrap();
    let sh = |script: &str| -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("F", &file)
            .env("URL", &server.base)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let sha = sh("sha256sum \"$F\" | cut -d' ' -f1").trim().to_owned();
    let b3 = sh("b3sum \"$F\" | cut -d' ' -f1").trim().to_owned();
    let body = sh(
        "curl -sS --fail-with-body -T \"$F\" \"$URL/blobs/sha256:$(sha256sum \"$F\" | cut -d' ' -f1)\"",
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["sha256"], format!("sha256:{sha}"));
    assert_eq!(json["blake3"], format!("blake3:{b3}"));
    // And it reads back by its BLAKE3 digest.
    let back = sh(&format!(
        "curl -sS --fail \"$URL/blobs/blake3:{b3}\" | sha256sum | cut -d' ' -f1"
    ));
    assert_eq!(back.trim(), sha);
}

#[tokio::test]
async fn upload_session_survives_a_killed_server() {
    let (_tmp, data) = temp_dir();
    let bytes = pattern(5_000_000, 1);
    let id = BlobId::of(&bytes);

    let server = ServerProcess::start(&data, &[]);
    let client = Client::new(&server.base);
    let up = client.create_upload().await.unwrap();
    let offset = client
        .append_upload(&up, 0, bytes[..3_000_001].to_vec())
        .await
        .unwrap();
    assert_eq!(offset, 3_000_001);
    server.kill9();

    let server = ServerProcess::start(&data, &[]);
    let client = Client::new(&server.base);
    assert_eq!(
        client.upload_offset(&up).await.unwrap(),
        3_000_001,
        "HEAD reports the acknowledged offset"
    );
    let offset = client
        .append_upload(&up, 3_000_001, bytes[3_000_001..].to_vec())
        .await
        .unwrap();
    assert_eq!(offset, 5_000_000);
    let info = client
        .finish_upload(&up, &[id.sha256_digest(), id.blake3_digest()], None)
        .await
        .unwrap();
    assert_eq!(info.id, id, "the finished blob has the right digests");
    assert_eq!(
        client.get_blob_bytes(&id.blake3_digest()).await.unwrap(),
        bytes
    );
}

#[tokio::test]
async fn acknowledged_blob_survives_a_killed_server() {
    let (_tmp, data) = temp_dir();
    let bytes = pattern(200_000, 2);
    let id = BlobId::of(&bytes);
    let server = ServerProcess::start(&data, &[]);
    Client::new(&server.base)
        .put_blob(&id.sha256_digest(), bytes.clone())
        .await
        .unwrap();
    server.kill9();
    let server = ServerProcess::start(&data, &[]);
    assert_eq!(
        Client::new(&server.base)
            .get_blob_bytes(&id.sha256_digest())
            .await
            .unwrap(),
        bytes
    );
}

/// 1 GiB through `PUT /blobs` and 256 MiB through a session in 16 MiB
/// chunks: the server's peak RSS must stay flat (well under 100 MiB).
#[tokio::test]
async fn large_uploads_keep_server_memory_flat() {
    const MIB: usize = 1 << 20;
    let (_tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let client = Client::new(&server.base);
    let before = server.peak_rss_kib();

    // 1 GiB made of one random-looking MiB repeated: cheap to generate and
    // to hash on the client, and no two MiB-aligned windows dedupe inside
    // the server since it never looks at content.
    let block = Bytes::from(pattern(MIB, 3));
    let mut sha = sha2::Sha256::new();
    for _ in 0..1024 {
        sha.update(&block);
    }
    let digest = artifactstore_core::Digest::sha256(sha.finalize().into());
    let chunks = futures::stream::iter((0..1024).map({
        let block = block.clone();
        move |_| Ok::<_, std::io::Error>(block.clone())
    }));
    let started = std::time::Instant::now();
    let info = client
        .put_blob(
            &digest,
            artifactstore_client::reqwest::Body::wrap_stream(chunks),
        )
        .await
        .unwrap();
    let put_secs = started.elapsed().as_secs_f64();
    assert_eq!(info.id.size, 1 << 30);
    let after_put = server.peak_rss_kib();

    let up = client.create_upload().await.unwrap();
    let session_block = Bytes::from(pattern(16 * MIB, 4));
    let mut offset = 0;
    let mut sha = sha2::Sha256::new();
    for _ in 0..16 {
        offset = client
            .append_upload(&up, offset, session_block.clone())
            .await
            .unwrap();
        sha.update(&session_block);
    }
    let session_digest = artifactstore_core::Digest::sha256(sha.finalize().into());
    let info = client
        .finish_upload(&up, &[session_digest], None)
        .await
        .unwrap();
    assert_eq!(info.id.size, 256 << 20);
    let after_session = server.peak_rss_kib();

    eprintln!(
        "peak RSS: {} MiB at start, {} MiB after a 1 GiB PUT ({:.0} MiB/s), {} MiB after a 256 MiB session upload",
        before / 1024,
        after_put / 1024,
        1024.0 / put_secs,
        after_session / 1024
    );
    assert!(
        after_session < 100 * 1024,
        "server peak RSS {} KiB exceeds 100 MiB",
        after_session
    );
}

#[test]
fn refuses_a_non_loopback_address_without_tokens() {
    let (_tmp, data) = temp_dir();
    let out = binary()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(!data.exists(), "nothing was created");
}

#[test]
fn config_errors_are_one_line_and_flags_override_the_file() {
    let (tmp, data) = temp_dir();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nlisten_backlog = 5\n").unwrap();
    let out = binary()
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unknown field `listen_backlog`"),
        "{stderr}"
    );

    // The file says a non-loopback address and another data dir; the flags win.
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, "listen = \"0.0.0.0:8080\"\ndata_dir = \"/nonexistent/never\"\n[limits]\nmax_blob_size = \"1 KiB\"\n").unwrap();
    let server = ServerProcess::start(&data, &["--config", good.to_str().unwrap()]);
    assert!(data.join("meta.sqlite").exists());
    // The file's limit applies.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let big = pattern(2048, 5);
    let err = rt
        .block_on(
            Client::new(&server.base).put_blob(&BlobId::of(&big).sha256_digest(), big.clone()),
        )
        .unwrap_err();
    assert_eq!(err.problem().map(|p| p.status), Some(413));
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let (_tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let status = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if server.log().iter().any(|l| l.contains("stopped")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("server did not stop: {:?}", server.log());
}

#[tokio::test]
async fn with_tokens_the_server_may_listen_beyond_loopback_and_demands_them() {
    let (tmp, data) = temp_dir();
    let config = tmp.path().join("tokens.toml");
    // Only the SHA-256 of the token goes into the config.
    let hash = {
        use sha2::Digest as _;
        artifactstore_core::Digest::sha256(sha2::Sha256::digest(b"s3cret").into()).hex()
    };
    std::fs::write(
        &config,
        format!("[[tokens]]\nsubject = \"ci-bot\"\nscopes = [\"read\", \"write\"]\nsha256 = \"{hash}\"\n"),
    )
    .unwrap();
    // 0.0.0.0 is accepted now; the test still talks to it over loopback.
    let mut server =
        ServerProcess::start_on(&data, "0.0.0.0:0", &["--config", config.to_str().unwrap()]);
    server.base = server.base.replace("0.0.0.0", "127.0.0.1");
    let http = artifactstore_client::reqwest::Client::new();
    let anonymous = http
        .get(format!("{}/events", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let data_bytes = b"pushed by ci".to_vec();
    let d = BlobId::of(&data_bytes).sha256_digest();
    let put = http
        .put(format!("{}/blobs/{d}", server.base))
        .bearer_auth("s3cret")
        .body(data_bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let page: serde_json::Value = http
        .get(format!("{}/events", server.base))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["actor"], "ci-bot");
}

/// `verify`, `verify --deep` and `views rebuild` on the same data dir while
/// `serve` runs on it.
#[tokio::test]
async fn verify_and_rebuild_beside_a_running_server() {
    let (_tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let client = Client::new(&server.base);
    let mut ids = Vec::new();
    for i in 0..5u8 {
        let bytes = pattern(10_000 + i as usize, i);
        let id = BlobId::of(&bytes);
        client.put_blob(&id.sha256_digest(), bytes).await.unwrap();
        ids.push(id);
    }
    let admin = |args: &[&str]| {
        let out = binary()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = admin(&["verify", "--deep"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("events: 5 checked") && out.contains("50010 bytes rehashed"),
        "{out}"
    );
    let (ok, out) = admin(&["views", "rebuild"]);
    assert!(ok && out.contains("views rebuilt from 5 events"), "{out}");
    // The server keeps serving, and sees the rebuilt views.
    assert_eq!(
        client.head_blob(&ids[0].blake3_digest()).await.unwrap(),
        Some(ids[0])
    );

    // One flipped byte: a shallow verify cannot see it, a deep one names it.
    let path = data.join(artifactstore_store::blob::fs::FsBlobStore::location_of(
        &ids[2],
    ));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(admin(&["verify"]).0);
    let (ok, out) = admin(&["verify", "--deep"]);
    assert!(!ok);
    assert!(
        out.contains(&format!("FAIL blob {}", ids[2].sha256_digest())),
        "{out}"
    );

    // A missing blob: even a shallow verify names it.
    std::fs::remove_file(
        data.join(artifactstore_store::blob::fs::FsBlobStore::location_of(
            &ids[3],
        )),
    )
    .unwrap();
    let (ok, out) = admin(&["verify"]);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "FAIL blob {}: bytes missing",
            ids[3].sha256_digest()
        )),
        "{out}"
    );
    let (ok, out) = admin(&["verify", "--deep"]);
    assert!(!ok);
    assert_eq!(out.matches("FAIL blob").count(), 2, "{out}");
}

/// The sweeper inside `serve` runs every `[retention] sweep_interval`: a
/// package of a one-second class becomes eligible without anyone sweeping.
#[tokio::test]
async fn serve_sweeps_on_its_interval() {
    let (tmp, data) = temp_dir();
    let config = tmp.path().join("sweep.toml");
    std::fs::write(
        &config,
        "[retention]\nsweep_interval = \"1s\"\n[retention.classes.blink]\ndefault = \"1s\"\n",
    )
    .unwrap();
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let client = Client::new(&server.base);
    let bytes = b"short-lived".to_vec();
    let blob = BlobId::of(&bytes);
    client.put_blob(&blob.sha256_digest(), bytes).await.unwrap();
    let manifest = artifactstore_core::manifest::Manifest::new(
        "ci/blink".into(),
        vec![artifactstore_core::manifest::FileEntry {
            path: "f".into(),
            blob,
            media_type: None,
        }],
        Default::default(),
    )
    .unwrap();
    let id = client.create_package(&manifest, "blink").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let state = client.retention(&id).await.unwrap();
        if state["eligible_for_deletion"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve never swept: {state}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let history = client.retention_history(&id).await.unwrap();
    assert_eq!(
        history.last().unwrap()["type"],
        "v1.retention.deletion_eligible"
    );
    assert_eq!(history.last().unwrap()["actor"], "sweeper");
}

/// Two `serve` processes on one store, each sweeping every second, and
/// `retention sweep` commands run beside them at the same moment: every
/// package becomes eligible exactly once.
#[tokio::test]
async fn sweepers_in_several_processes_record_each_transition_once() {
    const PACKAGES: usize = 60;
    let (tmp, data) = temp_dir();
    let config = tmp.path().join("sweep.toml");
    std::fs::write(
        &config,
        "[retention]\nsweep_interval = \"1s\"\n[retention.classes.blink]\ndefault = \"2s\"\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let a = ServerProcess::start(&data, &["--config", cfg]);
    let b = ServerProcess::start(&data, &["--config", cfg]);
    let (ca, cb) = (Client::new(&a.base), Client::new(&b.base));
    let manifest =
        artifactstore_core::manifest::Manifest::new("ci/blink".into(), vec![], Default::default())
            .unwrap();
    for i in 0..PACKAGES {
        let client = if i % 2 == 0 { &ca } else { &cb };
        client.create_package(&manifest, "blink").await.unwrap();
    }
    // Four more sweepers as separate processes, started together while the
    // two servers keep sweeping.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let sweeps: Vec<_> = (0..4)
        .map(|_| {
            binary()
                .args(["retention", "sweep", "--config", cfg, "--data-dir"])
                .arg(&data)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut s in sweeps {
        assert!(s.wait().unwrap().success());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let count_eligible = || async {
        let mut n = 0;
        let mut after = 0;
        loop {
            let (page, next) = cb.events_page(after, 1000).await.unwrap();
            if page.is_empty() {
                return n;
            }
            n += page
                .iter()
                .filter(|e| e["type"] == "v1.retention.deletion_eligible")
                .count();
            after = next;
        }
    };
    while count_eligible().await < PACKAGES {
        assert!(
            std::time::Instant::now() < deadline,
            "not every package became eligible"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Let the servers sweep a few more times: nothing may be recorded twice.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        count_eligible().await,
        PACKAGES,
        "exactly one event per package"
    );
}
