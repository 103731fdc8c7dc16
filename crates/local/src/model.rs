//! The llama forward pass on candle, with weights dequantized to F16 once at load.
//!
//! [`Weights`] is read from a GGUF file (`general.architecture = "llama"`) and shared by
//! every generation; each generation owns a [`KvState`] (its KV cache). Activations, norms,
//! rotary embeddings and attention run in F32; only the matrix products read F16 weights
//! (their input is rounded to F16; `gemm` accumulates in F32 with runtime-dispatched
//! AVX2/FMA/F16C). Why F16 and not the file's Q4_1 blocks is explained in the crate docs.
//!
//! Layout conventions follow llama.cpp's GGUF: `attn_q`/`attn_k` are permuted for
//! interleaved ("GPT-J style") rotary embeddings, so [`candle_nn::rotary_emb::rope_i`] is
//! the matching kernel; a missing `output.weight` means tied embeddings.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Result as CandleResult, Tensor};
use candle_nn::kv_cache::KvCache;

use crate::error::LocalError;

/// The hyper-parameters the forward pass needs, read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) hidden: usize,
    pub(crate) layers: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) vocab: usize,
    pub(crate) context: usize,
    pub(crate) rms_eps: f64,
    pub(crate) rope_base: f32,
}

impl Config {
    fn from_gguf(content: &gguf_file::Content) -> Result<Self, LocalError> {
        let md = &content.metadata;
        let get = |key: &str| {
            md.get(key)
                .ok_or_else(|| LocalError::Format(format!("metadata key {key} is missing")))
        };
        let arch = get("general.architecture")?.to_string()?;
        if arch != "llama" {
            return Err(LocalError::Format(format!(
                "architecture {arch:?} is not supported (only llama)"
            )));
        }
        let int = |key: &str| -> Result<usize, LocalError> { Ok(get(key)?.to_u32()? as usize) };
        let hidden = int("llama.embedding_length")?;
        let heads = int("llama.attention.head_count")?;
        let kv_heads = int("llama.attention.head_count_kv")?;
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(LocalError::Format(format!(
                "inconsistent attention shape: {hidden} wide, {heads} heads, {kv_heads} kv heads"
            )));
        }
        let vocab = match md.get("llama.vocab_size") {
            Some(v) => v.to_u32()? as usize,
            None => get("tokenizer.ggml.tokens")?.to_vec()?.len(),
        };
        Ok(Config {
            hidden,
            layers: int("llama.block_count")?,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            vocab,
            context: int("llama.context_length")?,
            rms_eps: f64::from(get("llama.attention.layer_norm_rms_epsilon")?.to_f32()?),
            rope_base: match md.get("llama.rope.freq_base") {
                Some(v) => v.to_f32()?,
                None => 10_000.0,
            },
        })
    }
}

/// One transformer block's weights. Q, K and V are stacked into one matrix, as are the
/// gate and up projections: fewer, larger products are faster for a model this small.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    qkv: Tensor,
    out: Tensor,
    ffn_norm: Tensor,
    gate_up: Tensor,
    down: Tensor,
}

/// The model's weights, loaded once and shared (read-only) by every generation.
#[derive(Debug)]
pub(crate) struct Weights {
    pub(crate) config: Config,
    /// Token embeddings `(vocab, hidden)`, F16; also the output projection when tied.
    embedding: Tensor,
    /// The output projection `(vocab, hidden)`, F16 (`None`: tied to `embedding`).
    output: Option<Tensor>,
    final_norm: Tensor,
    blocks: Vec<Block>,
    /// Rotary tables `(context, head_dim / 2)`, F32.
    cos: Tensor,
    sin: Tensor,
}

