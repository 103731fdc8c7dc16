//! Operations: `/health`, `/ready`, `/metrics`, `/openapi.json`, `/v1/models`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::router::Models;
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

/// A write to the log while it is known to be failing: a throwaway stream, created and
/// ended (retention removes it). True, and the log counts as healthy again, if it took.
async fn probe_write(state: &AppState) -> bool {
    let new = streamlog::NewStream {
        id: streamlog::StreamId::new(),
        owner: String::new(),
        kind: streamlog::StreamKind::Task,
        request: bytes::Bytes::new(),
    };
    let written = async {
        let (meta, lease) = state
            .log
            .create_leased(new, state.node.clone(), state.lease_ttl)
            .await?;
        state
            .log
            .finish(meta.id, lease.token, streamlog::StreamState::Cancelled)
            .await
    };
    match written.await {
        Ok(()) => {
            state.health.succeeded();
            true
        }
        Err(error) => {
            tracing::warn!(%error, "the stream log still cannot be written");
            false
        }
    }
}

/// `GET /ready`: the stream log answers, and takes writes (while writes are known to
/// fail, each call tries one).
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_raised() {
        return ApiError::unavailable("shutting down").into_response();
    }
    if state.health.is_failing() && !probe_write(&state).await {
        return ApiError::unavailable("the stream log cannot be written").into_response();
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

/// Make every metric the operations guide lists visible from the start, at zero, with
/// its help text: a scrape before the first request sees the series (alerts on an absent
/// series would fire otherwise). Registering adds nothing to a value already counted.
pub fn register_metrics(models: &Models) {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "unbroken_active_streams",
        "generations running on this node"
    );
    describe_gauge!(
        "unbroken_active_readers",
        "readers attached to running generations"
    );
    describe_counter!(
        "unbroken_appends_total",
        "records appended to the stream log"
    );
    describe_counter!("unbroken_resumes_total", "GET /v1/streams/{id} resumes");
    describe_counter!(
        "unbroken_idempotent_replays_total",
        "POSTs attached to an existing stream by their Idempotency-Key"
    );
    describe_counter!(
        "unbroken_upstream_requests_total",
        "upstream requests by model, target, provider and outcome"
    );
    describe_histogram!(
        "unbroken_upstream_ttft_seconds",
        metrics::Unit::Seconds,
        "upstream request to first token"
    );
    describe_gauge!(
        "unbroken_queue_depth",
        "requests waiting for a target's slot"
    );
    describe_gauge!(
        "unbroken_circuit_open",
        "1 while a target's circuit breaker skips it"
    );
    describe_counter!(
        "unbroken_tokens_total",
        "tokens paid upstream by model, target and kind (prompt or completion)"
    );
    describe_gauge!(
        "unbroken_cost_usd_total",
        "USD paid upstream by model and target (only rises), from the targets' prices"
    );
    describe_counter!(
        "unbroken_takeovers_total",
        "streams whose writer died, taken over by this node"
    );
    describe_histogram!(
        "unbroken_takeover_seconds",
        metrics::Unit::Seconds,
        "from a taken-over stream's lease to its continuation starting"
    );
    describe_counter!(
        "unbroken_limited_total",
        "requests refused by a per-principal limit (what = streams, readers or requests)"
    );
    describe_counter!(
        "unbroken_readers_aged_out_total",
        "SSE responses ended at [limits] max_reader_age_s (clients resume)"
    );
    metrics::counter!("unbroken_limited_total", "what" => "streams").increment(0);
    metrics::counter!("unbroken_limited_total", "what" => "readers").increment(0);
    metrics::counter!("unbroken_limited_total", "what" => "requests").increment(0);
    metrics::counter!("unbroken_readers_aged_out_total").increment(0);
    metrics::gauge!("unbroken_active_streams").increment(0.0);
    metrics::counter!("unbroken_takeovers_total").increment(0);
    metrics::gauge!("unbroken_active_readers").increment(0.0);
    metrics::counter!("unbroken_appends_total").increment(0);
    metrics::counter!("unbroken_resumes_total").increment(0);
    metrics::counter!("unbroken_idempotent_replays_total").increment(0);
    for name in models.names() {
        let Some(model) = models.get(name) else {
            continue;
        };
        for target in &model.targets {
            let labels = [("model", name.clone()), ("target", target.name.clone())];
            metrics::gauge!("unbroken_queue_depth", &labels).increment(0.0);
            metrics::gauge!("unbroken_circuit_open", &labels).increment(0.0);
            for kind in ["prompt", "completion"] {
                let mut labels = labels.to_vec();
                labels.push(("kind", kind.to_owned()));
                metrics::counter!("unbroken_tokens_total", &labels).increment(0);
            }
            metrics::gauge!("unbroken_cost_usd_total", &labels).increment(0.0);
        }
    }
}

/// `GET /v1/models`: the configured models, in OpenAI's list shape. With API keys
/// configured it needs one, as OpenAI's does.
pub async fn models(State(state): State<AppState>, _principal: Principal) -> impl IntoResponse {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_metric_is_there_before_anything_happens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unbroken.toml");
        std::fs::write(
            &path,
            "[[models]]\nname = \"sim\"\ntargets = [{ provider = \"simulator\" }, { provider = \"simulator\" }]\n",
        )
        .unwrap();
        let config = crate::Config::load(Some(&path), std::iter::empty()).unwrap();
        let log = std::sync::Arc::new(streamlog::MemoryLog::new(std::sync::Arc::new(
            streamlog::SystemClock,
        )));
        let state = AppState::new(&config, log).unwrap();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || register_metrics(&state.models));
        let text = handle.render();
        for series in [
            "unbroken_active_streams 0",
            "unbroken_active_readers 0",
            "unbroken_appends_total 0",
            "unbroken_resumes_total 0",
            "unbroken_idempotent_replays_total 0",
            "unbroken_queue_depth{model=\"sim\",target=\"simulator:sim#1\"} 0",
            "unbroken_queue_depth{model=\"sim\",target=\"simulator:sim#2\"} 0",
            "unbroken_tokens_total{model=\"sim\",target=\"simulator:sim#2\",kind=\"completion\"} 0",
            "unbroken_cost_usd_total{model=\"sim\",target=\"simulator:sim#1\"} 0",
            "# HELP unbroken_appends_total records appended to the stream log",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }
}
