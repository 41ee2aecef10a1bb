//! Audio operators: decode and encode, resampling and channel mixing, metadata and
//! validity, splitting by duration or by ranges, silence detection and log-mel features.
//!
//! Every operator that takes audio accepts a decoded `Audio` column or encoded content
//! (bytes, a `File`, a path) in any container symphonia reads (WAV, FLAC, MP3, Ogg Vorbis,
//! MP4/AAC, MKV), decoding on the fly in the latter case.

pub mod codec;
pub mod dsp;

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Float64Array, Float64Builder,
    Int64Builder, LargeListArray, ListArray, StringBuilder, StructArray, StructBuilder,
    UInt16Array, UInt16Builder, UInt32Array, UInt32Builder, UInt64Builder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float32Type};
use rillet_common::types::{
    AudioType, ClipType, ElementType, MultimodalType, TensorType, display_type, same_layout,
};
use rillet_common::{Result, RilletError};
use rillet_runtime::ArrayFunction;

use self::codec::{DEFAULT_MAX_DECODED_BYTES, Probe};
use crate::input::{EncodedColumn, RowFailure, is_encoded_input};
use crate::operator::{
    Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors, row_values,
};
use crate::tensor::TensorBuilder;

/// Rows per call for operators that hold decoded audio: a few minutes of audio each.
const AUDIO_BATCH_ROWS: usize = 8;

/// Every audio operator, ready to register.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(Decode)),
        Arc::new(OperatorFunction::new(Encode)),
        Arc::new(OperatorFunction::new(Resample)),
        Arc::new(OperatorFunction::new(ToMono)),
        Arc::new(OperatorFunction::new(Standardize)),
        Arc::new(OperatorFunction::new(Metadata)),
        Arc::new(OperatorFunction::new(Duration)),
        Arc::new(OperatorFunction::new(IsValid)),
        Arc::new(OperatorFunction::new(SplitByDuration)),
        Arc::new(OperatorFunction::new(SplitByRanges)),
        Arc::new(OperatorFunction::new(DetectSilence)),
        Arc::new(OperatorFunction::new(MelSpectrogram)),
    ]
}

/// Decoded audio of one row: interleaved f32 samples, borrowed from a column or owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform<'a> {
    /// Samples per second.
    pub rate: u32,
    /// Channel count (interleaving stride).
    pub channels: u16,
    /// Interleaved samples, `frames × channels`.
    pub samples: Cow<'a, [f32]>,
}

impl Waveform<'static> {
    /// Owned samples.
    pub fn new(rate: u32, channels: u16, samples: Vec<f32>) -> Self {
        Self {
            rate,
            channels,
            samples: Cow::Owned(samples),
        }
    }
}

impl Waveform<'_> {
    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1) as usize
    }

    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        self.frames() as f64 * 1000.0 / self.rate as f64
    }

    /// A copy that owns its samples.
    pub fn to_owned_waveform(&self) -> Waveform<'static> {
        Waveform {
            rate: self.rate,
            channels: self.channels,
            samples: Cow::Owned(self.samples.to_vec()),
        }
    }
}

/// A decoded `Audio` column.
struct AudioColumn<'a> {
    array: &'a StructArray,
    rates: &'a UInt32Array,
    channels: &'a UInt16Array,
    data: &'a LargeListArray,
    values: &'a [f32],
}

impl<'a> AudioColumn<'a> {
    fn try_new(array: &'a ArrayRef) -> Result<Self> {
        let bad =
            || RilletError::invalid_argument(format!("not an Audio column: {}", array.data_type()));
        let array = array.as_struct_opt().ok_or_else(bad)?;
        let rates = array.column(0).as_primitive_opt().ok_or_else(bad)?;
        let channels = array.column(1).as_primitive_opt().ok_or_else(bad)?;
        let data = array.column(2).as_list_opt::<i64>().ok_or_else(bad)?;
        let values = data
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(bad)?
            .values();
        Ok(Self {
            array,
            rates,
            channels,
            data,
            values,
        })
    }

    fn get(&self, row: usize) -> std::result::Result<Option<Waveform<'a>>, String> {
        if self.array.is_null(row) {
            return Ok(None);
        }
        let (rate, channels) = (self.rates.value(row), self.channels.value(row));
        let offsets = self.data.value_offsets();
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        if rate == 0 || channels == 0 || (end - start) % channels as usize != 0 {
            return Err(format!(
                "malformed audio value: {rate} Hz, {channels} channels, {} samples",
                end - start
            ));
        }
        Ok(Some(Waveform {
            rate,
            channels,
            samples: Cow::Borrowed(&self.values[start..end]),
        }))
    }
}

