//! Starting a generation: create its stream with this node's lease, claim its
//! idempotency key, and run its writer, as one detached unit.
//!
//! The unit is driven by the request's own task until the first delta — so the upstream
//! is asked at once, not after a new task is scheduled, and the first delta reaches the
//! response without a wake-up of another task — and by a task of its own from then on,
//! or as soon as the request is dropped (its client gone). So a dropped request never
//! cuts it in half: a key is never left pointing at a stream nobody writes.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use providers::ChatRequest;
use streamlog::{
    FencingToken, IdempotencyEntry, IdempotencyOutcome, NewStream, StreamId, StreamKind,
    StreamMeta, StreamState,
};
use tokio::sync::oneshot;

use super::GenerationError;
use super::supervisor::{Creation, Generation, Outcome, Resume, send};
use crate::auth::sha256;
use crate::router::Model;
use crate::state::AppState;
use crate::writers::namespace;

/// A generation to start.
pub struct Start {
    /// Who asks: the stream's owner.
    pub principal: String,
    /// The model serving it.
    pub model: Arc<Model>,
    /// The request, as adapters receive it.
    pub request: ChatRequest,
    /// The request body as stored with the stream (a takeover continues from it).
    pub body: Bytes,
    /// The client's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// Return the stream once this has passed without a first delta (a streaming
    /// request's headers then go out, and heartbeats keep the connection); `None` waits
    /// for the first delta or the failure.
    pub commit_after: Option<Duration>,
    /// The principal's count of answers generating, held until this one ends.
    pub hold: Option<crate::limits::Hold>,
    /// How long the answer goes on with no reader attached; `None`: `[server]
    /// reader_grace_ms`.
    pub reader_grace: Option<Duration>,
}

/// A started generation's stream.
#[derive(Debug)]
pub enum Begun {
    /// A new stream, whose first delta is written (or `commit_after` passed), and the
    /// name of the target serving it (none yet when `commit_after` passed).
    New(StreamMeta, Option<String>),
    /// The idempotency key had started this stream before: the request attaches to it.
    Existing(StreamMeta),
}

