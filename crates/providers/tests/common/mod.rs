//! Test harness: the simulator and a recording fake upstream on 127.0.0.1 port 0.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use futures_util::StreamExt;
use providers::simulator::{SimulatorConfig, SimulatorProvider};
use providers::{ChatRequest, Delta, DeltaStream, ProviderError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A server running in the background; stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    tracker: TaskTracker,
    token: CancellationToken,
}

impl Server {
    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI adapter is given.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.token.cancel();
        self.tracker.close();
    }
}

async fn start(router: Router) -> Server {
    // Tests build plain reqwest clients too, which need a crypto provider.
    providers::openai::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    let shutdown = token.clone().cancelled_owned();
    tracker.spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .unwrap();
    });
    Server {
        addr,
        tracker,
        token,
    }
}

/// The simulator's HTTP server for `simulator` (which keeps the request counter).
pub async fn start_simulator(simulator: &SimulatorProvider) -> Server {
    start(simulator.router()).await
}

/// The simulator with `config`, and its HTTP server.
pub async fn simulator(config: SimulatorConfig) -> (SimulatorProvider, Server) {
    let simulator = SimulatorProvider::new(config);
    let server = start_simulator(&simulator).await;
    (simulator, server)
}

/// A request as an upstream received it.
#[derive(Debug)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

/// A fake upstream answering every `POST /v1/chat/completions` with `status`,
/// `content_type` and `body`, and sending each request it received on the channel.
pub async fn recording_upstream(
    status: u16,
    content_type: &'static str,
    reply: &'static str,
) -> (Server, mpsc::UnboundedReceiver<Recorded>) {
    fake_upstream(
        "/v1/chat/completions",
        status,
        &[(header::CONTENT_TYPE.as_str(), content_type)],
        reply,
    )
    .await
}

/// A fake upstream answering every `POST {route}` (an axum route, e.g.
/// `/v1/messages`) with `status`, the `headers` and `reply`, and sending each request it
/// received (with its query string in the `x-query` header) on the channel.
pub async fn fake_upstream(
    route: &str,
    status: u16,
    headers: &[(&'static str, &'static str)],
    reply: &'static str,
) -> (Server, mpsc::UnboundedReceiver<Recorded>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let reply_headers: Vec<(&'static str, &'static str)> = headers.to_vec();
    let router = Router::new().route(
        route,
        post(
            move |uri: axum::http::Uri, mut headers: HeaderMap, request: Bytes| {
                let sender = sender.clone();
                let reply_headers = reply_headers.clone();
                async move {
                    if let Some(query) = uri.query() {
                        headers.insert("x-query", query.parse().unwrap());
                    }
                    let body = serde_json::from_slice(&request).unwrap();
                    sender.send(Recorded { headers, body }).unwrap();
                    let mut response =
                        (StatusCode::from_u16(status).unwrap(), reply).into_response();
                    for (name, value) in reply_headers {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    response
                }
            },
        ),
    );
    (start(router).await, receiver)
}

/// A minimal user request.
pub fn request(content: &str) -> ChatRequest {
    serde_json::from_value(serde_json::json!({
        "model": "gateway-name",
        "messages": [{"role": "user", "content": content}],
    }))
    .unwrap()
}

/// Collect a stream: the deltas, and the error that ended it, if any.
pub async fn collect(mut stream: DeltaStream) -> (Vec<Delta>, Option<ProviderError>) {
    let mut deltas = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(delta) => deltas.push(delta),
            Err(error) => return (deltas, Some(error)),
        }
    }
    (deltas, None)
}

/// The concatenated text of `deltas`.
pub fn text(deltas: &[Delta]) -> String {
    deltas
        .iter()
        .filter_map(|d| match d {
            Delta::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}