/// True if `field` is a decoded Audio column.
fn is_audio(field: &Field) -> bool {
    matches!(MultimodalType::of_field(field), Some(MultimodalType::Audio))
        || same_layout(field.data_type(), &AudioType::storage_type())
}

/// Check that `field` is an audio input (decoded `Audio` or encoded content).
pub fn expect_audio(operator: &str, field: &Field) -> Result<()> {
    if is_audio(field) || is_encoded_input(field) {
        Ok(())
    } else {
        Err(RilletError::invalid_argument(format!(
            "{operator}: input must be Audio, encoded audio bytes, a File or a path; column {:?} is {}",
            field.name(),
            display_type(field)
        )))
    }
}

/// An audio input column of either form.
enum AudioInput<'a> {
    Decoded(AudioColumn<'a>),
    Encoded(EncodedColumn<'a>),
}

/// Header facts of one row.
struct Facts {
    probe: Probe,
    /// Codec and container are unknown for audio that is already decoded.
    encoded: bool,
}

impl<'a> AudioInput<'a> {
    fn try_new(operator: &str, array: &'a ArrayRef) -> Result<Self> {
        if is_audio(&Field::new("input", array.data_type().clone(), true)) {
            Ok(Self::Decoded(AudioColumn::try_new(array)?))
        } else {
            Ok(Self::Encoded(EncodedColumn::try_new(
                operator,
                array,
                "Audio or encoded audio",
            )?))
        }
    }

    fn identity(&self, row: usize) -> String {
        match self {
            Self::Decoded(_) => format!("row {row}"),
            Self::Encoded(column) => column.identity(row),
        }
    }

    fn uri(&self, row: usize) -> Option<&'a str> {
        match self {
            Self::Decoded(_) => None,
            Self::Encoded(column) => column.uri(row),
        }
    }

    /// The waveform of `row`, decoding encoded content (capped at `max_bytes`).
    fn get(
        &self,
        row: usize,
        max_bytes: u64,
    ) -> std::result::Result<Option<Waveform<'a>>, RowFailure> {
        match self {
            Self::Decoded(column) => column.get(row).map_err(RowFailure::Data),
            Self::Encoded(column) => match column.get(row)? {
                None => Ok(None),
                Some(bytes) => {
                    codec::decode(&bytes, column.extension(row).as_deref(), max_bytes, None)
                        .map(Some)
                        .map_err(|reason| {
                            RowFailure::Data(format!("{}: {reason}", column.identity(row)))
                        })
                }
            },
        }
    }

    /// The audio of `row` from `start_ms` to `end_ms`: decoded audio as it is, encoded
    /// content decoded only that far (see [`codec::decode_span`]).
    fn span(
        &self,
        row: usize,
        max_bytes: u64,
        (start_ms, end_ms): (f64, f64),
    ) -> std::result::Result<Option<codec::Span<'a>>, RowFailure> {
        match self {
            Self::Decoded(column) => {
                Ok(column
                    .get(row)
                    .map_err(RowFailure::Data)?
                    .map(|audio| codec::Span {
                        total_frames: audio.frames() as u64,
                        audio,
                        first_frame: 0,
                    }))
            }
            Self::Encoded(column) => match column.get(row)? {
                None => Ok(None),
                Some(bytes) => codec::decode_span(
                    &bytes,
                    column.extension(row).as_deref(),
                    max_bytes,
                    start_ms,
                    end_ms,
                )
                .map(Some)
                .map_err(|reason| RowFailure::Data(format!("{}: {reason}", column.identity(row)))),
            },
        }
    }

    /// Header facts of `row`, without decoding samples of encoded content.
    fn facts(&self, row: usize) -> std::result::Result<Option<Facts>, RowFailure> {
        match self {
            Self::Decoded(column) => {
                Ok(column.get(row).map_err(RowFailure::Data)?.map(|w| Facts {
                    probe: Probe {
                        container: "",
                        codec: "",
                        sample_rate: w.rate,
                        channels: w.channels,
                        frames: w.frames() as u64,
                    },
                    encoded: false,
                }))
            }
            Self::Encoded(column) => match column.get(row)? {
                None => Ok(None),
                Some(bytes) => codec::probe(&bytes, column.extension(row).as_deref())
                    .map(|probe| {
                        Some(Facts {
                            probe,
                            encoded: true,
                        })
                    })
                    .map_err(|reason| {
                        RowFailure::Data(format!("{}: {reason}", column.identity(row)))
                    }),
            },
        }
    }
}

