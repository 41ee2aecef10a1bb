//! BERT checkpoints stored as safetensors with a Hugging Face `config.json`
//! (all-MiniLM-L6-v2 and its family): their configuration, read by every runtime, and, with
//! the `candle` feature, an encoder on candle (CPU) returning the last hidden states.

use std::path::Path;

use rillet_common::{Result, RilletError};

use crate::model::read_json;

#[cfg(feature = "candle")]
mod encoder;
#[cfg(feature = "candle")]
pub use encoder::Bert;

/// The fields of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the hidden states (the embedding dimension).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input, in tokens.
    pub max_position_embeddings: usize,
    /// Token type (segment) vocabulary.
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// Read `config.json`. Only BERT with GELU and absolute positions is supported; other
    /// models are refused by name rather than computed wrongly.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = read_json(path)?;
        let bad = |what: String| RilletError::Model(format!("{}: {what}", path.display()));
        let size = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("no integer {key:?}")))
        };
        let text = |key: &str, default: &str| -> String {
            json.get(key)
                .and_then(|v| v.as_str())
                .unwrap_or(default)
                .to_string()
        };
        let model_type = text("model_type", "bert");
        if model_type != "bert" {
            return Err(bad(format!(
                "model_type {model_type:?} is not supported (bert only)"
            )));
        }
        let activation = text("hidden_act", "gelu");
        if activation != "gelu" {
            return Err(bad(format!(
                "hidden_act {activation:?} is not supported (gelu only)"
            )));
        }
        let positions = text("position_embedding_type", "absolute");
        if positions != "absolute" {
            return Err(bad(format!(
                "position_embedding_type {positions:?} is not supported (absolute only)"
            )));
        }
        let config = Self {
            vocab_size: size("vocab_size")?,
            hidden_size: size("hidden_size")?,
            num_hidden_layers: size("num_hidden_layers")?,
            num_attention_heads: size("num_attention_heads")?,
            intermediate_size: size("intermediate_size")?,
            max_position_embeddings: size("max_position_embeddings")?,
            type_vocab_size: size("type_vocab_size").unwrap_or(2),
            layer_norm_eps: json
                .get("layer_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-12),
        };
        if config.max_position_embeddings < 2 {
            return Err(bad(format!(
                "max_position_embeddings {} leaves no room for [CLS] and [SEP]",
                config.max_position_embeddings
            )));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        Ok(config)
    }
}
