//! Package routes over real HTTP.

mod common;

use artifactstore_client::reqwest::{self, StatusCode};
use artifactstore_core::cbor::{Map, Value};
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_core::{BlobId, jcs};
use common::{TestServer as Server, problem};
use serde_json::{Value as Json, json};

async fn put(s: &Server, data: &[u8]) -> BlobId {
    let id = BlobId::of(data);
    s.client
        .put_blob(&id.sha256_digest(), data.to_vec())
        .await
        .unwrap();
    id
}

async fn post_json(s: &Server, body: &Json) -> reqwest::Response {
    s.raw
        .post(s.url("/packages"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn file_json(path: &str, data: &[u8]) -> Json {
    let id = BlobId::of(data);
    json!({"path": path, "size": id.size, "sha256": id.sha256_digest().hex(), "blake3": id.blake3_digest().hex()})
}

#[tokio::test]
async fn create_read_list_and_download_over_json() {
    let s = Server::start().await;
    let report = b"<testsuite tests=\"3\"/>\n".to_vec();
    let log: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    put(&s, &report).await;
    put(&s, &log).await;
    let mut junit = file_json("report/junit.xml", &report);
    junit["media_type"] = json!("application/xml");
    let body = json!({
        "manifest": {
            "schema": "artifactstore.manifest.v1",
            "name": "guide-board/runs",
            "files": [file_json("logs/run.log", &log), junit],
            "annotations": {"run.id": "2026-11-28.3"},
        },
        "retention_class": "release-evidence",
    });
    let resp = post_json(&s, &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let created: Json = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/packages/{id}"));
    assert_eq!(created["file_count"], 2);
    assert_eq!(created["total_size"], report.len() + log.len());
    assert_eq!(created["retention"]["class"], "release-evidence");
    assert_eq!(created["retention"]["eligible_for_deletion"], false);
    assert!(created["retention"]["current_expires_at"].is_string());

    let shown: Json = s
        .raw
        .get(s.url(&location))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown, created);

    // The manifest: JCS by default, canonical CBOR on request, same identity.
    let jcs_text = s
        .raw
        .get(s.url(&format!("{location}/manifest")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let manifest = Manifest::from_json_value(&jcs::parse_json(&jcs_text).unwrap()).unwrap();
    assert_eq!(
        jcs_text,
        jcs::to_jcs(&manifest.to_value()).unwrap(),
        "served as exact JCS"
    );
    let cbor_resp = s
        .raw
        .get(s.url(&format!("{location}/manifest")))
        .header("accept", "application/cbor")
        .send()
        .await
        .unwrap();
    assert_eq!(cbor_resp.headers()["content-type"], "application/cbor");
    let cbor_bytes = cbor_resp.bytes().await.unwrap();
    let digest = BlobId::of(&cbor_bytes);
    assert_eq!(
        created["manifest"]["sha256"],
        digest.sha256_digest().to_string()
    );
    assert_eq!(
        created["manifest"]["blake3"],
        digest.blake3_digest().to_string()
    );
    assert_eq!(Manifest::decode(&cbor_bytes).unwrap(), manifest);

    // Files, whole and in ranges, typed by the manifest.
    let resp = s
        .raw
        .get(s.url(&format!("{location}/files/report/junit.xml")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/xml");
    assert_eq!(resp.bytes().await.unwrap(), report);
    let resp = s
        .raw
        .get(s.url(&format!("{location}/files/logs/run.log")))
        .header("range", "bytes=4-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap(), log[4..8]);
    let resp = s
        .raw
        .get(s.url(&format!("{location}/files/logs")))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::NOT_FOUND, "file-not-found").await;

    // Listing with filters and a cursor.
    for _ in 0..3 {
        let mut b = body.clone();
        b["retention_class"] = json!("scratch");
        assert_eq!(post_json(&s, &b).await.status(), StatusCode::CREATED);
    }
    let page: Json = s
        .raw
        .get(s.url("/packages?retention_class=scratch&limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["next_cursor"].as_str().unwrap();
    let rest: Json = s
        .raw
        .get(s.url(&format!(
            "/packages?retention_class=scratch&limit=2&cursor={next}"
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    let all: Json = s
        .raw
        .get(s.url("/packages?name=guide-board/runs&eligible=false"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 4);
    assert_eq!(all["next_cursor"], Json::Null);
}

#[tokio::test]
async fn create_over_canonical_cbor() {
    let s = Server::start().await;
    let data = b"evidence".to_vec();
    let blob = put(&s, &data).await;
    let manifest = Manifest::new(
        "records/q4".into(),
        vec![FileEntry {
            path: "e.bin".into(),
            blob,
            media_type: None,
        }],
        Default::default(),
    )
    .unwrap();
    let body = Value::Map(
        Map::new()
            .with("manifest", manifest.to_value())
            .with("retention_class", Value::text("permanent-record")),
    );
    let resp = s
        .raw
        .post(s.url("/packages"))
        .header("content-type", "application/cbor")
        .body(body.to_canonical_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Json = resp.json().await.unwrap();
    assert_eq!(created["retention"]["current_expires_at"], Json::Null);
    let id = BlobId::of(&manifest.to_canonical_bytes());
    assert_eq!(
        created["manifest"]["sha256"],
        id.sha256_digest().to_string()
    );

    // Non-canonical CBOR (a non-shortest integer) is refused.
    let mut bad = body.to_canonical_bytes();
    bad.push(0);
    let resp = s
        .raw
        .post(s.url("/packages"))
        .header("content-type", "application/cbor")
        .body(bad)
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "invalid-request").await;
}

#[tokio::test]
async fn bad_package_requests_say_exactly_what_is_wrong() {
    let s = Server::start().await;
    put(&s, b"here").await;
    let manifest =
        |files: Json| json!({"schema": "artifactstore.manifest.v1", "name": "a", "files": files});

    let body = json!({"manifest": manifest(json!([file_json("a", b"here"), file_json("b", b"gone")])), "retention_class": "scratch"});
    let p = problem(
        post_json(&s, &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing-blobs",
    )
    .await;
    assert_eq!(
        p["missing"],
        json!([BlobId::of(b"gone").sha256_digest().to_string()])
    );

    let body = json!({"manifest": manifest(json!([file_json("a", b"here")])), "retention_class": "eternal"});
    let p = problem(
        post_json(&s, &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown-retention-class",
    )
    .await;
    assert!(p["known"].as_array().unwrap().contains(&json!("scratch")));

    let cases = [
        (
            json!({"manifest": manifest(json!([file_json("../etc/passwd", b"here")])), "retention_class": "scratch"}),
            "invalid-file-path",
        ),
        (
            json!({"manifest": manifest(json!([file_json("b", b"here"), file_json("a", b"here")])), "retention_class": "scratch"}),
            "unsorted-file-paths",
        ),
        (
            json!({"manifest": {"schema": "artifactstore.manifest.v1", "name": "Bad Name", "files": []}, "retention_class": "scratch"}),
            "invalid-package-name",
        ),
        (
            json!({"manifest": {"schema": "x", "name": "a", "files": []}, "retention_class": "scratch"}),
            "manifest-malformed",
        ),
        (
            json!({"manifest": manifest(json!([])), "retention_class": "scratch", "extra": 1}),
            "invalid-request",
        ),
        (json!({"manifest": manifest(json!([]))}), "invalid-request"),
        (json!([1, 2]), "invalid-request"),
    ];
    for (body, code) in cases {
        problem(post_json(&s, &body).await, StatusCode::BAD_REQUEST, code).await;
    }
    let resp = s
        .raw
        .post(s.url("/packages"))
        .body("{\"manifest\": 1.5}")
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "invalid-request").await;
    let resp = s
        .raw
        .get(s.url("/packages?cursor=abc"))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "invalid-cursor").await;
    let resp = s
        .raw
        .get(s.url("/packages?eligible=maybe"))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST, "invalid-request").await;
    let resp = s
        .raw
        .get(s.url("/packages/01936f2e-0000-7000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::NOT_FOUND, "package-not-found").await;
    let listing: Json = s
        .raw
        .get(s.url("/packages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listing["items"],
        json!([]),
        "no refused request created a package"
    );
}
