//! The package routes of the control plane (DESIGN.md §5), and the package
//! file download of the data plane.

use artifactstore_core::cbor::{self, Map, Value};
use artifactstore_core::jcs;
use artifactstore_core::manifest::Manifest;
use artifactstore_store::meta::{PackageFilter, PackageRecord, RetentionState};
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Principal;
use crate::problem::{Problem, ProblemBody};
use crate::routes::{AppState, Result, serve_blob};

/// Control-plane bodies carry metadata only (DESIGN.md §1.4); a manifest of
/// 100,000 files fits well within this.
pub(crate) const MAX_CONTROL_BODY: usize = 64 << 20;
const DEFAULT_PAGE: u32 = 100;

pub(crate) const CBOR: &str = "application/cbor";

/// Whether the client asked for canonical CBOR rather than JCS JSON.
pub(crate) fn wants_cbor(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|range| {
                range
                    .split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case(CBOR))
            })
        })
}

/// A control-plane request body: a JSON object, or a canonical CBOR map
/// with `Content-Type: application/cbor`, read strictly; only the `allowed`
/// keys may appear. Also says whether it was CBOR.
pub(crate) async fn read_request(req: Request, allowed: &[&str]) -> Result<(Map, bool)> {
    let (headers, body) = read_body(req).await?;
    let is_cbor = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(CBOR))
        });
    let request = if is_cbor {
        cbor::decode(&body).map_err(|e| invalid(e.to_string()))?
    } else {
        let text = std::str::from_utf8(&body).map_err(|_| invalid("body is not UTF-8 JSON"))?;
        jcs::parse_json(text).map_err(|e| invalid(e.to_string()))?
    };
    let Value::Map(fields) = request else {
        return Err(invalid("body must be an object"));
    };
    if let Some((k, _)) = fields
        .iter()
        .find(|(k, _)| !k.as_text().is_some_and(|k| allowed.contains(&k)))
    {
        return Err(invalid(format!("unknown field {k:?}")));
    }
    Ok((fields, is_cbor))
}

/// [`read_request`] for bodies whose fields read the same in both forms.
pub(crate) async fn read_request_map(req: Request, allowed: &[&str]) -> Result<Map> {
    Ok(read_request(req, allowed).await?.0)
}

async fn read_body(req: Request) -> Result<(HeaderMap, Bytes)> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_CONTROL_BODY)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("control-plane bodies are limited to {MAX_CONTROL_BODY} bytes"),
            )
        })?;
    Ok((parts.headers, bytes))
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::bad_request("invalid-request", detail)
}

/// `POST /packages`: `{manifest, retention_class}` as JSON, or as canonical
/// CBOR with `Content-Type: application/cbor`.
#[utoipa::path(post, path = "/packages", tag = "packages",
    request_body(content(
        (CreatePackage = "application/json"),
        (CreatePackage = "application/cbor"))),
    responses(
        (status = 201, description = "created; `Location` names it", body = PackageBody),
        (status = 400, description = "malformed body or invalid manifest (the code names the rule)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "body over 64 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "unknown class (`known` lists them), missing blobs (`missing`), or blobs that disagree with the manifest (`paths`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    req: Request,
) -> Result<Response> {
    let (fields, is_cbor) = read_request(req, &["manifest", "retention_class"]).await?;
    let class = fields
        .get("retention_class")
        .and_then(Value::as_text)
        .ok_or_else(|| invalid("retention_class (text) is required"))?;
    let manifest_value = fields
        .get("manifest")
        .ok_or_else(|| invalid("manifest is required"))?;
    let manifest = if is_cbor {
        Manifest::from_value(manifest_value)
    } else {
        Manifest::from_json_value(manifest_value)
    }
    .map_err(artifactstore_store::StoreError::from)?;
    let package = app
        .store
        .create_package(&manifest, class, &caller.subject)
        .await?;
    let location = HeaderValue::from_str(&format!("/packages/{}", package.id))
        .map_err(|_| Problem::internal())?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(PackageBody::from(&package)),
    )
        .into_response())
}

/// A package and its retention state.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PackageBody {
    /// UUID v7
    id: String,
    name: String,
    manifest: DigestPair,
    file_count: u64,
    total_size: u64,
    retention_class: String,
    created_at: String,
    created_seq: u64,
    /// The actor of `v1.package.created`.
    created_by: String,
    /// The retrieval tier the package has reached: `hot`, or `cold` after
    /// `v1.package.tier_changed` (reads work the same from either).
    tier: String,
    retention: RetentionBody,
    /// Set once the collector deleted the package: its metadata, manifest
    /// and history remain, its files answer `410 Gone`.
    deleted: Option<DeletionBody>,
}

/// The `v1.package.deleted` event that deleted a package.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeletionBody {
    at: String,
    seq: u64,
    reason: String,
    /// The bytes of blobs only this package referenced.
    bytes_freed: u64,
}

/// The digests of the package's canonical manifest: its content identity.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DigestPair {
    sha256: String,
    blake3: String,
}

/// The `retention_state` row.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RetentionBody {
    class: String,
    /// `null` for a permanent class.
    current_expires_at: Option<String>,
    active_holds: u64,
    eligible_for_deletion: bool,
    last_eligibility_seq: Option<u64>,
}

/// A page of packages; pass `next_cursor` as `cursor` for the next.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PackageList {
    items: Vec<PackageBody>,
    next_cursor: Option<String>,
}

