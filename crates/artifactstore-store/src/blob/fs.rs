//! The local-filesystem blob backend.
//!
//! Layout under the root: `blobs/blake3/<2 hex>/<2 hex>/<64 hex>` for blobs,
//! `staging/<id>` for uploads in progress and `trash/<stored_seq>.<location
//! with '/' as '+'>` for blobs the collector is deleting, all on the same
//! filesystem, so that commit is a hard link and trash and restore are
//! renames. Durability follows the usual recipe: data fsynced
//! before acknowledging, rename into place, then the directory fsynced so the
//! new name survives a crash too.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use artifactstore_core::BlobId;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::io::ReaderStream;

use super::{BlobBackend, BlobError, ByteStream, StagingKind, StagingWriter, Trashed};
use crate::hashing::HashState;

/// Size of the write buffer in front of each staging file: turns the small
/// frames a socket delivers into few large writes.
const WRITE_BUFFER: usize = 1 << 20;
/// Read size for downloads.
const READ_BUFFER: usize = 256 << 10;
/// Chunks queued for the writer thread before the sender waits.
const WRITE_QUEUE: usize = 16;
/// Bytes written between two early flushes of a staging file
/// ([`EarlyWriteback`]).
const WRITEBACK_STEP: usize = 4 << 20;
/// Reads longer than this run on a thread of their own (below it, the
/// thread and its read-ahead cost more than they save: 4 MiB ranges
/// measured about 1.7 GiB/s through `tokio::fs` and 1.3 GiB/s on a
/// thread, medians of four runs).
const READ_ON_THREAD: u64 = 16 << 20;
/// Read size of a read on its own thread, and the chunks it reads ahead of
/// the socket: at most 5 MiB in memory per download.
const LARGE_READ: usize = 1 << 20;
const READ_AHEAD: usize = 4;

#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<FsBlobStore, BlobError> {
        let root = root.into();
        let store = FsBlobStore { root };
        let r = store.root.clone();
        blocking(move || {
            for dir in ["staging", "blobs/blake3", "trash"] {
                create_dir_durable(&r, Path::new(dir))?;
            }
            Ok(())
        })
        .await
        .map_err(BlobError::io(format!("creating {}", store.root.display())))?;
        Ok(store)
    }

    /// The location (relative path) of a blob: fixed by its BLAKE3 digest.
    pub fn location_of(blob: &BlobId) -> String {
        let h = hex::encode(blob.blake3);
        format!("blobs/blake3/{}/{}/{}", &h[0..2], &h[2..4], h)
    }

    fn staging_path(&self, id: &str) -> Result<PathBuf, BlobError> {
        let ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(BlobError::InvalidLocation(id.to_owned()));
        }
        Ok(self.root.join("staging").join(id))
    }

    fn trash_path(&self, t: &Trashed) -> Result<PathBuf, BlobError> {
        self.blob_path(&t.location)?;
        if t.location.contains('+') {
            return Err(BlobError::InvalidLocation(t.location.clone()));
        }
        let name = format!("{}.{}", t.stored_seq, t.location.replace('/', "+"));
        Ok(self.root.join("trash").join(name))
    }

    fn blob_path(&self, location: &str) -> Result<PathBuf, BlobError> {
        let rel = Path::new(location);
        let ok = location.starts_with("blobs/")
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(BlobError::InvalidLocation(location.to_owned()));
        }
        Ok(self.root.join(rel))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `rel` under `root` one level at a time, fsyncing the parent of
