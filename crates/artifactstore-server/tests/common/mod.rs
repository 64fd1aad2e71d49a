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
        (
            Method::POST,
            "/packages/{id}/retention/extensions",
            Some(Retention),
        ),
        (Method::POST, "/packages/{id}/retention/holds", Some(Hold)),
        (
            Method::POST,
            "/packages/{id}/retention/holds/{hold_id}/release",
            Some(Hold),
        ),
        (Method::GET, "/packages/{id}/retention", Some(Read)),
        (Method::GET, "/packages/{id}/retention/history", Some(Read)),
        (Method::GET, "/retention/classes", Some(Read)),
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
        .replace("{hold_id}", "01936f2e-0000-7000-8000-000000000001")
}

use std::sync::Arc;

use artifactstore_client::Client;
use artifactstore_client::reqwest::{self, StatusCode};
use artifactstore_server::AppState;
use artifactstore_server::auth::Auth;
use artifactstore_store::{Store, StoreOptions};

/// An in-process server on a random loopback port over a temp data dir.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    /// The typed client, and a raw one for requests it would not send.
    pub client: Client,
    pub raw: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(StoreOptions::default(), Auth::Open).await
    }

    pub async fn start_with(options: StoreOptions, auth: Auth) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open_embedded(dir.path(), None, options)
                .await
                .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(store.clone(), auth);
        tokio::spawn(artifactstore_server::serve(
            listener,
            state,
            std::future::pending(),
        ));
        TestServer {
            dir,
            store,
            client: Client::new(base),
            raw: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.client.base())
    }

    pub async fn event_count(&self) -> usize {
        self.store.events_after(0, 10_000).await.unwrap().len()
    }
}

/// Asserts a problem+json response with this status and code; its body.
pub async fn problem(resp: reqwest::Response, status: StatusCode, code: &str) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["type"],
        format!("urn:artifactstore:problem:{code}"),
        "{body}"
    );
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}
