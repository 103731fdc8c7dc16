//! A generation never leaves its readers waiting on nobody: a log that stops taking
//! writes ends every reader (`interrupted`), a `stream: false` request returns an error,
//! `/ready` says 503, and once the log recovers the answer is taken over and finished.
//! An answer that broke after a tool call began is never continued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Events, Gateway, chat_body, http, parse, text_of};
use gateway::AppState;
use streamlog::{
    FencingToken, IdempotencyEntry, IdempotencyOutcome, Lease, LogError, LogFuture, MemoryLog,
    NewStream, Record, RecordStream, Seq, StreamId, StreamKind, StreamLog, StreamMeta, StreamState,
    SystemClock, Trim,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::task::TaskTracker;

/// Every wait here is bounded: a hang fails the test.
const WITHIN: Duration = Duration::from_secs(30);

/// A memory log whose writes fail while `failing` is set, as a full disk's would.
struct FailingLog {
    inner: MemoryLog,
    failing: AtomicBool,
}

impl FailingLog {
    fn check(&self) -> Result<(), LogError> {
        if self.failing.load(Ordering::SeqCst) {
            let disk = std::io::Error::other("no space left on device (test)");
            return Err(LogError::Storage(Box::new(disk)));
        }
        Ok(())
    }

    /// `op`, unless writes fail now: then it is not run at all.
    fn write<'a, T: Send + 'a>(
        &'a self,
        op: impl FnOnce() -> LogFuture<'a, T>,
    ) -> LogFuture<'a, T> {
        match self.check() {
            Ok(()) => op(),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}

impl StreamLog for FailingLog {
    fn create(&self, new: NewStream) -> LogFuture<'_, StreamMeta> {
        self.write(|| self.inner.create(new))
    }
    fn append(
        &self,
        id: StreamId,
        token: FencingToken,
        records: Vec<Record>,
    ) -> LogFuture<'_, Seq> {
        self.write(|| self.inner.append(id, token, records))
    }
    fn finish(&self, id: StreamId, token: FencingToken, state: StreamState) -> LogFuture<'_, ()> {
        self.write(|| self.inner.finish(id, token, state))
    }
    fn read(&self, id: StreamId, after: Seq) -> LogFuture<'_, RecordStream> {
        self.inner.read(id, after)
    }
    fn status(&self, id: StreamId) -> LogFuture<'_, StreamMeta> {
        self.inner.status(id)
    }
    fn acquire_lease(&self, id: StreamId, holder: String, ttl: Duration) -> LogFuture<'_, Lease> {
        self.write(|| self.inner.acquire_lease(id, holder, ttl))
    }
    fn take_over_lease(
        &self,
        id: StreamId,
        holder: String,
        ttl: Duration,
        dead: String,
    ) -> LogFuture<'_, Lease> {
        self.write(|| self.inner.take_over_lease(id, holder, ttl, dead))
    }
    fn leased_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<(StreamId, Lease)>> {
        self.inner.leased_streams(kind)
    }
    fn open_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<StreamMeta>> {
        self.inner.open_streams(kind)
    }
    fn count_open(&self, owner: String, kind: StreamKind) -> LogFuture<'_, u64> {
        self.inner.count_open(owner, kind)
    }
    fn renew_lease(
        &self,
        id: StreamId,
        token: FencingToken,
        ttl: Duration,
    ) -> LogFuture<'_, Lease> {
        self.write(|| self.inner.renew_lease(id, token, ttl))
    }
    fn release_lease(&self, id: StreamId, token: FencingToken) -> LogFuture<'_, ()> {
        self.write(|| self.inner.release_lease(id, token))
    }
    fn trim(&self, id: StreamId, trim: Trim) -> LogFuture<'_, Seq> {
        self.write(|| self.inner.trim(id, trim))
    }
    fn insert_idempotency_key(
        &self,
        principal: String,
        key: String,
        entry: IdempotencyEntry,
    ) -> LogFuture<'_, IdempotencyOutcome> {
        self.write(|| self.inner.insert_idempotency_key(principal, key, entry))
    }
    fn find_idempotency_key(
        &self,
        principal: String,
        key: String,
    ) -> LogFuture<'_, Option<IdempotencyEntry>> {
        self.inner.find_idempotency_key(principal, key)
    }
    fn release_idempotency_key(
        &self,
        principal: String,
        key: String,
        stream: StreamId,
    ) -> LogFuture<'_, ()> {
        self.write(|| self.inner.release_idempotency_key(principal, key, stream))
    }
    fn purge_expired(&self) -> LogFuture<'_, usize> {
        self.write(|| self.inner.purge_expired())
    }
    fn appends_at_once(&self) -> bool {
        true
    }
}

