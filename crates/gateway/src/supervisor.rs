//! The supervisor: the one writer of a generation.
//!
//! It runs detached from every HTTP response (a task on the gateway's tracker): it starts
//! the answer through the router, appends every delta to the stream log, renews its
//! lease, and ends the stream. Nothing a client does touches it except an explicit
//! cancel; it also stops when no reader has been attached for `reader_grace` (nobody
//! will read the answer, so stop paying for it). When the upstream fails after tokens
//! were streamed, it continues the answer on the next target that supports prefill,
//! appending only the new text; if none can, the stream ends with an error record —
//! never a fake normal finish. On a hard shutdown it stops without finishing, so the
//! stream stays open (unfinished) for a later takeover.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use providers::{ChatRequest, Delta, DeltaStream, ProviderError};
use streamlog::{
    FencingToken, Lease, LogError, Record, Seq, StreamId, StreamLog, StreamMeta, StreamState,
};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::error::ApiError;
use crate::live::Live;
use crate::router::{Model, StartError, Started};
use crate::signal::Signal;

/// How long a writer's lease lasts; it is renewed at a third of this.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// Deltas appended in one batch at most.
const MAX_BATCH: usize = 64;

/// Everything one generation needs.
pub struct Generation {
    /// The stream written.
    pub id: StreamId,
    /// Who asked (for spans).
    pub principal: String,
    /// The model serving it.
    pub model: Arc<Model>,
    /// The request, as adapters receive it.
    pub request: ChatRequest,
    /// The log.
    pub log: Arc<dyn StreamLog>,
    /// The stream's creation with this writer's lease, already under way: it commits
    /// while the upstream is asked, and is awaited only when the first record is written
    /// (or the generation ends first), so its commit is off the path to the first token.
    pub creation: Creation,
    /// This generation's registry entry.
    pub live: Arc<Live>,
    /// How long a generation may go unread.
    pub reader_grace: Duration,
    /// Cancelled when the gateway must stop writing now (shutdown grace over).
    pub hard_stop: Signal,
}

/// The stream being created with the writer's lease (see
/// [`crate::AppState::create_in_background`]), or already created.
pub type Creation =
    std::pin::Pin<Box<dyn Future<Output = Result<(StreamMeta, Lease), LogError>> + Send>>;

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished normally (the last record is the finish).
    Finished,
    /// Ended with an error record.
    Failed,
    /// Cancelled (stop button or no reader).
    Cancelled,
    /// Stopped by shutdown before the end: the stream stays open.
    Abandoned,
}

impl Generation {
    /// Run to the end. `started` learns the stream once the first delta is appended
    /// (`Ok`), or why no target could start the answer (`Err`, with the stream already
    /// failed, or never created if the log refused it).
    pub async fn run(self, started: oneshot::Sender<Result<StreamMeta, ApiError>>) -> Outcome {
        let span = tracing::info_span!("supervisor", stream = %self.id, principal = %self.principal, model = %self.model.name);
        self.run_inner(started).instrument(span).await
    }