/// The GGUF header plus an open reader on the file, as [`Weights::load`] and the tokenizer
/// both need them.
pub(crate) struct GgufFile {
    pub(crate) content: gguf_file::Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Open `path` and parse the GGUF header (metadata and tensor directory).
    pub(crate) fn open(path: &Path) -> Result<Self, LocalError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LocalError::MissingModel {
                    path: path.to_path_buf(),
                }
            } else {
                LocalError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)?;
        Ok(GgufFile { content, reader })
    }

    fn vector(&mut self, name: &str) -> Result<Tensor, LocalError> {
        let q = self.content.tensor(&mut self.reader, name, &Device::Cpu)?;
        Ok(q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
    }

    fn matrix(&mut self, name: &str) -> Result<Tensor, LocalError> {
        let q = self.content.tensor(&mut self.reader, name, &Device::Cpu)?;
        Ok(q.dequantize_f16(&Device::Cpu)?)
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}

impl Weights {
    /// Read every tensor: matrices are dequantized to F16, norms to F32.
    pub(crate) fn load(file: &mut GgufFile) -> Result<Self, LocalError> {
        let config = Config::from_gguf(&file.content)?;
        let embedding = file.matrix("token_embd.weight")?;
        let output = if file.has("output.weight") {
            Some(file.matrix("output.weight")?)
        } else {
            None
        };
        let final_norm = file.vector("output_norm.weight")?;
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            let qkv = [
                file.matrix(&name("attn_q.weight"))?,
                file.matrix(&name("attn_k.weight"))?,
                file.matrix(&name("attn_v.weight"))?,
            ];
            let gate_up = [
                file.matrix(&name("ffn_gate.weight"))?,
                file.matrix(&name("ffn_up.weight"))?,
            ];
            blocks.push(Block {
                attn_norm: file.vector(&name("attn_norm.weight"))?,
                qkv: Tensor::cat(&qkv, 0)?,
                out: file.matrix(&name("attn_output.weight"))?,
                ffn_norm: file.vector(&name("ffn_norm.weight"))?,
                gate_up: Tensor::cat(&gate_up, 0)?,
                down: file.matrix(&name("ffn_down.weight"))?,
            });
        }
        let (cos, sin) = rotary_tables(&config)?;
        let weights = Weights {
            config,
            embedding,
            output,
            final_norm,
            blocks,
            cos,
            sin,
        };
        weights.check_shapes()?;
        Ok(weights)
    }

    /// Bytes of weight matrices held in memory.
    pub(crate) fn matrix_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| bytes(&b.qkv) + bytes(&b.out) + bytes(&b.gate_up) + bytes(&b.down))
            .sum();
        blocks + bytes(&self.embedding) + self.output.as_ref().map_or(0, bytes)
    }

    fn check_shapes(&self) -> Result<(), LocalError> {
        let c = &self.config;
        let kv = c.kv_heads * c.head_dim;
        let expect = |name: &str, m: &Tensor, dims: (usize, usize)| {
            if m.dims() == [dims.0, dims.1] {
                Ok(())
            } else {
                Err(LocalError::Format(format!(
                    "tensor {name} has shape {:?}, expected {dims:?}",
                    m.dims()
                )))
            }
        };
        expect("token_embd", &self.embedding, (c.vocab, c.hidden))?;
        if let Some(output) = &self.output {
            expect("output", output, (c.vocab, c.hidden))?;
        }
        for b in &self.blocks {
            expect("attn_qkv", &b.qkv, (c.hidden + 2 * kv, c.hidden))?;
            expect("attn_output", &b.out, (c.hidden, c.hidden))?;
            let ffn = b.down.dim(1)?;
            expect("ffn_gate_up", &b.gate_up, (2 * ffn, c.hidden))?;
            expect("ffn_down", &b.down, (c.hidden, ffn))?;
        }
        Ok(())
    }

    /// Run `tokens` at positions `pos..pos + tokens.len()` through the model, appending
    /// their keys and values to `state`, and return the logits of the last position.
    pub(crate) fn forward(&self, tokens: &[u32], state: &mut KvState) -> CandleResult<Vec<f32>> {
        let c = &self.config;
        let t = tokens.len();
        let pos = state.position;
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embedding.index_select(&ids, 0)?.to_dtype(DType::F32)?; // (t, hidden)
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let mask = causal_mask(t, pos)?;
        let rep = c.heads / c.kv_heads;
        let kv = c.kv_heads * c.head_dim;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        for (block, cache) in self.blocks.iter().zip(state.caches.iter_mut()) {
            // Attention.
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, c.rms_eps as f32)?;
            let qkv = linear(&h, &block.qkv)?; // (t, hidden + 2 kv)
            let heads = |offset: usize, n: usize| -> CandleResult<Tensor> {
                qkv.narrow(1, offset, n * c.head_dim)?
                    .reshape((1, t, n, c.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = candle_nn::rotary_emb::rope_i(&heads(0, c.heads)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&heads(c.hidden, c.kv_heads)?, &cos, &sin)?;
            let v = heads(c.hidden + kv, c.kv_heads)?;
            let (k, v) = cache.append(&k, &v)?; // (1, kv_heads, pos + t, head_dim)
            let len = k.dim(2)?;
            // Grouped-query attention without copying K/V per query head: the `rep` query
            // heads sharing a KV head are consecutive, so fold them into the rows.
            let q = q.reshape((1, c.kv_heads, rep * t, c.head_dim))?;
            let att = (q.matmul(&k.t()?)? * scale)?; // (1, kv_heads, rep * t, len)
            let att = match &mask {
                Some(mask) => att
                    .reshape((1, c.heads, t, len))?
                    .broadcast_add(mask)?
                    .reshape((1, c.kv_heads, rep * t, len))?,
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att
                .matmul(&v)? // (1, kv_heads, rep * t, head_dim)
                .reshape((1, c.heads, t, c.head_dim))?
                .transpose(1, 2)?
                .reshape((t, c.hidden))?;
            x = (x + linear(&y, &block.out)?)?;

            // Feed-forward (SwiGLU).
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, c.rms_eps as f32)?;
            let gate_up = linear(&h, &block.gate_up)?;
            let ffn = gate_up.dim(1)? / 2;
            let gated = (gate_up.narrow(1, 0, ffn)?.silu()? * gate_up.narrow(1, ffn, ffn)?)?;
            x = (x + linear(&gated, &block.down)?)?;
        }
        state.position += t;
        let last = x.narrow(0, t - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, c.rms_eps as f32)?;
        let head = self.output.as_ref().unwrap_or(&self.embedding);
        linear(&last, head)?.squeeze(0)?.to_vec1::<f32>()
    }
}

/// `x (t, in)` F32 times `w (out, in)` F16, transposed: `(t, out)` F32.
fn linear(x: &Tensor, w: &Tensor) -> CandleResult<Tensor> {
    x.to_dtype(DType::F16)?
        .matmul(&w.t()?)?
        .to_dtype(DType::F32)
}

/// Additive causal mask `(t, pos + t)` for `t` new tokens after `pos` cached ones; `None`
/// for a single token, which may attend to everything before it.
fn causal_mask(t: usize, pos: usize) -> CandleResult<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let len = pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Some(Tensor::from_vec(mask, (t, len), &Device::Cpu)?))
}

