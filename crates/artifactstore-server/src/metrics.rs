//! `GET /metrics` in the Prometheus text format (version 0.0.4): requests
//! and latencies by route, bytes out, and the engine's counters. A few
//! counters need no metrics library; these are kept in plain maps.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::routes::AppState;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Counters of the HTTP layer.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route, status) → requests
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// route → time to the response head
    latency: Mutex<BTreeMap<String, Histogram>>,
    bytes_out: std::sync::Arc<AtomicU64>,
}

impl Metrics {
    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        drop(requests);
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = latency.entry(route.to_owned()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }
}

/// Label values are route templates and methods (no user input), but are
/// escaped anyway as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The middleware: counts each routed request once its response head is
/// ready, and counts response body bytes as they are sent.
pub(crate) async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    let counter = metrics.bytes_out.clone();
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

/// Prometheus text format (0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "the metrics", content_type = "text/plain")))]
pub(crate) async fn render(State(app): State<AppState>) -> impl IntoResponse {
    let m = &app.metrics;
    let mut out = String::new();
    out.push_str(
        "# HELP artifactstore_http_requests_total HTTP requests by method, route and status.\n",
    );
    out.push_str("# TYPE artifactstore_http_requests_total counter\n");
    for ((method, route, status), n) in m.requests.lock().unwrap_or_else(|e| e.into_inner()).iter()
    {
        let _ = writeln!(
            out,
            "artifactstore_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
            label(method),
            label(route)
        );
    }
    out.push_str(
        "# HELP artifactstore_http_request_duration_seconds Time to the response head, by route.\n",
    );
    out.push_str("# TYPE artifactstore_http_request_duration_seconds histogram\n");
    for (route, h) in m.latency.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let route = label(route);
        for (bound, n) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                out,
                "artifactstore_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "artifactstore_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "artifactstore_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "artifactstore_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
            h.count
        );
    }
    let stats = app.store.stats();
    for (name, help, value) in [
        (
            "artifactstore_http_response_bytes_total",
            "Response body bytes sent.",
            m.bytes_out.load(Ordering::Relaxed),
        ),
        (
            "artifactstore_ingested_bytes_total",
            "Blob bytes received by uploads, before deduplication.",
            stats.ingested_bytes,
        ),
        (
            "artifactstore_events_appended_total",
            "Events this process appended to the log.",
            stats.events_appended,
        ),
        (
            "artifactstore_gc_runs_total",
            "Garbage collections this process completed.",
            stats.collections,
        ),
        (
            "artifactstore_gc_deleted_packages_total",
            "Packages this process's collections deleted.",
            stats.packages_deleted,
        ),
        (
            "artifactstore_gc_deleted_blobs_total",
            "Blobs this process's collections deleted.",
            stats.blobs_deleted,
        ),
        (
            "artifactstore_gc_deleted_bytes_total",
            "Blob bytes this process's collections deleted.",
            stats.bytes_deleted,
        ),
        (
            "artifactstore_corrupt_reads_total",
            "Whole-blob reads cut off because the stored bytes did not match their digest.",
            stats.corrupt_reads,
        ),
        (
            "artifactstore_packages_created_total",
            "Packages this process created.",
            stats.creations.created,
        ),
        (
            "artifactstore_package_commit_groups_total",
            "Transactions that committed package creations (a group commit each).",
            stats.creations.groups.transactions,
        ),
        (
            "artifactstore_package_commit_group_packages_total",
            "Packages those transactions committed.",
            stats.creations.groups.writes,
        ),
        (
            "artifactstore_blob_commit_groups_total",
            "Transactions that recorded uploaded blobs (a group commit each).",
            stats.blob_groups.transactions,
        ),
        (
            "artifactstore_blob_commit_group_blobs_total",
            "Uploaded blobs those transactions recorded or found stored already.",
            stats.blob_groups.writes,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let seconds = |micros: u64| micros as f64 / 1e6;
    let name = "artifactstore_package_creation_seconds_total";
    let _ = writeln!(
        out,
        "# HELP {name} Time package creations spent, by phase: checking the blobs they name, \
         and from queueing for a group commit to its commit.\n\
         # TYPE {name} counter"
    );
    for (phase, micros) in [
        ("check", stats.creations.check_micros),
        ("commit", stats.creations.commit_micros),
    ] {
        let _ = writeln!(out, "{name}{{phase=\"{phase}\"}} {}", seconds(micros));
    }
    for (kind, groups) in [
        ("package", stats.creations.groups),
        ("blob", stats.blob_groups),
    ] {
        let name = format!("artifactstore_{kind}_commit_group_seconds_total");
        let _ = writeln!(
            out,
            "# HELP {name} Time the {kind} commit groups' transactions took, from BEGIN \
             to the end of COMMIT.\n# TYPE {name} counter\n{name} {}",
            seconds(groups.micros)
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
