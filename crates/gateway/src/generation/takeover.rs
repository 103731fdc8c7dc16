//! Takeover: every node looks for answers whose writer died, and continues them.
//!
//! At start-up a node takes over at once the chat streams and session relays it held
//! itself before it died (its node id is kept across restarts; see `lease`); other
//! nodes' streams are taken over once their lease has expired, by the scan that runs
//! every third of the lease TTL. The lease is taken with a new fencing token, so a stale
//! writer that wakes up late is refused by the log.
//!
//! A taken-over chat stream is read back (the log holds the request and every record):
//! - a finish or error record already written: the stream is ended as it said;
//! - a tool call or any other non-text record: it fails `interrupted`;
//! - no text yet: the answer starts afresh, on the model's first target;
//! - text: the supervisor continues it on a target that can continue (the local model,
//!   a target with a `continuation` mode), appending only the new tokens; if none can, it
//!   fails `interrupted`, saying where the answer was cut.
//!
//! A session whose relay died gets a new relay, which skips the answer's text already
//! copied into the session.

use std::sync::Arc;

use streamlog::{
    Clock, Lease, LogError, Record, StreamId, StreamKind, StreamMeta, StreamState, SystemClock,
};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::relay::Relay;
use super::start::supervise;
use super::supervisor::{Generation, Resume};
use super::{SoFar, interruption, node_of, stored_request};
use crate::state::AppState;

/// Scan at once, then every third of the lease TTL, until shutdown.
pub async fn scan_periodically(state: AppState) {
    let mut tick = tokio::time::interval(state.lease_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = state.shutdown.raised();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = scan(&state).await {
            tracing::warn!(%error, "takeover scan failed; trying again");
        }
    }
}

/// Take over every chat stream, then every session relay, whose writer is gone.
async fn scan(state: &AppState) -> Result<(), LogError> {
    for kind in [StreamKind::Chat, StreamKind::Session] {
        let now = SystemClock.now_ms();
        for (id, lease) in state.log.leased_streams(kind).await? {
            if state.live.get(&id).is_some() {
                continue;
            }
            // This node before a restart: gone, whatever its lease says. (This process's
            // own leases, and other nodes', are taken once they expired: a writer here
            // that gave its stream up, or a relay that stopped.)
            let ours = node_of(&lease.holder) == state.node_id && lease.holder != state.node;
            if !ours && lease.expires_at_ms > now {
                continue;
            }
            let taken = if ours {
                let dead = lease.holder.clone();
                state
                    .log
                    .take_over_lease(id, state.node.clone(), state.lease_ttl, dead)
                    .await
            } else {
                state
                    .log
                    .acquire_lease(id, state.node.clone(), state.lease_ttl)
                    .await
            };
            let lease = match taken {
                Ok(lease) => lease,
                // Another node was quicker, or the stream ended meanwhile.
                Err(LogError::LeaseHeld { .. } | LogError::AlreadyFinished { .. }) => continue,
                Err(error) => return Err(error),
            };
            metrics::counter!("unbroken_takeovers_total").increment(1);
            let span =
                tracing::info_span!("takeover", stream = %id, dead = %node_of(&lease.holder));
            let state = state.clone();
            match kind {
                StreamKind::Chat => {
                    let live = state.live.insert(id);
                    state
                        .tasks
                        .clone()
                        .spawn(take_over_chat(state, id, lease, live).instrument(span));
                }
                _ => {
                    state
                        .tasks
                        .clone()
                        .spawn(take_over_session(state, id, lease).instrument(span));
                }
            }
        }
    }
    Ok(())
}

