//! The supervisor: the one writer of a generation.
//!
//! It runs detached from every HTTP response (a task on the gateway's tracker): it starts
//! the answer through the router, appends every delta to the stream log, renews its
//! lease, and ends the stream. Nothing a client does touches it except an explicit
//! cancel; it also stops when no reader has been attached for `reader_grace` (nobody
//! will read the answer, so stop paying for it). When the upstream fails after tokens
//! were streamed, it continues the answer on the next target that supports prefill,
//! appending only the new text; if none can, the stream ends with an error record —
//! never a fake normal finish. After a tool-call record an answer is never continued (a
//! continuation would generate the call again): it fails `interrupted`. On a hard
//! shutdown, or when the log stops taking its appends, it stops without finishing, so
//! the stream stays open for a takeover (this node's scan or another node's).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use providers::{ChatRequest, Delta, DeltaStream, ProviderError};
use streamlog::{
    FencingToken, Lease, LogError, Record, Seq, StreamId, StreamLog, StreamMeta, StreamState,
};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::calls::Calls;
use super::lease::Renewal;
use super::{Begun, GenerationError, LogHealth};
use crate::live::Live;
use crate::router::{Model, StartError, Started, backoff};
use crate::signal::Signal;

/// Deltas appended in one batch at most.
const MAX_BATCH: usize = 64;
/// Bytes of text and tool-call arguments appended in one batch at most (a batch always
/// takes at least one delta; an upstream event is at most 1 MiB).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Tool calls one answer may make: a larger index from an upstream is a protocol error,
/// never a table that size (a `stream: false` answer assembles calls by index).
pub const MAX_TOOL_CALLS: u32 = 128;

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
    /// Where the answer's cost is recorded once it ended.
    pub ledger: Arc<crate::usage::Ledger>,
    /// Where the recording runs (the gateway's tasks, waited for at shutdown).
    pub tasks: tokio_util::task::TaskTracker,
    /// The stream's creation with this writer's lease, already under way: it commits
    /// while the upstream is asked, and is awaited only when the first record is written
    /// (or the generation ends first), so its commit is off the path to the first token.
    pub creation: Creation,
    /// This generation's registry entry.
    pub live: Arc<Live>,
    /// How long a generation may go unread.
    pub reader_grace: Duration,
    /// How long the writer's lease lasts; it is renewed at a third of this.
    pub lease_ttl: Duration,
    /// Cancelled when the gateway must stop writing now (shutdown grace over).
    pub hard_stop: Signal,
    /// Told of the log's write failures and successes.
    pub health: Arc<LogHealth>,
    /// The request's idempotency key: released if the answer fails before its first
    /// token (nothing was produced, so a retry may ask again).
    pub idempotency_key: Option<String>,
    /// The answer so far, when this writer takes a stream over.
    pub resume: Resume,
    /// The principal's count of answers generating, released when this one ends.
    pub _hold: Option<crate::limits::Hold>,
}

/// The answer a taken-over stream holds already: its writer continues after it.
#[derive(Debug, Default)]
pub struct Resume {
    /// The text streamed so far.
    pub text: String,
    /// Text records so far (≈ tokens generated).
    pub pieces: u32,
    /// Whether this is a takeover (then a missing continuation fails `interrupted`).
    pub takeover: bool,
    /// The target and model of the request that was serving when its writer stopped.
    pub serving: Option<(String, String)>,
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
    /// Stopped before the end (shutdown, a log that stopped taking appends): the stream
    /// stays open for a takeover.
    Abandoned,
    /// Another writer took the stream over (this one's token went stale).
    Fenced,
}

type StartedTx = oneshot::Sender<Result<Begun, GenerationError>>;

impl Generation {
    /// Run to the end. `started` learns the stream once the first delta is appended
    /// (`Ok`), or why no target could start the answer (`Err`, with the stream already
    /// failed, or never created if the log refused it).
    pub async fn run(self, started: StartedTx) -> Outcome {
        let span = tracing::info_span!("supervisor", stream = %self.id, principal = %self.principal, model = %self.model.name);
        self.run_inner(started).instrument(span).await
    }