/// each directory it creates so the new entry is durable.
fn create_dir_durable(root: &Path, rel: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    let mut dir = root.to_path_buf();
    for c in rel.components() {
        let parent = dir.clone();
        dir.push(c);
        match std::fs::create_dir(&dir) {
            Ok(()) => fsync_dir(&parent)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Renames `from` to `to` and makes both directory entries durable.
fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    for dir in [to.parent(), from.parent()].into_iter().flatten() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// The names in `dir`, sorted; an absent directory has none.
fn sorted_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    let Some(entries) = not_found_to_none(std::fs::read_dir(dir))? else {
        return Ok(names);
    };
    for entry in entries {
        if let Ok(name) = entry?.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Up to `limit` files three levels below `root/rel` (the blob fan-out),
/// as locations sorted after `after`. Directories whose every location
/// sorts before `after` are skipped unread.
fn walk_after(
    root: &Path,
    rel: &str,
    depth: u8,
    after: &str,
    limit: usize,
    out: &mut Vec<String>,
) -> std::io::Result<()> {
    for name in sorted_names(&root.join(rel))? {
        if out.len() >= limit {
            break;
        }
        let loc = format!("{rel}/{name}");
        if depth == 0 {
            if loc.as_str() > after && root.join(&loc).is_file() {
                out.push(loc);
            }
        } else if loc.as_str() > after || after.starts_with(&format!("{loc}/")) {
            walk_after(root, &loc, depth - 1, after, limit, out)?;
        }
    }
    Ok(())
}

fn not_found_to_none<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl BlobBackend for FsBlobStore {
    /// Both kinds are files: a request's staging needs its bytes on disk
    /// before the commit as much as a session's.
    /// A session's file is made durable before the session is
    /// acknowledged: a client resumes it after a crash. A request's is not:
    /// after a crash nothing was acknowledged and the file is the
    /// collector's. What a request must make durable, the blob's bytes and
    /// its name under `blobs/`, is synced by finish and commit.
    async fn staging_create(&self, id: &str, kind: StagingKind) -> Result<(), BlobError> {
        let path = self.staging_path(id)?;
        blocking(move || {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            if kind == StagingKind::Request {
                return Ok(());
            }
            f.sync_all()?;
            fsync_dir(path.parent().unwrap_or(Path::new(".")))
        })
        .await
        .map_err(BlobError::io(format!("creating staging {id}")))
    }

    async fn staging_len(&self, id: &str) -> Result<Option<u64>, BlobError> {
        let path = self.staging_path(id)?;
        let meta = not_found_to_none(tokio::fs::metadata(&path).await)
            .map_err(BlobError::io(format!("stat staging {id}")))?;
        Ok(meta.map(|m| m.len()))
    }

    async fn staging_append(&self, id: &str) -> Result<Box<dyn StagingWriter>, BlobError> {
        let path = self.staging_path(id)?;
        let file = not_found_to_none(OpenOptions::new().append(true).open(&path))
            .map_err(BlobError::io(format!("opening staging {id}")))?
            .ok_or_else(|| BlobError::StagingNotFound(id.to_owned()))?;
        let start = file
            .metadata()
            .map_err(BlobError::io(format!("stat staging {id}")))?
            .len();
        Ok(Box::new(FsAppend::spawn(file, id.to_owned(), path, start)))
    }

    /// The filesystem keeps no digest state: reading the staged bytes back
    /// is as fast as storing a checkpoint at every append would be costly,
    /// and it is needed only after a restart.
    async fn staging_resume(&self, _id: &str) -> Result<Option<HashState>, BlobError> {
        Ok(None)
    }

    fn fresh_locations(&self) -> bool {
        false
    }

    /// Written as a staging file (the same temp-file, fsync, rename path
    /// as every blob) and renamed to `location`.
    async fn put_at(
        &self,
        location: &str,
        blob: &BlobId,
        mut body: ByteStream,
    ) -> Result<(), BlobError> {
        let target = self.blob_path(location)?;
        let id = uuid::Uuid::now_v7().to_string();
        let staged = self.staging_path(&id)?;
        let file =
            File::create(&staged).map_err(BlobError::io(format!("creating staging {id}")))?;
        let mut w = FsAppend::spawn(file, id.clone(), staged.clone(), 0);
        let copied: Result<u64, BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(BlobError::io(format!("reading bytes for {location}")))?;
                w.write(chunk).await?;
            }
            // No session resumes this staging file: no digest state to keep.
            Box::new(w).finish(&HashState::new()).await
        }
        .await;
        let done = match copied {
            Ok(n) if n == blob.size => {
                let (root, rel) = (self.root.clone(), Path::new(location).to_owned());
                blocking(move || {
                    if let Some(parent) = rel.parent() {
                        create_dir_durable(&root, parent)?;
                    }
                    rename_durable(&staged, &target)
                })
                .await
                .map_err(BlobError::io(format!("placing {location}")))
            }
            Ok(n) => Err(BlobError::Io {
                context: format!("placing {location}"),
                source: std::io::Error::other(format!("{n} bytes for a blob of {}", blob.size)),
            }),
            Err(e) => Err(e),
        };
        if done.is_err() {
            let _ = self.staging_delete(&id).await;
        }
        done
    }

    /// Files are served by the server itself.
    async fn presign_get(
        &self,
        _location: &str,
        _expires: std::time::Duration,
    ) -> Result<Option<String>, BlobError> {
        Ok(None)
    }

    async fn staging_read(&self, id: &str) -> Result<ByteStream, BlobError> {
        let path = self.staging_path(id)?;
        let file = not_found_to_none(tokio::fs::File::open(&path).await)
            .map_err(BlobError::io(format!("opening staging {id}")))?
            .ok_or_else(|| BlobError::StagingNotFound(id.to_owned()))?;
        Ok(ReaderStream::with_capacity(file, READ_BUFFER).boxed())
    }

    async fn staging_commit(&self, id: &str, blob: &BlobId) -> Result<String, BlobError> {
        self.place(id, blob).await
    }

    async fn staging_delete(&self, id: &str) -> Result<(), BlobError> {
        let path = self.staging_path(id)?;
        not_found_to_none(tokio::fs::remove_file(&path).await)
            .map_err(BlobError::io(format!("deleting staging {id}")))?;
        Ok(())
    }

    async fn read(
        &self,
        location: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, BlobError> {
        let path = self.blob_path(location)?;
        // Opening, seeking and, for up to READ_BUFFER bytes, reading happen
        // in one call on the blocking pool: a small blob (a small file, or
        // a manifest stored as one) costs one hop to another thread
        // instead of three.
        let opened = blocking(move || -> std::io::Result<Option<Opened>> {
            let Some(mut file) = not_found_to_none(File::open(&path))? else {
                return Ok(None);
            };
            let (start, want) = match &range {
                None => (0, u64::MAX),
                Some(r) => (r.start, r.end.saturating_sub(r.start)),
            };
            let left = file.metadata()?.len().saturating_sub(start).min(want);
            if start > 0 {
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))?;
            }
            if left > READ_BUFFER as u64 {
                return Ok(Some(Opened::Large(file, left)));
            }
            let mut bytes = Vec::with_capacity(left as usize);
            std::io::Read::read_to_end(&mut std::io::Read::take(file, want), &mut bytes)?;
            Ok(Some(Opened::Read(Bytes::from(bytes))))
        })
        .await
        .map_err(BlobError::io(format!("reading {location}")))?
        .ok_or_else(|| BlobError::NotFound(location.to_owned()))?;
        Ok(match opened {
            Opened::Read(bytes) => futures::stream::once(std::future::ready(Ok(bytes))).boxed(),
            Opened::Large(file, left) if left > READ_ON_THREAD => read_on_thread(file, left),
            Opened::Large(file, left) => {
                let file = tokio::fs::File::from_std(file).take(left);
                ReaderStream::with_capacity(file, READ_BUFFER).boxed()
            }
        })
    }

    async fn stat(&self, location: &str) -> Result<Option<u64>, BlobError> {
        let path = self.blob_path(location)?;
        let meta = not_found_to_none(tokio::fs::metadata(&path).await)
            .map_err(BlobError::io(format!("stat {location}")))?;
        Ok(meta.map(|m| m.len()))
    }

    async fn ping(&self) -> Result<(), BlobError> {
        let dir = self.root.join("staging");
        let meta = tokio::fs::metadata(&dir)
            .await
            .map_err(BlobError::io(format!("stat {}", dir.display())))?;
        if meta.permissions().readonly() {
            return Err(BlobError::Io {
                context: format!("{} is read-only", dir.display()),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
        Ok(())
    }

    async fn staging_list(&self) -> Result<Vec<String>, BlobError> {
        let dir = self.root.join("staging");
        blocking(move || sorted_names(&dir))
            .await
            .map_err(BlobError::io("listing staging"))
    }

    async fn list_after(&self, after: &str, limit: usize) -> Result<Vec<String>, BlobError> {
        let root = self.root.clone();
        let after = after.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            walk_after(&root, "blobs/blake3", 2, &after, limit, &mut out)?;
            Ok(out)
        })
        .await
        .map_err(BlobError::io("listing blobs"))
    }

    async fn delete(&self, location: &str) -> Result<(), BlobError> {
        let path = self.blob_path(location)?;
        blocking(move || {
            if not_found_to_none(std::fs::remove_file(&path))?.is_some() {
                fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
            }
            Ok(())
        })
        .await
        .map_err(BlobError::io(format!("deleting {location}")))
    }

    async fn trash(&self, location: &str, stored_seq: u64) -> Result<(), BlobError> {
        let from = self.blob_path(location)?;
        let to = self.trash_path(&Trashed {
            location: location.to_owned(),
            stored_seq,
        })?;
        blocking(move || not_found_to_none(rename_durable(&from, &to)).map(drop))
            .await
            .map_err(BlobError::io(format!("trashing {location}")))
    }

    async fn trash_list(&self) -> Result<Vec<Trashed>, BlobError> {
        let dir = self.root.join("trash");
        let names = blocking(move || sorted_names(&dir))
            .await
            .map_err(BlobError::io("listing trash"))?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let parsed = name.split_once('.').and_then(|(seq, loc)| {
                Some(Trashed {
                    stored_seq: seq.parse().ok()?,
                    location: loc.replace('+', "/"),
                })
            });
            match parsed.filter(|t| self.trash_path(t).is_ok()) {
                Some(t) => out.push(t),
                None => tracing::warn!(name, "ignoring a foreign file in trash/"),
            }
        }
        Ok(out)
    }

    async fn trash_restore(&self, trashed: &Trashed) -> Result<(), BlobError> {
        let from = self.trash_path(trashed)?;
        let to = self.blob_path(&trashed.location)?;
        let root = self.root.clone();
        let rel_dir = Path::new(&trashed.location)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        blocking(move || {
            create_dir_durable(&root, &rel_dir)?;
            rename_durable(&from, &to)
        })
        .await
        .map_err(BlobError::io(format!("restoring {}", trashed.location)))
    }

    async fn trash_purge(&self, trashed: &Trashed) -> Result<(), BlobError> {
        let path = self.trash_path(trashed)?;
        not_found_to_none(tokio::fs::remove_file(&path).await)
            .map_err(BlobError::io(format!("purging {}", trashed.location)))?;
        Ok(())
    }
}

/// Streams up to `want` bytes of `file` from a thread of its own, which
/// reads ahead of the consumer. Reading through `tokio::fs` instead costs
/// a hand-off to the blocking pool for every read; a 1 GiB download was
/// 4,096 of them.
fn read_on_thread(mut file: File, want: u64) -> ByteStream {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    let spawned = std::thread::Builder::new()
        .name("blob-read".into())
        .spawn(move || {
            let mut left = want;
            // The first read is small, so that the first bytes leave at once.
            let mut size = READ_BUFFER as u64;
            while left > 0 {
                let n = left.min(size);
                size = (size * 2).min(LARGE_READ as u64);
                let mut chunk = Vec::with_capacity(n as usize);
                let read =
                    std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, n), &mut chunk);
                let next = match read {
                    Ok(0) => return,
                    Ok(got) => {
                        left -= got as u64;
                        Ok(Bytes::from(chunk))
                    }
                    Err(e) => {
                        left = 0;
                        Err(e)
                    }
                };
                // The reader went away: nothing more to read for.
                if tx.blocking_send(next).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        return futures::stream::once(std::future::ready(Err(e))).boxed();
    }
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed()
}

/// A blob opened for reading: read already when small, else to be
/// streamed (`.1` bytes: what is left of the file or of the range).
enum Opened {
    Read(Bytes),
    Large(File, u64),
}

/// Where a staged blob goes: its staging file and its place under `blobs/`.
struct Placement {
    id: String,
    from: PathBuf,
    to: PathBuf,
    root: PathBuf,
    rel_dir: PathBuf,
    size: u64,
}

impl FsBlobStore {
    /// In one blocking call: checks that the staging file `id` is there,
    /// then links it into place as the blob `blob`; returns the location.
    /// A staging file that is not there is `StagingNotFound`, even when
    /// the location already holds the blob's bytes.
    async fn place(&self, id: &str, blob: &BlobId) -> Result<String, BlobError> {
        let location = FsBlobStore::location_of(blob);
        let place = Placement {
            id: id.to_owned(),
            from: self.staging_path(id)?,
            to: self.blob_path(&location)?,
            root: self.root.clone(),
            rel_dir: Path::new(&location)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            size: blob.size,
        };
        blocking(move || {
            std::fs::metadata(&place.from)?;
            place.link()
        })
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BlobError::StagingNotFound(id.to_owned()),
            _ => BlobError::Io {
                context: format!("committing staging {id} to {location}"),
                source: e,
            },
        })?;
        Ok(location)
    }
}

