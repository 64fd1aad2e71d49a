//! The retention routes (DESIGN.md §5): extensions, holds, the retention
//! state, its history, and the configured classes.

use artifactstore_core::cbor::Value;
use artifactstore_core::event::Event;
use artifactstore_core::retention::ClassRule;
use artifactstore_core::{Timestamp, jcs};
use artifactstore_store::meta::Hold;
use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Principal;
use crate::packages::{CBOR, RetentionBody, read_request_map, wants_cbor};
use crate::problem::{Problem, ProblemBody};
use crate::routes::{AppState, Result};

/// A hold, active or released.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct HoldBody {
    hold_id: String,
    reason: String,
    applied_by: String,
    applied_at: String,
    /// `null` while the hold is active.
    released: Option<ReleaseBody>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ReleaseBody {
    by: String,
    at: String,
    reason: String,
}

impl From<Hold> for HoldBody {
    fn from(h: Hold) -> HoldBody {
        HoldBody {
            hold_id: h.hold_id,
            reason: h.reason,
            applied_by: h.applied_by,
            applied_at: h.applied_at.to_string(),
            released: h.released.map(|r| ReleaseBody {
                by: r.by,
                at: r.at.to_string(),
                reason: r.reason,
            }),
        }
    }
}

/// A package's `retention_state` row and its active holds.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RetentionView {
    package_id: String,
    #[serde(flatten)]
    state: RetentionBody,
    holds: Vec<HoldBody>,
}

async fn view(app: &AppState, id: &str) -> Result<RetentionView> {
    let (package, holds) = app.store.retention(id).await?;
    Ok(RetentionView {
        package_id: package.id.clone(),
        state: RetentionBody::from(&package.retention),
        holds: holds.into_iter().map(HoldBody::from).collect(),
    })
}

/// `{new_expires_at, reason}`.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the request; it is read strictly by artifactstore-core.
pub(crate) struct ExtensionRequest {
    /// RFC 3339, UTC, six fractional digits; strictly later than the current expiry.
    new_expires_at: String,
    reason: String,
}

/// `{reason}`.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the request; it is read strictly by artifactstore-core.
pub(crate) struct ReasonRequest {
    reason: String,
}

fn text_field<'a>(fields: &'a artifactstore_core::cbor::Map, key: &str) -> Result<&'a str> {
    fields
        .get(key)
        .and_then(Value::as_text)
        .ok_or_else(|| Problem::bad_request("invalid-request", format!("{key} (text) is required")))
}

const PROBLEM: &str = "application/problem+json";

/// Moves the package's expiry strictly later.
#[utoipa::path(post, path = "/packages/{id}/retention/extensions", tag = "retention",
    params(("id" = String, Path)), request_body = ExtensionRequest,
    responses(
        (status = 200, description = "extended", body = RetentionView),
        (status = 400, description = "invalid body, timestamp or a blank reason", body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "no such package", body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "not strictly later (`extension-not-later`), a permanent class (`retention-permanent`) or a deleted package (`package-deleted`)", body = ProblemBody, content_type = PROBLEM)))]
pub(crate) async fn extend(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response> {
    let fields = read_request_map(req, &["new_expires_at", "reason"]).await?;
    let text = text_field(&fields, "new_expires_at")?;
    let new_expires_at: Timestamp = text.parse().map_err(|e| {
        Problem::bad_request("invalid-timestamp", format!("new_expires_at {text:?}: {e}"))
    })?;
    let reason = text_field(&fields, "reason")?;
    app.store
        .extend_retention(&id, new_expires_at, reason, &caller.subject)
        .await?;
    Ok(axum::Json(view(&app, &id).await?).into_response())
}

/// Applies a named hold: the package is not eligible while it is active.
#[utoipa::path(post, path = "/packages/{id}/retention/holds", tag = "retention",
    params(("id" = String, Path)), request_body = ReasonRequest,
    responses(
        (status = 201, description = "applied", body = HoldBody),
        (status = 400, description = "invalid body or a blank reason", body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "no such package", body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "the package was deleted (`package-deleted`)", body = ProblemBody, content_type = PROBLEM)))]
