//! RFC 9457 problem details. Every error response is one of these, with a
//! stable `type` URI built from the error's machine code; internal errors
//! are logged with their context and shown only as a generic 500.

use artifactstore_store::{ErrorClass, StoreError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The `type` URI prefix; the suffix is the stable machine code.
pub const TYPE_PREFIX: &str = "urn:artifactstore:problem:";

/// The wire form of a problem, for the API description.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// `urn:artifactstore:problem:<code>`, stable
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    extra: Map<String, Value>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }
    /// A 500 that says nothing of the cause: the caller logs the cause,
    /// with its context, before answering with this.
    pub fn internal() -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn with(mut self, key: &str, value: Value) -> Problem {
        self.extra.insert(key.to_owned(), value);
        self
    }
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Problem {
        self.headers.push((name, value));
        self
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("{TYPE_PREFIX}{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(obj) = &mut body {
            obj.extend(self.extra);
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        let status = match e.class() {
            ErrorClass::Invalid => StatusCode::BAD_REQUEST,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::Conflict => StatusCode::CONFLICT,
            ErrorClass::Gone => StatusCode::GONE,
            ErrorClass::Corrupt => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorClass::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::InsufficientStorage => {
                // The operator must act; the client only needs to know that
                // nothing was kept and that a retry can succeed later.
                tracing::error!(error = %e, "out of storage");
                return Problem::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    e.code(),
                    "the server has no space left for this request; nothing of it was kept"
                        .to_owned(),
                );
            }
            ErrorClass::Internal => {
                tracing::error!(error = %e, "internal error");
                return Problem::internal();
            }
        };
        let mut p = Problem::new(status, e.code(), e.to_string());
        match &e {
            StoreError::OffsetMismatch { current, .. } => {
                p = p.with("offset", json!(current)).with_header(
                    crate::routes::UPLOAD_OFFSET.clone(),
                    HeaderValue::from(*current),
                );
            }
            StoreError::DigestMismatch { declared, actual } => {
                p = p
                    .with("declared", json!(declared.to_string()))
                    .with("actual", json!(actual.to_string()));
            }
            StoreError::TooLarge { limit } => p = p.with("limit", json!(limit)),
            StoreError::MissingBlobs(missing) => {
                let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
                p = p.with("missing", json!(missing));
            }
            StoreError::ManifestBlobMismatch(paths) => p = p.with("paths", json!(paths)),
            StoreError::UnknownClass { known, .. } => p = p.with("known", json!(known)),
            StoreError::PackageDeleted { at, seq, .. }
            | StoreError::PackageGone { at, seq, .. } => {
                p = p
                    .with("deleted_at", json!(at.to_string()))
                    .with("deleted_seq", json!(seq));
            }
            StoreError::RangeNotSatisfiable { size, .. } => {
                p = p.with_header(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}"))
                        .unwrap_or(HeaderValue::from_static("bytes */0")),
                );
            }
            _ => {}
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifactstore_store::blob::BlobError;

    #[test]
    fn a_full_disk_is_a_507_that_names_no_internals() {
        let e = StoreError::Blob(BlobError::Io {
            context: "writing staging 01a2-secret-id".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
        let p = Problem::from(e);
        assert_eq!(p.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(p.code(), "insufficient-storage");
        assert!(!p.detail.contains("01a2-secret-id"), "{}", p.detail);
    }
}
