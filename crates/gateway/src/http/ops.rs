//! Operations: `/health`, `/ready`, `/metrics`, `/openapi.json`, `/v1/models`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::state::AppState;

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// `GET /health`: the process is up.
pub async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /ready`: the stream log answers.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_raised() {
        return ApiError::unavailable("shutting down").into_response();
    }
    // A status query of an id that cannot exist exercises the store end to end.
    match state.log.status(streamlog::StreamId::with_millis(0)).await {
        Ok(_) | Err(streamlog::LogError::NotFound(_)) => {
            axum::Json(serde_json::json!({ "status": "ready" })).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "store not ready");
            ApiError::unavailable("the stream log is unreachable").into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> Response {
    let mut response = prometheus().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// `GET /v1/models`: the configured models, in OpenAI's list shape.
pub async fn models(State(state): State<AppState>) -> impl IntoResponse {
    let data: Vec<_> = state
        .models
        .names()
        .iter()
        .map(|name| {
            serde_json::json!({ "id": name, "object": "model", "created": 0, "owned_by": "unbroken" })
        })
        .collect();
    axum::Json(serde_json::json!({ "object": "list", "data": data }))
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

/// A known path with a method it does not answer.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
