//! Readers that never wait on nobody.
//!
//! A reader of an answer written here ends with an `interrupted` error when its writer
//! gives the stream up ([`interrupt_on`]). A reader of an answer written elsewhere (or by
//! nobody yet) watches the writer's lease ([`watched`]): when the lease has been expired
//! (or given up) for longer than the lease TTL and nobody took the stream over, the
//! reader gets every record the log holds and then an `interrupted` error carrying the
//! last seq as its id (so a reconnect from it is in range, and ends the same way).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use streamlog::{
    Clock, LogError, Record, RecordStream, Seq, StreamId, StreamKind, StreamLog, StreamMeta,
    SystemClock,
};

use crate::signal::Signal;
use crate::state::AppState;

/// What a reader of a stream gets: its records, and the signal that ends the response
/// early.
pub struct Reading {
    /// The records after the reader's position.
    pub records: RecordStream,
    /// Ends the response where it is (shutdown, for readers that are not draining an
    /// answer written here).
    pub ends_at: Signal,
}

/// The one reader path of every answer (chat completions, resumes): the log's records
/// of `meta`'s stream after `from`, followed live.
/// - An answer written here keeps its reader through a shutdown's grace (it is drained),
///   and the reader gets an `interrupted` error if its writer gives the stream up (the
///   grace ended; the log stopped taking appends).
/// - An answer written elsewhere, or by nobody, is [`watched`]: it ends `interrupted`
///   when its writer is gone for good.
/// - Other streams, and ended ones, are read as they are, ending at shutdown.
///
/// # Errors
/// The log's.
pub async fn reader(state: &AppState, meta: &StreamMeta, from: Seq) -> Result<Reading, LogError> {
    let records = state.log.read(meta.id, from).await?;
    if meta.kind != StreamKind::Chat || meta.state.is_terminal() {
        return Ok(Reading {
            records,
            ends_at: state.shutdown.clone(),
        });
    }
    if let Some(live) = state.live.get(&meta.id) {
        let hard_stop = state.hard_stop.clone();
        let abandoned = live.abandoned.clone();
        let stop = async move {
            tokio::select! {
                () = hard_stop.raised() => {}
                () = abandoned.raised() => {}
            }
        };
        return Ok(Reading {
            records: interrupt_on(records, stop, from),
            ends_at: Signal::new(),
        });
    }
    Ok(Reading {
        records: watched(
            Arc::clone(&state.log),
            records,
            meta.id,
            from,
            state.lease_ttl,
        ),
        ends_at: state.shutdown.clone(),
    })
}

/// Why a reader's answer ends without finishing: its writer stopped and nobody continued.
pub fn interrupted() -> Record {
    Record::Error {
        code: "interrupted".into(),
        message: "the answer was interrupted: the gateway writing it stopped before it finished"
            .into(),
    }
}

/// `records`, cut when `stop` resolves with an `interrupted` error carrying the last seq
/// read (so a reconnect from it is in range).
pub fn interrupt_on(
    records: RecordStream,
    stop: impl Future<Output = ()> + Send + 'static,
    from: Seq,
) -> RecordStream {
    let stop = Box::pin(stop);
    Box::pin(stream::unfold(
        Some((records, from, stop)),
        |reading| async move {
            let (mut records, last, mut stop) = reading?;
            tokio::select! {
                biased;
                item = records.next() => {
                    let item = item?;
                    let last = item.as_ref().map_or(last, |(seq, _)| *seq);
                    Some((item, Some((records, last, stop))))
                }
                () = &mut stop => Some((Ok((last, interrupted())), None)),
            }
        },
    ))
}

/// Whether `meta`'s writer is gone for good at `now`: its lease expired (or, with no
/// lease, the stream last changed) more than `ttl` ago, so the takeover that every node
/// runs within a third of the TTL did not happen.
fn writer_gone(meta: &StreamMeta, now_ms: u64, ttl: Duration) -> bool {
    if meta.state.is_terminal() {
        return false;
    }
    let since = meta
        .lease
        .as_ref()
        .map_or(meta.updated_ms, |lease| lease.expires_at_ms);
    now_ms >= since.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

struct Watch {
    records: RecordStream,
    log: Arc<dyn StreamLog>,
    id: StreamId,
    ttl: Duration,
    check: tokio::time::Interval,
    /// The last seq yielded.
    last: Seq,
    /// Set once the writer is known gone: the log's last seq then.
    cut: Option<Seq>,
    /// Set once the stream is known ended: no more checks.
    ended: bool,
}

/// `records` (of stream `id`, after `from`), ending with an `interrupted` error once the
/// stream's writer is gone for good (see the module documentation). The lease is looked
/// at every half TTL, and at once.
pub fn watched(
    log: Arc<dyn StreamLog>,
    records: RecordStream,
    id: StreamId,
    from: Seq,
    ttl: Duration,
) -> RecordStream {
    let mut check = tokio::time::interval((ttl / 2).max(Duration::from_millis(20)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watch = Watch {
        records,
        log,
        id,
        ttl,
        check,
        last: from,
        cut: None,
        ended: false,
    };
    Box::pin(stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        loop {
            if let Some(cut) = watch.cut
                && watch.last >= cut
            {
                return Some((Ok((cut, interrupted())), None));
            }
            let item = if watch.ended || watch.cut.is_some() {
                watch.records.next().await
            } else {
                tokio::select! {
                    biased;
                    item = watch.records.next() => item,
                    _ = watch.check.tick() => {
                        match watch.log.status(watch.id).await {
                            Ok(meta) if meta.state.is_terminal() => watch.ended = true,
                            Ok(meta) if writer_gone(&meta, SystemClock.now_ms(), watch.ttl) => {
                                tracing::info!(stream = %watch.id, "the answer's writer is gone and nobody took it over");
                                watch.cut = Some(meta.last_seq);
                            }
                            Ok(_) => {}
                            Err(error) => tracing::warn!(%error, stream = %watch.id, "cannot look at the stream's writer"),
                        }
                        continue;
                    }
                }
            };
            let item = item?;
            if let Ok((seq, _)) = &item {
                watch.last = *seq;
            }
            return Some((item, Some(watch)));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamlog::{Lease, StreamKind, StreamState};

    fn meta(lease: Option<u64>, updated_ms: u64) -> StreamMeta {
        StreamMeta {
            id: StreamId::new(),
            owner: "o".into(),
            kind: StreamKind::Chat,
            request: bytes::Bytes::new(),
            state: StreamState::Open,
            created_ms: 0,
            updated_ms,
            last_seq: 3,
            first_seq: 1,
            lease: lease.map(|expires_at_ms| Lease {
                holder: "n/1".into(),
                token: 1,
                expires_at_ms,
            }),
            fence: 1,
        }
    }

    #[test]
    fn a_writer_is_gone_a_ttl_after_its_lease_expired() {
        let ttl = Duration::from_millis(1000);
        assert!(!writer_gone(&meta(Some(5000), 0), 5999, ttl));
        assert!(writer_gone(&meta(Some(5000), 0), 6000, ttl));
        // A lease given up counts from the stream's last change.
        assert!(!writer_gone(&meta(None, 5000), 5500, ttl));
        assert!(writer_gone(&meta(None, 5000), 6000, ttl));
        let mut ended = meta(None, 0);
        ended.state = StreamState::Finished;
        assert!(!writer_gone(&ended, 10_000, ttl));
    }
}
