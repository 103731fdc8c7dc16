//! An upstream's event stream, read into [`Delta`]s: SSE framing by the `sse` crate, the
//! payloads by a per-provider [`WireDecoder`].
//!
//! A body that ends, breaks or reports an error before the decoder saw a normal end is
//! [`ProviderError::Interrupted`], never a normal end.

use std::collections::VecDeque;

use futures_util::{Stream, StreamExt};
use sse::{Decoder, EventStream, Frame, StreamError};

use crate::delta::{Delta, DeltaStream};
use crate::error::ProviderError;

/// The largest single event accepted from an upstream (a larger one is a protocol error:
/// real deltas are a few bytes, a whole tool call's arguments a few kilobytes).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// What the reader does after an event.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Keep reading.
    Continue,
    /// The answer is complete: emit what is held back and stop.
    Done,
}

/// One provider's payload format: SSE events in, deltas out. Kept apart from I/O so each
/// can be tested on strings.
pub(crate) trait WireDecoder: Send + 'static {
    /// Handle one SSE event of type `kind` (`message` when unnamed) with payload `data`,
    /// pushing what it yields onto `out`.
    ///
    /// # Errors
    /// [`ProviderError::Interrupted`] for an upstream error reported mid-stream,
    /// [`ProviderError::Protocol`] for a payload that cannot be read.
    fn event(
        &mut self,
        kind: &str,
        data: &str,
        out: &mut VecDeque<Delta>,
    ) -> Result<Step, ProviderError>;

    /// The body ended (EOF or a transport error, described by `why`).
    ///
    /// # Errors
    /// [`ProviderError::Interrupted`] unless the answer had reached its normal end.
    fn end(&mut self, why: String) -> Result<Step, ProviderError>;

    /// Emit what was held back until the end (usage, the finish reason).
    fn finish(&mut self, out: &mut VecDeque<Delta>);
}

/// Turn a response body into the answer's deltas with `decoder`.
pub(crate) fn deltas<S, B, E, D>(body: S, decoder: D) -> DeltaStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    D: WireDecoder,
{
    let events =
        EventStream::with_decoder(body, Decoder::new().with_max_event_size(MAX_EVENT_BYTES));
    let state = State {
        events: Box::pin(events),
        decoder,
        pending: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(delta) = state.pending.pop_front() {
                    return Some((Ok(delta), state));
                }
                if state.ended {
                    return None;
                }
                let outcome = match state.events.next().await {
                    Some(Ok(Frame::Event(event))) => {
                        state
                            .decoder
                            .event(&event.event, &event.data, &mut state.pending)
                    }
                    Some(Ok(Frame::Retry(_))) => Ok(Step::Continue),
                    Some(Err(StreamError::Decode(error))) => {
                        Err(ProviderError::Protocol(error.to_string()))
                    }
                    Some(Err(StreamError::Transport(error))) => state
                        .decoder
                        .end(format!("reading the upstream body failed: {error}")),
                    None => state
                        .decoder
                        .end("the upstream closed the stream before a finish reason".into()),
                };
                match outcome {
                    Ok(Step::Continue) => {}
                    Ok(Step::Done) => {
                        state.decoder.finish(&mut state.pending);
                        state.ended = true;
                    }
                    Err(error) => {
                        state.ended = true;
                        return Some((Err(error), state));
                    }
                }
            }
        },
    ))
}

struct State<S, D> {
    events: std::pin::Pin<Box<EventStream<S>>>,
    decoder: D,
    pending: VecDeque<Delta>,
    ended: bool,
}

/// Run `decoder` over the payloads `events` (`(kind, data)` pairs), then end it with
/// `end` when given: the deltas, and the error that stopped it. For unit tests of decoders.
#[cfg(test)]
pub(crate) fn run<D: WireDecoder>(
    decoder: &mut D,
    events: &[(&str, &str)],
    end: Option<&str>,
) -> (Vec<Delta>, Result<(), ProviderError>) {
    let mut pending = VecDeque::new();
    for (kind, data) in events {
        match decoder.event(kind, data, &mut pending) {
            Ok(Step::Continue) => {}
            Ok(Step::Done) => {
                decoder.finish(&mut pending);
                return (pending.into(), Ok(()));
            }
            Err(error) => return (pending.into(), Err(error)),
        }
    }
    let result = match end {
        Some(why) => decoder
            .end(why.into())
            .map(|_| decoder.finish(&mut pending)),
        None => Ok(()),
    };
    (pending.into(), result)
}

/// At most 512 characters of `text`, for debug logs.
pub(crate) fn truncate(text: &str) -> &str {
    match text.char_indices().nth(512) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_characters() {
        let long = "é".repeat(600);
        assert_eq!(truncate(&long).chars().count(), 512);
        assert_eq!(truncate("short"), "short");
    }
}