    async fn run_inner(self, started: oneshot::Sender<Result<StreamMeta, ApiError>>) -> Outcome {
        let mut started = Some(started);
        let mut writer = Writer {
            log: Arc::clone(&self.log),
            id: self.id,
            lease: WriterLease::Pending(self.creation),
            text: String::new(),
            pieces: 0,
            finished: None,
            meta: None,
            refused: None,
            appends: metrics::counter!("unbroken_appends_total"),
            in_flight: None,
        };
        let mut renew = tokio::time::interval(LEASE_TTL / 3);
        renew.reset();
        let mut grace =
            tokio::time::interval((self.reader_grace / 4).max(Duration::from_millis(5)));
        grace.reset();

        // Registered once each, polled per delta (a `Signal` poll is one atomic load).
        let mut hard_stop = std::pin::pin!(self.hard_stop.raised());
        let mut cancelled = std::pin::pin!(self.live.cancel.raised());
        let mut next_target = 0;
        let mut prefill_only = false;
        let mut interrupted: Option<ProviderError> = None;
        let outcome = 'answer: loop {
            let mut request = self.request.clone();
            if !writer.text.is_empty() {
                request.assistant_prefix = Some(writer.text.clone());
                // A continuation may only generate what the original budget has left.
                request.max_tokens = request
                    .max_tokens
                    .map(|max| max.saturating_sub(writer.pieces).max(1));
            }
            let start = self.model.start(&request, next_target, prefill_only);
            let begun = tokio::select! {
                begun = start => begun,
                () = &mut cancelled => break 'answer Stop::Cancelled,
                () = &mut hard_stop => break 'answer Stop::Abandoned,
            };
            let Started {
                mut deltas,
                permit,
                target,
            } = match begun {
                Ok(started) => started,
                // A continuation that found no taker reports what broke the answer.
                Err(error) => {
                    break 'answer Stop::Failed(match interrupted.take() {
                        Some(cause) => StartError::Upstream(cause),
                        None => error,
                    });
                }
            };
            let _permit = permit; // held until this target's answer ends
            loop {
                tokio::select! {
                    biased;
                    () = &mut hard_stop => break 'answer Stop::Abandoned,
                    () = &mut cancelled => break 'answer Stop::Cancelled,
                    _ = renew.tick() => {
                        let renewed = match writer.token().await {
                            Ok(token) => self.log.renew_lease(self.id, token, LEASE_TTL).await.map(|_| ()),
                            Err(error) => Err(error),
                        };
                        if let Err(error) = renewed {
                            tracing::warn!(%error, "lease lost; stopping");
                            break 'answer Stop::Abandoned;
                        }
                    }
                    _ = grace.tick() => {
                        if self.live.unread_for().is_some_and(|idle| idle >= self.reader_grace) {
                            tracing::info!("no reader attached for the reader grace; cancelling");
                            self.live.cancel.raise();
                        }
                    }
                    item = deltas.next() => {
                        let Batch { deltas: batch, mut failure, ended } = Batch::collect(item, &mut deltas);
                        // The first append is awaited (the request waits for it); later
                        // ones are acknowledged while the next token is awaited.
                        if let Err(error) = writer.append(batch, started.is_some()).await {
                            tracing::error!(%error, "append failed; stopping");
                            break 'answer Stop::Abandoned;
                        }
                        if started.is_some() {
                            // The first delta: the request learns its (created) stream.
                            if writer.token().await.is_err() {
                                break 'answer Stop::Abandoned;
                            }
                            if let (Some(meta), Some(tx)) = (writer.meta.take(), started.take()) {
                                let _ = tx.send(Ok(meta));
                            }
                        }
                        if ended || failure.is_some() {
                            // An upstream that said why it finished is complete, even if
                            // its connection broke after that (the usage may be missing).
                            if let Some(reason) = writer.finished.take() {
                                break 'answer Stop::Finished(reason);
                            }
                        }
                        if failure.is_none() && ended {
                            failure = Some(ProviderError::Interrupted("ended without a finish reason".into()));
                        }
                        if let Some(error) = failure {
                            tracing::warn!(%error, target, "upstream failed mid-answer; continuing elsewhere");
                            next_target = target + 1;
                            prefill_only = true;
                            interrupted = Some(error);
                            continue 'answer;
                        }
                    }
                }
            }
        };
        let outcome = match outcome {
            Stop::Finished(reason) => {
                writer
                    .end(StreamState::Finished, Some(Record::Finish { reason }))
                    .await
            }
            Stop::Cancelled => {
                writer
                    .end(StreamState::Cancelled, Some(cancellation()))
                    .await
            }
            Stop::Failed(error) => {
                let (record, api_error) = match &error {
                    StartError::Busy { retry_after } => (
                        Record::Error {
                            code: "busy".into(),
                            message: "every upstream of this model is busy".into(),
                        },
                        ApiError::rate_limited(
                            "model_busy",
                            "every upstream of this model is busy; try again later",
                            *retry_after,
                        ),
                    ),
                    StartError::Upstream(error) => (
                        Record::Error {
                            code: error.code().into(),
                            message: error.to_string(),
                        },
                        ApiError::upstream(error),
                    ),
                };
                let outcome = writer.end(StreamState::Failed, Some(record)).await;
                if let Some(tx) = started.take() {
                    let _ = tx.send(Err(api_error));
                }
                outcome
            }
            Stop::Abandoned => {
                // Leave the stream open: its lease expires and a later writer takes over.
                Outcome::Abandoned
            }
        };
        if let Some(error) = writer.refused.take()
            && let Some(tx) = started.take()
        {
            let _ = tx.send(Err(error.into()));
        }
        if let Some(tx) = started.take() {
            // Cancelled or abandoned before the first token.
            let _ = tx.send(Err(ApiError::unavailable(
                "the answer was stopped before it began",
            )));
        }
        outcome
    }
}

