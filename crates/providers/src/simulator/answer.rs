//! What the simulator answers: a deterministic sequence of words for each request.
//!
//! The full answer is `tokens` words from a fixed vocabulary, drawn by an RNG seeded with
//! the config's seed, the request's seed and the request's messages, so the same request
//! always gets the same answer. `max_tokens` bounds the words of one response, as with
//! real upstreams. A continuation (assistant prefix) that is a prefix of the full answer
//! resumes exactly where it stopped — even inside a word — so a cut-and-continued answer
//! equals the uninterrupted one; any other prefix is followed by fresh words.

use std::borrow::Cow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::request::ChatRequest;

/// The words answers are made of; each token is one of them with a leading space.
const VOCABULARY: [&str; 64] = [
    " the", " a", " stream", " token", " answer", " river", " light", " quiet", " swift", " stone",
    " cloud", " bright", " signal", " between", " over", " under", " and", " or", " so", " then",
    " every", " small", " large", " north", " south", " echo", " wave", " field", " garden",
    " window", " paper", " ink", " word", " line", " page", " story", " morning", " evening",
    " green", " blue", " red", " golden", " silver", " steady", " gentle", " open", " closed",
    " near", " far", " again", " still", " always", " never", " here", " there", " now", " soon",
    " bridge", " path", " road", " harbor", " island", " forest", " meadow",
];

/// One response's plan: the pieces to send, and how it ends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The text pieces, one per token (the first may be the rest of a cut word).
    pub pieces: Vec<Cow<'static, str>>,
    /// `stop`, or `length` when `max_tokens` cut the answer.
    pub finish: &'static str,
    /// Words in the prompt (messages and prefix).
    pub prompt_tokens: u64,
}

impl Answer {
    /// Plan the answer to `request` for a simulator configured with `tokens` and `seed`.
    pub(crate) fn plan(request: &ChatRequest, tokens: u32, seed: u64) -> Answer {
        let seed = request_seed(request, seed);
        let full = words(seed, tokens as usize);
        let prefix = request.assistant_prefix.as_deref().unwrap_or("");
        let mut prompt_tokens: u64 = request
            .messages
            .iter()
            .map(|m| m.text().split_whitespace().count() as u64)
            .sum();
        prompt_tokens += prefix.split_whitespace().count() as u64;

        let mut rest: Vec<Cow<'static, str>> = match resume(&full, prefix.as_bytes()) {
            Some(rest) => rest,
            None => {
                let fresh_seed = fnv(fnv(seed, b"fresh"), prefix.as_bytes());
                let remaining = full.len().saturating_sub(prefix.split_whitespace().count());
                words(fresh_seed, remaining)
                    .into_iter()
                    .map(Cow::Borrowed)
                    .collect()
            }
        };
        let mut finish = "stop";
        if let Some(max) = request.max_tokens {
            if rest.len() > max as usize {
                rest.truncate(max as usize);
                finish = "length";
            }
        }
        Answer {
            pieces: rest,
            finish,
            prompt_tokens,
        }
    }

    /// The answer's text.
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        self.pieces.concat()
    }
}

/// What follows `prefix` in `full`, when `prefix` is a prefix of `full`'s text.
fn resume(full: &[&'static str], prefix: &[u8]) -> Option<Vec<Cow<'static, str>>> {
    let mut consumed = 0;
    for (i, word) in full.iter().enumerate() {
        let left = &prefix[consumed..];
        if left.is_empty() {
            return Some(full[i..].iter().copied().map(Cow::Borrowed).collect());
        }
        if left.len() < word.len() {
            // The prefix ends inside this word: send the word's rest, then the others.
            if !word.as_bytes().starts_with(left) {
                return None;
            }
            let mut rest = Vec::with_capacity(full.len() - i);
            // The vocabulary is ASCII, so every byte offset is a character boundary.
            rest.push(Cow::Borrowed(word.get(left.len()..)?));
            rest.extend(full[i + 1..].iter().copied().map(Cow::Borrowed));
            return Some(rest);
        }
        if !left.starts_with(word.as_bytes()) {
            return None;
        }
        consumed += word.len();
    }
    // The whole answer was already sent; only a prefix equal to it continues to nothing.
    (consumed == prefix.len()).then(Vec::new)
}

/// `count` words drawn with an RNG seeded by `seed`.
fn words(seed: u64, count: usize) -> Vec<&'static str> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| VOCABULARY[rng.random_range(0..VOCABULARY.len())])
        .collect()
}

/// A stable seed from the config's seed, the request's seed and its messages (FNV-1a,
/// so it does not change between Rust versions as `DefaultHasher` may).
fn request_seed(request: &ChatRequest, seed: u64) -> u64 {
    let mut hash = fnv(0xcbf2_9ce4_8422_2325, &seed.to_le_bytes());
    hash = fnv(
        hash,
        &request.seed.map_or([0xff; 9], |s| {
            let mut bytes = [0; 9];
            bytes[1..].copy_from_slice(&s.to_le_bytes());
            bytes
        }),
    );
    for message in &request.messages {
        hash = fnv(hash, message.role.as_bytes());
        hash = fnv(hash, &[0]);
        hash = fnv(hash, message.text().as_bytes());
        hash = fnv(hash, &[0]);
    }
    hash
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content: &str) -> ChatRequest {
        serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": content}],
        }))
        .unwrap()
    }

    #[test]
    fn every_cut_point_continues_to_the_same_answer() {
        let request = request("tell me");
        let full = Answer::plan(&request, 12, 7).text();
        for cut in 0..=full.len() {
            let mut continued = request.clone();
            continued.assistant_prefix = Some(full[..cut].to_owned());
            let rest = Answer::plan(&continued, 12, 7).text();
            assert_eq!(format!("{}{rest}", &full[..cut]), full, "cut at {cut}");
        }
    }

    #[test]
    fn a_foreign_prefix_gets_fresh_words() {
        let mut request = request("tell me");
        request.assistant_prefix = Some(" something else entirely".into());
        let answer = Answer::plan(&request, 10, 0);
        assert_eq!(answer.pieces.len(), 7);
        assert!(answer.pieces.iter().all(|p| p.starts_with(' ')));
    }

    #[test]
    fn max_tokens_cuts_with_length() {
        let mut request = request("x");
        request.max_tokens = Some(3);
        let answer = Answer::plan(&request, 10, 0);
        assert_eq!((answer.pieces.len(), answer.finish), (3, "length"));
        request.max_tokens = Some(10);
        assert_eq!(Answer::plan(&request, 10, 0).finish, "stop");
    }
}
