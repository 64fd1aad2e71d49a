//! The client commands: `push`, `pull`, `ls`, `show`, `events`. They speak
//! to a server through `artifactstore-client`; every rule they rely on
//! (manifest validation, path safety) comes from `artifactstore-core`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use artifactstore_client::reqwest::Body;
use artifactstore_client::{Client, ClientError};
use artifactstore_core::manifest::{FileEntry, Manifest, validate_path};
use artifactstore_core::{BlobHasher, BlobId};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Attempts per request before a transfer gives up (transport errors and
/// 503 only: anything else is an answer, not a hiccup).
const ATTEMPTS: u32 = 8;
const READ_CHUNK: usize = 1 << 20;

/// A progress bar on a terminal, nothing otherwise.
fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(what.to_owned())
}

fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Http(_) => true,
        ClientError::Problem(p) => p.status == 503,
        ClientError::Protocol(_) => false,
    }
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
}

/// A file found under the pushed directory.
struct Local {
    path: String,
    abs: PathBuf,
    blob: BlobId,
}

/// Regular files under `root`, as manifest paths (`/`-separated, UTF-8).
/// Symlinks and other special files are refused rather than guessed at.
fn walk(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let abs = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("stat {}", abs.display()))?;
            if kind.is_dir() {
                stack.push(abs);
            } else if kind.is_file() {
                let rel = abs.strip_prefix(root).unwrap_or(&abs);
                let parts: Option<Vec<&str>> =
                    rel.components().map(|c| c.as_os_str().to_str()).collect();
                let path = parts
                    .map(|p| p.join("/"))
                    .with_context(|| format!("{} is not valid UTF-8", abs.display()))?;
                validate_path(&path).with_context(|| format!("{}", abs.display()))?;
                out.push((path, abs));
            } else {
                bail!(
                    "{} is not a regular file or directory (symlinks are not pushed)",
                    abs.display()
                );
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Both digests of every file, in their order, `jobs` files at a time.
///
/// Threads of its own take the next file as they finish one: with a hop to
/// the blocking pool per file, the hops (a wake-up and a context switch
/// each) cost a tree of ten thousand small files more than the hashing.
async fn hash_files(
    files: Vec<(String, PathBuf)>,
    jobs: usize,
    progress: ProgressBar,
) -> anyhow::Result<Vec<Local>> {
    tokio::task::spawn_blocking(move || {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let mut hashed: Vec<(usize, anyhow::Result<BlobId>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..jobs.clamp(1, files.len().max(1)))
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((_, abs)) = files.get(i) else { break };
                            let blob = hash_file(abs, &progress);
                            failed.fetch_or(blob.is_err(), Ordering::Relaxed);
                            done.push((i, blob));
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        hashed.sort_unstable_by_key(|(i, _)| *i);
        if hashed.len() != files.len() {
            // Only a failure stops the workers early, and it is in here.
            if let Some(pos) = hashed.iter().position(|(_, r)| r.is_err()) {
                return Err(hashed.swap_remove(pos).1.unwrap_err());
            }
            bail!("a hashing thread panicked");
        }
        files
            .into_iter()
            .zip(hashed)
            .map(|((path, abs), (_, blob))| {
                Ok(Local {
                    path,
                    abs,
                    blob: blob?,
                })
            })
            .collect()
    })
    .await?
}

/// Both digests of a file, in one read.
fn hash_file(abs: &Path, progress: &ProgressBar) -> anyhow::Result<BlobId> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(abs).with_context(|| format!("opening {}", abs.display()))?;
    let mut hasher = BlobHasher::new();
    // No bigger than the file (and one byte more, to see its end in the
    // same read): zeroing a whole chunk for each of ten thousand small
    // files was a third of a push's CPU.
    let len = file
        .metadata()
        .with_context(|| format!("stat {}", abs.display()))?
        .len();
    let size = usize::try_from(len).map_or(READ_CHUNK, |l| l.saturating_add(1).min(READ_CHUNK));
    let mut buf = vec![0u8; size];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", abs.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.inc(n as u64);
    }
    Ok(hasher.finish())
}

