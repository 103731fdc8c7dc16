//! The embedded default model: a small instruct model (SmolLM2-135M-Instruct) running
//! in-process on the CPU, so `unbroken` answers with no upstream configured.
//!
//! ```no_run
//! use local::{LocalOptions, LocalProvider, default_model_path};
//!
//! # fn main() -> Result<(), local::LocalError> {
//! // The file comes from `scripts/fetch-model`; a missing file is an error naming it.
//! let provider = LocalProvider::load(&default_model_path(), LocalOptions::default())?;
//! # let _ = provider;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`provider`]: [`LocalProvider`], the [`providers::Provider`]: one OS thread per
//!   answer, forward passes in a shared rayon pool sized to the cores, deltas through a
//!   bounded channel, cancellation when the stream is dropped.
//! - `model` (private): the llama forward pass on candle, weights loaded from GGUF.
//! - [`tokenizer`]: the byte-level BPE built from the GGUF metadata, the ChatML template
//!   and the incremental UTF-8 decoder.
//! - `sampler` (private): the repetition, frequency and presence penalties, then greedy
//!   or temperature, nucleus (`top_p`) and `min_p` sampling.
//! - [`loops`]: [`loops::LoopDetector`], the rule that ends an answer stuck in a loop.
//! - [`error`]: [`LocalError`], why loading failed.
//!
//! # Choices
//! - **Weights are dequantized to F16 at load.** The file stores Q4_1 blocks (98 MB).
//!   candle's quantized matmul rounds the activations to 8 bits (Q8_1) and, on the default
//!   x86-64 target, runs a scalar dot product: measured here, the first token of
//!   "What is the capital of France?" flips to nonsense and decoding runs at 9–12 tokens/s.
//!   F16 weights with F32 activations answer "The capital of France is Paris." and use
//!   `gemm`'s runtime-dispatched SIMD (AVX2/FMA/F16C when the CPU has them, without
//!   `target-cpu=native`), at the cost of ~270 MB of weights in memory instead of ~100 MB.
//!   Norms, rotary embeddings, attention and the residual stream stay F32.
//!   Also measured, with safe Rust kernels under `pulp`'s runtime dispatch (not kept):
//!   Q4_1 blocks kept and widened a row at a time (98 MB resident, but the unpacking did
//!   not vectorise: 6–7 tokens/s) and F32 weights (616 MB, memory-bound: 12–13 tokens/s).
//!   `gemm`'s F16 path stayed the fastest.
//! - **`RAYON_NUM_THREADS`**: candle asks the OS for the physical core count (a
//!   `/proc/cpuinfo` read) on every matrix product unless this variable is set; measured,
//!   that costs about a fifth of the decode speed (17.5 vs 21.5 tokens/s). Setting it is
//!   the operator's choice (the library cannot set it safely, and it must not exceed
//!   [`LocalOptions::threads`] to avoid oversubscription).
//! - **Our own forward pass on `candle-nn`** rather than `candle-transformers`: the latter
//!   compiles about a hundred models (a much longer clean build), and its quantized llama
//!   offers F16 weights only through process-wide environment variables.
//! - **Default temperature 0.05, top_p 0.9** when the request sets none, instead of
//!   OpenAI's 1.0 (a 135M model rambles at temperature 1) or SmolLM2's recommended 0.2.
//!   The model file is unsure how to begin even the README's question: for "What is the
//!   capital of France?" the first token is "The" (15 %) or "L" (14 %), then "La", "Al",
//!   "Le", … (llama.cpp on the same file agrees, and puts "L" first), and "L" leads to
//!   "L'Étoile, …". top_p is applied after the temperature, as in `transformers` whose
//!   settings SmolLM2 recommends: at 0.2 only "The" and "L" survive it, and 37 of 100
//!   answers began with "L"; at 0.05, 15 of 100, and those went on to name Paris too.
//!   With the repetition penalty below, 80 of 80 answers named Paris in their first
//!   sentence at 0.05 (0.1: 38 of 40; 0.2: 36 of 40). `min_p` cannot separate a near-tie
//!   (0.1 at temperature 0.2: 15 of 20), so it is off by default. The price is variety:
//!   the same question mostly gets the same answer; a request's `temperature` changes
//!   that. Measurements in `docs/benchmarks-local.md`. Temperature 0 is greedy and exactly
//!   deterministic; a `seed` makes sampling reproducible. The defaults are
//!   [`LocalOptions`] fields.
//! - **Repetition penalty 1.1 over the last 64 tokens**, llama.cpp's default and its
//!   rule: each distinct token in the window has a positive logit divided by 1.1, a
//!   negative one multiplied. The window includes the prompt, as in llama.cpp's server:
//!   measured on the README question, penalising the answer's tokens only left 11 of 20
//!   answers naming Paris first (the "L" path went on "L'Étoile, la Marseillaise."),
//!   the prompt window 18 of 20. A continued prefix counts as answer, so a continuation
//!   is sampled as the uninterrupted answer was. OpenAI's `frequency_penalty` and
//!   `presence_penalty` (-2 to 2, default 0) apply when a request sends them, over the
//!   answer's tokens; other values are refused as an invalid request.
//! - **A loop ends the answer** with finish reason `length` ([`LocalOptions::stop_loops`]):
//!   a span of 1 to 32 tokens repeated back to back over the last 64 tokens or more, at
//!   least 4 copies ([`loops`] has the exact rule). At the old defaults (no penalty,
//!   temperature 0.2), 15 of 40 answers to the README question and 7 of 30 everyday
//!   answers looped until `max_tokens`; with the penalty none did, so the stop is a safety
//!   net. It costs 32 comparisons per token and no allocation.
//! - **Message contents are tokenized literally**: a user typing `<|im_end|>` gets text,
//!   not a turn boundary, so a conversation cannot forge a system turn.
//! - **Continuation** ([`providers::ChatRequest::assistant_prefix`]): the prompt is the
//!   template up to `<|im_start|>assistant\n` followed by the prefix, tokenized as one
//!   string, and only new text is emitted.
//!   Re-tokenizing a decoded prefix could in principle give other tokens than the ones
//!   generated (BPE picks one canonical split of a text; the model may have produced
//!   another). The tests cut greedy answers after several token counts and continue from
//!   the text: the result is identical, so the simple approach is kept. (The prompt runs
//!   through `gemm`'s matrix kernel and single tokens through its vector kernel, so the
//!   arithmetic is not bit-identical; a near-tie could still flip a greedy token.)

