//! [`LocalProvider`]: the [`Provider`] that answers with the embedded model.
//!
//! Each answer runs on its own OS thread (never on a tokio worker). The forward passes of
//! every answer run inside one shared rayon pool of [`LocalOptions::threads`] threads, so
//! concurrent answers share the cores instead of oversubscribing them. Deltas go to the
//! async side through a bounded channel: a slow reader pauses its generation, and a
//! dropped stream (closed channel) stops it before the next forward pass.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::stream;
use providers::{ChatRequest, Delta, DeltaStream, Provider, ProviderError, ProviderFuture};
use tokio::sync::{mpsc, watch};

use crate::error::LocalError;
use crate::loops::LoopDetector;
use crate::model::{GgufFile, KvState, Weights};
use crate::sampler::{Sampler, Settings};
use crate::tokenizer::{TextTokenizer, Utf8Decoder};
use crate::{LocalOptions, MODEL_ID};

/// Deltas buffered between a generation thread and its reader.
const CHANNEL_CAPACITY: usize = 16;

/// The embedded model as a [`Provider`]. Cheap to clone: clones share the weights, the
/// tokenizer and the thread pool.
#[derive(Clone)]
pub struct LocalProvider {
    inner: Arc<Inner>,
}

struct Inner {
    weights: Weights,
    tokenizer: TextTokenizer,
    pool: rayon::ThreadPool,
    options: LocalOptions,
    /// Decode steps (one forward pass for one new token) since load, across answers.
    decoded: AtomicU64,
    /// Generations running now.
    active: watch::Sender<usize>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("config", &self.inner.weights.config)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// Load a llama-architecture GGUF model (by default SmolLM2-135M-Instruct Q4_1, see
    /// [`crate::default_model_path`]), dequantizing its weights to F16.
    ///
    /// # Errors
    /// [`LocalError::MissingModel`] when the file does not exist (its message names
    /// `scripts/fetch-model`), [`LocalError::Format`] / [`LocalError::Tokenizer`] when it
    /// is not a model this provider runs, [`LocalError::Options`] for bad options.
    pub fn load(path: &Path, options: LocalOptions) -> Result<Self, LocalError> {
        let started = Instant::now();
        options.validate()?;
        let threads = options.effective_threads();
        let mut file = GgufFile::open(path)?;
        let tokenizer = TextTokenizer::from_gguf(&file.content)?;
        let weights = Weights::load(&mut file)?;
        if tokenizer.vocab_size() != weights.config.vocab {
            return Err(LocalError::Format(format!(
                "the tokenizer has {} tokens but the model {}",
                tokenizer.vocab_size(),
                weights.config.vocab
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("unbroken-local-{i}"))
            .build()
            .map_err(|e| LocalError::Options(format!("cannot start {threads} threads: {e}")))?;
        tracing::info!(
            model = MODEL_ID,
            path = %path.display(),
            threads,
            weight_mb = weights.matrix_bytes() / 1_000_000,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "local model loaded"
        );
        Ok(LocalProvider {
            inner: Arc::new(Inner {
                weights,
                tokenizer,
                pool,
                options,
                decoded: AtomicU64::new(0),
                active: watch::Sender::new(0),
            }),
        })
    }

    /// The tokenizer built from the model file.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.inner.tokenizer
    }

    /// The options the provider was loaded with.
    pub fn options(&self) -> &LocalOptions {
        &self.inner.options
    }

    /// The model's context length in tokens (prompt plus answer).
    pub fn context_length(&self) -> usize {
        self.inner.weights.config.context
    }

    /// Decode steps (one forward pass producing one new token) since load, over all
    /// answers. Lets tests and metrics see that a cancelled answer stopped computing.
    pub fn tokens_decoded(&self) -> u64 {
        self.inner.decoded.load(Ordering::Relaxed)
    }

    /// The number of generations running now, as a watch channel (graceful shutdown can
    /// wait for `0`).
    pub fn active_generations(&self) -> watch::Receiver<usize> {
        self.inner.active.subscribe()
    }

    fn start(&self, request: ChatRequest) -> Result<DeltaStream, ProviderError> {
        let inner = &self.inner;
        let options = &inner.options;
        let frequency_penalty = penalty(&request, "frequency_penalty")?;
        let presence_penalty = penalty(&request, "presence_penalty")?;
        let prefix = request.assistant_prefix.as_deref().unwrap_or("");
        let tokenize = |prefix: &str| {
            inner
                .tokenizer
                .chat_prompt(&request.messages, prefix)
                .map_err(|e| ProviderError::InvalidRequest(format!("cannot tokenize: {e}")))
        };
        let prompt = tokenize(prefix)?;
        let context = inner.weights.config.context;
        if prompt.len() >= context {
            return Err(ProviderError::InvalidRequest(format!(
                "the prompt has {} tokens; the local model's context is {context}",
                prompt.len()
            )));
        }
        // Where the answer's own tokens start: a prefix being continued is part of the
        // answer for the penalties and the loop rule, so a continued answer is sampled as
        // the uninterrupted one was.
        let answer_start = if prefix.is_empty() {
            prompt.len()
        } else {
            let bare = tokenize("")?;
            bare.iter().zip(&prompt).take_while(|(a, b)| a == b).count()
        };
        let requested = request.max_tokens.unwrap_or(options.max_tokens) as usize;
        let max_tokens = requested.min(context - prompt.len());
        let settings = Settings {
            temperature: request
                .temperature
                .map_or(options.temperature, |t| t as f32),
            top_p: request.top_p.map_or(options.top_p, |p| p as f32),
            min_p: options.min_p,
            repeat_penalty: options.repeat_penalty,
            repeat_last_n: options.repeat_last_n,
            frequency_penalty: frequency_penalty.unwrap_or(options.frequency_penalty),
            presence_penalty: presence_penalty.unwrap_or(options.presence_penalty),
        };
        let job = Job {
            inner: Arc::clone(inner),
            prompt,
            answer_start,
            max_tokens,
            sampler: Sampler::new(settings, request.seed),
        };
        let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("unbroken-local-answer".into())
            .spawn(move || job.run(tx))
            .map_err(|e| ProviderError::Connect(format!("local model: cannot start: {e}")))?;
        Ok(Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx))))
    }
}

impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn continuation(&self) -> providers::Continuation {
        // The prefix is appended to the prompt natively.
        providers::Continuation::AssistantMessage
    }

    fn stream(&self, request: ChatRequest) -> ProviderFuture<'_> {
        let started = self.start(request);
        Box::pin(async move { started })
    }
}

/// OpenAI's `frequency_penalty` or `presence_penalty` from the request's other fields:
/// `None` when absent or null, else a number from -2 to 2.
fn penalty(request: &ChatRequest, name: &str) -> Result<Option<f32>, ProviderError> {
    let Some(value) = request.extra.get(name).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match value.as_f64() {
        Some(x) if (-2.0..=2.0).contains(&x) => Ok(Some(x as f32)),
        Some(x) => Err(ProviderError::InvalidRequest(format!(
            "{name} must be between -2 and 2, got {x}"
        ))),
        None => Err(ProviderError::InvalidRequest(format!(
            "{name} must be a number, got {value}"
        ))),
    }
}

/// Counts a generation as active while it lives.
struct ActiveGuard<'a>(&'a watch::Sender<usize>);

impl<'a> ActiveGuard<'a> {
    fn new(active: &'a watch::Sender<usize>) -> Self {
        active.send_modify(|n| *n += 1);
        ActiveGuard(active)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One answer being generated, on its own thread.
struct Job {
    inner: Arc<Inner>,
    /// The prompt, ending with the answer's prefix when one is continued.
    prompt: Vec<u32>,
    /// Where the continued prefix starts in `prompt` (`prompt.len()` without one).
    answer_start: usize,
    max_tokens: usize,
    sampler: Sampler,
}

type Sender = mpsc::Sender<Result<Delta, ProviderError>>;

/// Why a generation loop ended early.
enum Stop {
    /// The reader dropped the stream.
    Cancelled,
    /// The model failed.
    Failed(String),
}

impl Job {
    fn run(self, tx: Sender) {
        let inner = Arc::clone(&self.inner);
        let _active = ActiveGuard::new(&inner.active);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.generate(&tx)))
            .unwrap_or_else(|_| Err(Stop::Failed("the local model panicked".into())));
        if let Err(Stop::Failed(message)) = outcome {
            tracing::warn!(error = %message, "local generation failed");
            let _ = tx.blocking_send(Err(ProviderError::Interrupted(format!(
                "local model: {message}"
            ))));
        }
    }