impl Placement {
    /// Links the staged file into place, durably.
    fn link(&self) -> std::io::Result<()> {
        create_dir_durable(&self.root, &self.rel_dir)?;
        // A link, not a rename: the staged bytes stay reachable until
        // the engine has recorded the blob, so it can place them again
        // if a collector removed what was at the location meanwhile.
        // Bytes already there (a concurrent upload of the same blob,
        // or one that crashed before recording it) are the same bytes.
        match std::fs::hard_link(&self.from, &self.to) {
            Ok(()) => fsync_dir(&self.root.join(&self.rel_dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::fs::metadata(&self.to)?.len() == self.size {
                    return Ok(());
                }
                // Not these bytes (damaged, or not ours): replaced
                // atomically through a second name for the staged file.
                // A valid staging name of the same age, so that a crash
                // here leaves nothing the collector cannot remove.
                let aside = self.from.with_file_name(format!("{}-replace", self.id));
                let _ = std::fs::remove_file(&aside);
                std::fs::hard_link(&self.from, &aside)?;
                rename_durable(&aside, &self.to)
            }
            Err(e) => Err(e),
        }
    }
}

/// Flushes a large staging file while it is still being written, on a
/// thread of its own, so that the disk works while the next bytes arrive
/// and the sync that acknowledges an append finds at most a few MiB left
/// (a session's `PATCH` of 16 MiB otherwise waits for all 16 MiB with the
/// disk idle until then). `sync_file_range` would start writeback without
/// waiting, but neither `std` nor `rustix` offers it and our code forbids
/// `unsafe`; an `fdatasync` on a second thread does the same work. A small
/// file never starts the thread.
#[derive(Default)]
struct EarlyWriteback {
    unflushed: usize,
    flusher: Option<Flusher>,
}

struct Flusher {
    /// A capacity of one: a request made while a flush is still queued is
    /// covered by that flush.
    wake: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl EarlyWriteback {
    /// Counts `n` more bytes written through `w`; every `WRITEBACK_STEP`
    /// bytes, hands them to the kernel and asks the flusher to sync.
    fn wrote(&mut self, n: usize, w: &mut BufWriter<File>) -> std::io::Result<()> {
        self.unflushed += n;
        if self.unflushed < WRITEBACK_STEP {
            return Ok(());
        }
        self.unflushed = 0;
        w.flush()?;
        if self.flusher.is_none() {
            let file = w.get_ref().try_clone()?;
            let (wake, asked) = std::sync::mpsc::sync_channel::<()>(1);
            let thread = std::thread::Builder::new()
                .name("staging-flush".into())
                .spawn(move || {
                    while asked.recv().is_ok() {
                        file.sync_data()?;
                    }
                    Ok(())
                })?;
            self.flusher = Some(Flusher { wake, thread });
        }
        if let Some(f) = &self.flusher {
            // Full: a flush is queued and will cover these bytes. Gone: the
            // thread stopped on an error, which `finish` reports.
            let _ = f.wake.try_send(());
        }
        Ok(())
    }

    /// Waits for the flusher. Its error must be reported here: the two
    /// descriptors share one open file, whose write error the kernel
    /// reports to one sync only.
    fn finish(self) -> std::io::Result<()> {
        let Some(Flusher { wake, thread }) = self.flusher else {
            return Ok(());
        };
        drop(wake);
        thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("staging flusher panicked")))
    }
}

