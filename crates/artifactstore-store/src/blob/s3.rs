//! The scale-out blob backend: any S3-compatible object store (AWS S3,
//! MinIO, Garage, Ceph), through the `object_store` crate.
//!
//! Keys, under an optional prefix:
//!
//! - `blobs/<upload id>`: a blob, under a fresh key of its own (the upload's
//!   UUID v7), recorded as the location in the blob's row. A blob is written
//!   once, by the upload, and never copied or renamed: small ones with one
//!   `PUT`, large ones as a multipart upload whose parts go up while the
//!   bytes arrive.
//! - `staging/<id>/state`: an upload session's state (its multipart upload,
//!   the parts so far, its tail, and a digest checkpoint), rewritten after
//!   each append. Any node can continue the session from it.
//! - `staging/<id>/tail-<offset>`: bytes of a session not yet in a part
//!   (S3 parts are at least 5 MiB but a `PATCH` may be smaller). When a part
//!   fills, the tail is read back (less than one part) and sent with it.
//! - `trash/<stored_seq>/<location>`: a marker that the collector deletes
//!   the blob at `<location>` once its transaction commits; the bytes stay
//!   readable until then.
//!
//! Memory per upload is bounded by about two parts, whatever the blob size.
//! A monolithic upload's staging ([`StagingKind::Request`]) lives in this
//! process only: its tail stays in memory and nothing but the blob (or its
//! parts) is written. An incomplete multipart upload left by a crash is not
//! visible to listings; a bucket lifecycle rule that aborts incomplete
//! multipart uploads after a day removes it (OPERATOR.md).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifactstore_core::BlobId;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{BlobBackend, BlobError, ByteStream, StagingKind, StagingWriter, Trashed};
use crate::hashing::HashState;

/// The smallest part S3 accepts (but for the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// How to reach the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `None` for AWS; else the store's URL (`http://` is allowed).
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// `None`: from the environment (`AWS_ACCESS_KEY_ID`, …).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Keys start with this (`""` for none).
    pub prefix: String,
    /// Bytes per multipart part, at least [`MIN_PART_SIZE`].
    pub part_size: u64,
}

impl S3Settings {
    pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
}

#[derive(Debug)]
pub struct S3BlobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    s3: AmazonS3,
    /// `""` or `"<prefix>/"`.
    prefix: String,
    part_size: u64,
    /// Staging of [`StagingKind::Request`] uploads, by id.
    requests: Mutex<HashMap<String, Staged>>,
}

/// A staging object's state. Every part but the last is `part_size` bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Staged {
    len: u64,
    part_size: u64,
    /// The multipart upload to the blob's key, once a part was sent.
    multipart: Option<String>,
    /// The ETags of the parts sent, in order.
    parts: Vec<String>,
    /// Bytes after the last part, as `tail-<offset>` objects (a session).
    tail: Vec<Segment>,
    /// Bytes after the last part, in memory (a request).
    #[serde(skip)]
    memory_tail: Vec<Bytes>,
    #[serde(skip)]
    request: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Segment {
    offset: u64,
    size: u64,
}

impl Staged {
    fn tail_len(&self) -> u64 {
        self.len - self.parts.len() as u64 * self.part_size
    }
}

