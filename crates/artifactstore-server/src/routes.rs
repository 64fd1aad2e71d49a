//! The data-plane routes of DESIGN.md §5, one handler per row. Handlers only
//! translate: HTTP in, engine call, HTTP out.

use std::sync::Arc;

use artifactstore_core::Digest;
use artifactstore_store::blob::ByteStream;
use artifactstore_store::meta::BlobRecord;
use artifactstore_store::{Store, StoredBlob};
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::TryStreamExt;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::{Auth, Principal, authorize};
use crate::metrics::Metrics;
use crate::problem::{Problem, ProblemBody};
use crate::range::{RangeRequest, resolve};

pub static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
pub static SHA256_HEADER: HeaderName = HeaderName::from_static("artifactstore-sha256");
pub static BLAKE3_HEADER: HeaderName = HeaderName::from_static("artifactstore-blake3");
pub static SIZE_HEADER: HeaderName = HeaderName::from_static("artifactstore-size");

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(store: Arc<Store>, auth: Auth) -> AppState {
        AppState {
            store,
            auth,
            metrics: Arc::default(),
        }
    }

    /// A server without tokens: every caller is `anonymous`.
    pub fn open(store: Arc<Store>) -> AppState {
        AppState::new(store, Auth::Open)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/uploads", post(create_upload))
        .route(
            "/uploads/{id}",
            axum::routing::patch(append_upload)
                .head(upload_offset)
                .put(finish_upload)
                .delete(abort_upload),
        )
        .route(
            "/blobs/{digest}",
            put(put_blob).get(get_blob).head(get_blob),
        )
        .route(
            "/packages",
            post(crate::packages::create).get(crate::packages::list),
        )
        .route("/packages/{id}", get(crate::packages::show))
        .route("/packages/{id}/manifest", get(crate::packages::manifest))
        .route(
            "/packages/{id}/files/{*path}",
            get(crate::packages::file).head(crate::packages::file),
        )
        .route("/packages/{id}/retention", get(crate::retention::state))
        .route(
            "/packages/{id}/retention/history",
            get(crate::retention::history),
        )
        .route(
            "/packages/{id}/retention/extensions",
            post(crate::retention::extend),
        )
        .route(
            "/packages/{id}/retention/holds",
            post(crate::retention::hold),
        )
        .route(
            "/packages/{id}/retention/holds/{hold_id}/release",
            post(crate::retention::release),
        )
        .route("/retention/classes", get(crate::retention::classes))
        .route("/events", get(crate::events::events))
        .route("/metrics", get(crate::metrics::render))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            authorize,
        ))
        // Added after auth, so it runs first and also counts 401s and 403s.
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // One span per request, so an internal error's log line names the
        // request it belongs to; one line per response with its latency.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
}

pub(crate) type Result<T> = std::result::Result<T, Problem>;

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "method not allowed on this route",
    )
}

/// A new upload session.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct UploadCreated {
    id: String,
    offset: u64,
}

/// `{"status": …}` of the probes.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Status {
    status: &'static str,
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, body = Status)))]
pub(crate) async fn healthz() -> impl IntoResponse {
    axum::Json(Status { status: "ok" })
}

/// Readiness: the metadata database answers and the blob store is writable.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, body = Status), (status = 503, body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn readyz(State(app): State<AppState>) -> Result<impl IntoResponse> {
    app.store.check_ready().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "a backend is unavailable",
        )
    })?;
    Ok(axum::Json(Status { status: "ready" }))
}

fn parse_digest(text: &str) -> Result<Digest> {
    text.parse()
        .map_err(|e| Problem::bad_request("invalid-digest", format!("{text:?}: {e}")))
}

/// The request body as a stream, and its declared length if any.
fn body_stream(req: Request) -> (Option<u64>, ByteStream) {
    let len = content_length(req.headers());
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    (len, Box::pin(stream))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn blob_headers(headers: &mut HeaderMap, record: &BlobRecord) {
    let sha = record.blob.sha256_digest().to_string();
    let put = |h: &mut HeaderMap, name: &HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name.clone(), v);
        }
    };
    put(headers, &header::ETAG, format!("\"{sha}\""));
    put(headers, &SHA256_HEADER, sha);
    put(
        headers,
        &BLAKE3_HEADER,
        record.blob.blake3_digest().to_string(),
    );
    headers.insert(SIZE_HEADER.clone(), HeaderValue::from(record.blob.size));
}

