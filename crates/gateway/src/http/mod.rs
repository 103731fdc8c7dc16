//! The HTTP surface: routes, and the renderers that turn stored records into wire
//! events. Handlers validate and delegate; the generation itself runs in the supervisor.

pub mod body;
pub mod chat;
pub mod extract;
pub mod hub;
pub mod named;
pub mod ops;
pub mod render;
pub mod sessions;
pub mod streams;
pub mod web;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
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
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn(require_json))
        .layer(DefaultBodyLimit::max(limit));
    match cors(&state.server.cors_origins) {
        Some(cors) => router.layer(cors).with_state(state),
        None => router.with_state(state),
    }
}

/// A POST with a body must say the body is JSON (415 otherwise). Browsers send
/// `text/plain` and form bodies to other sites without asking first (no CORS preflight);
/// with JSON required, every cross-site POST is preflighted and the CORS allow-list
/// decides, so a web page cannot make a keyless local gateway spend upstream credit.
async fn require_json(request: Request, next: Next) -> Response {
    if request.method() == Method::POST
        && has_body(request.headers())
        && !is_json(request.headers())
    {
        return ApiError::not_json().into_response();
    }
    next.run(request).await
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
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