async fn ready(gateway: &Gateway) -> u16 {
    let url = format!("{}/ready", gateway.url);
    http().get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_stops_taking_writes_ends_readers_and_recovers() {
    let config = parse(
        "[store]\nkind = \"memory\"\nlease_ttl_ms = 600\n\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"simulator\", tokens = 400, interval_ms = 5 }]\n",
    );
    let log = Arc::new(FailingLog {
        inner: MemoryLog::new(Arc::new(SystemClock)),
        failing: AtomicBool::new(false),
    });
    let state = AppState::new(&config, Arc::clone(&log) as Arc<dyn StreamLog>).unwrap();
    let gateway = Gateway::start_with(&config, state).await;
    assert_eq!(ready(&gateway).await, 200);

    let mut streaming = Events::new(gateway.chat(&chat_body("m", true)).await);
    let id = streaming.stream_id();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(streaming.next().await.expect("the answer goes on"));
    }
    let tasks = TaskTracker::new();
    let assembled = {
        let url = format!("{}/v1/chat/completions", gateway.url);
        tasks.spawn(http().post(url).json(&chat_body("m", false)).send())
    };
    // Both answers have begun once each stream holds a record.
    tokio::time::timeout(WITHIN, async {
        loop {
            let mut begun = 0;
            for (id, _) in log.leased_streams(StreamKind::Chat).await.unwrap() {
                begun += usize::from(log.status(id).await.unwrap().last_seq > 0);
            }
            if begun == 2 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("both answers run");

    log.failing.store(true, Ordering::SeqCst);
    let rest = tokio::time::timeout(WITHIN, streaming.rest())
        .await
        .expect("the reader ends");
    let last: serde_json::Value = serde_json::from_str(&rest.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "interrupted", "{last}");
    assert!(rest.iter().all(|e| e.data != "[DONE]"));
    let assembled = tokio::time::timeout(WITHIN, assembled)
        .await
        .expect("the stream: false request returns")
        .unwrap()
        .unwrap();
    assert_eq!(assembled.status(), 502);
    let error: serde_json::Value = assembled.json().await.unwrap();
    assert_eq!(error["error"]["code"], "interrupted", "{error}");
    assert_eq!(ready(&gateway).await, 503, "the log cannot be written");

    // The log recovers: ready again, and the answer is taken over and finished whole.
    log.failing.store(false, Ordering::SeqCst);
    assert_eq!(ready(&gateway).await, 200);
    let resumed = http()
        .get(format!("{}/v1/streams/{id}", gateway.url))
        .send()
        .await
        .unwrap();
    let events = tokio::time::timeout(WITHIN, Events::new(resumed).rest())
        .await
        .expect("the taken-over answer finishes");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let text = text_of(&events);
    assert_eq!(text.split_whitespace().count(), 400, "{text}");
    assert!(text.starts_with(&text_of(&seen)));
}

/// An upstream on 127.0.0.1 that streams the start of a tool call, then drops the
/// connection, for every request it gets; counts them. Serves while `tasks` lives.
async fn tool_call_then_cut(tasks: &TaskTracker) -> (String, Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&count);
    tasks.spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut request = vec![0u8; 65536];
            let _ = socket.read(&mut request).await;
            let chunk = serde_json::json!({
                "id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "t",
                "choices": [{ "index": 0, "delta": { "role": "assistant", "tool_calls": [{
                    "index": 0, "id": "call_1", "type": "function",
                    "function": { "name": "weather", "arguments": "{\"ci" }
                }] }, "finish_reason": null }],
            });
            let body = format!("data: {chunk}\n\n");
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.flush().await;
            // Dropped here: the body ends without a finish reason.
        }
    });
    (url, count)
}

#[tokio::test]
async fn an_answer_cut_after_a_tool_call_began_is_not_continued() {
    let tasks = TaskTracker::new();
    let (cut, calls) = tool_call_then_cut(&tasks).await;
    let fallback = common::Upstream::start(providers::simulator::SimulatorConfig::default()).await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{{ provider = \"openai\", base_url = \"{cut}\", max_retries = 0 }}, {{ provider = \"openai\", base_url = \"{}\", supports_prefill = true }}]\n",
        fallback.url
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await);
    let events = tokio::time::timeout(WITHIN, events.rest())
        .await
        .expect("the answer ends");
    let errors: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
        .filter(|chunk| chunk.get("error").is_some())
        .collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0]["error"]["code"], "interrupted", "{}", errors[0]);
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no retry after the first token"
    );
    assert_eq!(
        fallback.requests(),
        0,
        "a tool call is never generated a second time"
    );
}