/// `len` bytes of a file from `offset`, as a request body that reports
/// progress as it is sent.
async fn file_body(
    abs: &Path,
    offset: u64,
    len: u64,
    progress: ProgressBar,
) -> anyhow::Result<Body> {
    if len <= READ_CHUNK as u64 {
        // Read in one call on the blocking pool: streamed, a small file
        // (most of a build's outputs) costs a hop there for the open, the
        // seek and each read, and a buffer of READ_CHUNK bytes.
        let path = abs.to_owned();
        let bytes = tokio::task::spawn_blocking(move || read_at(&path, offset, len))
            .await?
            .with_context(|| format!("reading {}", abs.display()))?;
        progress.inc(bytes.len() as u64);
        return Ok(Body::from(bytes));
    }
    let mut file = tokio::fs::File::open(abs)
        .await
        .with_context(|| format!("opening {}", abs.display()))?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_CHUNK)
        .inspect_ok(move |chunk: &Bytes| {
            progress.inc(chunk.len() as u64);
        });
    Ok(Body::wrap_stream(stream))
}

/// At most `len` bytes of the file at `path` from `offset`.
fn read_at(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Uploads one file: in one request up to `chunk` bytes, else through a
/// session whose offset the server keeps, so a failed `PATCH` resumes where
/// the server says it stopped (after a dropped connection or a server
/// restart) rather than from the start.
async fn upload(
    client: &Client,
    local: &Local,
    chunk: u64,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    let size = local.blob.size;
    if size <= chunk {
        let mut attempt = 0;
        loop {
            let body = file_body(&local.abs, 0, size, progress.clone()).await?;
            match client.put_blob(&local.blob.sha256_digest(), body).await {
                Ok(_) => return Ok(()),
                Err(e) if retryable(&e) && attempt + 1 < ATTEMPTS => {
                    progress.dec(size.min(progress.position()));
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(e).with_context(|| format!("uploading {}", local.path)),
            }
        }
    }
    let id = client
        .create_upload()
        .await
        .with_context(|| format!("starting upload of {}", local.path))?;
    let mut offset = 0;
    let mut failures = 0;
    while offset < size {
        let len = chunk.min(size - offset);
        let body = file_body(&local.abs, offset, len, progress.clone()).await?;
        match client.append_upload(&id, offset, body).await {
            Ok(next) => offset = next,
            Err(e) if retryable(&e) && failures + 1 < ATTEMPTS => {
                failures += 1;
                backoff(failures).await;
                // Ask the server how far it got; what it has is durable.
                match client.upload_offset(&id).await {
                    Ok(server_offset) => {
                        progress.set_position(
                            progress
                                .position()
                                .saturating_sub(offset + len - server_offset),
                        );
                        offset = server_offset;
                    }
                    Err(e) if retryable(&e) => {
                        progress.set_position(progress.position().saturating_sub(len));
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("resuming upload of {}", local.path));
                    }
                }
            }
            Err(e) => return Err(e).with_context(|| format!("uploading {}", local.path)),
        }
    }
    let digests = [local.blob.sha256_digest(), local.blob.blake3_digest()];
    let mut attempt = 0;
    loop {
        match client.finish_upload(&id, &digests, None).await {
            Ok(_) => return Ok(()),
            Err(e) if retryable(&e) && attempt + 1 < ATTEMPTS => {
                attempt += 1;
                backoff(attempt).await;
            }
            Err(e) => return Err(e).with_context(|| format!("finishing upload of {}", local.path)),
        }
    }
}

pub(crate) struct PushOptions {
    pub(crate) name: String,
    pub(crate) class: String,
    pub(crate) jobs: usize,
    pub(crate) chunk_size: u64,
}

/// `push DIR`: prints the new package's id on stdout, and on a terminal
/// progress and a summary on stderr.
pub(crate) async fn push(client: &Client, dir: &Path, o: PushOptions) -> anyhow::Result<()> {
    let files = walk(dir)?;
    let total: u64 = files
        .iter()
        .map(|(_, abs)| std::fs::metadata(abs).map(|m| m.len()).unwrap_or(0))
        .sum();
    let hashing = bar(total, "hashing");
    let locals = hash_files(files, o.jobs, hashing.clone()).await?;
    hashing.finish_and_clear();

    // Each distinct blob once.
    let mut distinct: BTreeMap<[u8; 32], &Local> = BTreeMap::new();
    for l in &locals {
        distinct.entry(l.blob.sha256).or_insert(l);
    }
    let entries = locals
        .iter()
        .map(|l| FileEntry {
            path: l.path.clone(),
            blob: l.blob,
            media_type: None,
        })
        .collect();
    let manifest = Manifest::new(o.name.clone(), entries, BTreeMap::new())?;
    let (package, uploaded) = create_uploading(client, &manifest, &o, &distinct).await?;
    let id = package["id"]
        .as_str()
        .context("the server's answer has no package id")?;
    if std::io::stderr().is_terminal() {
        eprintln!(
            "{} files, {} blobs: {} uploaded ({} bytes), {} already stored",
            locals.len(),
            distinct.len(),
            uploaded.0,
            uploaded.1,
            distinct.len() - uploaded.0
        );
    }
    out!("{id}")?;
    Ok(())
}

/// Creates the package, uploading the blobs the server says it lacks.
///
/// The package is asked for first: its `422` names every missing blob in
/// one answer, where asking blob by blob would cost a request per file
/// (ten thousand for a tree of small files, and as many again for every
/// push of an unchanged tree). After the uploads it is asked for again; if
/// blobs are missing once more (the collector took unreferenced ones in
/// between), they are uploaded again, a few times. Returns the package and
/// how many blobs and bytes were uploaded.
async fn create_uploading(
    client: &Client,
    manifest: &Manifest,
    o: &PushOptions,
    distinct: &BTreeMap<[u8; 32], &Local>,
) -> anyhow::Result<(serde_json::Value, (usize, u64))> {
    const ATTEMPTS: usize = 4;
    let mut uploaded = (0, 0);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match client.create_package(manifest, &o.class).await {
            Ok(package) => return Ok((package, uploaded)),
            Err(e) => e,
        };
        let named = match err.problem() {
            Some(p) if p.code() == "missing-blobs" && attempt < ATTEMPTS => p.missing.clone(),
            _ => return Err(anyhow::Error::new(err).context("creating the package")),
        };
        let mut missing = Vec::with_capacity(named.len());
        for text in named {
            let digest: artifactstore_core::Digest = text
                .parse()
                .map_err(|_| anyhow::anyhow!("the server named an invalid digest {text:?}"))?;
            let local = *distinct.get(digest.bytes()).with_context(|| {
                format!("the server wants {text}, which this package does not name")
            })?;
            missing.push(local);
        }
        let bytes: u64 = missing.iter().map(|l| l.blob.size).sum();
        let uploading = bar(bytes, "uploading");
        futures::stream::iter(
            missing
                .iter()
                .map(|l| upload(client, l, o.chunk_size, &uploading)),
        )
        .buffer_unordered(o.jobs)
        .try_collect::<Vec<()>>()
        .await?;
        uploading.finish_and_clear();
        uploaded = (uploaded.0 + missing.len(), uploaded.1 + bytes);
    }
}

