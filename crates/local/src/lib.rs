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
//! - `sampler` (private): greedy, temperature and nucleus sampling.
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
//! - **Default temperature 0.2, top_p 0.9** when the request sets none (SmolLM2's own
//!   recommendation) instead of OpenAI's 1.0: a 135M model rambles at temperature 1.
//!   Temperature 0 is greedy and exactly deterministic; a `seed` makes sampling
//!   reproducible. Both defaults are [`LocalOptions`] fields.
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
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            threads: 0,
            max_tokens: 512,
            temperature: 0.2,
            top_p: 0.9,
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
}
