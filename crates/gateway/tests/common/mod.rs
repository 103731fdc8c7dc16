//! The integration-test harness: a real gateway on a random port, fake upstreams that
//! count their calls, and an SSE reader for responses.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use futures_util::StreamExt;
use gateway::{AppState, Config};
use providers::simulator::{SimulatorConfig, SimulatorProvider};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// A running gateway.
pub struct Gateway {
    pub url: String,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    tracker: TaskTracker,
    /// The store's own resources (a Redis server, a SQLite directory), kept while it runs.
    _store: Option<Box<dyn std::any::Any + Send>>,
}

/// The `[store]` of [`Gateway::start`]: `UNBROKEN_TEST_STORE` = `memory` (default),
/// `sqlite` or `redis` (a throwaway `redis-server`), so the tests about the log's
/// behaviour run on every backend (`scripts/test` runs them on all three).
fn test_store() -> (String, Option<Box<dyn std::any::Any + Send>>) {
    match std::env::var("UNBROKEN_TEST_STORE").as_deref() {
        Ok("redis") => {
            let server = streamlog::redis::LocalServer::start().unwrap();
            let store = format!("[store]\nkind = \"redis\"\nurl = {:?}\n", server.url);
            (store, Some(Box::new(server)))
        }
        Ok("sqlite") => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("unbroken.db").display().to_string();
            let store = format!("[store]\nkind = \"sqlite\"\npath = {path:?}\n");
            (store, Some(Box::new(dir)))
        }
        Ok("memory") | Err(_) => ("[store]\nkind = \"memory\"\n".to_owned(), None),
        Ok(other) => panic!("UNBROKEN_TEST_STORE must be memory, sqlite or redis, not {other:?}"),
    }
}

impl Gateway {
    /// Start on 127.0.0.1:0 with `toml`, on the store `UNBROKEN_TEST_STORE` names
    /// (memory by default).
    pub async fn start(toml: &str) -> Gateway {
        let (store, resources) = test_store();
        let config = parse(&format!("{store}{toml}"));
        let log = gateway::open_log(&config.store).unwrap();
        let mut gateway = Gateway::start_with(&config, AppState::new(&config, log).unwrap()).await;
        gateway._store = resources;
        gateway
    }

    /// Start on 127.0.0.1:0 with `toml` and a SQLite store in `dir`.
    pub async fn start_sqlite(dir: &std::path::Path, toml: &str) -> Gateway {
        let path = dir.join("unbroken.db");
        let text = format!(
            "[store]\nkind = \"sqlite\"\npath = {:?}\n{toml}",
            path.display().to_string()
        );
        let config = parse(&text);
        let log = gateway::open_log(&config.store).unwrap();
        Gateway::start_with(&config, AppState::new(&config, log).unwrap()).await
    }

    /// Start with a prepared state.
    pub async fn start_with(_config: &Config, state: AppState) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let tracker = TaskTracker::new();
        let serving = state.clone();
        tracker.spawn(async move {
            gateway::run(listener, serving, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Gateway {
            url,
            state,
            stop: Some(stop),
            tracker,
            _store: None,
        }
    }

    /// Wait until every generation started so far has ended.
    pub async fn settle(&self) {
        self.state.tasks.close();
        self.state.tasks.wait().await;
        self.state.tasks.reopen();
    }

    /// Shut down gracefully and wait for it (the store stays up while `self` lives, so a
    /// test can look at it afterwards).
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// `POST /v1/chat/completions` with `body`.
    pub async fn chat(&self, body: &serde_json::Value) -> reqwest::Response {
        let url = format!("{}/v1/chat/completions", self.url);
        http().post(url).json(body).send().await.unwrap()
    }

    /// `GET /v1/streams/{id}/status`.
    pub async fn status(&self, id: &str) -> serde_json::Value {
        let url = format!("{}/v1/streams/{id}/status", self.url);
        http().get(url).send().await.unwrap().json().await.unwrap()
    }

    /// `POST /v1/streams/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        let url = format!("{}/v1/streams/{id}/cancel", self.url);
        http().post(url).send().await.unwrap()
    }

    /// Free slots of target `t` of `model`.
    pub fn permits(&self, model: &str, t: usize) -> usize {
        self.state.models.get(model).unwrap().targets[t].available_permits()
    }
}

/// A model whose answers outlast any test (100,000 tokens, 2 ms apart).
pub const SLOW: &str = "[[models]]\nname = \"slow\"\ntargets = [{ provider = \"simulator\", tokens = 100000, interval_ms = 2 }]\n";

pub fn parse(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unbroken.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), std::iter::empty()).unwrap()
}

/// An OpenAI-compatible simulator over HTTP, counting its requests.
pub struct Upstream {
    pub url: String,
    pub simulator: SimulatorProvider,
    _tracker: TaskTracker,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    pub async fn start(config: SimulatorConfig) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let simulator = SimulatorProvider::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        let tracker = TaskTracker::new();
        let serving = simulator.clone();
        tracker.spawn(async move {
            let _ = serving
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Upstream {
            url,
            simulator,
            _tracker: tracker,
            _stop: stop,
        }
    }

    pub fn requests(&self) -> u64 {
        self.simulator.requests()
    }
}

pub fn http() -> reqwest::Client {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::new()
}

pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{ "role": "user", "content": "Tell me something." }],
    })
}

/// An SSE response being read event by event.
pub struct Events {
    pub response_headers: reqwest::header::HeaderMap,
    stream: futures_util::stream::BoxStream<'static, sse::Frame>,
}

impl Events {
    pub fn new(response: reqwest::Response) -> Events {
        assert_eq!(response.status(), 200, "expected an event stream");
        let headers = response.headers().clone();
        let stream = sse::EventStream::new(response.bytes_stream())
            .filter_map(|frame| async move { frame.ok() })
            .boxed();
        Events {
            response_headers: headers,
            stream,
        }
    }

    /// The next event (`None` at the end of the body).
    pub async fn next(&mut self) -> Option<sse::Event> {
        while let Some(frame) = self.stream.next().await {
            if let sse::Frame::Event(event) = frame {
                return Some(event);
            }
        }
        None
    }

    /// Every remaining event.
    pub async fn rest(mut self) -> Vec<sse::Event> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            out.push(event);
        }
        out
    }

    pub fn stream_id(&self) -> String {
        self.response_headers["unbroken-stream-id"]
            .to_str()
            .unwrap()
            .to_owned()
    }
}

/// The text of OpenAI chunk events, in order.
pub fn text_of(events: &[sse::Event]) -> String {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            let chunk: serde_json::Value = serde_json::from_str(&e.data).ok()?;
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

pub fn ids(events: &[sse::Event]) -> Vec<u64> {
    events.iter().map(|e| e.id.parse().unwrap()).collect()
}

pub fn shared<T>(value: T) -> Arc<T> {
    Arc::new(value)
}