/// One value per row of `input` (see [`row_values`]).
fn per_row<'a, T, R>(
    input: &AudioInput<'a>,
    call: &Call<'_>,
    errors: &mut RowErrors,
    mut fetch: impl FnMut(&AudioInput<'a>, usize) -> std::result::Result<Option<T>, RowFailure>,
    f: impl FnMut(T, usize) -> std::result::Result<R, String>,
) -> Result<Vec<Option<R>>> {
    row_values(
        call.rows,
        errors,
        |row| input.identity(row),
        |row| fetch(input, row),
        f,
    )
}

/// Each row's waveform (decoded with the default cap), mapped by `f` (given the waveform
/// and its row). Null rows stay null; data problems null the row and record the reason.
pub fn map_waveforms<R>(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    f: impl FnMut(Waveform<'_>, usize) -> std::result::Result<R, String>,
) -> Result<Vec<Option<R>>> {
    let input = AudioInput::try_new(operator, &call.inputs[0])?;
    per_row(
        &input,
        call,
        errors,
        |input, row| input.get(row, DEFAULT_MAX_DECODED_BYTES),
        f,
    )
}

/// Each row's header facts.
fn row_facts(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
) -> Result<Vec<Option<Facts>>> {
    let input = AudioInput::try_new(operator, &call.inputs[0])?;
    per_row(
        &input,
        call,
        errors,
        |input, row| input.facts(row),
        |facts, _| Ok(facts),
    )
}

/// An `Audio` column from waveforms.
pub(crate) fn audio_array(waves: &[Option<Waveform<'_>>]) -> Result<ArrayRef> {
    let mut offsets = Vec::with_capacity(waves.len() + 1);
    offsets.push(0i64);
    let total: usize = waves.iter().flatten().map(|w| w.samples.len()).sum();
    let mut values = Vec::with_capacity(total);
    let (mut rates, mut channels) = (
        Vec::with_capacity(waves.len()),
        Vec::with_capacity(waves.len()),
    );
    for wave in waves {
        if let Some(w) = wave {
            values.extend_from_slice(&w.samples);
        }
        rates.push(wave.as_ref().map_or(0, |w| w.rate));
        channels.push(wave.as_ref().map_or(0, |w| w.channels));
        offsets.push(values.len() as i64);
    }
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let data = LargeListArray::try_new(
        item,
        OffsetBuffer::new(offsets.into()),
        Arc::new(arrow::array::Float32Array::from(values)),
        None,
    )?;
    let valid = NullBuffer::from(waves.iter().map(Option::is_some).collect::<Vec<_>>());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(rates)),
        Arc::new(UInt16Array::from(channels)),
        Arc::new(data),
    ];
    Ok(Arc::new(StructArray::try_new(
        AudioType::storage_fields(),
        columns,
        Some(valid),
    )?))
}

/// A list column whose items are `items` (already flattened), `lengths[row]` per row.
pub fn list_array(item: Field, items: ArrayRef, lengths: &[Option<usize>]) -> Result<ArrayRef> {
    let offsets = OffsetBuffer::<i32>::from_lengths(lengths.iter().map(|l| l.unwrap_or(0)));
    let valid = NullBuffer::from(lengths.iter().map(Option::is_some).collect::<Vec<_>>());
    Ok(Arc::new(ListArray::try_new(
        Arc::new(item),
        offsets,
        items,
        Some(valid),
    )?))
}

pub(crate) fn list_of(item: Field, name: &str) -> Field {
    Field::new(name, DataType::List(Arc::new(item)), true)
}

/// The `max_decoded_bytes` option of decoding operators.
const MAX_DECODED_BYTES: Param = Param::optional("max_decoded_bytes", ParamKind::Int, "1073741824");

fn max_decoded_bytes(params: &Params) -> Result<u64> {
    let v = params.int("max_decoded_bytes")?;
    u64::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
        RilletError::invalid_argument(format!("max_decoded_bytes must be positive, not {v}"))
    })
}

fn sample_rate(params: &Params, name: &str) -> Result<u32> {
    let rate = params.size(name)?;
    if !(1..=768_000).contains(&rate) {
        return Err(RilletError::invalid_argument(format!(
            "{name} must be between 1 and 768000 Hz, not {rate}"
        )));
    }
    Ok(rate)
}

/// `audio_decode(x, max_decoded_bytes, on_error)`: encoded audio (bytes / File / path) →
/// Audio (f32 PCM, interleaved). Truncated or malformed streams and results over
/// `max_decoded_bytes` are bad data.
#[derive(Debug)]
pub struct Decode;