async fn take_over_chat(state: AppState, id: StreamId, lease: Lease, live: Arc<crate::live::Live>) {
    let started = std::time::Instant::now();
    let meta = match state.log.status(id).await {
        Ok(meta) => meta,
        Err(error) => {
            tracing::warn!(%error, "cannot read the stream to take over");
            state.live.remove(&id);
            return;
        }
    };
    let so_far = match super::records_until(&*state.log, id, meta.last_seq).await {
        Ok(records) => records.iter().fold(SoFar::default(), |mut so_far, record| {
            so_far.add(record);
            so_far
        }),
        Err(error) => {
            tracing::warn!(%error, "cannot read the records to take over");
            state.live.remove(&id);
            return;
        }
    };
    let token = lease.token;
    let ending = if let Some(_reason) = &so_far.finish {
        Some((StreamState::Finished, None))
    } else if so_far.error {
        Some((StreamState::Failed, None))
    } else if so_far.other {
        Some((
            StreamState::Failed,
            Some(interruption(format!(
                "the answer was cut after {} characters, after a tool call began, when the \
                 gateway writing it stopped; a tool call is not continued",
                so_far.text.chars().count()
            ))),
        ))
    } else {
        None
    };
    let request = stored_request(&meta.request);
    let reader_grace = if super::runs_in_background(&meta.request) {
        super::BACKGROUND_GRACE
    } else {
        state.server.reader_grace()
    };
    let model = request
        .as_ref()
        .and_then(|(name, _)| state.models.get(name).cloned());
    let ending = match (ending, &model) {
        (Some(ending), _) => Some(ending),
        (None, None) => Some((
            StreamState::Failed,
            Some(interruption(format!(
                "the answer was cut after {} characters when the gateway writing it stopped, \
                 and its model is no longer configured",
                so_far.text.chars().count()
            ))),
        )),
        (None, Some(_)) => None,
    };
    if let Some((end, record)) = ending {
        let ended = async {
            if let Some(record) = record {
                state.log.append(id, token, vec![record]).await?;
            }
            state.log.finish(id, token, end).await
        };
        if let Err(error) = ended.await {
            tracing::warn!(%error, "cannot end the taken-over stream");
        }
        tracing::info!(state = ?end, "took over a stream whose answer had ended");
        state.live.remove(&id);
        return;
    }
    let (Some(model), Some((_, request))) = (model, request) else {
        state.live.remove(&id);
        return;
    };
    tracing::info!(
        chars = so_far.text.len(),
        seq = meta.last_seq,
        "taking over an answer whose writer died"
    );
    metrics::histogram!("unbroken_takeover_seconds").record(started.elapsed().as_secs_f64());
    let generation = Generation {
        id,
        principal: meta.owner.clone(),
        model,
        request,
        log: Arc::clone(&state.log),
        ledger: Arc::clone(&state.ledger),
        tasks: state.tasks.clone(),
        creation: Box::pin(std::future::ready(Ok::<(StreamMeta, Lease), LogError>((
            meta, lease,
        )))),
        live,
        reader_grace,
        lease_ttl: state.lease_ttl,
        hard_stop: state.hard_stop.clone(),
        health: Arc::clone(&state.health),
        idempotency_key: None,
        resume: Resume {
            text: so_far.text,
            pieces: so_far.pieces,
            takeover: true,
            serving: so_far.serving,
        },
        _hold: None,
    };
    let (started, _) = oneshot::channel();
    supervise(&state, generation, started).await;
}

async fn take_over_session(state: AppState, id: StreamId, lease: Lease) {
    let meta = match state.log.status(id).await {
        Ok(meta) => meta,
        Err(error) => {
            tracing::warn!(%error, "cannot read the session to take over");
            return;
        }
    };
    let session = match super::records_until(&*state.log, id, meta.last_seq).await {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!(%error, "cannot read the session to take over");
            return;
        }
    };
    // The answer being relayed: the last `start` event, unless it was completed.
    let start = session
        .iter()
        .rposition(|record| matches!(record, Record::Custom { event, .. } if event == "start"));
    let answer = start.and_then(|at| match &session[at] {
        Record::Custom { data, .. } => data["streamId"].as_str()?.parse::<StreamId>().ok(),
        _ => None,
    });
    let after = start.map_or(&session[..0], |at| &session[at + 1..]);
    let done = after.iter().any(
        |record| matches!(record, Record::Custom { event, .. } if event == "complete" || event == "error"),
    );
    let Some(answer) = answer.filter(|_| !done) else {
        // Nothing left to relay: the session is free again.
        if let Err(error) = state.log.release_lease(id, lease.token).await {
            tracing::warn!(%error, "cannot release the session");
        }
        return;
    };
    tracing::info!(%answer, "resuming a session's relay whose writer died");
    let relay = Relay {
        log: Arc::clone(&state.log),
        session: id,
        token: lease.token,
        answer,
        progress_every: state.server.progress_every,
        hard_stop: state.hard_stop.clone(),
        lease_ttl: state.lease_ttl,
        resume: Relay::resume(after),
        health: Arc::clone(&state.health),
    };
    // The session reads the answer to its end: it counts as its reader.
    let _guard = state.live.attach(&answer);
    relay.run().await;
}
