//! `embed_text`: sentence embeddings from a BERT-family encoder, on ONNX Runtime (`.onnx`)
//! or, with the `candle` feature, on candle (safetensors), mean-pooled over real tokens (padding excluded by the attention
//! mask) and L2-normalised.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef};
use ort::value::TensorElementType;
use parking_lot::Mutex;
use rillet_common::types::{ElementType, EmbeddingType};
use rillet_common::{Result, RilletError};
use rillet_functions::input::string_at;
use rillet_functions::operator::{Call, Operator, Param, ParamKind, Params, RowErrors};
use rillet_functions::text::expect_text;
use rillet_functions::tokens::Tokenizer;

#[cfg(feature = "candle")]
use crate::bert::Bert;
use crate::model::{resolve, shared};
use crate::onnx::{Input, OnnxModel, Parallelism};

#[cfg(feature = "candle")]
/// Tokens (rows × longest row) per forward pass on candle: rows are sorted by length and
/// cut into groups of about this many tokens, so short texts are not padded to long ones'
/// length.
const CANDLE_TOKENS_PER_PASS: usize = 8192;

/// Tokens per forward pass on ONNX Runtime, whose single-threaded sessions (one per core)
/// take the passes side by side. Small passes keep a pass's activations in the core's
/// cache: on two cores paraphrase-MiniLM-L3-v2 embedded the benchmark's 2,672 chunks in
/// 9.4 s with 512-token passes, against 12.3 s with 8,192-token passes on one two-thread
/// session. Passes of 256 to 1,024 tokens measured within 1% of each other, 2,048 were
/// slower (bench/RESULTS.md, "Text encoder passes").
const ONNX_TOKENS_PER_PASS: usize = 512;

/// Texts whose embeddings an encoder keeps (about 2 KB each for a 384-dimension model
/// with 128-token texts), so that text repeated across batches runs through the model once.
const RECENT_TEXTS: usize = 4096;

/// The mean-pooled embeddings of the texts an encoder embedded last, by token ids: real
/// corpora repeat whole passages (licence text, boilerplate, quoted replies), and a repeat
/// costs a lookup instead of a forward pass. Bounded: the oldest entry goes first. A
/// repeat gets the vector computed the first time, in that batch's padding; a fresh run
/// of the same text in another batch would differ only in the last bits (under 1e-4).
struct RecentEmbeddings {
    capacity: usize,
    by_tokens: HashMap<Arc<[u32]>, Arc<[f32]>>,
    oldest_first: VecDeque<Arc<[u32]>>,
}

impl RecentEmbeddings {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_tokens: HashMap::new(),
            oldest_first: VecDeque::new(),
        }
    }

    fn get(&self, tokens: &[u32]) -> Option<Arc<[f32]>> {
        self.by_tokens.get(tokens).cloned()
    }

    fn put(&mut self, tokens: &[u32], pooled: Arc<[f32]>) {
        if self.by_tokens.contains_key(tokens) {
            return;
        }
        if self.oldest_first.len() >= self.capacity
            && let Some(oldest) = self.oldest_first.pop_front()
        {
            self.by_tokens.remove(&oldest);
        }
        let tokens: Arc<[u32]> = tokens.into();
        self.by_tokens.insert(tokens.clone(), pooled);
        self.oldest_first.push_back(tokens);
    }
}

/// What computes hidden states from token ids.
#[derive(Debug)]
enum Backend {
    #[cfg(feature = "candle")]
    Candle(Bert),
    Onnx {
        model: OnnxModel,
        /// Graph input names: token ids, attention mask and token types (the last two when
        /// the graph takes them).
        ids: String,
        mask: Option<String>,
        types: Option<String>,
        /// Index of the `rows × tokens × dim` output.
        hidden: usize,
    },
}

impl Backend {
    fn tokens_per_pass(&self) -> usize {
        match self {
            #[cfg(feature = "candle")]
            Backend::Candle(_) => CANDLE_TOKENS_PER_PASS,
            Backend::Onnx { .. } => ONNX_TOKENS_PER_PASS,
        }
    }
}

