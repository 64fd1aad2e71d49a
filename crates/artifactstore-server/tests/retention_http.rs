//! The retention routes over HTTP, with a manual clock in the engine.

mod common;

use std::sync::Arc;
use std::time::Duration;

use artifactstore_client::reqwest::StatusCode;
use artifactstore_core::cbor;
use artifactstore_core::retention::{ClassRule, shipped_classes};
use artifactstore_server::auth::Auth;
use artifactstore_store::StoreOptions;
use artifactstore_store::clock::ManualClock;
use common::{TestServer, problem};
use serde_json::{Value, json};

async fn start() -> (TestServer, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(
        "2026-11-28T11:15:20.123456Z".parse().unwrap(),
    ));
    let mut classes = shipped_classes();
    classes.insert("ci-short".into(), ClassRule::Period { seconds: 2 });
    let options = StoreOptions {
        classes,
        clock: clock.clone(),
        ..StoreOptions::default()
    };
    (TestServer::start_with(options, Auth::Open).await, clock)
}

async fn create(s: &TestServer, class: &str) -> String {
    let body = json!({"manifest": {"schema": "artifactstore.manifest.v1", "name": "a", "files": []}, "retention_class": class});
    let resp = s
        .raw
        .post(s.url("/packages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn post(s: &TestServer, path: &str, body: Value) -> artifactstore_client::reqwest::Response {
    s.raw.post(s.url(path)).json(&body).send().await.unwrap()
}

async fn get(s: &TestServer, path: &str) -> Value {
    let resp = s.raw.get(s.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn extend_hold_release_sweep_and_read_the_history() {
    let (s, clock) = start().await;
    let id = create(&s, "ci-short").await;
    let base = format!("/packages/{id}/retention");

    let state = get(&s, &base).await;
    assert_eq!(state["package_id"], id);
    assert_eq!(state["current_expires_at"], "2026-11-28T11:15:22.123456Z");
    assert_eq!(state["holds"], json!([]));

    let resp = post(
        &s,
        &format!("{base}/extensions"),
        json!({"new_expires_at": "2026-11-28T11:15:30.000000Z", "reason": "audit"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["current_expires_at"],
        "2026-11-28T11:15:30.000000Z"
    );

    let resp = post(
        &s,
        &format!("{base}/holds"),
        json!({"reason": "litigation"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let hold: Value = resp.json().await.unwrap();
    let hold_id = hold["hold_id"].as_str().unwrap();
    assert_eq!(hold["applied_by"], "anonymous");
    assert_eq!(hold["released"], Value::Null);
    assert_eq!(get(&s, &base).await["active_holds"], 1);

    clock.advance(Duration::from_secs(60));
    assert_eq!(s.store.sweep().await.unwrap().marked, 0);
    assert_eq!(get(&s, &base).await["eligible_for_deletion"], false);

    let resp = post(
        &s,
        &format!("{base}/holds/{hold_id}/release"),
        json!({"reason": "settled"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["released"]["reason"],
        "settled"
    );
    assert_eq!(s.store.sweep().await.unwrap().marked, 1);
    let state = get(&s, &base).await;
    assert_eq!(state["eligible_for_deletion"], true);
    assert!(state["last_eligibility_seq"].is_u64());

    let history = get(&s, &format!("{base}/history")).await;
    let types: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "v1.retention.default_applied",
            "v1.retention.extended",
            "v1.retention.hold_applied",
            "v1.retention.hold_released",
            "v1.retention.deletion_eligible"
        ]
    );
    assert_eq!(
        history[1]["data"]["previous_expires_at"],
        "2026-11-28T11:15:22.123456Z"
    );
    // The same history as canonical CBOR: an array of the chained events.
    let resp = s
        .raw
        .get(s.url(&format!("{base}/history")))
        .header("accept", "application/cbor")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/cbor");
    let decoded = cbor::decode(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(decoded.as_array().unwrap().len(), 5);
    assert_eq!(
        artifactstore_core::jcs::to_jcs(&decoded).unwrap(),
        serde_json::to_string(&history).unwrap()
    );
}

#[tokio::test]
async fn bad_retention_requests_are_4xx_and_change_nothing() {
    let (s, _clock) = start().await;
    let id = create(&s, "scratch").await;
    let forever = create(&s, "permanent-record").await;
    let base = format!("/packages/{id}/retention");
    let before = s.event_count().await;

    let cases = [
        (
            format!("{base}/extensions"),
            json!({"new_expires_at": "2020-01-01T00:00:00.000000Z", "reason": "r"}),
            StatusCode::CONFLICT,
            "extension-not-later",
        ),
        (
            format!("{base}/extensions"),
            json!({"new_expires_at": "2030-01-01T00:00:00Z", "reason": "r"}),
            StatusCode::BAD_REQUEST,
            "invalid-timestamp",
        ),
        (
            format!("{base}/extensions"),
            json!({"new_expires_at": "2030-01-01T00:00:00.000000Z"}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
        ),
        (
            format!("{base}/extensions"),
            json!({"new_expires_at": "2030-01-01T00:00:00.000000Z", "reason": " "}),
            StatusCode::BAD_REQUEST,
            "reason-required",
        ),
        (
            format!("/packages/{forever}/retention/extensions"),
            json!({"new_expires_at": "2030-01-01T00:00:00.000000Z", "reason": "r"}),
            StatusCode::CONFLICT,
            "retention-permanent",
        ),
        (
            format!("{base}/holds"),
            json!({"reason": ""}),
            StatusCode::BAD_REQUEST,
            "reason-required",
        ),
        (
            format!("{base}/holds"),
            json!({"reason": "r", "until": "never"}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
        ),
        (
            format!("{base}/holds/nope/release"),
            json!({"reason": "r"}),
            StatusCode::NOT_FOUND,
            "hold-not-found",
        ),
        (
            "/packages/01936f2e-0000-7000-8000-000000000000/retention/holds".into(),
            json!({"reason": "r"}),
            StatusCode::NOT_FOUND,
            "package-not-found",
        ),
    ];
    for (path, body, status, code) in cases {
        problem(post(&s, &path, body).await, status, code).await;
    }
    assert_eq!(
        s.event_count().await,
        before,
        "no refused request wrote an event"
    );

    let hold: Value = post(&s, &format!("{base}/holds"), json!({"reason": "r"}))
        .await
        .json()
        .await
        .unwrap();
    let release = format!("{base}/holds/{}/release", hold["hold_id"].as_str().unwrap());
    assert_eq!(
        post(&s, &release, json!({"reason": "r"})).await.status(),
        StatusCode::OK
    );
    problem(
        post(&s, &release, json!({"reason": "r"})).await,
        StatusCode::CONFLICT,
        "hold-already-released",
    )
    .await;
    let resp = s
        .raw
        .get(s.url("/packages/01936f2e-0000-7000-8000-000000000000/retention/history"))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::NOT_FOUND, "package-not-found").await;
}

#[tokio::test]
async fn the_configured_classes() {
    let (s, _clock) = start().await;
    let classes = get(&s, "/retention/classes").await;
    let short = classes
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ci-short")
        .unwrap();
    assert_eq!(short["default_seconds"], 2);
    assert_eq!(short["permanent"], false);
    let forever = classes
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "permanent-record")
        .unwrap();
    assert_eq!(
        (
            forever["permanent"].clone(),
            forever["default_seconds"].clone()
        ),
        (json!(true), Value::Null)
    );
}
