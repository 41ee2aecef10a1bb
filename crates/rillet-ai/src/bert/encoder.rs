//! A BERT encoder on candle (CPU), built with the `candle` feature. It returns the last
//! hidden states; pooling is the caller's.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use rillet_common::{Result, RilletError};

use super::BertConfig;

fn candle_error(e: candle_core::Error) -> RilletError {
    RilletError::Model(format!("candle: {e}"))
}

#[derive(Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A BERT encoder with its weights loaded.
#[derive(Debug)]
pub struct Bert {
    config: BertConfig,
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    /// Load the encoder from a directory holding `config.json` and `model.safetensors`
    /// (weights with or without a `bert.` prefix).
    pub fn load(dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights)
            .map_err(|e| RilletError::Model(format!("{}: {e}", weights.display())))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .map_err(candle_error)?;
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        Self::from_weights(config, vb)
            .map_err(|e| RilletError::Model(format!("{}: {e}", weights.display())))
    }

    fn from_weights(config: BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let e = vb.pp("embeddings");
        let words = embedding(config.vocab_size, h, e.pp("word_embeddings"))?;
        let positions = embedding(
            config.max_position_embeddings,
            h,
            e.pp("position_embeddings"),
        )?;
        let token_types = embedding(config.type_vocab_size, h, e.pp("token_type_embeddings"))?;
        let embedding_norm = layer_norm(h, eps, e.pp("LayerNorm"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                Ok(Layer {
                    query: linear(h, h, a.pp("self.query"))?,
                    key: linear(h, h, a.pp("self.key"))?,
                    value: linear(h, h, a.pp("self.value"))?,
                    attention_out: linear(h, h, a.pp("output.dense"))?,
                    attention_norm: layer_norm(h, eps, a.pp("output.LayerNorm"))?,
                    intermediate: linear(h, config.intermediate_size, l.pp("intermediate.dense"))?,
                    output: linear(config.intermediate_size, h, l.pp("output.dense"))?,
                    output_norm: layer_norm(h, eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            config,
            words,
            positions,
            token_types,
            embedding_norm,
            layers,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Last hidden states, `rows × tokens × hidden_size` row-major, for `rows` sequences of
    /// `tokens` token ids each (padded; `mask` is 1 for real tokens, 0 for padding).
    pub fn forward(
        &self,
        ids: &[u32],
        mask: &[u32],
        rows: usize,
        tokens: usize,
    ) -> Result<Vec<f32>> {
        self.forward_tensors(ids, mask, rows, tokens)
            .map_err(candle_error)
    }

    fn forward_tensors(
        &self,
        ids: &[u32],
        mask: &[u32],
        rows: usize,
        tokens: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let device = Device::Cpu;
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let head_dim = h / heads;
        let ids = Tensor::from_slice(ids, (rows, tokens), &device)?;
        let types = Tensor::zeros((rows, tokens), DType::U32, &device)?;
        let positions = Tensor::arange(0u32, tokens as u32, &device)?;
        let x = self
            .words
            .forward(&ids)?
            .broadcast_add(&self.positions.forward(&positions)?)?
            .add(&self.token_types.forward(&types)?)?;
        let mut x = self.embedding_norm.forward(&x)?;
        // Padding gets a large negative score so softmax gives it no weight.
        let bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m == 0 { -10_000.0 } else { 0.0 })
            .collect();
        let bias = Tensor::from_vec(bias, (rows, 1, 1, tokens), &device)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((rows, tokens, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        for layer in &self.layers {
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((rows, tokens, h))?;
            let attended = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&context)? + &x)?)?;
            let inner = layer.intermediate.forward(&attended)?.gelu_erf()?;
            x = layer
                .output_norm
                .forward(&(layer.output.forward(&inner)? + &attended)?)?;
        }
        debug_assert_eq!(x.dims(), &[rows, tokens, h]);
        x.flatten_all()?.to_vec1::<f32>()
    }
}