/// `pull ID DEST`: all or nothing. Files land in a hidden sibling of DEST,
/// each checked against both digests and its size as it is written; DEST
/// appears (by rename) only when every file is complete, and any failure
/// removes what was written.
pub(crate) async fn pull(
    client: &Client,
    id: &str,
    dest: &Path,
    jobs: usize,
) -> anyhow::Result<()> {
    if dest.exists() {
        bail!("{} already exists; pull into a new path", dest.display());
    }
    let package = client.package(id).await?;
    let (manifest, manifest_id) = client.manifest(id).await?;
    if package["manifest"]["sha256"] != manifest_id.sha256_digest().to_string() {
        bail!("the manifest served for {id} is not the package's manifest");
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".artifactstore-pull-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let progress = bar(manifest.total_size(), "pulling");
    let root = Arc::new(staging.path().to_path_buf());
    // After a failure every download is let finish, not dropped: a dropped
    // one's file operations may still be running on tokio's blocking pool
    // and would write (a directory, a file) into the staging directory
    // after it was removed. The others stop at their next chunk.
    let failed = AtomicBool::new(false);
    let results: Vec<anyhow::Result<()>> =
        futures::stream::iter(manifest.files().iter().map(|f| {
            let (root, progress, failed) = (root.clone(), progress.clone(), &failed);
            async move {
                let result = download(client, id, f, &root, &progress, failed).await;
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                result
            }
        }))
        .buffer_unordered(jobs)
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    progress.finish_and_clear();
    let done = staging.keep();
    std::fs::rename(&done, dest)
        .with_context(|| format!("moving the pulled files to {}", dest.display()))?;
    if std::io::stderr().is_terminal() {
        eprintln!(
            "{} files, {} bytes, all digests verified",
            manifest.files().len(),
            manifest.total_size()
        );
    }
    Ok(())
}

/// Downloads one file of a pull into `root`; gives up, without an error
/// of its own, once `failed` says another file failed.
async fn download(
    client: &Client,
    id: &str,
    f: &FileEntry,
    root: &Path,
    progress: &ProgressBar,
    failed: &AtomicBool,
) -> anyhow::Result<()> {
    if failed.load(Ordering::Relaxed) {
        return Ok(());
    }
    // validate_path already refused absolute paths, `..` and empty
    // segments when the manifest was decoded; checked again here because
    // this is where a path would escape.
    validate_path(&f.path)?;
    let target = root.join(&f.path);
    if let Some(dir) = target.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let resp = client
        .package_file(id, &f.path)
        .await
        .with_context(|| format!("downloading {}", f.path))?;
    let mut out = tokio::fs::File::create(&target)
        .await
        .with_context(|| format!("creating {}", target.display()))?;
    let mut hasher = BlobHasher::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        // The server ends a whole-file response early when the stored bytes
        // fail its own check, so a break here may mean corruption there.
        let chunk = chunk.map_err(|e| {
            anyhow::anyhow!(
                "downloading {}: the transfer broke off ({e}); the server aborts files whose \
                 stored bytes do not match their digests, see its log",
                f.path
            )
        })?;
        hasher.update(&chunk);
        out.write_all(&chunk).await?;
        progress.inc(chunk.len() as u64);
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
    out.sync_all().await?;
    let got = hasher.finish();
    if got != f.blob {
        bail!(
            "{}: received bytes do not match the manifest (got {}, {} bytes; expected {}, {} bytes)",
            f.path,
            got.sha256_digest(),
            got.size,
            f.blob.sha256_digest(),
            f.blob.size
        );
    }
    Ok(())
}

/// `ls`: every package matching the filters, one line each.
pub(crate) async fn ls(client: &Client, filters: &[(&str, String)]) -> anyhow::Result<()> {
    let mut cursor: Option<String> = None;
    loop {
        let (items, next) = client.packages(filters, cursor.as_deref()).await?;
        if cursor.is_none() {
            out!(
                "{:<36}  {:<24}  {:<17}  {:>6}  {:>12}  {:<27}  EXPIRES",
                "ID",
                "NAME",
                "CLASS",
                "FILES",
                "BYTES",
                "CREATED"
            )?;
        }
        for p in &items {
            let state = match p["deleted"]["at"].as_str() {
                Some(at) => format!("deleted {at}"),
                None => p["retention"]["current_expires_at"]
                    .as_str()
                    .unwrap_or("never")
                    .to_owned(),
            };
            out!(
                "{:<36}  {:<24}  {:<17}  {:>6}  {:>12}  {:<27}  {}",
                p["id"].as_str().unwrap_or("?"),
                p["name"].as_str().unwrap_or("?"),
                p["retention_class"].as_str().unwrap_or("?"),
                p["file_count"].as_u64().unwrap_or_default(),
                p["total_size"].as_u64().unwrap_or_default(),
                p["created_at"].as_str().unwrap_or("?"),
                state,
            )?;
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(()),
        }
    }
}

/// `show ID`: the package, its retention state and active holds, as JSON.
pub(crate) async fn show(client: &Client, id: &str) -> anyhow::Result<()> {
    let mut package = client.package(id).await?;
    package["holds"] = client.retention(id).await?["holds"].take();
    out!("{}", serde_json::to_string_pretty(&package)?)?;
    Ok(())
}

/// The retention commands that talk to a server.
pub(crate) enum RetentionChange<'a> {
    Extend { until: &'a str, reason: &'a str },
    Hold { reason: &'a str },
    Release { hold: &'a str, reason: &'a str },
    History,
}

/// `retention extend|hold|release|history`: JSON of the result on stdout
/// (for `hold`, the new hold's id alone, so scripts can keep it).
pub(crate) async fn retention(
    client: &Client,
    id: &str,
    change: RetentionChange<'_>,
) -> anyhow::Result<()> {
    match change {
        RetentionChange::Extend { until, reason } => {
            let state = client.extend_retention(id, until, reason).await?;
            out!("{}", serde_json::to_string_pretty(&state)?)?;
        }
        RetentionChange::Hold { reason } => {
            let hold = client.apply_hold(id, reason).await?;
            out!(
                "{}",
                hold["hold_id"]
                    .as_str()
                    .context("the server's answer has no hold id")?
            )?;
        }
        RetentionChange::Release { hold, reason } => {
            let released = client.release_hold(id, hold, reason).await?;
            out!("{}", serde_json::to_string_pretty(&released)?)?;
        }
        RetentionChange::History => {
            for event in client.retention_history(id).await? {
                out!("{}", serde_json::to_string(&event)?)?;
            }
        }
    }
    Ok(())
}

/// `events`: the log as JSON lines; with `follow`, live until interrupted.
pub(crate) async fn events(client: &Client, after: u64, follow: bool) -> anyhow::Result<()> {
    if follow {
        let mut stream = Box::pin(client.follow_events(after).await?);
        while let Some(item) = stream.next().await {
            let (_, json) = item?;
            out!("{json}")?;
        }
        bail!("the server closed the event stream");
    }
    let mut after = after;
    loop {
        let (events, next) = client.events_page(after, 1000).await?;
        if events.is_empty() {
            return Ok(());
        }
        for e in &events {
            out!("{}", serde_json::to_string(e)?)?;
        }
        after = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of up to a read chunk is the file's bytes from the offset
    /// asked for, cut at the end of the file, and counted as sent.
    #[tokio::test]
    async fn a_small_body_holds_the_bytes_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let abs = dir.path().join("f");
        // No period: every offset holds bytes of its own.
        let content: Vec<u8> = (0..(3 << 18) as u32).flat_map(u32::to_le_bytes).collect();
        std::fs::write(&abs, &content).unwrap();
        let n = content.len() as u64;
        for (offset, len) in [
            (0, 100),
            (5, 1 << 20),
            ((1 << 20) + 7, 1000),
            (n - 10, 1 << 20),
        ] {
            let progress = ProgressBar::hidden();
            let body = file_body(&abs, offset, len, progress.clone())
                .await
                .unwrap();
            let end = (offset + len).min(n);
            let want = &content[offset as usize..end as usize];
            assert_eq!(body.as_bytes(), Some(want), "{offset}+{len}");
            assert_eq!(progress.position(), end - offset);
        }
        let missing = file_body(&dir.path().join("gone"), 0, 10, ProgressBar::hidden()).await;
        assert!(format!("{:#}", missing.unwrap_err()).contains("gone"));
    }

    /// Every file's digests, in the files' order, whatever thread hashed
    /// it; a file that cannot be read fails the whole, naming it.
    #[tokio::test]
    async fn files_are_hashed_in_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(String, PathBuf)> = (0..50)
            .map(|i| {
                let abs = dir.path().join(format!("f{i}"));
                // Sizes around the read buffer's edges, and empty.
                std::fs::write(&abs, vec![i as u8; i * 997]).unwrap();
                (format!("f{i}"), abs)
            })
            .collect();
        let locals = hash_files(files.clone(), 4, ProgressBar::hidden())
            .await
            .unwrap();
        assert_eq!(locals.len(), 50);
        for (i, local) in locals.iter().enumerate() {
            assert_eq!(local.path, format!("f{i}"));
            assert_eq!(local.blob, BlobId::of(&vec![i as u8; i * 997]));
        }

        let mut broken = files;
        broken[30].1 = dir.path().join("gone");
        let err = hash_files(broken, 4, ProgressBar::hidden())
            .await
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("gone"), "{err:#}");
    }
}
