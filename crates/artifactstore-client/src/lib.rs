//! A typed HTTP client for the artifactstore API, used by the CLI and by
//! black-box tests. It speaks the wire contract of DESIGN.md §5 and turns
//! problem documents back into typed errors.

use artifactstore_core::cbor::{Map, Value};
use artifactstore_core::manifest::Manifest;
use artifactstore_core::{BlobId, Digest};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use reqwest::{Body, Method, RequestBuilder, Response, StatusCode};

pub use reqwest;

/// A problem document (RFC 9457) the server answered with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    /// The `offset` member of an `upload-offset-mismatch` problem.
    #[serde(default)]
    pub offset: Option<u64>,
    /// The `missing` member of a `missing-blobs` problem: digests to upload.
    #[serde(default)]
    pub missing: Vec<String>,
}

impl Problem {
    /// The stable machine code: the suffix of the type URI.
    pub fn code(&self) -> &str {
        self.type_uri.rsplit(':').next().unwrap_or(&self.type_uri)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {} ({})", .0.status, .0.detail, .0.code())]
    Problem(Problem),
    /// Transport or decoding failure; the cause is the error's source.
    #[error("request failed")]
    Http(#[from] reqwest::Error),
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem(p) => Some(p),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// What the server reports for a stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    /// True when this request stored it (201), false when it was already there (200).
    pub created: bool,
}

#[derive(serde::Deserialize)]
struct BlobBody {
    sha256: String,
    blake3: String,
    size: u64,
}

/// How many uploads a client keeps in flight unless told otherwise
/// (`artifactstore push --jobs`). The server commits uploads that finish
/// together in one transaction, so more in flight means fewer commits;
/// 16 measured faster than 4 and 8 (docs/decisions.md).
pub const UPLOADS_IN_FLIGHT: u16 = 16;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.into().trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends a request; a non-success status becomes a typed error.
    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<Problem>(&text) {
            Ok(p) => Err(ClientError::Problem(p)),
            Err(_) => Err(ClientError::Protocol(format!(
                "{status} without a problem document: {text}"
            ))),
        }
    }

    async fn blob_info(resp: Response) -> Result<BlobInfo> {
        let created = resp.status() == StatusCode::CREATED;
        let body: BlobBody = resp.json().await?;
        let parse = |s: &str| -> Result<Digest> {
            s.parse()
                .map_err(|e| ClientError::Protocol(format!("digest {s:?}: {e}")))
        };
        Ok(BlobInfo {
            id: BlobId {
                sha256: *parse(&body.sha256)?.bytes(),
                blake3: *parse(&body.blake3)?.bytes(),
                size: body.size,
            },
            created,
        })
    }

    /// `PUT /blobs/<digest>`: uploads a whole blob in one request.
    pub async fn put_blob(&self, digest: &Digest, body: impl Into<Body>) -> Result<BlobInfo> {
        let resp = self
            .send(
                self.request(Method::PUT, &format!("/blobs/{digest}"))
                    .body(body),
            )
            .await?;
        Client::blob_info(resp).await
    }

