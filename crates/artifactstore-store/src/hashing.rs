//! Dual digests computed while bytes arrive, each on its own thread.
//!
//! SHA-256 and BLAKE3 run concurrently with each other and with the write to
//! the backend: each chunk (`Bytes`, reference-counted, never copied) is sent
//! to both hasher threads and to the writer. Between requests of a resumable
//! upload the state is a plain value ([`HashState`]) with no thread held, and
//! it can be written out as a [checkpoint](HashState::checkpoint) so that
//! another process (another node) resumes the upload without reading back
//! the bytes before it.

use artifactstore_core::BlobId;
use blake3::hazmat::{ChainingValue, HasherExt, Mode};
use bytes::Bytes;
use sha2::Digest as _;
use sha2::digest::common::hazmat::SerializableState;
use tokio::sync::{mpsc, oneshot};

/// Chunks queued per hasher before the sender waits: enough to ride out
/// scheduling jitter without letting a slow hasher buffer the whole body.
const QUEUE_DEPTH: usize = 16;

/// Digest state over a prefix of a blob.
#[derive(Clone, Default)]
pub struct HashState {
    sha256: sha2::Sha256,
    blake3: Blake3State,
    len: u64,
}

impl std::fmt::Debug for HashState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashState")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A checkpoint that does not decode (damaged, or from another version).
#[derive(Debug, thiserror::Error)]
#[error("invalid digest checkpoint: {0}")]
pub struct BadCheckpoint(&'static str);

/// Version tag of the checkpoint layout.
const CHECKPOINT_MAGIC: &[u8; 4] = b"ASH1";

impl HashState {
    pub fn new() -> HashState {
        HashState::default()
    }
    /// The state over `data`, hashed here (for small, known bytes).
    pub fn of(data: &Bytes) -> HashState {
        let mut state = HashState::new();
        state.sha256.update(data);
        state.blake3.update(data.clone());
        state.len = data.len() as u64;
        state
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
            blake3: self.blake3.finalize(),
            size: self.len,
        }
    }

    /// The state as bytes: SHA-256's internal state with its partial block,
    /// BLAKE3's stack of finished subtrees, and the bytes of its unfinished
    /// subtree (at most [`BLAKE3_SUBTREE`]).
    pub fn checkpoint(&self) -> Vec<u8> {
        let sha = self.sha256.serialize();
        let b = &self.blake3;
        let mut out = Vec::with_capacity(64 + sha.len() + b.stack.len() * 32 + b.kept_len());
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&sha);
        out.extend_from_slice(&(b.stack.len() as u32).to_be_bytes());
        for cv in &b.stack {
            out.extend_from_slice(cv);
        }
        for part in &b.kept {
            out.extend_from_slice(part);
        }
        out
    }

    /// The state a [`checkpoint`](HashState::checkpoint) wrote out.
    pub fn from_checkpoint(bytes: &[u8]) -> Result<HashState, BadCheckpoint> {
        let mut r = Reader(bytes);
        if r.take(4)? != CHECKPOINT_MAGIC {
            return Err(BadCheckpoint("unknown layout"));
        }
        let len = u64::from_be_bytes(r.array()?);
        let sha_size = sha2::Sha256::new().serialize().len();
        let sha = sha2::digest::common::hazmat::SerializedState::<sha2::Sha256>::try_from(
            r.take(sha_size)?,
        )
        .map_err(|_| BadCheckpoint("SHA-256 state size"))?;
        let sha256 = sha2::Sha256::deserialize(&sha).map_err(|_| BadCheckpoint("SHA-256 state"))?;
        let depth = u32::from_be_bytes(r.array()?) as usize;
        if depth > 64 {
            return Err(BadCheckpoint("BLAKE3 stack depth"));
        }
        let stack = (0..depth)
            .map(|_| r.array::<32>())
            .collect::<Result<Vec<_>, _>>()?;
        let kept = r.0;
        let base = len
            .checked_sub(kept.len() as u64)
            .filter(|b| b % BLAKE3_SUBTREE == 0 && kept.len() as u64 <= BLAKE3_SUBTREE)
            .ok_or(BadCheckpoint("BLAKE3 subtree bounds"))?;
        if (base / BLAKE3_SUBTREE).count_ones() as usize != depth {
            return Err(BadCheckpoint("BLAKE3 stack does not fit the length"));
        }
        let mut blake3 = Blake3State::at(base, stack);
        blake3.update(Bytes::copy_from_slice(kept));
        Ok(HashState {
            sha256,
            blake3,
            len,
        })
    }

    /// Moves the two digests onto their threads.
    pub fn start(self) -> Hashing {
        let (sha_tx, sha_done) = spawn_hasher("sha256", self.sha256, |h, c| h.update(&c));
        let (blake_tx, blake_done) = spawn_hasher("blake3", self.blake3, Blake3State::update);
        Hashing {
            sha_tx,
            blake_tx,
            sha_done,
            blake_done,
            len: self.len,
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadCheckpoint> {
        if self.0.len() < n {
            return Err(BadCheckpoint("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BadCheckpoint> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
}

/// The size of the BLAKE3 subtrees a [`HashState`] finishes as it goes: the
/// most a checkpoint carries as raw bytes, and large enough that BLAKE3's
/// SIMD works on whole groups of chunks.
pub const BLAKE3_SUBTREE: u64 = 64 * 1024;

/// Incremental BLAKE3 whose state can be written out: the input is hashed
/// as aligned subtrees of [`BLAKE3_SUBTREE`] bytes (`blake3::hazmat`), and
/// finished subtrees are kept as chaining values merged the way BLAKE3's
/// own hasher merges them, so the root is the same as `blake3::hash` of the
/// whole input. The unfinished subtree's bytes are kept (by reference) for a
/// checkpoint.
#[derive(Clone, Debug, Default)]
struct Blake3State {
    /// Offset of the unfinished subtree.
    base: u64,
    current: blake3::Hasher,
    current_len: u64,
    kept: Vec<Bytes>,
    /// Chaining values of the finished subtrees, left to right.
    stack: Vec<ChainingValue>,
}

impl Blake3State {
    fn at(base: u64, stack: Vec<ChainingValue>) -> Blake3State {
        let mut current = blake3::Hasher::new();
        if base > 0 {
            current.set_input_offset(base);
        }
        Blake3State {
            base,
            current,
            current_len: 0,
            kept: Vec::new(),
            stack,
        }
    }

    fn kept_len(&self) -> usize {
        self.current_len as usize
    }

    fn update(&mut self, mut data: Bytes) {
        while !data.is_empty() {
            if self.current_len == BLAKE3_SUBTREE {
                // More input follows, so the full subtree is not the root.
                // Then, as BLAKE3's own hasher does once more input follows,
                // merge the stack down to one value per set bit of the count
                // of finished subtrees (none of those merges is the root).
                self.stack.push(self.current.finalize_non_root());
                let next = self.base + BLAKE3_SUBTREE;
                let finished = next / BLAKE3_SUBTREE;
                while self.stack.len() > finished.count_ones() as usize {
                    let right = self.stack.pop().expect("stack depth checked");
                    let left = self.stack.pop().expect("stack depth checked");
                    self.stack.push(blake3::hazmat::merge_subtrees_non_root(
                        &left,
                        &right,
                        Mode::Hash,
                    ));
                }
                *self = Blake3State::at(next, std::mem::take(&mut self.stack));
            }
            let room = (BLAKE3_SUBTREE - self.current_len) as usize;
            let part = data.split_to(room.min(data.len()));
            self.current.update(&part);
            self.current_len += part.len() as u64;
            self.kept.push(part);
        }
    }

    fn finalize(&self) -> [u8; 32] {
        let Some((first, rest)) = self.stack.split_first() else {
            return *self.current.finalize().as_bytes();
        };
        let mut right = self.current.finalize_non_root();
        for left in rest.iter().rev() {
            right = blake3::hazmat::merge_subtrees_non_root(left, &right, Mode::Hash);
        }
        *blake3::hazmat::merge_subtrees_root(first, &right, Mode::Hash).as_bytes()
    }
}

fn spawn_hasher<H: Send + 'static>(
    name: &str,
    mut hasher: H,
    update: fn(&mut H, Bytes),
) -> (mpsc::Sender<Bytes>, oneshot::Receiver<H>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE_DEPTH);
    let (done_tx, done_rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("hash-{name}"))
        .spawn(move || {
            while let Some(chunk) = rx.blocking_recv() {
                update(&mut hasher, chunk);
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
    blake_done: oneshot::Receiver<Blake3State>,
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
            h.update(&c);
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
                        let stopped = hashing.stop().await.unwrap();
                        hashing = HashState::from_checkpoint(&stopped.checkpoint()).unwrap().start();
                    }
                    hashing.feed(Bytes::copy_from_slice(&data[w[0]..w[1]])).await.unwrap();
                }
                hashing.stop().await.unwrap().finish()
            });
            prop_assert_eq!(got, BlobId::of(&data));
        }
    }

    /// Feeds `data` in `step`-byte pieces, writing a checkpoint out and
    /// reading it back after every piece.
    fn through_checkpoints(data: &[u8], step: usize) -> BlobId {
        let mut state = HashState::new();
        for piece in data.chunks(step.max(1)) {
            state.sha256.update(piece);
            state.blake3.update(Bytes::copy_from_slice(piece));
            state.len += piece.len() as u64;
            state = HashState::from_checkpoint(&state.checkpoint()).unwrap();
        }
        state.finish()
    }

    #[test]
    fn checkpoints_at_and_around_subtree_boundaries() {
        let sub = BLAKE3_SUBTREE as usize;
        let data = crate::conformance::pattern(9 * sub + 3, 7);
        for subtrees in [0, 1, 2, 3, 4, 5, 7, 8, 9] {
            for delta in [-1i64, 0, 1] {
                let n = (subtrees * sub) as i64 + delta;
                if n < 0 {
                    continue;
                }
                let d = &data[..n as usize];
                for step in [sub, sub / 2 + 1, 1000] {
                    assert_eq!(
                        through_checkpoints(d, step),
                        BlobId::of(d),
                        "len {n} step {step}"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn checkpoints_of_larger_inputs(len in 0usize..700_000, step in 1000usize..200_000, seed: u8) {
            let data = crate::conformance::pattern(len, seed);
            prop_assert_eq!(through_checkpoints(&data, step), BlobId::of(&data));
        }

        #[test]
        fn damaged_checkpoints_are_refused_or_differ(len in 0usize..200_000, cut in any::<prop::sample::Index>()) {
            let data = crate::conformance::pattern(len, 3);
            let mut state = HashState::new();
            state.sha256.update(&data);
            state.blake3.update(Bytes::copy_from_slice(&data));
            state.len = len as u64;
            let bytes = state.checkpoint();
            // Truncated: refused, never a panic.
            let at = cut.index(bytes.len());
            if let Ok(s) = HashState::from_checkpoint(&bytes[..at]) {
                prop_assert_ne!(s.finish(), BlobId::of(&data));
            }
        }
    }
}