/// A stored blob: both digests and the size.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct BlobBody {
    /// `sha256:<64 hex>`
    sha256: String,
    /// `blake3:<64 hex>`
    blake3: String,
    size: u64,
}

fn stored_response(stored: StoredBlob) -> Response {
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let b = &stored.record.blob;
    let body = BlobBody {
        sha256: b.sha256_digest().to_string(),
        blake3: b.blake3_digest().to_string(),
        size: b.size,
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    blob_headers(headers, &stored.record);
    if let Ok(loc) = HeaderValue::from_str(&format!("/blobs/{}", b.sha256_digest())) {
        headers.insert(header::LOCATION, loc);
    }
    response
}

/// Uploads a whole blob whose digest is known; the bytes are verified
/// against it before the blob becomes visible.
#[utoipa::path(put, path = "/blobs/{digest}", tag = "data plane",
    params(("digest" = String, Path, description = "`sha256:<hex>` or `blake3:<hex>`")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "stored", body = BlobBody),
        (status = 200, description = "already stored; nothing new written", body = BlobBody),
        (status = 400, description = "invalid digest, or the bytes do not match it", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "larger than the configured maximum", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn put_blob(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(digest): Path<String>,
    req: Request,
) -> Result<Response> {
    let digest = parse_digest(&digest)?;
    let (len, body) = body_stream(req);
    let stored = app
        .store
        .put_blob(&[digest], len, body, &caller.subject)
        .await?;
    Ok(stored_response(stored))
}

/// Downloads a blob by either digest, whole or one `Range`; `HEAD` gives
/// the headers (both digests, the size) alone.
#[utoipa::path(get, path = "/blobs/{digest}", tag = "data plane",
    params(("digest" = String, Path, description = "`sha256:<hex>` or `blake3:<hex>`")),
    responses(
        (status = 200, description = "the bytes", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range", content_type = "application/octet-stream"),
        (status = 304, description = "not modified (If-None-Match)"),
        (status = 307, description = "fetch the bytes from `Location`, a link signed by the blob backend (when `[blobs.s3] presign_downloads` is set)"),
        (status = 404, description = "no such blob", body = ProblemBody, content_type = "application/problem+json"),
        (status = 416, description = "range outside the blob", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn get_blob(
    State(app): State<AppState>,
    method: Method,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let digest = parse_digest(&digest)?;
    let record = app.store.blob(&digest).await?;
    serve_blob(
        &app.store,
        &record,
        &method,
        &headers,
        "application/octet-stream",
    )
    .await
}

/// Answers a read of stored bytes: conditional requests, `Range`, `HEAD`.
/// Blob downloads and package file downloads both come here.
pub(crate) async fn serve_blob(
    store: &Store,
    record: &BlobRecord,
    method: &Method,
    headers: &HeaderMap,
    content_type: &str,
) -> Result<Response> {
    let size = record.blob.size;
    let etag = format!("\"{}\"", record.blob.sha256_digest());
    let mut out = HeaderMap::new();
    blob_headers(&mut out, record);
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // Content-addressed: the bytes at this URL can never change.
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );

    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    // If-Range with a different validator means "send everything".
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    let (status, range) = match resolve(range_header, size) {
        RangeRequest::Full => (StatusCode::OK, None),
        RangeRequest::Partial(r) => {
            let value = format!("bytes {}-{}/{size}", r.start, r.end - 1);
            if let Ok(v) = HeaderValue::from_str(&value) {
                out.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, Some(r))
        }
        RangeRequest::Unsatisfiable => {
            return Err(
                artifactstore_store::StoreError::RangeNotSatisfiable { start: size, size }.into(),
            );
        }
    };
    let len = range.as_ref().map_or(size, |r| r.end - r.start);
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if method == Method::HEAD {
        return Ok((status, out).into_response());
    }
    if let Some(link) = store.download_link(record).await? {
        // The bytes come from the blob backend; the client sends its Range
        // there again, and checks the digests this answer carries.
        out.remove(header::CONTENT_RANGE);
        out.remove(header::CONTENT_TYPE);
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let link = HeaderValue::from_str(&link).map_err(|_| Problem::internal())?;
        out.insert(header::LOCATION, link);
        return Ok((StatusCode::TEMPORARY_REDIRECT, out).into_response());
    }
    let stream = store.read_blob(record, range).await?;
    Ok((status, out, Body::from_stream(stream)).into_response())
}

fn offset_headers(offset: u64) -> [(HeaderName, HeaderValue); 2] {
    [
        (UPLOAD_OFFSET.clone(), HeaderValue::from(offset)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

/// A new upload session; see also `HEAD`, `PATCH`, `PUT`, `DELETE /uploads/{id}`.
#[utoipa::path(post, path = "/uploads", tag = "data plane",
    responses((status = 202, description = "created; `Location` names it, `Upload-Offset: 0`", body = UploadCreated)))]
pub(crate) async fn create_upload(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Response> {
    let id = app.store.create_upload(&caller.subject).await?;
    let location =
        HeaderValue::from_str(&format!("/uploads/{id}")).map_err(|_| Problem::internal())?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        offset_headers(0),
        axum::Json(UploadCreated { id, offset: 0 }),
    )
        .into_response())
}

/// The session's offset: how many bytes the server holds durably.
#[utoipa::path(head, path = "/uploads/{id}", tag = "data plane",
    params(("id" = String, Path)),
    responses((status = 204, description = "`Upload-Offset` header"), (status = 404, description = "no such session")))]
pub(crate) async fn upload_offset(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response> {
    let offset = app.store.upload_offset(&id).await?;
    Ok((StatusCode::NO_CONTENT, offset_headers(offset)).into_response())
}

/// Appends the body at `Upload-Offset`, which must be the current offset.
#[utoipa::path(patch, path = "/uploads/{id}", tag = "data plane",
    params(("id" = String, Path), ("Upload-Offset" = u64, Header, description = "where the body starts")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "appended; `Upload-Offset` is the new offset"),
        (status = 400, description = "missing or invalid Upload-Offset", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no such session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "wrong offset; `offset` and `Upload-Offset` give the current one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "the blob would exceed the configured maximum", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn append_upload(
    State(app): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response> {
    let offset = req
        .headers()
        .get(&UPLOAD_OFFSET)
        .ok_or_else(|| {
            Problem::bad_request(
                "upload-offset-required",
                "PATCH needs an Upload-Offset header",
            )
        })?
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid-upload-offset",
                "Upload-Offset must be a non-negative integer",
            )
        })?;
    let (len, body) = body_stream(req);
    let new_offset = app.store.append_upload(&id, offset, len, body).await?;
    Ok((StatusCode::NO_CONTENT, offset_headers(new_offset)).into_response())
}

/// Finishes a session (the body, if any, is a last chunk): verifies the
/// declared digests and stores the blob. A mismatch ends the session.
#[utoipa::path(put, path = "/uploads/{id}", tag = "data plane",
    params(("id" = String, Path), ("digest" = Vec<String>, Query, description = "one or two expected digests")),
    responses(
        (status = 201, description = "stored", body = BlobBody),
        (status = 200, description = "already stored", body = BlobBody),
        (status = 400, description = "no digest, an invalid one, or a mismatch", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no such session", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn finish_upload(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response> {
    let mut declared = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "digest" {
            declared.push(parse_digest(&value)?);
        }
    }
    let (len, body) = body_stream(req);
    let last_chunk = (len != Some(0)).then_some((len, body));
    let stored = app
        .store
        .finish_upload(&id, &declared, last_chunk, &caller.subject)
        .await?;
    Ok(stored_response(stored))
}

/// Abandons a session and its bytes.
#[utoipa::path(delete, path = "/uploads/{id}", tag = "data plane",
    params(("id" = String, Path)),
    responses((status = 204, description = "gone"), (status = 404, description = "no such session", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn abort_upload(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.store.abort_upload(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
