//! `/openapi.json` describes exactly the routes the server serves.

mod common;

use std::collections::BTreeSet;

#[tokio::test]
async fn the_document_lists_every_route_and_nothing_else() {
    let server = common::TestServer::start().await;
    let base = server.client.base().to_owned();
    let doc: serde_json::Value = artifactstore_client::reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // HEAD is served by axum for every GET route; the document lists the
    // GET, and HEAD where it has a meaning of its own (upload offsets).
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = common::routes()
        .into_iter()
        .filter(|(m, t, _)| !(m.as_str() == "HEAD" && *t != "/uploads/{id}"))
        .map(|(m, t, _)| (m.to_string(), t.to_owned()))
        .collect();
    assert_eq!(documented, served);

    for schema in [
        "BlobBody",
        "PackageBody",
        "PackageList",
        "ProblemBody",
        "CreatePackage",
        "EventsPage",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([{}]),
        "probes are open"
    );
    let put = &doc["paths"]["/blobs/{digest}"]["put"]["responses"];
    assert!(put["201"].is_object() && put["400"].is_object() && put["413"].is_object());
}
