//! Tokenization: token ids and token counts under a Hugging Face `tokenizer.json` (any
//! model's tokenizer file) or one of OpenAI's BPE encodings, which are built in
//! (`o200k_base`, `cl100k_base`, `p50k_base`, `r50k_base`, or a model name such as
//! `gpt-4o`), so counting tokens for an LLM budget needs no download.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Array, ListBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, FieldRef};
use parking_lot::Mutex;
use rillet_common::{Result, RilletError};
use rillet_operator::ArrayFunction;
use tiktoken_rs::CoreBPE;

use crate::operator::{Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors};
use crate::text::{expect_text, strings};

/// Both tokenization operators.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(Tokenize)),
        Arc::new(OperatorFunction::new(CountTokens)),
    ]
}

/// A loaded tokenizer.
#[derive(Clone)]
pub enum Tokenizer {
    /// An OpenAI BPE encoding.
    Bpe(&'static CoreBPE),
    /// A Hugging Face tokenizer, with padding and truncation turned off (a count must
    /// be the text's, not the model's input length).
    HuggingFace(Arc<tokenizers::Tokenizer>),
}

/// Hugging Face tokenizers by file path: each file is parsed once per process.
static LOADED: LazyLock<Mutex<HashMap<String, Tokenizer>>> = LazyLock::new(Default::default);

impl Tokenizer {
    /// Resolve `name`: a built-in encoding, a model name, or a `tokenizer.json` path.
    ///
    /// ```
    /// use rillet_functions::tokens::Tokenizer;
    /// let bpe = Tokenizer::load("cl100k_base").unwrap();
    /// assert_eq!(bpe.encode("tiktoken is great!", false).unwrap(), vec![83, 1609, 5963, 374, 2294, 0]);
    /// assert!(Tokenizer::load("no-such-tokenizer").is_err());
    /// ```
    pub fn load(name: &str) -> Result<Self> {
        match name {
            "o200k_base" => return Ok(Self::Bpe(tiktoken_rs::o200k_base_singleton())),
            "cl100k_base" => return Ok(Self::Bpe(tiktoken_rs::cl100k_base_singleton())),
            "p50k_base" => return Ok(Self::Bpe(tiktoken_rs::p50k_base_singleton())),
            "r50k_base" | "gpt2" => return Ok(Self::Bpe(tiktoken_rs::r50k_base_singleton())),
            _ => {}
        }
        if let Some(loaded) = LOADED.lock().get(name) {
            return Ok(loaded.clone());
        }
        let path = std::path::Path::new(name);
        if path.is_dir() && path.join("tokenizer.json").is_file() {
            return Self::load(&path.join("tokenizer.json").display().to_string());
        }
        if path.is_file() {
            let mut tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| {
                RilletError::invalid_argument(format!("cannot load tokenizer {name}: {e}"))
            })?;
            tokenizer.with_padding(None);
            tokenizer.with_truncation(None).map_err(|e| {
                RilletError::invalid_argument(format!("cannot load tokenizer {name}: {e}"))
            })?;
            let loaded = Self::HuggingFace(Arc::new(tokenizer));
            LOADED.lock().insert(name.to_string(), loaded.clone());
            return Ok(loaded);
        }
        if let Ok(bpe) = tiktoken_rs::bpe_for_model(name) {
            return Ok(Self::Bpe(bpe));
        }
        Err(RilletError::invalid_argument(format!(
            "unknown tokenizer {name:?}: give a tokenizer.json path (or a directory holding one), \
             an encoding (o200k_base, cl100k_base, p50k_base, r50k_base) or an OpenAI model name"
        )))
    }

    /// Token ids of `text`; `add_special_tokens` adds a model's markers ([CLS], [SEP])
    /// for Hugging Face tokenizers and lets BPE encodings recognise special-token text.
    pub fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> std::result::Result<Vec<u32>, String> {
        match self {
            Self::Bpe(bpe) if add_special_tokens => Ok(bpe.encode_with_special_tokens(text)),
            Self::Bpe(bpe) => Ok(bpe.encode_ordinary(text)),
            Self::HuggingFace(tokenizer) => tokenizer
                .encode(text, add_special_tokens)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string()),
        }
    }
}

const PARAMS: &[Param] = &[
    Param::optional("tokenizer", ParamKind::Str, "o200k_base"),
    Param::optional("add_special_tokens", ParamKind::Bool, "false"),
    Param::ON_ERROR,
];

/// Each row's token ids; a tokenizer failure nulls the row with the reason.
fn encode_rows(call: &Call<'_>, errors: &mut RowErrors) -> Result<Vec<Option<Vec<u32>>>> {
    let tokenizer = Tokenizer::load(call.params.str("tokenizer")?)?;
    let special = call.params.bool("add_special_tokens")?;
    Ok(strings(call)
        .enumerate()
        .map(|(row, text)| {
            text.and_then(|text| match tokenizer.encode(text, special) {
                Ok(ids) => Some(ids),
                Err(reason) => {
                    errors.fail(row, format!("cannot tokenize: {reason}"));
                    None
                }
            })
        })
        .collect())
}

/// `text_tokenize(s, tokenizer, add_special_tokens, on_error)`: token ids, a
/// `list<uint32>`. The tokenizer is resolved when the plan is built, so an unknown name
/// or an unreadable file is reported before any data is read.
#[derive(Debug)]
pub struct Tokenize;

impl Operator for Tokenize {
    fn name(&self) -> &'static str {
        "text_tokenize"
    }

    fn params(&self) -> &'static [Param] {
        PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        Tokenizer::load(params.str("tokenizer")?)?;
        Ok(Field::new(
            self.name(),
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let rows = encode_rows(call, errors)?;
        let mut out = ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(Field::new(
            "item",
            DataType::UInt32,
            false,
        )));
        for ids in rows {
            match ids {
                Some(ids) => {
                    out.values().append_slice(&ids);
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        Ok(Arc::new(out.finish()))
    }
}

/// `text_count_tokens(s, tokenizer, add_special_tokens, on_error)`: how many tokens,
/// an `int64`.
#[derive(Debug)]
pub struct CountTokens;

impl Operator for CountTokens {
    fn name(&self) -> &'static str {
        "text_count_tokens"
    }

    fn params(&self) -> &'static [Param] {
        PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        Tokenizer::load(params.str("tokenizer")?)?;
        Ok(Field::new(self.name(), DataType::Int64, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let rows = encode_rows(call, errors)?;
        Ok(Arc::new(
            rows.into_iter()
                .map(|ids| ids.map(|ids| ids.len() as i64))
                .collect::<Int64Array>(),
        ))
    }
}