/// The ONNX graph of a text encoder, in its model directory.
const ONNX_FILE: &str = "model.onnx";

/// Which runtime computes an encoder's hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// ONNX Runtime, from `model.onnx`.
    OnnxRuntime,
    /// candle, from `config.json` + `model.safetensors` (BERT family); only in builds with
    /// the `candle` feature.
    Candle,
}

/// A BERT checkpoint on candle: the backend, its dimension and token limit.
fn candle_backend(dir: &Path) -> Result<(Backend, usize, usize)> {
    if !dir.join("model.safetensors").is_file() {
        return Err(RilletError::Model(format!(
            "{}: no model.safetensors (and no {ONNX_FILE})",
            dir.display()
        )));
    }
    candle_encoder(dir)
}

#[cfg(not(feature = "candle"))]
fn candle_encoder(dir: &Path) -> Result<(Backend, usize, usize)> {
    Err(RilletError::Model(format!(
        "{dir}: this Rillet runs BERT checkpoints (model.safetensors) through an ONNX export \
         beside them ({ONNX_FILE}), as it was built without the `candle` feature: write the \
         export with `python -m rillet.models --export {dir}` (Python's rl.ai functions \
         export a checkpoint into their cache on their own; SQL and the rillet command read \
         the directory as it is)",
        dir = dir.display()
    )))
}

#[cfg(feature = "candle")]
fn candle_encoder(dir: &Path) -> Result<(Backend, usize, usize)> {
    let bert = Bert::load(dir)?;
    let config = bert.config();
    let (dim, limit) = (config.hidden_size, config.max_position_embeddings.min(512));
    Ok((Backend::Candle(bert), dim, limit))
}

/// An ONNX graph on ONNX Runtime: the backend, its dimension and token limit (the
/// position table of a BERT checkpoint beside it, when there is one).
fn onnx_backend(dir: &Path) -> Result<(Backend, usize, usize)> {
    let onnx = dir.join(ONNX_FILE);
    if !onnx.is_file() {
        return Err(RilletError::Model(format!(
            "{}: no {ONNX_FILE}",
            dir.display()
        )));
    }
    let model = OnnxModel::load_with(&onnx, Parallelism::Sessions)?;
    let input = |name: &str| {
        model
            .inputs()
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.name.clone())
    };
    let ids = input("input_ids")
        .ok_or_else(|| RilletError::Model(format!("{}: no input_ids input", onnx.display())))?;
    let (mask, types) = (input("attention_mask"), input("token_type_ids"));
    let (hidden, dim) = model
        .outputs()
        .iter()
        .enumerate()
        .find_map(|(i, p)| {
            (p.element == Some(TensorElementType::Float32) && p.shape.len() == 3 && p.shape[2] > 0)
                .then(|| (i, p.shape[2] as usize))
        })
        .ok_or_else(|| {
            RilletError::Model(format!(
                "{}: no rows × tokens × dim float output to pool",
                onnx.display()
            ))
        })?;
    let limit = crate::bert::BertConfig::from_file(&dir.join("config.json"))
        .map(|c| c.max_position_embeddings.min(512))
        .unwrap_or(512);
    let backend = Backend::Onnx {
        model,
        ids,
        mask,
        types,
        hidden,
    };
    Ok((backend, dim, limit))
}

