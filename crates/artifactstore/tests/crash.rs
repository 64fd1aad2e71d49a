//! Crash safety (issue 5): the server is killed with SIGKILL at random
//! moments while clients upload (in one request and in resumable sessions),
//! create packages, and while its own sweeper and collector run every
//! second with no grace period. It is restarted each time. Beside it,
//! `artifactstore gc` processes on the same store are killed mid-run, over
//! and over. Afterwards the
//! store verifies deeply, every acknowledged package is complete or was
//! deleted by the collector after it expired, and what the kills left
//! behind is exactly what the next collection removes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifactstore_client::Client;
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_core::{BlobId, Digest};
use bytes::Bytes;
use common::{ServerProcess, binary, temp_dir};

const KILLS: u32 = 60;

const CONFIG: &str = r#"
[retention]
sweep_interval = "1s"
[retention.classes.gone]
default = "1s"
[retention.classes.keep]
permanent = true
[gc]
interval = "1s"
grace = "0s"
upload_expiry = "1h"
"#;

/// The same store, collected once more with every upload counted as
/// expired: what a collection after the kills removes.
const FINAL_GC: &str = r#"
[retention.classes.gone]
default = "1s"
[retention.classes.keep]
permanent = true
[gc]
grace = "0s"
upload_expiry = "0s"
"#;