    async fn run_inner(mut self, started: StartedTx) -> Outcome {
        let mut started = Some(started);
        let resume = std::mem::take(&mut self.resume);
        let creation: Creation = std::mem::replace(
            &mut self.creation,
            Box::pin(std::future::ready(Err(LogError::Closed))),
        );
        let mut writer = Writer {
            log: Arc::clone(&self.log),
            id: self.id,
            lease: WriterLease::Pending(creation),
            text: resume.text,
            pieces: resume.pieces,
            tool_called: false,
            finished: None,
            meta: None,
            refused: None,
            appends: metrics::counter!("unbroken_appends_total"),
            in_flight: None,
            marker: None,
            health: Arc::clone(&self.health),
        };
        let mut calls = Calls::new(&self.request);
        if let Some((target, model)) = resume.serving {
            calls.lost(target, model, writer.pieces);
        }
        // Targets that broke mid-answer and were given their one chance to continue it.
        let mut continued_on: Vec<usize> = Vec::new();
        let mut renewal = Renewal::new(self.lease_ttl);
        let mut grace =
            tokio::time::interval((self.reader_grace / 4).max(Duration::from_millis(5)));
        grace.reset();

        // Registered once each, polled per delta (a `Signal` poll is one atomic load).
        let mut hard_stop = std::pin::pin!(self.hard_stop.raised());
        let mut cancelled = std::pin::pin!(self.live.cancel.raised());
        let mut next_target = 0;
        // A taken-over answer with text so far continues only where a target can.
        let mut prefill_only = !writer.text.is_empty();
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
            let mut failed = Vec::new();
            let begun = {
                let start = self
                    .model
                    .start(&request, next_target, prefill_only, &mut failed);
                let mut start = std::pin::pin!(start);
                loop {
                    tokio::select! {
                        begun = &mut start => break begun,
                        () = &mut cancelled => break 'answer Stop::Cancelled,
                        () = &mut hard_stop => break 'answer Stop::Abandoned,
                        // The stream's creation commits while the upstream is asked (a log
                        // that works only while polled, as Redis's, needs this poll).
                        created = writer.token(), if writer.is_creating() => {
                            if let Err(error) = created {
                                break 'answer Stop::Lost(error);
                            }
                        }
                    }
                }
            };
            calls.failed(&self.model, failed);
            let Started {
                mut deltas,
                permit,
                target,
            } = match begun {
                Ok(started) => started,
                // A taken-over answer that no target can continue says where it was cut.
                Err(_) if resume.takeover && prefill_only => {
                    break 'answer Stop::Interrupted(format!(
                        "the answer was cut after {} characters when the gateway writing it \
                         stopped, and no target of model {} can continue it",
                        writer.text.chars().count(),
                        self.model.name
                    ));
                }
                // A continuation that found no taker reports what broke the answer.
                Err(error) => {
                    break 'answer Stop::Failed(match interrupted.take() {
                        Some(cause) => StartError::Upstream(cause),
                        None => error,
                    });
                }
            };
            let _permit = permit; // held until this target's answer ends
            let serving = &self.model.targets[target];
            writer.marker = Some(calls.begin(serving));
            let _ = self.live.serving.set(serving.name.clone());
            loop {
                tokio::select! {
                    biased;
                    () = &mut hard_stop => break 'answer Stop::Abandoned,
                    () = &mut cancelled => break 'answer Stop::Cancelled,
                    () = renewal.due() => {
                        let renewed = match writer.token().await {
                            Ok(token) => renewal.renew(&*self.log, self.id, token, &self.health).await,
                            Err(error) => Err(error),
                        };
                        match renewed {
                            Ok(()) => {}
                            Err(LogError::CancelRequested(_)) => break 'answer Stop::Cancelled,
                            Err(error) => {
                                tracing::warn!(%error, "lease lost; stopping");
                                break 'answer Stop::Lost(error);
                            }
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
                        for delta in &batch {
                            calls.delta(delta);
                        }
                        // The first append is awaited (the request waits for it); later
                        // ones are acknowledged while the next token is awaited.
                        match writer.append(batch, started.is_some()).await {
                            Ok(()) => {}
                            // Another node's cancel (the stop button pressed there).
                            Err(LogError::CancelRequested(_)) => break 'answer Stop::Cancelled,
                            Err(error) => {
                                tracing::error!(%error, "append failed; stopping");
                                break 'answer Stop::Lost(error);
                            }
                        }
                        if started.is_some() {
                            // The first delta: the request learns its (created) stream.
                            if let Err(error) = writer.token().await {
                                break 'answer Stop::Lost(error);
                            }
                            if let (Some(meta), Some(tx)) = (writer.meta.take(), started.take()) {
                                let serving = self.live.serving.get().cloned();
                                let _ = tx.send(Ok(Begun::New(meta, serving)));
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
                            calls.end("cut");
                            if writer.tool_called {
                                tracing::warn!(%error, target, "upstream failed after a tool call began; not continuing");
                                break 'answer Stop::Interrupted(format!(
                                    "the upstream failed after a tool call began ({error}); \
                                     a tool call is not continued"
                                ));
                            }
                            // The target that broke continues first when it can (once,
                            // after a backoff); otherwise the next one that can.
                            next_target = target + 1;
                            if self.model.targets[target].provider.supports_prefill()
                                && !continued_on.contains(&target)
                            {
                                continued_on.push(target);
                                next_target = target;
                                let wait = backoff(self.model.targets[target].limits.retry_base, 1, None);
                                tokio::select! {
                                    () = tokio::time::sleep(wait) => {}
                                    () = &mut cancelled => break 'answer Stop::Cancelled,
                                    () = &mut hard_stop => break 'answer Stop::Abandoned,
                                }
                            }
                            tracing::warn!(%error, target, next_target, "upstream failed mid-answer; continuing");
                            prefill_only = true;
                            interrupted = Some(error);
                            continue 'answer;
                        }
                    }
                }
            }
        };
        let status = match &outcome {
            Stop::Cancelled => "cancelled",
            Stop::Interrupted(_) => "cut",
            _ => "ok",
        };
        calls.end(status);
        // A stream left open is accounted by whoever ends it (a takeover).
        let usage = match outcome {
            Stop::Abandoned | Stop::Lost(_) => None,
            _ => (!calls.is_empty()).then(|| calls.usage(&self.model.name)),
        };
        let last = |record: Record| usage.clone().into_iter().chain([record]).collect();
        if let Some(Record::Usage { requests, .. }) = &usage {
            self.account(requests.clone());
        }
        let outcome = match outcome {
            Stop::Finished(reason) => {
                writer
                    .end(StreamState::Finished, last(Record::Finish { reason }))
                    .await
            }
            Stop::Cancelled => {
                writer
                    .end(StreamState::Cancelled, last(cancellation()))
                    .await
            }
            Stop::Interrupted(message) => {
                let outcome = writer
                    .end(StreamState::Failed, last(super::interruption(message)))
                    .await;
                self.fail_start(&mut started, GenerationError::Stopped)
                    .await;
                outcome
            }
            Stop::Failed(error) => {
                let (record, error) = match error {
                    StartError::Busy { retry_after } => (
                        Record::Error {
                            code: "busy".into(),
                            message: "every upstream of this model is busy".into(),
                        },
                        GenerationError::Busy { retry_after },
                    ),
                    StartError::Upstream(error) => (
                        Record::Error {
                            code: error.code().into(),
                            message: error.to_string(),
                        },
                        GenerationError::Upstream(error),
                    ),
                };
                let outcome = writer.end(StreamState::Failed, last(record)).await;
                self.fail_start(&mut started, error).await;
                outcome
            }
            // Leave the stream open: its lease expires and a takeover continues it.
            Stop::Abandoned => Outcome::Abandoned,
            Stop::Lost(error) => {
                self.health.failed(&error);
                if matches!(
                    error,
                    LogError::StaleToken { .. } | LogError::AlreadyFinished { .. }
                ) {
                    Outcome::Fenced
                } else {
                    // Handed to takeover: once the lease expires, a node's scan continues
                    // the answer from what the log holds.
                    Outcome::Abandoned
                }
            }
        };
        if let Some(error) = writer.refused.take() {
            self.fail_start(&mut started, error.into()).await;
        }
        // Cancelled or abandoned before the first token.
        self.fail_start(&mut started, GenerationError::Stopped)
            .await;
        outcome
    }

    /// Record the answer's upstream requests in the usage ledger, in the background.
    fn account(&self, requests: Vec<streamlog::UpstreamRequest>) {
        let entry = crate::usage::Entry {
            at_ms: crate::usage::now_ms(),
            principal: self.principal.clone(),
            model: self.model.name.clone(),
            stream: self.id.to_string(),
            requests,
        };
        let ledger = Arc::clone(&self.ledger);
        self.tasks.spawn(async move {
            ledger.charge(&entry).await;
            if let Err(error) = ledger.record(&entry).await {
                tracing::warn!(%error, stream = %entry.stream, "could not record the answer's usage");
            }
        });
    }

    /// Tell a request still waiting for the first token why there is none; its key is
    /// released first, since nothing was produced.
    fn fail_start(
        &self,
        started: &mut Option<StartedTx>,
        error: GenerationError,
    ) -> impl Future<Output = ()> + Send + 'static {
        let tx = started.take();
        let log = Arc::clone(&self.log);
        let key = self
            .idempotency_key
            .clone()
            .map(|key| (crate::writers::namespace::chat(&self.principal), key));
        let id = self.id;
        async move {
            let Some(tx) = tx else {
                return;
            };
            if let Some((principal, key)) = key {
                let released = log.release_idempotency_key(principal, key, id).await;
                if let Err(e) = released {
                    tracing::warn!(error = %e, "could not release an idempotency key");
                }
            }
            let _ = tx.send(Err(error));
        }
    }
}