/// A text encoder with its tokenizer, loaded once per process and model directory.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    backend: Backend,
    dim: usize,
    max_tokens: usize,
    recent: Mutex<RecentEmbeddings>,
    /// Texts run through the model so far (repeats served from `recent` do not count).
    texts_run: AtomicUsize,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("backend", &self.backend)
            .field("dim", &self.dim)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// The encoder of model `name_or_path` (see [`resolve`]), loaded on first use and then
    /// shared by every caller in the process.
    pub fn shared(name_or_path: &str) -> Result<Arc<Self>> {
        let dir = resolve(name_or_path)?;
        shared("text-encoder", &dir, || Self::load(&dir))
    }

    /// Load from a directory holding `tokenizer.json` and `model.onnx` (ONNX Runtime), or
    /// `config.json` + `model.safetensors` (candle, in builds with the `candle` feature).
    /// With both, ONNX Runtime runs it: `python -m rillet.models` exports the BERT
    /// checkpoints it fetches to ONNX, which runs each layer ~2.5× faster than candle on
    /// these CPUs.
    pub fn load(dir: &Path) -> Result<Self> {
        let runtime = if dir.join(ONNX_FILE).is_file() {
            Runtime::OnnxRuntime
        } else {
            Runtime::Candle
        };
        Self::load_on(dir, runtime)
    }

    /// Load from `dir` on the given runtime (see [`TextEncoder::load`] for the files).
    ///
    /// ```no_run
    /// use rillet_ai::embed::{Runtime, TextEncoder};
    /// let dir = rillet_ai::model::resolve("all-minilm-l6-v2").unwrap();
    /// let encoder = TextEncoder::load_on(&dir, Runtime::OnnxRuntime).unwrap();
    /// assert_eq!(encoder.dim(), 384);
    /// ```
    pub fn load_on(dir: &Path, runtime: Runtime) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(RilletError::Model(format!(
                "{}: no tokenizer.json beside the model",
                dir.display()
            )));
        }
        let tokenizer = Tokenizer::load(&tokenizer_path.display().to_string())?;
        let limit = tokenizer_limit(&tokenizer_path).unwrap_or(512);
        let (backend, dim, model_limit) = match runtime {
            Runtime::Candle => candle_backend(dir)?,
            Runtime::OnnxRuntime => onnx_backend(dir)?,
        };
        Ok(Self {
            tokenizer,
            backend,
            dim,
            max_tokens: limit.min(model_limit),
            recent: Mutex::new(RecentEmbeddings::new(RECENT_TEXTS)),
            texts_run: AtomicUsize::new(0),
        })
    }

    /// The runtime computing the hidden states.
    pub fn runtime(&self) -> Runtime {
        match self.backend {
            #[cfg(feature = "candle")]
            Backend::Candle(_) => Runtime::Candle,
            Backend::Onnx { .. } => Runtime::OnnxRuntime,
        }
    }

    /// Length of the embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The embedding of each text (`dim` values each), mean-pooled over its tokens and,
    /// when `normalize`, scaled to unit length. Texts longer than the model's limit are
    /// truncated to it.
    ///
    /// ```no_run
    /// let encoder = rillet_ai::embed::TextEncoder::shared("all-minilm-l6-v2").unwrap();
    /// let v = encoder.embed(&["A man is eating food."], true).unwrap();
    /// assert_eq!(v[0].len(), 384);
    /// ```
    pub fn embed(&self, texts: &[&str], normalize: bool) -> Result<Vec<Vec<f32>>> {
        let encoded = texts
            .iter()
            .map(|text| self.tokenize(text).map_err(RilletError::invalid_data))
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokens(&encoded, normalize)
    }

    /// The token ids of `text` as the model takes them: with its markers ([CLS] ... [SEP]),
    /// truncated to the model's limit. A tokenizer failure is the reason, as text.
    pub fn tokenize(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        let mut ids = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| format!("tokenizer: {e}"))?;
        if ids.len() > self.max_tokens {
            // Keep the leading [CLS] and content, and the closing [SEP].
            let last = *ids.last().expect("longer than the limit");
            ids.truncate(self.max_tokens - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// [`embed`](Self::embed) for texts already tokenized by [`tokenize`](Self::tokenize).
    /// Each distinct text runs through the model once: a repeat within `encoded`, or of a
    /// text embedded recently (see [`RECENT_TEXTS`]), gets the same vector.
    pub fn embed_tokens(&self, encoded: &[Vec<u32>], normalize: bool) -> Result<Vec<Vec<f32>>> {
        let mut pooled: Vec<Option<Arc<[f32]>>> = vec![None; encoded.len()];
        // The texts to run: the first of each distinct one not embedded recently.
        let mut first_of: HashMap<&[u32], usize> = HashMap::new();
        let mut to_run: Vec<usize> = Vec::new();
        {
            let recent = self.recent.lock();
            for (i, tokens) in encoded.iter().enumerate() {
                if let Some(vector) = recent.get(tokens) {
                    pooled[i] = Some(vector);
                } else if let std::collections::hash_map::Entry::Vacant(slot) =
                    first_of.entry(tokens.as_slice())
                {
                    slot.insert(i);
                    to_run.push(i);
                }
            }
        }
        to_run.sort_by_key(|&i| encoded[i].len());
        let groups = passes(
            &to_run,
            |i| encoded[i].len(),
            self.backend.tokens_per_pass(),
        );
        let run = |group: &&[usize]| self.embed_group(group.iter().map(|&i| encoded[i].as_slice()));
        // The groups are consecutive runs of `to_run`: their vectors, in order, are those
        // of `to_run`.
        let vectors: Vec<Vec<f32>> = match &self.backend {
            Backend::Onnx { model, .. } => model.run_each(&groups, run)?,
            #[cfg(feature = "candle")]
            Backend::Candle(_) => groups.iter().map(run).collect::<Result<_>>()?,
        }
        .into_iter()
        .flatten()
        .collect();
        {
            let mut recent = self.recent.lock();
            for (&i, vector) in to_run.iter().zip(vectors) {
                let vector: Arc<[f32]> = vector.into();
                recent.put(&encoded[i], vector.clone());
                pooled[i] = Some(vector);
            }
        }
        Ok(encoded
            .iter()
            .enumerate()
            .map(|(i, tokens)| {
                let vector = pooled[i].as_deref().unwrap_or_else(|| {
                    pooled[first_of[tokens.as_slice()]].as_deref().expect("run")
                });
                let mut vector = vector.to_vec();
                if normalize {
                    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    vector.iter_mut().for_each(|v| *v /= norm);
                }
                vector
            })
            .collect())
    }

    /// Mean-pooled hidden states of one padded group of token sequences.
    fn embed_group<'a>(
        &self,
        sequences: impl ExactSizeIterator<Item = &'a [u32]> + Clone,
    ) -> Result<Vec<Vec<f32>>> {
        let rows = sequences.len();
        self.texts_run.fetch_add(rows, Ordering::Relaxed);
        let tokens = sequences.clone().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; rows * tokens];
        let mut mask = vec![0u32; rows * tokens];
        for (row, sequence) in sequences.enumerate() {
            ids[row * tokens..row * tokens + sequence.len()].copy_from_slice(sequence);
            mask[row * tokens..row * tokens + sequence.len()].fill(1);
        }
        let pool = |hidden: &[f32]| -> Vec<Vec<f32>> {
            (0..rows)
                .map(|row| mean_pool(hidden, &mask, row, tokens, self.dim))
                .collect()
        };
        match &self.backend {
            #[cfg(feature = "candle")]
            Backend::Candle(bert) => Ok(pool(&bert.forward(&ids, &mask, rows, tokens)?)),
            Backend::Onnx {
                model,
                ids: ids_name,
                mask: mask_name,
                types,
                hidden,
            } => {
                let shape = vec![rows as i64, tokens as i64];
                let as_i64 = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
                let mut inputs = vec![(ids_name.clone(), Input::I64(shape.clone(), as_i64(&ids)))];
                if let Some(name) = mask_name {
                    inputs.push((name.clone(), Input::I64(shape.clone(), as_i64(&mask))));
                }
                if let Some(name) = types {
                    inputs.push((
                        name.clone(),
                        Input::I64(shape.clone(), vec![0; rows * tokens]),
                    ));
                }
                // Pooled where ONNX Runtime left the hidden states, not copied out first.
                model.run_read(inputs, &[*hidden], |outputs| {
                    let output = &outputs[0];
                    if output.shape != [rows as i64, tokens as i64, self.dim as i64] {
                        return Err(RilletError::Model(format!(
                            "{}: hidden states of shape {:?}, expected [{rows}, {tokens}, {}]",
                            model.path().display(),
                            output.shape,
                            self.dim
                        )));
                    }
                    Ok(pool(output.data))
                })
            }
        }
    }
}

