//! Shared by the HTTP tests: every route the server serves, with the scope
//! it should need, written out by hand (independently of the server's own
//! table) so the tests check that table rather than restate it.

#![allow(dead_code, unreachable_pub)]

use artifactstore_client::reqwest::Method;
use artifactstore_server::auth::Scope;

/// (method, route template, scope needed; `None` = open)
pub fn routes() -> Vec<(Method, &'static str, Option<Scope>)> {
    use Scope::*;
    vec![
        (Method::GET, "/healthz", None),
        (Method::GET, "/readyz", None),
        (Method::GET, "/openapi.json", None),
        (Method::POST, "/uploads", Some(Write)),
        (Method::PATCH, "/uploads/{id}", Some(Write)),
        (Method::HEAD, "/uploads/{id}", Some(Write)),
        (Method::PUT, "/uploads/{id}", Some(Write)),
        (Method::DELETE, "/uploads/{id}", Some(Write)),
        (Method::PUT, "/blobs/{digest}", Some(Write)),
        (Method::GET, "/blobs/{digest}", Some(Read)),
        (Method::HEAD, "/blobs/{digest}", Some(Read)),
        (Method::POST, "/packages", Some(Write)),
        (Method::GET, "/packages", Some(Read)),
        (Method::GET, "/packages/{id}", Some(Read)),
        (Method::GET, "/packages/{id}/manifest", Some(Read)),
        (Method::GET, "/packages/{id}/files/{path}", Some(Read)),
        (Method::HEAD, "/packages/{id}/files/{path}", Some(Read)),
        (Method::GET, "/events", Some(Read)),
        (Method::GET, "/metrics", Some(Read)),
    ]
}

/// A concrete request path for a template.
pub fn concrete(template: &str) -> String {
    let digest = artifactstore_core::BlobId::of(b"x")
        .sha256_digest()
        .to_string();
    template
        .replace("{id}", "01936f2e-0000-7000-8000-000000000000")
        .replace("{digest}", &digest)
        .replace("{path}", "a/b.txt")
}
