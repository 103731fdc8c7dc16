//! Dropping a continuation prefix that an upstream repeats.
//!
//! Some servers answer a continued request with the partial answer again before the new
//! text. The gateway appends only new text, so an echo would be seen twice. The first
//! text deltas are held while they could still be the start of the prefix; if they turn
//! out to repeat the whole prefix it is dropped, otherwise they pass unchanged. Only
//! prefixes of at least [`MIN_ECHO`] bytes are looked for: a short one could begin the
//! real continuation by chance. Text that diverges from the prefix is passed at once, so
//! a real continuation is not delayed.

use std::collections::VecDeque;

use futures_util::{StreamExt, stream};

use crate::delta::{Delta, DeltaStream};

/// The shortest prefix whose repetition is taken for an echo.
pub(super) const MIN_ECHO: usize = 16;

struct Filter {
    inner: DeltaStream,
    prefix: String,
    /// Text held while it still matches the start of the prefix.
    held: String,
    /// Decided: everything passes from now on.
    open: bool,
    ready: VecDeque<Result<Delta, crate::ProviderError>>,
}

/// `deltas`, without a repetition of `prefix` at their start.
pub(super) fn drop_echo(deltas: DeltaStream, prefix: &str) -> DeltaStream {
    if prefix.len() < MIN_ECHO {
        return deltas;
    }
    let filter = Filter {
        inner: deltas,
        prefix: prefix.to_owned(),
        held: String::new(),
        open: false,
        ready: VecDeque::new(),
    };
    Box::pin(stream::unfold(filter, |mut f| async move {
        loop {
            if let Some(item) = f.ready.pop_front() {
                return Some((item, f));
            }
            let next = f.inner.next().await;
            if f.open {
                return next.map(|item| (item, f));
            }
            match next {
                Some(Ok(Delta::Text(text))) => {
                    f.held.push_str(&text);
                    if f.held.len() >= f.prefix.len() && f.held.starts_with(&f.prefix) {
                        // The whole prefix came back: drop it.
                        let rest = f.held.split_off(f.prefix.len());
                        f.held.clear();
                        f.open = true;
                        if !rest.is_empty() {
                            f.ready.push_back(Ok(Delta::Text(rest)));
                        }
                    } else if !f.prefix.starts_with(f.held.as_str()) {
                        f.open = true;
                        f.ready
                            .push_back(Ok(Delta::Text(std::mem::take(&mut f.held))));
                    }
                }
                // Anything else decides: what was held is text after all.
                other => {
                    f.open = true;
                    if !f.held.is_empty() {
                        f.ready
                            .push_back(Ok(Delta::Text(std::mem::take(&mut f.held))));
                    }
                    match other {
                        Some(item) => f.ready.push_back(item),
                        None if f.ready.is_empty() => return None,
                        None => {}
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn through(prefix: &str, pieces: &[&str]) -> String {
        let items: Vec<Result<Delta, crate::ProviderError>> = pieces
            .iter()
            .map(|p| Ok(Delta::Text((*p).to_owned())))
            .chain([Ok(Delta::Finish {
                reason: "stop".into(),
            })])
            .collect();
        let mut out = drop_echo(Box::pin(stream::iter(items)), prefix);
        let mut text = String::new();
        let mut finished = false;
        while let Some(item) = out.next().await {
            match item.unwrap() {
                Delta::Text(t) => text.push_str(&t),
                Delta::Finish { .. } => finished = true,
                _ => {}
            }
        }
        assert!(finished, "the finish passes");
        text
    }

    #[tokio::test]
    async fn an_echoed_prefix_is_dropped_and_a_real_continuation_passes() {
        let prefix = "Once upon a time, in a land";
        assert_eq!(
            through(prefix, &["Once upon a ", "time, in a land", " far away"]).await,
            " far away"
        );
        assert_eq!(through(prefix, &[" far", " away"]).await, " far away");
        // Begins like the prefix, then differs: nothing is lost.
        assert_eq!(
            through(prefix, &["Once upon", " a dream"]).await,
            "Once upon a dream"
        );
        // Ends while still matching: the held text is still delivered.
        assert_eq!(through(prefix, &["Once"]).await, "Once");
        // A short prefix is never looked for.
        assert_eq!(through("ha ha", &["ha ha", " ha"]).await, "ha ha ha");
    }
}