/// `sorted` (ordered by length) cut into consecutive groups of at most `budget` tokens
/// once padded to their longest (last) member; a member longer than the budget is a group
/// of its own.
fn passes<T: Copy>(sorted: &[T], length: impl Fn(T) -> usize, budget: usize) -> Vec<&[T]> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < sorted.len() {
        let mut end = start + 1;
        while end < sorted.len() && (end + 1 - start) * length(sorted[end]) <= budget {
            end += 1;
        }
        groups.push(&sorted[start..end]);
        start = end;
    }
    groups
}

/// The mean of row `row`'s hidden states over its real tokens (`mask` 1).
fn mean_pool(hidden: &[f32], mask: &[u32], row: usize, tokens: usize, dim: usize) -> Vec<f32> {
    let mut sum = vec![0f32; dim];
    let mut count = 0f32;
    for t in 0..tokens {
        if mask[row * tokens + t] == 0 {
            continue;
        }
        let start = (row * tokens + t) * dim;
        for (s, h) in sum.iter_mut().zip(&hidden[start..start + dim]) {
            *s += h;
        }
        count += 1.0;
    }
    sum.iter_mut().for_each(|s| *s /= count.max(1.0));
    sum
}

/// The truncation length a `tokenizer.json` declares, if any.
fn tokenizer_limit(path: &Path) -> Option<usize> {
    let json = crate::model::read_json(path).ok()?;
    json.get("truncation")?
        .get("max_length")?
        .as_u64()
        .map(|n| n as usize)
        .filter(|&n| n >= 2)
}