/// End stream `id` as failed after its generation panicked, if it is still open under
/// `holder`'s lease (this node's): its readers then get an `internal_error` instead of
/// waiting for records that will never come. The panicked writer is gone, so the lease's
/// token is nobody else's. A stream whose creation had not committed is left alone.
/// False if the stream was left open.
pub async fn end_after_panic(log: &dyn StreamLog, id: StreamId, holder: &str) -> bool {
    tracing::error!(stream = %id, "the generation panicked; its stream ends as failed");
    let Ok(meta) = log.status(id).await else {
        return false;
    };
    // The current lease always carries the stream's fencing token.
    let ours = meta
        .lease
        .as_ref()
        .is_some_and(|lease| lease.holder == holder);
    if meta.state.is_terminal() {
        return true;
    }
    if !ours {
        return false;
    }
    let record = Record::Error {
        code: "internal_error".into(),
        message: "the gateway failed while writing this answer; it has been logged".into(),
    };
    match end_unwritten(log, id, meta.fence, record, StreamState::Failed).await {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, stream = %id, "could not fail the stream");
            false
        }
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
        let mut bytes = 0;
        loop {
            match item {
                Some(Ok(Delta::ToolCall { index, .. })) if index >= MAX_TOOL_CALLS => {
                    batch.failure = Some(ProviderError::Protocol(format!(
                        "the upstream sent tool call number {index}; at most {MAX_TOOL_CALLS} are accepted"
                    )));
                    return batch;
                }
                Some(Ok(delta)) => {
                    bytes += match &delta {
                        Delta::Text(text) => text.len(),
                        Delta::ToolCall { arguments, .. } => arguments.len(),
                        _ => 0,
                    };
                    batch.deltas.push(delta);
                }
                Some(Err(error)) => {
                    batch.failure = Some(error);
                    return batch;
                }
                None => {
                    batch.ended = true;
                    return batch;
                }
            }
            if batch.deltas.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
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
    /// Ended `interrupted`: where and why the answer was cut.
    Interrupted(String),
    /// Hard shutdown: the stream stays open.
    Abandoned,
    /// The log refused a write.
    Lost(LogError),
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
    /// The record saying which upstream request serves from here, written before its
    /// first delta.
    marker: Option<Record>,
    text: String,
    /// Text deltas appended (≈ tokens generated).
    pieces: u32,
    /// A tool-call delta was appended: the answer cannot be continued from its text.
    tool_called: bool,
    finished: Option<String>,
    health: Arc<LogHealth>,
}

