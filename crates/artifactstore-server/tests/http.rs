//! The data plane over real HTTP: an in-process server on a loopback port,
//! spoken to by the typed client and by raw requests for the edge cases.

mod common;

use artifactstore_client::ClientError;
use artifactstore_client::reqwest::{self, StatusCode};
use artifactstore_core::{BlobId, Digest};
use artifactstore_server::auth::Auth;
use artifactstore_store::{Limits, StoreOptions};
use common::{TestServer as Server, problem};
use serde_json::Value;

fn data(len: usize, seed: u8) -> Vec<u8> {
    artifactstore_store::conformance::pattern(len, seed)
}

#[tokio::test]
async fn put_then_read_by_either_digest_with_ranges() {
    let s = Server::start().await;
    let bytes = data(100_000, 1);
    let id = BlobId::of(&bytes);
    let info = s
        .client
        .put_blob(&id.sha256_digest(), bytes.clone())
        .await
        .unwrap();
    assert_eq!((info.id, info.created), (id, true));
    let again = s
        .client
        .put_blob(&id.blake3_digest(), bytes.clone())
        .await
        .unwrap();
    assert_eq!(
        (again.id, again.created),
        (id, false),
        "second upload answers 200, stores nothing"
    );
    assert_eq!(s.event_count().await, 1);

    for d in [id.sha256_digest(), id.blake3_digest()] {
        assert_eq!(s.client.head_blob(&d).await.unwrap(), Some(id));
        assert_eq!(s.client.get_blob_bytes(&d).await.unwrap(), bytes);
    }
    let head = s
        .raw
        .head(s.url(&format!("/blobs/{}", id.blake3_digest())))
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["content-length"], "100000");
    assert_eq!(head.headers()["accept-ranges"], "bytes");
    assert_eq!(
        head.headers()["etag"],
        format!("\"{}\"", id.sha256_digest())
    );

    let cases = [
        ("bytes=10-19", 10..20),
        ("bytes=99990-", 99_990..100_000),
        ("bytes=-5", 99_995..100_000),
    ];
    for (range, want) in cases {
        let resp = s
            .client
            .get_blob(&id.sha256_digest(), Some(range))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        let expected = format!("bytes {}-{}/100000", want.start, want.end - 1);
        assert_eq!(resp.headers()["content-range"], expected.as_str());
        assert_eq!(resp.bytes().await.unwrap(), bytes[want.start..want.end]);
    }
    let resp = s
        .raw
        .get(s.url(&format!("/blobs/{}", id.sha256_digest())))
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-range"], "bytes */100000");
    problem(
        resp,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range-not-satisfiable",
    )
    .await;

    let etag = format!("\"{}\"", id.sha256_digest());
    let resp = s
        .raw
        .get(s.url(&format!("/blobs/{}", id.blake3_digest())))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn resumable_upload_over_http() {
    let s = Server::start().await;
    let bytes = data(3_000_000, 2);
    let id = BlobId::of(&bytes);
    let resp = s.raw.post(s.url("/uploads")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["upload-offset"], "0");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let up = location.strip_prefix("/uploads/").unwrap().to_owned();

    let mut offset = 0;
    for chunk in bytes[..2_000_000].chunks(700_000) {
        offset = s
            .client
            .append_upload(&up, offset, chunk.to_vec())
            .await
            .unwrap();
    }
    assert_eq!(offset, 2_000_000);
    assert_eq!(s.client.upload_offset(&up).await.unwrap(), 2_000_000);
    let info = s
        .client
        .finish_upload(
            &up,
            &[id.sha256_digest(), id.blake3_digest()],
            Some(bytes[2_000_000..].to_vec().into()),
        )
        .await
        .unwrap();
    assert_eq!((info.id, info.created), (id, true));
    assert_eq!(
        s.client.get_blob_bytes(&id.blake3_digest()).await.unwrap(),
        bytes
    );
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let s = Server::start_with(
        StoreOptions {
            limits: Limits {
                max_blob_size: 1000,
            },
            ..StoreOptions::default()
        },
        Auth::Open,
    )
    .await;
    let bytes = data(500, 3);
    let id = BlobId::of(&bytes);

    // Bad digest syntax, on every route that takes one.
    for (method, path) in [
        (
            reqwest::Method::PUT,
            "/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
        ),
        (reqwest::Method::GET, "/blobs/sha256:ABC"),
        (reqwest::Method::HEAD, "/blobs/sha256:e3b0"),
    ] {
        let resp = s
            .raw
            .request(method.clone(), s.url(path))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        if method == reqwest::Method::HEAD {
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        } else {
            problem(resp, StatusCode::BAD_REQUEST, "invalid-digest").await;
        }
    }

    // A digest mismatch: 400, both digests named, no blob, no event.
    let wrong = BlobId::of(b"other").sha256_digest();
    let resp = s
        .raw
        .put(s.url(&format!("/blobs/{wrong}")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let body = problem(resp, StatusCode::BAD_REQUEST, "digest-mismatch").await;
    assert_eq!(body["declared"], wrong.to_string());
    assert_eq!(body["actual"], id.sha256_digest().to_string());
    assert_eq!(s.client.head_blob(&id.sha256_digest()).await.unwrap(), None);

    // Over the limit, declared up front and streamed without a length.
    let big = data(1001, 4);
    let big_d = BlobId::of(&big).sha256_digest();
    let resp = s
        .raw
        .put(s.url(&format!("/blobs/{big_d}")))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let body = problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "blob-too-large").await;
    assert_eq!(body["limit"], 1000);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let resp = s
        .raw
        .put(s.url(&format!("/blobs/{big_d}")))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "blob-too-large").await;

    // Upload sessions: wrong offset, missing offset, no digest, unknown ids.
    let up = s.client.create_upload().await.unwrap();
    s.client
        .append_upload(&up, 0, bytes[..100].to_vec())
        .await
        .unwrap();
    let resp = s
        .raw
        .patch(s.url(&format!("/uploads/{up}")))
        .header("upload-offset", "50")
        .body(bytes[50..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["upload-offset"], "100");
    let body = problem(resp, StatusCode::CONFLICT, "upload-offset-mismatch").await;
    assert_eq!(body["offset"], 100);
    let resp = s
        .raw
        .patch(s.url(&format!("/uploads/{up}")))
        .body("x")
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "upload-offset-required").await;
    let resp = s
        .raw
        .patch(s.url(&format!("/uploads/{up}")))
        .header("upload-offset", "-1")
        .body("x")
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "invalid-upload-offset").await;
    let resp = s
        .raw
        .patch(s.url(&format!("/uploads/{up}")))
        .header("upload-offset", "100")
        .body(data(901, 5))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "blob-too-large").await;
    let resp = s
        .raw
        .put(s.url(&format!("/uploads/{up}")))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "digest-required").await;
    let resp = s
        .raw
        .put(s.url(&format!("/uploads/{up}?digest=sha256:nope")))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "invalid-digest").await;
    assert_eq!(
        s.client.upload_offset(&up).await.unwrap(),
        100,
        "refused requests left the session as it was"
    );

    let unknown = "01936f2e-0000-7000-8000-000000000000";
    for method in [
        reqwest::Method::PATCH,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let resp = s
            .raw
            .request(
                method,
                s.url(&format!("/uploads/{unknown}?digest={}", id.sha256_digest())),
            )
            .header("upload-offset", "0")
            .send()
            .await
            .unwrap();
        problem(resp, StatusCode::NOT_FOUND, "upload-not-found").await;
    }
    let err = s.client.upload_offset(unknown).await.unwrap_err();
    assert_eq!(err.problem().map(|p| p.status), Some(404));

    // A session finished with the wrong digest is gone, with its bytes.
    let resp = s
        .raw
        .put(s.url(&format!("/uploads/{up}?digest={wrong}")))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "digest-mismatch").await;
    assert!(matches!(
        s.client.upload_offset(&up).await,
        Err(ClientError::Problem(_))
    ));

    // Unknown routes and methods are problems too.
    problem(
        s.raw.get(s.url("/nope")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    problem(
        s.raw.post(s.url("/blobs/sha256:00")).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;

    assert_eq!(
        s.event_count().await,
        0,
        "no refused request wrote an event"
    );
    assert_eq!(s.client.head_blob(&big_d).await.unwrap(), None);
}

#[tokio::test]
async fn health_and_readiness() {
    let s = Server::start().await;
    let health: Value = s
        .raw
        .get(s.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = s.raw.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn missing_blob_is_404_problem() {
    let s = Server::start().await;
    let d: Digest = BlobId::of(b"absent").blake3_digest();
    let resp = s
        .raw
        .get(s.url(&format!("/blobs/{d}")))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::NOT_FOUND, "blob-not-found").await;
}
