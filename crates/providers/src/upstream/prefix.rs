//! The output of a continued answer, without what the partial answer already holds.
//!
//! Some upstreams answer a continued request with the partial answer again before the new
//! text; the gateway appends only new text, so that echo is dropped, and only for partial
//! answers of at least [`MIN_ECHO`] bytes: a short one could begin the real continuation
//! by chance. The Messages API also refuses a final assistant turn that ends in
//! whitespace, so its request sends the partial answer without its trailing whitespace,
//! and the model usually starts its continuation by writing that whitespace again. The
//! gateway has already shown it, so with `space_left_out` it is dropped from the start of
//! the continuation too: as much of it as the continuation begins with.
//!
//! Text is held only while it could still be that whitespace or that echo; text that
//! differs passes at once, and anything else but token counts (a tool call, the finish,
//! an error, the end) releases what is held, so no answer content is lost or reordered.

use std::collections::VecDeque;

use futures_util::{StreamExt, stream};

use crate::delta::{Delta, DeltaStream};
use crate::error::ProviderError;

/// The shortest partial answer whose repetition is taken for an echo.
const MIN_ECHO: usize = 16;

/// What the held text may still turn out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A repetition of the trimmed partial answer (or the whitespace after it).
    Echo,
    /// The trailing whitespace the request left out.
    Space,
    /// Decided: everything passes.
    Open,
}

/// The text-level state machine, separate from the stream so it can be tested on strings.
#[derive(Debug)]
struct Trim {
    /// The partial answer as sent (without its trailing whitespace).
    kept: String,
    /// The trailing whitespace the request left out.
    space: String,
    phase: Phase,
    held: String,
}

impl Trim {
    fn new(prefix: &str, space_left_out: bool) -> Self {
        let kept = if space_left_out {
            prefix.trim_end()
        } else {
            prefix
        };
        let phase = if kept.len() >= MIN_ECHO {
            Phase::Echo
        } else {
            Phase::Space
        };
        Self {
            kept: kept.to_owned(),
            space: prefix[kept.len()..].to_owned(),
            phase,
            held: String::new(),
        }
    }

    /// Take in a text delta: the text to pass on now, if any.
    fn text(&mut self, text: String) -> Option<String> {
        if self.phase == Phase::Open {
            return Some(text);
        }
        self.held.push_str(&text);
        if self.phase == Phase::Echo {
            if self.held.starts_with(&self.kept) {
                self.held.drain(..self.kept.len());
                self.phase = Phase::Space;
            } else if self.kept.starts_with(self.held.as_str()) {
                return None;
            } else {
                self.phase = Phase::Space;
            }
        }
        if self.held.is_empty()
            || (self.held.len() < self.space.len() && self.space.starts_with(self.held.as_str()))
        {
            return None;
        }
        self.release()
    }

    /// Decide now: drop the whitespace the held text begins with and pass the rest on.
    fn release(&mut self) -> Option<String> {
        self.phase = Phase::Open;
        let repeated: usize = self
            .held
            .chars()
            .zip(self.space.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a.len_utf8())
            .sum();
        let rest = self.held.split_off(repeated);
        self.held.clear();
        (!rest.is_empty()).then_some(rest)
    }
}

struct Filter {
    inner: DeltaStream,
    trim: Trim,
    ready: VecDeque<Result<Delta, ProviderError>>,
    /// The inner stream has ended (it is never polled again).
    ended: bool,
}

