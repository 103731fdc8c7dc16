//! The body of every SSE response: a reader cursor rendered on demand.
//!
//! hyper pulls the body; each pull takes the records the cursor has ready (up to a batch)
//! and renders them into one buffer, so a reader that cannot keep up simply stops pulling
//! and later re-reads from the log — nothing queues for it. Idle streams get a heartbeat
//! comment every `heartbeat_interval`; [`Options::shutdown`] ends a body cleanly, so
//! clients reconnect (elsewhere) with their `Last-Event-ID` — at the shutdown signal for
//! most readers, never for a chat answer being written here, whose records end by
//! themselves (at `[DONE]`, or with an `interrupted` error when the shutdown grace ends).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, stream};
use streamlog::{RecordStream, StreamId};
use tokio::time::{Interval, MissedTickBehavior};

use crate::http::render::Render;
use crate::live::ReaderGuard;
use crate::signal::{Raised, Signal};

/// Records rendered per pull at most.
const MAX_BATCH: usize = 64;

/// The header carrying the stream id (exposed to browsers).
pub const STREAM_ID_HEADER: &str = "unbroken-stream-id";

struct Cursor<R> {
    records: RecordStream,
    render: R,
    /// Ticks every half heartbeat period; a tick sends a heartbeat unless data went out
    /// since the previous tick, so the connection is never silent for a whole period,
    /// and sending data costs a flag, not a timer reset per token.
    heartbeat: Interval,
    sent: bool,
    /// Registered once: polling a fresh `cancelled()` per chunk would lock the token.
    shutdown: Raised,
    ended: bool,
    /// When the reader has been open for `max_age`; it then ends, resumably.
    too_old: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    _guard: ReaderGuard,
    _hold: Option<crate::limits::Hold>,
}

/// Options of one SSE response.
pub struct Options {
    /// The `retry:` sent first.
    pub retry_ms: u64,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Ends the body on shutdown.
    pub shutdown: Signal,
    /// Bytes sent right after the `retry:` field (e.g. a `connected` event).
    pub prelude: Vec<u8>,
    /// The principal's count of open readers, held while the response lives.
    pub hold: Option<crate::limits::Hold>,
    /// The body ends after this long, resumably: the client reconnects with its
    /// `Last-Event-ID` (`[limits] max_reader_age_s`).
    pub max_age: Option<Duration>,
}

/// The options of an SSE response on this gateway.
pub fn options(state: &crate::state::AppState) -> Options {
    Options {
        retry_ms: state.server.retry_ms,
        heartbeat: state.server.heartbeat_interval(),
        shutdown: state.shutdown.clone(),
        prelude: Vec::new(),
        hold: None,
        max_age: (state.limits.max_reader_age_s > 0)
            .then(|| Duration::from_secs(state.limits.max_reader_age_s)),
    }
}

/// A `200 text/event-stream` response reading `records` through `render`.
pub fn response<R: Render>(
    id: StreamId,
    records: RecordStream,
    render: R,
    options: Options,
    guard: ReaderGuard,
) -> Response {
    let mut prelude = Vec::with_capacity(32);
    // The `retry:` field shares the first event's block: a block of its own would be an
    // empty event, which some clients (openai-python) choke on.
    sse::write_retry(&mut prelude, options.retry_ms);
    prelude.extend_from_slice(&options.prelude);
    let mut heartbeat =
        tokio::time::interval((options.heartbeat / 2).max(Duration::from_millis(1)));
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    heartbeat.reset();
    let cursor = Cursor {
        records,
        render,
        heartbeat,
        sent: false,
        shutdown: options.shutdown.raised(),
        ended: false,
        too_old: options.max_age.map(|age| Box::pin(tokio::time::sleep(age))),
        _guard: guard,
        _hold: options.hold,
    };
    let events = stream::unfold(cursor, |mut cursor| async move {
        let chunk = cursor.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), cursor))
    });
    let body = stream::iter([Ok(Bytes::from(prelude))]).chain(events);
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        headers.insert(STREAM_ID_HEADER, value);
    }
    response
}

/// Resolves when the reader is too old; never without an age limit.
async fn aged(too_old: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match too_old {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

impl<R: Render> Cursor<R> {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let mut out = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = &mut self.shutdown => {
                    self.ended = true;
                    return None;
                }
                () = aged(&mut self.too_old) => {
                    metrics::counter!("unbroken_readers_aged_out_total").increment(1);
                    self.ended = true;
                    return None;
                }
                item = self.records.next() => {
                    self.take(item, &mut out);
                    let mut batch = 1;
                    while !self.ended && batch < MAX_BATCH && out.len() < 64 * 1024 {
                        match self.records.next().now_or_never() {
                            Some(item) => self.take(item, &mut out),
                            None => break,
                        }
                        batch += 1;
                    }
                    self.sent = true;
                    return Some(Bytes::from(out));
                }
                _ = self.heartbeat.tick() => {
                    if !std::mem::take(&mut self.sent) {
                        return Some(Bytes::from_static(b": keep-alive\n"));
                    }
                }
            }
        }
    }

    fn take(
        &mut self,
        item: Option<Result<(streamlog::Seq, streamlog::Record), streamlog::LogError>>,
        out: &mut Vec<u8>,
    ) {
        match item {
            Some(Ok((seq, record))) => self.render.record(seq, &record, out),
            Some(Err(error)) => {
                // The reader stops; the client resumes from its last id.
                tracing::warn!(%error, "reader failed");
                self.ended = true;
            }
            None => {
                self.render.end(out);
                self.ended = true;
            }
        }
    }
}