/// The embedding of each string row of `call`'s input: `None` for null rows and for rows
/// the tokenizer refuses (recorded in `errors`).
fn embed_rows(
    encoder: &TextEncoder,
    call: &Call<'_>,
    errors: &mut RowErrors,
    normalize: bool,
) -> Result<Vec<Option<Vec<f32>>>> {
    let array = call.inputs[0].as_ref();
    let tokens: Vec<Option<Vec<u32>>> = (0..call.rows)
        .map(|row| {
            let text = string_at(array, row)?;
            encoder
                .tokenize(text)
                .map_err(|reason| errors.fail(row, format!("row {row}: {reason}")))
                .ok()
        })
        .collect();
    let encoded: Vec<Vec<u32>> = tokens.iter().flatten().cloned().collect();
    let mut vectors = encoder.embed_tokens(&encoded, normalize)?.into_iter();
    Ok(tokens
        .iter()
        .map(|t| {
            t.as_ref()
                .map(|_| vectors.next().expect("one vector per text"))
        })
        .collect())
}

/// An `Embedding[f32; dim]` column of `rows` (null where a row has no vector).
pub(crate) fn embedding_array(dim: usize, rows: &[Option<Vec<f32>>]) -> Result<ArrayRef> {
    let mut values = Vec::with_capacity(rows.len() * dim);
    for row in rows {
        match row {
            Some(vector) => values.extend_from_slice(vector),
            None => values.extend(std::iter::repeat_n(0f32, dim)),
        }
    }
    let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
    let item = match EmbeddingType::new(ElementType::F32, dim).storage_type() {
        DataType::FixedSizeList(item, _) => item,
        _ => unreachable!("embeddings are fixed-size lists"),
    };
    let list = FixedSizeListArray::try_new(
        item,
        dim as i32,
        Arc::new(Float32Array::from(values)),
        Some(nulls),
    )?;
    Ok(Arc::new(list))
}

/// `embed_text(text, model, normalize, on_error)`: one embedding per string row.
#[derive(Debug)]
pub struct EmbedText;

const EMBED_PARAMS: &[Param] = &[
    Param::optional("model", ParamKind::Str, "all-minilm-l6-v2"),
    Param::optional("normalize", ParamKind::Bool, "true"),
    Param::ON_ERROR,
];

