//! `GET /openapi.json`: the OpenAPI document, generated from the handlers'
//! annotations and the response types they serialize.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "artifactstore",
        description = "Content-addressed artifact store with a hash-chained event log and retention. \
                       Errors are RFC 9457 problem documents with a stable `type`.",
    ),
    paths(
        crate::routes::put_blob,
        crate::routes::get_blob,
        crate::routes::create_upload,
        crate::routes::upload_offset,
        crate::routes::append_upload,
        crate::routes::finish_upload,
        crate::routes::abort_upload,
        crate::packages::create,
        crate::packages::list,
        crate::packages::show,
        crate::packages::manifest,
        crate::packages::file,
                crate::retention::extend,
        crate::retention::hold,
        crate::retention::release,
        crate::retention::state,
        crate::retention::history,
        crate::retention::classes,
        crate::events::events,
        crate::metrics::render,
        crate::routes::healthz,
        crate::routes::readyz,
        openapi_json,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub(crate) struct ApiDoc;

/// Every route takes `Authorization: Bearer <token>` when tokens are
/// configured; the probes and this document are marked as open.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
