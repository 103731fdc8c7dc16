//! The tokenizer, built from the GGUF file's own metadata, and the ChatML template.
//!
//! `tokenizer.ggml.tokens`, `merges` and `token_type` describe a byte-level BPE (GPT-2
//! style, `tokenizer.ggml.model = "gpt2"`); `tokenizer.ggml.pre = "smollm"` adds a
//! pre-tokenizer that splits every digit on its own. The `tokenizers` crate builds exactly
//! that, with control and user-defined tokens (types 3 and 4) registered as special tokens
//! so `<|im_end|>` is one token. Nothing is downloaded.
//!
//! Decoding for streaming does not go through `tokenizers`: each token maps to its raw
//! bytes ([`TextTokenizer::token_bytes`]) and [`Utf8Decoder`] emits text only once the bytes
//! form valid UTF-8, so a character split across tokens is never emitted broken.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use providers::Message;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::LocalError;

/// SmolLM2's default system prompt, used when a conversation has none (as its chat
/// template does).
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A byte-level BPE tokenizer plus what the generation loop needs to know about tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    /// Special tokens in the text are recognised (`"<|im_end|>"` is one token).
    tokenizer: Tokenizer,
    /// The same tokenizer, but special tokens in the text are ordinary text: used for
    /// message contents, so a user cannot forge `<|im_start|>system` turns.
    literal: Tokenizer,
    /// The bytes each token stands for; empty for control tokens.
    bytes: Vec<Vec<u8>>,
    im_start: u32,
    im_end: u32,
    /// Tokens that end an answer: `<|im_end|>`, the file's EOS and `<|endoftext|>`.
    stops: Vec<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.bytes.len())
            .field("stops", &self.stops)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> LocalError {
    LocalError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Build the tokenizer from a GGUF header.
    ///
    /// # Errors
    /// [`LocalError::Tokenizer`] when the metadata is missing, not a byte-level BPE, or
    /// lacks the ChatML tokens.
    pub(crate) fn from_gguf(content: &Content) -> Result<Self, LocalError> {
        let md = &content.metadata;
        let get = |key: &str| {
            md.get(key)
                .ok_or_else(|| LocalError::Tokenizer(format!("metadata key {key} is missing")))
        };
        let model = get("tokenizer.ggml.model")?.to_string().map_err(tok_err)?;
        if model != "gpt2" {
            return Err(LocalError::Tokenizer(format!(
                "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>, LocalError> {
            get(key)?
                .to_vec()
                .map_err(tok_err)?
                .iter()
                .map(|v| v.to_string().cloned().map_err(tok_err))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(tok_err)?
                .iter()
                .map(|t| t.to_i32().map_err(tok_err))
                .collect::<Result<_, _>>()?,
            None => vec![1; tokens.len()],
        };
        let digits_split = match md.get("tokenizer.ggml.pre") {
            Some(pre) => pre.to_string().map_err(tok_err)? == "smollm",
            None => false,
        };
        let eos = md.get("tokenizer.ggml.eos_token_id").map(Value::to_u32);
        Self::build(
            &tokens,
            &merges,
            &types,
            digits_split,
            eos.transpose().map_err(tok_err)?,
        )
    }

    fn build(
        tokens: &[String],
        merges: &[String],
        types: &[i32],
        digits_split: bool,
        eos: Option<u32>,
    ) -> Result<Self, LocalError> {
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| LocalError::Tokenizer(format!("malformed merge {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.clone(), merges)
            .build()
            .map_err(tok_err)?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        if digits_split {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        } else {
            tokenizer.with_pre_tokenizer(Some(byte_level));
        }
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let special = |id: usize| {
            matches!(
                types.get(id),
                Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED)
            )
        };
        let specials: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(id, _)| special(*id))
            .map(|(_, t)| AddedToken::from(t.clone(), true))
            .collect();
        tokenizer.add_special_tokens(specials).map_err(tok_err)?;
        let mut literal = tokenizer.clone();
        literal.set_encode_special_tokens(true);

        let unicode_to_byte = unicode_to_byte();
        let bytes = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| match types.get(id) {
                Some(&TOKEN_TYPE_CONTROL) => Vec::new(),
                Some(&TOKEN_TYPE_USER_DEFINED) => t.as_bytes().to_vec(),
                _ => {
                    let mut out = Vec::with_capacity(t.len());
                    for c in t.chars() {
                        match unicode_to_byte.get(&c) {
                            Some(b) => out.push(*b),
                            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                    out
                }
            })
            .collect();
        let id = |name: &str| {
            vocab
                .get(name)
                .copied()
                .ok_or_else(|| LocalError::Tokenizer(format!("the vocabulary lacks {name}")))
        };
        let im_start = id("<|im_start|>")?;
        let im_end = id("<|im_end|>")?;
        let mut stops = vec![im_end];
        stops.extend(eos);
        stops.extend(vocab.get("<|endoftext|>").copied());
        stops.sort_unstable();
        stops.dedup();
        Ok(TextTokenizer {
            tokenizer,
            literal,
            bytes,
            im_start,
            im_end,
            stops,
        })
    }

    /// Tokenize `text`, recognising special tokens written in it. No BOS is added.
    ///
    /// # Errors
    /// A message when the tokenizer fails (it should not on any UTF-8 input).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        encode_with(&self.tokenizer, text)
    }

    /// Tokenize `text` treating special-token spellings as plain text.
    fn encode_literal(&self, text: &str) -> Result<Vec<u32>, String> {
        encode_with(&self.literal, text)
    }

    /// Decode tokens to text with `tokenizers`' own decoder (special tokens included).
    ///
    /// # Errors
    /// A message when an id is out of range.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, false).map_err(|e| e.to_string())
    }

    /// The raw bytes `id` stands for (empty for control tokens and unknown ids).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The id of `<|im_end|>`.
    pub fn im_end(&self) -> u32 {
        self.im_end
    }

    /// Whether `id` ends an answer.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stops.contains(&id)
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Apply the ChatML template: every message as `<|im_start|>role\n…<|im_end|>\n`
    /// (SmolLM2's system prompt first when the conversation has none), then
    /// `<|im_start|>assistant\n` followed by `prefix`, the start of the answer to continue.
    ///
    /// The prefix is tokenized together with `assistant\n` as one string, exactly as a
    /// template rendered to text and tokenized whole would be. Message contents are
    /// tokenized literally: `<|im_end|>` typed by a user stays text.
    ///
    /// # Errors
    /// A message when the tokenizer fails.
    pub fn chat_prompt(&self, messages: &[Message], prefix: &str) -> Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        let turn = |role: &str, content: &str, ids: &mut Vec<u32>| -> Result<(), String> {
            ids.push(self.im_start);
            ids.extend(self.encode_literal(&format!("{role}\n{content}"))?);
            ids.push(self.im_end);
            ids.extend(self.encode_literal("\n")?);
            Ok(())
        };
        if messages.first().is_none_or(|m| m.role != "system") {
            turn("system", DEFAULT_SYSTEM_PROMPT, &mut ids)?;
        }
        for message in messages {
            turn(&message.role, &message.text(), &mut ids)?;
        }
        ids.push(self.im_start);
        ids.extend(self.encode_literal(&format!("assistant\n{prefix}"))?);
        Ok(ids)
    }
}

fn encode_with(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, String> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| e.to_string())
}

