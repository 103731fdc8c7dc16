//! What may stay open, and for how long: per-principal quotas on open sessions and tasks,
//! a global one on topics (they belong to the system), and the sweep that ends sessions
//! and tasks left idle.
//!
//! Quotas count the open streams of the kind in the log ([`StreamLog::count_open`]), so
//! every node sees the same count; two creations racing may both pass at the cap (one
//! over), never more. The sweep runs on every node every [`SWEEP_EVERY`] at most
//! (sooner for a short TTL): it lists the open sessions and tasks, and ends each whose last
//! record is older than its `idle_ttl_s`. A session ends with an `expired` event
//! (completed); a task fails with `{"error": "idle"}`. The system's own streams (the
//! usage ledger's days, which are tasks) are never ended. Two nodes sweeping the same stream
//! at once is harmless: the second finds it ended.

use std::time::Duration;

use serde_json::json;
use streamlog::{LogError, Record, StreamKind, StreamLog, StreamMeta, StreamState};

use crate::error::ApiError;
use crate::state::AppState;
use crate::writers::namespace;

/// The longest time between two sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Refuse one more open stream of `kind` for `owner` if it has `max` (0: no limit).
///
/// # Errors
/// 429 `too_many_sessions`, `too_many_tasks` or `too_many_topics`; storage errors.
pub async fn check_quota(
    log: &dyn StreamLog,
    owner: &str,
    kind: StreamKind,
    max: u64,
) -> Result<(), ApiError> {
    if max == 0 {
        return Ok(());
    }
    let open = log.count_open(owner.to_owned(), kind).await?;
    if open < max {
        return Ok(());
    }
    let (code, message) = match kind {
        StreamKind::Session => (
            "too_many_sessions",
            format!("at most {max} open sessions per principal; let one expire first"),
        ),
        StreamKind::Topic => (
            "too_many_topics",
            format!("at most {max} topics may exist at once"),
        ),
        _ => (
            "too_many_tasks",
            format!("at most {max} open tasks per principal; complete or fail one first"),
        ),
    };
    metrics::counter!("unbroken_limited_total", "what" => code.trim_start_matches("too_many_"))
        .increment(1);
    Err(ApiError::rate_limited(code, message, 60))
}

/// End idle sessions and tasks, every [`SWEEP_EVERY`] at most, until `shutdown`.
pub async fn sweep_periodically(state: AppState, shutdown: crate::signal::Signal) {
    let shortest = [state.sessions.idle_ttl_s, state.task_limits.idle_ttl_s]
        .into_iter()
        .filter(|&ttl| ttl > 0)
        .min();
    let Some(shortest) = shortest else {
        return;
    };
    let every = (Duration::from_secs(shortest) / 4).clamp(Duration::from_millis(100), SWEEP_EVERY);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.raised() => return,
            _ = ticker.tick() => {
                sweep(&state, crate::usage::now_ms()).await;
            }
        }
    }
}

/// One sweep at `now_ms`: end every open session and task idle for longer than its TTL.
/// Returns how many it ended.
pub async fn sweep(state: &AppState, now_ms: u64) -> usize {
    let mut ended = 0;
    for (kind, ttl_s) in [
        (StreamKind::Session, state.sessions.idle_ttl_s),
        (StreamKind::Task, state.task_limits.idle_ttl_s),
    ] {
        if ttl_s == 0 {
            continue;
        }
        let open = match state.log.open_streams(kind).await {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%error, ?kind, "could not list open streams to expire");
                continue;
            }
        };
        let cutoff = now_ms.saturating_sub(ttl_s.saturating_mul(1000));
        // The system's own streams (the usage ledger's days) are kept.
        let idle = open
            .iter()
            .filter(|meta| meta.updated_ms < cutoff && meta.owner != namespace::SYSTEM);
        for meta in idle {
            match expire(state, meta).await {
                Ok(()) => ended += 1,
                // Ended meanwhile (a message, a completion, another node's sweep).
                Err(LogError::AlreadyFinished { .. } | LogError::NotFound(_)) => {}
                Err(error) => {
                    tracing::warn!(%error, stream = %meta.id, "could not end an idle stream");
                }
            }
        }
    }
    if ended > 0 {
        metrics::counter!("unbroken_idle_expired_total").increment(ended as u64);
    }
    ended
}

async fn expire(state: &AppState, meta: &StreamMeta) -> Result<(), LogError> {
    let idle_s = match meta.kind {
        StreamKind::Session => state.sessions.idle_ttl_s,
        _ => state.task_limits.idle_ttl_s,
    };
    let (record, end) = match meta.kind {
        StreamKind::Session => (
            Record::Custom {
                event: "expired".into(),
                data: json!({ "reason": "idle", "idle_ttl_s": idle_s }),
            },
            StreamState::Finished,
        ),
        _ => (
            Record::Custom {
                event: "failed".into(),
                data: json!({ "error": "idle", "idle_ttl_s": idle_s }),
            },
            StreamState::Failed,
        ),
    };
    state
        .writers
        .append(
            state.log.as_ref(),
            &state.node,
            meta.id,
            vec![record],
            Some(end),
        )
        .await?;
    Ok(())
}
