//! The session relay: copies one answer into its session's channel.
//!
//! An answer in a session is an ordinary chat stream (so it has everything chat streams
//! have: continuation, cancel, resume by id). The relay is the session stream's writer
//! for the length of that answer — it holds the session's lease, which is also what makes
//! a second message during an answer a 409 — and turns the answer's records into session
//! events: `token` {token, count}, `progress` {tokens} every `progress_every` tokens,
//! then `complete` {response, tokenCount, usage, finishReason} or `error` {message, code}.
//!
//! It reads the answer through [`super::watched`], so an answer whose writer is gone for
//! good ends the relay with an `error` event instead of holding the session (and
//! answering 409 to its next message) for ever. A relay whose node died is resumed by the
//! takeover scan: it skips the answer's text already relayed ([`Relay::resume`]).

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use streamlog::{FencingToken, Record, StreamId, StreamLog};
use tracing::Instrument;

use super::LogHealth;
use super::lease::Renewal;
use crate::signal::Signal;

/// Records copied in one append at most.
const MAX_BATCH: usize = 64;

/// One answer to relay.
pub struct Relay {
    /// The log.
    pub log: Arc<dyn StreamLog>,
    /// The session's stream.
    pub session: StreamId,
    /// The session lease's fencing token.
    pub token: FencingToken,
    /// The answer's chat stream.
    pub answer: StreamId,
    /// A `progress` event every this many tokens.
    pub progress_every: u32,
    /// Stop now (shutdown grace over); the lease then expires by itself.
    pub hard_stop: Signal,
    /// How long the session's lease lasts; renewed at a third of it.
    pub lease_ttl: std::time::Duration,
    /// What an earlier relay of this answer already copied.
    pub resume: Tally,
    /// Told of the log's write failures and successes.
    pub health: Arc<LogHealth>,
}

/// The answer relayed so far.
#[derive(Debug, Default)]
pub struct Tally {
    /// Text records relayed (`token` events).
    pub count: u64,
    /// Their text.
    pub response: String,
    usage: Value,
}

impl Relay {
    /// What the session's records after the answer's `start` event say was relayed.
    pub fn resume(after_start: &[Record]) -> Tally {
        let mut tally = Tally::default();
        for record in after_start {
            if let Record::Custom { event, data } = record
                && event == "token"
            {
                tally.count += 1;
                tally
                    .response
                    .push_str(data["token"].as_str().unwrap_or_default());
            }
        }
        tally
    }
}

impl Relay {
    /// Copy until the answer ends, then release the session.
    pub async fn run(self) {
        let span = tracing::info_span!("relay", session = %self.session, answer = %self.answer);
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(mut self) {
        let records = match self.log.read(self.answer, 0).await {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "cannot read the answer");
                return;
            }
        };
        let mut records = super::watched(
            Arc::clone(&self.log),
            records,
            self.answer,
            0,
            self.lease_ttl,
        );
        let mut renewal = Renewal::new(self.lease_ttl);
        let mut tally = std::mem::take(&mut self.resume);
        // Text records an earlier relay copied already.
        let mut skip = tally.count;
        let mut ended = false;
        while !ended {
            tokio::select! {
                biased;
                () = self.hard_stop.raised() => return,
                () = renewal.due() => {
                    if let Err(error) = renewal.renew(&*self.log, self.session, self.token, &self.health).await {
                        tracing::warn!(%error, "session lease lost");
                        return;
                    }
                }
                item = records.next() => {
                    let mut out = Vec::new();
                    let mut item = item;
                    loop {
                        match item {
                            Some(Ok((_, Record::Text { .. }))) if skip > 0 => skip -= 1,
                            Some(Ok((_, record))) => {
                                ended |= self.translate(&record, &mut tally, &mut out);
                            }
                            Some(Err(error)) => {
                                tracing::warn!(%error, "answer reader failed");
                                return;
                            }
                            // Ended without a finish or an error: the stream was read
                            // to its end by a reader that gave up; leave the session to
                            // its lease's expiry and a takeover.
                            None => return,
                        }
                        if ended || out.len() >= MAX_BATCH {
                            break;
                        }
                        match records.next().now_or_never() {
                            Some(next) => item = next,
                            None => break,
                        }
                    }
                    if !out.is_empty()
                        && let Err(error) = self.log.append(self.session, self.token, out).await
                    {
                        tracing::warn!(%error, "cannot append to the session");
                        return;
                    }
                }
            }
        }
        if let Err(error) = self.log.release_lease(self.session, self.token).await {
            tracing::warn!(%error, "cannot release the session");
        }
    }

    /// Session events for one answer record; true when the answer is over.
    fn translate(&self, record: &Record, tally: &mut Tally, out: &mut Vec<Record>) -> bool {
        let event = |name: &str, data: Value| Record::Custom {
            event: name.to_owned(),
            data,
        };
        match record {
            Record::Text { text } => {
                tally.count += 1;
                tally.response.push_str(text);
                out.push(event(
                    "token",
                    json!({ "token": text, "count": tally.count }),
                ));
                if self.progress_every > 0 && tally.count % u64::from(self.progress_every) == 0 {
                    out.push(event("progress", json!({ "tokens": tally.count })));
                }
                false
            }
            Record::Usage {
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                tally.usage = json!({
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens.saturating_add(*completion_tokens),
                });
                false
            }
            Record::Finish { reason } => {
                out.push(event(
                    "complete",
                    json!({
                        "response": tally.response,
                        "tokenCount": tally.count,
                        "usage": tally.usage,
                        "finishReason": reason,
                    }),
                ));
                true
            }
            Record::Error { code, message } => {
                out.push(event("error", json!({ "message": message, "code": code })));
                true
            }
            _ => false,
        }
    }
}
