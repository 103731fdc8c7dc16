//! [`Sampler`]: picks the next token from the logits.
//!
//! Each token goes through the same steps, in the order of Hugging Face `transformers`
//! (whose settings SmolLM2 recommends):
//! 1. **Penalties** on the raw logits. The repetition penalty is llama.cpp's: every
//!    distinct token among the last `repeat_last_n` tokens of the context (prompt
//!    included) has a positive logit divided by `repeat_penalty` and a negative one
//!    multiplied by it, once however often it occurs. Then OpenAI's: each token the answer
//!    has produced `count` times loses `frequency_penalty × count + presence_penalty`.
//! 2. **Greedy** at temperature 0: the highest logit, the lowest id on a tie; exactly
//!    deterministic.
//! 3. Otherwise **temperature, `top_p`, `min_p`**: the logits are divided by the
//!    temperature; the smallest set of most likely tokens whose probability reaches
//!    `top_p` is kept, minus those less likely than `min_p` times the most likely one (the
//!    two cuts keep a prefix of the same ranking, so their order does not matter); one is
//!    drawn with a seeded generator, so the same request with the same `seed` gives the
//!    same answer.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How one answer samples its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Settings {
    /// 0 (or less) is greedy.
    pub(crate) temperature: f32,
    /// Nucleus mass; outside `(0, 1)` means no cut.
    pub(crate) top_p: f32,
    /// Minimum probability relative to the most likely token; 0 means no cut.
    pub(crate) min_p: f32,
    /// 1 means no repetition penalty.
    pub(crate) repeat_penalty: f32,
    /// Tokens of context the repetition penalty looks back over; 0 means none.
    pub(crate) repeat_last_n: usize,
    /// Subtracted per occurrence in the answer.
    pub(crate) frequency_penalty: f32,
    /// Subtracted once for any occurrence in the answer.
    pub(crate) presence_penalty: f32,
}

