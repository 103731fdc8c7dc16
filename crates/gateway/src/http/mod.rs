//! The HTTP surface: routes, and the renderers that turn stored records into wire
//! events. Handlers validate and delegate; the generation itself runs in the supervisor.

pub mod body;
pub mod chat;
pub mod hub;
pub mod named;
pub mod ops;
pub mod render;
pub mod sessions;
pub mod streams;
pub mod web;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::state::AppState;

/// Every route of the gateway.
pub fn routes(state: AppState) -> Router {
    let limit = state.server.max_body_bytes;
    let router = Router::new()
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/models", get(ops::models))
        .route("/v1/streams/{id}", get(streams::resume))
        .route("/v1/streams/{id}/cancel", post(streams::cancel))
        .route("/v1/streams/{id}/status", get(streams::status))
        .route("/v1/sessions", post(sessions::create))
        .route(
            "/v1/sessions/{id}",
            get(sessions::show).delete(sessions::end),
        )
        .route("/v1/sessions/{id}/events", get(sessions::events))
        .route("/v1/sessions/{id}/messages", post(sessions::message))
        .route("/v1/topics/{topic}", get(hub::subscribe))
        .route("/v1/topics/{topic}/events", post(hub::publish))
        .route("/v1/tasks", post(hub::create_task))
        .route("/v1/tasks/{id}/progress", post(hub::progress))
        .route("/v1/tasks/{id}/complete", post(hub::complete))
        .route("/v1/tasks/{id}/fail", post(hub::fail))
        .route("/v1/tasks/{id}/events", get(hub::task_events))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/style.css", get(web::style_css))
        .route("/sdk/unbroken.js", get(web::sdk))
        .route("/sdk/sse.js", get(web::sdk_sse))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(limit));
    match cors(&state.server.cors_origins) {
        Some(cors) => router.layer(cors).with_state(state),
        None => router.with_state(state),
    }
}

/// CORS for an explicit allow-list of origins; `None` when the list is empty.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                HeaderName::from_static(body::STREAM_ID_HEADER),
                header::RETRY_AFTER,
            ]),
    )
}