/// The body of `POST /packages` (JSON; or the same map as canonical CBOR
/// with `Content-Type: application/cbor`).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the request; it is read strictly by artifactstore-core.
pub(crate) struct CreatePackage {
    /// A manifest v1 (DESIGN.md §3) in its JCS form: digests as 64 hex characters.
    #[schema(value_type = Object)]
    manifest: (),
    retention_class: String,
}

impl From<&PackageRecord> for PackageBody {
    fn from(p: &PackageRecord) -> PackageBody {
        let r = &p.retention;
        PackageBody {
            id: p.id.clone(),
            name: p.name.clone(),
            manifest: DigestPair {
                sha256: format!("sha256:{}", hex_of(&p.manifest_sha256)),
                blake3: format!("blake3:{}", hex_of(&p.manifest_blake3)),
            },
            file_count: p.file_count,
            total_size: p.total_size,
            retention_class: p.retention_class.clone(),
            created_at: p.created_at.to_string(),
            created_seq: p.created_seq,
            created_by: p.created_by.clone(),
            tier: p.tier.as_str().to_owned(),
            retention: RetentionBody::from(r),
            deleted: r.deleted.as_ref().map(|d| DeletionBody {
                at: d.at.to_string(),
                seq: d.seq,
                reason: d.reason.clone(),
                bytes_freed: d.bytes_freed,
            }),
        }
    }
}

impl From<&RetentionState> for RetentionBody {
    fn from(r: &RetentionState) -> RetentionBody {
        RetentionBody {
            class: r.class.clone(),
            current_expires_at: r.current_expires_at.map(|t| t.to_string()),
            active_holds: r.active_holds,
            eligible_for_deletion: r.eligible_for_deletion,
            last_eligibility_seq: r.last_eligibility_seq,
        }
    }
}

fn hex_of(h: &[u8; 32]) -> String {
    artifactstore_core::Digest::sha256(*h).hex()
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    name: Option<String>,
    retention_class: Option<String>,
    eligible: Option<bool>,
    /// Only packages the collector deleted (true) or live ones (false).
    deleted: Option<bool>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /packages`: a page in creation order; `next_cursor` continues it.
#[utoipa::path(get, path = "/packages", tag = "packages", params(ListQuery),
    responses((status = 200, body = PackageList), (status = 400, description = "invalid filter or cursor", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(app): State<AppState>,
    query: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| invalid(e.body_text()))?;
    let after = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse().map_err(|_| {
            Problem::bad_request(
                "invalid-cursor",
                format!("cursor {c:?} was not issued by this server"),
            )
        })?,
    };
    let filter = PackageFilter {
        name: q.name,
        retention_class: q.retention_class,
        eligible: q.eligible,
        deleted: q.deleted,
    };
    let page = app
        .store
        .packages(&filter, after, q.limit.unwrap_or(DEFAULT_PAGE))
        .await?;
    let items = page.items.iter().map(PackageBody::from).collect();
    Ok(axum::Json(PackageList {
        items,
        next_cursor: page.next.map(|n| n.to_string()),
    })
    .into_response())
}

/// A package and its retention state.
#[utoipa::path(get, path = "/packages/{id}", tag = "packages", params(("id" = String, Path)),
    responses((status = 200, body = PackageBody), (status = 404, description = "no such package", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn show(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let package = app.store.package(&id).await?;
    Ok(axum::Json(PackageBody::from(&package)).into_response())
}

/// `GET /packages/<id>/manifest`: JCS by default; the canonical bytes (whose
/// digests are the package's) with `Accept: application/cbor`.
#[utoipa::path(get, path = "/packages/{id}/manifest", tag = "packages", params(("id" = String, Path)),
    responses(
        (status = 200, description = "the manifest", content(
            (Object = "application/json"),
            (Vec<u8> = "application/cbor"))),
        (status = 404, description = "no such package", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn manifest(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let (package, bytes) = app.store.manifest_bytes(&id).await?;
    let digests = [
        (
            "artifactstore-sha256",
            format!("sha256:{}", hex_of(&package.manifest_sha256)),
        ),
        (
            "artifactstore-blake3",
            format!("blake3:{}", hex_of(&package.manifest_blake3)),
        ),
    ];
    if wants_cbor(&headers) {
        return Ok((
            [(header::CONTENT_TYPE, CBOR.to_owned())],
            digests_headers(&digests),
            Body::from(bytes),
        )
            .into_response());
    }
    let manifest = Manifest::decode(&bytes).map_err(artifactstore_store::StoreError::from)?;
    let text = jcs::to_jcs(&manifest.to_value()).map_err(|e| {
        tracing::error!(error = %e, package = id, "manifest has no JCS projection");
        Problem::internal()
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/json".to_owned())],
        digests_headers(&digests),
        text,
    )
        .into_response())
}

fn digests_headers(d: &[(&'static str, String); 2]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in d {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(*name, v);
        }
    }
    h
}

/// `GET /packages/<id>/files/<path>`: the file's bytes, with `Range`, typed
/// by the manifest's media type (`HEAD` too).
#[utoipa::path(get, path = "/packages/{id}/files/{path}", tag = "data plane",
    params(("id" = String, Path), ("path" = String, Path, description = "the file's path in the manifest; may contain `/`")),
    responses(
        (status = 200, description = "the bytes"),
        (status = 206, description = "the requested range"),
                (status = 404, description = "no such package or file", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "the package was deleted (`package-deleted`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 416, description = "range outside the file", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn file(
    State(app): State<AppState>,
    method: Method,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let (file, record) = app.store.package_file(&id, &path).await?;
    let content_type = file
        .media_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    serve_blob(&app.store, &record, &method, &headers, content_type).await
}