/// Appends on a dedicated thread, so that disk writes overlap with receiving
/// the next chunk and with hashing.
struct FsAppend {
    tx: Option<mpsc::Sender<Bytes>>,
    done: oneshot::Receiver<std::io::Result<u64>>,
    id: String,
    path: PathBuf,
    /// The staged length before this writer, which `abort` restores.
    start: u64,
}

impl FsAppend {
    fn spawn(file: File, id: String, path: PathBuf, start: u64) -> FsAppend {
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let run = move || -> std::io::Result<u64> {
            let mut early = EarlyWriteback::default();
            let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
            let mut result = Ok(());
            while let Some(chunk) = rx.blocking_recv() {
                result = w.write_all(&chunk);
                if result.is_ok() {
                    result = early.wrote(chunk.len(), &mut w);
                }
                if result.is_err() {
                    break;
                }
            }
            // Flush and sync whatever was written even after a failure, so
            // the staged length reported afterwards is durable.
            let file = w.into_inner().map_err(|e| e.into_error())?;
            let flushed = early.finish();
            file.sync_data()?;
            flushed?;
            result?;
            Ok(file.metadata()?.len())
        };
        let spawned = std::thread::Builder::new()
            .name("staging-write".into())
            .spawn(move || {
                let _ = done_tx.send(run());
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn staging writer thread");
        }
        FsAppend {
            tx: Some(tx),
            done,
            id,
            path,
            start,
        }
    }

    fn gone(&self) -> BlobError {
        BlobError::Io {
            context: format!("writing staging {}", self.id),
            source: std::io::Error::other("writer thread stopped"),
        }
    }
}

#[async_trait]
impl StagingWriter for FsAppend {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        let tx = self.tx.as_ref().ok_or_else(|| self.gone())?;
        if tx.send(chunk).await.is_err() {
            return Err(self.gone());
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>, _hashed: &HashState) -> Result<u64, BlobError> {
        drop(self.tx.take());
        let id = self.id.clone();
        match (&mut self.done).await {
            Ok(r) => r.map_err(BlobError::io(format!("writing staging {id}"))),
            Err(_) => Err(self.gone()),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), BlobError> {
        drop(self.tx.take());
        // Wait for the thread, whatever it reports, so nothing is written
        // after the cut.
        let _ = (&mut self.done).await;
        let (path, start) = (self.path.clone(), self.start);
        blocking(move || {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(start)?;
            f.sync_all()
        })
        .await
        .map_err(BlobError::io(format!("truncating staging {}", self.id)))
    }
}