pub mod error;
pub mod loops;
mod model;
pub mod provider;
mod sampler;
pub mod tokenizer;

use std::path::PathBuf;

pub use error::LocalError;
pub use provider::LocalProvider;
pub use tokenizer::{DEFAULT_SYSTEM_PROMPT, TextTokenizer, Utf8Decoder};

/// The model id the gateway lists for the embedded model.
pub const MODEL_ID: &str = "smollm2";

/// The default model's file name.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where models are kept: `$UNBROKEN_MODEL_DIR`, else `~/.cache/unbroken/models`
/// (relative `.cache/unbroken/models` when there is no home directory).
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("UNBROKEN_MODEL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("unbroken").join("models")
}

/// The default model file, as `scripts/fetch-model` stores it:
/// [`default_model_dir`]`/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn default_model_path() -> PathBuf {
    default_model_dir().join(MODEL_FILE)
}

/// How the local model runs. Request fields override the defaults per answer.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalOptions {
    /// Threads for the forward passes, shared by all concurrent answers; `0` means one
    /// per available core. More threads than cores slows everything down.
    pub threads: usize,
    /// `max_tokens` when the request sets none.
    pub max_tokens: u32,
    /// Sampling temperature when the request sets none (0 = greedy).
    pub temperature: f32,
    /// Nucleus sampling mass when the request sets none (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    pub min_p: f32,
    /// llama.cpp's repetition penalty (1 = off): each distinct token among the last
    /// [`LocalOptions::repeat_last_n`] tokens of the context has a positive logit divided
    /// by it and a negative one multiplied by it.
    pub repeat_penalty: f32,
    /// How many of the latest tokens (prompt and answer) the repetition penalty covers
    /// (0 = off).
    pub repeat_last_n: usize,
    /// OpenAI's `frequency_penalty` (-2 to 2) when the request sets none.
    pub frequency_penalty: f32,
    /// OpenAI's `presence_penalty` (-2 to 2) when the request sets none.
    pub presence_penalty: f32,
    /// End an answer that has fallen into a loop ([`loops`]) with finish reason `length`.
    pub stop_loops: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            threads: 0,
            max_tokens: 512,
            temperature: 0.05,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            stop_loops: true,
        }
    }
}

impl LocalOptions {
    /// The thread count to use: [`LocalOptions::threads`], or the available cores for 0.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// Check the sampling settings.
    ///
    /// # Errors
    /// [`LocalError::Options`] naming the first field out of its range.
    pub fn validate(&self) -> Result<(), LocalError> {
        let check = |name: &str, value: f32, ok: bool| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(LocalError::Options(format!(
                    "{name} = {value} is out of range"
                )))
            }
        };
        check("temperature", self.temperature, self.temperature >= 0.0)?;
        check("top_p", self.top_p, (0.0..=1.0).contains(&self.top_p))?;
        check("min_p", self.min_p, (0.0..=1.0).contains(&self.min_p))?;
        check(
            "repeat_penalty",
            self.repeat_penalty,
            self.repeat_penalty > 0.0,
        )?;
        for (name, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            check(name, value, (-2.0..=2.0).contains(&value))?;
        }
        Ok(())
    }
}
