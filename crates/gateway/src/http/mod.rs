//! The HTTP surface: routes, and the renderers that turn stored records into wire
//! events. Handlers validate and delegate; the generation itself runs in the supervisor.

pub mod body;
pub mod chat;
pub mod ops;
pub mod render;
pub mod streams;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::state::AppState;

/// Every route of the gateway.
pub fn routes(state: AppState) -> Router {
    let limit = state.server.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/models", get(ops::models))
        .route("/v1/streams/{id}", get(streams::resume))
        .route("/v1/streams/{id}/cancel", post(streams::cancel))
        .route("/v1/streams/{id}/status", get(streams::status))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