fn failed(context: impl Into<String>) -> impl FnOnce(object_store::Error) -> BlobError {
    let context = context.into();
    move |e| BlobError::Io {
        context,
        source: std::io::Error::other(e),
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3BlobStore {
    /// Connects to the bucket (checked on first use and by `ping`).
    pub fn open(settings: &S3Settings) -> Result<S3BlobStore, BlobError> {
        if settings.part_size < MIN_PART_SIZE {
            return Err(BlobError::Unsupported(format!(
                "part size {} is below S3's minimum of {MIN_PART_SIZE}",
                settings.part_size
            )));
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region);
        if let Some(endpoint) = &settings.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &settings.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &settings.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let s3 = b.build().map_err(failed("configuring S3"))?;
        let prefix = settings.prefix.trim_matches('/');
        Ok(S3BlobStore {
            inner: Arc::new(Inner {
                s3,
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
                part_size: settings.part_size,
                requests: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Inner {
    fn key(&self, rest: &str) -> Path {
        Path::from(format!("{}{rest}", self.prefix))
    }

    /// `blobs/<id>` for this backend's own blobs; `blobs/…/…` for those a
    /// moved log brought with it (the filesystem's digest paths).
    fn blob_key(&self, location: &str) -> Result<Path, BlobError> {
        let valid = location.strip_prefix("blobs/").is_some_and(|rest| {
            rest.split('/').all(|seg| {
                !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            })
        });
        if !valid {
            return Err(BlobError::InvalidLocation(location.to_owned()));
        }
        Ok(self.key(location))
    }

    fn check_id(id: &str) -> Result<(), BlobError> {
        if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
            return Err(BlobError::InvalidLocation(format!("staging {id}")));
        }
        Ok(())
    }

    fn state_key(&self, id: &str) -> Path {
        self.key(&format!("staging/{id}/state"))
    }

    fn segment_key(&self, id: &str, offset: u64) -> Path {
        self.key(&format!("staging/{id}/tail-{offset:020}"))
    }

    fn location(id: &str) -> String {
        format!("blobs/{id}")
    }

    /// The state and digest checkpoint of staging `id`, if it exists.
    async fn load(&self, id: &str) -> Result<Option<(Staged, Option<HashState>)>, BlobError> {
        Inner::check_id(id)?;
        if let Some(s) = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(Some((s.clone(), None)));
        }
        let got = match self.s3.get(&self.state_key(id)).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(failed(format!("reading staging {id}"))(e)),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(failed(format!("reading staging {id}")))?;
        let corrupt = |what: &str| BlobError::Io {
            context: format!("staging {id}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
        };
        let split = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("state without a header line"))?;
        let staged: Staged =
            serde_json::from_slice(&bytes[..split]).map_err(|_| corrupt("unreadable state"))?;
        let checkpoint = &bytes[split + 1..];
        let hashed = if checkpoint.is_empty() {
            None
        } else {
            Some(HashState::from_checkpoint(checkpoint).map_err(|_| corrupt("bad checkpoint"))?)
        };
        Ok(Some((staged, hashed)))
    }

    /// Writes a session's state, with the digest checkpoint if it covers
    /// exactly the staged bytes.
    async fn store(
        &self,
        id: &str,
        staged: &Staged,
        hashed: Option<&HashState>,
    ) -> Result<(), BlobError> {
        if staged.request {
            self.requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_owned(), staged.clone());
            return Ok(());
        }
        let mut body = serde_json::to_vec(staged).expect("state serialises");
        body.push(b'\n');
        if let Some(h) = hashed.filter(|h| h.len() == staged.len) {
            body.extend_from_slice(&h.checkpoint());
        }
        self.s3
            .put(&self.state_key(id), PutPayload::from(body))
            .await
            .map_err(failed(format!("writing staging {id}")))?;
        Ok(())
    }

    /// The bytes after the last part.
    async fn tail(&self, id: &str, staged: &Staged) -> Result<Vec<Bytes>, BlobError> {
        if staged.request {
            return Ok(staged.memory_tail.clone());
        }
        let mut out = Vec::with_capacity(staged.tail.len());
        for seg in &staged.tail {
            let bytes = self
                .s3
                .get(&self.segment_key(id, seg.offset))
                .await
                .map_err(failed(format!("reading staging {id}")))?
                .bytes()
                .await
                .map_err(failed(format!("reading staging {id}")))?;
            if bytes.len() as u64 != seg.size {
                return Err(BlobError::Io {
                    context: format!("staging {id}"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "a tail segment has the wrong size",
                    ),
                });
            }
            out.push(bytes);
        }
        Ok(out)
    }

    /// Sends `payload` as the next part, starting the multipart upload if
    /// this is the first.
    async fn send_part(
        &self,
        id: &str,
        staged: &mut Staged,
        payload: Vec<Bytes>,
    ) -> Result<(), BlobError> {
        let key = self.key(&Inner::location(id));
        let upload = match &staged.multipart {
            Some(u) => u.clone(),
            None => {
                let u = self
                    .s3
                    .create_multipart(&key)
                    .await
                    .map_err(failed(format!("starting the upload of {id}")))?;
                staged.multipart = Some(u.clone());
                u
            }
        };
        let part = self
            .s3
            .put_part(
                &key,
                &upload,
                staged.parts.len(),
                payload.into_iter().collect(),
            )
            .await
            .map_err(failed(format!("sending a part of {id}")))?;
        staged.parts.push(part.content_id);
        Ok(())
    }

    async fn abort_multipart(&self, id: &str, upload: &str) {
        let key = self.key(&Inner::location(id));
        if let Err(e) = self.s3.abort_multipart(&key, &upload.to_owned()).await {
            tracing::debug!(staging = id, error = %e, "aborting a multipart upload");
        }
    }

    /// Deletes the objects under `prefix`; missing ones are not an error.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError> {
        let prefix = self.key(prefix);
        let keys: Vec<Path> = self
            .s3
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(failed(format!("listing {prefix}")))?;
        for key in keys {
            self.delete_key(&key).await?;
        }
        Ok(())
    }

    async fn delete_key(&self, key: &Path) -> Result<(), BlobError> {
        match self.s3.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(failed(format!("deleting {key}"))(e)),
        }
    }

    /// Keys under `under` (relative to the prefix), in key order, after
    /// `after` (a full relative key) if given.
    async fn list_names(
        &self,
        under: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, BlobError> {
        let dir = self.key(under);
        let listing = match after {
            Some(a) => self.s3.list_with_offset(Some(&dir), &self.key(a)),
            None => self.s3.list(Some(&dir)),
        };
        let mut names: Vec<String> = listing
            .map_ok(|m| m.location.as_ref().to_owned())
            .take(limit)
            .try_collect()
            .await
            .map_err(failed(format!("listing {dir}")))?;
        for n in &mut names {
            if let Some(rest) = n.strip_prefix(&self.prefix) {
                *n = rest.to_owned();
            }
        }
        names.sort_unstable();
        Ok(names)
    }
}

#[async_trait]
impl BlobBackend for S3BlobStore {
    async fn staging_create(&self, id: &str, kind: StagingKind) -> Result<(), BlobError> {
        Inner::check_id(id)?;
        let staged = Staged {
            part_size: self.inner.part_size,
            request: kind == StagingKind::Request,
            ..Staged::default()
        };
        self.inner.store(id, &staged, None).await
    }

    async fn staging_len(&self, id: &str) -> Result<Option<u64>, BlobError> {
        Ok(self.inner.load(id).await?.map(|(s, _)| s.len))
    }

    async fn staging_append(&self, id: &str) -> Result<Box<dyn StagingWriter>, BlobError> {
        let (staged, _) = self
            .inner
            .load(id)
            .await?
            .ok_or_else(|| BlobError::StagingNotFound(id.to_owned()))?;
        Ok(Box::new(S3Append {
            inner: self.inner.clone(),
            id: id.to_owned(),
            had_multipart: staged.multipart.is_some(),
            staged,
            pending: VecDeque::new(),
            pending_len: 0,
        }))
    }

    async fn staging_resume(&self, id: &str) -> Result<Option<HashState>, BlobError> {
        Ok(self.inner.load(id).await?.and_then(|(_, h)| h))
    }

    async fn staging_read(&self, id: &str) -> Result<ByteStream, BlobError> {
        let (staged, _) = self
            .inner
            .load(id)
            .await?
            .ok_or_else(|| BlobError::StagingNotFound(id.to_owned()))?;
        if !staged.parts.is_empty() {
            return Err(BlobError::Unsupported(format!(
                "staging {id}: the parts of a multipart upload cannot be read back"
            )));
        }
        let tail = self.inner.tail(id, &staged).await?;
        Ok(futures::stream::iter(tail.into_iter().map(Ok)).boxed())
    }

    async fn staging_commit(&self, id: &str, blob: &BlobId) -> Result<String, BlobError> {
        let (mut staged, _) = self
            .inner
            .load(id)
            .await?
            .ok_or_else(|| BlobError::StagingNotFound(id.to_owned()))?;
        if staged.len != blob.size {
            return Err(BlobError::Io {
                context: format!("committing staging {id}"),
                source: std::io::Error::other(format!(
                    "{} bytes staged for a blob of {}",
                    staged.len, blob.size
                )),
            });
        }
        let tail = self.inner.tail(id, &staged).await?;
        let location = Inner::location(id);
        let key = self.inner.key(&location);
        match staged.multipart.clone() {
            None => {
                self.inner
                    .s3
                    .put(&key, tail.into_iter().collect())
                    .await
                    .map_err(failed(format!("storing {location}")))?;
            }
            Some(upload) => {
                if staged.tail_len() > 0 {
                    self.inner.send_part(id, &mut staged, tail).await?;
                }
                let parts = staged
                    .parts
                    .iter()
                    .map(|etag| PartId {
                        content_id: etag.clone(),
                    })
                    .collect();
                self.inner
                    .s3
                    .complete_multipart(&key, &upload, parts)
                    .await
                    .map_err(failed(format!("completing {location}")))?;
            }
        }
        Ok(location)
    }

    fn fresh_locations(&self) -> bool {
        true
    }

    async fn presign_get(
        &self,
        location: &str,
        expires: Duration,
    ) -> Result<Option<String>, BlobError> {
        let key = self.inner.blob_key(location)?;
        let url = self
            .inner
            .s3
            .signed_url(http::Method::GET, &key, expires)
            .await
            .map_err(failed(format!("signing a URL for {location}")))?;
        Ok(Some(url.to_string()))
    }

    async fn staging_delete(&self, id: &str) -> Result<(), BlobError> {
        Inner::check_id(id)?;
        let request = self
            .inner
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let staged = match request {
            Some(s) => Some(s),
            None => self.inner.load(id).await?.map(|(s, _)| s),
        };
        // Aborting a completed upload fails harmlessly; an incomplete one
        // would otherwise keep its parts.
        if let Some(upload) = staged.as_ref().and_then(|s| s.multipart.as_deref()) {
            self.inner.abort_multipart(id, upload).await;
        }
        self.inner.delete_prefix(&format!("staging/{id}/")).await
    }

    /// A multipart upload straight to `location`'s key, parts going up as
    /// the bytes arrive.
    async fn put_at(
        &self,
        location: &str,
        blob: &BlobId,
        mut body: ByteStream,
    ) -> Result<(), BlobError> {
        let key = self.inner.blob_key(location)?;
        let upload = self
            .inner
            .s3
            .put_multipart(&key)
            .await
            .map_err(failed(format!("storing {location}")))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(
            upload,
            self.inner.part_size as usize,
        );
        let mut len = 0u64;
        let copied: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|source| BlobError::Io {
                    context: format!("reading bytes for {location}"),
                    source,
                })?;
                len += chunk.len() as u64;
                w.wait_for_capacity(1)
                    .await
                    .map_err(failed(format!("storing {location}")))?;
                w.put(chunk);
            }
            Ok(())
        }
        .await;
        match copied {
            Ok(()) if len == blob.size => {
                w.finish()
                    .await
                    .map_err(failed(format!("storing {location}")))?;
                Ok(())
            }
            other => {
                let _ = w.abort().await;
                other.and(Err(BlobError::Io {
                    context: format!("storing {location}"),
                    source: std::io::Error::other(format!(
                        "{len} bytes for a blob of {}",
                        blob.size
                    )),
                }))
            }
        }
    }

    async fn read(
        &self,
        location: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, BlobError> {
        let key = self.inner.blob_key(location)?;
        if range.as_ref().is_some_and(|r| r.start >= r.end) {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = match self.inner.s3.get_opts(&key, options).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Err(BlobError::NotFound(location.to_owned())),
            Err(e) => return Err(failed(format!("reading {location}"))(e)),
        };
        Ok(got.into_stream().map_err(std::io::Error::other).boxed())
    }

    async fn stat(&self, location: &str) -> Result<Option<u64>, BlobError> {
        let key = self.inner.blob_key(location)?;
        match self.inner.s3.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(failed(format!("stat {location}"))(e)),
        }
    }

    /// A `HEAD` of a key that does not exist: a 404 proves the bucket,
    /// the credentials and the signature.
    async fn ping(&self) -> Result<(), BlobError> {
        match self
            .inner
            .s3
            .head(&self.inner.key(".artifactstore-ping"))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(failed("reaching the bucket")(e)),
        }
    }

    async fn staging_list(&self) -> Result<Vec<String>, BlobError> {
        let names = self.inner.list_names("staging", None, usize::MAX).await?;
        let mut ids: Vec<String> = names
            .iter()
            .filter_map(|n| {
                n.strip_prefix("staging/")?
                    .split('/')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        ids.dedup();
        Ok(ids)
    }

    async fn list_after(&self, after: &str, limit: usize) -> Result<Vec<String>, BlobError> {
        let after = (!after.is_empty()).then_some(after);
        self.inner.list_names("blobs", after, limit).await
    }

    async fn delete(&self, location: &str) -> Result<(), BlobError> {
        let key = self.inner.blob_key(location)?;
        self.inner.delete_key(&key).await
    }

    async fn trash(&self, location: &str, stored_seq: u64) -> Result<(), BlobError> {
        self.inner.blob_key(location)?;
        let marker = self.inner.key(&format!("trash/{stored_seq}/{location}"));
        self.inner
            .s3
            .put(&marker, PutPayload::new())
            .await
            .map_err(failed(format!("trashing {location}")))?;
        Ok(())
    }

    async fn trash_list(&self) -> Result<Vec<Trashed>, BlobError> {
        let names = self.inner.list_names("trash", None, usize::MAX).await?;
        Ok(names
            .iter()
            .filter_map(|n| {
                let (seq, location) = n.strip_prefix("trash/")?.split_once('/')?;
                Some(Trashed {
                    location: location.to_owned(),
                    stored_seq: seq.parse().ok()?,
                })
            })
            .collect())
    }

    /// The bytes never moved: dropping the marker is enough.
    async fn trash_restore(&self, t: &Trashed) -> Result<(), BlobError> {
        let marker = self
            .inner
            .key(&format!("trash/{}/{}", t.stored_seq, t.location));
        self.inner.delete_key(&marker).await
    }

    async fn trash_purge(&self, t: &Trashed) -> Result<(), BlobError> {
        self.delete(&t.location).await?;
        self.trash_restore(t).await
    }
}

/// Appends to a staging object: bytes gather until a part is full, which
/// goes up at once; `finish` stores the rest as a tail.
struct S3Append {
    inner: Arc<Inner>,
    id: String,
    staged: Staged,
    /// Whether the multipart upload existed before this writer.
    had_multipart: bool,
    pending: VecDeque<Bytes>,
    pending_len: u64,
}

impl S3Append {
    /// Sends full parts while the tail and the pending bytes fill one.
    async fn send_full_parts(&mut self) -> Result<(), BlobError> {
        let part_size = self.staged.part_size;
        while self.staged.tail_len() + self.pending_len >= part_size {
            let mut payload = self.inner.tail(&self.id, &self.staged).await?;
            let mut need = part_size - self.staged.tail_len();
            while need > 0 {
                let Some(mut chunk) = self.pending.pop_front() else {
                    break;
                };
                if chunk.len() as u64 > need {
                    let rest = chunk.split_off(need as usize);
                    self.pending.push_front(rest);
                }
                need -= chunk.len() as u64;
                self.pending_len -= chunk.len() as u64;
                payload.push(chunk);
            }
            let before = self.staged.len - self.staged.tail_len();
            self.inner
                .send_part(&self.id, &mut self.staged, payload)
                .await?;
            self.staged.len = before + part_size;
            self.staged.tail.clear();
            self.staged.memory_tail.clear();
        }
        Ok(())
    }
}

#[async_trait]
impl StagingWriter for S3Append {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.pending_len += chunk.len() as u64;
        self.pending.push_back(chunk);
        self.send_full_parts().await
    }

    async fn finish(mut self: Box<Self>, hashed: &HashState) -> Result<u64, BlobError> {
        self.send_full_parts().await?;
        if self.pending_len > 0 {
            let pending = std::mem::take(&mut self.pending);
            if self.staged.request {
                self.staged.memory_tail.extend(pending);
            } else {
                let offset = self.staged.len;
                self.inner
                    .s3
                    .put(
                        &self.inner.segment_key(&self.id, offset),
                        pending.into_iter().collect(),
                    )
                    .await
                    .map_err(failed(format!("writing staging {}", self.id)))?;
                self.staged.tail.push(Segment {
                    offset,
                    size: self.pending_len,
                });
            }
            self.staged.len += self.pending_len;
            self.pending_len = 0;
        }
        self.inner
            .store(&self.id, &self.staged, Some(hashed))
            .await?;
        Ok(self.staged.len)
    }

    /// The stored state is untouched; parts this writer sent are reused by
    /// the next one, and a multipart upload it started is aborted.
    async fn abort(self: Box<Self>) -> Result<(), BlobError> {
        if !self.had_multipart
            && let Some(upload) = &self.staged.multipart
        {
            self.inner.abort_multipart(&self.id, upload).await;
        }
        Ok(())
    }
}