/// Start a generation and wait for its first delta ("peek before commit": a failure
/// before it is the status the caller answers), or at most `commit_after`.
///
/// # Errors
/// Why no target could start the answer; a log that refused to create the stream; a key
/// reused with another body.
pub async fn start(state: &AppState, start: Start) -> Result<Begun, GenerationError> {
    let Start {
        principal,
        model,
        request,
        body,
        idempotency_key,
        commit_after,
        hold,
        reader_grace,
    } = start;
    let id = StreamId::new();
    let live = state.live.insert(id);
    // The caller's reader counts from now, so the grace cannot expire under it.
    let _guard = state.live.attach(&id);
    let (started_tx, mut started_rx) = oneshot::channel();
    let hash = sha256(&body).to_vec();
    let new = NewStream {
        id,
        owner: principal.clone(),
        kind: StreamKind::Chat,
        request: body,
    };
    let unit_state = state.clone();
    let run = async move {
        let state = unit_state;
        let (creation, idempotency): (Creation, _) = match idempotency_key {
            None => (create_in_background(&state, new), None),
            Some(key) => match claim(&state, new, &principal, &key, hash).await {
                Ok(Claimed::Mine(created)) => {
                    (Box::pin(std::future::ready(Ok(created))), Some(key))
                }
                Ok(Claimed::Existing(meta)) => {
                    let _ = started_tx.send(Ok(Begun::Existing(meta)));
                    state.live.remove(&id);
                    return;
                }
                Err(error) => {
                    let _ = started_tx.send(Err(error));
                    state.live.remove(&id);
                    return;
                }
            },
        };
        let generation = Generation {
            id,
            principal,
            model,
            request,
            log: Arc::clone(&state.log),
            ledger: Arc::clone(&state.ledger),
            tasks: state.tasks.clone(),
            creation,
            live,
            reader_grace: reader_grace.unwrap_or_else(|| state.server.reader_grace()),
            lease_ttl: state.lease_ttl,
            hard_stop: state.hard_stop.clone(),
            health: Arc::clone(&state.health),
            idempotency_key: idempotency,
            resume: Resume::default(),
            _hold: hold,
        };
        supervise(&state, generation, started_tx).await;
    };
    let mut unit = Handoff {
        run: Some(Box::pin(run)),
        tasks: state.tasks.clone(),
        _tracked: state.tasks.token(),
    };
    let deadline = async {
        match commit_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    let started = tokio::select! {
        biased;
        () = unit.here() => Some((&mut started_rx).await),
        started = &mut started_rx => Some(started),
        () = deadline => None,
    };
    drop(unit);
    let started = match started {
        Some(started) => started,
        // The first delta is slow: answer with the stream now, once it exists and is
        // this request's own (its creation is one commit, long done unless the log is
        // failing).
        None => match state.log.status(id).await {
            Ok(meta) if !meta.state.is_terminal() => return Ok(Begun::New(meta, None)),
            _ => started_rx.await,
        },
    };
    // Every way a generation ends says how it started, but a panic.
    started.unwrap_or(Err(GenerationError::Panicked))
}

/// Run `generation` to its end on this task, catching a panic (a bug): its stream still
/// ends, or its readers would wait for it forever. Then forget it in the registry; if
/// it left its stream open (shutdown, a failing log), its readers here are told.
pub(super) async fn supervise(
    state: &AppState,
    generation: Generation,
    started: oneshot::Sender<Result<Begun, GenerationError>>,
) {
    let id = generation.id;
    let live = Arc::clone(&generation.live);
    let ran = AssertUnwindSafe(generation.run(started))
        .catch_unwind()
        .await;
    let left_open = match ran {
        Ok(outcome) => outcome == Outcome::Abandoned,
        Err(_) => !super::supervisor::end_after_panic(&*state.log, id, &state.node).await,
    };
    if left_open {
        live.abandoned.raise();
    }
    state.live.remove(&id);
}

/// What claiming an idempotency key found.
enum Claimed {
    /// The key is this request's: its stream is created with the lease.
    Mine((StreamMeta, streamlog::Lease)),
    /// The key started this stream before.
    Existing(StreamMeta),
}

/// Create the stream with this node's lease, then claim `key` for it. The stream exists
/// before its key does, so a repeat always finds it; and the key is claimed before
/// anything is asked upstream, so a repeat attaches to the first request's stream
/// instead of paying for the answer twice.
async fn claim(
    state: &AppState,
    new: NewStream,
    principal: &str,
    key: &str,
    hash: Vec<u8>,
) -> Result<Claimed, GenerationError> {
    let id = new.id;
    let (meta, lease) = state
        .log
        .create_leased(new, state.node.clone(), state.lease_ttl)
        .await?;
    let entry = IdempotencyEntry {
        stream: id,
        request_hash: hash.clone(),
    };
    let outcome = state
        .log
        .insert_idempotency_key(namespace::chat(principal), key.to_owned(), entry)
        .await?;
    let IdempotencyOutcome::Existing(existing) = outcome else {
        return Ok(Claimed::Mine((meta, lease)));
    };
    discard(state, id, lease.token).await;
    if existing.request_hash != hash {
        return Err(GenerationError::IdempotencyMismatch);
    }
    metrics::counter!("unbroken_idempotent_replays_total").increment(1);
    let meta = state.log.status(existing.stream).await?;
    if meta.kind != StreamKind::Chat || meta.owner != principal {
        // Keys of a namespace map to its own principal's chat streams only; anything else
        // is a corrupt table, never another stream to attach to.
        return Err(GenerationError::Log(streamlog::LogError::Corrupt(
            "an idempotency key maps to a stream that is not this principal's answer".into(),
        )));
    }
    Ok(Claimed::Existing(meta))
}

/// A stream created for a request that turned out to repeat an idempotency key: end it
/// at once (it has no records; retention removes it).
async fn discard(state: &AppState, id: StreamId, token: FencingToken) {
    if let Err(error) = state.log.finish(id, token, StreamState::Cancelled).await {
        tracing::warn!(%error, stream = %id, "could not discard a duplicate stream");
    }
}

/// Start creating `new` with this node's writer lease and return the wait for it. The
/// creation is sent to the log here ([`send`]), so it commits while the upstream is
/// asked, with no task to schedule in between.
fn create_in_background(state: &AppState, new: NewStream) -> Creation {
    let log = Arc::clone(&state.log);
    let holder = state.node.clone();
    let ttl = state.lease_ttl;
    let mut creation: Creation = Box::pin(async move { log.create_leased(new, holder, ttl).await });
    match send(&mut creation) {
        Some(done) => Box::pin(std::future::ready(done)),
        None => creation,
    }
}

/// A unit driven by the request's task until it is dropped, then by a task of its own
/// (see the module documentation). Until then the tracker counts it, so a shutdown
/// waits for it.
struct Handoff {
    run: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    tasks: tokio_util::task::TaskTracker,
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Handoff {
    /// Drive the unit on this task; resolves if it runs to its end here.
    async fn here(&mut self) {
        if let Some(run) = self.run.as_mut() {
            run.await;
            self.run = None;
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(run) = self.run.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            self.tasks.spawn(run);
        }
    }
}