/// `deltas`, the continuation of the partial answer `prefix`, without the echo of
/// `prefix` at their start, nor (with `space_left_out`: the request sent `prefix` without
/// its trailing whitespace) that whitespace written again.
pub(crate) fn continue_after(
    deltas: DeltaStream,
    prefix: &str,
    space_left_out: bool,
) -> DeltaStream {
    let trim = Trim::new(prefix, space_left_out);
    if trim.space.is_empty() && trim.phase == Phase::Space {
        return deltas;
    }
    let filter = Filter {
        inner: deltas,
        trim,
        ready: VecDeque::new(),
        ended: false,
    };
    Box::pin(stream::unfold(filter, |mut f| async move {
        loop {
            if let Some(item) = f.ready.pop_front() {
                return Some((item, f));
            }
            if f.ended {
                return None;
            }
            let next = f.inner.next().await;
            f.ended = next.is_none();
            if f.trim.phase == Phase::Open {
                return next.map(|item| (item, f));
            }
            match next {
                Some(Ok(Delta::Text(text))) => {
                    if let Some(text) = f.trim.text(text) {
                        f.ready.push_back(Ok(Delta::Text(text)));
                    }
                }
                // Token counts decide nothing (one arrives before any text).
                Some(Ok(usage @ Delta::Usage { .. })) => f.ready.push_back(Ok(usage)),
                // Anything else decides: what was held is text after all.
                other => {
                    if let Some(text) = f.trim.release() {
                        f.ready.push_back(Ok(Delta::Text(text)));
                    }
                    f.ready.extend(other);
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text `pieces` become after `prefix` (with the usage reported before any text,
    /// as the Messages API does), checking that the finish passes last.
    async fn through(prefix: &str, pieces: &[&str]) -> String {
        let usage = Delta::Usage {
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
        };
        let items: Vec<Result<Delta, ProviderError>> = std::iter::once(Ok(usage))
            .chain(pieces.iter().map(|p| Ok(Delta::Text((*p).to_owned()))))
            .chain([Ok(Delta::Finish {
                reason: "stop".into(),
            })])
            .collect();
        let mut out = continue_after(Box::pin(stream::iter(items)), prefix, true);
        let mut text = String::new();
        let mut finished = false;
        while let Some(item) = out.next().await {
            match item.unwrap() {
                Delta::Text(t) => {
                    assert!(!finished, "text after the finish");
                    text.push_str(&t);
                }
                Delta::Finish { .. } => finished = true,
                _ => {}
            }
        }
        assert!(finished, "the finish passes");
        text
    }

    #[tokio::test]
    async fn the_left_out_whitespace_is_not_shown_twice() {
        assert_eq!(through("Once upon a ", &[" time", "."]).await, "time.");
        assert_eq!(through("Once upon a ", &["time."]).await, "time.");
        // Split across deltas, and only as much as the continuation repeats.
        assert_eq!(through("Item:\n\n", &["\n", "\n- a"]).await, "- a");
        assert_eq!(through("Item:\n\n", &["\n- a"]).await, "- a");
        assert_eq!(through("Item:\n\n", &["\n", "\n", "\n- a"]).await, "\n- a");
        // Non-ASCII whitespace is cut at character boundaries.
        assert_eq!(through("見出し\u{3000}", &["\u{3000}本文"]).await, "本文");
        // Nothing but the whitespace before the end: nothing new.
        assert_eq!(through("Hi ", &[" "]).await, "");
        // Without trailing whitespace, text passes unchanged.
        assert_eq!(through("Hi", &[" there"]).await, " there");
    }

    #[tokio::test]
    async fn an_echoed_partial_answer_is_dropped_and_a_real_continuation_passes() {
        let prefix = "Once upon a time, in a land ";
        assert_eq!(
            through(prefix, &["Once upon a ", "time, in a land", " far away"]).await,
            "far away"
        );
        assert_eq!(through(prefix, &[prefix, "far away"]).await, "far away");
        assert_eq!(through(prefix, &[" far", " away"]).await, "far away");
        // Begins like the partial answer, then differs: nothing is lost.
        assert_eq!(
            through(prefix, &["Once upon", " a dream"]).await,
            "Once upon a dream"
        );
        // Ends while still matching: the held text is still delivered.
        assert_eq!(through(prefix, &["Once"]).await, "Once");
        // A short partial answer is never looked for.
        assert_eq!(through("ha ha", &["ha ha", " ha"]).await, "ha ha ha");
    }

    #[tokio::test]
    async fn held_text_is_released_before_a_tool_call_or_an_error() {
        let items: Vec<Result<Delta, ProviderError>> = vec![
            Ok(Delta::Text("\n".into())),
            Ok(Delta::ToolCall {
                index: 0,
                id: Some("t".into()),
                name: Some("f".into()),
                arguments: String::new(),
            }),
            Ok(Delta::Text(" x".into())),
            Err(ProviderError::Interrupted("cut".into())),
        ];
        let out: Vec<_> = continue_after(Box::pin(stream::iter(items)), "List:\n\n", true)
            .collect()
            .await;
        assert!(matches!(out[0], Ok(Delta::ToolCall { .. })), "{out:?}");
        assert_eq!(out[1], Ok(Delta::Text(" x".into())));
        assert_eq!(out[2], Err(ProviderError::Interrupted("cut".into())));
        assert_eq!(out.len(), 3);

        let items = vec![
            Ok(Delta::Text("Once upon".into())),
            Err(ProviderError::Interrupted("cut".into())),
        ];
        let out: Vec<_> = continue_after(
            Box::pin(stream::iter(items)),
            "Once upon a time, in a land",
            true,
        )
        .collect()
        .await;
        assert_eq!(
            out,
            [
                Ok(Delta::Text("Once upon".into())),
                Err(ProviderError::Interrupted("cut".into()))
            ]
        );
    }

    /// An upstream sent the whole partial answer: only its echo is dropped, and the
    /// whitespace of the continuation is the continuation's.
    #[tokio::test]
    async fn with_the_whole_prefix_sent_only_an_echo_is_dropped() {
        let through = |prefix: &'static str, pieces: &'static [&'static str]| async move {
            let items: Vec<Result<Delta, ProviderError>> = pieces
                .iter()
                .map(|p| Ok(Delta::Text((*p).to_owned())))
                .collect();
            let out: Vec<_> = continue_after(Box::pin(stream::iter(items)), prefix, false)
                .collect()
                .await;
            out.into_iter()
                .map(|item| match item {
                    Ok(Delta::Text(text)) => text,
                    other => panic!("{other:?}"),
                })
                .collect::<String>()
        };
        let prefix = "Once upon a time, in a land";
        assert_eq!(
            through(prefix, &["Once upon a ", "time, in a land", " far away"]).await,
            " far away"
        );
        assert_eq!(through(prefix, &[" far", " away"]).await, " far away");
        assert_eq!(through("Hi ", &[" there"]).await, " there");
        assert_eq!(
            through(prefix, &["Once upon", " a dream"]).await,
            "Once upon a dream"
        );
    }
}
