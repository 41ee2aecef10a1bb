//! AI functions answered by a registered provider ([`crate::provider`]): `prompt`,
//! `extract`, `llm_classify`, `classify_image`, `provider_embed` and `transcribe`. The
//! rows of a batch are sent concurrently (bounded by the provider's `max_concurrency`); a
//! row whose request fails for good is null with the reason (or fails the job, per `on_error`).

use std::future::Future;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, StructArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use rillet_common::types::{ElementType, EmbeddingType};
use rillet_common::{Result, RilletError};
use rillet_functions::audio::codec::encode_wav;
use rillet_functions::audio::{expect_audio, map_waveforms};
use rillet_functions::image::{codec, expect_image, image_values_within};
use rillet_functions::input::string_at;
use rillet_functions::operator::{Call, Operator, Param, ParamKind, Params, RowErrors};
use rillet_functions::text::expect_text;
use serde_json::Value;

use crate::embed::embedding_array;
use crate::provider::{Provider, data_url, provider};

/// Run `future` from an operator's thread; from inside the runtime (a plan evaluated on
/// one of its threads), on a thread of its own.
fn block_on<T: Send>(future: impl Future<Output = T> + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope
                .spawn(|| rillet_operator::global_runtime().block_on(future))
                .join()
                .expect("a provider call panicked")
        })
    } else {
        rillet_operator::global_runtime().block_on(future)
    }
}

/// The text rows of the call's first input.
fn texts<'a>(call: &'a Call<'_>) -> Vec<Option<&'a str>> {
    let array = call.inputs[0].as_ref();
    (0..call.rows).map(|row| string_at(array, row)).collect()
}

/// `ask(row, input)` for every non-null row at once; failures become row errors.
fn per_row<I: Sync, T: Send, Fut>(
    inputs: &[Option<I>],
    errors: &mut RowErrors,
    ask: impl Fn(&I) -> Fut + Sync,
) -> Vec<Option<T>>
where
    Fut: Future<Output = std::result::Result<T, String>> + Send,
{
    let requests = inputs
        .iter()
        .enumerate()
        .filter_map(|(row, input)| input.as_ref().map(|input| (row, input)))
        .map(|(row, input)| {
            let ask = &ask;
            async move { (row, ask(input).await) }
        });
    let answers = block_on(futures::future::join_all(requests));
    let mut out: Vec<Option<T>> = (0..inputs.len()).map(|_| None).collect();
    for (row, answer) in answers {
        match answer {
            Ok(value) => out[row] = Some(value),
            Err(reason) => errors.fail(row, format!("row {row}: {reason}")),
        }
    }
    out
}

fn lines(params: &Params, name: &str) -> Result<Vec<String>> {
    let values: Vec<String> = params
        .str(name)?
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if values.is_empty() {
        return Err(RilletError::invalid_argument(format!(
            "{name}: give at least one"
        )));
    }
    Ok(values)
}