pub(crate) async fn hold(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response> {
    let fields = read_request_map(req, &["reason"]).await?;
    let hold = app
        .store
        .apply_hold(&id, text_field(&fields, "reason")?, &caller.subject)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(HoldBody::from(hold))).into_response())
}

/// Releases one hold; the others stay.
#[utoipa::path(post, path = "/packages/{id}/retention/holds/{hold_id}/release", tag = "retention",
    params(("id" = String, Path), ("hold_id" = String, Path)), request_body = ReasonRequest,
    responses(
        (status = 200, description = "released", body = HoldBody),
        (status = 400, description = "invalid body or a blank reason", body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "no such package or hold", body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "already released, or the package was deleted (`package-deleted`)", body = ProblemBody, content_type = PROBLEM)))]
pub(crate) async fn release(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path((id, hold_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response> {
    let fields = read_request_map(req, &["reason"]).await?;
    let hold = app
        .store
        .release_hold(
            &id,
            &hold_id,
            text_field(&fields, "reason")?,
            &caller.subject,
        )
        .await?;
    Ok(axum::Json(HoldBody::from(hold)).into_response())
}

/// The `retention_state` row and the active holds.
#[utoipa::path(get, path = "/packages/{id}/retention", tag = "retention", params(("id" = String, Path)),
    responses((status = 200, body = RetentionView), (status = 404, body = ProblemBody, content_type = PROBLEM)))]
pub(crate) async fn state(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(axum::Json(view(&app, &id).await?).into_response())
}

/// The package's retention events in order: a JCS array, or a canonical
/// CBOR array of the events with `Accept: application/cbor`.
#[utoipa::path(get, path = "/packages/{id}/retention/history", tag = "retention", params(("id" = String, Path)),
    responses(
        (status = 200, description = "the events", content(
            (Vec<Object> = "application/json"),
            (Vec<u8> = "application/cbor"))),
        (status = 404, body = ProblemBody, content_type = PROBLEM)))]
pub(crate) async fn history(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let stored = app.store.retention_history(&id).await?;
    let events = stored
        .iter()
        .map(|e| {
            Event::decode(&e.bytes)
                .map(|ev| ev.to_value())
                .map_err(|err| {
                    tracing::error!(seq = e.seq, error = %err, "stored event cannot be served");
                    Problem::internal()
                })
        })
        .collect::<Result<Vec<Value>>>()?;
    let all = Value::Array(events);
    if wants_cbor(&headers) {
        return Ok((
            [(header::CONTENT_TYPE, CBOR)],
            Body::from(all.to_canonical_bytes()),
        )
            .into_response());
    }
    let text = jcs::to_jcs(&all).map_err(|e| {
        tracing::error!(error = %e, "history has no JCS projection");
        Problem::internal()
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

/// A configured retention class.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ClassBody {
    name: String,
    /// The default period in seconds; `null` for a permanent class.
    default_seconds: Option<u64>,
    /// The same period as text (e.g. `7days`).
    default: Option<String>,
    permanent: bool,
}

/// The retention classes packages may use.
#[utoipa::path(get, path = "/retention/classes", tag = "retention",
    responses((status = 200, body = Vec<ClassBody>)))]
pub(crate) async fn classes(State(app): State<AppState>) -> impl IntoResponse {
    let classes: Vec<ClassBody> = app
        .store
        .classes()
        .iter()
        .map(|(name, rule)| ClassBody {
            name: name.clone(),
            default_seconds: match rule {
                ClassRule::Period { seconds } => Some(*seconds),
                ClassRule::Permanent => None,
            },
            default: rule.describe(),
            permanent: *rule == ClassRule::Permanent,
        })
        .collect();
    axum::Json(classes)
}
