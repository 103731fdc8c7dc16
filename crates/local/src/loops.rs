//! [`LoopDetector`]: notices when an answer has fallen into a degenerate loop, so the
//! generation can end it instead of repeating the same words until `max_tokens`.
//!
//! **The rule.** An answer is looping when its last `L` tokens are one span of `p` tokens
//! repeated back to back, with `1 <= p <= `[`MAX_PERIOD`] and
//! `L >= max(`[`MIN_TOKENS`]`, `[`MIN_COPIES`]` × p)`: at least 64 tokens and at least four
//! copies (so 64 tokens for a span of up to 16 tokens, `4p` tokens for a longer one). The
//! copies must be exact; the last one may be partial (`L` need not be a multiple of `p`).
//!
//! What it leaves alone: anything shorter than 64 tokens (a markdown table's separator
//! row, "ha ha ha", a refrain), repetition with any variation in it (numbered lists, table
//! rows with different cells) and spans longer than 32 tokens. What it would stop that a
//! person might want: 64 tokens of one short span, such as a literal array of 32 zeros.
//!
//! **The cost.** One run counter per period: for each `p`, how many tokens in a row have
//! equalled the token `p` positions before them. A new token updates the 32 counters
//! against a ring of the last 32 tokens: 32 comparisons, no allocation.

/// The longest repeated span looked for, in tokens.
pub const MAX_PERIOD: usize = 32;
/// The fewest tokens a loop covers before it ends the answer.
pub const MIN_TOKENS: usize = 64;
/// The fewest copies of the span a loop has before it ends the answer.
pub const MIN_COPIES: usize = 4;

/// Tracks the repetition at the end of a token sequence, one token at a time.
///
/// ```
/// use local::loops::LoopDetector;
///
/// let mut detector = LoopDetector::new();
/// // "a b c a b c …": a span of 3 tokens; the 64th token of the loop ends it.
/// let looped = (0..100u32).map(|i| i % 3).position(|t| detector.push(t));
/// assert_eq!(looped, Some(63));
/// ```
#[derive(Debug, Clone)]
pub struct LoopDetector {
    /// The last [`MAX_PERIOD`] tokens: token `n` (counting from 0) is at `n % MAX_PERIOD`.
    recent: [u32; MAX_PERIOD],
    /// `runs[p - 1]`: how many of the latest tokens in a row equal the token `p` before
    /// them. The last `runs[p - 1] + p` tokens are then a span of `p` repeated.
    runs: [usize; MAX_PERIOD],
    /// Tokens pushed so far.
    seen: usize,
}

impl Default for LoopDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl LoopDetector {
    /// A detector that has seen no token.
    pub fn new() -> Self {
        LoopDetector {
            recent: [0; MAX_PERIOD],
            runs: [0; MAX_PERIOD],
            seen: 0,
        }
    }

    /// Add the next token; `true` when the sequence now ends in a loop (see the module
    /// docs for the rule). Stays `true` while the loop goes on.
    pub fn push(&mut self, token: u32) -> bool {
        let mut looping = false;
        for period in 1..=MAX_PERIOD.min(self.seen) {
            let earlier = self.recent[(self.seen - period) % MAX_PERIOD];
            let run = &mut self.runs[period - 1];
            *run = if earlier == token { *run + 1 } else { 0 };
            looping |= *run + period >= MIN_TOKENS.max(MIN_COPIES * period);
        }
        self.recent[self.seen % MAX_PERIOD] = token;
        self.seen += 1;
        looping
    }
}

/// Where the loop rule would end an answer made of `tokens`: the index of the token that
/// completes the first loop, or `None` when the answer never loops.
///
/// ```
/// let refrain: Vec<u32> = (0..40).map(|i| i % 2).collect();
/// assert_eq!(local::loops::loop_end(&refrain), None);
/// ```
pub fn loop_end(tokens: &[u32]) -> Option<usize> {
    let mut detector = LoopDetector::new();
    tokens.iter().position(|&token| detector.push(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `copies` copies of `span` preceded by a distinct lead-in, so the loop starts at a
    /// known position.
    fn looped(lead: usize, span: &[u32], len: usize) -> Vec<u32> {
        let lead = (0..lead as u32).map(|i| 1_000 + i);
        lead.chain(span.iter().copied().cycle().take(len)).collect()
    }

    #[test]
    fn a_short_span_stops_at_its_64th_token() {
        for period in [1usize, 2, 3, 7, 16] {
            let span: Vec<u32> = (0..period as u32).collect();
            let tokens = looped(10, &span, 100);
            assert_eq!(
                loop_end(&tokens),
                Some(10 + MIN_TOKENS - 1),
                "period {period}"
            );
            assert_eq!(loop_end(&tokens[..10 + MIN_TOKENS - 1]), None);
        }
    }

    #[test]
    fn a_long_span_needs_four_copies() {
        for period in [17usize, 20, MAX_PERIOD] {
            let span: Vec<u32> = (0..period as u32).collect();
            let tokens = looped(5, &span, 5 * period);
            assert_eq!(
                loop_end(&tokens),
                Some(5 + 4 * period - 1),
                "period {period}"
            );
        }
    }

    #[test]
    fn spans_longer_than_the_window_are_not_looked_for() {
        let span: Vec<u32> = (0..MAX_PERIOD as u32 + 1).collect();
        assert_eq!(loop_end(&looped(0, &span, 10 * span.len())), None);
    }

    #[test]
    fn a_variation_restarts_the_count() {
        // "la France, la France, …" with a different token every 40 tokens.
        let mut tokens = Vec::new();
        for i in 0..10u32 {
            tokens.extend(looped(0, &[1, 2, 3], 39));
            tokens.push(100 + i);
        }
        assert_eq!(loop_end(&tokens), None);
        // The same without the variations loops.
        assert!(loop_end(&looped(0, &[1, 2, 3], 400)).is_some());
    }

    #[test]
    fn short_legitimate_repetition_passes() {
        // A markdown separator row of 12 columns ("|", "---" twelve times), "ha ha ha"
        // and a doubled verse.
        let table: Vec<u32> = [7, 8, 9]
            .into_iter()
            .chain(looped(0, &[1, 2], 25))
            .collect();
        assert_eq!(loop_end(&table), None);
        assert_eq!(loop_end(&looped(3, &[4], 12)), None);
        let verse: Vec<u32> = (0..30).collect();
        assert_eq!(loop_end(&looped(0, &verse, 60)), None);
        // A numbered list repeats its shape but not its tokens.
        let list: Vec<u32> = (0..40u32).flat_map(|n| [500 + n, 1, 2, 3]).collect();
        assert_eq!(loop_end(&list), None);
    }

    #[test]
    fn the_detector_keeps_reporting_while_the_loop_goes_on() {
        let mut detector = LoopDetector::new();
        let flags: Vec<bool> = looped(0, &[5, 6], 80)
            .into_iter()
            .map(|t| detector.push(t))
            .collect();
        assert!(flags[..63].iter().all(|f| !f));
        assert!(flags[63..].iter().all(|f| *f));
        assert!(!detector.push(9));
    }
}