fn rotary_tables(c: &Config) -> CandleResult<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / c.rope_base.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), &Device::Cpu)?;
    let positions = Tensor::arange(0u32, c.context as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((c.context, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// One generation's mutable state: the KV cache of every block and the next position.
#[derive(Debug, Clone)]
pub(crate) struct KvState {
    caches: Vec<KvCache>,
    position: usize,
}

impl KvState {
    /// An empty cache with room for `capacity` positions (it grows if needed).
    pub(crate) fn new(config: &Config, capacity: usize) -> Self {
        KvState {
            caches: (0..config.layers)
                .map(|_| KvCache::new(2, capacity.max(1)))
                .collect(),
            position: 0,
        }
    }

    /// How many positions are cached.
    pub(crate) fn position(&self) -> usize {
        self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    #[test]
    fn causal_mask_hides_the_future_only() {
        let mask = causal_mask(2, 1)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(mask[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(mask[1], vec![0.0, 0.0, 0.0]);
        assert!(causal_mask(1, 5).unwrap().is_none());
    }

    #[test]
    fn last_dim_softmax_is_what_attention_expects() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0]], &Device::Cpu).unwrap();
        let y = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let sum: f32 = y.sum(D::Minus1).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((sum - 1.0).abs() < 1e-6);
    }
}