impl Writer {
    /// Whether the stream's creation has not completed yet.
    fn is_creating(&self) -> bool {
        matches!(self.lease, WriterLease::Pending(_))
    }

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
        let mut records = Vec::with_capacity(batch.len() + 1);
        records.extend(self.marker.take());
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
                } => {
                    self.tool_called = true;
                    Record::ToolCall {
                        index,
                        id,
                        name,
                        arguments,
                    }
                }
                // Counted by the supervisor's `Calls`, written once at the end.
                Delta::Usage { .. } => continue,
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
            self.log.append(self.id, token, records).await?;
            self.health.succeeded();
            return Ok(());
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
            Some(appending) => {
                appending.await?;
                self.health.succeeded();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// End the stream in `state` with `records` last. A stream the log would not end
    /// stays open for a takeover ([`Outcome::Abandoned`]).
    async fn end(&mut self, state: StreamState, records: Vec<Record>) -> Outcome {
        let ended = async {
            self.settle().await?;
            let token = self.token().await?;
            if !records.is_empty() {
                self.log.append(self.id, token, records).await?;
            }
            self.log.finish(self.id, token, state).await
        };
        match ended.await {
            Ok(()) => {}
            Err(LogError::StaleToken { .. } | LogError::AlreadyFinished { .. }) => {
                return Outcome::Fenced;
            }
            Err(error) => {
                tracing::error!(%error, "could not end the stream; it stays open for a takeover");
                self.health.failed(&error);
                if self.refused.is_some() {
                    return Outcome::Failed;
                }
                return Outcome::Abandoned;
            }
        }
        match state {
            StreamState::Finished => Outcome::Finished,
            StreamState::Cancelled => Outcome::Cancelled,
            _ => Outcome::Failed,
        }
    }
}
