//! Audio operators: decode and encode, resampling and channel mixing, metadata and
//! validity, splitting by duration or by ranges, silence detection and log-mel features.
//!
//! Every operator that takes audio accepts a decoded `Audio` column or encoded content
//! (bytes, a `File`, a path) in any container symphonia reads (WAV, FLAC, MP3, Ogg Vorbis,
//! MP4/AAC, MKV), decoding on the fly in the latter case.

pub mod codec;
pub mod dsp;
mod input;
mod split;

use self::input::{AudioInput, Facts, per_row, row_facts};
pub(crate) use self::input::{audio_array, list_of};
pub use self::input::{expect_audio, list_array, map_waveforms};
pub use self::split::{SplitByDuration, SplitByRanges, range_fields};
pub(crate) use self::split::{clip_lists, segment_ms, segments};

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanArray, Float64Array, Float64Builder, Int64Builder,
    StringBuilder, StructArray, StructBuilder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use rillet_common::types::{AudioType, ElementType, TensorType};
use rillet_common::{Result, RilletError};
use rillet_operator::ArrayFunction;

use self::codec::Probe;
use crate::operator::{Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors};
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

/// Operators that remix or resample every row (to_mono, resample, standardize): encoded
/// content is remixed and resampled as it is decoded, packet by packet, so a stream is
/// never held whole at its own rate (an hour of 44.1 kHz
/// stereo is 1.3 GB of f32; at 16 kHz mono, 230 MB), with the samples a decode and then a
/// resample give ([`dsp::StreamResampler`]).
macro_rules! resampling_operator {
    ($(#[$doc:meta])* $ty:ident, $name:literal, [$($param:expr),*], |$params:ident| $options:expr) => {
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
                $options?;
                Ok(AudioType.field(self.name()))
            }

            fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
                let $params = call.params;
                let (rate, channels) = $options?;
                map_resampled(self.name(), call, errors, rate, channels)
            }

            fn batch_size(&self) -> Option<usize> {
                Some(AUDIO_BATCH_ROWS)
            }
        }
    };
}

resampling_operator!(
    /// `audio_to_mono(x, on_error)`: the average of all channels.
    ToMono, "audio_to_mono", [],
    |_params| Ok::<_, RilletError>((None::<u32>, Some(1u16)))
);

resampling_operator!(
    /// `audio_resample(x, rate, on_error)`: band-limited resampling to `rate` Hz.
    Resample, "audio_resample", [Param::required("rate", ParamKind::Int)],
    |params| sample_rate(params, "rate").map(|rate| (Some(rate), None::<u16>))
);

resampling_operator!(
    /// `audio_standardize(x, rate, channels, on_error)`: the format models expect — `channels`
    /// (1 by default; a mono mix otherwise duplicated) at `rate` Hz (16000 by default).
    Standardize, "audio_standardize",
    [Param::optional("rate", ParamKind::Int, "16000"), Param::optional("channels", ParamKind::Int, "1")],
    |params| standardize_options(params).map(|(rate, channels)| (Some(rate), Some(channels)))
);

/// The most samples (as f32 bytes) a stream resampled as it decodes may decode: 16 GiB,
/// 13 hours of 44.1 kHz stereo. Only the output is held (capped at
/// [`dsp::MAX_OUTPUT_BYTES`]); this bounds the decoding work a small file can demand.
const STREAMED_MAX_DECODED_BYTES: u64 = 16 << 30;

/// Every row remixed to `channels` and resampled to `rate` Hz, each when given.
fn map_resampled(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    rate: Option<u32>,
    channels: Option<u16>,
) -> Result<ArrayRef> {
    let input = AudioInput::try_new(operator, &call.inputs[0])?;
    let AudioInput::Encoded(column) = &input else {
        let waves = map_waveforms(operator, call, errors, |wave, _| {
            let mixed = channels.map(|c| dsp::remix(&wave, c));
            dsp::resample(mixed.as_ref().unwrap_or(&wave), rate.unwrap_or(wave.rate))
        })?;
        return audio_array(&waves);
    };
    let waves = per_row(
        &input,
        call,
        errors,
        |_, row| column.get(row),
        |bytes, row| {
            let mut sink = Resampling {
                rate,
                channels,
                stream: None,
                packet: Vec::new(),
            };
            let extension = column.extension(row);
            let (from, decoded_channels) = codec::decode_with(
                &bytes,
                extension.as_deref(),
                STREAMED_MAX_DECODED_BYTES,
                None,
                &mut sink,
            )?;
            let stream = match sink.stream {
                Some(stream) => stream,
                None => {
                    let to = channels.unwrap_or(decoded_channels);
                    dsp::StreamResampler::new(from, rate.unwrap_or(from), to)?
                }
            };
            let wave = stream.finish()?;
            rillet_operator::memory::charge_call_memory(wave.samples.len() * 4);
            Ok(wave)
        },
    )?;
    audio_array(&waves)
}

/// Decoded packets remixed and resampled as they come ([`map_resampled`]).
struct Resampling {
    rate: Option<u32>,
    channels: Option<u16>,
    stream: Option<dsp::StreamResampler>,
    /// The packet the decoder wrote last.
    packet: Vec<f32>,
}

impl codec::PcmSink for Resampling {
    fn room(&mut self, len: usize) -> &mut [f32] {
        self.packet.resize(len, 0.0);
        &mut self.packet
    }

    fn take(&mut self, rate: u32, channels: u16) -> std::result::Result<(), String> {
        let to = self.channels.unwrap_or(channels);
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => self.stream.insert(dsp::StreamResampler::new(
                rate,
                self.rate.unwrap_or(rate),
                to,
            )?),
        };
        if to == channels {
            return stream.push(&self.packet);
        }
        let packet = Waveform {
            rate,
            channels,
            samples: Cow::Borrowed(&self.packet),
        };
        stream.push(&dsp::remix(&packet, to).samples)
    }
}

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