struct XorShift(u64);
impl XorShift {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// File contents: a sliding window of numbered contents, so that blobs
/// fall out of use and are collected while others still pick them.
fn content(n: u64) -> Vec<u8> {
    let len = [100, 4096, 70_000, 600_000][(n % 4) as usize];
    let mut v: Vec<u8> = n.to_le_bytes().to_vec();
    v.extend((0..len).map(|i: usize| (i as u8).wrapping_mul(7).wrapping_add(n as u8)));
    v
}

struct Acknowledged {
    id: String,
    class: &'static str,
    files: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
struct Counts {
    blobs_acknowledged: AtomicU64,
    sessions_finished: AtomicU64,
    failed_requests: AtomicU64,
    reuploads: AtomicU64,
}

/// Uploads one blob: small ones in one request, others through a session
/// in two chunks. An error when the server went away mid-way.
async fn upload(client: &Client, data: &[u8], counts: &Counts) -> Result<(), String> {
    let id = BlobId::of(data);
    let bytes = Bytes::copy_from_slice(data);
    let result = if data.len() < 10_000 {
        client.put_blob(&id.sha256_digest(), bytes).await.map(drop)
    } else {
        async {
            let session = client.create_upload().await?;
            let half = data.len() / 2;
            client
                .append_upload(&session, 0, bytes.slice(..half))
                .await?;
            client
                .finish_upload(
                    &session,
                    &[id.sha256_digest()],
                    Some(bytes.slice(half..).into()),
                )
                .await?;
            counts.sessions_finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        .await
    };
    match result {
        Ok(()) => {
            counts.blobs_acknowledged.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// One client: pushes packages against whatever server is up, forever.
async fn client_loop(
    seed: u64,
    base: Arc<Mutex<String>>,
    window: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Vec<Acknowledged> {
    let mut rng = XorShift(seed);
    let mut acknowledged = Vec::new();
    'packages: while !stop.load(Ordering::SeqCst) {
        let client = Client::new(base.lock().unwrap().as_str());
        let start = window.fetch_add(1, Ordering::SeqCst) / 4;
        let files: Vec<(String, Vec<u8>)> = (0..1 + rng.next(3))
            .map(|k| {
                let n = start + rng.next(12);
                (format!("d{k}/f{n}"), content(n))
            })
            .collect();
        for (_, data) in &files {
            if upload(&client, data, &counts).await.is_err() {
                counts.failed_requests.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue 'packages;
            }
        }
        let entries = files
            .iter()
            .map(|(path, data)| FileEntry {
                path: path.clone(),
                blob: BlobId::of(data),
                media_type: None,
            })
            .collect();
        let manifest = Manifest::new("crash/test".into(), entries, BTreeMap::new()).unwrap();
        let class = if rng.next(3) == 0 { "keep" } else { "gone" };
        for _ in 0..3 {
            match client.create_package(&manifest, class).await {
                Ok(p) => {
                    acknowledged.push(Acknowledged {
                        id: p["id"].as_str().unwrap().to_owned(),
                        class,
                        files,
                    });
                    continue 'packages;
                }
                Err(e) if e.problem().is_some_and(|p| p.code() == "missing-blobs") => {
                    counts.reuploads.fetch_add(1, Ordering::SeqCst);
                    for (_, data) in &files {
                        if upload(&client, data, &counts).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    // The server died: the package may or may not exist; it
                    // was not acknowledged, so nothing is claimed for it.
                    assert!(e.problem().is_none(), "refused: {e}");
                    counts.failed_requests.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue 'packages;
                }
            }
        }
    }
    acknowledged
}

/// Trashed blobs the server put back (at start or before a collection):
/// the `restored=N` of its log lines.
fn restored_in(log: &[String]) -> u64 {
    log.iter()
        .filter_map(|l| l.split("restored=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Bytes on disk that no blob row names, read through the store library.
async fn orphaned_blob_files(data: &Path) -> usize {
    let store = artifactstore_store::Store::open_embedded(data, None, Default::default())
        .await
        .unwrap();
    let mut orphans = 0;
    for path in files_in(&data.join("blobs")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let digest: Digest = format!("blake3:{name}").parse().unwrap();
        if store.blob(&digest).await.is_err() {
            orphans += 1;
        }
    }
    orphans
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let (tmp, data) = temp_dir();
    let config = tmp.path().join("artifactstore.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    report(format_args!("crash test seed {seed}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut server = ServerProcess::start(&data, &["--config", &config_arg]);
    let base = Arc::new(Mutex::new(server.base.clone()));
    let window = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let clients: Vec<_> = (0..4)
        .map(|c| {
            runtime.spawn(client_loop(
                seed ^ ((c + 1) * 0x9E37_79B9),
                base.clone(),
                window.clone(),
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();

    // Beside the server, `artifactstore gc` processes on the same store,
    // each killed at a random moment: kills that land inside a collection
    // (between a trash move and its commit, inside a batch, …).
    let collector = {
        let (stop, data, config_arg) = (stop.clone(), data.clone(), config_arg.clone());
        std::thread::spawn(move || {
            let mut rng = XorShift(seed.rotate_left(17) | 1);
            let (mut killed, mut finished) = (0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                let mut gc = binary()
                    .args(["gc", "--config", &config_arg, "--data-dir"])
                    .arg(&data)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                std::thread::sleep(Duration::from_millis(5 + rng.next(60)));
                if gc.try_wait().unwrap().is_none() {
                    let _ = gc.kill();
                    killed += 1;
                } else {
                    finished += 1;
                }
                let _ = gc.wait();
            }
            (killed, finished)
        })
    };

    let mut rng = XorShift(seed);
    let started = Instant::now();
    let mut collections_logged = 0;
    let mut restored = 0;
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(100 + rng.next(600)));
        let log = server.log();
        collections_logged += log
            .iter()
            .filter(|l| l.contains("garbage collection"))
            .count();
        restored += restored_in(&log);
        server.kill9();
        server = ServerProcess::start(&data, &["--config", &config_arg]);
        *base.lock().unwrap() = server.base.clone();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (gc_killed, gc_finished) = collector.join().unwrap();
    let acknowledged: Vec<Acknowledged> = runtime
        .block_on(futures::future::join_all(clients))
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();

    // Every acknowledged package: complete, or deleted after it expired.
    let client = Client::new(&server.base);
    let (mut live, mut deleted) = (0, 0);
    runtime.block_on(async {
        for p in &acknowledged {
            let package = client.package(&p.id).await.unwrap();
            if !package["deleted"].is_null() {
                assert_eq!(p.class, "gone", "{} was deleted but is permanent", p.id);
                deleted += 1;
                continue;
            }
            let mut complete = true;
            for (path, bytes) in &p.files {
                match client.package_file(&p.id, path).await {
                    Ok(resp) => {
                        let body = resp.bytes().await.unwrap();
                        assert_eq!(body.as_ref(), &bytes[..], "{} {path}", p.id);
                    }
                    // The server's collector still runs: a package that
                    // expired may be deleted between the two reads.
                    Err(e) if e.problem().is_some_and(|p| p.status == 410) => {
                        let now = client.package(&p.id).await.unwrap();
                        assert!(!now["deleted"].is_null() && p.class == "gone", "{e}");
                        complete = false;
                        break;
                    }
                    Err(e) => panic!("{} {path}: {e}", p.id),
                }
            }
            if complete {
                live += 1;
            } else {
                deleted += 1;
            }
        }
    });
    drop(server);

    let verify = binary()
        .args(["verify", "--deep", "--config", &config_arg, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "verify --deep: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // What the kills left: staging objects, bytes without a row, trash.
    let staging = files_in(&data.join("staging")).len();
    let trash = files_in(&data.join("trash")).len();
    let orphans = runtime.block_on(orphaned_blob_files(&data));
    let final_config = tmp.path().join("final.toml");
    std::fs::write(&final_config, FINAL_GC).unwrap();
    let gc = binary()
        .args([
            "gc",
            "--config",
            final_config.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(files_in(&data.join("staging")).is_empty(), "staging left");
    assert!(files_in(&data.join("trash")).is_empty(), "trash left");
    assert_eq!(
        runtime.block_on(orphaned_blob_files(&data)),
        0,
        "bytes without a row"
    );
    let verify = binary()
        .args(["verify", "--deep", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    report(format_args!(
        "crash test: {KILLS} SIGKILLs of the server in {:.0?} ({} collections logged between \
         kills), and {gc_killed} of `artifactstore gc` processes mid-run ({gc_finished} ran to \
                  the end; the server put back {restored} trashed blob(s) of interrupted ones); \
         {} blobs acknowledged ({} through sessions), {} requests cut off by a kill, {} package \
         creations refused for collected blobs and retried; {} packages acknowledged: {live} \
         complete byte for byte, {deleted} deleted by the collector after expiry; left for the \
         next collection: {staging} staging objects, {orphans} blob files without a row, {trash} \
         trashed blobs; after it none; verify --deep passed before and after",
        started.elapsed(),
        collections_logged,
        counts.blobs_acknowledged.load(Ordering::SeqCst),
        counts.sessions_finished.load(Ordering::SeqCst),
        counts.failed_requests.load(Ordering::SeqCst),
        counts.reuploads.load(Ordering::SeqCst),
        acknowledged.len(),
    ));
    assert!(live > 0 && deleted > 0, "both outcomes exercised");
    assert!(gc_killed >= 50, "collections killed: {gc_killed}");
}

/// Writes straight to stderr, past the test harness's capture (which takes
/// only `print!`-family output), so the counts show in every CI log.
fn report(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}