/// End stream `id` as failed after its generation panicked, if it is still open under
/// `holder`'s lease (this node's): its readers then get an `internal_error` instead of
/// waiting for records that will never come. The panicked writer is gone, so the lease's
/// token is nobody else's. A stream whose creation had not committed is left alone.
pub async fn end_after_panic(log: &dyn StreamLog, id: StreamId, holder: &str) {
    tracing::error!(stream = %id, "the generation panicked; its stream ends as failed");
    let Ok(meta) = log.status(id).await else {
        return;
    };
    // The current lease always carries the stream's fencing token.
    let ours = meta
        .lease
        .as_ref()
        .is_some_and(|lease| lease.holder == holder);
    if meta.state.is_terminal() || !ours {
        return;
    }
    let record = Record::Error {
        code: "internal_error".into(),
        message: "the gateway failed while writing this answer; it has been logged".into(),
    };
    if let Err(error) = end_unwritten(log, id, meta.fence, record, StreamState::Failed).await {
        tracing::error!(%error, stream = %id, "could not fail the stream");
    }
}

/// End open stream `id`, which nobody is writing, as the holder of `token`: `record`
/// last, then `state`.
///
/// # Errors
/// The log's (a stale token, a stream that ended meanwhile).
pub async fn end_unwritten(
    log: &dyn StreamLog,
    id: StreamId,
    token: FencingToken,
    record: Record,
    state: StreamState,
) -> Result<(), LogError> {
    log.append(id, token, vec![record]).await?;
    log.finish(id, token, state).await
}

/// The last record of a cancelled answer.
pub fn cancellation() -> Record {
    Record::Error {
        code: "cancelled".into(),
        message: "the answer was cancelled".into(),
    }
}

/// One delta and whatever else was ready right after it.
struct Batch {
    deltas: Vec<Delta>,
    failure: Option<ProviderError>,
    ended: bool,
}

impl Batch {
    fn collect(first: Option<Result<Delta, ProviderError>>, rest: &mut DeltaStream) -> Self {
        let mut batch = Batch {
            deltas: Vec::new(),
            failure: None,
            ended: false,
        };
        let mut item = first;
        loop {
            match item {
                Some(Ok(delta)) => batch.deltas.push(delta),
                Some(Err(error)) => {
                    batch.failure = Some(error);
                    return batch;
                }
                None => {
                    batch.ended = true;
                    return batch;
                }
            }
            if batch.deltas.len() >= MAX_BATCH {
                return batch;
            }
            match rest.next().now_or_never() {
                Some(next) => item = next,
                None => return batch,
            }
        }
    }
}

enum Stop {
    Finished(String),
    Cancelled,
    Failed(StartError),
    Abandoned,
}

/// The writer's lease: being granted with the stream's creation, then held.
enum WriterLease {
    Pending(Creation),
    Held(FencingToken),
    /// The log refused the creation (see `Writer::refused`): nothing can be written.
    Refused,
}

/// Poll a log operation once with a waker that is nobody's: that hands it to the log
/// (sqlite's writer thread then completes it whether or not anybody waits), and its
/// completion wakes no task. Its result if it completed at once; otherwise whoever
/// awaits it later polls it with a real waker.
pub fn send<F: Future + Unpin>(operation: &mut F) -> Option<F::Output> {
    let mut nobody = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(operation).poll(&mut nobody) {
        std::task::Poll::Ready(done) => Some(done),
        std::task::Poll::Pending => None,
    }
}

/// An append on its way to the log.
type Appending = std::pin::Pin<Box<dyn Future<Output = Result<Seq, LogError>> + Send>>;