fn optional(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// `prompt(text, provider, model, system, json, temperature, on_error)`: the reply of a
/// chat model to each row's text (a rendered prompt).
#[derive(Debug)]
pub struct Prompt;

const PROMPT_PARAMS: &[Param] = &[
    Param::required("provider", ParamKind::Str),
    Param::required("model", ParamKind::Str),
    Param::optional("system", ParamKind::Str, ""),
    Param::optional("json", ParamKind::Bool, "false"),
    Param::optional("temperature", ParamKind::Float, "-1"),
    Param::ON_ERROR,
];

impl Operator for Prompt {
    fn name(&self) -> &'static str {
        "prompt"
    }

    fn params(&self) -> &'static [Param] {
        PROMPT_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        provider(params.str("provider")?)?;
        Ok(Field::new(self.name(), DataType::Utf8, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let p = provider(call.params.str("provider")?)?;
        let model = call.params.str("model")?;
        let system = optional(call.params.str("system")?);
        let json = call.params.bool("json")?;
        let temperature = Some(call.params.float("temperature")?).filter(|t| *t >= 0.0);
        let replies = per_row(&texts(call), errors, |text| {
            let (p, text) = (p.clone(), *text);
            async move {
                let reply = p.chat(model, system, text, json, temperature).await?;
                if json {
                    serde_json::from_str::<Value>(&reply)
                        .map_err(|e| format!("the reply is not JSON ({e}): {reply:?}"))?;
                }
                Ok(reply)
            }
        });
        Ok(Arc::new(StringArray::from(replies)))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(64)
    }
}

/// `extract(text, fields, provider, model, instructions, on_error)`: named fields pulled
/// out of each row's text by a chat model in JSON mode, as a struct of strings.
#[derive(Debug)]
pub struct Extract;

const EXTRACT_PARAMS: &[Param] = &[
    Param::required("fields", ParamKind::Str),
    Param::required("provider", ParamKind::Str),
    Param::required("model", ParamKind::Str),
    Param::optional("instructions", ParamKind::Str, ""),
    Param::ON_ERROR,
];

fn extract_fields(names: &[String]) -> Fields {
    names
        .iter()
        .map(|n| Field::new(n, DataType::Utf8, true))
        .collect()
}

/// A JSON value as a column string: text as is, other scalars printed, null as null.
fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Operator for Extract {
    fn name(&self) -> &'static str {
        "extract"
    }

    fn params(&self) -> &'static [Param] {
        EXTRACT_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        provider(params.str("provider")?)?;
        let names = lines(params, "fields")?;
        Ok(Field::new(
            self.name(),
            DataType::Struct(extract_fields(&names)),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let p = provider(call.params.str("provider")?)?;
        let model = call.params.str("model")?;
        let names = lines(call.params, "fields")?;
        let system = format!(
            "Extract these fields from the user's text: {}. Reply with one JSON object whose \
             keys are exactly those field names; use null for a field the text does not \
             give. {}",
            names.join(", "),
            call.params.str("instructions")?
        );
        let system = system.trim_end();
        let objects = per_row(&texts(call), errors, |text| {
            let (p, text) = (p.clone(), *text);
            async move {
                let reply = p.chat(model, Some(system), text, true, Some(0.0)).await?;
                match serde_json::from_str::<Value>(&reply) {
                    Ok(Value::Object(map)) => Ok(map),
                    _ => Err(format!("the reply is not a JSON object: {reply:?}")),
                }
            }
        });
        let columns: Vec<ArrayRef> = names
            .iter()
            .map(|name| {
                let values: Vec<Option<String>> = objects
                    .iter()
                    .map(|o| o.as_ref().and_then(|m| m.get(name)).and_then(json_text))
                    .collect();
                Arc::new(StringArray::from(values)) as ArrayRef
            })
            .collect();
        let nulls = NullBuffer::from(objects.iter().map(Option::is_some).collect::<Vec<_>>());
        Ok(Arc::new(StructArray::try_new(
            extract_fields(&names),
            columns,
            Some(nulls),
        )?))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(64)
    }
}

/// `llm_classify(text, labels, provider, model, instructions, on_error)`: one of `labels`
/// per row, chosen by a chat model. A reply naming none of the labels is a row error.
#[derive(Debug)]
pub struct LlmClassify;

const CLASSIFY_PARAMS: &[Param] = &[
    Param::required("labels", ParamKind::Str),
    Param::required("provider", ParamKind::Str),
    Param::required("model", ParamKind::Str),
    Param::optional("instructions", ParamKind::Str, ""),
    Param::ON_ERROR,
];

/// The label a reply names: the whole reply (ignoring case, spaces and a final full stop),
/// or the one label it mentions.
fn label_in(reply: &str, labels: &[String]) -> Option<String> {
    let clean = reply.trim().trim_end_matches('.').trim().to_lowercase();
    if let Some(label) = labels.iter().find(|l| l.to_lowercase() == clean) {
        return Some(label.clone());
    }
    let words: Vec<&str> = clean
        .split(|c: char| !c.is_alphanumeric() && c != '-' && c != '_')
        .collect();
    let mentioned: Vec<&String> = labels
        .iter()
        .filter(|l| words.contains(&l.to_lowercase().as_str()))
        .collect();
    match mentioned.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// The system message asking for one of `labels` for the user's `what` (text, image).
fn classify_system(what: &str, labels: &[String], params: &Params) -> Result<String> {
    let system = format!(
        "Classify the user's {what}. Reply with exactly one of these labels and nothing \
         else: {}. {}",
        labels.join(", "),
        params.str("instructions")?
    );
    Ok(system.trim_end().to_string())
}

impl Operator for LlmClassify {
    fn name(&self) -> &'static str {
        "llm_classify"
    }

    fn params(&self) -> &'static [Param] {
        CLASSIFY_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        provider(params.str("provider")?)?;
        lines(params, "labels")?;
        Ok(Field::new(self.name(), DataType::Utf8, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let p = provider(call.params.str("provider")?)?;
        let model = call.params.str("model")?;
        let labels = lines(call.params, "labels")?;
        let system = classify_system("text", &labels, call.params)?;
        let (system, labels) = (system.as_str(), &labels);
        let chosen = per_row(&texts(call), errors, |text| {
            let (p, text) = (p.clone(), *text);
            async move {
                let reply = p.chat(model, Some(system), text, false, Some(0.0)).await?;
                label_in(&reply, labels)
                    .ok_or_else(|| format!("the reply {reply:?} names none of the labels"))
            }
        });
        Ok(Arc::new(StringArray::from(chosen)))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(64)
    }
}

/// `classify_image(image, labels, provider, model, instructions, max_side, on_error)`:
/// one of `labels` per image, chosen by a vision chat model. Each image (decoded, or
/// decoded from bytes, a File or a path) is shrunk to fit `max_side` pixels, encoded as
/// JPEG (PNG when it has alpha) and sent as a `data:` URL. A reply naming none of the
/// labels, or an image that cannot be read, is a row error.
///
/// Zero-shot classification by embeddings would need an image-text model (CLIP-like),
/// which Rillet does not ship; a provider is the way to classify images.
#[derive(Debug)]
pub struct ClassifyImage;

const CLASSIFY_IMAGE_PARAMS: &[Param] = &[
    Param::required("labels", ParamKind::Str),
    Param::required("provider", ParamKind::Str),
    Param::required("model", ParamKind::Str),
    Param::optional("instructions", ParamKind::Str, ""),
    Param::optional("max_side", ParamKind::Int, "1024"),
    Param::ON_ERROR,
];

/// `image` shrunk to fit `max_side` and encoded for a chat request, with its MIME type.
fn image_for_chat(
    image: image::DynamicImage,
    max_side: u32,
) -> std::result::Result<(Vec<u8>, &'static str), String> {
    let image = if image.width().max(image.height()) > max_side {
        image.resize(max_side, max_side, image::imageops::FilterType::Triangle)
    } else {
        image
    };
    if image.color().has_alpha() {
        Ok((
            codec::encode(&image, image::ImageFormat::Png, 0)?,
            "image/png",
        ))
    } else {
        Ok((
            codec::encode(&image, image::ImageFormat::Jpeg, 90)?,
            "image/jpeg",
        ))
    }
}

impl Operator for ClassifyImage {
    fn name(&self) -> &'static str {
        "classify_image"
    }

    fn params(&self) -> &'static [Param] {
        CLASSIFY_IMAGE_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        provider(params.str("provider")?)?;
        lines(params, "labels")?;
        max_side(params)?;
        Ok(Field::new(self.name(), DataType::Utf8, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let p = provider(call.params.str("provider")?)?;
        let model = call.params.str("model")?;
        let labels = lines(call.params, "labels")?;
        let system = classify_system("image", &labels, call.params)?;
        let (system, labels) = (system.as_str(), &labels);
        let side = max_side(call.params)?;
        // Each image as the data URL its request carries.
        let urls = image_values_within(self.name(), call, errors, Some((side, side)), |pixels| {
            let (bytes, mime) = image_for_chat(pixels.into_dynamic(), side)?;
            Ok(data_url(&bytes, mime))
        })?;
        let chosen = per_row(&urls, errors, |url| {
            let (p, url) = (p.clone(), url.clone());
            async move {
                let question = "Classify this image.";
                let reply = p
                    .chat_about_image(model, Some(system), question, &url, Some(0.0))
                    .await?;
                label_in(&reply, labels)
                    .ok_or_else(|| format!("the reply {reply:?} names none of the labels"))
            }
        });
        Ok(Arc::new(StringArray::from(chosen)))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(16)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }

    fn shrinks_images(&self) -> bool {
        true
    }
}

fn max_side(params: &Params) -> Result<u32> {
    let side = params.int("max_side")?;
    u32::try_from(side)
        .ok()
        .filter(|s| (16..=8192).contains(s))
        .ok_or_else(|| {
            RilletError::invalid_argument(format!(
                "classify_image: max_side must be 16 to 8192 pixels, not {side}"
            ))
        })
}

/// `provider_embed(text, provider, model, dimensions, on_error)`: embeddings from a
/// provider's `/v1/embeddings`, one request per batch. `dimensions` 0 asks the provider
/// once while planning.
#[derive(Debug)]
pub struct ProviderEmbed;

const EMBED_PARAMS: &[Param] = &[
    Param::required("provider", ParamKind::Str),
    Param::required("model", ParamKind::Str),
    Param::optional("dimensions", ParamKind::Int, "0"),
    Param::ON_ERROR,
];

fn dimensions(p: &Provider, model: &str, params: &Params) -> Result<usize> {
    match params.int("dimensions")? {
        given if given > 0 => Ok(given as usize),
        _ => block_on(p.embedding_dimensions(model))
            .map_err(|e| RilletError::invalid_argument(format!("provider_embed: {e}"))),
    }
}

impl Operator for ProviderEmbed {
    fn name(&self) -> &'static str {
        "provider_embed"
    }

    fn params(&self) -> &'static [Param] {
        EMBED_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        let p = provider(params.str("provider")?)?;
        let dim = dimensions(&p, params.str("model")?, params)?;
        Ok(EmbeddingType::new(ElementType::F32, dim).field(self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let p = provider(call.params.str("provider")?)?;
        let model = call.params.str("model")?;
        let dim = dimensions(&p, model, call.params)?;
        let rows = texts(call);
        let present: Vec<&str> = rows.iter().flatten().copied().collect();
        let mut vectors = match block_on(p.embeddings(model, &present)) {
            Ok(vectors) => vectors.into_iter(),
            Err(reason) => {
                // The batch's one request failed: every row carries the reason.
                for (row, text) in rows.iter().enumerate() {
                    if text.is_some() {
                        errors.fail(row, format!("row {row}: {reason}"));
                    }
                }
                Vec::new().into_iter()
            }
        };
        let vectors: Vec<Option<Vec<f32>>> = rows
            .iter()
            .enumerate()
            .map(|(row, text)| match text.and_then(|_| vectors.next()) {
                Some(v) if v.len() != dim => {
                    errors.fail(
                        row,
                        format!("row {row}: {} values, expected {dim}", v.len()),
                    );
                    None
                }
                other => other,
            })
            .collect();
        embedding_array(dim, &vectors)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(256)
    }
}

/// `transcribe(audio, provider, model, language, on_error)`: each clip sent as a 16-bit
/// WAV file to a provider's `/v1/audio/transcriptions`; its text.
#[derive(Debug)]
pub struct Transcribe;

const TRANSCRIBE_PARAMS: &[Param] = &[
    Param::required("provider", ParamKind::Str),
    Param::required("model", ParamKind::Str),
    Param::optional("language", ParamKind::Str, ""),
    Param::ON_ERROR,
];

impl Operator for Transcribe {
    fn name(&self) -> &'static str {
        "transcribe"
    }

    fn params(&self) -> &'static [Param] {
        TRANSCRIBE_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        provider(params.str("provider")?)?;
        Ok(Field::new(self.name(), DataType::Utf8, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let p = provider(call.params.str("provider")?)?;
        let model = call.params.str("model")?;
        let language = optional(call.params.str("language")?);
        let files = map_waveforms(self.name(), call, errors, |wave, _| {
            Ok(encode_wav(&wave, false))
        })?;
        let texts = per_row(&files, errors, |wav| {
            let p = p.clone();
            let wav = wav.clone();
            async move { p.transcribe(model, wav, language).await }
        });
        Ok(Arc::new(StringArray::from(texts)))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_names_a_label_exactly_or_by_mentioning_one() {
        let labels = vec!["positive".to_string(), "negative".to_string()];
        assert_eq!(
            label_in(" Positive.\n", &labels).as_deref(),
            Some("positive")
        );
        assert_eq!(
            label_in("The sentiment is negative", &labels).as_deref(),
            Some("negative")
        );
        assert_eq!(label_in("positive or negative", &labels), None);
        assert_eq!(label_in("unsure", &labels), None);
    }

    #[test]
    fn images_for_chat_are_shrunk_to_fit_and_keep_alpha_as_png() {
        let rgb = image::DynamicImage::new_rgb8(2000, 1000);
        let (bytes, mime) = image_for_chat(rgb, 500).unwrap();
        assert_eq!(mime, "image/jpeg");
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (500, 250));

        let rgba = image::DynamicImage::new_rgba8(30, 20);
        let (bytes, mime) = image_for_chat(rgba, 500).unwrap();
        assert_eq!(mime, "image/png");
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!(
            (back.width(), back.height(), back.color().has_alpha()),
            (30, 20, true)
        );
    }
}
