//! [`Sampler`]: picks the next token from the logits.
//!
//! Temperature 0 is greedy (the highest logit, the lowest id on a tie): exactly
//! deterministic. Otherwise the logits are divided by the temperature, cut to the smallest
//! set of tokens whose probability reaches `top_p` (nucleus sampling), and sampled with a
//! seeded generator, so the same request with the same `seed` gives the same answer.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Debug)]
pub(crate) enum Sampler {
    /// Always the most likely token.
    Greedy,
    /// Temperature and nucleus sampling.
    Random {
        temperature: f32,
        top_p: f32,
        rng: Box<StdRng>,
    },
}

impl Sampler {
    /// A sampler for these settings; `seed = None` draws a seed from the OS.
    pub(crate) fn new(temperature: f32, top_p: f32, seed: Option<u64>) -> Self {
        if temperature <= 0.0 || !temperature.is_finite() {
            return Sampler::Greedy;
        }
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let rng = Box::new(rng);
        let top_p = if top_p > 0.0 && top_p < 1.0 {
            top_p
        } else {
            1.0
        };
        Sampler::Random {
            temperature,
            top_p,
            rng,
        }
    }

    /// Pick a token from `logits` (one per vocabulary entry).
    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        match self {
            Sampler::Greedy => argmax(logits),
            Sampler::Random {
                temperature,
                top_p,
                rng,
            } => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut probs: Vec<(u32, f32)> = logits
                    .iter()
                    .enumerate()
                    .map(|(id, l)| (id as u32, ((l - max) / *temperature).exp()))
                    .filter(|(_, p)| *p > 0.0)
                    .collect();
                if probs.is_empty() {
                    return argmax(logits);
                }
                probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let total: f32 = probs.iter().map(|(_, p)| p).sum();
                let mut kept = 0.0;
                let mut cut = probs.len();
                for (i, (_, p)) in probs.iter().enumerate() {
                    kept += p / total;
                    if kept >= *top_p {
                        cut = i + 1;
                        break;
                    }
                }
                probs.truncate(cut);
                let kept_total: f32 = probs.iter().map(|(_, p)| p).sum();
                let mut target = rng.random::<f32>() * kept_total;
                for (id, p) in &probs {
                    if target < *p {
                        return *id;
                    }
                    target -= p;
                }
                probs.last().map_or(0, |(id, _)| *id)
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

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(0.0, 1.0, None);
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_p() {
        let logits = [2.0, 1.9, -5.0, 0.5];
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 1.0, Some(seed));
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        // top_p small enough keeps only the most likely token.
        let mut s = Sampler::new(1.0, 0.1, Some(1));
        assert!((0..50).all(|_| s.sample(&logits) == 0));
    }
}