/// Turns deltas into appended records and remembers the text so far.
struct Writer {
    log: Arc<dyn StreamLog>,
    id: StreamId,
    lease: WriterLease,
    /// The created stream, until the first append hands it to the waiting request.
    meta: Option<StreamMeta>,
    /// Why the log refused to create the stream, until reported.
    refused: Option<LogError>,
    /// Looked up once, not per append.
    appends: metrics::Counter,
    /// The last append, sent and not yet known to be acknowledged.
    in_flight: Option<Appending>,
    text: String,
    /// Text deltas appended (≈ tokens generated).
    pieces: u32,
    finished: Option<String>,
}

impl Writer {
    /// The lease's fencing token, once the stream's creation has committed.
    async fn token(&mut self) -> Result<FencingToken, LogError> {
        if let WriterLease::Pending(creation) = &mut self.lease {
            match creation.await {
                Ok((meta, lease)) => {
                    self.lease = WriterLease::Held(lease.token);
                    self.meta = Some(meta);
                }
                Err(error) => {
                    tracing::error!(%error, "could not create the stream");
                    self.lease = WriterLease::Refused;
                    self.refused = Some(error);
                }
            }
        }
        match self.lease {
            WriterLease::Held(token) => Ok(token),
            _ => Err(LogError::Closed),
        }
    }

    /// Append `batch`; with `wait`, until it is acknowledged. Otherwise the append is only
    /// sent: its acknowledgement is looked at before the next append or the end, so a
    /// log whose acknowledgements come from another thread (SQLite's writer) does not
    /// wake this task for each of them. One append per stream is in flight at most, so
    /// appends stay in order and a failure stops the stream one batch later.
    async fn append(&mut self, batch: Vec<Delta>, wait: bool) -> Result<(), LogError> {
        self.settle().await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(batch.len());
        for delta in batch {
            records.push(match delta {
                Delta::Text(text) => {
                    self.text.push_str(&text);
                    self.pieces = self.pieces.saturating_add(1);
                    Record::Text { text }
                }
                Delta::ToolCall {
                    index,
                    id,
                    name,
                    arguments,
                } => Record::ToolCall {
                    index,
                    id,
                    name,
                    arguments,
                },
                Delta::Usage {
                    prompt_tokens,
                    completion_tokens,
                } => Record::Usage {
                    prompt_tokens,
                    completion_tokens,
                },
                Delta::Finish { reason } => {
                    // Held back and written last, after a usage that follows it upstream,
                    // so a finish record is always a stream's last.
                    self.finished = Some(reason);
                    continue;
                }
            });
        }
        if records.is_empty() {
            return Ok(());
        }
        let token = self.token().await?;
        self.appends.increment(records.len() as u64);
        if wait || self.log.appends_at_once() {
            return self.log.append(self.id, token, records).await.map(|_| ());
        }
        let log = Arc::clone(&self.log);
        let id = self.id;
        let mut appending: Appending =
            Box::pin(async move { log.append(id, token, records).await });
        // Polled once to send it; the waker given is nobody's, so its acknowledgement
        // wakes nothing. (A log whose queue is full has not sent it yet: it goes when it
        // is next looked at, with the next batch or at the end.)
        match send(&mut appending) {
            Some(done) => done.map(|_| ()),
            None => {
                self.in_flight = Some(appending);
                Ok(())
            }
        }
    }

    /// Wait for the append in flight, if any.
    async fn settle(&mut self) -> Result<(), LogError> {
        match self.in_flight.take() {
            Some(appending) => appending.await.map(|_| ()),
            None => Ok(()),
        }
    }

    async fn end(&mut self, state: StreamState, record: Option<Record>) -> Outcome {
        if let Err(error) = self.settle().await {
            tracing::error!(%error, "an append failed");
        }
        let Ok(token) = self.token().await else {
            return Outcome::Failed;
        };
        if let Some(record) = record
            && let Err(error) = self.log.append(self.id, token, vec![record]).await
        {
            tracing::error!(%error, "could not append the final record");
        }
        if let Err(error) = self.log.finish(self.id, token, state).await {
            tracing::error!(%error, "could not finish the stream");
        }
        match state {
            StreamState::Finished => Outcome::Finished,
            StreamState::Cancelled => Outcome::Cancelled,
            _ => Outcome::Failed,
        }
    }
}
