//! The HTTP adapter of artifactstore (DESIGN.md §5): axum routes that map
//! requests onto [`artifactstore_store::Store`] calls and errors onto RFC
//! 9457 problem documents. No business rule lives here.

pub mod auth;
mod events;
mod metrics;
mod openapi;
mod packages;
pub mod problem;
pub mod range;
mod retention;
mod routes;

use axum::serve::ListenerExt;
use std::future::Future;
use tokio::net::TcpListener;

pub use routes::{AppState, BLAKE3_HEADER, SHA256_HEADER, SIZE_HEADER, UPLOAD_OFFSET, router};

/// Serves the API on `listener` until `shutdown` resolves, then finishes
/// in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Without TCP_NODELAY, small responses on a reused connection can wait
    // ~40 ms for the peer's delayed ACK (Nagle's algorithm).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
