//! The HTTP surface: routes, and the renderers that turn stored records into wire
//! events. Handlers validate and delegate; the generation itself runs in the supervisor.

pub mod body;
pub mod budget;
pub mod chat;
pub mod extract;
pub mod hub;
pub mod named;
pub mod ops;
pub mod render;
pub mod responses;
pub mod sessions;
pub mod streams;
pub mod usage;
pub mod web;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
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
    let read_timeout = state.server.request_read_timeout();
    let router = Router::new()
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/models", get(ops::models))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route("/v1/usage", get(usage::usage))
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
        .route(
            "/v1/topics/{topic}",
            get(hub::subscribe).post(hub::create_topic),
        )
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
        .layer(axum::middleware::from_fn(move |request, next| {
            read_body(request, next, limit, read_timeout)
        }))
        .layer(axum::middleware::from_fn(require_json))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .layer(DefaultBodyLimit::max(limit));
    match cors(&state.server.cors_origins) {
        Some(cors) => router.layer(cors).with_state(state),
        None => router.with_state(state),
    }
}

/// Without auth, a request must name this gateway in `Host`: `localhost`, a loopback
/// address, the listen address, or one of `[server] allowed_hosts` (421 otherwise). A web
/// page that rebinds its own name to 127.0.0.1 (DNS rebinding) still sends its own name,
/// so it cannot use a keyless local gateway's upstream credit or read its streams.
async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.auth_enabled() {
        return next.run(request).await;
    }
    let host = request
        .uri()
        .authority()
        .map(|authority| authority.host().to_owned())
        .or_else(|| {
            let value = request.headers().get(header::HOST)?.to_str().ok()?;
            let authority: axum::http::uri::Authority = value.parse().ok()?;
            Some(authority.host().to_owned())
        });
    match host {
        Some(host) if host_allowed(&host, &state.server) => next.run(request).await,
        _ => ApiError::misdirected().into_response(),
    }
}

/// Whether `host` (no port; IPv6 in brackets) names this gateway.
pub fn host_allowed(host: &str, server: &crate::config::ServerConfig) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if server
        .allowed_hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(&host))
    {
        return true;
    }
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    else {
        return false;
    };
    let listen = server.listen.ip();
    // Listening on every interface (allowed without auth only when asked for): any of
    // the machine's addresses may be the one a client uses.
    ip.is_loopback() || ip == listen || listen.is_unspecified()
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

/// A request's body is read whole before the handler runs, within `read_timeout` (408
/// otherwise: a client that announces a body and then stalls would hold its connection
/// and the handler for ever) and within `limit` bytes (413).
async fn read_body(request: Request, next: Next, limit: usize, read_timeout: Duration) -> Response {
    if !has_body(request.headers()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(read_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            return if too_large {
                ApiError::too_large(limit).into_response()
            } else {
                ApiError::bad_request("invalid_body", "the request body could not be read")
                    .into_response()
            };
        }
        Err(_) => return ApiError::request_timeout(read_timeout).into_response(),
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
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
                HeaderName::from_static(chat::TARGET_HEADER),
                header::RETRY_AFTER,
            ]),
    )
}