impl Operator for Decode {
    fn name(&self) -> &'static str {
        "audio_decode"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[MAX_DECODED_BYTES, Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        max_decoded_bytes(params)?;
        Ok(AudioType.field(self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let max = max_decoded_bytes(call.params)?;
        let input = AudioInput::try_new(self.name(), &call.inputs[0])?;
        let waves = per_row(
            &input,
            call,
            errors,
            |input, row| input.get(row, max),
            |w, _| Ok(w),
        )?;
        audio_array(&waves)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}

/// `audio_encode(x, format, sample_format, on_error)`: Audio → WAV bytes, 16-bit PCM
/// (`sample_format="s16"`, the default) or 32-bit float (`"f32"`).
#[derive(Debug)]
pub struct Encode;

fn wav_float(params: &Params) -> Result<bool> {
    match params.str("format")?.to_ascii_lowercase().as_str() {
        "wav" | "wave" => {}
        other => {
            return Err(RilletError::invalid_argument(format!(
                "audio_encode writes wav, not {other:?}"
            )));
        }
    }
    match params.str("sample_format")? {
        "s16" => Ok(false),
        "f32" => Ok(true),
        other => Err(RilletError::invalid_argument(format!(
            "sample_format must be \"s16\" or \"f32\", not {other:?}"
        ))),
    }
}

impl Operator for Encode {
    fn name(&self) -> &'static str {
        "audio_encode"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("format", ParamKind::Str, "wav"),
            Param::optional("sample_format", ParamKind::Str, "s16"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        wav_float(params)?;
        Ok(Field::new(self.name(), DataType::Binary, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let float = wav_float(call.params)?;
        let encoded = map_waveforms(self.name(), call, errors, |w, _| {
            Ok(codec::encode_wav(&w, float))
        })?;
        let mut out = BinaryBuilder::new();
        for bytes in encoded {
            out.append_option(bytes);
        }
        Ok(Arc::new(out.finish()))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}

/// Operators that turn each waveform into another: resample, to_mono, standardize.
macro_rules! waveform_operator {
    ($(#[$doc:meta])* $ty:ident, $name:literal, [$($param:expr),*], |$params:ident| $check:expr, |$wave:ident, $p:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty;

        impl Operator for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn params(&self) -> &'static [Param] {
                const P: &[Param] = &[$($param,)* Param::ON_ERROR];
                P
            }

            fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
                expect_audio(self.name(), &inputs[0])?;
                let $params = params;
                $check?;
                Ok(AudioType.field(self.name()))
            }

            fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
                let $params = call.params;
                let $p = $check?;
                let waves = map_waveforms(self.name(), call, errors, |$wave, _| $body)?;
                audio_array(&waves)
            }

            fn batch_size(&self) -> Option<usize> {
                Some(AUDIO_BATCH_ROWS)
            }
        }
    };
}

waveform_operator!(
    /// `audio_resample(x, rate, on_error)`: band-limited resampling to `rate` Hz.
    Resample, "audio_resample", [Param::required("rate", ParamKind::Int)],
    |params| sample_rate(params, "rate"),
    |wave, rate| dsp::resample(&wave, rate)
);

waveform_operator!(
    /// `audio_to_mono(x, on_error)`: the average of all channels.
    ToMono, "audio_to_mono", [],
    |params| Ok::<&Params, RilletError>(params),
    |wave, _unit| Ok(dsp::to_mono(&wave))
);

waveform_operator!(
    /// `audio_standardize(x, rate, channels, on_error)`: the format models expect — `channels`
    /// (1 by default; a mono mix otherwise duplicated) at `rate` Hz (16000 by default).
    Standardize, "audio_standardize",
    [Param::optional("rate", ParamKind::Int, "16000"), Param::optional("channels", ParamKind::Int, "1")],
    |params| standardize_options(params),
    |wave, options| dsp::resample(&dsp::remix(&wave, options.1), options.0)
);

fn standardize_options(params: &Params) -> Result<(u32, u16)> {
    let rate = sample_rate(params, "rate")?;
    let channels = params.size("channels")?;
    if !(1..=8).contains(&channels) {
        return Err(RilletError::invalid_argument(format!(
            "channels must be between 1 and 8, not {channels}"
        )));
    }
    Ok((rate, channels as u16))
}

fn metadata_fields() -> Fields {
    Fields::from(vec![
        Field::new("sample_rate", DataType::UInt32, true),
        Field::new("channels", DataType::UInt16, true),
        Field::new("frames", DataType::UInt64, true),
        Field::new("duration_ms", DataType::Float64, true),
        Field::new("codec", DataType::Utf8, true),
        Field::new("container", DataType::Utf8, true),
    ])
}

/// `audio_metadata(x, on_error)`: struct{sample_rate, channels, frames, duration_ms, codec,
/// container}, from the header for encoded input (no samples decoded); codec and
/// container are null for decoded audio.
#[derive(Debug)]
pub struct Metadata;

impl Operator for Metadata {
    fn name(&self) -> &'static str {
        "audio_metadata"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        Ok(Field::new(
            self.name(),
            DataType::Struct(metadata_fields()),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let facts = row_facts(self.name(), call, errors)?;
        let mut out = StructBuilder::from_fields(metadata_fields(), facts.len());
        for fact in &facts {
            let p = fact.as_ref().map(|f| &f.probe);
            let encoded = |f: &Facts| f.encoded;
            out.field_builder::<UInt32Builder>(0)
                .expect("u32")
                .append_option(p.map(|p| p.sample_rate));
            out.field_builder::<UInt16Builder>(1)
                .expect("u16")
                .append_option(p.map(|p| p.channels));
            out.field_builder::<UInt64Builder>(2)
                .expect("u64")
                .append_option(p.map(|p| p.frames));
            out.field_builder::<Float64Builder>(3)
                .expect("f64")
                .append_option(p.map(Probe::duration_ms));
            let named = fact.as_ref().filter(|f| encoded(f)).map(|f| &f.probe);
            out.field_builder::<StringBuilder>(4)
                .expect("utf8")
                .append_option(named.map(|p| p.codec));
            out.field_builder::<StringBuilder>(5)
                .expect("utf8")
                .append_option(named.map(|p| p.container));
            out.append(fact.is_some());
        }
        Ok(Arc::new(out.finish()))
    }
}

/// `audio_duration(x, on_error)`: length in seconds (from the header for encoded input).
#[derive(Debug)]
pub struct Duration;

impl Operator for Duration {
    fn name(&self) -> &'static str {
        "audio_duration"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        Ok(Field::new(self.name(), DataType::Float64, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let facts = row_facts(self.name(), call, errors)?;
        Ok(Arc::new(
            facts
                .iter()
                .map(|f| f.as_ref().map(|f| f.probe.duration_ms() / 1000.0))
                .collect::<Float64Array>(),
        ))
    }
}

/// `audio_is_valid(x, validation, max_decoded_bytes)`: true when the header reads
/// (`validation="metadata"`, the default) or every packet decodes within
/// `max_decoded_bytes` (`"decode"`); false otherwise, including null rows.
#[derive(Debug)]
pub struct IsValid;

fn full_decode(params: &Params) -> Result<bool> {
    match params.str("validation")? {
        "metadata" => Ok(false),
        "decode" => Ok(true),
        other => Err(RilletError::invalid_argument(format!(
            "validation must be \"metadata\" or \"decode\", not {other:?}"
        ))),
    }
}

impl Operator for IsValid {
    fn name(&self) -> &'static str {
        "audio_is_valid"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("validation", ParamKind::Str, "metadata"),
            MAX_DECODED_BYTES,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        full_decode(params)?;
        max_decoded_bytes(params)?;
        Ok(Field::new(self.name(), DataType::Boolean, false))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let (decode, max) = (full_decode(call.params)?, max_decoded_bytes(call.params)?);
        let input = AudioInput::try_new(self.name(), &call.inputs[0])?;
        let valid = per_row(
            &input,
            call,
            errors,
            |input, row| {
                if decode {
                    input.get(row, max).map(|w| w.map(|_| ()))
                } else {
                    input.facts(row).map(|f| f.map(|_| ()))
                }
            },
            |unit, _| Ok(unit),
        )?;
        Ok(Arc::new(
            valid
                .iter()
                .map(|v| Some(v.is_some()))
                .collect::<BooleanArray>(),
        ))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}

/// `(start_ms, end_ms)` pairs of fixed-length segments covering `duration_ms`; the last may
/// be shorter.
pub(crate) fn segments(duration_ms: f64, segment_ms: f64) -> Vec<(f64, f64)> {
    let count = (duration_ms / segment_ms).ceil() as usize;
    (0..count)
        .map(|i| {
            (
                i as f64 * segment_ms,
                ((i + 1) as f64 * segment_ms).min(duration_ms),
            )
        })
        .collect()
}

/// The clip references of one row: its URI and `(start_ms, end_ms)` ranges.
pub(crate) type ClipRow = (String, Vec<(f64, f64)>);

/// Clip references `{uri, start_ms, end_ms}`, one list per row.
pub(crate) fn clip_lists(rows: &[Option<ClipRow>]) -> Result<ArrayRef> {
    let (mut uris, mut starts, mut ends) = (
        StringBuilder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    for (uri, ranges) in rows.iter().flatten() {
        for (s, e) in ranges {
            uris.append_value(uri);
            starts.append_value(s.round() as i64);
            ends.append_value(e.round() as i64);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(uris.finish()),
        Arc::new(starts.finish()),
        Arc::new(ends.finish()),
    ];
    let clips = StructArray::try_new(ClipType::storage_fields(), columns, None)?;
    let lengths: Vec<Option<usize>> = rows
        .iter()
        .map(|r| r.as_ref().map(|(_, ranges)| ranges.len()))
        .collect();
    list_array(ClipType.field("item"), Arc::new(clips), &lengths)
}

/// Audio pieces, one list per row.
fn audio_lists(rows: Vec<Option<Vec<Waveform<'static>>>>) -> Result<ArrayRef> {
    let lengths: Vec<Option<usize>> = rows.iter().map(|r| r.as_ref().map(Vec::len)).collect();
    let pieces: Vec<Option<Waveform<'static>>> =
        rows.into_iter().flatten().flatten().map(Some).collect();
    list_array(AudioType.field("item"), audio_array(&pieces)?, &lengths)
}

/// `audio_split_by_duration(x, segment_ms, output, on_error)`: consecutive segments of
/// `segment_ms` (the last may be shorter), as a list to explode: Audio pieces
/// (`output="waveform"`) or clip references `{uri, start_ms, end_ms}` (`output="ref"`,
/// which reads only the header and copies no samples; it needs a File or path input).
#[derive(Debug)]
pub struct SplitByDuration;

/// The `segment_ms` option of splitting operators: at least 1 ms.
pub(crate) fn segment_ms(params: &Params) -> Result<f64> {
    let segment = params.float("segment_ms")?;
    if segment.is_nan() || segment < 1.0 {
        return Err(RilletError::invalid_argument(format!(
            "segment_ms must be at least 1, not {segment}"
        )));
    }
    Ok(segment)
}

fn split_options(params: &Params) -> Result<(f64, bool)> {
    let segment = segment_ms(params)?;
    match params.str("output")? {
        "waveform" => Ok((segment, false)),
        "ref" => Ok((segment, true)),
        other => Err(RilletError::invalid_argument(format!(
            "output must be \"waveform\" or \"ref\", not {other:?}"
        ))),
    }
}

impl Operator for SplitByDuration {
    fn name(&self) -> &'static str {
        "audio_split_by_duration"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::required("segment_ms", ParamKind::Float),
            Param::optional("output", ParamKind::Str, "waveform"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        let (_, refs) = split_options(params)?;
        if refs && is_audio(&inputs[0]) {
            return Err(RilletError::invalid_argument(format!(
                "{}: output=\"ref\" needs a File or path input to refer to; column {:?} is decoded Audio",
                self.name(),
                inputs[0].name()
            )));
        }
        Ok(list_of(
            if refs {
                ClipType.field("item")
            } else {
                AudioType.field("item")
            },
            self.name(),
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let (segment, refs) = split_options(call.params)?;
        if refs {
            let input = AudioInput::try_new(self.name(), &call.inputs[0])?;
            let rows = per_row(
                &input,
                call,
                errors,
                |input, row| {
                    let facts = input.facts(row)?;
                    Ok(facts.map(|f| {
                        (
                            input.uri(row).unwrap_or_default().to_string(),
                            segments(f.probe.duration_ms(), segment),
                        )
                    }))
                },
                |(uri, ranges), _| {
                    if uri.is_empty() {
                        Err("output=\"ref\" needs a File or path, not bytes".into())
                    } else {
                        Ok((uri, ranges))
                    }
                },
            )?;
            return clip_lists(&rows);
        }
        let rows = map_waveforms(self.name(), call, errors, |wave, _| {
            Ok(segments(wave.duration_ms(), segment)
                .into_iter()
                .map(|(s, e)| dsp::slice_ms(&wave, s, e))
                .collect())
        })?;
        audio_lists(rows)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}

/// The `(start_ms, end_ms)` ranges of one row of a ranges column: a list of
/// struct{start_ms, end_ms} (as `audio_detect_silence` gives) or a flat list of numbers
/// taken in pairs.
fn ranges_at(
    column: &ArrayRef,
    row: usize,
) -> std::result::Result<Option<Vec<(f64, f64)>>, String> {
    if column.is_null(row) {
        return Ok(None);
    }
    let items = match column.data_type() {
        DataType::List(_) => column.as_list::<i32>().value(row),
        DataType::LargeList(_) => column.as_list::<i64>().value(row),
        DataType::FixedSizeList(_, _) => column.as_fixed_size_list().value(row),
        other => return Err(format!("ranges must be a list, not {other}")),
    };
    let floats = |array: &ArrayRef| -> std::result::Result<Vec<f64>, String> {
        let cast =
            arrow::compute::cast(array, &DataType::Float64).map_err(|e| format!("ranges: {e}"))?;
        let cast = cast.as_primitive::<arrow::datatypes::Float64Type>();
        if cast.null_count() > 0 {
            return Err("ranges contain nulls".into());
        }
        Ok(cast.values().to_vec())
    };
    let pairs: Vec<(f64, f64)> = match items.data_type() {
        DataType::Struct(_) => {
            let items = items.as_struct();
            let (Some(start), Some(end)) = (
                items.column_by_name("start_ms"),
                items.column_by_name("end_ms"),
            ) else {
                return Err("range structs need start_ms and end_ms fields".into());
            };
            floats(start)?.into_iter().zip(floats(end)?).collect()
        }
        _ => {
            let flat = floats(&items)?;
            if flat.len() % 2 != 0 {
                return Err(format!(
                    "a flat ranges list needs start/end pairs; this one has {} numbers",
                    flat.len()
                ));
            }
            flat.chunks_exact(2).map(|p| (p[0], p[1])).collect()
        }
    };
    Ok(Some(pairs))
}

/// `audio_split_by_ranges(x, ranges, on_error)`: the pieces of the audio between each
/// `(start_ms, end_ms)` of `ranges` (a column or literal: a list of struct{start_ms,
/// end_ms} or a flat list of numbers in pairs), as a list of Audio to explode. A range
/// that is inverted or starts past the end is bad data; one that runs past the end is cut.
/// Encoded audio is decoded only from the earliest start to the latest end where that gives
/// a whole decode's samples ([`codec::decode_span`]).
#[derive(Debug)]
pub struct SplitByRanges;

impl Operator for SplitByRanges {
    fn name(&self) -> &'static str {
        "audio_split_by_ranges"
    }

    fn inputs(&self) -> usize {
        2
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        if !matches!(
            inputs[1].data_type(),
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)
        ) {
            return Err(RilletError::invalid_argument(format!(
                "{}: ranges must be a list of struct{{start_ms, end_ms}} or of numbers in pairs; column {:?} is {}",
                self.name(),
                inputs[1].name(),
                display_type(&inputs[1])
            )));
        }
        Ok(list_of(AudioType.field("item"), self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let ranges = &call.inputs[1];
        let input = AudioInput::try_new(self.name(), &call.inputs[0])?;
        // Encoded audio is decoded from the earliest start to the latest end only.
        let rows = per_row(
            &input,
            call,
            errors,
            |input, row| {
                let pairs = ranges_at(ranges, row).map_err(RowFailure::Data)?;
                let valid = |(s, e): &(f64, f64)| *s >= 0.0 && e > s;
                let reach = pairs.iter().flatten().filter(|pair| valid(pair)).fold(
                    None,
                    |reach: Option<(f64, f64)>, &(s, e)| {
                        Some(reach.map_or((s, e), |(a, b)| (a.min(s), b.max(e))))
                    },
                );
                // Without a valid range, the first packets still show the audio is sound.
                let span =
                    input.span(row, DEFAULT_MAX_DECODED_BYTES, reach.unwrap_or((0.0, 0.0)))?;
                Ok(span.map(|span| (span, pairs)))
            },
            |(span, pairs), _| {
                let Some(pairs) = pairs else {
                    return Ok(Vec::new());
                };
                pairs
                    .into_iter()
                    .map(|(s, e)| range_of(&span, s, e))
                    .collect()
            },
        );
        audio_lists(rows?)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}

/// The audio from `start_ms` to `end_ms` of a decode from the start, out of `span` (which
/// holds it): cut where the audio ends; bad data when empty, inverted or past the end.
fn range_of(
    span: &codec::Span<'_>,
    start_ms: f64,
    end_ms: f64,
) -> std::result::Result<Waveform<'static>, String> {
    let audio = &span.audio;
    let rate = audio.rate as f64;
    let duration = span.total_frames as f64 * 1000.0 / rate;
    if !(start_ms >= 0.0 && end_ms > start_ms && start_ms < duration) {
        return Err(format!(
            "range {start_ms}..{end_ms} ms is empty, inverted or outside the clip ({duration:.0} ms)"
        ));
    }
    let frame_at =
        |ms: f64| ((ms * rate / 1000.0).round().max(0.0) as u64).saturating_sub(span.first_frame);
    let c = audio.channels as usize;
    let start = (frame_at(start_ms) as usize).min(audio.frames());
    let end = (frame_at(end_ms.min(duration)) as usize).clamp(start, audio.frames());
    Ok(Waveform {
        rate: audio.rate,
        channels: audio.channels,
        samples: std::borrow::Cow::Owned(audio.samples[start * c..end * c].to_vec()),
    })
}

/// The struct of one time range, `{start_ms, end_ms}` (what `audio_split_by_ranges` takes).
pub fn range_fields() -> Fields {
    Fields::from(vec![
        Field::new("start_ms", DataType::Int64, false),
        Field::new("end_ms", DataType::Int64, false),
    ])
}

/// `audio_detect_silence(x, threshold_db, min_silence_ms, on_error)`: the silent stretches,
/// a list of struct{start_ms, end_ms}: runs of 10 ms windows at or below `threshold_db`
/// dBFS (RMS over all channels) lasting at least `min_silence_ms`.
#[derive(Debug)]
pub struct DetectSilence;

impl Operator for DetectSilence {
    fn name(&self) -> &'static str {
        "audio_detect_silence"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("threshold_db", ParamKind::Float, "-40"),
            Param::optional("min_silence_ms", ParamKind::Float, "300"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        params.float("threshold_db")?;
        params.float("min_silence_ms")?;
        Ok(list_of(
            Field::new("item", DataType::Struct(range_fields()), true),
            self.name(),
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let (threshold, min_ms) = (
            call.params.float("threshold_db")?,
            call.params.float("min_silence_ms")?,
        );
        let rows = map_waveforms(self.name(), call, errors, |wave, _| {
            Ok(dsp::detect_silence(&wave, threshold, min_ms))
        })?;
        let (mut starts, mut ends) = (Int64Builder::new(), Int64Builder::new());
        for (s, e) in rows.iter().flatten().flatten() {
            starts.append_value(*s);
            ends.append_value(*e);
        }
        let items = StructArray::try_new(
            range_fields(),
            vec![Arc::new(starts.finish()), Arc::new(ends.finish())],
            None,
        )?;
        let lengths: Vec<Option<usize>> = rows.iter().map(|r| r.as_ref().map(Vec::len)).collect();
        list_array(
            Field::new("item", DataType::Struct(range_fields()), true),
            Arc::new(items),
            &lengths,
        )
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}

/// `audio_mel_spectrogram(x, n_mels, n_fft, hop, on_error)`: Whisper-style log-mel
/// features of the mono mix as a Tensor[f32] of shape `[n_mels, frames]` (see
/// [`dsp::log_mel_spectrogram`]); resample to 16 kHz first for Whisper.
#[derive(Debug)]
pub struct MelSpectrogram;

fn mel_options(params: &Params) -> Result<(usize, usize, usize)> {
    let (n_mels, n_fft, hop) = (
        params.size("n_mels")? as usize,
        params.size("n_fft")? as usize,
        params.size("hop")? as usize,
    );
    if n_mels == 0 || n_fft < 2 || hop == 0 || n_mels > 1024 || n_fft > 65536 {
        return Err(RilletError::invalid_argument(format!(
            "mel_spectrogram needs 1 <= n_mels <= 1024, 2 <= n_fft <= 65536 and hop >= 1 (got {n_mels}, {n_fft}, {hop})"
        )));
    }
    Ok((n_mels, n_fft, hop))
}

impl Operator for MelSpectrogram {
    fn name(&self) -> &'static str {
        "audio_mel_spectrogram"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("n_mels", ParamKind::Int, "80"),
            Param::optional("n_fft", ParamKind::Int, "400"),
            Param::optional("hop", ParamKind::Int, "160"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        mel_options(params)?;
        Ok(TensorType::new(ElementType::F32, None).field(self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let (n_mels, n_fft, hop) = mel_options(call.params)?;
        let rows = map_waveforms(self.name(), call, errors, |wave, _| {
            dsp::log_mel_spectrogram(&wave, n_mels, n_fft, hop)
        })?;
        let mut tensors = TensorBuilder::new(ElementType::F32, rows.len());
        for row in &rows {
            match row {
                Some((values, frames)) => tensors.append_values(&[n_mels, *frames], values),
                None => tensors.append_null(),
            }
        }
        Ok(tensors.finish())
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}