/// Chooses tokens for one answer and remembers what it has chosen.
#[derive(Debug)]
pub(crate) struct Sampler {
    settings: Settings,
    /// `None` is greedy.
    rng: Option<Box<StdRng>>,
    /// The last `repeat_last_n` tokens of the context, oldest first.
    window: VecDeque<u32>,
    /// How often each token occurs in `window`.
    in_window: HashMap<u32, u32>,
    /// How often each token occurs in the answer.
    in_answer: HashMap<u32, u32>,
    /// Candidate tokens and their weights, reused from token to token.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for these settings; `seed = None` draws a seed from the OS.
    pub(crate) fn new(settings: Settings, seed: Option<u64>) -> Self {
        let rng = (settings.temperature > 0.0 && settings.temperature.is_finite()).then(|| {
            Box::new(match seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_os_rng(),
            })
        });
        Sampler {
            settings,
            rng,
            // The window fills up to `repeat_last_n`; a huge setting grows it as needed.
            window: VecDeque::with_capacity(settings.repeat_last_n.min(4096)),
            in_window: HashMap::with_capacity(settings.repeat_last_n.min(4096)),
            in_answer: HashMap::new(),
            candidates: Vec::new(),
        }
    }

    /// Record a token of the context that precedes the answer (the prompt).
    pub(crate) fn context(&mut self, token: u32) {
        let n = self.settings.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.window.len() == n
            && let Some(old) = self.window.pop_front()
            && let Some(count) = self.in_window.get_mut(&old)
        {
            *count -= 1;
            if *count == 0 {
                self.in_window.remove(&old);
            }
        }
        self.window.push_back(token);
        *self.in_window.entry(token).or_insert(0) += 1;
    }

    /// Record a token of the answer (generated now, or part of a prefix being continued).
    pub(crate) fn answer(&mut self, token: u32) {
        self.context(token);
        *self.in_answer.entry(token).or_insert(0) += 1;
    }

    /// Pick a token from `logits` (one per vocabulary entry), applying the penalties to
    /// them in place. The choice is not recorded: call [`Sampler::answer`] with it.
    pub(crate) fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.penalize(logits);
        let Some(rng) = self.rng.as_mut() else {
            return argmax(logits);
        };
        let Settings {
            temperature,
            top_p,
            min_p,
            ..
        } = self.settings;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        // Weights relative to the most likely token (which has 1); `total` over all of
        // them, so top_p measures against the whole distribution.
        let floor = min_p.clamp(0.0, 1.0);
        let mut total = 0.0;
        let probs = &mut self.candidates;
        probs.clear();
        for (id, &l) in logits.iter().enumerate() {
            let w = ((l - max) / temperature).exp();
            total += w;
            if w > 0.0 && w >= floor {
                probs.push((id as u32, w));
            }
        }
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if top_p > 0.0 && top_p < 1.0 {
            let mut kept = 0.0;
            for (i, (_, w)) in probs.iter().enumerate() {
                kept += w / total;
                if kept >= top_p {
                    probs.truncate(i + 1);
                    break;
                }
            }
        }
        let kept_total: f32 = probs.iter().map(|(_, w)| w).sum();
        let mut target = rng.random::<f32>() * kept_total;
        for &(id, w) in probs.iter() {
            if target < w {
                return id;
            }
            target -= w;
        }
        probs.first().map_or_else(|| argmax(logits), |&(id, _)| id)
    }

    fn penalize(&self, logits: &mut [f32]) {
        let s = &self.settings;
        if s.repeat_penalty != 1.0 {
            for &token in self.in_window.keys() {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l = if *l > 0.0 {
                        *l / s.repeat_penalty
                    } else {
                        *l * s.repeat_penalty
                    };
                }
            }
        }
        if s.frequency_penalty != 0.0 || s.presence_penalty != 0.0 {
            for (&token, &count) in &self.in_answer {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l -= s.frequency_penalty * count as f32 + s.presence_penalty;
                }
            }
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(temperature: f32, top_p: f32) -> Settings {
        Settings {
            temperature,
            top_p,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(settings(0.0, 1.0), None);
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_p() {
        let logits = [2.0, 1.9, -5.0, 0.5];
        let draw = |seed| {
            let mut s = Sampler::new(settings(1.0, 1.0), Some(seed));
            (0..50)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(draw(7).contains(&3), "without cuts every token can come up");
        // top_p small enough keeps only the most likely token.
        let mut s = Sampler::new(settings(1.0, 0.1), Some(1));
        assert!((0..50).all(|_| s.sample(&mut logits.clone()) == 0));
    }

    #[test]
    fn min_p_drops_the_unlikely_tokens() {
        // Relative weights 1, e^-0.1 ≈ 0.90, e^-3 ≈ 0.05, e^-7.
        let logits = [2.0, 1.9, -1.0, -5.0];
        let mut s = Sampler::new(
            Settings {
                min_p: 0.1,
                ..settings(1.0, 1.0)
            },
            Some(3),
        );
        let drawn: Vec<u32> = (0..300).map(|_| s.sample(&mut logits.clone())).collect();
        assert!(drawn.contains(&0) && drawn.contains(&1));
        assert!(!drawn.contains(&2) && !drawn.contains(&3));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits_once() {
        let mut s = Sampler::new(
            Settings {
                repeat_penalty: 2.0,
                repeat_last_n: 3,
                ..settings(0.0, 1.0)
            },
            None,
        );
        for token in [0, 0, 1, 1, 2] {
            s.context(token);
        }
        // The window is [1, 1, 2]: token 0 has left it, token 1 counts once.
        let mut logits = [4.0, 4.0, -1.0, 0.0, 6.0];
        s.penalize(&mut logits);
        assert_eq!(logits, [4.0, 2.0, -2.0, 0.0, 6.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_count_the_answer_only() {
        let mut s = Sampler::new(
            Settings {
                frequency_penalty: 0.5,
                presence_penalty: 1.0,
                ..settings(0.0, 1.0)
            },
            None,
        );
        s.context(0);
        for token in [1, 2, 2, 2] {
            s.answer(token);
        }
        let mut logits = [5.0, 5.0, 5.0, 5.0];
        s.penalize(&mut logits);
        assert_eq!(logits, [5.0, 3.5, 2.5, 5.0]);
        // Greedy follows the penalised logits; negative penalties encourage repetition.
        assert_eq!(s.sample(&mut [5.0, 5.0, 5.0, 4.0]), 0);
        let mut s = Sampler::new(
            Settings {
                presence_penalty: -2.0,
                ..settings(0.0, 1.0)
            },
            None,
        );
        s.answer(3);
        assert_eq!(s.sample(&mut [5.0, 5.0, 5.0, 4.0]), 3);
    }
}