impl Operator for EmbedText {
    fn name(&self) -> &'static str {
        "embed_text"
    }

    fn params(&self) -> &'static [Param] {
        EMBED_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        let encoder = TextEncoder::shared(params.str("model")?)?;
        Ok(EmbeddingType::new(ElementType::F32, encoder.dim()).field(self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let encoder = TextEncoder::shared(call.params.str("model")?)?;
        let normalize = call.params.bool("normalize")?;
        let rows = embed_rows(&encoder, call, errors, normalize)?;
        embedding_array(encoder.dim(), &rows)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(256)
    }
}

/// `classify_text(text, labels, model, template, on_error)`: zero-shot classification by
/// embeddings. Each label becomes a sentence through `template` (`{}` is replaced by the
/// label); a row gets the label whose sentence embedding is closest (cosine) to its own, as
/// struct{label, score}. `labels` is newline-separated (the Python API joins a list).
#[derive(Debug)]
pub struct ClassifyText;

const CLASSIFY_PARAMS: &[Param] = &[
    Param::required("labels", ParamKind::Str),
    Param::optional("model", ParamKind::Str, "all-minilm-l6-v2"),
    Param::optional("template", ParamKind::Str, "This text is about {}."),
    Param::ON_ERROR,
];

fn labels(params: &Params) -> Result<Vec<String>> {
    let labels: Vec<String> = params
        .str("labels")?
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if labels.len() < 2 {
        return Err(RilletError::invalid_argument(format!(
            "classify_text needs at least two labels, got {labels:?}"
        )));
    }
    Ok(labels)
}