    fn generate(mut self, tx: &Sender) -> Result<(), Stop> {
        let inner = &*self.inner;
        let tokenizer = &inner.tokenizer;
        let send = |delta: Delta| tx.blocking_send(Ok(delta)).map_err(|_| Stop::Cancelled);
        let forward = |tokens: &[u32], state: &mut KvState| {
            inner
                .pool
                .install(|| inner.weights.forward(tokens, state))
                .map_err(|e| Stop::Failed(e.to_string()))
        };
        let mut state = KvState::new(&inner.weights.config, self.prompt.len() + self.max_tokens);
        let mut decoder = Utf8Decoder::default();
        let mut loops = LoopDetector::new();
        let (context, prefix) = self.prompt.split_at(self.answer_start);
        for &token in context {
            self.sampler.context(token);
        }
        for &token in prefix {
            self.sampler.answer(token);
            loops.push(token);
        }
        let mut generated = 0usize;
        let mut finish = "length";
        let mut looped = false;
        if self.max_tokens > 0 {
            if tx.is_closed() {
                return Err(Stop::Cancelled);
            }
            let mut logits = forward(&self.prompt, &mut state)?;
            loop {
                let token = self.sampler.sample(&mut logits);
                if tokenizer.is_stop(token) {
                    finish = "stop";
                    break;
                }
                self.sampler.answer(token);
                generated += 1;
                let text = decoder.push(tokenizer.token_bytes(token));
                if !text.is_empty() {
                    send(Delta::Text(text))?;
                }
                looped = loops.push(token) && inner.options.stop_loops;
                if generated >= self.max_tokens || looped {
                    break;
                }
                // A dropped stream stops the answer here, before the next forward pass.
                if tx.is_closed() {
                    return Err(Stop::Cancelled);
                }
                logits = forward(&[token], &mut state)?;
                inner.decoded.fetch_add(1, Ordering::Relaxed);
            }
        }
        let rest = decoder.finish();
        if !rest.is_empty() {
            send(Delta::Text(rest))?;
        }
        send(Delta::Usage {
            prompt_tokens: self.prompt.len() as u64,
            completion_tokens: generated as u64,
            cached_tokens: 0,
        })?;
        send(Delta::Finish {
            reason: finish.to_string(),
        })?;
        tracing::debug!(
            prompt_tokens = self.prompt.len(),
            completion_tokens = generated,
            cached = state.position(),
            finish,
            looped,
            "local generation done"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(extra: serde_json::Value) -> ChatRequest {
        ChatRequest {
            model: MODEL_ID.into(),
            messages: Vec::new(),
            temperature: None,
            top_p: None,
            max_tokens: None,
            seed: None,
            assistant_prefix: None,
            extra: extra.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn penalties_are_read_from_the_other_fields_and_checked() {
        let r = request(json!({"frequency_penalty": 0.5, "presence_penalty": null}));
        assert_eq!(penalty(&r, "frequency_penalty").ok(), Some(Some(0.5)));
        assert_eq!(penalty(&r, "presence_penalty").ok(), Some(None));
        assert_eq!(
            penalty(&request(json!({})), "presence_penalty").ok(),
            Some(None)
        );
        for edge in [-2.0, 2.0] {
            let r = request(json!({ "presence_penalty": edge }));
            assert_eq!(
                penalty(&r, "presence_penalty").ok(),
                Some(Some(edge as f32))
            );
        }
        for (value, message) in [
            (
                json!(2.01),
                "presence_penalty must be between -2 and 2, got 2.01",
            ),
            (
                json!(-7),
                "presence_penalty must be between -2 and 2, got -7",
            ),
            (json!("1"), "presence_penalty must be a number, got \"1\""),
            (json!([1]), "presence_penalty must be a number, got [1]"),
        ] {
            let r = request(json!({ "presence_penalty": value }));
            match penalty(&r, "presence_penalty") {
                Err(ProviderError::InvalidRequest(m)) => assert_eq!(m, message),
                other => panic!("{value}: {other:?}"),
            }
        }
    }
}
