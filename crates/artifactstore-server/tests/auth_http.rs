//! Tokens and scopes: every route against every kind of caller, with the
//! expectations of `common::routes`.

mod common;

use std::collections::BTreeSet;

use artifactstore_client::reqwest::{self, Method, StatusCode};
use artifactstore_core::BlobId;
use artifactstore_server::auth::{Auth, Scope, TokenEntry};
use artifactstore_store::StoreOptions;
use sha2::Digest as _;

fn token_for(scope: Scope) -> String {
    format!("token-with-{}-scope", scope.as_str())
}

/// A server with one token per scope.
async fn start() -> common::TestServer {
    let entries = Scope::ALL
        .iter()
        .map(|&scope| TokenEntry {
            subject: format!("{}-bot", scope.as_str()),
            scopes: BTreeSet::from([scope]),
            sha256: sha2::Sha256::digest(token_for(scope).as_bytes()).into(),
        })
        .collect();
    common::TestServer::start_with(StoreOptions::default(), Auth::tokens(entries).unwrap()).await
}

#[tokio::test]
async fn every_route_against_every_scope() {
    let server = start().await;
    let base = server.client.base().to_owned();
    let routes: Vec<(Method, String, Option<Scope>)> = common::routes()
        .into_iter()
        .map(|(m, t, scope)| {
            let mut path = common::concrete(t);
            if m == Method::PUT && t == "/uploads/{id}" {
                path.push_str(&format!("?digest={}", BlobId::of(b"x").sha256_digest()));
            }
            (m, path, scope)
        })
        .collect();
    let http = reqwest::Client::new();
    let mut checked = 0;
    for (method, path, needed) in &routes {
        let mut callers: Vec<(String, Option<String>, Option<Scope>)> = vec![
            ("no token".into(), None, None),
            (
                "an unknown token".into(),
                Some("not-a-configured-token".into()),
                None,
            ),
        ];
        callers.extend(Scope::ALL.iter().map(|&s| {
            (
                format!("the {} token", s.as_str()),
                Some(token_for(s)),
                Some(s),
            )
        }));
        for (who, token, scope) in callers {
            let mut req = http
                .request(method.clone(), format!("{base}{path}"))
                .header("upload-offset", "0")
                .body("x");
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let expected = match (needed, token.is_some(), scope) {
                (None, _, _) => None,
                (Some(_), false, _) | (Some(_), true, None) => Some(StatusCode::UNAUTHORIZED),
                (Some(n), true, Some(s)) if s == *n || s == Scope::Admin => None,
                (Some(_), true, Some(_)) => Some(StatusCode::FORBIDDEN),
            };
            match expected {
                Some(code) => {
                    assert_eq!(status, code, "{method} {path} by {who}");
                    if code == StatusCode::UNAUTHORIZED {
                        assert_eq!(
                            resp.headers()["www-authenticate"],
                            "Bearer",
                            "{method} {path}"
                        );
                    }
                }
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path} by {who} was refused with {status}"
                ),
            }
            checked += 1;
        }
    }
    println!("checked {checked} route/caller pairs");
    assert_eq!(checked, routes.len() * 7);
}

#[tokio::test]
async fn the_token_subject_is_the_actor() {
    let server = start().await;
    let (store, base) = (server.store.clone(), server.client.base().to_owned());
    let data = b"signed by the writer".to_vec();
    let d = BlobId::of(&data).sha256_digest();
    let resp = reqwest::Client::new()
        .put(format!("{base}/blobs/{d}"))
        .bearer_auth(token_for(Scope::Write))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let events = store.events_after(0, 10).await.unwrap();
    let event = artifactstore_core::event::Event::decode(&events[0].bytes).unwrap();
    assert_eq!(event.actor(), "write-bot");
    // A forbidden request changes nothing.
    let resp = reqwest::Client::new()
        .put(format!("{base}/blobs/{}", BlobId::of(b"y").sha256_digest()))
        .bearer_auth(token_for(Scope::Read))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["required_scope"], "write");
    assert_eq!(store.events_after(0, 10).await.unwrap().len(), 1);
}
