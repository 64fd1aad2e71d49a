//! `GET /events`: the log, readable. A page as JSON (each event its exact
//! JCS projection), as a CBOR sequence (RFC 8742: the canonical bytes the
//! hash chain covers, back to back), or as Server-Sent Events that replay
//! from `after` (or `Last-Event-ID`) and then follow the log live.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::event::Event;
use artifactstore_core::jcs;
use artifactstore_store::{MAX_PAGE, Store};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;

use crate::problem::{Problem, ProblemBody};
use crate::routes::{AppState, Result};

const DEFAULT_LIMIT: u32 = 100;
/// How often a live follower re-reads the log even without a local commit:
/// events appended by other processes show up within this delay.
const POLL: Duration = Duration::from_secs(1);
const CBOR_SEQ: &str = "application/cbor-seq";

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Events with a greater seq (default 0).
    after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

/// A page of the log.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the page; it is written by hand so each event is exact JCS.
pub(crate) struct EventsPage {
    /// Each event's JCS projection: seq, id, type, subject, actor, at, data, prev.
    #[schema(value_type = Vec<Object>)]
    events: (),
    /// Pass as `after` for the next page.
    next_after: u64,
}

fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|r| {
                r.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case(media))
            })
        })
}

fn corrupt(seq: u64, e: impl std::fmt::Display) -> Problem {
    tracing::error!(seq, error = %e, "stored event cannot be served");
    Problem::internal()
}

fn jcs_of(seq: u64, bytes: &[u8]) -> Result<(Event, String)> {
    let event = Event::decode(bytes).map_err(|e| corrupt(seq, e))?;
    let text = jcs::to_jcs(&event.to_value()).map_err(|e| corrupt(seq, e))?;
    Ok((event, text))
}

/// The event log: a JSON page, a CBOR sequence (`Accept: application/cbor-seq`),
/// or Server-Sent Events (`Accept: text/event-stream`, resuming from
/// `Last-Event-ID`) that replay and then follow live.
#[utoipa::path(get, path = "/events", tag = "events", params(EventsQuery),
    responses(
        (status = 200, description = "events in seq order", content(
            (EventsPage = "application/json"),
            (Vec<u8> = "application/cbor-seq"),
            (String = "text/event-stream"))),
        (status = 400, description = "invalid parameters", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn events(
    State(app): State<AppState>,
    query: std::result::Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| Problem::bad_request("invalid-request", e.body_text()))?;
    if accepts(&headers, "text/event-stream") {
        // On reconnect the browser-standard header wins over the query.
        let last_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
        let after = match last_id {
            Some(id) => id.trim().parse().map_err(|_| {
                Problem::bad_request("invalid-request", "Last-Event-ID must be a seq")
            })?,
            None => q.after.unwrap_or(0),
        };
        return Ok(Sse::new(follow(app.store.clone(), after))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let after = q.after.unwrap_or(0);
    let page = app
        .store
        .events_after(after, q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_PAGE))
        .await?;
    if accepts(&headers, CBOR_SEQ) {
        let body: Vec<u8> = page.iter().flat_map(|e| e.bytes.iter().copied()).collect();
        return Ok(([(header::CONTENT_TYPE, CBOR_SEQ)], body).into_response());
    }
    // Assembled by hand so that each event is exactly its JCS text; the
    // envelope's two keys are already in JCS order.
    let mut body = String::from("{\"events\":[");
    for (i, e) in page.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&jcs_of(e.seq, &e.bytes)?.1);
    }
    let next_after = page.last().map_or(after, |e| e.seq);
    body.push_str(&format!("],\"next_after\":{next_after}}}"));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The SSE stream: every event after `after`, in order, then live ones.
fn follow(
    store: Arc<Store>,
    after: u64,
) -> impl Stream<Item = std::result::Result<sse::Event, Infallible>> {
    struct State {
        store: Arc<Store>,
        after: u64,
        ready: VecDeque<sse::Event>,
        head: tokio::sync::watch::Receiver<u64>,
    }
    let head = store.subscribe();
    let state = State {
        store,
        after,
        ready: VecDeque::new(),
        head,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(next) = st.ready.pop_front() {
                return Some((Ok(next), st));
            }
            let page = match st.store.events_after(st.after, MAX_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "event stream stopped");
                    return None;
                }
            };
            if page.is_empty() {
                // Wait for a local commit, or poll for other writers.
                if let Ok(Err(_)) = tokio::time::timeout(POLL, st.head.changed()).await {
                    // No local publisher any more: polling alone remains.
                    tokio::time::sleep(POLL).await;
                }
                continue;
            }
            for stored in page {
                let Ok((event, text)) = jcs_of(stored.seq, &stored.bytes) else {
                    return None;
                };
                st.after = stored.seq;
                st.ready.push_back(
                    sse::Event::default()
                        .id(stored.seq.to_string())
                        .event(event.type_name())
                        .data(text),
                );
            }
        }
    })
}