fn classification_fields() -> arrow::datatypes::Fields {
    arrow::datatypes::Fields::from(vec![
        Field::new("label", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
    ])
}

impl Operator for ClassifyText {
    fn name(&self) -> &'static str {
        "classify_text"
    }

    fn params(&self) -> &'static [Param] {
        CLASSIFY_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        labels(params)?;
        // The model loads on the first call (shown as the operator waiting for "model
        // loading"), not while planning; here it only has to exist.
        resolve(params.str("model")?)?;
        Ok(Field::new(
            self.name(),
            DataType::Struct(classification_fields()),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let encoder = TextEncoder::shared(call.params.str("model")?)?;
        let labels = labels(call.params)?;
        let template = call.params.str("template")?;
        let sentences: Vec<String> = labels
            .iter()
            .map(|label| {
                if template.contains("{}") {
                    template.replace("{}", label)
                } else {
                    label.clone()
                }
            })
            .collect();
        let sentence_refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
        let label_vectors = encoder.embed(&sentence_refs, true)?;
        let rows = embed_rows(&encoder, call, errors, true)?;
        let (mut names, mut scores) =
            (Vec::with_capacity(call.rows), Vec::with_capacity(call.rows));
        for row in &rows {
            let Some(v) = row else {
                names.push(String::new());
                scores.push(0f32);
                continue;
            };
            let (best, score) = label_vectors
                .iter()
                .map(|l| l.iter().zip(v).map(|(a, b)| a * b).sum::<f32>())
                .enumerate()
                .fold((0, f32::MIN), |best, x| if x.1 > best.1 { x } else { best });
            names.push(labels[best].clone());
            scores.push(score);
        }
        let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
        let structs = arrow::array::StructArray::try_new(
            classification_fields(),
            vec![
                Arc::new(arrow::array::StringArray::from(names)),
                Arc::new(Float32Array::from(scores)),
            ],
            Some(nulls),
        )?;
        Ok(Arc::new(structs))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    const PAIR: [&str; 2] = ["A man is eating food.", "A man is eating a piece of bread."];

    #[cfg(feature = "candle")]
    const RUNTIMES: &[Runtime] = &[Runtime::Candle, Runtime::OnnxRuntime];
    #[cfg(not(feature = "candle"))]
    const RUNTIMES: &[Runtime] = &[Runtime::OnnxRuntime];

    #[test]
    fn minilm_gives_the_published_similarity_on_each_runtime_built_in() {
        // `python -m rillet.models` exports the checkpoint to ONNX beside it.
        let dir = resolve("all-minilm-l6-v2").unwrap();
        assert_eq!(
            TextEncoder::shared("all-minilm-l6-v2").unwrap().runtime(),
            Runtime::OnnxRuntime,
            "{} holds the ONNX export: fetch with `python -m rillet.models`",
            dir.display()
        );
        let mut vectors = Vec::new();
        for &runtime in RUNTIMES {
            let encoder = TextEncoder::load_on(&dir, runtime).unwrap();
            assert_eq!(encoder.dim(), 384);
            let v = encoder.embed(&PAIR, true).unwrap();
            let cos = cosine(&v[0], &v[1]);
            assert!((cos - 0.7553).abs() < 0.001, "{runtime:?}: cosine {cos}");
            let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
            vectors.push(v);
        }
        // With candle built in: its vectors and ONNX Runtime's agree.
        for pair in vectors.windows(2) {
            for (a, b) in pair[0].iter().zip(&pair[1]) {
                assert!(cosine(a, b) > 0.9999);
            }
        }
    }

    #[cfg(not(feature = "candle"))]
    #[test]
    fn a_checkpoint_without_its_export_says_how_to_export_it() {
        let dir = tempfile::tempdir().unwrap();
        let model = resolve("all-minilm-l6-v2").unwrap();
        for name in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::os::unix::fs::symlink(model.join(name), dir.path().join(name)).unwrap();
        }
        let err = TextEncoder::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "python -m rillet.models --export {}",
                dir.path().display()
            )),
            "{err}"
        );
    }

    #[test]
    fn padding_and_batch_order_do_not_change_an_embedding() {
        // Encoders of their own: a shared one could serve the second call from its
        // recent embeddings.
        let dir = resolve("all-minilm-l6-v2").unwrap();
        let long =
            "a much longer sentence that makes every other row in its group padded ".repeat(4);
        let alone = TextEncoder::load(&dir)
            .unwrap()
            .embed(&[PAIR[0]], false)
            .unwrap();
        let together = TextEncoder::load(&dir)
            .unwrap()
            .embed(&[&long, PAIR[0], "x"], false)
            .unwrap();
        let diff = alone[0]
            .iter()
            .zip(&together[1])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "largest difference {diff}");
    }

    #[test]
    fn each_distinct_text_runs_through_the_model_once() {
        let dir = resolve("paraphrase-minilm-l3-v2").unwrap();
        let encoder = TextEncoder::load(&dir).unwrap();
        let [a, b] = PAIR;
        let first = encoder.embed(&[a, b, a, a], true).unwrap();
        assert_eq!(encoder.texts_run.load(Ordering::Relaxed), 2);
        assert_eq!(first[0], first[2]);
        assert_eq!(first[0], first[3]);
        assert_ne!(first[0], first[1]);
        // `b` was embedded by the last call; only the new text runs.
        let second = encoder.embed(&["A new sentence.", b], true).unwrap();
        assert_eq!(encoder.texts_run.load(Ordering::Relaxed), 3);
        assert_eq!(second[1], first[1]);
        // Unnormalised, a repeat is the same pooled vector, not the normalised one.
        let raw = encoder.embed(&[b], false).unwrap();
        let norm = raw[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() > 1e-3, "pooled, not normalised: {norm}");
        let rescaled: Vec<f32> = raw[0].iter().map(|v| v / norm).collect();
        assert!(
            rescaled
                .iter()
                .zip(&first[1])
                .all(|(x, y)| (x - y).abs() < 1e-6)
        );
    }

    #[test]
    fn recent_embeddings_forget_the_oldest_text_first() {
        let mut recent = RecentEmbeddings::new(2);
        let vector: Arc<[f32]> = vec![1.0].into();
        recent.put(&[1], vector.clone());
        recent.put(&[2], vector.clone());
        recent.put(&[1], vector.clone()); // already there: no new entry
        recent.put(&[3], vector.clone());
        assert!(recent.get(&[1]).is_none());
        assert!(recent.get(&[2]).is_some() && recent.get(&[3]).is_some());
        assert_eq!(recent.oldest_first.len(), 2);
    }

    #[test]
    fn text_past_the_model_limit_is_truncated_not_an_error() {
        let encoder = TextEncoder::shared("all-minilm-l6-v2").unwrap();
        let huge = "word ".repeat(5000);
        let v = encoder.embed(&[&huge], true).unwrap();
        assert_eq!(v[0].len(), 384);
        assert!(v[0].iter().all(|x| x.is_finite()));
    }

    #[test]
    fn passes_hold_at_most_the_budget_once_padded() {
        let lengths = [2, 3, 3, 4, 5, 40];
        // 2+3+3 padded to 3 is 9 tokens (adding the 4 would make 16); 4 and 5 padded to 5
        // are 10. A member over the budget is alone.
        let expected: Vec<&[usize]> = vec![&[2, 3, 3], &[4, 5], &[40]];
        assert_eq!(passes(&lengths, |n| n, 12), expected);
        assert!(passes(&[] as &[usize], |n| n, 12).is_empty());
    }

    #[test]
    fn texts_split_over_the_sessions_come_back_in_their_order() {
        // Enough texts of mixed lengths for many passes on every session, each distinct.
        let texts: Vec<String> = (0..60)
            .map(|i| format!("text number {i} {}", "with more words ".repeat(i % 13)))
            .collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let dir = resolve("paraphrase-minilm-l3-v2").unwrap();
        let together = TextEncoder::load(&dir).unwrap();
        assert!(
            matches!(&together.backend, Backend::Onnx { model, .. } if model.parallelism() == crate::model::cores())
        );
        let vectors = together.embed(&texts, true).unwrap();
        assert_eq!(together.texts_run.load(Ordering::Relaxed), texts.len());
        let alone = TextEncoder::load(&dir).unwrap();
        for (text, vector) in texts.iter().zip(&vectors) {
            let own = alone.embed(&[text], true).unwrap().remove(0);
            let diff = own
                .iter()
                .zip(vector)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{text:?}: largest difference {diff}");
        }
    }

    #[test]
    fn paraphrase_minilm_on_onnx_runtime_agrees_with_its_own_pooled_output() {
        let encoder = TextEncoder::shared("paraphrase-minilm-l3-v2").unwrap();
        assert_eq!(encoder.dim(), 384);
        let v = encoder.embed(&PAIR, false).unwrap();
        // The graph also computes the sentence embedding itself (its last output): the
        // pooling here must agree with it.
        #[allow(irrefutable_let_patterns)] // without candle, ONNX is the only backend
        let Backend::Onnx {
            model, ids, mask, ..
        } = &encoder.backend
        else {
            panic!("an ONNX model runs on ONNX Runtime");
        };
        let tokens: Vec<i64> = encoder
            .tokenizer
            .encode(PAIR[1], true)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        let shape = vec![1, tokens.len() as i64];
        let pooled_output = model.outputs().len() - 1;
        let reference = model
            .run(
                vec![
                    (ids.clone(), Input::I64(shape.clone(), tokens.clone())),
                    (
                        mask.clone().unwrap(),
                        Input::I64(shape, vec![1; tokens.len()]),
                    ),
                ],
                &[pooled_output],
            )
            .unwrap()
            .remove(0);
        assert_eq!(reference.shape, vec![1, 384]);
        let diff = reference
            .data
            .iter()
            .zip(&v[1])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-4,
            "largest difference from the graph's own pooling: {diff}"
        );
        let cos = cosine(&v[0], &v[1]);
        assert!(
            cos > 0.5 && cos < 0.99,
            "a paraphrase pair is similar, not equal: {cos}"
        );
    }

    #[test]
    fn an_unknown_model_says_how_to_fetch_it() {
        let err = TextEncoder::shared("no-such-model")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("python -m rillet.models no-such-model"),
            "{err}"
        );
    }
}