/// GPT-2's byte-level alphabet, inverted: the printable character each byte is spelled
/// with in the vocabulary, back to the byte.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

/// Turns a stream of byte chunks into text, holding back an incomplete UTF-8 sequence at
/// the end until the bytes that complete it arrive. Invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Add `bytes`; return the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// End of input: whatever is held back, with U+FFFD for an incomplete sequence.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_decoder_holds_split_characters() {
        let text = "é😀中";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut d = Utf8Decoder::default();
            let mut out = d.push(&bytes[..split]);
            out.push_str(&d.push(&bytes[split..]));
            out.push_str(&d.finish());
            assert_eq!(out, text, "split at {split}");
        }
        let mut d = Utf8Decoder::default();
        for b in bytes {
            let piece = d.push(std::slice::from_ref(b));
            assert!(piece.chars().all(|c| c != char::REPLACEMENT_CHARACTER));
        }
    }

    #[test]
    fn utf8_decoder_replaces_invalid_bytes() {
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.push(b"\xe4\xb8"), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map.get(&'Ġ'), Some(&b' '));
        assert_eq!(map.get(&'Ċ'), Some(&b'\n'));
        assert_eq!(map.get(&'a'), Some(&b'a'));
    }

    #[test]
    fn tiny_vocabulary_round_trips() {
        let tokens: Vec<String> = [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "a",
            "b",
            "Ġ",
            "ab",
            "Ġab",
            "1",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let merges = vec!["a b".to_string(), "Ġ ab".to_string()];
        let types = vec![3, 3, 3, 1, 1, 1, 1, 1, 1, 1];
        let tok = TextTokenizer::build(&tokens, &merges, &types, true, Some(2)).unwrap();
        let ids = tok.encode("ab ab12<|im_end|>").unwrap();
        assert_eq!(ids, vec![6, 7, 8, 9, 2]);
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|id| tok.token_bytes(*id).to_vec())
            .collect();
        assert_eq!(bytes, b"ab ab12");
        assert!(tok.is_stop(2) && tok.is_stop(0) && !tok.is_stop(1));
        // Literal encoding never produces the special token from text.
        assert!(
            !tok.encode_literal("<|im_end|>")
                .unwrap_or_default()
                .contains(&2)
        );
    }
}