    /// `HEAD /blobs/<digest>`: the blob's identity, or `None` if absent.
    pub async fn head_blob(&self, digest: &Digest) -> Result<Option<BlobId>> {
        let resp = self
            .request(Method::HEAD, &format!("/blobs/{digest}"))
            .send()
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(ClientError::Protocol(format!(
                "HEAD {digest}: {}",
                resp.status()
            )));
        }
        let header = |name: &str| -> Result<String> {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| ClientError::Protocol(format!("missing {name}")))
        };
        let digest_of = |name: &str| -> Result<[u8; 32]> {
            let d: Digest = header(name)?
                .parse()
                .map_err(|e| ClientError::Protocol(format!("{name}: {e}")))?;
            Ok(*d.bytes())
        };
        Ok(Some(BlobId {
            sha256: digest_of("artifactstore-sha256")?,
            blake3: digest_of("artifactstore-blake3")?,
            size: header("artifactstore-size")?
                .parse()
                .map_err(|_| ClientError::Protocol("artifactstore-size".into()))?,
        }))
    }

    /// `GET /blobs/<digest>` with an optional `Range` header value; the raw
    /// response, so callers can stream the body and read the headers.
    pub async fn get_blob(&self, digest: &Digest, range: Option<&str>) -> Result<Response> {
        let mut req = self.request(Method::GET, &format!("/blobs/{digest}"));
        if let Some(r) = range {
            req = req.header(reqwest::header::RANGE, r);
        }
        self.send(req).await
    }

    /// Downloads a whole blob into memory (small blobs; tests).
    pub async fn get_blob_bytes(&self, digest: &Digest) -> Result<Bytes> {
        Ok(self.get_blob(digest, None).await?.bytes().await?)
    }

    /// `POST /uploads`: starts a session; returns its id.
    pub async fn create_upload(&self) -> Result<String> {
        let resp = self.send(self.request(Method::POST, "/uploads")).await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Protocol("POST /uploads without Location".into()))?;
        location
            .strip_prefix("/uploads/")
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol(format!("unexpected Location {location}")))
    }

    fn offset_of(resp: &Response) -> Result<u64> {
        resp.headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Protocol("missing Upload-Offset".into()))
    }

    /// `HEAD /uploads/<id>`: the current offset.
    pub async fn upload_offset(&self, id: &str) -> Result<u64> {
        let resp = self
            .request(Method::HEAD, &format!("/uploads/{id}"))
            .send()
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ClientError::Problem(Problem {
                type_uri: "urn:artifactstore:problem:upload-not-found".into(),
                status: 404,
                detail: format!("no upload session {id}"),
                offset: None,
                missing: Vec::new(),
            }));
        }
        if !resp.status().is_success() {
            return Err(ClientError::Protocol(format!(
                "HEAD /uploads/{id}: {}",
                resp.status()
            )));
        }
        Client::offset_of(&resp)
    }

    /// `PATCH /uploads/<id>`: appends `body` at `offset`; returns the new offset.
    pub async fn append_upload(&self, id: &str, offset: u64, body: impl Into<Body>) -> Result<u64> {
        let req = self
            .request(Method::PATCH, &format!("/uploads/{id}"))
            .header("upload-offset", offset)
            .body(body);
        Client::offset_of(&self.send(req).await?)
    }

    /// Appends a stream of chunks (for bodies that must not be held in memory).
    pub async fn append_upload_stream<S>(&self, id: &str, offset: u64, stream: S) -> Result<u64>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        self.append_upload(
            id,
            offset,
            Body::wrap_stream(stream.map_err(std::io::Error::other)),
        )
        .await
    }

    /// `PUT /uploads/<id>?digest=…`: finishes with an optional last chunk.
    pub async fn finish_upload(
        &self,
        id: &str,
        digests: &[Digest],
        last_chunk: Option<Body>,
    ) -> Result<BlobInfo> {
        let query: Vec<(&str, String)> =
            digests.iter().map(|d| ("digest", d.to_string())).collect();
        let mut req = self
            .request(Method::PUT, &format!("/uploads/{id}"))
            .query(&query);
        req = match last_chunk {
            Some(body) => req.body(body),
            None => req.header(reqwest::header::CONTENT_LENGTH, 0),
        };
        Client::blob_info(self.send(req).await?).await
    }

    /// `GET /events?after=&limit=`: a page of events (each its JCS JSON
    /// object) and the `after` to ask for next.
    pub async fn events_page(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<serde_json::Value>, u64)> {
        #[derive(serde::Deserialize)]
        struct Page {
            events: Vec<serde_json::Value>,
            next_after: u64,
        }
        let req = self
            .request(Method::GET, "/events")
            .query(&[("after", after), ("limit", u64::from(limit))]);
        let page: Page = self.send(req).await?.json().await?;
        Ok((page.events, page.next_after))
    }

    /// `GET /events` as Server-Sent Events from `after` (sent as
    /// `Last-Event-ID`): replays, then follows live. Yields `(seq, JCS text)`.
    pub async fn follow_events(
        &self,
        after: u64,
    ) -> Result<impl Stream<Item = Result<(u64, String)>> + use<>> {
        let req = self
            .request(Method::GET, "/events")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header("last-event-id", after.to_string());
        let resp = self.send(req).await?;
        let state = (resp.bytes_stream(), Vec::<u8>::new(), SseEvent::default());
        Ok(futures::stream::try_unfold(
            state,
            |(mut body, mut buf, mut event)| async move {
                loop {
                    // Dispatch complete lines already buffered.
                    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let line = String::from_utf8_lossy(&line);
                        let line = line.trim_end_matches(['\n', '\r']);
                        if line.is_empty() {
                            if let Some(done) = std::mem::take(&mut event).finish()? {
                                return Ok(Some((done, (body, buf, event))));
                            }
                        } else {
                            event.field(line);
                        }
                    }
                    match futures::StreamExt::next(&mut body).await {
                        Some(chunk) => buf.extend_from_slice(&chunk?),
                        None => return Ok(None),
                    }
                }
            },
        ))
    }

    /// `POST /packages` with the manifest as canonical CBOR; the created
    /// package as the server describes it.
    pub async fn create_package(
        &self,
        manifest: &Manifest,
        retention_class: &str,
    ) -> Result<serde_json::Value> {
        let body = Value::Map(
            Map::new()
                .with("manifest", manifest.to_value())
                .with("retention_class", Value::text(retention_class)),
        );
        let req = self
            .request(Method::POST, "/packages")
            .header(reqwest::header::CONTENT_TYPE, "application/cbor")
            .body(body.to_canonical_bytes());
        Ok(self.send(req).await?.json().await?)
    }

    /// `GET /packages/<id>`.
    pub async fn package(&self, id: &str) -> Result<serde_json::Value> {
        Ok(self
            .send(self.request(Method::GET, &format!("/packages/{id}")))
            .await?
            .json()
            .await?)
    }

    /// `GET /packages` with filters (`name`, `retention_class`, `eligible`)
    /// and a cursor; the items and the next cursor.
    pub async fn packages(
        &self,
        filters: &[(&str, String)],
        cursor: Option<&str>,
    ) -> Result<(Vec<serde_json::Value>, Option<String>)> {
        #[derive(serde::Deserialize)]
        struct Page {
            items: Vec<serde_json::Value>,
            next_cursor: Option<String>,
        }
        let mut query: Vec<(&str, String)> = filters.to_vec();
        if let Some(c) = cursor {
            query.push(("cursor", c.to_owned()));
        }
        let page: Page = self
            .send(self.request(Method::GET, "/packages").query(&query))
            .await?
            .json()
            .await?;
        Ok((page.items, page.next_cursor))
    }

    /// `GET /packages/<id>/manifest` as canonical CBOR, checked against the
    /// digests the server states for it.
    pub async fn manifest(&self, id: &str) -> Result<(Manifest, BlobId)> {
        let req = self
            .request(Method::GET, &format!("/packages/{id}/manifest"))
            .header(reqwest::header::ACCEPT, "application/cbor");
        let resp = self.send(req).await?;
        let stated = resp
            .headers()
            .get("artifactstore-sha256")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
            .ok_or_else(|| ClientError::Protocol("manifest without its digest".into()))?;
        let bytes = resp.bytes().await?;
        let id = BlobId::of(&bytes);
        if id.sha256_digest() != stated {
            return Err(ClientError::Protocol(format!(
                "manifest bytes hash to {}, not {stated}",
                id.sha256_digest()
            )));
        }
        let manifest = Manifest::decode(&bytes)
            .map_err(|e| ClientError::Protocol(format!("manifest: {e}")))?;
        Ok((manifest, id))
    }

    /// `POST /packages/<id>/retention/extensions`; the new retention state.
    pub async fn extend_retention(
        &self,
        id: &str,
        until: &str,
        reason: &str,
    ) -> Result<serde_json::Value> {
        let body = serde_json::json!({"new_expires_at": until, "reason": reason});
        let req = self
            .request(
                Method::POST,
                &format!("/packages/{id}/retention/extensions"),
            )
            .json(&body);
        Ok(self.send(req).await?.json().await?)
    }

    /// `POST /packages/<id>/retention/holds`; the new hold.
    pub async fn apply_hold(&self, id: &str, reason: &str) -> Result<serde_json::Value> {
        let req = self
            .request(Method::POST, &format!("/packages/{id}/retention/holds"))
            .json(&serde_json::json!({"reason": reason}));
        Ok(self.send(req).await?.json().await?)
    }

    /// `POST /packages/<id>/retention/holds/<hold>/release`; the released hold.
    pub async fn release_hold(
        &self,
        id: &str,
        hold: &str,
        reason: &str,
    ) -> Result<serde_json::Value> {
        let req = self
            .request(
                Method::POST,
                &format!(
                    "/packages/{id}/retention/holds/{}/release",
                    encode_segment(hold)
                ),
            )
            .json(&serde_json::json!({"reason": reason}));
        Ok(self.send(req).await?.json().await?)
    }

    /// `GET /packages/<id>/retention`: the state and the active holds.
    pub async fn retention(&self, id: &str) -> Result<serde_json::Value> {
        Ok(self
            .send(self.request(Method::GET, &format!("/packages/{id}/retention")))
            .await?
            .json()
            .await?)
    }

    /// `GET /packages/<id>/retention/history`: the retention events in order.
    pub async fn retention_history(&self, id: &str) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .send(self.request(Method::GET, &format!("/packages/{id}/retention/history")))
            .await?
            .json()
            .await?)
    }

    /// `GET /packages/<id>/files/<path>`: the raw response, to stream.
    pub async fn package_file(&self, id: &str, path: &str) -> Result<Response> {
        let encoded: Vec<String> = path.split('/').map(encode_segment).collect();
        self.send(self.request(
            Method::GET,
            &format!("/packages/{id}/files/{}", encoded.join("/")),
        ))
        .await
    }

    /// `DELETE /uploads/<id>`.
    pub async fn abort_upload(&self, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/uploads/{id}")))
            .await?;
        Ok(())
    }
}

/// One Server-Sent Event being assembled (the subset `/events` uses).
#[derive(Debug, Default)]
struct SseEvent {
    id: Option<String>,
    data: Vec<String>,
}

impl SseEvent {
    fn field(&mut self, line: &str) {
        // Comments (keep-alives) start with ':'.
        if line.starts_with(':') {
            return;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "id" => self.id = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
    }

    /// The event at a blank line, or `None` for a block with no data.
    fn finish(self) -> Result<Option<(u64, String)>> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let seq = self
            .id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| ClientError::Protocol("event without a numeric id".into()))?;
        Ok(Some((seq, self.data.join("\n"))))
    }
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
