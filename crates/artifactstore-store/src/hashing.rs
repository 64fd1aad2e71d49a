//! Dual digests computed while bytes arrive, each on its own thread.
//!
//! SHA-256 and BLAKE3 run concurrently with each other and with the write to
//! the backend: each chunk (`Bytes`, reference-counted, never copied) is sent
//! to both hasher threads and to the writer. Between requests of a resumable
//! upload the state is a plain value ([`HashState`]) with no thread held.

use artifactstore_core::BlobId;
use bytes::Bytes;
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot};

/// Chunks queued per hasher before the sender waits: enough to ride out
/// scheduling jitter without letting a slow hasher buffer the whole body.
const QUEUE_DEPTH: usize = 16;

/// Digest state over a prefix of a blob.
#[derive(Clone, Default)]
pub struct HashState {
    sha256: sha2::Sha256,
    blake3: blake3::Hasher,
    len: u64,
}

impl std::fmt::Debug for HashState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashState")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl HashState {
    pub fn new() -> HashState {
        HashState::default()
    }
    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(&self) -> BlobId {
        BlobId {
            sha256: self.sha256.clone().finalize().into(),
            blake3: *self.blake3.finalize().as_bytes(),
            size: self.len,
        }
    }
    /// Moves the two digests onto their threads.
    pub fn start(self) -> Hashing {
        let (sha_tx, sha_done) = spawn_hasher("sha256", self.sha256, |h, c| h.update(c));
        let (blake_tx, blake_done) = spawn_hasher("blake3", self.blake3, |h, c| {
            h.update(c);
        });
        Hashing {
            sha_tx,
            blake_tx,
            sha_done,
            blake_done,
            len: self.len,
        }
    }
}

fn spawn_hasher<H: Send + 'static>(
    name: &str,
    mut hasher: H,
    update: fn(&mut H, &[u8]),
) -> (mpsc::Sender<Bytes>, oneshot::Receiver<H>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE_DEPTH);
    let (done_tx, done_rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("hash-{name}"))
        .spawn(move || {
            while let Some(chunk) = rx.blocking_recv() {
                update(&mut hasher, &chunk);
            }
            let _ = done_tx.send(hasher);
        });
    if let Err(e) = spawned {
        // Without a thread the receiver is dropped: `feed` and `stop` report
        // the failure instead of hashing silently on the wrong thread.
        tracing::error!(error = %e, "cannot spawn hasher thread");
    }
    (tx, done_rx)
}

/// Digests in progress on their threads.
#[derive(Debug)]
pub struct Hashing {
    sha_tx: mpsc::Sender<Bytes>,
    blake_tx: mpsc::Sender<Bytes>,
    sha_done: oneshot::Receiver<sha2::Sha256>,
    blake_done: oneshot::Receiver<blake3::Hasher>,
    len: u64,
}

/// A hasher thread could not be started or has gone away.
#[derive(Debug, thiserror::Error)]
#[error("hasher thread unavailable")]
pub struct HasherGone;

impl Hashing {
    /// Queues `chunk` for both digests; waits only if a hasher is behind.
    pub async fn feed(&mut self, chunk: Bytes) -> Result<(), HasherGone> {
        self.len += chunk.len() as u64;
        self.sha_tx
            .send(chunk.clone())
            .await
            .map_err(|_| HasherGone)?;
        self.blake_tx.send(chunk).await.map_err(|_| HasherGone)
    }
    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Waits for both threads to drain their queues and hands back the state.
    pub async fn stop(self) -> Result<HashState, HasherGone> {
        let Hashing {
            sha_tx,
            blake_tx,
            sha_done,
            blake_done,
            len,
        } = self;
        drop((sha_tx, blake_tx));
        let (sha256, blake3) = tokio::join!(sha_done, blake_done);
        Ok(HashState {
            sha256: sha256.map_err(|_| HasherGone)?,
            blake3: blake3.map_err(|_| HasherGone)?,
            len,
        })
    }
}

/// Passes a whole blob's bytes through, hashing them with BLAKE3 on a
/// thread of its own (so hashing overlaps with sending), and holds the last
/// chunk back until the end proves the bytes are `blob`: on a mismatch the
/// stream ends with an error instead of that chunk, so a reader never
/// receives a complete body of wrong bytes. One digest is enough to detect
/// corruption, and BLAKE3 is the fast one.
pub(crate) fn verified(
    inner: crate::blob::ByteStream,
    blob: BlobId,
    counters: std::sync::Arc<crate::engine::Counters>,
) -> crate::blob::ByteStream {
    use futures::StreamExt;
    struct Verify {
        inner: crate::blob::ByteStream,
        hasher: Option<(mpsc::Sender<Bytes>, oneshot::Receiver<blake3::Hasher>)>,
        len: u64,
        held: Option<Bytes>,
        counters: std::sync::Arc<crate::engine::Counters>,
    }
    let state = Verify {
        inner,
        hasher: Some(spawn_hasher("verify", blake3::Hasher::new(), |h, c| {
            h.update(c);
        })),
        len: 0,
        held: None,
        counters,
    };
    let failed = move |what: String| {
        tracing::error!(blob = %blob.sha256_digest(), "{what}; read aborted");
        std::io::Error::new(std::io::ErrorKind::InvalidData, what)
    };
    futures::stream::unfold(state, move |mut s| async move {
        let (tx, _) = s.hasher.as_ref()?;
        loop {
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    if tx.send(chunk.clone()).await.is_err() {
                        s.hasher = None;
                        return Some((Err(failed("hasher thread unavailable".into())), s));
                    }
                    s.len += chunk.len() as u64;
                    if let Some(prev) = s.held.replace(chunk) {
                        return Some((Ok(prev), s));
                    }
                }
                Some(Err(e)) => {
                    s.hasher = None;
                    return Some((Err(e), s));
                }
                None => break,
            }
        }
        let (tx, done) = s.hasher.take()?;
        drop(tx);
        let last = s.held.take();
        match done.await {
            Ok(h) if *h.finalize().as_bytes() == blob.blake3 && s.len == blob.size => {
                last.map(|c| (Ok(c), s))
            }
            Ok(_) => {
                s.counters
                    .corrupt_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let what = format!(
                    "stored bytes of {} do not match the blob's digest",
                    blob.sha256_digest()
                );
                Some((Err(failed(what)), s))
            }
            Err(_) => Some((Err(failed("hasher thread unavailable".into())), s)),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn chunked_threaded_hashing_equals_one_shot(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            pause in any::<prop::sample::Index>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(async {
                let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
                points.push(0);
                points.push(data.len());
                points.sort_unstable();
                // Stop and restart in the middle, as a resumed upload does.
                let pause_at = pause.index(points.len());
                let mut hashing = HashState::new().start();
                for (n, w) in points.windows(2).enumerate() {
                    if n == pause_at {
                        hashing = hashing.stop().await.unwrap().start();
                    }
                    hashing.feed(Bytes::copy_from_slice(&data[w[0]..w[1]])).await.unwrap();
                }
                hashing.stop().await.unwrap().finish()
            });
            prop_assert_eq!(got, BlobId::of(&data));
        }
    }
}
